"""monai_medgen.restoration: the restoration tasks' transforms and test sets, geometry of restored images,
clear errors for bad inputs, and the file round trip with provenance (small untrained networks; quality is
measured by scripts/evaluate_conditional.py, not here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_medgen.inferers import ConditionalDiffusionInferer
from monai_medgen.networks import ScoreUNet
from monai_medgen.restoration import (
    RestorationInferer,
    cond_channels,
    make_test_set,
    restore_file,
    restore_image,
    training_transforms,
    upsample,
    upsample_in_plane,
)


def tiny(task: str) -> ScoreUNet:
    torch.manual_seed(0)
    return ScoreUNet(
        2,
        1,
        cond_channels=cond_channels(task),
        channels=(8, 16),
        num_res_blocks=1,
        norm_num_groups=4,
        num_head_channels=8,
        fourier_exponents=(),
        residual=False,
    ).eval()


INFERER = ConditionalDiffusionInferer(num_train_timesteps=100)
AFFINE = np.array([[0.0, -1.5, 0, 30], [1.2, 0, 0, -40], [0, 0, 3.0, 5], [0, 0, 0, 1]])


def brain_like(shape=(1, 30, 34, 3)) -> MetaTensor:
    g = np.random.default_rng(0)
    x = np.zeros(shape, np.float32)
    x[:, 5:-5, 6:-6] = 200 + 50 * g.random((shape[0], shape[1] - 10, shape[2] - 12, *shape[3:]), dtype=np.float32)
    return MetaTensor(
        torch.as_tensor(x), affine=torch.as_tensor(AFFINE if len(shape) == 4 else AFFINE[[0, 1, 3]][:, [0, 1, 3]])
    )


def test_cond_channels_and_bad_task():
    assert cond_channels("sr") == 1 and cond_channels("denoise") == 1 and cond_channels("inpaint") == 2
    with pytest.raises(ValueError, match="task must be one of"):
        cond_channels("deblur")


@pytest.mark.parametrize("task", ["sr", "denoise", "inpaint"])
def test_training_transforms_leave_image_and_scale(task):
    x = torch.rand(1, 40, 40)
    item = {"image": x.clone()}
    t = training_transforms(task, crop_size=32, flip=False)
    t.set_random_state(0)
    out = t(item)
    assert torch.equal(item["image"], x)  # the caller's item is not modified in place
    assert out["image"].shape == (1, 32, 32) and out["cond"].shape == (cond_channels(task), 32, 32)
    assert float(out["image"].min()) >= -1 and float(out["image"].max()) <= 1
    assert not torch.allclose(out["cond"][:1], out["image"])  # degraded
    if task == "inpaint":
        mask = out["cond"][1]
        assert set(torch.unique(mask).tolist()) <= {0.0, 1.0} and 0 < float(mask.mean()) < 1


def test_test_sets_are_fixed_and_consistent():
    truth = torch.rand(3, 1, 32, 32)
    a, b = make_test_set("denoise", truth, seed=5), make_test_set("denoise", truth, seed=5)
    assert torch.equal(a.cond, b.cond) and not torch.equal(a.cond, make_test_set("denoise", truth, seed=6).cond)
    sr = make_test_set("sr", truth)
    assert sr.measurement.shape == (3, 1, 8, 8)
    torch.testing.assert_close(sr.degrade_fn(truth), sr.measurement)
    hole = make_test_set("inpaint", truth, hole=8)
    assert int(hole.mask.sum()) == 3 * 64 and torch.equal(hole.shown * (1 - hole.mask), hole.shown)


def test_upsample_keeps_the_field_of_view():
    img = brain_like()
    up = upsample_in_plane(img, 2.0)
    assert tuple(up.shape) == (1, 60, 68, 3)
    a, b = np.asarray(img.affine), np.asarray(up.affine)
    np.testing.assert_allclose(np.linalg.norm(b[:3, :3], axis=0), np.linalg.norm(a[:3, :3], axis=0) / [2, 2, 1])
    # the outer edges of the first voxel coincide: corner of coarse voxel 0 == corner of fine voxel 0
    corner = np.array([-0.5, -0.5, 0, 1])
    np.testing.assert_allclose(a @ corner, b @ corner, atol=1e-9)
    with pytest.raises(ValueError, match="factor must be a number >= 1"):
        upsample_in_plane(img, 0.5)


@pytest.mark.parametrize("task", ["sr", "denoise", "inpaint"])
def test_restore_image_keeps_geometry(task):
    img = brain_like()
    mask = None
    if task == "inpaint":
        m = torch.zeros_like(img)
        m[:, 10:20, 12:22] = 1
        mask = MetaTensor(m, affine=img.affine)
    factor = 2.0 if task == "sr" else 1.0
    out, std = restore_image(
        tiny(task), INFERER, task, img, mask=mask, factor=factor, num_steps=3, num_samples=2, seed=1
    )
    expected = upsample_in_plane(img, 2.0) if task == "sr" else img
    assert out.shape == expected.shape and std.shape == expected.shape
    np.testing.assert_allclose(np.asarray(out.affine), np.asarray(expected.affine))
    assert torch.isfinite(out).all() and float(std.min()) >= 0
    if task == "inpaint":  # the known voxels come back exactly
        known = ~mask.bool()
        torch.testing.assert_close(out.as_tensor()[known], img.as_tensor()[known])
    again, _ = restore_image(
        tiny(task), INFERER, task, img, mask=mask, factor=factor, num_steps=3, num_samples=2, seed=1
    )
    torch.testing.assert_close(again, out)


def test_restore_image_bad_inputs():
    img = brain_like((1, 24, 24))
    net = tiny("inpaint")
    with pytest.raises(ValueError, match="mask is required"):
        restore_image(net, INFERER, "inpaint", img, num_steps=2)
    with pytest.raises(ValueError, match="mask is empty"):
        restore_image(net, INFERER, "inpaint", img, mask=torch.zeros_like(img), num_steps=2)
    with pytest.raises(ValueError, match="mask is full"):
        restore_image(net, INFERER, "inpaint", img, mask=torch.ones_like(img), num_steps=2)
    with pytest.raises(ValueError, match="mask must have the image's shape"):
        restore_image(net, INFERER, "inpaint", img, mask=torch.ones(1, 20, 24), num_steps=2)
    shifted = np.asarray(img.affine).copy()
    shifted[0, -1] += 1
    m = torch.zeros_like(img.as_tensor())
    m[:, 3:6, 3:6] = 1
    with pytest.raises(ValueError, match="mask must lie on the image's voxel grid"):
        restore_image(net, INFERER, "inpaint", img, mask=MetaTensor(m, affine=torch.as_tensor(shifted)), num_steps=2)
    bad = img.clone()
    bad[0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        restore_image(tiny("denoise"), INFERER, "denoise", bad, num_steps=2)
    with pytest.raises(ValueError, match="one channel"):
        restore_image(tiny("denoise"), INFERER, "denoise", torch.rand(2, 24, 24), num_steps=2)
    with pytest.raises(ValueError, match="factor applies to super-resolution only"):
        restore_image(tiny("denoise"), INFERER, "denoise", img, factor=2, num_steps=2)
    with pytest.raises(ValueError, match="no positive voxels"):
        restore_image(tiny("denoise"), INFERER, "denoise", torch.zeros(1, 24, 24), num_steps=2)


def test_restoration_inferer_for_the_evaluator():
    cond = torch.rand(2, 2, 16, 16) * 2 - 1
    cond[:, 1] = 0
    cond[:, 1, 4:8, 4:8] = 1
    out = RestorationInferer(INFERER, task="inpaint", num_steps=2)(cond, tiny("inpaint"))
    assert out.shape == (2, 1, 16, 16)
    known = cond[:, 1:2] == 0
    torch.testing.assert_close(out[known], cond[:, :1][known])


def test_restore_file_round_trip(tmp_path):
    import nibabel as nib

    from monai_medgen.io import is_synthetic, read_provenance

    src = tmp_path / "noisy.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(brain_like()[0]), AFFINE), str(src))
    before = src.read_bytes()
    with pytest.raises(ValueError, match="refusing to overwrite an input"):
        restore_file(tiny("denoise"), INFERER, "denoise", src, src, num_steps=2)
    out = tmp_path / "restored.nii.gz"
    res = restore_file(tiny("denoise"), INFERER, "denoise", src, out, num_steps=2, seed=3, model_name="tiny")
    assert src.read_bytes() == before
    img = nib.load(str(out))
    assert img.shape == (30, 34, 3)
    np.testing.assert_allclose(img.affine, AFFINE, atol=1e-5)
    assert is_synthetic(out) and res["uncertainty"] is None
    prov = read_provenance(out)
    assert (prov.model, prov.task, prov.sampler, prov.steps, prov.seed) == ("tiny", "denoise", "dpm++", 2, 3)
    assert len(prov.input_checksum) == 64


def tiny3d(task: str = "sr") -> ScoreUNet:
    torch.manual_seed(0)
    return ScoreUNet(
        3,
        1,
        cond_channels=cond_channels(task),
        channels=(4, 8),
        num_res_blocks=1,
        norm_num_groups=4,
        num_head_channels=4,
        fourier_exponents=(),
        residual=False,
    ).eval()


def test_restore_volume_patch_path_and_geometry():
    """A 3D model restores a whole volume through overlapping patches; one patch covering the (padded) volume
    equals the whole-volume path; thick slices (factor (1, 1, 2)) come back on the fine grid."""
    img = brain_like((1, 18, 20, 7))
    net = tiny3d()
    whole, _ = restore_image(net, INFERER, "sr", img, factor=(1, 1, 2), num_steps=2, patch_size=None, seed=2)
    one, _ = restore_image(net, INFERER, "sr", img, factor=(1, 1, 2), num_steps=2, patch_size=(64, 64, 64), seed=2)
    expected = upsample(img, (1, 1, 2), mode="trilinear")
    assert whole.shape == expected.shape == (1, 18, 20, 14)
    np.testing.assert_allclose(np.asarray(whole.affine), np.asarray(expected.affine))
    torch.testing.assert_close(one, whole)
    patched, std = restore_image(
        net, INFERER, "sr", img, factor=(1, 1, 2), num_steps=2, patch_size=(8, 8, 8), num_samples=2
    )
    assert patched.shape == whole.shape and std.shape == whole.shape and torch.isfinite(patched).all()
    with pytest.raises(ValueError, match="volume"):
        restore_image(net, INFERER, "sr", brain_like((1, 16, 16)), num_steps=2)


def test_samples_differ_with_deterministic_sampler():
    """With DDIM (no sampler noise) the N samples differ only by their starting noise: they must not repeat."""
    img = brain_like((1, 24, 24))
    _, std = restore_image(tiny("denoise"), INFERER, "denoise", img, sampler="ddim", num_steps=2, num_samples=2)
    assert float(std.max()) > 0
    truth = torch.rand(2, 1, 16, 16)
    from monai_medgen.restoration import restore_slices

    _, std = restore_slices(INFERER, tiny("denoise"), make_test_set("denoise", truth), "ddim", 2, 2)
    assert float(std[0].max()) > 0 and float(std[1].max()) > 0
