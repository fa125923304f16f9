"""The ``monai-medgen`` command line on real files made from the Colin27 brain: restore (NIfTI, NRRD, MHA, a DICOM
series), generate and score, and the one-line errors (exit status 2, no traceback) a user sees for bad input.

The restoration bundles are copies of ``bundles/cddpm_*_2d`` with untrained weights (shape, geometry, provenance
and error handling only, no claim about quality); the VDM bundle is a copy of ``bundles/vdm_brain_mri_2d`` with
its trained weights.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_medgen import cli, io

COLIN = "/usr/share/mricron/templates/ch2bet.nii.gz"
REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    not os.path.isfile(COLIN), reason="Colin27 template (mricron-data: ch2bet.nii.gz) not installed"
)
FAST = ["--steps", "2", "--device", "cpu", "--adapt-steps", "0"]


# ---------------------------------------------------------------------------------------------
# fixtures: tiny bundles and real files
# ---------------------------------------------------------------------------------------------
def _restoration_bundle(root: Path, name: str) -> Path:
    """A copy of ``bundles/<name>``'s configs with freshly initialised weights in models/model.pt."""
    from monai.bundle import ConfigParser

    from monai_medgen.bundle import save_model

    dst = root / name
    shutil.copytree(REPO / "bundles" / name / "configs", dst / "configs")
    parser = ConfigParser()
    parser.read_config(str(dst / "configs" / "inference.yaml"))
    parser["bundle_root"], parser["device"] = str(dst), "cpu"
    save_model(dst / "models" / "model.pt", parser.get_parsed_content("network"))
    return dst


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    out = {name: _restoration_bundle(root, name) for name in ("cddpm_denoising_2d", "cddpm_inpainting_2d")}
    vdm = REPO / "bundles" / "vdm_brain_mri_2d"
    if (vdm / "models" / "model.pt").is_file():
        shutil.copytree(vdm / "configs", root / "vdm_brain_mri_2d" / "configs")
        shutil.copytree(vdm / "models", root / "vdm_brain_mri_2d" / "models")
        sr = REPO / "bundles" / "cddpm_super_resolution_2d"  # the second stage of its cascaded sampler, beside it
        for part in ("configs", "models"):
            shutil.copytree(sr / part, root / sr.name / part)
        out["vdm"] = root / "vdm_brain_mri_2d"
    no_weights = root / "untrained"
    shutil.copytree(REPO / "bundles" / "cddpm_denoising_2d" / "configs", no_weights / "configs")
    out["untrained"] = no_weights
    return out


def _vdm(bundles) -> Path:
    if "vdm" not in bundles:
        pytest.skip("bundles/vdm_brain_mri_2d has no trained models/model.pt")
    return bundles["vdm"]


def _oblique_affine(start) -> np.ndarray:
    """Colin27's affine for a crop starting at voxel ``start``, rotated by 10 degrees about z (oblique)."""
    return BAD_INPUTS.oblique_affine(start)


@pytest.fixture(scope="module")
def block():
    """A 40x48x3 block of Colin27 through the brain (float32, scanner units) and its oblique affine."""
    start = (70, 90, 80)
    vol = np.asarray(nib.load(COLIN).dataobj, dtype=np.float32)
    vol = vol[start[0] : start[0] + 40, start[1] : start[1] + 48, start[2] : start[2] + 3]
    assert vol.max() > 0
    return np.ascontiguousarray(vol), _oblique_affine(start)


@pytest.fixture(scope="module")
def files(tmp_path_factory, block):
    """The block as NIfTI, NRRD and MHA (same world geometry), a 2D slice, an inpainting mask and bad files."""
    vol, affine = block
    folder = tmp_path_factory.mktemp("inputs")
    paths = {"nifti": folder / "colin.nii.gz"}
    nib.save(nib.Nifti1Image(vol, affine), str(paths["nifti"]))
    for ext in ("nrrd", "mha"):
        paths[ext] = folder / f"colin.{ext}"
        BAD_INPUTS._write_sitk(vol, affine, paths[ext])
    paths["slice2d"] = folder / "colin_slice.nii.gz"
    nib.save(nib.Nifti1Image(vol[:, :, 1], affine), str(paths["slice2d"]))
    mask = np.zeros(vol.shape, dtype=np.uint8)
    mask[12:28, 16:32, :] = 1
    paths["mask"] = folder / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask, affine), str(paths["mask"]))
    paths["empty_mask"] = folder / "empty_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros_like(mask), affine), str(paths["empty_mask"]))
    paths["small_mask"] = folder / "small_mask.nii.gz"
    nib.save(nib.Nifti1Image(mask[:32, :32], affine), str(paths["small_mask"]))
    nan = vol.copy()
    nan[20, 20, 1] = np.nan
    paths["nan"] = folder / "nan.nii.gz"
    nib.save(nib.Nifti1Image(nan, affine), str(paths["nan"]))
    paths["truncated"] = folder / "truncated.nii"
    nib.save(nib.Nifti1Image(vol, affine), str(paths["truncated"]))
    data = paths["truncated"].read_bytes()
    paths["truncated"].write_bytes(data[: len(data) // 2])
    paths["junk"] = folder / "junk.nii.gz"
    paths["junk"].write_bytes(b"not an image at all")
    return {k: str(v) for k, v in paths.items()}


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "monai_medgen.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


# ---------------------------------------------------------------------------------------------
# restore
# ---------------------------------------------------------------------------------------------
def test_restore_nifti_keeps_geometry_and_records_provenance(bundles, files, tmp_path, block):
    before = Path(files["nifti"]).read_bytes()
    out = tmp_path / "restored.nii.gz"
    bundle = bundles["cddpm_denoising_2d"]
    rc = cli.main(
        [
            "restore",
            "--bundle",
            str(bundle),
            "--input",
            files["nifti"],
            "--output",
            str(out),
            "--seed",
            "3",
            "--sampler",
            "ddim",
            *FAST,
            "--adapt-steps",  # test-time adaptation (the bundle's default is longer), recorded in the provenance
            "1",
        ]
    )
    assert rc == 0
    img, ref = nib.load(str(out)), nib.load(files["nifti"])
    assert img.shape == ref.shape == block[0].shape
    np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
    assert np.isfinite(img.get_fdata()).all()
    assert io.is_synthetic(out) and not io.is_synthetic(files["nifti"])
    prov = io.read_provenance(out)
    assert prov.model == "cddpm_denoising_2d" and prov.task == "denoise" and prov.synthetic
    assert prov.sampler == "ddim" and prov.steps == 2 and prov.seed == 3 and prov.extra["adapt_steps"] == 1
    meta = json.loads((REPO / "bundles" / "cddpm_denoising_2d" / "configs" / "metadata.json").read_text())
    assert prov.bundle_version == meta["version"]
    assert len(prov.input_checksum) == 64 and int(prov.input_checksum, 16) >= 0
    assert prov.input_checksum == io.sha256_of(files["nifti"])
    assert Path(files["nifti"]).read_bytes() == before
    # an existing output is kept unless --overwrite
    assert cli.main(["restore", "--bundle", str(bundle), "--input", files["nifti"], "--output", str(out), *FAST]) == 2
    assert (
        cli.main(
            ["restore", "--bundle", str(bundle), "--input", files["nifti"], "--output", str(out), "--overwrite", *FAST]
        )
        == 0
    )


@pytest.mark.parametrize("fmt", ["nrrd", "mha"])
def test_restore_nrrd_mha_keep_origin_spacing_direction(bundles, files, tmp_path, fmt):
    import SimpleITK as sitk

    out = tmp_path / f"restored.{fmt}"
    rc = cli.main(
        ["restore", "--bundle", str(bundles["cddpm_denoising_2d"]), "--input", files[fmt], "--output", str(out), *FAST]
    )
    assert rc == 0
    a, b = sitk.ReadImage(files[fmt]), sitk.ReadImage(str(out))
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
    assert io.is_synthetic(out) and io.read_provenance(out).model == "cddpm_denoising_2d"


def test_restore_into_folder_uses_input_format(bundles, files, tmp_path):
    rc = cli.main(
        [
            "restore",
            "--bundle",
            str(bundles["cddpm_denoising_2d"]),
            "--input",
            files["mha"],
            "--output",
            str(tmp_path),
            *FAST,
        ]
    )
    assert rc == 0
    out = tmp_path / "colin_denoise_synthetic.mha"
    assert out.is_file() and io.is_synthetic(out)


def test_restore_dicom_series_to_derived_series(bundles, block, tmp_path):
    import pydicom

    vol, affine = block
    src = tmp_path / "series"
    BAD_INPUTS.write_series(src, vol, affine)
    before = io.sha256_of(src)
    out = tmp_path / "derived"
    rc = cli.main(
        ["restore", "--bundle", str(bundles["cddpm_denoising_2d"]), "--input", str(src), "--output", str(out), *FAST]
    )
    assert rc == 0
    assert io.sha256_of(src) == before
    given, back = io.read_image(src), io.read_image(out)
    assert tuple(back.shape) == tuple(given.shape) == (1, *vol.shape)
    np.testing.assert_allclose(back.affine.numpy(), given.affine.numpy(), atol=1e-4)
    np.testing.assert_allclose(given.affine.numpy(), affine, atol=1e-3)  # the series has the block's geometry
    old = [pydicom.dcmread(str(f)) for f in sorted(src.glob("*.dcm"))]
    new = [pydicom.dcmread(str(f)) for f in sorted(out.glob("*.dcm"))]
    assert len(new) == len(old) == vol.shape[2]
    assert len({d.SeriesInstanceUID for d in new}) == 1
    assert new[0].SeriesInstanceUID != old[0].SeriesInstanceUID
    assert {d.SOPInstanceUID for d in new}.isdisjoint(d.SOPInstanceUID for d in old)
    for d in new:
        assert "DERIVED" in list(d.ImageType) and "SECONDARY" in list(d.ImageType)
        assert "synthetic" in d.DerivationDescription.lower() and "cddpm_denoising_2d" in d.DerivationDescription
        assert d.StudyInstanceUID == old[0].StudyInstanceUID

    # origin, spacing and direction as stored in the headers: every slice where an input slice was
    def geometry(d):
        return (
            tuple(float(v) for v in d.ImagePositionPatient),
            tuple(float(v) for v in d.ImageOrientationPatient),
            tuple(float(v) for v in d.PixelSpacing),
            float(d.SliceThickness),
        )

    assert sorted(map(geometry, new)) == sorted(map(geometry, old))
    assert {d.SourceImageSequence[0].ReferencedSOPInstanceUID for d in new} == {d.SOPInstanceUID for d in old}
    assert io.is_synthetic(out) and io.read_provenance(out).input_checksum == before
    prov = io.read_provenance(out)
    assert prov.model == "cddpm_denoising_2d" and prov.task == "denoise" and prov.steps == 2 and prov.synthetic
    # the same series to NIfTI keeps the geometry too
    nii = tmp_path / "restored.nii.gz"
    assert (
        cli.main(
            [
                "restore",
                "--bundle",
                str(bundles["cddpm_denoising_2d"]),
                "--input",
                str(src),
                "--output",
                str(nii),
                *FAST,
            ]
        )
        == 0
    )
    np.testing.assert_allclose(io.read_image(nii).affine.numpy(), given.affine.numpy(), atol=1e-4)
    assert io.read_provenance(nii).input_checksum == before
    # a super-resolution factor would change the grid: no derived series for that
    sr = cli.main(
        [
            "restore",
            "--bundle",
            str(bundles["cddpm_denoising_2d"]),
            "--input",
            str(src),
            "--output",
            str(tmp_path / "other"),
            "--factor",
            "2",
            *FAST,
        ]
    )
    assert sr == 2 and not (tmp_path / "other").exists()
    # an existing derived series is replaced only with --overwrite; a folder of other files never
    again = [
        "restore",
        "--bundle",
        str(bundles["cddpm_denoising_2d"]),
        "--input",
        str(src),
        "--output",
        str(out),
        *FAST,
    ]
    assert cli.main(again) == 2
    assert cli.main([*again, "--overwrite"]) == 0 and io.is_synthetic(out)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    keep = [
        "restore",
        "--bundle",
        str(bundles["cddpm_denoising_2d"]),
        "--input",
        str(src),
        "--output",
        str(tmp_path / "mine"),
        "--overwrite",
        *FAST,
    ]
    assert cli.main(keep) == 2 and (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_restore_3d_super_resolution_per_axis_factor(tmp_path_factory, tmp_path):
    """A 3D bundle (untrained) with ``--factor 1,1,4``: 4 mm slices onto a 1 mm grid, same field of view."""
    bundle = _restoration_bundle(tmp_path_factory.mktemp("sr3d"), "cddpm_super_resolution_3d")
    start = (70, 90, 70)
    vol = np.asarray(nib.load(COLIN).dataobj, dtype=np.float32)[70:102, 90:122, 70:102:4]  # 32 x 32 x 8, 4 mm
    affine = nib.load(COLIN).affine.copy()
    affine[:3, 3] = affine[:3, :3] @ np.asarray(start, dtype=np.float64) + affine[:3, 3]
    affine[:3, 2] *= 4
    thick, out = tmp_path / "thick.nii.gz", tmp_path / "fine.nii.gz"
    nib.save(nib.Nifti1Image(vol, affine), str(thick))
    rc = cli.main(
        ["restore", "--bundle", str(bundle), "--input", str(thick), "--output", str(out), "--factor", "1,1,4", *FAST]
    )
    assert rc == 0
    fine = nib.load(str(out))
    assert fine.shape == (32, 32, 32)
    expected = affine.copy()
    expected[:3, 2] /= 4
    expected[:3, 3] -= affine[:3, 2] * 3 / 8  # voxel centres move, the field of view's corners stay
    np.testing.assert_allclose(fine.affine, expected, atol=1e-4)
    prov = io.read_provenance(out)
    assert prov.task == "super_resolution" and prov.extra["factor"] == [1.0, 1.0, 4.0]
    assert prov.model == "cddpm_super_resolution_3d"
    # two factors for a 3D model: refused
    assert (
        cli.main(
            [
                "restore",
                "--bundle",
                str(bundle),
                "--input",
                str(thick),
                "--output",
                str(tmp_path / "x.nii.gz"),
                "--factor",
                "1,4",
                *FAST,
            ]
        )
        == 2
    )


def test_restore_samples_write_uncertainty_map(bundles, files, tmp_path):
    out, unc = tmp_path / "mean.nii.gz", tmp_path / "std.nii.gz"
    rc = cli.main(
        [
            "restore",
            "--bundle",
            str(bundles["cddpm_inpainting_2d"]),
            "--input",
            files["nifti"],
            "--mask",
            files["mask"],
            "--output",
            str(out),
            "--samples",
            "2",
            "--uncertainty",
            str(unc),
            "--sampler",
            "ancestral",
            *FAST,
        ]
    )
    assert rc == 0
    ref, mean, std = (nib.load(p) for p in (files["nifti"], str(out), str(unc)))
    assert std.shape == mean.shape == ref.shape
    np.testing.assert_allclose(std.affine, ref.affine, atol=1e-5)
    s = std.get_fdata()
    assert np.isfinite(s).all() and (s >= 0).all() and s.max() > 0
    known = nib.load(files["mask"]).get_fdata() == 0  # the known voxels are kept exactly
    np.testing.assert_allclose(mean.get_fdata()[known], ref.get_fdata()[known], rtol=1e-5, atol=1e-3)
    assert io.is_synthetic(unc) and io.read_provenance(unc).extra["num_samples"] == 2
    assert io.read_provenance(out).task == "inpaint"


def test_uncertainty_with_deterministic_sampler(bundles, files, tmp_path):
    out, unc = tmp_path / "mean.nii.gz", tmp_path / "std.nii.gz"
    rc = cli.main(
        [
            "restore",
            "--bundle",
            str(bundles["cddpm_denoising_2d"]),
            "--input",
            files["slice2d"],
            "--output",
            str(out),
            "--samples",
            "2",
            "--uncertainty",
            str(unc),
            "--sampler",
            "dpm++",
            *FAST,
        ]
    )
    assert rc == 0
    assert nib.load(str(unc)).get_fdata().max() > 0


def test_factor_parsing():
    assert cli._factor("4") == 4.0 and cli._factor("1,1,4") == [1.0, 1.0, 4.0]
    for bad in ("0.5", "x", "1,,nan", ""):
        with pytest.raises(Exception, match="expected a number >= 1"):
            cli._factor(bad)


@pytest.mark.parametrize("command", ["restore", "generate", "score"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    assert "--bundle" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# errors: one line, exit status 2, no traceback
# ---------------------------------------------------------------------------------------------
ERRORS = {
    "no_weights": (
        ["restore", "--bundle", "{untrained}", "--input", "{nifti}", "--output", "{tmp}/o.nii.gz"],
        "has no weights at",
    ),
    "no_config": (
        ["restore", "--bundle", "{tmp}", "--input", "{nifti}", "--output", "{tmp}/o.nii.gz"],
        "has no configs/inference.yaml",
    ),
    "truncated": (
        ["restore", "--bundle", "{den}", "--input", "{truncated}", "--output", "{tmp}/o.nii.gz"],
        "--input: could not read",
    ),
    "not_an_image": (
        ["restore", "--bundle", "{den}", "--input", "{junk}", "--output", "{tmp}/o.nii.gz"],
        "is not a readable NIfTI, NRRD or MHA file",
    ),
    "nan": (["restore", "--bundle", "{den}", "--input", "{nan}", "--output", "{tmp}/o.nii.gz"], "NaN or infinite"),
    "output_is_input": (
        ["restore", "--bundle", "{den}", "--input", "{nifti}", "--output", "{nifti}"],
        "is the --input file: refusing to overwrite an input",
    ),
    "empty_mask": (
        ["restore", "--bundle", "{inp}", "--input", "{nifti}", "--mask", "{empty_mask}", "--output", "{tmp}/o.nii.gz"],
        "is empty",
    ),
    "mask_shape": (
        ["restore", "--bundle", "{inp}", "--input", "{nifti}", "--mask", "{small_mask}", "--output", "{tmp}/o.nii.gz"],
        "must have the image's shape",
    ),
    "unknown_class": (
        ["generate", "--bundle", "{vdm}", "--class", "3", "--num", "1", "--output-dir", "{tmp}/gen"],
        "--class 3: this bundle's model is unconditional",
    ),
}


#: cases run as a separate ``python -m monai_medgen.cli`` process (exit status and stderr as a shell sees them); the
#: others call ``cli.main`` inside the test process (the same parser and handlers, without an interpreter's start-up)
SEPARATE_PROCESS = {"nan", "unknown_class"}


def _main_in_this_process(args: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = cli.main(args)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_errors_exit_2_with_one_line(case, bundles, files, tmp_path, capsys):
    if case == "unknown_class":
        _vdm(bundles)
    args, fragment = ERRORS[case]
    names = {
        **files,
        "den": str(bundles["cddpm_denoising_2d"]),
        "inp": str(bundles["cddpm_inpainting_2d"]),
        "untrained": str(bundles["untrained"]),
        "vdm": str(bundles.get("vdm", "")),
        "tmp": str(tmp_path),
    }
    before = Path(files["nifti"]).read_bytes()
    argv = [*[a.format(**names) for a in args], "--device", "cpu"]
    if case in SEPARATE_PROCESS:
        res = _run(*argv)
        code, stderr = res.returncode, res.stderr
    else:
        code, stderr = _main_in_this_process(argv, capsys)
    assert code == 2, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("monai-medgen ")]
    assert any(": error: " in line and fragment in line for line in errors), stderr
    assert not (tmp_path / "o.nii.gz").exists()
    assert Path(files["nifti"]).read_bytes() == before


def _load_bad_inputs():
    spec = importlib.util.spec_from_file_location("bad_inputs", REPO / "scripts" / "bad_inputs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BAD_INPUTS = _load_bad_inputs()  # scripts/bad_inputs.py: every bad input of issues 6 and 14 and what the user must see


@pytest.fixture(scope="module")
def bad_input_files(tmp_path_factory):
    """The damaged inputs and bundles of scripts/bad_inputs.py (real Colin27 data), built once (as root with a
    read-only and a full tmpfs mounted under it, unmounted afterwards)."""
    work = tmp_path_factory.mktemp("bad_inputs")
    try:
        yield work, BAD_INPUTS.build(work)
    finally:
        BAD_INPUTS.release(work)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"/") for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("case", [c[0] for c in BAD_INPUTS.CASES])
def test_every_bad_input_one_line_exit_2_nothing_written(case, bad_input_files, capsys):
    """Each case of the bad-input table through ``main`` (the console script's entry point): exit status 2, one
    ``monai-medgen <command>: error:`` line naming the argument and what was expected, and no file written,
    changed or removed anywhere in the work folder (inputs, bundles, outputs)."""
    import torch

    template, fragment = next((t, f) for c, t, f in BAD_INPUTS.CASES if c == case)
    if "--device cuda" in template and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    work, names = bad_input_files
    if BAD_INPUTS.missing_placeholders(template, names):
        pytest.skip(f"this machine cannot provide {BAD_INPUTS.missing_placeholders(template, names)} (root and tmpfs)")
    argv = BAD_INPUTS.argv_for(template, names)
    before = _tree(work)
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse's own checks
        rc = e.code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert rc == 2, err
    assert len(errors) == 1 and errors[0].startswith(f"monai-medgen {argv[0]}: error: ") and fragment in errors[0], err
    assert "Traceback" not in err
    assert _tree(work) == before


# ---------------------------------------------------------------------------------------------
# generate and score with the VDM bundle
# ---------------------------------------------------------------------------------------------
def test_generate_writes_synthetic_nifti(bundles, tmp_path):
    vdm = _vdm(bundles)
    rc = cli.main(
        [
            "generate",
            "--bundle",
            str(vdm),
            "--num",
            "2",
            "--steps",
            "2",
            "--seed",
            "1",
            "--output-dir",
            str(tmp_path),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    written = sorted(tmp_path.glob("*.nii.gz"))
    assert len(written) == 2
    for path in written:
        assert io.is_synthetic(path)
        prov = io.read_provenance(path)
        assert prov.task == "generate" and prov.steps == 2 and prov.seed == 1
        data = nib.load(str(path)).get_fdata()
        assert data.shape[:2] == (128, 128) and np.isfinite(data).all()


def test_score_table_and_threshold(bundles, files, tmp_path, capsys):
    import json

    vdm = _vdm(bundles)
    out = tmp_path / "scores.json"
    inputs = [files["nifti"], files["slice2d"]]
    rc = cli.main(
        [
            "score",
            "--bundle",
            str(vdm),
            "--input",
            *inputs,
            "--num-slices",
            "2",
            "--time-samples",
            "2",
            "--device",
            "cpu",
            "--json",
            str(out),
            "--threshold",
            "100",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    head = "| input | bits/dim | PNG bits/dim | texture score | layout bits/dim | layout PNG bits/dim | layout turned"
    assert head in text and "OUT OF DISTRIBUTION" not in text  # the bundle ships a layout model: the layout score
    rows = [line for line in text.splitlines() if line.startswith("| /")]
    assert len(rows) == 2
    values = [float(r.split("|")[2]) for r in rows]
    assert all(np.isfinite(v) and v > 0 for v in values)
    saved = json.loads(out.read_text())
    assert [r["input"] for r in saved["results"]] == inputs
    np.testing.assert_allclose([r["bpd"] for r in saved["results"]], values, atol=1e-3)
    assert saved["score_kind"] == "layout"
    for r in saved["results"]:  # the mean over slices of the per-slice layout score
        assert r["score"] == pytest.approx(np.mean(r["per_slice_score"])) and r["texture_score"] != r["score"]

    rc = cli.main(
        [
            "score",
            "--bundle",
            str(vdm),
            "--input",
            *inputs,
            "--num-slices",
            "2",
            "--time-samples",
            "2",
            "--device",
            "cpu",
            "--threshold",
            "-100",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert text.count("OUT OF DISTRIBUTION") == 2 and "2 of 2 input(s) flagged" in text
