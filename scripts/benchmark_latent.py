"""Latent against pixel-space sampling of a whole 1 mm brain volume: time and peak memory, side by side in one run.

Each measurement runs in a fresh Python process (so each peak resident memory is its own):

- latent: the ``vdm_latent_brain_mri_3d`` bundle (its committed weights; random weights with ``--untrained``) samples
  one 160 x 192 x 160 volume: the score network on 3 x 40 x 48 x 40 latents for ``--num-steps`` steps, then one
  decoding; its time per network evaluation is the median of ``--repeats`` timed forwards;
- pixel: the same score network design (``ScoreUNet``, channels 16/32/64) on the 1 x 160 x 192 x 160 volume itself:
  the median of ``--repeats`` timed forwards, times the number of steps (not run to the end: an estimate), and the
  peak memory of one forward.

Prints a markdown table (device, threads and the command in its header)::

    python scripts/benchmark_latent.py --num-steps 64 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "vdm_latent_brain_mri_3d"


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure_latent(args) -> dict:
    import torch
    from monai.bundle import ConfigParser

    from monai_medgen.restoration import peak_memory_mb

    base = peak_memory_mb()
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.yaml"))
    parser["bundle_root"] = str(BUNDLE)
    parser["device"] = "$torch.device('cpu')"
    if args.untrained:
        from monai.networks.nets import AutoencoderKL

        ae_cfg = ConfigParser.load_config_file(str(BUNDLE / "configs" / "train_autoencoder.yaml"))["autoencoder_config"]
        parser["autoencoder"] = AutoencoderKL(**ae_cfg).eval()
    network, inferer = parser.get_parsed_content("network"), parser.get_parsed_content("latent_inferer")
    if args.untrained:
        inferer.scale_factor = 1.0
    else:
        parser.get_parsed_content("model_info")  # weights, schedule and scale factor
    network.eval()
    shape = (1, 1, *args.size)
    lat = inferer.latent_shape(shape)
    with torch.no_grad():
        z, g = torch.randn(lat), torch.zeros(1)
        network(z, g)  # warm-up
        forward = _timed(lambda: network(z, g), args.repeats)
        t = time.perf_counter()
        latents = inferer.sample(
            torch.randn(lat, generator=torch.Generator().manual_seed(1)),
            network,
            num_steps=args.num_steps,
            sampler=args.sampler,
            verbose=False,
            decode=False,
            generator=torch.Generator().manual_seed(0),
        )
        sampling = time.perf_counter() - t
        t = time.perf_counter()
        volume = inferer.decode(latents)
        decoding = time.perf_counter() - t
    return {
        "forward_s": forward,
        "sampling_s": sampling,
        "decoding_s": decoding,
        "total_s": sampling + decoding,
        "peak_mb": peak_memory_mb(),
        "base_mb": base,
        "tensor": list(lat[1:]),
        "volume": list(volume.shape[1:]),
        "threads": torch.get_num_threads(),
    }


def measure_pixel(args) -> dict:
    import torch

    from monai_medgen.networks import ScoreUNet
    from monai_medgen.restoration import peak_memory_mb

    base = peak_memory_mb()
    network = ScoreUNet(
        3, 1, channels=(16, 32, 64), num_res_blocks=1, norm_num_groups=8, num_head_channels=16, grid_levels=256
    ).eval()
    with torch.no_grad():
        network(torch.randn(1, 1, 32, 32, 32), torch.zeros(1))  # warm-up at a small size
        z, g = torch.randn(1, 1, *args.size), torch.zeros(1)
        forward = _timed(lambda: network(z, g), args.repeats)
    return {
        "forward_s": forward,
        "total_s": forward * args.num_steps,
        "peak_mb": peak_memory_mb(),
        "base_mb": base,
        "tensor": [1, *args.size],
        "threads": torch.get_num_threads(),
    }


def _child(kind: str, args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--measure",
        kind,
        "--num-steps",
        str(args.num_steps),
        "--repeats",
        str(args.repeats),
        "--sampler",
        args.sampler,
        "--size",
        *map(str, args.size),
    ] + (["--untrained"] if args.untrained else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} measurement failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-steps", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sampler", default="dpm++")
    ap.add_argument("--size", type=int, nargs=3, default=[160, 192, 160])
    ap.add_argument("--untrained", action="store_true", help="random weights (timing only)")
    ap.add_argument("--measure", choices=("latent", "pixel"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure_latent(args) if args.measure == "latent" else measure_pixel(args)))
        return
    if not args.untrained and not (BUNDLE / "models" / "model.pt").is_file():
        raise SystemExit(f"{BUNDLE}/models/model.pt not found: train the bundle or pass --untrained.")
    latent, pixel = _child("latent", args), _child("pixel", args)
    import platform

    size = "x".join(map(str, args.size))
    voxels = args.size[0] * args.size[1] * args.size[2]
    print(
        f"One {size} volume at 1 mm ({voxels / 1e6:.2f} M voxels), {args.sampler} {args.num_steps} steps, "
        f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{latent['threads']}), median of {args.repeats} forwards; peak resident memory of a fresh process "
        f"(the bare process with torch and MONAI imported: {latent['base_mb']:.0f} MB).\n"
        f"`{' '.join(['python', 'scripts/benchmark_latent.py', *sys.argv[1:]])}`\n"
    )
    print(
        "| sampling path | network input per step | one network evaluation (s) | whole sample (s) | "
        "peak resident memory (MB) |"
    )
    print("|---|---|---|---|---|")
    lt = "x".join(map(str, latent["tensor"]))
    print(
        f"| latent VDM (this bundle{', random weights' if args.untrained else ''}): {args.num_steps} steps on latents "
        f"+ one decoding ({latent['decoding_s']:.1f} s) | {lt} | {latent['forward_s']:.3f} | "
        f"{latent['total_s']:.1f} (measured) | {latent['peak_mb']:.0f} |"
    )
    pt = "x".join(map(str, pixel["tensor"]))
    print(
        f"| pixel-space VDM, same ScoreUNet (16/32/64) on the volume | {pt} | {pixel['forward_s']:.2f} | "
        f"{pixel['total_s']:.0f} (estimate: {args.num_steps} x one evaluation) | {pixel['peak_mb']:.0f} (one evaluation) |"
    )
    print(
        f"\nPer network evaluation the latent path is {pixel['forward_s'] / latent['forward_s']:.0f}x faster; the "
        f"whole sample {pixel['total_s'] / latent['total_s']:.0f}x."
    )


if __name__ == "__main__":
    main()
