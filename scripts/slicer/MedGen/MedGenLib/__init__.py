"""Helpers of the MedGen 3D Slicer module, kept out of the module folder's top level (Slicer loads every ``.py``
file there as a module).  Nothing here imports Slicer, Qt or VTK:

- :mod:`MedGenLib.medgen_client`: the calls of the monai_medgen MONAI Label app (``/info/``, ``/infer``, the
  ``generate`` strategy, the datastore), option checks, multipart encoding, result names;
- :mod:`MedGenLib.background`: one server call in a thread while Slicer stays responsive, and the busy indicator's
  text (MONAI Label reports no progress for a single request).
"""

from . import background, medgen_client

__all__ = ["background", "medgen_client"]
