"""Figure of a restoration bundle on unseen panel images: input | best classical | ours (1 sample) | truth, PSNR in
the file's caption table printed to stdout.

    python scripts/restoration_figure.py --scenario sr4 --images colin27_t1 macaque_t1 ct_small retina \
        --output docs/benchmarks/restoration_sr4.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from monai_medgen.tasks.evaluation import SCENARIOS
from monai_medgen.tasks.figure import COLUMNS, restoration_figure

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default="sr4", choices=list(SCENARIOS))
    p.add_argument("--images", nargs="+", default=["colin27_t1", "macaque_t1", "ct_small", "retina"])
    p.add_argument("--size", type=int, default=160, help="tile side in the figure")
    p.add_argument("--output", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    results = restoration_figure(ROOT / "bundles", args.output, args.scenario, args.images, args.size)
    print(f"{args.output}: columns {' | '.join(COLUMNS)}; PSNR (dB) / SSIM:\n")
    print("| image | input | best classical | ours (1 sample) |\n|---|---|---|---|")
    for r in results:
        print(
            f"| {r['image']} | {r['input_psnr']:.2f} | {r['classical']} {r['classical_psnr']:.2f} / {r['classical_ssim']:.3f} | "
            f"{r['ours_psnr']:.2f} / {r['ours_ssim']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
