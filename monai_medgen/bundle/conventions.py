"""MONAI bundle conventions for the bundles in ``bundles/``: weights files as plain state_dicts, ``large_files.yml``.

- :func:`convert_bundle`: rewrite a bundle's ``models/*.pt`` of the earlier single-file layout
  (``{"network", "schedule", **info}``) as :func:`~monai_medgen.bundle.save_model` writes them (the network's plain
  state_dict, ``<stem>_schedule.pt``, ``<stem>_info.json``), keep the latent bundle's record of its autoencoder's
  SHA-256 in step, and rewrite ``large_files.yml``.  From the command line::

      python scripts/convert_model_pt.py bundles/cddpm_denoising_2d bundles/cddpm_inpainting_2d

- :func:`write_large_files`: ``large_files.yml`` listing every weights file of a bundle with its SHA-256
  (``python -m monai.bundle download_large_files --bundle_path <bundle>`` verifies them; they are committed in the
  repository, so nothing is downloaded).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from monai_medgen import io
from monai_medgen.bundle.workflow import convert_model_file, model_sidecars

__all__ = ["WEIGHTS_FILES", "convert_bundle", "weights_files", "write_large_files"]

#: the weights files a bundle can hold, in the order they are converted (the autoencoder before the latent model,
#: whose information records the autoencoder's SHA-256; the 2D VDM's layout model of ``monai-medgen score`` and the
#: coarse model of its cascaded sampler last)
WEIGHTS_FILES = ("autoencoder.pt", "model.pt", "layout_model.pt", "layout_sampler.pt")


def _bundle_dir(bundle_dir: str | os.PathLike) -> Path:
    root = Path(bundle_dir).expanduser()
    if not (root / "configs").is_dir():
        raise ValueError(f"bundle_dir: {str(bundle_dir)!r} is not a bundle folder (no configs/ in it).")
    return root


def weights_files(bundle_dir: str | os.PathLike) -> list[Path]:
    """The bundle's weights files that exist: ``models/autoencoder.pt``, ``models/model.pt``,
    ``models/layout_model.pt``, ``models/layout_sampler.pt`` and the schedule files beside them
    (``models/<stem>_schedule.pt``)."""
    models = _bundle_dir(bundle_dir) / "models"
    found = []
    for name in WEIGHTS_FILES:
        path = models / name
        schedule = Path(model_sidecars(path)[0])
        found += [p for p in (path, schedule) if p.is_file()]
    return found


def write_large_files(bundle_dir: str | os.PathLike) -> str:
    """Write ``<bundle>/large_files.yml``: each weights file (:func:`weights_files`) with its SHA-256, in the
    model zoo's format (``path``, ``url``, ``hash_val``, ``hash_type``).  The files are committed in the repository,
    so ``url`` is empty and ``download_large_files`` only verifies the hashes of the files in place.

    Returns:
        the path of the file written.
    """
    root = _bundle_dir(bundle_dir)
    lines = [
        "# Weights of this bundle with their SHA-256. They are committed in the repository (models/), so nothing is",
        "# downloaded: `python -m monai.bundle download_large_files --bundle_path <bundle>` checks the files in place.",
        "# Written by monai_medgen.bundle.conventions.write_large_files (scripts/convert_model_pt.py).",
        "large_files:",
    ]
    for path in weights_files(root):
        rel = path.relative_to(root).as_posix()
        lines += [f'- path: "{rel}"', '  url: ""', f'  hash_val: "{io.sha256_of(path)}"', '  hash_type: "sha256"']
    target = root / "large_files.yml"
    io.write_text_atomically(target, "\n".join(lines) + "\n")
    return str(target)


def convert_bundle(bundle_dir: str | os.PathLike, large_files: bool = True) -> list[dict]:
    """Bring a bundle's weights files to the plain-state_dict layout (:func:`~monai_medgen.bundle.convert_model_file`)
    and, with ``large_files``, rewrite ``large_files.yml``.  Files already converted are left as they are, so running
    it twice changes nothing.

    When ``models/autoencoder.pt`` is rewritten, its SHA-256 changes; the ``autoencoder_sha256`` recorded with
    ``models/model.pt`` (the autoencoder the latent model was trained on) is updated to the new hash of the same
    weights.

    Returns:
        one entry per weights file: ``{"path", "converted", "schedule", "info"}``.

    Raises:
        ValueError: when ``bundle_dir`` is not a bundle folder or a weights file cannot be read.
    """
    root = _bundle_dir(bundle_dir)
    renamed: dict[str, str] = {}  # old SHA-256 of a rewritten file -> new one
    results = []
    for name in WEIGHTS_FILES:
        path = root / "models" / name
        if not path.is_file():
            continue
        before = io.sha256_of(path)
        result = convert_model_file(path)
        if result["converted"]:
            renamed[before] = io.sha256_of(path)
        results.append(result)
    info_file = Path(model_sidecars(root / "models" / "model.pt")[1])
    if renamed and info_file.is_file():
        info = json.loads(info_file.read_text())
        if info.get("autoencoder_sha256") in renamed:
            info["autoencoder_sha256"] = renamed[info["autoencoder_sha256"]]
            io.write_text_atomically(info_file, json.dumps(info, indent=2) + "\n")
    if large_files:
        write_large_files(root)
    return results
