"""Real brain MRI that works offline, and the same from a user's own files.

Training data: the MNI152 2009a T1 template shipped by nilearn (PyPI).  Held-out brain: Colin27
(``ch2bet.nii.gz`` from Debian's ``mricron-data``).  Two different brains is the honest offline split
(REFERENCE section 6).  Everything comes back as MONAI-style lists of dicts (``{"image": array, ...}``,
channel first, float32 in [0, 1] after per-volume intensity scaling) that flow into ``monai.data.Dataset``,
transforms and ``DataLoader``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import EnsureChannelFirstd, LoadImage, LoadImaged

__all__ = [
    "COLIN27_PATHS",
    "PLANES",
    "load_mni152",
    "load_colin27",
    "load_volume",
    "scale_intensity",
    "volume_slices",
    "resize_volume",
    "demo_slices",
    "demo_volumes",
    "datalist_from_path",
    "user_slices",
    "user_volumes",
]

COLIN27_PATHS = (
    os.environ.get("MONAI_MEDGEN_COLIN27", ""),
    "/usr/share/mricron/templates/ch2bet.nii.gz",
    "/usr/share/mricron/ch2bet.nii.gz",
)
PLANES = ("axial", "coronal", "sagittal")
_PLANE_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}  # RAS voxel axes of both templates
IMAGE_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".dcm")


# ---------------------------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------------------------
def load_mni152(resolution: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """MNI152 2009a T1 template (skull-stripped) from nilearn: (volume (X, Y, Z) float32, affine 4x4)."""
    try:
        from nilearn.datasets import load_mni152_template
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The MNI152 demo data needs nilearn, which ships the template offline: pip install nilearn "
            "(or pip install 'monai_medgen[demo]')."
        ) from e
    img = load_mni152_template(resolution=resolution)
    return np.asarray(img.get_fdata(), dtype=np.float32), np.asarray(img.affine)


def load_volume(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Any NIfTI / NRRD / MHA file or DICOM series folder through MONAI's ``LoadImage``:
    (volume (X, Y, Z) float32, affine 4x4)."""

    img = LoadImage(image_only=True)(str(path))
    return np.asarray(img, dtype=np.float32), np.asarray(img.affine)


def load_colin27(path: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Colin27 skull-stripped T1 (``ch2bet.nii.gz``), the held-out brain: (volume, affine)."""
    candidates = [path] if path else [p for p in COLIN27_PATHS if p]
    for p in candidates:
        if p and Path(p).is_file():
            img = nib.load(str(p))
            return np.asarray(img.get_fdata(), dtype=np.float32), np.asarray(img.affine)
    raise FileNotFoundError(
        f"Colin27 (ch2bet.nii.gz) not found at {[str(c) for c in candidates]}. It ships with Debian's "
        "mricron-data package: sudo apt-get install mricron-data (or set MONAI_MEDGEN_COLIN27 to the file)."
    )


# ---------------------------------------------------------------------------------------------
# preprocessing
# ---------------------------------------------------------------------------------------------
def scale_intensity(volume: np.ndarray, upper_percentile: float = 99.5) -> np.ndarray:
    """Per-volume scaling to [0, 1]: 0 stays 0, the ``upper_percentile`` of non-zero voxels maps to 1."""
    v = np.asarray(volume, dtype=np.float32)
    fg = v[v > 0]
    if fg.size == 0:
        raise ValueError("volume has no positive voxels to scale.")
    hi = float(np.percentile(fg, upper_percentile))
    return np.clip(v / hi, 0.0, 1.0).astype(np.float32)


def _brain_box(volume: np.ndarray, threshold: float = 0.02) -> tuple[slice, ...]:
    idx = np.nonzero(volume > threshold)
    return tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)


def _pad_to_square(a: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    n = max(a.shape[ax] for ax in axes)
    pad = [(0, 0)] * a.ndim
    for ax in axes:
        extra = n - a.shape[ax]
        pad[ax] = (extra // 2, extra - extra // 2)
    return np.pad(a, pad)


def resize_volume(a: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Anti-aliased (area) resize of a (N, *spatial) stack to ``size``; linear when enlarging."""
    t = torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32).unsqueeze(1)
    shrink = all(s <= n for s, n in zip(size, t.shape[2:]))
    mode = "area" if shrink else ("bilinear" if len(size) == 2 else "trilinear")
    out = F.interpolate(t, size=tuple(size), mode=mode, **({} if shrink else {"align_corners": False}))
    return out.squeeze(1).clamp(0, 1).numpy()


def volume_slices(
    volume: np.ndarray,
    size: int = 128,
    plane: str = "axial",
    num_slices: int | None = None,
    min_fraction: float = 0.25,
) -> tuple[np.ndarray, np.ndarray]:
    """Brain slices of a scaled volume, cropped to the brain's bounding box, padded square and
    resized to ``size`` x ``size``.

    Slices whose brain area is below ``min_fraction`` of the largest slice are dropped; ``num_slices``
    picks that many evenly spaced among the rest.  Returns (slices (N, size, size), slice indices (N,)).
    """
    if plane not in _PLANE_AXIS:
        raise ValueError(f"plane must be one of {PLANES}, got {plane!r}.")
    box = _brain_box(volume)
    v = np.moveaxis(volume[box], _PLANE_AXIS[plane], 0)
    area = (v > 0.02).reshape(v.shape[0], -1).sum(1)
    keep = np.nonzero(area >= min_fraction * area.max())[0]
    if num_slices is not None and num_slices < keep.size:
        keep = keep[np.round(np.linspace(0, keep.size - 1, num_slices)).astype(int)]
    v = _pad_to_square(v[keep], axes=(1, 2))
    return resize_volume(v, (size, size)), keep + box[_PLANE_AXIS[plane]].start


def _source_volume(source: str) -> np.ndarray:
    if source == "mni152":
        vol, _ = load_mni152()
    elif source == "colin27":
        vol, _ = load_colin27()
    else:
        raise ValueError(f"source must be 'mni152' (training) or 'colin27' (held out), got {source!r}.")
    return scale_intensity(vol)


def demo_slices(
    source: str = "mni152",
    size: int = 128,
    num_slices: int | None = None,
    planes: Sequence[str] = ("axial",),
    min_fraction: float = 0.25,
) -> list[dict]:
    """2D brain slices as a list of ``{"image": (1, size, size) float32 in [0, 1], "label": plane index,
    "plane", "slice", "source"}``.

    Args:
        source: ``"mni152"`` (training) or ``"colin27"`` (held-out).
        size: in-plane size after anti-aliased resizing.
        num_slices: evenly spaced slices per plane (None: all with enough brain).
        planes: any of ``"axial"``, ``"coronal"``, ``"sagittal"``; ``label`` is the plane's index in PLANES.
    """
    vol = _source_volume(source)
    items = []
    for plane in planes:
        slices, index = volume_slices(vol, size, plane, num_slices, min_fraction)
        label = PLANES.index(plane)
        for s, i in zip(slices, index):
            items.append(
                {"image": s[None].astype(np.float32), "label": label, "plane": plane, "slice": int(i), "source": source}
            )
    return items


def demo_volumes(source: str = "mni152", size: int | Sequence[int] = 32) -> list[dict]:
    """The brain as one 3D item ``{"image": (1, *size) float32 in [0, 1], "source"}``, cropped to the
    brain, padded to a cube and resized (area) to ``size``."""
    size = (size,) * 3 if isinstance(size, int) else tuple(size)
    vol = _source_volume(source)
    v = _pad_to_square(vol[_brain_box(vol)], axes=(0, 1, 2))
    return [{"image": resize_volume(v[None], size).astype(np.float32), "source": source}]


# ---------------------------------------------------------------------------------------------
# a user's own data
# ---------------------------------------------------------------------------------------------
def _is_image_file(p: Path) -> bool:
    return any(p.name.lower().endswith(ext) for ext in IMAGE_EXTENSIONS)


def datalist_from_path(path: str | os.PathLike, key: str = "training", label_key: str = "label") -> list[dict]:
    """A MONAI datalist (``[{"image": file_or_series_dir, ...}]``) from a folder or a datalist JSON.

    - a JSON file: a list of dicts, or a dict holding the list under ``key`` (Decathlon style); relative
      paths are resolved against the JSON's folder;
    - a folder: every NIfTI / NRRD / MHA file in it (recursively), and every folder of ``.dcm`` files as one
      DICOM series.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset path {str(path)!r} does not exist.")
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise ValueError(f"dataset path must be a folder or a datalist .json file, got {str(path)!r}.")
        data = json.loads(path.read_text())
        items = data.get(key) if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise ValueError(f"datalist {str(path)!r} must be a list of dicts or hold one under {key!r}.")
        out = []
        for it in items:
            it = {"image": it} if isinstance(it, str) else dict(it)
            if "image" not in it:
                raise ValueError(f"every datalist entry needs an 'image' key, got {sorted(it)}.")
            p = Path(it["image"])
            it["image"] = str(p if p.is_absolute() else (path.parent / p))
            out.append(it)
        return out
    files = sorted(p for p in path.rglob("*") if p.is_file() and _is_image_file(p) and p.suffix.lower() != ".dcm")
    series = sorted({p.parent for p in path.rglob("*.dcm")})
    out = [{"image": str(p)} for p in files] + [{"image": str(d)} for d in series]
    if not out:
        raise ValueError(f"no NIfTI/NRRD/MHA files or DICOM series found under {str(path)!r}.")
    return out


def _load_scaled(item: dict) -> np.ndarray:

    loaded = EnsureChannelFirstd(keys="image")(LoadImaged(keys="image", image_only=True)({"image": item["image"]}))
    img = np.asarray(loaded["image"], dtype=np.float32)
    if img.shape[0] != 1:
        img = img.mean(0, keepdims=True)
    return scale_intensity(np.clip(img[0], 0, None))


def user_slices(
    path: str | os.PathLike, size: int = 128, planes: Sequence[str] = ("axial",), num_slices: int | None = None
) -> list[dict]:
    """:func:`demo_slices` for a user's folder or datalist JSON (read with MONAI's ``LoadImaged``).

    2D files give one slice each; volumes give their brain slices.  A datalist ``label`` is kept (any
    integer class, e.g. MR contrast); otherwise the plane index is the label.
    """
    items = []
    for entry in datalist_from_path(path):
        vol = _load_scaled(entry)
        extra = {k: v for k, v in entry.items() if k != "image"}
        if vol.ndim == 2 or (vol.ndim == 3 and 1 in vol.shape):
            img = resize_volume(
                _pad_to_square(vol.reshape(vol.shape[0], -1) if vol.ndim == 3 else vol, (0, 1))[None], (size, size)
            )
            items.append(
                {"image": img.astype(np.float32), "label": extra.get("label", 0), "source": entry["image"], **extra}
            )
            continue
        for plane in planes:
            slices, index = volume_slices(vol, size, plane, num_slices)
            for s, i in zip(slices, index):
                items.append(
                    {
                        "label": PLANES.index(plane),
                        "plane": plane,
                        **extra,
                        "image": s[None].astype(np.float32),
                        "slice": int(i),
                        "source": entry["image"],
                    }
                )
    return items


def user_volumes(path: str | os.PathLike, size: int | Sequence[int] = 32) -> list[dict]:
    """:func:`demo_volumes` for a user's folder or datalist JSON: one item per volume."""
    size = (size,) * 3 if isinstance(size, int) else tuple(size)
    items = []
    for entry in datalist_from_path(path):
        vol = _load_scaled(entry)
        if vol.ndim != 3:
            raise ValueError(f"{entry['image']!r} is not a 3D volume (shape {vol.shape}).")
        v = _pad_to_square(vol[_brain_box(vol)], axes=(0, 1, 2))
        extra = {k: v for k, v in entry.items() if k != "image"}
        items.append({**extra, "image": resize_volume(v[None], size).astype(np.float32), "source": entry["image"]})
    return items
