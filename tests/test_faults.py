"""A real training process killed mid-epoch resumes from its last checkpoint with nothing lost, and a damaged
checkpoint is never resumed from (nor silently replaced by a run from iteration 0).

``python -m monai.bundle run`` trains a copy of ``bundles/cddpm_denoising_2d`` (tiny: 16x16 crops of 32x32 MNI152
slices, batch 2, 4 epochs of 10 iterations, one checkpoint per epoch); the test waits until the epoch-2 checkpoint
is on disk and the log shows iterations of epoch 3, sends SIGKILL, checks the checkpoints on disk against their
SHA-256, and runs the same command again.  Run with ``-s`` to see the figures (iteration at the kill, iteration
resumed, checkpoint sizes and checksums).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from monai_medgen import io
from monai_medgen.bundle import read_model_info, resume_checkpoint, verify_checkpoint
from monai_medgen.bundle.configs import train_run_args

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "cddpm_denoising_2d"
EPOCHS, EPOCH_LENGTH = 4, 10
TINY = {
    "max_epochs": EPOCHS,
    "epoch_length": EPOCH_LENGTH,
    "image_size": 32,
    "crop_size": 16,
    "batch_size": 2,
    "val_interval": 0,
    "sample_interval": 0,
    "log_every": 1,
    "num_workers": 0,
    "device": "cpu",
}
ITER_LINE = re.compile(r"Epoch: (\d+)/(\d+), Iter: (\d+)/(\d+) -- train_loss")

needs_training = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("nilearn", "tensorboard", "fire")),
    reason="needs nilearn (MNI152 demo data), tensorboard and fire (MONAI's bundle command line)",
)


def _command(root: Path) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--bundle_root",
        str(root),
    ]
    for key, value in train_run_args(root).items():
        cmd += [f"--{key}", value if isinstance(value, str) else repr(value)]
    for key, value in TINY.items():
        cmd += [f"--{key}", str(value)]
    return cmd


def _env() -> dict:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }


def _iterations(log: str) -> list[int]:
    """Global iteration of every logged training step, in order."""
    return [(int(e) - 1) * int(n) + int(i) for e, _, i, n in ITER_LINE.findall(log)]


def _run(root: Path, cwd: Path) -> str:
    proc = subprocess.run(_command(root), cwd=str(cwd), env=_env(), capture_output=True, text=True, timeout=240)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    return log


def _train_and_kill(root: Path, cwd: Path, kill_epoch: int = 3, min_iter: int = 2) -> tuple[str, float]:
    """Start training, poll until ``checkpoint_epoch={kill_epoch - 1}.pt`` exists and the log shows iteration
    ``min_iter`` of epoch ``kill_epoch``, then SIGKILL; returns (log, seconds from start to kill)."""
    lines: list[str] = []
    proc = subprocess.Popen(
        _command(root), cwd=str(cwd), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    ckpt = root / "runs" / "checkpoints" / f"checkpoint_epoch={kill_epoch - 1}.pt"
    start = time.monotonic()
    try:
        while True:
            seen = ITER_LINE.findall("".join(lines[-5:]))
            if ckpt.is_file() and seen and int(seen[-1][0]) == kill_epoch and int(seen[-1][2]) >= min_iter:
                break
            if proc.poll() is not None or time.monotonic() - start > 300:  # a hang guard only
                raise AssertionError(f"training ended or stalled before the kill point:\n{''.join(lines)[-5000:]}")
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        killed_after = time.monotonic() - start
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=30)
    return "".join(lines), killed_after


def _checkpoint_files(folder: Path) -> dict[str, dict]:
    return {p.name: verify_checkpoint(p) for p in sorted(folder.glob("*.pt"))}


def _table(title: str, infos: dict[str, dict]) -> str:
    rows = [
        f"{title}\n| file | bytes | SHA-256 (verified against .sha256) | trainer iteration | epoch |",
        "|---|---|---|---|---|",
    ]
    rows += [
        f"| {name} | {i['bytes']} | {i['sha256'][:16]}... ({'yes' if i['checksum_file'] else 'no sidecar'}) | "
        f"{i['iteration']} | {i['epoch']} |"
        for name, i in infos.items()
    ]
    return "\n".join(rows)


@needs_training
def test_kill_mid_epoch_then_resume(tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(BUNDLE / "configs", root / "configs")
    ckpt_dir = root / "runs" / "checkpoints"

    # 1. train, SIGKILL in the middle of epoch 3
    log1, seconds = _train_and_kill(root, tmp_path)
    done = _iterations(log1)
    killed_at = done[-1]
    assert done == list(range(1, killed_at + 1))  # a fresh run: iterations 1, 2, ...
    assert 2 * EPOCH_LENGTH < killed_at < 3 * EPOCH_LENGTH, f"not killed mid-epoch 3: last iteration {killed_at}"
    assert not (ckpt_dir / "checkpoint_epoch=3.pt").exists()
    assert not (root / "models" / "model.pt").exists()  # finalize never ran: no half-trained model file

    # the checkpoints on disk are whole: each matches its SHA-256 and loads; nothing else is in the folder
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [
        "checkpoint_epoch=1.pt",
        "checkpoint_epoch=1.pt.sha256",
        "checkpoint_epoch=2.pt",
        "checkpoint_epoch=2.pt.sha256",
    ]
    before = _checkpoint_files(ckpt_dir)
    assert [(i["iteration"], i["epoch"], i["checksum_file"]) for i in before.values()] == [
        (EPOCH_LENGTH, 1, True),
        (2 * EPOCH_LENGTH, 2, True),
    ]
    for name, info in before.items():
        assert (ckpt_dir / f"{name}.sha256").read_text().split()[0] == info["sha256"]
    assert resume_checkpoint(ckpt_dir).endswith("checkpoint_epoch=2.pt")

    # a second copy whose newest checkpoint is damaged, with the temporary files of a save killed half-way
    damaged = tmp_path / "damaged"
    shutil.copytree(root, damaged)  # copy2: modification times kept
    bad = damaged / "runs" / "checkpoints" / "checkpoint_epoch=2.pt"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    truncated_bytes = bad.stat().st_size
    partial = [
        damaged / "runs" / "checkpoints" / n
        for n in (".checkpoint_epoch=3.pt.k2j4x9_a.tmp.pt", ".checkpoint_epoch=3.pt.q8w1e2r3.tmp.sha256")
    ]
    partial[0].write_bytes((ckpt_dir / "checkpoint_epoch=1.pt").read_bytes()[:4096])
    partial[1].write_text("")

    # 2. the same command again: resumes at the iteration of the last checkpoint and finishes
    log2 = _run(root, tmp_path)
    assert f"Restored all variables from {ckpt_dir / 'checkpoint_epoch=2.pt'}" in log2
    resumed = _iterations(log2)
    assert resumed == list(range(2 * EPOCH_LENGTH + 1, EPOCHS * EPOCH_LENGTH + 1))
    state = read_model_info(root / "models" / "model.pt")
    assert state["iteration"] == EPOCHS * EPOCH_LENGTH and state["epoch"] == EPOCHS
    after = _checkpoint_files(ckpt_dir)
    final = after[f"checkpoint_final_iteration={EPOCHS * EPOCH_LENGTH}.pt"]
    assert final["iteration"] == EPOCHS * EPOCH_LENGTH and final["checksum_file"]
    full = torch.load(final["path"], map_location="cpu", weights_only=True)
    assert full["lr_scheduler"]["last_epoch"] == EPOCHS * EPOCH_LENGTH  # every optimiser step counted once
    for name, info in before.items():  # the checkpoints of the killed run are untouched
        assert after[name]["sha256"] == info["sha256"]
    assert not [p for p in ckpt_dir.iterdir() if p.name.startswith((".", "tmp"))]

    # 3. the damaged copy: the truncated newest file is named and skipped, the leftovers removed, epoch 1 resumed
    log3 = _run(damaged, tmp_path)
    assert "checkpoint_epoch=2.pt cannot be resumed from and is skipped" in log3
    assert "truncated or corrupted" in log3
    assert f"Restored all variables from {damaged / 'runs' / 'checkpoints' / 'checkpoint_epoch=1.pt'}" in log3
    assert _iterations(log3) == list(range(EPOCH_LENGTH + 1, EPOCHS * EPOCH_LENGTH + 1))
    assert not any(p.exists() for p in partial)
    assert read_model_info(damaged / "models" / "model.pt")["iteration"] == EPOCHS * EPOCH_LENGTH
    # the intact checkpoint it resumed from is untouched; the damaged one was saved again (then pruned, n_saved 2)
    assert (
        verify_checkpoint(damaged / "runs" / "checkpoints" / "checkpoint_epoch=1.pt")["sha256"]
        == (before["checkpoint_epoch=1.pt"]["sha256"])
    )
    assert sorted(p.name for p in (damaged / "runs" / "checkpoints").glob("*.pt")) == [
        "checkpoint_epoch=1.pt",
        "checkpoint_epoch=3.pt",
        "checkpoint_epoch=4.pt",
        "checkpoint_final_iteration=40.pt",
    ]

    print(
        f"\nkill-and-resume ({BUNDLE.name}, {EPOCHS} epochs x {EPOCH_LENGTH} iterations):"
        f"\n- SIGKILL {seconds:.1f} s after start, last logged iteration {killed_at} (epoch 3, iteration "
        f"{killed_at - 2 * EPOCH_LENGTH}/{EPOCH_LENGTH}); no temporary files, no models/model.pt"
        f"\n- restart resumed at iteration {resumed[0] - 1} from checkpoint_epoch=2.pt, ran {resumed[0]}..{resumed[-1]}, "
        f"model.pt iteration {state['iteration']}"
        f"\n- damaged copy (checkpoint_epoch=2.pt truncated to {truncated_bytes} bytes, 2 temporary "
        f"files of a half-finished save): skipped with a warning, resumed at iteration {EPOCH_LENGTH} from "
        f"checkpoint_epoch=1.pt, finished at {EPOCHS * EPOCH_LENGTH}\n"
        + _table("checkpoints after the kill:", before)
        + "\n"
        + _table("checkpoints after the resumed run:", after)
    )


# ---------------------------------------------------------------------------------------------
# the verification itself (in process, fast)
# ---------------------------------------------------------------------------------------------
def _state(iteration: int) -> dict:
    return {
        "network": {"w": torch.full((64, 64), float(iteration))},
        "trainer": {"iteration": iteration, "epoch": iteration // 10},
    }


def test_resume_checkpoint_choices(tmp_path):
    folder = tmp_path / "ck"
    assert resume_checkpoint(folder) == ""  # no folder yet: a first run
    folder.mkdir()
    assert resume_checkpoint(folder) == ""
    paths = []
    for k, it in enumerate((10, 20, 30)):
        paths.append(io.atomic_torch_save(_state(it), folder / f"checkpoint_epoch={it // 10}.pt"))
        os.utime(paths[-1], (1000 + k, 1000 + k))
    assert resume_checkpoint(folder) == paths[2] and verify_checkpoint(paths[2])["iteration"] == 30

    # a flipped byte keeps the file loadable (torch.load does not notice); the checksum does
    data = bytearray(Path(paths[2]).read_bytes())
    data[len(data) // 2] ^= 0xFF
    Path(paths[2]).write_bytes(bytes(data))
    torch.load(paths[2], weights_only=True)
    with pytest.raises(ValueError, match="truncated or corrupted: its SHA-256"):
        verify_checkpoint(paths[2])
    os.utime(paths[2], (1002, 1002))
    assert resume_checkpoint(folder) == paths[1]

    # an older file without a checksum (MONAI's own CheckpointSaver): truncation is caught by loading it
    os.remove(paths[1] + ".sha256")
    Path(paths[1]).write_bytes(Path(paths[1]).read_bytes()[:1000])
    os.utime(paths[1], (1001, 1001))
    assert resume_checkpoint(folder) == paths[0]

    # none intact: an error naming every file, never "" (which would start from iteration 0 over them)
    Path(paths[0]).write_bytes(b"")
    with pytest.raises(ValueError, match="none is intact") as e:
        resume_checkpoint(folder)
    assert all(os.path.basename(p) in str(e.value) for p in paths) and "--resume false" in str(e.value)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [os.path.basename(p) for p in paths] + ["checkpoint_epoch=1.pt.sha256", "checkpoint_epoch=3.pt.sha256"]
    )


def test_verified_saver_writes_atomically_and_prunes(tmp_path):
    """VerifiedCheckpointSaver on a real ignite engine: the files of MONAI's saver, each with a matching SHA-256;
    pruning (n_saved) removes a checkpoint with its checksum; the final checkpoint too."""
    from ignite.engine import Engine

    from monai_medgen.bundle import VerifiedCheckpointSaver

    net = torch.nn.Linear(3, 2)
    engine = Engine(lambda e, b: None)
    saver = VerifiedCheckpointSaver(
        str(tmp_path),
        {"network": net, "trainer": engine},
        save_final=True,
        save_interval=1,
        n_saved=2,
        epoch_level=True,
    )
    saver.attach(engine)
    engine.run([0, 1], max_epochs=3)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "checkpoint_epoch=2.pt",
        "checkpoint_epoch=2.pt.sha256",
        "checkpoint_epoch=3.pt",
        "checkpoint_epoch=3.pt.sha256",
        "checkpoint_final_iteration=6.pt",
        "checkpoint_final_iteration=6.pt.sha256",
    ]
    for p in tmp_path.glob("*.pt"):
        info = verify_checkpoint(p)
        assert info["checksum_file"] and (tmp_path / f"{p.name}.sha256").read_text().split()[0] == info["sha256"]
    assert verify_checkpoint(tmp_path / "checkpoint_epoch=3.pt")["iteration"] == 6
    assert resume_checkpoint(tmp_path).endswith(("checkpoint_final_iteration=6.pt", "checkpoint_epoch=3.pt"))
