"""Restore a radiograph-sized 2D image (2000 x 2000) through the command-line path and report time and peak memory.

The image is scikit-image's retina photograph (green channel, a real image never trained on) resized to the size
asked, in 12-bit units (0..4095) with Gaussian noise of 3% of the range, clipped to the range as a detector's counts
are; the denoising bundle restores it with ``restoration.restore_image`` (tiles of 256 x 256 above 512 pixels a side).
Clipped noise is not zero-mean, so the bundle's test-time adaptation leaves such an image alone; ``--signed`` shifts
the units to -2048..2047 (as CT numbers are signed) and leaves the noise unclipped, so the adaptation runs (its
decision is logged).

    python scripts/large_image_restoration.py --size 2000
    python scripts/large_image_restoration.py --size 2000 --signed
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor

from monai_medgen.restoration import restore_image
from monai_medgen.tasks.loading import load_restoration_bundle

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=2000)
    p.add_argument("--bundle", default=str(ROOT / "bundles" / "cddpm_denoising_2d"))
    p.add_argument("--signed", action="store_true", help="units -2048..2047, noise not clipped (the adaptation runs)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("monai_medgen.tasks.adaptation").setLevel(logging.INFO)
    import skimage.data

    bundle = load_restoration_bundle(args.bundle)
    g = torch.as_tensor(skimage.data.retina()[..., 1].astype(np.float32))[None, None]
    img = F.interpolate(g, size=(args.size, args.size), mode="bilinear", align_corners=False)[0] / 255 * 4095
    noisy = img + 0.03 * 4095 * torch.randn(img.shape, generator=torch.Generator().manual_seed(0))
    if args.signed:
        img, noisy = img - 2048, noisy - 2048
    else:
        noisy = noisy.clamp(0, 4095)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    out, _ = restore_image(bundle.network, bundle.inferer, bundle.family, MetaTensor(noisy), num_steps=bundle.num_steps)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rmse_in = float(((noisy - img) ** 2).mean().sqrt())
    rmse_out = float(((out.as_tensor() - img) ** 2).mean().sqrt())
    print(
        "| image | tiles | seconds | peak resident memory (MB) | RMSE input | RMSE output | output range |\n|---|---|---|---|---|---|---|"
    )
    print(
        f"| {args.size} x {args.size}, 12-bit {'signed ' if args.signed else ''}units | {bundle.inferer.tile_size} px | {seconds:.0f} | {peak:.0f} (before: {before:.0f}) | "
        f"{rmse_in:.1f} | {rmse_out:.1f} | {float(out.min()):.0f}..{float(out.max()):.0f} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
