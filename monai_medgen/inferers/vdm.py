"""Variational Diffusion Model inferer (Kingma, Salimans, Poole, Ho 2021) as a MONAI ``Inferer``.

MONAI has no continuous-time diffusion, no learned schedule and no exact bits/dim
(REFERENCE section 3); this module adds them on top of the shared schedule and sampler core.
Every loss term is a named function of tensors; the inferer only wires them.

Data convention: inputs are intensities mapped linearly to [-1, 1]; they are read as the nearest of
256 levels ``k = round((x + 1) / 2 * 255)`` (exactly what an 8-bit PNG of ``(x + 1) / 2`` stores) and
modelled at the bin centres ``2 (k + 1/2) / 256 - 1``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from monai.inferers import Inferer

from monai_medgen.engines import unwrap_network
from monai_medgen.inferers.options import SamplingOptions, sampling_options
from monai_medgen.samplers import Generators, accelerated, sample_loop
from monai_medgen.schedules import FixedLinearSchedule, Schedule, gamma_and_slope, log_alpha2, log_sigma2, time_grid

__all__ = [
    "VDMInferer",
    "VDMOutput",
    "to_levels",
    "from_levels",
    "antithetic_times",
    "diffusion_loss_continuous",
    "diffusion_loss_discrete",
    "prior_kl",
    "reconstruction_nll",
    "edge_loss",
    "guided_eps_fn",
]


# ---------------------------------------------------------------------------------------------
# data <-> 8-bit levels
# ---------------------------------------------------------------------------------------------
def to_levels(x: torch.Tensor, vocab_size: int = 256) -> torch.Tensor:
    """Integer level k in [0, vocab_size - 1] of intensities x in [-1, 1] (round half to even as PNG writers do)."""
    return torch.round((x.clamp(-1, 1) + 1) * 0.5 * (vocab_size - 1)).long()


def from_levels(k: torch.Tensor, vocab_size: int = 256, centres: bool = True) -> torch.Tensor:
    """Levels back to [-1, 1]: bin centres ``2(k + 1/2)/V - 1`` (model space) or ``2k/(V-1) - 1`` (data space)."""
    k = k.float()
    return 2 * (k + 0.5) / vocab_size - 1 if centres else 2 * k / (vocab_size - 1) - 1


def antithetic_times(batch: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Low-discrepancy times ``t_i = (u0 + i / B) mod 1`` with one uniform u0: they spread over [0, 1)."""
    u0 = torch.rand((), generator=generator, device=device)
    return torch.remainder(u0 + torch.arange(batch, device=device) / batch, 1.0)


def _sum_dims(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(1)


# ---------------------------------------------------------------------------------------------
# loss terms, nats per example
# ---------------------------------------------------------------------------------------------
def diffusion_loss_continuous(eps: torch.Tensor, eps_hat: torch.Tensor, gamma_slope: torch.Tensor) -> torch.Tensor:
    """Continuous-time diffusion term ``0.5 gamma'(t) ||eps - eps_hat||^2`` (B,)."""
    diff = eps - eps_hat
    return 0.5 * gamma_slope * _sum_dims(diff * diff)


def diffusion_loss_discrete(
    eps: torch.Tensor, eps_hat: torch.Tensor, gamma_t: torch.Tensor, gamma_s: torch.Tensor, num_steps: int
) -> torch.Tensor:
    """T-step diffusion term ``0.5 T expm1(gamma_t - gamma_s) ||eps - eps_hat||^2`` (B,), s = t - 1/T."""
    diff = eps - eps_hat
    return 0.5 * num_steps * torch.expm1(gamma_t - gamma_s) * _sum_dims(diff * diff)


def prior_kl(x: torch.Tensor, gamma_1: torch.Tensor) -> torch.Tensor:
    """``KL(q(z_1 | x) || N(0, I))`` summed over dims (B,)."""
    sigma2 = torch.exp(log_sigma2(gamma_1))
    alpha2 = torch.exp(log_alpha2(gamma_1))
    kl = 0.5 * (alpha2 * (x * x) + sigma2 - log_sigma2(gamma_1) - 1.0)
    return _sum_dims(kl)


def reconstruction_nll(
    x_levels: torch.Tensor, gamma_0: torch.Tensor, noise: torch.Tensor, vocab_size: int = 256
) -> torch.Tensor:
    """``-log p(x | z_0)`` for data on ``vocab_size`` levels, one-sample estimate (B,).

    ``z_0 / alpha_0 = x + exp(gamma_0 / 2) eps``; logits over levels ``v_k`` are
    ``-0.5 ((z0 - v_k) exp(-gamma_0 / 2))^2``.  Only levels within ``10 sigma_0`` of ``z0`` can carry weight
    (the others contribute below ``exp(-50)`` of the normaliser), so the softmax runs over that window of levels
    around the level nearest to ``z0``: the same value, without a 256-wide tensor per voxel when ``sigma_0`` is
    small.

    The levels are evenly spaced, so ``(z0 - v_k) / sigma = eps + (k_x - k) spacing / sigma`` for the true level
    ``k_x``: the window's logits come from one broadcast of small tensors, and the true level's logit is
    ``-eps^2 / 2`` (inside the window or, when farther than 10 sigma, negligible in it), so
    ``-log p = logsumexp(logits) + eps^2 / 2`` (no softmax over the window is stored).
    """
    sigma = torch.exp(0.5 * gamma_0)
    spacing = 2.0 / vocab_size
    half = int(math.ceil(10.0 * float(sigma.detach()) / spacing)) + 1
    width = min(2 * half + 1, vocab_size)
    step = spacing / sigma  # one level in units of sigma
    # nearest level to z0 = x + sigma eps, in level units: k_x + eps / step
    nearest = torch.round(x_levels.to(noise.dtype) + noise.detach() / step.detach()).long()
    start = (nearest - half).clamp(0, vocab_size - width)  # first level of each voxel's window
    d = noise + (x_levels - start).to(noise.dtype) * step  # (z0 - v_start) / sigma
    ks = torch.arange(width, device=noise.device, dtype=noise.dtype).reshape(-1, *([1] * d.ndim))
    u = d.unsqueeze(0) - ks * step  # (z0 - v_k) / sigma, window first: the reduction runs over whole tensors
    # logits below -80 (weights under 2e-35; the nearest level's is at least exp(-eps^2 / 2)) are floored there, which
    # changes nothing at float precision and keeps exp() out of the slow denormal range
    logits = (-0.5 * (u * u)).clamp_min(-80.0)
    nll = torch.logsumexp(logits, 0) + 0.5 * (noise * noise)
    return _sum_dims(nll)


def _spatial_gradients(x: torch.Tensor) -> list[torch.Tensor]:
    return [torch.diff(x, dim=d) for d in range(2, x.ndim)]


def edge_loss(x: torch.Tensor, x_hat: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Gradient-difference term of the Medical VDM seed: ``weight * mean |grad x - grad x_hat|`` (B,).

    Args:
        weight: (B,) per-example weight (``alpha_t^2``, so very noisy times do not dominate).
    """
    diffs = [(gx - gy).abs().flatten(1).mean(1) for gx, gy in zip(_spatial_gradients(x), _spatial_gradients(x_hat))]
    return weight * torch.stack(diffs, 0).mean(0)


def _bc(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


# ---------------------------------------------------------------------------------------------
# result
# ---------------------------------------------------------------------------------------------
class VDMOutput(dict):
    """Result of one VDM training call: a dict with attribute access.

    ``loss`` is the scalar to backpropagate; the others are per example (B,) in bits/dim:
    ``diffusion``, ``prior``, ``reconstruction`` and their sum ``bpd``; ``edge`` is the optional
    gradient-difference term (None when off; not part of the bound).  Being a plain mapping, it passes
    through MONAI's engines (``decollate_batch``) unchanged in meaning.
    """

    def __getattr__(self, key: str):
        try:
            return self[key]
        except KeyError as e:
            raise AttributeError(key) from e


def guided_eps_fn(
    network: Callable, class_labels: torch.Tensor | None, guidance_scale: float, null_class: int | None, **kwargs
) -> Callable:
    """``eps(z, gamma)`` with classifier-free guidance ``(1 + w) eps(c) - w eps(null)``.

    With ``guidance_scale == 0`` or no labels, one network call per step.  The conditional and
    unconditional predictions are evaluated in one batch.
    """
    if class_labels is None or guidance_scale == 0.0:

        def plain(z, g):
            if class_labels is None:
                return network(z, g, **kwargs)
            return network(z, g, class_labels=class_labels, **kwargs)

        return plain
    if null_class is None:
        raise ValueError("guidance_scale > 0 needs a class-conditional network with a null class (num_classes set).")

    # the doubled labels and extra inputs are made once, not at every step
    labels = torch.cat([class_labels, torch.full_like(class_labels, null_class)])
    extra = {k: torch.cat([v, v]) if torch.is_tensor(v) else v for k, v in kwargs.items()}

    def eps_fn(z, g):
        b = z.shape[0]
        eps = network(torch.cat([z, z]), torch.cat([g, g]), class_labels=labels, **extra)
        eps_c, eps_u = eps[:b], eps[b:]
        return (1 + guidance_scale) * eps_c - guidance_scale * eps_u

    return eps_fn


# ---------------------------------------------------------------------------------------------
# inferer
# ---------------------------------------------------------------------------------------------
class VDMInferer(Inferer):
    """Train, evaluate (exact bits/dim) and sample a Variational Diffusion Model.

    Args:
        schedule: a :mod:`monai_medgen.schedules` module (default ``FixedLinearSchedule()``); learned
            schedules have parameters that must be given to the optimiser (``inferer.parameters()``).
        num_discrete_steps: 0 for the continuous-time diffusion term, T > 0 for the T-step one.
        antithetic: draw the batch's times as ``(u0 + i/B) mod 1``.
        vocab_size: number of intensity levels of the data (256 for 8-bit).
        edge_weight: weight of the gradient-difference (edge) term of the Medical VDM seed; 0 = off.

    ``network`` is any module ``eps = network(z, gamma, class_labels=...)`` (e.g. :class:`ScoreUNet`).
    """

    def __init__(
        self,
        schedule: Schedule | None = None,
        num_discrete_steps: int = 0,
        antithetic: bool = True,
        vocab_size: int = 256,
        edge_weight: float = 0.0,
    ):
        super().__init__()
        self.schedule = FixedLinearSchedule() if schedule is None else schedule
        if num_discrete_steps < 0:
            raise ValueError(f"num_discrete_steps must be >= 0, got {num_discrete_steps}.")
        if edge_weight < 0:
            raise ValueError(f"edge_weight must be >= 0, got {edge_weight}.")
        self.num_discrete_steps = int(num_discrete_steps)
        self.antithetic = antithetic
        self.vocab_size = int(vocab_size)
        self.edge_weight = float(edge_weight)

    def parameters(self):
        """Learnable parameters of the schedule (empty for a fixed one)."""
        return self.schedule.parameters()

    def _call_network(self, network, z, gamma, class_labels):
        return network(z, gamma) if class_labels is None else network(z, gamma, class_labels=class_labels)

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        network: Callable,
        class_labels: torch.Tensor | None = None,
        times: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        num_discrete_steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> VDMOutput:
        """One Monte-Carlo estimate of the negative VLB.

        Args:
            inputs: (B, C, *spatial) intensities in [-1, 1].
            network: ``eps = network(z, gamma[, class_labels=...])``.
            class_labels: (B,) long, optional.
            times: (B,) times in [0, 1] (default: antithetic or uniform draws).
            noise: (B, C, *spatial) eps (default: standard normal).
            num_discrete_steps: override of the inferer's T (0 = continuous).
        """
        if inputs.ndim < 3:
            raise ValueError(f"inputs must have shape (B, C, *spatial), got {tuple(inputs.shape)}.")
        x_levels = to_levels(inputs, self.vocab_size)
        x = from_levels(x_levels, self.vocab_size)
        b, device = x.shape[0], x.device
        dims = x[0].numel()
        if times is None:
            times = (
                antithetic_times(b, device, generator)
                if self.antithetic
                else torch.rand(b, device=device, generator=generator)
            )
        times = times.to(device).reshape(b)
        if noise is None:
            noise = torch.randn(x.shape, device=device, generator=generator, dtype=x.dtype)
        steps = self.num_discrete_steps if num_discrete_steps is None else int(num_discrete_steps)

        if steps > 0:
            t = torch.ceil(times * steps).clamp_min(1) / steps
            gamma_t = self.schedule(t)
            gamma_s = self.schedule(t - 1.0 / steps)
        else:
            gamma_t, slope = gamma_and_slope(self.schedule, times)
        gamma_t = gamma_t.to(x.dtype)
        alpha_t = torch.exp(0.5 * log_alpha2(gamma_t))
        sigma_t = torch.exp(0.5 * log_sigma2(gamma_t))
        z_t = _bc(alpha_t, x) * x + _bc(sigma_t, x) * noise
        eps_hat = self._call_network(network, z_t, gamma_t, class_labels)
        if steps > 0:
            l_diff = diffusion_loss_discrete(noise, eps_hat, gamma_t, gamma_s, steps)
        else:
            l_diff = diffusion_loss_continuous(noise, eps_hat, slope)

        gamma_0, gamma_1 = self.schedule.endpoints()
        gamma_0, gamma_1 = gamma_0.to(device), gamma_1.to(device)
        l_prior = prior_kl(x, gamma_1)
        noise_0 = torch.randn(x.shape, device=device, generator=generator, dtype=x.dtype)
        l_recon = reconstruction_nll(x_levels, gamma_0, noise_0, self.vocab_size)

        to_bpd = 1.0 / (dims * math.log(2.0))
        diffusion, prior, recon = l_diff * to_bpd, l_prior * to_bpd, l_recon * to_bpd
        bpd = diffusion + prior + recon
        loss = bpd.mean()
        edge = None
        if self.edge_weight > 0:
            x_hat = (z_t - _bc(sigma_t, x) * eps_hat) / _bc(alpha_t, x)
            edge = edge_loss(x, x_hat, alpha_t**2)
            loss = loss + self.edge_weight * edge.mean()
        return VDMOutput(loss=loss, bpd=bpd, diffusion=diffusion, prior=prior, reconstruction=recon, edge=edge)

    @torch.no_grad()
    def bits_per_dim(
        self,
        inputs: torch.Tensor,
        network: Callable,
        class_labels: torch.Tensor | None = None,
        num_time_samples: int = 64,
        num_discrete_steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Full variational bound on held-out images, in bits/dim per example.

        The diffusion term is averaged over ``num_time_samples`` stratified times per image (an unbiased
        estimate whose variance shrinks with the count); prior and reconstruction are added once each
        estimate.  Returns a dict of (B,) tensors: ``bpd``, ``diffusion``, ``prior``, ``reconstruction``.
        """
        if num_time_samples < 1:
            raise ValueError(f"num_time_samples must be >= 1, got {num_time_samples}.")
        b = inputs.shape[0]
        totals = {k: torch.zeros(b, device=inputs.device) for k in ("bpd", "diffusion", "prior", "reconstruction")}
        u0 = torch.rand(b, device=inputs.device, generator=generator)
        for i in range(num_time_samples):
            times = torch.remainder(u0 + i / num_time_samples, 1.0)
            out = self(
                inputs, network, class_labels, times=times, num_discrete_steps=num_discrete_steps, generator=generator
            )
            for k in totals:
                totals[k] += getattr(out, k).float() / num_time_samples
        return totals

    @torch.no_grad()
    def gamma_min_scan(
        self,
        inputs: torch.Tensor,
        network: Callable,
        gamma_mins: Sequence[float],
        class_labels: torch.Tensor | None = None,
        step: float = 0.05,
        batch_size: int = 16,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """How the bound on ``inputs`` changes if the schedule's lower endpoint gamma_0 were each of ``gamma_mins``
        (gamma_1 kept), in bits/dim: a way to choose gamma_0 on training images after training.

        In continuous time the bound depends on the schedule only through its endpoints (Kingma et al. 2021,
        section 5.1), so moving gamma_0 to g changes two terms: the reconstruction term, and the diffusion integral
        over the stretch between g and gamma_0. Per image, in nats,
        ``delta(g) = recon(g) - recon(gamma_0) + 0.5 * integral_g^gamma_0 E||eps - eps_hat(z_gamma, gamma)||^2 dgamma``
        (the integral counts negative when g is above gamma_0). It is evaluated on a grid of spacing ``step`` holding
        every candidate and gamma_0, with the trapezoid rule and the same noise at every grid point, so the
        differences between candidates carry little Monte-Carlo noise.

        Returns ``{"gamma_min": (K,), "delta_bpd": (K,), "reconstruction": (K,)}``: candidates in increasing order,
        the mean change of the bound and the mean reconstruction term at each, bits/dim.
        """
        return self._endpoint_scan(inputs, network, gamma_mins, "min", class_labels, step, batch_size, generator)

    def gamma_max_scan(
        self, inputs: torch.Tensor, network: Callable, gamma_maxs: Sequence[float], **options
    ) -> dict[str, torch.Tensor]:
        """The same as :meth:`gamma_min_scan` (the same ``class_labels``, ``step``, ``batch_size`` and ``generator``
        options) for the upper endpoint gamma_1 (gamma_0 kept): moving it to g changes
        the prior term and the diffusion integral between gamma_1 and g, per image in nats
        ``delta(g) = prior(g) - prior(gamma_1) + 0.5 * integral_gamma_1^g E||eps - eps_hat(z_gamma, gamma)||^2 dgamma``.
        A network that predicts the image's mean from almost pure noise gains a little from a higher gamma_1.

        Returns ``{"gamma_max": (K,), "delta_bpd": (K,), "prior": (K,)}`` in bits/dim, candidates in increasing order.
        """
        return self._endpoint_scan(inputs, network, gamma_maxs, "max", **options)

    @torch.no_grad()
    def _endpoint_scan(
        self, inputs, network, candidates, which, class_labels=None, step=0.05, batch_size=16, generator=None
    ):
        """The shared core of :meth:`gamma_min_scan` (``which="min"``) and :meth:`gamma_max_scan` (``"max"``)."""
        name = f"gamma_{which}s"
        if step <= 0:
            raise ValueError(f"step must be > 0, got {step}.")
        candidates = sorted({float(g) for g in candidates})
        if not candidates:
            raise ValueError(f"{name} must hold at least one value.")
        gamma_0, gamma_1 = (float(g) for g in self.schedule.endpoints())
        if which == "min" and candidates[-1] >= gamma_1:
            raise ValueError(f"{name} must lie below gamma_1 = {gamma_1:.3f}, got {candidates[-1]}.")
        if which == "max" and candidates[0] <= gamma_0:
            raise ValueError(f"{name} must lie above gamma_0 = {gamma_0:.3f}, got {candidates[0]}.")
        kept = gamma_0 if which == "min" else gamma_1
        lo, hi = min(candidates[0], kept), max(candidates[-1], kept)
        fine = torch.linspace(lo, hi, max(2, int(math.ceil((hi - lo) / step)) + 1)).tolist()
        grid = sorted(set(fine) | set(candidates) | {kept})
        device = inputs.device
        x_levels = to_levels(inputs, self.vocab_size)
        x = from_levels(x_levels, self.vocab_size)
        noise = torch.randn(x.shape, device=device, generator=generator, dtype=x.dtype)
        noise_0 = torch.randn(x.shape, device=device, generator=generator, dtype=x.dtype)
        mse, end_term = [], []  # per grid point: (B,) sums over dims, nats
        for g in grid:
            gamma = torch.tensor(g, device=device, dtype=x.dtype)
            alpha, sigma = torch.exp(0.5 * log_alpha2(gamma)), torch.exp(0.5 * log_sigma2(gamma))
            sq = []
            for i in range(0, x.shape[0], batch_size):
                xb, nb = x[i : i + batch_size], noise[i : i + batch_size]
                labels = None if class_labels is None else class_labels[i : i + batch_size]
                eps_hat = self._call_network(network, alpha * xb + sigma * nb, gamma.expand(xb.shape[0]), labels)
                sq.append(_sum_dims((nb - eps_hat) ** 2))
            mse.append(torch.cat(sq).float())
            if which == "min":
                end_term.append(reconstruction_nll(x_levels, gamma, noise_0, self.vocab_size).float())
            else:
                end_term.append(prior_kl(x, gamma).float())
        mse, end_term = torch.stack(mse), torch.stack(end_term)  # (G, B)
        widths = torch.diff(torch.tensor(grid, device=device, dtype=mse.dtype)).unsqueeze(1)
        integral = torch.cat([torch.zeros_like(mse[:1]), torch.cumsum(0.25 * widths * (mse[1:] + mse[:-1]), 0)])
        ref = grid.index(kept)
        to_bpd = 1.0 / (x[0].numel() * math.log(2.0))
        rows = [grid.index(g) for g in candidates]
        sign = 1.0 if which == "min" else -1.0  # the integral between the candidate and the kept endpoint
        delta = (end_term[rows] - end_term[ref] + sign * (integral[ref] - integral[rows])) * to_bpd
        return {
            f"gamma_{which}": torch.tensor(candidates, dtype=torch.float64),
            "delta_bpd": delta.mean(1).cpu(),
            ("reconstruction" if which == "min" else "prior"): (end_term[rows] * to_bpd).mean(1).cpu(),
        }

    def noise_shape(self, image_shape: Sequence[int]) -> tuple[int, ...]:
        """The shape of ``sample``'s ``input_noise`` for images of ``image_shape`` (B, C, *spatial): the same."""
        return tuple(int(s) for s in image_shape)

    @torch.no_grad()
    def sample(
        self,
        input_noise: torch.Tensor,
        network: Callable,
        class_labels: torch.Tensor | int | None = None,
        generator: Generators = None,
        quantize: bool = True,
        options: SamplingOptions | None = None,
        **option_fields,
    ):
        """Draw samples from ``input_noise`` at t = 1 down to t = 0 (MONAI's ``sample(input_noise, network)``).

        Args:
            input_noise: (B, C, *spatial) standard normal noise; fixes shape, device and dtype of the samples
                (``torch.randn(shape, generator=g)`` with the generator passed here gives the same samples as a
                per-sample draw, see :func:`monai_medgen.samplers.batched_randn`).
            network: the score network.
            class_labels: (B,) long, or one label for all; with ``guidance_scale = w > 0`` classifier-free guidance
                ``(1 + w) eps(c) - w eps(null)`` is used (network needs a null class).
            generator: for the sampler's noise after the start: same seed, same sample; or one generator per
                sample (a list of B), so each sample is the same whatever else is in the batch.
            quantize: snap the output onto the 256 data levels (in [-1, 1]).
            options: :class:`~monai_medgen.inferers.SamplingOptions`; ``num_steps`` is any number of steps (the
                chain is exact for any count), default 1000.
            option_fields: the same options as keywords (``sampler="dpm++", num_steps=10``), over ``options``.

        Returns:
            samples (B, C, *spatial) in [-1, 1], or ``(samples, intermediates)`` with ``save_intermediates``.
        """
        if not torch.is_tensor(input_noise) or input_noise.ndim < 3:
            raise ValueError(
                f"input_noise must be a tensor of shape (B, C, *spatial), got {type(input_noise).__name__}."
            )
        o = sampling_options(SamplingOptions, options, option_fields)
        o.check_guidance(class_labels)
        batch, device = input_noise.shape[0], input_noise.device
        if class_labels is not None:
            class_labels = torch.as_tensor(class_labels, device=device).long().reshape(-1)
            if class_labels.numel() == 1:
                class_labels = class_labels.expand(batch)
            if class_labels.numel() != batch:
                raise ValueError(
                    f"class_labels must have {batch} entries (one per sample), got {class_labels.numel()}."
                )
        call = accelerated(network, **o.speed)
        eps_fn = guided_eps_fn(
            call, class_labels, o.guidance_scale, getattr(unwrap_network(network), "null_class", None)
        )
        out = sample_loop(
            eps_fn,
            input_noise,
            self.schedule,
            time_grid(1000 if o.num_steps is None else o.num_steps, device=device),
            sampler=o.sampler,
            eta=o.eta,
            generator=generator,
            intermediate_steps=o.frames_every,
            verbose=o.verbose,
            desc=f"VDM {o.sampler}",
        )
        x = out.sample.clamp(-1, 1)
        if quantize:
            x = from_levels(to_levels(x, self.vocab_size), self.vocab_size, centres=False)
        return (x, out.intermediates) if o.save_intermediates else x
