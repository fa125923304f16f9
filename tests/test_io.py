"""Real files through monai_medgen.io: NIfTI / NRRD / MHA / DICOM series made from the Colin27 brain,
geometry kept to the voxel, synthetic marking and provenance read back, and nothing lost under faults."""

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_medgen import io

COLIN = "/usr/share/mricron/templates/ch2bet.nii.gz"


@pytest.fixture(scope="module")
def colin_small():
    """A 24x28x20 crop of Colin27 (every 6th voxel), float32 in [0, 1000]; without mricron-data the same crop of
    the MNI152 template (nilearn), so no test here needs Colin27 to run."""
    if os.path.isfile(COLIN):
        vol = np.asarray(nib.load(COLIN).dataobj, dtype=np.float32)
    else:
        pytest.importorskip("nilearn")
        from monai_medgen.data import load_mni152

        vol = load_mni152()[0]
    vol = vol[::6, ::6, ::6][2:26, 4:32, 4:24]
    return vol / max(float(vol.max()), 1.0) * 1000.0


def _oblique_affine() -> np.ndarray:
    """RAS affine with anisotropic spacing, a flip and an oblique rotation (not float32-exact values)."""
    a = np.deg2rad(17.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    flip = np.diag([-1.0, 1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = rot @ flip @ np.diag([1.1, 0.9, 2.3])
    affine[:3, 3] = [-91.25, 12.5, -40.75]
    return affine


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, colin_small):
    """The same small volume as NIfTI, NRRD and MHA with an oblique, flipped geometry."""
    import SimpleITK as sitk

    folder = tmp_path_factory.mktemp("inputs")
    affine = _oblique_affine()
    nifti = folder / "colin.nii.gz"
    nib.save(nib.Nifti1Image(colin_small, affine), str(nifti))
    lps = affine.copy()
    lps[:2] *= -1
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    im = sitk.GetImageFromArray(np.ascontiguousarray(colin_small.transpose(2, 1, 0)))
    im.SetSpacing(spacing.tolist())
    im.SetOrigin(lps[:3, 3].tolist())
    im.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    paths = {"nifti": str(nifti)}
    for ext in ("nrrd", "mha"):
        sitk.WriteImage(im, str(folder / f"colin.{ext}"))
        paths[ext] = str(folder / f"colin.{ext}")
    return paths


def _provenance(path) -> io.Provenance:
    return io.Provenance(
        model="vdm_brain_mri",
        bundle_version="0.1.0",
        task="restore",
        sampler="ddim",
        steps=8,
        seed=3,
        input_checksum=io.sha256_of(path),
    )


@pytest.mark.parametrize("fmt", ["nifti", "nrrd", "mha"])
@pytest.mark.parametrize("out_ext", [".nii.gz", ".nrrd", ".mha"])
def test_round_trip_keeps_geometry_and_marks_synthetic(inputs, colin_small, tmp_path, fmt, out_ext):
    img = io.read_image(inputs[fmt], spatial_dims=3, channels=1)
    assert tuple(img.shape) == (1, *colin_small.shape)
    np.testing.assert_allclose(img.affine.numpy(), _oblique_affine(), atol=1e-4)  # NIfTI stores float32
    np.testing.assert_allclose(img[0].numpy(), colin_small, atol=1e-3)

    prov = _provenance(inputs[fmt])
    out = io.write_image(img * 0.5, tmp_path / f"restored{out_ext}", provenance=prov)
    back = io.read_image(out)
    np.testing.assert_allclose(back.affine.numpy(), img.affine.numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(back.numpy(), img.numpy() * 0.5, atol=1e-3)
    assert io.is_synthetic(out) and not io.is_synthetic(inputs[fmt])
    read = io.read_provenance(out)
    assert read == prov and read.synthetic
    assert json.loads(open(out + ".json").read())["input_checksum"] == io.sha256_of(inputs[fmt])
    if out_ext == ".nii.gz":
        descrip = nib.load(out).header["descrip"].item().decode()
        assert descrip == "SYNTHETIC monai_medgen restore vdm_brain_mri"
    # no temporary files left beside the output
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(out), os.path.basename(out) + ".json"])


def test_geometry_from_reference_and_spacing_origin_direction(inputs, tmp_path):
    import SimpleITK as sitk

    plain = torch.rand(1, 24, 28, 20)  # no affine of its own
    out = io.write_image(plain, tmp_path / "x.mha", reference=inputs["mha"])
    a, b = sitk.ReadImage(inputs["mha"]), sitk.ReadImage(out)
    np.testing.assert_allclose(b.GetSpacing(), a.GetSpacing(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(b.GetOrigin(), a.GetOrigin(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(b.GetDirection(), a.GetDirection(), atol=1e-6, rtol=0)
    assert json.loads(b.GetMetaData(io.PROVENANCE_KEY))["synthetic"] is True
    with pytest.raises(ValueError, match="spatial shape"):
        io.write_image(torch.rand(1, 8, 8, 8), tmp_path / "y.nii.gz", reference=inputs["nifti"])


def test_2d_nifti_round_trip(tmp_path, colin_small):
    affine = np.array([[0.0, -0.8, 0.0, 5.0], [1.2, 0.0, 0.0, -7.5], [0.0, 0.0, 1.0, 0.0], [0, 0, 0, 1]])
    src = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(colin_small[:, :, 10], affine), str(src))
    img = io.read_image(src, spatial_dims=2)
    out = io.write_image(img, tmp_path / "out.nii.gz")
    back = io.read_image(out, spatial_dims=2)
    np.testing.assert_allclose(back.affine.numpy(), img.affine.numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(back.numpy(), img.numpy(), atol=1e-4)
    # a generated slice placed in a volume's space keeps its 3D position (NIfTI 2D, MHA one slice)
    slice_affine = _oblique_affine()
    for name in ("s.nii.gz", "s.mha"):
        out = io.write_image(torch.rand(1, 6, 5), tmp_path / name, reference=slice_affine)
        back = io.read_image(out)
        assert back.shape[1:3] == (6, 5)
        np.testing.assert_allclose(back.affine.numpy(), slice_affine, atol=1e-6, rtol=0)


def test_refuses_input_as_output_and_existing_files(inputs, tmp_path):
    img = io.read_image(inputs["nifti"])
    before = io.sha256_of(inputs["nifti"])
    with pytest.raises(ValueError, match="output .* is the input"):
        io.write_image(img, inputs["nifti"], overwrite=True)
    link = tmp_path / "link.nii.gz"
    os.symlink(inputs["nifti"], link)
    with pytest.raises(ValueError, match="output .* is the input"):
        io.write_image(img, link, overwrite=True, inputs=[inputs["nifti"]])
    assert io.sha256_of(inputs["nifti"]) == before
    out = io.write_image(img, tmp_path / "a.nii.gz")
    with pytest.raises(ValueError, match="output .* already exists"):
        io.write_image(img, out)
    io.write_image(img * 2, out, overwrite=True)
    with pytest.raises(ValueError, match="output"):
        io.write_image(img, tmp_path / "a.png")
    with pytest.raises(ValueError, match="description must start with 'SYNTHETIC'"):
        io.write_image(img, tmp_path / "b.nii.gz", description="a real scan")
    out = io.write_image(img, tmp_path / "c.nii.gz", description=io.SYNTHETIC_DESCRIPTION)
    assert nib.load(out).header["descrip"].item().decode() == io.SYNTHETIC_DESCRIPTION
    assert io.read_provenance(out).synthetic


def test_failure_while_writing_leaves_nothing(inputs, tmp_path, monkeypatch):
    img = io.read_image(inputs["nifti"])
    existing = io.write_image(img, tmp_path / "keep.nii.gz")
    digest = io.sha256_of(existing)

    def broken(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(nib, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        io.write_image(img * 3, tmp_path / "new.nii.gz")
    with pytest.raises(OSError, match="disk full"):
        io.write_image(img * 3, existing, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["keep.nii.gz", "keep.nii.gz.json"]
    assert io.sha256_of(existing) == digest


def test_bad_inputs_give_errors_naming_the_path(inputs, tmp_path, colin_small):
    with pytest.raises(ValueError, match="could not read .*missing.nii.gz"):
        io.read_image(tmp_path / "missing.nii.gz")
    truncated = tmp_path / "truncated.nii.gz"
    data = open(inputs["nifti"], "rb").read()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="could not read .*truncated.nii.gz"):
        io.read_image(truncated)
    garbage = tmp_path / "garbage.mha"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="could not read .*garbage.mha"):
        io.read_image(garbage)
    bad = colin_small.copy()
    bad[3, 4, 5] = np.nan
    bad[4, 4, 5] = np.inf
    nan_file = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(bad, np.eye(4)), str(nan_file))
    with pytest.raises(ValueError, match="nan.nii.gz.* 2 NaN or infinite"):
        io.read_image(nan_file)
    with pytest.raises(ValueError, match="spatial_dims=2"):
        io.read_image(inputs["nifti"], spatial_dims=2)
    with pytest.raises(ValueError, match="3 channel"):
        io.read_image(inputs["nifti"], channels=3)
    with pytest.raises(ValueError, match="NaN or infinite"):
        io.write_image(torch.full((1, 4, 4, 4), float("nan")), tmp_path / "n.nii.gz")


def test_dicom_without_geometry_is_refused(tmp_path, colin_small):
    import pydicom

    ref = tmp_path / "ref"
    _make_series(ref, np.ascontiguousarray(colin_small[:, :, 8:11]))
    for f in ref.glob("*.dcm"):
        ds = pydicom.dcmread(str(f))
        del ds.ImageOrientationPatient
        ds.save_as(str(f), enforce_file_format=True)
    with pytest.raises(ValueError, match="could not read .*ref.*ImageOrientationPatient"):
        io.read_image(ref)


def test_sidecar_without_marker_and_missing_provenance(inputs, tmp_path):
    copy = tmp_path / "plain.nii.gz"
    shutil.copy(inputs["nifti"], copy)
    with pytest.raises(ValueError, match="no monai_medgen provenance"):
        io.read_provenance(copy)
    (tmp_path / "plain.nii.gz.json").write_text(io.Provenance(model="m").to_json())
    with pytest.raises(ValueError, match="not marked synthetic"):
        io.read_provenance(copy)


def test_provenance_json_round_trip():
    p = io.Provenance(model="m", task="generate", steps=4, seed=0, extra={"guidance": 2.0})
    assert io.Provenance.from_json(p.to_json()) == p
    assert p.synthetic and p.created.endswith("+00:00") and p.package_version
    assert io.Provenance.from_json(json.dumps({"model": "m", "future_key": 1})).extra == {"future_key": 1}
    with pytest.raises(ValueError, match="JSON object"):
        io.Provenance.from_json("[1, 2]")
    assert len(io.synthetic_description(io.Provenance(task="t" * 50, model="m" * 50)).encode()) <= 80


# ---------------------------------------------------------------------------------------------
# DICOM
# ---------------------------------------------------------------------------------------------
def _make_series(folder, volume):
    """A real-looking MR series: uint16 slices, sagittal-oblique orientation, anisotropic spacing,
    files named out of slice order."""
    from pydicom.uid import generate_uid
    from pydicom.valuerep import format_number_as_ds

    os.makedirs(folder)
    study, series = generate_uid(), generate_uid()
    iop = np.array([0.0, 0.9950041652780258, 0.09983341664682815, 0.0, 0.0, -1.0])
    iop[3:] = np.cross(np.cross(iop[:3], iop[3:]), iop[:3])  # orthonormal column direction
    normal = np.cross(iop[:3], iop[3:])
    stored = np.rint(volume / volume.max() * 4000).astype(np.uint16)  # (columns, rows, slices)
    for k in range(stored.shape[2]):
        ds = io.new_mr_instance(study, series)
        ds.Modality, ds.PatientID, ds.PatientName = "MR", "COLIN27", "Colin^27"
        ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = "T1 MPRAGE", 3, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[0]
        ds.PixelSpacing = [1.5, 1.25]
        ds.SliceThickness = 2.0
        ds.ImageOrientationPatient = [format_number_as_ds(float(v)) for v in iop]
        position = np.array([-12.5, 30.0, 45.0]) + 2.0 * k * normal
        ds.ImagePositionPatient = [format_number_as_ds(float(v)) for v in position]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        ds.save_as(os.path.join(folder, f"slice_{(k * 3) % stored.shape[2]:02d}.dcm"), enforce_file_format=True)
    return stored


def test_dicom_derived_series(tmp_path, colin_small):
    import pydicom

    ref = tmp_path / "ref"
    stored = _make_series(ref, np.ascontiguousarray(colin_small[:, :, 8:12]))
    img = io.read_image(ref, spatial_dims=3)
    assert tuple(img.shape) == (1, *stored.shape)
    np.testing.assert_array_equal(img[0].numpy(), stored)
    # the affine is the series' true geometry: columns along the row direction, slices along the normal
    first, second = (pydicom.dcmread(str(ref / f"slice_{k:02d}.dcm")) for k in (0, 3))  # slices 0 and 1
    iop = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    expected = np.eye(4)
    expected[:3, 0], expected[:3, 1] = iop[:3] * col_spacing, iop[3:] * row_spacing
    expected[:3, 2] = np.subtract(second.ImagePositionPatient, first.ImagePositionPatient)
    expected[:3, 3] = first.ImagePositionPatient
    expected[:2] *= -1  # LPS -> RAS
    np.testing.assert_allclose(img.affine.numpy(), expected, atol=1e-6)

    restored = img * 0.25 + 7.0
    prov = _provenance(ref)
    out = io.write_dicom_series(restored, ref, tmp_path / "derived", prov)
    back = io.read_image(out)
    np.testing.assert_allclose(back.affine.numpy(), img.affine.numpy(), atol=1e-6, rtol=0)
    step = (float(restored.max()) - float(restored.min())) / 4095
    np.testing.assert_allclose(back.numpy(), restored.numpy(), atol=step)
    assert io.is_synthetic(out) and not io.is_synthetic(ref)
    assert io.read_provenance(out) == prov

    refs = {str(d.ImagePositionPatient): d for d in map(pydicom.dcmread, ref.glob("*.dcm"))}
    new = [pydicom.dcmread(str(f)) for f in sorted((tmp_path / "derived").glob("*.dcm"))]
    assert len(new) == len(refs)
    series_uids = {d.SeriesInstanceUID for d in new}
    assert len(series_uids) == 1 and series_uids.isdisjoint(d.SeriesInstanceUID for d in refs.values())
    assert {d.SOPInstanceUID for d in new}.isdisjoint(d.SOPInstanceUID for d in refs.values())
    assert len({d.SOPInstanceUID for d in new}) == len(new)
    for d in new:
        src = refs[str(d.ImagePositionPatient)]
        assert d.StudyInstanceUID == src.StudyInstanceUID
        assert list(d.ImageType) == ["DERIVED", "SECONDARY"]
        assert "synthetic" in d.DerivationDescription.lower() and "vdm_brain_mri" in d.DerivationDescription
        assert d.SeriesDescription.startswith("SYNTHETIC")
        assert d.ImageOrientationPatient == src.ImageOrientationPatient
        assert d.PixelSpacing == src.PixelSpacing and d.SliceThickness == src.SliceThickness
        assert d.pixel_array.dtype == np.uint16 and int(d.pixel_array.max()) <= 4095
        assert d.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID

    with pytest.raises(ValueError, match="out_dir .* already exists"):
        io.write_dicom_series(restored, ref, out, prov)
    with pytest.raises(ValueError, match="out_dir .* is the input"):
        io.write_dicom_series(restored, ref, ref, prov, overwrite=True)
    with pytest.raises(ValueError, match="reference series' grid"):
        io.write_dicom_series(restored[:, :8], ref, tmp_path / "other", prov)
    assert not (tmp_path / "other").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["derived", "ref"]


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------
def test_checkpoint_atomic_and_verified(tmp_path, monkeypatch):
    state = {"network": {"w": torch.arange(1000.0)}, "iteration": 7}
    path = io.atomic_torch_save(state, tmp_path / "ckpt" / "model.pt")
    assert open(path + ".sha256").read().split()[0] == io.sha256_of(path)
    loaded = io.safe_torch_load(path)
    assert loaded["iteration"] == 7 and torch.equal(loaded["network"]["w"], state["network"]["w"])

    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])  # truncated
    with pytest.raises(ValueError, match="model.pt.* truncated or corrupted"):
        io.safe_torch_load(path)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # one corrupted byte
    open(path, "wb").write(bytes(flipped))
    with pytest.raises(ValueError, match="model.pt.* truncated or corrupted"):
        io.safe_torch_load(path)
    os.remove(path + ".sha256")  # no checksum: torch.load itself must fail clearly on a truncated file
    open(path, "wb").write(data[:100])
    with pytest.raises(ValueError, match="model.pt.* could not be loaded"):
        io.safe_torch_load(path)

    # a crash during saving leaves the previous checkpoint intact and no temporary file
    good = io.atomic_torch_save(state, tmp_path / "ok.pt")

    def crash(*args, **kwargs):
        raise RuntimeError("killed (simulated)")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(RuntimeError, match="killed"):
        io.atomic_torch_save({"iteration": 8}, good)
    assert io.safe_torch_load(good)["iteration"] == 7
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "ok.pt", "ok.pt.sha256"]
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        io.safe_torch_load(tmp_path / "nope.pt")


def test_sha256_of_files_and_folders(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_bytes(b"abc")
    (tmp_path / "d" / "b").write_bytes(b"def")
    one = io.sha256_of(tmp_path / "d")
    (tmp_path / "d" / "b").write_bytes(b"deg")
    assert io.sha256_of(tmp_path / "d") != one
    assert io.sha256_of(tmp_path / "d" / "a") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    with pytest.raises(ValueError, match="does not exist"):
        io.sha256_of(tmp_path / "nothing")
