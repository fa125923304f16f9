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
  class-conditional bundle, else the first generative one).

Each served bundle is an infer task named like its folder (``/infer/cddpm_denoising_2d``); results are float32
NIfTI volumes on the input's grid, marked synthetic, with the provenance (and for several samples the standard
deviation map) in the JSON part of the answer (see :mod:`monai_medgen.apps.monailabel.infer_tasks`).
Bad requests get HTTP 400 / 404 with ``{"detail": message}``.
"""

from __future__ import annotations

import logging
import os

import torch
from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.tasks.activelearning.random import Random

import monai_medgen
from monai_medgen.apps.monailabel.infer_tasks import MedGenInferTask
from monai_medgen.apps.monailabel.served import BUNDLES_DIR, load_served_models
from monai_medgen.apps.monailabel.strategies import GenerateStrategy

logger = logging.getLogger(__name__)


class MedGenApp(MONAILabelApp):
    """The monai_medgen MONAI Label app (see the module docstring for its ``--conf`` keys)."""

    def __init__(self, app_dir: str, studies: str, conf: dict):
        conf = dict(conf or {})
        device = conf.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        self.bundles_dir = conf.get("bundles") or str(BUNDLES_DIR)
        self.served, self.skipped = load_served_models(self.bundles_dir, conf.get("models"), device)
        if not self.served:
            raise ValueError(
                f"no bundle with weights to serve in {self.bundles_dir!r} (skipped: {self.skipped}); train one or fix "
                "'--conf bundles' / '--conf models'."
            )
        self.generate_model = self._generate_model(conf.get("generate_model"))
        logger.info(f"serving {sorted(self.served)} on {device}; skipped {self.skipped}")
        super().__init__(
            app_dir=app_dir, studies=studies, conf=conf, name="monai_medgen",
            description="Diffusion models for medical imaging: restore and generate volumes (outputs are synthetic)",
            version=monai_medgen.__version__,
        )

    def _generate_model(self, name: str | None) -> str | None:
        generative = [n for n, m in self.served.items() if m.generative]
        if name:
            if name not in generative:
                raise ValueError(f"generate_model must be one of the served generative bundles {generative}, got {name!r}.")
            return name
        conditional = [n for n in generative if self.served[n].class_names]
        return (conditional or generative or [None])[0]

    def init_infers(self):
        return {name: MedGenInferTask(model) for name, model in self.served.items()}

    def init_strategies(self):
        strategies = {"random": Random()}
        if self.generate_model:
            strategies["generate"] = GenerateStrategy(self.served[self.generate_model])
        return strategies

    def info(self):
        meta = super().info()
        meta["medgen"] = {"bundles": self.bundles_dir, "skipped": self.skipped, "generate_model": self.generate_model}
        return meta

    def infer(self, request, datastore=None):
        """MONAI Label's infer with: a 404 naming the served models for an unknown model; a 404 for an unknown
        image id; results never saved as labels (they are intensity volumes); and for inpainting without an
        uploaded ``label`` the image's datastore label (tag ``label_tag``, else ``final``, else ``original``) as
        the mask."""
        model = request.get("model")
        if model not in self._infers:
            why = f" ({self.skipped[model]})" if model in self.skipped else ""
            raise HTTPException(404, f"model {model!r} is not served{why}; served models: {sorted(self._infers)}.")
        request = dict(request)
        request["save_label"] = False
        ds = datastore or self.datastore()
        image = request.get("image")
        if isinstance(image, str) and image and not os.path.exists(image):
            if not ds.get_image_uri(image):
                raise HTTPException(404, f"image: no image {image!r} in the datastore and no file uploaded.")
            if self.served[model].task == "inpaint" and not request.get("label"):
                tags = [t for t in (request.get("label_tag"), DefaultLabelTag.FINAL.value, DefaultLabelTag.ORIGINAL.value) if t]
                for tag in tags:
                    label_id = ds.get_label_by_image_id(image, str(tag))
                    if label_id:
                        request["label"] = ds.get_label_uri(label_id, str(tag))
                        break
        return super().infer(request, datastore)
