"""MONAI ``Inferer``s that hold a schedule and know their training objective."""

from monai_medgen.inferers.vdm import VDMInferer, VDMOutput

__all__ = ["VDMInferer", "VDMOutput"]
