"""monai_medgen.realism: the Frechet distance, nearest-neighbour SSIM and the project's slice feature network, on
MNI152 slices (the 2D VDM's training data)."""

import numpy as np
import pytest
import torch

from monai_medgen.realism import SliceFeatureNet, frechet_distance, nearest_neighbour_ssim, train_slice_features


@pytest.fixture(scope="module")
def mni():
    from monai_medgen.data import demo_slices

    items = demo_slices("mni152", size=64, planes=("axial", "coronal"), num_slices=12)
    x = torch.as_tensor(np.stack([it["image"] for it in items]), dtype=torch.float32)
    plane = torch.as_tensor([it["label"] for it in items])
    index = np.array([it["slice"] for it in items], dtype=np.float64)
    pos = torch.as_tensor([(i % 12) / 11 for i in range(len(items))], dtype=torch.float32)
    assert len(index) == 24
    return x, plane, pos


def test_frechet_distance_properties():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 4))
    a -= a.mean(0)  # centred: scaling it keeps the mean
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    shift = np.array([3.0, 0, 0, 0])
    assert frechet_distance(a, a + shift) == pytest.approx(9.0, rel=1e-6)  # only the means differ
    # a wider spread: tr(C_a + 4 C_a - 2 * 2 C_a) = tr(C_a)
    assert frechet_distance(a, 2 * a) == pytest.approx(np.trace(np.cov(a, rowvar=False)), rel=1e-6)
    assert frechet_distance(a, a[::-1]) == pytest.approx(0.0, abs=1e-8)  # order does not matter
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(a, a[:, :3])


def test_nearest_neighbour_ssim_finds_copies(mni):
    x, _, _ = mni
    reference = x[:10]
    nn = nearest_neighbour_ssim(torch.cat([x[3:4], x[15:16], torch.flip(x[15:16], (-1,))]), reference)
    assert nn.shape == (3,)
    assert nn[0] == pytest.approx(1.0, abs=1e-5)  # a copy of a reference slice
    assert nn[1] < 0.99 and nn[2] < 0.99  # a slice of another plane, and turned
    with pytest.raises(ValueError, match="same shape"):
        nearest_neighbour_ssim(x[:2, :, :32], reference)


def test_feature_network_separates_planes(mni):
    """A short training already gives features in which the two planes' slices lie apart, and far apart from
    noise: the Frechet distance between planes is larger than between two halves of one plane."""
    x, plane, pos = mni
    features = train_slice_features(x, plane, pos, iterations=60, batch_size=16, seed=0)
    f = features(x)
    assert f.shape == (24, SliceFeatureNet().project.out_features) and f.dtype == torch.float64
    axial, coronal = f[plane == 0].numpy(), f[plane == 1].numpy()
    assert frechet_distance(axial, coronal) > frechet_distance(axial[::2], axial[1::2])
