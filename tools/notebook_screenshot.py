"""Open a notebook (01 or 06) in JupyterLab in a real headless browser, move a slider and save screenshots before
and after.

    python tools/notebook_screenshot.py                      # docs/notebook01_before.png, docs/notebook01_after.png
    python tools/notebook_screenshot.py --notebook 06 --presses -2 --out-dir /tmp/shots   # 06's dose-ladder slider
    python tools/notebook_screenshot.py --slider mu --presses 8 --out-dir /tmp/shots
    python tools/notebook_screenshot.py --drag -60           # drag the handle 60 px left instead of arrow keys

What it does: converts ``notebooks/01_ratio_vs_divergence.py`` (jupytext py:percent) to .ipynb in a temporary
folder, starts JupyterLab there on a free localhost port with a random token, opens the notebook in headless
Chromium driven by Playwright, runs all cells, and screenshots the "Try it" panel (sliders, plot and verdict).
Then it moves the π(a) (or μ(a)) slider the way a reader would — arrow-key presses on the focused slider handle,
or a mouse drag of the handle — waits until the kernel has redrawn the plot, and screenshots the panel again.
It checks that the slider's readout, the plot's PNG bytes (read from the page) and the panel's verdict (kept /
dropped per rule, read from ``token_panel.result`` in the notebook's kernel) all changed, prints them, and exits
1 (one line on stderr) if any did not, if a cell raised, or if a step timed out; 2 for a bad command line.

Needs (not in CI): JupyterLab, ipywidgets, jupytext, ipykernel and the Python package ``playwright`` in the
interpreter that runs this script, and a Chromium binary (Debian: ``apt-get install chromium``). Playwright's
own browser download is not used: ``--chromium`` names the system binary (default /usr/bin/chromium).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# per notebook: its file, its sliders (option name -> the slider's label), the default slider, and the Python that
# prints the panel's current answer from the notebook's kernel
NOTEBOOKS: dict[str, dict[str, Any]] = {
    "01": {
        "path": REPO / "notebooks" / "01_ratio_vs_divergence.py",
        "sliders": {"mu": "μ(a)", "pi": "π(a)"},
        "slider": "pi",
        # the interactive panel keeps the last answer of show_token in ``token_panel.result``
        "answer": (
            "import json as _json\n"
            "print(_json.dumps({_k: token_panel.result[_k] for _k in "
            "('mu', 'pi', 'PPO ratio clip', 'Binary TV', 'Binary KL')}, ensure_ascii=False))"
        ),
    },
    "06": {
        "path": REPO / "notebooks" / "06_does_the_trust_region_matter.py",
        "sliders": {"rung": "rung"},
        "slider": "rung",
        "answer": "print(rung_panel.result['sentence'])",  # show_rung's view of the chosen rung
    },
}
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
# JupyterLab settings for a clean, reproducible page: no news/update pop-ups, every cell kept in the DOM
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": (
        '{"fetchNews": "false", "checkForUpdates": false, "doNotDisturbMode": true}'
    ),
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": '{"windowingMode": "none"}',
}

# Browser-side probes (JupyterLab started with expose_app_in_browser)
JS_NOTEBOOK_STATE = """() => {
  const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  if (!panel || !panel.content || !panel.sessionContext) return null;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const code = panel.content.widgets.filter(c => c.model.type === 'code');
  const errors = [];
  for (const c of code) {
    for (const o of c.model.outputs.toJSON()) {
      if (o.output_type === 'error') errors.push(o.ename + ': ' + o.evalue);
    }
  }
  return {
    kernel: kernel ? kernel.status : 'none',
    executed: code.filter(c => c.model.executionCount !== null).length,
    total: code.length,
    errors: errors,
  };
}"""
JS_RUN_ALL = "() => window.jupyterapp.commands.execute('notebook:run-all-cells')"
# Runs Python in the notebook's kernel (off the history) and returns what it printed
JS_KERNEL_PRINT = """async (code) => {
  const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  const future = kernel.requestExecute({code: code, silent: false, store_history: false});
  let out = '';
  future.onIOPub = (msg) => {
    if (msg.header.msg_type === 'stream') out += msg.content.text;
    if (msg.header.msg_type === 'error') out += 'ERROR ' + msg.content.ename + ': ' + msg.content.evalue;
  };
  await future.done;
  return out;
}"""


class Failure(Exception):
    """A run-time failure reported as one line and exit status 1."""


def _log(message: str) -> None:
    print(f"[notebook_screenshot] {message}", file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _prepare_folder(tmp: Path, source: Path) -> Path:
    """Convert the notebook ``source`` to .ipynb under tmp/notebooks (with the notebooks' data folder) and write the lab
    settings; returns the notebook folder."""
    import jupytext

    folder = tmp / "notebooks"
    folder.mkdir()
    data = source.parent / "data"
    if data.is_dir():
        shutil.copytree(data, folder / "data")
    notebook = jupytext.read(source)
    notebook.metadata.pop("jupytext", None)  # a plain .ipynb: no pairing for jupytext's contents manager
    jupytext.write(notebook, folder / f"{source.stem}.ipynb")
    settings = tmp / "lab-settings"
    for name, text in LAB_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


def _start_lab(tmp: Path, folder: Path, port: int, token: str, log_file: Any) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # the kernel must use the inline backend, not Agg
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
        JUPYTER_CONFIG_DIR=str(tmp / "config"),
        JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
        JUPYTER_DATA_DIR=str(tmp / "data"),
        IPYTHONDIR=str(tmp / "ipython"),
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
    )
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--port-retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={folder}",
        "--LabApp.expose_app_in_browser=True",
        f"--LabServerApp.user_settings_dir={tmp / 'lab-settings'}",
        f"--LabServerApp.workspaces_dir={tmp / 'workspaces'}",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")  # containers often run as root; the server listens on localhost only
    return subprocess.Popen(
        command, cwd=folder, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
    )


def _wait_for_lab(server: subprocess.Popen, port: int, token: str, timeout: float) -> None:
    url = f"http://127.0.0.1:{port}/api/status?token={token}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise Failure(f"JupyterLab exited with status {server.returncode} before it answered")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.5)
    raise Failure(f"JupyterLab did not answer on port {port} within {timeout:.0f} s")


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=5)


def _run_notebook(page: Any, timeout: float) -> None:
    deadline = time.monotonic() + min(timeout, 120.0)
    while True:
        state = page.evaluate(JS_NOTEBOOK_STATE)
        if state and state["kernel"] == "idle":
            break
        if time.monotonic() > deadline:
            raise Failure(
                f"the notebook's kernel was not ready after {min(timeout, 120.0):.0f} s (state {state})"
            )
        time.sleep(0.5)
    started = time.monotonic()
    page.evaluate(JS_RUN_ALL)  # resolves once the queued cells have run
    while True:
        time.sleep(1.0)
        state = page.evaluate(JS_NOTEBOOK_STATE)
        if state["errors"]:
            raise Failure(f"a cell of the notebook raised {state['errors'][0]}")
        if state["kernel"] == "idle" and state["executed"] == state["total"]:
            _log(f"ran {state['total']} code cells in {time.monotonic() - started:.0f} s")
            return
        if time.monotonic() > deadline:
            raise Failure(
                f"the notebook did not finish within {timeout:.0f} s ({state['executed']}/{state['total']} cells)"
            )


def _panel_state(panel: Any, slider: Any) -> dict[str, Any]:
    """The slider's readout and the plot's PNG bytes as the browser shows them."""
    image = panel.locator(".widget-output img").first
    src = image.get_attribute("src") if image.count() else None
    png = base64.b64decode(src.split(",", 1)[1]) if src and src.startswith("data:image/png") else b""
    return {"readout": slider.locator(".widget-readout").inner_text().strip(), "png": png}


def _verdict(page: Any, code: str) -> str:
    """The panel's current answer, asked from the kernel (01: μ, π and each rule's kept / dropped; 06: the rung's
    sentence)."""
    text = page.evaluate(JS_KERNEL_PRINT, code).strip()
    if not text or text.startswith("ERROR"):
        raise Failure(f"could not read the panel's answer from the kernel: {text or 'no output'}")
    return text


def _wait_for_redraw(page: Any, panel: Any, slider: Any, before: dict[str, Any], timeout: float) -> dict:
    """Wait until the plot differs from ``before``, the kernel is idle and the panel is unchanged for 1 s."""
    deadline = time.monotonic() + timeout
    last, stable_since = None, None
    while time.monotonic() < deadline:
        time.sleep(0.25)
        kernel = page.evaluate(JS_NOTEBOOK_STATE)["kernel"]
        now = _panel_state(panel, slider)
        if now["png"] == before["png"] or not now["png"] or kernel != "idle":
            last, stable_since = None, None
            continue
        if last is None or now["png"] != last["png"] or now["readout"] != last["readout"]:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= 1.0:
            return now
    raise Failure(f"the plot did not change within {timeout:.0f} s of moving the slider")


def _move_slider(page: Any, slider: Any, presses: int, drag: float | None) -> None:
    handle = slider.locator(".noUi-handle").first
    handle.scroll_into_view_if_needed()
    if drag is not None:
        box = handle.bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + drag, y, steps=12)
        page.mouse.up()
        return
    handle.focus()
    key = "ArrowRight" if presses > 0 else "ArrowLeft"
    for _ in range(abs(presses)):
        page.keyboard.press(key)
        time.sleep(0.15)


def _screenshot(panel: Any, path: Path) -> None:
    from trustregion_lab._io import atomic_write_bytes

    panel.scroll_into_view_if_needed()
    atomic_write_bytes(path, panel.screenshot(animations="disabled", caret="hide"))
    _log(f"wrote {path}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="notebook-screenshot-"))
    server = None
    try:
        target = NOTEBOOKS[args.notebook]
        source, prefix = target["path"], f"notebook{args.notebook}"
        folder = _prepare_folder(tmp, source)
        port, token = _free_port(), secrets.token_hex(24)
        with open(tmp / "jupyterlab.log", "wb") as log_file:
            server = _start_lab(tmp, folder, port, token, log_file)
            _log(f"JupyterLab on 127.0.0.1:{port} serving {folder}")
            _wait_for_lab(server, port, token, timeout=120)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS
                )
                try:
                    page = browser.new_page(
                        viewport={"width": args.width, "height": args.height}, device_scale_factor=args.scale
                    )
                    page.set_default_timeout(args.timeout * 1000)
                    page.goto(f"http://127.0.0.1:{port}/lab/tree/{source.stem}.ipynb?token={token}")
                    page.wait_for_selector(".jp-Notebook .jp-Cell")
                    try:
                        _run_notebook(page, timeout=args.timeout)
                    except Failure:
                        if args.keep_temp:
                            page.screenshot(path=tmp / "failure.png")
                        raise

                    label = target["sliders"][args.slider or target["slider"]]
                    panel = page.locator(".widget-interact").filter(
                        has=page.locator(".widget-label", has_text=label)
                    )
                    if panel.count() != 1:
                        raise Failure(
                            f"found {panel.count()} interactive panels with a {label} slider, expected 1"
                        )
                    slider = panel.locator(".widget-slider").filter(
                        has=page.locator(".widget-label", has_text=label)
                    )
                    page.mouse.move(0, 0)
                    before = _panel_state(panel, slider)
                    before["verdict"] = _verdict(page, target["answer"])
                    if not before["png"]:
                        raise Failure("the interactive panel shows no plot before the slider moves")
                    _screenshot(panel, args.out_dir / f"{prefix}_before.png")

                    how = (
                        f"drag of {args.drag:+g} px"
                        if args.drag is not None
                        else f"{args.presses:+d} arrow presses"
                    )
                    _log(f"moving {label} by {how} from {before['readout']}")
                    _move_slider(page, slider, args.presses, args.drag)
                    after = _wait_for_redraw(page, panel, slider, before, timeout=args.timeout)
                    after["verdict"] = _verdict(page, target["answer"])
                    page.mouse.move(0, 0)
                    _screenshot(panel, args.out_dir / f"{prefix}_after.png")
                finally:
                    browser.close()
    finally:
        if server is not None:
            _stop(server)
        if args.keep_temp:
            _log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    changed = {key: before[key] != after[key] for key in ("readout", "png", "verdict")}
    if not all(changed.values()):
        raise Failure(f"moving the slider did not change {[k for k, v in changed.items() if not v]}")
    return {"slider": label, "before": before, "after": after}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out-dir", type=Path, default=REPO / "docs", help="where the PNGs go (default docs/)"
    )
    parser.add_argument(
        "--notebook", choices=sorted(NOTEBOOKS), default="01", help="which notebook (default 01)"
    )
    sliders = sorted({name for target in NOTEBOOKS.values() for name in target["sliders"]})
    parser.add_argument(
        "--slider", choices=sliders, default=None, help="which slider to move (default: 01 pi, 06 rung)"
    )
    parser.add_argument(
        "--presses",
        type=int,
        default=-5,
        help="arrow-key presses, negative = left (default -5: one step 0.02 in log10)",
    )
    parser.add_argument("--drag", type=float, default=None, help="drag the handle this many pixels instead")
    parser.add_argument(
        "--chromium", default="/usr/bin/chromium", help="Chromium binary (default /usr/bin/chromium)"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per step (default 300)")
    parser.add_argument("--width", type=int, default=1100, help="browser viewport width in CSS px")
    parser.add_argument("--height", type=int, default=1400, help="browser viewport height in CSS px")
    parser.add_argument(
        "--scale", type=float, default=1.5, help="device pixel ratio of the screenshots (default 1.5)"
    )
    parser.add_argument(
        "--keep-temp", action="store_true", help="keep the temporary folder (JupyterLab's log)"
    )
    args = parser.parse_args(argv)
    if args.slider is not None and args.slider not in NOTEBOOKS[args.notebook]["sliders"]:
        parser.error(
            f"notebook {args.notebook} has the sliders {sorted(NOTEBOOKS[args.notebook]['sliders'])}"
        )
    if args.presses == 0 and args.drag is None:
        parser.error("--presses must not be 0")
    if args.timeout <= 0 or args.width < 400 or args.height < 400 or args.scale <= 0:
        parser.error("--timeout and --scale must be positive, --width and --height at least 400")
    if not Path(args.chromium).is_file():
        print(
            f"error: no Chromium binary at {args.chromium} (install Debian's chromium or pass --chromium)",
            file=sys.stderr,
        )
        return 2
    try:
        import jupytext  # noqa: F401
        import playwright  # noqa: F401
    except ImportError as exc:
        print(f"error: {exc.name} is not installed in {sys.executable}", file=sys.stderr)
        return 2
    from playwright.sync_api import Error as PlaywrightError

    try:
        result = run(args)
    except Failure as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except PlaywrightError as exc:
        print(f"error: the browser step failed: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    before, after = result["before"], result["after"]
    print(
        f"{result['slider']}: {before['readout']} -> {after['readout']}; plot PNG changed "
        f"({len(before['png'])} -> {len(after['png'])} bytes); verdict before:\n{before['verdict']}\n"
        f"verdict after:\n{after['verdict']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
