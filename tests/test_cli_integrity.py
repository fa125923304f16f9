"""Issue 14, command line: nothing replaced that monai-medgen did not write, one DICOM series or a refusal listing
them, inconsistent geometry refused before sampling, every number checked, OS errors as one line, outputs that
follow the umask, temporary files of killed runs removed.

Real files from the Colin27 brain (``scripts/bad_inputs.py`` builds them); the restoration bundle is a copy of
``bundles/cddpm_denoising_2d`` with untrained weights (behaviour of the command line only, no claim on quality).
The table of every refusal is ``tests/test_cli.py::test_every_bad_input_one_line_exit_2_nothing_written``; the
checks here are the ones that end in a result, and the library functions underneath.
"""

import errno
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from monai_medgen import cli, io

COLIN = "/usr/share/mricron/templates/ch2bet.nii.gz"
REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    not os.path.isfile(COLIN), reason="Colin27 template (mricron-data: ch2bet.nii.gz) not installed"
)


def _load_bad_inputs():
    spec = importlib.util.spec_from_file_location("bad_inputs_integrity", REPO / "scripts" / "bad_inputs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BAD_INPUTS = _load_bad_inputs()


@pytest.fixture(scope="module")
def volume():
    vol = np.asarray(nib.load(COLIN).dataobj, dtype=np.float32)
    start, shape = BAD_INPUTS.START, BAD_INPUTS.SHAPE
    return np.ascontiguousarray(vol[tuple(slice(s, s + n) for s, n in zip(start, shape))]), BAD_INPUTS.oblique_affine()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """scripts/bad_inputs.py's inputs and bundles (built once; read-only and full tmpfs mounted when root)."""
    root = tmp_path_factory.mktemp("integrity")
    try:
        yield root, BAD_INPUTS.build(root)
    finally:
        BAD_INPUTS.release(root)


def _errors(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]


# ---------------------------------------------------------------------------------------------
# replacing only what monai-medgen wrote
# ---------------------------------------------------------------------------------------------
def test_replace_refusal_files_sidecars_and_folders(tmp_path, volume):
    vol, affine = volume
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(vol, affine), str(scan))
    out = Path(io.write_image(torch.as_tensor(vol)[None], tmp_path / "out.nii.gz", reference=affine))
    assert io.replace_refusal(tmp_path / "nothing.nii.gz") is None
    assert io.replace_refusal(out) is None and io.replace_refusal(str(out) + ".json") is None
    assert "not marked synthetic" in io.replace_refusal(scan)
    (tmp_path / "notes.json").write_text('{"mine": 1}')
    assert "not a monai_medgen provenance sidecar" in io.replace_refusal(tmp_path / "notes.json")
    # with overwrite=True: a user's scan, a user's sidecar next to a new output: refused, nothing changed
    before = scan.read_bytes()
    with pytest.raises(ValueError, match="not marked synthetic"):
        io.write_image(torch.as_tensor(vol)[None], scan, reference=affine, overwrite=True)
    assert scan.read_bytes() == before
    (tmp_path / "new.nii.gz.json").write_text('{"mine": 1}')
    with pytest.raises(ValueError, match="sidecar .* not a monai_medgen provenance sidecar"):
        io.write_image(torch.as_tensor(vol)[None], tmp_path / "new.nii.gz", reference=affine, overwrite=True)
    assert not (tmp_path / "new.nii.gz").exists() and (tmp_path / "new.nii.gz.json").read_text() == '{"mine": 1}'
    # an earlier output of ours is replaced with overwrite
    io.write_image(torch.as_tensor(vol)[None] * 2, out, reference=affine, overwrite=True)
    assert io.is_synthetic(out)
    # a link is never written through
    (tmp_path / "link.nii.gz").symlink_to(scan)
    assert "symbolic link" in io.replace_refusal(tmp_path / "link.nii.gz")


def test_derived_series_folder_is_replaceable_only_when_pure(work):
    root, names = work
    derived = Path(names["derived_plus"])
    assert not io.is_derived_series_folder(derived)  # a derived series plus the user's notes.txt
    assert io.is_synthetic(derived)  # every slice is marked ...
    assert "not a derived series" in io.replace_refusal(derived)  # ... but the folder holds a user's file
    assert not io.is_synthetic(names["series"]) and not io.is_derived_series_folder(names["series"])


def test_overwrite_replaces_earlier_outputs_but_never_a_scan(work, tmp_path, capsys):
    root, names = work
    out = tmp_path / "o.nii.gz"
    base = ["restore", "--bundle", names["den"], "--input", names["nifti"], "--steps", "1", "--device", "cpu"]
    assert cli.main([*base, "--output", str(out)]) == 0
    assert io.read_provenance(out).seed == 0
    assert cli.main([*base, "--output", str(out), "--seed", "3"]) == 2
    assert "already exists; pass --overwrite" in _errors(capsys)[0]
    assert cli.main([*base, "--output", str(out), "--seed", "3", "--overwrite"]) == 0
    assert io.read_provenance(out).seed == 3  # replaced: an earlier output of monai-medgen
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(Path(names["nifti"]).read_bytes())
    assert cli.main([*base, "--output", str(scan), "--overwrite"]) == 2
    assert "not marked synthetic" in _errors(capsys)[0]
    assert scan.read_bytes() == Path(names["nifti"]).read_bytes() and not Path(str(scan) + ".json").exists()


# ---------------------------------------------------------------------------------------------
# DICOM: one series, consistent geometry
# ---------------------------------------------------------------------------------------------
def test_list_and_select_series(work):
    root, names = work
    series = sorted(io.list_dicom_series(names["two_series"]), key=lambda s: s.description)
    assert [(s.description, s.num_slices) for s in series] == [("T1 MPRAGE", 3), ("T2 FLAIR", 3)]
    with pytest.raises(io.MultipleSeriesError) as e:
        io.read_image(names["two_series"])
    assert len(e.value.series) == 2 and all(s.uid in str(e.value) for s in series)
    t2 = io.read_image(names["two_series"], series_uid=series[1].uid)
    t1 = io.read_image(names["two_series"], series_uid=series[0].uid)
    assert tuple(t2.shape) == (1, *BAD_INPUTS.SHAPE)
    np.testing.assert_allclose(t2.affine.numpy(), BAD_INPUTS.oblique_affine(), atol=1e-3)
    np.testing.assert_array_equal(t2[0].numpy(), t1[0].numpy()[::-1])  # T2 was written as T1 mirrored
    with pytest.raises(ValueError, match="no series with SeriesInstanceUID '1.2.3'"):
        io.read_image(names["two_series"], series_uid="1.2.3")
    # the same reading as before for a folder of one series (MONAI's layout: columns, rows, slices)
    one = io.read_image(names["series"])
    assert tuple(one.shape) == (1, *BAD_INPUTS.SHAPE) and one.meta["SeriesDescription"] == "T1"


@pytest.mark.parametrize(
    "case, message",
    [
        ("mixed_orientation", "mixes 2 slice orientations"),
        ("duplicate_positions", "duplicate slice positions"),
        ("no_pixel_spacing", "PixelSpacing is missing"),
        ("uneven_spacing", "not evenly spaced"),
    ],
)
def test_inconsistent_series_refused(work, case, message):
    root, names = work
    with pytest.raises(ValueError, match=message):
        io.read_image(names[case])
    with pytest.raises(ValueError, match=message):
        io.image_header(names[case])  # the same check from the headers alone


def test_series_order_follows_positions_not_instance_numbers(tmp_path, volume):
    """Slices numbered against their positions (InstanceNumber descending along the normal) are stacked by position,
    and a derived series maps every slice back onto the reference slice at its position."""
    vol, affine = volume
    folder = tmp_path / "reversed"

    def renumber(ds, k):
        ds.InstanceNumber = 10 - k

    BAD_INPUTS.write_series(folder, vol, affine, edit=renumber)
    img = io.read_image(folder)
    np.testing.assert_allclose(img.affine.numpy(), affine, atol=1e-3)
    out = io.write_dicom_series(img + 1.0, folder, tmp_path / "derived")
    refs = {str(d.ImagePositionPatient): d for d in map(pydicom.dcmread, folder.glob("*.dcm"))}
    for d in map(pydicom.dcmread, Path(out).glob("*.dcm")):
        src = refs[str(d.ImagePositionPatient)]
        np.testing.assert_allclose(
            d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept),
            src.pixel_array.astype(np.float64) + 1.0,
            atol=float(d.RescaleSlope),
        )


def test_restore_one_series_of_two_to_a_derived_series(work, tmp_path):
    root, names = work
    series = sorted(io.list_dicom_series(names["two_series"]), key=lambda s: s.description)
    out = tmp_path / "derived"
    rc = cli.main(
        [
            "restore",
            "--bundle",
            names["den"],
            "--input",
            names["two_series"],
            "--series-uid",
            series[0].uid,
            "--output",
            str(out),
            "--steps",
            "1",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0 and io.is_derived_series_folder(out)
    new = [pydicom.dcmread(str(f)) for f in sorted(out.glob("*.dcm"))]
    t1_sops = {pydicom.dcmread(str(f)).SOPInstanceUID for f in series[0].files}
    assert len(new) == 3 and {d.SourceImageSequence[0].ReferencedSOPInstanceUID for d in new} == t1_sops
    assert io.read_provenance(out).extra["series_uid"] == series[0].uid


# ---------------------------------------------------------------------------------------------
# affines, sizes, numbers
# ---------------------------------------------------------------------------------------------
def test_check_affine():
    good = BAD_INPUTS.oblique_affine()
    np.testing.assert_array_equal(io.check_affine(good), good)
    for bad, message in (
        (np.full((4, 4), np.nan), "NaN or infinite"),
        (np.diag([1.0, 1.0, 0.0, 1.0]), "degenerate"),
        (np.zeros((3, 4)), "square"),
    ):
        with pytest.raises(ValueError, match=message):
            io.check_affine(bad)
    io.check_affine(np.diag([1.0, 1.0, 0.0, 1.0]), spatial_dims=2)  # a 2D image: the third column does not matter
    with pytest.raises(ValueError, match="NaN or infinite"):
        io.write_image(torch.ones(1, 8, 8, 2), "/nonexistent/x.nii.gz", reference=np.full((4, 4), np.nan))


def test_header_size_cap_before_decoding(work):
    root, names = work
    shape, affine = io.image_header(names["huge_reference"])
    assert shape == (600, 600)
    with pytest.raises(ValueError, match="too large: 600x600 voxels"):
        io.read_image(names["huge_reference"], max_voxels=512 * 512)
    assert io.image_header(names["series"])[0] == BAD_INPUTS.SHAPE


def test_numbers_checked():
    assert cli.check_number("--x", "2", 0, 3) == 2.0 and cli.check_number("--n", 5, 1, 10, integer=True) == 5
    for value in ("nan", "inf", float("-inf"), -1, 11, "x"):
        with pytest.raises(cli.CLIError, match="--x must be"):
            cli.check_number("--x", value, 0, 10)
    with pytest.raises(cli.CLIError, match="integer"):
        cli.check_number("--n", 2.5, 0, 10, integer=True)
    with pytest.raises(cli.CLIError, match="--guidance"):
        cli.check_guidance(float("nan"), 1)
    with pytest.raises(cli.CLIError, match="needs --class"):
        cli.check_guidance(2.0, None)
    with pytest.raises(cli.CLIError, match="'meta' device"):
        cli.check_device("meta")
    assert cli.check_device("cpu") == "cpu"
    with pytest.raises(cli.CLIError, match="not a torch.compile backend"):
        cli.check_compile_backend("bogus")
    assert cli.check_compile_backend("inductor") == "inductor" and cli.check_compile_backend(None) is None


# ---------------------------------------------------------------------------------------------
# the machine: OS errors, permissions, temporary files
# ---------------------------------------------------------------------------------------------
def test_os_errors_are_one_line_exit_2(work, tmp_path, monkeypatch, capsys):
    """A read-only folder refused before sampling, a full disk while writing: one line, exit 2, nothing left (by
    simulation, so that it runs without root; scripts/bad_inputs.py does it on real read-only and full tmpfs)."""
    root, names = work
    base = ["restore", "--bundle", names["den"], "--input", names["nifti"], "--steps", "1", "--device", "cpu"]

    def read_only(folder, what="output"):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(folder))

    with monkeypatch.context() as m:
        m.setattr(io, "check_writable_folder", read_only)
        assert cli.main([*base, "--output", str(tmp_path / "o.nii.gz")]) == 2
    errors = _errors(capsys)
    assert len(errors) == 1 and "Read-only file system" in errors[0] and "--output" in errors[0]

    def full(data, affine, filename, description):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as m:
        m.setattr(io, "_write_nifti", full)
        assert cli.main([*base, "--output", str(tmp_path / "o.nii.gz")]) == 2
    errors = _errors(capsys)
    assert len(errors) == 1 and "No space left on device" in errors[0] and "o.nii.gz" in errors[0]
    assert list(tmp_path.iterdir()) == []
    message = cli.describe_os_error(
        PermissionError(errno.EACCES, "Permission denied", "/x/.o.nii.gz.monai_medgen-tmp-h-1-abcdefgh.tmp")
    )
    assert message.startswith("/x: Permission denied (errno 13); no permission")


def test_temporaries_of_dead_processes_removed_only(tmp_path):
    """remove_stale_temporaries removes this module's temporaries whose process is gone, and nothing else."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    host = io._host()
    orphan = tmp_path / f".o.nii.gz.{io._TEMP_TAG}-{host}-{pid}-abcd1234.tmp.nii.gz"
    orphan_dir = tmp_path / f".derived.{io._TEMP_TAG}-{host}-{pid}-abcd1234.tmp"
    live = tmp_path / f".o.nii.gz.{io._TEMP_TAG}-{host}-{os.getpid()}-abcd1234.tmp.nii.gz"
    other_host = tmp_path / f".o.nii.gz.{io._TEMP_TAG}-elsewhere-{pid}-abcd1234.tmp.nii.gz"
    user = [tmp_path / ".o.nii.gz.tmp", tmp_path / "notes.tmp", tmp_path / f".x.{io._TEMP_TAG}.txt"]
    for f in (orphan, live, other_host, *user):
        f.write_text("x")
    orphan_dir.mkdir()
    (orphan_dir / "IM_0001.dcm").write_text("x")
    removed = io.remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([str(orphan), str(orphan_dir)])
    assert all(f.exists() for f in (live, other_host, *user))


def test_outputs_follow_the_umask(tmp_path, volume):
    vol, affine = volume
    old = os.umask(0o027)
    try:
        out = Path(io.write_image(torch.as_tensor(vol)[None], tmp_path / "o.nrrd", reference=affine))
        report = Path(io.write_text_atomically(tmp_path / "report.json", "{}"))
    finally:
        os.umask(old)
    for path in (out, Path(str(out) + ".json"), report):
        assert oct(path.stat().st_mode & 0o777) == "0o640", path


@pytest.mark.parametrize("check", [c.__name__ for c in BAD_INPUTS.INTEGRITY_CHECKS])
def test_integrity_checks(work, check):
    """scripts/bad_inputs.py's checks that end in a result, as separate processes: --series-uid picks one series,
    outputs follow the umask (027), a SIGKILLed writer's temporary file is removed by the next run, SIGTERM while
    sampling exits 143 with nothing written."""
    root, names = work
    row = getattr(BAD_INPUTS, check)(root, names)
    assert not row["problems"], row
