"""The application layer between the core (schedules, samplers, networks, inferers) and the front-ends (the
``monai-medgen`` command line, the MONAI Label app, bundle configs, scripts): one way to load a bundle and one set
of shared names and limits.

- :mod:`~monai_medgen.pipelines.bundles`: :func:`load_bundle` (config, network, inferer, schedule, verified
  weights, task, data dimensionality; one set of error messages), :func:`find_bundles`.
- :mod:`~monai_medgen.pipelines.restore`: :func:`restore` (one restoration for 2D and 3D bundles with
  :class:`RestoreOptions`, the bundle's defaults filled in) and :func:`restoration_provenance`.
- :mod:`monai_medgen.limits` (re-exported): samplers, task names and the size limits of the models.
"""

from monai_medgen.limits import (
    MAX_GENERATE_VOXELS,
    MAX_SLICE_PIXELS,
    MAX_VOXELS,
    MIN_AXIS_VOXELS,
    RESTORATION_TASKS,
    SAMPLERS,
    TASK_NAMES,
)
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
from monai_medgen.pipelines.restore import RestoreOptions, restoration_provenance, restore

__all__ = [
    "MAX_GENERATE_VOXELS",
    "MAX_SLICE_PIXELS",
    "MAX_VOXELS",
    "MIN_AXIS_VOXELS",
    "RESTORATION_TASKS",
    "SAMPLERS",
    "TASK_NAMES",
    "TRAIN_HINT",
    "BundleError",
    "LoadedBundle",
    "RestoreOptions",
    "class_names",
    "data_dims",
    "default_bundles_dir",
    "find_bundles",
    "load_bundle",
    "open_bundle",
    "restoration_provenance",
    "restore",
]
