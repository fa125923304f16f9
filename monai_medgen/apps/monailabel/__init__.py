"""The monai_medgen MONAI Label app: ``monailabel start_server --app monai_medgen/apps/monailabel --studies DIR``.

- ``main.py``: :class:`MedGenApp` (the app MONAI Label loads; ``--conf bundles DIR``, ``--conf models a,b``,
  ``--conf device``, ``--conf generate_model``);
- ``infer_tasks.py``: one infer task per bundle (restore or generate, output marked synthetic);
- ``strategies.py``: the ``generate`` active-learning strategy ("Next Sample" gets a new generated volume);
- ``served.py``: bundle loading, options, request checks and the work itself, without MONAI Label (tested in the
  main environment).

Only ``served`` is imported here: the other modules need ``monailabel``, which lives in its own virtual
environment (see the README).
"""
