"""Quick start: the committed models at work on scans they never saw, then one bundle's training, in one command.

    python -m monai_medgen.demo --output-dir outputs/quickstart            # about 10 minutes on 2 CPU cores
    python -m monai_medgen.demo --output-dir outputs/quickstart --skip-training   # the first two parts only
    python -m monai_medgen.demo --output-dir outputs/quickstart --short    # everything, tiny (CI)

1. **Restore** (committed ``cddpm_super_resolution_2d`` weights): 4x super-resolution of held-out images (the
   Colin27 brain when Debian's ``mricron-data`` is installed, pydicom's MR and CT test slices, scikit-image's retina),
   next to the best classical interpolation: ``restoration.png`` (input | best classical | ours | truth, PSNR on
   each tile) and a table.
2. **Generate** (committed ``cddpm_class_conditional_2d`` weights): brain slices of each plane, axial, coronal and
   sagittal, with classifier-free guidance: ``generation.png`` and NIfTI files marked synthetic under ``generate/``.
3. **Train** ``vdm_brain_mri_2d`` on real MNI152 brain slices with MONAI's ``SupervisedTrainer``, score it in
   bits/dim on held-out images next to lossless PNG and draw samples, through the bundle's own configs, exactly as

    B=bundles/vdm_brain_mri_2d; O=outputs/quickstart
    python -m monai.bundle run --config_file "$(python -m monai_medgen.bundle.configs $B)" --bundle_root $B \\
        --meta_file $B/configs/metadata.json --logging_file $B/configs/logging.conf \\
        --output_dir $O/runs --model_path $O/model.pt --max_epochs 10 --sample_interval 0 $Q
    python -m monai.bundle run --config_file $B/configs/evaluate.yaml --bundle_root $B \\
        --model_path $O/model.pt --output_file $O/evaluation.json $Q
    python -m monai.bundle run --config_file $B/configs/inference.yaml --bundle_root $B \\
        --model_path $O/model.pt --output_dir $O/samples --sampler dpm++ --num_steps 32 --cascade False $Q

with ``Q`` the quick recipe (:data:`QUICK_RECIPES`): the bundle's smaller, earlier network on axial slices,
``Q="--network_def#channels [16,32,64] --network_def#num_res_blocks 1 --planes ['axial'] --lr 0.002"``.

Everything is written under ``--output-dir``; the bundles' committed weights are never touched.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import yaml
from monai.bundle import run

from monai_medgen.bundle.configs import train_config_files
from monai_medgen.data import COLIN27_PATHS
from monai_medgen.tasks.figure import restoration_figure
from monai_medgen.tasks.panel import load_panel

__all__ = ["bundle_dir", "generate_demo", "main", "restore_demo", "train_demo"]


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

    files = [str(c) for c in config] if isinstance(config, list) else str(config)
    configs = bundle / "configs"
    return run(
        config_file=files,
        bundle_root=str(bundle),
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        **overrides,
    )


PLANES = ("axial", "coronal", "sagittal")  # the class-conditional bundle's demo classes 0, 1, 2
RESTORE_IMAGES = ("colin27_t1", "mr_small", "ct_small", "retina")


def restore_demo(out: Path, size: int = 160) -> list[dict]:
    """Part 1: 4x super-resolution of the held-out images present on this machine with the committed weights,
    against the best classical interpolation; writes ``out/restoration.png`` and returns the rows."""

    if load_colin27_available() is False:
        print(
            "Colin27 not found (Debian: apt-get install mricron-data): restoring pydicom's and scikit-image's images only"
        )
    results = restoration_figure(
        bundle_dir("cddpm_super_resolution_2d").parent, out / "restoration.png", "sr4", RESTORE_IMAGES, size
    )
    print(
        f"\n4x super-resolution of images never used in training ({out / 'restoration.png'}: input | best classical | "
        "ours | truth)\n"
    )
    print("| held-out image | best classical: PSNR dB / SSIM | ours, 1 sample: PSNR dB / SSIM |\n|---|---|---|")
    for r in results:
        print(
            f"| {r['image']} | {r['classical']} {r['classical_psnr']:.2f} / {r['classical_ssim']:.3f} | "
            f"{r['ours_psnr']:.2f} / {r['ours_ssim']:.3f} |"
        )
    return results


def load_colin27_available() -> bool:
    """Whether the held-out Colin27 brain (Debian's ``mricron-data``) is on this machine."""

    return any(p and Path(p).is_file() for p in COLIN27_PATHS)


def generate_demo(out: Path, num_samples: int = 4, num_steps: int = 50, device: dict | None = None) -> Path:
    """Part 2: ``num_samples`` slices of each plane from the committed class-conditional weights, through the
    bundle's ``inference.yaml``; writes ``out/generation.png`` (one row per plane) and returns its path."""
    from PIL import Image, ImageDraw

    bundle = bundle_dir("cddpm_class_conditional_2d")
    size, pad, rows = 64, 2, []  # the bundle's image_size and the grid padding of monai_medgen.handlers.make_grid
    ncols = int(np.ceil(np.sqrt(num_samples)))
    for label, plane in enumerate(PLANES):
        folder = out / "generate" / plane
        _run(
            bundle / "configs" / "inference.yaml",
            bundle,
            output_dir=str(folder),
            class_label=label,
            image_size=size,
            num_samples=num_samples,
            batch_size=num_samples,
            num_steps=num_steps,
            **(device or {}),
        )
        grid = np.asarray(Image.open(folder / "samples.png").convert("L"))
        tiles = []
        for i in range(num_samples):  # cut the samples out of the bundle's square grid and lay them in one row
            r, c = divmod(i, ncols)
            y, x = pad + r * (size + pad), pad + c * (size + pad)
            tiles += [grid[y : y + size, x : x + size], np.zeros((size, pad), np.uint8)]
        row = Image.fromarray(np.concatenate(tiles, 1)).resize(
            (2 * len(tiles) // 2 * (size + pad), 2 * size), Image.BILINEAR
        )
        strip = Image.new("L", (row.width, 14), 0)
        ImageDraw.Draw(strip).text((2, 1), f"{plane} (class {label})", fill=255)
        rows += [np.asarray(strip), np.asarray(row)]
    Image.fromarray(np.concatenate(rows, 0)).save(out / "generation.png")
    print(
        f"\ngenerated {num_samples} slices per plane ({', '.join(PLANES)}): {out / 'generation.png'} "
        f"(+ NIfTI files marked synthetic under {out / 'generate'})"
    )
    return out / "generation.png"


def _heldout_dataset(out: Path) -> str:
    """The held-out data the training demonstration is scored on: '' (Colin27) when installed, else a folder
    holding pydicom's MR test slice as NIfTI (another subject, never trained on)."""
    if load_colin27_available():
        return ""

    folder = out / "heldout"
    folder.mkdir(parents=True, exist_ok=True)
    image = load_panel(("mr_small",))["mr_small"][0, 0].numpy()
    nib.save(nib.Nifti1Image(np.ascontiguousarray(image[:, :, None]), np.eye(4)), str(folder / "mr_small.nii.gz"))
    print(
        "Colin27 not found: the trained model is scored on pydicom's MR_small slice (one 64x64 head MR of "
        "another subject) instead"
    )
    return str(folder)


# part 3 trains a bundle's smaller recipe where it has one, so that it takes minutes: vdm_brain_mri_2d's own train.yaml
# (0.4.0) trains a 32/64/128 network with two residual blocks per level on slices of three planes, about 1.4 s per
# iteration on 2 CPU cores (25 min for 1000); its earlier 16/32/64 network with one block, on axial slices, 0.4 s.
# vdm_brain_mri_3d (0.2.0) has the same 32/64/128 network in 3D, about 4 s per iteration; its earlier 16/32/64 one 0.9 s.
# Applied to all three runs of part 3; --extra overrides them (e.g. --extra network_def#channels=[32,64,128]).
QUICK_RECIPES = {
    "vdm_brain_mri_2d": {
        "network_def#channels": [16, 32, 64],
        "network_def#num_res_blocks": 1,
        "planes": ["axial"],
        "lr": 0.002,
    },
    "vdm_brain_mri_3d": {"network_def#channels": [16, 32, 64], "network_def#num_res_blocks": 1},
}


def train_demo(
    out: Path,
    bundle: Path,
    epochs: int,
    epoch_length: int,
    num_samples: int,
    sample_steps: int,
    device: dict,
    extra: dict,
) -> dict:
    """Part 3: train, evaluate and sample ``bundle`` through its own configs; returns the evaluation entries."""
    model = out / "model.pt"
    # no sample grids during training (the inference step below draws the samples); --extra sample_interval=K
    train_overrides = {"sample_interval": 0, **extra}
    t0 = time.time()
    _run(
        train_config_files(bundle),
        bundle,
        output_dir=str(out / "runs"),
        model_path=str(model),
        max_epochs=epochs,
        epoch_length=epoch_length,
        resume=False,
        **device,
        **train_overrides,
    )
    train_s = time.time() - t0
    heldout = _heldout_dataset(out)
    eval_overrides = {"dataset_dir": heldout, **extra} if heldout else extra
    _run(
        bundle / "configs" / "evaluate.yaml",
        bundle,
        model_path=str(model),
        output_file=str(out / "evaluation.json"),
        **device,
        **eval_overrides,
    )
    evaluation = {}
    if (out / "evaluation.json").is_file():  # VDM bundles write it; other bundles print their table only
        with open(out / "evaluation.json") as f:
            evaluation = json.load(f)
    _run(
        bundle / "configs" / "inference.yaml",
        bundle,
        model_path=str(model),
        output_dir=str(out / "samples"),
        num_samples=num_samples,
        sampler="dpm++",
        num_steps=sample_steps,
        cascade=False,  # samples of the model just trained, not the bundle's committed cascade (vdm_brain_mri_2d)
        **device,
        **extra,
    )
    return {
        "bundle": str(bundle),
        "iterations": epochs * epoch_length,
        "train_seconds": round(train_s, 1),
        "heldout": "colin27" if not heldout else "pydicom MR_small",
        **{k: evaluation.get(k) for k in ("bpd", "png_bpd", "diffusion", "prior", "reconstruction")},
        "samples_png": str(out / "samples" / "samples.png"),
        "model": str(model),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--bundle", default="vdm_brain_mri_2d", help="VDM bundle trained in part 3 (name under bundles/ or folder)"
    )
    p.add_argument("--epochs", type=int, default=10, help="training epochs of 100 iterations (default 10)")
    p.add_argument("--epoch-length", type=int, default=100, help="iterations per epoch (default 100)")
    p.add_argument("--output-dir", default="outputs/quickstart")
    p.add_argument("--num-samples", type=int, default=16, help="samples drawn from the model trained in part 3")
    p.add_argument("--sample-steps", type=int, default=32, help="DPM-Solver++ steps for those samples")
    p.add_argument("--skip-training", action="store_true", help="run parts 1 and 2 only (committed weights)")
    p.add_argument(
        "--short",
        action="store_true",
        help="a few seconds per part: tiny training, few samples and steps (for CI); the restoration is unchanged",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--extra",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="further config overrides for the three runs of part 3, values in YAML (e.g. batch_size=8 image_size=64)",
    )
    args = p.parse_args(argv)
    if args.epochs < 1 or args.epoch_length < 1:
        p.error(f"--epochs and --epoch-length must be >= 1, got {args.epochs} and {args.epoch_length}")
    if args.num_samples < 1 or args.sample_steps < 1:
        p.error(f"--num-samples and --sample-steps must be >= 1, got {args.num_samples} and {args.sample_steps}")
    for kv in args.extra:
        if "=" not in kv:
            p.error(f"--extra expects KEY=VALUE items, got {kv!r}")
    bundle = bundle_dir(args.bundle)
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    device = {} if args.device is None else {"device": f"$torch.device('{args.device}')"}
    extra = {
        **QUICK_RECIPES.get(bundle.name, {}),
        **{k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.extra)},
    }
    if args.short:
        args.epochs, args.epoch_length, args.num_samples, args.sample_steps = 1, 2, 2, 2
        extra = {
            "image_size": 32,
            "crop_size": 16,
            "num_slices": 2,
            "num_time_samples": 2,
            "batch_size": 2,
            "val_interval": 0,
            **extra,
        }

    t0 = time.time()
    restoration = restore_demo(out)
    generation = generate_demo(
        out, num_samples=2 if args.short else 4, num_steps=5 if args.short else 50, device=device
    )
    first_s = time.time() - t0
    print(f"\nrestoration and generation with the committed weights: {first_s:.0f} s")
    summary = {
        "restoration": restoration,
        "restoration_png": str(out / "restoration.png"),
        "generation_png": str(generation),
        "restore_generate_seconds": round(first_s, 1),
    }
    if not args.skip_training:
        print(f"\ntraining {bundle.name} ({args.epochs * args.epoch_length} iterations) ...")
        summary.update(
            train_demo(out, bundle, args.epochs, args.epoch_length, args.num_samples, args.sample_steps, device, extra)
        )
    summary["total_seconds"] = round(time.time() - t0, 1)
    with open(out / "summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    print(f"\nquick start done in {summary['total_seconds'] / 60:.1f} min; summary: {out / 'summary.json'}")
    if not args.skip_training:
        print(
            f"{bundle.name}: {summary['iterations']} iterations trained in {summary['train_seconds'] / 60:.1f} min, "
            f"{summary['bpd']:.3f} bits/dim on {summary['heldout']} (lossless PNG {summary['png_bpd']:.3f}); "
            f"samples {summary['samples_png']}"
        )
    return summary


if __name__ == "__main__":
    main()
