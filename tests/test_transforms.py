"""Tests of monai_medgen.transforms: degradations for super-resolution, denoising, inpainting, complex data."""

from __future__ import annotations

import copy
import math
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor, list_data_collate
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityd

from monai_medgen.transforms import (
    SR_FACTORS,
    JoinComplex,
    JoinComplexd,
    RandInpaintingMask,
    RandInpaintingMaskd,
    RandLowResolution,
    RandLowResolutiond,
    RandMixedNoise,
    RandMixedNoised,
    SimulateLowResolution,
    SimulateLowResolutionD,
    SimulateLowResolutiond,
    SimulateLowResolutionDict,
    SplitComplex,
    SplitComplexd,
    low_resolution_shape,
)

BRAIN = "/usr/share/mricron/templates/ch2bet.nii.gz"


@pytest.fixture(scope="module")
def brain_slice() -> torch.Tensor:
    """Central axial slice of the Colin27 T1 brain, (1, 128, 128) in [0, 1]."""
    if not os.path.exists(BRAIN):
        pytest.skip(f"{BRAIN} not installed (Debian package mricron-data)")
    nib = pytest.importorskip("nibabel")
    axial = torch.as_tensor(np.asarray(nib.load(BRAIN).dataobj, dtype=np.float32)[:, :, 90])  # (181, 217)
    square = F.pad(axial, (0, 0, 18, 18))  # (217, 217)
    image = F.interpolate(square[None, None], size=(128, 128), mode="area")[0]
    return image / image.max()


def _image(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _high_frequency_fraction(image: torch.Tensor, cutoff: int) -> float:
    """Share of the (mean-removed) spectral energy of a 2D image above ``cutoff`` cycles per axis."""
    spectrum = torch.fft.fftn(image - image.mean(), dim=(-2, -1)).abs() ** 2
    freq = [torch.fft.fftfreq(n) * n for n in image.shape[-2:]]
    outside = (freq[0].abs()[:, None] > cutoff) | (freq[1].abs()[None] > cutoff)
    return float(spectrum[..., outside].sum() / spectrum.sum())


ARRAY_TRANSFORMS = {
    "area": lambda: SimulateLowResolution(4),
    "kspace": lambda: SimulateLowResolution(4, mode="kspace"),
    "rand_sr": lambda: RandLowResolution(factors=(2, 4), seed=0),
    "noise": lambda: RandMixedNoise(seed=0),
    "rician": lambda: RandMixedNoise(rician=True, seed=0),
    "inpaint": lambda: RandInpaintingMask(mask_type="mixed", apply_mask=True, seed=0),
}


@pytest.mark.parametrize("name", ARRAY_TRANSFORMS)
@pytest.mark.parametrize("shape", [(1, 64, 64), (2, 32, 24, 16)])
def test_output_shape_type_dtype_and_affine(name, shape):
    affine = torch.diag(torch.tensor([0.5, 0.7, 2.0, 1.0], dtype=torch.float64))
    for img in (_image(shape).double(), _image(shape).numpy(), MetaTensor(_image(shape), affine=affine)):
        out = ARRAY_TRANSFORMS[name]()(img)
        out, mask = out if isinstance(out, tuple) else (out, None)
        assert type(out) is type(img) and out.shape == img.shape and out.dtype == img.dtype
        if mask is not None:
            assert type(mask) is type(img) and mask.shape == (1, *shape[1:])
        if isinstance(img, MetaTensor):
            assert torch.equal(out.affine, affine) and torch.equal(mask.affine if mask is not None else affine, affine)


def test_integer_input_keeps_dtype():
    img = (np.arange(32 * 32).reshape(1, 32, 32) % 256).astype(np.uint8)
    out = RandMixedNoise(sigma=30.0, seed=0)(img)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255  # clipped, not wrapped


@pytest.mark.parametrize("mode", ["area", "kspace"])
def test_low_resolution_size_for_every_factor(mode):
    img = _image((1, 128, 96))
    for factor in SR_FACTORS:
        low = SimulateLowResolution(factor, mode=mode).downsample(img)
        assert low.shape[1:] == (round(128 / factor), round(96 / factor)) == low_resolution_shape((128, 96), factor)
    assert low_resolution_shape((128, 128), 2 * math.sqrt(2)) == (45, 45)


def test_factor_one_is_identity():
    img = _image((1, 40, 40))
    for mode in ("area", "kspace"):
        torch.testing.assert_close(SimulateLowResolution(1.0, mode=mode)(img), img)


def test_area_factor_4_on_real_slice(brain_slice):
    """Area mode: coarse image = 4x4 block means; the output keeps almost no energy above the cut-off."""
    blocks = brain_slice.reshape(1, 32, 4, 32, 4).mean(dim=(2, 4))
    torch.testing.assert_close(SimulateLowResolution(4).downsample(brain_slice), blocks)
    nearest = SimulateLowResolution(4, upsample_mode="nearest")
    blocky = nearest(brain_slice)
    torch.testing.assert_close(blocky, blocks.repeat_interleave(4, 1).repeat_interleave(4, 2))
    torch.testing.assert_close(nearest(blocky), blocky)  # its own area-downsample-upsample
    smooth = SimulateLowResolution(4)(brain_slice)
    assert _high_frequency_fraction(smooth, 16) < 0.1 * _high_frequency_fraction(brain_slice, 16)
    psnr = 10 * math.log10(1 / float(((smooth - brain_slice) ** 2).mean()))
    assert 20 < psnr < 32  # REFERENCE.md: 4x bicubic 25.1 dB on 16 Colin27 slices


def test_kspace_mode_removes_high_frequencies(brain_slice):
    signed = SimulateLowResolution(4, mode="kspace", magnitude=False)(brain_slice)
    assert _high_frequency_fraction(signed, 16) < 1e-10
    # frequencies inside the window are kept exactly
    keep = (torch.fft.fftfreq(128) * 128).abs() < 16
    window = keep[:, None] & keep[None]
    original, truncated = torch.fft.fft2(brain_slice), torch.fft.fft2(signed)
    torch.testing.assert_close(truncated[..., window], original[..., window], rtol=1e-4, atol=1e-3)
    magnitude = SimulateLowResolution(4, mode="kspace")(brain_slice)
    assert magnitude.min() >= 0
    assert _high_frequency_fraction(magnitude, 16) < 0.1 * _high_frequency_fraction(brain_slice, 16)


def test_low_resolution_errors_name_the_argument():
    with pytest.raises(ValueError, match="factor"):
        SimulateLowResolution(0.5)
    with pytest.raises(ValueError, match=r"factor=300.*\(128, 128\)"):
        SimulateLowResolution(300)(_image((1, 128, 128)))
    with pytest.raises(ValueError, match="factor"):
        SimulateLowResolution((2, 2, 2))(_image((1, 16, 16)))
    with pytest.raises(ValueError, match="mode"):
        SimulateLowResolution(2, mode="bilinear")
    with pytest.raises(ValueError, match="upsample_mode"):
        SimulateLowResolution(2, upsample_mode="bicubic")(_image((1, 8, 8, 8)))
    with pytest.raises(ValueError, match="factor_range"):
        RandLowResolution(factors=(2,), factor_range=(2, 4))
    with pytest.raises(ValueError, match="factor_range"):
        RandLowResolution(factor_range=(0.5, 4))
    with pytest.raises(ValueError, match="img"):
        SimulateLowResolution(2)(_image((16, 16)))


def test_anisotropic_factor_and_downsampled_affine():
    img = MetaTensor(_image((1, 32, 32, 16)), affine=torch.diag(torch.tensor([1.0, 1.0, 2.0, 1.0])))
    low = SimulateLowResolution((4, 4, 1)).downsample(img)
    assert low.shape == (1, 8, 8, 16)
    expected = torch.tensor([[4.0, 0, 0, 1.5], [0, 4, 0, 1.5], [0, 0, 2, 0], [0, 0, 0, 1]], dtype=img.affine.dtype)
    torch.testing.assert_close(low.affine, expected)
    assert torch.equal(img.affine, torch.diag(torch.tensor([1.0, 1.0, 2.0, 1.0], dtype=img.affine.dtype)))


def test_rand_low_resolution_draws_factors():
    img = _image((1, 64, 64))
    sr = RandLowResolution(seed=3)
    factors = set()
    for _ in range(30):
        sr(img)
        factors.add(sr.params["factor"])
    assert factors <= set(SR_FACTORS) and len(factors) > 3
    ranged = RandLowResolution(factor_range=(2, 3), seed=0)
    ranged(img)
    assert 2 <= ranged.params["factor"] <= 3
    skipped = RandLowResolution(prob=0.0, seed=0)
    torch.testing.assert_close(skipped(img), img)
    assert skipped.params["factor"] == 1.0


def test_noise_statistics():
    img = torch.full((1, 256, 256), 0.5)
    noise = RandMixedNoise(sigma=0.1, salt_pepper=0.05, low=-10.0, high=10.0, seed=0)
    out = noise(img)
    pepper, salt = (out == -10).float().mean(), (out == 10).float().mean()
    assert abs(pepper - 0.025) < 0.003 and abs(salt - 0.025) < 0.003
    gaussian = (out - img)[(out != -10) & (out != 10)]
    assert abs(float(gaussian.std()) - 0.1) < 0.003 and abs(float(gaussian.mean())) < 0.002
    assert noise.params["sigma"] == 0.1 and noise.params["salt_pepper"] == 0.05
    # salt and pepper default to the image's own min and max
    ramp = torch.linspace(-1, 1, 64 * 64).reshape(1, 64, 64)
    out = RandMixedNoise(sigma=0.0, salt_pepper=0.2, seed=0)(ramp)
    changed = out != ramp
    assert set(out[changed].tolist()) == {-1.0, 1.0} and 0.15 < float(changed.float().mean()) < 0.25
    # Rician noise on a zero image is Rayleigh: mean sigma * sqrt(pi / 2)
    rician = RandMixedNoise(sigma=0.1, salt_pepper=0.0, rician=True, seed=0)(torch.zeros(1, 256, 256))
    assert rician.min() >= 0 and abs(float(rician.mean()) - 0.1 * math.sqrt(math.pi / 2)) < 0.003


def test_noise_on_real_slice_matches_reference(brain_slice):
    noisy = RandMixedNoise(sigma=0.1, salt_pepper=0.05, seed=0)(brain_slice)
    psnr = 10 * math.log10(1 / float(((noisy - brain_slice) ** 2).mean()))
    assert 14.5 < psnr < 16.5  # REFERENCE.md: noisy input 15.5 dB


def test_noise_reproducible_and_sigma_range():
    img = _image((1, 32, 32))
    a, b = RandMixedNoise(sigma=(0.05, 0.2), seed=7), RandMixedNoise(sigma=(0.05, 0.2))
    b.set_random_state(7)
    torch.testing.assert_close(a(img), b(img))
    assert 0.05 <= a.params["sigma"] <= 0.2
    assert not torch.equal(a(img), b.set_random_state(8)(img))
    with pytest.raises(ValueError, match="sigma"):
        RandMixedNoise(sigma=(0.2, 0.1))
    with pytest.raises(ValueError, match="salt_pepper"):
        RandMixedNoise(salt_pepper=1.5)
    with pytest.raises(ValueError, match="real"):
        RandMixedNoise()(torch.ones(1, 4, 4, dtype=torch.complex64))


@pytest.mark.parametrize("mask_type", ["box", "stroke", "mixed"])
@pytest.mark.parametrize("shape", [(1, 64, 64), (1, 24, 24, 24)])
def test_mask_fraction_binary_and_reproducible(mask_type, shape):
    img = torch.zeros(shape)
    masker = RandInpaintingMask(mask_type, min_fraction=0.1, max_fraction=0.25, seed=0)
    masks = [masker(img) for _ in range(5)]
    for mask in masks:
        assert mask.shape == (1, *shape[1:]) and mask.dtype == torch.float32
        assert set(mask.unique().tolist()) == {0.0, 1.0}
        assert 0.1 <= float(mask.mean()) <= 0.25
    assert not torch.equal(masks[0], masks[1])
    torch.testing.assert_close(RandInpaintingMask(mask_type, 0.1, 0.25, seed=0)(img), masks[0])
    other = RandInpaintingMask(mask_type, 0.1, 0.25).set_random_state(0)
    torch.testing.assert_close(other(img), masks[0])
    assert not torch.equal(other.set_random_state(1)(img), masks[0])
    regenerated = masker.make_mask(shape[1:], masker.params["mask_seed"])
    assert np.array_equal(regenerated, masks[-1][0].numpy().astype(bool))


def test_mask_apply_and_center_box():
    img = _image((2, 128, 128)) + 1
    masked, mask = RandInpaintingMask(center_box=32, apply_mask=True, fill_value=-1.0)(img)
    assert float(mask.sum()) == 32 * 32 and torch.equal(mask[0, 48:80, 48:80], torch.ones(32, 32))
    assert torch.equal(masked[:, 48:80, 48:80], torch.full((2, 32, 32), -1.0))
    assert torch.equal(masked[mask.expand(2, -1, -1) == 0], img[mask.expand(2, -1, -1) == 0])
    volume = RandInpaintingMask(center_box=(8, 6, 4))
    assert float(volume(torch.zeros(1, 16, 16, 8)).sum()) == 8 * 6 * 4
    assert volume.params["mask_bbox"] == [[4, 12], [5, 11], [2, 6]]
    with pytest.raises(ValueError, match="center_box"):
        RandInpaintingMask(center_box=200)(img)
    with pytest.raises(ValueError, match="mask_type"):
        RandInpaintingMask("circle")
    with pytest.raises(ValueError, match="min_fraction"):
        RandInpaintingMask(min_fraction=0.5, max_fraction=0.2)
    assert float(RandInpaintingMask(prob=0.0)(img).sum()) == 0


def test_complex_round_trip_exact():
    c64 = torch.randn(3, 8, 8, 4, dtype=torch.complex64)
    split = SplitComplex()(c64)
    assert split.shape == (6, 8, 8, 4) and split.dtype == torch.float32
    assert torch.equal(split[:3], c64.real) and torch.equal(split[3:], c64.imag)
    assert torch.equal(JoinComplex()(split), c64)
    c128 = np.random.default_rng(0).normal(size=(2, 5, 5)) + 1j * np.random.default_rng(1).normal(size=(2, 5, 5))
    joined = JoinComplex()(SplitComplex()(c128))
    assert isinstance(joined, np.ndarray) and joined.dtype == np.complex128 and np.array_equal(joined, c128)
    meta = MetaTensor(c64[:1], affine=torch.diag(torch.tensor([2.0, 2, 2, 1])))
    assert torch.equal(SplitComplex()(meta).affine, meta.affine)
    with pytest.raises(ValueError, match="complex"):
        SplitComplex()(torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match="even"):
        JoinComplex()(torch.ones(3, 4, 4))


DICT_TRANSFORMS = {
    "sr": lambda: SimulateLowResolutiond(factor=4),
    "rand_sr": lambda: RandLowResolutiond(factors=(2, 4), seed=0),
    "skipped_sr": lambda: RandLowResolutiond(prob=0.0),
    "noise": lambda: RandMixedNoised(sigma=(0.05, 0.1), seed=0),
    "mask": lambda: RandInpaintingMaskd(mask_type="stroke", seed=0),
    "split": lambda: SplitComplexd(),
    "join": lambda: JoinComplexd(),
}


def _item(name: str, meta: bool) -> dict:
    image = _image((2, 32, 32, 8))
    if name == "split":
        image = torch.complex(image, image.flip(0))
    affine = torch.diag(torch.tensor([0.8, 0.8, 3.0, 1.0], dtype=torch.float64))
    return {"image": MetaTensor(image, affine=affine) if meta else image, "label": 1}


@pytest.mark.parametrize("name", DICT_TRANSFORMS)
@pytest.mark.parametrize("meta", [False, True])
def test_dict_transforms_leave_the_input_untouched(name, meta):
    data = _item(name, meta)
    before, image = copy.deepcopy(data), data["image"]
    out = DICT_TRANSFORMS[name]()(data)
    assert data.keys() == before.keys()  # the input dict itself is not modified
    assert torch.equal(image, before["image"]) and image.dtype == before["image"].dtype
    if meta:
        assert image.meta.keys() == before["image"].meta.keys() and torch.equal(image.affine, before["image"].affine)
    if name in ("split", "join"):
        assert out["image"] is not image
    else:
        assert out["image"] is image and out["cond"].shape == image.shape and out["label"] == 1
        out["cond"] += 1  # the condition shares no memory with the source
        assert torch.equal(image, before["image"])


@pytest.mark.parametrize("name", ["sr", "rand_sr", "noise", "mask"])
def test_dict_parameters_recorded_in_metadata(name):
    data = _item(name, meta=True)
    out = DICT_TRANSFORMS[name]()(data)
    record, cond = out["cond_degradation"], out["cond"]
    assert isinstance(cond, MetaTensor) and cond.meta["degradation"] == record
    assert torch.equal(cond.affine, data["image"].affine)
    assert "degradation" not in data["image"].meta
    expected = {"sr": "factor", "rand_sr": "factor", "noise": "sigma", "mask": "mask_fraction"}[name]
    assert expected in record and len(record["transforms"]) == 1
    if name == "mask":
        assert torch.equal(out["mask"].affine, data["image"].affine)
        assert record["mask_fraction"] == float(out["mask"].mean()) > 0
    if name == "rand_sr":
        assert record["factor"] in (2.0, 4.0) and record["low_res_shape"][0] == 32 / record["factor"]
    # chaining from the condition leaves the first record (and the first condition) as they were
    first = copy.deepcopy(record)
    chained = RandMixedNoised(keys="cond", cond_key="noisy", seed=0)(out)
    assert cond.meta["degradation"] == first == chained["cond_degradation"]
    assert chained["noisy"].meta["degradation"]["transforms"] == [*first["transforms"], "RandMixedNoise"]


def test_dict_record_without_metatensor_and_chaining():
    data = {"image": _image((1, 32, 32)).numpy()}
    out = SimulateLowResolutiond(factor=2, mode="kspace")(data)
    out = RandMixedNoised(keys="cond", cond_key="cond", sigma=0.05, salt_pepper=0.0, seed=0)(out)
    record = out["cond_degradation"]
    assert record["transforms"] == ["SimulateLowResolution", "RandMixedNoise"]
    assert record["factor"] == 2.0 and record["mode"] == "kspace" and record["sigma"] == 0.05
    assert isinstance(out["cond"], np.ndarray) and np.array_equal(out["image"], data["image"])


def test_dict_keys_errors_and_aliases():
    data = {"image": _image((1, 16, 16))}
    assert SimulateLowResolutionD is SimulateLowResolutiond is SimulateLowResolutionDict
    out = SimulateLowResolutiond(keys=("image", "extra"), factor=2, cond_key=("c1", "c2"), allow_missing_keys=True)(
        data
    )
    assert "c1" in out and "c2" not in out
    with pytest.raises(KeyError):
        SimulateLowResolutiond(keys=("image", "extra"), factor=2, cond_key=("c1", "c2"))(data)
    with pytest.raises(ValueError, match="cond_key"):
        SimulateLowResolutiond(keys=("image", "extra"), factor=2)
    with pytest.raises(ValueError, match="mask_key"):
        RandInpaintingMaskd(mask_key="cond")
    assert RandMixedNoised(keys="missing", allow_missing_keys=True)(data).keys() == data.keys()


def _pipeline() -> Compose:
    return Compose(
        [
            RandLowResolutiond(factors=(2, 4), prob=0.8),
            RandMixedNoised(keys="cond", cond_key="cond", sigma=(0.0, 0.1)),
            RandInpaintingMaskd(mask_type="mixed", cond_key="masked"),
        ]
    )


def test_pickle_round_trip_gives_the_same_output():
    data = {"image": _image((1, 32, 32))}
    pipeline = _pipeline()
    restored = pickle.loads(pickle.dumps(pipeline))
    for p in (pipeline, restored):
        p.set_random_state(5)
    first, second = pipeline(data), restored(data)
    for key in ("cond", "masked", "mask"):
        assert torch.equal(first[key], second[key])
    assert first["cond_degradation"] == second["cond_degradation"]


def test_compose_after_load_image_is_reproducible(tmp_path):
    nib = pytest.importorskip("nibabel")
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    path = str(tmp_path / "volume.nii.gz")
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((32, 32, 12), dtype=np.float32), affine), path)
    load = [LoadImaged("image"), EnsureChannelFirstd("image"), ScaleIntensityd("image")]
    pipeline = Compose(load + list(_pipeline().transforms))
    runs = [pipeline.set_random_state(seed)({"image": path}) for seed in (0, 0, 1)]
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in ("cond", "masked", "mask"))
    assert runs[0]["cond_degradation"] == runs[1]["cond_degradation"]
    assert not torch.equal(runs[0]["masked"], runs[2]["masked"])
    cond = runs[0]["cond"]
    assert cond.shape == (1, 32, 32, 12) and np.allclose(cond.affine.numpy(), affine)
    assert cond.meta["degradation"]["transforms"] == ["RandLowResolution", "RandMixedNoise"]
    assert runs[0]["masked_degradation"]["transforms"] == ["RandInpaintingMask"]
    batch = list_data_collate([runs[0], runs[2]])  # records collate like any metadata
    assert batch["cond"].shape == (2, 1, 32, 32, 12) and batch["cond_degradation"]["sigma"].shape == (2,)
