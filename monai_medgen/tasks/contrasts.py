"""Simulated MR contrasts from tissue maps: the data of the MR-contrast bundle (``cddpm_mr_contrast_2d``).

**Every image here is simulated**, not acquired: the MNI152 2009a grey-matter, white-matter and brain-mask maps
shipped by nilearn (CSF = brain mask minus GM and WM) are turned into MR signal voxel by voxel (partial volume: the
probability-weighted sum of each tissue's signal) with the spin-echo and inversion-recovery signal equations

- spin echo: ``S = PD (1 - exp(-TR / T1)) exp(-TE / T2)``;
- inversion recovery (FLAIR-like): ``S = PD |1 - 2 exp(-TI / T1) + exp(-TR / T1)| exp(-TE / T2)``,

with the 1.5 T tissue parameters of the BrainWeb simulator (Kwan et al. 1999, IEEE TMI 18(11)): CSF T1 2569 ms,
T2 329 ms, PD 1.0; GM 833 / 83 / 0.86; WM 500 / 70 / 0.77.  Sequences (:data:`SEQUENCES`): T1-weighted SE
(TR 500, TE 12), T2-weighted SE (TR 4000, TE 100), PD-weighted SE (TR 4000, TE 12) and FLAIR (TR 9000, TI 1780 = the
CSF null T1 ln 2, TE 100).  Each draw jitters the tissue parameters and the timings by up to 10% and multiplies the
magnitude by a smooth simulated phase ``exp(i phi)`` (a random low-order field of up to +-pi plus a global offset,
shared by the contrasts of one draw, as the background phase of one session would be), then splits the complex
image into 2 channels (real, imaginary) with :class:`monai_medgen.transforms.SplitComplex`.

Split: axial slices with enough brain; a contiguous band (60-80% of the way up the valid slices, with a 3-slice margin
on each side left out of training) is held out for evaluation and for training the contrast classifier.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import Dataset
from monai.transforms import MapTransform, Randomizable

from monai_medgen.tasks.corpus import mni152_tissue_maps
from monai_medgen.transforms import SplitComplex

__all__ = [
    "CONTRASTS",
    "SEQUENCES",
    "TISSUES",
    "RandContrastPaird",
    "contrast_dataset",
    "contrast_image",
    "contrast_slices",
    "evaluate_contrasts",
    "sample_contrasts",
    "smooth_phase",
    "tissue_signals",
    "train_contrast_classifier",
    "translate_contrast",
]

CONTRASTS = ("t1", "t2", "pd", "flair")
# BrainWeb 1.5 T: (T1 ms, T2 ms, PD), in the order of the tissue maps (GM, WM, CSF)
TISSUES = {"gm": (833.0, 83.0, 0.86), "wm": (500.0, 70.0, 0.77), "csf": (2569.0, 329.0, 1.0)}
SEQUENCES = {
    "t1": {"tr": 500.0, "te": 12.0, "ti": None},
    "t2": {"tr": 4000.0, "te": 100.0, "ti": None},
    "pd": {"tr": 4000.0, "te": 12.0, "ti": None},
    "flair": {"tr": 9000.0, "te": 100.0, "ti": 1780.0},
}
HELD_OUT_BAND = (0.6, 0.8)
MARGIN = 3
SPLITS = ("train", "held_out", "other_planes", "oblique")
#: tilts (degrees, either sign) of the oblique slices the contrast classifier also trains on: without them it never
#: sees small axial sections near the vertex and takes a quarter of those T1 images for FLAIR
OBLIQUE_DEGREES = (15.0, 25.0)


def _signal(t1: float, t2: float, pd: float, tr: float, te: float, ti: float | None) -> float:
    if ti is None:
        return pd * (1 - math.exp(-tr / t1)) * math.exp(-te / t2)
    return pd * abs(1 - 2 * math.exp(-ti / t1) + math.exp(-tr / t1)) * math.exp(-te / t2)


def tissue_signals(contrast: str, jitter: float = 0.0, rng: np.random.RandomState | None = None) -> np.ndarray:
    """Signal of GM, WM and CSF for ``contrast``, divided by the largest of the three; ``jitter``: relative
    random change (uniform, up to +-jitter) of every tissue parameter and timing, drawn from ``rng``."""
    if contrast not in SEQUENCES:
        raise ValueError(f"contrast must be one of {CONTRASTS}, got {contrast!r}.")
    rng = rng or np.random.RandomState(0)

    def j(v):
        return None if v is None else v * (1 + (rng.uniform(-jitter, jitter) if jitter else 0.0))

    seq = {k: j(v) for k, v in SEQUENCES[contrast].items()}
    s = np.array([_signal(j(t1), j(t2), j(pd), **seq) for t1, t2, pd in TISSUES.values()], dtype=np.float32)
    return s / s.max()


def smooth_phase(shape, rng: np.random.RandomState, amplitude: float = math.pi) -> torch.Tensor:
    """A smooth random phase map (radians) of ``shape``: a 4 x 4 Gaussian field of standard deviation
    ``amplitude / 2`` upsampled bicubically, plus a uniform global offset."""
    coarse = torch.as_tensor(rng.standard_normal((1, 1, 4, 4)), dtype=torch.float32) * (amplitude / 2)
    field = F.interpolate(coarse, size=tuple(shape), mode="bicubic", align_corners=False)[0, 0]
    return field + float(rng.uniform(-math.pi, math.pi))


def contrast_image(
    maps: torch.Tensor, contrast: str, phase: torch.Tensor | None = None, jitter: float = 0.0, rng=None
) -> torch.Tensor:
    """(3, H, W) GM / WM / CSF probabilities -> the simulated complex image of ``contrast`` split into (2, H, W)
    (real, imaginary); magnitude in [0, 1]; ``phase`` (H, W) radians (None: real, zero phase)."""
    s = torch.as_tensor(tissue_signals(contrast, jitter, rng))
    mag = torch.tensordot(s, torch.as_tensor(maps, dtype=torch.float32), dims=1).clamp(0, 1)
    z = torch.polar(mag, phase if phase is not None else torch.zeros_like(mag))
    return SplitComplex()(z[None])


@lru_cache(maxsize=1)
def _tissue_volume() -> np.ndarray:
    """(3, X, Y, Z) GM / WM / CSF probabilities of MNI152 (:func:`monai_medgen.tasks.corpus.mni152_tissue_maps`),
    cropped to the brain."""
    maps = mni152_tissue_maps()
    brain = maps.sum(0) > 0.5
    box = [np.nonzero(brain.any(tuple(a for a in range(3) if a != k)))[0] for k in range(3)]
    return maps[:, box[0][0] : box[0][-1] + 1, box[1][0] : box[1][-1] + 1, box[2][0] : box[2][-1] + 1]


def _square(sl: torch.Tensor, size: int) -> torch.Tensor:
    side = max(sl.shape[2:])
    px, py = side - sl.shape[2], side - sl.shape[3]
    sl = F.pad(sl, (py // 2, py - py // 2, px // 2, px - px // 2))
    return torch.rot90(F.interpolate(sl, size=(size, size), mode="area"), 1, (2, 3)).contiguous()


def _tilted(maps: np.ndarray, axis: int, degrees: float) -> np.ndarray:
    """``maps`` (3, X, Y, Z) rotated by ``degrees`` about voxel axis ``axis`` (0: left-right, 1: front-back) through
    the volume's centre (trilinear; the voxels are isotropic), on the same grid."""
    vol = torch.as_tensor(maps, dtype=torch.float32)[None]
    side = max(vol.shape[2:])
    pads = [side - n for n in vol.shape[2:]]
    cube = F.pad(vol, [v for p in reversed(pads) for v in (p // 2, p - p // 2)])  # isotropic normalised coordinates
    t = math.radians(degrees)
    rot = torch.eye(3)
    # affine_grid's coordinates run (Z, Y, X): rotating about voxel X mixes grid rows 1 and 0 (Y, Z), about Y rows 2, 0
    i, j = (1, 0) if axis == 0 else (2, 0)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = math.cos(t), -math.sin(t), math.sin(t), math.cos(t)
    grid = F.affine_grid(torch.cat([rot, torch.zeros(3, 1)], 1)[None], list(cube.shape), align_corners=False)
    out = F.grid_sample(cube, grid, align_corners=False)[0]
    crop = tuple(slice(p // 2, p // 2 + n) for p, n in zip(pads, vol.shape[2:]))
    return out[(slice(None),) + crop].numpy()


@lru_cache(maxsize=8)
def contrast_slices(split: str = "train", size: int = 64) -> torch.Tensor:
    """(N, 3, size, size) tissue-map slices of MNI152 (nilearn, offline).  ``split``: "train" (axial, the diffusion
    model's data), "held_out" (the axial band of :data:`HELD_OUT_BAND`), "other_planes" (every coronal and sagittal
    slice with enough brain) or "oblique" (axial slices of the volume tilted by :data:`OBLIQUE_DEGREES` about the
    left-right and the front-back axis); the axial diffusion model never sees the last two.  Each slice is padded
    square and resized, so one pixel has the same size in all slices of a plane."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    maps = _tissue_volume()

    def valid(axis, vol=maps):
        brain = vol.sum(0) > 0.5
        area = brain.sum(tuple(a for a in range(3) if a != axis))
        return np.nonzero(area >= 0.2 * area.max())[0]

    def take(axis, idx, vol=maps):
        sl = np.moveaxis(np.take(vol, idx, axis=axis + 1), axis + 1, 0)  # (N, 3, a, b)
        return _square(torch.as_tensor(np.ascontiguousarray(sl)), size)

    if split == "other_planes":
        return torch.cat([take(0, valid(0)), take(1, valid(1))])
    if split == "oblique":
        tilted = [_tilted(maps, a, d * sign) for a in (0, 1) for d in OBLIQUE_DEGREES for sign in (1, -1)]
        return torch.cat([take(2, valid(2, v), v) for v in tilted])
    v = valid(2)
    n = len(v)
    lo, hi = int(HELD_OUT_BAND[0] * n), int(HELD_OUT_BAND[1] * n)
    return take(2, v[lo:hi] if split == "held_out" else np.concatenate([v[: lo - MARGIN], v[hi + MARGIN :]]))


class RandContrastPaird(Randomizable, MapTransform):
    """MONAI dictionary transform for contrast generation and translation: from ``item["maps"]`` (3, H, W) draws a
    target contrast (the class ``label``), a smooth phase, 10% parameter jitter and, with probability
    ``translate_prob``, another contrast of the same slice and phase as ``source``; otherwise ``source`` is zero
    (generation without a source image).  Writes ``image`` (2, H, W) and ``source`` (2, H, W), real / imaginary,
    magnitude in [0, 1], and ``label`` (index into :data:`CONTRASTS`)."""

    def __init__(self, translate_prob: float = 0.5, jitter: float = 0.1, keys=("maps",)):
        super().__init__(keys)
        if not 0.0 <= float(translate_prob) <= 1.0:
            raise ValueError(f"translate_prob must be in [0, 1], got {translate_prob}.")
        self.translate_prob, self.jitter = float(translate_prob), float(jitter)

    def randomize(self, data=None) -> None:
        pass

    def __call__(self, data):
        d = dict(data)
        maps = torch.as_tensor(d.pop(self.keys[0]))
        label = int(self.R.randint(len(CONTRASTS)))
        phase = smooth_phase(maps.shape[1:], self.R)
        d["image"] = contrast_image(maps, CONTRASTS[label], phase, self.jitter, self.R)
        if self.R.uniform() < self.translate_prob:
            src = int(self.R.choice([c for c in range(len(CONTRASTS)) if c != label]))
            d["source"] = contrast_image(maps, CONTRASTS[src], phase, self.jitter, self.R)
        else:
            d["source"] = torch.zeros_like(d["image"])
        d["label"] = label
        return d


def contrast_dataset(split: str = "train", size: int = 64, length: int | None = None, translate_prob: float = 0.5):
    """A MONAI ``Dataset`` of the ``split``'s slices (repeated to ``length`` items per pass), each drawn through
    :class:`RandContrastPaird`: fresh contrasts, phases and pairs every epoch."""
    slices = contrast_slices(split, size)
    n = len(slices) if length is None else int(length)
    return Dataset([{"maps": slices[i % len(slices)]} for i in range(n)], RandContrastPaird(translate_prob))


def translate_contrast(
    network,
    inferer,
    source: torch.Tensor,
    target: str | int,
    num_steps: int = 25,
    seed: int = 0,
    sampler: str = "dpm++",
) -> torch.Tensor:
    """Translate ``source`` into the contrast ``target`` (a name of :data:`CONTRASTS` or its index) with an
    MR-contrast model (``cddpm_mr_contrast_2d``): ``source`` (B, 2, H, W) real / imaginary, or (B, 1, H, W)
    magnitude (taken as zero phase), scaled like the training data (magnitude in [0, 1]); returns (B, 2, H, W)."""
    if isinstance(target, str):
        if target not in CONTRASTS:
            raise ValueError(f"target must be one of {CONTRASTS} or an index, got {target!r}.")
        target = CONTRASTS.index(target)
    if not 0 <= int(target) < len(CONTRASTS):
        raise ValueError(f"target index must be in [0, {len(CONTRASTS) - 1}], got {target}.")
    source = torch.as_tensor(source, dtype=torch.float32)
    if source.ndim != 4 or source.shape[1] not in (1, 2):
        raise ValueError(f"source must have shape (B, 2, H, W) or (B, 1, H, W), got {tuple(source.shape)}.")
    if source.shape[1] == 1:
        source = torch.cat([source, torch.zeros_like(source)], 1)
    labels = torch.full((source.shape[0],), int(target), dtype=torch.long)
    g = torch.Generator().manual_seed(int(seed))
    return sample_contrasts(network, inferer, labels, source, num_steps=num_steps, sampler=sampler, generator=g)


def sample_contrasts(
    network,
    inferer,
    labels: torch.Tensor,
    source: torch.Tensor | None = None,
    size: int = 64,
    num_steps: int = 25,
    sampler: str = "dpm++",
    guidance_scale: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One sample per label (B,) of contrast indices: generated from the class alone (``source`` None, at ``size``)
    or translated from ``source`` (B, 2, H, W); the starting noise drawn on the CPU from ``generator``.  Returns
    (B, 2, H, W) real / imaginary on the network's device."""
    dev = next(network.parameters()).device
    shape = (len(labels), network.in_channels, *(source.shape[2:] if source is not None else (size, size)))
    noise = torch.randn(shape, generator=generator).to(dev)
    cond = None if source is None else source.to(dev)
    with torch.no_grad():
        return inferer.sample(
            noise,
            network,
            condition=cond,
            class_labels=torch.as_tensor(labels).to(dev),
            sampler=sampler,
            num_steps=num_steps,
            guidance_scale=guidance_scale,
        )


# ---- evaluation: a contrast classifier, guided generation and translation ------------------------------------------
def _magnitude(x: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) real / imaginary -> (B, 1, H, W) magnitude in [0, 1]."""
    return torch.linalg.vector_norm(x.float(), dim=1, keepdim=True).clamp(0, 1)


def _draw(slices: torch.Tensor, labels, rng: np.random.RandomState, sources=None, jitter: float = 0.1):
    """Complex 2-channel images of ``labels`` (and of ``sources``, same phase) for each slice."""
    out, src = [], []
    for i, m in enumerate(slices):
        phase = smooth_phase(m.shape[1:], rng)
        out.append(contrast_image(m, CONTRASTS[int(labels[i])], phase, jitter, rng))
        if sources is not None:
            src.append(contrast_image(m, CONTRASTS[int(sources[i])], phase, jitter, rng))
    return torch.stack(out), (torch.stack(src) if sources is not None else None)


def train_contrast_classifier(
    size: int = 64, iterations: int = 1500, batch_size: int = 32, seed: int = 0, jitter: float = 0.1
):
    """The project's contrast classifier: three strided MONAI ``Convolution`` blocks (batch norm, PReLU), global
    average pooling and a linear layer (so it reads the tissues' intensity relations, not where anatomy sits), on the
    **magnitude** of simulated images of slices the diffusion model never trains on (the held-out axial band, every
    coronal and sagittal slice and the oblique slices of :func:`contrast_slices`), with fresh contrasts, phases, a
    random quarter turn and ``jitter`` (the diffusion model's 10%) at every step; Adam with a cosine learning rate.
    Returns ``(classifier in eval mode, accuracy on 256 fresh draws of the training slices)``: the second figure checks
    it on slices it never saw."""
    from monai.networks.blocks import Convolution

    torch.manual_seed(seed)
    rng = np.random.RandomState(seed)
    chans = (1, 16, 32, 64)
    net = torch.nn.Sequential(
        *[Convolution(2, a, b, strides=2, kernel_size=3, norm="batch") for a, b in zip(chans[:-1], chans[1:])],
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(chans[-1], len(CONTRASTS)),
    )
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(int(iterations), 1))
    held = torch.cat([contrast_slices(s, size) for s in ("held_out", "other_planes", "oblique")])
    for _ in range(int(iterations)):
        idx = rng.randint(len(held), size=batch_size)
        labels = torch.as_tensor(rng.randint(len(CONTRASTS), size=batch_size))
        x, _ = _draw(held[idx], labels, rng, jitter=jitter)
        x = torch.rot90(x, int(rng.randint(4)), (2, 3))
        loss = F.cross_entropy(net(_magnitude(x)), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    # batch-norm statistics recomputed with the final weights (a plain average over 20 fresh batches), so that
    # evaluation mode classifies as well as the last training batches did
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        for _ in range(20):
            idx = rng.randint(len(held), size=batch_size)
            x, _ = _draw(held[idx], torch.as_tensor(rng.randint(len(CONTRASTS), size=batch_size)), rng, jitter=jitter)
            net(_magnitude(x))
    net.eval()
    train = contrast_slices("train", size)
    accuracy = {}
    for j in (0.1, 0.0):
        idx = rng.randint(len(train), size=256)
        labels = torch.as_tensor(rng.randint(len(CONTRASTS), size=256))
        x, _ = _draw(train[idx], labels, rng, jitter=j)
        with torch.no_grad():
            accuracy[f"jitter_{j:g}"] = float((net(_magnitude(x)).argmax(1) == labels).float().mean())
    return net, accuracy


def evaluate_contrasts(
    network,
    inferer,
    guidance_scales=(0.0, 1.0, 3.0),
    num_per_class: int = 32,
    num_steps: int = 25,
    sampler: str = "dpm++",
    size: int = 64,
    seed: int = 0,
    batch_size: int = 64,
    classifier_iterations: int = 1500,
    output_file: str | None = None,
) -> dict:
    """Class consistency of guided generation and translation quality of an MR-contrast model.

    1. :func:`train_contrast_classifier` (held-out slices); its accuracy on the training slices is printed.
    2. Per guidance scale, ``num_per_class`` samples per contrast without a source image: the share the classifier
       labels as the requested contrast.
    3. Translation on every held-out slice and every ordered pair of contrasts (same simulated phase for source
       and truth): magnitude PSNR / SSIM of one sample (``num_steps`` steps, guidance 0), of the same network's
       single t = 1 prediction (its regression estimate: one call) and of the source itself (no translation).

    Prints markdown tables; returns the figures (and writes them as JSON to ``output_file``)."""
    import json
    import sys

    from monai_medgen.metrics import ssim

    network.eval()
    classifier, clf_acc = train_contrast_classifier(size, classifier_iterations, seed=seed)
    out = {f"classifier_accuracy_{k}": v for k, v in clf_acc.items()}
    lines = [
        "contrast classifier (MONAI Convolution blocks, trained on the held-out band, the coronal / sagittal and the "
        f"oblique slices): accuracy {clf_acc['jitter_0.1']:.3f} on 256 simulated images of the diffusion model's training "
        f"slices with its 10% parameter jitter, {clf_acc['jitter_0']:.3f} with the nominal parameters\n",
        "| guidance scale | samples per contrast | classified as requested | " + " | ".join(CONTRASTS) + " |",
        "|---|---|---|" + "---|" * len(CONTRASTS),
    ]
    g = torch.Generator(device="cpu").manual_seed(seed)
    labels = torch.arange(len(CONTRASTS)).repeat_interleave(num_per_class)
    for w in guidance_scales:
        preds = []
        for lab in labels.split(batch_size):
            x = sample_contrasts(network, inferer, lab, None, size, num_steps, sampler, w, g)
            with torch.no_grad():
                preds.append(classifier(_magnitude(x.cpu())).argmax(1))
        hit = torch.cat(preds) == labels
        per = [float(hit[labels == c].float().mean()) for c in range(len(CONTRASTS))]
        out[f"class_consistency_guidance_{w:g}"] = float(hit.float().mean())
        lines.append(
            f"| {w:g} | {num_per_class} | {float(hit.float().mean()):.3f} | "
            + " | ".join(f"{p:.3f}" for p in per)
            + " |"
        )
    print("\n".join(lines), file=sys.stderr, flush=True)
    # translation on the held-out band, every ordered pair
    held = contrast_slices("held_out", size)
    rng = np.random.RandomState(seed + 1)
    pairs = [(a, b) for a in range(len(CONTRASTS)) for b in range(len(CONTRASTS)) if a != b]
    src_l = torch.as_tensor([a for a, _ in pairs for _ in range(len(held))])
    tgt_l = torch.as_tensor([b for _, b in pairs for _ in range(len(held))])
    truth, source = _draw(held.repeat(len(pairs), 1, 1, 1), tgt_l, rng, sources=src_l)
    results = {"model (1 sample)": [], "same network, t = 1 regression call": []}
    for sl in torch.arange(len(tgt_l)).split(batch_size):
        state = g.get_state()  # the regression call starts from the same noise as the sample
        results["model (1 sample)"].append(
            sample_contrasts(network, inferer, tgt_l[sl], source[sl], size, num_steps, sampler, generator=g)
        )
        g.set_state(state)
        results["same network, t = 1 regression call"].append(
            sample_contrasts(network, inferer, tgt_l[sl], source[sl], size, 1, sampler, generator=g)
        )
    t_mag = _magnitude(truth)
    rows = {"source contrast as is (no translation)": _magnitude(source)}
    rows.update({k: _magnitude(torch.cat(v).cpu()) for k, v in results.items()})
    lines = [
        f"\ntranslation, {len(held)} held-out slices x {len(pairs)} ordered contrast pairs, magnitude "
        f"({num_steps} {sampler} steps, guidance 0)\n",
        "| method | PSNR (dB) | SSIM |",
        "|---|---|---|",
    ]
    for name, mag in rows.items():
        mse = ((mag - t_mag) ** 2).flatten(1).mean(1).clamp_min(1e-10)
        p, s = float((10 * torch.log10(1 / mse)).mean()), float(ssim(mag, t_mag).mean())
        key = "regression" if "regression" in name else ("source" if "source" in name else "sample")
        out[f"translation_psnr_{key}"], out[f"translation_ssim_{key}"] = p, s
        lines.append(f"| {name} | {p:.2f} | {s:.3f} |")
    print("\n".join(lines), file=sys.stderr, flush=True)
    if output_file:
        from pathlib import Path

        Path(output_file).parent.mkdir(parents=True, exist_ok=True)
        Path(output_file).write_text(json.dumps(out, indent=2))
    return out
