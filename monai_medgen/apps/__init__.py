"""Applications built on monai_medgen.

- :mod:`monai_medgen.apps.monailabel`: a MONAI Label app (``monailabel start_server --app
  monai_medgen/apps/monailabel ...``) serving the bundles in ``bundles/`` to 3D Slicer and other clients.

The 3D Slicer module that talks to it lives in ``scripts/slicer/MedGen`` (it runs inside Slicer's own Python).
"""
