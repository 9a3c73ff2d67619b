"""notebooks/: committed without outputs and as notebooks/make_notebooks.py writes them; each runs
top to bottom in a real Jupyter kernel on the small budget (RESNETLAB_NOTEBOOK_SMALL=1), and so do
the seed notebook 000's code cells (the textbook's API, unchanged but for the d2l import line),
whose training cell must draw its plot inline.

A failing cell fails the test with nbclient's CellExecutionError: the cell's source and its
traceback. A cell running over 2 minutes fails it too (the cell timeout)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import resnetlab

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SEED_CELLS = Path(__file__).parent / "d2l_cells" / "000"
NAMES = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
CELL_TIMEOUT = 120  # seconds: the budget for a whole notebook, here per cell

# The seed's training cell trains ResNet-18 for 10 epochs at 96 px on 60,000 images. Prepended
# to its cells (which stay as they are), this cell gives the reduced budget of tests/test_d2l.py:
# d2l's own functions on 64 examples per split, one epoch, 28 px.
SEED_BUDGET = """\
from resnetlab import d2l as _d2l

_d2l.SUBSET = 64
_load, _train = _d2l.load_data_fashion_mnist, _d2l.train_ch6
_d2l.load_data_fashion_mnist = lambda batch_size, resize=None: _load(batch_size, resize=28)
_d2l.train_ch6 = lambda net, train_iter, test_iter, num_epochs, lr, device: _train(
    net, train_iter, test_iter, 1, lr, device)"""

needs_kernel = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("nbclient", "ipykernel", "nbformat")),
    reason="running notebooks needs nbclient, ipykernel and nbformat: pip install '.[test]'",
)


def test_there_are_five_chapters():
    assert [n[:3] for n in NAMES] == ["01_", "02_", "03_", "04_", "05_"]


@pytest.mark.parametrize("name", NAMES)
def test_committed_without_outputs(name):
    nb = json.loads((NOTEBOOKS / name).read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    assert "SMALL = True" in "".join(code[0]["source"])  # the parameters cell comes first


def test_nbstripout_finds_nothing_to_strip():
    if shutil.which("nbstripout") is None and importlib.util.find_spec("nbstripout") is None:
        pytest.skip("nbstripout is not installed: pip install '.[test]'")
    files = [str(NOTEBOOKS / n) for n in NAMES]
    done = subprocess.run(
        [sys.executable, "-m", "nbstripout", "--verify", *files], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


@needs_kernel
def test_notebooks_are_what_the_generator_writes():
    sys.path.insert(0, str(NOTEBOOKS))
    try:
        import make_notebooks
    finally:
        sys.path.remove(str(NOTEBOOKS))
    assert sorted(make_notebooks.NOTEBOOKS) == NAMES
    for name, cells in make_notebooks.NOTEBOOKS.items():
        assert (NOTEBOOKS / name).read_text(encoding="utf-8") == make_notebooks.render(cells), (
            f"{name} differs from what notebooks/make_notebooks.py writes: run it"
        )


@pytest.fixture
def kernel_env(monkeypatch):
    """What the kernel inherits: this resnetlab on its path, one thread, the small budget, and
    matplotlib's inline backend (no MPLBACKEND)."""
    src = str(Path(resnetlab.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", src + (os.pathsep + path if path else ""))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    monkeypatch.setenv("RESNETLAB_NOTEBOOK_SMALL", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)
    monkeypatch.delenv("RESNETLAB_D2L_SUBSET", raising=False)


def execute(nb, cwd: Path) -> None:
    """Runs every cell in a fresh python3 kernel started in `cwd`. The time a notebook takes is
    bounded by the cell timeout alone (nbclient fails the cell past it): a measured time was once
    printed here and never asserted, and a timed assertion would fail on a busy shared machine."""
    from nbclient import NotebookClient

    NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    ).execute()


@needs_kernel
@pytest.mark.slow
@pytest.mark.needs_fashion_mnist
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_in_a_kernel(name, kernel_env, tmp_path):
    import nbformat

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    execute(nb, tmp_path)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("budget: small" in o.get("text", "") for o in outputs)
    text = "".join(o.get("text", "") for o in outputs)
    if name.startswith("05"):  # packed, trained from the shards, swept, a mistake explained
        assert "packed photos: 180 train, 45 test" in text and "kept_test_acc" in text
        assert text.count(" complete: lr=") == 3 and "the most confident mistake: " in text
        assert text.count("Grad-CAM at layer3: runs/photos/") == 2
    if name.startswith(("01", "02", "03", "05")):  # they draw (05: its Grad-CAM PNGs)
        assert any(
            "image/png" in o.get("data", {}) or "image/svg+xml" in o.get("data", {})
            for o in outputs
        )


@needs_kernel
@pytest.mark.slow
@pytest.mark.needs_fashion_mnist
def test_seed_000_cells_run_in_a_kernel_and_plot_inline(kernel_env, tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    cells = sorted(SEED_CELLS.glob("*.py"))
    kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb = new_notebook(metadata={"kernelspec": kernelspec})
    nb.cells = [new_code_cell(SEED_BUDGET)] + [new_code_cell(c.read_text()) for c in cells]
    assert sum("from resnetlab import d2l" in c.source for c in nb.cells[1:]) == 1
    execute(nb, tmp_path)
    training = nb.cells[-1]
    assert "d2l.train_ch6" in training.source
    data = [o.get("data", {}) for o in training.outputs]
    assert any("image/svg+xml" in d or "image/png" in d for d in data), training.outputs
    text = "".join(o.get("text", "") for o in training.outputs if o.output_type == "stream")
    assert "train acc" in text and "examples/sec on" in text
    shapes = "".join(o.get("text", "") for o in nb.cells[9].outputs)  # the shape walk
    assert "Linear output shape:\t torch.Size([1, 10])" in shapes
    nbformat.validate(nb)
