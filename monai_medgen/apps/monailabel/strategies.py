"""The ``generate`` active-learning strategy: Slicer's "Next Sample" gets a newly generated volume.

MONAI Label's ``POST /activelearning/generate`` calls :class:`GenerateStrategy`, which generates a slice stack with
a generative bundle (class-conditional DDPM or VDM), adds it to the datastore as a new image (id
``synthetic_<model>_<class>_<seed>``, its info holding ``synthetic: true`` and the provenance) and returns that id,
so the client loads it like any other sample (``GET /datastore/image?image=<id>``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from monai_medgen import io
from monai_medgen.apps.monailabel.infer_tasks import as_http_error
from monai_medgen.apps.monailabel.served import RequestError, ServedModel, read_upload

__all__ = ["GenerateStrategy", "SYNTHETIC_PREFIX"]

logger = logging.getLogger(__name__)

#: ids of the images this strategy adds to the datastore start with this
SYNTHETIC_PREFIX = "synthetic_"


class GenerateStrategy(Strategy):
    """Generate a new volume, add it to the datastore and return its id.

    Request options (the body's ``params`` of ``/activelearning/generate``; all optional): those of the model's
    infer task (``class``, ``guidance``, ``sampler``, ``steps``, ``num_slices``, ``seed``; without ``seed`` every
    call draws a new one) and ``reference``: a datastore image id whose field of view the stack takes (default:
    the first image of the datastore that this strategy did not generate; none: centred on the origin).

    An id that is taken already (the same seed twice) gets a suffix ``_2``, ``_3``, ...

    Args:
        model: a generative :class:`~monai_medgen.apps.monailabel.served.ServedModel`.
        work_dir: where the volume is written before the datastore copies it (default: the system's temporary folder).
    """

    def __init__(self, model: ServedModel, work_dir: str | None = None):
        if not model.generative:
            raise ValueError(f"model must be a generative bundle, {model.name} does {model.task}.")
        super().__init__(f"Generate a new synthetic volume with {model.name} and add it to the datastore")
        self.model = model
        self.work_dir = work_dir

    def info(self):
        return {"description": self.description, "model": self.model.name, "config": self.model.config()}

    def _reference(self, request, datastore: Datastore):
        image_id = request.get("reference")
        if image_id:
            path = datastore.get_image_uri(str(image_id))
            if not path:
                raise RequestError(f"reference: no image {image_id!r} in the datastore.", 404)
            return read_upload(path, "reference image"), path
        for candidate in sorted(datastore.list_images()):
            if not candidate.startswith(SYNTHETIC_PREFIX):
                path = datastore.get_image_uri(candidate)
                if path and os.path.isfile(path):
                    return read_upload(path, "reference image"), path
        return None, None

    def __call__(self, request, datastore: Datastore):
        try:
            params = dict(request)
            if params.get("seed") in (None, ""):
                params["seed"] = int(time.time() * 1000) % 2**31
            options = self.model.parse_options(params)
            reference, ref_path = self._reference(request, datastore)
            volume, provenance = self.model.generate(
                options, reference=reference, input_checksum=io.sha256_of(ref_path) if ref_path else ""
            )
        except RequestError as e:
            raise as_http_error(e) from e
        tag = f"_{self.model.class_names[options['class_label']]}" if self.model.class_names else ""
        base = f"{SYNTHETIC_PREFIX}{self.model.name}{tag}_{options['seed']}"
        taken = set(datastore.list_images())
        image_id, k = base, 1
        while image_id in taken:
            k += 1
            image_id = f"{base}_{k}"
        folder = tempfile.mkdtemp(prefix="medgen_generate_", dir=self.work_dir)
        try:
            path = os.path.join(folder, f"{image_id}.nii.gz")
            io.write_image(volume, path, provenance=provenance)
            info = {
                "synthetic": True,
                "provenance": provenance.extra
                | {
                    "model": provenance.model,
                    "task": provenance.task,
                    "sampler": provenance.sampler,
                    "steps": provenance.steps,
                    "seed": provenance.seed,
                    "created": provenance.created,
                },
            }
            datastore.add_image(image_id, path, info)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        logger.info(f"generate: added {image_id} ({tuple(volume.shape[1:])}) to the datastore")
        return {"id": image_id, "synthetic": True}
