"""Every bad input of issue 6 (item 4) through the real ``monai-medgen`` command line, one process per case.

    PYTHONPATH=. python scripts/bad_inputs.py [--work DIR] [--keep]

Builds real inputs from the Colin27 brain (``/usr/share/mricron/templates/ch2bet.nii.gz``: a 40x48x3 block with
an oblique affine as NIfTI, NRRD, MHA and a DICOM series; damaged copies of them), copies of the bundles (the
restoration bundles with freshly initialised weights, the VDM bundle with its trained weights, a three-class VDM,
a bundle without weights, one with truncated weights), runs ``python -m monai_medgen.cli ...`` (the entry point of
the ``monai-medgen`` console script) for each case, and prints a markdown table: case | command | exit code |
message the user saw | files written or changed.  A case fails (exit status 1 at the end) unless the command
exits with 2, prints exactly one ``monai-medgen <command>: error: ...`` line and no traceback, names what the
case expects, and leaves every file in the work folder as it was.
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
    ("unreadable file (not an image)", "restore --bundle {den} --input {junk} --output {out}/o.nii.gz",
     "--input: could not read"),
    ("unreadable input folder (no DICOM files)", "restore --bundle {den} --input {empty_dir} --output {out}/o.nii.gz",
     "--input"),
    ("truncated NIfTI", "restore --bundle {den} --input {truncated_nii} --output {out}/o.nii.gz", "--input: could not read"),
    ("truncated NIfTI (gzip)", "restore --bundle {den} --input {truncated_niigz} --output {out}/o.nii.gz",
     "--input: could not read"),
    ("truncated NRRD", "restore --bundle {den} --input {truncated_nrrd} --output {out}/o.nrrd", "--input: could not read"),
    ("truncated MHA", "restore --bundle {den} --input {truncated_mha} --output {out}/o.mha", "--input: could not read"),
    ("truncated slice in a DICOM series", "restore --bundle {den} --input {truncated_series} --output {out}/derived",
     "--input"),
    ("missing input file", "restore --bundle {den} --input {out}/nothing.nii.gz --output {out}/o.nii.gz",
     "no such file"),
    ("2D image for a 3D bundle", "restore --bundle {sr3d} --input {slice2d} --output {out}/o.nii.gz --factor 1,1,4",
     "must be a 3D volume"),
    ("two channels for a one-channel bundle", "restore --bundle {den} --input {two_channels} --output {out}/o.nii.gz",
     "channel"),
    ("4D series (time) for a one-channel bundle", "restore --bundle {den} --input {time_series} --output {out}/o.nii.gz",
     "channel"),
    ("NaN voxels", "restore --bundle {den} --input {nan} --output {out}/o.nii.gz", "NaN or infinite"),
    ("infinite voxels", "restore --bundle {den} --input {inf} --output {out}/o.nii.gz", "NaN or infinite"),
    ("NaN voxels in the mask", "restore --bundle {inp} --input {nifti} --mask {nan_mask} --output {out}/o.nii.gz",
     "--mask"),
    ("empty mask", "restore --bundle {inp} --input {nifti} --mask {empty_mask} --output {out}/o.nii.gz", "is empty"),
    ("full mask", "restore --bundle {inp} --input {nifti} --mask {full_mask} --output {out}/o.nii.gz", "is full"),
    ("mask of another shape", "restore --bundle {inp} --input {nifti} --mask {small_mask} --output {out}/o.nii.gz",
     "must have the image's shape"),
    ("mask of another geometry (shifted 5 mm)",
     "restore --bundle {inp} --input {nifti} --mask {shifted_mask} --output {out}/o.nii.gz", "voxel grid"),
    ("inpainting bundle without a mask", "restore --bundle {inp} --input {nifti} --output {out}/o.nii.gz",
     "--mask is required"),
    ("mask for a denoising bundle", "restore --bundle {den} --input {nifti} --mask {mask} --output {out}/o.nii.gz",
     "--mask is for inpainting"),
    ("super-resolution factor below 1", "restore --bundle {sr2d} --input {nifti} --output {out}/o.nii.gz --factor 0.5",
     "--factor"),
    ("factor too large for the volume", "restore --bundle {sr2d} --input {nifti} --output {out}/o.nii.gz --factor 64",
     "--factor 64"),
    ("through-plane factor for a 2D model",
     "restore --bundle {sr2d} --input {nifti} --output {out}/o.nii.gz --factor 1,1,4", "2D model"),
    ("two factors for a 3D model", "restore --bundle {sr3d} --input {nifti} --output {out}/o.nii.gz --factor 1,4",
     "3 numbers"),
    ("factor with a DICOM series output",
     "restore --bundle {sr2d} --input {series} --output {out}/derived --factor 2", "keeps the input series' grid"),
    ("factor for a denoising bundle", "restore --bundle {den} --input {nifti} --output {out}/o.nii.gz --factor 2",
     "super-resolution bundles only"),
    ("unknown class label (unconditional model)",
     "generate --bundle {vdm} --class 3 --num 1 --output-dir {out}/gen", "model is unconditional"),
    ("unknown class label (3-class model)", "generate --bundle {vdm3} --class 7 --num 1 --output-dir {out}/gen",
     "not a class of this model"),
    ("negative class label", "generate --bundle {vdm3} --class -1 --num 1 --output-dir {out}/gen",
     "not a class of this model"),
    ("guidance without a class", "generate --bundle {vdm3} --guidance 2 --num 1 --output-dir {out}/gen", "--class"),
    ("bundle folder without weights", "restore --bundle {untrained} --input {nifti} --output {out}/o.nii.gz",
     "has no weights at"),
    ("bundle with truncated weights", "restore --bundle {truncated_weights} --input {nifti} --output {out}/o.nii.gz",
     "truncated or corrupted"),
    ("bundle with weights of another network", "restore --bundle {wrong_weights} --input {nifti} --output {out}/o.nii.gz",
     "do not fit the network"),
    ("folder that is not a bundle", "restore --bundle {out} --input {nifti} --output {out}/o.nii.gz",
     "has no configs/inference.yaml"),
    ("restoration bundle for score", "score --bundle {den} --input {nifti}", "is not a VDM bundle"),
    ("unreadable file for score", "score --bundle {vdm} --input {nifti} {junk}", "--input: could not read"),
    ("NaN voxels for score", "score --bundle {vdm} --input {nan}", "NaN or infinite"),
    ("score report over an input", "score --bundle {vdm} --input {nifti} --json {nifti}", "refusing to overwrite an input"),
    ("score report over another file", "score --bundle {vdm} --input {nifti} --json {existing}", "already exists"),
    ("output equal to input", "restore --bundle {den} --input {nifti} --output {nifti}",
     "refusing to overwrite an input"),
    ("output equal to input (other spelling)", "restore --bundle {den} --input {nifti} --output {nifti_other_spelling}",
     "refusing to overwrite an input"),
    ("output equal to the mask", "restore --bundle {inp} --input {nifti} --mask {mask} --output {mask}",
     "refusing to overwrite an input"),
    ("output inside the input DICOM series", "restore --bundle {den} --input {series} --output {series}/derived",
     "lies inside the --input DICOM series"),
    ("existing output", "restore --bundle {den} --input {nifti} --output {existing}", "already exists"),
    ("existing output folder of other files (DICOM)",
     "restore --bundle {den} --input {series} --output {user_folder} --overwrite", "refusing to replace it"),
    ("existing samples in --output-dir", "generate --bundle {vdm} --num 1 --output-dir {samples_dir}", "already holds"),
    ("--overwrite over a file not marked synthetic",
     "generate --bundle {vdm} --num 1 --output-dir {samples_dir} --overwrite", "is not a synthetic image"),
    ("--output-dir that is a file", "generate --bundle {vdm} --num 1 --output-dir {nifti}", "is a file"),
    ("uncertainty map without samples", "restore --bundle {den} --input {nifti} --output {out}/o.nii.gz --uncertainty "
     "{out}/u.nii.gz", "--samples"),
    ("output with an unknown suffix", "restore --bundle {den} --input {nifti} --output {out}/o.png", "must end with"),
    ("CUDA device on a machine without one", "restore --bundle {den} --input {nifti} --output {out}/o.nii.gz "
     "--device cuda", "CUDA is not available"),
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


def write_series(folder: Path, volume: np.ndarray, affine: np.ndarray) -> None:
    """An MR DICOM series (uint16, one file per slice) with the volume's geometry."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
    from pydicom.valuerep import format_number_as_ds

    folder.mkdir(parents=True)
    lps = affine.copy()
    lps[:2] *= -1
    col_spacing, row_spacing, thickness = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir, col_dir = lps[:3, 0] / col_spacing, lps[:3, 1] / row_spacing
    study, series = generate_uid(), generate_uid()
    stored = np.rint(volume / volume.max() * 4000).astype(np.uint16)
    for k in range(stored.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = uid = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality, ds.PatientID, ds.PatientName = "MR", "COLIN27", "Colin^27"
        ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = "T1", 2, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[0]
        ds.PixelSpacing = [format_number_as_ds(float(row_spacing)), format_number_as_ds(float(col_spacing))]
        ds.SliceThickness = format_number_as_ds(float(thickness))
        ds.ImageOrientationPatient = [format_number_as_ds(float(v)) for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [format_number_as_ds(float(v)) for v in lps[:3, 3] + k * lps[:3, 2]]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        ds.save_as(str(folder / f"IM_{k + 1:04d}.dcm"), enforce_file_format=True)


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
        save_model(b["vdm"] / "models" / "model.pt", parser.get_parsed_content("network"),
                   parser.get_parsed_content("schedule"))
    # a class-conditional VDM (three classes), initial weights
    b["vdm3"] = root / "vdm_three_classes"
    shutil.copytree(vdm / "configs", b["vdm3"] / "configs")
    config = b["vdm3"] / "configs" / "inference.yaml"
    config.write_text(config.read_text().replace("\nnum_classes: null", "\nnum_classes: 3"))
    parser = ConfigParser()
    parser.read_config(str(config))
    parser["device"] = "cpu"
    save_model(b["vdm3"] / "models" / "model.pt", parser.get_parsed_content("network"),
               parser.get_parsed_content("schedule"))
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


def build(work: Path) -> dict[str, str]:
    """Inputs, bundles and an empty ``out`` folder under ``work``; returns the placeholders of :data:`CASES`."""
    names = {**make_inputs(work / "in"), **make_bundles(work / "bundles")}
    (work / "out").mkdir()
    names["out"] = str(work / "out")
    return names


def argv_for(template: str, names: dict[str, str]) -> list[str]:
    """The command line of a case (restore gets 2 sampling steps on the CPU, as a real run would take long)."""
    argv = [a.format(**names) for a in template.split()]
    if argv[0] == "restore" and "--steps" not in argv:
        argv += FAST if "--device" not in argv else FAST[:2]
    return argv


def run_case(argv: list[str], work: Path) -> tuple[int, str, str, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", "CUDA_VISIBLE_DEVICES": ""}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "monai_medgen.cli", *argv], cwd=str(work), env=env,
                          capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stderr, proc.stdout, time.perf_counter() - start


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
    names = build(work)
    rows, failures = [], []
    for case, template, fragment in CASES:
        if args.only and args.only not in case:
            continue
        argv = argv_for(template, names)
        before = snapshot(work)
        rc, stderr, stdout, seconds = run_case(argv, work)
        after = snapshot(work)
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
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
        if problems:
            failures.append((case, problems, stderr[-3000:]))
        shown = " ".join(["monai-medgen", *argv]).replace(str(work) + "/", "")
        rows.append((case, shown, rc, message.replace(str(work) + "/", "").replace("|", "\\|"),
                     ", ".join(changed) if changed else "none", seconds))
        print(f"{case}: exit {rc} ({seconds:.1f} s){' FAILED ' + '; '.join(problems) if problems else ''}",
              file=sys.stderr, flush=True)
    print("| case | command | exit code | message the user saw | files written or changed |")
    print("|---|---|---|---|---|")
    for case, shown, rc, message, changed, _ in rows:
        print(f"| {case} | `{shown}` | {rc} | {message} | {changed} |")
    print(f"\n{len(rows) - len(failures)} of {len(rows)} cases: exit 2, one error line naming the argument, nothing "
          f"written (paths relative to the work folder {work}).")
    for case, problems, stderr in failures:
        print(f"\nFAILED {case}: {'; '.join(problems)}\n{stderr}", file=sys.stderr)
    if not args.keep and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
