"""MONAI ``Inferer``s that hold a schedule and know their training objective."""

from monai_medgen.inferers.conditional import ConditionalDiffusionInferer, ConditionalPrepareBatch
from monai_medgen.inferers.vdm import VDMInferer, VDMOutput

__all__ = ["ConditionalDiffusionInferer", "ConditionalPrepareBatch", "VDMInferer", "VDMOutput"]
