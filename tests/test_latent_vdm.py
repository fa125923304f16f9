"""Latent VDM: ``LatentVDMInferer`` (MONAI ``AutoencoderKL`` + our ``VDMInferer``), its scale factor, stage-1 training
on real MNI152 crops, and the ``vdm_latent_brain_mri_3d`` bundle through ``python -m monai.bundle``."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.nets import AutoencoderKL

from monai_medgen.bundle import read_model_info
from monai_medgen.bundle.configs import train_run_args
from monai_medgen.inferers import AutoencoderLoss, LatentVDMInferer, ReconstructionInferer, VDMInferer
from monai_medgen.inferers.latent import init_posterior_variance
from monai_medgen.networks import ScoreUNet
from monai_medgen.schedules import LearnedLinearSchedule

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "vdm_latent_brain_mri_3d"
COLIN27 = Path("/usr/share/mricron/templates/ch2bet.nii.gz")
needs_data = pytest.mark.skipif(
    importlib.util.find_spec("nilearn") is None or not COLIN27.is_file(),
    reason="needs nilearn (MNI152) and mricron-data (Colin27)",
)


def run_bundle(config: str, cwd: Path, bundle_root: Path, **overrides) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` of this bundle's ``configs/<config>`` in a fresh process run from ``cwd``."""
    argv = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--bundle_root",
        str(bundle_root),
    ]
    files = train_run_args(BUNDLE) if config == "train.yaml" else {"config_file": str(BUNDLE / "configs" / config)}
    for key, value in files.items():
        argv += [f"--{key}", value if isinstance(value, str) else repr(value)]
    for key, value in overrides.items():
        argv += [f"--{key}", str(value)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(argv, cwd=str(cwd), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{config} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def tiny_autoencoder(channels=(8, 16, 16)) -> AutoencoderKL:
    return AutoencoderKL(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        channels=channels,
        latent_channels=3,
        num_res_blocks=1,
        attention_levels=(False,) * len(channels),
        norm_num_groups=8,
        with_encoder_nonlocal_attn=False,
        with_decoder_nonlocal_attn=False,
    )


def tiny_score_net() -> ScoreUNet:
    return ScoreUNet(3, 3, channels=(8, 8), num_res_blocks=1, norm_num_groups=4, num_head_channels=8, grid_levels=256)


def test_round_trip_shapes_3d():
    inferer = LatentVDMInferer(tiny_autoencoder(), VDMInferer(LearnedLinearSchedule()))
    assert inferer.downsample_factor == 4 and inferer.latent_channels == 3
    assert all(not p.requires_grad for p in inferer.autoencoder.parameters())  # frozen
    x = torch.rand(2, 1, 16, 24, 16) * 2 - 1
    with pytest.raises(ValueError, match="scale_factor is not set"):
        inferer.encode(x)
    inferer.fit_scale_factor(inferer.encode_raw(x))
    z = inferer.encode(x)
    assert z.shape == (2, 3, 4, 6, 4) and z.abs().max() <= 1.0
    assert inferer.decode(z).shape == x.shape
    assert inferer.latent_shape(x.shape) == (2, 3, 4, 6, 4)
    with pytest.raises(ValueError, match="divisible by 4"):
        inferer.latent_shape((1, 1, 16, 18, 16))

    net = tiny_score_net()
    out = inferer(x, net)  # images -> latents -> one VLB estimate, bits per latent dim
    assert out.bpd.shape == (2,) and bool(torch.isfinite(out.loss))
    out.loss.backward()
    assert next(net.parameters()).grad is not None
    bpd = inferer.bits_per_dim(x, net, num_time_samples=2)
    assert bpd["bpd"].shape == (2,) and bool((bpd["bpd"] > 0).all())

    g = torch.Generator().manual_seed(3)
    latent_shape = inferer.latent_shape((1, 1, 16, 24, 16))
    sample = inferer.sample(
        torch.randn(latent_shape, generator=g), net, num_steps=3, sampler="dpm++", generator=g, verbose=False
    )
    assert sample.shape == (1, 1, 16, 24, 16) and sample.abs().max() <= 1.0
    g = torch.Generator().manual_seed(3)
    again = inferer.sample(
        torch.randn(latent_shape, generator=g), net, num_steps=3, sampler="dpm++", verbose=False, generator=g
    )
    assert torch.equal(sample, again)  # same seed, same volume
    latents = inferer.sample(torch.randn(latent_shape), net, num_steps=2, decode=False, verbose=False)
    assert latents.shape == (1, 3, 4, 6, 4)
    recon = ReconstructionInferer()(x, inferer.autoencoder)
    assert recon.shape == x.shape


def test_init_posterior_variance():
    ae = init_posterior_variance(tiny_autoencoder(), log_variance=-8.0)
    with torch.no_grad():
        _, z_sigma = ae.encode(torch.rand(1, 1, 16, 16, 16))
        _, default_sigma = tiny_autoencoder().encode(torch.rand(1, 1, 16, 16, 16))
    assert float(z_sigma.max()) < 0.1  # MONAI's default init gives sigma near 1
    assert float(default_sigma.mean()) > 0.5
    with pytest.raises(ValueError, match="AutoencoderKL"):
        init_posterior_variance(torch.nn.Linear(2, 2))


def test_scale_factor_fit_and_stored(tmp_path):
    from monai_medgen.bundle import latest_checkpoint
    from monai_medgen.bundle.latent import load_latent_model, save_latent_model, stored_scale_factor

    inferer = LatentVDMInferer(tiny_autoencoder(), latent_range=4.0)
    raw = [torch.randn(3, 10, 10, 10, generator=torch.Generator().manual_seed(i)) * 2.5 + 0.3 for i in range(2)]
    factor = inferer.fit_scale_factor(raw)
    assert factor == pytest.approx(1 / float(torch.cat([r.reshape(-1) for r in raw]).std()), rel=1e-6)
    assert 1 / factor == pytest.approx(2.5, rel=0.05)
    z = inferer.to_model_space(raw[0])
    assert float((z * 4.0).std()) == pytest.approx(1.0, rel=0.05)  # unit variance before the range
    assert inferer.clipped_fraction(raw[0] * 3) > inferer.clipped_fraction(raw[0]) >= 0.0
    with pytest.raises(ValueError, match="zero variance"):
        inferer.fit_scale_factor(torch.ones(3, 4, 4, 4))
    with pytest.raises(ValueError, match="latent_range"):
        LatentVDMInferer(tiny_autoencoder(), latent_range=0)

    # stored with the weights, restored into a fresh inferer
    net, sched = tiny_score_net(), LearnedLinearSchedule()
    latents = {"size": [16, 16, 16], "affine": np.diag([1.0, 1.0, 1.0, 1.0])}
    path = save_latent_model(tmp_path / "model.pt", net, sched, inferer, latents=latents, iteration=3)
    assert Path(str(path) + ".sha256").is_file()
    fresh = LatentVDMInferer(tiny_autoencoder())
    info = load_latent_model(path, tiny_score_net(), LearnedLinearSchedule(), fresh)
    assert fresh.scale_factor == pytest.approx(factor) and info["image_size"] == [16, 16, 16] and info["iteration"] == 3
    # a training checkpoint's entry (what a resumed stage 2 reuses)
    torch.save({"latent_inferer": inferer.state_dict()}, tmp_path / "checkpoint_epoch=1.pt")
    assert stored_scale_factor(latest_checkpoint(tmp_path, "checkpoint*.pt")) == pytest.approx(factor)
    assert stored_scale_factor("") is None


@needs_data
def test_autoencoder_training_reduces_loss_on_mni152():
    """Stage 1 with MONAI's SupervisedTrainer on real 32^3 crops of the 1 mm MNI152 brain: 25 iterations lower the
    L1 + KL loss of a fixed set of brain crops well below its start."""
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedTrainer
    from monai.inferers import SimpleInferer
    from monai.utils import set_determinism

    from monai_medgen.bundle.latent import volume_items
    from monai_medgen.engines import DiffusionPrepareBatch, slice_training_transforms

    set_determinism(0)
    items = volume_items(None, size=(96, 96, 96), repeats=2)
    assert items[0]["image"].shape == (1, 96, 96, 96) and items[0]["image"].max() == pytest.approx(1.0)
    ae = tiny_autoencoder()
    loss_fn = AutoencoderLoss(kl_weight=1e-6)
    fixed = torch.as_tensor(items[0]["image"])[None, :, 16:80:2, 16:80:2, 16:80:2] * 2 - 1  # 32^3, brain

    def fixed_loss():
        with torch.no_grad():
            return float(loss_fn(ae(fixed), fixed))

    before = fixed_loss()
    loader = DataLoader(Dataset(items, transform=slice_training_transforms(32)), batch_size=2, shuffle=True)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=25,
        train_data_loader=loader,
        network=ae,
        optimizer=torch.optim.Adam(ae.parameters(), lr=3e-3),
        loss_function=loss_fn,
        inferer=SimpleInferer(),
        prepare_batch=DiffusionPrepareBatch(),
        decollate=False,
    )
    trainer.run()
    after = fixed_loss()
    print(f"fixed-crop loss {before:.4f} -> {after:.4f}")
    assert after < 0.7 * before, (before, after)
    with pytest.raises(TypeError, match="tuple"):
        loss_fn(fixed, fixed)


@needs_data
def test_evaluate_table_in_process(tmp_path, capsys):
    from monai_medgen.bundle.latent import evaluate_latent_vdm

    inferer = LatentVDMInferer(tiny_autoencoder(), VDMInferer(LearnedLinearSchedule()), scale_factor=2.0)
    net = tiny_score_net()
    res = evaluate_latent_vdm(net, inferer, image_size=32, num_time_samples=2, output_file=tmp_path / "e.json")
    table = capsys.readouterr().out
    assert "| latent VDM, Colin27 latent: bits per latent dim |" in table and "| autoencoder reconstruction" in table
    assert res["latent_shape"] == [3, 8, 8, 8]
    assert res["bits_per_image_voxel"] == pytest.approx(res["latent_bpd"]["bpd"] * 3 * 8**3 / 32**3)
    assert res["trilinear_psnr"] > res["autoencoder_psnr"]  # an untrained autoencoder is worse than interpolation
    assert json.loads((tmp_path / "e.json").read_text())["scale_factor"] == 2.0


# ---------------------------------------------------------------------------------------------
# the bundle
# ---------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:No hash value provided")
def test_bundle_layout_and_metadata():
    from monai.bundle import verify_metadata

    from monai_medgen.bundle import schema_path

    for name in (
        "configs/metadata.json",
        "configs/train_autoencoder.yaml",
        "configs/train.yaml",
        "configs/inference.yaml",
        "configs/evaluate.yaml",
        "configs/train_multigpu.yaml",
        "configs/logging.conf",
        "docs/README.md",
        "LICENSE",
    ):
        assert (BUNDLE / name).is_file(), name
    for cfg in BUNDLE.glob("configs/*.yaml"):
        assert "import scripts" not in cfg.read_text()
    verify_metadata(meta_file=str(BUNDLE / "configs" / "metadata.json"), filepath=schema_path())  # offline


@needs_data
@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed")
def test_bundle_two_stages_and_inference(tmp_path):
    """Both stages for two iterations on 32^3 volumes from another directory, then inference of a 48 x 32 x 40 volume
    (not a multiple of 16: padded and cropped back) in the training volume's space, marked synthetic."""
    import nibabel as nib

    from monai_medgen.io import is_synthetic, read_provenance

    root, work = tmp_path / "bundle", tmp_path / "cwd"
    work.mkdir()
    tiny = {"max_epochs": 1, "epoch_length": 2, "image_size": "[32, 32, 32]", "log_every": 1, "device": "cpu"}
    proc = run_bundle("train_autoencoder.yaml", work, root, crop_size=16, val_interval=1, **tiny)
    assert "val_psnr" in proc.stdout + proc.stderr and "train_loss" in proc.stdout + proc.stderr
    ae_state = read_model_info(root / "models" / "autoencoder.pt")
    assert ae_state["iteration"] == 2 and ae_state["config"]["latent_channels"] == 3

    proc = run_bundle(
        "train.yaml",
        work,
        root,
        shifts="[0]",
        val_interval=1,
        num_time_samples=2,
        sample_interval=1,
        grid_sample_steps=2,
        **tiny,
    )
    log = proc.stdout + proc.stderr
    assert "val_latent_bpd" in log and "train_latent_bpd" in log and "scale factor" in log
    assert (root / "runs" / "vdm" / "samples" / "samples_epoch_1.png").is_file()
    state = read_model_info(root / "models" / "model.pt")  # the entries stored beside the plain state_dict
    assert state["iteration"] == 2 and state["scale_factor"] > 0 and state["image_size"] == [32, 32, 32]
    ckpt = torch.load(root / "runs" / "vdm" / "checkpoints" / "checkpoint_final_iteration=2.pt", weights_only=True)
    assert ckpt["latent_inferer"]["scale_factor"] == pytest.approx(state["scale_factor"])

    out = tmp_path / "samples"
    proc = run_bundle(
        "inference.yaml", work, root, output_dir=str(out), image_size="[48, 32, 40]", num_steps=2, device="cpu"
    )
    assert "sampled 1 volume(s) of 48x32x40 voxels from latents 3x12x8x12" in proc.stdout
    img = nib.load(out / "sample_000_synthetic.nii.gz")
    assert img.shape == (48, 32, 40) and is_synthetic(out / "sample_000_synthetic.nii.gz")
    trained = np.asarray(state["affine"])
    expected = trained.copy()
    expected[:3, 3] += trained[:3, :3] @ (0.5 * (np.array([32, 32, 32]) - np.array([48, 32, 40])))
    np.testing.assert_allclose(img.affine, expected, atol=1e-5)  # 1 mm MNI152 voxels, the same centre
    np.testing.assert_allclose(np.abs(np.diag(img.affine)[:3]), 1.0)
    data = img.get_fdata()
    assert 0.0 <= data.min() and data.max() <= 1.0
    assert read_provenance(out / "sample_000_synthetic.nii.gz").extra["scale_factor"] == pytest.approx(
        state["scale_factor"]
    )
    assert (out / "samples.png").is_file()


def test_committed_weights_sample_from_the_bundle(tmp_path):
    """The committed autoencoder and latent VDM load (checksums verified) and sample through the bundle's own
    inference.yaml from another directory: a 64^3 volume (a crop of the 160 x 192 x 160 default, to keep the test
    short) on the 1 mm grid of the training volume, finite, in [0, 1], with brain-like foreground and background."""
    import nibabel as nib

    from monai_medgen.io import is_synthetic, read_provenance

    if not (BUNDLE / "models" / "model.pt").is_file():
        pytest.fail("vdm_latent_brain_mri_3d has no committed models/model.pt")
    work, out = tmp_path / "cwd", tmp_path / "samples"
    work.mkdir()
    proc = run_bundle(
        "inference.yaml", work, BUNDLE, output_dir=str(out), image_size="[64, 64, 64]", num_steps=4, device="cpu"
    )
    assert "sampled 1 volume(s) of 64x64x64 voxels from latents 3x16x16x16" in proc.stdout
    path = out / "sample_000_synthetic.nii.gz"
    img = nib.load(path)
    data = np.asarray(img.get_fdata(dtype=np.float32))
    assert img.shape == (64, 64, 64) and is_synthetic(path)
    assert np.isfinite(data).all() and data.min() >= 0.0 and data.max() <= 1.0
    np.testing.assert_allclose(np.abs(np.diag(img.affine)[:3]), 1.0)
    assert data.std() > 0.05  # not a constant volume
    prov = read_provenance(path)
    assert prov.steps == 4 and prov.sampler == "dpm++" and prov.extra["latent_shape"] == [3, 16, 16, 16]
    committed = (BUNDLE / "models" / "autoencoder.pt.sha256").read_text().split()[0]
    assert prov.extra["autoencoder_sha256"] == committed
