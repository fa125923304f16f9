"""The notebooks under ``notebooks/`` run from top to bottom in a fresh kernel (``nbclient``), on the committed
bundles and the packages' own data, and write the pictures they show."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the test extra installs nbformat, nbclient and ipykernel")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "restore_and_generate.ipynb"


def _images(nb) -> list[str]:
    """MIME types of the pictures the executed notebook displays."""
    return [
        mime
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        for mime in out.get("data", {})
        if mime.startswith("image/")
    ]


def test_restore_and_generate_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDGEN_NOTEBOOK_OUTPUT", str(tmp_path / "outputs"))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError naming the failing cell
    out = tmp_path / "outputs"
    assert (out / "restoration.png").is_file()
    generated = out / "generated"
    assert (generated / "samples.png").is_file() and (generated / "sampling.gif").is_file()
    assert len(list(generated.glob("*_synthetic.nii.gz"))) == 4
    # the restoration figure, the sample grid and the sampling animation are shown
    assert _images(nb).count("image/png") >= 2 and "image/gif" in _images(nb)
    text = "".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )
    assert "bicubic  PSNR" in text and "ours     PSNR" in text
