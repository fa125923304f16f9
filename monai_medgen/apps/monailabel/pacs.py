"""The app's datastore when ``--studies`` is a DICOMweb root (a PACS such as Orthanc), and the derived series it
stores back there (needs ``monailabel``).

::

    monailabel start_server --app monai_medgen/apps/monailabel --studies http://127.0.0.1:8042/dicom-web \\
        --host 127.0.0.1 --port 8000 [--conf dicomweb_store false]

An image id is a SeriesInstanceUID of the server.  ``/infer/{model}?image=<SeriesInstanceUID>`` downloads the series
(WADO-RS, once, into the app's private folder), reads it with :func:`monai_medgen.io.read_image` (the geometry checks
of the command line) and restores it; the restored volume is then written as a derived series of that series
(:func:`monai_medgen.io.write_dicom_series`: same StudyInstanceUID, new SeriesInstanceUID and SOPInstanceUIDs, the
input's geometry, ImageType DERIVED\\SECONDARY, a DerivationDescription saying "synthetic") and stored into the same
study (STOW-RS).  The answer's JSON tells where: ``medgen.pacs = {"stored": true, "StudyInstanceUID",
"SeriesInstanceUID", "instances", "url"}``, or ``{"stored": false, "reason"}`` (a super-resolution onto a finer grid,
``--conf dicomweb_store false``, or the server refusing the instances).

Credentials: MONAI Label's ``MONAI_LABEL_DATASTORE_USERNAME`` / ``MONAI_LABEL_DATASTORE_PASSWORD`` (or the older
``MONAI_LABEL_DICOMWEB_*``), else ``http://user@host/...`` with ``$MEDGEN_DICOMWEB_PASSWORD``.  Uploads of images and
labels through the app are refused (store images in the PACS); the ``generate`` strategy's volumes stay in the
app's private folder.  Every request to the server goes through :class:`monai_medgen.dicomweb.DICOMwebClient`, so
errors name the server and what to check (a 502 answer), and an unknown series id is a 404.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time

import numpy as np
from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore

from monai_medgen import dicomweb, io
from monai_medgen.apps.monailabel.confine import check_name
from monai_medgen.apps.monailabel.served import RequestError
from monai_medgen.apps.monailabel.strategies import SYNTHETIC_PREFIX

__all__ = ["DICOMwebDatastore", "LIST_SECONDS"]

logger = logging.getLogger(__name__)

#: how long the list of the server's series is reused before asking again (seconds)
LIST_SECONDS = 30.0


def _credentials() -> tuple[str | None, str | None]:
    user = settings.MONAI_LABEL_DATASTORE_USERNAME or settings.MONAI_LABEL_DICOMWEB_USERNAME
    password = settings.MONAI_LABEL_DATASTORE_PASSWORD or settings.MONAI_LABEL_DICOMWEB_PASSWORD
    return (user or None), (password if user else None)


class DICOMwebDatastore(LocalDatastore):
    """The series of a DICOMweb server as the app's images (ids: SeriesInstanceUIDs), cached in ``cache_dir``.

    The cache holds each requested series' DICOM files (``dicom/<SeriesInstanceUID>/``) and the NIfTI the infer
    tasks read (``<SeriesInstanceUID>.nii.gz``, MONAI Label's local datastore on ``cache_dir``); nothing outside it
    is read or written.

    Args:
        url: the DICOMweb root (``--studies``).
        cache_dir: a private folder for the cache (created).
        store: whether restorations of a series are stored back as derived series (``--conf dicomweb_store``).
        timeout: seconds to wait for the server on each request.
    """

    def __init__(self, url: str, cache_dir: str, store: bool = True, timeout: float = 120.0):
        user, password = _credentials()
        self.client = dicomweb.DICOMwebClient(url, timeout=timeout, username=user, password=password, what="--studies")
        self.root = os.path.realpath(cache_dir)
        os.makedirs(os.path.join(self.root, "dicom"), exist_ok=True)
        self.store_results = bool(store)
        self._lock = threading.Lock()
        self._listed: tuple[float, list[str]] = (0.0, [])
        self._refs: dict[str, dicomweb.SeriesRef] = {}
        super().__init__(self.root, extensions=("*.nii.gz",), auto_reload=False)
        logger.info(
            f"DICOMweb datastore {self.client.url} (cache {self.root}); derived series stored back: {self.store_results}"
        )

    def name(self) -> str:
        return self.client.url

    def _server_error(self, error: dicomweb.DICOMwebError) -> RequestError:
        return RequestError(f"the DICOMweb server of this app could not be used: {error}", 502)

    def inside(self, path: str) -> bool:
        return os.path.realpath(path).startswith(self.root + os.sep)

    # ---- listing ------------------------------------------------------------------------------
    def list_images(self) -> list[str]:
        """The server's series (QIDO-RS, reused for ``LIST_SECONDS``) and the generated volumes of the cache."""
        now = time.monotonic()
        if now - self._listed[0] > LIST_SECONDS:
            try:
                found = self.client.search_series()
            except dicomweb.DICOMwebError as e:
                raise self._server_error(e) from e
            uids = [str(dicomweb.dicom_json_value(s, dicomweb.SERIES_UID, "")) for s in found]
            self._listed = (now, [u for u in uids if u])
        local = [i for i in super().list_images() if i.startswith(SYNTHETIC_PREFIX)]
        return list(dict.fromkeys(self._listed[1] + local))

    def status(self) -> dict:
        try:
            total = len(self.list_images())
        except RequestError as e:
            return {"total": 0, "completed": 0, "label_tags": {}, "dicomweb": self.client.url, "error": str(e)}
        return {"total": total, "completed": 0, "label_tags": {}, "dicomweb": self.client.url}

    # ---- reads ----------------------------------------------------------------------------------
    def series_folder(self, image_id: str) -> str:
        """The cached DICOM files of the series ``image_id``."""
        return os.path.join(self.root, "dicom", check_name(image_id, "image"))

    def is_series(self, image_id: str) -> bool:
        """Whether ``image_id`` is a series of the server that has been downloaded (not a generated volume)."""
        return image_id in self._refs and os.path.isdir(self.series_folder(image_id))

    def get_image_uri(self, image_id: str) -> str:
        """The NIfTI of ``image_id``: a generated volume of the cache, or the server's series of that UID
        (downloaded and converted on first use); ``""`` when the server has no such series.

        Raises:
            RequestError: 400 for an id that is not a name, 502 when the server cannot be used.
        """
        check_name(image_id, "image")
        cached = super().get_image_uri(image_id)
        if cached and self.inside(cached) and os.path.isfile(cached):
            if image_id.startswith(SYNTHETIC_PREFIX) or self.is_series(image_id):
                return cached
        try:
            dicomweb.check_uid(image_id, "image")
        except ValueError:
            return ""  # neither a generated volume nor a SeriesInstanceUID
        with self._lock:
            return self._download(image_id)

    def _download(self, uid: str) -> str:
        try:
            ref = self.client.find_series(uid)
        except dicomweb.SeriesNotFound:
            return ""
        except dicomweb.DICOMwebError as e:
            raise self._server_error(e) from e
        folder = self.series_folder(uid)
        work = tempfile.mkdtemp(prefix=".download_", dir=self.root)
        try:
            try:
                self.client.retrieve_series(ref.study_uid, uid, os.path.join(work, "series"))
            except dicomweb.DICOMwebError as e:
                raise self._server_error(e) from e
            try:
                image = io.read_image(os.path.join(work, "series"), series_uid=uid)
            except ValueError as e:
                raise RequestError(f"image: the series {uid} of {self.client.url} cannot be restored: {e}") from e
            nifti = os.path.join(work, f"{uid}.nii.gz")
            _write_nifti(image, nifti)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(os.path.join(work, "series"), folder)
            if uid in self._datastore.objects:
                super().remove_image(uid)
            info = {
                "SeriesInstanceUID": uid,
                "StudyInstanceUID": ref.study_uid,
                "Modality": ref.modality,
                "SeriesDescription": ref.description,
                "dicomweb": self.client.url,
            }
            super().add_image(uid, nifti, info)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        self._refs[uid] = ref
        logger.info(f"downloaded series {uid} of study {ref.study_uid} from {self.client.url}")
        return super().get_image_uri(uid)

    def require_image(self, image_id: str) -> str:
        """The NIfTI of ``image_id``, or a 404 naming it."""
        uri = self.get_image_uri(image_id)
        if not uri or not os.path.isfile(uri):
            raise RequestError(
                f"image: no series {image_id!r} on the DICOMweb server {self.client.url} (nor a generated "
                "volume of that id).",
                404,
            )
        return uri

    def get_image_info(self, image_id: str) -> dict:
        info = super().get_image_info(check_name(image_id, "image"))
        info.pop("path", None)
        return info

    # ---- writes ---------------------------------------------------------------------------------
    def _refuse(self, what: str) -> RequestError:
        return RequestError(
            f"{what}: the studies of this app are the DICOMweb server {self.client.url}; store images "
            "there (e.g. STOW-RS or Orthanc's upload), not through this app, and upload an inpainting "
            "mask with the /infer request (form field 'label')."
        )

    def add_image(self, image_id: str, image_filename: str, image_info: dict) -> str:
        """Only the ``generate`` strategy's volumes (ids ``synthetic_*``), kept in the cache."""
        if not check_name(image_id, "image").startswith(SYNTHETIC_PREFIX):
            raise self._refuse("image")
        if image_id in self._datastore.objects:
            raise RequestError(f"image: {image_id!r} is already in the datastore; choose another id.", 409)
        return super().add_image(image_id, image_filename, image_info)

    def remove_image(self, image_id: str) -> None:
        if not check_name(image_id, "id").startswith(SYNTHETIC_PREFIX) or image_id not in self._datastore.objects:
            raise self._refuse("id")
        super().remove_image(image_id)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict) -> str:
        raise self._refuse("label")

    def remove_label(self, label_id: str, label_tag: str) -> None:
        raise self._refuse("label")

    def update_image_info(self, image_id: str, info: dict) -> None:
        if check_name(image_id, "image") not in self._datastore.objects:
            raise RequestError(f"image: no image {image_id!r} in the datastore's cache.", 404)
        super().update_image_info(image_id, info)

    # ---- storing a result back --------------------------------------------------------------------
    def store_derived(self, image_id: str, result_path: str, provenance: dict | None) -> dict:
        """Write the restored volume ``result_path`` (a NIfTI on the series' grid) as a derived series of the series
        ``image_id`` and store it into that series' study.

        Returns:
            ``{"stored": True, "StudyInstanceUID", "SeriesInstanceUID", "instances", "url"}``, or
            ``{"stored": False, "reason": ...}`` when it is not stored (another grid, storing turned off, the server
            refusing it; the reason is logged as well).
        """
        if not self.store_results:
            return {"stored": False, "reason": "storing derived series is turned off (--conf dicomweb_store false)"}
        if not self.is_series(image_id):
            return {"stored": False, "reason": f"{image_id!r} is not a series of {self.client.url}"}
        reference = self.series_folder(image_id)
        volume = io.read_image(result_path)
        if volume.ndim == 3:  # a one-slice series
            volume = volume[..., None]
        shape, affine = io.image_header(reference, series_uid=image_id)
        shape = tuple(shape) + (1,) * (3 - len(shape))
        ref_affine = np.eye(4)
        ref_affine[: affine.shape[0] - 1, : affine.shape[0] - 1] = affine[:-1, :-1]
        ref_affine[: affine.shape[0] - 1, 3] = affine[:-1, -1]
        same_grid = tuple(volume.shape[1:]) == shape and np.allclose(
            np.asarray(volume.affine, dtype=np.float64)[:3], ref_affine[:3], atol=1e-3
        )
        if not same_grid:
            reason = (
                f"the result's grid {tuple(volume.shape[1:])} is not the series' grid {shape} (e.g. super-resolution "
                "onto a finer grid); a derived series keeps the input's grid, so it was not stored"
            )
            logger.info(f"{image_id}: {reason}")
            return {"stored": False, "reason": reason}
        prov = io.Provenance.from_json(json.dumps(provenance or {}))
        work = tempfile.mkdtemp(prefix=".derived_", dir=self.root)
        try:
            folder = io.write_dicom_series(
                volume, reference, os.path.join(work, "derived"), provenance=prov, series_uid=image_id
            )
            files = sorted(f for f in os.listdir(folder) if f.endswith(".dcm"))
            stored = self.client.store_instances(
                [os.path.join(folder, f) for f in files], study_uid=self._refs[image_id].study_uid
            )
        except dicomweb.DICOMwebError as e:
            logger.warning(f"{image_id}: the derived series was not stored: {e}")
            return {"stored": False, "reason": f"the server did not store the derived series: {e}"}
        finally:
            shutil.rmtree(work, ignore_errors=True)
        logger.info(
            f"{image_id}: stored derived series {stored.series_uid} ({len(stored.sop_instance_uids)} instances)"
        )
        return {"stored": True, **stored.as_dict()}


def _write_nifti(image, path: str) -> None:
    """The series as read (float32, its RAS affine) to a NIfTI that is not marked synthetic: it is the patient's
    image, which the infer tasks read like any datastore image."""
    import nibabel as nib

    array = np.asarray(image[0], dtype=np.float32)
    affine = np.eye(4)
    a = np.asarray(image.affine, dtype=np.float64)
    n = a.shape[0] - 1
    affine[:n, :n], affine[:n, 3] = a[:n, :n], a[:n, n]
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)
