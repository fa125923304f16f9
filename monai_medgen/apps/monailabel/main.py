"""MONAI Label app serving the monai_medgen bundles: restore (super-resolution 2D / 3D, denoising, inpainting) and
generate (class-conditional DDPM, VDM) volumes from 3D Slicer or any MONAI Label client.

::

    monailabel start_server --app monai_medgen/apps/monailabel --studies DIR --host 127.0.0.1 --port 8000 \\
        [--conf bundles DIR] [--conf models a,b] [--conf device cpu] [--conf generate_model NAME]

Configuration (``--conf key value``):

- ``bundles``: folder of the bundles (default: the repository's ``bundles/``);
- ``models``: comma-separated bundle names to serve (default: every bundle with weights);
- ``device``: ``cpu`` or ``cuda[:N]`` (default: CUDA when available);
- ``generate_model``: the bundle behind the ``generate`` active-learning strategy (default: the first
  class-conditional bundle, else the first generative one);
- ``dicomweb_store``: with ``--studies http://host:8042/dicom-web`` (a PACS such as Orthanc), whether a restored
  series is stored back into its study as a derived series (default ``true``; see
  :mod:`monai_medgen.apps.monailabel.pacs`);
- ``max_voxels``, ``max_upload_mb``, ``max_work``, ``max_waiting``: the server's caps
  (:class:`~monai_medgen.apps.monailabel.confine.ServerLimits`).

The app confines every read and write to its studies folder (:mod:`monai_medgen.apps.monailabel.guard` replaces
MONAI Label's endpoints when the server starts): image ids and label tags are names, never paths; ``/infer`` takes a
datastore id or an upload; uploads are checked (type, header-declared size, bytes) and removed after the request;
inferences run one at a time on a bounded queue, so ``/info/`` answers while they run.

Each served bundle is an infer task named like its folder (``/infer/cddpm_denoising_2d``); results are float32
NIfTI volumes on the input's grid, marked synthetic, with the provenance (and for several samples the standard
deviation map) in the JSON part of the answer (see :mod:`monai_medgen.apps.monailabel.infer_tasks`).
Bad requests get a 4xx answer with ``{"detail": message}`` (400 bad option or input, 404 unknown model or id, 409
existing id, 411 / 413 body too large or unsized, 429 queue full).
"""

from __future__ import annotations

import atexit
import logging
import sys

import torch
from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.tasks.activelearning.random import Random

import monai_medgen
from monai_medgen.apps.monailabel.confine import JobQueue, ServerLimits, UploadFolder, check_name
from monai_medgen.apps.monailabel.guard import ConfinedDatastore, install
from monai_medgen.apps.monailabel.infer_tasks import MedGenInferTask
from monai_medgen.apps.monailabel.pacs import DICOMwebDatastore
from monai_medgen.apps.monailabel.served import BUNDLES_DIR, RequestError, load_served_models
from monai_medgen.apps.monailabel.strategies import GenerateStrategy

logger = logging.getLogger(__name__)


class MedGenApp(MONAILabelApp):
    """The monai_medgen MONAI Label app (see the module docstring for its ``--conf`` keys)."""

    def __init__(self, app_dir: str, studies: str, conf: dict):
        conf = dict(conf or {})
        device = conf.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        self.limits = ServerLimits.from_conf(conf)
        self.bundles_dir = conf.get("bundles") or str(BUNDLES_DIR)
        self.served, self.skipped = load_served_models(self.bundles_dir, conf.get("models"), device)
        if not self.served:
            raise ValueError(
                f"no bundle with weights to serve in {self.bundles_dir!r} (skipped: {self.skipped}); train one or fix "
                "'--conf bundles' / '--conf models'."
            )
        for model in self.served.values():
            model.max_voxels = self.limits.max_voxels
        self.generate_model = self._generate_model(conf.get("generate_model"))
        self.uploads = UploadFolder()  # private folder of uploads and results; stale ones of killed servers removed
        atexit.register(self.uploads.close)
        self.jobs = JobQueue(workers=1, max_waiting=self.limits.max_waiting)
        logger.info(
            f"serving {sorted(self.served)} on {device}; skipped {self.skipped}; limits {self.limits.describe()}"
        )
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="monai_medgen",
            description="Diffusion models for medical imaging: restore and generate volumes (outputs are synthetic)",
            version=monai_medgen.__version__,
        )
        server = sys.modules.get("monailabel.app")  # the running FastAPI application (absent for `monailabel` CLI use)
        if server is not None and hasattr(server, "app"):
            install(server.app, self)

    def init_datastore(self):
        """The local datastore confined to the studies folder (:class:`~monai_medgen.apps.monailabel.guard.ConfinedDatastore`),
        or for ``--studies http(s)://...`` the series of that DICOMweb server, cached in the app's private folder
        (:class:`~monai_medgen.apps.monailabel.pacs.DICOMwebDatastore`; ``--conf dicomweb_store false``: restorations
        are not stored back as derived series)."""
        if self.studies.startswith(("http://", "https://")):
            store = str(self.conf.get("dicomweb_store", "true")).strip().lower()
            if store not in ("true", "false"):
                raise ValueError(f"dicomweb_store must be 'true' or 'false', got {self.conf.get('dicomweb_store')!r}.")
            self.studies = self.studies.strip().rstrip("/")
            return DICOMwebDatastore(self.studies, str(self.uploads.path / "dicomweb"), store=store == "true")
        return ConfinedDatastore(
            self.studies,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def _generate_model(self, name: str | None) -> str | None:
        generative = [n for n, m in self.served.items() if m.generative]
        if name:
            if name not in generative:
                raise ValueError(
                    f"generate_model must be one of the served generative bundles {generative}, got {name!r}."
                )
            return name
        conditional = [n for n in generative if self.served[n].class_names]
        return (conditional or generative or [None])[0]

    def init_infers(self):
        return {name: MedGenInferTask(model, results_dir=str(self.uploads.path)) for name, model in self.served.items()}

    def init_strategies(self):
        strategies = {"random": Random()}
        if self.generate_model:
            strategies["generate"] = GenerateStrategy(self.served[self.generate_model], work_dir=str(self.uploads.path))
        return strategies

    def info(self):
        meta = super().info()
        meta["medgen"] = {
            "bundles": self.bundles_dir,
            "skipped": self.skipped,
            "generate_model": self.generate_model,
            "limits": self.limits.describe(),
            "queue": self.jobs.status(),
        }
        return meta

    def infer(self, request, datastore=None):
        """MONAI Label's infer for a request the app's ``/infer`` endpoint built: ``image`` (and ``label``) are
        files it resolved (a datastore image or an upload in the app's private folder; nothing else is read), results
        are never saved as labels (they are intensity volumes), and for inpainting without an uploaded ``label`` the
        datastore label of the image (``medgen_image_id``; tag ``label_tag``, else ``final``, else ``original``) is
        the mask.

        Raises:
            RequestError: 404 for a model that is not served; 400 for an image or label that is neither.
        """
        model = request.get("model")
        if model not in self._infers:
            why = f" ({self.skipped[model]})" if model in self.skipped else ""
            raise RequestError(f"model {model!r} is not served{why}; served models: {sorted(self._infers)}.", 404)
        request = dict(request)
        request["save_label"] = False
        ds = datastore or self.datastore()
        image_id = request.get("medgen_image_id") or ""
        known = ds.get_image_uri(check_name(image_id, "image")) if image_id else ""
        image = request.get("image")
        if not isinstance(image, str) or not image or not (self.uploads.contains(image) or image == known):
            raise RequestError("image: give a datastore image id or upload the image; server paths are never read.")
        label = request.get("label")
        if label and not (isinstance(label, str) and self.uploads.contains(label)):
            raise RequestError("label: upload the mask as a file; server paths are never read.")
        if self.served[model].task == "inpaint" and not label and image_id:
            tags = [
                t for t in (request.get("label_tag"), DefaultLabelTag.FINAL.value, DefaultLabelTag.ORIGINAL.value) if t
            ]
            for tag in tags:
                label_id = ds.get_label_by_image_id(image_id, check_name(str(tag), "label_tag"))
                if label_id:
                    request["label"] = ds.get_label_uri(label_id, str(tag))
                    break
        result = super().infer(request, ds)
        if (
            isinstance(ds, DICOMwebDatastore)
            and image_id
            and ds.is_series(image_id)
            and not self.served[model].generative
        ):
            medgen = (result.get("params") or {}).get("medgen")
            if isinstance(medgen, dict) and result.get("file"):
                medgen["pacs"] = ds.store_derived(image_id, result["file"], medgen.get("provenance"))
        return result
