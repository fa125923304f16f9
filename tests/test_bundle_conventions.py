"""MONAI's bundle conventions on every bundle under ``bundles/`` (issue 17):

- ``models/model.pt`` is the network's plain state_dict: a stock ``torch.load`` loads strictly into ``network_def``
  (the learned schedule and the other entries live beside it);
- ``ckpt_export`` writes TorchScript (by tracing the packed single-tensor form of the network) that gives the eager
  network's output;
- ``ConfigWorkflow(...).check_properties()`` finds every id of ``TrainProperties`` / ``InferProperties``;
- ``verify_metadata`` (offline schema) and ``verify_net_in_out`` (the arguments the bundle README gives) pass;
- ``--tracking mlflow`` adds MLflow handlers next to the bundle's own (every bundle), and a real two-iteration run
  logs training and validation to a local MLflow store;
- ``large_files.yml`` lists every weights file with its SHA-256, ``docs/data_license.txt`` exists, ``eval_metrics``
  is filled from the evaluation logs.

Everything runs in this process except the one MLflow training run, and on tiny inputs.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import re
from functools import cache
from pathlib import Path

import pytest
import torch

from monai_medgen.bundle.configs import train_config_files

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
NAMES = sorted(p.parent.parent.name for p in BUNDLES.glob("*/configs/metadata.json"))
COLIN27 = Path("/usr/share/mricron/templates/ch2bet.nii.gz")
LATENT = "vdm_latent_brain_mri_3d"

# small settings for the train workflows' properties, which build the trainer (its data included)
TINY_TRAIN = {
    "vdm_brain_mri_2d": {"image_size": 32, "crop_size": 16, "num_val_slices": 2},
    "vdm_brain_mri_3d": {"image_size": 32, "crop_size": 16},
    LATENT: {"image_size": [32, 32, 32], "shifts": [0], "val_interval": 0},
    "cddpm_class_conditional_2d": {"image_size": 32},
    "cddpm_mr_contrast_2d": {"image_size": 32},
    "cddpm_super_resolution_2d": {"image_size": 32, "crop_size": 16, "num_val_slices": 2},
    "cddpm_denoising_2d": {"image_size": 32, "crop_size": 16, "num_val_slices": 2},
    "cddpm_inpainting_2d": {"image_size": 32, "crop_size": 16, "num_val_slices": 2},
    "cddpm_super_resolution_3d": {"image_size": 96, "crop_size": 16},
}

pytestmark = pytest.mark.usefixtures("one_thread")


def _missing_data(name: str) -> str | None:
    """Why the demo data a bundle's workflows read is unavailable (None when it is there)."""
    if importlib.util.find_spec("nilearn") is None:
        return "nilearn (MNI152 demo data) not installed"
    if not COLIN27.is_file():
        return "Colin27 (apt-get install mricron-data) not installed"
    if importlib.util.find_spec("tensorboard") is None:
        return "tensorboard not installed"
    return None


def _files(name: str) -> dict[str, str]:
    root = BUNDLES / name
    return {
        "bundle_root": str(root),
        "meta_file": str(root / "configs" / "metadata.json"),
        "config_file": str(root / "configs" / "inference.yaml"),
        "ckpt_file": str(root / "models" / "model.pt"),
    }


@cache
def _network(name: str):
    """``network_def`` of the bundle's inference.yaml (a fresh, untrained instance)."""
    from monai.bundle import ConfigParser

    import monai_medgen  # noqa: F401  (the configs name its classes)

    parser = ConfigParser()
    parser.read_config(_files(name)["config_file"])
    parser["bundle_root"] = str(BUNDLES / name)
    parser["device"] = "$torch.device('cpu')"
    return parser.get_parsed_content("network_def", instantiate=True)


def _input_shape(name: str, size: int = 8) -> list[int]:
    meta = json.loads((BUNDLES / name / "configs" / "metadata.json").read_text())
    image = meta["network_data_format"]["inputs"]["image"]
    return [1, int(image["num_channels"]), *([size] * len(image["spatial_shape"]))]


def _packed_input(net, shape, seed=0) -> torch.Tensor:
    """A packed input (see ``ScoreUNet``): noisy image and condition in [-1, 1], a gamma inside the schedule's range,
    a valid class index."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g) * 2 - 1
    c = net.in_channels + net.cond_channels
    x[:, c] = 2.0  # gamma
    if net.num_classes is not None:
        x[:, c + 1] = 1.0  # class 1
    return x


# ---------------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_model_pt_loads_strictly_with_stock_torch(name):
    """A stock ``torch.load`` of ``models/model.pt`` is a state_dict that loads strictly into ``network_def``; the
    schedule of a learned-schedule bundle and the information entries are beside it."""
    from monai_medgen.bundle import model_sidecars

    path = BUNDLES / name / "models" / "model.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and all(torch.is_tensor(v) for v in state.values()), (
        f"{name}/models/model.pt is not a plain state_dict (keys {sorted(state)[:5]}): run "
        f"python scripts/convert_model_pt.py bundles/{name}"
    )
    net = _network(name)
    net.load_state_dict(state, strict=True)
    schedule_file, info_file = map(Path, model_sidecars(path))
    info = json.loads(info_file.read_text())
    assert isinstance(info.get("iteration"), int) and info["weights"] == "model.pt"
    if name.startswith("vdm_"):
        assert set(torch.load(schedule_file, weights_only=True)) == {"b", "w"}  # the learned linear schedule


def test_latent_autoencoder_file_is_a_state_dict():
    from monai.networks.nets import AutoencoderKL

    from monai_medgen.bundle import read_model_info
    from monai_medgen.io import sha256_of

    models = BUNDLES / LATENT / "models"
    ae = AutoencoderKL(**read_model_info(models / "autoencoder.pt")["config"])
    ae.load_state_dict(torch.load(models / "autoencoder.pt", weights_only=True), strict=True)
    # the latent model records the autoencoder it was trained on
    assert read_model_info(models / "model.pt")["autoencoder_sha256"] == sha256_of(models / "autoencoder.pt")


def test_earlier_single_file_layout_loads_and_converts(tmp_path):
    """Users' files of the earlier layout ({"network", "schedule", ...}) still load; convert_bundle rewrites them
    (network state_dict, schedule and info beside it, large_files.yml) and leaves converted files alone."""
    from monai_medgen.bundle import convert_bundle, load_model, read_model_info
    from monai_medgen.io import atomic_torch_save, sha256_of
    from monai_medgen.networks import ScoreUNet
    from monai_medgen.schedules import LearnedLinearSchedule

    def small():
        return ScoreUNet(2, 1, channels=(8, 8), num_res_blocks=1, norm_num_groups=4, num_head_channels=8)

    net, sched = small(), LearnedLinearSchedule()
    with torch.no_grad():
        sched.b.fill_(-11.0)
    old = {"network": net.state_dict(), "schedule": sched.state_dict(), "family": "sr", "iteration": 7}
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    atomic_torch_save(old, bundle / "models" / "model.pt")

    net2, sched2 = small(), LearnedLinearSchedule()
    assert load_model(bundle / "models" / "model.pt", net2, sched2) == {"family": "sr", "iteration": 7}
    assert sched2.b.item() == -11.0

    results = convert_bundle(bundle)
    assert [r["converted"] for r in results] == [True]
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    small().load_state_dict(state, strict=True)
    assert read_model_info(bundle / "models" / "model.pt") == {"family": "sr", "iteration": 7}
    net3, sched3 = small(), LearnedLinearSchedule()
    load_model(bundle / "models" / "model.pt", net3, sched3)
    assert sched3.b.item() == -11.0 and all(
        torch.equal(a, b) for a, b in zip(net.state_dict().values(), net3.state_dict().values())
    )
    listed = (bundle / "large_files.yml").read_text()
    assert sha256_of(bundle / "models" / "model.pt") in listed and "models/model_schedule.pt" in listed
    assert [r["converted"] for r in convert_bundle(bundle)] == [False]  # idempotent

    with pytest.raises(ValueError, match="learned parameters"):  # the schedule's file is gone
        (bundle / "models" / "model_schedule.pt").unlink()
        load_model(bundle / "models" / "model.pt", small(), LearnedLinearSchedule())
    with pytest.raises(ValueError, match="bundle_dir"):
        convert_bundle(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="JSON-serialisable"):
        from monai_medgen.bundle import save_model

        save_model(tmp_path / "x.pt", small(), bad=object())


# ---------------------------------------------------------------------------------------------
# ckpt_export, verify_net_in_out, verify_metadata
# ---------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("name", NAMES)
def test_ckpt_export_torchscript_matches_the_network(name, tmp_path):
    """``python -m monai.bundle ckpt_export network_def ... --use_trace True --input_shape [...]`` (the bundle README's
    command), in process: the TorchScript file loads with plain torch and reproduces the network on an input of another
    size than the one traced."""
    from monai.bundle import ckpt_export

    from monai_medgen.bundle import load_model

    files = _files(name)
    out = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(out), use_trace=True, input_shape=_input_shape(name, 8), **files)
    scripted = torch.jit.load(str(out), map_location="cpu")
    net = copy.deepcopy(_network(name))
    load_model(files["ckpt_file"], net)
    net.eval()
    x = _packed_input(net, _input_shape(name, 16))
    with torch.no_grad():
        expected = net(x)
        got = scripted(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    meta = json.loads(Path(files["meta_file"]).read_text())
    out_channels = meta["network_data_format"]["outputs"]["pred"]["num_channels"]
    assert tuple(got.shape) == (1, out_channels, *x.shape[2:])


@pytest.mark.parametrize("name", NAMES)
def test_verify_net_in_out_with_readme_arguments(name):
    """``verify_net_in_out`` with the arguments of the bundle README (``--n 16`` on the CPU), in process; the README
    holds the command."""
    from monai.bundle import verify_net_in_out

    files = _files(name)
    readme = (BUNDLES / name / "docs" / "README.md").read_text()
    assert "verify_net_in_out network_def" in readme and "--n 16" in readme
    verify_net_in_out(
        net_id="network_def",
        meta_file=files["meta_file"],
        config_file=files["config_file"],
        bundle_root=files["bundle_root"],
        n=16,
        device="cpu",
    )


@pytest.mark.filterwarnings("ignore:No hash value provided")
@pytest.mark.parametrize("name", NAMES)
def test_metadata_files_and_eval_metrics(name):
    """verify_metadata (offline schema), eval_metrics from the evaluation logs, data licence, large_files.yml."""
    from monai.bundle import verify_metadata

    from monai_medgen.bundle import schema_path, weights_files
    from monai_medgen.io import sha256_of

    root = BUNDLES / name
    verify_metadata(meta_file=str(root / "configs" / "metadata.json"), filepath=schema_path())
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    metrics = meta["eval_metrics"]
    assert metrics, f"{name}: eval_metrics is empty"
    logs = " ".join(p.read_text() for p in (root / "docs").glob("*log*.txt"))
    for key, value in metrics.items():
        shown = [f"{value:.{d}f}" for d in (1, 2, 3)] if isinstance(value, float) else [str(value)]
        assert any(re.search(rf"(?<![\d.]){re.escape(s)}(?!\d)", logs) for s in shown), (
            f"{name}: {key}={value} not in docs logs"
        )
    licence = (root / "docs" / "data_license.txt").read_text()
    assert "MNI152" in licence and "Colin27" in licence
    listed = (root / "large_files.yml").read_text()
    assert "committed in the repository" in listed
    for path in weights_files(root):
        rel = path.relative_to(root).as_posix()
        assert f'path: "{rel}"' in listed and sha256_of(path) in listed, f"{name}: large_files.yml is stale for {rel}"


# ---------------------------------------------------------------------------------------------
# MONAI's bundle properties and --tracking mlflow
# ---------------------------------------------------------------------------------------------
def _workflow(name: str, config: str, workflow_type: str, tmp_path: Path, **kwargs):
    from monai.bundle import ConfigWorkflow

    import monai_medgen  # noqa: F401

    root = BUNDLES / name
    return ConfigWorkflow(
        config_file=train_config_files(root) if config == "train.yaml" else str(root / "configs" / config),
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=None,
        workflow_type=workflow_type,
        bundle_root=str(root),
        device="$torch.device('cpu')",
        output_dir=str(tmp_path / "out"),
        **kwargs,
    )


@pytest.mark.parametrize("name", NAMES)
def test_check_properties_train(name, tmp_path):
    """``ConfigWorkflow(train.yaml, workflow_type='train').check_properties()`` finds every required id (the trainer,
    its max_epochs, dataset and inferer) and every optional one it refers to (train#handlers, validate#evaluator,
    validate#handlers, validate#key_metric, validate#inferer, val_interval)."""
    why = _missing_data(name)
    if why:
        pytest.skip(why)
    workflow = _workflow(name, "train.yaml", "train", tmp_path, **TINY_TRAIN[name])
    workflow.initialize()
    assert workflow.check_properties() == []
    assert workflow.max_epochs == workflow.trainer.state.max_epochs


def test_check_properties_train_autoencoder(tmp_path):
    why = _missing_data(LATENT)
    if why:
        pytest.skip(why)
    workflow = _workflow(LATENT, "train_autoencoder.yaml", "train", tmp_path, image_size=[32, 32, 32], crop_size=16)
    workflow.initialize()
    assert workflow.check_properties() == []


@pytest.mark.parametrize("name", NAMES)
def test_check_properties_infer(name, tmp_path):
    """``ConfigWorkflow(inference.yaml, workflow_type='infer').check_properties()``: dataset, evaluator (the inference
    as a MONAI engine), network_def, inferer, handlers."""
    workflow = _workflow(name, "inference.yaml", "infer", tmp_path)
    workflow.initialize()  # loads the committed weights
    assert workflow.check_properties() == []
    assert len(workflow.dataset) == 1 and workflow.dataset[0]["name"] == ""


def _targets(items) -> list[str]:
    return [h.get("_target_", "") if isinstance(h, dict) else str(h) for h in items]


@pytest.mark.parametrize("name", NAMES)
def test_tracking_mlflow_keeps_the_bundle_handlers(name, tmp_path):
    """``--tracking mlflow`` (MONAI's standard settings) appends an MLFlowHandler to the trainer's, the validator's
    and the inference evaluator's handler lists; every handler of the bundle stays."""
    from monai.bundle import ConfigParser

    for config, lists in (("train.yaml", ("train#handlers", "validate#handlers")), ("inference.yaml", ("handlers",))):
        plain = ConfigParser()
        root = BUNDLES / name
        plain.read_config(train_config_files(root) if config == "train.yaml" else str(root / "configs" / config))
        workflow = _workflow(name, config, "train" if config == "train.yaml" else "infer", tmp_path, tracking="mlflow")
        for key in lists:
            if key.startswith("validate") and plain.get("validate#evaluator") is None:  # a bundle without validation
                assert name in ("cddpm_class_conditional_2d", "cddpm_mr_contrast_2d") and key.startswith("validate"), (
                    key
                )
                continue
            before, after = _targets(plain[key]), _targets(workflow.parser[key])
            assert after == before + ["MLFlowHandler"], (name, config, key)
        assert workflow.parser.get_parsed_content("tracking_uri").startswith("sqlite:")


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow not installed (pip install mlflow)")
def test_tracking_mlflow_logs_training_and_validation(tmp_path):
    """Two training iterations of vdm_brain_mri_2d with ``--tracking mlflow``: the local MLflow store holds the
    training loss per iteration and the validation metrics, and the bundle's own outputs (log lines, TensorBoard,
    checkpoints, sample grid, model file) are all there."""
    why = _missing_data("vdm_brain_mri_2d")
    if why:
        pytest.skip(why)
    from test_bundles import TINY_TRAIN as TINY_VDM
    from test_bundles import run_bundle

    root = tmp_path / "bundle"
    proc = run_bundle("train.yaml", tmp_path, root, tracking="mlflow", experiment_name="conventions", **TINY_VDM)
    log = proc.stdout + proc.stderr
    assert "train_bpd" in log and "val_bpd" in log  # the bundle's StatsHandlers
    assert list((root / "runs" / "tensorboard").glob("events.out.tfevents.*"))
    assert (root / "runs" / "checkpoints" / "checkpoint_final_iteration=2.pt").is_file()
    assert (root / "runs" / "samples" / "samples_epoch_1.png").is_file()
    assert (root / "models" / "model.pt").is_file()

    from mlflow.tracking import MlflowClient

    logging.getLogger("alembic").setLevel(logging.WARNING)
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'runs' / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("conventions")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0].info.run_id
    assert [m.step for m in client.get_metric_history(run, "train_loss")] == [1, 2]
    for key in ("val_bpd", "val_diffusion", "val_prior", "val_reconstruction"):
        assert len(client.get_metric_history(run, key)) == 1, key
    assert any(a.path.endswith(".json") for a in client.list_artifacts(run))  # the executed config
