"""The pictures the README and the bundle READMEs show that no training or evaluation run writes by itself.

    python scripts/readme_figures.py curves              # docs/training_curves.png of each bundle, from its training log
    python scripts/readme_figures.py samples             # sample grid and sampling GIF of the generative 2D bundles
    python scripts/readme_figures.py curves --bundles vdm_brain_mri_2d

``curves`` reads the committed ``docs/train_log.txt`` of a bundle (and ``docs/train_autoencoder_log.txt`` for the
latent VDM: one row per stage) and draws the training loss against the iteration, with the held-out validation
metric beside it where the run validated; it needs matplotlib (``pip install matplotlib``).

``samples`` runs each generative bundle's own ``configs/inference.yaml`` on its committed weights through MONAI's
bundle runner and copies what it writes into the bundle's ``docs/``:

- ``vdm_brain_mri_2d``: ``samples.png`` (16 samples, DPM-Solver++ 32 steps) and ``sampling.gif`` (the first 4,
  from noise to image);
- ``cddpm_class_conditional_2d``: ``sampling.gif``, one row of 4 samples per class (axial, coronal, sagittal),
  guidance 2, DPM-Solver++ 25 steps (its ``samples.png`` is the training run's grid and stays as it is).

Both GIFs are shortened by :func:`compact_gif` (12 frames; fewer grey levels in the noisy frames) to stay small.

The figures of bundles whose weights are being retrained are left alone unless named with ``--bundles``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
CURVE_BUNDLES = (
    "cddpm_class_conditional_2d",
    "cddpm_super_resolution_2d",
    "cddpm_super_resolution_3d",
    "vdm_brain_mri_2d",
    "vdm_brain_mri_3d",
    "vdm_latent_brain_mri_3d",
)
SAMPLE_BUNDLES = ("vdm_brain_mri_2d", "cddpm_class_conditional_2d")
PLANES = ("axial", "coronal", "sagittal")
VAL_METRICS = ("val_bpd", "val_latent_bpd", "val_psnr")  # the key metric of each kind of bundle, first found

_TRAIN = re.compile(r"Epoch: (\d+)/\d+, Iter: (\d+)/(\d+) -- (\w+): ([-+0-9.eE]+)")
_VAL = re.compile(r"Epoch\[(\d+)\] Metrics -- (.*)")
_INIT = re.compile(r"init_from: .*, iterations counted from (\d+)")  # a run started from trained weights


def parse_log(path: Path) -> dict:
    """Training and validation series of a MONAI bundle training log.

    Returns:
        ``{"train": (name, iterations, values), "val": (name, iterations, values) or None}``; iterations count
        from the start of training (epoch lengths read from the log); a run resumed from an earlier checkpoint
        replaces the points of the run before it from that checkpoint on; a run started from trained weights
        (``init_from``, its "iterations counted from N" line) goes on from their N iterations, and so do the runs
        that resume it.

    Raises:
        ValueError: when the log has no training loss line.
    """
    train_name, train_it, train_v, epoch_length, offset = None, [], [], None, 0
    val = {}
    for line in path.read_text(errors="replace").splitlines():
        m = _INIT.search(line)
        if m:
            offset = int(m[1])
            continue
        m = _TRAIN.search(line)
        if m:
            epoch, it, epoch_length, name, value = int(m[1]), int(m[2]), int(m[3]), m[4], float(m[5])
            train_name = train_name or name
            if name == train_name:
                step = offset + (epoch - 1) * epoch_length + it
                while train_it and train_it[-1] >= step:  # a resumed run replaces what its checkpoint did not keep
                    train_it.pop()
                    train_v.pop()
                train_it.append(step)
                train_v.append(value)
            continue
        m = _VAL.search(line)
        if m and epoch_length:
            for key, value in re.findall(r"(\w+): ([-+0-9.eE]+)", m[2]):
                points = val.setdefault(key, [])
                step = offset + int(m[1]) * epoch_length
                while points and points[-1][0] >= step:
                    points.pop()
                points.append((step, float(value)))
    if not train_it:
        raise ValueError(f"{path} holds no training loss line ('Epoch: E/N, Iter: I/M -- name: value').")
    key = next((k for k in VAL_METRICS if k in val), None)
    val_series = None if key is None else (key, [p[0] for p in val[key]], [p[1] for p in val[key]])
    return {"train": (train_name, train_it, train_v), "val": val_series}


def training_curves(bundle: str) -> Path:
    """Write ``bundles/<bundle>/docs/training_curves.png`` from its training log(s); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs = BUNDLES / bundle / "docs"
    logs = [
        (label, docs / name)
        for label, name in (("autoencoder (stage 1)", "train_autoencoder_log.txt"), ("", "train_log.txt"))
        if (docs / name).is_file()
    ]
    if not logs:
        raise FileNotFoundError(f"{docs} has no train_log.txt.")
    series = [(label, parse_log(path)) for label, path in logs]
    if len(series) > 1:
        series[-1] = ("latent VDM (stage 2)", series[-1][1])
    cols = 2 if any(s["val"] for _, s in series) else 1
    fig, axes = plt.subplots(len(series), cols, figsize=(4.2 * cols, 2.6 * len(series)), squeeze=False)
    for row, (label, s) in enumerate(series):
        name, its, values = s["train"]
        ax = axes[row, 0]
        ax.plot(its, values, ".-", color="tab:blue", lw=1, ms=3)
        ax.set_title(f"{label + ': ' if label else ''}{name} (training batches as logged)", fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.grid(alpha=0.3)
        if cols == 2:
            ax = axes[row, 1]
            if s["val"]:
                vname, vits, vvalues = s["val"]
                ax.plot(vits, vvalues, "o-", color="tab:orange", lw=1, ms=4)
                ax.set_xlim(axes[row, 0].get_xlim())  # the same iterations as the training panel
                ax.set_title(f"{vname} (held-out)", fontsize=9)
                ax.set_xlabel("iteration", fontsize=8)
                ax.grid(alpha=0.3)
            else:
                ax.axis("off")
        for a in axes[row]:
            a.tick_params(labelsize=7)
    fig.suptitle(f"{bundle}: training of the committed weights (docs/{logs[-1][1].name})", fontsize=9)
    fig.tight_layout()
    out = docs / "training_curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _run_inference(bundle: Path, output_dir: Path, **overrides) -> None:
    from monai.bundle import run

    run(
        config_file=str(bundle / "configs" / "inference.yaml"),
        bundle_root=str(bundle),
        logging_file=str(bundle / "configs" / "logging.conf"),
        output_dir=str(output_dir),
        **overrides,
    )


def _grid_to_row(grid: np.ndarray, count: int, size: int, pad: int = 2) -> np.ndarray:
    """The ``count`` tiles of a square sample grid (:func:`monai_medgen.handlers.make_grid`: ``size``-pixel tiles,
    ``pad`` pixels apart) laid side by side in one row."""
    ncols = int(np.ceil(np.sqrt(count)))
    tiles = []
    for i in range(count):
        r, c = divmod(i, ncols)
        y, x = pad + r * (size + pad), pad + c * (size + pad)
        tiles += [grid[y : y + size, x : x + size], np.zeros((size, pad), np.uint8)]
    return np.concatenate([np.zeros((size, pad), np.uint8)] + tiles, 1)


def _rows_gif(paths: list[Path], out: Path, count: int, size: int, pad: int = 2) -> Path:
    """One GIF whose frame k holds frame k of each of ``paths`` (sampling GIFs of ``count`` samples each) as one row
    of tiles, the rows stacked top to bottom."""
    from PIL import Image, ImageSequence

    movies = [[np.asarray(f.convert("L")) for f in ImageSequence.Iterator(Image.open(p))] for p in paths]
    n = min(len(m) for m in movies)
    frames = []
    for i in range(n):
        rows = [_grid_to_row(m[i], count, size, pad) for m in movies]
        gap = np.zeros((pad, rows[0].shape[1]), np.uint8)
        frames.append(Image.fromarray(np.concatenate([gap] + [x for r in rows for x in (r, gap)], 0)))
    frames[0].save(out, save_all=True, append_images=frames[1:], duration=80, loop=0)
    return out


def compact_gif(path: Path, num_frames: int = 12, levels: int = 32, duration_ms: int = 150) -> Path:
    """Shrink a sampling GIF in place for a README: ``num_frames`` frames evenly spread over the chain (the last one
    kept), the intermediate (noisy) frames reduced to ``levels`` grey levels, which LZW compresses several times
    better; the final samples keep all 256 levels and are held for 10 frames' time."""
    from PIL import Image, ImageSequence

    frames = [np.asarray(f.convert("L")) for f in ImageSequence.Iterator(Image.open(path))]
    keep = sorted(set(np.linspace(0, len(frames) - 1, num_frames).round().astype(int).tolist()))
    out = []
    for i in keep:
        a = frames[i]
        if i != len(frames) - 1:
            a = (np.round(a / 255.0 * (levels - 1)) * (255.0 / (levels - 1))).astype(np.uint8)
        out.append(Image.fromarray(a))
    out[0].save(
        path, save_all=True, append_images=out[1:], duration=[duration_ms] * (len(out) - 1) + [duration_ms * 10], loop=0
    )
    return path


def sample_figures(bundle: str) -> list[Path]:
    """Run ``bundle``'s inference on its committed weights and copy its pictures into its ``docs/``."""
    folder = BUNDLES / bundle
    docs = folder / "docs"
    with tempfile.TemporaryDirectory(prefix="medgen_figures_") as tmp:
        tmp = Path(tmp)
        if bundle == "vdm_brain_mri_2d":
            _run_inference(folder, tmp, num_samples=16, batch_size=4, sampler="dpm++", num_steps=32, seed=0)
            shutil.copy(tmp / "samples.png", docs / "samples.png")
            return [docs / "samples.png", compact_gif(Path(shutil.copy(tmp / "sampling.gif", docs / "sampling.gif")))]
        if bundle == "cddpm_class_conditional_2d":
            gifs = []
            for label, plane in enumerate(PLANES):
                _run_inference(
                    folder,
                    tmp / plane,
                    class_label=label,
                    guidance_scale=2.0,
                    num_samples=4,
                    batch_size=4,
                    image_size=64,
                    sampler="dpm++",
                    num_steps=25,
                    seed=0,
                )
                gifs.append(tmp / plane / "sampling.gif")
            return [compact_gif(_rows_gif(gifs, docs / "sampling.gif", count=4, size=64))]
    raise ValueError(f"bundle must be one of {SAMPLE_BUNDLES}, got {bundle!r}.")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=("curves", "samples"))
    parser.add_argument(
        "--bundles",
        nargs="+",
        help="bundle names (default: every bundle the figure applies to, except those being retrained)",
    )
    args = parser.parse_args(argv)
    names = args.bundles or (CURVE_BUNDLES if args.what == "curves" else SAMPLE_BUNDLES)
    for name in names:
        paths = [training_curves(name)] if args.what == "curves" else sample_figures(name)
        for p in paths:
            print(f"{name}: {p.relative_to(REPO)} ({p.stat().st_size // 1024} kB)")


if __name__ == "__main__":
    main()
