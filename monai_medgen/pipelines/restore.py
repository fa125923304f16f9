"""One restoration for every front-end: a loaded bundle, an image (and mask), :class:`RestoreOptions` with the
bundle's defaults filled in, and the provenance of the result.

``monai-medgen restore`` and the MONAI Label app's restoration models call :func:`restore`; for the blind residual
bundles it calls :func:`monai_medgen.tasks.restore.restore_residual` (2D images, volumes slice by slice or through
their planes, large images in tiles: intensity scaling, operators, data consistency), whose
:class:`~monai_medgen.tasks.sampling.ResidualRestorer` calls the inferer's ``sample(input_noise, network, ...)`` with
``num_steps`` and the short chain's ``start_time`` (:class:`~monai_medgen.inferers.ConditionalSamplingOptions`), which
runs the sampler (:func:`monai_medgen.samplers.sample_loop`); other conditional models go through
:func:`monai_medgen.restoration.restore_image`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from monai.data import MetaTensor

from monai_medgen import io
from monai_medgen.limits import TASK_NAMES
from monai_medgen.pipelines.bundles import LoadedBundle
from monai_medgen.restoration import check_image, check_mask, restore_image
from monai_medgen.tasks.restore import ResidualDiffusionInferer, restore_residual

__all__ = ["RestoreOptions", "restore", "restoration_provenance"]


@dataclasses.dataclass(frozen=True)
class RestoreOptions:
    """The options of one restoration, as every front-end passes them; None takes the bundle's default.

    Attributes:
        sampler: ``"ancestral"``, ``"ddim"`` or ``"dpm++"`` (default: the bundle's ``sampler``, else dpm++).
        num_steps: network calls per sample (default: the bundle's ``num_steps``, else 20).
        num_samples: samples averaged; with more than one the per-voxel standard deviation comes back too.
        seed: the same seed gives the same result.
        factor: super-resolution: how many times finer the output grid is (a number, or one per axis for a 3D
            model); default the bundle's ``factor``, 1 for the other tasks.
        channels_last, autocast, compile: speed options of the network call (off by default; see
            :func:`monai_medgen.samplers.accelerated`).
        adapt_steps: denoising bundles: steps of test-time adaptation to the image by its Stein's unbiased risk
            estimate before restoring (:func:`monai_medgen.tasks.adaptation.sure_adapt`); 0: off; default: the
            bundle's inferer setting.
    """

    sampler: str | None = None
    num_steps: int | None = None
    num_samples: int = 1
    seed: int = 0
    factor: float | tuple | list | None = None
    channels_last: bool = False
    autocast: str | None = None
    compile: bool | str = False
    adapt_steps: int | None = None

    def with_defaults(self, bundle: LoadedBundle) -> RestoreOptions:
        """These options with every None replaced by the bundle's default."""
        factor = self.factor
        if factor is None:
            factor = bundle.get("factor", 4.0) if bundle.task == "sr" else 1.0
        return dataclasses.replace(
            self,
            sampler=self.sampler or str(bundle.get("sampler", "dpm++")),
            num_steps=int(self.num_steps or bundle.get("num_steps", 20)),
            factor=factor,
        )


def _patch_settings(bundle: LoadedBundle) -> dict:
    """A 3D model's patch inference settings from its inference.yaml (none for 2D models)."""
    if bundle.spatial_dims != 3:
        return {}
    return {
        "patch_size": bundle.get("patch_size", (64, 64, 64)),
        "overlap": float(bundle.get("overlap", 0.25)),
        "sw_batch_size": int(bundle.get("sw_batch_size", 1)),
    }


def restore(
    bundle: LoadedBundle,
    image: MetaTensor,
    mask: MetaTensor | None = None,
    options: RestoreOptions | None = None,
    verbose: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[MetaTensor, MetaTensor | None]:
    """Restore ``image`` (1, H, W) or (1, H, W, D) in any units with a restoration bundle: ``(mean, std or None)``
    on the output grid (the input's, or the finer one for super-resolution) in the input's units and world space.

    Args:
        bundle: from :func:`~monai_medgen.pipelines.load_bundle` (a bundle with a ``task``).
        mask: inpainting (required there, refused otherwise), the image's grid, > 0 = missing.
        options: :class:`RestoreOptions`; the bundle's defaults fill what is None.
        verbose: one progress bar over the volume; ``progress(done, total)`` is called as the work advances.

    Raises:
        ValueError: naming the argument, for a bundle that does not restore, a mask missing or not wanted, or an
            image or mask that does not fit (see :func:`monai_medgen.restoration.restore_image`).
    """
    if bundle.task not in TASK_NAMES or bundle.generative:
        raise ValueError(f"bundle {bundle.name} generates images; it does not restore them.")
    if bundle.task == "inpaint" and mask is None:
        raise ValueError(
            f"mask is required: bundle {bundle.name} inpaints (a 0/1 image on the image's grid, 1 = missing)."
        )
    if bundle.task != "inpaint" and mask is not None:
        raise ValueError(f"mask is for inpainting bundles only; bundle {bundle.name} does {TASK_NAMES[bundle.task]}.")
    o = (options or RestoreOptions()).with_defaults(bundle)
    if isinstance(bundle.inferer, ResidualDiffusionInferer):  # the blind residual bundles: straight to their sampler
        img = check_image(image)
        if int(o.num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1, got {o.num_samples}.")
        if o.adapt_steps and bundle.task != "denoise":
            raise ValueError(
                f"adapt_steps applies to denoising bundles only; bundle {bundle.name} does {TASK_NAMES[bundle.task]}."
            )
        if bundle.inferer.family != bundle.task:
            raise ValueError(
                f"task {bundle.task!r} does not match the model, which restores {bundle.inferer.family!r}."
            )
        return restore_residual(
            bundle.network,
            bundle.inferer,
            img,
            mask=check_mask(mask, img) if bundle.task == "inpaint" else None,
            factor=o.factor,
            num_steps=o.num_steps,
            num_samples=int(o.num_samples),
            seed=o.seed,
            sampler=o.sampler,
            device=bundle.device,
            verbose=verbose,
            speed={"channels_last": o.channels_last, "autocast": o.autocast, "compile": o.compile},
            progress=progress,
            adapt_steps=o.adapt_steps,
        )
    if o.adapt_steps:
        raise ValueError(f"adapt_steps applies to the blind denoising bundles only, not to {bundle.name}.")
    return restore_image(
        bundle.network,
        bundle.inferer,
        bundle.task,
        image,
        mask=mask,
        factor=o.factor,
        sampler=o.sampler,
        num_steps=o.num_steps,
        num_samples=o.num_samples,
        seed=o.seed,
        device=bundle.device,
        verbose=verbose,
        channels_last=o.channels_last,
        autocast=o.autocast,
        compile=o.compile,
        progress=progress,
        **_patch_settings(bundle),
    )


def restoration_provenance(
    bundle: LoadedBundle, options: RestoreOptions, input_checksum: str = "", extra: dict | None = None
) -> io.Provenance:
    """The provenance of :func:`restore`'s result (model, bundle version, task, sampler, steps, seed, input
    checksum; ``num_samples``, ``factor``, a denoising bundle's ``adapt_steps`` and any ``extra`` entries)."""
    o = options.with_defaults(bundle)
    factor = o.factor if np.isscalar(o.factor) else [float(f) for f in o.factor]
    return io.Provenance(
        model=bundle.name,
        bundle_version=bundle.version,
        task=TASK_NAMES[bundle.task],
        sampler=o.sampler,
        steps=int(o.num_steps),
        seed=int(o.seed),
        input_checksum=input_checksum,
        extra={"num_samples": int(o.num_samples), "factor": factor, **_adaptation(bundle, o), **(extra or {})},
    )


def _adaptation(bundle: LoadedBundle, o: RestoreOptions) -> dict:
    """``{"adapt_steps": K}`` for a denoising bundle (the steps of test-time adaptation it ran), else nothing."""
    if bundle.task != "denoise" or not hasattr(bundle.inferer, "adapt_steps"):
        return {}
    return {"adapt_steps": int(bundle.inferer.adapt_steps if o.adapt_steps is None else o.adapt_steps)}
