"""MONAI Label infer tasks for the monai_medgen bundles (needs ``monailabel``; see ``main.py``).

One :class:`MedGenInferTask` per bundle, a MONAI Label ``BasicInferTask`` of type ``others`` whose stages are:

- pre-transforms: :class:`ParseOptionsd` (the request's options checked against the bundle's ranges) and
  :class:`LoadInputd` (the image, and the inpainting mask from the request's ``label``, read with
  :func:`monai_medgen.io.read_image`);
- inference (``run_inferer``): :meth:`~monai_medgen.apps.monailabel.served.ServedModel.restore` (restoration
  bundles: the mean of ``num_samples`` samples and their standard deviation) or
  :meth:`~monai_medgen.apps.monailabel.served.ServedModel.generate` (generative bundles: a slice stack in the
  input's field of view);
- writer: a float32 NIfTI on the output grid marked synthetic (:func:`monai_medgen.io.write_image`), its
  provenance in the JSON answer (``params.medgen.provenance``) and, for several samples, the standard deviation
  map as a base64 ``.nii.gz`` in ``params.medgen.uncertainty``.

A bad request raises ``fastapi.HTTPException`` with status 400 (404 for a missing image) and a message naming the
option or input, so the client gets ``{"detail": message}`` and the server goes on serving.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from monai_medgen import io
from monai_medgen.apps.monailabel.served import RequestError, ServedModel, read_mask, read_upload

__all__ = ["LoadInputd", "MedGenInferTask", "ParseOptionsd", "as_http_error", "write_result"]

logger = logging.getLogger(__name__)


def as_http_error(error: RequestError) -> HTTPException:
    """The :class:`RequestError` as the HTTP answer FastAPI sends (``{"detail": message}``)."""
    return HTTPException(status_code=error.status_code, detail=str(error))


class ParseOptionsd:
    """Check the request's options (sampler, steps, seed, num_samples, factor, class, guidance, num_slices) with
    :meth:`ServedModel.parse_options`; the result goes to ``data["medgen_options"]``."""

    def __init__(self, model: ServedModel):
        self.model = model

    def __call__(self, data: dict) -> dict:
        data["medgen_options"] = self.model.parse_options(data)
        return data


class LoadInputd:
    """Read ``data["image"]`` (a path) into a ``MetaTensor`` with its geometry, checked for the model's
    dimensionality, and for inpainting the mask from ``data["label"]``; the SHA-256 of the inputs goes to
    ``data["medgen_checksum"]``."""

    def __init__(self, model: ServedModel):
        self.model = model

    def __call__(self, data: dict) -> dict:
        path = data.get("image")
        if not isinstance(path, str) or not path:
            raise RequestError("image: give an image id of the datastore or upload a file.", 404)
        image = read_upload(path, "image")
        data["medgen_input_path"] = path
        data["image"] = self.model.check_image(image)
        label = data.get("label")
        inputs = [path]
        if isinstance(label, str) and label:
            if self.model.task != "inpaint":
                raise RequestError(
                    f"label: a mask is for inpainting models only; model {self.model.name} does not use one."
                )
            data["medgen_mask"] = read_mask(label, image)
            inputs.append(label)
        data["medgen_checksum"] = io.sha256_of(inputs)
        return data


def _fresh_path(folder: str | None, prefix: str, suffix: str) -> str:
    """A new file name in ``folder`` (not created: :func:`monai_medgen.io.write_image` refuses to replace a file it
    did not write)."""
    return os.path.join(folder or tempfile.gettempdir(), f"{prefix}{uuid.uuid4().hex[:12]}{suffix}")


def _remove(*paths) -> None:
    for p in paths:
        if p and os.path.exists(p):
            os.remove(p)


def write_result(
    model: ServedModel, image, provenance: io.Provenance, std=None, name: str = "image", folder: str | None = None
) -> tuple[str, dict]:
    """Write ``image`` to a new ``.nii.gz`` marked synthetic (header and provenance) in ``folder`` (the app's
    private folder; default the system's temporary folder) and build the JSON answer:
    ``{"medgen": {"model", "task", "synthetic", "provenance", "shape", "affine", "uncertainty"?}}``.

    The provenance sidecar that :func:`monai_medgen.io.write_image` writes beside the file is read into the JSON
    and removed (the app sends and then deletes the image only); on failure nothing is left behind.
    """
    path = _fresh_path(folder, f"{name}_{provenance.task}_", "_synthetic.nii.gz")
    sidecar = path + ".json"
    try:
        io.write_image(image, path, provenance=provenance)
        with open(sidecar) as f:
            provenance_json = f.read()
    except BaseException:
        _remove(path, sidecar)
        raise
    finally:
        _remove(sidecar)
    result: dict[str, Any] = {
        "model": model.name,
        "task": provenance.task,
        "synthetic": True,
        "description": io.synthetic_description(provenance),
        "provenance": json.loads(provenance_json),
        "shape": [int(s) for s in image.shape[1:]],
        "affine": [[float(v) for v in row] for row in image.affine.tolist()],
    }
    if std is not None:
        std_path = _fresh_path(folder, f"{name}_std_", ".nii.gz")
        try:
            std_prov = dataclasses.replace(
                provenance, extra={**provenance.extra, "map": "per-voxel standard deviation"}
            )
            io.write_image(std, std_path, provenance=std_prov)
            with open(std_path, "rb") as f:
                data = f.read()
        except BaseException:
            _remove(path)
            raise
        finally:
            _remove(std_path, std_path + ".json")
        t = std.as_tensor().float()
        result["uncertainty"] = {
            "format": "nii.gz",
            "encoding": "base64",
            "data": base64.b64encode(data).decode("ascii"),
            "map": "per-voxel standard deviation of the samples",
            "mean": float(t.mean()),
            "max": float(t.max()),
        }
    return path, {"medgen": result}


class MedGenInferTask(BasicInferTask):
    """A monai_medgen bundle as a MONAI Label infer task (type ``others``).

    Args:
        model: the loaded bundle (:func:`~monai_medgen.apps.monailabel.served.load_served_model`).
        results_dir: where results are written before they are sent (the app's private folder).

    Its ``/info/`` entry carries the options (``config``) and, under ``medgen``, the task, whether a mask is
    needed, the classes and the ranges of the numeric options.
    """

    def __init__(self, model: ServedModel, results_dir: str | None = None):
        super().__init__(
            path=None,
            network=model.network,
            type=InferType.OTHERS,
            labels=None,
            dimension=model.spatial_dims,
            description=f"monai_medgen {model.description} ({model.name}); output marked synthetic",
            config=model.config(),
        )
        self._config.pop("device", None)  # the app's --conf device decides; one copy of the network
        self.model = model
        self.results_dir = results_dir

    def info(self) -> dict[str, Any]:
        out = super().info()
        out["medgen"] = self.model.describe()
        return out

    def is_valid(self) -> bool:
        return True

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        return [ParseOptionsd(self.model), LoadInputd(self.model)]

    def post_transforms(self, data=None) -> Sequence[Callable]:
        return []

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cpu") -> dict[str, Any]:
        options = data["medgen_options"]
        start = time.perf_counter()
        if self.model.generative:
            data["pred"], data["medgen_provenance"] = self.model.generate(
                options, reference=data["image"], input_checksum=data["medgen_checksum"]
            )
            data["medgen_std"] = None
        else:
            data["pred"], data["medgen_std"], data["medgen_provenance"] = self.model.restore(
                data["image"], options, mask=data.get("medgen_mask"), input_checksum=data["medgen_checksum"]
            )
        logger.info(
            f"{self.model.name}: {options} -> {tuple(data['pred'].shape)} in {time.perf_counter() - start:.2f} s"
        )
        return data

    def writer(self, data: dict[str, Any], extension=None, dtype=None) -> tuple[Any, Any]:
        name = str(data.get("medgen_image_id") or "upload").split(".")[0][:64] or "image"
        return write_result(
            self.model,
            data["pred"],
            data["medgen_provenance"],
            data.get("medgen_std"),
            name=name,
            folder=self.results_dir,
        )

    def __call__(self, request, callbacks=None):
        try:
            return super().__call__(request, callbacks)
        except RequestError as e:
            logger.info(f"{self.model.name}: bad request ({e.status_code}): {e}")
            raise as_http_error(e) from e
