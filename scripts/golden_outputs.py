"""Fixed-seed outputs of every bundle through the command line, hashed: run it before and after a refactoring (on
the same weights) and compare the two tables; an identical hash means the same array to the bit.

    python scripts/golden_outputs.py --bundles-dir bundles --output-dir /tmp/golden_before > before.txt
    # ... change the code ...
    python scripts/golden_outputs.py --bundles-dir bundles --output-dir /tmp/golden_after > after.txt
    diff before.txt after.txt

Inputs are crops of the MNI152 template (nilearn); restoration (2D SR with and without samples, denoising,
inpainting, 3D thick-slice SR), generation (2D and 3D VDM with and without a reference, class-conditional, latent)
and the OOD score.  Each row: file, shape, dtype, SHA-256 of the voxels (16 hex), the affine.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from monai_medgen import cli
from monai_medgen.data import load_mni152


def write_inputs(out: Path) -> None:
    """A 2D slice with an inpainting mask, a thick-slice volume and a 2 mm reference volume, from MNI152."""
    volume, affine = load_mni152()[:2]
    volume = np.asarray(volume, np.float32)
    nib.save(nib.Nifti1Image(volume[60:124:2, 70:134:2, 88:96:2], affine), out / "in3.nii.gz")
    nib.save(
        nib.Nifti1Image(volume[20:172:2, 20:210:2, 20:160:2], affine @ np.diag([2, 2, 2, 1.0])), out / "ref3.nii.gz"
    )
    slice2d = volume[40:136, 50:146, 100]
    nib.save(nib.Nifti1Image(slice2d[..., None], affine), out / "in2.nii.gz")
    mask = np.zeros_like(slice2d)
    mask[40:56, 40:56] = 1
    nib.save(nib.Nifti1Image(mask[..., None], affine), out / "mask2.nii.gz")


def commands(bundles: Path, out: Path) -> dict[str, list[str]]:
    def restore(bundle, *extra):
        return ["restore", "--bundle", str(bundles / bundle), "--seed", "3", "--device", "cpu", *extra]

    def gen(bundle, folder, *extra):
        where = ["--bundle", str(bundles / bundle), "--output-dir", str(out / folder)]
        return ["generate", *where, "--seed", "5", "--device", "cpu", *extra]

    in2, in3, ref3 = str(out / "in2.nii.gz"), str(out / "in3.nii.gz"), str(out / "ref3.nii.gz")
    return {
        "sr2d": restore("cddpm_super_resolution_2d", "--input", in2, "--output", str(out / "sr2d.nii.gz")),
        "sr2d_samples": restore(
            "cddpm_super_resolution_2d",
            *("--input", in2, "--output", str(out / "sr2d_s2.nii.gz"), "--samples", "2"),
            *("--uncertainty", str(out / "sr2d_u.nii.gz")),
        ),
        "denoise": restore("cddpm_denoising_2d", "--input", in2, "--output", str(out / "dn2d.nii.gz")),
        "inpaint": restore(
            "cddpm_inpainting_2d",
            "--input",
            in2,
            "--mask",
            str(out / "mask2.nii.gz"),
            "--output",
            str(out / "ip2d.nii.gz"),
        ),
        "sr3d": restore(
            "cddpm_super_resolution_3d", "--input", in3, "--output", str(out / "sr3d.nii.gz"), "--factor", "1,1,2"
        ),
        "vdm2d": gen("vdm_brain_mri_2d", "gen_vdm2d", "--num", "2", "--steps", "8"),
        "vdm2d_ref2d": gen("vdm_brain_mri_2d", "gen_ref", "--num", "1", "--steps", "8", "--reference", in2),
        "vdm2d_ref3d": gen("vdm_brain_mri_2d", "gen_ref3", "--num", "1", "--steps", "8", "--reference", ref3),
        "vdm3d": gen("vdm_brain_mri_3d", "gen_vdm3d", "--num", "1", "--steps", "4"),
        "vdm3d_ref": gen("vdm_brain_mri_3d", "gen_vdm3d_ref", "--num", "1", "--steps", "4", "--reference", ref3),
        "class_conditional": gen(
            "cddpm_class_conditional_2d", "gen_cc", "--num", "2", "--steps", "6", "--class", "1", "--guidance", "2"
        ),
        "latent": gen("vdm_latent_brain_mri_3d", "gen_latent", "--num", "1", "--steps", "3"),
        "latent_ref": gen(
            "vdm_latent_brain_mri_3d", "gen_latent_ref", "--num", "1", "--steps", "3", "--reference", ref3
        ),
        "score": ["score", "--bundle", str(bundles / "vdm_brain_mri_2d"), "--input", in2, "--seed", "1"],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles-dir", default="bundles", help="folder of the bundles (default: bundles)")
    parser.add_argument("--output-dir", required=True, help="scratch folder (replaced)")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    write_inputs(out)
    for name, argv_ in commands(Path(args.bundles_dir), out).items():
        try:
            rc = cli.main(argv_)
        except SystemExit as e:
            rc = f"exit {e.code}"
        except Exception as e:  # noqa: BLE001 - a crash is a result here
            rc = f"crash {type(e).__name__}: {e}"
        print(f"{name}: rc {rc}", flush=True)
    for path in sorted(out.rglob("*.nii.gz")):
        img = nib.load(path)
        data = np.asarray(img.dataobj)
        digest = hashlib.sha256(data.tobytes()).hexdigest()[:16]
        print(path.relative_to(out), data.shape, data.dtype, digest, np.round(img.affine, 4).tolist())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
