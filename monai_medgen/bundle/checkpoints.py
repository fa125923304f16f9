"""Training checkpoints that survive a killed run: written atomically with a checksum, verified before resuming.

MONAI's ``CheckpointSaver`` writes through ignite's ``DiskSaver`` with ``atomic=False``: ``torch.save`` goes
straight into ``checkpoint_epoch=N.pt``, so a run killed while saving leaves a truncated file, and it is the
newest one, the file a resumed run would pick.  The bundles' ``train.yaml`` therefore use

- :class:`VerifiedCheckpointSaver`: the same handler (same arguments, file names, schedule and ``n_saved``
  pruning) writing each file with :func:`monai_medgen.io.atomic_torch_save` (temporary file, ``fsync``, rename,
  SHA-256 in ``<file>.sha256``);
- :func:`resume_checkpoint` for ``CheckpointLoader``'s ``load_path``: the newest checkpoint that passes
  :func:`verify_checkpoint`.  A damaged newer file is skipped with a warning naming it; when checkpoints exist
  but none is intact it raises instead of returning ``""``, because training from iteration 0 would then save
  over the files the user may still recover.  Temporary files of an interrupted save are removed first.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
import torch.distributed as dist
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver

from monai_medgen import io

__all__ = ["VerifiedCheckpointSaver", "resume_checkpoint", "verify_checkpoint"]

logger = logging.getLogger(__name__)

# temporary files of an interrupted save: io.atomic_torch_save (".<name>.<8 chars>.tmp.pt" / ".tmp.sha256",
# tempfile.mkstemp's random part) and ignite's atomic DiskSaver ("tmp<8 chars>", NamedTemporaryFile)
_PARTIAL_SAVE = (
    re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp\.(?:pt|sha256)$"),
    re.compile(r"^tmp[a-z0-9_]{8}$"),
)


def _is_rank0() -> bool:

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _readable_by_group(path: str | os.PathLike) -> None:
    """Add group/others read permission (``mkstemp`` creates files readable by their owner only), as ignite does."""
    with contextlib.suppress(OSError):
        os.chmod(path, os.stat(path).st_mode | stat.S_IRGRP | stat.S_IROTH)


class _AtomicDiskSaver(DiskSaver):
    """ignite ``DiskSaver`` (rank handling, ``remove``) that writes through :func:`monai_medgen.io.atomic_torch_save`;
    ``filename`` fixes the file name as MONAI's saver does for ``final_filename`` / ``key_metric_filename``."""

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None):
        super().__init__(dirname=dirname, atomic=True, require_empty=False)
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        super().__call__(checkpoint, self.filename or filename, metadata)

    def _save_func(self, checkpoint: Mapping, path: Path, func) -> None:
        if func is not torch.save:  # XLA's own save
            return super()._save_func(checkpoint, path, func)
        io.atomic_torch_save(checkpoint, path)
        for p in (path, f"{path}.sha256"):
            _readable_by_group(p)

    def remove(self, filename: str) -> None:

        if idist.get_rank() != self.save_on_rank:
            return
        path = self.dirname / (self.filename or filename)
        for p in (path, Path(f"{path}.sha256")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


class VerifiedCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments and file names) whose checkpoints are written atomically
    (temporary file in the same folder, ``fsync``, rename) with their SHA-256 in ``<file>.sha256``, so a killed
    run never leaves a partial checkpoint under a checkpoint's name, and :func:`resume_checkpoint` can tell an
    intact file from a damaged one.  Pruning (``n_saved``) removes a file together with its checksum.

    Args:
        args, kwargs: those of ``monai.handlers.CheckpointSaver`` (``save_dir``, ``save_dict``, ``save_final``,
            ``save_interval``, ``n_saved``, ``epoch_level``, ...).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                fixed_name = getattr(checkpoint.save_handler, "filename", None)
                checkpoint.save_handler = _AtomicDiskSaver(self.save_dir, filename=fixed_name)


def verify_checkpoint(path: str | os.PathLike) -> dict:
    """Check that a checkpoint can be resumed from: its SHA-256 against ``<path>.sha256`` when there is one
    (:func:`monai_medgen.io.safe_torch_load`), then a full load (which also catches truncation of files
    without a checksum).

    Args:
        path: a checkpoint file (a dict, e.g. from :class:`VerifiedCheckpointSaver` or ``CheckpointSaver``).

    Returns:
        ``{"path", "bytes", "sha256", "checksum_file", "iteration", "epoch"}``; ``checksum_file`` is whether a
        ``.sha256`` was checked; ``iteration`` / ``epoch`` come from the ``trainer`` entry (None without one; the epoch is the
        iteration over the epoch length, as ignite stores no epoch).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: naming the file, when it is truncated, corrupted or not a checkpoint dict.
    """
    path = str(path)
    state = io.safe_torch_load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path!r} holds a {type(state).__name__}, expected a dict of state dicts.")
    trainer = state.get("trainer") if isinstance(state.get("trainer"), dict) else {}
    iteration, epoch_length = trainer.get("iteration"), trainer.get("epoch_length")
    epoch = trainer.get("epoch")  # ignite stores the iteration and the epoch length, not the epoch
    if epoch is None and iteration is not None and epoch_length:
        epoch = int(iteration) // int(epoch_length)
    return {
        "path": path,
        "bytes": os.path.getsize(path),
        "sha256": io.sha256_of(path),
        "checksum_file": os.path.isfile(path + ".sha256"),
        "iteration": iteration,
        "epoch": epoch,
    }


def _remove_partial_saves(folder: Path, pattern: str) -> list[str]:
    """Delete temporary files left by a save that was interrupted, and checksums whose checkpoint is gone."""
    removed = []
    for f in folder.iterdir():
        partial = f.is_file() and any(p.match(f.name) for p in _PARTIAL_SAVE)
        orphan = (
            f.name.endswith(".sha256")
            and Path(f.name[: -len(".sha256")]).match(pattern)
            and not (folder / f.name[: -len(".sha256")]).exists()
        )
        if partial or orphan:
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
            removed.append(f.name)
    if removed:
        logger.info(
            f"removed {len(removed)} file(s) left by an interrupted checkpoint save in {folder}: {sorted(removed)}"
        )
    return removed


def resume_checkpoint(ckpt_dir: str | os.PathLike, pattern: str = "*.pt") -> str:
    """The checkpoint a training run resumes from: the newest ``pattern`` file in ``ckpt_dir`` that passes
    :func:`verify_checkpoint`, ``""`` when there is none (a first run).

    Newer files that fail verification are skipped with a warning that names them (they are left in place: the
    run overwrites them when it saves that epoch again).  Temporary files of an interrupted save are deleted
    first (by rank 0 only in a distributed run).

    Args:
        ckpt_dir: the checkpoint folder of the run.
        pattern: checkpoint file names (glob).

    Raises:
        ValueError: when ``ckpt_dir`` holds checkpoints but none is intact; it names each file and what is wrong
            with it, rather than letting training start from iteration 0 and save over them.
    """
    folder = Path(ckpt_dir).expanduser()
    if not folder.is_dir():
        return ""
    if _is_rank0():
        _remove_partial_saves(folder, pattern)
    files = [f for f in glob.glob(os.path.join(str(folder), pattern)) if os.path.isfile(f)]
    files.sort(key=os.path.getmtime, reverse=True)
    damaged = []
    for f in files:
        try:
            info = verify_checkpoint(f)
        except (ValueError, FileNotFoundError) as e:
            damaged.append(f"{os.path.basename(f)}: {e}")
            logger.warning(f"checkpoint {f} cannot be resumed from and is skipped: {e}")
            continue
        if damaged:
            logger.warning(
                f"resuming from {f} (iteration {info['iteration']}), the newest intact checkpoint; "
                f"{len(damaged)} newer damaged checkpoint(s) skipped"
            )
        return f
    if damaged:
        raise ValueError(
            f"ckpt_dir {str(ckpt_dir)!r} holds {len(damaged)} checkpoint(s) but none is intact, so training cannot "
            "resume; refusing to start again from iteration 0 and save over them. Restore them from a backup, move "
            "them out of the folder to start afresh, or run with --resume false. Details: " + " | ".join(damaged)
        )
    return ""
