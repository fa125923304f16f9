"""Volume-level progress of a restoration: one bar over the whole volume (slices done / total) and a
``progress(done, total)`` callback, for the blind residual models (in-plane and thick slices), the conditional
DDPMs slice by slice, and ``monai-medgen restore`` on a volume."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

import monai_medgen.tasks.restore as restore_module
from monai_medgen import cli
from monai_medgen.inferers import ConditionalDiffusionInferer
from monai_medgen.networks import ScoreUNet
from monai_medgen.restoration import restore_image
from monai_medgen.tasks.blind import cond_channels_of
from monai_medgen.tasks.restore import ResidualDiffusionInferer, VolumeProgress, restore_residual

REPO = Path(__file__).resolve().parents[1]


def _net(cond_channels: int = 1) -> ScoreUNet:
    torch.manual_seed(0)
    return ScoreUNet(
        2,
        1,
        cond_channels=cond_channels,
        channels=(8, 16),
        num_res_blocks=1,
        norm_num_groups=8,
        num_head_channels=8,
        fourier_exponents=[],
        residual=False,
    ).eval()


def _volume(shape=(1, 16, 16, 5)) -> MetaTensor:
    g = torch.Generator().manual_seed(1)
    smooth = torch.linspace(0, 1, shape[1])[:, None, None] * torch.linspace(0.5, 1, shape[2])[None, :, None]
    return MetaTensor((smooth.expand(*shape[1:]) + 0.05 * torch.rand(shape[1:], generator=g))[None] * 1000)


def _bar_lines(err: str) -> list[str]:
    """The states a tqdm bar printed (carriage returns separate them when stderr is not a terminal)."""
    return [line.strip() for line in err.replace("\r", "\n").splitlines() if "slice" in line]


def test_volume_progress_counts_and_checks_its_callback(capsys):
    calls = []
    with VolumeProgress(7, verbose=True, callback=lambda d, t: calls.append((d, t)), desc="restore (sr)") as bar:
        bar.update(3)
        bar.update(4)
    assert calls == [(3, 7), (7, 7)]
    assert any("restore (sr): 100%" in line and "7/7" in line for line in _bar_lines(capsys.readouterr().err))
    with VolumeProgress(1, verbose=True) as single:  # one slice: no bar
        single.update(1)
    assert _bar_lines(capsys.readouterr().err) == []
    with pytest.raises(ValueError, match="progress must be a callable"):
        VolumeProgress(3, callback="not callable")


def test_residual_restore_reports_the_whole_volume_in_plane(monkeypatch, capsys):
    monkeypatch.setattr(restore_module, "MAX_PIXELS_PER_BATCH", 2 * 16 * 16)  # two slices per batch
    inferer = ResidualDiffusionInferer(family="denoise", num_train_timesteps=100, prediction_type="v_prediction")
    calls = []
    out, _ = restore_residual(
        _net(cond_channels_of("denoise")),
        inferer,
        _volume(),
        num_steps=1,
        verbose=True,
        progress=lambda d, t: calls.append((d, t)),
    )
    assert out.shape == (1, 16, 16, 5)
    assert calls == [(2, 5), (4, 5), (5, 5)]
    lines = _bar_lines(capsys.readouterr().err)
    assert lines and "5/5" in lines[-1] and lines[-1].startswith("restore (denoise): 100%")
    # a 2D image is one slice: the callback still ends at (1, 1), and no bar is drawn
    calls.clear()
    restore_residual(
        _net(cond_channels_of("denoise")),
        inferer,
        MetaTensor(_volume()[..., 0]),
        num_steps=1,
        verbose=True,
        progress=lambda d, t: calls.append((d, t)),
    )
    assert calls == [(1, 1)] and _bar_lines(capsys.readouterr().err) == []


def test_residual_thick_slices_count_the_planes_of_both_stacks(monkeypatch):
    monkeypatch.setattr(restore_module, "MAX_PIXELS_PER_BATCH", 4 * 16 * 8)
    inferer = ResidualDiffusionInferer(family="sr", num_train_timesteps=100, prediction_type="v_prediction")
    low = _volume((1, 12, 10, 4))
    for planes, total in (("both", 10 + 12), ("one", 10)):
        calls = []
        out, _ = restore_residual(
            _net(cond_channels_of("sr")),
            inferer,
            low,
            factor=(1, 1, 2),
            num_steps=1,
            planes=planes,
            progress=lambda d, t, calls=calls: calls.append((d, t)),
        )
        assert out.shape == (1, 12, 10, 8)
        assert calls[-1] == (total, total) and all(t == total for _, t in calls)
        assert [d for d, _ in calls] == sorted(d for d, _ in calls) and len(calls) > 1


def test_conditional_ddpm_restore_reports_slices(capsys):
    inferer = ConditionalDiffusionInferer(num_train_timesteps=100, prediction_type="v_prediction")
    calls = []
    out, _ = restore_image(
        _net(),
        inferer,
        "denoise",
        _volume(),
        num_steps=1,
        batch_size=2,
        verbose=True,
        progress=lambda d, t: calls.append((d, t)),
    )
    assert out.shape == (1, 16, 16, 5)
    assert calls == [(2, 5), (4, 5), (5, 5)]
    lines = [line for line in _bar_lines(capsys.readouterr().err) if line.startswith("restore (denoise)")]
    assert lines and "5/5" in lines[-1]


def test_command_line_restore_shows_one_bar_over_the_volume(tmp_path, capfd):
    """``monai-medgen restore`` of a 6-slice volume with a bundle's configs (fresh weights, 1 step)."""
    from monai.bundle import ConfigParser

    from monai_medgen.bundle import save_model

    bundle = tmp_path / "cddpm_denoising_2d"
    shutil.copytree(REPO / "bundles" / "cddpm_denoising_2d" / "configs", bundle / "configs")
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    parser["bundle_root"], parser["device"] = str(bundle), "cpu"
    save_model(bundle / "models" / "model.pt", parser.get_parsed_content("network"))
    scan = tmp_path / "scan.nii.gz"
    nib.save(
        nib.Nifti1Image(np.asarray(_volume((1, 32, 32, 6))[0], np.float32), np.diag([1.0, 1.0, 3.0, 1.0])), str(scan)
    )
    out = tmp_path / "restored.nii.gz"
    rc = cli.main(
        [
            "restore",
            "--bundle",
            str(bundle),
            "--input",
            str(scan),
            "--output",
            str(out),
            "--steps",
            "1",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0 and nib.load(str(out)).shape == (32, 32, 6)
    lines = [line for line in _bar_lines(capfd.readouterr().err) if line.startswith("restore (denoise)")]
    assert lines and "6/6" in lines[-1] and "100%" in lines[-1]
