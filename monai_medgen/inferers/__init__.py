"""MONAI ``Inferer``s that hold a schedule and know their training objective."""

from monai_medgen.inferers.conditional import ConditionalDiffusionInferer, ConditionalPrepareBatch
from monai_medgen.inferers.latent import AutoencoderLoss, LatentVDMInferer, ReconstructionInferer
from monai_medgen.inferers.vdm import VDMInferer, VDMOutput

__all__ = [
    "AutoencoderLoss",
    "ConditionalDiffusionInferer",
    "ConditionalPrepareBatch",
    "LatentVDMInferer",
    "ReconstructionInferer",
    "VDMInferer",
    "VDMOutput",
]
