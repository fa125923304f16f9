"""Conditional DDPM inferer: restoration (image condition), class conditioning, inpainting, 3D patches.

The Med-cDiff recipe (REFERENCE section 2): an eps- (or v-) predicting U-Net that sees the noisy image
with the degraded image concatenated as extra channels, optionally a class label with classifier-free
guidance; T = 2000 linear betas 1e-4 .. 0.02.  MONAI's ``DiffusionInferer`` cannot pass ``class_labels``,
its ``DDPMScheduler.step`` always goes to ``t - 1`` (wrong with fewer steps than training), and it has
no RePaint, no DPM-Solver and no patch-wise sampling (REFERENCE section 3).  This module adds them as a
thin layer on the shared core: every noise level is read from one :class:`DiscreteSchedule` and every
sampler step is :func:`monai_medgen.samplers.sample_loop`.

Two kinds of network are supported (``network_input``):

- ``"gamma"``: ``network(z, gamma, class_labels=..., condition=...)`` with the log-SNR gamma (B,), e.g.
  :class:`monai_medgen.networks.ScoreUNet` built with ``cond_channels``;
- ``"timesteps"``: MONAI's ``DiffusionModelUNet`` convention ``network(cat([z, condition], 1), timesteps,
  class_labels=...)`` with integer MONAI timesteps (B,) in ``[0, T - 1]``; ``in_channels`` of the U-Net
  is ``C + condition channels``.

By default a :class:`ScoreUNet` is driven by gamma and any other network by timesteps.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence

import torch
from monai.inferers import Inferer, sliding_window_inference

from monai_medgen.engines import DiffusionPrepareBatch, unwrap_network
from monai_medgen.inferers.options import ConditionalSamplingOptions, sampling_options
from monai_medgen.inferers.vdm import guided_eps_fn
from monai_medgen.networks.score_unet import ScoreUNet
from monai_medgen.samplers import Generators, accelerated, batched_randn, repaint_times, sample_loop
from monai_medgen.schedules import DiscreteSchedule, Schedule, alpha_sigma, log_alpha2, time_grid

__all__ = [
    "ConditionalDiffusionInferer",
    "ConditionalPrepareBatch",
    "NETWORK_INPUTS",
    "PREDICTION_TYPES",
    "short_chain_times",
]

NETWORK_INPUTS = ("gamma", "timesteps")
PREDICTION_TYPES = ("epsilon", "v_prediction")
# default network evaluations per sampler (ancestral: T).  DPM-Solver++'s 20 is chosen from the measured quality
# curve of the SR bundle (scripts/benchmark.py --sections nfe, docs/benchmarks/benchmark.md): the fewest steps within
# 0.1 dB PSNR and 0.01 SSIM of its best settings; it is within 0.2 dB of the 2000-step ancestral chain (100x fewer).
DEFAULT_NUM_STEPS = {"ddim": 50, "dpm++": 20}


def _bc(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar / (B,) tensor over (B, C, *spatial)."""
    v = v.to(like.dtype)
    return v.reshape(-1, *([1] * (like.ndim - 1))) if v.ndim else v


def _to_discrete_schedule(scheduler, num_train_timesteps: int | None) -> DiscreteSchedule:
    """Any supported scheduler as a :class:`DiscreteSchedule` with T training levels."""
    if scheduler is None:
        schedule = DiscreteSchedule.linear_betas(2000 if num_train_timesteps is None else num_train_timesteps)
    elif isinstance(scheduler, DiscreteSchedule):
        schedule = scheduler
    elif isinstance(scheduler, Schedule):  # continuous: read at t = k / T, k = 1..T
        steps = 1000 if num_train_timesteps is None else int(num_train_timesteps)
        if steps < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}.")
        with torch.no_grad():
            t = torch.arange(1, steps + 1, dtype=torch.float32) / steps
            abar = torch.exp(log_alpha2(scheduler(t).double()))
        return DiscreteSchedule(abar)
    elif hasattr(scheduler, "alphas_cumprod"):
        schedule = DiscreteSchedule.from_scheduler(scheduler)
    else:
        raise ValueError(
            "scheduler must be a MONAI DDPMScheduler/DDIMScheduler, a monai_medgen Schedule or None, "
            f"got {type(scheduler).__name__}."
        )
    if num_train_timesteps is not None and num_train_timesteps != schedule.num_train_steps:
        raise ValueError(
            f"num_train_timesteps ({num_train_timesteps}) disagrees with the scheduler's {schedule.num_train_steps} "
            "steps; leave it None for a discrete scheduler."
        )
    return schedule


def _batch_like(x: torch.Tensor | None, name: str, batch: int, spatial: Sequence[int], channels: int | None = None):
    """Check (B or 1, C, *spatial) and expand a batch of 1 to ``batch``."""
    if x is None:
        return None
    x = torch.as_tensor(x)
    if x.ndim != len(spatial) + 2 or tuple(x.shape[2:]) != tuple(spatial) or x.shape[0] not in (1, batch):
        raise ValueError(f"{name} must have shape ({batch} or 1, C, *{tuple(spatial)}), got {tuple(x.shape)}.")
    if channels is not None and x.shape[1] not in (1, channels):
        raise ValueError(f"{name} must have 1 or {channels} channels, got {x.shape[1]}.")
    return x.expand(batch, *x.shape[1:]) if x.shape[0] == 1 else x


def _tile(x: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """Repeat a batch n times (sample-major: [x; x; ...])."""
    return None if x is None else x.repeat(n, *([1] * (x.ndim - 1)))


def short_chain_times(num_steps: int, start_time: float, num_train_steps: int) -> torch.Tensor:
    """``[1, t_start, ..., 0]`` on the training grid k / T: one step from pure noise to ``start_time``, then
    ``num_steps - 1`` evenly spaced steps to 0 (``num_steps`` network calls in all): the short chain that starts
    from the network's regression estimate at t = 1 (residual restoration, :mod:`monai_medgen.tasks.sampling`)."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}.")
    if not 0.0 < float(start_time) <= 1.0:
        raise ValueError(f"start_time must be in (0, 1], got {start_time!r}.")
    if num_steps == 1:
        return torch.tensor([1.0, 0.0])
    k = torch.linspace(float(start_time) * num_train_steps, 0, num_steps, dtype=torch.float64).round()
    k = torch.unique_consecutive(torch.cat([torch.tensor([float(num_train_steps)], dtype=torch.float64), k]))
    return (k / num_train_steps).float()


class ConditionalDiffusionInferer(Inferer):
    """Train and sample a conditional DDPM (Med-cDiff) on 2D images or 3D volumes.

    Args:
        scheduler: MONAI ``DDPMScheduler`` / ``DDIMScheduler`` (its ``alphas_cumprod`` is used), a
            :class:`DiscreteSchedule`, or a continuous :class:`Schedule` (read at ``t = k / T``).  Default:
            Med-cDiff's ``DiscreteSchedule.linear_betas(2000)`` (T = 2000, betas 1e-4 .. 0.02).
        prediction_type: what the network predicts, ``"epsilon"`` or ``"v_prediction"``
            (``v = alpha eps - sigma x``, MONAI's ``get_velocity``).
        network_input: ``"gamma"`` or ``"timesteps"`` (see the module docstring); None: ``"gamma"`` for a
            :class:`ScoreUNet`, ``"timesteps"`` for any other network (MONAI's ``DiffusionModelUNet``).
        null_class: label of the "no class" embedding for classifier-free guidance; None: the network's
            ``null_class`` attribute (set by :class:`ScoreUNet`).
        num_train_timesteps: T of the default linear-beta table (default 2000) or of a continuous
            ``scheduler`` (default 1000); leave None for a MONAI scheduler or a :class:`DiscreteSchedule`.

    Memory: MONAI's ``DiffusionModelUNet`` (inside :class:`ScoreUNet` too) always has self-attention in its
    middle block, quadratic in the number of bottleneck voxels, so whole 3D volumes need ``patch_size``
    (a 1 mm brain, 181 x 217 x 181, with 32^3 patches peaks under 2 GB on a CPU).

    The ancestral sampler uses the posterior variance ``beta_tilde`` between the levels actually visited,
    so any number of steps <= T is exact (unlike ``DDPMScheduler.step``, which always goes to ``t - 1``).
    """

    def __init__(
        self,
        scheduler=None,
        prediction_type: str = "epsilon",
        network_input: str | None = None,
        null_class: int | None = None,
        num_train_timesteps: int | None = None,
    ):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")
        if network_input is not None and network_input not in NETWORK_INPUTS:
            raise ValueError(f"network_input must be one of {NETWORK_INPUTS} or None, got {network_input!r}.")
        self.schedule = _to_discrete_schedule(scheduler, num_train_timesteps)
        self.num_train_timesteps = self.schedule.num_train_steps
        self.prediction_type = prediction_type
        self.network_input = network_input
        self.null_class = null_class

    # -----------------------------------------------------------------------------------------
    # noise levels <-> MONAI timesteps
    # -----------------------------------------------------------------------------------------
    def gamma(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Log-SNR gamma (B,) of MONAI integer timesteps (B,) in [0, T - 1] (``alphas_cumprod[timesteps]``)."""
        timesteps = torch.as_tensor(timesteps).long().reshape(-1)
        outside = (timesteps < 0) | (timesteps >= self.num_train_timesteps)
        if timesteps.device.type != "cpu":  # checked on the device: no wait for it at every training step
            torch._assert_async(~outside.any(), f"timesteps must lie in [0, {self.num_train_timesteps - 1}].")
        elif bool(outside.any()):
            raise ValueError(f"timesteps must lie in [0, {self.num_train_timesteps - 1}], got {timesteps.tolist()}.")
        gammas = self.schedule.gammas
        return gammas[timesteps.to(gammas.device) + 1]

    def timesteps_of(self, gamma: torch.Tensor) -> torch.Tensor:
        """Nearest MONAI integer timestep (B,) of noise levels gamma (B,) (for ``"timesteps"`` networks)."""
        return self.schedule.nearest_timestep(gamma.reshape(-1))

    def _mode(self, network: Callable) -> str:
        if self.network_input is not None:
            return self.network_input
        # read the type through a DistributedDataParallel wrapper (torchrun): a wrapped ScoreUNet still takes gamma
        return "gamma" if isinstance(unwrap_network(network), ScoreUNet) else "timesteps"

    # -----------------------------------------------------------------------------------------
    # network calls
    # -----------------------------------------------------------------------------------------
    def _predict(self, network, z, gamma, timesteps, condition, class_labels) -> torch.Tensor:
        """Raw network output (eps or v) for noisy z (B, C, *spatial) at gamma / timesteps (B,)."""
        return self._predict_as(self._mode(network), network, z, gamma, timesteps, condition, class_labels)

    @staticmethod
    def _predict_as(mode, network, z, gamma, timesteps, condition, class_labels) -> torch.Tensor:
        kwargs = {} if class_labels is None else {"class_labels": class_labels}
        if mode == "gamma":
            if condition is not None:
                kwargs["condition"] = condition
            return network(z, gamma, **kwargs)
        h = z if condition is None else torch.cat([z, condition.to(z.dtype)], dim=1)
        return network(h, timesteps, **kwargs)

    def eps_model(self, network: Callable, network_fn: Callable | None = None) -> Callable:
        """``eps(z, gamma, class_labels=None, condition=None)`` of the network for the samplers (v converted).

        ``network_fn``: what to call instead of ``network`` (e.g. :func:`monai_medgen.samplers.accelerated`
        of it); ``network`` still decides the input convention (``network_input``)."""
        mode = self._mode(network)
        call = network if network_fn is None else network_fn

        def eps(z, gamma, class_labels=None, condition=None):
            gamma = gamma.reshape(-1).expand(z.shape[0])
            timesteps = self.timesteps_of(gamma).to(z.device) if mode == "timesteps" else None
            out = self._predict_as(mode, call, z, gamma.to(z.device), timesteps, condition, class_labels)
            if self.prediction_type == "v_prediction":
                alpha, sigma = alpha_sigma(gamma.to(z.device))
                out = _bc(alpha, z) * out + _bc(sigma, z) * z
            return out

        return eps

    # -----------------------------------------------------------------------------------------
    # training
    # -----------------------------------------------------------------------------------------
    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        network: Callable,
        noise: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
        condition: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Noise ``inputs`` to the given timesteps and return the network's prediction (eps or v).

        Same order as MONAI's ``DiffusionInferer.__call__`` (condition always concatenated, "concat" mode);
        train with ``MSELoss()(prediction, self.target(inputs, noise, timesteps))``.

        Args:
            inputs: clean images (B, C, *spatial), scaled to [-1, 1].
            network: the eps / v network (see ``network_input``).
            noise: (B, C, *spatial) Gaussian noise (default: a fresh draw).
            timesteps: (B,) MONAI integer timesteps in [0, T - 1] (default: uniform draws).
            condition: (B, C_cond, *spatial) image condition (degraded image, masked image + mask).
            class_labels: (B,) long class labels (the null class for dropped labels).

        Returns:
            prediction (B, C_out, *spatial).
        """
        if inputs.ndim < 3:
            raise ValueError(f"inputs must have shape (B, C, *spatial), got {tuple(inputs.shape)}.")
        if noise is None:
            noise = torch.randn(inputs.shape, device=inputs.device, dtype=inputs.dtype)
        if noise.shape != inputs.shape:
            raise ValueError(f"noise must have the shape of inputs {tuple(inputs.shape)}, got {tuple(noise.shape)}.")
        if timesteps is None:
            timesteps = torch.randint(0, self.num_train_timesteps, (inputs.shape[0],), device=inputs.device)
        timesteps = torch.as_tensor(timesteps, device=inputs.device).long().reshape(-1)
        if timesteps.numel() != inputs.shape[0]:
            raise ValueError(f"timesteps must have {inputs.shape[0]} entries, got {timesteps.numel()}.")
        gamma = self.gamma(timesteps).to(inputs.device)
        alpha, sigma = alpha_sigma(gamma)
        z = _bc(alpha, inputs) * inputs + _bc(sigma, inputs) * noise
        return self._predict(network, z, gamma, timesteps, condition, class_labels)

    def target(self, inputs: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Regression target (B, C, *spatial): ``noise`` for eps, ``alpha noise - sigma inputs`` for v."""
        if self.prediction_type == "epsilon":
            return noise
        alpha, sigma = alpha_sigma(self.gamma(timesteps).to(inputs.device))
        return _bc(alpha, inputs) * noise - _bc(sigma, inputs) * inputs

    # -----------------------------------------------------------------------------------------
    # sampling
    # -----------------------------------------------------------------------------------------
    def _times(self, num_steps: int, repaint: Mapping | None, device, start_time: float | None = None) -> torch.Tensor:
        """Time list on the training grid k / T; RePaint's jumps mapped onto the same grid; with ``start_time`` the
        short chain of :func:`short_chain_times`."""
        if start_time is not None:
            return short_chain_times(num_steps, start_time, self.num_train_timesteps).to(device)
        grid = time_grid(num_steps, self.num_train_timesteps, device=device)  # grid[i]: level num_steps - i
        if repaint is None:
            return grid
        rp = repaint_times(num_steps, **repaint)
        levels = torch.round(rp * num_steps).long()
        return grid[num_steps - levels.to(grid.device)]

    def _patch_eps_fn(self, eps_fn_for, condition, class_labels, patch_size, overlap, sw_batch_size, channels):
        """eps over overlapping patches with Gaussian blending, one batch element at a time."""

        def eps(z, gamma):
            out = []
            roi = [min(p, s) for p, s in zip(patch_size, z.shape[2:])]
            for b in range(z.shape[0]):
                inp = z[b : b + 1] if condition is None else torch.cat([z[b : b + 1], condition[b : b + 1]], 1)

                def predictor(window, b=b):
                    n = window.shape[0]
                    labels = None if class_labels is None else class_labels[b : b + 1].expand(n)
                    cond = None if condition is None else window[:, channels:]
                    return eps_fn_for(labels, cond)(window[:, :channels], gamma[b : b + 1].expand(n))

                out.append(
                    sliding_window_inference(
                        inp, roi, sw_batch_size, predictor, overlap=overlap, mode="gaussian", progress=False
                    )
                )
            return torch.cat(out, 0)

        return eps

    def _num_steps(self, options: ConditionalSamplingOptions) -> int:
        """``options.num_steps`` checked against the training steps (its default for the sampler when None)."""
        T = self.num_train_timesteps
        num_steps = options.num_steps
        if num_steps is None:
            num_steps = T if options.sampler == "ancestral" else min(DEFAULT_NUM_STEPS[options.sampler], T)
        if options.start_time is not None:  # the short chain lands on the training grid; repeats collapse
            return num_steps
        if not 1 <= num_steps <= T:
            raise ValueError(f"num_steps must be an integer in [1, {T}] (the training steps), got {num_steps!r}.")
        return num_steps

    def noise_shape(self, image_shape: Sequence[int]) -> tuple[int, ...]:
        """The shape of ``sample``'s ``input_noise`` for images of ``image_shape`` (B, C, *spatial): the same."""
        return tuple(int(s) for s in image_shape)

    def sample_with_grad(self, *args, **kwargs):
        """:meth:`sample` with autograd on: gradients reach the network's parameters through every step (test-time
        adaptation, :func:`monai_medgen.tasks.adaptation.sure_adapt`).  Same arguments and result."""
        with torch.enable_grad():
            return inspect.unwrap(type(self).sample)(self, *args, **kwargs)

    @torch.no_grad()
    def sample(
        self,
        input_noise: torch.Tensor,
        network: Callable,
        condition: torch.Tensor | None = None,
        class_labels: torch.Tensor | int | None = None,
        mask: torch.Tensor | None = None,
        known: torch.Tensor | None = None,
        generator: Generators = None,
        x0_hook: Callable[[torch.Tensor], torch.Tensor] | None = None,
        options: ConditionalSamplingOptions | None = None,
        **option_fields,
    ):
        """Sample (restore, inpaint, generate) starting from ``input_noise``.

        Args:
            input_noise: (B, C, *spatial) starting noise at t = 1; fixes shape, device and dtype.
            network: the trained network (see ``network_input``).
            condition: (B or 1, C_cond, *spatial) image condition (degraded image; for a mask-conditioned
                inpainting model the masked image and the mask as the caller built them in training).
            class_labels: (B,) long labels, or one label for all.
            mask: (B or 1, 1 or C, *spatial) inpainting mask with values 0 / 1, 1 = missing (to generate),
                0 = known.  Needs ``known``.  The known region of the output equals ``known`` exactly.
                Without ``condition`` (an unconditional network) the known region is also imposed at
                every step as the forward-noised ``known`` (replacement / RePaint).
            known: (B or 1, C, *spatial) image whose known region is kept.
            generator: torch generator for every random draw (same seed, same sample); or a list of B
                generators, one per input: each input's result is then the same whether it is sampled alone or
                batched with others (batched sampling of several inputs).
            x0_hook: ``x0 = x0_hook(x0)`` on every prediction of the clean image (after ``clip``), e.g. a data
                consistency projection (:class:`monai_medgen.tasks.ResidualRestorer`).
            options: :class:`~monai_medgen.inferers.ConditionalSamplingOptions` (sampler, steps, guidance, samples,
                patches, clipping, intermediates, speed); ``num_steps`` defaults to T for ancestral, 50 for DDIM,
                20 for DPM-Solver++ (at most T), and steps land on the trained levels k / T.
            option_fields: the same options as keywords (``sampler="dpm++", num_steps=10``), applied over
                ``options``.

        Returns:
            ``sample`` (B, C, *spatial); with ``num_samples > 1`` ``(mean, std)``; with ``save_intermediates``
            the list of intermediates (each (num_samples * B, C, *spatial), sample-major) is appended.  The first
            sample starts from ``input_noise``, the others from draws of ``generator``.
        """
        if not torch.is_tensor(input_noise) or input_noise.ndim < 3:
            raise ValueError("input_noise must be a tensor of shape (B, C, *spatial).")
        o = sampling_options(ConditionalSamplingOptions, options, option_fields)
        o.check_guidance(class_labels)
        num_steps = self._num_steps(o)
        batch, channels, spatial = input_noise.shape[0], input_noise.shape[1], tuple(input_noise.shape[2:])
        device = input_noise.device
        generator = _check_generators(generator, batch)
        condition = _batch_like(condition, "condition", batch, spatial)
        if condition is not None:
            condition = condition.to(device=device, dtype=input_noise.dtype)
        class_labels = _labels_for(class_labels, batch, device)
        repaint = _check_repaint(o.repaint, mask, known, o.sampler)
        mask, known = _inpainting_region(mask, known, input_noise)
        patch_size = _check_patches(o.patch_size, o.overlap, o.sw_batch_size, spatial)
        null_class = self.null_class
        if null_class is None:
            null_class = getattr(unwrap_network(network), "null_class", None)
        if o.guidance_scale > 0 and null_class is None:
            raise ValueError("guidance_scale > 0 needs null_class (set it on the inferer or use a ScoreUNet).")
        self.schedule.to(device)
        times = self._times(num_steps, repaint, device, o.start_time)
        eps_model = self.eps_model(network, accelerated(network, **o.speed))
        num_samples = o.num_samples
        per_batch = num_samples if o.samples_per_batch is None else min(o.samples_per_batch, num_samples)
        impose_known = mask is not None and (condition is None or repaint is not None)

        # sample_with_grad: the same loop with autograd on (gradients reach the network's parameters)
        loop = inspect.unwrap(sample_loop) if torch.is_grad_enabled() else sample_loop
        samples, intermediates = [], []
        for start in range(0, num_samples, per_batch):
            n = min(per_batch, num_samples - start)
            noises = [
                input_noise
                if s == 0
                else batched_randn(input_noise.shape, generator, device=device, dtype=input_noise.dtype)
                for s in range(start, start + n)
            ]
            z = torch.cat(noises, 0)
            cond_n, labels_n = _tile(condition, n), _tile(class_labels, n)
            mask_n, known_n = _tile(mask, n), _tile(known, n)

            def eps_fn_for(labels, cond):
                return guided_eps_fn(eps_model, labels, o.guidance_scale, null_class, condition=cond)

            if patch_size is None:
                eps_fn = eps_fn_for(labels_n, cond_n)
            else:
                eps_fn = self._patch_eps_fn(
                    eps_fn_for, cond_n, labels_n, patch_size, o.overlap, o.sw_batch_size, channels
                )
            constraint = None
            if impose_known:

                def constraint(z_s, t_s, gamma_s, mask_n=mask_n, known_n=known_n):
                    alpha, sigma = alpha_sigma(gamma_s)
                    noisy_known = _bc(alpha, z_s) * known_n
                    if float(t_s) > 0:
                        noise = batched_randn(z_s.shape, generator, device=z_s.device, dtype=z_s.dtype)
                        noisy_known = noisy_known + _bc(sigma, z_s) * noise
                    return torch.where(mask_n, z_s, noisy_known)

            out = loop(
                eps_fn,
                z,
                self.schedule,
                times,
                sampler=o.sampler,
                eta=o.eta,
                generator=generator,
                constraint=constraint,
                clip_x0=o.clip,
                intermediate_steps=o.frames_every,
                verbose=o.verbose,
                desc=f"conditional {o.sampler}",
                x0_hook=x0_hook,
            )
            x = out.sample if o.clip is None or not o.clamp_output else out.sample.clamp(*o.clip)
            if mask is not None:
                x = torch.where(mask_n, x, known_n)
            samples.append(x)
            intermediates.append(out.intermediates)

        steps_kept = [torch.cat(parts, 0) for parts in zip(*intermediates)]
        if num_samples == 1:
            result = (samples[0],)
        else:
            stacked = torch.cat(samples, 0).reshape(num_samples, batch, channels, *spatial)
            result = (stacked.mean(0), stacked.std(0))
        if o.save_intermediates:
            result = result + (steps_kept,)
        return result[0] if len(result) == 1 else result


def _check_generators(generator, batch: int):
    """None, one generator, or a list of ``batch`` generators (one per input), as a list."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    generator = list(generator)
    if len(generator) != batch or not all(isinstance(g, torch.Generator) for g in generator):
        raise ValueError(
            f"generator must be a torch.Generator or a list of {batch} of them (one per input), got {len(generator)} items."
        )
    return generator


def _labels_for(class_labels, batch: int, device) -> torch.Tensor | None:
    """Class labels as a (B,) long tensor (one label for all expanded)."""
    if class_labels is None:
        return None
    class_labels = torch.as_tensor(class_labels, device=device).long().reshape(-1)
    if class_labels.numel() == 1:
        class_labels = class_labels.expand(batch)
    if class_labels.numel() != batch:
        raise ValueError(f"class_labels must have {batch} entries (one per input), got {class_labels.numel()}.")
    return class_labels


def _check_repaint(repaint, mask, known, sampler: str) -> dict | None:
    """RePaint settings with their defaults, checked against the inpainting inputs and the sampler."""
    if (mask is None) != (known is None):
        raise ValueError("mask and known must be given together (inpainting), got only one of them.")
    if repaint is None:
        return None
    if mask is None:
        raise ValueError("repaint needs mask and known (the region to inpaint and the image to keep).")
    if sampler == "dpm++":
        raise ValueError("sampler='dpm++' cannot take RePaint's backward jumps; use 'ancestral' or 'ddim'.")
    unknown = set(repaint) - {"jump_length", "jump_n_sample"}
    if unknown:
        raise ValueError(f"repaint takes only 'jump_length' and 'jump_n_sample', got {sorted(unknown)}.")
    return {"jump_length": 10, "jump_n_sample": 10, **repaint}


def _inpainting_region(mask, known, input_noise: torch.Tensor):
    """``(mask as a bool tensor of known's shape, known)`` on the noise's device, or ``(None, None)``."""
    if mask is None:
        return None, known
    batch, channels, spatial = input_noise.shape[0], input_noise.shape[1], tuple(input_noise.shape[2:])
    mask = _batch_like(mask, "mask", batch, spatial, channels).to(input_noise.device)
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must hold only 0 (known) and 1 (missing).")
    known = _batch_like(known, "known", batch, spatial).to(device=input_noise.device, dtype=input_noise.dtype)
    if known.shape[1] != channels:
        raise ValueError(f"known must have {channels} channels like input_noise, got {known.shape[1]}.")
    return mask.expand_as(known).bool(), known


def _check_patches(patch_size, overlap: float, sw_batch_size: int, spatial: tuple) -> list[int] | None:
    """Patch settings of the sliding-window network call, checked."""
    if patch_size is None:
        return None
    patch_size = [int(p) for p in patch_size]
    if len(patch_size) != len(spatial) or min(patch_size) < 1:
        raise ValueError(f"patch_size must give {len(spatial)} positive sizes, got {patch_size}.")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}.")
    if sw_batch_size < 1:
        raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}.")
    return patch_size


class ConditionalPrepareBatch(DiffusionPrepareBatch):
    """PrepareBatch for MONAI's ``SupervisedTrainer`` with :class:`ConditionalDiffusionInferer`.

    Returns ``(images, target, (), {"noise", "timesteps", "condition", "class_labels"})``: images (B, C,
    *spatial) in [-1, 1], fresh Gaussian noise, uniform MONAI timesteps in [0, T - 1], the condition image
    (or None) and class labels with dropout to ``null_class`` (or None).  The target is the noise (eps
    prediction) or, with an ``inferer`` predicting v, ``inferer.target(...)``; use ``loss_function=MSELoss()``.

    Args:
        num_train_timesteps: T (may be left None when ``inferer`` is given).
        image_key, condition_key, label_key, label_dropout, null_class: as in
            :class:`monai_medgen.engines.DiffusionPrepareBatch`; ``condition_key=None`` for no condition,
            ``label_key=None`` for no labels (then ``label_dropout`` is not used).
        inferer: the :class:`ConditionalDiffusionInferer` whose ``target`` (eps or v) and T to use.
        focus_times: times t in (0, 1] (the network's calls of a fixed short sampler, e.g. ``[1.0, 0.5]`` for the
            restoration chain ``[1, start_time, 0]``) that ``focus_fraction`` of the items are trained at, drawn
            among them at random; the other items keep uniform timesteps, so every time stays trained.
        focus_fraction: share of the items at ``focus_times`` (0: uniform timesteps only).
    """

    def __init__(
        self,
        num_train_timesteps: int | None = None,
        image_key: str = "image",
        condition_key: str | None = "cond",
        label_key: str | None = None,
        label_dropout: float = 0.1,
        null_class: int | None = None,
        inferer: ConditionalDiffusionInferer | None = None,
        focus_times: Sequence[float] = (),
        focus_fraction: float = 0.0,
    ):
        if inferer is not None:
            if num_train_timesteps is not None and num_train_timesteps != inferer.num_train_timesteps:
                raise ValueError(
                    f"num_train_timesteps ({num_train_timesteps}) disagrees with the inferer's "
                    f"{inferer.num_train_timesteps} steps."
                )
            num_train_timesteps = inferer.num_train_timesteps
        if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
            raise ValueError(
                f"num_train_timesteps must be a positive integer (or give inferer), got {num_train_timesteps!r}."
            )
        super().__init__(
            image_key=image_key,
            label_key=label_key,
            condition_key=condition_key,
            label_dropout=label_dropout if label_key is not None else 0.0,
            null_class=null_class,
        )
        self.num_train_timesteps = num_train_timesteps
        self.inferer = inferer
        focus = [float(t) for t in focus_times]
        if any(not 0.0 < t <= 1.0 for t in focus):
            raise ValueError(f"focus_times must lie in (0, 1], got {list(focus_times)!r}.")
        if not 0.0 <= float(focus_fraction) <= 1.0 or (focus_fraction > 0 and not focus):
            raise ValueError(
                f"focus_fraction must be in [0, 1] (and needs focus_times when > 0), got {focus_fraction!r}."
            )
        # time t = k / T is MONAI timestep k - 1 (t = 1: the last, pure-noise timestep)
        self.focus_timesteps = torch.tensor(
            [min(num_train_timesteps - 1, max(0, round(t * num_train_timesteps) - 1)) for t in focus], dtype=torch.long
        )
        self.focus_fraction = float(focus_fraction)

    def __call__(self, batchdata: Mapping, device=None, non_blocking: bool = False, **kwargs):
        images, _, _, call_kwargs = super().__call__(batchdata, device, non_blocking, **kwargs)
        noise = torch.randn(images.shape, device=images.device, dtype=images.dtype)
        timesteps = torch.randint(0, self.num_train_timesteps, (images.shape[0],), device=images.device)
        if self.focus_fraction > 0:
            at_focus = torch.rand(images.shape[0], device=images.device) < self.focus_fraction
            pick = torch.randint(0, len(self.focus_timesteps), (images.shape[0],), device=images.device)
            timesteps = torch.where(at_focus, self.focus_timesteps.to(images.device)[pick], timesteps)
        target = noise if self.inferer is None else self.inferer.target(images, noise, timesteps)
        return (
            images,
            target,
            (),
            {
                "noise": noise,
                "timesteps": timesteps,
                "condition": call_kwargs.get("condition"),
                "class_labels": call_kwargs.get("class_labels"),
            },
        )
