"""Reverse-time integrators written once against (schedule, eps-model).

The model is one function ``eps = eps_fn(z, gamma)`` with ``z`` (B, C, *spatial) and ``gamma`` (B,)
the log-SNR of that noise level (conditioning and guidance are closed over by the caller).  A sampler
walks a list of times; each pair of neighbours is one step:

- ``"ancestral"``: the VDM / DDPM posterior step ``z_s ~ q(z_s | z_t, x = x_hat)`` for any pair
  ``s < t``, so fewer steps than training stay exact (MONAI's ``DDPMScheduler.step`` always jumps to
  ``t - 1``, REFERENCE section 3).  Same distribution as DDIM with ``eta = 1``.
- ``"ddim"``: DDIM with variance ``eta^2 * sigma_s^2 * c``; ``eta = 0`` is deterministic.
- ``"dpm++"``: DPM-Solver++(2M), second-order multistep in log-SNR with data prediction.

When a time list goes *up* (``s > t``, RePaint's resampling jumps) the step re-noises with
``q(z_s | z_t)``.  Known-region constraints enter through ``constraint(z, t, gamma)`` after each step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from monai_medgen.schedules import log_alpha2, log_sigma2

__all__ = ["SAMPLERS", "SamplerOutput", "sample_loop", "predict_x0", "renoise", "repaint_times"]

SAMPLERS = ("ancestral", "ddim", "dpm++")
EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class SamplerOutput(NamedTuple):
    sample: torch.Tensor
    intermediates: list
    nfe: int


def _bc(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar / (B,) tensor over (B, C, *spatial)."""
    v = v.to(like.dtype)
    return v.reshape(-1, *([1] * (like.ndim - 1))) if v.ndim else v


def predict_x0(z: torch.Tensor, eps: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """x_hat = (z - sigma eps) / alpha."""
    return (z - torch.exp(0.5 * _bc(log_sigma2(gamma), z)) * eps) * torch.exp(-0.5 * _bc(log_alpha2(gamma), z))


def _eps_from_x0(z: torch.Tensor, x0: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    return (z - torch.exp(0.5 * _bc(log_alpha2(gamma), z)) * x0) * torch.exp(-0.5 * _bc(log_sigma2(gamma), z))


def renoise(z_t: torch.Tensor, g_t: torch.Tensor, g_s: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Sample q(z_s | z_t) for a noisier level s (g_s > g_t): forward diffusion between two levels."""
    ratio = torch.exp(0.5 * (log_alpha2(g_s) - log_alpha2(g_t)))
    var = torch.exp(log_sigma2(g_s)) * -torch.expm1(g_t - g_s)
    return _bc(ratio, z_t) * z_t + _bc(var.clamp_min(0).sqrt(), z_t) * noise


def _ancestral_step(z_t, eps, g_t, g_s, noise, large_variance: bool = False):
    """Ancestral step of VDM / DDPM from t to any cleaner s (REFERENCE section 1).

    ``c = -expm1(g_s - g_t)``; mean ``(alpha_s / alpha_t)(z_t - sigma_t c eps)``; variance ``sigma_s^2 c``
    (the true posterior, DDPM's beta_tilde) or ``sigma_t^2 c`` (``large_variance``: DDPM's sigma^2 = beta,
    Med-cDiff's choice).
    """
    c = -torch.expm1(g_s - g_t)
    ratio = torch.exp(0.5 * (log_alpha2(g_s) - log_alpha2(g_t)))
    sigma_t = torch.exp(0.5 * log_sigma2(g_t))
    z_s = _bc(ratio, z_t) * (z_t - _bc(sigma_t * c, z_t) * eps)
    if noise is not None:
        var = torch.exp(log_sigma2(g_t if large_variance else g_s)) * c
        z_s = z_s + _bc(var.sqrt(), z_t) * noise
    return z_s


def _ddim_step(z_t, eps, g_t, g_s, eta, noise):
    """DDIM step from t to a cleaner s with standard deviation ``eta * sqrt(sigma_s^2 c)``; eta = 1 has the
    ancestral step's distribution, eta = 0 is deterministic."""
    c = -torch.expm1(g_s - g_t)
    sigma_s2 = torch.exp(log_sigma2(g_s))
    var = (eta**2) * sigma_s2 * c
    alpha_s = torch.exp(0.5 * log_alpha2(g_s))
    x0 = predict_x0(z_t, eps, g_t)
    z_s = _bc(alpha_s, z_t) * x0 + _bc((sigma_s2 - var).clamp_min(0).sqrt(), z_t) * eps
    if noise is not None:
        z_s = z_s + _bc(var.sqrt(), z_t) * noise
    return z_s


def repaint_times(num_steps: int, jump_length: int = 10, jump_n_sample: int = 10) -> torch.Tensor:
    """RePaint's time list (Lugmayr et al. 2022): go down ``jump_length`` steps, back up, ``jump_n_sample``
    times per block.  Returns times in [0, 1] on a grid of ``num_steps``; not monotone."""
    if jump_length < 1 or jump_n_sample < 1:
        raise ValueError(f"jump_length and jump_n_sample must be >= 1, got {jump_length}, {jump_n_sample}.")
    jumps = {j: jump_n_sample - 1 for j in range(0, num_steps - jump_length, jump_length)}
    t, seq = num_steps, [num_steps]
    while t >= 1:
        t -= 1
        seq.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                seq.append(t)
    return torch.tensor(seq, dtype=torch.float32) / num_steps


def _want(i: int, every: int | set | None, last: int) -> bool:
    if every is None:
        return False
    if isinstance(every, set):
        return i in every
    return i % every == 0 or i == last


@torch.no_grad()
def sample_loop(
    eps_fn: EpsFn,
    z: torch.Tensor,
    schedule: Callable[[torch.Tensor], torch.Tensor],
    times: torch.Tensor,
    sampler: str = "ancestral",
    eta: float | None = None,
    generator: torch.Generator | None = None,
    constraint: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    clip_x0: tuple[float, float] | None = None,
    variance: str = "small",
    intermediate_steps: int | Iterable[int] | None = None,
    verbose: bool = True,
    desc: str = "sampling",
) -> SamplerOutput:
    """Integrate the reverse process along ``times`` and return the clean sample.

    Args:
        eps_fn: ``eps = eps_fn(z, gamma)``, z (B, C, *spatial), gamma (B,).
        z: starting latent at ``times[0]`` (usually pure noise at t = 1), (B, C, *spatial).
        schedule: gamma(t) for t (K,).
        times: (K + 1,) times, ``times[-1] == 0``; may go back up (RePaint) for the Gaussian samplers.
        sampler: one of ``"ancestral"``, ``"ddim"``, ``"dpm++"``.
        eta: DDIM noise scale (default 0 for ddim, 1 for ancestral).
        generator: torch generator for every noise draw (same seed, same sample).
        constraint: ``z = constraint(z, t, gamma)`` after every step (e.g. RePaint's known region).
        clip_x0: clamp the predicted clean image to this range at every step (None: no clamp).
        variance: ancestral step variance, ``"small"`` (posterior, ``sigma_s^2 c``) or ``"large"``
            (``sigma_t^2 c``, DDPM's sigma^2 = beta as in Med-cDiff).
        intermediate_steps: keep z every that many step indices (int) or at these indices.
        verbose: tqdm progress bar.

    Returns:
        ``SamplerOutput(sample, intermediates, nfe)``: the sample is the network's prediction of x at the
        last step (``z_0 / alpha_0`` when a ``constraint`` shapes the final latent).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}.")
    times = torch.as_tensor(times, dtype=torch.float32).reshape(-1)
    if times.numel() < 2 or float(times[-1]) != 0.0:
        raise ValueError("times must hold at least two values and end at 0.")
    if sampler == "dpm++" and bool((times[1:] > times[:-1]).any()):
        raise ValueError("sampler='dpm++' needs decreasing times; use 'ancestral' or 'ddim' for RePaint jumps.")
    if eta is None:
        eta = 1.0 if sampler == "ancestral" else 0.0
    if variance not in ("small", "large"):
        raise ValueError(f"variance must be 'small' or 'large', got {variance!r}.")
    if sampler == "ancestral" and eta != 1.0:
        raise ValueError(f"eta is fixed to 1 for sampler='ancestral', got {eta}; use sampler='ddim'.")
    if not isinstance(intermediate_steps, (int, type(None))):
        intermediate_steps = {int(i) for i in intermediate_steps}

    device = z.device
    gammas = schedule(times.to(device)).float().detach()
    batch = z.shape[0]
    n_steps = times.numel() - 1
    intermediates, nfe = [], 0
    x0_prev, h_prev, x_last = None, None, None

    def noise_like(x):
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    def model(z_t, g_t):
        nonlocal nfe
        nfe += 1
        eps = eps_fn(z_t, g_t.expand(batch))
        if clip_x0 is not None:
            x0 = predict_x0(z_t, eps, g_t).clamp(*clip_x0)
            eps = _eps_from_x0(z_t, x0, g_t)
        return eps

    for i in tqdm(range(n_steps), disable=not verbose, desc=desc, leave=False):
        g_t, g_s = gammas[i], gammas[i + 1]
        t_s = times[i + 1]
        if g_s > g_t:  # going back up: re-noise (RePaint), no network call
            z = renoise(z, g_t, g_s, noise_like(z))
            x0_prev, x_last = None, None
        elif sampler == "dpm++":
            eps = model(z, g_t)
            x0 = predict_x0(z, eps, g_t)
            x_last = x0
            h = 0.5 * (g_t - g_s)  # lambda_s - lambda_t, lambda = -gamma / 2
            ratio = torch.exp(0.5 * (log_sigma2(g_s) - log_sigma2(g_t)))
            alpha_s = torch.exp(0.5 * log_alpha2(g_s))
            lower_final = i == n_steps - 1 and n_steps < 15
            if x0_prev is None or lower_final:
                d = x0
            else:
                r = h_prev / h
                d = (1 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
            z = ratio * z - alpha_s * torch.expm1(-h) * d
            x0_prev, h_prev = x0, h
        else:
            eps = model(z, g_t)
            x_last = predict_x0(z, eps, g_t)
            final = float(t_s) == 0.0
            noise = None if (final or eta == 0) else noise_like(z)
            if sampler == "ancestral":
                z = _ancestral_step(z, eps, g_t, g_s, noise, large_variance=variance == "large")
            else:
                z = _ddim_step(z, eps, g_t, g_s, eta, noise)
        if constraint is not None:
            z = constraint(z, t_s, g_s)
        if _want(i + 1, intermediate_steps, n_steps):
            intermediates.append(z.detach().cpu())
    # the clean image: the last prediction of x when the chain ends on a network call (as MONAI's DDPM
    # does, alpha = 1 at step 0), z_0 / alpha_0 when it ends on a re-noising or constraint step
    x = x_last if x_last is not None and constraint is None else z * torch.exp(-0.5 * log_alpha2(gammas[-1]))
    return SamplerOutput(x, intermediates, nfe)
