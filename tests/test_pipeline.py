"""Every public transform of ``monai_medgen.transforms`` in a hospital-style MONAI pipeline: pickled, inside
``Compose`` between ``LoadImage(d)`` and ``SaveImage(d)`` on real files (crops of the Colin27 brain with an
oblique affine), run by MONAI's ``DataLoader`` with two worker processes, with the MetaTensor metadata (affine,
``filename_or_obj``, the recorded degradation) intact and the saved files on the input's geometry; and the
per-worker seeding of MONAI's ``DataLoader`` making a run reproducible.
"""

from __future__ import annotations

import os
import pickle

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor
from monai.transforms import (
    Compose,
    ConcatItemsd,
    DeleteItemsd,
    LoadImage,
    LoadImaged,
    RepeatChannel,
    SaveImage,
    SaveImaged,
    Transform,
)
from monai.utils import set_determinism

import monai_medgen.transforms as T

COLIN = "/usr/share/mricron/templates/ch2bet.nii.gz"
pytestmark = pytest.mark.skipif(not os.path.isfile(COLIN), reason="Colin27 (mricron-data: ch2bet.nii.gz) not installed")
SHAPE = (40, 48, 6)

# one configured instance per public transform class (random ones seeded); the complex pair needs complex data
ARRAY = {
    "SimulateLowResolution": lambda: T.SimulateLowResolution(2.0),
    "RandLowResolution": lambda: T.RandLowResolution(factors=(2.0, 4.0), seed=3),
    "RandMixedNoise": lambda: T.RandMixedNoise(sigma=(0.05, 0.1), salt_pepper=0.05, seed=3),
    "RandInpaintingMask": lambda: T.RandInpaintingMask(min_fraction=0.1, max_fraction=0.2, seed=3),
    "SplitComplex": T.SplitComplex,
    "JoinComplex": T.JoinComplex,
}
DICT = {
    "SimulateLowResolutiond": lambda: T.SimulateLowResolutiond("image", factor=2.0, cond_key="sr"),
    "RandLowResolutiond": lambda: T.RandLowResolutiond("image", factors=(2.0, 4.0), cond_key="rlr", seed=3),
    "RandMixedNoised": lambda: T.RandMixedNoised(
        "image", sigma=(0.05, 0.1), salt_pepper=0.05, cond_key="noisy", seed=3
    ),
    "RandInpaintingMaskd": lambda: T.RandInpaintingMaskd(
        "image", min_fraction=0.1, max_fraction=0.2, cond_key="masked", mask_key="mask", seed=3
    ),
    "JoinComplexd": lambda: T.JoinComplexd("two", output_key="cplx"),
    "SplitComplexd": lambda: T.SplitComplexd("cplx", output_key="split"),
}
SAVED = ("sr", "rlr", "noisy", "masked", "mask", "split")  # what the dictionary pipeline writes


def test_every_public_transform_is_covered():
    public = {
        getattr(T, n) for n in T.__all__ if isinstance(getattr(T, n), type) and issubclass(getattr(T, n), Transform)
    }
    covered = {type(f()) for f in (*ARRAY.values(), *DICT.values())}
    assert public == covered, f"not covered: {sorted(c.__name__ for c in public - covered)}"


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    """Four 40x48x6 Colin27 crops at different places, each with its own oblique affine, as NIfTI files."""
    src = nib.load(COLIN)
    vol = np.asarray(src.dataobj, dtype=np.float32)
    a = np.deg2rad(10.0)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    folder = tmp_path_factory.mktemp("colin_crops")
    out = []
    for k, start in enumerate([(60, 80, 70), (70, 90, 80), (80, 100, 75), (66, 84, 90)]):
        block = vol[tuple(slice(s, s + n) for s, n in zip(start, SHAPE))]
        affine = src.affine.copy()
        affine[:3, 3] = affine[:3, :3] @ np.asarray(start, dtype=np.float64) + affine[:3, 3]
        path = str(folder / f"colin_{k}.nii.gz")
        nib.save(nib.Nifti1Image(np.ascontiguousarray(block / block.max()), rot @ affine), path)
        out.append(path)
    return out


def _meta_tensor(path: str) -> MetaTensor:
    return LoadImage(image_only=True, ensure_channel_first=True)(path)


@pytest.mark.parametrize("name", sorted(ARRAY) + sorted(DICT))
def test_pickle_round_trip(name, crops):
    """A pickled copy (what a spawned worker receives) transforms like the original, random state included."""
    original = (ARRAY | DICT)[name]()
    copy = pickle.loads(pickle.dumps(original))
    img = _meta_tensor(crops[0])
    if name in ("JoinComplex", "JoinComplexd"):
        img = torch.cat([img, img * 0.5])
    if name in ("SplitComplex", "SplitComplexd"):
        img = T.JoinComplex()(torch.cat([img, img * 0.5]))
    if name in DICT:
        key = {"JoinComplexd": "two", "SplitComplexd": "cplx"}.get(name, "image")
        first, second = original({key: img}), copy({key: img})
        outputs = [(first[k], second[k]) for k in first if k != key and isinstance(first[k], torch.Tensor)]
        assert outputs
        for k in (k for k in first if str(k).endswith("_degradation")):  # the recorded parameters too
            assert first[k] == second[k]
    else:
        a, b = original(img), copy(img)
        outputs = list(zip(a, b)) if isinstance(a, tuple) else [(a, b)]
    for a, b in outputs:
        assert isinstance(a, MetaTensor) and torch.equal(a.as_tensor(), b.as_tensor())
        assert torch.equal(a.affine, img.affine) and a.meta["filename_or_obj"] == crops[0]


def _check_saved(path: str, source: str, expected: np.ndarray | None = None) -> None:
    saved, src = nib.load(path), nib.load(source)
    assert saved.shape[:3] == src.shape == SHAPE
    np.testing.assert_allclose(saved.affine, src.affine, atol=1e-5)
    if expected is not None:
        np.testing.assert_allclose(saved.get_fdata(), expected, atol=1e-6)


ARRAY_CHAINS = {  # name -> transforms between LoadImage and SaveImage
    "SimulateLowResolution": lambda: [ARRAY["SimulateLowResolution"]()],
    "RandLowResolution": lambda: [ARRAY["RandLowResolution"]()],
    "RandMixedNoise": lambda: [ARRAY["RandMixedNoise"]()],
    "RandInpaintingMask": lambda: [ARRAY["RandInpaintingMask"]()],  # writes the mask itself
    "JoinComplex+SplitComplex": lambda: [RepeatChannel(2), T.JoinComplex(), T.SplitComplex()],
}


@pytest.mark.parametrize("name", sorted(ARRAY_CHAINS))
def test_array_transform_in_multiprocess_pipeline(name, crops, tmp_path):
    """Compose([LoadImage, <transform>, SaveImage]) over four files, two fork workers: the batch keeps each file's
    affine and name, and the saved NIfTI keeps the input's grid and world geometry."""
    chain = Compose(
        [
            LoadImage(image_only=True, ensure_channel_first=True),
            *ARRAY_CHAINS[name](),
            SaveImage(
                output_dir=str(tmp_path),
                output_postfix="out",
                separate_folder=False,
                resample=False,
                output_dtype=np.float32,
                print_log=False,
            ),
        ]
    )
    loader = DataLoader(Dataset(crops, transform=chain), batch_size=2, num_workers=2)
    batches = list(loader)
    assert len(batches) == 2
    for batch, paths in zip(batches, (crops[:2], crops[2:])):
        assert isinstance(batch, MetaTensor) and batch.shape[0] == 2 and batch.shape[2:] == SHAPE
        assert list(batch.meta["filename_or_obj"]) == paths
        for affine, path in zip(batch.affine, paths):
            np.testing.assert_allclose(affine.numpy(), nib.load(path).affine, atol=1e-5)
    for src in crops:
        out = str(tmp_path / os.path.basename(src).replace(".nii.gz", "_out.nii.gz"))
        data = nib.load(src).get_fdata()
        expected = np.stack([data, data], -1) if "Complex" in name else None  # the complex round trip is exact
        _check_saved(out, src, expected)
        values = nib.load(out).get_fdata()
        assert np.isfinite(values).all()
        if name == "RandInpaintingMask":
            assert set(np.unique(values)) == {0.0, 1.0} and 0.1 <= values.mean() <= 0.2


def _dict_chain(out_dir: str | None) -> Compose:
    chain = [
        LoadImaged("image", image_only=True, ensure_channel_first=True),
        *(
            DICT[n]()
            for n in ("SimulateLowResolutiond", "RandLowResolutiond", "RandMixedNoised", "RandInpaintingMaskd")
        ),
        ConcatItemsd(["image", "masked"], name="two"),
        DICT["JoinComplexd"](),
        DICT["SplitComplexd"](),
        DeleteItemsd("cplx"),
    ]  # complex tensors have no NIfTI writer here; the real split is saved
    if out_dir is not None:
        chain += [
            SaveImaged(
                k,
                output_dir=out_dir,
                output_postfix=k,
                separate_folder=False,
                resample=False,
                output_dtype=np.float32,
                print_log=False,
            )
            for k in SAVED
        ]
    return Compose(chain)


def test_dictionary_pipeline_with_spawned_workers(crops, tmp_path):
    """All dictionary transforms in one Compose with LoadImaged/SaveImaged, run by two *spawned* workers (the
    pipeline is pickled to them): the collated batch keeps affine, file name and the degradation record of each
    item in its metadata, and every saved file keeps the input's geometry."""
    loader = DataLoader(
        Dataset([{"image": p} for p in crops], transform=_dict_chain(str(tmp_path))),
        batch_size=2,
        num_workers=2,
        multiprocessing_context="spawn",
    )
    batches = list(loader)
    assert len(batches) == 2
    records = {
        "sr": ["SimulateLowResolution"],
        "rlr": ["RandLowResolution"],
        "noisy": ["RandMixedNoise"],
        "masked": ["RandInpaintingMask"],
    }
    for batch, paths in zip(batches, (crops[:2], crops[2:])):
        for key in (*records, "image", "mask", "split"):
            x = batch[key]
            assert isinstance(x, MetaTensor) and x.shape[2:] == SHAPE, key
            assert list(x.meta["filename_or_obj"]) == paths, key
            for affine, path in zip(x.affine, paths):
                np.testing.assert_allclose(affine.numpy(), nib.load(path).affine, atol=1e-5)
        for key, transforms in records.items():
            record = batch[key].meta["degradation"]  # collated: one value per item
            assert [list(t) for t in zip(*record["transforms"])] == [transforms] * 2, key
            assert batch[f"{key}_degradation"]["transforms"] == record["transforms"]
        assert torch.equal(batch["sr"].meta["degradation"]["factor"], torch.tensor([2.0, 2.0], dtype=torch.float64))
        assert set(batch["rlr"].meta["degradation"]["factor"].tolist()) <= {2.0, 4.0}
        sigma = batch["noisy"].meta["degradation"]["sigma"]
        assert bool(((sigma >= 0.05) & (sigma <= 0.1)).all())
        # [image, masked] joined into one complex channel and split again: both exactly back
        assert batch["split"].shape[1] == 2
        assert torch.equal(batch["split"][:, :1].as_tensor(), batch["image"].as_tensor())
        assert torch.equal(batch["split"][:, 1:].as_tensor(), batch["masked"].as_tensor())
    for src in crops:
        stem = os.path.basename(src).replace(".nii.gz", "")
        for key in SAVED:
            _check_saved(str(tmp_path / f"{stem}_{key}.nii.gz"), src)
        mask = nib.load(str(tmp_path / f"{stem}_mask.nii.gz")).get_fdata()
        masked = nib.load(str(tmp_path / f"{stem}_masked.nii.gz")).get_fdata()
        assert set(np.unique(mask)) == {0.0, 1.0} and np.all(masked[mask > 0] == 0)
        np.testing.assert_allclose(masked[mask == 0], nib.load(src).get_fdata()[mask == 0], atol=1e-6)


def _run(seed: int | None) -> tuple[list[int], list[torch.Tensor]]:
    set_determinism(seed=seed)
    loader = DataLoader(
        Dataset([{"image": p} for p in _run.crops], transform=_dict_chain(None)), batch_size=1, num_workers=2
    )
    seeds, images = [], []
    for batch in loader:
        seeds.append(int(batch["noisy_degradation"]["noise_seed"][0]))
        images.append(torch.cat([batch[k].as_tensor().flatten() for k in ("rlr", "noisy", "masked", "mask")]))
    return seeds, images


def test_worker_seeding_reproducible(crops):
    """MONAI's DataLoader seeds each worker's transforms from the torch seed (``set_rnd`` in ``worker_init_fn``):
    the same seed gives the same degradations, another seed others, and the two workers draw different streams
    (items 0 and 1 are made by different workers from the same seeded transforms)."""
    _run.crops = crops
    try:
        seeds_a, images_a = _run(0)
        seeds_b, images_b = _run(0)
        seeds_c, images_c = _run(1)
    finally:
        set_determinism(seed=None)
    assert seeds_a == seeds_b and all(torch.equal(a, b) for a, b in zip(images_a, images_b))
    assert len(set(seeds_a)) == 4  # no two items, in either worker, share a noise draw
    assert seeds_c != seeds_a and not torch.equal(images_a[0], images_c[0])
    # the transforms' own seed (3) is replaced in the workers: without MONAI's seeding each forked worker would
    # start from that state, and the first item of each would get this noise seed
    direct = DICT["RandMixedNoised"]()({"image": _meta_tensor(crops[0])})["noisy_degradation"]["noise_seed"]
    assert direct not in seeds_a
