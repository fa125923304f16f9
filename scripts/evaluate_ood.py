"""Does ``monai-medgen score`` separate in-distribution brain slices from everything else?  AUROC of the raw
bits/dim and of the complexity-corrected score (:mod:`monai_medgen.ood`) on a panel of allowed images.

    PYTHONPATH=. python scripts/evaluate_ood.py                      # panel: table, AUROCs, docs/benchmarks/ood_score.md
    PYTHONPATH=. python scripts/evaluate_ood.py --calibrate          # threshold from the training data only

The panel (every image from a package the project already installs; nothing downloaded):

- **in**: 16 evenly spaced axial slices of Colin27 (``ch2bet.nii.gz``, Debian ``mricron-data``), the held-out
  brain the VDM never trained on, prepared exactly as ``monai-medgen score`` prepares a volume;
- **out**, by group:
  ``other species``   8 axial slices of the inia19 macaque template (``mricron-data``);
  ``pydicom``         pydicom's own bundled 2D grayscale test images (``pydicom/data/test_files``: CT, MR, NM,
                      ...), one per distinct image;
  ``nibabel``         nibabel's own ``tests/data`` NIfTI / MINC / PAR-REC files (EPI, low-resolution anatomicals,
                      a phantom), up to 4 axial slices each;
  ``scikit-image``    ``skimage.data`` grayscale images (photographs, textures, microscopy, text, a retina,
                      the Shepp-Logan phantom);
  ``noise``, ``bias field``, ``ghosting``, ``rotated 90``, ``upside down``: 8 of the Colin27 slices (every
                      other one), each corrupted: strong Gaussian noise (sigma 15% of the range), a strong smooth
                      multiplicative bias field (a factor of 5 across the slice), motion-like ghosting (random
                      phase errors on a third of the k-space lines), each re-scaled the way ``score`` scales an
                      input; and wrong orientation (turned 90 degrees; upside down, i.e. flipped front to back,
                      anterior-posterior: a left-right mirror is no error an image can show), the slice itself turned.

The threshold (``--calibrate``) is chosen on MNI152 2009a axial slices (nilearn; the VDM's training data), never on
the panel.  Images reserved for the project's independent evaluation are not used.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from monai_medgen.pipelines import load_bundle
from monai_medgen.tasks.panel import TEMPLATES, pydicom_test_image

REPO = Path(__file__).resolve().parents[1]
CORRUPTIONS = ("noise", "bias field", "ghosting", "rotated 90", "upside down")
GEOMETRIC = ("rotated 90", "upside down")
# pydicom's bundled test images that are 2D grayscale pictures (copies of the same picture in other transfer
# syntaxes, colour images, segmentations and 10 x 10 dose grids left out)
PYDICOM_FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "693_J2KI.dcm",
    "J2K_pixelrep_mismatch.dcm",
    "JPEG2000.dcm",
    "examples_overlay.dcm",
    "image_dfl.dcm",
)
NIBABEL_FILES = (
    "example4d.nii.gz",
    "anatomical.nii",
    "functional.nii",
    "example_nifti2.nii.gz",
    "reoriented_anat_moved.nii",
    "phantom_EPI_asc_CLEAR_2_1.PAR",
    "tiny.mnc",
)
SKIMAGE_GRAY = (
    "brick",
    "camera",
    "cell",
    "checkerboard",
    "clock",
    "coins",
    "grass",
    "gravel",
    "moon",
    "page",
    "text",
    "microaneurysms",
    "shepp_logan_phantom",
    "horse",
    "binary_blobs",
)
SKIMAGE_COLOUR = ("astronaut", "retina", "hubble_deep_field")  # green channel


# ---------------------------------------------------------------------------------------------
# the panel
# ---------------------------------------------------------------------------------------------
def _nifti(path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).get_fdata(), dtype=np.float32)


def colin27_slices(size: int = 128, num: int = 16) -> np.ndarray:
    from monai_medgen.ood import prepare_slices

    return prepare_slices(_nifti(TEMPLATES / "ch2bet.nii.gz"), size, num, name="Colin27")


def mni152_slices(size: int = 128) -> np.ndarray:
    """Every axial MNI152 slice with enough brain (the training slices), prepared as ``score`` prepares a volume."""
    from monai_medgen.data import load_mni152
    from monai_medgen.ood import prepare_slices

    return prepare_slices(load_mni152()[0], size, None, name="MNI152")


def _nibabel_volume(name: str) -> np.ndarray:
    import nibabel as nib

    v = np.asarray(nib.load(str(Path(nib.__file__).parent / "tests" / "data" / name)).get_fdata(), np.float32)
    if name.endswith(".mnc"):
        v = np.transpose(v, (2, 1, 0))  # MINC stores (z, y, x)
    return v[..., 0] if v.ndim == 4 else v


def _skimage_image(name: str) -> np.ndarray:
    import skimage.data

    a = np.asarray(skimage.data.binary_blobs(rng=0) if name == "binary_blobs" else getattr(skimage.data, name)())
    return (a[..., 1] if a.ndim == 3 else a).astype(np.float32)


def corrupt(slice01: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A (H, W) slice in [0, 1] corrupted by ``kind`` (one of ``CORRUPTIONS``), before the input scaling."""
    h, w = slice01.shape
    if kind == "noise":  # strong Gaussian noise: sigma 15% of the intensity range
        return slice01 + rng.normal(0.0, 0.15, slice01.shape).astype(np.float32)
    if kind == "bias field":  # smooth multiplicative field spanning a factor of about 5 across the slice
        yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
        c = rng.normal(0.0, 1.0, 5)
        log_field = c[0] * xx + c[1] * yy + c[2] * xx * yy + c[3] * xx**2 + c[4] * yy**2
        log_field = (log_field - log_field.mean()) / (np.ptp(log_field) + 1e-6) * np.log(5.0)
        return slice01 * np.exp(log_field).astype(np.float32)
    if kind == "ghosting":  # motion between shots: random phase errors on a third of the phase-encode lines
        k = np.fft.fftshift(np.fft.fft2(slice01))
        lines = rng.random(h) < 1 / 3
        ky = np.arange(h) - h // 2
        shift = rng.uniform(-6, 6, h)  # translation (pixels) of each corrupted line's shot
        phase = np.where(lines, 2 * np.pi * ky * shift / h + rng.uniform(-np.pi / 2, np.pi / 2, h), 0.0)
        k = k * np.exp(1j * phase)[:, None]
        return np.abs(np.fft.ifft2(np.fft.ifftshift(k))).astype(np.float32)
    if kind == "rotated 90":
        return np.rot90(slice01).copy()
    if kind == "upside down":  # anterior-posterior: axis 1 of the RAS-ordered slice (axis 0, left-right, would
        return slice01[:, ::-1].copy()  # only mirror the brain, which no image content can tell apart)
    raise ValueError(f"kind must be one of {CORRUPTIONS}, got {kind!r}.")


def build_panel(size: int = 128, seed: int = 0) -> list[dict]:
    """The panel as a list of ``{"name", "group", "label" (0 in, 1 out), "slice" (1, size, size) in [0, 1]}``;
    sources that are not installed are left out (with a note on stderr)."""
    from monai_medgen.data import scale_intensity
    from monai_medgen.ood import prepare_slices

    items = []

    def add(group, name, slices):
        for i, s in enumerate(slices):
            items.append(
                {
                    "group": group,
                    "name": name if len(slices) == 1 else f"{name}[{i}]",
                    "label": int(group != "in"),
                    "slice": s,
                }
            )

    colin = colin27_slices(size)
    add("in", "colin27", colin)
    try:
        add(
            "other species",
            "macaque inia19",
            prepare_slices(_nifti(TEMPLATES / "inia19-t1-brain.nii.gz"), size, 8, name="macaque"),
        )
    except FileNotFoundError as e:
        print(f"left out: macaque ({e})", file=sys.stderr)
    for name in PYDICOM_FILES:
        try:
            add("pydicom", name, prepare_slices(pydicom_test_image(name), size, name=name))
        except (FileNotFoundError, RuntimeError, ValueError) as e:
            print(f"left out: {name} ({e})", file=sys.stderr)
    for name in NIBABEL_FILES:
        try:
            add("nibabel", name, prepare_slices(_nibabel_volume(name), size, 4, name=name))
        except (FileNotFoundError, ImportError, ValueError) as e:
            print(f"left out: {name} ({e})", file=sys.stderr)
    for name in SKIMAGE_GRAY + SKIMAGE_COLOUR:
        try:
            add("scikit-image", name, prepare_slices(_skimage_image(name), size, name=name))
        except (FileNotFoundError, ImportError, ValueError) as e:
            print(f"left out: {name} ({e})", file=sys.stderr)
    rng = np.random.default_rng(seed)
    for kind in CORRUPTIONS:
        for i in range(0, colin.shape[0], 2):
            bad = corrupt(colin[i, 0], kind, rng)
            if kind in GEOMETRIC:  # a turned volume keeps its intensity scaling: the in slice, turned
                add(kind, f"colin27[{i}] {kind}", bad[None, None])
                continue
            # score's input scaling (negatives clipped, 99.5th percentile of positive voxels = 1), framing kept
            add(kind, f"colin27[{i}] {kind}", scale_intensity(np.clip(bad, 0, None))[None, None])
    for it in items:
        it["slice"] = np.asarray(it["slice"], dtype=np.float32).reshape(1, size, size)
    return items


# ---------------------------------------------------------------------------------------------
# AUROC
# ---------------------------------------------------------------------------------------------
def auroc(scores_in, scores_out) -> float:
    """Probability that an out image scores higher than an in image (ties count half): the Mann-Whitney U."""
    a, b = np.asarray(scores_in, float)[:, None], np.asarray(scores_out, float)[None, :]
    return float(((b > a).sum() + 0.5 * (b == a).sum()) / (a.size * b.size))


# ---------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------
def score_all(slices: np.ndarray, network, inferer, codecs, time_samples: int, seed: int) -> dict[str, np.ndarray]:
    """Raw bits/dim, each codec's bits/dim and each corrected score of (N, 1, H, W) slices (as ``score`` does)."""
    from monai_medgen.ood import codec_bits_per_dim, model_bits_per_dim

    out = {"bpd": model_bits_per_dim(slices, network, inferer, time_samples, seed)}
    for codec in codecs:
        out[f"{codec}_bpd"] = codec_bits_per_dim(slices, codec)
        out[f"score_{codec}"] = out["bpd"] - out[f"{codec}_bpd"]
    return out


def orientation_ratio(slices: np.ndarray, network, inferer, time_samples: int, seed: int) -> np.ndarray:
    """A likelihood ratio against other orientations under the main (texture) model: the slice's bits/dim minus
    the fewest bits/dim of its turned copies (:func:`monai_medgen.ood.turned_bits_per_dim`).  > 0: the model finds
    the slice more typical turned."""
    from monai_medgen.ood import turned_bits_per_dim

    bits = turned_bits_per_dim(slices, network, inferer, time_samples, seed)
    return bits[:, 0] - bits[:, 1:].min(1)


def layout_all(slices: np.ndarray, layout, codecs, time_samples: int, seed: int) -> dict[str, np.ndarray]:
    """The layout score of every slice for each codec, and its two parts: the layout model's complexity-corrected
    bits/dim (codec only) and its orientation ratio (turned copies only)."""
    from monai_medgen.ood import codec_bits_per_dim, layout_scores, layout_slices

    first = layout_scores(slices, layout, codecs[0], time_samples, seed)
    out = {k: first[k] for k in ("layout_bpd", "layout_turned_bpd")}
    out["layout_orientation"] = out["layout_bpd"] - out["layout_turned_bpd"]
    small = layout_slices(slices, layout.size)
    for codec in codecs:
        ref = first["layout_codec_bpd"] if codec == codecs[0] else codec_bits_per_dim(small, codec)
        out[f"layout_{codec}_bpd"] = ref
        out[f"layout_codec_{codec}"] = out["layout_bpd"] - ref
        out[f"layout_score_{codec}"] = out["layout_bpd"] - np.minimum(ref, out["layout_turned_bpd"])
    return out


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def _fmt(v: float) -> str:
    return f"{v:.3f}"


def _shown(path) -> str:
    """``path`` relative to the repository when it is inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def report(items, scores, calibration, thresholds, args, model_sha: str, seconds: float, gammas=None) -> str:
    groups = list(dict.fromkeys(it["group"] for it in items))
    label = np.array([it["label"] for it in items], dtype=bool)
    group = np.array([it["group"] for it in items])
    columns = [("raw bits/dim", "bpd")] + [
        (f"{c.upper() if c == 'png' else 'JPEG-XL'}-corrected", f"score_{c}") for c in args.codecs
    ]
    if "orientation" in scores:
        columns.append(("orientation ratio", "orientation"))
    layout = "layout_bpd" in scores
    if layout:
        columns += [
            (f"layout: {args.codecs[0].upper()} part only", f"layout_codec_{args.codecs[0]}"),
            ("layout: turned part only", "layout_orientation"),
        ] + [(f"layout score ({c.upper() if c == 'png' else 'JPEG-XL'})", f"layout_score_{c}") for c in args.codecs]
    default_key = f"layout_score_{args.codecs[0]}" if layout else f"score_{args.codecs[0]}"
    lines = [
        "# Out-of-distribution score of `monai-medgen score`: panel AUROC",
        "",
        f"Command (this 2-core CPU, {time.strftime('%Y-%m-%d')}, {seconds / 60:.0f} min):",
        "",
        "```bash",
        "PYTHONPATH=. python scripts/evaluate_ood.py" + (" --orientation-ratio" if "orientation" in scores else ""),
        "```",
        "",
        f"Model: `{_shown(args.bundle)}` (`models/model.pt` SHA-256 `{model_sha[:16]}...`"
        + (f", schedule gamma_0 {gammas[0]:.2f}, gamma_1 {gammas[1]:.2f}" if gammas else "")
        + (", layout model `models/layout_model.pt`" if layout else "")
        + f"), {args.time_samples} stratified "
        f"diffusion times per slice, seed {args.seed}. Scores (bits/dim; higher = less typical):",
        "",
        "- **raw bits/dim**: the VDM's variational bound on the slice;",
        "- **PNG-corrected** (`score --score texture`): raw bits/dim minus lossless PNG's bits/dim on the same 8-bit "
        "slice (Serra et al. 2020);",
    ]
    if "jpegxl" in args.codecs:
        lines.append(
            "- **JPEG-XL-corrected** (`score --codec jpegxl`, needs `imagecodecs`): the same with JPEG-XL "
            "lossless, effort 9;"
        )
    if "orientation" in scores:
        lines.append(
            "- **orientation ratio** (a likelihood-ratio alternative, not in `score`): raw bits/dim minus the "
            "smallest raw bits/dim of the slice turned 90 degrees either way or upside down (same times and "
            "turned noise)."
        )
    if layout:
        lines.append(
            "- **layout score** (the default of `score`; `monai_medgen.ood.layout_scores`): the layout model (the "
            "same VDM trained on whole axial slices at 32 x 32, `configs/train_layout.yaml`) on the slice "
            "area-resized to 32 x 32: its bits/dim minus the fewer of the codec's bits/dim and its own bits/dim on "
            "the slice turned 90 degrees either way or front to back (same times, turned noise). Its two parts are "
            "shown alone: the codec only (`layout: PNG part only`) and the turned copies only (`layout: turned part "
            "only`)."
        )
    lines += [
        "",
        "## AUROC (in: held-out Colin27 slices; out: every other row)",
        "",
        "| score | all out | " + " | ".join(f"{g} ({(group == g).sum()})" for g in groups[1:]) + " |",
        "|---|---|" + "---|" * (len(groups) - 1),
    ]
    for title, key in columns:
        v = scores[key]
        row = [auroc(v[~label], v[label])] + [auroc(v[group == "in"], v[group == g]) for g in groups[1:]]
        lines.append(f"| {title} | **{row[0]:.3f}** | " + " | ".join(f"{r:.3f}" for r in row[1:]) + " |")
    lines += ["", f"{(~label).sum()} in, {label.sum()} out. Acceptance bar: AUROC >= 0.95 over all out images."]
    for title, key in [c for c in columns if c[1] == default_key]:  # the score `score` reports by default
        v = scores[key]
        total = auroc(v[~label], v[label])
        missed = [
            f"{g} ({auroc(v[group == 'in'], v[group == g]):.2f})"
            for g in groups[1:]
            if auroc(v[group == "in"], v[group == g]) < 0.95
        ]
        verdict = "met" if total >= 0.95 else "**not met**"
        lines += [
            "",
            f"With the default score ({title}) the bar is {verdict} (AUROC {total:.3f}). Out groups it does "
            f"not separate (AUROC < 0.95): {', '.join(missed) if missed else 'none'}.",
        ]
        texture = [
            g
            for g in ("other species", "bias field", "rotated 90", "upside down")
            if auroc(v[group == "in"], v[group == g]) < 0.95
        ]
        if texture and not layout:
            lines += [
                "",
                f"The missed {', '.join(texture)} images keep brain texture: another brain, or this brain under "
                "a smooth field or turned. A likelihood only sees what the model has learned, and a model "
                "trained on 64 x 64 crops (left-right flipped) of one template brain has learned local texture "
                "at one intensity scale, not a whole-slice layout, orientation or species; a model trained on "
                "whole slices of more brains is what would separate them, not another codec.",
            ]
    lines += [
        "",
        "## Threshold (chosen on the training data, never on this panel)",
        "",
        f"The {len(calibration['bpd'])} MNI152 2009a axial slices the VDM trains on (nilearn), prepared as "
        f"`score` prepares a volume; threshold = the {args.percentile:g}th percentile of their scores. A volume "
        "is flagged when the mean score of its slices is above it; below, each panel slice is one input.",
        "",
        "| score | threshold | MNI152 training slices above | Colin27 (in) flagged | out flagged | "
        + " | ".join(groups[1:])
        + " |",
        "|---|---|---|---|---|" + "---|" * (len(groups) - 1),
    ]
    for title, key in columns:
        if key not in thresholds:
            continue
        t, v = thresholds[key], scores[key]
        rates = [float((v[group == g] > t).mean()) for g in groups[1:]]
        lines.append(
            f"| {title} | {t:.3f} | {(calibration[key] > t).mean():.0%} | {(v[~label] > t).mean():.0%} | "
            f"{(v[label] > t).mean():.0%} | " + " | ".join(f"{r:.0%}" for r in rates) + " |"
        )
    lines += [
        "",
        "## Every image",
        "",
        "| group | image | "
        + " | ".join(t for t, _ in columns)
        + " | codec bits/dim ("
        + ", ".join(args.codecs)
        + ") |",
        "|---|---|" + "---|" * (len(columns) + 1),
    ]
    for i, it in enumerate(items):
        codec_bits = ", ".join(_fmt(scores[f"{c}_bpd"][i]) for c in args.codecs)
        lines.append(
            f"| {it['group']} | {it['name']} | "
            + " | ".join(_fmt(scores[k][i]) for _, k in columns)
            + f" | {codec_bits} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--bundle", default=str(REPO / "bundles" / "vdm_brain_mri_2d"))
    p.add_argument("--codecs", nargs="+", default=["png", "jpegxl"], help="png always works; jpegxl needs imagecodecs")
    p.add_argument("--time-samples", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--percentile",
        type=float,
        default=None,
        help="threshold: this percentile of the training scores (default: monai_medgen.ood's)",
    )
    p.add_argument("--calibrate", action="store_true", help="only score the training slices and print the thresholds")
    p.add_argument(
        "--orientation-ratio",
        action="store_true",
        help="also the likelihood ratio against other orientations (4x the model evaluations)",
    )
    p.add_argument(
        "--output",
        default=str(REPO / "docs" / "benchmarks" / "ood_score.md"),
        help="the markdown report; the scores go beside it as .json",
    )
    p.add_argument("--report-only", action="store_true", help="rebuild the report from the .json of an earlier run")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from monai_medgen import ood

    if args.percentile is None:
        args.percentile = ood.THRESHOLD_PERCENTILE

    saved = Path(args.output).with_suffix(".json")
    if args.report_only:
        data = json.loads(saved.read_text())
        items = [{"name": n, "group": g, "label": int(g != "in")} for n, g in zip(data["names"], data["groups"])]
        vars(args).update(data["args"])
        arrays = {k: {kk: np.asarray(vv) for kk, vv in data[k].items()} for k in ("scores", "calibration")}
        text = report(
            items,
            arrays["scores"],
            arrays["calibration"],
            data["thresholds"],
            args,
            data["model_sha256"],
            data["seconds"],
            data.get("gammas"),
        )
        Path(args.output).write_text(text)
        print(text)
        return 0
    t0 = time.time()
    torch.manual_seed(args.seed)
    bundle = load_bundle(args.bundle, args.device, kind="vdm", purpose="scoring")
    network, inferer = bundle.network, bundle.inferer
    model_sha = hashlib.sha256((Path(args.bundle) / "models" / "model.pt").read_bytes()).hexdigest()
    # the main model's schedule endpoints: its scores depend on them as much as on the weights
    gammas = [float(g.detach()) for g in inferer.schedule.endpoints()]
    layout = ood.load_layout_model(bundle)
    train_slices = mni152_slices()
    calibration = score_all(train_slices, network, inferer, args.codecs, args.time_samples, args.seed)
    if layout is not None:
        calibration.update(layout_all(train_slices, layout, args.codecs, args.time_samples, args.seed))
    keys = [k for k in calibration if k == "bpd" or k.startswith(("score_", "layout_score_", "layout_codec_"))]
    keys += ["layout_orientation"] if layout is not None else []
    thresholds = {k: float(np.percentile(calibration[k], args.percentile)) for k in keys}
    listed = ", ".join(f"{k} {v:.3f}" for k, v in thresholds.items())
    print(f"threshold ({args.percentile:g}th percentile of {len(calibration['bpd'])} MNI152 training slices): {listed}")
    if args.calibrate:
        return 0
    items = build_panel()
    slices = np.stack([it["slice"] for it in items])
    scores = score_all(slices, network, inferer, args.codecs, args.time_samples, args.seed)
    if layout is not None:
        scores.update(layout_all(slices, layout, args.codecs, args.time_samples, args.seed))
    if args.orientation_ratio:
        scores["orientation"] = orientation_ratio(slices, network, inferer, args.time_samples, args.seed)
        calibration["orientation"] = orientation_ratio(train_slices, network, inferer, args.time_samples, args.seed)
        thresholds["orientation"] = float(np.percentile(calibration["orientation"], args.percentile))
    seconds = time.time() - t0
    text = report(items, scores, calibration, thresholds, args, model_sha, seconds, gammas)
    print(text)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    saved.write_text(
        json.dumps(
            {
                "args": {k: getattr(args, k) for k in ("bundle", "codecs", "time_samples", "seed", "percentile")},
                "model_sha256": model_sha,
                "gammas": gammas,
                "seconds": seconds,
                "thresholds": thresholds,
                "names": [it["name"] for it in items],
                "groups": [it["group"] for it in items],
                "scores": {k: [float(x) for x in v] for k, v in scores.items()},
                "calibration": {k: [float(x) for x in v] for k, v in calibration.items()},
            },
            indent=1,
        )
    )
    print(f"written: {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
