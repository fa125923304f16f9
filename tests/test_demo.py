"""The quick start (``python -m monai_medgen.demo``): one bundle's train, evaluate and inference configs run
through MONAI's bundle runner, with every output under the chosen folder and the bundle's weights untouched."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import nibabel as nib
import pytest

from monai_medgen.demo import bundle_dir, main

COLIN27 = Path("/usr/share/mricron/templates/ch2bet.nii.gz")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.skipif(
    importlib.util.find_spec("nilearn") is None or not COLIN27.is_file(), reason="needs nilearn and mricron-data"
)
def test_quick_start_runs_the_bundle(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    bundle = bundle_dir("vdm_brain_mri_2d")
    committed = bundle / "models" / "model.pt"
    before = _sha(committed)
    out = tmp_path / "qs"
    summary = main([
        "--epochs", "1", "--epoch-length", "2", "--num-samples", "2", "--sample-steps", "2", "--output-dir", str(out),
        "--device", "cpu", "--extra", "image_size=32", "crop_size=16", "num_slices=2", "num_time_samples=2",
        "batch_size=2", "val_interval=0", "sample_interval=0",
    ])
    assert summary["iterations"] == 2 and summary["bpd"] > 0 and summary["png_bpd"] > 0
    assert json.loads((out / "summary.json").read_text())["bpd"] == summary["bpd"]
    assert (out / "model.pt").is_file() and (out / "samples" / "samples.png").is_file()
    sample = nib.load(out / "samples" / "sample_001_synthetic.nii.gz")
    assert sample.shape[:2] == (32, 32) and sample.header["descrip"].item().decode().startswith("SYNTHETIC")
    assert _sha(committed) == before  # the bundle's own weights are never overwritten


def test_bundle_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_bundle"):
        bundle_dir("no_such_bundle")
    assert bundle_dir(str(bundle_dir("cddpm_denoising_2d"))).name == "cddpm_denoising_2d"


def test_extra_must_be_key_value(tmp_path):
    with pytest.raises(SystemExit):
        main(["--output-dir", str(tmp_path), "--extra", "image_size"])
