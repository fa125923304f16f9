"""One generation for every front-end: samples of a generative bundle (2D or 3D VDM, latent VDM, class-conditional
DDPM) and one rule for where they lie in the world.

The geometry rule (:func:`generation_affine`), the same for ``monai-medgen generate``, the MONAI Label app and the
bundles' ``inference.yaml``:

- samples have the model's trained size (``image_size`` of the bundle; the latent model's training volume), never
  a size taken from a reference, so the network always works at the scale it learned;
- with a reference image they cover its field of view: the reference's orientation, isotropic voxels just large
  enough for the sample to span the reference's extent on every axis (in-plane for a 2D model), centred on the
  reference's centre; a 2D model's slices are one reference slice apart around its middle slice;
- without one they lie in the training geometry when the model recorded it (the latent model: its training
  volume's affine), else ``spacing`` mm voxels centred on the origin.

A model may be a **cascade** (Ho et al. 2021, cascaded diffusion models): its network samples whole images at a
coarse size and an :class:`Upsampler` (a residual super-resolution diffusion model, data-consistent) brings them to
``factor`` times that size; the output size and ``spacing`` are then those of the fine grid.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import to_affine_nd

from monai_medgen import io
from monai_medgen.bundle.workflow import draw_samples, save_synthetic_nifti
from monai_medgen.engines import unwrap_network
from monai_medgen.handlers import save_gif, save_grid_png
from monai_medgen.inferers import ConditionalDiffusionInferer
from monai_medgen.networks import size_multiple
from monai_medgen.pipelines.bundles import LoadedBundle
from monai_medgen.restoration import peak_memory_mb

__all__ = [
    "GenerateOptions",
    "Generated",
    "GenerativeModel",
    "Upsampler",
    "generate",
    "generate_files",
    "generation_affine",
    "model_of",
    "sample_images",
    "sample_model",
    "write_generated",
]


def _sizes(image_size, dims: int) -> tuple[int, ...]:
    size = (int(image_size),) * dims if np.isscalar(image_size) else tuple(int(s) for s in image_size)
    if len(size) != dims or min(size) < 1:
        raise ValueError(f"image_size must be a positive int or {dims} of them for a {dims}D model, got {image_size}.")
    return size


@dataclasses.dataclass(frozen=True)
class GenerateOptions:
    """The options of one generation, as every front-end passes them; None takes the bundle's default.

    Attributes:
        num_samples: how many images (2D) or volumes (3D).
        sampler: ``"ancestral"``, ``"ddim"`` or ``"dpm++"`` (default: the bundle's ``sampler``).
        num_steps: network calls per sample (default: the bundle's ``num_steps``).
        seed: the same seed gives the same samples.
        class_label: the class of a class-conditional model; ``guidance_scale`` > 0 for classifier-free guidance.
        image_size: sample size (default: the model's trained size); a number or one per axis.
        batch_size: samples per network batch (default: the bundle's ``batch_size``, at most ``num_samples``).
        num_frames: > 0: that many intermediate steps of the first batch come back for an animation.
    """

    num_samples: int = 8
    sampler: str | None = None
    num_steps: int | None = None
    seed: int = 0
    class_label: int | None = None
    guidance_scale: float = 0.0
    image_size: int | Sequence[int] | None = None
    batch_size: int | None = None
    num_frames: int = 0

    def __post_init__(self) -> None:
        if int(self.num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}.")
        if self.batch_size is not None and int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")
        if int(self.num_frames) < 0:
            raise ValueError(f"num_frames must be >= 0, got {self.num_frames}.")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}.")

    def with_defaults(self, bundle: LoadedBundle | None = None) -> GenerateOptions:
        """These options with every None replaced by the bundle's default (without a bundle: ancestral, 256 steps,
        batches of at most 16)."""
        get = bundle.get if bundle is not None else (lambda key, default: default)
        return dataclasses.replace(
            self,
            sampler=self.sampler or str(get("sampler", "ancestral")),
            num_steps=int(self.num_steps or get("num_steps", 256)),
            batch_size=min(int(self.num_samples), int(self.batch_size or get("batch_size", 16))),
        )


@dataclasses.dataclass
class Upsampler:
    """The second stage of a cascaded generator: ``factor`` x super-resolution of whole coarse samples by a residual
    super-resolution diffusion model (a ``cddpm_super_resolution_2d`` bundle), consistent with the coarse sample: the
    output, area-downsampled by ``factor``, equals it (range-null-space projection after every step).

    Attributes:
        network, inferer: the super-resolution model (family ``"sr"``).
        factor: integer upsampling factor per axis.
        num_steps, start_time: its residual sampler (:class:`~monai_medgen.tasks.ResidualRestorer`).
        name: the super-resolution bundle, for the provenance.
    """

    network: torch.nn.Module
    inferer: object
    factor: int
    num_steps: int = 2
    start_time: float = 0.5
    name: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.factor, bool) or int(self.factor) != self.factor or int(self.factor) < 2:
            raise ValueError(f"factor must be an integer >= 2, got {self.factor!r}.")
        self.factor = int(self.factor)

    @classmethod
    def from_bundle(cls, folder: str | os.PathLike, factor: int, device: str | torch.device = "cpu") -> Upsampler:
        """The super-resolution bundle in ``folder`` (its weights, network, inferer and sampler settings).

        Raises:
            ValueError: naming ``upsampler_bundle`` when ``folder`` is not a super-resolution bundle."""
        from monai_medgen.tasks.loading import load_restoration_bundle

        try:
            b = load_restoration_bundle(folder, device=device)
        except (OSError, KeyError) as e:  # no such folder or weights; a config without a restoration family
            raise ValueError(
                f"upsampler_bundle {str(folder)!r}: the cascade needs a super-resolution bundle there "
                f"(cddpm_super_resolution_2d, shipped beside this bundle): {e}"
            ) from e
        if b.family != "sr":
            raise ValueError(
                f"upsampler_bundle {str(folder)!r} restores {b.family!r}; expected a super-resolution bundle."
            )
        return cls(b.network, b.inferer, factor, b.num_steps, b.start_time, b.name)

    def __call__(self, coarse: torch.Tensor, seed: int = 0, batch_size: int = 16) -> torch.Tensor:
        """(N, 1, h, w) coarse samples in [0, 1] -> (N, 1, factor h, factor w) in [0, 1]; the same ``seed`` gives
        the same result, each sample independent of the batching."""
        from monai_medgen.tasks.operators import SuperResolution
        from monai_medgen.tasks.sampling import ResidualRestorer

        op = SuperResolution(float(self.factor))
        restorer = ResidualRestorer(self.inferer, self.network, "sr", self.num_steps, self.start_time)
        device = next(self.network.parameters()).device
        fine = [s * self.factor for s in coarse.shape[2:]]
        out = []
        for start in range(0, len(coarse), int(batch_size)):
            low = coarse[start : start + int(batch_size)].to(device).float()
            g = [torch.Generator(device=device).manual_seed(int(seed) * 100003 + start + k) for k in range(len(low))]
            with torch.no_grad():
                hi, _ = restorer(
                    op.base(low, fine), project=lambda x, y=low: op.project(x, y), generator=g, value_range=(0.0, 1.0)
                )
            out.append(hi.clamp(0, 1).cpu())
        return torch.cat(out)


@dataclasses.dataclass
class GenerativeModel:
    """What generation needs of a model: a bundle's (:func:`model_of`) or one a bundle config builds.

    Attributes:
        network, inferer: the trained network and its :class:`~monai_medgen.inferers.VDMInferer`,
            :class:`~monai_medgen.inferers.LatentVDMInferer` or :class:`~monai_medgen.inferers.ConditionalDiffusionInferer`.
        name, version: for the provenance.
        image_size: the trained sample size (a number or one per axis).
        spacing: mm per voxel of the training data, for samples without a reference or ``trained_affine``.
        trained_affine: the training data's affine when the model recorded it (the latent model).
        device: where the network is.
        upsampler: a cascade's second stage (:class:`Upsampler`): ``network`` samples at ``image_size``, the
            output is ``upsampler.factor`` times larger; ``spacing`` is then the output's.
    """

    network: torch.nn.Module
    inferer: object
    name: str
    image_size: int | Sequence[int]
    spacing: float = 1.0
    trained_affine: np.ndarray | None = None
    version: str = ""
    device: str | torch.device = "cpu"
    upsampler: Upsampler | None = None

    @property
    def size(self) -> tuple[int, ...]:
        """The trained size, one value per spatial axis of the network."""
        return _sizes(self.image_size, int(getattr(unwrap_network(self.network), "spatial_dims", 2)))

    @property
    def output_size(self) -> tuple[int, ...]:
        """The size of the samples: the trained size, times the upsampler's factor for a cascade."""
        f = self.upsampler.factor if self.upsampler is not None else 1
        return tuple(s * f for s in self.size)

    @property
    def num_classes(self) -> int | None:
        return getattr(unwrap_network(self.network), "num_classes", None)


@dataclasses.dataclass
class Generated:
    """Samples and where they lie.

    Attributes:
        images: (N, C, *size) in [0, 1] (the training scale; C = 1, or 2 for a complex-valued model: real, imaginary
            mapped from [-1, 1] as every channel is).
        affine: 4x4 world geometry of every sample (:func:`generation_affine`).
        frames: intermediate images of the first batch (each (B, 1, *size) in [-1, 1]) or None.
        provenance: model, bundle version, sampler, steps, seed, reference checksum, class and guidance.
    """

    images: torch.Tensor
    affine: np.ndarray
    frames: list[torch.Tensor] | None
    provenance: io.Provenance


def generation_affine(
    reference: MetaTensor | None,
    size: Sequence[int],
    num_slices: int = 1,
    spacing: float = 1.0,
    trained_affine: np.ndarray | None = None,
    trained_size: Sequence[int] | None = None,
) -> np.ndarray:
    """4x4 affine of a generated sample of spatial ``size`` (2 or 3 values); for a 2D ``size`` the geometry of a
    stack of ``num_slices`` such slices (one slice: ``num_slices`` 1).  The rule is the module's (see above).

    Args:
        reference: (C, H, W[, D]) image whose field of view the sample covers, or None.
        spacing: mm per voxel without a reference or a ``trained_affine``.
        trained_affine, trained_size: the geometry of the training data of that size, when the model recorded it;
            another ``size`` keeps its voxels and centre.
    """
    size = [int(s) for s in size]
    n = int(num_slices) if len(size) == 2 else size[2]
    grid = np.asarray([size[0], size[1], n], dtype=np.float64)
    if reference is None:
        if trained_affine is not None:
            affine = np.asarray(trained_affine, dtype=np.float64).copy()
            trained = np.asarray(trained_size if trained_size is not None else grid, dtype=np.float64)
            affine[:3, 3] += affine[:3, :3] @ (0.5 * (trained - grid))
            return affine
        affine = np.diag([float(spacing)] * 3 + [1.0])
        affine[:3, 3] = -float(spacing) * (grid - 1) / 2
        return affine
    ref = np.asarray(to_affine_nd(3, np.asarray(reference.affine, dtype=np.float64)), dtype=np.float64)
    ref_shape = np.asarray(([int(s) for s in reference.shape[1:]] + [1, 1])[:3], dtype=np.float64)
    ref_spacing = np.linalg.norm(ref[:3, :3], axis=0)
    extent = ref_shape * ref_spacing
    stack = len(size) == 2
    step = float(np.max(extent[:2] / grid[:2] if stack else extent / grid))  # mm per generated voxel
    scale = np.full(3, step) / ref_spacing
    if stack and ref_shape[2] > 1:
        scale[2] = 1.0  # slices one reference slice apart
    to_ref = np.diag([*scale, 1.0])
    to_ref[:3, 3] = (ref_shape - 1) / 2 - scale * (grid - 1) / 2
    return ref @ to_ref


def _padded(network, inferer, size: Sequence[int]) -> list[int]:
    """The grid the model samples ``size`` on: each side up to a multiple of the U-Net's (times a latent model's
    downsampling); the samples are cropped back to ``size``."""
    m = size_multiple(network) * int(getattr(inferer, "downsample_factor", 1))
    return [-(-int(s) // m) * m for s in size]


def sample_images(
    network: torch.nn.Module,
    inferer,
    size: Sequence[int],
    options: GenerateOptions,
    device: torch.device | str,
    verbose: bool = True,
) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """``options.num_samples`` samples (N, 1, *size) in [-1, 1] from ``inferer.sample(noise, network, ...)``,
    drawn in batches on a grid the network can halve and cropped back to ``size``; and the intermediate images
    of the first batch when ``options.num_frames`` > 0 (else None).  ``options`` must have its defaults filled."""
    device = torch.device(device)
    padded = _padded(network, inferer, size)
    crop = (Ellipsis, *(slice((p - s) // 2, (p - s) // 2 + s) for p, s in zip(padded, size)))
    generator = torch.Generator(device=device).manual_seed(int(options.seed))
    labels = None
    if options.class_label is not None:
        labels = torch.full((1,), int(options.class_label), dtype=torch.long, device=device)
    steps = int(options.num_steps)
    network.eval()
    # image channels: 1, or the network's own for a conditional DDPM on several channels (complex MR as real, imag)
    channels = (
        getattr(unwrap_network(network), "in_channels", 1) if isinstance(inferer, ConditionalDiffusionInferer) else 1
    )
    samples, frames = [], None
    for start in range(0, int(options.num_samples), int(options.batch_size)):
        b = min(int(options.batch_size), int(options.num_samples) - start)
        want_frames = options.num_frames > 0 and frames is None
        out = draw_samples(
            inferer,
            network,
            (b, channels, *padded),
            steps,
            generator,
            device,
            sampler=options.sampler,
            class_labels=None if labels is None else labels.expand(b),
            guidance_scale=float(options.guidance_scale),
            save_intermediates=want_frames,
            intermediate_steps=max(1, steps // max(1, int(options.num_frames))),
            verbose=verbose,
        )
        if want_frames:
            out, frames = out
            frames = [f[crop].cpu() for f in frames]
        samples.append(out[crop].float().cpu())
    return torch.cat(samples), frames


def sample_model(
    model: GenerativeModel, size: Sequence[int], options: GenerateOptions, verbose: bool = True
) -> tuple[torch.Tensor, list[torch.Tensor] | None, str]:
    """``(images (N, C, *size) in [0, 1], frames or None, how)`` from ``model`` (``options`` with defaults filled):
    :func:`sample_images`, and for a cascade the coarse samples at ``size / factor`` brought to ``size`` by its
    upsampler (``how`` says so; "" otherwise).  The frames of a cascade are the coarse chain shown at ``size``
    (nearest) followed by the final samples."""
    up = model.upsampler
    factor = up.factor if up is not None else 1
    if any(int(s) % factor for s in size):
        raise ValueError(
            f"image_size {list(size)} must be a multiple of {factor}: {model.name} samples whole images at 1/{factor} "
            "of the size and super-resolves them."
        )
    coarse = tuple(int(s) // factor for s in size)
    images, frames = sample_images(model.network, model.inferer, coarse, options, model.device, verbose)
    images = ((images.clamp(-1, 1) + 1) / 2).clamp(0, 1)
    if up is None:
        return images, frames, ""
    images = up(images, seed=int(options.seed))
    if frames is not None:
        frames = [torch.nn.functional.interpolate(f, scale_factor=factor, mode="nearest") for f in frames]
        frames.append(images[: frames[0].shape[0]] * 2 - 1)
    how = (
        f"whole {'x'.join(map(str, coarse))} samples, then {factor}x super-resolution by {up.name or 'an SR model'} "
        f"({up.num_steps} network calls, start time {up.start_time:g}; area-downsampled it gives the coarse sample)"
    )
    return images, frames, how


def model_of(bundle: LoadedBundle) -> GenerativeModel:
    """A generative bundle's model and its training geometry (a latent bundle's ``model_info``, read with its state:
    the latents' scale factor).  A bundle whose inference config sets ``cascade: true`` generates with its coarse
    model (``coarse_network`` with the weights of ``coarse_model_path``: whole images at ``coarse_size``) and its
    ``upsampler`` (:class:`Upsampler`)."""
    if not bundle.generative:
        raise ValueError(f"bundle {bundle.name} restores images; it does not generate them.")
    if "cascade" in bundle.parser and bool(bundle.get("cascade")):
        from monai_medgen.ood import load_layout_model

        coarse = load_layout_model(bundle, "coarse")  # a whole-slice VDM read like the score's layout model
        if coarse is None:
            raise ValueError(
                f"bundle {bundle.name} sets cascade: true but has no coarse model (coarse_network and the weights "
                f"{bundle.get('coarse_model_path') if 'coarse_model_path' in bundle.parser else 'coarse_model_path'})."
            )
        return GenerativeModel(
            network=coarse.network,
            inferer=coarse.inferer,
            name=bundle.name,
            image_size=coarse.size,
            spacing=float(bundle.get("spacing", 1.0)),
            version=bundle.version,
            device=bundle.device,
            upsampler=bundle.get("upsampler"),
        )
    info = bundle.get("model_info") if "model_info" in bundle.parser else None
    info = info if isinstance(info, dict) else {}
    return GenerativeModel(
        network=bundle.network,
        inferer=bundle.inferer,
        name=bundle.name,
        image_size=info.get("image_size") or bundle.get("image_size") or 128,
        spacing=float(bundle.get("spacing", 1.0)),
        trained_affine=np.asarray(info["affine"], dtype=np.float64) if "affine" in info else None,
        version=bundle.version,
        device=bundle.device,
    )


def generate(
    model: GenerativeModel | LoadedBundle,
    options: GenerateOptions | None = None,
    reference: MetaTensor | None = None,
    reference_checksum: str = "",
    verbose: bool = True,
) -> Generated:
    """Generate with a generative bundle (from :func:`~monai_medgen.pipelines.load_bundle`) or a
    :class:`GenerativeModel`.

    Args:
        options: :class:`GenerateOptions`; the bundle's defaults fill what is None.
        reference: an image read with :func:`monai_medgen.io.read_image`; the samples cover its field of view
            (:func:`generation_affine`); its checksum (``reference_checksum``) goes into the provenance.

    Raises:
        ValueError: naming the option, for a bundle that restores, a class label the model does not have, or
            guidance without a class.
    """
    o = (options or GenerateOptions()).with_defaults(model if isinstance(model, LoadedBundle) else None)
    if isinstance(model, LoadedBundle):
        model = model_of(model)
    num_classes = model.num_classes
    if o.class_label is not None and (num_classes is None or not 0 <= int(o.class_label) < int(num_classes)):
        expected = "no class label (an unconditional model)" if num_classes is None else f"0..{num_classes - 1}"
        raise ValueError(f"class_label {o.class_label} is not a class of {model.name}: expected {expected}.")
    if o.guidance_scale > 0 and o.class_label is None:
        raise ValueError("guidance_scale > 0 needs class_label (the class to guide towards).")
    out_size = model.output_size if o.image_size is None else _sizes(o.image_size, len(model.size))
    images, frames, how = sample_model(model, out_size, o, verbose)
    extra = {"size": list(out_size), "reference": "its field of view" if reference is not None else "none"}
    if how:
        extra["cascade"] = how
    affine = generation_affine(reference, out_size, 1, model.spacing, model.trained_affine, model.output_size)
    if o.class_label is not None:
        extra.update(class_label=int(o.class_label), guidance_scale=float(o.guidance_scale))
    if hasattr(model.inferer, "latent_shape"):  # a latent model: the latents it sampled and the autoencoder
        extra.update(
            latent_shape=list(model.inferer.noise_shape((1, 1, *_padded(model.network, model.inferer, out_size)))[1:]),
            scale_factor=model.inferer.scale_factor,
            autoencoder_sha256=getattr(model.inferer.autoencoder, "sha256", ""),
        )
    provenance = io.Provenance(
        model=model.name,
        bundle_version=model.version,
        task="generate",
        sampler=str(o.sampler),
        steps=int(o.num_steps),
        seed=int(o.seed),
        input_checksum=reference_checksum,
        extra=extra,
    )
    return Generated(images, affine, frames, provenance)


def generate_files(
    model: GenerativeModel,
    output_dir: str | os.PathLike,
    options: GenerateOptions | None = None,
    reference_image: str | os.PathLike | None = None,
    prefix: str = "sample",
) -> dict:
    """:func:`generate` then :func:`write_generated` into ``output_dir``, with the reference read from a file (NIfTI,
    NRRD, MHA or DICOM series; '' or None: none): what the bundles' ``inference.yaml`` run per item."""
    has_reference = reference_image is not None and str(reference_image).strip() not in ("", "None")
    reference = io.read_image(reference_image) if has_reference else None
    checksum = io.sha256_of(reference_image) if has_reference else ""
    start = time.perf_counter()
    result = generate(model, options, reference, checksum)
    seconds = time.perf_counter() - start
    written = write_generated(result, output_dir, prefix)
    size = "x".join(str(s) for s in result.images.shape[2:])
    latents = result.provenance.extra.get("latent_shape")
    latents = f" from latents {'x'.join(map(str, latents))}" if latents else ""
    kind = "volume(s)" if result.images.ndim == 5 else "image(s)"
    print(
        f"{model.name}: sampled {len(written['nifti'])} {kind} of {size} voxels{latents} in {seconds:.1f} s; peak "
        f"resident memory {peak_memory_mb():.0f} MB (torch threads {torch.get_num_threads()}); written to {output_dir}",
        flush=True,
    )
    return {**written, "seconds": seconds, "size": list(result.images.shape[2:])}


def write_generated(result: Generated, output_dir: str | os.PathLike, prefix: str = "sample") -> dict:
    """Write ``{prefix}_{i:03d}_synthetic.nii.gz`` (marked synthetic, provenance sidecar, the result's affine),
    ``samples.png`` (volumes: three orthogonal middle slices) and, with frames, ``sampling.gif`` into
    ``output_dir``.  Returns ``{"grid", "gif" (or None), "nifti": [paths]}``."""
    os.makedirs(str(output_dir), exist_ok=True)
    x = result.images * 2 - 1
    grid = save_grid_png(x, os.path.join(str(output_dir), "samples.png"))
    gif = None
    if result.frames:
        gif = save_gif([*result.frames, x[: result.frames[0].shape[0]]], os.path.join(str(output_dir), "sampling.gif"))
    nifti = save_synthetic_nifti(
        result.images, output_dir, affine=result.affine, prefix=prefix, provenance=result.provenance
    )
    return {"grid": grid, "gif": gif, "nifti": nifti}
