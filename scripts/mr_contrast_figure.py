"""Figure of the MR-contrast bundle: per contrast (rows T1, T2, PD, FLAIR) the simulated truth of a held-out slice,
its translation from the T1 source (or from T2 for the T1 row), and generated samples without a source, magnitudes.

    python scripts/mr_contrast_figure.py --output bundles/cddpm_mr_contrast_2d/docs/contrasts.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from PIL import Image

import monai_medgen  # noqa: F401  (the config names its classes)
from monai_medgen.bundle import load_model
from monai_medgen.tasks.contrasts import (
    CONTRASTS,
    contrast_image,
    contrast_slices,
    sample_contrasts,
    translate_contrast,
)

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=str(ROOT / "bundles" / "cddpm_mr_contrast_2d"))
    p.add_argument("--output", required=True)
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--steps", type=int, default=25)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    parser = ConfigParser()
    parser.read_config(str(Path(args.bundle) / "configs" / "inference.yaml"))
    parser["bundle_root"] = args.bundle
    parser["device"] = "$torch.device('cpu')"
    net = parser.get_parsed_content("network_def")
    load_model(str(Path(args.bundle) / "models" / "model.pt"), net)
    net.eval()
    inferer = parser.get_parsed_content("inferer")
    maps = contrast_slices("held_out", 64)[12]
    zero = torch.zeros(64, 64)
    rows = []
    for c, name in enumerate(CONTRASTS):
        truth = contrast_image(maps, name, zero)[None]
        src_name = "t2" if name == "t1" else "t1"
        moved = translate_contrast(net, inferer, contrast_image(maps, src_name, zero)[None], name, args.steps)
        labels = torch.full((args.samples,), c, dtype=torch.long)
        gen = sample_contrasts(
            net, inferer, labels, None, 64, args.steps, "dpm++", args.guidance, torch.Generator().manual_seed(c)
        )
        tiles = torch.cat([truth, moved, gen])
        mag = torch.linalg.vector_norm(tiles, dim=1).clamp(0, 1)  # (n, 64, 64)
        rows.append(torch.cat(list(mag), 1))
    img = (torch.cat(rows, 0).numpy() * 255).astype(np.uint8)
    Image.fromarray(img).resize((img.shape[1] * 2, img.shape[0] * 2), Image.NEAREST).save(args.output)
    print(
        f"rows {', '.join(CONTRASTS)}; columns: simulated truth, translated from T1 (T2 for the T1 row), "
        f"{args.samples} samples (guidance {args.guidance:g}, {args.steps} DPM-Solver++ steps) -> {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
