"""Score networks for 2D images and 3D volumes."""

from monai_medgen.networks.adapters import TimestepAdapter
from monai_medgen.networks.score_unet import FourierFeatures, GridSkip, ScoreUNet

__all__ = ["FourierFeatures", "GridSkip", "ScoreUNet", "TimestepAdapter"]
