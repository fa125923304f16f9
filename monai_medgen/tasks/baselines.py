"""The strongest classical baselines of each restoration family (REFERENCE section 7), each with its parameter
tuned on a different image than the one scored (:func:`monai_medgen.tasks.panel.tuning_image`).

All functions take (1, 1, H, W) tensors in [0, 1] units and return ``{name: (output, seconds)}``: the output in [0, 1]
and the seconds its computation took (parameter tuning excluded).  Optional packages: ``bm3d`` (BM3D),
``opencv-python-headless`` (Telea's fast marching), ``scikit-image`` (TV, NLM, biharmonic); a missing one
removes its baseline with a note instead of failing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from monai_medgen.tasks.operators import median3, switching_median

__all__ = ["denoising_baselines", "denoising_parameters", "inpainting_baselines", "sr_baselines", "tune"]

BM3D_SCALES = (0.5, 0.7, 0.85, 1.0, 1.2, 1.5)  # multiples of the given noise level
TV_WEIGHTS = (0.02, 0.05, 0.08, 0.12, 0.18, 0.25, 0.35)
NLM_H = (0.5, 0.7, 0.85, 1.0, 1.2)  # multiples of the given noise level


def _np(x: torch.Tensor) -> np.ndarray:
    return x[0, 0].double().numpy()


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.array(a, dtype=np.float32))[None, None].clamp(0, 1)  # a copy: PIL arrays are read-only


def psnr_db(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / ((x - y) ** 2).mean().clamp_min(1e-12)))


def _timed(fn, *args) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def tune(
    method: Callable[[torch.Tensor, float], torch.Tensor],
    grid: Sequence[float],
    degraded: torch.Tensor,
    truth: torch.Tensor,
) -> float:
    """The value of ``grid`` with the best PSNR of ``method(degraded, value)`` against ``truth``."""
    return grid[int(np.argmax([psnr_db(method(degraded, v), truth) for v in grid]))]


# ---- super-resolution ------------------------------------------------------------------------------
def _lanczos(low: torch.Tensor, shape) -> torch.Tensor:
    from PIL import Image

    img = Image.fromarray(low[0, 0].float().numpy(), mode="F")
    return _t(np.asarray(img.resize((int(shape[1]), int(shape[0])), Image.Resampling.LANCZOS)))


def sr_baselines(low: torch.Tensor, shape) -> dict[str, torch.Tensor]:
    """Bicubic and Lanczos-3 interpolation of the low-resolution image onto ``shape``."""
    return {
        "bicubic": _timed(
            lambda: F.interpolate(low, size=tuple(shape), mode="bicubic", align_corners=False).clamp(0, 1)
        ),
        "lanczos": _timed(_lanczos, low, shape),
    }


# ---- denoising -------------------------------------------------------------------------------------
def _bm3d(x: torch.Tensor, sigma: float) -> torch.Tensor:
    import bm3d

    return _t(bm3d.bm3d(_np(x), sigma_psd=max(float(sigma), 1e-4)))


def _tv(x: torch.Tensor, weight: float) -> torch.Tensor:
    from skimage.restoration import denoise_tv_chambolle

    return _t(denoise_tv_chambolle(_np(x), weight=weight))


def _nlm(x: torch.Tensor, h: float, sigma: float) -> torch.Tensor:
    from skimage.restoration import denoise_nl_means

    return _t(denoise_nl_means(_np(x), h=h, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True))


# salt-and-pepper is removed before the Gaussian denoiser: by a 3x3 median of every voxel, or by a switching
# median of the impulses alone (the voxels at the ends of the range that differ from their median), which keeps
# every other voxel and is much the stronger of the two; both are offered, and the panel's best baseline is the
# better of them per image
IMPULSE_PREFILTERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "median3": median3,
    "switching median": switching_median,
}


def _denoisers(sigma: float) -> dict[str, tuple[Callable[[torch.Tensor, float], torch.Tensor], Sequence[float]]]:
    """``{name: (fn(image, parameter), grid)}`` of the Gaussian denoisers, the noise level given."""
    out = {
        "NLM": (lambda a, v: _nlm(a, v * sigma, sigma), NLM_H),
        "TV": (_tv, TV_WEIGHTS),
    }
    try:
        import bm3d  # noqa: F401

        out["BM3D"] = (lambda a, v: _bm3d(a, v * sigma), BM3D_SCALES)
    except ImportError:
        pass
    return out


def _methods(salt_pepper: bool) -> list[tuple[str, str | None]]:
    """``(prefix of the method name, prefilter)`` pairs: the impulse prefilters, or none for noise without impulses."""
    return [(f"{p} + ", p) for p in IMPULSE_PREFILTERS] if salt_pepper else [("", None)]


def denoising_parameters(
    sigma: float, salt_pepper: bool, tuning: tuple[torch.Tensor, torch.Tensor]
) -> dict[str, float]:
    """``{method: parameter}``: each denoiser (BM3D, NLM, TV), after each impulse prefilter when the noise has
    impulses (``"median3 + BM3D"``, ``"switching median + BM3D"``, ...), its parameter tuned on ``tuning`` =
    (noisy, clean) of another image with the same noise."""
    params = {}
    for prefix, pre in _methods(salt_pepper):
        tune_in = IMPULSE_PREFILTERS[pre](tuning[0]) if pre else tuning[0]
        for name, (fn, grid) in _denoisers(sigma).items():
            params[prefix + name] = tune(fn, grid, tune_in, tuning[1])
    return params


def denoising_baselines(noisy: torch.Tensor, sigma: float, salt_pepper: bool, params: dict[str, float]) -> dict:
    """``{name: (output, seconds)}`` of the methods ``params`` names (:func:`denoising_parameters`), each with the
    noise level given; an impulse prefilter's time is counted in its method's."""
    denoisers = _denoisers(sigma)
    out = {}
    for prefix, pre in _methods(salt_pepper):
        for name, (fn, _) in denoisers.items():
            if prefix + name not in params:
                continue

            def run(x, fn=fn, pre=pre, v=params[prefix + name]):
                return fn(IMPULSE_PREFILTERS[pre](x) if pre else x, v)

            out[prefix + name] = _timed(run, noisy)
    return out


# ---- inpainting ------------------------------------------------------------------------------------
def inpainting_baselines(masked: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Biharmonic (scikit-image), Telea's fast marching and the Navier-Stokes method (Bertalmio et al.; both
    OpenCV, radius 5); known pixels kept."""
    from skimage.restoration import inpaint_biharmonic

    hole = _np(mask) > 0.5
    keep = mask < 0.5
    out = {"biharmonic": _timed(lambda: torch.where(keep, masked, _t(inpaint_biharmonic(_np(masked), hole))))}
    try:
        import cv2

        def opencv(method):
            # OpenCV's float32 path returns noise inside the hole (Telea, opencv-python 4.x / 5.0, measured: mean
            # absolute error 0.86 on a smooth [0, 1] image against 0.028 for 16-bit input); the image is therefore
            # quantised to 16 bits (step 1.5e-5) and filled there
            image16 = np.round(np.clip(_np(masked), 0.0, 1.0) * 65535.0).astype(np.uint16)
            filled = cv2.inpaint(image16, hole.astype(np.uint8), 5, method) / 65535.0
            return torch.where(keep, masked, _t(filled))

        out["telea"] = _timed(opencv, cv2.INPAINT_TELEA)
        out["navier-stokes"] = _timed(opencv, cv2.INPAINT_NS)
    except ImportError:
        pass
    return out
