"""The names and limits every layer shares (core, application layer, command line, MONAI Label app, scripts).

A leaf module (nothing of the package, no third-party import), so the command line builds its parser without
loading torch.  A limit here is a property of the models or of the machine, not of a front-end: a shared server may set tighter
ones of its own (:data:`monai_medgen.apps.monailabel.served.LIMITS`), never looser.
"""

from __future__ import annotations

__all__ = [
    "MAX_GENERATE_VOXELS",
    "MAX_SLICE_PIXELS",
    "MAX_VOXELS",
    "MIN_AXIS_VOXELS",
    "RESTORATION_TASKS",
    "SAMPLERS",
    "TASK_NAMES",
]

#: the samplers of :func:`monai_medgen.samplers.sample_loop`
SAMPLERS = ("ancestral", "ddim", "dpm++")
#: the restoration tasks (a bundle's ``task``); a bundle without one generates
RESTORATION_TASKS = ("sr", "denoise", "inpaint")
#: provenance and ``/info/`` names of the tasks
TASK_NAMES = {"sr": "super_resolution", "denoise": "denoise", "inpaint": "inpaint", "generate": "generate"}
# largest output a restoration makes: a 2D bundle's U-Net attends over the whole slice at its bottleneck (memory
# grows with the square of the slice's pixel count; 512 x 512 takes several GB per slice), and every model keeps a
# few copies of the whole output volume
MAX_SLICE_PIXELS = 512 * 512
MAX_VOXELS = 512**3
# a model needs some neighbourhood: each axis it convolves over has at least this many voxels (1x1x1 is no image)
MIN_AXIS_VOXELS = 8
# generation: the samples take a reference's size; a 3D model holds a few copies of the whole sample volume
MAX_GENERATE_VOXELS = 256**3
