"""Loading a bundle once, for every front-end: its ``configs/inference.yaml`` parsed, network, inferer and schedule
built, weights verified (checksum) and loaded, task and data dimensionality read, with one set of error messages.

The command line (``monai-medgen``), the MONAI Label app and the scripts call :func:`load_bundle`; nothing else
parses a bundle's inference config for inference.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml
from monai.bundle import ConfigParser

from monai_medgen.bundle.workflow import load_model
from monai_medgen.limits import RESTORATION_TASKS
from monai_medgen.restoration import data_dims

__all__ = [
    "TRAIN_HINT",
    "BundleError",
    "LoadedBundle",
    "class_names",
    "data_dims",
    "default_bundles_dir",
    "find_bundles",
    "load_bundle",
    "open_bundle",
]

TRAIN_HINT = 'python -m monai.bundle run --config_file "$(python -m monai_medgen.bundle.configs {d})" --bundle_root {d}'
#: kinds a front-end may ask for: restoration (a ``task``), a VDM (a ``schedule``), any generative bundle (a VDM or
#: a class-conditional DDPM: no ``task``), or any bundle
KINDS = ("restoration", "vdm", "generative", "any")


class BundleError(ValueError):
    """A bundle that cannot be used; the message names the bundle (as ``--bundle <folder>``) and what is wrong."""


def class_names(root: str | os.PathLike, num_classes: int, configured=None) -> list[str]:
    """Names of a class-conditional bundle's classes: ``configured`` (its inference.yaml's ``class_names``), else
    the ``planes`` of its train.yaml (the demo classes) when there are as many, else the indices."""
    if configured and len(configured) == num_classes:
        return [str(c) for c in configured]
    train = Path(root) / "configs" / "train.yaml"
    if train.is_file():
        try:
            planes = (yaml.safe_load(train.read_text()) or {}).get("planes")
        except yaml.YAMLError:
            planes = None
        if isinstance(planes, list) and len(planes) == num_classes:
            return [str(p) for p in planes]
    return [str(i) for i in range(num_classes)]


@dataclasses.dataclass
class LoadedBundle:
    """A bundle ready to restore or generate.

    Attributes:
        name: the folder's name (the model name in provenance, ``/info/`` and ``/infer/<name>``).
        root: the folder as given.
        version: ``metadata.json``'s version ("" when absent).
        metadata: ``metadata.json`` (empty when absent or unreadable).
        parser: the parsed ``configs/inference.yaml`` (``bundle_root`` and ``device`` set).
        device: the device the network was loaded on.
        weights: the weights file.
        network, inferer, schedule: built by the config (schedule None for discrete-time models); weights loaded,
            network in eval mode.  None when the bundle was only opened (:func:`open_bundle`).
        task: ``"sr"``, ``"denoise"``, ``"inpaint"`` or ``"generate"``.
        kind: ``"restoration"`` or ``"vdm"`` (a generative bundle with a continuous-time schedule) or ``"other"``.
    """

    name: str
    root: Path
    version: str
    metadata: dict
    parser: ConfigParser
    device: str
    weights: Path
    task: str
    kind: str
    network: torch.nn.Module | None = None
    inferer: object | None = None
    schedule: torch.nn.Module | None = None

    def get(self, key: str, default=None):
        """A value of the inference config (parsed, expressions evaluated), or ``default`` when it has none."""
        return self.parser.get_parsed_content(key) if key in self.parser else default

    @property
    def spatial_dims(self) -> int:
        """2 or 3 (see :func:`data_dims`)."""
        return data_dims(self.network, self.inferer)

    @property
    def num_classes(self) -> int | None:
        """Classes of a class-conditional network, else None."""
        n = getattr(getattr(self.network, "module", self.network), "num_classes", None)
        return None if n is None else int(n)

    @property
    def generative(self) -> bool:
        return self.task == "generate"


def _read_metadata(root: Path) -> dict:
    meta = root / "configs" / "metadata.json"
    if not meta.is_file():
        return {}
    try:
        data = json.loads(meta.read_text())
    except (ValueError, OSError):
        return {}
    return data if isinstance(data, dict) else {}


def _kind_and_task(parser: ConfigParser, folder: str) -> tuple[str, str]:
    if "task" in parser:
        task = str(parser.get_parsed_content("task"))
        if task not in RESTORATION_TASKS:
            raise BundleError(f"--bundle {folder}: its task {task!r} is not one of {RESTORATION_TASKS}.")
        return "restoration", task
    return ("vdm" if "schedule" in parser else "other"), "generate"


def open_bundle(folder: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedBundle:
    """The bundle's folder, config, metadata and weights file checked and the config parsed; nothing built.

    Raises:
        BundleError: the folder, its ``configs/inference.yaml`` or ``models/model.pt`` is missing, the config does
            not parse, or its ``task`` is unknown.
    """
    shown = str(folder)
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise BundleError(
            f"--bundle {shown} is not a folder: expected a MONAI bundle folder such as bundles/vdm_brain_mri_2d."
        )
    config = root / "configs" / "inference.yaml"
    if not config.is_file():
        raise BundleError(f"--bundle {shown} has no configs/inference.yaml: expected a MONAI bundle folder.")
    weights = root / "models" / "model.pt"
    if not weights.is_file():
        raise BundleError(
            f"--bundle {shown} has no weights at {os.path.join(shown, 'models', 'model.pt')}: train it first with "
            + TRAIN_HINT.format(d=shown)
        )
    parser = ConfigParser()
    try:
        parser.read_config(str(config))
    except Exception as e:  # yaml errors of every kind
        raise BundleError(f"--bundle {shown}: could not parse {config}: {type(e).__name__}: {e}") from e
    parser["bundle_root"] = str(root)
    parser["device"] = str(device)
    metadata = _read_metadata(root)
    kind, task = _kind_and_task(parser, shown)
    return LoadedBundle(
        name=root.resolve().name,
        root=root,
        version=str(metadata.get("version", "")),
        metadata=metadata,
        parser=parser,
        device=str(device),
        weights=weights,
        task=task,
        kind=kind,
    )


def _load_weights(bundle: LoadedBundle) -> None:
    try:
        load_model(str(bundle.weights), bundle.network, bundle.schedule, map_location=bundle.device)
    except RuntimeError as e:  # state dict of another architecture
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else type(e).__name__
        raise BundleError(
            f"--bundle {bundle.root}: the weights {bundle.weights} do not fit the network of configs/inference.yaml "
            f"({detail[:300]})."
        ) from e
    except (ValueError, FileNotFoundError) as e:
        if "truncated or corrupted" in str(e):
            why = "their SHA-256 does not match model.pt.sha256" if "does not match" in str(e) else "unreadable"
            raise BundleError(
                f"--bundle {bundle.root}: its weights {bundle.weights} are truncated or corrupted ({why}); copy "
                "models/model.pt (and model.pt.sha256) again, or retrain: " + TRAIN_HINT.format(d=bundle.root)
            ) from e
        raise BundleError(f"--bundle {bundle.root}: {e}") from e


def load_bundle(
    folder: str | os.PathLike | LoadedBundle, device: str | torch.device = "cpu", kind: str = "any", purpose: str = ""
) -> LoadedBundle:
    """Open ``folder`` (or finish an opened bundle), build its network, inferer and schedule and load the weights.

    Args:
        folder: the bundle folder, or the result of :func:`open_bundle`.
        device: where the network goes (``"cpu"``, ``"cuda:0"``, ...).
        kind: ``"restoration"`` (a bundle with a ``task``), ``"vdm"`` (a VDM: a ``schedule`` and no task),
            ``"generative"`` (no task: a VDM or a class-conditional DDPM) or ``"any"``; another kind is refused naming ``purpose``.
        purpose: what the caller does with it, for that message (e.g. ``"generate"``).

    Raises:
        BundleError: see :func:`open_bundle`; a bundle of another kind; weights that do not fit the network or are
            truncated or corrupted (checksum).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    bundle = folder if isinstance(folder, LoadedBundle) else open_bundle(folder, device)
    if kind == "restoration" and bundle.kind != "restoration":
        raise BundleError(
            f"--bundle {bundle.root} is not a restoration (cddpm_*) bundle (its inference.yaml has no 'task')."
        )
    if kind == "generative" and not bundle.generative:
        raise BundleError(
            f"--bundle {bundle.root} restores images (its inference.yaml has a 'task'); {purpose or 'this'} needs a "
            "generative bundle such as bundles/vdm_brain_mri_2d."
        )
    if kind == "vdm" and bundle.kind != "vdm":
        raise BundleError(
            f"--bundle {bundle.root} is not a VDM bundle (no 'schedule' in its inference.yaml); "
            f"{purpose or 'this'} needs one such as bundles/vdm_brain_mri_2d."
        )
    if bundle.network is None:
        if "network" not in bundle.parser or "inferer" not in bundle.parser:
            raise BundleError(
                f"--bundle {bundle.root}: its inference.yaml defines no 'network' and 'inferer'; expected a bundle of "
                "this package (a ConditionalDiffusionInferer or a VDMInferer and its network)."
            )
        bundle.network = bundle.get("network")
        bundle.schedule = bundle.get("schedule") if "schedule" in bundle.parser else None
        bundle.inferer = bundle.get("inferer")
        _load_weights(bundle)
        bundle.network.eval()
    return bundle


def default_bundles_dir() -> Path:
    """Where bundles are looked for when no folder is given: ``$MONAI_MEDGEN_BUNDLES``, else ``./bundles`` when it
    exists, else the ``bundles`` folder of a source checkout of this package (an editable install)."""
    env = os.environ.get("MONAI_MEDGEN_BUNDLES")
    if env:
        return Path(env).expanduser()
    here = Path.cwd() / "bundles"
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[2] / "bundles"


def find_bundles(folder: str | os.PathLike | None = None, names: str | Sequence[str] | None = None) -> list[Path]:
    """Bundle folders (with ``configs/inference.yaml``) in ``folder`` (default :func:`default_bundles_dir`), all or
    the ``names`` given (a list or a comma-separated string), in that order.

    Raises:
        ValueError: when the folder does not exist or a named bundle is not in it.
    """
    root = Path(folder).expanduser() if folder else default_bundles_dir()
    if not root.is_dir():
        raise ValueError(
            f"bundles folder {str(root)!r} does not exist: pass '--conf bundles DIR' with the folder that holds the "
            "bundles (the repository's bundles/), or set MONAI_MEDGEN_BUNDLES."
        )
    found = sorted(p for p in root.iterdir() if (p / "configs" / "inference.yaml").is_file())
    if names:
        wanted = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if str(n).strip()]
        by_name = {p.name: p for p in found}
        missing = [n for n in wanted if n not in by_name]
        if missing:
            raise ValueError(
                f"models {missing} are not bundles in {str(root)!r} (found {sorted(by_name)}); fix '--conf models'."
            )
        found = [by_name[n] for n in wanted]
    return found
