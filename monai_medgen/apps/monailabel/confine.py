"""What keeps the MONAI Label app inside its studies folder and within its means, written without MONAI Label or
FastAPI so that the main test suite checks it.

- :func:`check_name`: ids of images and label tags are names, never paths;
- :func:`sniff_image` / :func:`inspect_image_file`: an upload's type from its first bytes and the voxel count its
  header declares, checked against a cap *before* anything is decoded (an 800^3 NIfTI of zeros is 2 MB gzipped
  and 2 GB decoded);
- :func:`copy_limited`: an upload copied to the app's private folder, refused past a byte cap;
- :class:`UploadFolder`: that private folder (0700, one per server process, emptied after every request and
  removed at exit; folders of dead servers are removed at the next start);
- :func:`parse_params`: the ``params`` JSON of a request, an object whose keys are the model's options only;
- :class:`JobQueue`: one worker thread and a bounded waiting line for the compute, so the event loop (and
  ``/info/``) stays free while inferences run;
- :class:`ServerLimits`: the caps, from the app's ``--conf`` keys.

Every refusal is a :class:`~monai_medgen.apps.monailabel.served.RequestError` with a 4xx status and a message
naming the input and what was expected.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import io as _io
import json
import logging
import math
import os
import re
import shutil
import struct
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from monai_medgen.apps.monailabel.served import RequestError

__all__ = [
    "ImageHeader",
    "JobQueue",
    "ServerLimits",
    "UploadFolder",
    "check_declared_size",
    "check_name",
    "copy_limited",
    "inspect_image_file",
    "parse_json_object",
    "parse_params",
    "sniff_image",
]

logger = logging.getLogger(__name__)

#: characters a name may not hold (path separators, Windows-reserved, control characters)
_FORBIDDEN = re.compile(r'[/\\:*?"<>|\x00-\x1f\x7f]')
MAX_NAME_LENGTH = 128
#: bytes of an upload read to find its type and header (a NRRD / MetaImage header must fit)
HEAD_BYTES = 64 * 1024


def check_name(value, what: str = "image") -> str:
    """``value`` as a datastore name (an image id, a label tag): 1-128 characters, none of ``/ \\ : * ? " < > |``
    or control characters, not starting with ``.``, ``-`` or a space, not ending with ``.`` or a space.

    Raises:
        RequestError: (400) naming ``what``, for anything else (a path, ``..``, an empty or non-text value).
    """
    expected = (
        f"{what} must be a name of 1-{MAX_NAME_LENGTH} characters without '/', '\\', ':', '*', '?', '\"', '<', '>', '|' "
        "or control characters, not starting with '.', '-' or a space (an id of the datastore, never a path)"
    )
    if not isinstance(value, str) or not value:
        raise RequestError(f"{expected}; got {value!r}.")
    if len(value) > MAX_NAME_LENGTH or _FORBIDDEN.search(value) or value[0] in ".- " or value[-1] in ". ":
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise RequestError(f"{expected}; got {shown!r}.")
    return value


# ---------------------------------------------------------------------------------------------
# image headers
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """What an image file's header declares.

    Attributes:
        kind: ``"nifti"``, ``"nrrd"`` or ``"mha"``.
        suffix: the file suffix that kind is stored with (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``).
        shape: declared array shape (spatial axes, then channels / time where the format has them).
        bytes_per_voxel: declared size of one value (0 when the format does not say).
        data_offset: where the voxels start in an uncompressed file (None: compressed or not known).
    """

    kind: str
    suffix: str
    shape: tuple
    bytes_per_voxel: float = 0.0
    data_offset: int | None = None

    @property
    def voxels(self) -> int:
        return int(math.prod(self.shape))

    @property
    def spatial_shape(self) -> tuple:
        """The first three axes (or two): what a restoration sees."""
        return tuple(self.shape[:3])


_FORMATS = "a NIfTI (.nii, .nii.gz), NRRD (.nrrd, data attached) or MetaImage (.mha, data attached) image"
_NRRD_TYPES = {
    "signed char": 1,
    "int8": 1,
    "int8_t": 1,
    "uchar": 1,
    "unsigned char": 1,
    "uint8": 1,
    "uint8_t": 1,
    "short": 2,
    "short int": 2,
    "signed short": 2,
    "signed short int": 2,
    "int16": 2,
    "int16_t": 2,
    "ushort": 2,
    "unsigned short": 2,
    "unsigned short int": 2,
    "uint16": 2,
    "uint16_t": 2,
    "int": 4,
    "signed int": 4,
    "int32": 4,
    "int32_t": 4,
    "uint": 4,
    "unsigned int": 4,
    "uint32": 4,
    "uint32_t": 4,
    "longlong": 8,
    "long long": 8,
    "long long int": 8,
    "signed long long": 8,
    "signed long long int": 8,
    "int64": 8,
    "int64_t": 8,
    "ulonglong": 8,
    "unsigned long long": 8,
    "unsigned long long int": 8,
    "uint64": 8,
    "uint64_t": 8,
    "float": 4,
    "double": 8,
}
_MET_TYPES = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_LONG": 4,
    "MET_ULONG": 4,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}


def _dims(values: Iterable, what: str) -> tuple:
    dims = tuple(int(v) for v in values)
    if not dims or len(dims) > 7 or min(dims) < 1:
        raise RequestError(f"{what}: its header declares invalid dimensions {dims}; a damaged or hand-made file?")
    return dims


def _nifti(head: bytes, what: str, compressed: bool) -> ImageHeader | None:
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            magic = head[344:348]
            if magic == b"ni1\x00":
                raise RequestError(
                    f"{what}: a NIfTI pair (.hdr / .img) cannot be uploaded; send one .nii or .nii.gz file."
                )
            if magic != b"n+1\x00":
                return None
            dim = struct.unpack(endian + "8h", head[40:56])
            bitpix = struct.unpack(endian + "h", head[72:74])[0]
            offset = struct.unpack(endian + "f", head[108:112])[0]
        elif len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            if head[4:8] != b"n+2\x00":
                raise RequestError(
                    f"{what}: a NIfTI-2 pair (.hdr / .img) cannot be uploaded; send one .nii or .nii.gz file."
                )
            bitpix = struct.unpack(endian + "h", head[14:16])[0]
            dim = struct.unpack(endian + "8q", head[16:80])
            offset = struct.unpack(endian + "q", head[168:176])[0]
        else:
            continue
        if not 1 <= dim[0] <= 7:
            raise RequestError(f"{what}: its NIfTI header declares {dim[0]} dimensions; 1 to 7 are valid.")
        shape = _dims(dim[1 : dim[0] + 1], what)
        return ImageHeader(
            "nifti",
            ".nii.gz" if compressed else ".nii",
            shape,
            max(int(bitpix), 0) / 8,
            None if compressed else int(offset),
        )
    return None


def _text_header(head: bytes, what: str, kind: str) -> list:
    end = head.find(b"\n\n") if kind == "nrrd" else -1
    text = head[: end if end >= 0 else len(head)].decode("latin-1")
    lines = text.splitlines()
    if kind == "nrrd" and end < 0 and len(head) >= HEAD_BYTES:
        raise RequestError(f"{what}: its NRRD header is longer than {HEAD_BYTES} bytes; a damaged file?")
    return lines


def _nrrd(head: bytes, what: str) -> ImageHeader:
    fields = {}
    for line in _text_header(head, what, "nrrd")[1:]:
        if line.startswith("#") or ":" not in line or ":=" in line:
            continue
        key, value = line.split(":", 1)
        fields[key.strip().lower()] = value.strip()
    if "data file" in fields or "datafile" in fields:
        raise RequestError(
            f"{what}: a NRRD header naming a separate data file cannot be uploaded; send a .nrrd with its data attached."
        )
    if "sizes" not in fields:
        raise RequestError(f"{what}: its NRRD header has no 'sizes' field; a damaged file?")
    try:
        sizes = [int(v) for v in fields["sizes"].split()]
    except ValueError:
        raise RequestError(f"{what}: its NRRD 'sizes' field {fields['sizes']!r} is not a list of integers.") from None
    shape = _dims(sizes, what)
    size = _NRRD_TYPES.get(fields.get("type", "").lower(), 0)
    return ImageHeader("nrrd", ".nrrd", shape, size)


def _mha(head: bytes, what: str) -> ImageHeader:
    fields = {}
    for line in _text_header(head, what, "mha"):
        if "=" not in line:
            continue
        key, value = line.split("=", 1)
        fields[key.strip().lower()] = value.strip()
        if key.strip().lower() == "elementdatafile":
            break
    data_file = fields.get("elementdatafile")
    if data_file is None:
        raise RequestError(f"{what}: its MetaImage header has no ElementDataFile; a damaged or truncated file?")
    if data_file.upper() != "LOCAL":
        raise RequestError(
            f"{what}: a MetaImage header naming a separate data file cannot be uploaded; send an .mha with its data attached (ElementDataFile = LOCAL)."
        )
    try:
        sizes = [int(v) for v in fields.get("dimsize", "").split()]
        channels = int(fields.get("elementnumberofchannels", "1"))
    except ValueError:
        raise RequestError(
            f"{what}: its MetaImage DimSize {fields.get('dimsize')!r} is not a list of integers."
        ) from None
    shape = _dims(sizes, what)
    if channels > 1:
        shape = shape + (channels,)
    return ImageHeader("mha", ".mha", shape, _MET_TYPES.get(fields.get("elementtype", "").upper(), 0))


def sniff_image(head: bytes, what: str = "image") -> ImageHeader:
    """The type and declared shape of an image from its first bytes (:data:`HEAD_BYTES` or the whole file when
    smaller); a gzipped file has only its first kilobytes decompressed.

    Raises:
        RequestError: (400) naming ``what`` when the bytes are none of the accepted formats, name a separate data
            file, or declare invalid dimensions.
    """
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.GzipFile(fileobj=_io.BytesIO(head)) as f:
                inner = f.read(540)
        except (OSError, EOFError, ValueError):
            inner = b""
        found = _nifti(inner, what, compressed=True)
        if found is None:
            raise RequestError(f"{what}: a gzip file that is not a gzipped NIfTI image; send {_FORMATS}.")
        return found
    found = _nifti(head, what, compressed=False)
    if found is not None:
        return found
    if head.startswith(b"NRRD000"):
        return _nrrd(head, what)
    first = head[:256].lstrip().split(b"=", 1)[0].strip().lower()
    if first in (b"objecttype", b"ndims", b"comment", b"objectsubtype", b"transformtype"):
        return _mha(head, what)
    raise RequestError(f"{what}: not {_FORMATS} (its first bytes match none of these formats).")


def check_declared_size(header: ImageHeader, what: str = "image", max_voxels: int | None = None) -> ImageHeader:
    """``header``, or a :class:`RequestError` (413) naming ``what`` when it declares more than ``max_voxels``."""
    if max_voxels is not None and header.voxels > int(max_voxels):
        dims = " x ".join(str(n) for n in header.shape)
        raise RequestError(
            f"{what}: its header declares {dims} = {header.voxels} voxels; the server accepts at most {int(max_voxels)} "
            "voxels per image. Crop or downsample it.",
            413,
        )
    return header


def inspect_image_file(path: str | os.PathLike, what: str = "image", max_voxels: int | None = None) -> ImageHeader:
    """:func:`sniff_image` of a file, its declared voxel count checked against ``max_voxels`` and, for an
    uncompressed file, its size against what the header declares -- all before decoding.

    Raises:
        RequestError: 400 (see :func:`sniff_image`; a truncated file), 413 when the header declares more than
            ``max_voxels`` voxels.
    """
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    header = check_declared_size(sniff_image(head, what), what, max_voxels)
    if header.data_offset is not None and header.bytes_per_voxel > 0:
        needed = header.data_offset + header.voxels * header.bytes_per_voxel
        size = os.path.getsize(path)
        if size < needed:
            raise RequestError(f"{what}: the file is truncated: {size} bytes, its header declares {int(needed)}.")
    return header


def copy_limited(source, destination: str | os.PathLike, max_bytes: int, what: str = "file") -> int:
    """Copy the file object ``source`` to ``destination`` (created 0600) in chunks, at most ``max_bytes``.

    Raises:
        RequestError: (413) naming ``what`` when ``source`` holds more; ``destination`` is removed.
    """
    total = 0
    fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            while True:
                chunk = source.read(1 << 20)
                if not chunk:
                    break
                total += len(chunk)
                if total > max_bytes:
                    raise RequestError(
                        f"{what}: larger than {max_bytes} bytes, the most the server accepts per upload.", 413
                    )
                out.write(chunk)
    except BaseException:
        with _suppress():
            os.remove(destination)
        raise
    return total


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


# ---------------------------------------------------------------------------------------------
# the private folder of uploads and results
# ---------------------------------------------------------------------------------------------
class UploadFolder:
    """A private folder (mode 0700) for a server process's uploads and results: ``<tmp>/medgen_monailabel_<pid>_*``.

    :meth:`new_path` names a fresh file in it; the caller removes it (:meth:`remove`) when its request ends, also
    on failure. Folders left by server processes that no longer run (killed) are removed when the next one
    starts; :meth:`close` removes this one.

    Args:
        root: where to create the folder (default: the system's temporary folder, ``$TMPDIR``).
    """

    PREFIX = "medgen_monailabel_"

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root or tempfile.gettempdir())
        self.removed_stale = self._remove_stale()
        self.path = Path(tempfile.mkdtemp(prefix=f"{self.PREFIX}{os.getpid()}_", dir=self.root))
        os.chmod(self.path, 0o700)

    def _remove_stale(self) -> list:
        removed = []
        for folder in self.root.glob(f"{self.PREFIX}*"):
            try:
                pid = int(folder.name[len(self.PREFIX) :].split("_", 1)[0])
            except ValueError:
                continue
            if not folder.is_dir() or folder.stat().st_uid != os.getuid():
                continue
            if pid == os.getpid() or _alive(pid):
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(str(folder))
        if removed:
            logger.info(f"removed {len(removed)} upload folder(s) of server processes that no longer run: {removed}")
        return removed

    def new_path(self, suffix: str = "") -> str:
        return str(self.path / f"{uuid.uuid4().hex}{suffix}")

    def contains(self, path: str | os.PathLike) -> bool:
        return Path(os.path.realpath(path)).parent == Path(os.path.realpath(self.path))

    @staticmethod
    def remove(*paths) -> None:
        for p in paths:
            if p:
                try:
                    os.remove(p)
                except FileNotFoundError:
                    pass
                except OSError as e:
                    logger.warning(f"could not remove {p}: {e}")

    def files(self) -> list:
        return sorted(p.name for p in self.path.iterdir()) if self.path.is_dir() else []

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------------------------
# request parameters
# ---------------------------------------------------------------------------------------------
#: keys that generic MONAI Label clients (3D Slicer's module, OHIF) add to every request; they have no effect here
IGNORED_PARAMS = frozenset(
    {"client_id", "result_extension", "result_dtype", "result_compress", "restore_label_idx", "device"}
)


def parse_json_object(text, what: str = "params") -> dict:
    """``text`` (JSON as ``str`` / ``bytes``, or already decoded; empty: ``{}``) as a ``dict``.

    Raises:
        RequestError: (400) naming ``what`` when it is not valid JSON or not an object.
    """
    if text is None or (isinstance(text, (str, bytes)) and not text.strip()):
        return {}
    if isinstance(text, (str, bytes)):
        try:
            value = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise RequestError(
                f'{what} must be a JSON object such as {{"steps": 20}}; it is not valid JSON ({e}).'
            ) from None
    else:
        value = text
    if not isinstance(value, Mapping):
        raise RequestError(f'{what} must be a JSON object such as {{"steps": 20}}, got a JSON {type(value).__name__}.')
    return dict(value)


def parse_params(text, options: Iterable[str], what: str = "params", model: str = "") -> dict:
    """The ``params`` of a request (a JSON object, as text or already decoded), keeping only the model's
    ``options`` (keys generic clients add, :data:`IGNORED_PARAMS`, are dropped).

    Raises:
        RequestError: (400) when ``text`` is not a JSON object, or holds a key that is no option (``image``,
            ``label`` and other paths among them: images and masks go as datastore ids or uploads).
    """
    value = parse_json_object(text, what)
    allowed = set(options)
    unknown = sorted(str(k) for k in value if k not in allowed and k not in IGNORED_PARAMS)
    if unknown:
        whose = f" of model {model}" if model else ""
        raise RequestError(
            f"{what}: {unknown} {'is not an option' if len(unknown) == 1 else 'are not options'}{whose}; the options are "
            f"{sorted(allowed)} (images and masks go as a datastore id or an upload, never as a path in {what})."
        )
    return {k: v for k, v in value.items() if k in allowed}


# ---------------------------------------------------------------------------------------------
# the job queue
# ---------------------------------------------------------------------------------------------
class JobQueue:
    """Compute off the event loop: ``workers`` threads run the jobs, at most ``max_waiting`` more wait; a job
    beyond that is refused at once (429) instead of piling up.

    Args:
        workers: jobs that run at the same time (1: inferences share the cores one after the other).
        max_waiting: jobs that may wait for a worker.
    """

    def __init__(self, workers: int = 1, max_waiting: int = 2):
        if int(workers) < 1 or int(max_waiting) < 0:
            raise ValueError(f"workers must be >= 1 and max_waiting >= 0, got {workers} and {max_waiting}.")
        self.workers, self.max_waiting = int(workers), int(max_waiting)
        self._executor = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="medgen-job")
        self._lock = threading.Lock()
        self._admitted = 0
        self._running = 0

    def submit(self, fn: Callable, *args, **kwargs) -> concurrent.futures.Future:
        """Start ``fn(*args, **kwargs)`` on a worker (or queue it).

        Raises:
            RequestError: (429) when ``workers`` jobs run and ``max_waiting`` wait already.
        """
        with self._lock:
            if self._admitted >= self.workers + self.max_waiting:
                raise RequestError(
                    f"the server is busy: {self._running} job(s) running and {self._admitted - self._running} waiting, "
                    f"the most it queues ({self.workers} running + {self.max_waiting} waiting); retry later.",
                    429,
                )
            self._admitted += 1

        def run():
            with self._lock:
                self._running += 1
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self._running -= 1
                    self._admitted -= 1

        try:
            return self._executor.submit(run)
        except BaseException:
            with self._lock:
                self._admitted -= 1
            raise

    def status(self) -> dict:
        with self._lock:
            return {
                "running": self._running,
                "waiting": self._admitted - self._running,
                "workers": self.workers,
                "max_waiting": self.max_waiting,
            }

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------------------------------
# limits
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ServerLimits:
    """The app's caps (``--conf key value``; defaults in brackets):

    - ``max_voxels`` [16777216 = 256^3]: voxels an uploaded or datastore image may declare (checked on the header,
      before decoding); restored outputs are bounded by the same count;
    - ``max_upload_mb`` [256]: bytes of one uploaded file;
    - ``max_work`` [2e8]: network evaluations x voxels of one request (steps x samples x output voxels, twice that
      with classifier-free guidance); measured on one busy CPU core about 190 000 per second, so at most about
      20 minutes there (seconds on a GPU: raise it on a GPU server);
    - ``max_waiting`` [2]: requests that may wait while one runs (more get 429).
    """

    max_voxels: int = 256**3
    max_upload_bytes: int = 256 * 2**20
    max_work: float = 2e8
    max_waiting: int = 2

    @classmethod
    def from_conf(cls, conf: Mapping) -> ServerLimits:
        out = cls()

        def number(key, cast, low):
            if conf.get(key) in (None, ""):
                return None
            try:
                value = cast(float(conf[key]))
            except (TypeError, ValueError):
                raise ValueError(f"--conf {key} must be a number, got {conf[key]!r}.") from None
            if not (math.isfinite(value) and value >= low):
                raise ValueError(f"--conf {key} must be >= {low}, got {conf[key]!r}.")
            return value

        if (v := number("max_voxels", int, 1)) is not None:
            out.max_voxels = v
        if (v := number("max_upload_mb", float, 0.001)) is not None:
            out.max_upload_bytes = int(v * 2**20)
        if (v := number("max_work", float, 1)) is not None:
            out.max_work = v
        if (v := number("max_waiting", int, 0)) is not None:
            out.max_waiting = v
        return out

    def describe(self) -> dict:
        return {
            "max_voxels": int(self.max_voxels),
            "max_upload_bytes": int(self.max_upload_bytes),
            "max_work": float(self.max_work),
            "max_waiting": int(self.max_waiting),
        }
