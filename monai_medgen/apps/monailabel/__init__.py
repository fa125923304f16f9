"""The monai_medgen MONAI Label app: ``monailabel start_server --app monai_medgen/apps/monailabel --studies DIR``.

- ``main.py``: :class:`MedGenApp` (the app MONAI Label loads; ``--conf bundles DIR``, ``--conf models a,b``,
  ``--conf device``, ``--conf generate_model``);
- ``infer_tasks.py``: one infer task per bundle (restore or generate, output marked synthetic);
- ``strategies.py``: the ``generate`` active-learning strategy ("Next Sample" gets a new generated volume);
- ``guard.py``: the app's own endpoints and datastore in place of MONAI Label's (every read and write confined to
  the studies folder, uploads checked and removed, compute on a bounded job queue, 4xx answers with a message);
- ``pacs.py``: the datastore for ``--studies http://host:8042/dicom-web`` (a PACS such as Orthanc: image ids are
  SeriesInstanceUIDs) and the derived series it stores back there;
- ``served.py``: bundle loading, options, request checks, the work estimate and the work itself, without MONAI Label;
- ``confine.py``: names, upload headers and byte caps, the private upload folder, ``params`` checks, the job queue
  and the server's limits, without MONAI Label (``served`` and ``confine`` are tested in the main environment).

Only ``served`` is imported here: ``main``, ``guard``, ``infer_tasks``, ``pacs`` and ``strategies`` need
``monailabel``, which lives in its own virtual environment (see the README).
"""
