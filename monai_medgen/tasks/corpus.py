"""The restoration training corpus: every allowed offline source as 2D slices, with domain randomisation.

Sources (all offline; what is synthetic is named so):

- ``"mni152_t1"``: the MNI152 2009a T1 template (nilearn), real, sliced along all three axes;
- ``"tissue_contrast"``: **synthetic** contrasts drawn from nilearn's MNI152 grey/white-matter and brain-mask maps
  (CSF = brain mask minus GM and WM): a random intensity per tissue and for the background, per-tissue texture,
  as SynthSeg/SynthSR do;
- ``"atlas_contrast"``: **synthetic** images from label atlases of Debian's ``mricron-data`` (Harvard-Oxford
  cortical, JHU white matter, AICHA), one random intensity per label, partial-volume blur and texture.  The AAL,
  Brodmann and other atlases drawn on the Colin27 brain are not used: Colin27 is held out;
- ``"photographs"``: scikit-image's bundled images (grey), for edges, textures and intensity layouts that no
  brain has.  ``retina`` and ``microaneurysms`` stay out (they are in the unseen panel).

Never used: Colin27 (``ch2*``, held out), the macaque ``inia19`` template and atlas, pydicom's and nibabel's test
images (all in the unseen panel, :mod:`monai_medgen.tasks.panel`), and any image reserved for the project's
independent evaluation.

Each draw is then randomised: orientation (flips, 90-degree turns), affine (rotation, shear) and elastic
deformation, field of view and pixel size (zoom, ``zoom_range``; anti-aliased when the draw is coarser than its
source), gamma, a smooth multiplicative bias field, occasional contrast inversion and slight blur, a random crop, and
scaling so that a random 98-100th percentile maps to 1.  With ``acquisition_noise`` half of the draws also carry
**synthetic** acquisition noise (Gaussian or Rician, standard deviation up to that value) in the image itself, so
that a model whose target is the image learns that such noise cannot be predicted (the templates and atlases are
noise-free, the scans users bring are not).  With ``hard_mask`` a fraction of the draws is cut by a binary mask on its
own pixel grid, everything outside exactly 0, as in skull-stripped or masked scans (a staircase edge from tissue to
zero that resampled templates never show).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Randomizable, Transform

from monai_medgen.data import datalist_from_path, load_volume, scale_intensity

__all__ = ["SOURCES", "RandCorpusSliced", "TrainingCorpus", "mni152_tissue_maps"]

SOURCES = ("mni152_t1", "tissue_contrast", "atlas_contrast", "photographs")
DEFAULT_ZOOM_RANGE = (0.6, 1.6)  # log-uniform zoom of a draw against its source's pixel size
DEFAULT_WEIGHTS = {"mni152_t1": 0.25, "tissue_contrast": 0.25, "atlas_contrast": 0.2, "photographs": 0.3, "user": 1.0}
MRICRON_TEMPLATES = Path(os.environ.get("MONAI_MEDGEN_MRICRON", "/usr/share/mricron/templates"))
TRAINING_ATLASES = (
    "HarvardOxford-cort-maxprob-thr0-1mm.nii.gz",
    "JHU-WhiteMatter-labels-1mm.nii.gz",
    "AICHAmc.nii.gz",
)
TRAINING_PHOTOGRAPHS = (
    "camera.png",
    "astronaut.png",
    "coffee.png",
    "chelsea.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "coins.png",
    "text.png",
    "page.png",
    "phantom.png",
    "moon.png",
    "horse.png",
    "cell.png",
    "ihc.png",
    "clock_motion.png",
    "motorcycle_left.png",
)


def mni152_tissue_maps() -> np.ndarray:
    """(3, X, Y, Z) float32 probabilities of grey matter, white matter and CSF of the MNI152 2009a template (nilearn,
    offline); CSF = brain mask minus GM and WM, all clipped to [0, 1].  The tissue maps of the synthetic contrasts here
    and of the simulated MR contrasts (:mod:`monai_medgen.tasks.contrasts`)."""
    from nilearn import datasets

    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).get_fdata(), np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).get_fdata(), np.float32)
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=1).get_fdata(), np.float32) > 0.5
    csf = np.clip(mask.astype(np.float32) - gm - wm, 0, 1)
    return np.stack([gm, wm, csf]).clip(0, 1)


def _grey(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 3:
        a = a[..., :3].mean(-1)
    a = a - a.min()
    return a / max(float(a.max()), 1e-6)


def _valid_slices(mask: np.ndarray, min_fraction: float = 0.2) -> list[np.ndarray]:
    """Per axis, the slice indices whose foreground area is at least ``min_fraction`` of the largest."""
    out = []
    for axis in range(3):
        area = mask.sum(axis=tuple(a for a in range(3) if a != axis))
        out.append(np.nonzero(area >= min_fraction * area.max())[0])
    return out


class TrainingCorpus:
    """The training sources of :data:`SOURCES`, loaded once; :meth:`draw` renders one randomised 2D image.

    Args:
        sources: which sources to use (any of :data:`SOURCES`); missing optional ones (``mricron-data`` not
            installed) are skipped with a note in :attr:`notes`.
        weights: sampling weight per source (default :data:`DEFAULT_WEIGHTS`).
        dataset_dir: your own images (a folder of NIfTI / NRRD / MHA files or DICOM series, or a datalist JSON),
            added as the source ``"user"`` (2D images and volumes, each scaled by its 99.5th percentile, volumes
            sliced along all three axes); with ``sources=()`` they are the only training data.
        zoom_range: (low, high) of the log-uniform zoom: how much of the source one draw covers relative to its own
            pixel size (4: a draw of 64 pixels spans 256 source pixels, e.g. a whole head at 4 mm, as in small
            clinical images).
        acquisition_noise: largest standard deviation of the synthetic noise added to half of the draws (0: none).
        hard_mask: fraction of the draws cut by a binary foreground mask on their own pixel grid, everything
            outside set to exactly 0, as skull-stripped brains (BET, ``ch2bet``-style) and masked scans are: a
            staircase edge from tissue straight to zero that no resampled template has (0: none).
    """

    def __init__(
        self,
        sources: Sequence[str] = SOURCES,
        weights: dict | None = None,
        dataset_dir: str | None = None,
        zoom_range: Sequence[float] = DEFAULT_ZOOM_RANGE,
        acquisition_noise: float = 0.0,
        hard_mask: float = 0.0,
    ):
        unknown = set(sources) - set(SOURCES)
        if unknown:
            raise ValueError(f"sources must be among {SOURCES}, got {sorted(unknown)}.")
        zoom_range = tuple(float(z) for z in zoom_range)
        if len(zoom_range) != 2 or not 0 < zoom_range[0] <= zoom_range[1]:
            raise ValueError(f"zoom_range must be (low, high) with 0 < low <= high, got {zoom_range}.")
        if not 0 <= float(acquisition_noise) < 1:
            raise ValueError(f"acquisition_noise must be in [0, 1), got {acquisition_noise}.")
        if not 0 <= float(hard_mask) <= 1:
            raise ValueError(f"hard_mask must be a fraction in [0, 1], got {hard_mask}.")
        self.zoom_range, self.acquisition_noise = zoom_range, float(acquisition_noise)
        self.hard_mask = float(hard_mask)
        self.notes: list[str] = []
        self.volumes: dict[str, list] = {}
        if "mni152_t1" in sources or "tissue_contrast" in sources:
            self._load_mni(sources)
        if "atlas_contrast" in sources:
            self._load_atlases()
        if "photographs" in sources:
            self._load_photographs()
        if dataset_dir:
            self._load_user(dataset_dir)
            sources = (*sources, "user")
        w = {**DEFAULT_WEIGHTS, **(weights or {})}
        self.sources = [s for s in sources if self.volumes.get(s)]
        if not self.sources:
            raise RuntimeError(f"no training source could be loaded: {self.notes}")
        p = np.array([w[s] for s in self.sources], dtype=np.float64)
        self.probabilities = p / p.sum()

    # ---- loading -------------------------------------------------------------------------------
    def _load_mni(self, sources) -> None:
        from nilearn import datasets

        t1 = scale_intensity(np.asarray(datasets.load_mni152_template(resolution=1).get_fdata(), np.float32))
        if "mni152_t1" in sources:
            self.volumes["mni152_t1"] = [(t1, _valid_slices(t1 > 0.02))]
        if "tissue_contrast" in sources:
            maps = mni152_tissue_maps()
            self.volumes["tissue_contrast"] = [(maps, _valid_slices(maps.sum(0) > 0.5))]

    def _load_atlases(self) -> None:

        vols = []
        for name in TRAINING_ATLASES:
            path = MRICRON_TEMPLATES / name
            if not path.is_file():
                continue
            labels = np.asarray(nib.load(str(path)).dataobj).astype(np.int32)
            if labels.ndim == 4:
                labels = labels[..., 0]
            vols.append((labels, [*_valid_slices(labels > 0), int(labels.max())]))
        if vols:
            self.volumes["atlas_contrast"] = vols
        else:
            self.notes.append(
                f"atlas_contrast skipped: no label atlas under {MRICRON_TEMPLATES} (apt-get install mricron-data)"
            )

    def _load_photographs(self) -> None:
        import skimage.data
        import skimage.io

        folder = Path(skimage.data.__file__).parent
        images = [_grey(skimage.io.imread(str(folder / n))) for n in TRAINING_PHOTOGRAPHS if (folder / n).is_file()]
        if images:
            self.volumes["photographs"] = images
        else:
            self.notes.append("photographs skipped: scikit-image's bundled images not found")

    def _load_user(self, dataset_dir) -> None:

        items = []
        for item in datalist_from_path(dataset_dir):
            vol = scale_intensity(load_volume(item["image"])[0])
            vol = vol[..., None] if vol.ndim == 2 else vol
            if vol.shape[-1] == 1:  # a 2D image: one "photograph"-like item
                items.append((vol, None, "2d"))
            else:
                items.append((vol, _valid_slices(vol > 0.02), "3d"))
        if not items:
            raise ValueError(f"dataset_dir {dataset_dir!r} holds no image.")
        self.volumes["user"] = items

    # ---- rendering -----------------------------------------------------------------------------
    @staticmethod
    def _slice(vol: np.ndarray, valid: list[np.ndarray], R: np.random.RandomState) -> np.ndarray:
        axis = int(R.randint(3))
        idx = int(R.choice(valid[axis]))
        return np.ascontiguousarray(vol[(slice(None),) * (vol.ndim - 3 + axis) + (idx,)])

    @staticmethod
    def _texture(shape, R: np.random.RandomState, amount: float) -> np.ndarray:
        field = torch.as_tensor(R.standard_normal((1, 1, *shape)), dtype=torch.float32)
        k = int(R.choice([1, 3, 5]))
        if k > 1:
            field = F.avg_pool2d(field, k, stride=1, padding=k // 2) * k
        return field[0, 0].numpy() * amount

    def _render(self, source: str, R: np.random.RandomState) -> np.ndarray:
        items = self.volumes[source]
        item = items[int(R.randint(len(items)))]
        if source == "photographs":
            return item
        if source == "user":
            vol, valid, kind = item
            return vol[..., 0] if kind == "2d" else self._slice(vol, valid, R)
        vol, valid = item[:2]
        sl = self._slice(vol, valid, R)
        if source == "mni152_t1":
            return sl
        if source == "tissue_contrast":  # (3, H, W) probabilities of GM, WM, CSF
            mu = R.uniform(0, 1, size=3).astype(np.float32)
            bg = float(R.uniform(0, 0.2)) if R.uniform() < 0.5 else 0.0
            img = np.tensordot(mu, sl, axes=1) + (1 - sl.sum(0)).clip(0, 1) * bg
            for k in range(3):
                img = img + sl[k] * self._texture(img.shape, R, float(R.uniform(0, 0.06)) * mu[k])
            return img.astype(np.float32)
        lut = R.uniform(0, 1, size=int(valid[3]) + 1).astype(np.float32)  # atlas labels
        lut[0] = float(R.uniform(0, 0.2)) if R.uniform() < 0.5 else 0.0
        img = lut[sl]
        t = torch.as_tensor(img)[None, None]
        blur = float(R.uniform(0.3, 1.5))
        img = _gauss(t, blur)[0, 0].numpy()
        return (img + (sl > 0) * self._texture(img.shape, R, float(R.uniform(0, 0.05)))).astype(np.float32)

    def draw(self, R: np.random.RandomState, size: int = 64) -> np.ndarray:
        """One randomised training image (size, size) in [0, 1]."""
        for _ in range(10):
            source = self.sources[int(R.choice(len(self.sources), p=self.probabilities))]
            img = _augment(self._render(source, R), R, size, self.zoom_range, self.acquisition_noise)
            if self.hard_mask > 0 and R.uniform() < self.hard_mask:
                img = _cut_by_mask(img, R)
            if float(img.std()) > 0.03:
                return img
        return img


def _gauss(t: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with standard deviation ``sigma`` pixels."""
    if sigma <= 0.05:
        return t
    r = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = (k / k.sum()).to(t)
    c = t.shape[1]
    t = F.conv2d(F.pad(t, (r, r, 0, 0), mode="replicate"), k.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(t, (0, 0, r, r), mode="replicate"), k.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _cut_by_mask(img: np.ndarray, R: np.random.RandomState) -> np.ndarray:
    """``img`` outside a binary mask set to exactly 0, the mask on the pixel grid of ``img``, so the cut is a
    staircase edge from tissue to zero as in skull-stripped scans.  The mask is where a blurred copy of the image
    exceeds a random quantile (a brain extraction keeps tissue, drops the dark surroundings) or, for half of the
    draws, where a smooth random field does (a mask that cuts through bright tissue, as a brain mask cuts CSF and
    cortex)."""
    t = torch.as_tensor(img)[None, None]
    if R.uniform() < 0.5:
        smooth = _gauss(t, float(R.uniform(0.7, 3.0)))
    else:
        coarse = torch.as_tensor(R.standard_normal((1, 1, 4, 4)), dtype=torch.float32)
        smooth = F.interpolate(coarse, size=t.shape[2:], mode="bicubic", align_corners=False)
    level = float(torch.quantile(smooth.flatten(), float(R.uniform(0.1, 0.6))))
    keep = (smooth > level).to(t)
    return (t * keep)[0, 0].numpy().astype(np.float32)


def _augment(
    img: np.ndarray,
    R: np.random.RandomState,
    size: int,
    zoom_range: Sequence[float] = DEFAULT_ZOOM_RANGE,
    noise: float = 0.0,
) -> np.ndarray:
    """Orientation, zoom (field of view and pixel size, anti-aliased), affine + elastic deformation, crop, gamma,
    bias field, inversion, slight blur, percentile scaling and (``noise`` > 0) acquisition noise of one image."""
    img = np.rot90(img, int(R.randint(4)))
    if R.uniform() < 0.5:
        img = img[:, ::-1]
    t = torch.as_tensor(np.ascontiguousarray(img), dtype=torch.float32)[None, None]
    h, w = t.shape[2:]
    # zoom: the crop covers between zoom_range[0] and zoom_range[1] times what it would at the source's pixel size
    zoom = math.exp(R.uniform(math.log(zoom_range[0]), math.log(zoom_range[1])))
    out = max(size, int(round(size * zoom)))
    # crop window on the source (a little larger than needed, so rotation does not bring in padding)
    win = min(min(h, w), int(math.ceil(out * 1.45)))
    top, left = int(R.randint(0, h - win + 1)), int(R.randint(0, w - win + 1))
    t = t[..., top : top + win, left : left + win]
    # affine + elastic deformation in one resampling onto the size x size output grid
    angle = math.radians(R.uniform(-20, 20))
    shear = R.uniform(-0.1, 0.1)
    c, s = math.cos(angle), math.sin(angle)
    extent = min(1.0, out / win)  # fraction of the window the output covers
    step = extent * win / size  # source pixels per output pixel
    if step > 1.0:  # anti-aliasing: a coarser pixel integrates what a finer one resolves
        t = _gauss(t, 0.5 * math.sqrt(step**2 - 1.0))
    theta = torch.tensor([[c, -s + shear, 0.0], [s, c, 0.0]], dtype=torch.float32)
    theta[:, :2] *= extent
    grid = F.affine_grid(theta[None], (1, 1, size, size), align_corners=False)
    if R.uniform() < 0.5:  # smooth elastic displacement, up to ~2% of the field
        disp = torch.as_tensor(R.standard_normal((1, 2, 6, 6)), dtype=torch.float32) * float(R.uniform(0, 0.02))
        grid = grid + F.interpolate(disp, size=(size, size), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    mode = "bilinear"
    x = F.grid_sample(t, grid, mode=mode, padding_mode="zeros", align_corners=False)
    if R.uniform() < 0.2:
        x = _gauss(x, float(R.uniform(0.2, 0.7)))
    x = x[0, 0].clamp_min(0)
    hi = float(torch.quantile(x.flatten(), float(R.uniform(0.98, 1.0))))
    x = (x / max(hi, 1e-6)).clamp(0, 1)
    if R.uniform() < 0.7:  # gamma
        x = x ** math.exp(R.uniform(-0.5, 0.5))
    if R.uniform() < 0.5:  # smooth multiplicative bias field
        coarse = torch.as_tensor(R.standard_normal((1, 1, 3, 3)), dtype=torch.float32) * float(R.uniform(0, 0.3))
        field = torch.exp(F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False))[0, 0]
        x = x * field
        x = x / max(float(x.max()), 1e-6)
    if R.uniform() < 0.1:
        x = 1 - x
    if noise > 0 and R.uniform() < 0.5:  # synthetic acquisition noise (Gaussian, or Rician as in MR magnitude)
        sigma = float(R.uniform(0, noise))
        n = torch.as_tensor(R.standard_normal((2, size, size)), dtype=torch.float32) * sigma
        x = torch.sqrt((x + n[0]) ** 2 + n[1] ** 2) if R.uniform() < 0.5 else x + n[0]
    return x.clamp(0, 1).numpy().astype(np.float32)


class RandCorpusSliced(Randomizable, Transform):
    """MONAI transform that ignores its input item and returns ``{"image": (1, size, size)}`` drawn from a
    :class:`TrainingCorpus` (use with a ``Dataset`` of empty dicts; each epoch is then fresh data).

    Args:
        size: side of the square training image.
        corpus: a :class:`TrainingCorpus` (default: all sources, plus ``dataset_dir`` when given, loaded on first use).
        dataset_dir: your own images added to the default corpus (see :class:`TrainingCorpus`).
    """

    def __init__(self, size: int = 64, corpus: TrainingCorpus | None = None, dataset_dir: str | None = None):
        self.size = int(size)
        self._corpus = corpus
        self.dataset_dir = dataset_dir or None

    @property
    def corpus(self) -> TrainingCorpus:
        if self._corpus is None:
            self._corpus = TrainingCorpus(dataset_dir=self.dataset_dir)
        return self._corpus

    def randomize(self, data=None) -> None:
        pass

    def __call__(self, data=None) -> dict:
        out = dict(data or {})
        out["image"] = torch.as_tensor(self.corpus.draw(self.R, self.size))[None]
        return out
