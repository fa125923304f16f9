"""The quick start (``python -m monai_medgen.demo``): one bundle's train, evaluate and inference configs run
through MONAI's bundle runner, with every output under the chosen folder and the bundle's weights untouched."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import nibabel as nib
import pytest
import torch

from monai_medgen import demo
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
    summary = main(
        [
            "--epochs",
            "1",
            "--epoch-length",
            "2",
            "--num-samples",
            "2",
            "--sample-steps",
            "2",
            "--output-dir",
            str(out),
            "--device",
            "cpu",
            "--short",
        ]
    )
    # part 1: the committed SR weights beat the best classical interpolation on every held-out image, Colin27 included
    names = [r["image"] for r in summary["restoration"]]
    assert names[0] == "colin27_t1" and {"mr_small", "ct_small"} <= set(names)
    for r in summary["restoration"]:
        assert r["ours_psnr"] > r["classical_psnr"] > r["input_psnr"], r
    assert (out / "restoration.png").is_file() and (out / "generation.png").is_file()
    for plane in demo.PLANES:  # part 2: two synthetic slices per plane
        assert len(list((out / "generate" / plane).glob("sample_*_synthetic.nii.gz"))) == 2
    # part 3: training, held-out scoring, samples
    assert summary["iterations"] == 2 and summary["bpd"] > 0 and summary["png_bpd"] > 0
    assert summary["heldout"] == "colin27"
    assert json.loads((out / "summary.json").read_text())["bpd"] == summary["bpd"]
    assert (out / "model.pt").is_file() and (out / "samples" / "samples.png").is_file()
    # the quick recipe: the bundle's smaller network (16 channels at the top level), not train.yaml's 32
    weights = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    first = next(v for k, v in weights.items() if v.ndim == 4)
    assert first.shape[0] == demo.QUICK_RECIPES["vdm_brain_mri_2d"]["network_def#channels"][0] == 16, first.shape
    sample = nib.load(out / "samples" / "sample_001_synthetic.nii.gz")
    assert sample.shape[:2] == (32, 32) and sample.header["descrip"].item().decode().startswith("SYNTHETIC")
    assert _sha(committed) == before  # the bundle's own weights are never overwritten


@pytest.mark.skipif(importlib.util.find_spec("nilearn") is None, reason="needs nilearn")
def test_quick_start_without_colin27(tmp_path, monkeypatch, capsys):
    """A machine without mricron-data: the demo says so and scores on pydicom's MR slice, honestly named."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(demo, "load_colin27_available", lambda: False)
    monkeypatch.setattr(demo, "RESTORE_IMAGES", ("mr_small",))
    summary = main(["--output-dir", str(tmp_path / "qs"), "--device", "cpu", "--short"])
    printed = capsys.readouterr().out
    assert "Colin27 not found" in printed and summary["heldout"] == "pydicom MR_small"
    assert [r["image"] for r in summary["restoration"]] == ["mr_small"] and summary["bpd"] > 0


def test_bundle_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_bundle"):
        bundle_dir("no_such_bundle")
    assert bundle_dir(str(bundle_dir("cddpm_denoising_2d"))).name == "cddpm_denoising_2d"


def test_extra_must_be_key_value(tmp_path):
    with pytest.raises(SystemExit):
        main(["--output-dir", str(tmp_path), "--extra", "image_size"])
