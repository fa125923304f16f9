"""Simulated MR contrasts (monai_medgen.tasks.contrasts) and the cddpm_mr_contrast_2d bundle."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_medgen.tasks.contrasts import (
    CONTRASTS,
    RandContrastPaird,
    contrast_image,
    contrast_slices,
    smooth_phase,
    tissue_signals,
    train_contrast_classifier,
    translate_contrast,
)
from monai_medgen.transforms import JoinComplex

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "cddpm_mr_contrast_2d"
needs_nilearn = pytest.mark.skipif(importlib.util.find_spec("nilearn") is None, reason="nilearn (MNI152) missing")


def test_signal_equations_give_the_textbook_contrasts():
    gm, wm, csf = tissue_signals("t1")
    assert wm > gm > csf  # T1-weighted: white matter brightest, CSF dark
    gm, wm, csf = tissue_signals("t2")
    assert csf > gm > wm  # T2-weighted: CSF brightest
    gm, wm, csf = tissue_signals("flair")
    assert csf < 0.15 < wm < gm  # inversion recovery at TI = T1_csf ln 2 nulls CSF; grey above white
    assert min(tissue_signals("pd")) > 0.8  # proton density: flat
    with pytest.raises(ValueError, match="contrast must be one of"):
        tissue_signals("t3")


def test_contrast_image_is_a_complex_image_split_into_two_channels():
    maps = torch.zeros(3, 8, 8)
    maps[0, :4], maps[1, 4:] = 1.0, 1.0  # grey matter top, white matter bottom
    phase = smooth_phase((8, 8), np.random.RandomState(0))
    x = contrast_image(maps, "t1", phase)
    assert x.shape == (2, 8, 8) and x.dtype == torch.float32
    z = JoinComplex()(x)[0]
    torch.testing.assert_close(z.abs()[4:], torch.ones(4, 8))  # white matter in T1 = the largest signal = 1
    torch.testing.assert_close(
        z.angle()[4:], torch.remainder(phase[4:] + math.pi, 2 * math.pi) - math.pi, atol=1e-4, rtol=0
    )
    assert float(z.abs()[:4].mean()) == pytest.approx(float(tissue_signals("t1")[0]), rel=1e-5)


@needs_nilearn
def test_held_out_band_is_disjoint_from_the_training_slices():
    train, held, other = (contrast_slices(s, 32) for s in ("train", "held_out", "other_planes"))
    assert train.shape[1:] == held.shape[1:] == other.shape[1:] == (3, 32, 32)
    assert len(train) > 3 * len(held) > 0 and len(other) > len(train)
    flat_train = train.flatten(1)
    for sl in held.flatten(1):  # no held-out slice is among the training slices
        assert float((flat_train - sl).abs().sum(1).min()) > 1.0
    oblique = contrast_slices("oblique", 32)  # the classifier's tilted axial slices: none is a training slice
    assert oblique.shape[1:] == (3, 32, 32) and len(oblique) > 4 * len(train)
    assert min(float((flat_train - sl).abs().sum(1).min()) for sl in oblique.flatten(1)) > 1.0
    with pytest.raises(ValueError, match="split must be"):
        contrast_slices("test")


@needs_nilearn
def test_pairs_share_the_slice_and_phase_and_sources_can_be_absent():
    maps = contrast_slices("train", 32)[40]
    t = RandContrastPaird(translate_prob=1.0)
    t.set_random_state(0)
    item = t({"maps": maps})
    assert set(item) == {"image", "source", "label"} and 0 <= item["label"] < len(CONTRASTS)
    z, s = JoinComplex()(item["image"])[0], JoinComplex()(item["source"])[0]
    brain = (z.abs() > 0.05) & (s.abs() > 0.05)
    assert float(brain.float().mean()) > 0.2
    torch.testing.assert_close(
        torch.polar(torch.ones_like(z.angle()), z.angle())[brain],
        torch.polar(torch.ones_like(s.angle()), s.angle())[brain],
        atol=1e-3,
        rtol=0,
    )
    assert float((z.abs() - s.abs()).abs().max()) > 0.05  # another contrast
    t = RandContrastPaird(translate_prob=0.0)
    t.set_random_state(0)
    assert float(t({"maps": maps})["source"].abs().max()) == 0.0
    with pytest.raises(ValueError, match="translate_prob"):
        RandContrastPaird(translate_prob=1.5)


def test_optional_condition_is_the_zero_image():
    from monai_medgen.networks import ScoreUNet

    torch.manual_seed(0)
    net = ScoreUNet(
        spatial_dims=2,
        in_channels=2,
        cond_channels=2,
        optional_condition=True,
        num_classes=4,
        channels=[8, 16, 16],
        norm_num_groups=8,
        fourier_exponents=[],
        residual=False,
    ).eval()
    z, g = torch.randn(2, 2, 16, 16), torch.tensor([0.5, 1.0])
    with torch.no_grad():
        torch.testing.assert_close(
            net(z, g, class_labels=torch.tensor([1, 2])),
            net(z, g, class_labels=torch.tensor([1, 2]), condition=torch.zeros(2, 2, 16, 16)),
        )
    strict = ScoreUNet(spatial_dims=2, in_channels=2, cond_channels=2, channels=[8, 16, 16], norm_num_groups=8)
    with pytest.raises(ValueError, match="condition must have shape"):
        strict(z, g)


def test_translate_contrast_names_bad_arguments():
    with pytest.raises(ValueError, match="target must be one of"):
        translate_contrast(None, None, torch.zeros(1, 2, 8, 8), "t3")
    with pytest.raises(ValueError, match="target index"):
        translate_contrast(None, None, torch.zeros(1, 2, 8, 8), 7)
    with pytest.raises(ValueError, match="source must have shape"):
        translate_contrast(None, None, torch.zeros(2, 8, 8), "t2")


@needs_nilearn
def test_committed_weights_translate_better_than_the_untranslated_source():
    """The bundle's weights, loaded through its inference.yaml: T1 -> T2 on held-out slices is closer to the
    simulated T2 than the T1 source is (magnitude PSNR), and generation writes 2-channel synthetic NIfTI."""
    from monai.bundle import ConfigParser

    import monai_medgen  # noqa: F401
    from monai_medgen.bundle import load_model

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.yaml"))
    parser["bundle_root"] = str(BUNDLE)
    parser["device"] = "$torch.device('cpu')"
    net = parser.get_parsed_content("network_def", instantiate=True)
    load_model(str(BUNDLE / "models" / "model.pt"), net)
    inferer = parser.get_parsed_content("inferer", instantiate=True)
    held = contrast_slices("held_out", 64)[::6]
    phase = torch.zeros(64, 64)
    src = torch.stack([contrast_image(m, "t1", phase) for m in held])
    truth = torch.stack([contrast_image(m, "t2", phase) for m in held])
    out = translate_contrast(net.eval(), inferer, src, "t2", num_steps=10, seed=0)
    assert out.shape == truth.shape

    def psnr(a, b):
        ma, mb = torch.linalg.vector_norm(a, dim=1).clamp(0, 1), torch.linalg.vector_norm(b, dim=1)
        return float(10 * torch.log10(1 / ((ma - mb) ** 2).mean()))

    assert psnr(out, truth) > psnr(src, truth) + 3.0


def test_generate_command_writes_two_channel_synthetic_nifti(tmp_path):
    """``monai-medgen generate`` with the MR-contrast bundle: complex samples as 2-channel NIfTI marked synthetic."""
    import nibabel as nib

    from monai_medgen import cli, io

    rc = cli.main(
        ["generate", "--bundle", str(BUNDLE), "--class", "1", "--guidance", "2", "--num", "2", "--steps", "2"]
        + ["--output-dir", str(tmp_path / "gen"), "--device", "cpu"]
    )
    assert rc == 0
    written = sorted((tmp_path / "gen").glob("*.nii.gz"))
    assert len(written) == 2
    for path in written:
        assert io.is_synthetic(path)
        data = nib.load(str(path)).get_fdata()
        assert data.shape == (64, 64, 1, 2) and np.isfinite(data).all() and 0 <= data.min() and data.max() <= 1


@needs_nilearn
def test_contrast_classifier_learns_from_slices_the_diffusion_model_never_sees():
    """A short run of the project's contrast classifier (held-out band, other planes, oblique slices) already labels
    simulated images of the diffusion model's own training slices far above chance (4 classes: 0.25)."""
    net, accuracy = train_contrast_classifier(size=32, iterations=150)
    assert set(accuracy) == {"jitter_0.1", "jitter_0"}
    assert accuracy["jitter_0"] > 0.6 and accuracy["jitter_0.1"] > 0.55
    assert not net.training  # returned in eval mode, batch-norm statistics recomputed
