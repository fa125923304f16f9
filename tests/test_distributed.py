"""Multi-process training (``torchrun``, DistributedDataParallel): the inferers look through the wrapper, and
``train.yaml + train_multigpu.yaml`` of a conditional DDPM bundle train with two processes (gloo on the CPU), with
validation on and off.

A probe merged after ``train_multigpu.yaml`` hooks the score network (and so its EMA copy) and checks every call:
the noise level it receives must be one of the inferer's log-SNR levels gamma, never a raw timestep index.  (A
``DistributedDataParallel`` wrapper hid the network's type, so a class-conditional ``ScoreUNet`` was fed integer
timesteps as gamma and trained wrong without an error; the restoration bundles crashed.)  The 2D VDM bundle's
multi-process run is in ``test_bundles.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from monai_medgen.bundle import read_model_info, torchrun_command
from monai_medgen.bundle.configs import train_config_files
from monai_medgen.engines import unwrap_network
from monai_medgen.inferers import ConditionalDiffusionInferer
from monai_medgen.networks import ScoreUNet

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"

needs_training = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("nilearn", "tensorboard", "fire")),
    reason="needs nilearn (MNI152 demo data), tensorboard and fire (MONAI's bundle command line)",
)

# checks every call of the score network; one JSON summary per process in the bundle root
PROBE = """
import json, os
import torch

def attach(network, inferer, out_dir):
    gammas = inferer.schedule.gammas.detach().double().cpu()
    stats = {"train_calls": 0, "eval_calls": 0, "min": None, "max": None}
    path = os.path.join(out_dir, "gamma_probe_rank%s.json" % os.environ.get("RANK", "0"))

    def hook(module, args):
        g = args[1].detach().double().cpu().reshape(-1)
        off = (g[:, None] - gammas[None]).abs().min(1).values
        if bool((off > 1e-3).any()):
            raise AssertionError("the score network got %s, not log-SNR levels of the inferer" % g.tolist())
        stats["train_calls" if torch.is_grad_enabled() else "eval_calls"] += 1
        lo, hi = float(g.min()), float(g.max())
        stats["min"] = lo if stats["min"] is None else min(stats["min"], lo)
        stats["max"] = hi if stats["max"] is None else max(stats["max"], hi)
        with open(path, "w") as f:
            json.dump(stats, f)

    network.register_forward_pre_hook(hook)
"""

PROBE_CONFIG = """
+imports:
- $import gamma_probe
+initialize:
- $gamma_probe.attach(@network_def, @inferer, @bundle_root)
"""


def _tiny_overrides() -> dict:
    """The tiny-run overrides of scripts/torchrun_bundles.py per bundle (the same runs, checked in depth here)."""
    spec = importlib.util.spec_from_file_location("torchrun_bundles", REPO / "scripts" / "torchrun_bundles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {case[0]: dict(case[2]) for case in module.CASES if case[1] == "train.yaml"}


# a few iterations on tiny crops; validation on 3 slices, split unevenly over the two processes
RESTORATION = _tiny_overrides()["cddpm_denoising_2d"]
CLASS_CONDITIONAL = _tiny_overrides()["cddpm_class_conditional_2d"]


def torchrun_bundle(bundle: Path, tmp_path: Path, **overrides) -> tuple[str, list[dict]]:
    """``torchrun --nproc_per_node 2 -m monai.bundle run`` of train.yaml + train_multigpu.yaml + the probe, from
    ``tmp_path`` with every output there; returns the log and each process's probe summary."""
    root = tmp_path / "bundle"
    (tmp_path / "gamma_probe.py").write_text(PROBE)
    (tmp_path / "probe.yaml").write_text(PROBE_CONFIG)
    configs = [*train_config_files(bundle, ["train_multigpu.yaml"]), str(tmp_path / "probe.yaml")]
    cmd = torchrun_command(
        configs, root, bundle / "configs" / "logging.conf", 2, overrides, meta_file=bundle / "configs" / "metadata.json"
    )
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    state = read_model_info(root / "models" / "model.pt")  # the entries stored beside the plain state_dict
    assert state["iteration"] == overrides["epoch_length"]
    weights = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in weights)  # the network, not its DDP wrapper
    probes = [json.loads((root / f"gamma_probe_rank{r}.json").read_text()) for r in (0, 1)]
    assert all(p["train_calls"] == overrides["epoch_length"] for p in probes), probes
    return log, probes


# ---------------------------------------------------------------------------------------------
# in one process: the wrapper is looked through
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def process_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_inferer_reads_the_network_inside_ddp(process_group):
    net = ScoreUNet(
        spatial_dims=2,
        in_channels=1,
        num_classes=3,
        channels=[8, 8],
        attention_levels=[False, False],
        num_res_blocks=1,
        norm_num_groups=4,
        num_head_channels=8,
        fourier_exponents=[],
        residual=False,
    )
    ddp = torch.nn.parallel.DistributedDataParallel(net)
    assert unwrap_network(ddp) is net and unwrap_network(net) is net
    inferer = ConditionalDiffusionInferer(num_train_timesteps=50)
    assert inferer._mode(ddp) == inferer._mode(net) == "gamma"

    seen = []
    net.register_forward_pre_hook(lambda module, args: seen.append(args[1].detach().clone()))
    x, steps = torch.rand(2, 1, 8, 8) * 2 - 1, torch.tensor([3, 40])
    inferer(x, ddp, timesteps=steps, class_labels=torch.tensor([0, 2])).sum().backward()
    assert torch.allclose(seen[-1], inferer.gamma(steps))
    # the null class for guidance comes from the wrapped network too
    out = inferer.sample(torch.randn(1, 1, 8, 8), ddp, num_steps=2, class_labels=1, guidance_scale=1.0, verbose=False)
    assert out.shape == (1, 1, 8, 8) and torch.isfinite(out).all()


def test_data_samplers(tmp_path):
    """Validation: None outside torch.distributed and for an empty held-out set (validation off); otherwise every
    process gets its share, padded only when there are fewer items than processes.  Training: a share smaller
    than a batch (no step would run with drop_last) is an error, not an empty epoch."""
    import torch.distributed as dist

    from monai_medgen.bundle import training_sampler, validation_sampler

    assert validation_sampler([1, 2, 3]) is None
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert validation_sampler([]) is None
        assert list(validation_sampler([1, 2, 3])) == [0, 1, 2]
        assert sorted(training_sampler([1, 2, 3], batch_size=2)) == [0, 1, 2]
        with pytest.raises(ValueError, match="no training step"):
            training_sampler([1], batch_size=2)
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# two processes: train.yaml + train_multigpu.yaml
# ---------------------------------------------------------------------------------------------
@needs_training
@pytest.mark.parametrize("validation", [True, False], ids=["val_on", "val_off"])
def test_torchrun_restoration_bundle(tmp_path, validation):
    """cddpm_denoising_2d: the ScoreUNet gets gamma and its image condition; validation (3 slices over 2
    processes) runs through the sampler, or is off (an empty held-out set)."""
    overrides = {**RESTORATION, "val_interval": 1 if validation else 0, "sample_interval": 0}
    log, probes = torchrun_bundle(BUNDLES / "cddpm_denoising_2d", tmp_path, **overrides)
    assert ("val_psnr" in log) == validation
    assert all((p["eval_calls"] > 0) == validation for p in probes), probes


@needs_training
@pytest.mark.parametrize("sampling", [True, False], ids=["grid_on", "grid_off"])
def test_torchrun_class_conditional_bundle(tmp_path, sampling):
    """cddpm_class_conditional_2d: the ScoreUNet gets gamma, not raw timesteps; rank 0 alone draws the guided
    sample grid with the EMA network (on), or nothing is sampled (off)."""
    overrides = {**CLASS_CONDITIONAL, "sample_interval": 1 if sampling else 0}
    log, probes = torchrun_bundle(BUNDLES / "cddpm_class_conditional_2d", tmp_path, **overrides)
    grid = tmp_path / "bundle" / "runs" / "samples" / "samples_epoch_1.png"
    assert grid.is_file() == sampling
    assert (probes[0]["eval_calls"] > 0) == sampling and probes[1]["eval_calls"] == 0, probes
    assert probes[0]["max"] < 30  # gamma of T = 1000 linear betas lies in about [-9, 11]; timesteps reach 999
