"""monai_medgen.tasks: forward operators and their projections, blind degradations, corpus, residual sampling and
restoration of user images in their own units and geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_medgen.networks import ScoreUNet
from monai_medgen.samplers import sample_loop
from monai_medgen.schedules import DiscreteSchedule
from monai_medgen.tasks import (
    BlindDegradationd,
    Noise,
    ResidualRestorer,
    RobustIntensity,
    SuperResolution,
    biharmonic_fill,
    cond_channels_of,
    estimate_noise_sigma,
    fill_holes,
    make_condition,
    median3,
    switching_median,
)
from monai_medgen.tasks.corpus import TRAINING_ATLASES, TRAINING_PHOTOGRAPHS, TrainingCorpus
from monai_medgen.tasks.restore import ResidualDiffusionInferer, restore_residual
from monai_medgen.tasks.sampling import NUM_FRAMES, frame_transform, restoration_times


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def mni_slice():
    from monai_medgen.data import demo_slices

    return torch.as_tensor(np.asarray(demo_slices("mni152", size=128, num_slices=1)[0]["image"]))[None]


@pytest.mark.parametrize("factor", [4.0, 2 * math.sqrt(2), (1.0, 5.0), 8 * math.sqrt(2)])
def test_sr_projection_is_consistent(factor):
    x = torch.rand(2, 1, 97, 90, dtype=torch.float64)
    op = SuperResolution(factor)
    y = op.degrade(x)
    assert y.shape[2:] == op.low_shape(x.shape[2:])
    start = op.base(y, x.shape[2:])
    assert _rel(op.degrade(start), y) > 1e-3  # interpolation alone is not consistent
    assert _rel(op.degrade(op.project(start, y)), y) < 1e-6


def test_sr_projection_3d_and_adjoint():
    x = torch.rand(1, 1, 12, 10, 16, dtype=torch.float64)
    op = SuperResolution((1, 1, 4))
    y = op.degrade(x)
    assert y.shape[2:] == (12, 10, 4)
    assert _rel(op.degrade(op.project(op.base(y, x.shape[2:]), y)), y) < 1e-6
    r = torch.rand_like(y)
    # <A x, r> == <x, A^T r>
    assert abs(float((op.degrade(x) * r).sum() - (x * op.adjoint(r, x.shape[2:])).sum())) < 1e-9


def test_noise_median_and_sigma_estimate(mni_slice):
    g = torch.Generator().manual_seed(0)
    for sigma in (0.02, 0.1, 0.2):
        noisy = Noise(sigma).degrade(mni_slice, g)
        assert abs(float(estimate_noise_sigma(noisy)[0]) - sigma) < 0.25 * sigma + 0.005
    impulses = Noise(0.0, salt_pepper=0.05).degrade(mni_slice, g)
    assert 0.02 < float((impulses != mni_slice).float().mean()) < 0.06  # pepper on a black background changes nothing
    assert float((median3(impulses) - mni_slice).abs().mean()) < 0.3 * float((impulses - mni_slice).abs().mean())
    rician = Noise(0.05, "rician").degrade(mni_slice, g)
    assert float(rician.min()) >= 0  # a magnitude
    with pytest.raises(ValueError, match="kind"):
        Noise(0.1, "speckle")


def test_fill_holes_keeps_known_and_stays_in_range(mni_slice):
    mask = torch.zeros_like(mni_slice)
    mask[..., 40:80, 30:90] = 1
    filled = fill_holes(mni_slice * (1 - mask), mask)
    assert torch.equal(filled[mask == 0], mni_slice[mask == 0])
    assert float(filled.min()) >= 0 and float(filled.max()) <= 1
    # a membrane fill is far closer to the truth than leaving the hole at zero
    assert float(((filled - mni_slice) * mask).abs().sum()) < 0.8 * float((mni_slice * mask).abs().sum())


def test_biharmonic_fill_is_a_thin_plate(mni_slice):
    """The thin-plate fill keeps known voxels, reproduces a quadratic ramp through an interior hole (the membrane
    fill cannot), matches scikit-image's biharmonic inpainting on a real MRI slice, and works in 3D."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    ramp = (0.3 * xx**2 + 0.2 * yy + 0.5)[None, None].double()
    hole = torch.zeros_like(ramp)
    hole[..., 20:44, 16:40] = 1
    thin = biharmonic_fill(ramp * (1 - hole), hole)
    assert torch.equal(thin[hole == 0], ramp[hole == 0])
    assert float((thin - ramp).abs().max()) < 1e-4
    assert float((fill_holes(ramp * (1 - hole), hole) - ramp).abs().max()) > 1e-2

    skimage = pytest.importorskip("skimage.restoration")
    mask = torch.zeros_like(mni_slice)
    mask[..., 40:72, 30:62] = 1
    mask[..., 90:93, 10:110] = 1
    masked = mni_slice * (1 - mask)
    ours = biharmonic_fill(masked, mask)
    ref = torch.as_tensor(skimage.inpaint_biharmonic(masked[0, 0].double().numpy(), mask[0, 0].numpy() > 0))
    inside = mask[0, 0] > 0
    gap = float((ours[0, 0][inside] - ref.float()[inside]).norm() / (ref.float()[inside] - masked[0, 0][inside]).norm())
    assert gap < 0.05, gap

    vol = torch.rand(2, 1, 24, 20, 16)
    hole3 = torch.zeros_like(vol)
    hole3[:, :, 8:16, 6:14, 4:12] = 1
    out3 = biharmonic_fill(vol * (1 - hole3), hole3)
    assert out3.shape == vol.shape and torch.equal(out3[hole3 == 0], vol[hole3 == 0])
    assert torch.isfinite(out3).all()


def test_switching_median_replaces_impulses_only(mni_slice):
    """Salt-and-pepper at the ends of the range goes, every other voxel stays; a flat region at the range's end
    (the black background) is not an impulse; a user's range ends (here HU) are the impulse values."""
    g = torch.Generator().manual_seed(4)
    noisy = Noise(0.05, salt_pepper=0.05).degrade(mni_slice, g)
    out = switching_median(noisy)
    ends = (noisy == 0) | (noisy == 1)
    assert torch.equal(out[~ends], noisy[~ends])
    hits = ends & ((mni_slice - noisy).abs() > 0.2)  # impulses far from the truth
    assert int(hits.sum()) > 100
    assert float((out - mni_slice)[hits].abs().mean()) < 0.1 < float((noisy - mni_slice)[hits].abs().mean())
    flat = torch.zeros(1, 1, 16, 16)
    flat[..., 4:12, 4:12] = 0.5
    flat[..., 1, 1] = 1.0  # a hot pixel on the black background
    fixed = switching_median(flat)
    assert float(fixed[..., 1, 1]) == 0.0 and torch.equal(fixed[..., 2:, :], flat[..., 2:, :])
    hu = mni_slice * 2000 - 1000
    hu[..., 64, 64] = 3071.0
    fixed = switching_median(hu, (float(hu.min()), 3071.0), threshold=200.0)
    assert float(fixed[..., 64, 64]) < 1100 and float((fixed != hu).float().sum()) == 1
    with pytest.raises(ValueError, match="threshold"):
        switching_median(flat, threshold=-1.0)


def test_denoising_baselines_offer_the_switching_median(mni_slice):
    """With impulses, each Gaussian denoiser runs after both prefilters, each tuned on another slice; on real MRI the
    switching median (impulses only) is the stronger prefilter, so it sets the bar the model must pass."""
    pytest.importorskip("skimage")
    pytest.importorskip("bm3d")
    from monai_medgen.data import demo_slices
    from monai_medgen.tasks.baselines import denoising_baselines, denoising_parameters, psnr_db

    other = torch.as_tensor(np.asarray(demo_slices("mni152", size=128, num_slices=3)[2]["image"]))[None]
    noise = Noise(0.1, salt_pepper=0.05)
    params = denoising_parameters(0.1, True, (noise.degrade(other, torch.Generator().manual_seed(1)), other))
    assert {"median3 + BM3D", "switching median + BM3D", "switching median + TV", "median3 + NLM"} <= set(params)
    noisy = noise.degrade(mni_slice, torch.Generator().manual_seed(2))
    out = denoising_baselines(noisy, 0.1, True, params)
    assert set(out) == set(params)
    score = {k: psnr_db(v, mni_slice) for k, (v, _seconds) in out.items()}
    assert score["switching median + BM3D"] > score["median3 + BM3D"] + 1.0
    assert set(denoising_parameters(0.05, False, (other, other))) >= {"BM3D", "TV", "NLM"}


def test_inpainting_baselines_fill_thin_strokes(mni_slice):
    """Both classical inpainting baselines fill thin strokes close to the truth and keep known pixels: Telea's method
    once returned noise inside the hole (OpenCV's float32 path), which made it a baseline no model could lose to."""
    pytest.importorskip("skimage")
    from monai_medgen.tasks.baselines import inpainting_baselines, psnr_db

    mask = torch.zeros_like(mni_slice)
    mask[..., 60:63, 20:100] = 1
    mask[..., 20:100, 70:72] = 1
    masked = mni_slice * (1 - mask)
    outputs = inpainting_baselines(masked, mask)
    hole = mask > 0.5
    for name, (restored, _seconds) in outputs.items():
        assert torch.equal(restored[~hole], mni_slice[~hole]), name
        assert psnr_db(restored[hole], mni_slice[hole]) > psnr_db(masked[hole], mni_slice[hole]) + 8.0, name


def test_robust_intensity_units_and_noise(mni_slice):
    hu = mni_slice * 2500 - 1024  # CT-like units
    scaler = RobustIntensity().fit(hu)
    back = scaler.inverse(scaler.forward(hu))
    assert torch.allclose(back, hu, atol=1e-3)
    assert abs(scaler.low - float(torch.quantile(hu.flatten(), 0.005))) < 50
    clean_high = RobustIntensity().fit(mni_slice).high
    noisy = Noise(0.1, salt_pepper=0.05).degrade(mni_slice, torch.Generator().manual_seed(1))
    naive = float(torch.quantile(noisy.flatten(), 0.995))
    robust = RobustIntensity().fit(noisy).high
    assert abs(robust - clean_high) < abs(naive - clean_high)
    with pytest.raises(ValueError, match="constant"):
        RobustIntensity().fit(torch.ones(1, 8, 8))


@pytest.mark.parametrize("family", ["sr", "denoise", "inpaint"])
def test_blind_degradation_items(family, mni_slice):
    t = BlindDegradationd(family=family)
    t.set_random_state(3)
    x = mni_slice[0, :, :64, :64].clone()
    items = [t({"image": x}) for _ in range(6)]
    for it in items:
        assert it["image"].shape == x.shape and it["cond"].shape == (cond_channels_of(family), 64, 64)
        assert torch.allclose(it["truth"], x)
        assert torch.allclose(it["base"] + it["image"] / 2, x, atol=1e-6)  # residual = 2 (x - base)
        if family == "inpaint":
            mask = it["cond"][1:2]
            assert float(mask.sum()) > 0 and torch.equal(
                it["image"][mask == 0], torch.zeros_like(it["image"][mask == 0])
            )
    # the degradation is drawn anew per item (blind training), and reproducibly from the seed
    assert not torch.allclose(items[0]["cond"], items[1]["cond"])
    t2 = BlindDegradationd(family=family)
    t2.set_random_state(3)
    assert torch.allclose(t2({"image": x})["cond"], items[0]["cond"])


def test_corpus_uses_no_held_out_source():
    held_out = ("ch2", "aal", "brodmann", "inia19", "retina", "microaneurysms")
    for name in TRAINING_ATLASES + TRAINING_PHOTOGRAPHS:
        assert not any(h in name.lower() for h in held_out), name
    corpus = TrainingCorpus(sources=("mni152_t1", "tissue_contrast", "photographs"))
    rng = np.random.RandomState(0)
    imgs = [corpus.draw(rng, 48) for _ in range(8)]
    assert all(i.shape == (48, 48) and i.min() >= 0 and i.max() <= 1 and i.std() > 0.03 for i in imgs)


def test_corpus_zoom_and_acquisition_noise():
    """Wider zoom (whole heads in a small draw, anti-aliased) and synthetic acquisition noise: more background at
    4x zoom, rougher draws with noise than without at the same zoom, and bad settings refused by name."""
    plain = TrainingCorpus(sources=("mni152_t1",))
    wide = TrainingCorpus(sources=("mni152_t1",), zoom_range=(3.9, 4.0), acquisition_noise=0.1)
    a = [plain.draw(np.random.RandomState(s), 48) for s in range(6)]
    b = [wide.draw(np.random.RandomState(s), 48) for s in range(6)]
    assert all(i.shape == (48, 48) and i.min() >= 0 and i.max() <= 1 for i in a + b)

    def roughness(imgs):  # mean absolute difference of neighbouring pixels
        return float(np.mean([np.abs(np.diff(i, axis=1)).mean() for i in imgs]))

    assert roughness(b) > roughness(a)
    # a whole slice at 4x zoom leaves background on the border; the default 0.6-1.6x crop of the brain mostly does not
    border = lambda imgs: float(np.mean([np.r_[i[0], i[-1], i[:, 0], i[:, -1]].mean() for i in imgs]))  # noqa: E731
    quiet = TrainingCorpus(sources=("mni152_t1",), zoom_range=(3.9, 4.0))
    c = [quiet.draw(np.random.RandomState(s), 48) for s in range(6)]
    assert border(c) < border(a)
    assert roughness(b) > roughness(c)  # the same zoom, noise on or off
    with pytest.raises(ValueError, match="zoom_range"):
        TrainingCorpus(sources=("mni152_t1",), zoom_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="acquisition_noise"):
        TrainingCorpus(sources=("mni152_t1",), acquisition_noise=-0.1)


def test_corpus_hard_mask_cuts_draws_to_exact_zero():
    """hard_mask: draws cut by a binary mask on their own grid (skull-stripped scans): a large exact-zero region meeting
    tissue without any partial-volume ramp; without it a draw of the tissue contrasts has no such staircase; bad
    fractions refused by name."""
    sources = ("tissue_contrast",)
    cut = TrainingCorpus(sources=sources, hard_mask=1.0)
    plain = TrainingCorpus(sources=sources)

    def hard_edges(img):  # neighbours where one is exactly 0 and the other holds clear tissue (> 0.1)
        n = 0
        for a, b in ((img[:, :-1], img[:, 1:]), (img[:-1], img[1:])):
            n += int((((a == 0) & (b > 0.1)) | ((b == 0) & (a > 0.1))).sum())
        return n

    cuts = [cut.draw(np.random.RandomState(seed), 48) for seed in range(8)]
    assert all(i.shape == (48, 48) and i.min() >= 0 and i.max() <= 1 and (i == 0).mean() > 0.05 for i in cuts)
    plains = [plain.draw(np.random.RandomState(seed), 48) for seed in range(8)]
    assert sum(map(hard_edges, cuts)) > 2 * sum(map(hard_edges, plains)) + 20
    with pytest.raises(ValueError, match="hard_mask"):
        TrainingCorpus(sources=sources, hard_mask=1.5)


def test_restoration_times():
    t = restoration_times(4, 0.5, 2000)
    assert float(t[0]) == 1.0 and float(t[-1]) == 0.0 and len(t) == 5 and float(t[1]) == 0.5
    assert torch.all(t[1:] < t[:-1])
    assert restoration_times(1, 0.3, 2000).tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="start_time"):
        restoration_times(3, 0.0, 2000)


def test_sample_loop_x0_hook():
    schedule = DiscreteSchedule.linear_betas(100)
    z = torch.randn(2, 1, 8, 8)
    out = sample_loop(
        lambda z, g: torch.zeros_like(z),
        z,
        schedule,
        restoration_times(3, 0.5, 100),
        sampler="dpm++",
        x0_hook=lambda x0: torch.full_like(x0, 0.25),
        verbose=False,
    )
    assert torch.allclose(out.sample, torch.full_like(z, 0.25), atol=1e-5)


def _tiny(family: str, cond_channels: int | None = None) -> tuple[ScoreUNet, ResidualDiffusionInferer]:
    torch.manual_seed(0)
    net = ScoreUNet(
        2,
        1,
        cond_channels=cond_channels_of(family) if cond_channels is None else cond_channels,
        channels=(8, 16),
        num_res_blocks=1,
        norm_num_groups=8,
        num_head_channels=8,
        fourier_exponents=[],
        residual=False,
    ).eval()
    return net, ResidualDiffusionInferer(family=family, num_train_timesteps=100, prediction_type="v_prediction")


def test_residual_restorer_consistency_and_known_voxels(mni_slice):
    net, inferer = _tiny("sr")
    op = SuperResolution(4.0)
    truth = mni_slice[..., :61, :70]  # odd sizes: padded for the U-Net and cropped back
    low = op.degrade(truth)
    measured = op.base(low, truth.shape[2:])
    restorer = ResidualRestorer(inferer, net, "sr", num_steps=3, start_time=0.5)
    out, std = restorer(measured, project=lambda x: op.project(x, low), generator=torch.Generator().manual_seed(0))
    assert out.shape == truth.shape and torch.equal(std, torch.zeros_like(std))
    assert _rel(op.degrade(out), low) < 1e-3
    net, inferer = _tiny("inpaint")
    mask = torch.zeros_like(truth)
    mask[..., 20:40, 20:40] = 1
    masked = truth * (1 - mask)
    out, std = ResidualRestorer(inferer, net, "inpaint", num_steps=2)(masked, mask=mask, num_samples=2)
    assert torch.equal(out[mask == 0], masked[mask == 0]) and float(std[mask == 0].abs().max()) == 0
    # the condition: membrane fill, mask, thin-plate fill, their difference; the base is the thin plate. Networks
    # trained with the earlier layouts (2 and 3 channels, base the membrane fill) get the leading channels
    cond, base = make_condition("inpaint", masked, mask=mask)
    thin = biharmonic_fill(masked, mask).clamp(-0.5, 1.5)
    assert cond.shape[1] == 4 and torch.equal(cond[:, 1:2], mask) and torch.equal(base, thin)
    assert torch.equal(base[mask == 0], masked[mask == 0])
    assert torch.allclose(cond[:, 2:3], thin * 2 - 1) and torch.allclose(
        cond[:, 3:4], cond[:, 2:3] - cond[:, 0:1], atol=1e-6
    )
    for channels in (2, 3):
        earlier, membrane = make_condition("inpaint", masked, mask=mask, channels=channels)
        assert torch.equal(earlier, cond[:, :channels]) and torch.allclose(membrane, (cond[:, :1] + 1) / 2, atol=1e-6)
        old, _ = _tiny("inpaint", cond_channels=channels)
        out2, _ = ResidualRestorer(inferer, old, "inpaint", num_steps=2)(masked, mask=mask)
        assert out2.shape == truth.shape and torch.equal(out2[mask == 0], masked[mask == 0])
    with pytest.raises(ValueError, match="channels must be one of"):
        make_condition("inpaint", masked, mask=mask, channels=5)
    # what lies under the mask never matters, also for a hole at the border the U-Net pads (61 rows: one more)
    edge = torch.zeros_like(truth)
    edge[..., 45:, 20:40] = 1
    outs = [
        ResidualRestorer(inferer, net, "inpaint", num_steps=2)(
            truth * (1 - edge) + fill * edge, mask=edge, generator=torch.Generator().manual_seed(0)
        )[0]
        for fill in (0.0, 1.0)
    ]
    assert torch.equal(outs[0], outs[1])


def test_self_ensemble_frames_consistency_and_known_voxels(mni_slice):
    """Each sample of a self-ensemble is drawn in its own frame and mapped back: the frames invert, data
    consistency and known voxels hold in the original frame, and sample 0 is the plain sample."""
    for shape in ((1, 1, 5, 7), (1, 1, 3, 5, 7)):
        x = torch.randn(shape)
        for k in range(NUM_FRAMES):
            assert torch.equal(frame_transform(frame_transform(x, k), k, inverse=True), x)
        assert len({frame_transform(x, k).flatten().numpy().tobytes() for k in range(NUM_FRAMES)}) == NUM_FRAMES
    net, inferer = _tiny("sr")
    op = SuperResolution(4.0)
    truth = mni_slice[..., :61, :70]  # not square: transposed frames change the padding
    low = op.degrade(truth)
    measured = op.base(low, truth.shape[2:])
    plain = ResidualRestorer(inferer, net, "sr", num_steps=2)
    ensemble = ResidualRestorer(inferer, net, "sr", num_steps=2, self_ensemble=True)
    assert not plain.self_ensemble and ensemble.self_ensemble
    one = [
        r(measured, project=lambda x: op.project(x, low), generator=torch.Generator().manual_seed(0))[0]
        for r in (plain, ensemble)
    ]
    assert torch.equal(one[0], one[1])  # one sample: no frame change
    mean, std = ensemble(
        measured, project=lambda x: op.project(x, low), num_samples=4, generator=torch.Generator().manual_seed(0)
    )
    assert mean.shape == truth.shape and float(std.max()) > 0 and _rel(op.degrade(mean), low) < 1e-3
    net, inferer = _tiny("inpaint")
    inferer.self_ensemble = True  # the bundle setting is read from the inferer
    mask = torch.zeros_like(truth)
    mask[..., 10:30, 20:50] = 1
    masked = truth * (1 - mask)
    restorer = ResidualRestorer(inferer, net, "inpaint", num_steps=2)
    mean, std = restorer(masked, mask=mask, num_samples=3, generator=torch.Generator().manual_seed(1))
    assert restorer.self_ensemble and torch.equal(mean[mask == 0], masked[mask == 0])
    assert float(std[mask == 0].abs().max()) == 0


def test_residual_restorer_tiles_large_images():
    net, inferer = _tiny("denoise")
    x = torch.rand(1, 1, 80, 72)
    whole, _ = ResidualRestorer(inferer, net, "denoise", num_steps=2)(x, generator=torch.Generator().manual_seed(0))
    tiled, _ = ResidualRestorer(inferer, net, "denoise", num_steps=2, patch_size=32)(
        x, generator=torch.Generator().manual_seed(0)
    )
    assert tiled.shape == whole.shape and bool(torch.isfinite(tiled).all())


def test_restore_residual_thick_slices_units_and_geometry(mni_slice):
    net, inferer = _tiny("sr")
    vol = torch.rand(1, 16, 12, 20) * 0.2 + torch.linspace(0, 1, 20)  # a smooth volume with texture
    vol = vol * 3000 - 1000  # in arbitrary units with negative values
    op = SuperResolution((1, 1, 4))
    low = op.degrade(vol[None])[0]
    affine = torch.diag(torch.tensor([1.0, 1.0, 4.0, 1.0]))
    img = MetaTensor(low, affine=affine)
    out, unc = restore_residual(net, inferer, img, factor=(1, 1, 4), num_steps=2, planes="one")
    assert tuple(out.shape) == (1, 16, 12, 20) and unc is None
    assert np.allclose(np.asarray(out.affine)[2, 2], 1.0)  # 1 mm slices
    assert np.allclose(np.asarray(out.affine)[2, 3], -1.5)  # corners of the field of view kept
    assert _rel(op.degrade(out.as_tensor()[None])[0], low) < 1e-3
    with pytest.raises(ValueError, match="not both"):
        restore_residual(net, inferer, img, factor=(2, 1, 4))
    net, inferer = _tiny("denoise")
    with pytest.raises(ValueError, match="super-resolution only"):
        restore_residual(net, inferer, MetaTensor(mni_slice[0]), factor=2)
    out, unc = restore_residual(net, inferer, MetaTensor(mni_slice[0] * 4095), num_steps=1, num_samples=2)
    assert out.shape == mni_slice[0].shape and unc is not None and float(out.max()) <= 4095 + 1e-3

    # salt-and-pepper of a user's image sits at the ends of what was measured (a hot pixel at the 12-bit maximum):
    # the condition the network sees has it replaced by its median
    seen = []

    def spy(*args, **kwargs):
        seen.append(make_condition(*args, **kwargs))
        return seen[-1]

    import monai_medgen.tasks.sampling as sampling

    image = mni_slice[0] * 3000
    image[:, 40, 40] = 4095.0
    orig = sampling.make_condition
    sampling.make_condition = spy
    try:
        restore_residual(net, inferer, MetaTensor(image), num_steps=1)
    finally:
        sampling.make_condition = orig
    base = seen[0][1]
    assert float(base.max()) < float(RobustIntensity().fit(image).forward(torch.tensor(4095.0))) - 0.1


def test_corpus_takes_the_users_folder(tmp_path):
    import nibabel as nib

    vol = np.zeros((40, 40, 30), np.float32)
    vol[8:32, 8:32, 5:25] = np.random.default_rng(0).uniform(0.2, 1.0, (24, 24, 20))
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "mine.nii.gz"))
    corpus = TrainingCorpus(sources=(), dataset_dir=str(tmp_path))
    assert corpus.sources == ["user"]
    img = corpus.draw(np.random.RandomState(1), 32)
    assert img.shape == (32, 32) and img.std() > 0.03
    with pytest.raises(FileNotFoundError):
        TrainingCorpus(sources=(), dataset_dir=str(tmp_path / "missing"))


def test_transfer_weights_across_families(tmp_path):
    """init_from with another family's weights: every shared tensor copied, the first convolution's extra condition
    channels start at zero, so the new network equals the old one on the shared inputs."""
    from monai_medgen.bundle import save_model, transfer_weights
    from monai_medgen.networks import ScoreUNet

    kw = dict(
        spatial_dims=2,
        in_channels=1,
        channels=(8, 16, 32),
        num_res_blocks=1,
        norm_num_groups=8,
        num_head_channels=8,
        fourier_exponents=[],
        residual=False,
    )
    torch.manual_seed(0)
    sr, inpaint = ScoreUNet(cond_channels=1, **kw), ScoreUNet(cond_channels=2, **kw)
    save_model(tmp_path / "sr.pt", sr)
    assert transfer_weights(tmp_path / "sr.pt", inpaint) == []
    src, dst = sr.state_dict(), inpaint.state_dict()
    widened = [k for k in dst if dst[k].shape != src[k].shape]
    assert len(widened) == 1 and dst[widened[0]].shape[1] == src[widened[0]].shape[1] + 1
    assert torch.equal(dst[widened[0]][:, :2], src[widened[0]]) and not dst[widened[0]][:, 2:].any()
    assert all(torch.equal(dst[k], src[k]) for k in dst if k not in widened)
    x, cond, t = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16), torch.full((2,), 0.5)
    with torch.no_grad():
        a = sr(x, t, condition=cond)
        b = inpaint(x, t, condition=torch.cat([cond, torch.randn_like(cond)], 1))
    assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="init_from"):
        transfer_weights(tmp_path / "missing.pt", inpaint)


def test_transfer_weights_inflates_a_2d_network_to_3d(tmp_path):
    """init_from a 2D file for the same network in 3D: every kernel lands on the middle plane of the last axis, so on
    a volume that is constant along that axis the 3D network gives the 2D network's output on every slice."""
    from monai_medgen.bundle import save_model, transfer_weights
    from monai_medgen.networks import ScoreUNet

    kw = dict(in_channels=1, channels=(8, 16, 16), num_res_blocks=1, norm_num_groups=8, num_head_channels=8)
    torch.manual_seed(0)
    net2d, net3d = ScoreUNet(spatial_dims=2, **kw), ScoreUNet(spatial_dims=3, **kw)
    with torch.no_grad():  # as after training: MONAI starts some output convolutions at zero
        for p in net2d.parameters():
            if not p.any():
                p.add_(0.05 * torch.randn_like(p))
    save_model(tmp_path / "vdm2d.pt", net2d)
    assert transfer_weights(tmp_path / "vdm2d.pt", net3d) == []
    conv = next(n for n, v in net3d.state_dict().items() if v.dim() == 5 and v.shape[-1] == 3)
    kernel = net3d.state_dict()[conv]
    assert torch.equal(kernel[..., 1], net2d.state_dict()[conv]) and not kernel[..., [0, 2]].any()
    image = torch.rand(2, 1, 16, 16)
    volume = image[..., None].expand(2, 1, 16, 16, 8).contiguous()
    gamma = torch.tensor([-4.0, 2.0])
    with torch.no_grad():
        out2d, out3d = net2d(image, gamma), net3d(volume, gamma)
    assert torch.allclose(out3d, out2d[..., None].expand_as(out3d), atol=1e-5)
    # training learns the through-plane context: the planes that start at zero get gradients
    bumped = volume.clone()
    bumped[..., 4] += 0.5
    net3d(bumped, gamma).square().mean().backward()
    grad = dict(net3d.named_parameters())[conv].grad
    assert grad[..., 0].abs().sum() > 0 and grad[..., 2].abs().sum() > 0


def test_transfer_weights_brings_the_learned_schedule(tmp_path):
    """init_from for a VDM: the network and its learned noise schedule start from the file; a file without the
    schedule is refused for a schedule with learned parameters, accepted for a fixed one."""
    from monai_medgen.bundle import save_model, transfer_weights
    from monai_medgen.networks import ScoreUNet
    from monai_medgen.schedules import FixedLinearSchedule, LearnedLinearSchedule

    kw = dict(spatial_dims=2, in_channels=1, channels=(8, 16, 16), num_res_blocks=1, norm_num_groups=8)
    torch.manual_seed(0)
    trained, schedule = ScoreUNet(**kw), LearnedLinearSchedule()
    with torch.no_grad():
        schedule.b.fill_(-11.5)
        schedule.w.fill_(17.0)
    save_model(tmp_path / "vdm.pt", trained, schedule)
    fresh, fresh_schedule = ScoreUNet(**kw), LearnedLinearSchedule()
    assert transfer_weights(tmp_path / "vdm.pt", fresh, schedule=fresh_schedule) == []
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in fresh.state_dict().items())
    assert float(fresh_schedule.b) == -11.5 and float(fresh_schedule.w) == 17.0
    save_model(tmp_path / "plain.pt", trained)
    with pytest.raises(ValueError, match="init_from.*schedule"):
        transfer_weights(tmp_path / "plain.pt", fresh, schedule=LearnedLinearSchedule())
    assert transfer_weights(tmp_path / "plain.pt", fresh, schedule=FixedLinearSchedule()) == []


def test_evaluate_panel_rows_and_verdicts():
    """The panel table of the committed SR weights on pydicom's MR slice: classical baselines, the network's own t = 1
    regression estimate, one sample; only the model rows get a verdict, always against a classical method."""
    from pathlib import Path

    from monai_medgen.tasks.evaluation import REGRESSION_ROW, evaluate_panel
    from monai_medgen.tasks.loading import load_restoration_bundle

    bundle = load_restoration_bundle(Path(__file__).resolve().parents[1] / "bundles" / "cddpm_super_resolution_2d")
    text, rows, verdicts = evaluate_panel(
        {"sr": (bundle.network, bundle.inferer)},
        scenarios=("sr4",),
        images=("mr_small",),
        num_samples=1,
        num_steps=2,
        verbose=False,
    )
    methods = {r["method"]: r for r in rows}
    assert {"bicubic", "lanczos", REGRESSION_ROW, "model (1 sample)"} == set(methods)
    assert methods[REGRESSION_ROW]["nfe"] == 1 and methods["model (1 sample)"]["nfe"] == 2
    assert [(v[2], v[5]) for v in verdicts] == [("model (1 sample)", "lanczos")]
    assert all(methods[m]["consistency"] < 2e-3 for m in (REGRESSION_ROW, "model (1 sample)"))  # projected onto y
    assert "model rows meet the bar" in text
    # an image's degradation and sample seeds do not depend on which other images are asked for
    _, rows2, _ = evaluate_panel(
        {"sr": (bundle.network, bundle.inferer)},
        scenarios=("sr4",),
        images=("ct_small", "mr_small"),
        num_samples=1,
        num_steps=2,
        verbose=False,
    )
    again = {r["method"]: r for r in rows2 if r["image"] == "mr_small"}
    assert again["model (1 sample)"]["psnr"] == methods["model (1 sample)"]["psnr"]


def _denoising_bundle():
    from pathlib import Path

    from monai_medgen.tasks.loading import load_restoration_bundle

    return load_restoration_bundle(Path(__file__).resolve().parents[1] / "bundles" / "cddpm_denoising_2d")


def test_sure_estimates_the_true_error_of_a_sample(mni_slice):
    """Monte-Carlo SURE of one sample of the committed denoiser on noisy MRI slices (Gaussian 0.1 + 5% impulses,
    which SURE leaves out) matches its true squared error, which needs the clean image: SURE - MSE is the noise's
    own energy fluctuation (known here) plus a term of mean zero: within 20% of the error over two noise draws (three
    divergence probes each; a probe's own spread is about 3% of the divergence term, which is 8x the error here)."""
    from monai_medgen.tasks.adaptation import _risk

    bundle = _denoising_bundle()
    truth = mni_slice
    restorer = ResidualRestorer(bundle.inferer, bundle.network, "denoise", num_steps=2, adapt_steps=0)
    g = torch.Generator().manual_seed(0)
    gaps, errors = [], []
    for k in range(2):
        y = Noise(0.1, "gaussian", 0.05).degrade(truth, torch.Generator().manual_seed(3 + k))
        gaussian = ((y != 0) & (y != 1)).float()
        n = gaussian.sum()
        with torch.no_grad():
            out = restorer._sample(y, None, None, torch.Generator().manual_seed(5), False, None)
            true = float(((out - truth) ** 2 * gaussian).sum() / n)
            probes = [torch.randn(y.shape, generator=g) * gaussian for _ in range(3)]
            risk = sum(float(_risk(restorer, y, b, gaussian, torch.tensor([0.1]), 5, 1e-3, None)) for b in probes) / 3
        energy = float(((y - truth) ** 2 * gaussian).sum() / n) - 0.01
        gaps.append(risk - energy - true)
        errors.append(true)
    assert abs(sum(gaps)) < 0.2 * sum(errors), (gaps, errors)


def test_sure_adapt_tunes_a_copy_of_the_normalisation_layers(mni_slice):
    """The adapted restorer has its own network in which only the normalisation layers' scales and shifts moved; the
    bundle's network is untouched; an image without noise is left unadapted; bad arguments are refused by name."""
    from monai_medgen.tasks.adaptation import adaptable_parameters, sure_adapt

    bundle = _denoising_bundle()
    before = {k: v.clone() for k, v in bundle.network.state_dict().items()}
    truth = mni_slice[..., :48, :40]
    y = Noise(0.1, "gaussian").degrade(truth, torch.Generator().manual_seed(1))
    restorer = ResidualRestorer(bundle.inferer, bundle.network, "denoise", num_steps=2, adapt_steps=2, adapt_crop=32)
    adapted = restorer.adapted(y, (0.0, 1.0))
    assert adapted.network is not bundle.network and adapted.adapt_steps == 0 and restorer.adapt_steps == 2
    assert all(torch.equal(v, before[k]) for k, v in bundle.network.state_dict().items())
    tuned = {id(p) for p in adaptable_parameters(adapted.network)}
    changed = [
        (id(p), not torch.equal(p, q)) for p, q in zip(adapted.network.parameters(), bundle.network.parameters())
    ]
    assert any(c for _, c in changed) and all(i in tuned for i, c in changed if c)
    out, _ = restorer(y, generator=torch.Generator().manual_seed(0))  # __call__ adapts first, then samples
    assert out.shape == y.shape and torch.isfinite(out).all()
    assert sure_adapt(restorer, truth * 0 + 0.5, steps=2).network is bundle.network  # no noise: nothing to adapt
    with pytest.raises(ValueError, match="adapt_steps"):
        ResidualRestorer(bundle.inferer, bundle.network, "denoise", adapt_steps=-1)
    with pytest.raises(ValueError, match="denoising only"):
        ResidualDiffusionInferer(family="sr", adapt_steps=3)
    with pytest.raises(ValueError, match="measured"):
        sure_adapt(restorer, y[0], steps=1)
