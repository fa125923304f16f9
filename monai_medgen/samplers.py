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

Cost: one network evaluation per step and nothing else of note.  The step coefficients are computed once per
call from the schedule (Python floats), so a step does no host-device synchronisation, no ``.item()`` and no
small schedule tensors; only the network call and a few element-wise updates of ``z`` touch the device.

Speed options for the network call (:func:`accelerated`): ``channels_last`` memory format, bf16 / fp16
autocast, ``torch.compile``.  ``generator`` may be one generator per batch element, so inputs sampled together
in one batch get the same result as each sampled alone with its own generator.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from monai_medgen.schedules import log_alpha2, log_sigma2

__all__ = [
    "AUTOCAST_DTYPES",
    "SAMPLERS",
    "SamplerOutput",
    "accelerated",
    "batched_randn",
    "sample_loop",
    "predict_x0",
    "renoise",
    "repaint_times",
]

SAMPLERS = ("ancestral", "ddim", "dpm++")
EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Generators = torch.Generator | Sequence[torch.Generator] | None


class SamplerOutput(NamedTuple):
    sample: torch.Tensor
    intermediates: list
    nfe: int


def _bc(v, like: torch.Tensor):
    """Broadcast a scalar / (B,) tensor over (B, C, *spatial); Python numbers pass through."""
    if not torch.is_tensor(v):
        return v
    v = v.to(like.dtype)
    return v.reshape(-1, *([1] * (like.ndim - 1))) if v.ndim else v


# element-wise math on noise levels given either as tensors or as Python floats (the sampling loop's
# precomputed coefficients): one formula for both, no tensors made for scalars
def _la2(g):
    """log alpha^2 = log sigmoid(-g)."""
    if torch.is_tensor(g):
        return log_alpha2(g)
    return -(max(g, 0.0) + math.log1p(math.exp(-abs(g))))


def _ls2(g):
    """log sigma^2 = log sigmoid(g)."""
    if torch.is_tensor(g):
        return log_sigma2(g)
    return -(max(-g, 0.0) + math.log1p(math.exp(-abs(g))))


def _exp(x):
    return torch.exp(x) if torch.is_tensor(x) else math.exp(x)


def _expm1(x):
    return torch.expm1(x) if torch.is_tensor(x) else math.expm1(x)


def _sqrt0(x):
    """sqrt(max(x, 0))."""
    return x.clamp_min(0).sqrt() if torch.is_tensor(x) else math.sqrt(max(x, 0.0))


def predict_x0(z: torch.Tensor, eps: torch.Tensor, gamma) -> torch.Tensor:
    """x_hat = (z - sigma eps) / alpha; gamma a tensor (scalar or (B,)) or a number."""
    return (z - _bc(_exp(0.5 * _ls2(gamma)), z) * eps) * _bc(_exp(-0.5 * _la2(gamma)), z)


def _eps_from_x0(z: torch.Tensor, x0: torch.Tensor, gamma) -> torch.Tensor:
    return (z - _bc(_exp(0.5 * _la2(gamma)), z) * x0) * _bc(_exp(-0.5 * _ls2(gamma)), z)


def renoise(z_t: torch.Tensor, g_t, g_s, noise: torch.Tensor) -> torch.Tensor:
    """Sample q(z_s | z_t) for a noisier level s (g_s > g_t): forward diffusion between two levels."""
    ratio = _exp(0.5 * (_la2(g_s) - _la2(g_t)))
    var = _exp(_ls2(g_s)) * -_expm1(g_t - g_s)
    return _bc(ratio, z_t) * z_t + _bc(_sqrt0(var), z_t) * noise


def _ancestral_step(z_t, eps, g_t, g_s, noise, large_variance: bool = False):
    """Ancestral step of VDM / DDPM from t to any cleaner s (REFERENCE section 1).

    ``c = -expm1(g_s - g_t)``; mean ``(alpha_s / alpha_t)(z_t - sigma_t c eps)``; variance ``sigma_s^2 c``
    (the true posterior, DDPM's beta_tilde) or ``sigma_t^2 c`` (``large_variance``: DDPM's sigma^2 = beta,
    Med-cDiff's choice).  Noise levels as tensors or numbers.
    """
    c = -_expm1(g_s - g_t)
    ratio = _exp(0.5 * (_la2(g_s) - _la2(g_t)))
    sigma_t = _exp(0.5 * _ls2(g_t))
    z_s = _bc(ratio, z_t) * (z_t - _bc(sigma_t * c, z_t) * eps)
    if noise is not None:
        var = _exp(_ls2(g_t if large_variance else g_s)) * c
        z_s = z_s + _bc(_sqrt0(var), z_t) * noise
    return z_s


def _ddim_step(z_t, eps, g_t, g_s, eta, noise, x0=None):
    """DDIM step from t to a cleaner s with standard deviation ``eta * sqrt(sigma_s^2 c)``; eta = 1 has the
    ancestral step's distribution, eta = 0 is deterministic.  ``x0``: the prediction if already computed."""
    c = -_expm1(g_s - g_t)
    sigma_s2 = _exp(_ls2(g_s))
    var = (eta**2) * sigma_s2 * c
    alpha_s = _exp(0.5 * _la2(g_s))
    x0 = predict_x0(z_t, eps, g_t) if x0 is None else x0
    z_s = _bc(alpha_s, z_t) * x0 + _bc(_sqrt0(sigma_s2 - var), z_t) * eps
    if noise is not None:
        z_s = z_s + _bc(_sqrt0(var), z_t) * noise
    return z_s


def batched_randn(shape: Sequence[int], generator: Generators = None, device=None, dtype=None) -> torch.Tensor:
    """Standard normal draws of ``shape`` (B, ...); ``generator`` one generator, or one per batch element
    (cycled when B is a multiple of their count, element ``i`` uses ``generator[i % n]``), so each element's
    draws do not depend on the others."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    gens = list(generator)
    if not gens or shape[0] % len(gens):
        raise ValueError(
            f"generator must be one torch.Generator or a list whose length divides the batch {shape[0]}, got {len(gens)}."
        )
    one = (1, *shape[1:])
    return torch.cat(
        [torch.randn(one, generator=gens[i % len(gens)], device=device, dtype=dtype) for i in range(shape[0])]
    )


# ---------------------------------------------------------------------------------------------
# speed options for the network call
# ---------------------------------------------------------------------------------------------
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def _autocast_dtype(autocast) -> torch.dtype | None:
    if autocast is None or autocast is False:
        return None
    if autocast in (torch.bfloat16, torch.float16):
        return autocast
    if isinstance(autocast, str) and autocast.lower() in AUTOCAST_DTYPES:
        return AUTOCAST_DTYPES[autocast.lower()]
    raise ValueError(f"autocast must be None, 'bf16' or 'fp16' (or torch.bfloat16 / torch.float16), got {autocast!r}.")


def _to_channels_last(x):
    if torch.is_tensor(x) and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if torch.is_tensor(x) and x.ndim == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x


class _Accelerated:
    """``network(*args, **kwargs)`` with the speed options applied; the output comes back in the first
    tensor argument's dtype and the standard (contiguous) layout, so the sampler's arithmetic is unchanged."""

    def __init__(self, network, channels_last: bool, dtype: torch.dtype | None, compile_backend: str | None):
        self.network, self.channels_last, self.dtype = network, channels_last, dtype
        if channels_last and isinstance(network, torch.nn.Module):
            with torch.no_grad():  # weights to the same layout once (values unchanged); 2D and 3D convolutions
                for p in list(network.parameters()) + list(network.buffers()):
                    if p.ndim in (4, 5):
                        p.data = _to_channels_last(p.data)
        self.call = network if compile_backend is None else torch.compile(network, backend=compile_backend)

    def __getattr__(self, name):  # null_class, spatial_dims, ... of the wrapped network
        return getattr(self.__dict__["network"], name)

    def __call__(self, *args, **kwargs):
        like = next((a for a in args if torch.is_tensor(a) and a.is_floating_point()), None)
        if self.channels_last:
            args = tuple(_to_channels_last(a) for a in args)
            kwargs = {k: _to_channels_last(v) for k, v in kwargs.items()}
        ctx = contextlib.nullcontext()
        if self.dtype is not None and like is not None:
            ctx = torch.autocast(device_type=like.device.type, dtype=self.dtype)
        with ctx:
            out = self.call(*args, **kwargs)
        if torch.is_tensor(out) and like is not None:
            out = out.to(like.dtype)
            if self.channels_last:
                out = out.contiguous()
        return out


def accelerated(network: Callable, channels_last: bool = False, autocast=None, compile: bool | str = False) -> Callable:
    """The network call with optional speed options; the network itself when all are off (the default path).

    Args:
        network: any ``out = network(x, ...)`` callable, usually an ``nn.Module``.
        channels_last: run convolutions in the ``channels_last`` (2D) / ``channels_last_3d`` (3D) memory
            format: the network's 4D/5D weights are converted in place once (a layout change, same values) and
            every image argument per call.  Same results up to float rounding.
        autocast: ``"bf16"`` or ``"fp16"``: the network runs under ``torch.autocast`` of the input's device
            (bf16 is the one to use on CPUs); the output is cast back to the input's dtype, the sampler stays
            in float32.  Results differ at the precision of the format (about 1e-2 relative).
        compile: ``True`` (backend ``"inductor"``) or a backend name (``"aot_eager"``, ``"eager"``, ...):
            ``torch.compile`` the network (compilation happens at the first call and is cached by torch).
    """
    dtype = _autocast_dtype(autocast)
    if not isinstance(channels_last, bool):
        raise ValueError(f"channels_last must be True or False, got {channels_last!r}.")
    if compile is True:
        backend = "inductor"
    elif compile is False or compile is None:
        backend = None
    elif isinstance(compile, str) and compile:
        backend = compile
    else:
        raise ValueError(f"compile must be True, False or a torch.compile backend name, got {compile!r}.")
    if not channels_last and dtype is None and backend is None:
        return network
    return _Accelerated(network, channels_last, dtype, backend)


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


def _checked_options(
    sampler: str,
    times: torch.Tensor,
    eta: float | None,
    variance: str,
    intermediate_steps: int | Iterable[int] | None,
) -> tuple[torch.Tensor, float, int | set | None]:
    """:func:`sample_loop`'s options checked: ``times`` as a flat float32 tensor, ``eta`` with its default for the
    sampler, ``intermediate_steps`` as an int, a set of step indices or None; a ``ValueError`` for a bad one."""
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
    return times, eta, intermediate_steps


@torch.no_grad()
def sample_loop(
    eps_fn: EpsFn,
    z: torch.Tensor,
    schedule: Callable[[torch.Tensor], torch.Tensor],
    times: torch.Tensor,
    sampler: str = "ancestral",
    eta: float | None = None,
    generator: Generators = None,
    constraint: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    clip_x0: tuple[float, float] | None = None,
    variance: str = "small",
    intermediate_steps: int | Iterable[int] | None = None,
    verbose: bool = True,
    desc: str = "sampling",
    x0_hook: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> SamplerOutput:
    """Integrate the reverse process along ``times`` and return the clean sample.

    Args:
        eps_fn: ``eps = eps_fn(z, gamma)``, z (B, C, *spatial), gamma (B,).
        z: starting latent at ``times[0]`` (usually pure noise at t = 1), (B, C, *spatial).
        schedule: gamma(t) for t (K,).
        times: (K + 1,) times, ``times[-1] == 0``; may go back up (RePaint) for the Gaussian samplers.
        sampler: one of ``"ancestral"``, ``"ddim"``, ``"dpm++"``.
        eta: DDIM noise scale (default 0 for ddim, 1 for ancestral).
        generator: torch generator for every noise draw (same seed, same sample), or one generator per batch
            element (:func:`batched_randn`): then each element's result does not depend on the rest of the batch.
        constraint: ``z = constraint(z, t, gamma)`` after every step (e.g. RePaint's known region); ``t`` is a
            0-d CPU tensor (reading it never waits for the device), ``gamma`` a 0-d tensor on z's device.
        clip_x0: clamp the predicted clean image to this range at every step (None: no clamp).
        variance: ancestral step variance, ``"small"`` (posterior, ``sigma_s^2 c``) or ``"large"``
            (``sigma_t^2 c``, DDPM's sigma^2 = beta as in Med-cDiff).
        intermediate_steps: keep z every that many step indices (int) or at these indices.
        verbose: tqdm progress bar.
        x0_hook: ``x0 = x0_hook(x0)`` on every prediction of the clean image, after ``clip_x0`` (e.g. a
            data-consistency projection, DDNM style); the step then uses the noise consistent with it.

    Returns:
        ``SamplerOutput(sample, intermediates, nfe)``: the sample is the network's prediction of x at the
        last step (``z_0 / alpha_0`` when a ``constraint`` shapes the final latent).
    """
    times, eta, intermediate_steps = _checked_options(sampler, times, eta, variance, intermediate_steps)

    device = z.device
    gammas = schedule(times.to(device)).float().detach()  # (K + 1,) on the device, for the network's gamma input
    # every step coefficient from Python floats computed here once: no per-step host syncs or small tensors
    g = gammas.double().cpu().tolist()
    t_cpu = times.cpu()
    t_list = t_cpu.tolist()
    batch = z.shape[0]
    n_steps = times.numel() - 1
    intermediates, nfe = [], 0
    x0_prev, h_prev, x_last = None, None, None
    large = variance == "large"

    def model(z_t, i):
        """(eps, x0) of the network at step i (x0 clipped when asked, eps made consistent with it)."""
        nonlocal nfe
        nfe += 1
        eps = eps_fn(z_t, gammas[i].expand(batch))
        x0 = predict_x0(z_t, eps, g[i])
        if clip_x0 is not None:
            x0 = x0.clamp(*clip_x0)
        if x0_hook is not None:
            x0 = x0_hook(x0)
        if clip_x0 is not None or x0_hook is not None:
            eps = _eps_from_x0(z_t, x0, g[i])
        return eps, x0

    for i in tqdm(range(n_steps), disable=not verbose, desc=desc, leave=False):
        g_t, g_s = g[i], g[i + 1]
        if g_s > g_t:  # going back up: re-noise (RePaint), no network call
            z = renoise(z, g_t, g_s, batched_randn(z.shape, generator, z.device, z.dtype))
            x0_prev, x_last = None, None
        elif sampler == "dpm++":
            _, x0 = model(z, i)
            x_last = x0
            h = 0.5 * (g_t - g_s)  # lambda_s - lambda_t, lambda = -gamma / 2
            ratio = math.exp(0.5 * (_ls2(g_s) - _ls2(g_t)))
            alpha_s = math.exp(0.5 * _la2(g_s))
            lower_final = i == n_steps - 1 and n_steps < 15
            if x0_prev is None or lower_final:
                d = x0
            else:
                r = h_prev / h
                d = (1 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
            z = ratio * z - (alpha_s * math.expm1(-h)) * d
            x0_prev, h_prev = x0, h
        else:
            eps, x_last = model(z, i)
            final = t_list[i + 1] == 0.0
            noise = None if (final or eta == 0) else batched_randn(z.shape, generator, z.device, z.dtype)
            if sampler == "ancestral":
                z = _ancestral_step(z, eps, g_t, g_s, noise, large_variance=large)
            else:
                z = _ddim_step(z, eps, g_t, g_s, eta, noise, x0=x_last)
        if constraint is not None:
            z = constraint(z, t_cpu[i + 1], gammas[i + 1])
        if _want(i + 1, intermediate_steps, n_steps):
            intermediates.append(z.detach().cpu())
    # the clean image: the last prediction of x when the chain ends on a network call (as MONAI's DDPM
    # does, alpha = 1 at step 0), z_0 / alpha_0 when it ends on a re-noising or constraint step
    x = x_last if x_last is not None and constraint is None else z * math.exp(-0.5 * _la2(g[-1]))
    return SamplerOutput(x, intermediates, nfe)
