"""examples/restore_and_generate.ipynb, executed by a real Jupyter kernel (nbclient +
ipykernel, the `test` extra) on a run this test trains at test_training's toy dims.

A notebook's cells run while ipykernel's asyncio event loop is running, and orbax
restores checkpoints with asyncio: the failures users report (`asyncio.run() cannot be
called from a running event loop`, a restore that never returns) appear only there, not
in pytest's process, so `load_checkpoint` is tested in the kernel itself.
"""

from __future__ import annotations

import os

import pytest

from conftest import ROOT
from cvae_jax.training import train_and_evaluate
from test_training import tiny_config  # the same toy run: its programs come from the XLA cache

nbformat = pytest.importorskip("nbformat", reason="the test extra: pip install -e .[test]")
nbclient = pytest.importorskip("nbclient", reason="the test extra: pip install -e .[test]")
pytest.importorskip("ipykernel", reason="the test extra: pip install -e .[test]")

NOTEBOOK = ROOT / "examples" / "restore_and_generate.ipynb"
QUIET = lambda line: None  # noqa: E731


def test_the_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)


def test_the_notebook_restores_a_run_and_generates_in_a_jupyter_kernel(tmp_path, monkeypatch):
    run = train_and_evaluate(tiny_config(tmp_path, num_epoch=1, run_name="notebook"), log=QUIET)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(
        "import asyncio\nprint('event loop running:', asyncio.get_running_loop().is_running())"))
    # the kernel inherits this environment: the run, this checkout, the suite's XLA cache and
    # flags, and matplotlib's inline backend (MPLBACKEND=Agg would show no figures)
    monkeypatch.setenv("CVAE_JAX_RUN", str(run))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.delenv("MPLBACKEND", raising=False)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert f"{run}: --model lab4, epoch 1, 8x16 frames" in text
    assert "16 frames; mean PSNR of frames 1..15: " in text
    assert sum("image/png" in out.get("data", {}) for out in outputs) == 2  # the frames and the PSNR curve
    assert "event loop running: True" in text  # the condition orbax's restore must survive
