"""What the ``vdm_latent_brain_mri_3d`` bundle's configs call: 1 mm brain volumes, the stage-1 autoencoder file,
latents for stage 2 (with the scale factor), the stage-2 model file, generation of large volumes with their time
and peak memory, and the evaluation table.

Stage 1 (``configs/train_autoencoder.yaml``) trains MONAI's ``AutoencoderKL`` and writes ``models/autoencoder.pt``
(its plain state_dict) with ``models/autoencoder_info.json`` (the constructor arguments, so later stages rebuild it
without repeating them).  Stage 2 (``configs/train.yaml``) encodes the training volume once with the frozen
autoencoder, sets the scale factor, trains the latent score network and writes ``models/model.pt`` (the score
network's plain state_dict), ``models/model_schedule.pt`` (the learned schedule) and ``models/model_info.json``
(scale factor, the training volume's size and affine, and the SHA-256 of the autoencoder file it belongs to).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.networks.nets import AutoencoderKL
from monai.transforms import CropForeground, Flip, ResizeWithPadOrCrop, SpatialCrop
from torch import nn

from monai_medgen import io
from monai_medgen.bundle.workflow import load_model, model_sidecars, read_model_file, save_model
from monai_medgen.data import datalist_from_path, load_colin27, load_mni152, load_volume, scale_intensity
from monai_medgen.handlers import save_grid_png
from monai_medgen.inferers.vdm import to_levels
from monai_medgen.metrics import psnr, ssim

__all__ = [
    "VOLUME_SIZE",
    "evaluate_latent_vdm",
    "load_autoencoder",
    "load_latent_model",
    "prepare_latents",
    "save_latent_model",
    "stored_scale_factor",
    "volume_items",
]

logger = logging.getLogger(__name__)

VOLUME_SIZE = (160, 192, 160)  # 1 mm voxels: holds the MNI152 brain (145 x 181 x 155) and Colin27 (144 x 180 x 152)


def _size3(size) -> tuple[int, int, int]:
    s = (int(size),) * 3 if np.isscalar(size) else tuple(int(v) for v in size)
    if len(s) != 3 or min(s) < 1:
        raise ValueError(f"size must be an int or 3 positive ints, got {size!r}.")
    return s  # type: ignore[return-value]


def _has_path(p) -> bool:
    return p is not None and str(p).strip().lower() not in ("", "none")


# ---------------------------------------------------------------------------------------------
# volumes
# ---------------------------------------------------------------------------------------------
def _brain_crop(volume01: np.ndarray, affine: np.ndarray, size: Sequence[int], shift=(0, 0, 0), flip: bool = False):
    """(1, *size) crop of a [0, 1] volume centred on its brain's bounding box (padded with 0 where the box is
    smaller), moved by ``shift`` voxels, optionally flipped left-right; returns (array, affine of the crop) with
    MONAI's ``CropForeground`` / ``ResizeWithPadOrCrop`` / ``Flip`` keeping the affine."""

    margin = max(abs(int(s)) for s in shift)
    img = MetaTensor(torch.as_tensor(np.asarray(volume01, dtype=np.float32)[None]), affine=torch.as_tensor(affine))
    img = CropForeground(select_fn=lambda x: x > 0.02, margin=0)(img)
    img = ResizeWithPadOrCrop([s + 2 * margin for s in size])(img)
    if margin:
        start = [margin + int(d) for d in shift]
        img = SpatialCrop(roi_start=start, roi_end=[a + s for a, s in zip(start, size)])(img)
    if flip:  # left-right: axis 0 of RAS volumes; the affine follows the data
        img = Flip(spatial_axis=0)(img)
    return np.asarray(img.as_tensor(), dtype=np.float32), np.asarray(img.affine, dtype=np.float64)


def _source_volumes(dataset_dir, source: str) -> list[tuple[np.ndarray, np.ndarray, str]]:

    if _has_path(dataset_dir):
        out = []
        for entry in datalist_from_path(dataset_dir):
            vol, affine = load_volume(entry["image"])
            vol = np.squeeze(vol)
            if vol.ndim != 3:
                raise ValueError(f"{entry['image']!r} is not a 3D volume (shape {vol.shape}).")
            out.append((scale_intensity(np.clip(vol, 0, None)), affine, str(entry["image"])))
        return out
    if source not in ("mni152", "colin27"):
        raise ValueError(f"source must be 'mni152' (training) or 'colin27' (held out), got {source!r}.")
    vol, affine = load_mni152() if source == "mni152" else load_colin27()
    return [(scale_intensity(vol), affine, f"the {source} demo brain")]


def volume_items(
    dataset_dir: str | os.PathLike | None = None,
    source: str = "mni152",
    size: int | Sequence[int] = VOLUME_SIZE,
    repeats: int = 1,
) -> list[dict]:
    """Whole brain volumes at their own (1 mm for the demo brains) voxels, each cropped or padded to ``size``
    around its brain's bounding box: ``[{"image": (1, *size) float32 in [0, 1], "affine": (4, 4)}]``.

    Args:
        dataset_dir: ``None`` / ``""``: the demo brain ``source`` (``"mni152"`` from nilearn, ``"colin27"`` from
            mricron-data); otherwise a folder of NIfTI / NRRD / MHA files or DICOM series, or a datalist JSON.
            No resampling: give volumes of about 1 mm voxels, skull-stripped, like the demo brains.
        size: output size (divisible by 16 for the bundle's networks).
        repeats: list the items this many times (a batch of crops of one volume).
    """
    size = _size3(size)
    if int(repeats) < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}.")
    items = []
    for vol, affine, name in _source_volumes(dataset_dir, source):
        image, aff = _brain_crop(vol, affine, size)
        items.append({"image": image, "affine": aff})
        logger.info(f"volume {'x'.join(map(str, size))} from {name}")
    return [dict(it) for _ in range(int(repeats)) for it in items]


# ---------------------------------------------------------------------------------------------
# stage 1: the autoencoder file
# ---------------------------------------------------------------------------------------------
def load_autoencoder(path: str | os.PathLike, device=None) -> nn.Module:
    """MONAI ``AutoencoderKL`` rebuilt from the ``config`` entry stored with stage 1's ``models/autoencoder.pt``
    (``models/autoencoder_info.json`` beside the plain state_dict, or the ``config`` entry of a file of the earlier
    single-file layout) and loaded with its weights (checksum verified), in eval mode; ``.sha256`` holds the
    weights file's SHA-256.

    Raises:
        FileNotFoundError: when stage 1 has not been run (the message gives its command).
        ValueError: when no ``config`` is stored with the weights or they do not match it.
    """

    if not os.path.isfile(str(path)):
        raise FileNotFoundError(
            f"autoencoder file {str(path)!r} not found: run stage 1 first (python -m monai.bundle run --config_file "
            "<bundle>/configs/train_autoencoder.yaml --bundle_root <bundle>) or pass --autoencoder_path."
        )
    weights, _, info = read_model_file(path)
    if not isinstance(info.get("config"), dict):
        raise ValueError(
            f"{str(path)!r} is not a stage-1 autoencoder file: no 'config' entry is stored with it "
            f"({model_sidecars(path)[1]!r})."
        )
    ae = AutoencoderKL(**info["config"])
    ae.load_state_dict(weights)
    ae.sha256 = io.sha256_of(path)
    return ae.to(torch.device(device) if device is not None else "cpu").eval()


# ---------------------------------------------------------------------------------------------
# stage 2: latents, scale factor, model file
# ---------------------------------------------------------------------------------------------
def _encode_volumes(inferer, volumes: Sequence[np.ndarray]) -> list[torch.Tensor]:
    return [inferer.encode_raw(torch.as_tensor(v)[None] * 2 - 1)[0].cpu() for v in volumes]


def prepare_latents(
    inferer,
    dataset_dir: str | os.PathLike | None = None,
    val_dataset_dir: str | os.PathLike | None = None,
    size: int | Sequence[int] = VOLUME_SIZE,
    shifts: Sequence[int] = (0, 2),
    flip: bool = True,
    validation: bool = True,
) -> dict:
    """Encode the training volumes once with the frozen autoencoder (stage 2 starts here).

    Each training volume is cropped at every combination of ``shifts`` voxels along the three axes and, with
    ``flip``, also flipped left-right, then encoded (posterior mean): ``len(shifts)^3 * (1 + flip)`` latents per
    volume, the augmentation of a one-brain data set.  When ``inferer.scale_factor`` is None it is set to
    1 / std of these latents (:meth:`LatentVDMInferer.fit_scale_factor`); a resumed run passes the stored value.

    Returns:
        ``{"train": [{"image": (C_lat, *size / f)}], "val": [...] (held-out Colin27 or ``val_dataset_dir``),
        "affine": (4, 4) of the first training volume, "size": size, "scale_factor", "clipped_fraction"}``,
        latents in the VDM's [-1, 1].
    """
    size = _size3(size)
    shifts = [int(s) for s in ([shifts] if np.isscalar(shifts) else shifts)]
    if not shifts:
        raise ValueError("shifts must hold at least one offset (0 for none).")
    start = time.perf_counter()
    crops, affine = [], None
    for vol, aff, _ in _source_volumes(dataset_dir, "mni152"):
        for shift in itertools.product(shifts, repeat=3):
            for f in (False, True) if flip else (False,):
                image, a = _brain_crop(vol, aff, size, shift=shift, flip=f)
                crops.append(image)
                if affine is None and not any(shift) and not f:
                    affine = a
        if affine is None:
            affine = _brain_crop(vol, aff, size)[1]
    raw = _encode_volumes(inferer, crops)
    if inferer.scale_factor is None:
        inferer.fit_scale_factor(raw)
    clipped = float(np.mean([inferer.clipped_fraction(z) for z in raw]))
    train = [{"image": inferer.to_model_space(z)} for z in raw]
    val = []
    if validation:
        val_vols = [v["image"] for v in volume_items(val_dataset_dir, source="colin27", size=size)]
        val = [{"image": inferer.to_model_space(z)} for z in _encode_volumes(inferer, val_vols)]
    logger.info(
        f"{len(train)} training latents {tuple(train[0]['image'].shape)} and {len(val)} held-out from volumes "
        f"{'x'.join(map(str, size))} in {time.perf_counter() - start:.0f} s; scale factor {inferer.scale_factor:.4f}, "
        f"{100 * clipped:.3f}% of values beyond {inferer.latent_range:g} std (clipped)"
    )
    return {
        "train": train,
        "val": val,
        "affine": affine,
        "size": list(size),
        "scale_factor": inferer.scale_factor,
        "clipped_fraction": clipped,
    }


def stored_scale_factor(checkpoint: str | os.PathLike | None, key: str = "latent_inferer") -> float | None:
    """The scale factor saved in a stage-2 training checkpoint (what a resumed run must reuse), None without one."""
    if not _has_path(checkpoint) or not os.path.isfile(str(checkpoint)):
        return None
    state = io.safe_torch_load(checkpoint, map_location="cpu")
    value = (state.get(key) or {}).get("scale_factor") if isinstance(state, dict) else None
    return None if value is None else float(value)


def save_latent_model(
    path: str | os.PathLike,
    network: nn.Module,
    schedule: nn.Module,
    inferer,
    ema=None,
    latents: dict | None = None,
    **info,
) -> str:
    """Stage 2's ``models/model.pt`` and its sidecars (:func:`~monai_medgen.bundle.save_model`); the information
    entries are ``scale_factor``, ``latent_range``, ``autoencoder_sha256`` and, from :func:`prepare_latents`' result,
    the training volume's ``image_size`` and ``affine`` (what inference writes by default)."""
    extra = {
        "scale_factor": inferer.scale_factor,
        "latent_range": inferer.latent_range,
        "autoencoder_sha256": getattr(inferer.autoencoder, "sha256", ""),
    }
    if latents:
        extra.update(
            image_size=[int(s) for s in latents["size"]],
            affine=np.asarray(latents["affine"], dtype=np.float64).tolist(),
        )
    return save_model(path, network, schedule, ema=ema, **extra, **info)


def load_latent_model(
    path: str | os.PathLike, network: nn.Module, schedule: nn.Module, inferer, map_location="cpu"
) -> dict:
    """Load stage 2's file into ``network`` / ``schedule`` and its scale factor into ``inferer``; returns the
    file's other entries.  Warns when the autoencoder differs from the one the model was trained on."""
    info = load_model(path, network, schedule, map_location=map_location)
    if info.get("scale_factor") is None:
        raise ValueError(f"{str(path)!r} has no 'scale_factor': it is not a latent VDM file.")
    inferer.load_state_dict(info)
    trained_on, used = info.get("autoencoder_sha256"), getattr(inferer.autoencoder, "sha256", None)
    if trained_on and used and trained_on != used:
        logger.warning(f"{path} was trained on another autoencoder file (SHA-256 {trained_on[:12]}, given {used[:12]})")
    return info


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------
def _histogram_entropy_bits(levels: torch.Tensor) -> float:
    """Mean over channels of the entropy (bits) of each channel's own histogram of levels: (C, *spatial)."""
    out = []
    for c in levels.reshape(levels.shape[0], -1):
        p = torch.bincount(c).float()
        p = p[p > 0] / c.numel()
        out.append(float(-(p * torch.log2(p)).sum()))
    return float(np.mean(out))


@torch.no_grad()
def evaluate_latent_vdm(
    network: nn.Module,
    inferer,
    dataset_dir: str | os.PathLike | None = None,
    image_size: int | Sequence[int] = VOLUME_SIZE,
    num_time_samples: int = 16,
    seed: int = 0,
    output_file: str | os.PathLike | None = None,
    model_info: dict | None = None,
) -> dict:
    """The bundle's metrics table, printed as markdown and written as JSON.

    - autoencoder reconstruction (decoding of the posterior mean) of the held-out volume (Colin27, or the first
      volume of ``dataset_dir``), PSNR and SSIM on [0, 1] intensities over the brain's bounding box, next to the
      same for trilinear upsampling of an area-downsampled copy holding as many values as the latent;
    - bits per latent dimension of the held-out latent (the VDM's variational bound on the latents quantised to
      256 levels over +-``latent_range`` std), beside the training (MNI152) latent and beside a model-free code
      (each channel's own histogram entropy).  No pixel bits/dim: the autoencoder is lossy.

    With ``output_file``, the JSON goes there and ``reconstruction.png`` (held-out volume above its reconstruction,
    three orthogonal middle slices) beside it.
    """

    size = _size3(image_size)
    gen = torch.Generator().manual_seed(int(seed))
    network.eval()
    held = volume_items(dataset_dir, source="colin27", size=size)[0]["image"]
    train = volume_items(None, source="mni152", size=size)[0]["image"] if not _has_path(dataset_dir) else None
    truth = torch.as_tensor(held)[None]
    raw = inferer.encode_raw(truth * 2 - 1)
    recon = (inferer.autoencoder.decode(raw).cpu().clamp(-1, 1) + 1) / 2
    n_lat = raw[0].numel()
    factor = (truth[0].numel() / n_lat) ** (1 / 3)
    small = [max(1, round(s / factor)) for s in size]
    linear = F.interpolate(
        F.interpolate(truth, size=small, mode="area"), size=size, mode="trilinear", align_corners=False
    )
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in torch.nonzero(truth[0, 0] > 0.02, as_tuple=True))
    sel = (slice(None), slice(None), *box)

    def fidelity(img):
        a, t = img[sel].clamp(0, 1), truth[sel]
        return float(psnr(a, t)[0]), float(ssim(a, t)[0])

    ae_psnr, ae_ssim = fidelity(recon)
    lin_psnr, lin_ssim = fidelity(linear)
    latents = {"held-out": inferer.to_model_space(raw)}
    if train is not None:
        latents["training (MNI152)"] = inferer.encode(torch.as_tensor(train)[None] * 2 - 1)
    dev = next(network.parameters()).device
    bpd = {
        k: {
            t: float(v[0])
            for t, v in inferer.vdm.bits_per_dim(
                z.to(dev), network, num_time_samples=int(num_time_samples), generator=gen
            ).items()
        }
        for k, z in latents.items()
    }
    entropy = _histogram_entropy_bits(to_levels(latents["held-out"][0].cpu(), inferer.vdm.vocab_size))
    held_name = "Colin27" if not _has_path(dataset_dir) else str(dataset_dir)
    lat = "x".join(map(str, raw.shape[1:]))
    rate = bpd["held-out"]["bpd"] * n_lat / truth[0].numel()
    iters = (model_info or {}).get("iteration", "?")
    lines = [
        f"held-out {held_name} volume {'x'.join(map(str, size))} at 1 mm, latent {lat} (x{factor:.2f} fewer values per "
        f"axis); VDM {iters} iterations, {num_time_samples} diffusion times per latent\n",
        "| metric | value |",
        "|---|---|",
        f"| autoencoder reconstruction, {held_name} brain box: PSNR (dB) / SSIM | {ae_psnr:.2f} / {ae_ssim:.3f} |",
        f"| trilinear from an area-downsampled copy with as many values as the latent: PSNR (dB) / SSIM | "
        f"{lin_psnr:.2f} / {lin_ssim:.3f} |",
        f"| latent VDM, {held_name} latent: bits per latent dim | {bpd['held-out']['bpd']:.3f} |",
    ]
    if "training (MNI152)" in bpd:
        lines.append(
            f"| latent VDM, training MNI152 latent: bits per latent dim | {bpd['training (MNI152)']['bpd']:.3f} |"
        )
    lines += [
        f"| each latent channel's own 256-level histogram entropy, {held_name} (model-free reference) | {entropy:.3f} |",
        f"| rate of the lossy latent code: VDM bits per image voxel, {held_name} (at the PSNR above; not a lossless "
        f"bits/dim) | {rate:.4f} |",
    ]
    terms = ", ".join(f"{k} {bpd['held-out'][k]:.4f}" for k in ("diffusion", "prior", "reconstruction"))
    print(
        "\n" + "\n".join(lines) + f"\n\nheld-out latent terms (bits per latent dim): {terms}; scale factor "
        f"{inferer.scale_factor:.4f}, {100 * inferer.clipped_fraction(raw):.3f}% of held-out latent values clipped at "
        f"{inferer.latent_range:g} std",
        flush=True,
    )
    res = {
        "autoencoder_psnr": ae_psnr,
        "autoencoder_ssim": ae_ssim,
        "trilinear_psnr": lin_psnr,
        "trilinear_ssim": lin_ssim,
        "latent_bpd": bpd["held-out"],
        "train_latent_bpd": bpd.get("training (MNI152)"),
        "latent_histogram_entropy": entropy,
        "bits_per_image_voxel": rate,
        "latent_shape": list(raw.shape[1:]),
        "image_size": list(size),
        "scale_factor": inferer.scale_factor,
        "clipped_fraction": inferer.clipped_fraction(raw),
        "iteration": iters,
        "num_time_samples": int(num_time_samples),
    }
    if output_file:
        folder = os.path.dirname(os.path.abspath(str(output_file)))
        os.makedirs(folder, exist_ok=True)
        with open(str(output_file), "w") as f:
            json.dump(res, f, indent=2)
        # top: the held-out volume, bottom: its reconstruction (three orthogonal middle slices each)
        res["figure"] = save_grid_png(
            torch.cat([truth, recon]), os.path.join(folder, "reconstruction.png"), ncols=1, value_range=(0.0, 1.0)
        )
    return res
