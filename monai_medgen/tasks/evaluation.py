"""Restoration models against the strongest classical baselines on the unseen panel (:mod:`monai_medgen.tasks.panel`).

For each scenario and panel image: the model's one sample and the mean of N samples, and every classical baseline
(each tuned on an MNI152 slice, never on the scored image), with PSNR (inside the hole for inpainting), SSIM,
sharpness relative to the truth, data-consistency error (relative RMS of the output degraded again against the
input; SR and inpainting), seconds and network evaluations.  Used by ``scripts/evaluate_restoration.py`` and the
bundles' ``evaluate.yaml``.

Scenarios: ``sr4`` (4x area downsampling), ``denoise_gsp`` (Gaussian 0.1 + 5% salt-and-pepper), ``denoise_rician``
(Rician 0.05), ``inpaint_box`` (central box, a quarter of each side), ``inpaint_stroke`` (free-form strokes, 10-20%).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from monai_medgen.metrics import relative_sharpness, ssim
from monai_medgen.tasks.baselines import denoising_baselines, denoising_parameters, inpainting_baselines, sr_baselines
from monai_medgen.tasks.operators import Noise, SuperResolution
from monai_medgen.tasks.panel import PANEL, load_panel, tuning_image
from monai_medgen.tasks.sampling import ResidualRestorer
from monai_medgen.transforms import RandInpaintingMask

__all__ = [
    "BUNDLES",
    "REGRESSION_ROW",
    "SCENARIOS",
    "baselines",
    "consistency",
    "degrade",
    "evaluate_bundle",
    "evaluate_panel",
    "psnr_db",
]

BUNDLES = {"sr": "cddpm_super_resolution_2d", "denoise": "cddpm_denoising_2d", "inpaint": "cddpm_inpainting_2d"}
SCENARIOS = {
    "sr4": "sr",
    "denoise_gsp": "denoise",
    "denoise_rician": "denoise",
    "inpaint_box": "inpaint",
    "inpaint_stroke": "inpaint",
}


# the network's t = 1 prediction alone (no noise, one call): the regression estimate of the same network, reported
# beside the samples (no separately trained regression network)
REGRESSION_ROW = "same network, t = 1 regression call"


def psnr_db(x, y, mask=None) -> float:
    d = (x - y) ** 2
    mse = d[mask > 0.5].mean() if mask is not None else d.mean()
    return float(10 * torch.log10(1.0 / mse.clamp_min(1e-12)))


def degrade(scenario: str, truth: torch.Tensor, seed: int):
    """(measured for the model, extra) for a scenario: extra holds the low-res image, mask or noise settings."""
    g = torch.Generator().manual_seed(seed)
    if scenario == "sr4":
        op = SuperResolution(4.0)
        low = op.degrade(truth)
        return op.base(low, truth.shape[2:]), {"op": op, "low": low}
    if scenario == "denoise_gsp":
        return Noise(0.1, "gaussian", 0.05).degrade(truth, g), {"sigma": 0.1, "sp": True}
    if scenario == "denoise_rician":
        return Noise(0.05, "rician").degrade(truth, g), {"sigma": 0.05, "sp": False}
    shape = tuple(truth.shape[2:])
    if scenario == "inpaint_box":
        mask = torch.as_tensor(
            np.asarray(RandInpaintingMask(center_box=[max(2, s // 4) for s in shape]).make_mask(shape, 0))
        )
    else:
        mask = torch.as_tensor(np.asarray(RandInpaintingMask("stroke", 0.1, 0.2).make_mask(shape, seed)))
    mask = mask.float().reshape(1, 1, *shape)
    return truth * (1 - mask), {"mask": mask}


def baselines(scenario: str, measured, extra, truth_shape, params):
    """``{name: (output, seconds)}`` of the scenario's classical baselines."""
    if scenario == "sr4":
        return sr_baselines(extra["low"], truth_shape)
    if scenario.startswith("denoise"):
        return denoising_baselines(measured, extra["sigma"], extra["sp"], params)
    return inpainting_baselines(measured, extra["mask"])


def consistency(scenario: str, out, measured, extra) -> float:
    if scenario == "sr4":
        y = extra["low"]
        return float((extra["op"].degrade(out) - y).norm() / y.norm())
    if scenario.startswith("inpaint"):
        keep = extra["mask"] < 0.5
        return float(((out - measured) * keep).norm() / (measured * keep).norm())
    return float("nan")


def _score(scenario, method, out, secs, nfe, truth, measured, extra, name) -> dict:
    mask = extra.get("mask")
    return {
        "scenario": scenario,
        "image": name,
        "method": method,
        "psnr": psnr_db(out, truth, mask),
        "ssim": float(ssim(out, truth).mean()),
        "sharpness": float(relative_sharpness(out, truth).mean()),
        "consistency": consistency(scenario, out, measured, extra),
        "seconds": secs,
        "nfe": nfe,
    }


def _adapted(restorer, measured, seed: int):
    """The restorer adapted to ``measured`` when it adapts (``adapt_steps``), else itself."""
    return restorer.adapted(measured, (0.0, 1.0), seed=seed) if restorer.adapt_steps else restorer


def _nfe(restorer, calls: int) -> int:
    """Network calls of a restoration: its sampler's, plus an adaptation's (two samples per step, each with a
    backward pass)."""
    return calls + 2 * restorer.adapt_steps * restorer.num_steps


def evaluate_panel(
    models: dict,
    scenarios=tuple(SCENARIOS),
    images=PANEL,
    num_samples: int = 4,
    num_steps: int = 4,
    start_time: float = 0.5,
    verbose: bool = True,
) -> tuple[str, list[dict], list[tuple]]:
    """Score ``models`` (``{family: (network, inferer)}``) on the scenarios of their families over the panel images.

    Returns ``(markdown, rows, verdicts)``: the tables, one dict per (scenario, image, method), and per model row
    ``(scenario, image, method, dPSNR, dSSIM, best classical, met)`` against the best classical baseline of that
    image (met: >= +0.5 dB PSNR and SSIM not lower by more than 0.01)."""
    panel = load_panel(images)
    tune_truth = tuning_image()
    lines, rows, verdicts = [], [], []
    for scenario in scenarios:
        family = SCENARIOS[scenario]
        if family not in models:
            continue
        network, inferer = models[family]
        restorer = ResidualRestorer(inferer, network, family, num_steps=num_steps, start_time=start_time)
        # the network's own regression estimate, as trained (not adapted to the image)
        regression_restorer = ResidualRestorer(
            inferer, network, family, num_steps=1, start_time=start_time, adapt_steps=0
        )
        tune_measured, tune_extra = degrade(scenario, tune_truth, seed=7)
        params = {}
        adapting = f", SURE adaptation to each image: {restorer.adapt_steps} steps" if restorer.adapt_steps else ""
        lines += [f"\n### {scenario}: {num_steps} network calls per sample, start time {start_time}{adapting}\n"]
        if family == "denoise":  # tuned once per scenario on the MNI152 slice
            params = denoising_parameters(tune_extra["sigma"], tune_extra["sp"], (tune_measured, tune_truth))
            lines.append(f"Classical parameters tuned on an MNI152 slice: {params}\n")
        lines += [
            "| image | method | PSNR | SSIM | sharpness | consistency | seconds | NFE |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, truth in panel.items():
            # the seeds (degradation, samples) belong to the image (its place in the whole panel), not to its place in the
            # images asked for: a subset sees the same masks and noise as the full panel
            i = PANEL.index(name) if name in PANEL else len(PANEL) + list(panel).index(name)
            measured, extra = degrade(scenario, truth, seed=100 + i)
            mask = extra.get("mask")
            results = {
                k: (v, secs, 0)
                for k, (v, secs) in baselines(scenario, measured, extra, truth.shape[2:], params).items()
            }
            classical = set(results)
            project = (lambda x, e=extra: e["op"].project(x, e["low"])) if scenario == "sr4" else None
            t0 = time.perf_counter()  # the network's own regression estimate: its single t = 1 prediction
            regression, _ = regression_restorer(
                measured, project=project, mask=mask, value_range=(0.0, 1.0), generator=torch.Generator().manual_seed(i)
            )
            results[REGRESSION_ROW] = (regression.clamp(0, 1), time.perf_counter() - t0, 1)
            t0 = time.perf_counter()  # an adaptation to the image (adapt_steps) serves the one sample and the mean
            model = _adapted(restorer, measured, i)
            adapt_secs = time.perf_counter() - t0
            t0 = time.perf_counter()
            one, _ = model(
                measured, project=project, mask=mask, generator=torch.Generator().manual_seed(i), value_range=(0.0, 1.0)
            )
            results["model (1 sample)"] = (
                one.clamp(0, 1),
                time.perf_counter() - t0 + adapt_secs,
                _nfe(restorer, num_steps),
            )
            if num_samples > 1:
                t0 = time.perf_counter()
                mean, _ = model(
                    measured,
                    project=project,
                    mask=mask,
                    num_samples=num_samples,
                    generator=torch.Generator().manual_seed(i),
                    value_range=(0.0, 1.0),
                )
                label = f"model (mean of {num_samples}{', self-ensemble' if restorer.self_ensemble else ''})"
                results[label] = (
                    mean.clamp(0, 1),
                    time.perf_counter() - t0 + adapt_secs,
                    _nfe(restorer, num_steps * num_samples),
                )
            scored = {
                m: _score(scenario, m, out, s, n, truth, measured, extra, name) for m, (out, s, n) in results.items()
            }
            rows += list(scored.values())
            lines += [
                f"| {name} | {m} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['sharpness']:.2f} | {r['consistency']:.1e} | "
                f"{r['seconds']:.2f} | {r['nfe']} |"
                for m, r in scored.items()
            ]
            best = max((r for m, r in scored.items() if m in classical), key=lambda r: r["psnr"])
            for m, r in scored.items():
                if m.startswith("model"):
                    ok = r["psnr"] >= best["psnr"] + 0.5 and r["ssim"] >= best["ssim"] - 0.01
                    verdicts.append(
                        (scenario, name, m, r["psnr"] - best["psnr"], r["ssim"] - best["ssim"], best["method"], ok)
                    )
            if verbose:
                print(
                    f"{scenario} {name}: "
                    + ", ".join(f"{m} {r['psnr']:.2f}/{r['ssim']:.3f}" for m, r in scored.items()),
                    file=sys.stderr,
                    flush=True,
                )
    lines += [
        "\n### Against the best classical baseline per image (needs +0.5 dB PSNR, SSIM not lower by > 0.01)\n",
        "| scenario | image | model | dPSNR | dSSIM | best classical | met |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {s} | {n} | {m} | {dp:+.2f} | {ds:+.3f} | {b} | {'yes' if ok else 'no'} |"
        for s, n, m, dp, ds, b, ok in verdicts
    ]
    lines.append(f"\n{sum(v[-1] for v in verdicts)} of {len(verdicts)} model rows meet the bar.")
    return "\n".join(lines), rows, verdicts


def evaluate_bundle(network, inferer, images=PANEL, num_samples: int = 4, num_steps: int = 4) -> dict:
    """A bundle's ``evaluate.yaml``: print the panel tables of its family's scenarios; returns the rows."""
    text, rows, verdicts = evaluate_panel(
        {inferer.family: (network.eval(), inferer)},
        images=images,
        num_samples=int(num_samples),
        num_steps=int(num_steps),
        start_time=float(inferer.start_time),
    )
    print(text)
    return {"rows": rows, "verdicts": verdicts}
