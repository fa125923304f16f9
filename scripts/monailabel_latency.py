"""Latency of the monai_medgen MONAI Label app on this machine, as a markdown table.

Starts ``monailabel start_server --app monai_medgen/apps/monailabel`` (Python of MONAI Label's own environment:
``$MEDGEN_MONAILABEL_PYTHON`` or ``.venv-monailabel``; build it with ``bash scripts/build_monailabel_venv.sh``) on
127.0.0.1 with a studies folder of Colin27 data (:func:`monai_medgen.apps.monailabel.local.write_demo_inputs`),
then times, from the client's side (the 3D Slicer module's client, so upload and download included): ``GET /info/``,
one ``POST /infer/<model>`` per served bundle and one ``POST /activelearning/generate``.  The server is stopped at
the end.

    OMP_NUM_THREADS=1 python scripts/monailabel_latency.py [--steps 5] [--sampler dpm++] [--repeats 3]

The server inherits the environment: on a machine shared with other jobs, one torch thread
(``OMP_NUM_THREADS=1``) is about ten times faster here than two threads competing for the cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts" / "slicer" / "MedGen"))
import medgen_client  # noqa: E402

from monai_medgen.apps.monailabel.local import MONAILabelServer, write_demo_inputs  # noqa: E402


def timed(fn, repeats: int):
    """(median seconds over ``repeats`` calls, results of the calls)."""
    times, outs = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        outs.append(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times), outs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="sampler steps of every request")
    parser.add_argument("--sampler", default="dpm++", choices=("ancestral", "ddim", "dpm++"))
    parser.add_argument("--repeats", type=int, default=3, help="calls per row (the median is shown)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="medgen_latency_") as tmp:
        data = write_demo_inputs(Path(tmp) / "studies", Path(tmp) / "inputs")
        common = {"sampler": args.sampler, "steps": args.steps, "seed": 0}
        requests = {  # model: (what, upload, datastore image, mask, extra params)
            "cddpm_super_resolution_2d": ("64 x 64 x 8 from 16 x 16 x 8 (x4 in-plane)", data["slices_lowres"], None, None, {}),
            "cddpm_denoising_2d": ("64 x 64 x 8", data["slices_noisy"], None, None, {}),
            "cddpm_inpainting_2d": ("64 x 64 x 8, 16 x 16 hole per slice", data["slices_masked"], None, data["slices_mask"], {}),
            "cddpm_super_resolution_3d": ("48 x 48 x 32 from 48 x 48 x 8 (x4 slices, one patch)", data["volume_thick"], None,
                                          None, {"factor": "1,1,4"}),
            "cddpm_class_conditional_2d": ("3 slices of 64 x 64, class coronal, guidance 2", None, "colin27_slices", None,
                                           {"class": "coronal", "guidance": 2.0, "num_slices": 3}),
            "vdm_brain_mri_2d": ("3 slices of 128 x 128", None, "colin27_slices", None, {"num_slices": 3}),
            "vdm_brain_mri_3d": ("one 64 x 64 x 64 volume", None, "colin27_1mm", None, {}),
        }
        rows = []
        with MONAILabelServer(Path(data["slices"]).parent) as server:
            client = medgen_client.MedGenClient(server.url, timeout=600)
            seconds, infos = timed(client.info, args.repeats)
            info = infos[-1]
            models = medgen_client.parse_info(info)
            rows.append(("`GET /info/`", "", f"{len(models)} models", f"{seconds * 1000:.0f} ms", ""))
            for name, (what, upload, image_id, mask, extra) in requests.items():
                if name not in models:
                    continue
                seconds, results = timed(
                    lambda n=name, u=upload, i=image_id, m=mask, e=extra: client.infer(n, u, {**common, **e}, m, i),
                    args.repeats,
                )
                server_side = statistics.median(float(r.params["latencies"]["total"]) for r in results)
                rows.append((f"`POST /infer/{name}`", models[name].task, what, f"{seconds:.2f} s", f"{server_side:.2f} s"))
            if "generate" in info.get("strategies", {}):
                gen = info["medgen"]["generate_model"]
                params = {**common, "num_slices": 3}
                seconds, _ = timed(lambda: client.next_sample("generate", params), args.repeats)
                rows.append(("`POST /activelearning/generate`", "generate", f"{gen}: 3 slices added to the datastore",
                             f"{seconds:.2f} s", ""))
        cpu = os.cpu_count()
        threads = os.environ.get("OMP_NUM_THREADS", "unset")
        print(f"monai_medgen MONAI Label app on this machine ({cpu} CPU cores, no GPU, OMP_NUM_THREADS={threads}): server start "
              f"{server.startup_seconds:.1f} s (import, loading {len(models)} bundles); {args.sampler} {args.steps} steps, "
              f"one sample; medians of {args.repeats} calls, from the client (upload and download included) and as the "
              "server reports them.\n")
        print("| call | task | input -> output | latency (client) | server-side (MONAI Label's total) |")
        print("|---|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
