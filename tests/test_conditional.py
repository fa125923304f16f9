"""Tests of monai_medgen.inferers.conditional: training call, samplers on a DDPM table, guidance,
inpainting / RePaint, uncertainty, patch-wise 3D sampling and MONAI engine integration."""

from __future__ import annotations

import pytest
import torch
from monai.engines import SupervisedTrainer
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from monai_medgen.inferers import ConditionalDiffusionInferer, ConditionalPrepareBatch
from monai_medgen.networks import ScoreUNet
from monai_medgen.samplers import sample_loop
from monai_medgen.schedules import DiscreteSchedule, FixedLinearSchedule, time_grid

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randomized(net: torch.nn.Module) -> torch.nn.Module:
    """MONAI's U-Net zero-initialises its output convolutions (the net is eps = z at init, blind to any
    condition); give those weights random values so conditioning and patching change the output."""
    g = gen(123)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return net


def small_score_net(spatial_dims=2, **kw):
    return randomized(
        ScoreUNet(
            spatial_dims,
            1,
            channels=(8, 16),
            num_res_blocks=1,
            norm_num_groups=8,
            num_head_channels=8,
            fourier_exponents=(),
            **kw,
        )
    )


class TimestepNet(torch.nn.Module):
    """Deterministic eps model with MONAI's (x, timesteps, class_labels) interface; records its calls.

    Channel 0 of x is the noisy image, the others an (optional) concatenated condition."""

    def __init__(self, label_weight: float = 0.0):
        super().__init__()
        self.calls = []
        self.label_weight = label_weight

    def forward(self, x, timesteps, class_labels=None):
        self.calls.append({"x": x.clone(), "timesteps": timesteps.clone(), "class_labels": class_labels})
        out = 0.6 * torch.tanh(x[:, :1]) + 0.02 * timesteps.float().view(-1, 1, *([1] * (x.ndim - 2)))
        if x.shape[1] > 1:
            out = out + 0.3 * x[:, 1:].sum(1, keepdim=True)
        if class_labels is not None:
            out = out + self.label_weight * class_labels.float().view(-1, 1, *([1] * (x.ndim - 2)))
        return out


class GammaNet(torch.nn.Module):
    """Deterministic eps model with the (z, gamma, class_labels, condition) interface; records kwargs."""

    null_class = 3

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, z, gamma, class_labels=None, condition=None):
        self.calls.append({"batch": z.shape[0], "class_labels": class_labels, "condition": condition})
        out = 0.5 * torch.tanh(z) + 0.01 * gamma.view(-1, *([1] * (z.ndim - 1)))
        if class_labels is not None:
            out = out + 0.1 * class_labels.float().view(-1, *([1] * (z.ndim - 1)))
        if condition is not None:
            out = out + 0.2 * condition
        return out


# ---------------------------------------------------------------------------------------------
# construction and training call
# ---------------------------------------------------------------------------------------------
def test_default_schedule_is_med_cdiff_and_monai_schedulers_are_read():
    inf = ConditionalDiffusionInferer()
    assert inf.num_train_timesteps == 2000
    ref = DDPMScheduler(num_train_timesteps=2000, schedule="linear_beta", beta_start=1e-4, beta_end=0.02)
    abar = ref.alphas_cumprod.double()
    assert torch.allclose(inf.gamma(torch.arange(2000)).double(), torch.log1p(-abar) - torch.log(abar), rtol=1e-4)
    ddim = DDIMScheduler(num_train_timesteps=50)
    assert ConditionalDiffusionInferer(ddim).num_train_timesteps == 50
    cont = ConditionalDiffusionInferer(FixedLinearSchedule(), num_train_timesteps=100)
    assert torch.allclose(cont.gamma(torch.tensor([99])), torch.tensor([5.0]), atol=1e-3)
    k = torch.arange(2000)
    assert torch.equal(inf.timesteps_of(inf.gamma(k)), k)


def test_training_call_noises_like_monai_and_passes_condition_and_labels():
    sched = DDPMScheduler(num_train_timesteps=20)
    inf = ConditionalDiffusionInferer(sched)
    net = TimestepNet(label_weight=1.0)
    x, noise = torch.rand(3, 1, 8, 8) * 2 - 1, torch.randn(3, 1, 8, 8)
    cond, t, labels = torch.randn(3, 2, 8, 8), torch.tensor([0, 7, 19]), torch.tensor([0, 1, 2])
    pred = inf(x, net, noise=noise, timesteps=t, condition=cond, class_labels=labels)
    call = net.calls[-1]
    assert call["x"].shape == (3, 3, 8, 8)  # condition concatenated on channels
    assert torch.allclose(call["x"][:, :1], sched.add_noise(x, noise, t), atol=1e-5)
    assert torch.equal(call["x"][:, 1:], cond)
    assert torch.equal(call["timesteps"], t) and torch.equal(call["class_labels"], labels)
    assert pred.shape == x.shape

    gnet = GammaNet()
    ConditionalDiffusionInferer(sched, network_input="gamma")(
        x, gnet, noise=noise, timesteps=t, condition=cond[:, :1], class_labels=labels
    )
    assert torch.equal(gnet.calls[-1]["class_labels"], labels)
    assert torch.equal(gnet.calls[-1]["condition"], cond[:, :1])


def test_v_prediction_target_matches_monai_velocity_and_sampler_converts_it():
    sched = DDPMScheduler(num_train_timesteps=20)
    inf = ConditionalDiffusionInferer(sched, prediction_type="v_prediction")
    x, noise, t = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4), torch.tensor([3, 17])
    assert torch.allclose(inf.target(x, noise, t), sched.get_velocity(x, noise, t), atol=1e-5)
    assert torch.equal(ConditionalDiffusionInferer(sched).target(x, noise, t), noise)

    # a v-network equivalent to an eps-network gives the same samples
    eps_inf = ConditionalDiffusionInferer(sched, network_input="gamma")
    v_inf = ConditionalDiffusionInferer(sched, prediction_type="v_prediction", network_input="gamma")
    eps_net = GammaNet()

    def v_net(z, gamma):
        a, s = torch.sigmoid(-gamma).sqrt().view(-1, 1, 1, 1), torch.sigmoid(gamma).sqrt().view(-1, 1, 1, 1)
        eps = eps_net(z, gamma)
        x0 = (z - s * eps) / a
        return a * eps - s * x0

    z = torch.randn(2, 1, 4, 4)
    a = eps_inf.sample(z, eps_net, sampler="ddim", num_steps=5, verbose=False)
    b = v_inf.sample(z, v_net, sampler="ddim", num_steps=5, verbose=False)
    assert torch.allclose(a, b, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# samplers on the discrete table: the MONAI t-1 bug does not come back
# ---------------------------------------------------------------------------------------------
def test_ancestral_with_fewer_steps_uses_the_visited_alphas_and_monai_step_does_not():
    T = 10
    sched = DDPMScheduler(num_train_timesteps=T, clip_sample=False)
    inf = ConditionalDiffusionInferer(sched)
    net = TimestepNet()
    z = torch.randn(2, 1, 4, 4, generator=gen(1))
    _, inter = inf.sample(
        z, net, num_steps=2, generator=gen(7), verbose=False, clip=None, save_intermediates=True, intermediate_steps=1
    )
    visited = [int(c["timesteps"][0]) for c in net.calls]
    assert visited == [9, 4]  # levels k / T = 1, 1/2 -> MONAI indices 9, 4
    z_after_first = inter[0]

    # hand-computed posterior q(z_4 | z_9, x0_hat) from MONAI's own alphas_cumprod
    abar = sched.alphas_cumprod.double()
    a_t, a_s = abar[9], abar[4]
    eps = net(z, torch.full((2,), 9)).double()
    x0 = (z.double() - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    beta = 1 - a_t / a_s
    mean = a_s.sqrt() * beta / (1 - a_t) * x0 + (a_t / a_s).sqrt() * (1 - a_s) / (1 - a_t) * z.double()
    var = (1 - a_s) / (1 - a_t) * beta
    noise = torch.randn(z.shape, generator=gen(7)).double()  # first draw of the sampler's generator
    expected = mean + var.sqrt() * noise
    assert torch.allclose(z_after_first.double(), expected, atol=1e-5)

    # MONAI's DDPMScheduler.step goes to t - 1 = 8 whatever the next visited step is
    sched.set_timesteps(2)
    monai_z, _ = sched.step(eps.float(), 9, z, generator=gen(7))
    assert not torch.allclose(monai_z.double(), expected, atol=1e-2)
    a_8 = abar[8]
    mean_8 = a_8.sqrt() * (1 - a_t / a_8) / (1 - a_t) * x0 + (a_t / a_8).sqrt() * (1 - a_8) / (1 - a_t) * z.double()
    var_8 = (1 - a_8) / (1 - a_t) * (1 - a_t / a_8)
    assert torch.allclose(monai_z.double(), mean_8 + var_8.sqrt() * noise, atol=1e-5)


@pytest.mark.parametrize("clip", [True, False])
def test_ancestral_at_full_T_agrees_with_monai_ddpm_steps(clip):
    T = 10
    sched = DDPMScheduler(num_train_timesteps=T, clip_sample=clip)
    inf = ConditionalDiffusionInferer(sched)
    net = TimestepNet()
    z = torch.randn(2, 1, 4, 4, generator=gen(1))
    ours = inf.sample(z, net, generator=gen(5), verbose=False, clip=(-1.0, 1.0) if clip else None)
    sched.set_timesteps(T)
    x, g = z.clone(), gen(5)
    for t in sched.timesteps:
        x, _ = sched.step(net(x, t.reshape(1).expand(2)), int(t), x, generator=g)
    # the only difference: our t = 0 level is gamma(0) extrapolated (alpha_0 < 1), MONAI's is alpha_0 = 1
    assert torch.allclose(ours, x, atol=2e-3)
    assert not torch.allclose(ours, inf.sample(z, net, generator=gen(6), verbose=False), atol=1e-2)


def test_ddim_eta_zero_is_deterministic_and_dpm_solver_differs():
    inf = ConditionalDiffusionInferer(DiscreteSchedule.linear_betas(100))
    net = small_score_net(cond_channels=1)
    z, cond = torch.randn(1, 1, 8, 8, generator=gen(0)), torch.randn(1, 1, 8, 8)
    a = inf.sample(z, net, sampler="ddim", num_steps=4, condition=cond, generator=gen(1), verbose=False)
    b = inf.sample(z, net, sampler="ddim", num_steps=4, condition=cond, generator=gen(2), verbose=False)
    assert torch.equal(a, b)
    c = inf.sample(z, net, sampler="dpm++", num_steps=4, condition=cond, generator=gen(1), verbose=False)
    assert c.shape == a.shape and torch.isfinite(c).all()
    assert (c - a).abs().max() > 1e-4
    d = inf.sample(z, net, sampler="ancestral", num_steps=4, condition=cond, generator=gen(2), verbose=False)
    e = inf.sample(z, net, sampler="ancestral", num_steps=4, condition=cond, generator=gen(3), verbose=False)
    assert not torch.allclose(d, e)


# ---------------------------------------------------------------------------------------------
# conditioning and guidance
# ---------------------------------------------------------------------------------------------
def test_class_labels_and_condition_reach_the_network_during_sampling():
    inf = ConditionalDiffusionInferer(DiscreteSchedule.linear_betas(20))
    net = small_score_net(num_classes=2, cond_channels=1)
    z, cond = torch.randn(2, 1, 8, 8, generator=gen(0)), torch.randn(2, 1, 8, 8)
    a = inf.sample(
        z, net, sampler="ddim", num_steps=3, condition=cond, class_labels=torch.tensor([0, 0]), verbose=False
    )
    b = inf.sample(
        z, net, sampler="ddim", num_steps=3, condition=cond, class_labels=torch.tensor([1, 1]), verbose=False
    )
    c = inf.sample(
        z, net, sampler="ddim", num_steps=3, condition=-cond, class_labels=torch.tensor([0, 0]), verbose=False
    )
    assert (a - b).abs().max() > 1e-3 and (a - c).abs().max() > 1e-3

    rec = GammaNet()  # a custom gamma network is named as such (only ScoreUNet is recognised by type)
    ConditionalDiffusionInferer(DiscreteSchedule.linear_betas(20), network_input="gamma").sample(
        z, rec, num_steps=3, condition=cond, class_labels=1, verbose=False
    )
    assert len(rec.calls) == 3
    assert all(torch.equal(call["class_labels"], torch.tensor([1, 1])) for call in rec.calls)
    assert all(torch.equal(call["condition"], cond) for call in rec.calls)


def test_guidance_zero_equals_the_conditional_prediction():
    inf = ConditionalDiffusionInferer(DiscreteSchedule.linear_betas(20), network_input="gamma")
    net = GammaNet()
    z, labels = torch.randn(2, 1, 4, 4, generator=gen(0)), torch.tensor([0, 2])
    ours = inf.sample(z, net, num_steps=5, class_labels=labels, guidance_scale=0.0, generator=gen(3), verbose=False)
    assert all(call["batch"] == 2 for call in net.calls)  # one conditional call per step, no null batch
    direct = sample_loop(
        lambda zz, g: net(zz, g, class_labels=labels),
        z,
        inf.schedule,
        time_grid(5, 20),
        generator=gen(3),
        clip_x0=(-1.0, 1.0),
        verbose=False,
    ).sample.clamp(-1, 1)
    assert torch.allclose(ours, direct, atol=1e-6)
    net.calls.clear()
    guided = inf.sample(z, net, num_steps=5, class_labels=labels, guidance_scale=2.0, generator=gen(3), verbose=False)
    assert net.calls[0]["batch"] == 4 and torch.equal(net.calls[0]["class_labels"], torch.tensor([0, 2, 3, 3]))
    assert (guided - ours).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------
# inpainting and uncertainty
# ---------------------------------------------------------------------------------------------
def test_repaint_keeps_the_known_region_exactly():
    inf = ConditionalDiffusionInferer(DiscreteSchedule.linear_betas(40), network_input="gamma")
    net = GammaNet()
    known = torch.rand(2, 1, 8, 8, generator=gen(4)) * 1.6 - 0.8
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 3:7] = 1
    z = torch.randn(2, 1, 8, 8, generator=gen(5))
    out = inf.sample(
        z,
        net,
        num_steps=8,
        mask=mask,
        known=known,
        repaint={"jump_length": 2, "jump_n_sample": 2},
        generator=gen(6),
        verbose=False,
    )
    keep = mask.expand_as(known) == 0
    assert torch.equal(out[keep], known[keep])
    assert not torch.equal(out[~keep], known[~keep])
    # RePaint's resampling walks back up: more network calls than steps
    assert len(net.calls) > 8
    # mask-conditioned network: sample, then paste
    cnet = small_score_net(cond_channels=2)
    cond = torch.cat([known * (1 - mask), mask.expand_as(known)], 1)
    out2 = inf.sample(z, cnet, sampler="ddim", num_steps=3, condition=cond, mask=mask, known=known, verbose=False)
    assert torch.equal(out2[keep], known[keep])


def test_num_samples_returns_mean_and_std_maps():
    inf = ConditionalDiffusionInferer(DiscreteSchedule.linear_betas(20))
    net = small_score_net(cond_channels=1)
    z, cond = torch.randn(2, 1, 8, 8, generator=gen(0)), torch.randn(2, 1, 8, 8)
    mean, std, inter = inf.sample(
        z,
        net,
        num_steps=4,
        condition=cond,
        num_samples=3,
        samples_per_batch=2,
        generator=gen(1),
        verbose=False,
        save_intermediates=True,
        intermediate_steps=2,
    )
    assert mean.shape == std.shape == (2, 1, 8, 8)
    assert (std > 0).all() and torch.isfinite(mean).all()
    assert len(inter) == 2 and inter[0].shape == (6, 1, 8, 8)
    single = inf.sample(z, net, num_steps=4, condition=cond, generator=gen(1), verbose=False)
    assert single.shape == (2, 1, 8, 8)


# ---------------------------------------------------------------------------------------------
# patch-wise sampling of volumes
# ---------------------------------------------------------------------------------------------
def test_patch_path_equals_whole_volume_when_one_patch_covers_it():
    inf = ConditionalDiffusionInferer(DiscreteSchedule.linear_betas(20))
    net = small_score_net(spatial_dims=3, cond_channels=1)
    z, cond = torch.randn(1, 1, 8, 8, 8, generator=gen(0)), torch.randn(1, 1, 8, 8, 8)
    whole = inf.sample(z, net, num_steps=3, condition=cond, generator=gen(1), verbose=False)
    for patch in [(8, 8, 8), (16, 16, 16)]:
        patched = inf.sample(z, net, num_steps=3, condition=cond, patch_size=patch, generator=gen(1), verbose=False)
        assert torch.allclose(whole, patched, atol=1e-5)


def test_patch_path_with_patches_smaller_than_the_volume():
    inf = ConditionalDiffusionInferer(DiscreteSchedule.linear_betas(20))
    net = small_score_net(spatial_dims=3, cond_channels=1, num_classes=2)
    z, cond = torch.randn(2, 1, 11, 13, 9, generator=gen(0)), torch.randn(2, 1, 11, 13, 9)
    out = inf.sample(
        z,
        net,
        sampler="dpm++",
        num_steps=2,
        condition=cond,
        class_labels=torch.tensor([0, 1]),
        guidance_scale=1.0,
        patch_size=(8, 8, 8),
        overlap=0.25,
        sw_batch_size=4,
        generator=gen(1),
        verbose=False,
    )
    assert out.shape == (2, 1, 11, 13, 9) and torch.isfinite(out).all()
    whole = inf.sample(
        z[..., :8, :8, :8],
        net,
        sampler="dpm++",
        num_steps=2,
        condition=cond[..., :8, :8, :8],
        class_labels=torch.tensor([0, 1]),
        guidance_scale=1.0,
        verbose=False,
    )
    assert (out[..., :8, :8, :8] - whole).abs().max() > 0  # blended, not a single-patch result


# ---------------------------------------------------------------------------------------------
# MONAI engine integration
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["score_unet", "monai_unet"])
def test_supervised_trainer_two_iterations(kind):
    inf = ConditionalDiffusionInferer(DiscreteSchedule.linear_betas(50), prediction_type="v_prediction")
    if kind == "score_unet":
        net = small_score_net(cond_channels=1, num_classes=2)
        null = net.null_class
    else:
        net = DiffusionModelUNet(
            2,
            2,
            1,
            channels=(8, 16),
            attention_levels=(False, False),
            num_res_blocks=1,
            norm_num_groups=8,
            num_class_embeds=3,
        )
        null = 2
    data = [{"image": torch.rand(1, 8, 8) * 2 - 1, "cond": torch.rand(1, 8, 8), "label": i % 2} for i in range(4)]
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    seen = []
    prep = ConditionalPrepareBatch(label_key="label", label_dropout=0.5, null_class=null, inferer=inf)

    def recording(batch, device=None, non_blocking=False, **kw):
        out = prep(batch, device, non_blocking, **kw)
        seen.append(out)
        return out

    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-3),
        loss_function=torch.nn.MSELoss(),
        inferer=inf,
        prepare_batch=recording,
        amp=False,
    )
    trainer.run()
    assert trainer.state.iteration == 2
    output = trainer.state.output[0]
    assert torch.isfinite(torch.as_tensor(output["loss"])) and output["pred"].shape == (1, 8, 8)  # decollated per item
    images, target, args, kwargs = seen[0]
    assert set(kwargs) == {"noise", "timesteps", "condition", "class_labels"} and args == ()
    assert target.shape == images.shape == kwargs["noise"].shape == kwargs["condition"].shape == (2, 1, 8, 8)
    assert torch.allclose(target, inf.target(images, kwargs["noise"], kwargs["timesteps"]))
    assert kwargs["timesteps"].shape == (2,) and kwargs["class_labels"].shape == (2,)


def test_prepare_batch_eps_target_is_noise():
    prep = ConditionalPrepareBatch(100, condition_key=None)
    images, target, _, kw = prep({"image": torch.zeros(3, 1, 4, 4)})
    assert torch.equal(target, kw["noise"]) and kw["condition"] is None and kw["class_labels"] is None
    assert ((kw["timesteps"] >= 0) & (kw["timesteps"] < 100)).all()


def test_prepare_batch_focus_times():
    """focus_times train a fixed short sampler's network calls: t = k / T is MONAI timestep k - 1 (t = 1: the
    pure-noise timestep, the one the restoration chain's first call reads); the other items stay uniform."""
    inf = ConditionalDiffusionInferer(DiscreteSchedule.linear_betas(2000), network_input="gamma")
    prep = ConditionalPrepareBatch(condition_key=None, inferer=inf, focus_times=[1.0, 0.5], focus_fraction=1.0)
    torch.manual_seed(0)
    _, _, _, kw = prep({"image": torch.zeros(64, 1, 4, 4)})
    assert set(kw["timesteps"].tolist()) == {1999, 999}
    assert torch.allclose(inf.gamma(torch.tensor([1999])), inf.schedule.gammas[-1:])  # gamma at t = 1
    mixed = ConditionalPrepareBatch(condition_key=None, inferer=inf, focus_times=[1.0], focus_fraction=0.5)
    _, _, _, kw = mixed({"image": torch.zeros(400, 1, 4, 4)})
    share = float((kw["timesteps"] == 1999).float().mean())
    assert 0.35 < share < 0.65 and int((kw["timesteps"] != 1999).sum()) > 100  # the rest uniform
    for bad in (dict(focus_times=[0.0], focus_fraction=0.5), dict(focus_fraction=0.5), dict(focus_fraction=1.5)):
        with pytest.raises(ValueError, match="focus"):
            ConditionalPrepareBatch(inferer=inf, **bad)


# ---------------------------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------------------------
def test_bad_arguments_raise_value_errors_naming_them():
    inf = ConditionalDiffusionInferer(DiscreteSchedule.linear_betas(10), network_input="gamma")
    net, z = GammaNet(), torch.randn(1, 1, 4, 4)
    known, mask = torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4)
    cases = [
        ("sampler", dict(sampler="euler")),
        ("num_steps", dict(num_steps=11)),
        ("num_steps", dict(num_steps=0)),
        ("guidance_scale", dict(guidance_scale=-1.0, class_labels=0)),
        ("guidance_scale", dict(guidance_scale=1.0)),
        ("mask", dict(mask=torch.ones(1, 1, 5, 4), known=known)),
        ("mask", dict(mask=torch.ones(1, 1, 4, 4) * 0.5, known=known)),
        ("known", dict(known=torch.zeros(1, 2, 4, 4), mask=mask)),
        ("mask", dict(known=known)),
        ("repaint", dict(repaint={"jump_length": 2})),
        ("repaint", dict(repaint={"jumps": 2}, mask=mask, known=known)),
        ("sampler", dict(sampler="dpm++", repaint={}, mask=mask, known=known)),
        ("condition", dict(condition=torch.zeros(1, 1, 3, 4))),
        ("class_labels", dict(class_labels=torch.tensor([0, 1]))),
        ("num_samples", dict(num_samples=0)),
        ("patch_size", dict(patch_size=(4,))),
        ("overlap", dict(patch_size=(4, 4), overlap=1.0)),
        ("clip", dict(clip=(1.0, -1.0))),
    ]
    for name, kwargs in cases:
        with pytest.raises(ValueError, match=name):
            inf.sample(z, net, verbose=False, **kwargs)
    with pytest.raises(ValueError, match="prediction_type"):
        ConditionalDiffusionInferer(prediction_type="sample")
    with pytest.raises(ValueError, match="network_input"):
        ConditionalDiffusionInferer(network_input="t")
    with pytest.raises(ValueError, match="scheduler"):
        ConditionalDiffusionInferer(scheduler="linear")
    with pytest.raises(ValueError, match="num_train_timesteps"):
        ConditionalDiffusionInferer(DDPMScheduler(10), num_train_timesteps=20)
    with pytest.raises(ValueError, match="timesteps"):
        inf(torch.zeros(1, 1, 4, 4), net, timesteps=torch.tensor([10]))
    with pytest.raises(ValueError, match="num_train_timesteps"):
        ConditionalPrepareBatch()
    with pytest.raises(ValueError, match="null_class"):
        ConditionalPrepareBatch(10, label_key="label", label_dropout=0.1)
