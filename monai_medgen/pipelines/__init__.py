"""The application layer between the core (schedules, samplers, networks, inferers) and the front-ends (the
``monai-medgen`` command line, the MONAI Label app, bundle configs, scripts): one way to load a bundle, to
restore and to generate with it.

- :mod:`~monai_medgen.pipelines.bundles`: :func:`load_bundle` (config, network, inferer, schedule, verified
  weights, task, data dimensionality; one set of error messages), :func:`find_bundles`.
- :mod:`~monai_medgen.pipelines.generate`: :func:`generate` (one generation for every generative bundle with
  :class:`GenerateOptions`, one rule for where samples lie: :func:`generation_affine`), :func:`write_generated`,
  :func:`generate_files` (what the bundles' inference.yaml run).
- :mod:`~monai_medgen.pipelines.restore`: :func:`restore` (one restoration for 2D and 3D bundles with
  :class:`RestoreOptions`, the bundle's defaults filled in) and :func:`restoration_provenance`.
The shared names and limits (samplers, task names, size limits) are in :mod:`monai_medgen.limits`.
"""

from monai_medgen.pipelines.bundles import (
    TRAIN_HINT,
    BundleError,
    LoadedBundle,
    class_names,
    data_dims,
    default_bundles_dir,
    find_bundles,
    load_bundle,
    open_bundle,
)
from monai_medgen.pipelines.generate import (
    Generated,
    GenerateOptions,
    GenerativeModel,
    Upsampler,
    generate,
    generate_files,
    generation_affine,
    model_of,
    sample_images,
    sample_model,
    write_generated,
)
from monai_medgen.pipelines.restore import RestoreOptions, restoration_provenance, restore

__all__ = [
    "TRAIN_HINT",
    "BundleError",
    "GenerateOptions",
    "Generated",
    "GenerativeModel",
    "LoadedBundle",
    "RestoreOptions",
    "Upsampler",
    "class_names",
    "data_dims",
    "default_bundles_dir",
    "find_bundles",
    "generate",
    "generate_files",
    "generation_affine",
    "load_bundle",
    "model_of",
    "open_bundle",
    "restoration_provenance",
    "restore",
    "sample_images",
    "sample_model",
    "write_generated",
]
