"""The unseen evaluation panel: real 2D images of other people, contrasts, species and modalities that no
restoration model here trains on (:mod:`monai_medgen.tasks.corpus` lists what training uses).

=====================  ==========================================================================================
``colin27_t1``          Colin27 (held-out human brain, ``mricron-data``), axial T1 slice at 1 mm
``colin27_t2_sim``      **simulated** T2-weighted spin echo (TR 4000 ms, TE 100 ms) of that slice: tissue
                        memberships from the T1 intensities, literature T1/T2/PD per tissue
``colin27_pd_sim``      **simulated** proton-density-weighted spin echo (TR 4000 ms, TE 15 ms) of that slice
``macaque_t1``          the inia19 macaque template (``mricron-data``), axial slice at 0.5 mm (other species)
``ct_small``            pydicom's ``CT_small.dcm`` (CT of the trunk, Hounsfield units)
``mr_small``            pydicom's ``MR_small.dcm`` (MR, 64 x 64)
``epi``                 nibabel's ``example4d.nii.gz`` (EPI, first volume, middle slice)
``retina``              scikit-image's retina fundus photograph (green channel, 256 x 256)
=====================  ==========================================================================================

Each image is scaled to [0, 1] (0.5th and 99.5th percentiles, clipped), as a user who scales their image would.
Images reserved for the project's independent evaluation are never used here.
"""

from __future__ import annotations

from pathlib import Path

import nibabel
import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from monai_medgen.tasks.corpus import MRICRON_TEMPLATES

__all__ = ["PANEL", "load_panel", "pydicom_test_image", "tuning_image"]

PANEL = ("colin27_t1", "colin27_t2_sim", "colin27_pd_sim", "macaque_t1", "ct_small", "mr_small", "epi", "retina")
TEMPLATES = MRICRON_TEMPLATES
# (T1 ms, T2 ms, PD) at 1.5 T, rounded literature values (Wansapura et al. 1999; Bojorquez et al. 2017)
TISSUES = {"csf": (4000.0, 2000.0, 1.0), "gm": (1100.0, 95.0, 0.8), "wm": (650.0, 75.0, 0.65)}


def _scale01(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    lo, hi = np.percentile(a, [0.5, 99.5])
    return np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


def _crop_to_content(a: np.ndarray, pad: int = 4, threshold: float = 0.02) -> np.ndarray:
    idx = np.nonzero(a > threshold)
    box = tuple(slice(max(0, int(i.min()) - pad), int(i.max()) + 1 + pad) for i in idx)
    return a[box]


def _nifti_slice(path: Path, axis: int = 2, frame: int | None = None, fraction: float = 0.5) -> np.ndarray:

    v = np.asarray(nib.load(str(path)).get_fdata(), np.float32)
    if frame is not None:
        v = v[..., frame]
    idx = int(round((v.shape[axis] - 1) * fraction))
    return np.rot90(np.take(v, idx, axis=axis))


def _colin27_slice() -> np.ndarray:
    return _crop_to_content(_scale01(_nifti_slice(TEMPLATES / "ch2bet.nii.gz", fraction=0.55)))


def _spin_echo(t1_slice: np.ndarray, tr: float, te: float) -> np.ndarray:
    """Simulated spin echo ``PD (1 - exp(-TR/T1)) exp(-TE/T2)`` with tissue memberships read off the T1 intensities
    (piecewise-linear between the CSF, GM and WM intensity modes of the brain)."""
    brain = t1_slice > 0.02
    v = t1_slice[brain]
    csf_mode, gm_mode, wm_mode = np.percentile(v, [5, 45, 85])
    w_csf = np.clip((gm_mode - t1_slice) / (gm_mode - csf_mode), 0, 1)
    w_wm = np.clip((t1_slice - gm_mode) / (wm_mode - gm_mode), 0, 1)
    w_gm = 1 - w_csf - w_wm
    signal = np.zeros_like(t1_slice)
    for w, (t1, t2, pd) in zip((w_csf, w_gm, w_wm), (TISSUES["csf"], TISSUES["gm"], TISSUES["wm"])):
        signal += w * pd * (1 - np.exp(-tr / t1)) * np.exp(-te / t2)
    return _scale01(signal * brain)


def pydicom_test_image(name: str) -> np.ndarray:
    """A 2D image of the files shipped inside the pydicom package (``data/test_files`` only), in stored
    units after the rescale slope and intercept (Hounsfield units for CT)."""
    import pydicom

    ds = pydicom.dcmread(str(Path(pydicom.__file__).parent / "data" / "test_files" / name))
    a = ds.pixel_array.astype(np.float32)
    return a * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)


def _panel_image(name: str) -> np.ndarray:
    if name == "colin27_t1":
        return _colin27_slice()
    if name == "colin27_t2_sim":
        return _spin_echo(_colin27_slice(), 4000.0, 100.0)
    if name == "colin27_pd_sim":
        return _spin_echo(_colin27_slice(), 4000.0, 15.0)
    if name == "macaque_t1":
        return _crop_to_content(_scale01(_nifti_slice(TEMPLATES / "inia19-t1-brain.nii.gz", fraction=0.6)))
    if name == "ct_small":
        return _scale01(pydicom_test_image("CT_small.dcm"))
    if name == "mr_small":
        return _scale01(pydicom_test_image("MR_small.dcm"))
    if name == "epi":
        path = Path(nibabel.__file__).parent / "tests" / "data" / "example4d.nii.gz"
        return _scale01(_nifti_slice(path, frame=0))
    if name == "retina":
        import skimage.data

        g = torch.as_tensor(skimage.data.retina()[..., 1].astype(np.float32))[None, None]
        return _scale01(F.interpolate(g, size=(256, 256), mode="area")[0, 0].numpy())
    raise ValueError(f"name must be one of {PANEL}, got {name!r}.")


def load_panel(names=PANEL) -> dict[str, torch.Tensor]:
    """``{name: (1, 1, H, W) tensor in [0, 1]}``; images whose source is not installed are left out."""
    out = {}
    for name in names:
        try:
            out[name] = torch.as_tensor(np.ascontiguousarray(_panel_image(name)))[None, None]
        except (FileNotFoundError, OSError, TypeError):
            continue
    return out


def tuning_image() -> torch.Tensor:
    """The image every classical baseline's parameter is tuned on: an axial MNI152 T1 slice (training data, never
    a panel image), (1, 1, H, W) in [0, 1]."""
    from nilearn import datasets

    v = np.asarray(datasets.load_mni152_template(resolution=1).get_fdata(), np.float32)
    return torch.as_tensor(np.ascontiguousarray(_crop_to_content(_scale01(np.rot90(v[:, :, 100])))))[None, None]
