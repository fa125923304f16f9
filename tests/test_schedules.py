import math

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from monai_medgen.schedules import (
    DiscreteSchedule,
    FixedLinearSchedule,
    LearnedLinearSchedule,
    MonotoneNetSchedule,
    alpha_sigma,
    gamma_and_slope,
    time_grid,
)

T = torch.linspace(0, 1, 1001)


@pytest.mark.parametrize(
    "schedule",
    [
        FixedLinearSchedule(),
        LearnedLinearSchedule(),
        MonotoneNetSchedule(n_features=64),
        DiscreteSchedule.linear_betas(1000),
    ],
    ids=["fixed", "learned_linear", "monotone_net", "discrete"],
)
def test_endpoints_and_monotone(schedule):
    g = schedule(T).detach()
    assert torch.all(g[1:] >= g[:-1]), "gamma must be non-decreasing in t"
    assert g[-1] > g[0]
    g0, g1 = schedule.endpoints()
    assert torch.allclose(g0.detach().float(), g[0], atol=1e-4) and torch.allclose(
        g1.detach().float(), g[-1], atol=1e-4
    )


def test_fixed_and_learned_linear_start_at_reference_values():
    for s in (FixedLinearSchedule(), LearnedLinearSchedule(), MonotoneNetSchedule(n_features=32)):
        g0, g1 = s.endpoints()
        assert float(g0) == pytest.approx(-13.3, abs=1e-4) and float(g1) == pytest.approx(5.0, abs=1e-4)


def test_monotone_net_stays_monotone_after_random_weights():
    s = MonotoneNetSchedule(n_features=128)
    with torch.no_grad():
        for p in s.parameters():
            p.normal_(0, 3.0)  # negative weights too: abs() must keep it monotone
    g = s(T).detach()
    assert torch.all(g[1:] - g[:-1] >= -1e-5)


def test_autograd_slope_equals_analytic_for_linear():
    s = LearnedLinearSchedule(-10.0, 6.0)
    t = torch.rand(16)
    _, slope = gamma_and_slope(s, t)
    assert torch.allclose(slope, torch.full_like(t, 16.0))
    # slope carries gradient to the learned parameters
    slope.sum().backward()
    assert s.w.grad is not None and float(s.w.grad) == pytest.approx(16.0)


def test_alpha_sigma_variance_preserving_and_finite_at_extremes():
    g = torch.tensor([-60.0, -13.3, 0.0, 5.0, 60.0])
    a, s = alpha_sigma(g)
    assert torch.all(torch.isfinite(a)) and torch.all(torch.isfinite(s))
    assert torch.allclose(a**2 + s**2, torch.ones_like(g), atol=1e-6)
    assert torch.allclose(torch.log(s**2 / a**2)[1:4], g[1:4], atol=1e-4)


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
def test_discrete_schedule_reads_monai_table(cls):
    sched = cls(num_train_timesteps=1000, schedule="linear_beta")
    ds = DiscreteSchedule.from_scheduler(sched)
    k = torch.tensor([1, 10, 500, 1000])
    abar = sched.alphas_cumprod[k - 1].double()
    expected = torch.log((1 - abar) / abar).float()
    assert torch.allclose(ds(k / 1000.0), expected, atol=1e-4)
    assert torch.equal(ds.timestep(k / 1000.0), k - 1)


def test_discrete_schedule_rejects_bad_tables():
    with pytest.raises(ValueError, match="alphas_cumprod"):
        DiscreteSchedule(torch.tensor([0.5, 0.7]))
    with pytest.raises(ValueError, match="alphas_cumprod"):
        DiscreteSchedule.from_scheduler(object())


def test_time_grid_lands_on_training_steps():
    g = time_grid(50, num_train_steps=1000)
    assert g[0] == 1 and g[-1] == 0 and len(g) == 51
    assert torch.allclose(g * 1000, (g * 1000).round())
    with pytest.raises(ValueError, match="num_steps"):
        time_grid(0)
    with pytest.raises(ValueError, match="num_steps"):
        time_grid(2000, num_train_steps=1000)


def test_gamma_limits_are_log_snr():
    s = FixedLinearSchedule()
    a, sig = alpha_sigma(s(torch.tensor([0.0, 1.0])))
    assert math.isclose(float(sig[0] ** 2), 1 / (1 + math.exp(13.3)), rel_tol=1e-4)
    assert math.isclose(float(a[1] ** 2), 1 / (1 + math.exp(5.0)), rel_tol=1e-4)


def test_timestep_adapter_maps_gamma_to_monai_index():
    from monai_medgen.networks import TimestepAdapter

    seen = []

    class Rec(torch.nn.Module):
        def forward(self, x, timesteps):
            seen.append(timesteps.clone())
            return x

    ds = DiscreteSchedule.linear_betas(100)
    k = torch.tensor([1, 2, 50, 100])
    TimestepAdapter(Rec(), ds)(torch.zeros(4, 1, 2, 2), ds(k / 100.0))
    assert torch.equal(seen[0], k - 1)
    with pytest.raises(ValueError, match="schedule"):
        TimestepAdapter(Rec(), FixedLinearSchedule())
