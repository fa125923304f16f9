"""A PACS over DICOMweb with nothing but the Python standard library: find a series (QIDO-RS), download it
(WADO-RS) and store a derived series back into its study (STOW-RS).

::

    client = DICOMwebClient("http://127.0.0.1:8042/dicom-web")       # Orthanc's DICOMweb root
    ref = client.find_series("1.2.826...", study_uid="1.2.826...")  # raises SeriesNotFound / StudyNotFound
    files = client.retrieve_series(ref.study_uid, ref.series_uid, "series/")
    stored = client.store_instances(sorted(Path("derived/").glob("*.dcm")))

``monai-medgen restore --dicomweb URL --series-uid UID`` and the MONAI Label app's DICOMweb datastore
(``--studies http://host:8042/dicom-web``) are built on :class:`DICOMwebClient`.  Credentials: HTTP basic
authentication, given as ``http://user@host/...`` with the password in ``$MEDGEN_DICOMWEB_PASSWORD`` (or
``http://user:password@host/...``, which other users of the machine can see in the process list) or as arguments.

Every failure is a :class:`DICOMwebError` (a ``ValueError``) whose message names the server and says what to check:
an unreachable server, a path that is not a DICOMweb root (HTTP 404), refused credentials (401 / 403), other HTTP
errors with the server's own words, a malformed answer, or instances the server did not store.
:class:`StudyNotFound` and :class:`SeriesNotFound` say which UID the server does not hold.

:class:`OrthancServer` runs a private Orthanc (Debian: ``apt-get install orthanc orthanc-dicomweb``) on 127.0.0.1
for tests and demos: its own storage folder, a free port, a generated user, the DICOMweb plugin.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "DICOMwebClient",
    "DICOMwebError",
    "OrthancServer",
    "stop_process_group",
    "PASSWORD_ENV",
    "SeriesNotFound",
    "SeriesRef",
    "StoredSeries",
    "StudyNotFound",
    "check_uid",
    "dicom_json_value",
    "find_orthanc",
    "parse_multipart_related",
]

#: environment variable holding the password of ``http://user@host/...``
PASSWORD_ENV = "MEDGEN_DICOMWEB_PASSWORD"
#: the largest STOW-RS request body; a larger series is sent in several requests
MAX_STOW_BYTES = 64 << 20
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DICOM_JSON = "application/dicom+json"

# DICOM JSON keys (group + element, upper-case hex) used here
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
MODALITY, SERIES_DESCRIPTION, NUM_INSTANCES = "00080060", "0008103E", "00201209"
FAILED_SOP_SEQUENCE, REFERENCED_SOP_SEQUENCE, FAILURE_REASON = "00081198", "00081199", "00081197"
REFERENCED_SOP_UID, RETRIEVE_URL = "00081155", "00081190"


class DICOMwebError(ValueError):
    """A DICOMweb request that failed; ``status`` is the HTTP status when the server answered (else ``None``)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class StudyNotFound(DICOMwebError):
    """The server holds no study with the requested StudyInstanceUID."""


class SeriesNotFound(DICOMwebError):
    """The server holds no series with the requested SeriesInstanceUID (in the requested study)."""


def check_uid(value, what: str = "uid") -> str:
    """``value`` after checking that it is a DICOM UID: digits in dot-separated components, at most 64 characters.

    Raises:
        ValueError: naming ``what``.
    """
    if not isinstance(value, str) or len(value) > 64 or not _UID_RE.match(value):
        raise ValueError(
            f"{what} must be a DICOM UID (digits separated by dots, at most 64 characters, e.g. "
            f"1.2.826.0.1.3680043.8.498.1), got {value!r}."
        )
    return value


def dicom_json_value(item: dict, tag: str, default=None):
    """The first value of ``tag`` (e.g. ``"0020000E"``) in a DICOM JSON object, or ``default``."""
    values = (item.get(tag) or {}).get("Value") or []
    return values[0] if values else default


@dataclasses.dataclass(frozen=True)
class SeriesRef:
    """A series found on the server (QIDO-RS)."""

    study_uid: str
    series_uid: str
    modality: str = ""
    description: str = ""
    num_instances: int | None = None


@dataclasses.dataclass(frozen=True)
class StoredSeries:
    """What STOW-RS stored: the series' study and series UIDs, its instances and its WADO-RS address."""

    study_uid: str
    series_uid: str
    sop_instance_uids: tuple[str, ...]
    url: str

    def as_dict(self) -> dict:
        return {
            "StudyInstanceUID": self.study_uid,
            "SeriesInstanceUID": self.series_uid,
            "instances": len(self.sop_instance_uids),
            "url": self.url,
        }


def parse_multipart_related(body: bytes, content_type: str) -> list[tuple[dict, bytes]]:
    """The parts of a ``multipart/related`` body (RFC 2387, as WADO-RS answers): ``[(headers, content), ...]``
    with lower-case header names.

    Raises:
        ValueError: when the content type names no boundary or the body does not hold it.
    """
    match = re.search(r'boundary="?([^";]+)"?', content_type or "", re.IGNORECASE)
    if not match:
        raise ValueError(f"the answer is not multipart (Content-Type {content_type!r}, no boundary).")
    delimiter = b"\r\n--" + match.group(1).strip().encode("latin-1")
    chunks = (b"\r\n" + body).split(delimiter)
    if len(chunks) < 2:
        raise ValueError("the multipart answer holds no part (its boundary does not occur in the body).")
    parts = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):  # the close delimiter
            break
        line_end = chunk.find(b"\r\n")  # rest of the delimiter line (transport padding)
        head_end = chunk.find(b"\r\n\r\n", line_end)
        if line_end < 0 or head_end < 0:
            raise ValueError("a part of the multipart answer has no header block.")
        headers = {}
        for line in chunk[line_end + 2 : head_end].decode("latin-1").split("\r\n"):
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        parts.append((headers, chunk[head_end + 4 :]))
    return parts


class DICOMwebClient:
    """QIDO-RS, WADO-RS and STOW-RS against one DICOMweb root (e.g. ``http://127.0.0.1:8042/dicom-web``).

    Args:
        url: the DICOMweb root, ``http(s)://[user[:password]@]host[:port]/path``.
        timeout: seconds to wait for the server on each request.
        username: HTTP basic authentication (overrides the URL's).
        password: its password (default: the URL's, else ``$MEDGEN_DICOMWEB_PASSWORD`` when a user is given).
        what: how errors name the URL (e.g. the command-line option ``--dicomweb``).

    Raises:
        ValueError: naming ``what`` for a URL that is not http(s) with a host.
    """

    def __init__(
        self,
        url: str,
        timeout: float = 120.0,
        username: str | None = None,
        password: str | None = None,
        what: str = "url",
    ):
        parts = urllib.parse.urlsplit(str(url).strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"{what} must be the http(s) address of a DICOMweb root such as "
                f"http://127.0.0.1:8042/dicom-web, got {url!r}."
            )
        if parts.query or parts.fragment:
            raise ValueError(f"{what} must be a DICOMweb root without a query or fragment, got {url!r}.")
        try:
            port = parts.port
        except ValueError as e:
            raise ValueError(f"{what} has an invalid port: {url!r}.") from e
        user = username if username is not None else (urllib.parse.unquote(parts.username) if parts.username else None)
        if password is None and parts.password is not None and username is None:
            password = urllib.parse.unquote(parts.password)
        if user and password is None:
            password = os.environ.get(PASSWORD_ENV, "")
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        netloc = host + (f":{port}" if port else "")
        self.url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self.timeout = float(timeout)
        self.what = what
        self._auth = None
        if user:
            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode("ascii")
            self._auth = f"Basic {token}"
        self.username = user

    def __repr__(self) -> str:
        return f"DICOMwebClient({self.url!r}{', user ' + repr(self.username) if self.username else ''})"

    # ---- transport ------------------------------------------------------------------------------
    def _request(
        self, method: str, path: str, query: dict | None = None, headers: dict | None = None, body: bytes | None = None
    ) -> tuple[int, dict, bytes]:
        address = self.url + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        request = urllib.request.Request(address, data=body, method=method, headers=dict(headers or {}))
        if self._auth:
            request.add_header("Authorization", self._auth)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                return answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read()
        except urllib.error.HTTPError as e:
            detail = ""
            with contextlib.suppress(Exception):
                detail = " ".join(e.read(2000).decode("utf-8", "replace").split())[:300]
            raise DICOMwebError(self._http_message(e.code, e.reason, method, path, detail), e.code) from None
        except TimeoutError:
            raise DICOMwebError(
                f"{self.what} {self.url}: the server did not answer {method} {path} within "
                f"{self.timeout:g} s; check that it runs and is not overloaded."
            ) from None
        except urllib.error.URLError as e:
            reason = getattr(e, "reason", e)
            raise DICOMwebError(
                f"{self.what} {self.url}: cannot reach the server ({reason}); check the address and "
                "that the PACS (e.g. Orthanc with its DICOMweb plugin) is running."
            ) from None
        except (ConnectionError, OSError) as e:
            raise DICOMwebError(
                f"{self.what} {self.url}: the connection failed during {method} {path} ({type(e).__name__}: {e})."
            ) from None

    def _http_message(self, status: int, reason, method: str, path: str, detail: str) -> str:
        where = f"{self.what} {self.url}: {method} {path} answered HTTP {status} {reason or ''}".rstrip()
        if status == 401:
            how = (
                ("give the user as http://user@host/... with the password in $" + PASSWORD_ENV)
                if not self._auth
                else "the server refused the user name or password"
            )
            return f"{where}: authentication required or refused; {how}."
        if status == 403:
            return f"{where}: this user may not do that on the server."
        if status == 404:
            return (
                f"{where}: not found; is {self.url} the DICOMweb root (for Orthanc http://host:8042/dicom-web, with "
                "the orthanc-dicomweb plugin loaded)?"
            )
        return f"{where}{': ' + detail if detail else ''}."

    def _json(self, path: str, query: dict | None = None) -> list:
        _, headers, body = self._request("GET", path, query, {"Accept": _DICOM_JSON})
        if not body.strip():
            return []
        try:
            data = json.loads(body)
        except ValueError:
            raise DICOMwebError(
                f"{self.what} {self.url}: GET {path} did not answer DICOM JSON (Content-Type "
                f"{headers.get('content-type')!r}); is this a DICOMweb root?"
            ) from None
        if not isinstance(data, list):
            raise DICOMwebError(
                f"{self.what} {self.url}: GET {path} answered a JSON {type(data).__name__}, expected "
                "a list of DICOM JSON objects."
            )
        return data

    # ---- QIDO-RS ----------------------------------------------------------------------------------
    def search_studies(self, study_uid: str | None = None) -> list[dict]:
        """QIDO-RS ``/studies`` (optionally one StudyInstanceUID): DICOM JSON objects."""
        return self._json("/studies", {"StudyInstanceUID": study_uid} if study_uid else None)

    def search_series(self, study_uid: str | None = None, series_uid: str | None = None, **filters) -> list[dict]:
        """QIDO-RS ``/series`` or ``/studies/{study}/series``, filtered by SeriesInstanceUID and other attributes
        (e.g. ``Modality="MR"``): DICOM JSON objects with the study UID, modality, description and instance count."""
        query = dict(filters)
        if series_uid:
            query["SeriesInstanceUID"] = series_uid
        query["includefield"] = "SeriesDescription,NumberOfSeriesRelatedInstances,StudyInstanceUID"
        path = f"/studies/{urllib.parse.quote(study_uid)}/series" if study_uid else "/series"
        return self._json(path, query)

    def find_series(self, series_uid: str, study_uid: str | None = None) -> SeriesRef:
        """The series ``series_uid`` (in ``study_uid`` when given) as the server describes it.

        Raises:
            StudyNotFound: the server has no study ``study_uid``.
            SeriesNotFound: no such series (in that study).
            DICOMwebError: the server could not be asked.
        """
        check_uid(series_uid, "series_uid")
        if study_uid is not None:
            check_uid(study_uid, "study_uid")
            if not any(dicom_json_value(s, STUDY_UID) == study_uid for s in self.search_studies(study_uid)):
                raise StudyNotFound(f"no study with StudyInstanceUID {study_uid} on {self.url}.")
        found = [s for s in self.search_series(study_uid, series_uid) if dicom_json_value(s, SERIES_UID) == series_uid]
        if not found:
            where = f" in study {study_uid}" if study_uid else ""
            raise SeriesNotFound(f"no series with SeriesInstanceUID {series_uid}{where} on {self.url}.")
        studies = {dicom_json_value(s, STUDY_UID, study_uid) for s in found}
        if len(studies) != 1 or None in studies:
            raise DICOMwebError(
                f"{self.what} {self.url}: series {series_uid} is listed in {len(studies)} studies; give "
                "its StudyInstanceUID."
            )
        item = found[0]
        count = dicom_json_value(item, NUM_INSTANCES)
        return SeriesRef(
            study_uid=studies.pop(),
            series_uid=series_uid,
            modality=str(dicom_json_value(item, MODALITY, "")),
            description=str(dicom_json_value(item, SERIES_DESCRIPTION, "")),
            num_instances=int(count) if count is not None else None,
        )

    # ---- WADO-RS ----------------------------------------------------------------------------------
    def _series_path(self, study_uid: str, series_uid: str) -> str:
        check_uid(study_uid, "study_uid")
        check_uid(series_uid, "series_uid")
        return f"/studies/{study_uid}/series/{series_uid}"

    def retrieve_series_metadata(self, study_uid: str, series_uid: str) -> list[dict]:
        """WADO-RS ``.../series/{series}/metadata``: one DICOM JSON object (all attributes but bulk data) per
        instance."""
        return self._json(self._series_path(study_uid, series_uid) + "/metadata")

    def retrieve_series(self, study_uid: str, series_uid: str, folder: str | os.PathLike) -> list[Path]:
        """WADO-RS: download every instance of the series into ``folder`` (created; files ``00001.dcm``, ... in the
        server's order, their transfer syntax as stored) and return their paths.

        Raises:
            DICOMwebError: when the answer is not a multipart of DICOM instances or holds none.
        """
        path = self._series_path(study_uid, series_uid)
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        _, headers, body = self._request("GET", path, headers={"Accept": accept})
        try:
            parts = parse_multipart_related(body, headers.get("content-type", ""))
        except ValueError as e:
            raise DICOMwebError(f"{self.what} {self.url}: GET {path}: {e}") from None
        instances = [
            content
            for head, content in parts
            if content[128:132] == b"DICM" or "dicom" in head.get("content-type", "application/dicom")
        ]
        if not instances:
            raise DICOMwebError(f"{self.what} {self.url}: GET {path} returned no DICOM instance.")
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        files = []
        for k, content in enumerate(instances, 1):
            file = target / f"{k:05d}.dcm"
            file.write_bytes(content)
            files.append(file)
        return files

    # ---- STOW-RS ----------------------------------------------------------------------------------
    def store_instances(self, files: Sequence[str | os.PathLike], study_uid: str | None = None) -> StoredSeries:
        """STOW-RS: store the DICOM files (one series) on the server, in requests of at most ``MAX_STOW_BYTES``,
        and check from the server's answers that every instance was stored.

        Args:
            files: DICOM Part-10 files of one series.
            study_uid: post to ``/studies/{study_uid}`` (the server then refuses instances of another study).

        Returns:
            the :class:`StoredSeries`.

        Raises:
            ValueError: when ``files`` is empty or not of one series.
            DICOMwebError: when the server refused the request or any instance (with its reasons).
        """
        import pydicom

        files = [Path(f) for f in files]
        if not files:
            raise ValueError("files must name at least one DICOM file to store.")
        headers = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]
        series = {str(h.SeriesInstanceUID) for h in headers}
        studies = {str(h.StudyInstanceUID) for h in headers}
        if len(series) != 1 or len(studies) != 1:
            raise ValueError(
                f"files must hold one series of one study, got {len(series)} series in {len(studies)} studies."
            )
        expected = [str(h.SOPInstanceUID) for h in headers]
        path = f"/studies/{check_uid(study_uid, 'study_uid')}" if study_uid else "/studies"
        stored, url = set(), ""
        batch: list[bytes] = []
        size = 0
        for k, f in enumerate(files):
            data = f.read_bytes()
            if batch and size + len(data) > MAX_STOW_BYTES:
                url = self._stow(path, batch, stored) or url
                batch, size = [], 0
            batch.append(data)
            size += len(data)
            if k == len(files) - 1:
                url = self._stow(path, batch, stored) or url
        missing = [uid for uid in expected if uid not in stored]
        if missing:
            raise DICOMwebError(
                f"{self.what} {self.url}: STOW-RS accepted the request but does not list {len(missing)} "
                f"of {len(expected)} instances as stored (e.g. {missing[0]})."
            )
        study, series_uid = studies.pop(), series.pop()
        return StoredSeries(
            study_uid=study,
            series_uid=series_uid,
            sop_instance_uids=tuple(expected),
            url=f"{self.url}/studies/{study}/series/{series_uid}",
        )

    def _stow(self, path: str, instances: list[bytes], stored: set) -> str:
        boundary = f"monai_medgen-{secrets.token_hex(16)}"
        body = (
            b"".join(
                b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n"
                for data in instances
            )
            + b"--"
            + boundary.encode()
            + b"--\r\n"
        )
        content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
        _, headers, answer = self._request(
            "POST", path, headers={"Content-Type": content_type, "Accept": _DICOM_JSON}, body=body
        )
        try:
            result = json.loads(answer) if answer.strip() else {}
        except ValueError:
            raise DICOMwebError(
                f"{self.what} {self.url}: POST {path} (STOW-RS) answered no DICOM JSON (Content-Type "
                f"{headers.get('content-type')!r})."
            ) from None
        if isinstance(result, list):
            result = result[0] if result else {}
        failed = (result.get(FAILED_SOP_SEQUENCE) or {}).get("Value") or []
        if failed:
            reasons = sorted({str(dicom_json_value(item, FAILURE_REASON, "?")) for item in failed})
            raise DICOMwebError(
                f"{self.what} {self.url}: the server refused {len(failed)} of {len(instances)} instances "
                f"(STOW-RS failure reason(s) {', '.join(reasons)})."
            )
        for item in (result.get(REFERENCED_SOP_SEQUENCE) or {}).get("Value") or []:
            uid = dicom_json_value(item, REFERENCED_SOP_UID)
            if uid:
                stored.add(str(uid))
        return str(dicom_json_value(result, RETRIEVE_URL, "") or "")


# ---------------------------------------------------------------------------------------------
# a private Orthanc for tests and demos
# ---------------------------------------------------------------------------------------------
ORTHANC_BINARIES = ("Orthanc", "/usr/sbin/Orthanc", "/usr/local/sbin/Orthanc", "/usr/local/bin/Orthanc")
DICOMWEB_PLUGINS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so")


def find_orthanc() -> tuple[str | None, str | None]:
    """(the Orthanc executable, its DICOMweb plugin), each ``None`` when not installed."""
    binary = next((found for name in ORTHANC_BINARIES if (found := shutil.which(name))), None)
    plugin = next((p for p in DICOMWEB_PLUGINS if os.path.isfile(p)), None)
    if plugin is None:
        plugin = (
            next((str(p) for p in sorted(Path("/usr/lib/orthanc").glob("libOrthancDicomWeb.so*"))), None)
            if os.path.isdir("/usr/lib/orthanc")
            else None
        )
    return binary, plugin


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process_group(process: subprocess.Popen | None, timeout: float = 15.0) -> None:
    """End a server started in its own process group (``start_new_session=True``): SIGTERM, then SIGKILL after
    ``timeout`` seconds; nothing when it is None or has already ended."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)
    except ProcessLookupError:
        pass


class OrthancServer:
    """A private Orthanc with its DICOMweb plugin, answering on 127.0.0.1 only (remote access refused), for tests and
    demos: a generated configuration in ``folder`` (storage, index and log there too), a free HTTP port, no DICOM
    port, HTTP basic authentication with a generated user.  Started in its own process group; :meth:`stop` (or the
    end of a ``with`` block) ends it.

    Args:
        folder: a folder of its own (created); its storage is kept there after :meth:`stop`.
        port: the HTTP port (default a free one).
        startup_timeout: seconds to wait for it to answer.

    Attributes:
        url: ``http://127.0.0.1:<port>``; ``dicomweb_url`` is its DICOMweb root (``/dicom-web``).
        username, password: the generated user.

    Raises:
        FileNotFoundError: at :meth:`start`, when Orthanc or its DICOMweb plugin is not installed (with the
            apt command that installs them).
    """

    def __init__(self, folder: str | os.PathLike, port: int | None = None, startup_timeout: float = 60.0):
        self.folder = Path(folder)
        self.port = int(port or _free_port())
        self.startup_timeout = float(startup_timeout)
        self.username = "medgen"
        self.password = secrets.token_urlsafe(16)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def log_path(self) -> Path:
        return self.folder / "orthanc.log"

    def client(self, **kwargs) -> DICOMwebClient:
        """A :class:`DICOMwebClient` of this server's DICOMweb root with its user."""
        return DICOMwebClient(self.dicomweb_url, username=self.username, password=self.password, **kwargs)

    def config(self, plugin: str) -> dict:
        """The Orthanc configuration written to ``folder/orthanc.json``."""
        storage = str((self.folder / "storage").resolve())
        return {
            "Name": "monai_medgen-test",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "HttpPort": self.port,
            "RemoteAccessAllowed": False,
            "DicomServerEnabled": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.username: self.password},
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "HttpThreadsCount": 4,
            "ConcurrentJobs": 1,
            "SaveJobs": False,
            "StorageCompression": False,
        }

    def _log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def start(self) -> OrthancServer:
        binary, plugin = find_orthanc()
        if binary is None or plugin is None:
            missing = "Orthanc" if binary is None else "Orthanc's DICOMweb plugin"
            raise FileNotFoundError(
                f"{missing} is not installed; on Debian/Ubuntu: apt-get install orthanc orthanc-dicomweb."
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "orthanc.json"
        config.write_text(json.dumps(self.config(plugin), indent=2))
        config.chmod(0o600)  # it holds the password
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [binary, str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=str(self.folder),
            )
        start = time.perf_counter()
        auth = "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode("ascii")
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"Orthanc exited with status {self.process.returncode} before answering; its log "
                        f"({self.log_path}) ends with:\n{self._log_tail()}"
                    )
                request = urllib.request.Request(
                    f"{self.dicomweb_url}/studies", headers={"Authorization": auth, "Accept": _DICOM_JSON}
                )
                try:
                    with urllib.request.urlopen(request, timeout=5) as answer:
                        answer.read()
                    break
                except (urllib.error.URLError, OSError):
                    pass
                if time.perf_counter() - start > self.startup_timeout:
                    raise RuntimeError(
                        f"Orthanc did not answer {self.dicomweb_url} within {self.startup_timeout:.0f} s; "
                        f"its log ({self.log_path}) ends with:\n{self._log_tail()}"
                    )
                time.sleep(0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """End Orthanc (SIGTERM, SIGKILL after 15 s); safe to call twice."""
        stop_process_group(self.process)

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
