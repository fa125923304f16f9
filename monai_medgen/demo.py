"""Quick start: one bundle's training, evaluation and generation on the built-in demo data, in one command.

    python -m monai_medgen.demo                                   # vdm_brain_mri_2d, 10 x 100 iterations
    python -m monai_medgen.demo --epochs 15 --output-dir outputs/quickstart

It runs the bundle's own configs through MONAI's bundle runner (``monai.bundle.run``), exactly as

    B=bundles/vdm_brain_mri_2d; O=outputs/quickstart
    python -m monai.bundle run --config_file $B/configs/train.yaml --bundle_root $B \\
        --output_dir $O/runs --model_path $O/model.pt --max_epochs 10 --sample_interval 0
    python -m monai.bundle run --config_file $B/configs/evaluate.yaml --bundle_root $B \\
        --model_path $O/model.pt --output_file $O/evaluation.json
    python -m monai.bundle run --config_file $B/configs/inference.yaml --bundle_root $B \\
        --model_path $O/model.pt --output_dir $O/samples --sampler dpm++ --num_steps 32

would: the VDM trains on real MNI152 brain slices with MONAI's ``SupervisedTrainer``, is scored in bits/dim on
the held-out Colin27 brain next to lossless PNG of the same slices, and generates a sample grid, a sampling GIF
and NIfTI files marked synthetic.  Everything is written under ``--output-dir``: the bundle's committed
``models/model.pt`` is never touched.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

__all__ = ["bundle_dir", "main"]


def bundle_dir(name: str) -> Path:
    """The folder of a bundle: ``name`` itself when it is a folder with ``configs/``, else
    ``<repository>/bundles/<name>`` of this (editable) installation.

    Raises:
        FileNotFoundError: naming ``name`` and the folders searched.
    """
    given = Path(name).expanduser()
    candidates = [given, Path(__file__).resolve().parents[1] / "bundles" / name]
    for c in candidates:
        if (c / "configs" / "train.yaml").is_file():
            return c.resolve()
    raise FileNotFoundError(
        f"bundle {name!r} not found: expected a folder with configs/train.yaml at one of "
        f"{[str(c) for c in candidates]} (install monai_medgen from its repository with `pip install -e .`, "
        "or pass the bundle's folder)."
    )


def _run(config: Path | list, bundle: Path, **overrides) -> dict:
    from monai.bundle import run

    files = [str(c) for c in config] if isinstance(config, list) else str(config)
    return run(config_file=files, bundle_root=str(bundle), logging_file=str(bundle / "configs" / "logging.conf"), **overrides)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="vdm_brain_mri_2d", help="VDM bundle name under bundles/ (or its folder)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs of 100 iterations (default 10)")
    p.add_argument("--epoch-length", type=int, default=100, help="iterations per epoch (default 100)")
    p.add_argument("--output-dir", default="outputs/quickstart")
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--sample-steps", type=int, default=32, help="DPM-Solver++ steps for the generated samples")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--extra", nargs="*", default=[], metavar="KEY=VALUE",
        help="further config overrides for all three runs, values in YAML (e.g. batch_size=8 image_size=64)",
    )
    args = p.parse_args(argv)
    if args.epochs < 1 or args.epoch_length < 1:
        p.error(f"--epochs and --epoch-length must be >= 1, got {args.epochs} and {args.epoch_length}")
    for kv in args.extra:
        if "=" not in kv:
            p.error(f"--extra expects KEY=VALUE items, got {kv!r}")
    bundle = bundle_dir(args.bundle)
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    model = out / "model.pt"
    device = {} if args.device is None else {"device": f"$torch.device('{args.device}')"}
    extra = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.extra)}

    t0 = time.time()
    # no sample grids during training (the inference step below draws the samples); --extra sample_interval=K
    train_overrides = {"sample_interval": 0, **extra}
    _run(bundle / "configs" / "train.yaml", bundle, output_dir=str(out / "runs"), model_path=str(model),
         max_epochs=args.epochs, epoch_length=args.epoch_length, resume=False, **device, **train_overrides)
    train_s = time.time() - t0
    _run(bundle / "configs" / "evaluate.yaml", bundle, model_path=str(model), output_file=str(out / "evaluation.json"), **device, **extra)
    evaluation = {}
    if (out / "evaluation.json").is_file():  # VDM bundles write it; other bundles print their table only
        with open(out / "evaluation.json") as f:
            evaluation = json.load(f)
    _run(bundle / "configs" / "inference.yaml", bundle, model_path=str(model), output_dir=str(out / "samples"),
         num_samples=args.num_samples, sampler="dpm++", num_steps=args.sample_steps, **device, **extra)
    total_s = time.time() - t0

    summary = {
        "bundle": str(bundle), "iterations": args.epochs * args.epoch_length, "train_seconds": round(train_s, 1),
        "total_seconds": round(total_s, 1), **{k: evaluation.get(k) for k in ("bpd", "png_bpd", "diffusion", "prior", "reconstruction")},
        "samples_png": str(out / "samples" / "samples.png"), "model": str(model),
    }
    with open(out / "summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    print(f"\nquick start done in {total_s / 60:.1f} min ({summary['iterations']} iterations trained in {train_s / 60:.1f} min)")
    print(f"samples: {summary['samples_png']} (+ sampling.gif and NIfTI files marked synthetic)")
    print(f"model: {model}; summary: {out / 'summary.json'}")
    return summary


if __name__ == "__main__":
    main()
