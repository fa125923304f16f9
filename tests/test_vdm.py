import math

import pytest
import torch

from monai_medgen.inferers import SamplingOptions, VDMInferer
from monai_medgen.inferers.vdm import (
    antithetic_times,
    diffusion_loss_continuous,
    from_levels,
    prior_kl,
    reconstruction_nll,
    to_levels,
)
from monai_medgen.networks import ScoreUNet
from monai_medgen.schedules import FixedLinearSchedule, LearnedLinearSchedule


def small_net(spatial_dims=2, **kw):
    return ScoreUNet(spatial_dims, 1, channels=(8, 16), num_res_blocks=1, norm_num_groups=8, num_head_channels=8, **kw)


class OracleNet(torch.nn.Module):
    """eps_hat from a fixed clean image x: exact when x is the data (a perfect denoiser)."""

    def __init__(self, x):
        super().__init__()
        self.x = x

    def forward(self, z, gamma, class_labels=None):
        a = torch.sigmoid(-gamma).sqrt().view(-1, 1, 1, 1)
        s = torch.sigmoid(gamma).sqrt().view(-1, 1, 1, 1)
        return (z - a * self.x) / s


def test_levels_round_trip_matches_png_quantisation():
    k = torch.arange(256)
    x = from_levels(k, centres=False)  # data space: k / 255 in [0, 1] mapped to [-1, 1]
    assert torch.equal(to_levels(x), k)
    u = torch.rand(1000)
    assert torch.equal(to_levels(u * 2 - 1), torch.round(u * 255).long())


def test_antithetic_times_spread_over_unit_interval():
    t = antithetic_times(8)
    assert t.min() >= 0 and t.max() < 1
    gaps = torch.sort(t).values.diff()
    assert torch.allclose(gaps, torch.full_like(gaps, 1 / 8), atol=1e-6)


def test_prior_kl_matches_direct_formula():
    x = torch.rand(3, 1, 4, 4) * 2 - 1
    g1 = torch.tensor(2.0)
    s2 = 1 / (1 + math.exp(-2.0))
    a2 = 1 - s2
    q = torch.distributions.Normal(math.sqrt(a2) * x, math.sqrt(s2))
    p = torch.distributions.Normal(torch.zeros_like(x), torch.ones_like(x))
    direct = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    assert torch.allclose(prior_kl(x, g1), direct, atol=1e-5)


def test_reconstruction_matches_direct_softmax():
    k = torch.randint(0, 256, (2, 1, 3, 3))
    g0 = torch.tensor(-8.0)
    noise = torch.randn(2, 1, 3, 3)
    x = 2 * (k.float() + 0.5) / 256 - 1
    z = x + math.exp(-4.0) * noise
    v = 2 * (torch.arange(256).float() + 0.5) / 256 - 1
    direct = torch.zeros(2)
    for b in range(2):
        for idx in range(9):
            zi, ki = z[b].flatten()[idx], k[b].flatten()[idx]
            logits = -0.5 * ((zi - v) / math.exp(-4.0)) ** 2
            direct[b] -= torch.log_softmax(logits, 0)[ki]
    assert torch.allclose(reconstruction_nll(k, g0, noise), direct, atol=1e-4)
    # a very low noise level codes the data almost for free, a high one costs bits
    assert reconstruction_nll(k, torch.tensor(-14.0), noise).max() < 1e-2
    assert reconstruction_nll(k, torch.tensor(-4.0), noise).min() > 1.0


def test_continuous_diffusion_term_uses_slope():
    eps, eps_hat = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    assert torch.allclose(diffusion_loss_continuous(eps, eps_hat, torch.tensor([1.0, 2.0])), torch.tensor([2.0, 4.0]))


def test_discrete_loss_approaches_continuous_as_T_grows():
    torch.manual_seed(1)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    inf = VDMInferer(FixedLinearSchedule())
    net = OracleNet(from_levels(to_levels(x)) * 0.9)  # imperfect, so the diffusion term is not zero
    noise = torch.randn_like(x)
    t = torch.rand(4)
    cont = inf(x, net, times=t, noise=noise).diffusion
    errs = []
    for steps in (10, 100, 10000):
        disc = inf(x, net, times=t, noise=noise, num_discrete_steps=steps).diffusion
        errs.append(float((disc - cont).abs().max() / cont.abs().max()))
    assert errs[2] < errs[1] < errs[0] and errs[2] < 0.02


def test_oracle_network_gives_near_zero_diffusion_loss():
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    inf = VDMInferer()
    out = inf(x, OracleNet(from_levels(to_levels(x))))
    assert float(out.diffusion.abs().max()) < 1e-4
    assert out.bpd.shape == (2,) and torch.allclose(out.bpd, out.diffusion + out.prior + out.reconstruction)


@pytest.mark.parametrize("spatial_dims,shape", [(2, (2, 1, 16, 16)), (3, (1, 1, 8, 8, 8))])
def test_training_call_shapes_and_gradients(spatial_dims, shape):
    net = small_net(spatial_dims)
    inf = VDMInferer(LearnedLinearSchedule(), edge_weight=0.1)
    x = torch.rand(shape) * 2 - 1
    out = inf(x, net)
    assert out.loss.ndim == 0 and out.diffusion.shape == (shape[0],) and out.edge.shape == (shape[0],)
    out.loss.backward()
    assert inf.schedule.w.grad is not None and inf.schedule.b.grad is not None
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_bad_inputs_give_named_errors():
    with pytest.raises(ValueError, match="inputs"):
        VDMInferer()(torch.rand(4, 4), small_net())
    with pytest.raises(ValueError, match="sampler"):
        VDMInferer().sample(torch.randn(1, 1, 8, 8), small_net(), num_steps=2, sampler="euler", verbose=False)
    with pytest.raises(ValueError, match="num_steps"):
        VDMInferer().sample(torch.randn(1, 1, 8, 8), small_net(), num_steps=0, verbose=False)
    with pytest.raises(ValueError, match="input_noise"):
        VDMInferer().sample((1, 1, 8, 8), small_net(), num_steps=2, verbose=False)
    with pytest.raises(TypeError, match="stepz"):
        VDMInferer().sample(torch.randn(1, 1, 8, 8), small_net(), stepz=2, verbose=False)
    with pytest.raises(ValueError, match="class_labels"):
        small_net(num_classes=3)(torch.rand(1, 1, 8, 8), torch.zeros(1), class_labels=torch.tensor([7]))
    with pytest.raises(ValueError, match="guidance_scale"):
        VDMInferer().sample(torch.randn(1, 1, 8, 8), small_net(), num_steps=2, guidance_scale=1.0, verbose=False)


@pytest.mark.parametrize("sampler", ["ancestral", "ddim", "dpm++"])
def test_same_seed_same_sample_2d(sampler):
    net = small_net().eval()
    inf = VDMInferer()

    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return inf.sample(
            torch.randn(2, 1, 16, 16, generator=g), net, num_steps=5, sampler=sampler, generator=g, verbose=False
        )

    a, b, c = draw(3), draw(3), draw(4)
    options = SamplingOptions(sampler=sampler, num_steps=5, verbose=False)
    g = torch.Generator().manual_seed(3)
    assert torch.equal(a, inf.sample(torch.randn(2, 1, 16, 16, generator=g), net, generator=g, options=options))
    assert a.shape == (2, 1, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(to_levels(a), to_levels(from_levels(to_levels(a), centres=False)))


def test_sample_3d_with_intermediates_and_class_guidance():
    net = small_net(3, num_classes=2).eval()
    inf = VDMInferer()
    g = torch.Generator().manual_seed(0)
    x, frames = inf.sample(
        torch.randn(2, 1, 8, 8, 8, generator=g),
        net,
        num_steps=6,
        class_labels=torch.tensor([0, 1]),
        guidance_scale=1.5,
        save_intermediates=True,
        intermediate_steps=[2, 4],
        verbose=False,
        generator=g,
    )
    assert x.shape == (2, 1, 8, 8, 8) and len(frames) == 2 and frames[0].shape == x.shape


def test_guidance_zero_equals_conditional_prediction():
    from monai_medgen.inferers.vdm import guided_eps_fn

    net = small_net(num_classes=3).eval()
    z, g, labels = torch.randn(2, 1, 8, 8), torch.zeros(2), torch.tensor([0, 2])
    cond = net(z, g, class_labels=labels)
    assert torch.allclose(guided_eps_fn(net, labels, 0.0, net.null_class)(z, g), cond)
    guided = guided_eps_fn(net, labels, 2.0, net.null_class)(z, g)
    uncond = net(z, g, class_labels=torch.full_like(labels, 3))
    assert torch.allclose(guided, 3 * cond - 2 * uncond, atol=1e-5)


def test_class_labels_reach_the_network():
    net = small_net(num_classes=3).eval()
    with torch.no_grad():  # MONAI zero-initialises the output convolution: give every weight a value
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    z, g = torch.randn(1, 1, 8, 8), torch.zeros(1)
    assert not torch.allclose(net(z, g, class_labels=torch.tensor([0])), net(z, g, class_labels=torch.tensor([1])))


def test_bits_per_dim_estimate_is_stable():
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    inf = VDMInferer()
    net = small_net().eval()
    a = inf.bits_per_dim(x, net, num_time_samples=128, generator=torch.Generator().manual_seed(0))
    b = inf.bits_per_dim(x, net, num_time_samples=128, generator=torch.Generator().manual_seed(1))
    assert set(a) == {"bpd", "diffusion", "prior", "reconstruction"}
    assert torch.allclose(a["bpd"], b["bpd"], rtol=0.1)
    assert torch.allclose(a["bpd"], a["diffusion"] + a["prior"] + a["reconstruction"], atol=1e-5)


def test_grid_skip_recovers_noise_below_the_grid_spacing():
    from monai_medgen.networks import GridSkip

    k = torch.randint(0, 256, (2, 1, 16, 16))
    x = from_levels(k)
    eps = torch.randn_like(x).clamp(-3, 3)
    skip = GridSkip(256)
    for gamma, exact in ((-14.0, True), (-2.0, False)):
        g = torch.full((2,), gamma)
        z = torch.sigmoid(-g).sqrt().view(-1, 1, 1, 1) * x + torch.sigmoid(g).sqrt().view(-1, 1, 1, 1) * eps
        f = skip.features(z, g)
        assert torch.allclose(f, eps, atol=1e-3) == exact
    # the gate opens at low noise and closes at high noise
    g = torch.tensor([-14.0, 0.0])
    z = torch.full((2, 1, 2, 2), 0.3)
    out = skip(z, g, torch.ones(2, 1, 2, 2))
    assert torch.allclose(out[0], skip.features(z, g)[0], atol=0.05) and torch.allclose(
        out[1], torch.ones(1, 2, 2), atol=1e-3
    )


def test_sample_3d_at_32_cubed():
    net = small_net(3).eval()
    x = VDMInferer().sample(torch.randn(1, 1, 32, 32, 32), net, num_steps=3, sampler="dpm++", verbose=False)
    assert x.shape == (1, 1, 32, 32, 32) and torch.isfinite(x).all()


@pytest.mark.parametrize("gamma_0", [-14.0, -11.0, -9.0, -6.0, -3.0])
def test_windowed_reconstruction_equals_full_softmax(gamma_0):
    k = torch.randint(0, 256, (2, 1, 8, 8))
    k[0, 0, 0, :3] = torch.tensor([0, 255, 128])  # edges of the range
    noise = torch.randn(2, 1, 8, 8) * 2
    g0 = torch.tensor(gamma_0)
    x = from_levels(k)
    z = x + math.exp(gamma_0 / 2) * noise
    v = from_levels(torch.arange(256))
    logits = -0.5 * ((z.unsqueeze(-1) - v) / math.exp(gamma_0 / 2)) ** 2
    full = -torch.gather(torch.log_softmax(logits, -1), -1, k.unsqueeze(-1)).squeeze(-1).flatten(1).sum(1)
    assert torch.allclose(reconstruction_nll(k, g0, noise), full, rtol=1e-4, atol=1e-4)


def test_gamma_min_scan_matches_the_closed_form_for_a_zero_network():
    """With eps_hat = 0 the diffusion integrand is ||eps||^2 at every noise level (the same noise at each), so the
    change of the bound is recon(g) - recon(gamma_0) + 0.5 ||eps||^2 (gamma_0 - g), exactly what the scan returns."""
    schedule = LearnedLinearSchedule()
    schedule.set_gamma_min(-12.0)
    inferer = VDMInferer(schedule=schedule)
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    scan = inferer.gamma_min_scan(
        x, lambda z, g: torch.zeros_like(z), [-13.0, -12.5, -11.0], step=0.1, generator=torch.Generator().manual_seed(4)
    )
    gen = torch.Generator().manual_seed(4)
    levels = to_levels(x)
    noise, noise_0 = torch.randn(x.shape, generator=gen), torch.randn(x.shape, generator=gen)
    recon = {g: reconstruction_nll(levels, torch.tensor(g), noise_0) for g in (-13.0, -12.5, -12.0, -11.0)}
    to_bpd = 1 / (64 * math.log(2))
    for g, delta in zip(scan["gamma_min"].tolist(), scan["delta_bpd"].tolist()):
        expected = (recon[g] - recon[-12.0] + 0.5 * noise.flatten(1).pow(2).sum(1) * (-12.0 - g)) * to_bpd
        assert delta == pytest.approx(float(expected.mean()), rel=1e-4, abs=1e-6)
    assert scan["reconstruction"].tolist() == sorted(scan["reconstruction"].tolist())  # less noise, fewer bits
    assert float(schedule.endpoints()[1].detach()) == pytest.approx(5.0, abs=1e-5)  # set_gamma_min kept gamma_1
    with pytest.raises(ValueError, match="gamma_mins must lie below gamma_1"):
        inferer.gamma_min_scan(x, lambda z, g: torch.zeros_like(z), [6.0])
    with pytest.raises(ValueError, match="gamma_min must lie below"):
        schedule.set_gamma_min(5.5)


def test_gamma_max_scan_matches_the_closed_form_for_a_zero_network():
    """The upper endpoint: with eps_hat = 0 the change of the bound for gamma_1 -> g is
    prior(g) - prior(gamma_1) + 0.5 ||eps||^2 (g - gamma_1); set_gamma_max keeps gamma_0."""
    schedule = LearnedLinearSchedule()
    schedule.set_gamma_max(6.0)
    inferer = VDMInferer(schedule=schedule)
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    zero = lambda z, g: torch.zeros_like(z)  # noqa: E731
    scan = inferer.gamma_max_scan(x, zero, [5.0, 7.5, 9.0], step=0.1, generator=torch.Generator().manual_seed(2))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    xc = from_levels(to_levels(x))
    to_bpd = 1 / (64 * math.log(2))
    for g, delta in zip(scan["gamma_max"].tolist(), scan["delta_bpd"].tolist()):
        change = prior_kl(xc, torch.tensor(g)) - prior_kl(xc, torch.tensor(6.0))
        expected = (change + 0.5 * noise.flatten(1).pow(2).sum(1) * (g - 6.0)) * to_bpd
        assert delta == pytest.approx(float(expected.mean()), rel=1e-4, abs=1e-6)
    assert scan["prior"].tolist() == sorted(scan["prior"].tolist(), reverse=True)  # more noise, smaller prior term
    assert float(schedule.endpoints()[0].detach()) == pytest.approx(-13.3, abs=1e-5)  # set_gamma_max kept gamma_0
    with pytest.raises(ValueError, match="gamma_maxs must lie above gamma_0"):
        inferer.gamma_max_scan(x, zero, [-14.0])
    with pytest.raises(ValueError, match="gamma_max must lie above"):
        schedule.set_gamma_max(-14.0)
