"""Samples of the 2D VDM bundle against its training slices: Frechet distance on features of a network this
project trains itself, and nearest-neighbour SSIM, each beside the same figure for real held-out Colin27 slices
(:mod:`monai_medgen.realism`).

    PYTHONPATH=. python scripts/sample_realism.py                        # table to stdout and the markdown report
    PYTHONPATH=. python scripts/sample_realism.py --num-steps 64 --output /tmp/r.md

- training set: the MNI152 2009a axial slices the bundle trains on (nilearn, 128 x 128, every slice with brain);
- real held-out: every Colin27 axial slice with brain (``ch2bet.nii.gz``, Debian ``mricron-data``), prepared alike;
- samples: as many whole 128 x 128 slices from the bundle as ``monai-medgen generate`` draws them: by default its
  cascade (whole 32 x 32 slices from its coarse model, ``--num-steps`` steps, then 4x super-resolution by
  ``cddpm_super_resolution_2d``); ``--no-cascade``: the texture model (trained on 64 x 64 crops) at 128 x 128;
- features: :class:`monai_medgen.realism.SliceFeatureNet` trained here on the MNI152 slices of all three planes
  (plane and relative position, augmented), never on Colin27 or on samples.

Acceptance of the generation issue: the Frechet distance of samples to the training set no larger than that of the
real Colin27 slices, and the median nearest-neighbour SSIM of samples below that of the real held-out slices.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def brain_slices(source: str, planes=("axial",)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, 1, 128, 128) slices in [0, 1], their plane index and relative position along the plane's axis."""
    from monai_medgen.data import demo_slices

    items = demo_slices(source, size=128, planes=planes)
    x = torch.as_tensor(np.stack([it["image"] for it in items]), dtype=torch.float32)
    plane = torch.as_tensor([it["label"] for it in items])
    index = np.array([it["slice"] for it in items], dtype=np.float64)
    pos = np.zeros_like(index)
    for p in set(plane.tolist()):
        sel = plane.numpy() == p
        pos[sel] = (index[sel] - index[sel].min()) / max(np.ptp(index[sel]), 1)
    return x, plane, torch.as_tensor(pos, dtype=torch.float32)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=str(REPO / "bundles" / "vdm_brain_mri_2d"))
    p.add_argument("--num-steps", type=int, default=None, help="sampling steps (default: the bundle's num_steps)")
    p.add_argument("--feature-iterations", type=int, default=800)
    p.add_argument("--no-cascade", action="store_true", help="sample the texture model directly at 128 x 128")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=str(REPO / "docs" / "benchmarks" / "sample_realism.md"))
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from monai_medgen.pipelines import GenerateOptions, generate, load_bundle
    from monai_medgen.realism import frechet_distance, nearest_neighbour_ssim, train_slice_features

    t0 = time.time()
    torch.manual_seed(args.seed)
    all_x, all_plane, all_pos = brain_slices("mni152", ("axial", "coronal", "sagittal"))
    train = all_x[all_plane == 0]
    colin, _, _ = brain_slices("colin27")
    features = train_slice_features(all_x, all_plane, all_pos, iterations=args.feature_iterations, seed=args.seed)
    t_feat = time.time() - t0

    bundle = load_bundle(args.bundle, "cpu", kind="vdm", purpose="sampling")
    if args.no_cascade:
        bundle.parser["cascade"] = False
    steps = int(args.num_steps or bundle.get("num_steps", 256))
    sampler = str(bundle.get("sampler", "ancestral"))
    options = GenerateOptions(num_samples=len(colin), num_steps=steps, seed=args.seed, batch_size=32, image_size=128)
    generated = generate(bundle, options, verbose=False)
    samples = generated.images
    how = generated.provenance.extra.get("cascade", "the texture model at 128 x 128")
    t_sample = time.time() - t0 - t_feat

    f_train = features(train)
    rows = []
    for name, x in (("real held-out Colin27 slices", colin), (f"samples ({steps} {sampler} steps; {how})", samples)):
        fx = features(x)
        nn = nearest_neighbour_ssim(x, train)
        rows.append((name, len(x), frechet_distance(fx, f_train), float(np.median(nn)), float(np.max(nn))))
    seconds = time.time() - t0
    fd_real, fd_gen = rows[0][2], rows[1][2]
    nn_real, nn_gen = rows[0][3], rows[1][3]
    lines = [
        "# Samples of `vdm_brain_mri_2d` against its training slices: Frechet distance and nearest-neighbour SSIM",
        "",
        f"Command (this 2-core CPU, {time.strftime('%Y-%m-%d')}, {seconds / 60:.1f} min: features "
        f"{t_feat:.0f} s, sampling {t_sample:.0f} s):",
        "",
        "```bash",
        "PYTHONPATH=. python scripts/sample_realism.py"
        + (f" --num-steps {args.num_steps}" if args.num_steps else "")
        + (" --no-cascade" if args.no_cascade else ""),
        "```",
        "",
        f"Training set: the {len(train)} MNI152 axial slices the bundle trains on. Features: "
        "`monai_medgen.realism.SliceFeatureNet`, a network this project trains here (not Inception) on the "
        f"{len(all_x)} MNI152 slices of all three planes to tell plane and position, {args.feature_iterations} "
        "iterations, seed "
        f"{args.seed}; 64 pooled features. Nearest-neighbour SSIM: the highest SSIM of each image to any training slice.",
        "",
        "| images | N | Frechet distance to the training set | median nearest-neighbour SSIM | max |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r[0]} | {r[1]} | {r[2]:.3g} | {r[3]:.3f} | {r[4]:.3f} |" for r in rows]
    fd_ok = fd_gen <= fd_real
    nn_ok = nn_gen < nn_real
    lines += [
        "",
        f"- Frechet distance: samples {fd_gen:.3g} against real held-out {fd_real:.3g}: "
        + ("**met** (no farther than real slices of another brain)." if fd_ok else "**not met**."),
        f"- Nearest-neighbour SSIM: samples' median {nn_gen:.3f} against real held-out {nn_real:.3f}: "
        + (
            "**met** (no sign of copies)."
            if nn_ok
            else "**not met** (samples nearer the training slices than real ones)."
        ),
    ]
    if nn_ok and not fd_ok:
        lines.append(
            "  Read together with the Frechet distance: samples far from every training slice are not copies, but "
            "here they are also far from real slices (the distance above), so the low similarity says as much "
            "about missing anatomy as about originality."
        )
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
