"""Load a restoration bundle once: its network and inferer from the bundle's own configs, its weights, and the
sampling settings of its ``inference.yaml``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from monai_medgen.bundle.configs import train_config_files
from monai_medgen.bundle.workflow import load_model

__all__ = ["RestorationBundle", "load_restoration_bundle", "newest_checkpoint"]

DEFAULT_NUM_STEPS, DEFAULT_START_TIME = 4, 0.5


@dataclass
class RestorationBundle:
    """A loaded restoration bundle: ``network`` (eval mode), ``inferer``, ``family`` and the default
    ``num_steps`` / ``start_time`` of its residual sampler."""

    name: str
    network: torch.nn.Module
    inferer: object
    family: str
    num_steps: int = DEFAULT_NUM_STEPS
    start_time: float = DEFAULT_START_TIME


def load_restoration_bundle(
    folder: str | os.PathLike, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> RestorationBundle:
    """Build the network and inferer of ``folder/configs/inference.yaml`` (else ``train.yaml``) and load ``weights`` (default
    ``folder/models/model.pt``; a training checkpoint works too, its EMA weights are used)."""
    folder = Path(folder)
    inference = folder / "configs" / "inference.yaml"
    if not inference.is_file() and not (folder / "configs" / "train.yaml").is_file():
        raise FileNotFoundError(f"{str(folder)!r} is not a restoration bundle: {inference} is missing.")
    parser = ConfigParser()
    parser.read_config(str(inference) if inference.is_file() else train_config_files(folder))
    parser["bundle_root"] = str(folder)
    parser["device"] = "$torch.device('cpu')"
    family = parser.get_parsed_content("family")
    network = parser.get_parsed_content("network_def", instantiate=True)
    inferer = parser.get_parsed_content("inferer", instantiate=True)
    load_model(weights or folder / "models" / "model.pt", network)
    steps = int(parser.get("num_steps", DEFAULT_NUM_STEPS)) if inference.is_file() else DEFAULT_NUM_STEPS
    start = float(parser.get("start_time", DEFAULT_START_TIME)) if inference.is_file() else DEFAULT_START_TIME
    network = network.to(device).eval()
    return RestorationBundle(folder.name, network, inferer, family, steps, start)


def newest_checkpoint(folder: str | os.PathLike) -> Path:
    """The newest training checkpoint (``*.pt``) under ``folder/runs/checkpoints``, to score a run before its
    weights are adopted (:func:`load_restoration_bundle` takes its EMA weights).

    Raises:
        FileNotFoundError: naming the folder, when it holds no checkpoint.
    """
    folder = Path(folder) / "runs" / "checkpoints"
    newest = max(folder.glob("*.pt"), key=lambda f: f.stat().st_mtime, default=None)
    if newest is None:
        raise FileNotFoundError(f"no training checkpoint (*.pt) under {str(folder)!r}.")
    return newest
