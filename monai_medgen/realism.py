"""Are generated slices realistic, and are they copies?  Two measures against the training slices.

- **Frechet distance on the project's own features** (not an ImageNet Inception network: it has never seen MRI and
  cannot be loaded offline).  :func:`train_slice_features` trains a small MONAI convolutional network on the
  training slices of all three planes to tell the plane and the position of a slice along its axis, tasks that need
  the whole-slice layout, under random rotation, scaling, gamma and blur; its pooled penultimate activations are
  the features.  :func:`frechet_distance` compares the Gaussians fitted to two feature sets.  A generator is as
  realistic as real held-out data by this measure when its samples are no farther from the training set than real
  slices of another brain.
- **Nearest-neighbour SSIM** (:func:`nearest_neighbour_ssim`): for each sample, the highest SSIM to any training
  slice.  A model that copies its training data sits near 1; real slices of another brain give the level of
  genuine similarity.

Typical use (``scripts/sample_realism.py`` runs it for the 2D VDM bundle)::

    features = train_slice_features(train_slices_all_planes, planes, positions)
    fd = frechet_distance(features(samples), features(training_slices))
    nn = nearest_neighbour_ssim(samples, training_slices)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

__all__ = ["SliceFeatureNet", "frechet_distance", "nearest_neighbour_ssim", "train_slice_features"]


class SliceFeatureNet(nn.Module):
    """Four strided MONAI convolution blocks, global average pooling to ``features`` values, and a head with the
    plane logits and the relative slice position (the training targets of :func:`train_slice_features`)."""

    def __init__(self, num_planes: int = 3, channels=(16, 32, 64, 64), features: int = 64):
        super().__init__()
        from monai.networks.blocks import Convolution

        blocks, c_in = [], 1
        for c in channels:
            blocks.append(Convolution(2, c_in, c, strides=2, kernel_size=3, act="PRELU", norm="INSTANCE"))
            blocks.append(Convolution(2, c, c, strides=1, kernel_size=3, act="PRELU", norm="INSTANCE"))
            c_in = c
        self.encoder = nn.Sequential(*blocks)
        self.project = nn.Linear(c_in, features)
        self.head = nn.Linear(features, num_planes + 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) in [0, 1] -> (B, features)."""
        return self.project(self.encoder(x * 2 - 1).mean((-2, -1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.features(x)))


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random rotation (10 degrees), scaling (10%), gamma (0.8-1.25) and left-right flip of (B, 1, H, W) in [0, 1]."""
    import torch.nn.functional as F

    b = x.shape[0]
    angle = (torch.rand(b, generator=g) * 2 - 1) * 0.17
    scale = 1 + (torch.rand(b, generator=g) * 2 - 1) * 0.1
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros(b)], 1), torch.stack([sin, cos, torch.zeros(b)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
    gamma = torch.exp((torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * 0.223)
    x = x.clamp(0, 1) ** gamma
    flip = torch.rand(b, generator=g) < 0.5
    return torch.where(flip[:, None, None, None], torch.flip(x, (-2,)), x)


def train_slice_features(
    slices: torch.Tensor,
    planes: torch.Tensor,
    positions: torch.Tensor,
    iterations: int = 800,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Train :class:`SliceFeatureNet` on (N, 1, H, W) slices in [0, 1] with their plane index (N,) and relative
    position along the plane's axis (N,) in [0, 1] (cross-entropy plus squared error), augmented as
    :func:`_augment`.  Returns a function (B, 1, H, W) -> (B, features) float64 features (eval mode, batched)."""
    g = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    net = SliceFeatureNet(num_planes=int(planes.max()) + 1)
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=int(iterations))
    net.train()
    for _ in range(int(iterations)):
        idx = torch.randint(0, slices.shape[0], (batch_size,), generator=g)
        out = net(_augment(slices[idx], g))
        loss = nn.functional.cross_entropy(out[:, :-1], planes[idx]) + 10 * ((out[:, -1] - positions[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    net.eval()

    @torch.no_grad()
    def features(x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float32)
        return torch.cat([net.features(b).double() for b in x.split(64)])

    return features


def frechet_distance(a, b) -> float:
    """Frechet distance between Gaussians fitted to feature sets ``a`` (N, D) and ``b`` (M, D):
    ``|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2)`` (symmetric square roots by eigendecomposition)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(
            f"a and b must be (N, D) feature sets with N >= 2 and the same D, got {a.shape} and {b.shape}."
        )

    def sqrtm(c):
        w, v = np.linalg.eigh((c + c.T) / 2)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = sqrtm(ca)
    cross = sqrtm(root @ cb @ root)
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * cross))


def nearest_neighbour_ssim(x, reference, batch_size: int = 256) -> np.ndarray:
    """For each (N, 1, H, W) image of ``x`` in [0, 1], the highest SSIM to any image of ``reference`` (M, 1, H, W)
    (:func:`monai_medgen.metrics.ssim`, data range 1).  Returns (N,)."""
    from monai_medgen.metrics import ssim

    x, reference = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(reference, dtype=torch.float32)
    if x.shape[1:] != reference.shape[1:]:
        raise ValueError(
            f"x and reference must hold images of the same shape, got {tuple(x.shape)} and {tuple(reference.shape)}."
        )
    best = np.full(x.shape[0], -np.inf)
    pairs = [(i, j) for i in range(x.shape[0]) for j in range(reference.shape[0])]
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        i = torch.as_tensor([p[0] for p in chunk])
        j = torch.as_tensor([p[1] for p in chunk])
        values = ssim(x[i], reference[j]).numpy()
        np.maximum.at(best, i.numpy(), values)
    return best
