"""Open notebook 01 in JupyterLab in a headless Chromium, move a slider, and save a before/after screenshot.

Not part of the test-suite: it needs JupyterLab, ipywidgets and Playwright (Python package) in the running
environment, and a Chromium binary (Debian: ``apt-get install chromium``; Playwright's own browser download is
not used). Usage:

    python tools/notebook_screenshot.py [--out docs/notebook01_slider.png] [--chromium /usr/bin/chromium]

Steps: convert ``notebooks/01_ratio_vs_divergence.py`` to an ``.ipynb`` in a temporary folder (jupytext), start
JupyterLab there on a free local port without a token, open the notebook, run all cells, scroll to the token
panel (section 3), take a picture of it, drag the π(a) slider's handle to the right, wait until the plot has been
redrawn, take a second picture, and write both side by side to ``--out``. Exit status 1 with a one-line message
when a step fails (the JupyterLab log is kept in the temporary folder and its path printed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "01_ratio_vs_divergence.py"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _say(step: str) -> None:
    print(f"  {step}", file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(url: str, timeout_s: float, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1.0)
    raise RuntimeError(f"JupyterLab did not answer at {url} within {timeout_s:.0f} s")


def _panel(page):
    """The output area holding the token panel's widgets (the one with the π(a) slider)."""
    slider = page.locator(".widget-slider", has_text="π(a)").first
    slider.wait_for(state="attached", timeout=150_000)
    return slider.locator("xpath=ancestor::div[contains(@class, 'jp-OutputArea')][1]"), slider


def _picture(area, path: Path) -> None:
    area.scroll_into_view_if_needed()
    area.screenshot(path=str(path))


def _image_key(area) -> str:
    img = area.locator("img").last
    img.wait_for(state="visible", timeout=60_000)
    return img.get_attribute("src") or ""


def capture(out: Path, chromium: str, work: Path) -> None:
    from playwright.sync_api import sync_playwright

    ipynb = work / "01_ratio_vs_divergence.ipynb"
    subprocess.run(
        [sys.executable, "-m", "jupytext", "--to", "notebook", "--output", str(ipynb), str(NOTEBOOK)],
        check=True,
        capture_output=True,
    )
    port = _free_port()
    log = (work / "jupyterlab.log").open("w")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            f"--port={port}",
            "--ServerApp.ip=127.0.0.1",
            "--IdentityProvider.token=",
            "--ServerApp.password=",
            "--ServerApp.disable_check_xsrf=True",
            f"--ServerApp.root_dir={work}",
            "--LabApp.expose_app_in_browser=True",
            *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        _wait_for(f"http://127.0.0.1:{port}/lab", 120, server)
        _say("JupyterLab is up")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1100}, device_scale_factor=1)
            page.goto(f"http://127.0.0.1:{port}/lab/tree/{ipynb.name}", timeout=120_000)
            page.wait_for_selector(".jp-Notebook", timeout=120_000)
            _say("notebook open")
            select = page.locator(".jp-Dialog button", has_text="Select")
            try:  # JupyterLab asks for a kernel for a freshly converted notebook
                select.wait_for(state="visible", timeout=20_000)
                select.click()
            except Exception:
                pass
            news = page.locator(".jp-Notification-Toast-Close, .jp-toast-button", has_text="No")
            if news.count():
                news.first.click()
            page.wait_for_function("window.jupyterapp !== undefined", timeout=60_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
            _say("running all cells")
            page.evaluate("() => { void window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
            try:
                area, slider = _panel(page)
            except Exception:
                page.screenshot(path=str(work / "failed.png"))
                raise
            _say("token panel found")
            before_key = _image_key(area)
            _picture(area, work / "before.png")
            handle = slider.locator(".noUi-handle").first
            track = slider.locator(".noUi-target, .slider-container").first
            box_h, box_t = handle.bounding_box(), track.bounding_box()
            if box_h is None or box_t is None:
                raise RuntimeError("the π(a) slider has no handle to drag")
            y = box_h["y"] + box_h["height"] / 2
            page.mouse.move(box_h["x"] + box_h["width"] / 2, y)
            page.mouse.down()
            page.mouse.move(box_t["x"] + 0.995 * box_t["width"], y, steps=12)
            page.mouse.up()
            _say("slider dragged; waiting for the plot")
            deadline = time.monotonic() + 60
            while _image_key(area) == before_key:
                if time.monotonic() > deadline:
                    raise RuntimeError("the plot was not redrawn within 60 s after the slider moved")
                time.sleep(0.5)
            time.sleep(1.0)
            _picture(area, work / "after.png")
            browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    _side_by_side(work / "before.png", work / "after.png", out)


def _side_by_side(before: Path, after: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b = plt.imread(before), plt.imread(after)
    height = max(a.shape[0], b.shape[0])
    width = max(a.shape[1], b.shape[1])
    fig, axes = plt.subplots(1, 2, figsize=(2 * 8, 8 * height / width + 0.7), dpi=110)
    for ax, img, title in zip(
        axes,
        (a, b),
        ("notebook 01 in JupyterLab: the default token", "after dragging the π(a) slider to the right"),
    ):
        ax.imshow(img)
        ax.set_title(title, fontsize=11)
        ax.axis("off")
    fig.tight_layout(pad=1.0)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp)
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "notebook01_slider.png")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args(argv)
    if not Path(args.chromium).is_file():
        print(
            f"no Chromium at {args.chromium}: install it (apt-get install chromium) or pass --chromium",
            file=sys.stderr,
        )
        return 2
    work = Path(tempfile.mkdtemp(prefix="notebook_screenshot_"))
    try:
        capture(args.out, args.chromium, work)
    except Exception as error:  # a failed step: one line, the log kept
        print(f"screenshot failed: {error} (JupyterLab log: {work / 'jupyterlab.log'})", file=sys.stderr)
        return 1
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
