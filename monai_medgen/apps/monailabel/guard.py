"""The app's own HTTP endpoints and datastore, in place of MONAI Label's, so that no request reads or writes outside
the studies folder, decodes more than the caps allow, or holds the event loop (needs ``monailabel``).

MONAI Label 0.8.5's endpoints take image ids and label tags as paths (``../`` and absolute paths upload, read and
delete anywhere), read ``image`` and ``label`` of ``/infer`` as server paths, store any bytes as an image, leave
uploads in the temporary folder and run inferences on the event loop. :func:`install` replaces them on the running
FastAPI application when the app starts:

- ``POST /infer/{model}``: the image is a datastore id or an upload, the mask an upload or the image's datastore
  label; ``params`` is a JSON object of the model's options; uploads are checked (:mod:`.confine`), kept in the
  app's private folder and removed when the request ends; the work is checked against ``max_work`` and runs on the
  :class:`~.confine.JobQueue`, so ``/info/`` answers meanwhile;
- ``POST /activelearning/{strategy}``: same checks, on the queue;
- ``/datastore/...``: ids and tags checked as names (:func:`~.confine.check_name`), uploads checked and decoded
  (on the queue) before they are stored, no server path in any answer, no overwriting of an existing image;
- MONAI Label's sessions, batch inference, scoring, training, model upload/download, logs, OHIF, DICOM proxy,
  dataset archive and reload endpoints answer 404 with a message: this app does not serve them.

Every client error is a 4xx answer ``{"detail": message}``; anything else a 500 whose message points to the log.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.exception import MONAILabelException
from monailabel.utils.others.generic import file_checksum, get_mime_type
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from monai_medgen.apps.monailabel.confine import (
    HEAD_BYTES,
    ImageHeader,
    check_declared_size,
    check_name,
    copy_limited,
    inspect_image_file,
    parse_json_object,
    parse_params,
    sniff_image,
)
from monai_medgen.apps.monailabel.served import RequestError, read_upload

__all__ = ["ConfinedDatastore", "DISABLED", "install"]

logger = logging.getLogger(__name__)

#: MONAI Label endpoints this app does not serve (prefixes)
DISABLED = {
    "/session": "sessions",
    "/batch": "batch inference",
    "/scoring": "scoring",
    "/train": "training",
    "/model": "model upload and download",
    "/logs": "server logs",
    "/ohif": "the OHIF viewer",
    "/proxy": "the DICOMweb proxy",
    "/reload": "reloading the app",
    "/infer/wsi": "whole-slide inference",
    "/datastore/dataset": "the dataset archive",
}
#: largest non-file form field or JSON body (bytes)
MAX_FIELD_BYTES = 1 << 20
#: datastore files: suffixes the local datastore lists
DATASTORE_SUFFIXES = (".nii.gz", ".nii", ".nrrd")


# ---------------------------------------------------------------------------------------------
# the datastore
# ---------------------------------------------------------------------------------------------
def _serialized(method):
    """Run a datastore method under the datastore's lock (see :class:`ConfinedDatastore`)."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self._mutex:
            return method(self, *args, **kwargs)

    return run


class ConfinedDatastore(LocalDatastore):
    """MONAI Label's local datastore with ids and tags checked as names and every file it resolves kept inside
    the studies folder (a symbolic link that leads out of it counts as missing).

    Adding an image whose id exists is refused (409): delete it first. Errors are
    :class:`~monai_medgen.apps.monailabel.served.RequestError` (400 bad name, 404 unknown id, 409 existing id).

    MONAI Label's file watcher refreshes the datastore from its own thread, rebuilding the table of images while a
    request may be reading or changing it ("dictionary changed size during iteration" on a delete); here refreshes,
    writes and the lookups requests make hold one lock.

    Args:
        studies: the studies folder.
        kwargs: passed to ``LocalDatastore`` (``auto_reload``, ``read_only``).
    """

    def __init__(self, studies: str, **kwargs):
        self.root = os.path.realpath(studies)
        self._mutex = threading.RLock()  # before the base class starts its watcher
        super().__init__(studies, extensions=tuple(f"*{s}" for s in DATASTORE_SUFFIXES), **kwargs)

    def inside(self, path: str) -> bool:
        real = os.path.realpath(path)
        return real.startswith(self.root + os.sep)

    def _confined(self, path: str, what: str) -> str:
        if path and not self.inside(path):
            logger.warning(f"{what} resolves outside the studies folder ({path}); treated as missing")
            return ""
        return path

    @_serialized
    def refresh(self) -> None:
        super().refresh()

    # ---- reads ------------------------------------------------------------------------------
    @_serialized
    def get_image_uri(self, image_id: str) -> str:
        return self._confined(super().get_image_uri(check_name(image_id, "image")), f"image {image_id!r}")

    @_serialized
    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        uri = super().get_label_uri(check_name(label_id, "label"), check_name(label_tag, "tag"))
        return self._confined(uri, f"label {label_id!r} ({label_tag})")

    @_serialized
    def get_image_info(self, image_id: str) -> dict:
        info = super().get_image_info(check_name(image_id, "image"))
        info.pop("path", None)  # no server path in an answer
        return info

    @_serialized
    def get_label_info(self, label_id: str, label_tag: str) -> dict:
        return super().get_label_info(check_name(label_id, "label"), check_name(label_tag, "tag"))

    @_serialized
    def get_labels_by_image_id(self, image_id: str) -> dict:
        return super().get_labels_by_image_id(check_name(image_id, "image"))

    def require_image(self, image_id: str) -> str:
        """The file of ``image_id``, or a 404 naming it."""
        uri = self.get_image_uri(image_id)
        if not uri or not os.path.isfile(uri):
            raise RequestError(f"image: no image {image_id!r} in the datastore.", 404)
        return uri

    # ---- writes -----------------------------------------------------------------------------
    def _check_file(self, filename: str, what: str) -> None:
        if not str(filename).endswith(DATASTORE_SUFFIXES):
            raise RequestError(
                f"{what}: the datastore keeps {list(DATASTORE_SUFFIXES)} files, got {os.path.basename(filename)!r}."
            )

    @_serialized
    def add_image(self, image_id: str, image_filename: str, image_info: dict) -> str:
        check_name(image_id, "image")
        self._check_file(image_filename, "image")
        if image_id in self._datastore.objects:
            raise RequestError(
                f"image: {image_id!r} is already in the datastore; delete it first or choose another id.", 409
            )
        suffix = next(s for s in DATASTORE_SUFFIXES if image_filename.endswith(s))
        if not self.inside(os.path.join(self._datastore.image_path(), image_id + suffix)):
            raise RequestError(f"image: {image_id!r} would be stored outside the studies folder.")
        return super().add_image(image_id, image_filename, image_info)

    @_serialized
    def remove_image(self, image_id: str) -> None:
        uri = self.get_image_uri(check_name(image_id, "id"))
        if not uri or not os.path.isfile(uri):
            raise RequestError(f"id: no image {image_id!r} in the datastore.", 404)
        super().remove_image(image_id)
        self.refresh()  # at once, not when the file watcher gets to it

    @_serialized
    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict) -> str:
        check_name(image_id, "image")
        check_name(label_tag, "tag")
        self._check_file(label_filename, "label")
        if image_id not in self._datastore.objects:
            raise RequestError(f"image: no image {image_id!r} in the datastore.", 404)
        suffix = next(s for s in DATASTORE_SUFFIXES if label_filename.endswith(s))
        if not self.inside(os.path.join(self._datastore.label_path(label_tag), image_id + suffix)):
            raise RequestError(f"tag: {label_tag!r} would store the label outside the studies folder.")
        return super().save_label(image_id, label_filename, label_tag, label_info)

    @_serialized
    def remove_label(self, label_id: str, label_tag: str) -> None:
        uri = self.get_label_uri(label_id, label_tag)
        if not uri or not os.path.isfile(uri):
            raise RequestError(f"id: no label {label_id!r} with tag {label_tag!r} in the datastore.", 404)
        super().remove_label(label_id, label_tag)
        self.refresh()

    @_serialized
    def update_image_info(self, image_id: str, info: dict) -> None:
        if check_name(image_id, "image") not in self._datastore.objects:
            raise RequestError(f"image: no image {image_id!r} in the datastore.", 404)
        super().update_image_info(image_id, info)

    @_serialized
    def update_label_info(self, label_id: str, label_tag: str, info: dict) -> None:
        if not self._datastore.label(check_name(label_id, "label"), check_name(label_tag, "tag")):
            raise RequestError(f"label: no label {label_id!r} with tag {label_tag!r} in the datastore.", 404)
        super().update_label_info(label_id, label_tag, info)

    @_serialized
    def datalist(self, full_path=True) -> list:
        """Image / label pairs with tag ``final``; relative to the studies folder unless ``full_path``."""
        pairs = super().datalist(full_path=True)
        if full_path:
            return pairs
        return [{k: os.path.relpath(v, self.root) for k, v in d.items()} for d in pairs]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _answer(error: RequestError) -> JSONResponse:
    headers = {"Retry-After": "10"} if error.status_code == 429 else None
    return JSONResponse({"detail": str(error)}, status_code=error.status_code, headers=headers)


def _guarded(what: str):
    """Turn a handler's :class:`RequestError` into its 4xx answer and anything unexpected into a 500 whose
    message points to the log (the traceback goes there, not to the client)."""

    def wrap(handler: Callable):
        @functools.wraps(handler)
        async def run(*args, **kwargs):
            try:
                return await handler(*args, **kwargs)
            except RequestError as e:
                logger.info(f"{what}: refused ({e.status_code}): {e}")
                return _answer(e)
            except MONAILabelException as e:
                logger.info(f"{what}: refused (400): {e.msg}")
                return JSONResponse({"detail": str(e.msg)}, status_code=400)
            except Exception as e:  # noqa: BLE001 - the client gets a message, the log the traceback
                from fastapi import HTTPException

                if isinstance(e, HTTPException):
                    return JSONResponse({"detail": e.detail}, status_code=e.status_code)
                logger.exception(f"{what}: failed")
                return JSONResponse(
                    {"detail": f"{what} failed on the server ({type(e).__name__}); the server's log has the details."},
                    status_code=500,
                )

        return run

    return wrap


async def _check_length(request: Request, limit: int) -> None:
    """Refuse a body without Content-Length (411) or larger than ``limit`` (413) before reading it; a body up to
    four times the limit is read and dropped first, so that the client, still sending, gets the message instead of
    a reset connection (nothing of it is kept)."""
    length = request.headers.get("content-length")
    if length is None:
        if request.headers.get("transfer-encoding"):
            raise RequestError(
                "send the request body with a Content-Length header; chunked bodies are not accepted.", 411
            )
        return
    if not length.strip().isdigit():
        raise RequestError(f"Content-Length must be a number of bytes, got {length!r}.")
    if int(length) > limit:
        if int(length) <= 4 * limit:
            async for _ in request.stream():
                pass
        raise RequestError(
            f"the request body is {int(length)} bytes; the server accepts at most {limit} per request.", 413
        )


async def _form(request: Request, limit: int):
    await _check_length(request, limit)
    try:
        return await request.form(max_files=2, max_fields=8, max_part_size=MAX_FIELD_BYTES)
    except Exception as e:  # noqa: BLE001 - malformed multipart bodies raise several types
        detail = getattr(e, "detail", None) or getattr(e, "message", None) or str(e)
        raise RequestError(f"the request body is not a valid multipart form ({detail}).") from None


def _text(form, key: str):
    value = form.get(key)
    if isinstance(value, UploadFile):
        raise RequestError(f"{key} must be a form field of text (JSON), not a file.")
    return value


def _file(form, key: str, what: str) -> UploadFile | None:
    value = form.get(key)
    if value is None:
        return None
    if not isinstance(value, UploadFile):
        raise RequestError(
            f"{key} must be an uploaded file ({what}); text such as a server path is never read (give a datastore id "
            "in the query instead)."
        )
    return value


def _query(request: Request, key: str) -> str | None:
    values = request.query_params.getlist(key)
    if len(values) > 1:
        raise RequestError(f"{key} must be given once, got {len(values)} values.")
    return values[0] if values else None


def _upload_stem(filename: str | None) -> str:
    name = os.path.basename(str(filename or "").replace("\\", "/"))
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".gz"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name.rsplit(".", 1)[0] if "." in name[1:] else name


class _Uploads:
    """The files one request stored in the app's private folder, removed when the request ends."""

    def __init__(self, app):
        self.app = app
        self.paths: list[str] = []

    async def save(self, upload: UploadFile, what: str) -> tuple[str, ImageHeader]:
        limits = self.app.limits

        def store():
            upload.file.seek(0)
            head = upload.file.read(HEAD_BYTES)
            upload.file.seek(0)
            header = check_declared_size(
                sniff_image(head, what), what, limits.max_voxels
            )  # before any copy or decoding
            path = self.app.uploads.new_path(header.suffix)
            self.paths.append(path)
            copy_limited(upload.file, path, limits.max_upload_bytes, what)
            return path, inspect_image_file(path, what, limits.max_voxels)

        return await run_in_threadpool(store)

    def remove(self) -> None:
        self.app.uploads.remove(*self.paths)
        self.paths.clear()


async def _on_queue(app, fn: Callable, *args):
    return await asyncio.wrap_future(app.jobs.submit(fn, *args))


def _decode_check(path: str, what: str) -> tuple:
    """Decode an upload once (on the queue) to store only readable, finite images; its spatial shape."""
    image = read_upload(path, what)
    return tuple(int(n) for n in image.shape[1:])


# ---------------------------------------------------------------------------------------------
# the routes
# ---------------------------------------------------------------------------------------------
def build_router(app) -> APIRouter:
    """The app's endpoints (see the module docstring) for the MedGenApp ``app``."""
    router = APIRouter()
    prefix = settings.MONAI_LABEL_API_STR
    body_limit = 2 * app.limits.max_upload_bytes + 4 * MAX_FIELD_BYTES  # /infer: an image and a mask
    one_file_limit = app.limits.max_upload_bytes + 2 * MAX_FIELD_BYTES  # datastore uploads

    def ds() -> ConfinedDatastore:
        return app.datastore()

    # in this order: the routes are matched in the order they are added
    _add_infer_route(router, prefix, app, ds, body_limit)
    _add_activelearning_route(router, prefix, app, ds)
    _add_datastore_image_routes(router, prefix, app, ds, one_file_limit)
    _add_datastore_label_routes(router, prefix, app, ds, one_file_limit)
    _add_disabled_routes(router, prefix)
    return router


def _add_infer_route(router: APIRouter, prefix: str, app, ds: Callable, body_limit: int) -> None:
    """``POST /infer/{model}`` (see the module docstring); ``ds()`` is the app's datastore."""

    @router.post(prefix + "/infer/{model}", summary="Restore or generate a volume (image: datastore id or upload)")
    @_guarded("infer")
    async def infer(request: Request, model: str):
        if model not in app.served:
            why = f" ({app.skipped[model]})" if model in app.skipped else ""
            raise RequestError(f"model {model!r} is not served{why}; served models: {sorted(app.served)}.", 404)
        served = app.served[model]
        output = _query(request, "output") or "all"
        if output not in ("all", "image", "json"):
            raise RequestError(f"output must be one of ['all', 'image', 'json'], got {output!r}.")
        if _query(request, "session_id"):
            raise RequestError(
                "session_id: sessions are not served by this app; give a datastore image id or upload the image."
            )
        image_id = _query(request, "image") or None
        form = await _form(request, body_limit)
        uploads = _Uploads(app)
        try:
            params = parse_params(_text(form, "params"), [*served.config(), "label_tag"], model=model)
            options = served.parse_options(params)
            label_tag = params.get("label_tag")
            if label_tag not in (None, ""):
                check_name(label_tag, "label_tag")
            upload = _file(form, "file", "the image")
            mask = _file(form, "label", "the inpainting mask")
            if image_id and upload is not None:
                raise RequestError(
                    "image: give either a datastore id (?image=ID) or an upload (form field 'file'), not both."
                )
            if not image_id and upload is None:
                raise RequestError(
                    "image: give the id of a datastore image (?image=ID) or upload the image (form field 'file')."
                )
            if mask is not None and served.task != "inpaint":
                raise RequestError(f"label: a mask is for inpainting models only; model {model} does not use one.")
            if image_id:  # off the event loop: a DICOMweb datastore downloads the series on first use
                image_path = await run_in_threadpool(ds().require_image, check_name(image_id, "image"))
                header = await run_in_threadpool(inspect_image_file, image_path, "image", app.limits.max_voxels)
            else:
                image_path, header = await uploads.save(upload, "file (the image)")
            request_data = {"model": model, "image": image_path, "medgen_image_id": image_id or "", **params}
            if mask is not None:
                request_data["label"], _ = await uploads.save(mask, "label (the mask)")
            served.check_work(options, header.spatial_shape, app.limits.max_work)
            result = await _on_queue(app, app.infer, request_data)
            return await run_in_threadpool(_infer_answer, app, result, output)
        finally:
            uploads.remove()
            await form.close()


def _add_activelearning_route(router: APIRouter, prefix: str, app, ds: Callable) -> None:
    """``POST /activelearning/{strategy}`` (see the module docstring); ``ds()`` is the app's datastore."""

    @router.post(prefix + "/activelearning/{strategy}", summary="Next sample (generate: a new synthetic volume)")
    @_guarded("activelearning")
    async def activelearning(request: Request, strategy: str):
        strategies = app._strategies
        if strategy not in strategies:
            raise RequestError(f"strategy {strategy!r} is not served; strategies: {sorted(strategies)}.", 404)
        await _check_length(request, MAX_FIELD_BYTES)
        body = await request.body()
        task = strategies[strategy]
        model = getattr(task, "model", None)
        if model is not None:
            params = parse_params(body, [*model.config(), "reference"], what="the request body", model=model.name)
            if params.get("reference") not in (None, ""):
                reference = ds().require_image(check_name(params["reference"], "reference"))
                await run_in_threadpool(inspect_image_file, reference, "reference", app.limits.max_voxels)
            check = dict(params)
            check.setdefault("seed", 0)
            model.check_work(model.parse_options(check), None, app.limits.max_work)
        else:
            params = parse_params(body, [], what="the request body")
        return await _on_queue(app, _next_sample, app, strategy, params)


async def _check_checksum(path: str, image_id: str, check_sum: str) -> None:
    """Refuse (404) the image file ``path`` unless it has the digest ``check_sum`` (``[ALGO:]hex digest``, SHA256
    when no algorithm is named; the digest's case does not matter); the file is hashed off the event loop."""
    algo, _, digest = check_sum.rpartition(":")
    algo = (algo or "SHA256").upper()
    if algo not in CHECKSUM_ALGORITHMS:
        raise RequestError(
            f"check_sum must be '[ALGO:]hex digest' with ALGO one of {', '.join(CHECKSUM_ALGORITHMS)}, got {check_sum!r}."
        )
    # MONAI Label's file_checksum answers "ALGO:hexdigest"
    actual = (await run_in_threadpool(file_checksum, path, algo)).rpartition(":")[2]
    if digest.strip().lower() != actual.lower():
        raise RequestError(f"image: {image_id!r} has another checksum.", 404)


#: what MONAI Label's ``file_checksum`` computes
CHECKSUM_ALGORITHMS = ("SHA256", "SHA512", "MD5")


def _add_datastore_image_routes(router: APIRouter, prefix: str, app, ds: Callable, one_file_limit: int) -> None:
    """``/datastore/`` and ``/datastore/image...`` (see the module docstring); ``ds()`` is the app's datastore."""

    @router.get(prefix + "/datastore/", summary="Images and labels of the datastore")
    @_guarded("datastore")
    async def datastore(request: Request):
        output = _query(request, "output") or "stats"
        if output not in ("stats", "all", "train"):
            raise RequestError(f"output must be one of ['stats', 'all', 'train'], got {output!r}.")
        d = ds()  # a DICOMweb datastore asks its server: off the event loop
        return await run_in_threadpool(
            lambda: d.json() if output == "all" else d.datalist(full_path=False) if output == "train" else d.status()
        )

    async def add_image(request: Request):
        form = await _form(request, one_file_limit)
        uploads = _Uploads(app)
        try:
            upload = _file(form, "file", "the image")
            if upload is None:
                raise RequestError("file: upload the image (form field 'file').")
            image_id = _query(request, "image") or _upload_stem(upload.filename)
            check_name(image_id, "image")
            if image_id in ds().list_images():
                raise RequestError(
                    f"image: {image_id!r} is already in the datastore; delete it first or choose another id.", 409
                )
            info = parse_json_object(_text(form, "params"), "params")
            path, header = await uploads.save(upload, "file (the image)")
            if header.kind == "mha":
                raise RequestError(
                    "file: the datastore keeps NIfTI (.nii, .nii.gz) and NRRD images; convert the MetaImage first."
                )
            await _on_queue(app, _decode_check, path, "file (the image)")
            for key in ("name", "ts", "path"):
                info.pop(key, None)
            image_id = await run_in_threadpool(ds().add_image, image_id, path, info)
            return {"image": image_id}
        finally:
            uploads.remove()
            await form.close()

    router.add_api_route(
        prefix + "/datastore/image",
        _guarded("datastore upload")(add_image),
        methods=["PUT"],
        summary="Upload a new image (checked, never overwriting one)",
    )
    router.add_api_route(
        prefix + "/datastore/", _guarded("datastore upload")(add_image), methods=["PUT"], include_in_schema=False
    )

    async def remove_image(request: Request):
        image_id = _query(request, "id")
        await run_in_threadpool(ds().remove_image, check_name(image_id, "id"))
        return {}

    router.add_api_route(
        prefix + "/datastore/image",
        _guarded("datastore delete")(remove_image),
        methods=["DELETE"],
        summary="Remove an image and its labels",
    )
    router.add_api_route(
        prefix + "/datastore/", _guarded("datastore delete")(remove_image), methods=["DELETE"], include_in_schema=False
    )

    async def download_image(request: Request):
        image_id = check_name(_query(request, "image"), "image")
        path = await run_in_threadpool(ds().require_image, image_id)
        if request.method == "HEAD":
            check_sum = _query(request, "check_sum")
            if check_sum:
                await _check_checksum(path, image_id, check_sum)
            return Response(status_code=200)
        return FileResponse(path, media_type=get_mime_type(path), filename=os.path.basename(path))

    router.add_api_route(
        prefix + "/datastore/image",
        _guarded("datastore download")(download_image),
        methods=["GET", "HEAD"],
        summary="Download an image (HEAD: does it exist)",
    )

    @router.get(prefix + "/datastore/image/info", summary="Image info")
    @_guarded("datastore info")
    async def image_info(request: Request):
        image_id = check_name(_query(request, "image"), "image")
        ds().require_image(image_id)
        return ds().get_image_info(image_id)

    @router.put(prefix + "/datastore/image/info", summary="Update image info")
    @_guarded("datastore info")
    async def put_image_info(request: Request):
        image_id = check_name(_query(request, "image"), "image")
        form = await _form(request, 4 * MAX_FIELD_BYTES)
        try:
            info = parse_json_object(_text(form, "info"), "info")
        finally:
            await form.close()
        await run_in_threadpool(ds().update_image_info, image_id, info)
        return {}


def _add_datastore_label_routes(router: APIRouter, prefix: str, app, ds: Callable, one_file_limit: int) -> None:
    """``/datastore/label...`` and ``/datastore/updatelabelinfo`` (see the module docstring); ``ds()`` is the app's
    datastore."""

    @router.put(prefix + "/datastore/label", summary="Save a label (e.g. an inpainting mask) for an image")
    @_guarded("datastore label")
    async def save_label(request: Request):
        image_id = check_name(_query(request, "image"), "image")
        tag = check_name(_query(request, "tag") or DefaultLabelTag.FINAL.value, "tag")
        image_path = ds().require_image(image_id)
        form = await _form(request, one_file_limit)
        uploads = _Uploads(app)
        try:
            upload = _file(form, "label", "the label")
            if upload is None:
                raise RequestError("label: upload the label image (form field 'label').")
            info = parse_json_object(_text(form, "params"), "params")
            path, header = await uploads.save(upload, "label")
            if header.kind == "mha":
                raise RequestError(
                    "label: the datastore keeps NIfTI (.nii, .nii.gz) and NRRD images; convert the MetaImage first."
                )
            image_header = await run_in_threadpool(inspect_image_file, image_path, "image")
            if header.spatial_shape != image_header.spatial_shape:
                raise RequestError(
                    f"label: its grid {header.spatial_shape} is not the image's {image_header.spatial_shape}; a label must be "
                    "on its image's grid."
                )
            await _on_queue(app, _decode_check, path, "label")
            for key in ("name", "ts", "path"):
                info.pop(key, None)
            label_id = await run_in_threadpool(ds().save_label, image_id, path, tag, info)
            answer = app.on_save_label(image_id, label_id) or {}
            answer.update({"image": image_id, "label": label_id})
            return answer
        finally:
            uploads.remove()
            await form.close()

    @router.delete(prefix + "/datastore/label", summary="Remove a label")
    @_guarded("datastore label delete")
    async def remove_label(request: Request):
        label_id = check_name(_query(request, "id"), "id")
        tag = check_name(_query(request, "tag"), "tag")
        await run_in_threadpool(ds().remove_label, label_id, tag)
        return {}

    async def download_label(request: Request):
        label_id = _query(request, "label") or _query(request, "image")
        label_id = check_name(label_id, "label")
        tag = check_name(_query(request, "tag"), "tag")
        path = ds().get_label_uri(label_id, tag)
        if not path or not os.path.isfile(path):
            raise RequestError(f"label: no label {label_id!r} with tag {tag!r} in the datastore.", 404)
        if request.method == "HEAD":
            return Response(status_code=200)
        return FileResponse(path, media_type=get_mime_type(path), filename=os.path.basename(path))

    router.add_api_route(
        prefix + "/datastore/label",
        _guarded("datastore label download")(download_label),
        methods=["GET", "HEAD"],
        summary="Download a label (HEAD: does it exist)",
    )

    @router.get(prefix + "/datastore/label/info", summary="Label info")
    @_guarded("datastore label info")
    async def label_info(request: Request):
        label_id = check_name(_query(request, "label"), "label")
        tag = check_name(_query(request, "tag"), "tag")
        if not ds().get_label_uri(label_id, tag):
            raise RequestError(f"label: no label {label_id!r} with tag {tag!r} in the datastore.", 404)
        return ds().get_label_info(label_id, tag)

    async def put_label_info(request: Request):
        label_id = check_name(_query(request, "label"), "label")
        tag = check_name(_query(request, "tag"), "tag")
        form = await _form(request, 4 * MAX_FIELD_BYTES)
        try:
            text = _text(form, "info") if form.get("info") is not None else _text(form, "params")
            info = parse_json_object(text, "info")
        finally:
            await form.close()
        await run_in_threadpool(ds().update_label_info, label_id, tag, info)
        return {}

    for path in ("/datastore/label/info", "/datastore/updatelabelinfo"):
        router.add_api_route(
            prefix + path,
            _guarded("datastore label info")(put_label_info),
            methods=["PUT"],
            include_in_schema=path.endswith("/info"),
            summary="Update label info",
        )


def _add_disabled_routes(router: APIRouter, prefix: str) -> None:
    """A 404 with a message for every MONAI Label endpoint this app does not serve (:data:`DISABLED`)."""
    for start, what in DISABLED.items():

        async def disabled(request: Request, rest: str = "", what=what):
            return JSONResponse(
                {"detail": f"{request.url.path}: the monai_medgen app does not serve {what}."}, status_code=404
            )

        for path in (start, start + "/", start + "/{rest:path}"):
            router.add_api_route(
                prefix + path,
                disabled,
                methods=["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"],
                include_in_schema=False,
            )


def _infer_answer(app, result: dict, output: str):
    """The answer of ``/infer``: the result volume (read, then removed from the private folder) and/or its JSON."""
    path = result.get("file")
    params = result.get("params") or {}
    try:
        if output == "json":
            return JSONResponse(params)
        if not path or not os.path.isfile(path):
            raise RuntimeError("the infer task wrote no result file")
        data = Path(path).read_bytes()
        name = os.path.basename(path)
    finally:
        if path:
            app.uploads.remove(path)
    if output == "image":
        return Response(
            data, media_type=get_mime_type(name), headers={"Content-Disposition": f'attachment; filename="{name}"'}
        )
    from requests_toolbelt import MultipartEncoder

    body = MultipartEncoder(
        fields={"params": (None, json.dumps(params), "application/json"), "image": (name, data, get_mime_type(name))}
    )
    return Response(content=body.to_string(), media_type=body.content_type)


def _next_sample(app, strategy: str, params: dict) -> dict:
    """MONAI Label's active-learning step without server paths in the answer."""
    import time

    request = {"strategy": strategy, **params}
    result = app.next_sample(request)
    if not result:
        return {}
    result.pop("path", None)
    image_id = result["id"]
    datastore = app.datastore()
    info = datastore.get_image_info(image_id)
    chosen = info.get("strategy", {})
    chosen[strategy] = {"ts": int(time.time()), "client_id": params.get("client_id")}
    try:
        datastore.update_image_info(image_id, {"strategy": chosen})
    except (RequestError, OSError) as e:
        logger.warning(f"could not record the strategy in {image_id!r}'s info: {e}")
    result.update(info)
    result.pop("path", None)
    return result


def install(fastapi_app: FastAPI, app) -> None:
    """Put :func:`build_router`'s endpoints in front of MONAI Label's on the running ``fastapi_app`` and drop the
    MONAI Label routes they replace or disable."""
    prefix = settings.MONAI_LABEL_API_STR
    replaced = ("/infer/{model}", "/activelearning/{strategy}")

    def ours(path: str) -> bool:
        path = path[len(prefix) :] if prefix and path.startswith(prefix) else path
        return path in replaced or path.startswith("/datastore") or any(path.startswith(p) for p in DISABLED)

    kept = [r for r in fastapi_app.router.routes if not ours(getattr(r, "path", ""))]
    fastapi_app.router.routes[:] = build_router(app).routes + kept
    fastapi_app.openapi_schema = None
    logger.info(f"monai_medgen endpoints installed; not served: {sorted(DISABLED)}")
