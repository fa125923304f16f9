"""Tests of monai_medgen.metrics: PSNR, SSIM, sharpness (accutance), data consistency, on real brain slices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monai_medgen.data import demo_slices
from monai_medgen.metrics import (
    LOSSLESS_CODECS,
    available_codecs,
    codec_bits_per_dim,
    data_consistency,
    lossless_bits,
    masked_psnr,
    png_bits_per_dim,
    psnr,
    relative_sharpness,
    sharpness,
    ssim,
)
from monai_medgen.transforms import RandInpaintingMask, RandMixedNoise, SimulateLowResolution


@pytest.fixture(scope="module")
def slices() -> torch.Tensor:
    """Two held-out Colin27 axial slices, (2, 1, 64, 64) in [0, 1]."""
    return torch.as_tensor(np.stack([d["image"] for d in demo_slices("colin27", size=64, num_slices=2)]))


def _blur(x: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    r = torch.arange(-4, 5, dtype=x.dtype)
    k = torch.exp(-(r**2) / (2 * sigma**2))
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (4, 4, 0, 0), mode="replicate"), k.reshape(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, 4, 4), mode="replicate"), k.reshape(1, 1, -1, 1))


def test_psnr_matches_the_formula_and_is_inf_for_identical_images():
    x = torch.zeros(2, 1, 4, 4)
    y = x.clone()
    y[0, 0, 1, 2] = 0.5  # MSE = 0.25 / 16 in example 0, 0 in example 1
    out = psnr(y, x)
    assert out.shape == (2,)
    assert out[0].item() == pytest.approx(10 * math.log10(16 / 0.25), abs=1e-4)  # 18.06 dB
    assert math.isinf(out[1].item()) and out[1] > 0
    assert psnr(y, x, data_range=2.0)[0].item() == pytest.approx(10 * math.log10(4 * 16 / 0.25), abs=1e-4)


def test_masked_psnr_only_counts_the_masked_voxels():
    x = torch.zeros(1, 1, 8, 8)
    y = x.clone()
    y[..., :4, :] = 0.1  # error everywhere in the top half
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :2, :2] = 1  # a hole in the top half
    assert masked_psnr(y, x, mask).item() == pytest.approx(20.0, abs=1e-4)  # 10 log10(1 / 0.01)
    mask.zero_()
    mask[..., 6:, 6:] = 1  # a hole where y is exact
    assert math.isinf(masked_psnr(y, x, mask).item())
    assert psnr(y, x).item() == pytest.approx(10 * math.log10(1 / 0.005), abs=1e-4)  # whole image: half the MSE


def test_ssim_is_one_for_identical_slices_and_drops_with_noise(slices):
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(slices.shape, generator=gen)
    same = ssim(slices, slices)
    light, heavy = ssim(slices + 0.02 * noise, slices), ssim(slices + 0.2 * noise, slices)
    assert same.shape == (2,)
    assert torch.allclose(same, torch.ones(2), atol=1e-5)
    assert bool((light < 0.999).all() and (heavy < light).all() and (heavy < 0.5).all())


def test_sharpness_is_normalised_and_prefers_a_sharp_edge():
    n = 16
    ramp = torch.arange(n, dtype=torch.float32).reshape(1, 1, n, 1).expand(1, 1, n, n) / n
    # slope 1 / n inside; reflect padding makes the first and last rows flat: RMS = sqrt((n - 2) / n) / n
    assert sharpness(ramp).item() == pytest.approx(math.sqrt((n - 2) / n) / n, rel=1e-5)
    ramp3d = ramp[..., None].expand(1, 1, n, n, 4)
    assert sharpness(ramp3d).item() == pytest.approx(math.sqrt((n - 2) / n) / n, rel=1e-5)

    edge = torch.zeros(1, 1, 32, 32)
    edge[..., 16:] = 1.0
    blurred = _blur(edge)
    assert sharpness(edge).item() > 1.5 * sharpness(blurred).item()
    assert relative_sharpness(blurred, edge).item() < 0.7
    assert sharpness(torch.full((1, 1, 8, 8), 0.3)).item() == 0.0


def test_relative_sharpness_of_real_slices(slices):
    assert torch.allclose(relative_sharpness(slices, slices), torch.ones(2))
    blurred = relative_sharpness(_blur(slices), slices)
    low_res = relative_sharpness(SimulateLowResolution(4)(slices[0])[None], slices[:1])
    assert bool((blurred < 0.8).all()) and low_res.item() < 0.8, (blurred, low_res)
    with pytest.raises(ValueError, match="truth"):
        relative_sharpness(slices, torch.zeros_like(slices))


def test_data_consistency_of_super_resolution(slices):
    sim = SimulateLowResolution(4)

    def downsample(x):  # the measurement: the 16x16 low-resolution image of each slice
        return torch.stack([torch.as_tensor(sim.downsample(xi)) for xi in x])

    low = downsample(slices)
    assert low.shape == (2, 1, 16, 16)
    perfect = data_consistency(slices, low, downsample)
    bicubic = data_consistency(torch.stack([sim(xi) for xi in slices]), low, downsample)
    wrong = data_consistency(slices.flip(0), low, downsample)  # each slice "restored" as the other one
    blurry = data_consistency(_blur(slices, 4.0), low, downsample)
    assert bool(torch.isinf(perfect).all())
    assert bool((bicubic > 30).all()), bicubic
    assert bool((wrong < 25).all() and (blurry < bicubic).all()), (wrong, blurry, bicubic)


def test_data_consistency_of_denoising_re_applies_the_same_noise(slices):
    def degrade(x):  # fixed seeds per slice, as in a test set
        return torch.stack([RandMixedNoise(0.1, 0.05, low=0.0, high=1.0, seed=10 + i)(xi) for i, xi in enumerate(x)])

    noisy = degrade(slices)
    assert bool(torch.isinf(data_consistency(slices, noisy, degrade)).all())
    as_is = data_consistency(noisy, noisy, degrade)  # returning the noisy input doubles the noise
    smoothed = data_consistency(_blur(slices, 1.0), noisy, degrade)
    assert bool((as_is < 21).all() and (smoothed > as_is).all()), (as_is, smoothed)


def test_data_consistency_of_inpainting_looks_at_the_known_region(slices):
    masked, mask = RandInpaintingMask(center_box=16, apply_mask=True)(slices[0])
    masked, mask = masked[None], mask[None]
    filled = slices[:1].clone()
    filled[mask.bool()] = 0.5  # anything in the hole, the known region untouched
    assert math.isinf(data_consistency(filled, masked, mask=mask).item())
    assert data_consistency(filled, masked).item() < 30  # without the mask the hole counts
    shifted = filled + 0.05
    assert data_consistency(shifted, masked, mask=mask).item() == pytest.approx(10 * math.log10(1 / 0.05**2), abs=1e-3)


def test_shape_mismatches_raise_value_errors_naming_the_argument(slices):
    with pytest.raises(ValueError, match="x and y"):
        psnr(slices, slices[..., :32])
    with pytest.raises(ValueError, match="x and y"):
        ssim(slices, slices[:1])
    with pytest.raises(ValueError, match="x must have shape"):
        sharpness(slices[0, 0])
    with pytest.raises(ValueError, match="x and truth"):
        relative_sharpness(slices, slices[:1])
    with pytest.raises(ValueError, match="degraded_input"):
        data_consistency(slices, slices[..., :16, :16], lambda x: x)
    with pytest.raises(ValueError, match="mask"):
        masked_psnr(slices, slices, torch.ones(1, 1, 32, 32))
    with pytest.raises(ValueError, match="mask selects no voxel"):
        masked_psnr(slices, slices, torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="data_range"):
        psnr(slices, slices, data_range=0.0)
    with pytest.raises(ValueError, match="win_size"):
        ssim(slices[..., :8, :8], slices[..., :8, :8])


def test_lossless_codecs_of_real_slices(slices):
    """PNG always; JPEG-LS, JPEG 2000 and JPEG-XL with imagecodecs: every codec compresses real 8-bit brain slices
    below 8 bits per pixel, and JPEG-XL (the strongest) below PNG."""
    images = [np.asarray(s) for s in slices]
    png = codec_bits_per_dim(images, "png")
    assert png == pytest.approx(png_bits_per_dim(images)) and 0 < png < 8
    with pytest.raises(ValueError, match="codec must be one of"):
        codec_bits_per_dim(images, "webp")
    with pytest.raises(ValueError, match="2D uint8"):
        lossless_bits(np.zeros((4, 4), np.float32))
    if "jpegxl" not in available_codecs():
        with pytest.raises(ImportError, match="imagecodecs"):
            codec_bits_per_dim(images, "jpegxl")
        pytest.importorskip("imagecodecs")  # the stronger codecs are the optional `ood` extra
    bits = {c: codec_bits_per_dim(images, c) for c in LOSSLESS_CODECS}
    assert all(0 < b < 8 for b in bits.values()), bits
    assert bits["jpegxl"] < bits["png"], bits
