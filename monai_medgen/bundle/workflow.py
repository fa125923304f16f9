"""What the bundle configs call: data lists, the bundle's model file, held-out bits/dim on a MONAI
evaluator, and generation to PNG grids and NIfTI files marked synthetic.

The logic lives here, in the installed package, so that a bundle runs from any working directory
(a bundle-local ``scripts`` package is imported before the bundle root is on ``sys.path``;
REFERENCE section 4).
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from ignite.metrics import Average
from monai.data import DataLoader, DistributedSampler
from monai.engines import Evaluator
from monai.engines.utils import IterationEvents
from monai.inferers import Inferer
from torch import nn

from monai_medgen import io
from monai_medgen.data import PLANES, datalist_from_path, demo_slices, demo_volumes, user_slices, user_volumes
from monai_medgen.engines import unwrap_network
from monai_medgen.io import SYNTHETIC_AUX_FILE, SYNTHETIC_DESCRIPTION, Provenance, is_synthetic
from monai_medgen.metrics import available_codecs, codec_bits_per_dim
from monai_medgen.samplers import batched_randn

__all__ = [
    "SYNTHETIC_AUX_FILE",
    "SYNTHETIC_DESCRIPTION",
    "AllReduceGradients",
    "BitsPerDimInferer",
    "OutputMean",
    "draw_samples",
    "evaluate_class_conditional",
    "inference_items",
    "item_evaluator",
    "is_synthetic",
    "latest_checkpoint",
    "load_model",
    "MODEL_INFO_SUFFIX",
    "MODEL_SCHEDULE_SUFFIX",
    "convert_model_file",
    "model_sidecars",
    "prepare_items",
    "report_bits_per_dim",
    "sample_fn",
    "torchrun_command",
    "save_model",
    "read_model_file",
    "read_model_info",
    "save_synthetic_nifti",
    "transfer_weights",
    "training_sampler",
    "validation_sampler",
]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def _has_path(dataset_dir) -> bool:
    return dataset_dir is not None and str(dataset_dir).strip().lower() not in ("", "none")


def prepare_items(
    dataset_dir: str | os.PathLike | None = None,
    spatial_dims: int = 2,
    size: int | Sequence[int] = 128,
    source: str = "mni152",
    planes: Sequence[str] = ("axial",),
    num_slices: int | None = None,
    repeats: int = 1,
    keys: Sequence[str] = ("image", "label"),
) -> list[dict]:
    """The bundle's data list: the offline demo brain when ``dataset_dir`` is empty, else the user's data.

    Args:
        dataset_dir: ``None`` / ``""``: demo data (:func:`monai_medgen.data.demo_slices` / ``demo_volumes``
            of ``source``); otherwise a folder of NIfTI/NRRD/MHA files or DICOM series, or a datalist JSON
            (:func:`monai_medgen.data.user_slices` / ``user_volumes``).
        spatial_dims: 2 (slices) or 3 (volumes).
        size: in-plane size of the slices (2D) or the volume size (3D).
        source: demo brain, ``"mni152"`` (training) or ``"colin27"`` (held out).
        planes: slice planes (2D), e.g. ``("axial",)``; the plane index is the ``label``.
        num_slices: evenly spaced slices per plane and volume (None: every slice with enough brain).
        repeats: list the items this many times (a short epoch over one 3D volume).
        keys: entries kept in each item (strings from user datalists would otherwise reach the collate).

    Returns:
        ``[{"image": (1, *spatial) float32 in [0, 1], "label": int}, ...]``.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    if int(repeats) < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}.")
    planes = (planes,) if isinstance(planes, str) else tuple(planes)
    if _has_path(dataset_dir):
        if spatial_dims == 2:
            items = user_slices(dataset_dir, size=int(size), planes=planes, num_slices=num_slices)
        else:
            items = user_volumes(dataset_dir, size=size)
    elif spatial_dims == 2:
        items = demo_slices(source, size=int(size), num_slices=num_slices, planes=planes)
    else:
        items = demo_volumes(source, size=size)
    if not items:
        raise ValueError(f"no images found for dataset_dir={dataset_dir!r}.")
    what = f"{dataset_dir}" if _has_path(dataset_dir) else f"the {source} demo brain"
    logger.info(
        f"{len(items)} {'slices' if spatial_dims == 2 else 'volumes'} from {what}"
        + (f" (x{repeats})" if repeats > 1 else "")
    )
    items = [{k: it.get(k, 0) for k in keys} for it in items]
    return [dict(it) for _ in range(int(repeats)) for it in items]


def training_sampler(dataset, batch_size: int):
    """The sampler of a training set under ``torch.distributed`` (``train_loader#sampler`` of a
    ``train_multigpu.yaml``): a shuffled share per process, padded to equal length so that every process runs the
    same number of steps.

    Raises:
        ValueError: when a process's share is smaller than ``batch_size``: with the bundles' ``drop_last`` loaders
            it would run no training step at all, silently, while one process alone would train.
    """

    sampler = DistributedSampler(dataset, even_divisible=True, shuffle=True)
    if len(sampler) < int(batch_size):
        raise ValueError(
            f"the training set has {len(dataset)} items: {sampler.num_replicas} processes get {len(sampler)} each, "
            f"fewer than batch_size {batch_size}, so no training step would run; use fewer processes, a smaller "
            "batch_size or more training data."
        )
    return sampler


def torchrun_command(
    configs: Sequence[str | os.PathLike],
    bundle_root: str | os.PathLike,
    logging_file: str | os.PathLike | None = None,
    nproc: int = 2,
    overrides: dict | None = None,
    meta_file: str | os.PathLike | None = None,
) -> list[str]:
    """The command line of ``torchrun --standalone --nnodes=1 --nproc_per_node=<nproc> -m monai.bundle run`` for
    ``configs`` merged in order (e.g. :func:`monai_medgen.bundle.configs.train_config_files` of a bundle with its
    ``train_multigpu.yaml``), the bundle's ``logging_file`` and ``meta_file``, with ``--key value`` for every override,
    run by this Python."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be a positive integer, got {nproc!r}.")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc_per_node={nproc}"]
    cmd += ["-m", "monai.bundle", "run", "--config_file", repr([str(c) for c in configs])]
    cmd += ["--bundle_root", str(bundle_root)]
    if logging_file is not None:
        cmd += ["--logging_file", str(logging_file)]
    if meta_file is not None:
        cmd += ["--meta_file", str(meta_file)]
    for key, value in (overrides or {}).items():
        cmd += [f"--{key}", str(value)]
    return cmd


def validation_sampler(dataset):
    """The sampler of a held-out set under ``torch.distributed`` (``val_loader#sampler`` of a
    ``train_multigpu.yaml``), for any number of processes and with validation off.

    Every process evaluates a disjoint share of the set, without padding, so the metrics that MONAI and ignite
    gather across processes are over the set exactly.  With fewer items than processes, items are repeated so
    that every process has one (a process with nothing to evaluate would leave the others waiting in the
    metric's collective); the mean then counts the repeated items twice.

    Returns:
        a MONAI ``DistributedSampler`` (``shuffle=False``), or None when ``torch.distributed`` is not
        initialised or the set is empty (validation off: nothing will iterate the loader; MONAI's sampler
        raises on an empty set).
    """

    if not (dist.is_available() and dist.is_initialized()) or len(dataset) == 0:
        return None
    return DistributedSampler(dataset, even_divisible=len(dataset) < dist.get_world_size(), shuffle=False)


# ---------------------------------------------------------------------------------------------
# inference as a MONAI engine (the ids of MONAI's InferProperties: dataset, evaluator, handlers)
# ---------------------------------------------------------------------------------------------
def inference_items(dataset_dir: str | os.PathLike | None = None, key: str = "input_image", **entries) -> list[dict]:
    """The items an ``inference.yaml`` runs on, one engine iteration each.

    Args:
        dataset_dir: ``None`` / ``""``: one item, ``entries`` as given (e.g. ``input_image=''`` for the demo input);
            otherwise a folder (every NIfTI / NRRD / MHA file in it and every DICOM series folder) or a datalist JSON
            (:func:`monai_medgen.data.datalist_from_path`): one item per image, its path under ``key``.
        key: the entry that names the image (``"input_image"`` for restoration, ``"reference_image"`` for
            generation).
        entries: the other entries of every item (e.g. ``mask_image``).

    Returns:
        ``[{key: path, "name": file name without extension ('' for the single item), **entries}, ...]``.

    Raises:
        ValueError: when ``dataset_dir`` is given together with a non-empty ``entries[key]`` (ambiguous), or holds no
            image.
    """
    if not _has_path(dataset_dir):
        return [{"name": "", key: entries.pop(key, ""), **entries}]
    if _has_path(entries.get(key)):
        raise ValueError(f"dataset_dir and {key} are both given ({str(dataset_dir)!r}, {entries[key]!r}); give one.")

    items = []
    for it in datalist_from_path(dataset_dir):
        base = os.path.basename(os.path.normpath(it["image"]))
        for ext in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
            if base.lower().endswith(ext):
                base = base[: -len(ext)]
                break
        items.append({**entries, key: it["image"], "name": base})
    return items


def _first_item(batch: list):
    return batch[0]


def item_evaluator(device, dataset, function: Callable, val_handlers: Sequence | None = None):
    """A MONAI ``Evaluator`` that runs ``function(item)`` once per item of ``dataset`` (an image to restore, a
    reference to generate for) and keeps each result as ``engine.state.output``: the bundles' inference as the
    engine that MONAI's ``InferProperties`` name (``evaluator``, ``dataset``, ``handlers``), so that handlers such
    as ``--tracking mlflow``'s attach to it.

    Args:
        device: the engine's device.
        dataset: a sequence of item dicts (:func:`inference_items`).
        function: ``function(item) -> result``.
        val_handlers: MONAI / ignite handlers to attach.

    Raises:
        ValueError: when ``function`` is not callable or ``dataset`` is empty.
    """

    if not callable(function):
        raise ValueError(f"function must be callable, got {type(function).__name__}.")
    if len(dataset) == 0:
        raise ValueError("dataset is empty: nothing to run inference on.")
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=0, collate_fn=_first_item)
    return Evaluator(
        device=device,
        val_data_loader=loader,
        iteration_update=lambda engine, item: function(item),
        val_handlers=list(val_handlers or []),
        decollate=False,
    )


# ---------------------------------------------------------------------------------------------
# checkpoints and the bundle's model file
# ---------------------------------------------------------------------------------------------
def _cpu_state(module: nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in unwrap_network(module).state_dict().items()}


def latest_checkpoint(ckpt_dir: str | os.PathLike, pattern: str = "*.pt") -> str:
    """Path of the newest ``pattern`` file in ``ckpt_dir`` (what training resumes from), ``""`` if none."""
    files = [f for f in glob.glob(os.path.join(str(ckpt_dir), pattern)) if os.path.isfile(f)]
    return max(files, key=os.path.getmtime) if files else ""


# The bundle's weights file follows MONAI's convention: ``models/model.pt`` is the network's plain state_dict, so
# ``network_def.load_state_dict(torch.load("models/model.pt"))`` works and ``ckpt_export`` / ``monai.bundle.load`` /
# MONAI Label's bundle apps read it.  What sampling needs beyond the network goes beside it, named after it:
#   <stem>_schedule.pt   the noise schedule's state_dict (learned schedules only), with its own .sha256
#   <stem>_info.json     small entries: iteration, epoch, task family, scale factor, training geometry, ...
# Files of the earlier layout ({"network", "schedule", ...} in one file) and training checkpoints still load.
MODEL_INFO_SUFFIX = "_info.json"
MODEL_SCHEDULE_SUFFIX = "_schedule.pt"
_CONTAINER_KEYS = {"network", "schedule", "ema", "optimizer", "lr_scheduler", "trainer"}


def model_sidecars(path: str | os.PathLike) -> tuple[str, str]:
    """``(schedule_file, info_file)`` that belong to the weights file ``path``: ``models/model.pt`` ->
    ``models/model_schedule.pt``, ``models/model_info.json``."""
    root, _ = os.path.splitext(str(path))
    return root + MODEL_SCHEDULE_SUFFIX, root + MODEL_INFO_SUFFIX


def _json_value(key: str, value):
    """``value`` as plain JSON (numbers, strings, lists, dicts); numpy / torch scalars and arrays are converted."""
    if isinstance(value, (np.generic, torch.Tensor)) and np.ndim(value) == 0:
        value = value.item()
    elif isinstance(value, (np.ndarray, torch.Tensor)):
        value = np.asarray(value).tolist()
    elif isinstance(value, (tuple, list)):
        value = [_json_value(key, v) for v in value]
    elif isinstance(value, dict):
        value = {str(k): _json_value(key, v) for k, v in value.items()}
    if value is not None and not isinstance(value, (bool, int, float, str, list, dict)):
        raise ValueError(
            f"save_model: info entry {key!r} must be JSON-serialisable (number, string, list, dict), "
            f"got {type(value).__name__}."
        )
    return value


def _is_state_dict(state) -> bool:
    return (
        isinstance(state, dict)
        and bool(state)
        and all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items())
    )


def read_model_file(path: str | os.PathLike, map_location="cpu") -> tuple[dict, dict | None, dict]:
    """The parts of a weights file, whatever its layout: ``(network_state_dict, schedule_state_dict or None, info)``.

    - a plain state_dict (the bundles' ``models/model.pt``): the schedule and the info come from
      :func:`model_sidecars` when they exist (the schedule verified against its ``.sha256``);
    - the earlier single-file layout ``{"network", "schedule", **info}`` or a training checkpoint of
      ``CheckpointSaver`` (``{"network", "ema", "schedule", "optimizer", "trainer", ...}``; its EMA weights are
      preferred): everything from the file.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file is truncated or corrupted (:func:`monai_medgen.io.safe_torch_load`) or holds no
            network weights.
    """
    if not os.path.isfile(str(path)):
        raise FileNotFoundError(
            f"model file {str(path)!r} not found: train the bundle first (python -m monai.bundle run --config_file "
            '"$(python -m monai_medgen.bundle.configs <bundle>)" --bundle_root <bundle>) or pass --model_path.'
        )
    state = io.safe_torch_load(path, map_location=map_location)  # verified against its .sha256 when present
    if isinstance(state, dict) and isinstance(state.get("network", state.get("ema")), dict):
        weights = state["ema"] if isinstance(state.get("ema"), dict) else state["network"]
        info = {k: v for k, v in state.items() if k not in _CONTAINER_KEYS}
        return weights, state.get("schedule"), info
    if not _is_state_dict(state):
        keys = sorted(state)[:10] if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{str(path)!r} is neither a network state_dict nor a file with 'network' weights ({keys}).")
    schedule_file, info_file = model_sidecars(path)
    schedule = io.safe_torch_load(schedule_file, map_location=map_location) if os.path.isfile(schedule_file) else None
    info = {}
    if os.path.isfile(info_file):
        try:
            with open(info_file) as f:
                info = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"{info_file!r} (the information beside {str(path)!r}) is not valid JSON: {e}") from e
        info.pop("weights", None)
        recorded = info.pop("weights_sha256", None)
        if recorded and recorded != io.sha256_of(path):
            logger.warning(
                f"{info_file} was written for other weights than {path} (SHA-256 {recorded[:12]}); "
                "its entries may not describe them."
            )
    return state, schedule, info


def read_model_info(path: str | os.PathLike) -> dict:
    """The information stored with a weights file (``iteration``, ``epoch``, task entries, ...), without a network:
    :func:`read_model_file`'s third part."""
    return read_model_file(path)[2]


def save_model(
    path: str | os.PathLike,
    network: nn.Module,
    schedule: nn.Module | None = None,
    ema=None,
    **info,
) -> str:
    """Write a bundle's weights: ``path`` (``models/model.pt``) is the network's plain state_dict; a schedule with
    state goes to ``<stem>_schedule.pt`` and ``info`` to ``<stem>_info.json`` (:func:`model_sidecars`).

    Args:
        path: output file (folders are created).
        network: the trained network (a ``DistributedDataParallel`` wrapper is removed).
        schedule: the noise schedule module (learned schedules have parameters that sampling needs; a schedule
            without state writes no file).
        ema: ignite ``EMAHandler`` or an averaged copy of ``network``; when given, its weights are the
            ones stored (they are what sampling and evaluation use).
        info: small JSON-serialisable entries, e.g. ``iteration=...``, ``family="sr"``.

    Raises:
        ValueError: naming the entry, when an ``info`` value cannot be written as JSON.
    """
    info = {k: _json_value(k, v) for k, v in info.items()}
    weights = network if ema is None else getattr(ema, "ema_model", ema)
    schedule_file, info_file = model_sidecars(path)
    schedule_state = _cpu_state(schedule) if schedule is not None else {}
    # each file written to a temporary file and renamed, with a SHA-256 beside it that load_model verifies
    io.atomic_torch_save(_cpu_state(weights), path)
    if schedule_state:
        io.atomic_torch_save(schedule_state, schedule_file)
    else:  # no stale schedule of an earlier model next to these weights
        for stale in (schedule_file, schedule_file + ".sha256"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(stale)
    entries = {"weights": os.path.basename(str(path)), "weights_sha256": io.sha256_of(path), **info}
    io.write_text_atomically(info_file, json.dumps(entries, indent=2) + "\n")
    logger.info(f"model written to {path}")
    return str(path)


def load_model(
    path: str | os.PathLike,
    network: nn.Module,
    schedule: nn.Module | None = None,
    map_location="cpu",
    strict: bool = True,
) -> dict:
    """Load a weights file into ``network`` and ``schedule`` in place; returns its information entries
    (``iteration``, ``epoch``, ...).  Reads :func:`save_model`'s files, the earlier single-file layout and training
    checkpoints of ``CheckpointSaver`` (preferring their EMA weights); see :func:`read_model_file`.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file is truncated or corrupted (see :func:`monai_medgen.io.safe_torch_load`), holds no
            network weights, or the schedule has learned parameters and no schedule was stored.
    """
    weights, schedule_state, info = read_model_file(path, map_location=map_location)
    unwrap_network(network).load_state_dict(weights, strict=strict)
    if schedule is not None:
        if schedule_state:
            schedule.load_state_dict(schedule_state, strict=strict)
        elif any(True for _ in schedule.parameters()):
            raise ValueError(
                f"{str(path)!r} comes without a schedule ({model_sidecars(path)[0]!r} is missing) but the schedule has "
                "learned parameters."
            )
    return info


def convert_model_file(path: str | os.PathLike) -> dict:
    """Rewrite a weights file of the earlier single-file layout (``{"network", "schedule", **info}``) in place as
    :func:`save_model` writes it: the network's plain state_dict in ``path``, the schedule and the information
    beside it.  A file already in the new layout is left as it is.

    Returns:
        ``{"path", "converted": bool, "schedule": bool, "info": dict}``.

    Raises:
        FileNotFoundError, ValueError: as :func:`read_model_file`; ValueError also for a training checkpoint
            (convert the ``models/`` file, not ``runs/``).
    """
    raw = io.safe_torch_load(path, map_location="cpu")
    if _is_state_dict(raw):
        return {
            "path": str(path),
            "converted": False,
            "schedule": os.path.isfile(model_sidecars(path)[0]),
            "info": read_model_info(path),
        }
    if isinstance(raw, dict) and "optimizer" in raw:
        raise ValueError(f"{str(path)!r} is a training checkpoint; convert the bundle's models/ file instead.")
    weights, schedule_state, info = read_model_file(path)
    schedule = _StateHolder(schedule_state) if schedule_state else None
    save_model(path, _StateHolder(weights), schedule, **info)
    return {"path": str(path), "converted": True, "schedule": schedule is not None, "info": info}


class _StateHolder(nn.Module):
    """A module whose ``state_dict()`` is a given state_dict (to write stored weights through :func:`save_model`)."""

    def __init__(self, state: dict):
        super().__init__()
        self._state = dict(state)

    def state_dict(self, *args, **kwargs):  # type: ignore[override]
        return dict(self._state)


def transfer_weights(
    path: str | os.PathLike, network: nn.Module, map_location="cpu", schedule: nn.Module | None = None
) -> list[str]:
    """Start ``network`` from the weights of a related network (another task family of the same architecture):
    every tensor of the same name and shape is copied; a tensor whose shapes differ only in the second (input
    channel) dimension, such as the first convolution of a model with a different number of condition channels,
    gets the shared leading input channels copied and the others set to zero, so the new inputs start without
    effect.  A 3D network can start from the 2D network of the same architecture: each 2D kernel becomes the
    middle plane of the 3D kernel along the last axis (zero elsewhere; "inflation"), every other tensor is copied,
    so before training the 3D network codes each slice as the 2D one did and training adds the third axis.
    Returns the names that could not be transferred (left as initialised).

    ``schedule``: a learned noise schedule (a VDM's) to start from the file's stored one as well; a schedule
    without parameters, or None, is left alone.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file holds no network weights, or ``schedule`` has learned parameters and the file
            stores no schedule.
    """
    if not os.path.isfile(str(path)):
        raise FileNotFoundError(f"init_from: weights file {str(path)!r} not found.")
    try:
        source, schedule_state, info = read_model_file(path, map_location=map_location)
    except ValueError as e:
        raise ValueError(f"init_from: {e}") from e
    if schedule is not None and any(True for _ in schedule.parameters()):
        if not schedule_state:
            raise ValueError(
                f"init_from: {str(path)!r} stores no noise schedule, but the schedule being trained has learned "
                "parameters: start from a file saved with its schedule (save_model writes it beside the weights)."
            )
        schedule.load_state_dict(schedule_state)
    target = unwrap_network(network).state_dict()
    skipped, inflated = [], 0
    with torch.no_grad():
        for name, tensor in target.items():
            src = source.get(name)
            if src is None:
                skipped.append(name)
            elif src.shape == tensor.shape:
                tensor.copy_(src)
            elif (
                src.dim() == tensor.dim() >= 2 and src.shape[0] == tensor.shape[0] and src.shape[2:] == tensor.shape[2:]
            ):
                shared = min(src.shape[1], tensor.shape[1])
                tensor.zero_()
                tensor[:, :shared].copy_(src[:, :shared])
            elif src.dim() == 4 and tensor.dim() == 5 and src.shape == tensor.shape[:4]:
                # a 2D convolution kernel into a 3D one: on the middle plane of the last axis, zero elsewhere, so
                # the 3D network starts as the 2D one applied to each slice of that axis (axial in RAS order)
                tensor.zero_()
                tensor[..., tensor.shape[-1] // 2].copy_(src)
                inflated += 1
            else:
                skipped.append(name)
    unwrap_network(network).load_state_dict(target)
    log = logging.getLogger(__name__)
    if skipped:
        log.warning("init_from: %d tensors not transferred: %s", len(skipped), skipped[:5])
    # the line scripts/readme_figures.py reads to continue a training curve from the weights' own iterations; a 3D
    # network inflated from 2D weights counts its own iterations (set init_iterations: 0 beside such an init_from)
    iterations = int(info.get("iteration") or 0)
    note = f" ({inflated} 2D kernels inflated to 3D; the file's {iterations} iterations are the 2D network's)"
    log.info(
        "init_from: %s, iterations counted from %d%s", path, 0 if inflated else iterations, note if inflated else ""
    )
    return skipped


class AllReduceGradients:
    """Average across processes the gradients of parameters that live outside ``DistributedDataParallel``
    (a learned noise schedule held by the inferer), after each backward pass and before the optimiser step.
    A no-op when ``torch.distributed`` is not initialised.  Attach to a MONAI trainer like any handler.

    Args:
        parameters: the parameters to keep in sync (e.g. ``schedule.parameters()``).
    """

    def __init__(self, parameters: Iterable[nn.Parameter]):
        self.parameters = [p for p in parameters if p.requires_grad]

    def attach(self, engine) -> None:

        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine=None) -> None:

        if not (dist.is_available() and dist.is_initialized()) or not self.parameters:
            return
        world = dist.get_world_size()
        for p in self.parameters:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad /= world


# ---------------------------------------------------------------------------------------------
# held-out bits/dim with a MONAI evaluator
# ---------------------------------------------------------------------------------------------
class BitsPerDimInferer(Inferer):
    """Evaluation inferer for ``SupervisedEvaluator``: the full variational bound of each image in bits/dim.

    Returns ``{"bpd", "diffusion", "prior", "reconstruction"}``, each (B,), from
    :meth:`VDMInferer.bits_per_dim` with ``num_time_samples`` stratified times per image.
    Use with ``decollate=False`` and :class:`OutputMean` metrics.
    """

    def __init__(self, inferer, num_time_samples: int = 16):
        super().__init__()
        if int(num_time_samples) < 1:
            raise ValueError(f"num_time_samples must be >= 1, got {num_time_samples}.")
        self.inferer, self.num_time_samples = inferer, int(num_time_samples)

    def __call__(self, inputs: torch.Tensor, network: Callable, *args, class_labels=None, **kwargs):  # type: ignore[override]
        return self.inferer.bits_per_dim(
            inputs, network, class_labels=class_labels, num_time_samples=self.num_time_samples
        )


class OutputMean(Average):
    """Mean over examples of one per-example entry of an engine's prediction (e.g. ``pred["bpd"]``), as a
    float: ignite's ``Average`` counting each entry of a (B,) tensor as one example (reduced across
    processes in distributed runs).  For engines run with ``decollate=False``.

    Args:
        key: entry of the prediction dict, e.g. ``"bpd"``, ``"diffusion"``, ``"prior"``, ``"reconstruction"``.
        pred_key: key of the prediction in the engine output.
    """

    def __init__(self, key: str = "bpd", pred_key: str = "pred", device="cpu"):
        self.key, self.pred_key = key, pred_key
        super().__init__(output_transform=self._pick, device=device)

    def _pick(self, output):
        if isinstance(output, (list, tuple)):
            raise TypeError("OutputMean needs the engine's batch output: build the evaluator with decollate=False.")
        return output[self.pred_key][self.key]

    def update(self, output) -> None:
        super().update(torch.as_tensor(output).detach().reshape(-1, 1))

    def compute(self) -> float:
        return float(super().compute().reshape(-1)[0])


CODEC_NAMES = {"png": "PNG", "jpegls": "JPEG-LS", "jpeg2000": "JPEG 2000", "jpegxl": "JPEG-XL (effort 9)"}


def report_bits_per_dim(
    metrics: dict,
    items: Sequence[dict] | None = None,
    output_file: str | os.PathLike | None = None,
    description: str = "held-out images",
    model: str = "VDM",
    prefix: str = "",
    **info,
) -> dict:
    """Print the held-out bits/dim table of an evaluator's metrics next to the lossless codecs of the same 8-bit
    images (PNG; JPEG-LS, JPEG 2000 and JPEG-XL with the optional imagecodecs; volumes: each of their axial slices)
    and write it as JSON.

    Args:
        metrics: ``evaluator.state.metrics`` with ``{prefix}bpd`` and the three terms.
        items: the evaluated ``[{"image": (1, H, W) or (1, H, W, D) in [0, 1]}]`` for the codec baselines
            (None: no baseline).
        output_file: JSON file to write (None: print only).
        description: what was evaluated, for the table header.
        model: the model's row label.
        info: extra entries for the JSON (e.g. iterations trained).
    """

    def get(name):
        v = metrics.get(f"{prefix}{name}")
        return None if v is None else float(v)

    res = {
        "bpd": get("bpd"),
        "diffusion": get("diffusion"),
        "prior": get("prior"),
        "reconstruction": get("reconstruction"),
    }
    if res["bpd"] is None:
        raise KeyError(f"metrics hold no {prefix}bpd entry (got {sorted(metrics)}).")
    codecs = {}
    if items:
        images = [np.asarray(it["image"]).squeeze() for it in items]
        # volumes: each axial slice (last axis) compressed, so all figures count bits over the same voxels
        slices = [s for im in images for s in (np.moveaxis(im, -1, 0) if im.ndim == 3 else [im])]
        codecs = {c: codec_bits_per_dim(slices, c) for c in available_codecs()}
    res.update(png_bpd=codecs.get("png"), codec_bpd=codecs, num_images=len(items) if items else None, **info)
    lines = [f"| {description} | bits/dim |", "|---|---|", f"| {model} | {res['bpd']:.3f} |"]
    for codec, bpd in codecs.items():
        lines.append(f"| lossless {CODEC_NAMES[codec]} of the same 8-bit images | {bpd:.3f} |")
    terms = ", ".join(f"{k} {res[k]:.4f}" for k in ("diffusion", "prior", "reconstruction") if res[k] is not None)
    print("\n" + "\n".join(lines) + (f"\n\nterms (bits/dim): {terms}" if terms else ""), flush=True)
    if output_file:
        os.makedirs(os.path.dirname(os.path.abspath(str(output_file))), exist_ok=True)
        with open(str(output_file), "w") as f:
            json.dump(res, f, indent=2)
    return res


# ---------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------
def _device_of(network, device=None) -> torch.device:
    if device is not None:
        return torch.device(device)
    p = next(iter(network.parameters()), None) if isinstance(network, nn.Module) else None
    return p.device if p is not None else torch.device("cpu")


def draw_samples(
    inferer,
    network: nn.Module,
    shape: Sequence[int],
    num_steps: int,
    generator: torch.Generator,
    device,
    sampler: str = "ancestral",
    class_labels=None,
    guidance_scale: float = 0.0,
    save_intermediates: bool = False,
    intermediate_steps: int = 100,
    verbose: bool = False,
):
    """Unconditional / class-conditional samples from a :class:`VDMInferer` or a
    :class:`~monai_medgen.inferers.ConditionalDiffusionInferer`: the starting noise drawn with ``generator``, then
    ``inferer.sample(noise, network, ...)`` (the same signature for both)."""
    noise = batched_randn(inferer.noise_shape(shape), generator, device=device)
    return inferer.sample(
        noise,
        network,
        class_labels=class_labels,
        generator=generator,
        num_steps=int(num_steps),
        guidance_scale=float(guidance_scale),
        save_intermediates=save_intermediates,
        intermediate_steps=intermediate_steps,
        sampler=sampler,
        verbose=verbose,
    )


def sample_fn(
    inferer,
    network: nn.Module,
    shape: Sequence[int],
    num_steps: int = 100,
    seed: int = 0,
    num_frames: int = 20,
    class_labels=None,
    guidance_scale: float = 0.0,
    device=None,
    sampler: str = "ancestral",
) -> Callable:
    """A no-argument sampler for :class:`monai_medgen.handlers.SampleGridHandler`: the same seed on every
    call, so grids from successive epochs show the same noise denoised by a better model.  Returns
    ``(samples, frames)`` (frames for a sampling GIF) when ``num_frames > 0``, else samples."""

    def draw():
        dev = _device_of(network, device)
        g = torch.Generator(device=dev).manual_seed(int(seed))
        labels = class_labels
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.long, device=dev).reshape(-1)
        return draw_samples(
            inferer,
            network,
            shape,
            num_steps,
            g,
            dev,
            sampler=sampler,
            class_labels=labels,
            guidance_scale=guidance_scale,
            save_intermediates=num_frames > 0,
            intermediate_steps=max(1, int(num_steps) // max(1, num_frames)),
        )

    return draw


def save_synthetic_nifti(
    images: torch.Tensor,
    output_dir: str | os.PathLike,
    affine: np.ndarray | torch.Tensor | None = None,
    prefix: str = "sample",
    description: str = SYNTHETIC_DESCRIPTION,
    provenance: Provenance | None = None,
) -> list[str]:
    """Write (B, 1, *spatial) images as ``{prefix}_{i:03d}_synthetic.nii.gz`` with
    :func:`monai_medgen.io.write_image` (atomically, replacing earlier samples of the same name), with
    ``affine`` (4x4, default identity) as their geometry, ``description`` in the header's ``descrip`` field
    and ``provenance`` in a ``.json`` sidecar beside each file.  A (1, H, W) sample is written as a 2D NIfTI.
    """
    if not description.upper().startswith("SYNTHETIC"):
        raise ValueError(f"description must start with 'SYNTHETIC' (it marks generated data), got {description!r}.")
    if len(description.encode()) > 80:
        raise ValueError(f"description must fit the NIfTI descrip field (80 bytes), got {len(description.encode())}.")
    reference = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    os.makedirs(str(output_dir), exist_ok=True)
    paths = []
    for i, img in enumerate(images.detach().float().cpu()):
        path = os.path.join(str(output_dir), f"{prefix}_{i:03d}_synthetic.nii.gz")
        io.write_image(img, path, reference=reference, provenance=provenance, description=description, overwrite=True)
        paths.append(path)
    return paths


def _nearest_labels(
    images: torch.Tensor, references: torch.Tensor, ref_labels: torch.Tensor, size: int = 32
) -> torch.Tensor:
    """Label of the nearest reference (L2 after area resizing to ``size`` x ``size``) for each image."""

    a = F.interpolate(images.float(), size=(size, size), mode="area").flatten(1)
    b = F.interpolate(references.float(), size=(size, size), mode="area").flatten(1)
    return ref_labels[torch.cdist(a, b).argmin(1)]


@torch.no_grad()
def evaluate_class_conditional(
    network: nn.Module,
    inferer,
    class_names: Sequence[str] = ("axial", "coronal", "sagittal"),
    num_per_class: int = 16,
    guidance_scales: Sequence[float] = (0.0, 1.0, 3.0),
    num_steps: int = 50,
    sampler: str = "dpm++",
    image_size: int = 128,
    seed: int = 0,
    dataset_dir: str | None = None,
    device=None,
) -> dict:
    """Does a class-conditional model generate its class?  ``num_per_class`` samples per class and guidance scale
    are labelled by their nearest held-out real slice (Colin27 axial / coronal / sagittal slices, or the user's
    ``dataset_dir`` with its labels; L2 at 32 x 32) and the share that lands on the requested class is printed,
    beside the same 1-nearest-neighbour labelling of real training slices (MNI152) as the reference."""

    dev = _device_of(network, device)
    planes = [p for p in class_names if p in PLANES] or list(PLANES)
    held = prepare_items(dataset_dir, source="colin27", size=image_size, planes=planes)
    refs = torch.stack([torch.as_tensor(np.asarray(it["image"])) for it in held]) * 2 - 1
    ref_labels = torch.as_tensor([int(it["label"]) for it in held])
    train = prepare_items(None, source="mni152", size=image_size, planes=planes, num_slices=num_per_class)
    real = torch.stack([torch.as_tensor(np.asarray(it["image"])) for it in train]) * 2 - 1
    real_labels = torch.as_tensor([int(it["label"]) for it in train])
    rows = [
        (
            "real MNI152 slices (reference)",
            float((_nearest_labels(real, refs, ref_labels) == real_labels).float().mean()),
        )
    ]
    network.eval()
    classes = sorted(set(ref_labels.tolist()))
    for w in guidance_scales:
        hits = []
        for c in classes:
            g = torch.Generator(device=dev).manual_seed(int(seed) + c)
            labels = torch.full((int(num_per_class),), c, dtype=torch.long, device=dev)
            x = draw_samples(
                inferer,
                network,
                (int(num_per_class), 1, image_size, image_size),
                num_steps,
                g,
                dev,
                sampler=sampler,
                class_labels=labels,
                guidance_scale=w,
            )
            hits.append(_nearest_labels(x.cpu(), refs, ref_labels) == c)
        rows.append((f"generated, guidance {w:g}", float(torch.cat(hits).float().mean())))
    print(
        f"| samples ({num_per_class} per class, {sampler} {num_steps} steps) | share labelled as the requested class |"
    )
    print("|---|---|")
    for label, acc in rows:
        print(f"| {label} | {acc:.3f} |")
    return {"rows": rows}
