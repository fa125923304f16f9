"""monai_medgen: diffusion models for medical imaging as a MONAI plugin.

Variational Diffusion Models (continuous time, learned noise schedule, exact bits/dim) and
conditional DDPMs for 2D images and 3D volumes, built on one schedule / sampler core.
"""

from monai_medgen.inferers import (
    ConditionalDiffusionInferer,
    ConditionalSamplingOptions,
    LatentVDMInferer,
    SamplingOptions,
    VDMInferer,
    VDMOutput,
)
from monai_medgen.networks import FourierFeatures, GridSkip, ScoreUNet, TimestepAdapter
from monai_medgen.pipelines import LoadedBundle, RestoreOptions, load_bundle, restore
from monai_medgen.schedules import (
    DiscreteSchedule,
    FixedLinearSchedule,
    LearnedLinearSchedule,
    MonotoneNetSchedule,
    Schedule,
)
from monai_medgen.version import __version__

__all__ = [
    "ConditionalDiffusionInferer",
    "ConditionalSamplingOptions",
    "DiscreteSchedule",
    "FixedLinearSchedule",
    "FourierFeatures",
    "GridSkip",
    "LatentVDMInferer",
    "LearnedLinearSchedule",
    "LoadedBundle",
    "MonotoneNetSchedule",
    "RestoreOptions",
    "SamplingOptions",
    "Schedule",
    "ScoreUNet",
    "TimestepAdapter",
    "VDMInferer",
    "VDMOutput",
    "__version__",
    "load_bundle",
    "restore",
]
