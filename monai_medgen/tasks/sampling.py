"""Residual diffusion sampling with data consistency at every step.

The network generates the residual ``r = 2 (x - base)`` to the classical estimate (bicubic, the noisy image, a
thin-plate fill of the holes; :mod:`monai_medgen.tasks.blind`).  The reverse process is the conditional inferer's own
``sample(input_noise, network, condition=..., x0_hook=...)`` (:class:`~monai_medgen.inferers.ConditionalDiffusionInferer`,
``start_time`` in its options) on the shared core (:func:`monai_medgen.samplers.sample_loop`), along a short time list
``[1, t_start, ..., 0]``: the first network call
at t = 1 is the model's regression estimate of the residual, one large step then lands at the noise level
``t_start`` and a few small steps add the detail a regression blurs away (the short chain of "come closer, diffuse
faster" starts, here from the model's own estimate).  After every prediction of the clean image the data
consistency hook maps it back onto the measurement (super-resolution: exact range-null-space projection; inpainting:
the known voxels), so the output, degraded again, equals the input.

With ``self_ensemble`` the samples of a multi-sample restoration are drawn in different frames of the image
(2D: the eight flips and transposes of the square's symmetry group; 3D: the eight axis flips) and mapped back
before they are averaged, so the mean also averages out what the network does differently by orientation
(the geometric self-ensemble of image restoration networks). One sample is always drawn in the image's own frame.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from monai_medgen.engines import unwrap_network
from monai_medgen.inferers.conditional import short_chain_times
from monai_medgen.inferers.options import ConditionalSamplingOptions
from monai_medgen.networks import size_multiple
from monai_medgen.samplers import SAMPLERS, Generators, batched_randn
from monai_medgen.tasks.blind import make_condition

__all__ = ["NUM_FRAMES", "ResidualRestorer", "frame_transform", "restoration_times"]


def frame_transform(x: torch.Tensor, k: int, inverse: bool = False) -> torch.Tensor:
    """``x`` (B, C, *spatial) in frame ``k`` of :data:`NUM_FRAMES` (0: as it is), or back from it (``inverse``).
    2D: bit 0 flips W, bit 1 flips H, bit 2 transposes H and W (applied last, so undone first); 3D: bits flip
    the three axes."""
    if x.ndim == 5:
        dims = [d for b, d in enumerate((-1, -2, -3)) if k >> b & 1]
        return x.flip(dims) if dims else x
    flips = [d for b, d in enumerate((-1, -2)) if k >> b & 1]
    if inverse and k & 4:
        x = x.transpose(-1, -2)
    if flips:
        x = x.flip(flips)
    if not inverse and k & 4:
        x = x.transpose(-1, -2)
    return x


NUM_FRAMES = 8


#: the short time list of residual restoration (one step to ``start_time``, then even steps); the inferer's
restoration_times = short_chain_times


class ResidualRestorer:
    """Restore batches with a residual conditional diffusion model of one family.

    Args:
        inferer: the :class:`~monai_medgen.inferers.ConditionalDiffusionInferer` the network was trained with.
        network: the trained network (condition channels from :func:`~monai_medgen.tasks.cond_channels_of`).
        family: ``"sr"``, ``"denoise"`` or ``"inpaint"``.
        num_steps: network calls per sample (1: the regression estimate alone).
        start_time: noise level after the first step, in (0, 1] (smaller: closer to the regression estimate).
        sampler: ``"dpm++"`` or ``"ddim"`` (deterministic given the starting noise), or ``"ancestral"`` (fresh
            noise at every step).
        patch_size: evaluate the network over overlapping tiles of this size (Gaussian blending) for large
            images; None: whole images.
        overlap: tile overlap fraction.
        speed: the network call's speed options (``channels_last``, ``autocast``, ``compile``; see
            :func:`monai_medgen.samplers.accelerated`), all off by default.
        self_ensemble: draw sample k of a multi-sample call in frame k (flips / transposes) and map it back;
            None: the inferer's ``self_ensemble`` attribute (a bundle setting), else off.
        impulse_values: denoising: the values salt-and-pepper impulses take in the measurement's units (the ends of
            its intensity range; 0 and 1 for images in [0, 1]); see :func:`~monai_medgen.tasks.make_condition`.
        adapt_steps: denoising: adapt the network to each call's images first, by this many steps of
            :func:`~monai_medgen.tasks.adaptation.sure_adapt` (0: off); None: the inferer's ``adapt_steps`` attribute
            (a bundle setting), else 0.
        adapt_lr: the adaptation's learning rate; None: the inferer's ``adapt_lr`` attribute, else 3e-3.
        adapt_crop: the side of the adaptation's random crops.
    """

    def __init__(
        self,
        inferer,
        network: Callable,
        family: str,
        num_steps: int = 4,
        start_time: float = 0.5,
        sampler: str = "dpm++",
        patch_size: int | None = None,
        overlap: float = 0.25,
        speed: dict | None = None,
        self_ensemble: bool | None = None,
        impulse_values: Sequence[float] = (0.0, 1.0),
        adapt_steps: int | None = None,
        adapt_lr: float | None = None,
        adapt_crop: int = 128,
    ):
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}.")
        if patch_size is not None and (not isinstance(patch_size, int) or patch_size < 16):
            raise ValueError(f"patch_size must be an integer >= 16 or None, got {patch_size!r}.")
        self.inferer, self.network, self.family = inferer, network, family
        self.sampler, self.patch_size, self.overlap = sampler, patch_size, float(overlap)
        restoration_times(num_steps, start_time, inferer.num_train_timesteps)  # checks both (the inferer builds it)
        self.num_steps, self.start_time = int(num_steps), float(start_time)
        self.speed = dict(speed or {})
        self.self_ensemble = bool(getattr(inferer, "self_ensemble", False) if self_ensemble is None else self_ensemble)
        self.impulse_values = tuple(float(v) for v in impulse_values)
        steps = getattr(inferer, "adapt_steps", 0) if adapt_steps is None else adapt_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"adapt_steps must be an integer >= 0, got {steps!r}.")
        if steps and family != "denoise":
            raise ValueError(f"adapt_steps (SURE adaptation) applies to denoising only, got family={family!r}.")
        lr = getattr(inferer, "adapt_lr", 3e-3) if adapt_lr is None else adapt_lr
        self.adapt_steps, self.adapt_lr, self.adapt_crop = steps, float(lr), int(adapt_crop)

    def adapted(
        self,
        measured: torch.Tensor,
        value_range: tuple[float | None, float | None] | None = None,
        seed: int = 0,
    ) -> ResidualRestorer:
        """A copy of this restorer whose network is adapted to ``measured`` (S, 1, *spatial) by ``adapt_steps``
        steps of :func:`~monai_medgen.tasks.adaptation.sure_adapt` (this restorer unchanged; the copy does not
        adapt again)."""
        from monai_medgen.tasks.adaptation import sure_adapt

        return sure_adapt(
            self,
            measured,
            steps=self.adapt_steps,
            lr=self.adapt_lr,
            crop=self.adapt_crop,
            value_range=value_range,
            generator=torch.Generator().manual_seed(int(seed)),
        )

    def _options(self, spatial: tuple[int, ...], verbose: bool) -> ConditionalSamplingOptions:
        """The inferer's sampling options of one chain: the short time list from ``num_steps`` and ``start_time``,
        the residual's range (+-2 in [-1, 1] units), no clamp of the projected output, tiles for large images."""
        tiles = self.patch_size is not None and max(spatial) > self.patch_size
        return ConditionalSamplingOptions(
            sampler=self.sampler,
            num_steps=self.num_steps,
            start_time=self.start_time,
            clip=(-2.0, 2.0),
            clamp_output=False,
            verbose=verbose,
            patch_size=(self.patch_size,) * len(spatial) if tiles else None,
            overlap=self.overlap,
            sw_batch_size=4,
            **self.speed,
        )

    @staticmethod
    def _into_range(x, value_range, project, inner, iterations: int = 20):
        low, high = value_range
        x = x.clone()
        for _ in range(iterations if project is not None else 1):
            x = x.clamp(low, high)
            if project is None:
                break
            x[inner] = project(x[inner])
        return x

    @torch.no_grad()
    def __call__(
        self,
        measured: torch.Tensor,
        project: Callable[[torch.Tensor], torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
        num_samples: int = 1,
        generator: Generators = None,
        verbose: bool = False,
        value_range: tuple[float | None, float | None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, std)`` (B, 1, *spatial) in [0, 1] units (std zeros for one sample).

        Args:
            measured: (B, 1, *spatial) in [0, 1]: for SR the low-resolution image interpolated onto the output grid
                (:meth:`~monai_medgen.tasks.SuperResolution.base`), the noisy image, or the masked image.
            project: data consistency on an image estimate in [0, 1] units (e.g. ``lambda x: op.project(x, y)``);
                for inpainting the known voxels are kept without it.
            mask: inpainting, (B, 1, *spatial), 1 = missing.
            num_samples: samples per input; their mean and per-voxel standard deviation are returned.
            generator: a torch generator or one per input (each input's result independent of the batch).
            value_range: (low, high) the output must lie in (either may be None), e.g. (0, None) for magnitudes;
                with ``project`` the output is brought into both the range and the consistent set by alternating
                projections (the truth lies in both), so it stays consistent with the measurement.
        """
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}.")
        if self.adapt_steps:
            first = generator[0] if isinstance(generator, (list, tuple)) else generator
            seed = first.initial_seed() if isinstance(first, torch.Generator) else 0
            restorer = self.adapted(measured, value_range, seed=seed)
            return restorer(measured, project, mask, num_samples, generator, verbose, value_range)
        self.inferer.schedule.to(measured.device)
        samples = []
        for i in range(num_samples):
            k = i % NUM_FRAMES if self.self_ensemble else 0
            if k == 0:
                samples.append(self._sample(measured, project, mask, generator, verbose, value_range))
                continue
            framed_project = (
                None if project is None else (lambda x, k=k: frame_transform(project(frame_transform(x, k, True)), k))
            )
            framed_mask = None if mask is None else frame_transform(mask, k)
            x = self._sample(frame_transform(measured, k), framed_project, framed_mask, generator, verbose, value_range)
            samples.append(frame_transform(x, k, inverse=True))
        stack = torch.stack(samples)
        mean, std = stack.mean(0), (stack.std(0) if num_samples > 1 else torch.zeros_like(stack[0]))
        if mask is not None and num_samples > 1:  # a mean of equal values can round: known voxels exactly as given
            known = mask.to(measured) < 0.5
            mean, std = torch.where(known, measured, mean), torch.where(known, torch.zeros_like(std), std)
        return mean, std

    def _sample(self, measured, project, mask, generator, verbose, value_range, grad: bool = False) -> torch.Tensor:
        """One sample (B, 1, *spatial) in [0, 1] units, in the frame of ``measured`` (``grad``: with autograd, for
        :func:`~monai_medgen.tasks.adaptation.sure_adapt`)."""
        device = measured.device
        spatial = tuple(measured.shape[2:])
        multiple = size_multiple(self.network, default=8)
        pads = []
        for n in reversed(spatial):
            extra = (-n) % multiple
            pads += [extra // 2, extra - extra // 2]
        inner = tuple(
            slice(pads[2 * (len(spatial) - 1 - a)], pads[2 * (len(spatial) - 1 - a)] + n) for a, n in enumerate(spatial)
        )
        inner = (slice(None), slice(None), *inner)
        if any(pads):
            measured = F.pad(measured, pads, mode="replicate")
            # the margin continues the mask: beyond a hole at the border nothing is known (a margin copied from
            # the hole's content would be a made-up measurement the output then depended on)
            mask = None if mask is None else F.pad(mask.to(measured), pads, mode="replicate")
        # an inpainting network gets the condition layout it was trained with (INPAINT_LAYOUTS by channel count)
        channels = getattr(unwrap_network(self.network), "cond_channels", None)
        cond, base = make_condition(
            self.family, measured, mask=mask, channels=channels, impulse_values=self.impulse_values
        )
        known = None if mask is None else (mask.to(measured) < 0.5)

        def hook(r: torch.Tensor) -> torch.Tensor:
            if known is not None:
                r = torch.where(known, torch.zeros_like(r), r)
            if project is None:
                return r
            out = r.clone()
            out[inner] = 2 * (project(base[inner] + r[inner] / 2) - base[inner])
            return out

        z = batched_randn(measured.shape, generator, device=device, dtype=measured.dtype)
        residual = (self.inferer.sample_with_grad if grad else self.inferer.sample)(
            z,
            self.network,
            condition=cond,
            generator=generator,
            x0_hook=hook,
            options=self._options(tuple(cond.shape[2:]), verbose),
        )
        x = base + hook(residual) / 2
        if value_range is not None:
            x = self._into_range(x, value_range, project, inner)
        if known is not None:
            x = torch.where(known, measured, x)
        return x[inner]
