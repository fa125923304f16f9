"""Latency of the monai_medgen MONAI Label app on this machine, as a markdown table.

Starts ``monailabel start_server --app monai_medgen/apps/monailabel`` (Python of MONAI Label's own environment:
``$MEDGEN_MONAILABEL_PYTHON`` or ``.venv-monailabel``; build it with ``bash scripts/build_monailabel_venv.sh``) on
127.0.0.1 with a studies folder of Colin27 data (:func:`monai_medgen.apps.monailabel.local.write_demo_inputs`),
then times, from the client's side (the 3D Slicer module's client, so upload and download included): ``GET /info/``,
one ``POST /infer/<model>`` per served bundle and one ``POST /activelearning/generate``; then ``GET /info/`` again,
polled while an inference runs (the app runs inferences on its job queue, off the event loop; the acceptance of
issue 14 is < 1 s), as a second table.  The server is stopped at the end.

    OMP_NUM_THREADS=1 python scripts/monailabel_latency.py [--steps 5] [--sampler dpm++] [--repeats 3]
        [--busy-seconds 20] [--skip-models]

The server inherits the environment: on a machine shared with other jobs, one torch thread
(``OMP_NUM_THREADS=1``) is about ten times faster here than two threads competing for the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts" / "slicer" / "MedGen"))
from MedGenLib import medgen_client  # noqa: E402  (the Slicer module's helper package)

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
    parser.add_argument(
        "--busy-seconds",
        type=float,
        default=20.0,
        help="about how long the inference runs while /info/ is polled (its steps are scaled to it)",
    )
    parser.add_argument(
        "--skip-models", action="store_true", help="only the /info/ rows (idle and during an inference)"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="medgen_latency_") as tmp:
        data = write_demo_inputs(Path(tmp) / "studies", Path(tmp) / "inputs")
        common = {"sampler": args.sampler, "steps": args.steps, "seed": 0}
        requests = {  # model: (what, upload, datastore image, mask, extra params)
            "cddpm_super_resolution_2d": (
                "64 x 64 x 8 from 16 x 16 x 8 (x4 in-plane)",
                data["slices_lowres"],
                None,
                None,
                {},
            ),
            "cddpm_denoising_2d": ("64 x 64 x 8", data["slices_noisy"], None, None, {}),
            "cddpm_inpainting_2d": (
                "64 x 64 x 8, 16 x 16 hole per slice",
                data["slices_masked"],
                None,
                data["slices_mask"],
                {},
            ),
            "cddpm_super_resolution_3d": (
                "48 x 48 x 32 from 48 x 48 x 8 (x4 slices, one patch)",
                data["volume_thick"],
                None,
                None,
                {"factor": "1,1,4"},
            ),
            "cddpm_class_conditional_2d": (
                "3 slices of 64 x 64, class coronal, guidance 2",
                None,
                "colin27_slices",
                None,
                {"class": "coronal", "guidance": 2.0, "num_slices": 3},
            ),
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
                if name not in models or args.skip_models:
                    continue
                seconds, results = timed(
                    lambda n=name, u=upload, i=image_id, m=mask, e=extra: client.infer(n, u, {**common, **e}, m, i),
                    args.repeats,
                )
                server_side = statistics.median(float(r.params["latencies"]["total"]) for r in results)
                rows.append(
                    (f"`POST /infer/{name}`", models[name].task, what, f"{seconds:.2f} s", f"{server_side:.2f} s")
                )
            busy = info_while_busy(server.url, client, models, requests, common, args.busy_seconds)
            if "generate" in info.get("strategies", {}) and not args.skip_models:
                gen = info["medgen"]["generate_model"]
                params = {**common, "num_slices": 3}
                seconds, _ = timed(lambda: client.next_sample("generate", params), args.repeats)
                rows.append(
                    (
                        "`POST /activelearning/generate`",
                        "generate",
                        f"{gen}: 3 slices added to the datastore",
                        f"{seconds:.2f} s",
                        "",
                    )
                )
        cpu = os.cpu_count()
        threads = os.environ.get("OMP_NUM_THREADS", "unset")
        print(
            f"monai_medgen MONAI Label app on this machine ({cpu} CPU cores, no GPU, OMP_NUM_THREADS={threads}): server start "
            f"{server.startup_seconds:.1f} s (import, loading {len(models)} bundles); {args.sampler} {args.steps} steps, "
            f"one sample; medians of {args.repeats} calls, from the client (upload and download included) and as the "
            "server reports them.\n"
        )
        print("| call | task | input -> output | latency (client) | server-side (MONAI Label's total) |")
        print("|---|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        if busy:
            print(
                f"\n`GET /info/` while `POST /infer/{busy['model']}` ({busy['what']}, {busy['steps']} steps) runs: "
                f"{busy['count']} calls over {busy['seconds']:.1f} s of inference (answered {busy['infer_status']}); "
                f"acceptance: < 1 s.\n"
            )
            print("| `/info/` while inferring | calls | median | 95th percentile | max | all < 1 s |")
            print("|---|---|---|---|---|---|")
            lat = sorted(busy["latencies"])
            p95 = lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))]
            print(
                f"| {busy['model']} | {len(lat)} | {statistics.median(lat) * 1000:.0f} ms | {p95 * 1000:.0f} ms | "
                f"{lat[-1] * 1000:.0f} ms | {'yes' if lat[-1] < 1.0 else 'NO'} |"
            )
    return 0


def _info_queue(url: str) -> tuple:
    """(seconds, queue status) of one ``GET /info/``."""
    start = time.perf_counter()
    with urllib.request.urlopen(f"{url}/info/", timeout=60) as answer:
        info = json.loads(answer.read())
    return time.perf_counter() - start, info.get("medgen", {}).get("queue", {})


def info_while_busy(url, client, models, requests, common, seconds: float) -> dict | None:
    """Poll ``GET /info/`` while one inference runs, its steps scaled from a short call so that it runs about
    ``seconds``; ``None`` when no bundle of ``requests`` is served."""
    name = next((n for n in requests if n in models), None)
    if name is None:
        return None
    what, upload, image_id, mask, extra = requests[name]
    steps = max(2, int(common["steps"]))
    start = time.perf_counter()
    client.infer(name, upload, {**common, **extra, "steps": steps}, mask, image_id)
    per_step = (time.perf_counter() - start) / steps
    limit = next((o.maximum for o in models[name].options if o.name == "steps"), None) or 1000
    steps = int(min(limit, max(steps, seconds / max(per_step, 1e-3))))
    outcome = {}

    def run():
        try:
            client.infer(name, upload, {**common, **extra, "steps": steps}, mask, image_id)
            outcome["status"] = "200"
        except medgen_client.ServerError as e:
            outcome["status"] = f"{e.status}: {e}"

    job = threading.Thread(target=run)
    job.start()
    latencies, began = [], None
    while job.is_alive():
        elapsed, queue = _info_queue(url)
        if queue.get("running", 0) >= 1:
            began = began or time.perf_counter()
            latencies.append(elapsed)
        time.sleep(0.2)
    job.join()
    if not latencies:
        return None
    return {
        "model": name,
        "what": what,
        "steps": steps,
        "latencies": latencies,
        "count": len(latencies),
        "seconds": time.perf_counter() - began,
        "infer_status": outcome.get("status", "?"),
    }


if __name__ == "__main__":
    sys.exit(main())
