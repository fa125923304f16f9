"""Every bad input of issues 6 (item 4) and 14 (command line) through the real ``monai-medgen`` command line, one
process per case, and the integrity checks that end in a result (a series chosen by UID, outputs that follow the
umask, temporary files of a killed run removed, SIGTERM).

    PYTHONPATH=. python scripts/bad_inputs.py [--work DIR] [--keep]

Builds real inputs from the Colin27 brain (``/usr/share/mricron/templates/ch2bet.nii.gz``: a 40x48x3 block with
an oblique affine as NIfTI, NRRD, MHA and a DICOM series; damaged copies of them), copies of the bundles (the
restoration bundles with freshly initialised weights, the VDM bundle with its trained weights, a three-class VDM,
a bundle without weights, one with truncated weights), runs ``python -m monai_medgen.cli ...`` (the entry point of
the ``monai-medgen`` console script) for each case, and prints a markdown table: case | command | exit code |
message the user saw | files written or changed.  A case fails (exit status 1 at the end) unless the command
exits with 2, prints exactly one ``monai-medgen <command>: error: ...`` line and no traceback, names what the
case expects, and leaves every file in the work folder as it was.  Run as root, a read-only and a full (256 KiB)
tmpfs are mounted under the work folder for the two cases of the machine's folders (unmounted at the end); without
root the read-only folder is one without write permission and the full-disk case is skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
COLIN = "/usr/share/mricron/templates/ch2bet.nii.gz"
SHAPE = (40, 48, 3)
START = (70, 90, 80)
FAST = ["--steps", "2", "--device", "cpu"]

# (case, arguments with {placeholders}, fragment the message must contain)
CASES = [
    (
        "unreadable file (not an image)",
        "restore --bundle {den} --input {junk} --output {out}/o.nii.gz",
        "--input: could not read",
    ),
    (
        "unreadable input folder (no DICOM files)",
        "restore --bundle {den} --input {empty_dir} --output {out}/o.nii.gz",
        "--input",
    ),
    (
        "truncated NIfTI",
        "restore --bundle {den} --input {truncated_nii} --output {out}/o.nii.gz",
        "--input: could not read",
    ),
    (
        "truncated NIfTI (gzip)",
        "restore --bundle {den} --input {truncated_niigz} --output {out}/o.nii.gz",
        "--input: could not read",
    ),
    (
        "truncated NRRD",
        "restore --bundle {den} --input {truncated_nrrd} --output {out}/o.nrrd",
        "--input: could not read",
    ),
    ("truncated MHA", "restore --bundle {den} --input {truncated_mha} --output {out}/o.mha", "--input: could not read"),
    (
        "truncated slice in a DICOM series",
        "restore --bundle {den} --input {truncated_series} --output {out}/derived",
        "--input",
    ),
    (
        "missing input file",
        "restore --bundle {den} --input {out}/nothing.nii.gz --output {out}/o.nii.gz",
        "no such file",
    ),
    (
        "2D image for a 3D bundle",
        "restore --bundle {sr3d} --input {slice2d} --output {out}/o.nii.gz --factor 1,1,4",
        "must be a 3D volume",
    ),
    (
        "two channels for a one-channel bundle",
        "restore --bundle {den} --input {two_channels} --output {out}/o.nii.gz",
        "channel",
    ),
    (
        "4D series (time) for a one-channel bundle",
        "restore --bundle {den} --input {time_series} --output {out}/o.nii.gz",
        "channel",
    ),
    ("NaN voxels", "restore --bundle {den} --input {nan} --output {out}/o.nii.gz", "NaN or infinite"),
    ("infinite voxels", "restore --bundle {den} --input {inf} --output {out}/o.nii.gz", "NaN or infinite"),
    (
        "NaN voxels in the mask",
        "restore --bundle {inp} --input {nifti} --mask {nan_mask} --output {out}/o.nii.gz",
        "--mask",
    ),
    ("empty mask", "restore --bundle {inp} --input {nifti} --mask {empty_mask} --output {out}/o.nii.gz", "is empty"),
    ("full mask", "restore --bundle {inp} --input {nifti} --mask {full_mask} --output {out}/o.nii.gz", "is full"),
    (
        "mask of another shape",
        "restore --bundle {inp} --input {nifti} --mask {small_mask} --output {out}/o.nii.gz",
        "must have the image's shape",
    ),
    (
        "mask of another geometry (shifted 5 mm)",
        "restore --bundle {inp} --input {nifti} --mask {shifted_mask} --output {out}/o.nii.gz",
        "voxel grid",
    ),
    (
        "inpainting bundle without a mask",
        "restore --bundle {inp} --input {nifti} --output {out}/o.nii.gz",
        "--mask is required",
    ),
    (
        "mask for a denoising bundle",
        "restore --bundle {den} --input {nifti} --mask {mask} --output {out}/o.nii.gz",
        "--mask is for inpainting",
    ),
    (
        "super-resolution factor below 1",
        "restore --bundle {sr2d} --input {nifti} --output {out}/o.nii.gz --factor 0.5",
        "--factor",
    ),
    (
        "factor too large for the volume",
        "restore --bundle {sr2d} --input {nifti} --output {out}/o.nii.gz --factor 64",
        "--factor 64",
    ),
    (
        "through-plane factor for a 2D model",
        "restore --bundle {sr2d} --input {nifti} --output {out}/o.nii.gz --factor 1,1,4",
        "2D model",
    ),
    (
        "two factors for a 3D model",
        "restore --bundle {sr3d} --input {nifti} --output {out}/o.nii.gz --factor 1,4",
        "3 numbers",
    ),
    (
        "factor with a DICOM series output",
        "restore --bundle {sr2d} --input {series} --output {out}/derived --factor 2",
        "keeps the input series' grid",
    ),
    (
        "factor for a denoising bundle",
        "restore --bundle {den} --input {nifti} --output {out}/o.nii.gz --factor 2",
        "super-resolution bundles only",
    ),
    (
        "unknown class label (unconditional model)",
        "generate --bundle {vdm} --class 3 --num 1 --output-dir {out}/gen",
        "model is unconditional",
    ),
    (
        "unknown class label (3-class model)",
        "generate --bundle {vdm3} --class 7 --num 1 --output-dir {out}/gen",
        "not a class of this model",
    ),
    (
        "negative class label",
        "generate --bundle {vdm3} --class -1 --num 1 --output-dir {out}/gen",
        "not a class of this model",
    ),
    ("guidance without a class", "generate --bundle {vdm3} --guidance 2 --num 1 --output-dir {out}/gen", "--class"),
    (
        "bundle folder without weights",
        "restore --bundle {untrained} --input {nifti} --output {out}/o.nii.gz",
        "has no weights at",
    ),
    (
        "bundle with truncated weights",
        "restore --bundle {truncated_weights} --input {nifti} --output {out}/o.nii.gz",
        "truncated or corrupted",
    ),
    (
        "bundle with weights of another network",
        "restore --bundle {wrong_weights} --input {nifti} --output {out}/o.nii.gz",
        "do not fit the network",
    ),
    (
        "folder that is not a bundle",
        "restore --bundle {out} --input {nifti} --output {out}/o.nii.gz",
        "has no configs/inference.yaml",
    ),
    ("restoration bundle for score", "score --bundle {den} --input {nifti}", "is not a VDM bundle"),
    ("unreadable file for score", "score --bundle {vdm} --input {nifti} {junk}", "--input: could not read"),
    ("NaN voxels for score", "score --bundle {vdm} --input {nan}", "NaN or infinite"),
    (
        "score report over an input",
        "score --bundle {vdm} --input {nifti} --json {nifti}",
        "refusing to overwrite an input",
    ),
    ("score report over another file", "score --bundle {vdm} --input {nifti} --json {existing}", "already exists"),
    (
        "output equal to input",
        "restore --bundle {den} --input {nifti} --output {nifti}",
        "refusing to overwrite an input",
    ),
    (
        "output equal to input (other spelling)",
        "restore --bundle {den} --input {nifti} --output {nifti_other_spelling}",
        "refusing to overwrite an input",
    ),
    (
        "output equal to the mask",
        "restore --bundle {inp} --input {nifti} --mask {mask} --output {mask}",
        "refusing to overwrite an input",
    ),
    (
        "output inside the input DICOM series",
        "restore --bundle {den} --input {series} --output {series}/derived",
        "lies inside the --input DICOM series",
    ),
    ("existing output", "restore --bundle {den} --input {nifti} --output {existing}", "already exists"),
    (
        "existing output folder of other files (DICOM)",
        "restore --bundle {den} --input {series} --output {user_folder} --overwrite",
        "refusing to replace it",
    ),
    ("existing samples in --output-dir", "generate --bundle {vdm} --num 1 --output-dir {samples_dir}", "already holds"),
    (
        "--overwrite over a file not marked synthetic",
        "generate --bundle {vdm} --num 1 --output-dir {samples_dir} --overwrite",
        "not marked synthetic",
    ),
    ("--output-dir that is a file", "generate --bundle {vdm} --num 1 --output-dir {nifti}", "is a file"),
    (
        "uncertainty map without samples",
        "restore --bundle {den} --input {nifti} --output {out}/o.nii.gz --uncertainty {out}/u.nii.gz",
        "--samples",
    ),
    ("output with an unknown suffix", "restore --bundle {den} --input {nifti} --output {out}/o.png", "must end with"),
    (
        "CUDA device on a machine without one",
        "restore --bundle {den} --input {nifti} --output {out}/o.nii.gz --device cuda",
        "CUDA is not available",
    ),
    # issue 14, command line: nothing replaced that monai-medgen did not write
    (
        "--overwrite over a user's scan (file output)",
        "restore --bundle {den} --input {nifti} --output {existing} --overwrite",
        "not marked synthetic",
    ),
    (
        "--overwrite over a user's scan as --uncertainty",
        "restore --bundle {den} --input {nifti} --output {out}/o.nii.gz "
        "--samples 2 --uncertainty {existing} --overwrite",
        "not marked synthetic",
    ),
    (
        "a user's <output>.json beside a new output",
        "restore --bundle {den} --input {nifti} --output {with_json}/result.nii.gz",
        "not a monai_medgen provenance sidecar",
    ),
    (
        "a user's <output>.json, with --overwrite",
        "restore --bundle {den} --input {nifti} --output {with_json}/result.nii.gz --overwrite",
        "not a monai_medgen provenance sidecar",
    ),
    (
        "--overwrite over a derived series folder holding a user's file",
        "restore --bundle {den} --input {series} --output {derived_plus} --overwrite",
        "not a derived series",
    ),
    (
        "--overwrite over pictures in a folder without earlier samples",
        "generate --bundle {vdm} --num 1 --output-dir {pictures_dir} --overwrite",
        "holds no earlier synthetic sample",
    ),
    (
        "--uncertainty equal to --output",
        "restore --bundle {den} --input {nifti} --output {out}/o.nii.gz --samples 2 --uncertainty {out}/o.nii.gz",
        "would replace the result",
    ),
    (
        "--uncertainty of another kind than --output",
        "restore --bundle {den} --input {nifti} --output {out}/o.nii.gz --samples 2 --uncertainty {out}/u.png",
        "same kind as --output",
    ),
    # DICOM series and geometry
    (
        "DICOM folder holding two series",
        "restore --bundle {den} --input {two_series} --output {out}/o.nii.gz",
        "holds 2 DICOM series",
    ),
    ("DICOM folder holding two series (score)", "score --bundle {vdm} --input {two_series}", "holds 2 DICOM series"),
    (
        "--series-uid not in the folder",
        "restore --bundle {den} --input {two_series} --series-uid 1.2.3.4 --output {out}/o.nii.gz",
        "no series with SeriesInstanceUID",
    ),
    (
        "--series-uid for a file input",
        "restore --bundle {den} --input {nifti} --series-uid 1.2.3.4 --output {out}/o.nii.gz",
        "--series-uid applies to a DICOM folder",
    ),
    (
        "DICOM series of mixed orientations",
        "restore --bundle {den} --input {mixed_orientation} --output {out}/o.nii.gz",
        "slice orientations",
    ),
    (
        "DICOM series with duplicate slice positions",
        "restore --bundle {den} --input {duplicate_positions} --output {out}/o.nii.gz",
        "duplicate slice positions",
    ),
    (
        "DICOM series without PixelSpacing",
        "restore --bundle {den} --input {no_pixel_spacing} --output {out}/o.nii.gz",
        "PixelSpacing is missing",
    ),
    (
        "DICOM series with unevenly spaced slices",
        "restore --bundle {den} --input {uneven_spacing} --output {out}/o.nii.gz",
        "not evenly spaced",
    ),
    ("zero-determinant affine", "restore --bundle {den} --input {zero_det} --output {out}/o.nii.gz", "degenerate"),
    (
        "NaN affine",
        "restore --bundle {den} --input {nan_affine} --output {out}/o.nii.gz",
        "affine (voxel-to-world geometry) holds NaN",
    ),
    (
        "NaN affine as generate --reference",
        "generate --bundle {vdm} --num 1 --reference {nan_affine} --output-dir {out}/gen",
        "affine (voxel-to-world geometry) holds NaN",
    ),
    ("1x1x1 input", "restore --bundle {den} --input {tiny} --output {out}/o.nii.gz", "too small to restore"),
    ("1x1x1 input for score", "score --bundle {vdm} --input {tiny}", "too small to score"),
    (
        "generate with a restoration bundle",
        "generate --bundle {den} --num 1 --output-dir {out}/gen",
        "restores images",
    ),
    (
        "generate --reference too small",
        "generate --bundle {vdm} --num 1 --reference {tiny} --output-dir {out}/gen",
        "is too small",
    ),
    # the machine
    (
        "read-only output folder",
        "restore --bundle {den} --input {nifti} --output {read_only}/o.nii.gz",
        "cannot write into its folder",
    ),
    (
        "full output folder (disk full while writing)",
        "restore --bundle {den} --input {nifti} --output {full}/o.nii.gz",
        "No space left on device",
    ),
    ("meta device", "restore --bundle {den} --input {nifti} --output {out}/o.nii.gz --device meta", "--device must be"),
    (
        "unknown --compile backend",
        "restore --bundle {den} --input {nifti} --output {out}/o.nii.gz --compile bogus",
        "not a torch.compile backend",
    ),
    # numbers
    (
        "--guidance nan",
        "generate --bundle {vdm3} --class 1 --guidance nan --num 1 --output-dir {out}/gen",
        "--guidance must be a finite number",
    ),
    (
        "--guidance inf",
        "generate --bundle {vdm3} --class 1 --guidance inf --num 1 --output-dir {out}/gen",
        "--guidance must be a finite number",
    ),
    (
        "--guidance out of range",
        "generate --bundle {vdm3} --class 1 --guidance 1e9 --num 1 --output-dir {out}/gen",
        "--guidance must be",
    ),
    (
        "negative --guidance",
        "generate --bundle {vdm3} --class 1 --guidance -1 --num 1 --output-dir {out}/gen",
        "--guidance must be",
    ),
    ("negative --seed", "restore --bundle {den} --input {nifti} --output {out}/o.nii.gz --seed -1", "--seed must be"),
    (
        "--seed beyond 2^32",
        "generate --bundle {vdm} --num 1 --seed 99999999999999 --output-dir {out}/gen",
        "--seed must be",
    ),
    (
        "--steps beyond the limit",
        "restore --bundle {den} --input {nifti} --output {out}/o.nii.gz --steps 10000000",
        "--steps must be",
    ),
    (
        "--samples beyond the limit",
        "restore --bundle {den} --input {nifti} --output {out}/o.nii.gz --samples 100000",
        "--samples must be",
    ),
    ("--num beyond the limit", "generate --bundle {vdm} --num 10000000 --output-dir {out}/gen", "--num must be"),
    ("--factor inf", "restore --bundle {sr2d} --input {nifti} --output {out}/o.nii.gz --factor inf", "--factor"),
    (
        "--factor nan per axis",
        "restore --bundle {sr2d} --input {nifti} --output {out}/o.nii.gz --factor 1,nan,2",
        "--factor",
    ),
    ("--threshold nan", "score --bundle {vdm} --input {nifti} --threshold nan", "--threshold must be a finite number"),
    (
        "--time-samples beyond the limit",
        "score --bundle {vdm} --input {nifti} --time-samples 10000000",
        "--time-samples must be",
    ),
]


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
def oblique_affine(start=START) -> np.ndarray:
    """Colin27's affine for a crop starting at voxel ``start``, rotated by 10 degrees about z (oblique)."""
    import nibabel as nib

    affine = nib.load(COLIN).affine.copy()
    affine[:3, 3] = affine[:3, :3] @ np.asarray(start, dtype=np.float64) + affine[:3, 3]
    a = np.deg2rad(10.0)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return rot @ affine


def _write_sitk(vol: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import SimpleITK as sitk

    lps = affine.copy()
    lps[:2] *= -1
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    im = sitk.GetImageFromArray(np.ascontiguousarray(vol.transpose(2, 1, 0)))
    im.SetSpacing(spacing.tolist())
    im.SetOrigin(lps[:3, 3].tolist())
    im.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    sitk.WriteImage(im, str(path), False)  # uncompressed, so a cut file is cut inside the voxel data


def write_series(
    folder: Path,
    volume: np.ndarray,
    affine: np.ndarray,
    prefix: str = "IM",
    description: str = "T1",
    study: str | None = None,
    edit=None,
) -> str:
    """An MR DICOM series (uint16, one file per slice) with the volume's geometry, files ``<prefix>_<k>.dcm``;
    ``edit(ds, k)`` may change slice ``k`` before it is saved.  Returns its SeriesInstanceUID."""
    from pydicom.uid import generate_uid

    from monai_medgen import io

    folder.mkdir(parents=True, exist_ok=True)
    lps = affine.copy()
    lps[:2] *= -1
    study, series = study or generate_uid(), generate_uid()
    stored = np.rint(volume / volume.max() * 4000).astype(np.uint16)
    for k in range(stored.shape[2]):
        ds = io.new_mr_instance(study, series)
        ds.Modality, ds.PatientID, ds.PatientName = "MR", "COLIN27", "Colin^27"
        ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = description, 2, k + 1
        io.set_mr_slice(ds, lps, k, stored[:, :, k], bits_stored=12)
        if edit is not None:
            edit(ds, k)
        ds.save_as(str(folder / f"{prefix}_{k + 1:04d}.dcm"), enforce_file_format=True)
    return series


def _nifti_with_srow(path: Path, volume: np.ndarray, srow: np.ndarray) -> None:
    """A NIfTI whose sform rows are written as given (nibabel itself refuses to make a NaN or singular one)."""
    import gzip
    import struct

    import nibabel as nib

    raw = path.with_name(path.name.replace(".nii.gz", ".raw.nii"))
    img = nib.Nifti1Image(volume, np.eye(4))
    img.header.set_qform(None, code=0)
    nib.save(img, str(raw))
    data = bytearray(raw.read_bytes())
    struct.pack_into("<hh", data, 252, 0, 1)  # qform_code 0, sform_code 1
    struct.pack_into("<12f", data, 280, *np.asarray(srow, dtype=np.float32).ravel())
    raw.unlink()
    path.write_bytes(gzip.compress(bytes(data)))


def _derived_series(folder: Path, series: Path) -> None:
    """A derived series of ``series`` as monai-medgen writes it (its own values, marked synthetic)."""
    from monai_medgen import io

    img = io.read_image(series)
    io.write_dicom_series(img * 0.5, series, folder, io.Provenance(model="bad_inputs", task="denoise"))


def _cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def make_inputs(folder: Path) -> dict[str, str]:
    import nibabel as nib

    folder.mkdir(parents=True)
    vol = np.asarray(nib.load(COLIN).dataobj, dtype=np.float32)
    vol = np.ascontiguousarray(vol[tuple(slice(s, s + n) for s, n in zip(START, SHAPE))])
    affine = oblique_affine()
    p = {"nifti": folder / "colin.nii.gz"}

    def save(name: str, array: np.ndarray, aff: np.ndarray = affine, filename: str | None = None) -> None:
        p[name] = folder / (filename or f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(array, aff), str(p[name]))

    save("nifti", vol, filename="colin.nii.gz")
    save("slice2d", vol[:, :, 1])
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[12:28, 16:32, :] = 1
    save("mask", mask)
    save("empty_mask", np.zeros_like(mask))
    save("full_mask", np.ones_like(mask))
    save("small_mask", mask[:32, :32])
    shifted = affine.copy()
    shifted[:3, 3] += [5.0, 0.0, 0.0]
    save("shifted_mask", mask, shifted)
    nan_mask = mask.astype(np.float32)
    nan_mask[0, 0, 0] = np.nan
    save("nan_mask", nan_mask)
    for name, value in (("nan", np.nan), ("inf", np.inf)):
        bad = vol.copy()
        bad[20, 20, 1] = value
        save(name, bad)
    save("two_channels", np.stack([vol, vol], -1)[:, :, :, None, :])  # (X, Y, Z, 1, 2): NIfTI's vector layout
    save("time_series", np.stack([vol] * 4, -1))  # (X, Y, Z, 4): four time points
    save("truncated_nii", vol, filename="truncated.nii")
    _cut(p["truncated_nii"])
    save("truncated_niigz", vol, filename="truncated_gz.nii.gz")
    _cut(p["truncated_niigz"])
    for ext in ("nrrd", "mha"):
        p[f"truncated_{ext}"] = folder / f"truncated.{ext}"
        _write_sitk(vol, affine, p[f"truncated_{ext}"])
        _cut(p[f"truncated_{ext}"], 0.6)
    p["junk"] = folder / "junk.nii.gz"
    p["junk"].write_bytes(b"this is a text file, not an image\n")
    p["empty_dir"] = folder / "empty_series"
    p["empty_dir"].mkdir()
    (p["empty_dir"] / "README.txt").write_text("no DICOM here\n")
    p["series"] = folder / "series"
    write_series(p["series"], vol, affine)
    p["truncated_series"] = folder / "truncated_series"
    write_series(p["truncated_series"], vol, affine)
    _cut(p["truncated_series"] / "IM_0002.dcm", 0.7)
    p["existing"] = folder / "existing_result.nii.gz"
    shutil.copyfile(p["nifti"], p["existing"])
    p["user_folder"] = folder / "my_folder"
    p["user_folder"].mkdir()
    (p["user_folder"] / "notes.txt").write_text("keep me\n")
    p["samples_dir"] = folder / "earlier_samples"
    p["samples_dir"].mkdir()
    shutil.copyfile(p["nifti"], p["samples_dir"] / "sample_000_synthetic.nii.gz")
    # issue 14: DICOM folders that are not one regular series
    p["two_series"] = folder / "two_series"
    study = "1.2.826.0.1.3680043.8.498.1"
    write_series(p["two_series"], vol, affine, prefix="T1", description="T1 MPRAGE", study=study)
    write_series(p["two_series"], vol[::-1].copy(), affine, prefix="T2", description="T2 FLAIR", study=study)

    def rotate_middle(ds, k):
        if k == 1:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # a coronal slice in an oblique axial series

    p["mixed_orientation"] = folder / "mixed_orientation"
    write_series(p["mixed_orientation"], vol, affine, edit=rotate_middle)

    def repeat_position(ds, k):
        if k == 2:
            ds.ImagePositionPatient = list(ds_positions[1])
        ds_positions.append(list(ds.ImagePositionPatient))

    ds_positions: list = []
    p["duplicate_positions"] = folder / "duplicate_positions"
    write_series(p["duplicate_positions"], vol, affine, edit=repeat_position)

    def drop_spacing(ds, k):
        del ds.PixelSpacing

    p["no_pixel_spacing"] = folder / "no_pixel_spacing"
    write_series(p["no_pixel_spacing"], vol, affine, edit=drop_spacing)

    def gap_after_second(ds, k):
        if k == 2:  # 1 slice missing: positions 0, 1, 3
            lps = affine.copy()
            lps[:2] *= -1
            ds.ImagePositionPatient = [float(v) for v in lps[:3, 3] + 3 * lps[:3, 2]]

    p["uneven_spacing"] = folder / "uneven_spacing"
    write_series(p["uneven_spacing"], vol, affine, edit=gap_after_second)
    # affines no voxel can be placed with
    p["zero_det"] = folder / "zero_det.nii.gz"
    srow = affine[:3].copy()
    srow[:, 2] = 0  # slices all at one place
    _nifti_with_srow(p["zero_det"], vol, srow)
    p["nan_affine"] = folder / "nan_affine.nii.gz"
    srow = affine[:3].copy()
    srow[0, 0] = np.nan
    _nifti_with_srow(p["nan_affine"], vol, srow)
    save("tiny", vol[20:21, 20:21, 1:2])
    huge = np.zeros((600, 600), dtype=np.float32)
    huge[300, 300] = 1
    save("huge_reference", huge)
    # user files beside or inside outputs
    p["with_json"] = folder / "with_json"
    p["with_json"].mkdir()
    (p["with_json"] / "result.nii.gz.json").write_text('{"note": "my own notes, not a provenance sidecar"}\n')
    p["derived_plus"] = folder / "derived_plus"
    _derived_series(p["derived_plus"], p["series"])
    (p["derived_plus"] / "notes.txt").write_text("keep me\n")
    p["pictures_dir"] = folder / "pictures"
    p["pictures_dir"].mkdir()
    (p["pictures_dir"] / "samples.png").write_bytes(b"\x89PNG\r\n\x1a\n (a figure of the user's)")
    names = {k: str(v) for k, v in p.items()}
    names["nifti_other_spelling"] = str(folder / ".." / folder.name / "." / "colin.nii.gz")
    return names


# ---------------------------------------------------------------------------------------------
# bundles
# ---------------------------------------------------------------------------------------------
def _restoration_bundle(root: Path, name: str, target: str | None = None) -> Path:
    """A copy of ``bundles/<name>``'s configs with freshly initialised weights (errors only: no claim on quality)."""
    from monai.bundle import ConfigParser

    from monai_medgen.bundle import save_model

    dst = root / (target or name)
    shutil.copytree(REPO / "bundles" / name / "configs", dst / "configs")
    parser = ConfigParser()
    parser.read_config(str(dst / "configs" / "inference.yaml"))
    parser["bundle_root"], parser["device"] = str(dst), "cpu"
    save_model(dst / "models" / "model.pt", parser.get_parsed_content("network"))
    return dst


def make_bundles(root: Path) -> dict[str, str]:
    from monai.bundle import ConfigParser

    from monai_medgen.bundle import save_model

    b = {
        "den": _restoration_bundle(root, "cddpm_denoising_2d"),
        "inp": _restoration_bundle(root, "cddpm_inpainting_2d"),
        "sr2d": _restoration_bundle(root, "cddpm_super_resolution_2d"),
        "sr3d": _restoration_bundle(root, "cddpm_super_resolution_3d"),
    }
    vdm = REPO / "bundles" / "vdm_brain_mri_2d"
    b["vdm"] = root / "vdm_brain_mri_2d"
    shutil.copytree(vdm / "configs", b["vdm"] / "configs")
    if (vdm / "models" / "model.pt").is_file():
        shutil.copytree(vdm / "models", b["vdm"] / "models")
    else:  # not trained in this checkout: initial weights (the cases only need the configuration)
        parser = ConfigParser()
        parser.read_config(str(vdm / "configs" / "inference.yaml"))
        parser["device"] = "cpu"
        save_model(
            b["vdm"] / "models" / "model.pt",
            parser.get_parsed_content("network"),
            parser.get_parsed_content("schedule"),
        )
    # a class-conditional VDM (three classes), initial weights
    b["vdm3"] = root / "vdm_three_classes"
    shutil.copytree(vdm / "configs", b["vdm3"] / "configs")
    config = b["vdm3"] / "configs" / "inference.yaml"
    config.write_text(config.read_text().replace("\nnum_classes: null", "\nnum_classes: 3"))
    parser = ConfigParser()
    parser.read_config(str(config))
    parser["device"] = "cpu"
    save_model(
        b["vdm3"] / "models" / "model.pt", parser.get_parsed_content("network"), parser.get_parsed_content("schedule")
    )
    b["untrained"] = root / "untrained"
    shutil.copytree(REPO / "bundles" / "cddpm_denoising_2d" / "configs", b["untrained"] / "configs")
    b["truncated_weights"] = _restoration_bundle(root, "cddpm_denoising_2d", "truncated_weights")
    _cut(b["truncated_weights"] / "models" / "model.pt", 0.5)
    b["wrong_weights"] = root / "wrong_weights"
    shutil.copytree(b["den"] / "configs", b["wrong_weights"] / "configs")
    shutil.copytree(b["sr3d"] / "models", b["wrong_weights"] / "models")  # a 3D network's weights
    return {k: str(v) for k, v in b.items()}


# ---------------------------------------------------------------------------------------------
# running the cases
# ---------------------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, str]:
    files = {}
    for f in sorted(root.rglob("*")):
        if f.is_file():
            files[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
        elif f.is_dir():
            files[str(f.relative_to(root)) + "/"] = ""
    return files


def make_machine_folders(root: Path) -> dict[str, str]:
    """``read_only``: a folder nothing can be written into (a read-only tmpfs when run as root, which ignores
    permissions, else a folder without write permission); ``full``: a 256 KiB tmpfs filled up (root only).  A
    folder that cannot be made here is left out, and its cases are skipped."""
    out = {}
    root.mkdir(parents=True)
    ro, full = root / "read_only", root / "full"
    ro.mkdir()
    full.mkdir()
    root_user = hasattr(os, "geteuid") and os.geteuid() == 0
    mount = shutil.which("mount")

    def mounted(folder: Path, options: str) -> bool:
        return (
            bool(mount)
            and subprocess.run(
                [mount, "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True
            ).returncode
            == 0
        )

    if root_user:
        if mounted(ro, "ro,size=64k"):
            out["read_only"] = str(ro)
    else:
        os.chmod(ro, 0o555)
        out["read_only"] = str(ro)
    if root_user and mounted(full, "size=256k"):
        try:
            with open(full / "filler.bin", "wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
        except OSError:
            pass
        out["full"] = str(full)
    return out


def release(work: Path) -> None:
    """Unmount what :func:`make_machine_folders` mounted (and give a read-only folder back its permissions)."""
    umount = shutil.which("umount")
    for name in ("read_only", "full"):
        folder = work / "machine" / name
        if folder.is_dir() and os.path.ismount(folder) and umount:
            subprocess.run([umount, str(folder)], capture_output=True)
        if folder.is_dir():
            os.chmod(folder, 0o755)


def build(work: Path) -> dict[str, str]:
    """Inputs, bundles and an empty ``out`` folder under ``work``; returns the placeholders of :data:`CASES`.  Call
    :func:`release` when done (it unmounts the read-only and full folders)."""
    names = {**make_inputs(work / "in"), **make_bundles(work / "bundles"), **make_machine_folders(work / "machine")}
    (work / "out").mkdir()
    names["out"] = str(work / "out")
    return names


def missing_placeholders(template: str, names: dict[str, str]) -> list[str]:
    """Placeholders of a case this machine could not provide (e.g. a full disk without root)."""
    import string

    return [f for _, f, _, _ in string.Formatter().parse(template) if f and f not in names]


def argv_for(template: str, names: dict[str, str]) -> list[str]:
    """The command line of a case (restore gets 2 sampling steps on the CPU, as a real run would take long)."""
    argv = [a.format(**names) for a in template.split()]
    if argv[0] == "restore" and "--steps" not in argv:
        argv += FAST if "--device" not in argv else FAST[:2]
    return argv


def _env() -> dict:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }


def run_case(argv: list[str], work: Path, umask: int | None = None) -> tuple[int, str, str, float]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "monai_medgen.cli", *argv],
        cwd=str(work),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=None if umask is None else (lambda: os.umask(umask)),
    )
    return proc.returncode, proc.stderr, proc.stdout, time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# integrity checks that end in a result (not a refusal): series choice, permissions, kills
# ---------------------------------------------------------------------------------------------
def _last_line(stderr: str, stdout: str) -> str:
    lines = [line for line in (stderr + "\n" + stdout).splitlines() if line.strip() and "%|" not in line]
    return lines[-1] if lines else "(nothing)"


def check_series_uid(work: Path, names: dict[str, str]) -> dict:
    """--series-uid picks one series of a folder of two: exactly its slices, its geometry, recorded in the provenance."""
    from monai_medgen import io

    series = io.list_dicom_series(names["two_series"])
    t2 = next(s for s in series if s.description == "T2 FLAIR")
    out = work / "out" / "series_uid" / "t2.nii.gz"
    argv = argv_for(f"restore --bundle {{den}} --input {{two_series}} --series-uid {t2.uid} --output {out}", names)
    rc, stderr, stdout, _ = run_case(argv, work)
    problems = [] if rc == 0 else [f"exit {rc}"]
    if rc == 0:
        import nibabel as nib

        written = nib.load(str(out))
        if written.shape != SHAPE:
            problems.append(f"shape {written.shape} != {SHAPE} (slices of both series merged?)")
        if not np.allclose(written.affine, oblique_affine(), atol=1e-3):
            problems.append("affine differs from the series' geometry")
        if io.read_provenance(out).extra.get("series_uid") != t2.uid:
            problems.append("provenance lacks the series UID")
    result = f"{out.relative_to(work)}: {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]}, series {t2.uid[-8:]} (T2 FLAIR) only"
    return {
        "check": "--series-uid picks one series of a folder of two",
        "argv": argv,
        "rc": rc,
        "seen": _last_line(stderr, stdout),
        "result": result,
        "problems": problems,
    }


def _mode(path: Path) -> str:
    return oct(path.stat().st_mode & 0o777)[2:]


def check_umask(work: Path, names: dict[str, str]) -> dict:
    """Outputs follow the umask (027: files 640, folders 750), not a fixed 600 / 700."""
    folder = work / "out" / "umask"
    folder.mkdir(parents=True)
    file_out, series_out = folder / "o.nii.gz", folder / "derived"
    problems, modes, rc_all, seen = [], [], 0, ""
    for output in (file_out, series_out):
        argv = argv_for(f"restore --bundle {{den}} --input {{series}} --output {output}", names)
        rc, stderr, stdout, _ = run_case(argv, work, umask=0o027)
        rc_all = rc_all or rc
        seen = _last_line(stderr, stdout)
        if rc != 0:
            problems.append(f"exit {rc}: {seen}")
    if not problems:
        expected = {file_out: "640", Path(str(file_out) + ".json"): "640", series_out: "750"}
        expected.update({f: "640" for f in series_out.iterdir()})
        for path, mode in expected.items():
            modes.append(f"{path.relative_to(folder)} {_mode(path)}")
            if _mode(path) != mode:
                problems.append(f"{path.name} has mode {_mode(path)}, expected {mode}")
    result = "umask 027 -> " + ", ".join(
        modes[:3] + ([f"the {len(modes) - 3} files in it (slices, sidecar) 640"] if len(modes) > 3 else [])
    )
    return {
        "check": "outputs honour the umask (027)",
        "argv": argv,
        "rc": rc_all,
        "seen": seen,
        "result": result,
        "problems": problems,
    }


_KILLED_WRITER = """
import os, sys, time, torch
from monai_medgen import io
real = os.replace
def stall(src, dst):  # the temporary file is on disk: wait here to be killed
    print("WRITING", flush=True)
    time.sleep(600)
os.replace = stall
io.write_image(torch.rand(1, 8, 8, 2), sys.argv[1])
"""


def check_kill_cleanup(work: Path, names: dict[str, str]) -> dict:
    """A writer killed (SIGKILL) with its temporary file on disk leaves it; the next run writing into that folder
    removes it, and nothing else."""
    import signal

    from monai_medgen import io

    folder = work / "out" / "killed"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("a file of the user's\n")
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(folder / "first.nii.gz")],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    orphans = sorted(p.name for p in folder.iterdir() if io.is_temporary_name(p.name))
    problems = [] if line.startswith("WRITING") and orphans else ["the killed writer left no temporary file to clean"]
    argv = argv_for(f"restore --bundle {{den}} --input {{nifti}} --output {folder / 'second.nii.gz'}", names)
    rc, stderr, stdout, _ = run_case(argv, work)
    left = sorted(p.name for p in folder.iterdir())
    if rc != 0:
        problems.append(f"exit {rc}")
    if any(io.is_temporary_name(n) for n in left):
        problems.append(f"temporary files left: {left}")
    if "notes.txt" not in left or "second.nii.gz" not in left:
        problems.append(f"folder holds {left}")
    result = f"{len(orphans)} orphan(s) of the killed run removed; folder now: {', '.join(left)}"
    return {
        "check": "temporary files of a killed (SIGKILL) run removed by the next run",
        "argv": argv,
        "rc": rc,
        "seen": _last_line(stderr, stdout),
        "result": result,
        "problems": problems,
    }


def check_sigterm(work: Path, names: dict[str, str]) -> dict:
    """SIGTERM during sampling: one line, exit 143, nothing written and no temporary file left."""
    import signal

    folder = work / "out" / "terminated"
    folder.mkdir(parents=True)
    argv = argv_for(f"restore --bundle {{den}} --input {{nifti}} --output {folder / 'o.nii.gz'} --steps 5000", names)
    proc = subprocess.Popen(
        [sys.executable, "-m", "monai_medgen.cli", *argv],
        cwd=str(work),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen_start = ""
    while proc.poll() is None:
        line = proc.stderr.readline()
        if line.startswith("monai-medgen restore:"):
            seen_start = line
            break
    time.sleep(2.0)  # into the sampling loop
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    left = sorted(p.name for p in folder.iterdir())
    problems = []
    if proc.returncode != 143 or "monai-medgen restore: terminated" not in stderr:
        problems.append(f"exit {proc.returncode}: {stderr[-300:]}")
    if left:
        problems.append(f"left {left}")
    if not seen_start:
        problems.append("never started")
    return {
        "check": "SIGTERM while sampling",
        "argv": argv,
        "rc": proc.returncode,
        "seen": _last_line(stderr, stdout),
        "result": f"output folder: {', '.join(left) or 'empty'}",
        "problems": problems,
    }


INTEGRITY_CHECKS = [check_series_uid, check_umask, check_kill_cleanup, check_sigterm]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=None, help="work folder (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--only", default=None, help="run the cases whose name contains this text")
    args = parser.parse_args()
    if not os.path.isfile(COLIN):
        sys.exit(f"{COLIN} not found: apt-get install mricron-data")
    work = Path(args.work or tempfile.mkdtemp(prefix="monai_medgen_bad_inputs_")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        names = build(work)
        return _run_all(work, names, args)
    finally:
        release(work)
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def case_problems(argv: list[str], rc: int, stderr: str, fragment: str, changed: list[str]) -> tuple[str, list[str]]:
    """The message the user saw of a bad-input case (its last error line, else its last line of stderr) and what is
    wrong with the run: an exit status other than 2, not exactly one ``monai-medgen <command>: error: ...`` line, a
    traceback, a message without ``fragment``, files written or changed (``changed``)."""
    errors = [line for line in stderr.splitlines() if ": error: " in line]
    message = errors[-1] if errors else (stderr.strip().splitlines() or ["(nothing)"])[-1]
    problems = []
    if rc != 2:
        problems.append(f"exit {rc}")
    if len(errors) != 1 or not errors[0].startswith(f"monai-medgen {argv[0]}: error: "):
        problems.append(f"{len(errors)} error lines")
    if "Traceback" in stderr:
        problems.append("traceback")
    if fragment not in message:
        problems.append(f"message lacks {fragment!r}")
    if changed:
        problems.append(f"changed {changed}")
    return message, problems


def _run_integrity_checks(work: Path, names: dict[str, str], args, failures: list) -> list[dict]:
    """Run the integrity checks (those ``--only`` selects), each reported on stderr; the failed ones are appended
    to ``failures``.  Returns the checks' rows."""
    checks = []
    for check in INTEGRITY_CHECKS:
        if args.only and args.only not in check.__name__:
            continue
        row = check(work, names)
        checks.append(row)
        if row["problems"]:
            failures.append((row["check"], row["problems"], ""))
        print(
            f"{row['check']}: exit {row['rc']}{' FAILED ' + '; '.join(row['problems']) if row['problems'] else ''}",
            file=sys.stderr,
            flush=True,
        )
    return checks


def _run_all(work: Path, names: dict[str, str], args) -> int:
    rows, failures, skipped = [], [], []
    for case, template, fragment in CASES:
        if args.only and args.only not in case:
            continue
        if missing_placeholders(template, names):
            skipped.append(f"{case} (needs {', '.join(missing_placeholders(template, names))}: root and tmpfs)")
            continue
        argv = argv_for(template, names)
        before = snapshot(work)
        rc, stderr, stdout, seconds = run_case(argv, work)
        after = snapshot(work)
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        message, problems = case_problems(argv, rc, stderr, fragment, changed)
        if problems:
            failures.append((case, problems, stderr[-3000:]))
        shown = " ".join(["monai-medgen", *argv]).replace(str(work) + "/", "")
        rows.append(
            (
                case,
                shown,
                rc,
                message.replace(str(work) + "/", "").replace("|", "\\|"),
                ", ".join(changed) if changed else "none",
                seconds,
            )
        )
        print(
            f"{case}: exit {rc} ({seconds:.1f} s){' FAILED ' + '; '.join(problems) if problems else ''}",
            file=sys.stderr,
            flush=True,
        )
    print("| case | command | exit code | message the user saw | files written or changed |")
    print("|---|---|---|---|---|")
    for case, shown, rc, message, changed, _ in rows:
        print(f"| {case} | `{shown}` | {rc} | {message} | {changed} |")
    print(
        f"\n{len(rows) - len(failures)} of {len(rows)} cases: exit 2, one error line naming the argument, nothing "
        f"written (paths relative to the work folder {work})."
    )
    if skipped:
        print(f"Skipped on this machine: {'; '.join(skipped)}.")
    checks = _run_integrity_checks(work, names, args, failures)
    if checks:
        print("\n| integrity check | command | exit code | what the user saw | result |")
        print("|---|---|---|---|---|")
        for row in checks:
            shown = " ".join(["monai-medgen", *row["argv"]]).replace(str(work) + "/", "")
            seen = row["seen"].replace(str(work) + "/", "").replace("|", "\\|")
            result = row["result"] + (f" FAILED: {'; '.join(row['problems'])}" if row["problems"] else "")
            print(f"| {row['check']} | `{shown}` | {row['rc']} | {seen} | {result} |")
    for case, problems, stderr in failures:
        print(f"\nFAILED {case}: {'; '.join(problems)}\n{stderr}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
