"""The options of a sampling run, grouped: every inferer's ``sample(input_noise, network, ...)`` takes the inputs
(noise, network, conditions, generator) as arguments and how to sample as one of these dataclasses.

``inferer.sample(noise, net, options=SamplingOptions(sampler="dpm++", num_steps=20))`` and the shortcut
``inferer.sample(noise, net, sampler="dpm++", num_steps=20)`` (keyword arguments named after the fields) are the
same call; the fields are checked once, here, with messages that name the option.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from monai_medgen.samplers import SAMPLERS

__all__ = ["ConditionalSamplingOptions", "SamplingOptions", "sampling_options"]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """How to sample, for every inferer.

    Attributes:
        sampler: ``"ancestral"``, ``"ddim"`` or ``"dpm++"`` (DPM-Solver++ 2M).
        num_steps: network evaluations (without guidance); None: the inferer's default.
        eta: DDIM noise scale (default 0; fixed to 1 for ancestral).
        guidance_scale: classifier-free guidance ``w >= 0``, ``eps = (1 + w) eps(c) - w eps(null)``; 0 is the plain
            conditional prediction (one network call per step).
        verbose: tqdm progress bar.
        save_intermediates: also return the noisy images every ``intermediate_steps`` step indices (or at the listed
            indices), for a sampling animation.
        channels_last, autocast, compile: speed options of the network call, all off by default
            (:func:`monai_medgen.samplers.accelerated`).
    """

    sampler: str = "ancestral"
    num_steps: int | None = None
    eta: float | None = None
    guidance_scale: float = 0.0
    verbose: bool = True
    save_intermediates: bool = False
    intermediate_steps: int | Sequence[int] = 100
    channels_last: bool = False
    autocast: str | None = None
    compile: bool | str = False

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}.")
        if self.num_steps is not None and (not _is_int(self.num_steps) or self.num_steps < 1):
            raise ValueError(f"num_steps must be a positive integer (or None: the default), got {self.num_steps!r}.")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}.")

    def check_guidance(self, class_labels) -> None:
        """Guidance needs the classes to guide towards."""
        if self.guidance_scale > 0 and class_labels is None:
            raise ValueError("guidance_scale > 0 needs class_labels (the classes to guide towards).")

    @property
    def speed(self) -> dict:
        """The keyword arguments of :func:`monai_medgen.samplers.accelerated`."""
        return {"channels_last": self.channels_last, "autocast": self.autocast, "compile": self.compile}

    @property
    def frames_every(self) -> int | Sequence[int] | None:
        """``intermediate_steps`` when intermediates are wanted, else None (what the sample loop takes)."""
        return self.intermediate_steps if self.save_intermediates else None


@dataclasses.dataclass(frozen=True)
class ConditionalSamplingOptions(SamplingOptions):
    """How to sample with :class:`~monai_medgen.inferers.ConditionalDiffusionInferer`: the options of
    :class:`SamplingOptions` and

    Attributes:
        num_samples: samples per input; with more than 1 the per-voxel mean and standard deviation are returned.
        samples_per_batch: how many of the ``num_samples`` to run in one network batch (default: all).
        repaint: RePaint resampling ``{"jump_length": int, "jump_n_sample": int}`` (defaults 10, 10; ``{}`` uses
            both) for an unconditional network; needs a mask and sampler ancestral / ddim.
        patch_size: spatial size of overlapping patches over which the network is evaluated at every step (MONAI
            ``sliding_window_inference``, Gaussian blending); None: the whole image at once.
        overlap: patch overlap fraction in [0, 1); ``sw_batch_size``: patches per network call.
        clip: clamp the predicted clean image to this range at every step and the output at the end (None: none).
        clamp_output: False: the output is not clamped to ``clip`` at the end (an ``x0_hook`` may leave it).
        start_time: a short chain from a regression estimate (:func:`short_chain_times`): one step from t = 1 to
            ``start_time``, then ``num_steps - 1`` even steps to 0; None: ``num_steps`` even steps from 1.
    """

    num_samples: int = 1
    samples_per_batch: int | None = None
    repaint: Mapping[str, int] | None = None
    patch_size: Sequence[int] | None = None
    overlap: float = 0.25
    sw_batch_size: int = 1
    clip: tuple[float, float] | None = (-1.0, 1.0)
    clamp_output: bool = True
    start_time: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.start_time is not None and not 0.0 < float(self.start_time) <= 1.0:
            raise ValueError(f"start_time must be in (0, 1] or None, got {self.start_time!r}.")
        if not _is_int(self.num_samples) or self.num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {self.num_samples!r}.")
        if self.samples_per_batch is not None and (not _is_int(self.samples_per_batch) or self.samples_per_batch < 1):
            raise ValueError(f"samples_per_batch must be a positive integer or None, got {self.samples_per_batch!r}.")
        if self.clip is not None and not (len(self.clip) == 2 and self.clip[0] < self.clip[1]):
            raise ValueError(f"clip must be None or (low, high) with low < high, got {self.clip!r}.")


def sampling_options(
    cls: type[SamplingOptions], options: SamplingOptions | None, overrides: Mapping
) -> SamplingOptions:
    """``options`` (default ``cls()``) with the keyword ``overrides`` applied; an unknown keyword is a TypeError
    naming it and the options there are."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unexpected sampling option(s) {unknown}; the options of {cls.__name__} are {sorted(names)}.")
    if options is None:
        return cls(**overrides)
    if not isinstance(options, cls):
        raise TypeError(f"options must be a {cls.__name__}, got {type(options).__name__}.")
    return dataclasses.replace(options, **overrides) if overrides else options
