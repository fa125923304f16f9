"""The MONAI bundles under ``bundles/``: metadata against the offline schema, and train / resume / inference /
evaluation / user data through ``python -m monai.bundle run`` in a fresh process, from a working directory
other than the bundle, with every output in a temporary folder.

MONAI's command line needs ``fire``; where it is missing, the same arguments go to ``monai.bundle.scripts``
in a fresh interpreter, parsed the way fire parses them (Python literals, else strings).
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_medgen.bundle import read_model_info
from monai_medgen.bundle.configs import train_config_files, train_run_args

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
VDM2D = BUNDLES / "vdm_brain_mri_2d"
COLIN27 = Path("/usr/share/mricron/templates/ch2bet.nii.gz")

# two training iterations on 16x16 crops of 32x32 slices, validation and a 4-step sample grid after the epoch
TINY_TRAIN = {
    "max_epochs": 1,
    "epoch_length": 2,
    "image_size": 32,
    "crop_size": 16,
    "batch_size": 2,
    "num_val_slices": 2,
    "val_batch_size": 2,
    "val_interval": 1,
    "num_time_samples": 2,
    "sample_interval": 1,
    "num_grid_samples": 2,
    "grid_sample_steps": 4,
    "log_every": 1,
    "device": "cpu",
}

_FIRE_FREE = """
import ast
import sys

from monai.bundle import scripts
command, rest = sys.argv[1], sys.argv[2:]
kwargs = {}
for key, value in zip(rest[::2], rest[1::2]):
    try:
        value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        pass
    kwargs[key.lstrip("-")] = value
getattr(scripts, command)(**kwargs)
"""

needs_colin27 = pytest.mark.skipif(not COLIN27.is_file(), reason="Colin27 (apt-get install mricron-data) not installed")
needs_demo = pytest.mark.skipif(
    importlib.util.find_spec("nilearn") is None, reason="nilearn (MNI152 demo data) not installed"
)
needs_tensorboard = pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed"
)


def bundle_cli(
    command: str, cwd: Path, timeout: float = 300, launcher: tuple[str, ...] = (), **args
) -> subprocess.CompletedProcess:
    """``python [launcher] -m monai.bundle <command> --key value ...`` in a fresh process run from ``cwd``
    (``launcher``: e.g. ``torch.distributed.run`` options)."""
    argv = [command]
    for key, value in args.items():
        argv += [f"--{key}", value if isinstance(value, str) else repr(value)]
    if importlib.util.find_spec("fire") is not None:
        entry = ["-m", "monai.bundle"]
    else:
        script = Path(cwd) / "_monai_bundle_cli.py"
        script.write_text(_FIRE_FREE)
        entry = [str(script)]
    cmd = [sys.executable, *launcher, *entry, *argv]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(cmd, cwd=str(cwd), env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd[:6])} {' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def run_bundle(
    config: str, cwd: Path, bundle_root: Path, bundle: Path = VDM2D, **overrides
) -> subprocess.CompletedProcess:
    """Run ``bundle/configs/<config>`` by absolute path with outputs under ``bundle_root`` (train.yaml after the
    shared bases it names, :func:`monai_medgen.bundle.configs.train_run_args`)."""
    files = train_run_args(bundle) if config == "train.yaml" else {"config_file": str(bundle / "configs" / config)}
    return bundle_cli("run", cwd, **files, bundle_root=str(bundle_root), **overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run (two iterations) of vdm_brain_mri_2d; returns (bundle_root, stdout+stderr)."""
    if (
        importlib.util.find_spec("nilearn") is None
        or not COLIN27.is_file()
        or importlib.util.find_spec("tensorboard") is None
    ):
        pytest.skip("needs nilearn, mricron-data and tensorboard")
    work, root = tmp_path_factory.mktemp("cwd"), tmp_path_factory.mktemp("vdm2d")
    proc = run_bundle("train.yaml", work, root, **TINY_TRAIN)
    return root, proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------------
# metadata
# ---------------------------------------------------------------------------------------------
def test_schema_is_draft7_and_packaged():
    import jsonschema

    from monai_medgen.bundle import schema_path

    path = Path(schema_path())
    assert path.is_file() and path.parent.parent == REPO / "monai_medgen" / "bundle"
    schema = json.loads(path.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    assert {
        "version",
        "monai_version",
        "pytorch_version",
        "numpy_version",
        "task",
        "description",
        "authors",
        "copyright",
        "network_data_format",
    } <= set(schema["required"])
    assert "bundle/schema/*.json" in (REPO / "setup.cfg").read_text()


@pytest.mark.parametrize(
    "meta", sorted(glob.glob(str(BUNDLES / "*" / "configs" / "metadata.json"))), ids=lambda p: Path(p).parts[-3]
)
def test_verify_metadata_offline(meta, tmp_path):
    """Every bundle's metadata passes ``python -m monai.bundle verify_metadata`` against the repository's
    schema (no download: the schema file already exists at --filepath)."""
    from monai_medgen.bundle import schema_path

    proc = bundle_cli("verify_metadata", tmp_path, meta_file=meta, filepath=schema_path(), timeout=300)
    assert "metadata is verified with no error" in proc.stdout + proc.stderr


@pytest.mark.filterwarnings("ignore:No hash value provided")
def test_schema_rejects_incomplete_metadata(tmp_path):
    from monai.bundle import verify_metadata

    from monai_medgen.bundle import schema_path

    meta = json.loads((VDM2D / "configs" / "metadata.json").read_text())
    bad = dict(meta)
    del bad["task"]
    (tmp_path / "no_task.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="task"):
        verify_metadata(meta_file=str(tmp_path / "no_task.json"), filepath=schema_path())
    bad = json.loads(json.dumps(meta))
    bad["network_data_format"]["outputs"]["pred"]["value_range"] = [0]
    (tmp_path / "bad_range.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError):
        verify_metadata(meta_file=str(tmp_path / "bad_range.json"), filepath=schema_path())


def test_bundle_layout():
    for name in (
        "configs/metadata.json",
        "configs/train.yaml",
        "configs/inference.yaml",
        "configs/evaluate.yaml",
        "configs/logging.conf",
        "configs/train_multigpu.yaml",
        "docs/README.md",
        "LICENSE",
    ):
        assert (VDM2D / name).is_file(), name
    for cfg in glob.glob(str(VDM2D / "configs" / "*.yaml")):
        text = Path(cfg).read_text()
        assert "import scripts" not in text, f"{cfg} imports bundle-local scripts (fails outside the bundle dir)"


# ---------------------------------------------------------------------------------------------
# helpers the configs call (in process)
# ---------------------------------------------------------------------------------------------
def test_model_file_roundtrip_and_checkpoint_choice(tmp_path):
    from ignite.handlers import EMAHandler

    from monai_medgen.bundle import latest_checkpoint, load_model, save_model
    from monai_medgen.networks import ScoreUNet
    from monai_medgen.schedules import LearnedLinearSchedule

    def small():
        return ScoreUNet(2, 1, channels=(8, 8), num_res_blocks=1, norm_num_groups=4, num_head_channels=8)

    net, sched = small(), LearnedLinearSchedule()
    ema = EMAHandler(net, momentum=0.5)
    with torch.no_grad():
        next(iter(ema.ema_model.parameters())).add_(1.0)
        sched.b.fill_(-11.0)
    path = save_model(tmp_path / "models" / "model.pt", net, sched, ema=ema, iteration=7)
    net2, sched2 = small(), LearnedLinearSchedule()
    info = load_model(path, net2, sched2)
    assert info == {"iteration": 7}
    assert float(sched2.b.detach()) == -11.0
    for a, b in zip(ema.ema_model.state_dict().values(), net2.state_dict().values()):
        assert torch.equal(a, b)  # the averaged weights are the ones stored
    with pytest.raises(FileNotFoundError, match="train the bundle first"):
        load_model(tmp_path / "missing.pt", net2)

    assert latest_checkpoint(tmp_path / "none") == ""
    (tmp_path / "ck").mkdir()
    for i, name in enumerate(["checkpoint_epoch=1.pt", "checkpoint_final_iteration=2.pt"]):
        (tmp_path / "ck" / name).write_bytes(b"x")
        os.utime(tmp_path / "ck" / name, (1000 + i, 1000 + i))
    assert latest_checkpoint(tmp_path / "ck").endswith("checkpoint_final_iteration=2.pt")


def test_output_mean_counts_examples():
    from monai_medgen.bundle import OutputMean

    m = OutputMean("bpd")
    m.update(m._pick({"pred": {"bpd": torch.tensor([1.0, 2.0, 3.0])}}))
    m.update(m._pick({"pred": {"bpd": torch.tensor([6.0])}}))
    assert m.compute() == pytest.approx(3.0)
    with pytest.raises(TypeError, match="decollate=False"):
        m._pick([{"pred": {"bpd": 1.0}}])


def test_synthetic_nifti_keeps_geometry(tmp_path):
    import nibabel as nib

    from monai_medgen.bundle import SYNTHETIC_DESCRIPTION, is_synthetic, save_synthetic_nifti

    affine = np.array([[0.0, -1.5, 0, 90], [1.5, 0, 0, -120], [0, 0, 2.0, 10], [0, 0, 0, 1]])
    x = torch.rand(2, 1, 12, 10)
    paths = save_synthetic_nifti(x, tmp_path, affine=affine, prefix="gen")
    assert [Path(p).name for p in paths] == ["gen_000_synthetic.nii.gz", "gen_001_synthetic.nii.gz"]
    img = nib.load(paths[1])
    assert img.shape == (12, 10)
    np.testing.assert_allclose(img.affine, affine, atol=1e-6)
    np.testing.assert_allclose(img.get_fdata(), x[1, 0].numpy(), atol=1e-6)
    assert img.header["descrip"].item().decode() == SYNTHETIC_DESCRIPTION and is_synthetic(paths[1])
    with pytest.raises(ValueError, match="SYNTHETIC"):
        save_synthetic_nifti(x, tmp_path, description="a real scan")


# ---------------------------------------------------------------------------------------------
# the bundle through `python -m monai.bundle run`
# ---------------------------------------------------------------------------------------------
@needs_demo
@needs_colin27
@needs_tensorboard
def test_train_two_iterations(trained):
    root, log = trained
    state = read_model_info(root / "models" / "model.pt")  # the entries stored beside the plain state_dict
    assert state["iteration"] == 2
    weights = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert all(torch.is_tensor(v) for v in weights.values())  # MONAI's convention: a plain state_dict
    assert (root / "models" / "model_schedule.pt").is_file()  # the learned schedule beside it
    ckpts = sorted(p.name for p in (root / "runs" / "checkpoints").glob("*.pt"))
    assert "checkpoint_final_iteration=2.pt" in ckpts
    full = torch.load(
        root / "runs" / "checkpoints" / "checkpoint_final_iteration=2.pt", map_location="cpu", weights_only=True
    )
    assert {"network", "schedule", "ema", "optimizer", "lr_scheduler", "trainer"} <= set(full)
    assert (root / "runs" / "samples" / "samples_epoch_1.png").is_file()
    assert (root / "runs" / "samples" / "samples_epoch_1.gif").is_file()
    assert list((root / "runs" / "tensorboard").glob("events.out.tfevents.*"))
    assert "val_bpd" in log and "train_bpd" in log
    assert "from the mni152 demo brain" in log and "from the colin27 demo brain" in log


@needs_demo
@needs_colin27
@needs_tensorboard
def test_resume_continues_iterations(trained, tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(trained[0], root)
    proc = run_bundle(
        "train.yaml", tmp_path, root, **{**TINY_TRAIN, "max_epochs": 2, "val_interval": 0, "sample_interval": 0}
    )
    assert "Restored all variables" in proc.stdout + proc.stderr
    state = read_model_info(root / "models" / "model.pt")  # the entries stored beside the plain state_dict
    assert state["iteration"] == 4 and state["epoch"] == 2
    full = torch.load(
        root / "runs" / "checkpoints" / "checkpoint_final_iteration=4.pt", map_location="cpu", weights_only=True
    )
    assert full["trainer"]["iteration"] == 4 and full["lr_scheduler"]["last_epoch"] == 4


@needs_demo
@needs_colin27
@needs_tensorboard
def test_augmented_stage_starts_from_the_trained_weights(trained, tmp_path):
    """configs/train_augment.yaml (the second stage of the committed weights) runs on the bundle's models/model.pt:
    the log says where it started, and the new file counts its iterations on from the starting weights'."""
    root = tmp_path / "bundle"
    shutil.copytree(trained[0], root, ignore=shutil.ignore_patterns("runs"))
    files = train_run_args(VDM2D, extra=["train_augment.yaml"])  # after train.yaml, as the README runs it
    assert files["config_file"][-2:] == [
        str(VDM2D / "configs" / "train.yaml"),
        str(VDM2D / "configs" / "train_augment.yaml"),
    ]
    tiny = {**TINY_TRAIN, "val_interval": 0, "sample_interval": 0}
    proc = bundle_cli("run", tmp_path, **files, bundle_root=str(root), **tiny)
    assert f"init_from: {root}/models/model.pt, iterations counted from 2" in proc.stdout + proc.stderr
    state = read_model_info(root / "models" / "model.pt")
    assert state["iteration"] == 4 and state["epoch"] == 1  # 2 of the first run, 2 of this one


def test_3d_stage_starts_from_the_2d_weights(trained, tmp_path):
    """vdm_brain_mri_3d's configs/train_from_2d.yaml (how its committed weights are made) on a 2D model.pt of
    vdm_brain_mri_2d's network: the 2D kernels are inflated into the 3D network, which counts its own iterations."""
    bundle = BUNDLES / "vdm_brain_mri_3d"
    root = tmp_path / "bundle"
    files = train_run_args(bundle, extra=["train_from_2d.yaml"])
    assert files["config_file"][-1] == str(bundle / "configs" / "train_from_2d.yaml")
    source = trained[0] / "models" / "model.pt"
    tiny = dict(max_epochs=1, epoch_length=2, image_size=32, crop_size=16, batch_size=2, val_interval=0)
    proc = bundle_cli(
        "run", tmp_path, **files, bundle_root=str(root), init_from=str(source), sample_interval=0, device="cpu", **tiny
    )
    log = proc.stdout + proc.stderr
    assert f"init_from: {source}, iterations counted from 0 (" in log and "2D kernels inflated to 3D" in log
    assert "tensors not transferred" not in log
    state = read_model_info(root / "models" / "model.pt")
    assert state["iteration"] == 2  # the 3D network's own two, not the 2D file's


@needs_demo
@needs_colin27
@needs_tensorboard
def test_train_multigpu_override(tmp_path):
    """train.yaml + train_multigpu.yaml under torch.distributed.run: two processes, DistributedDataParallel
    (gloo on the CPU), rank 0 writes checkpoints and the model."""
    root = tmp_path / "bundle"
    configs = train_config_files(VDM2D, ["train_multigpu.yaml"])
    tiny = {k: v for k, v in TINY_TRAIN.items() if k != "device"}

    def launch():
        return bundle_cli(
            "run",
            tmp_path,
            launcher=("-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"),
            config_file=repr(configs),
            bundle_root=str(root),
            logging_file=str(VDM2D / "configs" / "logging.conf"),
            meta_file=str(VDM2D / "configs" / "metadata.json"),
            **{**tiny, "num_val_slices": 3},
        )

    try:
        proc = launch()
    except AssertionError as e:
        # on a loaded 2-core machine a gloo worker sometimes aborts while the process group forms ("terminate
        # called without an active exception", before any training step): one more launch, any other failure raises
        if "terminate called without an active exception" not in str(e) or (root / "runs" / "checkpoints").exists():
            raise
        proc = launch()
    assert "val_bpd" in proc.stdout + proc.stderr
    state = read_model_info(root / "models" / "model.pt")  # the entries stored beside the plain state_dict
    assert state["iteration"] == 2
    assert (root / "runs" / "checkpoints" / "checkpoint_final_iteration=2.pt").is_file()


@needs_demo
@needs_colin27
@needs_tensorboard
def test_inference_writes_synthetic_nifti(trained, tmp_path):
    import nibabel as nib

    root = trained[0]
    out = tmp_path / "samples"
    run_bundle(
        "inference.yaml",
        tmp_path,
        root,
        output_dir=str(out),
        num_samples=3,
        batch_size=2,
        image_size=32,
        num_steps=4,
        device="cpu",
        cascade=False,  # the model just trained, not the committed cascade
    )
    files = sorted(out.glob("*.nii.gz"))
    assert [f.name for f in files] == [f"sample_{i:03d}_synthetic.nii.gz" for i in range(3)]
    assert (out / "samples.png").is_file() and (out / "sampling.gif").is_file()
    img = nib.load(files[0])
    assert img.shape == (32, 32)
    centred = np.diag([181 / 32] * 3 + [1])
    centred[:3, 3] = [-181 / 32 * 31 / 2, -181 / 32 * 31 / 2, 0]  # the one rule: centred on the origin
    np.testing.assert_allclose(img.affine, centred, atol=1e-5)
    assert img.header["descrip"].item().decode().startswith("SYNTHETIC")
    data = img.get_fdata()
    assert 0.0 <= data.min() and data.max() <= 1.0

    # samples of the trained size (32 here) cover a reference volume's in-plane field of view, on its middle slice
    affine = np.array([[0.0, -2.0, 0, 80], [2.0, 0, 0, -100], [0, 0, 3.0, -50], [0, 0, 0, 1]])
    ref = tmp_path / "reference.nii.gz"
    nib.save(nib.Nifti1Image(np.random.rand(30, 36, 5).astype(np.float32), affine), str(ref))
    out2 = tmp_path / "referenced"
    run_bundle(
        "inference.yaml",
        tmp_path,
        root,
        output_dir=str(out2),
        num_samples=1,
        num_steps=2,
        image_size=32,
        reference_image=str(ref),
        cascade=False,
    )
    img = nib.load(out2 / "sample_000_synthetic.nii.gz")
    assert img.shape == (32, 32)
    step = 72 / 32  # the larger in-plane side: 36 voxels of 2 mm
    np.testing.assert_allclose(np.linalg.norm(img.affine[:3, :3], axis=0)[:2], [step, step], atol=1e-6)
    centre = img.affine[:3, :3] @ [15.5, 15.5, 0] + img.affine[:3, 3]
    np.testing.assert_allclose(centre, affine[:3, :3] @ [14.5, 17.5, 2] + affine[:3, 3], atol=1e-5)
    assert img.header["descrip"].item().decode().startswith("SYNTHETIC")

    # the committed bundle samples with its cascade: whole 32 x 32 slices, then 4x super-resolution, 128 x 128 out
    out3 = tmp_path / "cascade"
    run_bundle("inference.yaml", tmp_path, VDM2D, output_dir=str(out3), num_samples=1, num_steps=2)
    img = nib.load(out3 / "sample_000_synthetic.nii.gz")
    assert img.shape == (128, 128)
    np.testing.assert_allclose(np.linalg.norm(img.affine[:3, :3], axis=0)[:2], [181 / 128] * 2, atol=1e-6)
    meta = json.loads((out3 / "sample_000_synthetic.nii.gz.json").read_text())
    assert "super-resolution" in json.dumps(meta)


@needs_demo
@needs_colin27
@needs_tensorboard
def test_evaluate_prints_bits_per_dim_table(trained, tmp_path):
    root = trained[0]
    result = tmp_path / "evaluation.json"
    proc = run_bundle(
        "evaluate.yaml", tmp_path, root, output_file=str(result), image_size=32, num_slices=2, num_time_samples=2
    )
    assert "| lossless PNG of the same 8-bit images |" in proc.stdout
    res = json.loads(result.read_text())
    assert np.isfinite(res["bpd"]) and res["bpd"] > 0 and res["num_images"] == 2 and res["iterations"] == 2
    assert res["bpd"] == pytest.approx(res["diffusion"] + res["prior"] + res["reconstruction"], rel=1e-4)
    assert 0 < res["png_bpd"] < 8


@pytest.fixture
def nifti_folder(tmp_path):
    """Two small real brains (Colin27 downsampled 4x, shifted by one voxel) as NIfTI files."""
    import nibabel as nib

    if not COLIN27.is_file():
        pytest.skip("Colin27 (apt-get install mricron-data) not installed")
    img = nib.load(str(COLIN27))
    vol = np.asarray(img.get_fdata(), dtype=np.float32)
    folder = tmp_path / "my_data"
    folder.mkdir()
    for i in range(2):
        small = vol[i::4, i::4, i::4]
        affine = img.affine.copy()
        affine[:3, :3] *= 4
        affine[:3, 3] += img.affine[:3, :3] @ np.full(3, i)
        nib.save(nib.Nifti1Image(small, affine), str(folder / f"brain_{i}.nii.gz"))
    return folder


@needs_tensorboard
def test_dataset_dir_replaces_demo_data(nifti_folder, tmp_path):
    root = tmp_path / "bundle"
    proc = run_bundle(
        "train.yaml",
        tmp_path,
        root,
        dataset_dir=str(nifti_folder),
        val_dataset_dir=str(nifti_folder),
        **{**TINY_TRAIN, "num_val_slices": 1, "sample_interval": 0},
    )
    log = proc.stdout + proc.stderr
    assert f"from {nifti_folder}" in log and "demo brain" not in log
    assert "val_bpd" in log
    state = read_model_info(root / "models" / "model.pt")  # the entries stored beside the plain state_dict
    assert state["iteration"] == 2


# ---------------------------------------------------------------------------------------------
# the conditional DDPM restoration bundles
# ---------------------------------------------------------------------------------------------
RESTORATION = {"cddpm_super_resolution_2d": "sr", "cddpm_denoising_2d": "denoise", "cddpm_inpainting_2d": "inpaint"}
RESIDUAL = set(RESTORATION)  # blind residual models (monai_medgen.tasks)
TINY_RESTORATION = {
    "max_epochs": 1,
    "epoch_length": 2,
    "image_size": 32,
    "crop_size": 16,
    "batch_size": 2,
    "num_val_slices": 2,
    "val_interval": 1,
    "val_steps": 2,
    "sample_interval": 1,
    "log_every": 1,
    "device": "cpu",
}


@pytest.fixture(scope="module", params=sorted(RESTORATION))
def trained_restoration(request, tmp_path_factory):
    """Two training iterations of each restoration bundle; returns (bundle, bundle_root, log)."""
    if (
        importlib.util.find_spec("nilearn") is None
        or not COLIN27.is_file()
        or importlib.util.find_spec("tensorboard") is None
    ):
        pytest.skip("needs nilearn, mricron-data and tensorboard")
    bundle = BUNDLES / request.param
    work, root = tmp_path_factory.mktemp("cwd"), tmp_path_factory.mktemp(request.param)
    proc = run_bundle("train.yaml", work, root, bundle=bundle, **TINY_RESTORATION)
    return bundle, root, proc.stdout + proc.stderr


def test_restoration_bundle_layout():
    for name in RESTORATION:
        for part in (
            "configs/metadata.json",
            "configs/train.yaml",
            "configs/inference.yaml",
            "configs/evaluate.yaml",
            "configs/logging.conf",
            "configs/train_multigpu.yaml",
            "docs/README.md",
            "LICENSE",
        ):
            assert (BUNDLES / name / part).is_file(), f"{name}/{part}"
        for cfg in ("train.yaml", "inference.yaml"):
            text = (BUNDLES / name / "configs" / cfg).read_text()
            key = "family" if name in RESIDUAL else "task"
            assert f"\n{key}: {RESTORATION[name]} " in text, f"{name}/{cfg} is not set to its task"
            assert "import scripts" not in text


def test_restoration_train_two_iterations(trained_restoration):
    bundle, root, log = trained_restoration
    state = read_model_info(root / "models" / "model.pt")  # the entries stored beside the plain state_dict
    assert state["iteration"] == 2 and state["task"] == RESTORATION[bundle.name]
    assert (root / "runs" / "checkpoints" / "checkpoint_final_iteration=2.pt").is_file()
    assert (root / "runs" / "samples" / "restorations_epoch_1.png").is_file()
    assert (root / "runs" / "samples" / "restorations_epoch_1.gif").is_file()
    assert "val_psnr" in log and "train_loss" in log


def test_denoising_masked_stage_fine_tunes_the_weights(trained_restoration, tmp_path):
    """cddpm_denoising_2d's configs/train_masked.yaml (how its committed 0.5.0 weights are made) after train.yaml:
    starts from a model.pt (init_from) and counts on from its iterations, with hard-masked corpus draws."""
    from monai.bundle import ConfigParser

    bundle, source_root, _ = trained_restoration
    if bundle.name != "cddpm_denoising_2d":
        pytest.skip("the hard-masked stage is the denoising bundle's")
    files = train_run_args(bundle, extra=["train_masked.yaml"])
    assert files["config_file"][-1] == str(bundle / "configs" / "train_masked.yaml")
    parser = ConfigParser()
    parser.read_config(files["config_file"])
    assert parser.get_parsed_content("corpus_options") == {"hard_mask": 0.3}
    source = source_root / "models" / "model.pt"
    root = tmp_path / "bundle"
    tiny = {**TINY_RESTORATION, "val_interval": 0, "sample_interval": 0}
    proc = bundle_cli("run", tmp_path, **files, bundle_root=str(root), init_from=str(source), **tiny)
    log = proc.stdout + proc.stderr
    assert f"init_from: {source}, iterations counted from 2" in log
    assert read_model_info(root / "models" / "model.pt")["iteration"] == 4


def test_denoising_zoom_variant_config_resolves():
    """configs/train_zoom.yaml (a fine-tuning recorded as tried and not adopted) still merges after train.yaml: it
    starts from the bundle's model.pt and its corpus options are ones the training corpus accepts."""
    from monai.bundle import ConfigParser

    from monai_medgen.tasks import TrainingCorpus

    bundle = BUNDLES / "cddpm_denoising_2d"
    files = train_run_args(bundle, extra=["train_zoom.yaml"])
    assert files["config_file"][-1] == str(bundle / "configs" / "train_zoom.yaml")
    parser = ConfigParser()
    parser.read_config(files["config_file"])
    parser["bundle_root"] = str(bundle)
    assert parser.get_parsed_content("init_from") == str(bundle / "models" / "model.pt")
    options = parser.get_parsed_content("corpus_options")
    assert options == {"hard_mask": 0.3, "zoom_range": [0.6, 4.0]}
    corpus = TrainingCorpus(sources=("photographs",), **options)
    assert corpus.zoom_range == (0.6, 4.0) and corpus.hard_mask == 0.3


def test_restoration_inference_on_demo_and_user_file(trained_restoration, nifti_folder, tmp_path):
    import nibabel as nib

    from monai_medgen.io import read_provenance

    bundle, root, _ = trained_restoration
    task = RESTORATION[bundle.name]
    out = tmp_path / "demo"
    # adapt_steps: the denoising bundle's test-time adaptation, 1 step (its default is longer; the others ignore it)
    proc = run_bundle(
        "inference.yaml", tmp_path, root, bundle=bundle, output_dir=str(out), num_steps=2, num_samples=2, adapt_steps=1
    )
    assert f"demo ({task}): PSNR input" in proc.stdout
    result = nib.load(out / f"demo_input_{task}_synthetic.nii.gz")
    truth = nib.load(out / "demo_truth.nii.gz")
    assert result.shape == truth.shape == (128, 128, 4)
    np.testing.assert_allclose(result.affine, truth.affine, atol=1e-5)  # SR: back on the truth's grid
    assert result.header["descrip"].item().decode().startswith("SYNTHETIC")
    assert (out / f"demo_input_{task}_std.nii.gz").is_file()
    prov = read_provenance(out / f"demo_input_{task}_synthetic.nii.gz")
    assert prov.steps == 2 and prov.extra.get("adapt_steps") == (1 if task == "denoise" else None)
    if task != "sr":
        return
    # a user's low-resolution NIfTI volume: 4x finer in-plane, the same field of view
    src = nifti_folder / "brain_0.nii.gz"
    before = src.read_bytes()
    out2 = tmp_path / "user"
    run_bundle(
        "inference.yaml",
        tmp_path,
        root,
        bundle=bundle,
        output_dir=str(out2),
        input_image=str(src),
        num_steps=1,
        factor=2.0,
    )
    img, ref = nib.load(out2 / "brain_0_sr_synthetic.nii.gz"), nib.load(str(src))
    assert img.shape == (ref.shape[0] * 2, ref.shape[1] * 2, ref.shape[2])
    np.testing.assert_allclose(img.affine[:3, :2], ref.affine[:3, :2] / 2, atol=1e-5)
    np.testing.assert_allclose(img.affine[:3, 2], ref.affine[:3, 2], atol=1e-5)
    assert src.read_bytes() == before


def test_restoration_evaluate_prints_table(trained_restoration, tmp_path):
    bundle, root, _ = trained_restoration
    configs = repr([str(bundle / "configs" / "inference.yaml"), str(bundle / "configs" / "evaluate.yaml")])
    if bundle.name in RESIDUAL:  # the unseen panel against the classical baselines (one small image here)
        proc = bundle_cli(
            "run",
            tmp_path,
            config_file=configs,
            bundle_root=str(root),
            num_samples=2,
            num_steps=2,
            adapt_steps=1,
            panel_images="['mr_small']",
        )
        baseline = {
            "sr": "| mr_small | lanczos |",
            "denoise": "| mr_small | median3 + TV |",
            "inpaint": "| mr_small | biharmonic |",
        }[RESTORATION[bundle.name]]
        # the inference.yaml setting of the denoising and inpainting bundles
        ensemble = ", self-ensemble" if bundle.name in ("cddpm_denoising_2d", "cddpm_inpainting_2d") else ""
        assert baseline in proc.stdout and f"| mr_small | model (mean of 2{ensemble}) |" in proc.stdout
        assert "model rows meet the bar" in proc.stdout
        return
    proc = bundle_cli(
        "run", tmp_path, config_file=configs, bundle_root=str(root), num_slices=2, num_samples=2, num_steps=2
    )
    baseline = {"sr": "| bicubic |", "denoise": "| TV (Chambolle", "inpaint": "| biharmonic |"}[
        RESTORATION[bundle.name]
    ]
    assert baseline in proc.stdout and "| ours: conditional DDPM, mean of 2, DPM-Solver++ 2 steps |" in proc.stdout


@needs_demo
@needs_colin27
@needs_tensorboard
def test_super_resolution_3d_bundle(tmp_path):
    """cddpm_super_resolution_3d: two training iterations on 32^3 cubes; inference restores a central box of the
    1 mm Colin27 brain from 4 mm slices through overlapping patches, on the truth's grid; evaluate prints its
    table with time and peak memory."""
    import nibabel as nib

    bundle = BUNDLES / "cddpm_super_resolution_3d"
    root = tmp_path / "bundle"
    proc = run_bundle(
        "train.yaml",
        tmp_path,
        root,
        bundle=bundle,
        max_epochs=1,
        epoch_length=2,
        crop_size=16,
        crops_per_volume=2,
        val_crop_size=16,
        val_interval=1,
        val_steps=2,
        sample_interval=1,
        log_every=1,
        image_size=96,
        device="cpu",
    )
    log = proc.stdout + proc.stderr
    assert "val_psnr" in log and "train_loss" in log
    state = read_model_info(root / "models" / "model.pt")  # the entries stored beside the plain state_dict
    assert state["iteration"] == 2
    out = tmp_path / "out"
    configs = repr([str(bundle / "configs" / "inference.yaml"), str(bundle / "configs" / "evaluate.yaml")])
    run_bundle(
        "inference.yaml",
        tmp_path,
        root,
        bundle=bundle,
        output_dir=str(out),
        num_steps=1,
        demo_crop="[40, 36, 32]",
        patch_size="[16, 16, 16]",
    )
    result, truth = nib.load(out / "demo_input_sr_synthetic.nii.gz"), nib.load(out / "demo_truth.nii.gz")
    low = nib.load(out / "demo_input.nii.gz")
    assert result.shape == truth.shape == (40, 36, 32) and low.shape == (40, 36, 8)
    np.testing.assert_allclose(result.affine, truth.affine, atol=1e-5)
    assert result.header["descrip"].item().decode().startswith("SYNTHETIC")
    proc = bundle_cli(
        "run",
        tmp_path,
        config_file=configs,
        bundle_root=str(root),
        num_steps=1,
        demo_crop="[32, 32, 32]",
        patch_size="[16, 16, 16]",
        output_dir=str(tmp_path / "eval"),
    )
    assert "| trilinear interpolation |" in proc.stdout and "peak resident memory" in proc.stdout


@needs_demo
@needs_colin27
@needs_tensorboard
def test_class_conditional_bundle(tmp_path):
    """cddpm_class_conditional_2d: two iterations with label dropout, a per-class sample grid; inference of one
    class writes synthetic NIfTI with the class in the provenance; evaluate prints the class-consistency table."""
    from monai_medgen.io import read_provenance

    bundle = BUNDLES / "cddpm_class_conditional_2d"
    root = tmp_path / "bundle"
    proc = run_bundle(
        "train.yaml",
        tmp_path,
        root,
        bundle=bundle,
        max_epochs=1,
        epoch_length=2,
        batch_size=4,
        image_size=32,
        sample_interval=1,
        grid_sample_steps=2,
        log_every=1,
        device="cpu",
    )
    assert "train_loss" in proc.stdout + proc.stderr
    assert (root / "runs" / "samples" / "samples_epoch_1.png").is_file()
    state = read_model_info(root / "models" / "model.pt")  # the entries stored beside the plain state_dict
    assert state["iteration"] == 2 and state["num_classes"] == 3
    out = tmp_path / "samples"
    run_bundle(
        "inference.yaml",
        tmp_path,
        root,
        bundle=bundle,
        output_dir=str(out),
        num_samples=2,
        num_steps=2,
        image_size=32,
        class_label=2,
    )
    prov = read_provenance(out / "sample_001_synthetic.nii.gz")
    assert prov.extra["class_label"] == 2 and prov.extra["guidance_scale"] == 2.0
    configs = repr([str(bundle / "configs" / "inference.yaml"), str(bundle / "configs" / "evaluate.yaml")])
    proc = bundle_cli(
        "run", tmp_path, config_file=configs, bundle_root=str(root), num_per_class=2, num_steps=2, image_size=32
    )
    assert "| real MNI152 slices (reference) |" in proc.stdout and "| generated, guidance 3 |" in proc.stdout


@needs_demo
@needs_colin27
@needs_tensorboard
def test_vdm_3d_bundle(tmp_path):
    """vdm_brain_mri_3d: two iterations on 16^3 cubes of the 32^3 demo volume with held-out bits/dim; inference
    writes synthetic 3D NIfTI volumes (covering a 3D reference's field of view); evaluate prints bits/dim next to PNG
    of the same volume's slices."""
    import nibabel as nib

    bundle = BUNDLES / "vdm_brain_mri_3d"
    root = tmp_path / "bundle"
    proc = run_bundle(
        "train.yaml",
        tmp_path,
        root,
        bundle=bundle,
        max_epochs=1,
        epoch_length=2,
        image_size=32,
        crop_size=16,
        batch_size=2,
        val_interval=1,
        num_time_samples=2,
        sample_interval=1,
        grid_sample_steps=2,
        log_every=1,
        device="cpu",
    )
    log = proc.stdout + proc.stderr
    assert "val_bpd" in log and "train_bpd" in log
    assert (root / "runs" / "samples" / "samples_epoch_1.png").is_file()
    state = read_model_info(root / "models" / "model.pt")  # the entries stored beside the plain state_dict
    assert state["iteration"] == 2
    out = tmp_path / "samples"
    run_bundle(
        "inference.yaml", tmp_path, root, bundle=bundle, output_dir=str(out), num_samples=2, num_steps=2, image_size=16
    )
    img = nib.load(out / "sample_001_synthetic.nii.gz")
    assert img.shape == (16, 16, 16) and img.header["descrip"].item().decode().startswith("SYNTHETIC")
    ref = tmp_path / "ref.nii.gz"
    affine = np.array([[0, -2.0, 0, 10], [1.5, 0, 0, -20], [0, 0, 3.0, 5], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(np.zeros((12, 20, 8), np.float32), affine), str(ref))
    run_bundle(
        "inference.yaml",
        tmp_path,
        root,
        bundle=bundle,
        output_dir=str(tmp_path / "ref_out"),
        num_samples=1,
        num_steps=2,
        image_size=16,
        reference_image=str(ref),
    )
    img = nib.load(tmp_path / "ref_out" / "sample_000_synthetic.nii.gz")
    assert img.shape == (16, 16, 16)  # the model's size, covering the reference's 18 x 40 x 24 mm field of view
    np.testing.assert_allclose(np.linalg.norm(img.affine[:3, :3], axis=0), [40 / 16] * 3, atol=1e-6)
    centre = img.affine[:3, :3] @ [7.5, 7.5, 7.5] + img.affine[:3, 3]
    np.testing.assert_allclose(centre, affine[:3, :3] @ [5.5, 9.5, 3.5] + affine[:3, 3], atol=1e-5)
    proc = run_bundle(
        "evaluate.yaml",
        tmp_path,
        root,
        bundle=bundle,
        image_size=32,
        num_time_samples=2,
        output_file=str(tmp_path / "eval.json"),
    )
    assert "| lossless PNG of the same 8-bit images |" in proc.stdout
    res = json.loads((tmp_path / "eval.json").read_text())
    assert res["bpd"] > 0 and res["png_bpd"] > 0 and res["num_images"] == 1
