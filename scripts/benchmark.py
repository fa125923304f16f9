"""Speed and scale benchmark (issue 7): loop overhead, quality against network evaluations, training throughput,
3D time and peak memory, and the speed options.  Markdown tables on stdout, PNG plots into ``--figure-dir``.

    python scripts/benchmark.py                                   # every section, 5 repeats
    python scripts/benchmark.py --sections overhead,throughput --repeats 7
    python scripts/benchmark.py --quick                           # smoke test: tiny sizes, a few minutes
    python scripts/benchmark.py --write                           # also update docs/benchmarks/benchmark.md

Sections (``--sections``, comma-separated):

- ``overhead``: wall-clock time per network evaluation inside each sampler divided by the time of a bare forward
  of the same network on the same input (same batch, no grad), measured side by side (bare loop, sampler, bare
  loop) in every repeat: our ancestral / DDIM / DPM-Solver++ through ``ConditionalDiffusionInferer`` (MONAI's
  ``DiffusionModelUNet`` and the SR bundle's ``ScoreUNet``) and ``VDMInferer``, and MONAI's
  ``DiffusionInferer.sample`` with ``DDPMScheduler`` and ``DDIMScheduler``.  The network is wrapped to count calls.
- ``nfe``: PSNR against network evaluations on ``--nfe-slices`` held-out Colin27 slices (those of
  ``scripts/evaluate_conditional.py --eval-slices N``) for ancestral, DDIM and DPM-Solver++ with the SR bundle; the
  full T-step ancestral chain is the reference.  Every result is cached in ``--cache`` (JSON, keyed by the
  model file's checksum), so the full chain runs once.
- ``throughput``: training samples per second in MONAI's ``SupervisedTrainer``: our
  ``ConditionalDiffusionInferer`` + ``ConditionalPrepareBatch`` and ``VDMInferer`` against MONAI's
  ``DiffusionInferer`` + ``DiffusionPrepareBatch``, identical network (MONAI ``DiffusionModelUNet``) and batch,
  interleaved rounds, medians.
- ``3d``: time and peak memory of restoring the 1 mm Colin27 brain through the 3D SR bundle's patch path and of
  sampling whole volumes with the 3D VDM network; every measurement in its own process (peak resident memory
  from ``getrusage``, ``torch.cuda.max_memory_allocated`` on a GPU), on this machine's CPU and, when
  ``torch.cuda.is_available()``, on the GPU.
- ``speed``: time per network evaluation with each speed option (SDPA attention, ``channels_last``, bf16 autocast,
  ``torch.compile``), batched against one-at-a-time restoration, and where the system CPU time of sampling goes
  (per-forward user / system time and page faults, each configuration in its own process).

Every figure is the median over ``--repeats`` runs unless a table says otherwise.  On the CPU the in-process
timings (overhead, throughput, speed) are this process's CPU time (user + system), which other jobs on a shared
machine do not inflate as they do wall-clock time; on a GPU they are wall-clock time after synchronising.  The 3D
section reports wall-clock, user and system time of each process.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import hashlib
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SECTIONS = ("overhead", "nfe", "throughput", "3d", "speed")
SR2D = os.path.join(ROOT, "bundles", "cddpm_super_resolution_2d")
SR3D = os.path.join(ROOT, "bundles", "cddpm_super_resolution_3d")
VDM2D = os.path.join(ROOT, "bundles", "vdm_brain_mri_2d")
VDM3D = os.path.join(ROOT, "bundles", "vdm_brain_mri_3d")
# glibc settings that keep freed buffers in the process instead of returning them to the OS (see the speed section)
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "33554432",
    "MALLOC_TRIM_THRESHOLD_": "17179869184",
    "MALLOC_TOP_PAD_": "536870912",
}
SHARED_NOTE = (
    "The CPU is shared with training jobs (the benchmark ran at nice 19): wall-clock times are inflated and noisy, so "
    "in-process timings on the CPU are this process's CPU time (user + system), and ratios and comparisons are "
    "measured side by side in the same run."
)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clock(device: torch.device):
    """The clock of every timing: on the CPU this process's CPU time (user + system, all its threads), which other
    jobs sharing the machine do not inflate the way they inflate wall-clock time; on a GPU wall-clock time."""
    return time.process_time if device.type == "cpu" else time.perf_counter


def _timed(fn, device: torch.device) -> float:
    clock = _clock(device)
    _sync(device)
    start = clock()
    fn()
    _sync(device)
    return clock() - start


def _median(values) -> float:
    return float(statistics.median(values))


class CountingNetwork(nn.Module):
    """Passes every call to ``net``, counts the calls (network evaluations) and adds up the time spent inside them
    (``seconds``, with :func:`_clock`; synchronised on a GPU)."""

    def __init__(self, net: nn.Module, device: torch.device | None = None):
        super().__init__()
        self.net, self.calls, self.seconds = net, 0, 0.0
        self.device = torch.device("cpu") if device is None else torch.device(device)

    @property
    def null_class(self):
        return getattr(self.net, "null_class", None)

    def forward(self, *args, **kwargs):
        self.calls += 1
        clock = _clock(self.device)
        _sync(self.device)
        start = clock()
        out = self.net(*args, **kwargs)
        _sync(self.device)
        self.seconds += clock() - start
        return out


class ZeroCostNetwork(nn.Module):
    """A stand-in network that costs (almost) nothing, ``0.5 * x`` for any call convention: timing a sampler with
    it leaves the loop's own cost."""

    null_class = None

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.5))  # gives the samplers a device to read

    def forward(self, x, *args, **kwargs):
        return x * self.scale


def _file_sha(path: str) -> str:
    side = path + ".sha256"
    if os.path.isfile(side):
        return open(side).read().split()[0]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_restoration(bundle_dir: str, device, network_input: str | None = "gamma"):
    """(network, inferer, weights_note) of a restoration bundle; untrained weights when models/model.pt is missing."""
    sys.path.insert(0, HERE)
    from evaluate_conditional import load_bundle

    weights = os.path.isfile(os.path.join(bundle_dir, "models", "model.pt"))
    _, network, inferer, info = load_bundle(bundle_dir, device, weights=weights)
    inferer.network_input = network_input
    note = f"trained weights ({info.get('iteration', '?')} iterations)" if weights else "untrained weights"
    return network.eval(), inferer, note


def _load_vdm(bundle_dir: str, device):
    """(network, inferer, weights_note) of a VDM bundle from its inference.yaml (untrained without models/model.pt)."""
    from monai.bundle import ConfigParser

    from monai_medgen.bundle import load_model

    parser = ConfigParser()
    parser.read_config(os.path.join(bundle_dir, "configs", "inference.yaml"))
    parser["bundle_root"] = bundle_dir
    parser["device"] = f"$torch.device('{device}')"
    network = parser.get_parsed_content("network")
    schedule = parser.get_parsed_content("schedule")
    inferer = parser.get_parsed_content("inferer")
    path = os.path.join(bundle_dir, "models", "model.pt")
    note = "untrained weights"
    if os.path.isfile(path):
        load_model(path, network, schedule, map_location=device)
        note = "trained weights"
    return network.eval(), inferer, note


def _environment(device: torch.device) -> str:
    import monai

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; device {device} (CPU: {cpu}, "
        f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}; GPU: {gpu}); torch {torch.__version__}, "
        f"monai {monai.__version__}, Python {platform.python_version()}; load average {load} at the start"
    )


def _plot(path: str, draw, ncols: int = 1) -> str:
    """Save a matplotlib figure made by ``draw(ax)`` (``draw(axes)`` for ``ncols`` > 1); a message instead when
    matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "(plot skipped: matplotlib is not installed; pip install matplotlib)"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig, ax = plt.subplots(1, ncols, figsize=(6.4 * ncols, 4.0), dpi=110)
    draw(ax)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return f"![{os.path.basename(path)}]({os.path.basename(path)})"


# ---------------------------------------------------------------------------------------------
# 1. loop overhead
# ---------------------------------------------------------------------------------------------
def _measure_overhead(paths: list, steps: int, repeats: int, device: torch.device) -> tuple[dict, ...]:
    """Time every sampler path of :func:`section_overhead` (after one warm-up call of each), ``repeats`` times in
    rotating order, each run bracketed by ``steps``-call loops of its bare forward.  Returns, per path label, lists
    of one value per repeat: (bracketed ratio, ms per evaluation in the sampler, ms per bare forward, network
    evaluations, same-run ratio)."""
    with torch.no_grad():
        for _, _, _, bare, run, _ in paths:  # warm-up: first-call allocations and kernel selection
            bare()
            run()
        ratios = {p[0]: [] for p in paths}
        per_nfe, bare_ms, nfes, inside = ({p[0]: [] for p in paths} for _ in range(4))
        for rep in range(repeats):
            order = paths[rep % len(paths) :] + paths[: rep % len(paths)]
            for label, _, counter, bare, run, _ in order:
                loop = lambda bare=bare: [bare() for _ in range(steps)]  # noqa: E731
                before = _timed(loop, device)
                counter.calls, counter.seconds = 0, 0.0
                t_sample = _timed(run, device)
                nfe = counter.calls
                inside[label].append(t_sample / counter.seconds)
                after = _timed(loop, device)
                bare_one = (before + after) / (2 * steps)
                ratios[label].append((t_sample / nfe) / bare_one)
                per_nfe[label].append(t_sample / nfe * 1e3)
                bare_ms[label].append(bare_one * 1e3)
                nfes[label].append(nfe)
            print(f"  overhead: repeat {rep + 1}/{repeats} done", file=sys.stderr, flush=True)
    return ratios, per_nfe, bare_ms, nfes, inside


def _measure_loop_cost(free_paths: list, repeats: int, device: torch.device) -> dict:
    """Seconds per network evaluation of every sampler path with a network that costs nothing, ``repeats`` runs
    each: the loop's own cost (a list per path label)."""
    with torch.no_grad():
        per_step = {p[0]: [] for p in free_paths}
        for _ in range(repeats):
            for label, _, counter, _, run, _ in free_paths:
                counter.calls = 0
                t = _timed(run, device)
                per_step[label].append(t / max(counter.calls, 1))
    return per_step


def section_overhead(args, device: torch.device) -> str:
    from monai.inferers import DiffusionInferer
    from monai.networks.nets import DiffusionModelUNet
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

    from monai_medgen.inferers import ConditionalDiffusionInferer
    from monai_medgen.schedules import DiscreteSchedule

    size, batch, steps = (64, 1, 4) if args.quick else (128, 2, 20)
    T = 1000
    torch.manual_seed(0)
    unet = (
        DiffusionModelUNet(
            2,
            1,
            1,
            channels=(16, 32, 64),
            attention_levels=(False, False, False),
            num_res_blocks=1,
            norm_num_groups=8,
            num_head_channels=16,
        )
        .to(device)
        .eval()
    )
    sr_net, sr_inferer, sr_note = _load_restoration(SR2D, device)
    vdm_net, vdm_inferer, vdm_note = _load_vdm(VDM2D, device)
    x = torch.randn(batch, 1, size, size, device=device, generator=torch.Generator(device).manual_seed(0))
    cond = x.clamp(-1, 1)
    ddpm, ddim = DDPMScheduler(num_train_timesteps=T), DDIMScheduler(num_train_timesteps=T)
    monai_inferer = DiffusionInferer(ddpm)
    ours = ConditionalDiffusionInferer(DiscreteSchedule.from_scheduler(ddpm), network_input="timesteps")
    t_half = torch.full((batch,), T // 2, device=device, dtype=torch.long)
    g_half = torch.zeros(batch, device=device)

    def build(unet, sr_net, vdm_net, sr_note, vdm_note):
        """(label, network label, counting wrapper, bare call, sampler call, ours?) of every sampler path."""
        paths = []
        c_unet = CountingNetwork(unet, device)

        def monai_run(scheduler):
            def run():
                scheduler.set_timesteps(steps)
                monai_inferer.sample(x, c_unet, scheduler=scheduler, verbose=False)

            return run

        def ours_unet(sampler):
            return lambda: ours.sample(
                x,
                c_unet,
                sampler=sampler,
                num_steps=steps,
                verbose=False,
                generator=torch.Generator(device).manual_seed(1),
            )

        unet_label = "MONAI DiffusionModelUNet (16, 32, 64)"
        bare_unet = lambda: c_unet(x, timesteps=t_half)  # noqa: E731
        paths.append(
            ("MONAI DiffusionInferer.sample + DDPMScheduler", unet_label, c_unet, bare_unet, monai_run(ddpm), False)
        )
        paths.append(
            ("MONAI DiffusionInferer.sample + DDIMScheduler", unet_label, c_unet, bare_unet, monai_run(ddim), False)
        )
        for sampler in ("ancestral", "ddim", "dpm++"):
            paths.append(
                (
                    f"ours: ConditionalDiffusionInferer, {sampler}",
                    unet_label,
                    c_unet,
                    bare_unet,
                    ours_unet(sampler),
                    True,
                )
            )
        c_sr = CountingNetwork(sr_net, device)
        bare_sr = lambda: c_sr(x, g_half, condition=cond)  # noqa: E731
        for sampler in ("ancestral", "ddim", "dpm++"):
            run = (
                lambda s: (
                    lambda: sr_inferer.sample(
                        x,
                        c_sr,
                        sampler=s,
                        num_steps=steps,
                        condition=cond,
                        verbose=False,
                        generator=torch.Generator(device).manual_seed(1),
                    )
                )
            )(sampler)
            paths.append(
                (
                    f"ours: ConditionalDiffusionInferer, {sampler} (v-prediction, clip)",
                    f"SR bundle ScoreUNet ({sr_note})",
                    c_sr,
                    bare_sr,
                    run,
                    True,
                )
            )
        c_vdm = CountingNetwork(vdm_net, device)
        bare_vdm = lambda: c_vdm(x, g_half)  # noqa: E731
        for sampler in ("ancestral", "ddim", "dpm++"):
            run = (
                lambda s: (
                    lambda: vdm_inferer.sample(
                        torch.randn(x.shape, generator=torch.Generator(device).manual_seed(1), device=device),
                        c_vdm,
                        num_steps=steps,
                        sampler=s,
                        verbose=False,
                        generator=torch.Generator(device).manual_seed(2),
                    )
                )
            )(sampler)
            paths.append(
                (f"ours: VDMInferer, {sampler}", f"VDM 2D bundle ScoreUNet ({vdm_note})", c_vdm, bare_vdm, run, True)
            )
        return paths

    paths = build(unet, sr_net, vdm_net, sr_note, vdm_note)
    free = ZeroCostNetwork().to(device)
    free_paths = build(free, free, free, "", "")

    ratios, per_nfe, bare_ms, nfes, inside = _measure_overhead(paths, steps, args.repeats, device)

    lines = [
        f"Input: batch {batch} of {size}x{size}, {steps} sampler steps per run "
        f"({'CPU time of this process' if device.type == 'cpu' else 'wall-clock time'}). Two ratios, medians of "
        f"{args.repeats} repeats (range in brackets): **same run** = the sampler's total time / the time spent inside "
        f"its network calls (the wrapper that counts the calls also times them; both measured over the same "
        f"interval, so other jobs on the machine affect both alike); **bracketed** = the sampler's time per network "
        f"evaluation / a bare forward timed in {steps}-call loops just before and after (on this shared CPU single "
        f"runs of it scatter by several per cent).",
        "",
        "| sampler path | network | network evaluations | ms per evaluation in the sampler | ms per bare forward | ratio, same run | ratio, bracketed |",
        "|---|---|---|---|---|---|---|",
    ]
    worst = worst_same = 0.0
    for label, net_label, _, _, _, is_ours in paths:
        r, q = ratios[label], inside[label]
        if is_ours:
            worst, worst_same = max(worst, _median(r)), max(worst_same, _median(q))
        lines.append(
            f"| {label} | {net_label} | {int(_median(nfes[label]))} | {_median(per_nfe[label]):.1f} | "
            f"{_median(bare_ms[label]):.1f} | **{_median(q):.4f}** ({min(q):.4f}-{max(q):.4f}) | "
            f"{_median(r):.3f} ({min(r):.3f}-{max(r):.3f}) |"
        )
    monai_worst = max(_median(ratios[p[0]]) for p in paths if not p[5])
    lines += [
        "",
        f"Largest median of ours: {worst_same:.4f} same run, {worst:.3f} bracketed (MONAI's own loops, which "
        f"do almost nothing per step: up to {monai_worst:.3f} bracketed).",
    ]

    # the loop's own cost, without the noise of timing a real network: the same paths with a network that costs
    # nothing (0.5 * x), per step, against the real network's bare forward
    per_step = _measure_loop_cost(free_paths, max(3, args.repeats), device)
    lines += [
        "",
        f"The loop's own cost per network evaluation, measured with a network that costs nothing (`0.5 * x`, same "
        f"input, same {steps} steps; median of {max(3, args.repeats)}), as a fraction of the real network's bare forward above:",
        "",
        "| sampler path | loop cost per evaluation (ms) | fraction of a bare forward |",
        "|---|---|---|",
    ]
    worst_free = 0.0
    for label, _, _, _, _, is_ours in free_paths:
        cost = _median(per_step[label])
        frac = cost / (_median(bare_ms[label]) / 1e3)
        if is_ours:
            worst_free = max(worst_free, frac)
        lines.append(f"| {label} | {cost * 1e3:.2f} | {100 * frac:.2f}% |")
    lines += [
        "",
        f"Acceptance (loop overhead <= 3% over a bare forward): time per evaluation in our samplers at most "
        f"{worst_same:.4f}x the network's own time in the same run, loop cost at most {100 * worst_free:.2f}% of "
        f"a bare forward: {'met' if worst_same <= 1.03 and worst_free <= 0.03 else 'not met'}.",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# 2. quality against network evaluations
# ---------------------------------------------------------------------------------------------
def _nfe_settings(quick: bool, T: int):
    if quick:
        return [("ancestral", 20), ("ddim", 5), ("dpm++", 3), ("dpm++", 5)]
    return (
        [("ancestral", k) for k in (T, 1000, 500, 200, 100, 50, 20)]
        + [("ddim", k) for k in (10, 20, 50, 100, 200)]
        + [("dpm++", k) for k in (5, 8, 10, 15, 20, 25, 50)]
    )


def section_nfe(args, device: torch.device) -> str:
    from monai_medgen.bundle import prepare_items
    from monai_medgen.restoration import make_test_set, restore_slices, score

    network, inferer, note = _load_restoration(SR2D, device, network_input=None)
    T = inferer.num_train_timesteps
    n_slices = 1 if args.quick else args.nfe_slices
    # the held-out slices exactly as scripts/evaluate_conditional.py --eval-slices N picks them
    items = prepare_items(None, source="colin27", size=128, num_slices=n_slices, keys=("image",))
    truth = torch.stack([torch.as_tensor(np.asarray(it["image"]), dtype=torch.float32) for it in items])
    test = make_test_set("sr", truth)
    model_file = os.path.join(SR2D, "models", "model.pt")
    model_key = _file_sha(model_file)[:16] if os.path.isfile(model_file) else "untrained"
    cache = {}
    if os.path.isfile(args.cache) and not args.quick:
        with open(args.cache) as f:
            cache = json.load(f)
    settings = _nfe_settings(args.quick, T)
    rows = {}
    for sampler, steps in sorted(settings, key=lambda s: s[1]):  # cheap ones first
        key = f"{model_key}|colin27 slices={n_slices} of {n_slices}|seed={args.seed}|{sampler}|{steps}"
        if "sharpness" not in cache.get(key, {}):
            start = time.perf_counter()
            out, _ = restore_slices(inferer, network, test, sampler, steps, 1, args.seed, device=device)
            r = score(out, test)
            cache[key] = {
                "psnr": r["psnr"],
                "ssim": r["ssim"],
                "sharpness": r["sharpness"],
                "seconds": time.perf_counter() - start,
                "measured": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}",
                "threads": torch.get_num_threads(),
            }
            print(f"  nfe: {sampler} {steps}: {r['psnr']:.2f} dB", file=sys.stderr, flush=True)
            if not args.quick:
                os.makedirs(os.path.dirname(os.path.abspath(args.cache)), exist_ok=True)
                with open(args.cache, "w") as f:
                    json.dump(cache, f, indent=1)
        rows[sampler, steps] = cache[key]
    ref_setting = max((s for s in settings if s[0] == "ancestral"), key=lambda s: s[1])
    ref = rows[ref_setting]["psnr"]
    lines = [
        f"SR bundle (`cddpm_super_resolution_2d`, {note}, T = {T}, v prediction), 4x super-resolution of "
        f"{n_slices} held-out Colin27 axial slices (128x128; the slices of `scripts/evaluate_conditional.py "
        f"--eval-slices {n_slices}`), one sample per slice, the "
        f"same starting noise and sampler seeds for every setting (`restore_slices`, seed {args.seed}). Reference: "
        f"the {ref_setting[1]}-step ancestral chain. Each setting runs once (deterministic given the seeds); seconds "
        f"as measured when the result was cached ({'not cached in --quick' if args.quick else args.cache}). "
        f"Sharpness: RMS Sobel gradient relative to the truth (1 = as sharp as the truth).",
        "",
        "| sampler | network evaluations | PSNR (dB) | PSNR - reference (dB) | SSIM | rel. sharpness | fewer evaluations than the reference | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (sampler, steps), r in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        lines.append(
            f"| {sampler} | {steps} | {r['psnr']:.2f} | {r['psnr'] - ref:+.2f} | {r['ssim']:.3f} | {r['sharpness']:.3f} | "
            f"{ref_setting[1] / steps:.0f}x | {r['seconds']:.1f} |"
        )
    within = [(s, k) for (s, k), r in rows.items() if (s, k) != ref_setting and r["psnr"] >= ref - 0.5]
    fewest = min(within, key=lambda s: s[1]) if within else None
    dpm = {k: r for (s, k), r in rows.items() if s == "dpm++"}
    best = max(r["psnr"] for r in dpm.values())
    best_ssim = max(r["ssim"] for r in dpm.values())
    chosen = min(k for k, r in dpm.items() if r["psnr"] >= best - 0.1 and r["ssim"] >= best_ssim - 0.01)
    lines.append("")
    if fewest:
        factor = ref_setting[1] / fewest[1]
        lines.append(
            f"Fewest network evaluations within 0.5 dB of the reference: {fewest[0]} with {fewest[1]} "
            f"({factor:.0f}x fewer). Acceptance (>= 40x fewer within 0.5 dB): "
            f"{'met' if factor >= 40 else 'not met'}."
        )
    lines.append(
        f"DPM-Solver++ default chosen from this curve: the fewest steps within 0.1 dB PSNR and 0.01 SSIM of "
        f"its best settings ({best:.2f} dB, {best_ssim:.3f}): **{chosen} steps** "
        f"({dpm[chosen]['psnr'] - ref:+.2f} dB, SSIM {dpm[chosen]['ssim']:.3f})."
    )

    def draw(axes):
        for ax, metric, label in ((axes[0], "psnr", "PSNR (dB)"), (axes[1], "ssim", "SSIM")):
            for sampler, marker in (("ancestral", "o"), ("ddim", "s"), ("dpm++", "^")):
                pts = sorted((k, r[metric]) for (s, k), r in rows.items() if s == sampler)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=sampler)
            if metric == "psnr":
                ax.axhspan(ref - 0.5, ref + 0.5, color="0.85", label=f"reference +- 0.5 dB ({ref_setting[1]} steps)")
            ax.set_xscale("log")
            ax.set_xlabel("network evaluations")
            ax.set_ylabel(label)
            ax.set_title(f"4x SR, {n_slices} Colin27 slices: {label.split(' ')[0]}")
            ax.legend(fontsize=8)

    lines += ["", _plot(os.path.join(args.figure_dir, "benchmark_nfe.png"), draw, ncols=2)]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# 3. training throughput
# ---------------------------------------------------------------------------------------------
def _interleaved_rounds(one_round, names: list[str], rounds: int, times: dict) -> dict:
    """:func:`section_throughput`'s timing: one warm-up round of every trainer path, then ``rounds`` rounds in
    rotating order; ``one_round(name)`` gives a path's iteration times, added to ``times[name]``.  Returns per path
    the ratio of each round: MONAI's (the first path's) median iteration time / this path's."""
    for name in names:  # warm-up
        one_round(name)
    rel = {name: [] for name in names}
    for r in range(rounds):
        this = {}
        for name in names[r % len(names) :] + names[: r % len(names)]:
            this[name] = one_round(name)
            times[name] += this[name]
        for name in names:  # paired within the round: MONAI's median iteration time / this path's
            rel[name].append(_median(this[names[0]]) / _median(this[name]))
        print(f"  throughput: round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    return rel


def section_throughput(args, device: torch.device) -> str:
    from ignite.engine import Events
    from monai.data import DataLoader, Dataset
    from monai.engines import DiffusionPrepareBatch as MonaiPrepareBatch
    from monai.engines import SupervisedTrainer
    from monai.inferers import DiffusionInferer
    from monai.networks.nets import DiffusionModelUNet
    from monai.networks.schedulers import DDPMScheduler

    from monai_medgen.engines import DiffusionPrepareBatch, InfererLoss
    from monai_medgen.inferers import ConditionalDiffusionInferer, ConditionalPrepareBatch, VDMInferer
    from monai_medgen.networks import TimestepAdapter
    from monai_medgen.schedules import DiscreteSchedule

    batch, size, iters, warm = (2, 32, 3, 1) if args.quick else (8, 64, 12, 2)
    rounds = args.repeats
    g = torch.Generator().manual_seed(0)
    data = [{"image": torch.rand(1, size, size, generator=g) * 2 - 1} for _ in range(batch)]
    T = 1000

    def unet():
        torch.manual_seed(0)
        return DiffusionModelUNet(
            2,
            1,
            1,
            channels=(16, 32, 64),
            attention_levels=(False, False, False),
            num_res_blocks=1,
            norm_num_groups=8,
            num_head_channels=16,
        ).to(device)

    schedule = DiscreteSchedule.from_scheduler(DDPMScheduler(num_train_timesteps=T))

    def make_methods(net):
        """(network, inferer, prepare_batch, loss) per path, every network from ``net()``; the first is MONAI's."""
        cond_inferer = ConditionalDiffusionInferer(DDPMScheduler(num_train_timesteps=T))
        return {
            "MONAI: DiffusionInferer + DiffusionPrepareBatch (DDPMScheduler, T = 1000)": (
                net(),
                DiffusionInferer(DDPMScheduler(num_train_timesteps=T)),
                MonaiPrepareBatch(num_train_timesteps=T),
                nn.MSELoss(),
            ),
            "ours: ConditionalDiffusionInferer + ConditionalPrepareBatch (same table)": (
                net(),
                cond_inferer,
                ConditionalPrepareBatch(inferer=cond_inferer, condition_key=None),
                nn.MSELoss(),
            ),
            "ours: VDMInferer (continuous time, same table; network via TimestepAdapter) + DiffusionPrepareBatch": (
                TimestepAdapter(net(), schedule.to(device)),
                VDMInferer(schedule),
                DiffusionPrepareBatch(),
                InfererLoss(),
            ),
        }

    methods = make_methods(unet)
    free_methods = make_methods(lambda: ZeroCostNetwork().to(device))
    times = {m: [] for m in methods}

    def one_round(name, table=None):
        network, inferer, prepare, loss = (table or methods)[name]
        loader = DataLoader(Dataset(data), batch_size=batch, shuffle=False, num_workers=0)
        trainer = SupervisedTrainer(
            device=device,
            max_epochs=1,
            epoch_length=warm + iters,
            train_data_loader=loader,
            network=network,
            optimizer=torch.optim.Adam(network.parameters(), 1e-4),
            loss_function=loss,
            inferer=inferer,
            prepare_batch=prepare,
            amp=False,
        )
        stamps = []

        clock = _clock(device)

        @trainer.on(Events.GET_BATCH_STARTED)
        def _start(engine):
            stamps.append(clock())

        @trainer.on(Events.ITERATION_COMPLETED)
        def _end(engine):
            _sync(device)
            stamps[-1] = clock() - stamps[-1]

        trainer.run()
        return stamps[warm:]

    names = list(methods)
    rel = _interleaved_rounds(one_round, names, rounds, times)
    lines = [
        f"MONAI `SupervisedTrainer` (Adam, no AMP, default decollate), identical network (MONAI `DiffusionModelUNet`, "
        f"channels (16, 32, 64), one residual block per level, same initial weights) and batch ({batch} images of "
        f"{size}x{size}, from memory); {rounds} interleaved rounds of {iters} timed iterations per path after {warm} "
        f"warm-up ones (batch fetch to iteration end; "
        f"{'CPU time of this process, so samples/s are per second of CPU' if device.type == 'cpu' else 'wall-clock time'}). "
        f"samples/s and ms: median over all timed iterations; relative to MONAI: median over rounds of MONAI's median "
        f"iteration time / the path's in the same round (range in brackets).",
        "",
        "| trainer path | samples/s | ms per iteration | relative to MONAI |",
        "|---|---|---|---|",
    ]
    worst = None
    for i, name in enumerate(names):
        t = _median(times[name])
        r = rel[name]
        if i:
            worst = _median(r) if worst is None else min(worst, _median(r))
        lines.append(f"| {name} | {batch / t:.1f} | {t * 1e3:.0f} | {_median(r):.3f} ({min(r):.3f}-{max(r):.3f}) |")
    # each path's own cost per iteration (noise, timesteps, noising, target, loss, trainer bookkeeping) without the
    # noise of timing a real network: the same trainer with a network that costs nothing (0.5 * x, one parameter)
    own = {name: [] for name in names}
    for _ in range(max(3, rounds)):
        for name in names:
            own[name] += one_round(name, free_methods)
    base_own = _median(own[names[0]])
    lines += [
        "",
        f"Each path's own cost per iteration, measured in the same trainer with a network that costs nothing "
        f"(`0.5 * x`, one trainable parameter; median over {max(3, rounds)} rounds of {iters} iterations), as a "
        f"fraction of MONAI's real iteration above:",
        "",
        "| trainer path | own cost per iteration (ms) | fraction of a real iteration | own cost - MONAI's (ms) |",
        "|---|---|---|---|",
    ]
    t_monai = _median(times[names[0]])
    worst_own = -1.0
    for i, name in enumerate(names):
        c = _median(own[name])
        if i:
            worst_own = max(worst_own, c - base_own)
        lines.append(f"| {name} | {c * 1e3:.2f} | {100 * c / t_monai:.2f}% | {(c - base_own) * 1e3:+.2f} |")
    extra = worst_own / t_monai
    verdict = "met" if worst >= 1.0 or extra <= 0.0 else ("met within the timing noise" if extra < 0.005 else "not met")
    lines += [
        "",
        f"Acceptance (training throughput >= MONAI's stock path): slowest of ours {worst:.3f}x MONAI "
        f"measured directly; ours costs at most {worst_own * 1e3:+.2f} ms per iteration more than MONAI's "
        f"outside the network ({100 * extra:+.3f}% of an iteration): {verdict}.",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# 4. 3D: separate processes
# ---------------------------------------------------------------------------------------------
def _usage():
    return resource.getrusage(resource.RUSAGE_SELF)


def worker(spec: dict) -> dict:
    """One measurement in this process (``--worker``): restore the Colin27 brain through patches, sample a volume,
    or time forwards of the 3D / 2D SR network."""
    from monai_medgen.restoration import peak_memory_mb

    device = torch.device(spec.get("device", "cpu"))
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    kind = spec["kind"]
    if kind == "restore3d":
        from monai_medgen import io
        from monai_medgen.restoration import restore_image

        network, inferer, note = _load_restoration(SR3D, device)
        network.use_flash_attention = spec["attention"] == "sdpa"
        image = io.read_image(spec["input"])
        run = lambda: restore_image(  # noqa: E731
            network,
            inferer,
            "sr",
            image,
            factor=(1, 1, 4),
            sampler="dpm++",
            num_steps=int(spec["steps"]),
            seed=0,
            patch_size=(spec["patch"],) * 3,
            overlap=0.25,
            sw_batch_size=int(spec["sw_batch_size"]),
            device=device,
            autocast=spec.get("autocast"),
        )
    elif kind == "sample3d":
        network, inferer, note = _load_vdm(VDM3D, device)
        network.use_flash_attention = spec["attention"] == "sdpa"
        shape = (1, 1) + (int(spec["size"]),) * 3

        def run():
            out = inferer.sample(
                network,
                shape,
                num_steps=int(spec["steps"]),
                sampler="dpm++",
                verbose=False,
                device=device,
                generator=torch.Generator(device).manual_seed(0),
                autocast=spec.get("autocast"),
            )
            return out, None

    elif kind == "forward":
        network, _, note = _load_restoration(SR3D if spec["dims"] == 3 else SR2D, device)
        network.use_flash_attention = spec["attention"] == "sdpa"
        shape = (int(spec["batch"]), 1) + (int(spec["size"]),) * int(spec["dims"])
        z = torch.randn(shape, device=device, generator=torch.Generator(device).manual_seed(0))
        gamma = torch.zeros(shape[0], device=device)
        with torch.no_grad():
            network(z, gamma, condition=z)  # warm-up

        def run():
            with torch.no_grad():
                for _ in range(int(spec["repeats"])):
                    network(z, gamma, condition=z)
            return None, None
    else:
        raise ValueError(f"unknown worker kind {kind!r}")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    r0, t0 = _usage(), time.perf_counter()
    out, _ = run()
    _sync(device)
    wall, r1 = time.perf_counter() - t0, _usage()
    result = {
        "wall_s": wall,
        "user_s": r1.ru_utime - r0.ru_utime,
        "sys_s": r1.ru_stime - r0.ru_stime,
        "minflt": r1.ru_minflt - r0.ru_minflt,
        "peak_rss_mb": peak_memory_mb(),
        "weights": note,
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    if out is not None:
        result["shape"] = [int(s) for s in out.shape]
    return result


def _spawn(spec: dict, env_extra: dict | None = None) -> dict:
    """Run :func:`worker` in a fresh Python process (so peaks do not mix) and return its result."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        env = dict(os.environ)
        env.update(env_extra or {})
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec), "--worker-out", out]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout)[-2000:]
            return {"error": f"exit {proc.returncode}: {tail.strip().splitlines()[-1] if tail.strip() else ''}"}
        with open(out) as f:
            return json.load(f)


def _repeat_spawn(spec: dict, repeats: int, env_extra=None) -> dict:
    runs = [_spawn(spec, env_extra) for _ in range(repeats)]
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    merged = {k: _median([r[k] for r in ok]) for k in ok[0] if isinstance(ok[0][k], (int, float))}
    merged.update({k: v for k, v in ok[0].items() if not isinstance(v, (int, float))})
    merged["runs"] = len(ok)
    return merged


def _gb(mb: float) -> str:
    return f"{mb / 1024:.2f}"


def section_3d(args, device: torch.device) -> str:
    from monai_medgen.restoration import demo_volume_input

    tmp = tempfile.mkdtemp(prefix="medgen_bench3d_")
    crop = (64, 64, 64) if args.quick else None
    paths = demo_volume_input(tmp, factor=(1, 1, 4), crop=crop)
    import nibabel as nib

    low_shape = nib.load(paths["input"]).shape
    out_shape = nib.load(paths["truth"]).shape
    steps = 1 if args.quick else args.steps_3d
    repeats = 1 if args.quick else args.repeats_3d
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    threads = torch.get_num_threads()
    lines = [
        f"Restore: Colin27 (`ch2bet`, held out) from 4 mm slices {tuple(low_shape)} to the 1 mm grid "
        f"{tuple(out_shape)} with the 3D SR bundle (`cddpm_super_resolution_3d`): `restore_image` on the whole "
        f"volume, the network over 64^3 patches with overlap 0.25 and 2 patches per call (the bundle's settings), "
        f"blended at every step; **DPM-Solver++ {steps} steps** (the time of the network part grows linearly with "
        f"the steps: the bundle's default is 10). Sample: `VDMInferer.sample` of one whole volume with the 3D VDM "
        f"bundle's network (`vdm_brain_mri_3d`'s 3D ScoreUNet as its configs define it), DPM-Solver++ {steps} steps. Every row "
        f"is its own process (peak resident memory = the process's high-water mark, model loading included; "
        f"`torch.cuda.max_memory_allocated` on a GPU); median of {repeats} process(es); torch threads {threads}.",
        "",
        "| device | task | attention | precision | malloc | wall s | user CPU s | system CPU s | minor page faults | peak RSS (GB) | peak GPU memory (GB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    worst_rss = 0.0
    for dev in devices:
        restore = [("sdpa", None, False), ("plain", None, False)]
        if args.restore_options:  # bf16 autocast and the tuned allocator (each a whole restore on this CPU)
            restore += [("sdpa", "bf16", False), ("sdpa", None, True)]
        for attention, autocast, malloc in restore:
            spec = {
                "kind": "restore3d",
                "attention": attention,
                "autocast": autocast,
                "steps": steps,
                "patch": 64,
                "sw_batch_size": 2,
                "input": paths["input"],
                "device": str(dev),
                "threads": threads,
            }
            r = _repeat_spawn(spec, repeats, MALLOC_ENV if malloc else None)
            print(f"  3d: restore {dev} {attention} {autocast} malloc={malloc}: {r}", file=sys.stderr, flush=True)
            lines.append(
                _row3d(dev, f"restore {out_shape[0]}x{out_shape[1]}x{out_shape[2]}", attention, autocast, malloc, r)
            )
            if dev.type == "cpu" and (attention, autocast, malloc) == ("sdpa", None, False) and "peak_rss_mb" in r:
                worst_rss = r["peak_rss_mb"]
        sizes = [(32, ("sdpa", "plain"))] if args.quick else [(64, ("sdpa", "plain")), (128, ("sdpa",))]
        for size, attentions in sizes:
            for attention in attentions:
                spec = {
                    "kind": "sample3d",
                    "attention": attention,
                    "size": size,
                    "steps": steps,
                    "device": str(dev),
                    "threads": threads,
                }
                r = _repeat_spawn(spec, repeats)
                print(f"  3d: sample {dev} {size} {attention}: {r}", file=sys.stderr, flush=True)
                lines.append(_row3d(dev, f"sample {size}^3", attention, None, False, r))
        if not args.quick:
            tokens = (128 // 4) ** 3
            lines.append(
                f"| {dev.type} | sample 128^3 | plain | float32 | default | not run: its bottleneck attention "
                f"matrix alone ({tokens} tokens, 4 heads) is {4 * tokens**2 * 4 / 2**30:.0f} GB | | | | | |"
            )
    lines += [
        "",
        "Attention `sdpa`: torch's `scaled_dot_product_attention` (ScoreUNet's default now); `plain`: MONAI's "
        "explicit softmax(QK^T)V (the previous default). malloc `tuned`: glibc told to keep freed buffers "
        f"({' '.join(f'{k}={v}' for k, v in MALLOC_ENV.items())}).",
    ]
    lines.append(
        f"Acceptance (1 mm brain restored on this CPU under 8 GB peak memory): peak RSS "
        f"{_gb(worst_rss)} GB with the default settings: {'met' if 0 < worst_rss < 8192 else 'not met'}."
    )
    if len(devices) == 1:
        lines.append("No GPU on this machine (`torch.cuda.is_available()` is False): the GPU rows run wherever one is.")
    return "\n".join(lines)


def _row3d(dev, task, attention, autocast, malloc, r) -> str:
    precision = "bf16 autocast" if autocast else "float32"
    mal = "tuned" if malloc else "default"
    if "error" in r:
        return f"| {dev.type} | {task} | {attention} | {precision} | {mal} | failed: {r['error']} | | | | | |"
    gpu = _gb(r["cuda_peak_mb"]) if "cuda_peak_mb" in r else "-"
    return (
        f"| {dev.type} | {task} | {attention} | {precision} | {mal} | {r['wall_s']:.0f} | {r['user_s']:.0f} | "
        f"{r['sys_s']:.0f} | {r['minflt']:.3g} | {_gb(r['peak_rss_mb'])} | {gpu} |"
    )


# ---------------------------------------------------------------------------------------------
# 5. speed options
# ---------------------------------------------------------------------------------------------
def section_speed(args, device: torch.device) -> str:
    from monai_medgen.restoration import restore_image
    from monai_medgen.samplers import accelerated

    lines = []
    repeats = args.repeats
    configs = [
        ("default (SDPA attention, float32)", dict(), "sdpa"),
        ("plain attention (previous default)", dict(), "plain"),
        ("channels_last", dict(channels_last=True), "sdpa"),
        (
            "bf16 autocast" if device.type == "cpu" else "fp16 autocast",
            dict(autocast="bf16" if device.type == "cpu" else "fp16"),
            "sdpa",
        ),
        ("channels_last + bf16 autocast", dict(channels_last=True, autocast="bf16"), "sdpa"),
    ]
    if not args.quick and not args.no_compile:
        configs.append(("torch.compile (inductor)", dict(compile=True), "sdpa"))
    cases = [
        (2, (1, 1, 64, 64) if args.quick else (8, 1, 128, 128)),
        (3, (1, 1, 32, 32, 32) if args.quick else (2, 1, 64, 64, 64)),
    ]
    lines += [
        "Time per network evaluation of the restoration bundles' networks with each speed option (same weights, "
        f"same input, no grad; median of {repeats} interleaved rounds of {2 if args.quick else 3} forwards after a "
        f"warm-up; {'CPU time of this process' if device.type == 'cpu' else 'wall-clock time'}; compile time is the "
        "first call). Max |difference| against the default output, which lies in about [-3, 3].",
        "",
        "| network | input | option | ms per evaluation | speed-up | max abs difference | first call s |",
        "|---|---|---|---|---|---|---|",
    ]
    for dims, shape in cases:
        network, _, note = _load_restoration(SR2D if dims == 2 else SR3D, device)
        z = torch.randn(shape, device=device, generator=torch.Generator(device).manual_seed(0))
        gamma = torch.zeros(shape[0], device=device)
        calls, first, outs = {}, {}, {}
        with torch.no_grad():
            for label, opts, attention in configs:
                net = copy.deepcopy(network)  # channels_last converts weights in place: one copy per option
                net.use_flash_attention = attention == "sdpa"
                fn = accelerated(net, **opts)

                def call(fn=fn, z=z, gamma=gamma):
                    return fn(z, gamma, condition=z)

                first[label] = _timed(call, device)
                outs[label] = call().float()
                calls[label] = call
            times = {label: [] for label in calls}  # interleaved rounds
            n = 2 if args.quick else 3
            for _ in range(repeats):
                for label, call in calls.items():
                    times[label].append(_timed(lambda call=call, n=n: [call() for _ in range(n)], device) / n)
        base = _median(times[configs[0][0]])
        ref = outs[configs[0][0]]
        for label, _, _ in configs:
            t = _median(times[label])
            diff = float((outs[label] - ref).abs().max())
            lines.append(
                f"| {dims}D SR bundle ScoreUNet | {tuple(shape)} | {label} | {t * 1e3:.0f} | {base / t:.2f}x | "
                f"{diff:.1e} | {first[label]:.1f} |"
            )
        print(f"  speed: {dims}D options done", file=sys.stderr, flush=True)

    # batched restoration of several slices against one at a time
    network, inferer, _ = _load_restoration(SR2D, device, network_input=None)
    from monai.data import MetaTensor

    n_slices, steps = (2, 2) if args.quick else (8, 10)
    size = 64 if args.quick else 128
    vol = MetaTensor(torch.rand(1, size, size, n_slices, generator=torch.Generator().manual_seed(0)) + 0.05)
    t_batch, t_single = [], []
    for _ in range(repeats):
        t_batch.append(
            _timed(
                lambda: restore_image(
                    network, inferer, "denoise", vol, num_steps=steps, batch_size=n_slices, device=device
                ),
                device,
            )
        )
        t_single.append(
            _timed(
                lambda: restore_image(network, inferer, "denoise", vol, num_steps=steps, batch_size=1, device=device),
                device,
            )
        )
    a, _ = restore_image(network, inferer, "denoise", vol, num_steps=steps, batch_size=n_slices, device=device)
    b, _ = restore_image(network, inferer, "denoise", vol, num_steps=steps, batch_size=1, device=device)
    lines += [
        "",
        f"Batched sampling: `restore_image` of {n_slices} slices of {size}x{size} (2D SR bundle network, DPM-Solver++ "
        f"{steps} steps), all in one batch against one slice at a time; each slice has its own seeds, so the results "
        f"agree (max |difference| {float((a - b).abs().max()):.1e}); median of {repeats}; "
        f"{'CPU time of this process' if device.type == 'cpu' else 'wall-clock time'}.",
        "",
        "| batch | s per slice | speed-up |",
        "|---|---|---|",
        f"| 1 slice at a time | {_median(t_single) / n_slices:.2f} | 1.00x |",
        f"| {n_slices} slices in one batch | {_median(t_batch) / n_slices:.2f} | {_median(t_single) / _median(t_batch):.2f}x |",
    ]

    # where the system CPU time goes: per-forward user / system time and page faults, one process each
    lines += [
        "",
        "System CPU time: per network evaluation, user and system CPU time and minor page faults (each row its own "
        f"process, {'2' if args.quick else '5'} forwards after a warm-up, median of "
        f"{1 if args.quick else args.repeats_3d} process(es)).",
        "",
        "| network input | attention | malloc | user ms | system ms | minor page faults | peak RSS (GB) |",
        "|---|---|---|---|---|---|---|",
    ]
    fw_cases = [(2, 1, 128), (3, 1, 64)] if not args.quick else [(2, 1, 64), (3, 1, 32)]
    for dims, batch, size in fw_cases:
        for attention, malloc in (("plain", False), ("sdpa", False), ("plain", True), ("sdpa", True)):
            n = 2 if args.quick else 5
            spec = {
                "kind": "forward",
                "dims": dims,
                "batch": batch,
                "size": size,
                "attention": attention,
                "repeats": n,
                "device": str(device),
                "threads": torch.get_num_threads(),
            }
            r = _repeat_spawn(spec, 1 if args.quick else args.repeats_3d, MALLOC_ENV if malloc else None)
            shape = f"({batch}, 1, " + ", ".join([str(size)] * dims) + ")"
            if "error" in r:
                lines.append(
                    f"| {dims}D {shape} | {attention} | {'tuned' if malloc else 'default'} | failed: {r['error']} | | | |"
                )
                continue
            lines.append(
                f"| {dims}D {shape} | {attention} | {'tuned' if malloc else 'default'} | "
                f"{r['user_s'] / n * 1e3:.0f} | {r['sys_s'] / n * 1e3:.0f} | {r['minflt'] / n:.3g} | "
                f"{_gb(r['peak_rss_mb'])} |"
            )
        print(f"  speed: {dims}D system-time rows done", file=sys.stderr, flush=True)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
TITLES = {
    "overhead": "Loop overhead: time per network evaluation in a sampler / bare forward",
    "nfe": "Quality against network evaluations (4x super-resolution)",
    "throughput": "Training throughput in MONAI's SupervisedTrainer",
    "3d": "3D: restoring a 1 mm brain through patches, sampling volumes",
    "speed": "Speed options, batched sampling and system CPU time",
}


def _write(path: str, env_line: str, command: str, parts: dict) -> None:
    """Replace the named sections of the markdown report (others kept from earlier runs)."""
    old = open(path).read() if os.path.isfile(path) else ""
    blocks = {}
    for name in SECTIONS:
        start, end = f"<!-- section:{name} -->", f"<!-- /section:{name} -->"
        if start in old and end in old:
            blocks[name] = old[old.index(start) : old.index(end) + len(end)]
    for name, text in parts.items():
        blocks[name] = (
            f"<!-- section:{name} -->\n## {TITLES[name]}\n\n_Run: {env_line}._ Command: `{command}`\n\n"
            f"{text}\n<!-- /section:{name} -->"
        )
    head = (
        "# Speed and scale benchmark\n\nProduced by `scripts/benchmark.py` (see its docstring for what each section "
        f"measures); each section records when, where and how it ran. {SHARED_NOTE}\n"
    )
    body = "\n\n".join(blocks[n] for n in SECTIONS if n in blocks)
    for extra in re.findall(r"<!-- section:([\w-]+) -->", old):  # sections of other scripts (benchmark_latent.py)
        start, end = f"<!-- section:{extra} -->", f"<!-- /section:{extra} -->"
        if extra not in SECTIONS and end in old:
            body += "\n\n" + old[old.index(start) : old.index(end) + len(end)]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(head + "\n" + body + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--repeats", type=int, default=5, help="repeats (rounds) behind every median")
    p.add_argument("--repeats-3d", type=int, default=2, help="processes per 3D / system-time measurement")
    p.add_argument("--steps-3d", type=int, default=2, help="DPM-Solver++ steps of the 3D measurements")
    p.add_argument("--quick", action="store_true", help="smoke test: tiny sizes, 2 repeats, nothing cached")
    p.add_argument("--nfe-slices", type=int, default=2, help="Colin27 slices of the nfe section")
    p.add_argument(
        "--cache",
        default=os.path.join(ROOT, "runs", "benchmark", "nfe_cache.json"),
        help="JSON cache of the nfe section's results",
    )
    p.add_argument(
        "--restore-options",
        action="store_true",
        help="3d section: also restore with bf16 autocast and with the tuned allocator",
    )
    p.add_argument("--no-compile", action="store_true", help="leave torch.compile out of the speed section")
    p.add_argument("--figure-dir", default=os.path.join(ROOT, "docs", "benchmarks"))
    p.add_argument("--write", action="store_true", help="update docs/benchmarks/benchmark.md (the sections run)")
    p.add_argument("--output", default=os.path.join(ROOT, "docs", "benchmarks", "benchmark.md"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        result = worker(json.loads(args.worker))
        with open(args.worker_out, "w") as f:
            json.dump(result, f)
        return
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown or not sections:
        p.error(f"--sections must be a comma-separated subset of {','.join(SECTIONS)}, got {args.sections!r}.")
    if args.repeats < 1 or args.repeats_3d < 1 or args.steps_3d < 1:
        p.error("--repeats, --repeats-3d and --steps-3d must be >= 1.")
    if args.quick:
        args.repeats = min(args.repeats, 2)
        if args.figure_dir == p.get_default("figure_dir"):  # smoke tests leave docs/ alone
            args.figure_dir = tempfile.mkdtemp(prefix="medgen_bench_figures_")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False.")
    env_line = _environment(device)
    print(f"# Speed and scale benchmark\n\n{env_line}. {SHARED_NOTE}\n", flush=True)
    funcs = {
        "overhead": section_overhead,
        "nfe": section_nfe,
        "throughput": section_throughput,
        "3d": section_3d,
        "speed": section_speed,
    }
    parts = {}
    for name in sections:
        start = time.perf_counter()
        text = funcs[name](args, device)
        parts[name] = text
        print(f"## {TITLES[name]}\n\n{text}\n\n_({time.perf_counter() - start:.0f} s)_\n", flush=True)
    if args.write:
        threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if os.environ.get("OMP_NUM_THREADS") else ""
        command = f"{threads}python scripts/benchmark.py " + " ".join(
            a for a in (argv if argv is not None else sys.argv[1:]) if a != "--write"
        )
        _write(args.output, env_line, command.strip(), parts)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
