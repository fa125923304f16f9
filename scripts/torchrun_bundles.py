"""Multi-process training of every bundle: ``torchrun --nproc_per_node 2`` (gloo on the CPU, NCCL where CUDA is
present) of each train config merged with the bundle's ``train_multigpu.yaml``, with validation on and off.

Each run is a few iterations on tiny crops into a scratch bundle root (nothing in ``bundles/`` is written); the
table gives its exit status, wall-clock seconds, the trained iteration count read back from ``models/``, whether
held-out validation ran, and the last log line on a failure::

    python scripts/torchrun_bundles.py                       # all bundles, validation on and off
    python scripts/torchrun_bundles.py --bundles cddpm_denoising_2d --nproc 2

Exit status 1 if any run fails. ``tests/test_distributed.py`` checks two bundles in depth (the network gets
log-SNR levels, the held-out set is split over the processes); this script covers the rest.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from monai_medgen.bundle import read_model_info, torchrun_command
from monai_medgen.bundle.configs import train_config_files

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"

_RESTORATION = {
    "max_epochs": 1,
    "epoch_length": 2,
    "crop_size": 16,
    "batch_size": 2,
    "num_val_slices": 3,
    "val_steps": 2,
    "log_every": 1,
    "sample_interval": 0,
}
# (bundle, train config, tiny overrides, the override that switches validation, the log word of validation)
CASES = [
    ("cddpm_super_resolution_2d", "train.yaml", _RESTORATION, "val_interval", "val_psnr"),
    ("cddpm_denoising_2d", "train.yaml", _RESTORATION, "val_interval", "val_psnr"),
    ("cddpm_inpainting_2d", "train.yaml", _RESTORATION, "val_interval", "val_psnr"),
    (
        "cddpm_super_resolution_3d",
        "train.yaml",
        {**_RESTORATION, "crop_size": 16, "num_val_slices": 2},
        "val_interval",
        "val_psnr",
    ),
    (
        "cddpm_class_conditional_2d",
        "train.yaml",
        {
            "max_epochs": 1,
            "epoch_length": 2,
            "image_size": 16,
            "batch_size": 2,
            "samples_per_class": 1,
            "grid_sample_steps": 2,
            "log_every": 1,
        },
        "sample_interval",
        "samples_epoch_1",
    ),
    (
        "vdm_brain_mri_2d",
        "train.yaml",
        {
            "max_epochs": 1,
            "epoch_length": 2,
            "image_size": 32,
            "crop_size": 16,
            "batch_size": 2,
            "num_val_slices": 3,
            "val_batch_size": 2,
            "log_every": 1,
            "sample_interval": 0,
        },
        "val_interval",
        "val_bpd",
    ),
    (
        "vdm_brain_mri_3d",
        "train.yaml",
        {
            "max_epochs": 1,
            "epoch_length": 2,
            "image_size": 16,
            "crop_size": 8,
            "batch_size": 1,
            "log_every": 1,
            "sample_interval": 0,
        },
        "val_interval",
        "val_bpd",
    ),
    (
        "vdm_latent_brain_mri_3d",
        "train_autoencoder.yaml",
        {"max_epochs": 1, "epoch_length": 2, "image_size": "[32,32,32]", "crop_size": 16, "log_every": 1},
        "val_interval",
        "val_psnr",
    ),
    (
        "vdm_latent_brain_mri_3d",
        "train.yaml",
        {
            "max_epochs": 1,
            "epoch_length": 2,
            "image_size": "[32,32,32]",
            "shifts": "[0]",
            "batch_size": 1,
            "log_every": 1,
            "sample_interval": 0,
        },
        "val_interval",
        "val_latent_bpd",
    ),
]


def run_case(
    bundle: str,
    config: str,
    overrides: dict,
    switch: str,
    word: str,
    validation: bool,
    nproc: int,
    scratch: Path,
    timeout: float,
) -> dict:
    src = BUNDLES / bundle
    root = scratch / f"{bundle}_{Path(config).stem}_{'on' if validation else 'off'}"
    (root / "models").mkdir(parents=True, exist_ok=True)
    for extra in (src / "models").glob("autoencoder*"):  # stage 2 of the latent VDM: stage 1's weights and sidecars
        (root / "models" / extra.name).write_bytes(extra.read_bytes())
    configs = train_config_files(src, ["train_multigpu.yaml"], config)
    cmd = torchrun_command(
        configs,
        root,
        src / "configs" / "logging.conf",
        nproc,
        {**overrides, switch: 1 if validation else 0},
        meta_file=src / "configs" / "metadata.json",
    )
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=str(scratch), env=env, capture_output=True, text=True, timeout=timeout)
        rc, log = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, log = (
            124,
            (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else str(e.stdout or ""),
        )
    seconds = time.perf_counter() - t0
    seen = word in log or any(word in p.name for p in root.rglob("*"))
    iteration = ""
    weights = root / "models" / ("autoencoder.pt" if config == "train_autoencoder.yaml" else "model.pt")
    if rc == 0 and weights.is_file():
        iteration = str(read_model_info(weights).get("iteration", ""))
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    last = (errors or lines or [""])[-1] if rc else ""
    return {
        "bundle": bundle,
        "config": config,
        "validation": "on" if validation else "off",
        "rc": rc,
        "seconds": seconds,
        "iteration": iteration,
        "validation_seen": seen,
        "last": last[-160:],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", nargs="*", default=None, help="bundle names (default: all)")
    parser.add_argument("--nproc", type=int, default=2, help="processes per run (default 2)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run (default 600)")
    args = parser.parse_args(argv)
    if args.nproc < 1:
        parser.error(f"--nproc must be a positive integer, got {args.nproc}.")
    cases = [c for c in CASES if args.bundles is None or c[0] in args.bundles]
    if not cases:
        parser.error(f"--bundles: none of {args.bundles} is one of {sorted({c[0] for c in CASES})}.")
    rows = []
    with tempfile.TemporaryDirectory(prefix="torchrun_bundles_") as scratch:
        for bundle, config, overrides, switch, word in cases:
            for validation in (True, False):
                row = run_case(
                    bundle, config, overrides, switch, word, validation, args.nproc, Path(scratch), args.timeout
                )
                rows.append(row)
                print(
                    f"{bundle} {config} validation {row['validation']}: rc {row['rc']} in {row['seconds']:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
    print(f"\n`torchrun --nproc_per_node {args.nproc}` (backend gloo without CUDA), validation on and off\n")
    print("| bundle | config | validation | exit | seconds | iterations | validation ran | last line on failure |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['bundle']} | {r['config']} | {r['validation']} | {r['rc']} | {r['seconds']:.0f} | {r['iteration']} | "
            f"{'yes' if r['validation_seen'] else 'no'} | {r['last']} |"
        )
    failed = [r for r in rows if r["rc"] != 0]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} runs exited 0.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
