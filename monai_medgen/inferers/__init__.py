"""MONAI ``Inferer``s that hold a schedule and know their training objective."""

from monai_medgen.inferers.conditional import ConditionalDiffusionInferer, ConditionalPrepareBatch
from monai_medgen.inferers.latent import AutoencoderLoss, LatentVDMInferer, ReconstructionInferer
from monai_medgen.inferers.options import ConditionalSamplingOptions, SamplingOptions
from monai_medgen.inferers.vdm import VDMInferer, VDMOutput

__all__ = [
    "AutoencoderLoss",
    "ConditionalDiffusionInferer",
    "ConditionalPrepareBatch",
    "ConditionalSamplingOptions",
    "LatentVDMInferer",
    "ReconstructionInferer",
    "SamplingOptions",
    "VDMInferer",
    "VDMOutput",
]
