"""Client of the monai_medgen MONAI Label app, for the 3D Slicer module ``MedGen.py`` and any Python.

Standard library only (it runs inside Slicer's Python, which has no monai_medgen), and no Slicer: the request
building, response parsing and volume naming here are tested by the main test suite against a real server.  It
lives in the module's helper package ``MedGenLib`` because Slicer loads every ``.py`` file of a module folder as a
module of its own; outside Slicer put ``scripts/slicer/MedGen`` on ``sys.path`` and
``from MedGenLib import medgen_client``.

- :func:`parse_info`: the models of ``GET /info/`` that this app serves, with their options (:class:`Option`:
  kind, default, choices, range) for the Slicer widgets;
- :func:`request_params`: widget values checked against those ranges, as the ``params`` JSON of ``/infer``;
- :func:`build_infer_request` / :func:`parse_infer_response`: ``POST /infer/<model>?output=all`` as a multipart
  upload (``file`` = the image, ``label`` = the inpainting mask, ``params``) and its multipart answer (the result
  image and the JSON with provenance and, for several samples, the uncertainty map);
- :func:`result_volume_name`: ``"<input> (synthetic, <task>)"``; :func:`uncertainty_volume_name`;
- :class:`MedGenClient`: the calls themselves (``info``, ``infer``, ``next_sample``, ``save_label``,
  ``download_image``);
  server errors become :class:`ServerError` with the server's message (``{"detail": ...}``).
"""

from __future__ import annotations

import base64
import json
import math
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_SERVER",
    "InferResult",
    "MedGenClient",
    "ModelInfo",
    "Option",
    "ServerError",
    "build_infer_request",
    "decode_multipart",
    "encode_multipart",
    "error_message",
    "parse_info",
    "parse_infer_response",
    "request_params",
    "result_volume_name",
    "uncertainty_volume_name",
]

DEFAULT_SERVER = "http://127.0.0.1:8000"


class ServerError(RuntimeError):
    """The server answered with an error (``status`` is its HTTP status) or could not be reached (``status`` None)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------------
# /info/
# ---------------------------------------------------------------------------------------------
@dataclass
class Option:
    """One option of a model, as a widget shows it.

    Attributes:
        name: the key in the request's ``params``.
        kind: ``"choice"`` (``choices``, first = default), ``"int"``, ``"float"``, ``"text"`` or ``"bool"``.
        default: the server's default.
        minimum, maximum: inclusive range of a number (None: unbounded).
    """

    name: str
    kind: str
    default: object
    choices: list = field(default_factory=list)
    minimum: float | None = None
    maximum: float | None = None


@dataclass
class ModelInfo:
    """A model served by the monai_medgen app (``/info/`` -> ``models.<name>``)."""

    name: str
    task: str
    description: str
    spatial_dims: int
    needs_mask: bool
    classes: list
    options: list

    @property
    def generative(self) -> bool:
        return self.task == "generate"


def _option(name: str, value, limits: dict) -> Option:
    low, high = (limits.get(name) or [None, None])[:2]
    if isinstance(value, list):
        return Option(name, "choice", value[0] if value else None, list(value))
    if isinstance(value, bool):
        return Option(name, "bool", value)
    if isinstance(value, int):
        return Option(name, "int", value, minimum=low, maximum=high)
    if isinstance(value, float):
        return Option(name, "float", value, minimum=low, maximum=high)
    return Option(name, "text", "" if value is None else str(value))


def parse_info(info: dict) -> dict:
    """``{name: ModelInfo}`` of the models in ``info`` (the JSON of ``GET /info/``) that this app serves (those
    with a ``medgen`` entry), options in the server's order (``device`` left out).

    Raises:
        ValueError: when ``info`` is not the answer of a MONAI Label server.
    """
    if not isinstance(info, dict) or not isinstance(info.get("models"), dict):
        raise ValueError("info must be the JSON object of a MONAI Label server's /info/ (with 'models').")
    out = {}
    for name, entry in info["models"].items():
        medgen = entry.get("medgen") if isinstance(entry, dict) else None
        if not isinstance(medgen, dict):
            continue
        limits = medgen.get("limits") or {}
        config = entry.get("config") or {}
        options = [_option(k, v, limits) for k, v in config.items() if k != "device"]
        out[name] = ModelInfo(
            name=name,
            task=str(medgen.get("task", "")),
            description=str(entry.get("description", "")),
            spatial_dims=int(medgen.get("spatial_dims") or entry.get("dimension") or 2),
            needs_mask=bool(medgen.get("needs_mask")),
            classes=list(medgen.get("classes") or []),
            options=options,
        )
    return out


def request_params(model: ModelInfo, values: dict) -> dict:
    """The ``params`` of an infer request from widget ``values`` (``{option: value}``; options left out take the
    server's default), each checked against the option's kind and range.

    Raises:
        ValueError: naming the option, for an unknown option, a choice not offered or a number out of range.
    """
    known = {o.name: o for o in model.options}
    params = {}
    for name, value in values.items():
        if name not in known:
            raise ValueError(f"{name} is not an option of {model.name}; options: {sorted(known)}.")
        opt = known[name]
        if opt.kind == "choice":
            if value not in opt.choices:
                raise ValueError(f"{name} must be one of {opt.choices}, got {value!r}.")
        elif opt.kind in ("int", "float"):
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{name} must be a number, got {value!r}.") from None
            if not math.isfinite(number) or (opt.kind == "int" and not number.is_integer()):
                raise ValueError(
                    f"{name} must be {'an integer' if opt.kind == 'int' else 'a finite number'}, got {value!r}."
                )
            if (opt.minimum is not None and number < opt.minimum) or (opt.maximum is not None and number > opt.maximum):
                raise ValueError(f"{name} must be in [{opt.minimum:g}, {opt.maximum:g}], got {value!r}.")
            value = int(number) if opt.kind == "int" else number
        elif opt.kind == "bool":
            value = bool(value)
        else:
            value = str(value)
        params[name] = value
    return params


# ---------------------------------------------------------------------------------------------
# multipart
# ---------------------------------------------------------------------------------------------
def encode_multipart(fields: dict, files: dict) -> tuple:
    """``multipart/form-data`` body: ``fields`` ``{name: text}`` and ``files`` ``{name: (filename, bytes)}``.

    Returns:
        ``(body bytes, content type with its boundary)``.
    """
    boundary = uuid.uuid4().hex
    chunks = []
    for name, text in fields.items():
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + str(text).encode()
            + b"\r\n"
        )
    for name, (filename, data) in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        chunks.append(head.encode() + bytes(data) + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def _header_params(value: str) -> tuple:
    """``'form-data; name="a"; filename="b.nii.gz"'`` -> ``('form-data', {'name': 'a', 'filename': 'b.nii.gz'})``."""
    parts = [p.strip() for p in value.split(";")]
    params = {}
    for p in parts[1:]:
        key, _, val = p.partition("=")
        params[key.strip().lower()] = val.strip().strip('"')
    return parts[0].lower(), params


def decode_multipart(body: bytes, content_type: str) -> dict:
    """Parts of a ``multipart/form-data`` body: ``{name: {"filename", "content_type", "data"}}``.

    Raises:
        ValueError: when ``content_type`` has no boundary or the body holds no part.
    """
    kind, params = _header_params(content_type or "")
    boundary = params.get("boundary")
    if not kind.startswith("multipart/") or not boundary:
        raise ValueError(f"content_type must be multipart with a boundary, got {content_type!r}.")
    parts = {}
    for section in body.split(b"--" + boundary.encode())[1:]:
        if section.startswith(b"--"):
            break
        section = section[2:] if section.startswith(b"\r\n") else section
        section = section[:-2] if section.endswith(b"\r\n") else section
        head, _, data = section.partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("utf-8", errors="replace").split("\r\n"):
            key, _, val = line.partition(":")
            headers[key.strip().lower()] = val.strip()
        _, disposition = _header_params(headers.get("content-disposition", ""))
        name = disposition.get("name", f"part{len(parts)}")
        parts[name] = {
            "filename": disposition.get("filename"),
            "content_type": headers.get("content-type"),
            "data": data,
        }
    if not parts:
        raise ValueError("body holds no multipart part.")
    return parts


# ---------------------------------------------------------------------------------------------
# /infer
# ---------------------------------------------------------------------------------------------
@dataclass
class InferResult:
    """The answer of ``/infer/<model>?output=all``.

    Attributes:
        image: bytes of the result volume (a ``.nii.gz`` marked synthetic), None when the server sent only JSON.
        image_filename: its name as sent.
        params: the JSON part; ``params["medgen"]`` holds task, provenance, shape, affine and (for several
            samples) the uncertainty map.
    """

    image: bytes | None
    image_filename: str
    params: dict

    @property
    def medgen(self) -> dict:
        return self.params.get("medgen") or {}

    @property
    def task(self) -> str:
        return str(self.medgen.get("task", ""))

    def uncertainty(self) -> bytes | None:
        """The standard deviation map as ``.nii.gz`` bytes (None with one sample)."""
        unc = self.medgen.get("uncertainty")
        if not unc:
            return None
        if unc.get("encoding") != "base64" or unc.get("format") != "nii.gz":
            raise ValueError(
                f"uncertainty must be base64 nii.gz, got encoding {unc.get('encoding')!r} format {unc.get('format')!r}."
            )
        return base64.b64decode(unc["data"])

    def save(self, folder: str, stem: str) -> tuple:
        """Write ``<stem>.nii.gz`` (and ``<stem>_std.nii.gz``) into ``folder``: ``(image path, uncertainty path or None)``."""
        if self.image is None:
            raise ValueError("the server sent no image (only JSON); nothing to save.")
        os.makedirs(folder, exist_ok=True)
        image_path = os.path.join(folder, f"{stem}.nii.gz")
        with open(image_path, "wb") as f:
            f.write(self.image)
        std = self.uncertainty()
        std_path = None
        if std is not None:
            std_path = os.path.join(folder, f"{stem}_std.nii.gz")
            with open(std_path, "wb") as f:
                f.write(std)
        return image_path, std_path


def infer_url(server: str, model: str, image_id: str | None = None, output: str = "all") -> str:
    """``<server>/infer/<model>?output=...[&image=<id>]``."""
    if output not in ("all", "image", "json"):
        raise ValueError(f"output must be 'all', 'image' or 'json', got {output!r}.")
    query = {"output": output}
    if image_id:
        query["image"] = image_id
    return f"{server.rstrip('/')}/infer/{urllib.parse.quote(model)}?{urllib.parse.urlencode(query)}"


def build_infer_request(
    server: str,
    model: str,
    image_path: str | None = None,
    params: dict | None = None,
    mask_path: str | None = None,
    image_id: str | None = None,
    output: str = "all",
) -> urllib.request.Request:
    """``POST /infer/<model>`` uploading ``image_path`` (field ``file``) and ``mask_path`` (field ``label``, the
    inpainting mask on the image's grid, > 0 = missing) with ``params`` as JSON; or, with ``image_id``, using an
    image of the server's datastore.

    Raises:
        ValueError: without an image, or for a file that does not exist.
    """
    if not image_path and not image_id:
        raise ValueError(
            "image_path or image_id is required: the image to restore, or the reference geometry to generate in."
        )
    files = {}
    for name, path in (("file", image_path), ("label", mask_path)):
        if path:
            if not os.path.isfile(path):
                raise ValueError(f"{'image_path' if name == 'file' else 'mask_path'} {path!r} does not exist.")
            with open(path, "rb") as f:
                files[name] = (os.path.basename(path), f.read())
    body, content_type = encode_multipart({"params": json.dumps(params or {})}, files)
    return urllib.request.Request(
        infer_url(server, model, None if image_path else image_id, output),
        data=body,
        method="POST",
        headers={"Content-Type": content_type, "Accept": "multipart/form-data, application/json"},
    )


def parse_infer_response(content_type: str, body: bytes) -> InferResult:
    """The :class:`InferResult` of an answer (multipart with ``params`` and ``image``, or JSON only)."""
    if (content_type or "").lower().startswith("application/json"):
        return InferResult(None, "", json.loads(body.decode("utf-8")))
    parts = decode_multipart(body, content_type)
    params = json.loads(parts["params"]["data"].decode("utf-8")) if "params" in parts else {}
    image = parts.get("image")
    return InferResult(image["data"] if image else None, (image or {}).get("filename") or "", params)


def error_message(status: int | None, body: bytes | str) -> str:
    """A one-line message for an error answer: the server's ``detail`` when it sent one."""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else str(body)
    try:
        detail = json.loads(text).get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):  # FastAPI's validation errors
        detail = "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
    message = str(detail) if detail else (text.strip() or "no message")
    return f"server error {status}: {message}" if status else message


# ---------------------------------------------------------------------------------------------
# names of the loaded volumes
# ---------------------------------------------------------------------------------------------
def result_volume_name(input_name: str, task: str) -> str:
    """``"<input> (synthetic, <task>)"``, the name the Slicer module gives the result volume."""
    return f"{input_name or 'volume'} (synthetic, {task or 'result'})"


def uncertainty_volume_name(input_name: str, task: str) -> str:
    """``"<input> (synthetic, <task>, uncertainty)"``, the name of the standard deviation map."""
    return f"{input_name or 'volume'} (synthetic, {task or 'result'}, uncertainty)"


# ---------------------------------------------------------------------------------------------
# the client
# ---------------------------------------------------------------------------------------------
class MedGenClient:
    """Calls of the monai_medgen MONAI Label app.

    Args:
        server: the server's URL, e.g. ``http://127.0.0.1:8000``.
        timeout: seconds to wait for an answer (restoring a large volume on a CPU takes minutes).
    """

    def __init__(self, server: str = DEFAULT_SERVER, timeout: float = 600.0):
        if not str(server).startswith(("http://", "https://")):
            raise ValueError(f"server must be an http(s) URL such as {DEFAULT_SERVER}, got {server!r}.")
        self.server = str(server).rstrip("/")
        self.timeout = float(timeout)

    def _send(self, request: urllib.request.Request) -> tuple:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                return answer.headers.get("Content-Type", ""), answer.read()
        except urllib.error.HTTPError as e:
            raise ServerError(error_message(e.code, e.read()), e.code) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ServerError(f"could not reach the MONAI Label server at {self.server}: {reason}") from None

    def _json(self, request: urllib.request.Request) -> dict:
        _, body = self._send(request)
        return json.loads(body.decode("utf-8")) if body else {}

    def info(self) -> dict:
        """``GET /info/``."""
        return self._json(urllib.request.Request(f"{self.server}/info/"))

    def models(self) -> dict:
        """:func:`parse_info` of :meth:`info`."""
        return parse_info(self.info())

    def infer(
        self,
        model: str,
        image_path: str | None = None,
        params: dict | None = None,
        mask_path: str | None = None,
        image_id: str | None = None,
    ) -> InferResult:
        """Run ``model`` on an uploaded image (or a datastore image) and return the result."""
        content_type, body = self._send(
            build_infer_request(self.server, model, image_path, params, mask_path, image_id)
        )
        return parse_infer_response(content_type, body)

    def next_sample(self, strategy: str = "generate", params: dict | None = None) -> dict:
        """``POST /activelearning/<strategy>``: with ``generate`` a new synthetic volume is added to the datastore;
        returns its entry (``id``, ``path``, ...)."""
        request = urllib.request.Request(
            f"{self.server}/activelearning/{urllib.parse.quote(strategy)}",
            data=json.dumps(params or {}).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        return self._json(request)

    def save_label(self, image_id: str, label_path: str, tag: str = "final") -> dict:
        """``PUT /datastore/label?image=<id>&tag=<tag>``: store a label (for inpainting: the mask, 1 = missing) for a
        datastore image; an inpainting request for that image without an uploaded mask then uses it."""
        if not os.path.isfile(label_path):
            raise ValueError(f"label_path {label_path!r} does not exist.")
        with open(label_path, "rb") as f:
            body, content_type = encode_multipart({"params": "{}"}, {"label": (os.path.basename(label_path), f.read())})
        url = f"{self.server}/datastore/label?{urllib.parse.urlencode({'image': image_id, 'tag': tag})}"
        return self._json(urllib.request.Request(url, data=body, method="PUT", headers={"Content-Type": content_type}))

    def download_image(self, image_id: str, path: str) -> str:
        """``GET /datastore/image?image=<id>`` written to ``path``."""
        url = f"{self.server}/datastore/image?{urllib.parse.urlencode({'image': image_id})}"
        _, body = self._send(urllib.request.Request(url))
        with open(path, "wb") as f:
            f.write(body)
        return path
