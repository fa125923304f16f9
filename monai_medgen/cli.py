"""The ``monai-medgen`` command line: restore, generate and score medical images with the bundles in ``bundles/``.

::

    monai-medgen restore --bundle bundles/cddpm_denoising_2d --input scan.nii.gz --output scan_denoised.nii.gz
    monai-medgen restore --bundle bundles/cddpm_inpainting_2d --input scan.nrrd --mask hole.nrrd --output out.nrrd
    monai-medgen restore --bundle bundles/cddpm_denoising_2d --input dicom_series/ --output derived_series/
    monai-medgen restore --bundle bundles/cddpm_denoising_2d --dicomweb http://127.0.0.1:8042/dicom-web \\
        --study-uid 1.2.826.0.1.3680043.8.498.1 --series-uid 1.2.826.0.1.3680043.8.498.2
    monai-medgen restore --bundle bundles/cddpm_super_resolution_3d --input thick.nii.gz --output fine.nii.gz \\
        --factor 1,1,4
    monai-medgen generate --bundle bundles/vdm_brain_mri_2d --num 8 --output-dir samples/
    monai-medgen score --bundle bundles/vdm_brain_mri_2d --input a.nii.gz b.mha --codec jpegxl

Every output is a new file (never an input) in the input's world space, marked synthetic in its header with a
JSON provenance sidecar (model, bundle version, task, sampler, steps, seed, SHA-256 of the inputs).  A DICOM
series input restored to a folder gives a new derived DICOM series (new UIDs, ImageType DERIVED\\SECONDARY,
a DerivationDescription naming the model and "synthetic").  With ``--dicomweb`` the series is read from a PACS
(QIDO-RS / WADO-RS) and, without ``--output``, its derived series is stored into the same study (STOW-RS).

Nothing the user wrote is ever replaced: an output equal to an input is refused, and ``--overwrite`` replaces only
earlier outputs of monai-medgen (files whose header is marked synthetic, provenance sidecars, derived series
folders), never a scan or another file.  A DICOM folder holding several series is refused with the list of its
series unless ``--series-uid`` picks one; an inconsistent geometry (mixed orientations, duplicate slice positions,
missing PixelSpacing, a NaN or zero-determinant affine) is refused before any sampling, as is every number out of
range.  Outputs get the permissions the umask gives; temporary files are removed on failure, Ctrl-C or SIGTERM, and
those a killed run left are removed by the next run writing into that folder.

User errors (missing weights, unreadable or truncated inputs, NaN voxels, bad masks, unknown class labels,
an output equal to an input, a read-only or full output folder, ...) print one line
``monai-medgen <command>: error: <message>`` on stderr and exit with status 2.  Also runnable as
``python -m monai_medgen.cli``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
from pathlib import Path

from monai_medgen.dicomweb import PASSWORD_ENV as DICOMWEB_PASSWORD_ENV
from monai_medgen.limits import MAX_SLICE_PIXELS, MAX_VOXELS, MIN_AXIS_VOXELS, SAMPLERS

__all__ = [
    "CLIError",
    "build_parser",
    "check_common_numbers",
    "check_compile_backend",
    "check_device",
    "check_guidance",
    "check_number",
    "check_output_size",
    "check_output_target",
    "check_reference_size",
    "check_uncertainty_target",
    "describe_os_error",
    "main",
    "read_input",
]

PROG = "monai-medgen"
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# limits on the numbers of the command line (beyond them a run is a mistake or days of compute)
MAX_SEED = 2**32 - 1
MAX_STEPS = 10_000
MAX_SAMPLES = 100
MAX_GENERATE = 10_000
MAX_GUIDANCE = 100.0
MAX_SCORE_SLICES = 4096
MAX_TIME_SAMPLES = 4096


class CLIError(ValueError):
    """A user error whose message already names the command-line argument."""


class _ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, like every other error of the command line (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help').\n")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _image_suffix(path: str | os.PathLike) -> str:
    name = Path(path).name.lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s)), "")


def _strip_suffix(name: str) -> str:
    suffix = _image_suffix(name)
    return name[: -len(suffix)] if suffix else name


# ---------------------------------------------------------------------------------------------
# validation of options (each a small public function, reusable by other front-ends)
# ---------------------------------------------------------------------------------------------
def check_device(device: str) -> str:
    """The canonical name of a device to compute on: ``cpu``, ``cuda`` / ``cuda:N`` (when CUDA is available) or
    ``mps`` (when available).  Other torch device types (``meta``, ``xpu`` ...) are refused: ``meta`` holds no
    data, so a run would fail only after loading everything."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise CLIError(f"--device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}: {_one_line(e)}") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {device}: CUDA is not available on this machine; use --device cpu.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CLIError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})."
            )
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise CLIError(f"--device {device}: MPS is not available on this machine; use --device cpu.")
    elif dev.type != "cpu":
        raise CLIError(
            f"--device must be 'cpu', 'cuda' or 'cuda:N', got {device!r} (a {dev.type!r} device cannot run the model)."
        )
    return str(dev)


def check_compile_backend(backend: str | None) -> str | None:
    """``--compile``'s backend, checked against ``torch._dynamo.list_backends()`` before anything runs."""
    if backend is None or backend is False:
        return None
    import torch

    try:
        known = sorted(set(torch._dynamo.list_backends(exclude_tags=())))
    except Exception as e:  # torch without dynamo (some platforms)
        raise CLIError(
            f"--compile {backend}: torch.compile is not available here ({_one_line(e)}); omit --compile."
        ) from e
    if backend not in known:
        common = [b for b in ("inductor", "eager", "aot_eager", "cudagraphs") if b in known]
        raise CLIError(
            f"--compile {backend}: not a torch.compile backend; expected e.g. {', '.join(common)} (all "
            f"{len(known)}: torch._dynamo.list_backends()), or --compile alone for inductor."
        )
    return backend


def check_number(option: str, value, minimum=None, maximum=None, integer: bool = False):
    """``value`` after checking that it is a finite number (an integer with ``integer``) in [minimum, maximum];
    the error names ``option``."""

    def shown(v) -> str:
        return str(int(v)) if integer else f"{v:g}"

    bounds = (
        ("" if minimum is None else f" >= {shown(minimum)}")
        + ("" if maximum is None or minimum is None else " and")
        + ("" if maximum is None else f" <= {shown(maximum)}")
    )
    kind = "an integer" if integer else "a finite number"
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise CLIError(f"{option} must be {kind}{bounds}, got {value!r}.") from None
    if not math.isfinite(number) or (integer and number != int(number)):
        raise CLIError(f"{option} must be {kind}{bounds}, got {value!r}.")
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise CLIError(f"{option} must be {kind}{bounds}, got {value!r}.")
    return int(number) if integer else number


def check_common_numbers(args) -> None:
    """--seed, --steps (and --samples, --num) of any command: in range, before anything is loaded."""
    check_number("--seed", args.seed, 0, MAX_SEED, integer=True)
    if getattr(args, "steps", None) is not None:
        check_number("--steps", args.steps, 1, MAX_STEPS, integer=True)
    if getattr(args, "samples", None) is not None:
        check_number("--samples", args.samples, 1, MAX_SAMPLES, integer=True)
    if getattr(args, "num", None) is not None:
        check_number("--num", args.num, 1, MAX_GENERATE, integer=True)


def check_guidance(guidance, class_label) -> float:
    """Classifier-free guidance: finite, in [0, MAX_GUIDANCE], and only with a class to guide towards."""
    w = check_number("--guidance", guidance, 0, MAX_GUIDANCE)
    if w > 0 and class_label is None:
        raise CLIError("--guidance > 0 needs --class (the class to guide towards).")
    return w


def describe_os_error(error: OSError) -> str:
    """One line for an operating-system error (read-only or full folder, no permission ...): the path (the folder,
    for the tool's own temporary files), the system's reason and what to do."""
    import errno

    from monai_medgen import io

    where = error.filename or ""
    if where and io.is_temporary_name(where):
        where = os.path.dirname(str(where)) or "."
    reason = error.strerror or _one_line(error) or type(error).__name__
    hints = {
        errno.EROFS: "the folder is on a read-only file system; choose an output folder you can write to",
        errno.EACCES: "no permission; choose a path you can read (inputs) or write (outputs)",
        errno.EPERM: "not permitted; choose a path you can read (inputs) or write (outputs)",
        errno.ENOSPC: "the disk is full; free some space or choose an output folder on another disk "
        "(nothing was written)",
        errno.EDQUOT: "your disk quota is used up; free some space or choose another output folder (nothing was written)",
        errno.ENAMETOOLONG: "choose a shorter path",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EISDIR: "it is a folder; expected a file",
    }
    hint = hints.get(error.errno, "")
    return f"{where + ': ' if where else ''}{reason}{f' (errno {error.errno})' if error.errno else ''}" + (
        f"; {hint}." if hint else "."
    )


def _int_at_least(minimum: int, expected: str):
    """An argparse type: an integer >= ``minimum``, else the error "expected <expected>"."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _factor(text: str) -> float | list[float]:
    """``4`` -> 4.0; ``1,1,4`` -> [1.0, 1.0, 4.0] (one value per axis, 3D models)."""
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) and v >= 1 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected a number >= 1 (e.g. 4) or one per axis separated by commas (e.g. 1,1,4), got {text!r}"
        )
    return values[0] if len(values) == 1 else values


def load_bundle(folder: str, device: str, kind: str = "any", purpose: str = ""):
    """:func:`monai_medgen.pipelines.load_bundle`, its errors as :class:`CLIError` (they name ``--bundle``)."""
    from monai_medgen import pipelines

    try:
        return pipelines.load_bundle(folder, device, kind=kind, purpose=purpose)
    except pipelines.BundleError as e:
        raise CLIError(str(e)) from e


def read_input(
    path: str,
    arg: str,
    spatial_dims=None,
    series_uid: str | None = None,
    max_voxels: int | None = MAX_VOXELS,
    series_option: str | None = None,
):
    """``io.read_image`` with one channel, refused from the header alone when larger than ``max_voxels``; errors
    prefixed with the argument.  A DICOM folder of several series is refused with the list of its series (UID,
    description, number of slices) and, where the command has one, the option that picks one."""
    from monai_medgen import io

    try:
        img = io.read_image(path, spatial_dims=spatial_dims, channels=1, series_uid=series_uid, max_voxels=max_voxels)
    except io.MultipleSeriesError as e:
        listing = "; ".join(
            f"{s.uid} {s.description!r} ({s.num_slices} slices)"
            if s.description
            else f"{s.uid} ({s.num_slices} slices)"
            for s in e.series
        )
        how = (
            f"choose one with {series_option} UID"
            if series_option
            else "give a folder holding one series (copy that series' files into a folder of its own)"
        )
        raise CLIError(
            f"{arg} {path} holds {len(e.series)} DICOM series, which are never merged into one volume; "
            f"{how}. Its series (SeriesInstanceUID, description, slices): {listing}."
        ) from e
    except ValueError as e:
        message = _one_line(e)
        if "cannot find a suitable reader" in message:  # MONAI lists every reader's traceback: say it plainly
            message = (
                f"could not read {str(path)!r}: it is not a readable NIfTI, NRRD or MHA file or DICOM series folder "
                "(damaged, truncated or another format)."
            )
        if "is too large" in message and max_voxels is not None:
            message += " Crop or resample it first."
        raise CLIError(f"{arg}: {message}") from e
    if img.ndim not in (3, 4):
        raise CLIError(
            f"{arg} {path} must be a 2D image or a 3D volume with one channel, got shape {tuple(img.shape)}."
        )
    return img


def _squeeze_slice(img):
    """A 2D image stored as a one-slice volume is 2D."""
    return img[..., 0] if img.ndim == 4 and img.shape[-1] == 1 else img


def _format_factor(factor) -> str:
    return ",".join(f"{float(f):g}" for f in (factor if isinstance(factor, (list, tuple)) else [factor]))


def _output_grid(image, factor, spatial_dims: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    shape = tuple(int(n) for n in image.shape[1:])
    if isinstance(factor, (list, tuple)):
        factors = [float(f) for f in factor]
    else:
        factors = [float(factor)] * (2 if spatial_dims == 2 else len(shape))
    factors += [1.0] * (len(shape) - len(factors))
    return shape, tuple(round(n * f) for n, f in zip(shape, factors))


def check_output_size(image, factor, spatial_dims: int, input_path: str, input_shape=None) -> None:
    """Refuse an output grid the model cannot restore in reasonable memory (see ``MAX_SLICE_PIXELS``,
    ``MAX_VOXELS``), naming --factor when super-resolution makes it so large, else --input; and an input too
    small to be an image for the model (fewer than ``MIN_AXIS_VOXELS`` along an axis it works over, e.g. 1x1x1).
    ``input_shape``: the shape to show (as read, before a one-slice volume became 2D)."""
    shape, out = _output_grid(image, factor, spatial_dims)
    model_axes = range(2) if spatial_dims == 2 else range(len(shape))
    if any(out[a] < MIN_AXIS_VOXELS or shape[a] < 2 for a in model_axes):
        axes = "each in-plane axis (the first two)" if spatial_dims == 2 else "each axis"
        raise CLIError(
            f"--input {input_path} is too small to restore: {'x'.join(map(str, input_shape or shape))} voxels; a "
            f"{spatial_dims}D model "
            f"needs at least {MIN_AXIS_VOXELS} voxels along {axes} of the output grid (and 2 in the input)."
        )
    too_wide = spatial_dims == 2 and out[0] * out[1] > MAX_SLICE_PIXELS
    too_many = math.prod(out) > MAX_VOXELS
    if not (too_wide or too_many):
        return
    limit = (
        f"this 2D bundle restores slices of at most {MAX_SLICE_PIXELS} pixels (512 x 512), as its attention "
        "memory grows with the square of a slice's size"
        if too_wide
        else f"restoring takes at most {MAX_VOXELS} voxels (512^3) in all"
    )
    grid = "x".join(str(n) for n in out)
    if out != shape:
        raise CLIError(
            f"--factor {_format_factor(factor)} is too large for --input {input_path}: its {'x'.join(map(str, shape))} "
            f"grid would become {grid}, and {limit}; use a smaller --factor or crop the input."
        )
    raise CLIError(f"--input {input_path} is too large ({grid} voxels): {limit}; crop or resample it first.")


def check_output_target(arg: str, target: str, inputs: dict, overwrite: bool, sidecar: bool = True) -> None:
    """Refuse, before any computation, an output path that is (or lies inside) an input, that exists (without
    --overwrite), that is a file or folder monai-medgen did not write (even with --overwrite: a user's scan,
    a folder of other files, a JSON that is not a provenance sidecar), likewise for its ``.json`` sidecar, or
    whose folder cannot be written to (raises ``OSError``: read-only file system, no permission).

    Args:
        arg: the option naming the output (``--output``, ``--uncertainty``).
        target: the output file, or folder for a derived DICOM series.
        inputs: option -> path of every input (``None`` entries are skipped).
        overwrite: whether existing outputs written by monai-medgen may be replaced.
        sidecar: whether ``target + ".json"`` is written too (image files).
    """
    from monai_medgen import io

    resolved = Path(target).expanduser().resolve()
    for src_arg, src in inputs.items():
        if not src:
            continue
        src_resolved = Path(src).expanduser().resolve()
        if src_resolved == resolved:
            raise CLIError(
                f"{arg} {target} is the {src_arg} file: refusing to overwrite an input; choose another path."
            )
        if os.path.isdir(src) and src_resolved in resolved.parents:
            raise CLIError(f"{arg} {target} lies inside the {src_arg} DICOM series folder; choose another path.")
        if resolved.is_dir() and resolved in src_resolved.parents:
            raise CLIError(
                f"{arg} {target} holds the {src_arg} {src}: refusing to replace a folder with an input in it."
            )
    paths = [(arg, resolved)] + ([(f"{arg}'s provenance sidecar", Path(str(resolved) + ".json"))] if sidecar else [])
    for what, path in paths:
        if not (path.exists() or path.is_symlink()):
            continue
        why = io.replace_refusal(path)
        if why is not None:
            raise CLIError(
                f"{what} {path} already exists and {why}; refusing to replace it (even with --overwrite): "
                "choose another path."
            )
        empty_dir = path.is_dir() and not any(path.iterdir())
        if not overwrite and not empty_dir:
            raise CLIError(f"{what} {path} already exists; pass --overwrite to replace it.")
    try:
        io.check_writable_folder(resolved.parent, what=arg)
    except OSError as e:
        raise CLIError(f"{arg} {target}: cannot write into its folder: {describe_os_error(e)}") from e


def check_uncertainty_target(output: str, uncertainty: str | None, dicom_output: bool) -> None:
    """--uncertainty: a path of its own (not --output, nor its sidecar) of the same kind as --output."""
    if not uncertainty:
        return
    out, unc = Path(output).expanduser().resolve(), Path(uncertainty).expanduser().resolve()
    if unc == out or unc == Path(str(out) + ".json") or out == Path(str(unc) + ".json"):
        raise CLIError(
            f"--uncertainty {uncertainty} is the --output {output} (or its sidecar): the standard deviation "
            "map would replace the result; choose another path."
        )
    if dicom_output == bool(_image_suffix(uncertainty)):
        raise CLIError(
            "--uncertainty must be of the same kind as --output (both image files ending with .nii.gz, "
            ".nii, .nrrd or .mha, or both DICOM series folders)."
        )


# ---------------------------------------------------------------------------------------------
# restore
# ---------------------------------------------------------------------------------------------
def _restore_factor(args, bundle, task: str, spatial_dims: int):
    """--factor: only for super-resolution (the bundle's default otherwise 1); one in-plane value for a 2D model,
    one or three for a 3D model."""
    if args.factor is None:
        factor = bundle.get("factor", 4.0) if task == "sr" else 1.0
    else:
        factor = args.factor
        if task != "sr" and any(float(f) != 1 for f in (factor if isinstance(factor, list) else [factor])):
            raise CLIError(f"--factor applies to super-resolution bundles only, this bundle's task is {task!r}.")
    if isinstance(factor, (list, tuple)):
        factor = [float(f) for f in factor]
        if spatial_dims == 2 and len(set(factor[:2])) == 1 and all(f == 1 for f in factor[2:]):
            return factor[0]  # 2D models: in-plane factor
        if spatial_dims == 2 or len(factor) != 3:
            raise CLIError(
                f"--factor must be one number (in-plane) for a 2D model, or 3 numbers (e.g. 1,1,4) for a 3D model; "
                f"got {','.join(f'{f:g}' for f in factor)} for a {spatial_dims}D model."
            )
        return factor
    return float(factor)


def _restore_output_path(args, task: str, dicom_input: bool) -> str:
    """--output, or <input>_<task>_synthetic in the input's format inside an existing folder (non-DICOM input)."""
    output = args.output
    if os.path.isdir(output) and not dicom_input:
        suffix = _image_suffix(args.input) or ".nii.gz"
        output = os.path.join(output, f"{_strip_suffix(Path(args.input).name)}_{task}_synthetic{suffix}")
    if not dicom_input and not _image_suffix(output):
        raise CLIError(
            f"--output {output} must end with .nii.gz, .nii, .nrrd or .mha (a folder only for a DICOM series input)."
        )
    return output


def _restore(args) -> int:
    """``restore``: a local --input, or with --dicomweb a series of a PACS (:func:`_restore_from_dicomweb`)."""
    if args.dicomweb:
        return _restore_from_dicomweb(args)
    if args.study_uid is not None:
        raise CLIError(
            "--study-uid applies to --dicomweb (the study of the series read from the server); a DICOM "
            "folder --input is chosen from with --series-uid alone."
        )
    if not args.output:
        raise CLIError(
            "--output is required: the restored file, or a new folder for a derived DICOM series (only with "
            "--dicomweb may it be left out: the derived series then goes back to the server)."
        )
    return _restore_local(args)


def _restore_from_dicomweb(args) -> int:
    """--dicomweb: the series --series-uid (of --study-uid) downloaded (WADO-RS) into a temporary folder, restored as
    a DICOM folder input would be, and without --output its derived series stored into the same study on the same
    server (STOW-RS): new SeriesInstanceUID and SOPInstanceUIDs, the input's geometry, ImageType DERIVED, marked
    synthetic.  The temporary folder is removed afterwards; nothing on the server is replaced."""
    import tempfile

    from monai_medgen import dicomweb

    check_common_numbers(args)  # everything that needs no network first
    from monai_medgen import pipelines

    try:  # its folder, config and weights file are there (loaded later, once)
        pipelines.open_bundle(args.bundle, check_device(args.device))
    except pipelines.BundleError as e:
        raise CLIError(str(e)) from e
    if args.series_uid is None:
        raise CLIError(
            "--dicomweb needs --series-uid UID: the SeriesInstanceUID of the series to restore (--study-uid optional)."
        )
    for option, uid in (("--series-uid", args.series_uid), ("--study-uid", args.study_uid)):
        if uid is not None:
            try:
                dicomweb.check_uid(uid, option)
            except ValueError as e:
                raise CLIError(str(e)) from e
    store = not args.output
    if store and args.uncertainty:
        raise CLIError(
            "--uncertainty with --dicomweb needs --output (local files): only the restored series is stored "
            "on the server."
        )
    try:
        client = dicomweb.DICOMwebClient(args.dicomweb, what="--dicomweb")
        ref = client.find_series(args.series_uid, args.study_uid)
    except dicomweb.StudyNotFound as e:
        raise CLIError(f"--study-uid {args.study_uid}: {e}") from e
    except dicomweb.SeriesNotFound as e:
        raise CLIError(f"--series-uid {args.series_uid}: {e}") from e
    except ValueError as e:  # DICOMwebError and a malformed URL, both naming --dicomweb
        raise CLIError(str(e)) from e
    count = f", {ref.num_instances} instance(s)" if ref.num_instances is not None else ""
    print(
        f"{PROG} restore: reading series {ref.series_uid} ({ref.modality or '?'} {ref.description!r}{count}) of study "
        f"{ref.study_uid} from {client.url}",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory(prefix="monai_medgen_dicomweb_") as tmp:
        folder = Path(tmp) / "series"
        try:
            client.retrieve_series(ref.study_uid, ref.series_uid, folder)
        except dicomweb.DICOMwebError as e:
            raise CLIError(str(e)) from e
        args.input = str(folder)
        if store:
            args.output = str(Path(tmp) / "derived")
        return _restore_local(args, source=ref, server=client, store=store)


def _check_restore_options(args) -> tuple[str, str | None]:
    """The options of restore that need no file (numbers, --device, --compile, --series-uid, --samples /
    --uncertainty) and --input's existence; returns the checked device and compile backend."""
    check_common_numbers(args)
    device = check_device(args.device)
    compile_backend = check_compile_backend(getattr(args, "compile", None))
    if args.series_uid is not None and not os.path.isdir(args.input):
        raise CLIError(f"--series-uid applies to a DICOM folder --input; {args.input} is not a folder.")
    if args.samples > 1 and not args.uncertainty:
        print(
            f"{PROG} restore: note: --samples {args.samples} without --uncertainty: only the mean is written.",
            file=sys.stderr,
        )
    if args.uncertainty and args.samples < 2:
        raise CLIError(
            f"--uncertainty needs --samples N with N >= 2 (the standard deviation of N samples), got {args.samples}."
        )
    if not os.path.exists(args.input):
        raise CLIError(
            f"--input {args.input}: no such file or folder (expected a NIfTI, NRRD or MHA file or a DICOM series folder)."
        )
    return device, compile_backend


def _read_restore_inputs(args, task: str, spatial_dims: int, shown: str, input_arg: str):
    """--input (and --mask) read once, geometry and values checked: ``(image, mask or None, input shape)``."""
    from monai_medgen.restoration import check_image, check_mask

    image = read_input(args.input, input_arg, series_uid=args.series_uid, series_option="--series-uid")
    input_shape = tuple(int(n) for n in image.shape[1:])
    image = _squeeze_slice(image)
    if spatial_dims == 3 and image.ndim != 4:
        raise CLIError(f"--input {shown} must be a 3D volume for this 3D bundle, got shape {tuple(image.shape)}.")
    try:
        check_image(image, name=f"--input {shown}")
    except ValueError as e:
        raise CLIError(str(e)) from e
    if args.mask and task != "inpaint":
        raise CLIError(f"--mask is for inpainting bundles only, this bundle's task is {task!r}.")
    if task != "inpaint":
        return image, None, input_shape
    if not args.mask:
        raise CLIError("--mask is required for an inpainting bundle: a 0/1 image on the input's grid, 1 = missing.")
    mask = _squeeze_slice(read_input(args.mask, "--mask"))
    try:
        check_mask(mask, image, name=f"--mask {args.mask}")
    except ValueError as e:
        raise CLIError(str(e)) from e
    return image, mask, input_shape


def _check_restore_outputs(args, task: str, factor, dicom_input: bool, server, store: bool) -> tuple[str, bool]:
    """--output (and --uncertainty): never an input, never a file or folder monai-medgen did not write, in a folder
    that takes files; a derived DICOM series keeps the input's grid.  Returns ``(output, dicom_output)``."""
    from monai_medgen import io

    output = _restore_output_path(args, task, dicom_input)
    dicom_output = dicom_input and not _image_suffix(output)
    finer = any(float(f) != 1 for f in (factor if isinstance(factor, list) else [factor]))
    if task == "sr" and dicom_output and finer:
        if store:
            raise CLIError(
                f"--dicomweb {server.url}: a derived series stored on the server keeps the input series' grid, but "
                f"--factor {_format_factor(factor)} makes a finer one; write a local file instead (e.g. --output "
                "restored.nii.gz)."
            )
        raise CLIError(
            f"--output {output}: a derived DICOM series keeps the input series' grid, but --factor {_format_factor(factor)} "
            "makes a finer one; write NIfTI instead (e.g. --output restored.nii.gz)."
        )
    check_uncertainty_target(output, args.uncertainty, dicom_output)
    sources = {"--input": args.input, "--mask": args.mask}
    for arg, target in [("--output", output)] + ([("--uncertainty", args.uncertainty)] if args.uncertainty else []):
        check_output_target(arg, target, sources, args.overwrite, sidecar=not dicom_output)
        io.remove_stale_temporaries(Path(target).expanduser().resolve().parent)
    return output, dicom_output


def _restore_local(args, source=None, server=None, store: bool = False) -> int:
    """Restore --input (a file or DICOM folder) to --output.  ``source``/``server``: the series of a DICOMweb server
    that --input was downloaded from (:class:`~monai_medgen.dicomweb.SeriesRef`, the client), named in errors and in
    the provenance; with ``store`` the derived series written to --output is stored on that server."""
    from monai_medgen import io, pipelines

    shown = args.input if source is None else f"(series {source.series_uid} of {server.url})"
    input_arg = "--input" if source is None else f"--series-uid {source.series_uid} (from {server.url})"
    # every option that needs no file first, then the bundle, the inputs and the outputs: all before sampling
    device, compile_backend = _check_restore_options(args)
    bundle = load_bundle(args.bundle, device, "restoration", "restore")
    task = bundle.task
    adapt_steps = getattr(args, "adapt_steps", None)
    if adapt_steps and (task != "denoise" or not hasattr(bundle.inferer, "adapt_steps")):
        raise CLIError(f"--adapt-steps applies to the blind denoising bundles; {bundle.name} restores {task!r}.")
    factor = _restore_factor(args, bundle, task, bundle.spatial_dims)
    image, mask, input_shape = _read_restore_inputs(args, task, bundle.spatial_dims, shown, input_arg)
    check_output_size(image, factor, bundle.spatial_dims, shown, input_shape)
    dicom_input = os.path.isdir(args.input)
    output, dicom_output = _check_restore_outputs(args, task, factor, dicom_input, server, store)

    options = pipelines.RestoreOptions(
        sampler=args.sampler,
        num_steps=args.steps,
        num_samples=args.samples,
        seed=args.seed,
        factor=factor,
        channels_last=bool(getattr(args, "channels_last", False)),
        autocast=getattr(args, "autocast", None),
        compile=compile_backend or False,
        adapt_steps=adapt_steps,
    ).with_defaults(bundle)
    print(
        f"{PROG} restore: {bundle.name} ({task}) {shown} -> {server.url + ' (STOW-RS)' if store else output} "
        f"[{options.sampler}, {options.num_steps} steps, {args.samples} sample(s), seed {args.seed}, {device}]",
        file=sys.stderr,
    )
    restored, std = pipelines.restore(bundle, image, mask, options, verbose=True)

    inputs = [p for p in (args.input, args.mask) if p]
    extra = {}
    if dicom_input:
        extra["series_uid"] = str(image.meta.get("SeriesInstanceUID", ""))
    if source is not None:
        extra["dicomweb"] = {"url": server.url, "study_uid": source.study_uid, "series_uid": source.series_uid}
    provenance = pipelines.restoration_provenance(bundle, options, io.sha256_of(inputs), extra)
    unc_prov = dataclasses.replace(provenance, extra={**provenance.extra, "map": "per-voxel standard deviation"})
    for result, target, prov in [(restored, output, provenance), (std, args.uncertainty, unc_prov)]:
        if result is None or not target:
            continue
        if not dicom_output:
            print(io.write_image(result, target, provenance=prov, overwrite=args.overwrite, inputs=inputs))
            continue
        # existing targets were checked above: empty, or a derived series written here
        written = io.write_dicom_series(
            _as_series(result), args.input, target, provenance=prov, overwrite=True, series_uid=args.series_uid
        )
        print(_store_derived_series(server, source, written) if store and target == output else written)
    return 0


def _as_series(t):
    """A restored (1, H, W[, D]) image as a series volume (a 2D image becomes a one-slice series)."""
    import torch

    t = torch.as_tensor(t.as_tensor() if hasattr(t, "as_tensor") else t)
    return t[..., None] if t.ndim == 3 else t


def _store_derived_series(server, source, folder: str) -> str:
    """STOW-RS of the derived series in ``folder`` into the study of ``source`` on ``server``; its WADO-RS address."""
    from monai_medgen import dicomweb

    files = sorted(Path(folder).glob("*.dcm"))
    try:
        stored = server.store_instances(files, study_uid=source.study_uid)
    except dicomweb.DICOMwebError as e:
        raise CLIError(
            f"{e} The derived series may be stored in part (a new series; nothing else on the server was "
            "changed); run again with --output to keep the result as local files."
        ) from e
    print(
        f"{PROG} restore: stored the derived series {stored.series_uid} ({len(stored.sop_instance_uids)} instance(s), "
        f"marked synthetic) in study {stored.study_uid} on {server.url}",
        file=sys.stderr,
    )
    return stored.url


# ---------------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------------
def _check_output_dir(args) -> None:
    """generate writes sample_NNN_synthetic.nii.gz (+ .json), samples.png and sampling.gif into --output-dir:
    existing ones are replaced only with --overwrite, and never a file monai-medgen did not write (an image not
    marked synthetic, a JSON that is not a provenance sidecar, a picture in a folder without earlier samples)."""
    from monai_medgen import io

    folder = Path(args.output_dir).expanduser()
    if folder.exists() and not folder.is_dir():
        raise CLIError(
            f"--output-dir {args.output_dir} is a file; expected a folder (new or existing) for the samples."
        )
    if folder.is_dir():
        names = [f"sample_{i:03d}_synthetic.nii.gz{ext}" for i in range(args.num) for ext in ("", ".json")]
        existing = [
            n for n in (*names, "samples.png", "sampling.gif") if (folder / n).exists() or (folder / n).is_symlink()
        ]
        if existing and not args.overwrite:
            more = f" and {len(existing) - 1} more file(s)" if len(existing) > 1 else ""
            raise CLIError(
                f"--output-dir {args.output_dir} already holds {existing[0]}{more} of earlier samples; pass --overwrite "
                "to replace them, or choose another folder."
            )
        earlier = [n for n in existing if n.endswith(".nii.gz") and io.replace_refusal(folder / n) is None]
        for name in existing:
            if name.endswith((".png", ".gif")):
                why = (
                    None
                    if earlier and not (folder / name).is_symlink()
                    else ("the folder holds no earlier synthetic sample it would belong to")
                )
            else:
                why = io.replace_refusal(folder / name)
            if why is not None:
                raise CLIError(
                    f"--output-dir {args.output_dir}: {name} already exists and {why}; refusing to replace it (even with "
                    "--overwrite): choose another folder."
                )
    try:
        io.check_writable_folder(folder, what="--output-dir")
    except OSError as e:
        raise CLIError(f"--output-dir {args.output_dir}: cannot write into it: {describe_os_error(e)}") from e


def check_reference_size(path: str, spatial_dims: int) -> None:
    """generate --reference: the samples cover its field of view, so refuse (from its header) one with fewer than
    ``MIN_AXIS_VOXELS`` voxels along an axis of the samples (no field of view to speak of)."""
    from monai_medgen import io

    try:
        shape, _ = io.image_header(path)
    except io.MultipleSeriesError as e:
        read_input(path, "--reference")  # the same message, with the series listed
        raise CLIError(str(e)) from e
    except ValueError as e:
        raise CLIError(f"--reference: {_one_line(e)}") from e
    size = shape[:2] if spatial_dims == 2 else shape[:3]
    if len(size) < spatial_dims:
        return  # read_input names the dimensionality
    if min(size) < MIN_AXIS_VOXELS:
        raise CLIError(
            f"--reference {path} is too small: {'x'.join(map(str, size))} voxels; the samples cover its field of "
            f"view, which needs at least {MIN_AXIS_VOXELS} voxels per axis."
        )


def _generate(args) -> int:
    from monai_medgen import io
    from monai_medgen.pipelines import GenerateOptions, generate, load_bundle, write_generated

    check_common_numbers(args)
    check_guidance(args.guidance, args.class_label)
    bundle = load_bundle(args.bundle, check_device(args.device), "generative", "generate")
    num_classes = bundle.num_classes
    if args.class_label is not None:
        if num_classes is None:
            raise CLIError(
                f"--class {args.class_label}: this bundle's model is unconditional (built with num_classes null), "
                "so it takes no class label; omit --class (or train a class-conditional model with num_classes set)."
            )
        if not 0 <= args.class_label < num_classes:
            raise CLIError(
                f"--class {args.class_label} is not a class of this model: expected an integer in "
                f"[0, {num_classes - 1}] (num_classes {num_classes})."
            )
    reference, checksum = None, ""
    if args.reference is not None:
        check_reference_size(args.reference, bundle.spatial_dims)
        reference = read_input(args.reference, "--reference")  # values and geometry checked (finite, one series)
        checksum = io.sha256_of(args.reference)
    _check_output_dir(args)
    if os.path.isdir(args.output_dir):
        io.remove_stale_temporaries(Path(args.output_dir).expanduser())
    options = GenerateOptions(
        num_samples=args.num,
        sampler=args.sampler,
        num_steps=args.steps,
        seed=args.seed,
        class_label=args.class_label,
        guidance_scale=args.guidance,
        num_frames=20,
    ).with_defaults(bundle)
    print(
        f"{PROG} generate: {bundle.name}: {args.num} image(s), {options.sampler} {options.num_steps} steps, "
        f"seed {args.seed}",
        file=sys.stderr,
    )
    written = write_generated(generate(bundle, options, reference, checksum), args.output_dir)
    for path in written["nifti"]:
        print(path)
    return 0


# ---------------------------------------------------------------------------------------------
# score
# ---------------------------------------------------------------------------------------------
def _slices_of(path: str, size: int, num_slices: int | None):
    """The input's [0, 1] slices (N, 1, size, size) with the training preprocessing
    (:func:`monai_medgen.ood.prepare_slices`: per-volume scaling, brain box, square padding, area resize); a
    degenerate input (too small in-plane, constant or near-constant, no positive voxels) is refused, naming it."""
    import numpy as np

    from monai_medgen import ood

    img = read_input(path, "--input")
    try:
        return ood.prepare_slices(np.asarray(img[0]), size, num_slices, name=f"--input {path}")
    except ValueError as e:
        raise CLIError(str(e)) from e


def _check_json_output(args) -> None:
    """--json never replaces an input, a folder, or a file other than an earlier report of ``score``."""
    target = Path(args.json).expanduser().resolve()
    for path in args.input:
        src = Path(path).expanduser().resolve()
        if src == target or src in target.parents:
            raise CLIError(
                f"--json {args.json} is (inside) the --input {path}: refusing to overwrite an input; "
                "choose another path."
            )
    if target.is_dir():
        raise CLIError(f"--json {args.json} is a folder; expected a file name for the JSON report.")
    if target.exists():
        try:
            report = json.loads(target.read_text())
        except (ValueError, UnicodeDecodeError):
            report = None
        if not (isinstance(report, dict) and {"bundle", "results"} <= set(report)):
            raise CLIError(
                f"--json {args.json} already exists and is not an earlier report of 'monai-medgen score'; "
                "refusing to replace it: choose another path."
            )
    from monai_medgen import io

    try:
        io.check_writable_folder(target.parent, what="--json")
    except OSError as e:
        raise CLIError(f"--json {args.json}: cannot write into its folder: {describe_os_error(e)}") from e


def _score(args) -> int:
    import importlib.util

    import numpy as np

    from monai_medgen import ood

    if args.threshold is not None and not math.isfinite(args.threshold):
        raise CLIError(f"--threshold must be a finite number of bits/dim, got {args.threshold}.")
    check_common_numbers(args)
    check_number("--num-slices", args.num_slices, 1, MAX_SCORE_SLICES, integer=True)
    check_number("--time-samples", args.time_samples, 1, MAX_TIME_SAMPLES, integer=True)
    if args.codec == "jpegxl" and importlib.util.find_spec("imagecodecs") is None:
        raise CLIError("--codec jpegxl needs the imagecodecs package (pip install imagecodecs); or use --codec png.")
    for path in args.input:
        if not os.path.exists(path):
            raise CLIError(
                f"--input {path}: no such file or folder (expected a NIfTI, NRRD or MHA file or a DICOM series folder)."
            )
    if args.json:
        _check_json_output(args)
    from monai_medgen.pipelines import load_bundle

    bundle = load_bundle(args.bundle, check_device(args.device), "vdm", "score")
    network, inferer = bundle.network, bundle.inferer
    if getattr(getattr(network, "module", network), "num_classes", None) is not None:
        print(f"{PROG} score: note: class-conditional model, scoring with the null class.", file=sys.stderr)
    size = int(bundle.get("image_size", 128))
    layout = ood.load_layout_model(bundle) if args.score in (None, "layout") else None
    if args.score == "layout" and layout is None:
        raise CLIError(
            f"--score layout: the bundle {args.bundle} ships no layout model (configs/inference.yaml "
            "layout_network and models/layout_model.pt; train it with configs/train_layout.yaml), or use --score texture."
        )
    kind = "layout" if layout is not None else "texture"
    defaults = ood.LAYOUT_THRESHOLDS if layout is not None else ood.DEFAULT_THRESHOLDS
    threshold = defaults[args.codec] if args.threshold is None else float(args.threshold)
    # every input read and checked before any is scored: a bad one (or a degenerate one) fails the command at once
    inputs = [(path, _slices_of(path, size, args.num_slices)) for path in args.input]
    rows = []
    for path, slices in inputs:
        per_slice = ood.score_slices(
            slices,
            network,
            inferer,
            codec=args.codec,
            num_time_samples=args.time_samples,
            seed=args.seed,
            device=bundle.device,
            layout=layout,
        )
        row = {
            "input": path,
            **{k: float(np.mean(v)) for k, v in per_slice.items()},
            "num_slices": int(slices.shape[0]),
        }
        row["out_of_distribution"] = bool(row["score"] > threshold)
        row.update(
            {f"per_slice_{k}" if k != "bpd" else "per_slice": [float(x) for x in v] for k, v in per_slice.items()}
        )
        rows.append(row)
        detail = (
            f"{row['layout_bpd']:.3f} - min({row['layout_codec_bpd']:.3f} {args.codec}, {row['layout_turned_bpd']:.3f} "
            "turned) layout bits/dim"
            if layout is not None
            else f"{row['bpd']:.3f} - {row['codec_bpd']:.3f} ({args.codec}) bits/dim"
        )
        print(
            f"{PROG} score: {path}: score {row['score']:.3f} = {detail} ({row['num_slices']} slice(s))", file=sys.stderr
        )
    codec = args.codec.upper() if args.codec == "png" else "JPEG-XL"
    head = f"| input | bits/dim | {codec} bits/dim | texture score |"
    if layout is not None:
        head += f" layout bits/dim | layout {codec} bits/dim | layout turned bits/dim |"
    lines = [head + " score | flag |", "|---" * (head.count("|") + 1) + "|"]
    for r in rows:
        cells = [r["bpd"], r["codec_bpd"], r["texture_score"]]
        if layout is not None:
            cells += [r["layout_bpd"], r["layout_codec_bpd"], r["layout_turned_bpd"]]
        flag = "OUT OF DISTRIBUTION" if r["out_of_distribution"] else ""
        lines.append(f"| {r['input']} | " + " | ".join(f"{c:.3f}" for c in cells) + f" | {r['score']:.3f} | {flag} |")
    print("\n".join(lines))
    source = "--threshold" if args.threshold is not None else "default"
    n = sum(r["out_of_distribution"] for r in rows)
    meaning = (
        f"layout bits/dim (whole slice, {layout.size} x {layout.size}) - the fewer of lossless {codec} and the same "
        "model on the slice turned 90 degrees either way or front to back"
        if layout is not None
        else f"model bits/dim - lossless {codec} bits/dim of the same 8-bit slices"
    )
    print(
        f"\nscore = {meaning} (lower = more typical); texture score = model bits/dim - {codec} bits/dim. "
        f"{n} of {len(rows)} input(s) flagged out of distribution (score > {threshold:g}, {source})."
    )
    if args.json:
        from monai_medgen import io

        report = {
            "bundle": bundle.name,
            "bundle_version": bundle.version,
            "codec": args.codec,
            "score_kind": kind,
            "score": (
                "layout bits/dim minus the fewer of lossless codec bits/dim and the layout bits/dim of the turned "
                "slice (monai_medgen.ood.layout_scores)"
                if layout is not None
                else f"model bits/dim minus lossless {args.codec} bits/dim (Serra et al. 2020)"
            ),
            "threshold": threshold,
            "threshold_source": source,
            "num_time_samples": args.time_samples,
            "seed": args.seed,
            "results": rows,
        }
        # written beside the target and renamed: an interrupted run leaves the previous report whole
        io.write_text_atomically(args.json, json.dumps(report, indent=2))
    return 0


# ---------------------------------------------------------------------------------------------
# parser and entry point
# ---------------------------------------------------------------------------------------------
class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only when there is one and the help text does not already say it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            action.default is None
            or action.default is False
            or "default" in text
            or action.default is argparse.SUPPRESS
        ):
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog=PROG,
        description="Restore, generate and score medical images with the monai_medgen bundles (bundles/). Every "
        "output is marked synthetic, keeps the input's geometry and has a JSON provenance sidecar. "
        "See '%(prog)s <command> --help'.",
    )
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)
    fmt = _HelpFormatter

    r = sub.add_parser(
        "restore",
        formatter_class=fmt,
        help="denoise, inpaint or super-resolve an image with a cddpm_* bundle",
        description="Restore a NIfTI, NRRD or MHA file or a DICOM series folder with a trained conditional DDPM "
        "bundle (cddpm_denoising_2d, cddpm_inpainting_2d, cddpm_super_resolution_2d/3d). The output keeps the "
        "input's world space, is marked synthetic in its header and gets a JSON provenance sidecar; a DICOM "
        "series restored to a folder becomes a new derived series.",
    )
    r.add_argument(
        "--bundle", required=True, metavar="DIR", help="bundle folder (configs/inference.yaml, models/model.pt)"
    )
    source = r.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", metavar="IN", help="NIfTI/NRRD/MHA file or DICOM series folder")
    source.add_argument(
        "--dicomweb",
        metavar="URL",
        help="instead of --input: the DICOMweb root of a PACS (e.g. Orthanc's "
        "http://127.0.0.1:8042/dicom-web) holding the series --series-uid; without --output the derived "
        "series is stored back into its study (STOW-RS). Credentials: http://user@host:8042/dicom-web "
        f"with the password in ${DICOMWEB_PASSWORD_ENV}",
    )
    r.add_argument(
        "--output",
        metavar="OUT",
        help="output file (.nii.gz, .nii, .nrrd, .mha); for a DICOM series input a new folder gives a "
        "derived DICOM series; an existing folder (non-DICOM input) gets <input>_<task>_synthetic; with "
        "--dicomweb optional (left out: the derived series goes back to the server)",
    )
    r.add_argument("--mask", metavar="M", help="inpainting: 0/1 image on the input's grid, 1 = missing")
    r.add_argument(
        "--series-uid",
        default=None,
        metavar="UID",
        help="the SeriesInstanceUID of the series to restore: required with --dicomweb; for a DICOM folder "
        "--input holding several series, the one to restore (such a folder is refused with the list of "
        "its series otherwise)",
    )
    r.add_argument(
        "--study-uid",
        default=None,
        metavar="UID",
        help="with --dicomweb: the StudyInstanceUID of --series-uid (optional: the server is asked)",
    )
    r.add_argument(
        "--samples",
        type=_positive_int,
        default=1,
        metavar="N",
        help="samples to average; with N >= 2 and --uncertainty the per-voxel std is written",
    )
    r.add_argument("--uncertainty", metavar="U", help="output for the standard deviation map (needs --samples >= 2)")
    r.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (same seed, same result)")
    r.add_argument(
        "--adapt-steps",
        type=_non_negative_int,
        default=None,
        metavar="K",
        help="denoising: steps adapting the network to the input by its Stein's unbiased risk estimate before "
        "restoring (default: the bundle's; 0: off, fastest)",
    )
    r.add_argument("--sampler", choices=SAMPLERS, default=None, help="sampler (default: the bundle's)")
    r.add_argument(
        "--steps", type=_positive_int, default=None, metavar="K", help="sampling steps (default: the bundle's)"
    )
    r.add_argument(
        "--factor",
        type=_factor,
        default=None,
        metavar="F",
        help="super-resolution: how many times finer the output grid is; one number (in-plane for 2D "
        "models, every axis for 3D models) or one per axis, e.g. 1,1,4 (3D models: 4 mm slices to 1 mm); "
        "1 if the input is already on the fine grid (default: the bundle's)",
    )
    r.add_argument("--device", default=_default_device(), help="cpu, cuda or cuda:N")
    r.add_argument(
        "--overwrite",
        action="store_true",
        help="replace earlier outputs of monai-medgen (never an input, nor a file or folder not marked synthetic)",
    )
    r.add_argument(
        "--channels-last",
        action="store_true",
        help="speed option: channels_last memory format for the network and its inputs (same results)",
    )
    r.add_argument(
        "--autocast",
        choices=("bf16", "fp16"),
        default=None,
        help="speed option: run the network in bf16 (CPUs, recent GPUs) or fp16 (GPUs) under autocast; "
        "results differ at that precision",
    )
    r.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        default=None,
        metavar="BACKEND",
        help="speed option: torch.compile the network (default backend inductor; compiling takes a while)",
    )
    r.set_defaults(func=_restore)

    g = sub.add_parser(
        "generate",
        formatter_class=fmt,
        help="generate synthetic images with a generative bundle (vdm_*, cddpm_class_conditional_2d)",
        description="Generate images or volumes with a trained generative bundle (e.g. bundles/vdm_brain_mri_2d, "
        "bundles/vdm_latent_brain_mri_3d, bundles/cddpm_class_conditional_2d): one NIfTI per sample marked synthetic "
        "with a provenance sidecar, a PNG grid and a sampling GIF in --output-dir. Samples have the model's trained "
        "size; with --reference they cover its field of view (its orientation, centred on it; a 2D sample on its "
        "middle slice).",
    )
    g.add_argument("--bundle", required=True, metavar="DIR", help="generative bundle folder")
    g.add_argument(
        "--class",
        dest="class_label",
        type=int,
        default=None,
        metavar="C",
        help="class label of a class-conditional model (0..num_classes-1)",
    )
    g.add_argument(
        "--guidance", type=float, default=0.0, metavar="W", help="classifier-free guidance scale (needs --class)"
    )
    g.add_argument("--num", type=_positive_int, default=8, metavar="N", help="number of images")
    g.add_argument("--output-dir", required=True, metavar="DIR", help="folder for the samples")
    g.add_argument(
        "--reference",
        metavar="IMG",
        default=None,
        help="NIfTI/NRRD/MHA file or DICOM series whose field of view the samples cover",
    )
    g.add_argument("--seed", type=int, default=0, metavar="S", help="random seed")
    g.add_argument(
        "--steps", type=_positive_int, default=None, metavar="K", help="sampling steps (default: the bundle's)"
    )
    g.add_argument("--sampler", choices=SAMPLERS, default=None, help="sampler (default: the bundle's)")
    g.add_argument("--device", default=_default_device(), help="cpu, cuda or cuda:N")
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace earlier samples in --output-dir (never files that are not marked synthetic)",
    )
    g.set_defaults(func=_generate)

    from monai_medgen import ood

    s = sub.add_parser(
        "score",
        formatter_class=fmt,
        help="out-of-distribution score of images under a VDM bundle (likelihood ratios in bits/dim)",
        description="Out-of-distribution / quality-assurance score of each input under a trained VDM bundle. "
        "Texture score: the model's bits/dim (variational bound) minus the bits/dim of a lossless codec (PNG by "
        "default) on the same 8-bit slices, the complexity correction of Serra et al. 2020 (raw bits/dim alone rates "
        "constant, smooth or simple images as typical). Layout score (the default when the bundle ships a layout "
        "model, as vdm_brain_mri_2d does): a VDM trained on whole 32 x 32 slices; its bits/dim minus the fewer of the "
        "codec's and its own on the slice turned 90 degrees either way or front to back, so another species, a "
        "bias field or a turned brain is caught as well as noise or a photograph. Lower = more typical of the "
        "training data. 2D images are scored whole, "
        "volumes by their axial brain slices with the training preprocessing (mean over slices). Prints a markdown "
        "table with the raw bits/dim, the codec's bits/dim and the scores; inputs whose score is above the threshold "
        "are flagged OUT OF DISTRIBUTION (exit status 0 either way). Default thresholds: texture "
        + ", ".join(f"{v:g} ({k})" for k, v in ood.DEFAULT_THRESHOLDS.items())
        + "; layout "
        + ", ".join(f"{v:g} ({k})" for k, v in ood.LAYOUT_THRESHOLDS.items())
        + f"; each the {ood.THRESHOLD_PERCENTILE:g}th percentile of the scores of the MNI152 axial slices "
        "bundles/vdm_brain_mri_2d trains on (never of evaluation images; scripts/evaluate_ood.py), so for another "
        "model calibrate with that script. Degenerate inputs (smaller than "
        f"{ood.MIN_INPLANE} x {ood.MIN_INPLANE} in-plane, constant or near-constant, no positive voxels) are refused.",
    )
    s.add_argument("--bundle", required=True, metavar="DIR", help="VDM bundle folder")
    s.add_argument(
        "--input", required=True, nargs="+", metavar="IN", help="NIfTI/NRRD/MHA files or DICOM series folders"
    )
    s.add_argument(
        "--threshold",
        type=float,
        default=None,
        metavar="T",
        help="flag inputs whose score is above T bits/dim (default: the calibrated threshold of the score and "
        "--codec, layout "
        + ", ".join(f"{v:g} for {k}" for k, v in ood.LAYOUT_THRESHOLDS.items())
        + "; texture "
        + ", ".join(f"{v:g} for {k}" for k, v in ood.DEFAULT_THRESHOLDS.items())
        + ")",
    )
    s.add_argument(
        "--codec",
        choices=ood.CODECS,
        default=ood.DEFAULT_CODEC,
        help="lossless codec of the complexity correction: png (Pillow) or jpegxl (lossless, effort 9; "
        "needs imagecodecs; separates better on the evaluation panel)",
    )
    s.add_argument(
        "--score",
        choices=("layout", "texture"),
        default=None,
        help="layout: the whole-slice layout score (default when the bundle ships a layout model, "
        "models/layout_model.pt); texture: the main model's complexity-corrected bits/dim (default otherwise)",
    )
    s.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    s.add_argument(
        "--num-slices", type=_positive_int, default=16, metavar="N", help="evenly spaced axial brain slices per volume"
    )
    s.add_argument(
        "--time-samples",
        type=_positive_int,
        default=16,
        metavar="K",
        help="stratified diffusion times per slice (more: less variance)",
    )
    s.add_argument("--seed", type=int, default=0, metavar="S", help="random seed of the estimate")
    s.add_argument("--device", default=_default_device(), help="cpu, cuda or cuda:N")
    s.set_defaults(func=_score)
    return parser


def _one_line(message) -> str:
    """The message on one line, without the tracebacks that some readers embed in their errors."""
    text = str(message).split("Traceback (most recent call last)")[0]
    return " ".join(text.split())


class _Terminated(BaseException):
    """SIGTERM (e.g. ``kill``, a scheduler's time limit) while running: unwinds like Ctrl-C, so that temporary
    files are removed on the way out (a SIGKILL cannot be caught: the next write into that folder removes them)."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def main(argv: list[str] | None = None) -> int:
    """Run ``monai-medgen`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status (2: user error, including
    operating-system errors such as a read-only or full output folder; 130 / 143: interrupted / terminated)."""
    import signal

    parser = build_parser()
    args = parser.parse_args(argv)
    previous = None
    with contextlib.suppress(ValueError, OSError):  # only the main thread may set handlers
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"{PROG} {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"{PROG} {args.command}: error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except MemoryError:
        print(
            f"{PROG} {args.command}: error: out of memory; use a smaller input (crop it) or fewer --samples.",
            file=sys.stderr,
        )
        return 2
    except RuntimeError as e:
        if "out of memory" not in str(e).lower():
            raise
        print(
            f"{PROG} {args.command}: error: out of memory on {getattr(args, 'device', 'the device')} "
            f"({_one_line(e)[:200]}); use a smaller input (crop it), fewer --samples or --device cpu.",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print(f"{PROG} {args.command}: terminated", file=sys.stderr)
        return 143
    finally:
        if previous is not None:
            with contextlib.suppress(ValueError, OSError):
                signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
