"""The configuration the bundles share, merged with MONAI's list form of ``--config_file``.

``train_base.yaml`` holds the trainer wiring of every bundle and ``train_restoration.yaml`` the recipe of the four
restoration bundles; a bundle's ``configs/train.yaml`` names the bases it builds on in ``base_configs`` and holds
only what is its own.  :func:`train_config_files` gives the files in merge order.  MONAI takes the folder of the first
file as the bundle's config folder, so name the bundle's ``metadata.json`` and ``logging.conf`` too::

    B=bundles/cddpm_denoising_2d
    python -m monai.bundle run --config_file "$(python -m monai_medgen.bundle.configs $B)" --bundle_root $B \\
        --meta_file $B/configs/metadata.json --logging_file $B/configs/logging.conf
    # multi-GPU: the bundle's other configs go after it
    python -m monai_medgen.bundle.configs $B train_multigpu.yaml

:func:`train_run_args` gives the same as keyword arguments of ``monai.bundle.run`` / ``ConfigWorkflow``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import yaml

__all__ = ["BASES_KEY", "base_config_path", "train_config_arg", "train_config_files", "train_run_args"]

#: the key of a bundle's train.yaml that lists the bases it is merged after (names of this folder's YAML files)
BASES_KEY = "base_configs"
HERE = Path(__file__).resolve().parent


def base_config_path(name: str) -> str:
    """Absolute path of the shared config ``name`` (``"train_base"`` or ``"train_base.yaml"``)."""
    path = HERE / (name if name.endswith(".yaml") else f"{name}.yaml")
    if not path.is_file():
        known = sorted(p.stem for p in HERE.glob("*.yaml"))
        raise ValueError(f"base config {name!r} is not one of the shared configs {known}.")
    return str(path)


def train_config_files(bundle: str | os.PathLike, extra: Sequence[str] = (), config: str = "train.yaml") -> list[str]:
    """The files of a bundle's training run in merge order: the bases its ``configs/<config>`` names in
    ``base_configs``, that file, then ``extra`` files of the bundle's ``configs`` folder (e.g.
    ``train_multigpu.yaml``).  A config without ``base_configs`` (a self-contained one) is returned alone."""
    configs = Path(bundle) / "configs"
    own = configs / config
    if not own.is_file():
        raise ValueError(f"bundle {bundle}: {own} does not exist; expected a bundle folder with configs/{config}.")
    try:
        bases = (yaml.safe_load(own.read_text()) or {}).get(BASES_KEY) or []
    except yaml.YAMLError as e:
        raise ValueError(f"bundle {bundle}: {own} is not valid YAML ({e}).") from e
    if isinstance(bases, str) or not all(isinstance(b, str) for b in bases):
        raise ValueError(f"{own}: {BASES_KEY} must be a list of shared config names, got {bases!r}.")
    files = [base_config_path(b) for b in bases] + [str(own)]
    for name in extra:
        path = configs / name
        if not path.is_file():
            raise ValueError(f"bundle {bundle}: {path} does not exist.")
        files.append(str(path))
    return files


def train_config_arg(bundle: str | os.PathLike, extra: Sequence[str] = (), config: str = "train.yaml") -> str:
    """:func:`train_config_files` as MONAI's list form of ``--config_file`` (``"['a.yaml', 'b.yaml']"``)."""
    return repr(train_config_files(bundle, extra, config))


def train_run_args(bundle: str | os.PathLike, extra: Sequence[str] = (), config: str = "train.yaml") -> dict:
    """``config_file`` (:func:`train_config_files`), ``meta_file`` and ``logging_file`` (the bundle's, when present) for
    ``monai.bundle.run`` or ``ConfigWorkflow`` of a bundle's training."""
    configs = Path(bundle) / "configs"
    args: dict = {"config_file": train_config_files(bundle, extra, config)}
    for key, name in (("meta_file", "metadata.json"), ("logging_file", "logging.conf")):
        if (configs / name).is_file():
            args[key] = str(configs / name)
    return args
