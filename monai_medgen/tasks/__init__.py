"""Restoration task families: training corpus, forward operators, blind degradations, residual sampling,
classical baselines and the unseen evaluation panel.

- :mod:`~monai_medgen.tasks.corpus`: every allowed offline source as 2D slices, with domain randomisation
  (synthetic contrasts from tissue maps and label atlases, bias field, gamma, blur, resolution, deformation,
  orientation, field of view).
- :mod:`~monai_medgen.tasks.operators`: forward models with their data-consistency projections
  (super-resolution by area averaging, noise, masks), classical base estimates, noise estimation and a
  robust intensity normalisation.
- :mod:`~monai_medgen.tasks.blind`: the blind training degradations of each family and the residual target.
- :mod:`~monai_medgen.tasks.sampling`: residual diffusion sampling with data consistency at every step.
- :mod:`~monai_medgen.tasks.baselines`: the strongest classical baselines, tuned on other images.
- :mod:`~monai_medgen.tasks.panel`: the unseen evaluation panel.
"""

from monai_medgen.tasks.blind import FAMILIES, INPAINT_LAYOUTS, BlindDegradationd, cond_channels_of, make_condition
from monai_medgen.tasks.corpus import RandCorpusSliced, TrainingCorpus
from monai_medgen.tasks.operators import (
    Inpainting,
    Noise,
    RobustIntensity,
    SuperResolution,
    biharmonic_fill,
    estimate_noise_sigma,
    fill_holes,
    median3,
    switching_median,
)
from monai_medgen.tasks.sampling import ResidualRestorer

__all__ = [
    "FAMILIES",
    "BlindDegradationd",
    "Inpainting",
    "Noise",
    "RandCorpusSliced",
    "ResidualRestorer",
    "RobustIntensity",
    "SuperResolution",
    "TrainingCorpus",
    "biharmonic_fill",
    "cond_channels_of",
    "INPAINT_LAYOUTS",
    "estimate_noise_sigma",
    "fill_holes",
    "make_condition",
    "median3",
    "switching_median",
]
