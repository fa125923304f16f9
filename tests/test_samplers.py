import pytest
import torch

from monai_medgen.samplers import _ancestral_step, _ddim_step, repaint_times, sample_loop
from monai_medgen.schedules import FixedLinearSchedule, time_grid


def test_ancestral_mean_equals_ddim_eta_one_mean():
    z, eps = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    g_t, g_s = torch.tensor(1.0), torch.tensor(-3.0)
    assert torch.allclose(_ancestral_step(z, eps, g_t, g_s, None), _ddim_step(z, eps, g_t, g_s, 1.0, None), atol=1e-5)


def test_large_variance_adds_more_noise():
    z, eps, n = torch.zeros(1, 1, 64, 64), torch.zeros(1, 1, 64, 64), torch.randn(1, 1, 64, 64)
    g_t, g_s = torch.tensor(0.0), torch.tensor(-1.0)
    small = _ancestral_step(z, eps, g_t, g_s, n).std()
    large = _ancestral_step(z, eps, g_t, g_s, n, large_variance=True).std()
    assert large > small * 1.2


def test_repaint_times_go_up_and_end_at_zero():
    t = repaint_times(20, jump_length=5, jump_n_sample=2)
    assert t[0] == 1 and t[-1] == 0 and bool((t[1:] > t[:-1]).any())
    with pytest.raises(ValueError, match="jump_length"):
        repaint_times(20, jump_length=0)


def test_sample_loop_argument_errors():
    z = torch.randn(1, 1, 4, 4)

    def eps_fn(x, g):
        return x

    with pytest.raises(ValueError, match="sampler"):
        sample_loop(eps_fn, z, FixedLinearSchedule(), time_grid(2), sampler="heun")
    with pytest.raises(ValueError, match="times"):
        sample_loop(eps_fn, z, FixedLinearSchedule(), torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match="dpm"):
        sample_loop(eps_fn, z, FixedLinearSchedule(), repaint_times(20, 5, 2), sampler="dpm++")
    with pytest.raises(ValueError, match="variance"):
        sample_loop(eps_fn, z, FixedLinearSchedule(), time_grid(2), variance="huge")


def test_nfe_counts_network_calls_and_ddim_eta0_is_deterministic():
    def eps_fn(x, g):
        return 0.1 * x

    z = torch.randn(1, 1, 4, 4)
    a = sample_loop(
        eps_fn,
        z,
        FixedLinearSchedule(),
        time_grid(7),
        sampler="ddim",
        generator=torch.Generator().manual_seed(0),
        verbose=False,
    )
    b = sample_loop(
        eps_fn,
        z,
        FixedLinearSchedule(),
        time_grid(7),
        sampler="ddim",
        generator=torch.Generator().manual_seed(1),
        verbose=False,
    )
    assert a.nfe == 7 and torch.equal(a.sample, b.sample)
