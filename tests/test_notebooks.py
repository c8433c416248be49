"""Execute every teaching notebook top to bottom (jupytext py:percent → nbclient) at its default size.

Each notebook in ``notebooks/`` is converted in memory, executed with the "python3" kernel under
``MPLBACKEND=Agg``, and written (executed) only to pytest's temporary folder. The default size is what a reader
gets (``FULL = False`` in the first code cell); it must run within ``NOTEBOOK_BUDGET_S``. A cell that raises, or
an ``assert`` inside a notebook that fails, fails the test with the cell's error. The controls (ipywidgets) are
built and called once with their default values, as a notebook run without a browser does.
"""

from __future__ import annotations

import time
from pathlib import Path

import jupytext
import nbclient
import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))
EXPECTED = (
    "01_ratio_vs_divergence.py",
    "02_binary_and_topk.py",
    "03_training_inference_mismatch.py",
    "04_masks_in_training.py",
    "05_threshold_calibration.py",
    "06_does_the_trust_region_matter.py",
    "07_reading_a_report_card.py",
)
CELL_TIMEOUT_S = 120
NOTEBOOK_BUDGET_S = 60  # each notebook must run top to bottom within a minute at its default size


def test_all_notebooks_present() -> None:
    assert tuple(p.name for p in NOTEBOOKS) == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TRUSTREGION_LAB_CACHE", str(tmp_path / "cache"))
    # one thread per library: the notebooks share 2 CI cores with nothing else, and small ops run faster serial
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(name, "1")

    notebook = jupytext.read(path)
    assert notebook.metadata.get("kernelspec", {}).get("name") == "python3", (
        "jupytext header must name python3"
    )
    assert any(c.cell_type == "markdown" and "Answers" in c.source for c in notebook.cells), "no Answers cell"
    first = notebook.cells[0]
    assert (
        first.cell_type == "markdown"
        and "FULL = True" in first.source
        and "runs top to bottom" in first.source
    ), "the first cell must state the run time and the FULL switch"
    first_code = next(c for c in notebook.cells if c.cell_type == "code")
    assert "FULL = False" in first_code.source, "the first code cell must hold the switch FULL = False"

    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        executed = tmp_path / f"{path.stem}.ipynb"
        nbformat.write(notebook, executed)
    elapsed = time.perf_counter() - start

    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors, f"{path.name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    assert all(
        cell.get("execution_count") is not None for cell in notebook.cells if cell.cell_type == "code"
    ), "a code cell did not run"
    assert elapsed < NOTEBOOK_BUDGET_S, (
        f"{path.name} took {elapsed:.1f} s at its default size (budget {NOTEBOOK_BUDGET_S} s)"
    )
