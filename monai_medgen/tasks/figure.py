"""Side-by-side restoration figures: input | best classical method | ours (one sample) | truth, one row per image,
each tile labelled with its PSNR, written as one PNG.  Used by the quick start (``python -m monai_medgen.demo``)
and ``scripts/restoration_figure.py``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from monai_medgen.metrics import ssim
from monai_medgen.tasks.baselines import denoising_parameters
from monai_medgen.tasks.evaluation import BUNDLES, SCENARIOS, baselines, degrade, psnr_db
from monai_medgen.tasks.loading import load_restoration_bundle
from monai_medgen.tasks.panel import load_panel, tuning_image
from monai_medgen.tasks.sampling import ResidualRestorer

__all__ = ["COLUMNS", "restoration_figure"]

COLUMNS = ("input", "best classical", "ours (1 sample)", "truth")
_LABEL_HEIGHT = 14


def _tile(image: torch.Tensor, size: int, label: str) -> np.ndarray:
    """``image`` (1, 1, H, W) in [0, 1] resized to ``size`` x ``size`` under a strip holding ``label``."""
    pixels = F.interpolate(image.clamp(0, 1).float(), size=(size, size), mode="bilinear", align_corners=False)
    tile = Image.new("L", (size, size + _LABEL_HEIGHT), 0)
    tile.paste(Image.fromarray((pixels[0, 0].numpy() * 255).round().astype(np.uint8)), (0, _LABEL_HEIGHT))
    ImageDraw.Draw(tile).text((2, 1), label, fill=255)
    return np.asarray(tile)


def restoration_figure(
    bundles_root: str | Path,
    output: str | Path,
    scenario: str = "sr4",
    images: Sequence[str] = ("colin27_t1", "macaque_t1", "ct_small", "retina"),
    size: int = 160,
) -> list[dict]:
    """Degrade each panel image (:mod:`monai_medgen.tasks.panel`) by ``scenario``, restore it with the committed
    weights of the family's bundle under ``bundles_root`` and with every classical baseline, and write the figure.

    Args:
        bundles_root: the folder holding the bundles (``<repository>/bundles``).
        output: PNG path of the figure (parent folders are created).
        scenario: a key of :data:`monai_medgen.tasks.evaluation.SCENARIOS` (``sr4``, ``denoise_gsp``, ...).
        images: panel image names; the images never took part in training or tuning.
        size: side of each tile in pixels.

    Returns:
        one dict per image: ``image``, ``input_psnr``, ``classical`` (best baseline's name), ``classical_psnr``,
        ``classical_ssim``, ``ours_psnr``, ``ours_ssim`` (PSNR inside the mask for inpainting).

    Raises:
        ValueError: for an unknown ``scenario`` or a ``size`` below 32.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {sorted(SCENARIOS)}, got {scenario!r}.")
    if int(size) < 32:
        raise ValueError(f"size must be >= 32 pixels, got {size}.")
    family = SCENARIOS[scenario]
    bundle = load_restoration_bundle(Path(bundles_root) / BUNDLES[family])
    restorer = ResidualRestorer(bundle.inferer, bundle.network, family, bundle.num_steps, bundle.start_time)
    params = {}
    if family == "denoise":  # classical parameters tuned on the MNI152 slice, never on a shown image
        tuning = tuning_image()
        measured, extra = degrade(scenario, tuning, seed=7)
        params = denoising_parameters(extra["sigma"], extra["sp"], (measured, tuning))
    rows, results = [], []
    for i, (name, truth) in enumerate(load_panel(tuple(images)).items()):
        measured, extra = degrade(scenario, truth, seed=100 + i)
        mask = extra.get("mask")
        classical = baselines(scenario, measured, extra, truth.shape[2:], params)
        best_name, (best, _) = max(classical.items(), key=lambda kv: psnr_db(kv[1][0], truth, mask))
        project = (lambda x, e=extra: e["op"].project(x, e["low"])) if scenario == "sr4" else None
        with torch.no_grad():
            ours, _ = restorer(
                measured, project=project, mask=mask, generator=torch.Generator().manual_seed(i), value_range=(0.0, 1.0)
            )
        shown = F.interpolate(extra["low"], size=truth.shape[2:], mode="nearest") if scenario == "sr4" else measured
        result = {
            "image": name,
            "input_psnr": psnr_db(shown, truth, mask),
            "classical": best_name,
            "classical_psnr": psnr_db(best, truth, mask),
            "classical_ssim": float(ssim(best, truth).mean()),
            "ours_psnr": psnr_db(ours, truth, mask),
            "ours_ssim": float(ssim(ours, truth).mean()),
        }
        results.append(result)
        labels = [
            f"input {result['input_psnr']:.2f} dB",
            f"{best_name.replace('switching median', 'sw-median')} {result['classical_psnr']:.2f} dB",  # fits the strip
            f"ours {result['ours_psnr']:.2f} dB",
            f"truth: {name}",
        ]
        rows.append(np.concatenate([_tile(t, int(size), lab) for t, lab in zip((shown, best, ours, truth), labels)], 1))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, 0)).save(output)
    return results
