"""Speed paths give the default path's results: SDPA attention, channels_last(_3d), bf16 autocast, torch.compile,
batched sampling with per-input generators; and the sampling loop does no per-step host synchronisation.

Timings are not asserted here (they belong to scripts/benchmark.py).  torch.compile is tested with the
``aot_eager`` backend: inductor compiles the same graph but takes over a minute for a tiny U-Net on this 2-core CPU.
"""

from __future__ import annotations

import pytest
import torch

from monai_medgen.inferers import ConditionalDiffusionInferer, VDMInferer
from monai_medgen.networks import ScoreUNet
from monai_medgen.samplers import accelerated, batched_randn, sample_loop
from monai_medgen.schedules import DiscreteSchedule, FixedLinearSchedule, time_grid

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_net(spatial_dims: int = 2, **kw) -> ScoreUNet:
    """A small ScoreUNet with attention at the second level and MONAI's middle block; MONAI zero-initialises
    output convolutions, so every all-zero weight gets random values (the output then depends on everything)."""
    torch.manual_seed(0)
    net = ScoreUNet(
        spatial_dims,
        1,
        channels=(8, 16),
        attention_levels=(False, True),
        num_res_blocks=1,
        norm_num_groups=8,
        num_head_channels=8,
        fourier_exponents=(),
        **kw,
    ).eval()
    g = gen(123)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return net


# ---------------------------------------------------------------------------------------------
# attention through torch's scaled_dot_product_attention
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spatial_dims,size", [(2, 16), (3, 8)])
def test_sdpa_attention_equals_plain_attention(spatial_dims, size):
    net = tiny_net(spatial_dims, num_classes=2)
    assert net.use_flash_attention  # the default
    z = torch.randn(2, 1, *([size] * spatial_dims), generator=gen(1))
    gamma, labels = torch.tensor([-3.0, 2.0]), torch.tensor([0, 1])
    with torch.no_grad():
        sdpa = net(z, gamma, class_labels=labels)
        net.use_flash_attention = False
        assert not net.use_flash_attention
        plain = net(z, gamma, class_labels=labels)
    torch.testing.assert_close(sdpa, plain, atol=2e-5, rtol=1e-5)
    # gradients through both kernels agree too (training with the default)
    net.use_flash_attention = True
    x = z.clone().requires_grad_(True)
    (g_sdpa,) = torch.autograd.grad(net(x, gamma).square().sum(), x)
    net.use_flash_attention = False
    (g_plain,) = torch.autograd.grad(net(x, gamma).square().sum(), x)
    torch.testing.assert_close(g_sdpa, g_plain, atol=1e-4, rtol=1e-4)
    # the flag is not part of the weights: a state dict loads into either
    assert set(
        ScoreUNet(
            spatial_dims,
            1,
            channels=(8, 16),
            norm_num_groups=8,
            num_head_channels=8,
            attention_levels=(False, True),
            fourier_exponents=(),
            num_classes=2,
            use_flash_attention=False,
        ).state_dict()
    ) == set(net.state_dict())


# ---------------------------------------------------------------------------------------------
# channels_last, autocast, compile: same sample as the default path
# ---------------------------------------------------------------------------------------------
def test_default_path_is_the_bare_network_and_bad_options_are_named():
    net = tiny_net()
    assert accelerated(net) is net
    with pytest.raises(ValueError, match="autocast"):
        accelerated(net, autocast="int8")
    with pytest.raises(ValueError, match="compile"):
        accelerated(net, compile=3)
    with pytest.raises(ValueError, match="channels_last"):
        accelerated(net, channels_last="yes")


@pytest.mark.parametrize("spatial_dims,size", [(2, 16), (3, 8)])
def test_channels_last_sampling_equals_default(spatial_dims, size):
    inferer = ConditionalDiffusionInferer(DiscreteSchedule.linear_betas(100), prediction_type="v_prediction")
    net = tiny_net(spatial_dims, cond_channels=1, residual=False)
    noise = torch.randn(2, 1, *([size] * spatial_dims), generator=gen(0))
    cond = torch.randn(noise.shape, generator=gen(1)).clamp(-1, 1)
    kw = dict(sampler="ancestral", num_steps=4, condition=cond, verbose=False)
    ref = inferer.sample(noise, net, generator=gen(2), **kw)
    fast = inferer.sample(noise, net, generator=gen(2), channels_last=True, **kw)
    fmt = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
    conv_weight = next(p for p in net.parameters() if p.ndim == spatial_dims + 2)
    assert conv_weight.is_contiguous(memory_format=fmt)  # the network really ran in that layout
    assert fast.is_contiguous() and fast.dtype == ref.dtype
    torch.testing.assert_close(fast, ref, atol=1e-4, rtol=1e-4)
    assert (ref - noise).abs().max() > 1e-2  # the sampler moved away from the noise


def test_bf16_autocast_sample_is_close_to_float32():
    inferer = VDMInferer(FixedLinearSchedule())
    net = tiny_net()
    kw = dict(num_steps=6, sampler="dpm++", verbose=False, quantize=False)
    ref = inferer.sample(torch.randn(2, 1, 16, 16, generator=gen(0)), net, generator=gen(0), **kw)
    low = inferer.sample(torch.randn(2, 1, 16, 16, generator=gen(0)), net, generator=gen(0), autocast="bf16", **kw)
    assert low.dtype == torch.float32  # the sampler stays in float32, only the network runs in bf16
    err = (low - ref).abs()
    assert float(err.mean()) < 0.02 and float(err.max()) < 0.15  # bf16 has 8 bits of mantissa
    assert not torch.equal(low, ref)  # the network did run in bf16


def test_compile_sampling_equals_default():
    inferer = ConditionalDiffusionInferer(DiscreteSchedule.linear_betas(50))
    net = tiny_net(cond_channels=1, residual=False)
    noise, cond = torch.randn(1, 1, 16, 16, generator=gen(0)), torch.randn(1, 1, 16, 16, generator=gen(1))
    kw = dict(sampler="ddim", num_steps=3, condition=cond, verbose=False)
    ref = inferer.sample(noise, net, **kw)
    out = inferer.sample(noise, net, compile="aot_eager", **kw)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# batched sampling: per-input generators make each result independent of the batch
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_batched_restoration_equals_one_input_at_a_time(sampler):
    inferer = ConditionalDiffusionInferer(DiscreteSchedule.linear_betas(100), prediction_type="v_prediction")
    net = tiny_net(cond_channels=1, residual=False)
    noise = torch.randn(3, 1, 16, 16, generator=gen(0))
    cond = torch.randn(3, 1, 16, 16, generator=gen(1)).clamp(-1, 1)
    kw = dict(sampler=sampler, num_steps=5, num_samples=2, verbose=False, eta=1.0 if sampler == "ddim" else None)
    mean, std = inferer.sample(noise, net, condition=cond, generator=[gen(10 + i) for i in range(3)], **kw)
    for i in range(3):
        m1, s1 = inferer.sample(noise[i : i + 1], net, condition=cond[i : i + 1], generator=[gen(10 + i)], **kw)
        torch.testing.assert_close(mean[i : i + 1], m1, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(std[i : i + 1], s1, atol=1e-5, rtol=1e-5)
    assert float(std.min(0).values.max()) > 0  # the samples of an input differ (sampler noise was drawn)
    # one shared generator instead: the second input's noise depends on the first, so results differ
    shared, _ = inferer.sample(noise, net, condition=cond, generator=gen(10), **kw)
    alone, _ = inferer.sample(noise[1:2], net, condition=cond[1:2], generator=gen(11), **kw)
    assert not torch.allclose(shared[1:2], alone, atol=1e-3)
    with pytest.raises(ValueError, match="generator"):
        inferer.sample(noise, net, condition=cond, generator=[gen(0), gen(1)], **kw)


def test_restore_image_result_does_not_depend_on_batch_size():
    from monai.data import MetaTensor

    from monai_medgen.restoration import restore_image

    inferer = ConditionalDiffusionInferer(DiscreteSchedule.linear_betas(100), prediction_type="v_prediction")
    net = tiny_net(cond_channels=1, residual=False)
    vol = MetaTensor(
        torch.rand(1, 16, 16, 3, generator=gen(4)) + 0.1, affine=torch.diag(torch.tensor([1.0, 1.0, 3.0, 1.0]))
    )
    kw = dict(sampler="ancestral", num_steps=4, seed=7)
    one_by_one, _ = restore_image(net, inferer, "denoise", vol, batch_size=1, **kw)
    together, _ = restore_image(net, inferer, "denoise", vol, batch_size=3, **kw)
    torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=1e-5)
    fast, _ = restore_image(net, inferer, "denoise", vol, batch_size=3, channels_last=True, **kw)
    torch.testing.assert_close(fast, one_by_one, atol=1e-4, rtol=1e-4)


def test_vdm_sample_with_per_sample_generators():
    inferer = VDMInferer()
    net = tiny_net()
    kw = dict(num_steps=4, sampler="ancestral", verbose=False, quantize=False)
    gens = [gen(1), gen(2)]
    both = inferer.sample(batched_randn((2, 1, 16, 16), gens), net, generator=gens, **kw)
    gens = [gen(2)]
    second = inferer.sample(batched_randn((1, 1, 16, 16), gens), net, generator=gens, **kw)
    torch.testing.assert_close(both[1:], second, atol=1e-5, rtol=1e-5)
    # element i draws from generator i % n, in order
    g1, g2 = gen(1), gen(2)
    draws = batched_randn((4, 3), [gen(1), gen(2)])
    expected = torch.cat([torch.randn(1, 3, generator=g) for g in (g1, g2, g1, g2)])
    torch.testing.assert_close(draws, expected)
    with pytest.raises(ValueError, match="generator"):
        batched_randn((3, 2), [gen(1), gen(2)])


# ---------------------------------------------------------------------------------------------
# no per-step host synchronisation in the loop
# ---------------------------------------------------------------------------------------------
def _count_host_reads(monkeypatch) -> dict:
    """Count tensor -> Python reads (each is a device synchronisation on a GPU)."""
    counts = {"n": 0}
    for name in ("__bool__", "__float__", "__int__", "item", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            counts["n"] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


@pytest.mark.parametrize("sampler", ["ancestral", "ddim", "dpm++"])
def test_sampling_loop_reads_nothing_back_per_step(monkeypatch, sampler):
    schedule = DiscreteSchedule.linear_betas(100)
    inferer = ConditionalDiffusionInferer(schedule, prediction_type="v_prediction", network_input="gamma")

    def net(z, gamma, condition=None):
        return 0.3 * torch.tanh(z) + 0.1 * condition + 0.01 * gamma.view(-1, 1, 1, 1)

    z, cond = torch.randn(2, 1, 8, 8, generator=gen(0)), torch.randn(2, 1, 8, 8, generator=gen(1))
    reads = []
    for steps in (5, 40):
        counts = _count_host_reads(monkeypatch)
        out = sample_loop(
            lambda x, g: net(x, g, condition=cond),
            z,
            schedule,
            time_grid(steps, 100),
            sampler=sampler,
            generator=gen(2),
            clip_x0=(-1.0, 1.0),
            verbose=False,
        )
        whole = inferer.sample(
            z, net, sampler=sampler, num_steps=steps, condition=cond, generator=gen(2), verbose=False
        )
        assert out.nfe == steps and torch.isfinite(whole).all()
        reads.append(counts["n"])
        monkeypatch.undo()
    assert reads[0] == reads[1], f"host reads grow with the step count: {reads} for 5 and 40 steps"


# ---------------------------------------------------------------------------------------------
# the command line's speed flags
# ---------------------------------------------------------------------------------------------
def test_cli_restore_speed_flags(tmp_path):
    import shutil
    from pathlib import Path

    import nibabel as nib
    import numpy as np
    from monai.bundle import ConfigParser

    from monai_medgen import cli
    from monai_medgen.bundle import save_model

    repo = Path(__file__).resolve().parents[1]
    bundle = tmp_path / "cddpm_denoising_2d"
    shutil.copytree(repo / "bundles" / "cddpm_denoising_2d" / "configs", bundle / "configs")
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    parser["bundle_root"], parser["device"] = str(bundle), "cpu"
    net = parser.get_parsed_content("network")
    g = gen(5)
    with torch.no_grad():  # random weights everywhere (MONAI zero-initialises output convolutions)
        for p in net.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    save_model(bundle / "models" / "model.pt", net)
    src = tmp_path / "noisy.nii.gz"
    nib.save(
        nib.Nifti1Image(np.random.default_rng(0).random((24, 24, 2)).astype(np.float32) + 0.1, np.eye(4)), str(src)
    )
    common = [
        "restore",
        "--bundle",
        str(bundle),
        "--input",
        str(src),
        "--steps",
        "2",
        "--sampler",
        "ddim",
        "--device",
        "cpu",
    ]
    outs = {}
    for name, flags in (
        ("default", []),
        ("cl", ["--channels-last"]),
        ("bf16", ["--channels-last", "--autocast", "bf16"]),
    ):
        out = tmp_path / f"{name}.nii.gz"
        assert cli.main([*common, "--output", str(out), *flags]) == 0
        outs[name] = nib.load(str(out)).get_fdata()
    scale = float(np.abs(outs["default"]).max())
    assert scale > 0
    np.testing.assert_allclose(outs["cl"], outs["default"], atol=1e-4 * scale)
    diff = np.abs(outs["bf16"] - outs["default"])
    assert 0 < diff.max() < 0.2 * scale  # bf16 changes the result, within its precision
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([*common, "--output", "x.nii.gz", "--autocast", "int8"])
    args = cli.build_parser().parse_args([*common, "--output", "x.nii.gz", "--compile"])
    assert args.compile == "inductor" and not args.channels_last and args.autocast is None
