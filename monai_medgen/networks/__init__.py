"""Score networks for 2D images and 3D volumes."""

from monai_medgen.networks.adapters import TimestepAdapter
from monai_medgen.networks.score_unet import FourierFeatures, GridSkip, ScoreUNet, size_multiple

__all__ = ["FourierFeatures", "GridSkip", "ScoreUNet", "TimestepAdapter", "size_multiple"]
