"""CPU time of one restoration sample against BM3D on the same 256 x 256 image, one thread, model loading excluded.

The acceptance line of the restoration issue: "a 256x256 slice restored at that quality in no more CPU time than
BM3D needs for it".  For each scenario the panel's 256 x 256 retina (never trained on) is degraded as in
``scripts/evaluate_restoration.py``; the bundle restores it with its own sampler settings (one sample, after the
denoising bundle's test-time adaptation when it is on) and the
reference, BM3D, runs on the same 256 x 256 input (after a switching median with impulses; at 0.85 x sigma, the panel's tuned
scale; for SR on the bicubic-upsampled input with sigma 0.05, i.e. the time BM3D needs for a 256 x 256 slice).  CPU time is ``time.process_time`` of this process (all its threads), wall
time beside it; the median of ``--repeats`` runs after one warm-up.

    OMP_NUM_THREADS=1 python scripts/restoration_cpu_time.py
    OMP_NUM_THREADS=1 python scripts/restoration_cpu_time.py --scenarios denoise_gsp --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from monai_medgen.tasks.baselines import denoising_baselines
from monai_medgen.tasks.evaluation import BUNDLES, SCENARIOS, degrade
from monai_medgen.tasks.loading import load_restoration_bundle
from monai_medgen.tasks.panel import load_panel
from monai_medgen.tasks.sampling import ResidualRestorer

ROOT = Path(__file__).resolve().parents[1]
TIMED = ("sr4", "denoise_gsp", "denoise_rician", "inpaint_box")


def _timed(fn, repeats: int) -> tuple[float, float]:
    """(median CPU seconds, median wall seconds) of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return statistics.median(cpu), statistics.median(wall)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", nargs="+", default=list(TIMED), choices=list(TIMED))
    p.add_argument("--image", default="retina", help="panel image (256 x 256 for the retina)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bundles-dir", default=str(ROOT / "bundles"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    truth = load_panel([args.image])[args.image]
    print(f"image: {args.image} {tuple(truth.shape[2:])}; torch threads: {torch.get_num_threads()}\n")
    print(
        "| scenario | bundle | model: 1 sample CPU s (wall s) | NFE | classical | classical CPU s (wall s) | model / classical CPU |"
    )
    print("|---|---|---|---|---|---|---|")
    for scenario in args.scenarios:
        family = SCENARIOS[scenario]
        bundle = load_restoration_bundle(Path(args.bundles_dir) / BUNDLES[family])
        measured, extra = degrade(scenario, truth, seed=100)
        restorer = ResidualRestorer(
            bundle.inferer, bundle.network, family, num_steps=bundle.num_steps, start_time=bundle.start_time
        )
        project = (lambda x, e=extra: e["op"].project(x, e["low"])) if scenario == "sr4" else None

        def model(restorer=restorer, measured=measured, project=project, mask=extra.get("mask")):
            restorer(
                measured, project=project, mask=mask, generator=torch.Generator().manual_seed(0), value_range=(0.0, 1.0)
            )

        name = ("switching median + " if extra.get("sp") else "") + "BM3D"

        def classical(x=measured, e=extra, name=name):
            denoising_baselines(x, e.get("sigma", 0.05), bool(e.get("sp")), {name: 0.85})

        # a denoising bundle's test-time adaptation (adapt_steps) is part of its restoration: two samples per step
        nfe = bundle.num_steps * (1 + 2 * restorer.adapt_steps)
        m_cpu, m_wall = _timed(model, args.repeats)
        c_cpu, c_wall = _timed(classical, args.repeats)
        print(
            f"| {scenario} | {bundle.name} | {m_cpu:.2f} ({m_wall:.2f}) | {nfe} | {name} "
            f"| {c_cpu:.2f} ({c_wall:.2f}) | {m_cpu / max(c_cpu, 1e-9):.2f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
