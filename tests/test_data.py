import json

import nibabel as nib
import numpy as np
import pytest
from monai.data import DataLoader, Dataset

from monai_medgen import data
from monai_medgen.data import datalist_from_path, demo_slices, demo_volumes, load_colin27, user_slices, user_volumes


@pytest.fixture(scope="module")
def mni_slices():
    return demo_slices("mni152", size=64)


def test_demo_slices_are_real_brain_in_unit_range(mni_slices):
    assert len(mni_slices) > 100
    img = mni_slices[len(mni_slices) // 2]["image"]
    assert img.shape == (1, 64, 64) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    assert 0.2 < (img > 0.05).mean() < 0.95  # brain and background, not blank, not full
    assert img.std() > 0.1
    assert {"label", "plane", "slice", "source"} <= set(mni_slices[0])


def test_heldout_brain_differs_from_training_brain(mni_slices):
    colin = demo_slices("colin27", size=64, num_slices=8)
    assert len(colin) == 8 and colin[0]["source"] == "colin27"
    mid_train = mni_slices[len(mni_slices) // 2]["image"]
    assert min(np.abs(c["image"] - mid_train).mean() for c in colin) > 0.02


def test_planes_become_labels():
    items = demo_slices("colin27", size=32, num_slices=3, planes=("axial", "coronal", "sagittal"))
    assert [it["label"] for it in items] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    with pytest.raises(ValueError, match="plane"):
        demo_slices("colin27", planes=("oblique",))


def test_demo_volumes_3d():
    (item,) = demo_volumes("colin27", size=24)
    assert item["image"].shape == (1, 24, 24, 24) and item["image"].max() <= 1.0 and item["image"].mean() > 0.05


def test_items_flow_through_monai_dataloader(mni_slices):
    from monai.transforms import Compose, RandFlipd, ScaleIntensityRanged

    ds = Dataset(
        mni_slices[:8], transform=Compose([ScaleIntensityRanged("image", 0, 1, -1, 1), RandFlipd("image", prob=0.5)])
    )
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert tuple(batch["image"].shape) == (4, 1, 64, 64) and float(batch["image"].min()) >= -1.0


def test_unknown_source_and_missing_colin_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="source"):
        demo_slices("brainweb")
    with pytest.raises(FileNotFoundError, match="mricron-data"):
        load_colin27(tmp_path / "nope.nii.gz")


def test_user_folder_and_datalist(tmp_path):
    vol, affine = load_colin27()
    small = vol[::4, ::4, ::4]
    for i in range(2):
        nib.save(nib.Nifti1Image(small * (1 + i), affine), tmp_path / f"sub{i}.nii.gz")
    items = datalist_from_path(tmp_path)
    assert sorted(it["image"] for it in items) == sorted(str(p) for p in tmp_path.glob("*.nii.gz"))
    sl = user_slices(tmp_path, size=32, num_slices=4)
    assert len(sl) == 8 and sl[0]["image"].shape == (1, 32, 32) and sl[0]["image"].max() <= 1.0
    # per-volume scaling: the doubled volume gives the same slices
    assert np.allclose(sl[0]["image"], sl[4]["image"], atol=1e-5)
    (tmp_path / "list.json").write_text(json.dumps({"training": [{"image": "sub0.nii.gz", "label": 3}]}))
    sl = user_slices(tmp_path / "list.json", size=32, num_slices=2)
    assert len(sl) == 2 and all(it["label"] == 3 for it in sl)
    (v,) = user_volumes(tmp_path / "list.json", size=16)
    assert v["image"].shape == (1, 16, 16, 16)


def test_user_data_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        datalist_from_path(tmp_path / "missing")
    with pytest.raises(ValueError, match="no NIfTI"):
        datalist_from_path(tmp_path)
    (tmp_path / "bad.json").write_text(json.dumps({"validation": []}))
    with pytest.raises(ValueError, match="training"):
        datalist_from_path(tmp_path / "bad.json")


def test_missing_nilearn_message(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("nilearn"):
            raise ImportError("no nilearn")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="pip install nilearn"):
        data.load_mni152()
