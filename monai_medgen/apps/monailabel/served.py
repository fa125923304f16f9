"""What the MONAI Label app serves, written without MONAI Label so that the main test suite checks it.

- :func:`find_bundles`, :func:`load_served_model`: the bundles of a folder
  (:func:`monai_medgen.pipelines.default_bundles_dir` by default) loaded as ``monai-medgen`` loads them
  (:func:`monai_medgen.pipelines.load_bundle`: their ``configs/inference.yaml`` and checksum-verified
  ``models/model.pt``).
- :class:`ServedModel`: one bundle as an infer task: its options for ``/info/`` (:meth:`~ServedModel.config`),
  the checks of a request's options (:meth:`~ServedModel.parse_options`), and the work itself through the
  package's own functions (:func:`monai_medgen.pipelines.restore`, :func:`monai_medgen.pipelines.sample_model`).
- :func:`read_upload`, :func:`read_mask`: uploaded images read with :func:`monai_medgen.io.read_image`, with
  errors that name the upload (not the server's temporary file).
- :func:`generation_affine` (from :mod:`monai_medgen.pipelines`, the one rule of every front-end): where a generated
  slice stack lies in the world: the reference image's in-plane field of view, centred on its middle slice.

Every user error is a :class:`RequestError` (a ``ValueError``) whose message names the option or input and what
was expected; the app turns it into an HTTP 4xx answer.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from monai.data import MetaTensor

from monai_medgen import io
from monai_medgen.inferers import ConditionalDiffusionInferer, VDMInferer
from monai_medgen.limits import MAX_SLICE_PIXELS, MAX_VOXELS, SAMPLERS, TASK_NAMES
from monai_medgen.pipelines import (
    BundleError,
    GenerateOptions,
    GenerativeModel,
    LoadedBundle,
    RestoreOptions,
    class_names,
    default_bundles_dir,
    find_bundles,
    generation_affine,
    load_bundle,
    model_of,
    restoration_provenance,
    restore,
    sample_model,
)

__all__ = [
    "BUNDLES_DIR",
    "LIMITS",
    "RequestError",
    "ServedModel",
    "find_bundles",
    "generation_affine",
    "load_served_model",
    "load_served_models",
    "read_mask",
    "read_upload",
]

logger = logging.getLogger(__name__)

#: where bundles are served from without '--conf bundles DIR' (see :func:`monai_medgen.pipelines.default_bundles_dir`)
BUNDLES_DIR = default_bundles_dir()
#: step limit of continuous-time models (a VDM is exact for any count; bounded for a shared server)
MAX_STEPS = 1000
#: inclusive ranges of the numeric options
LIMITS = {
    "seed": (0, 2**31 - 1),
    "num_samples": (1, 16),
    "adapt_steps": (0, 100),
    "guidance": (0.0, 20.0),
    "factor": (1.0, 8.0),
    "num_slices": (1, 64),
}
DEFAULT_NUM_SLICES = 8


class RequestError(ValueError):
    """A bad request: the message says which option or input is wrong and what was expected.

    Args:
        message: the text the client sees.
        status_code: HTTP status of the answer (400: bad option or input, 404: unknown model or image).
    """

    def __init__(self, message: str, status_code: int = 400):
        super().__init__(message)
        self.status_code = int(status_code)


def _one_line(message) -> str:
    text = str(message).split("Traceback (most recent call last)")[0]
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------
# option checks
# ---------------------------------------------------------------------------------------------
def _first(value):
    """A list option as published in ``/info/`` (MONAI Label merges the task's config into the request when the
    client leaves an option out) stands for its first entry."""
    return value[0] if isinstance(value, (list, tuple)) and len(value) > 0 else value


def _integer(value, name: str, low: int, high: int) -> int:
    text = f"{name} must be an integer in [{low}, {high}], got {value!r}."
    if isinstance(value, bool):
        raise RequestError(text)
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise RequestError(text) from None
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            raise RequestError(text)
        value = int(value)
    if not isinstance(value, int) or not low <= value <= high:
        raise RequestError(text)
    return int(value)


def _number(value, name: str, low: float, high: float) -> float:
    text = f"{name} must be a number in [{low:g}, {high:g}], got {value!r}."
    if isinstance(value, bool):
        raise RequestError(text)
    try:
        out = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise RequestError(text) from None
    if not (math.isfinite(out) and low <= out <= high):
        raise RequestError(text)
    return out


def _numbers(value, name: str) -> list:
    """``4``, ``"4"``, ``"1,1,4"``, ``[1, 1, 4]`` -> list of floats (checked by the caller)."""
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",") if p != ""]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = [value]
    if not parts:
        raise RequestError(f"{name} must be a number or numbers separated by commas, got {value!r}.")
    return [_number(p, name, *LIMITS[name]) for p in parts]


# ---------------------------------------------------------------------------------------------
# the served models
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ServedModel:
    """A bundle loaded for serving.

    Attributes:
        name: the bundle folder's name (the model name in ``/info/`` and ``/infer/<name>``).
        task: ``"sr"``, ``"denoise"``, ``"inpaint"`` (restoration bundles) or ``"generate"``.
        spatial_dims: 2 (slice by slice; a volume goes through along its third axis) or 3 (whole volumes).
        network, inferer: the trained model as the bundle's ``inference.yaml`` builds it.
        sampler, num_steps, factor, guidance_scale: the bundle's defaults.
        max_steps: largest ``steps`` accepted (T of a discrete model).
        class_names: names of the classes of a class-conditional model (empty otherwise).
        image_size, spacing: generated slices' size (pixels) and default spacing (mm).
        max_voxels: largest restored output (voxels) this server makes.
    """

    name: str
    root: Path
    version: str
    task: str
    spatial_dims: int
    network: torch.nn.Module
    inferer: object
    device: str = "cpu"
    sampler: str = "dpm++"
    num_steps: int = 20
    max_steps: int = MAX_STEPS
    factor: float | list = 1.0
    patch_size: Sequence[int] | None = (64, 64, 64)
    overlap: float = 0.25
    sw_batch_size: int = 1
    class_names: list = dataclasses.field(default_factory=list)
    guidance_scale: float = 0.0
    image_size: int = 64
    spacing: float = 1.0
    description: str = ""
    max_voxels: int = MAX_VOXELS
    bundle: LoadedBundle | None = None
    generative_model: GenerativeModel | None = None

    @property
    def generative(self) -> bool:
        return self.task == "generate"

    @property
    def adapts(self) -> bool:
        """A blind denoising bundle: it takes ``adapt_steps`` (test-time adaptation to the image)."""
        return self.task == "denoise" and hasattr(self.inferer, "adapt_steps")

    # ---- /info/ ----------------------------------------------------------------------------
    def config(self) -> dict:
        """Options published in ``/info/`` (``config`` of the model) with their defaults; a list offers choices,
        the first being the default."""
        cfg: dict = {
            "sampler": [self.sampler] + [s for s in SAMPLERS if s != self.sampler],
            "steps": int(self.num_steps),
            "seed": 0,
        }
        if self.generative:
            if self.spatial_dims == 2:
                cfg["num_slices"] = DEFAULT_NUM_SLICES
            if self.class_names:
                cfg["class"] = list(self.class_names)
                cfg["guidance"] = float(self.guidance_scale)
        else:
            cfg["num_samples"] = 1
            if self.adapts:
                cfg["adapt_steps"] = int(self.inferer.adapt_steps)
            if self.task == "sr":
                f = self.factor
                cfg["factor"] = ",".join(f"{float(v):g}" for v in f) if isinstance(f, (list, tuple)) else float(f)
        return cfg

    def describe(self) -> dict:
        """What a client needs beyond the options (``/info/`` -> ``models.<name>.medgen``)."""
        limits = {"steps": [1, int(self.max_steps)], "seed": list(LIMITS["seed"])}
        if self.generative:
            if self.spatial_dims == 2:
                limits["num_slices"] = list(LIMITS["num_slices"])
            if self.class_names:
                limits["guidance"] = list(LIMITS["guidance"])
        else:
            limits["num_samples"] = list(LIMITS["num_samples"])
            if self.adapts:
                limits["adapt_steps"] = list(LIMITS["adapt_steps"])
            if self.task == "sr":
                limits["factor"] = list(LIMITS["factor"])
        return {
            "bundle": self.name,
            "version": self.version,
            "task": TASK_NAMES[self.task],
            "spatial_dims": int(self.spatial_dims),
            "needs_mask": self.task == "inpaint",
            "classes": list(self.class_names),
            "image_size": int(self.image_size) if self.generative else None,
            "limits": limits,
            "output": "float32 NIfTI (.nii.gz) marked synthetic (header descrip 'SYNTHETIC ...'), on the input's "
            "grid (a grid 'factor' times finer for super-resolution; for generation a stack of 'num_slices' "
            "generated slices, or one generated volume for a 3D model, in the input's field of view)",
            "uncertainty": "with num_samples > 1: params.medgen.uncertainty = {format: 'nii.gz', encoding: 'base64', "
            "data}: the per-voxel standard deviation of the samples on the output's grid",
        }

    # ---- requests --------------------------------------------------------------------------
    def parse_options(self, request: Mapping) -> dict:
        """The checked options of an infer request (defaults from the bundle for those left out).

        Raises:
            RequestError: naming the option, for an unknown sampler or class, or a number out of its range.
        """
        sampler = _first(request.get("sampler", self.sampler))
        if not isinstance(sampler, str) or sampler.strip().lower() not in SAMPLERS:
            raise RequestError(f"sampler must be one of {list(SAMPLERS)}, got {sampler!r}.")
        out = {
            "sampler": sampler.strip().lower(),
            "steps": _integer(request.get("steps", self.num_steps), "steps", 1, int(self.max_steps)),
            "seed": _integer(request.get("seed", 0), "seed", *LIMITS["seed"]),
        }
        if self.generative:
            if self.spatial_dims == 2:
                out["num_slices"] = _integer(
                    request.get("num_slices", DEFAULT_NUM_SLICES), "num_slices", *LIMITS["num_slices"]
                )
            if self.class_names:
                out["class_label"] = self._class_index(_first(request.get("class", self.class_names[0])))
                out["guidance"] = _number(request.get("guidance", self.guidance_scale), "guidance", *LIMITS["guidance"])
            else:
                if request.get("class") not in (None, "", []):
                    raise RequestError(
                        f"class: model {self.name} is unconditional, it takes no class; leave 'class' out."
                    )
                if request.get("guidance") not in (None, "", 0, 0.0):
                    raise RequestError(
                        f"guidance: model {self.name} is unconditional, guidance needs a class-conditional model."
                    )
            return out
        out["num_samples"] = _integer(request.get("num_samples", 1), "num_samples", *LIMITS["num_samples"])
        if self.adapts:
            default = int(self.inferer.adapt_steps)
            out["adapt_steps"] = _integer(request.get("adapt_steps", default), "adapt_steps", *LIMITS["adapt_steps"])
        elif request.get("adapt_steps") not in (None, "", 0, "0"):
            raise RequestError(
                f"adapt_steps: model {self.name} does {TASK_NAMES[self.task]}; it adapts to denoise only."
            )
        if self.task == "sr":
            out["factor"] = self._factor(request.get("factor", self.factor))
        return out

    def _class_index(self, value) -> int:
        names = [str(c).lower() for c in self.class_names]
        if isinstance(value, str) and value.strip().lower() in names:
            return names.index(value.strip().lower())
        expected = f"class must be one of {list(self.class_names)} (or an index 0..{len(names) - 1}), got {value!r}."
        if isinstance(value, bool):
            raise RequestError(expected)
        try:
            index = int(value.strip()) if isinstance(value, str) else value
        except ValueError:
            raise RequestError(expected) from None
        if isinstance(index, float) and index.is_integer():
            index = int(index)
        if not isinstance(index, int) or not 0 <= index < len(names):
            raise RequestError(expected)
        return index

    def _factor(self, value) -> float | list:
        values = _numbers(value, "factor")
        if self.spatial_dims == 2:
            if len(values) == 1:
                return values[0]
            if len(values) in (2, 3) and values[0] == values[1] and all(v == 1 for v in values[2:]):
                return values[0]
            raise RequestError(f"factor must be one number (in-plane) for the 2D model {self.name}, got {value!r}.")
        if len(values) == 1:
            return values * 3
        if len(values) != 3:
            raise RequestError(
                f"factor must be one number or 3 (one per axis, e.g. '1,1,4') for the 3D model {self.name}, got {value!r}."
            )
        return values

    def check_image(self, image: MetaTensor, what: str = "image") -> MetaTensor:
        """The input's dimensionality for this model: one channel; a 2D image or a volume (2D model, which goes
        slice by slice along the third axis); a volume with more than one slice (3D restoration model).  For a
        generative model the input only gives the geometry: any single-channel 2D image or volume."""
        spatial = tuple(int(s) for s in image.shape[1:])
        if image.shape[0] != 1:
            raise RequestError(
                f"{what} must have one channel (a scalar 2D image or 3D volume), got {image.shape[0]} channels "
                f"(shape {tuple(image.shape)}, channels first)."
            )
        if len(spatial) not in (2, 3):
            raise RequestError(f"{what} must be a 2D image or a 3D volume, got spatial shape {spatial}.")
        if self.spatial_dims == 3 and not self.generative and (len(spatial) != 3 or min(spatial) < 2):
            raise RequestError(
                f"{what} must be a volume (H, W, D) with more than one voxel along every axis for the 3D model "
                f"{self.name}, got spatial shape {spatial}."
            )
        if min(spatial[:2]) < 4:
            raise RequestError(f"{what} must be at least 4 x 4 voxels in-plane, got spatial shape {spatial}.")
        return image

    def check_output_size(self, image, factor=1.0, max_voxels: int | None = None) -> tuple:
        """The restored grid's shape; a :class:`RequestError` (naming ``factor`` when super-resolution makes it so
        large, else the image) when it is larger than the server restores (:data:`MAX_SLICE_PIXELS` per slice for a
        2D model, ``max_voxels`` (default :data:`MAX_VOXELS`) in all).

        Args:
            image: the input (C, *spatial) or its spatial shape (a tuple).
        """
        shape = tuple(int(n) for n in (image if isinstance(image, tuple) else image.shape[1:]))
        max_voxels = MAX_VOXELS if max_voxels is None else int(max_voxels)
        factors = list(factor) if isinstance(factor, (list, tuple)) else [float(factor)] * min(2, len(shape))
        factors = (factors + [1.0] * len(shape))[: len(shape)]
        out = tuple(int(round(n * f)) for n, f in zip(shape, factors))
        too_wide = self.spatial_dims == 2 and out[0] * out[1] > MAX_SLICE_PIXELS
        if not too_wide and math.prod(out) <= max_voxels:
            return out
        cube = round(max_voxels ** (1 / 3))
        limit = (
            f"slices of at most {MAX_SLICE_PIXELS} pixels (512 x 512) for this 2D model"
            if too_wide
            else f"at most {max_voxels} voxels" + (f" ({cube}^3)" if cube**3 == max_voxels else "") + " in all"
        )
        grid = " x ".join(str(n) for n in out)
        if out != shape:
            raise RequestError(
                f"factor {factor} would make a {grid} grid from the {shape} image; the server restores {limit}."
            )
        raise RequestError(f"image of {grid} voxels is too large: the server restores {limit}; crop or downsample it.")

    def work(self, options: Mapping, spatial_shape: Sequence[int] | None = None) -> float:
        """Network evaluations x voxels one request costs: ``steps x num_samples x`` the voxels the network sees
        (the output grid; for a 3D model the overlapping patches), twice that with classifier-free guidance.

        Args:
            options: checked options (:meth:`parse_options`).
            spatial_shape: the input's spatial shape (restoration; ignored for generation).
        """
        steps = int(options["steps"])
        if self.generative:
            size = int(self.image_size)
            voxels = (
                size**3 if self.spatial_dims == 3 else size * size * int(options.get("num_slices", DEFAULT_NUM_SLICES))
            )
            guided = 2 if self.class_names and float(options.get("guidance", 0.0)) > 0 else 1
            return float(steps * voxels * guided)
        out = self.check_output_size(tuple(int(n) for n in spatial_shape), options.get("factor", 1.0), max_voxels=2**62)
        if self.spatial_dims == 3 and self.patch_size is not None and len(out) == 3:
            voxels = 1
            for n, p in zip(out, self.patch_size):
                p = min(int(p), n)
                interval = max(1, int(p * (1 - float(self.overlap))))
                voxels *= (math.ceil((n - p) / interval) + 1) * p
        else:
            voxels = math.prod(out)
        return float(steps * int(options.get("num_samples", 1)) * voxels)

    def check_work(self, options: Mapping, spatial_shape: Sequence[int] | None, max_work: float) -> float:
        """:meth:`work`, or a :class:`RequestError` (400) naming what makes it larger than ``max_work``."""
        work = self.work(options, spatial_shape)
        if work <= float(max_work):
            return work
        if self.generative:
            what = f"steps {options['steps']}" + (
                f" x num_slices {options['num_slices']}" if "num_slices" in options else ""
            )
            what += f" x {int(self.image_size)}^{2 if self.spatial_dims == 2 else 3} voxels"
        else:
            grid = " x ".join(str(int(n)) for n in spatial_shape)
            what = f"steps {options['steps']} x num_samples {options.get('num_samples', 1)} x the {grid} image"
            if options.get("factor", 1.0) not in (1, 1.0, [1.0, 1.0, 1.0]):
                what += f" at factor {options['factor']}"
        raise RequestError(
            f"request too large: {what} is {work:.3g} voxel-evaluations of the network; the server runs at most "
            f"{float(max_work):.3g} per request. Use fewer steps or samples, or a smaller image."
        )

    # ---- the work ---------------------------------------------------------------------------
    def restore(
        self, image: MetaTensor, options: Mapping, mask: MetaTensor | None = None, input_checksum: str = ""
    ) -> tuple[MetaTensor, MetaTensor | None, io.Provenance]:
        """Restore ``image`` with :func:`monai_medgen.pipelines.restore`: ``(mean, std or None, provenance)`` on the
        output grid, intensities in the input's unit."""
        if self.generative:
            raise RequestError(f"model {self.name} generates images; it does not restore them.")
        self.check_image(image)
        if self.task == "inpaint" and mask is None:
            raise RequestError(
                f"label: model {self.name} inpaints, so it needs a mask: upload a 0/1 'label' image on the image's "
                "grid (1 = missing) or save one for the image in the datastore."
            )
        if self.task != "inpaint" and mask is not None:
            raise RequestError(
                f"label: a mask is for inpainting models only; model {self.name} does {TASK_NAMES[self.task]}."
            )
        factor = options.get("factor", 1.0)
        self.check_output_size(image, factor, self.max_voxels)
        chosen = RestoreOptions(
            sampler=options["sampler"],
            num_steps=options["steps"],
            num_samples=options["num_samples"],
            seed=options["seed"],
            factor=factor,
            adapt_steps=options.get("adapt_steps"),
        )
        try:
            mean, std = restore(self.bundle, image, mask, chosen)
        except ValueError as e:  # the package's argument checks: the image or mask does not fit
            raise RequestError(_one_line(e)) from e
        provenance = restoration_provenance(
            self.bundle, chosen, input_checksum, {"served_by": "monai_medgen MONAI Label app"}
        )
        return mean, std, provenance

    @torch.no_grad()
    def generate(
        self, options: Mapping, reference: MetaTensor | None = None, input_checksum: str = ""
    ) -> tuple[MetaTensor, io.Provenance]:
        """A stack of ``num_slices`` generated slices (2D model), (1, S, S, num_slices), or one generated volume (3D
        model), (1, S, S, S), in [0, 1], placed by :func:`generation_affine` in the reference's field of view (or
        centred on the origin at the bundle's spacing without one)."""
        if not self.generative:
            raise RequestError(f"model {self.name} restores images; it does not generate them.")
        volume_model = self.spatial_dims == 3
        size = int(self.image_size)
        n = size if volume_model else int(options["num_slices"])
        chosen = GenerateOptions(
            num_samples=1 if volume_model else n,
            sampler=options["sampler"],
            num_steps=int(options["steps"]),
            seed=int(options["seed"]),
            class_label=int(options["class_label"]) if self.class_names else None,
            guidance_scale=float(options.get("guidance", 0.0)),
            batch_size=1 if volume_model else n,
        )
        # the bundle's own sampler (a cascade for vdm_brain_mri_2d), else the served network itself
        model = self.generative_model or GenerativeModel(
            self.network, self.inferer, self.name, size, device=self.device
        )
        x, _, how = sample_model(model, (size,) * self.spatial_dims, chosen, False)
        volume = (x[0] if volume_model else x[:, 0].permute(1, 2, 0)[None]).contiguous()
        affine = generation_affine(reference, (size,) * self.spatial_dims, n, self.spacing)
        extra = {
            "shape": [size, size, n],
            "reference": "the input image's field of view" if reference is not None else "none (centred on the origin)",
            "served_by": "monai_medgen MONAI Label app",
        }
        if how:
            extra["cascade"] = how
        if not volume_model:
            extra["num_slices"] = n
        if self.class_names:
            extra.update(
                class_label=int(options["class_label"]),
                class_name=str(self.class_names[int(options["class_label"])]),
                guidance_scale=float(options["guidance"]),
            )
        provenance = io.Provenance(
            model=self.name,
            bundle_version=self.version,
            task="generate",
            sampler=options["sampler"],
            steps=int(options["steps"]),
            seed=int(options["seed"]),
            input_checksum=input_checksum,
            extra=extra,
        )
        return MetaTensor(volume, affine=torch.as_tensor(affine, dtype=torch.float64)), provenance


# ---------------------------------------------------------------------------------------------
# bundles
# ---------------------------------------------------------------------------------------------
def load_served_model(folder: str | os.PathLike, device: str = "cpu") -> ServedModel:
    """Load a bundle as the command line does (:func:`monai_medgen.pipelines.load_bundle`, weights verified against
    their checksum) and describe it for serving.

    Raises:
        ValueError: when the folder is no bundle, has no weights, or the weights do not fit its network.
    """
    try:
        bundle = load_bundle(folder, str(device))
    except BundleError as e:
        raise ValueError(str(e)) from e
    network, inferer = bundle.network, bundle.inferer
    if not isinstance(inferer, (ConditionalDiffusionInferer, VDMInferer)):
        raise ValueError(
            f"bundle {bundle.name}: its inferer is a {type(inferer).__name__}; the app serves ConditionalDiffusionInferer "
            "and VDMInferer bundles."
        )
    unwrapped = getattr(network, "module", network)
    spatial_dims = bundle.spatial_dims
    task = bundle.task
    num_classes = getattr(unwrapped, "num_classes", None)
    max_steps = int(getattr(inferer, "num_train_timesteps", 0) or MAX_STEPS)
    meta = bundle.metadata
    model = ServedModel(
        name=bundle.name,
        root=Path(folder),
        version=bundle.version,
        task=task,
        spatial_dims=spatial_dims,
        network=network,
        inferer=inferer,
        device=str(device),
        sampler=str(bundle.get("sampler", "dpm++")),
        num_steps=int(bundle.get("num_steps", 20)),
        max_steps=max_steps,
        description=str(meta.get("task") or meta.get("name") or bundle.name),
        bundle=bundle,
    )
    if task == "sr":
        factor = bundle.get("factor", 4.0)
        model.factor = [float(f) for f in factor] if isinstance(factor, (list, tuple)) else float(factor)
    if spatial_dims == 3:
        patch = bundle.get("patch_size", (64, 64, 64))
        model.patch_size = None if patch is None else [int(p) for p in patch]
        model.overlap = float(bundle.get("overlap", 0.25))
        model.sw_batch_size = int(bundle.get("sw_batch_size", 1))
    if task == "generate":
        model.image_size = int(bundle.get("image_size", 64))
        model.spacing = float(bundle.get("spacing", 1.0))
        model.generative_model = model_of(bundle)
        if num_classes is not None:
            model.class_names = class_names(folder, int(num_classes), bundle.get("class_names", None))
            model.guidance_scale = float(bundle.get("guidance_scale", 0.0) or 0.0)
        model.num_steps = min(model.num_steps, model.max_steps)
    return model


def load_served_models(
    folder: str | os.PathLike | None = None, names: str | Sequence[str] | None = None, device: str = "cpu"
) -> tuple[dict[str, ServedModel], dict[str, str]]:
    """Every bundle of ``folder`` (or the ``names`` given) that loads: ``({name: model}, {name: why skipped})``;
    bundles without weights yet are skipped with the reason (a named one too)."""
    models, skipped = {}, {}
    for path in find_bundles(folder, names):
        try:
            models[path.name] = load_served_model(path, device)
        except (ValueError, FileNotFoundError) as e:
            skipped[path.name] = _one_line(e)
            logger.warning(f"not serving {path.name}: {skipped[path.name]}")
    return models, skipped


# ---------------------------------------------------------------------------------------------
# uploads
# ---------------------------------------------------------------------------------------------
def read_upload(path: str | os.PathLike | None, what: str = "image") -> MetaTensor:
    """Read an uploaded (or datastore) image with :func:`monai_medgen.io.read_image`.

    Raises:
        RequestError: 404 when there is no such file; 400 naming ``what`` when it is not a readable NIfTI, NRRD or
            MHA file or DICOM series, or holds NaN / infinite voxels.
    """
    if not path or not os.path.exists(str(path)):
        raise RequestError(
            f"{what}: no such image {str(path or '')!r} (upload a file or give an image id of the datastore).", 404
        )
    try:
        return io.read_image(path)
    except ValueError as e:
        message = _one_line(e)
        if "NaN or infinite" in message:
            raise RequestError(f"{what} holds NaN or infinite voxels; it must be finite everywhere.") from e
        raise RequestError(
            f"could not read the {what}: it is not a readable NIfTI, NRRD or MHA file or DICOM series "
            "(damaged, truncated or another format)."
        ) from e


def read_mask(path: str | os.PathLike, image: MetaTensor) -> MetaTensor:
    """The inpainting mask (``label`` of the request): one channel on the image's grid; > 0 marks what is missing."""
    mask = read_upload(path, "label (mask)")
    if mask.shape[0] != 1 or tuple(mask.shape[1:]) != tuple(image.shape[1:]):
        raise RequestError(
            f"label (mask) must be one channel on the image's grid, spatial shape {tuple(image.shape[1:])}, got shape "
            f"{tuple(mask.shape)} (channels first)."
        )
    return mask
