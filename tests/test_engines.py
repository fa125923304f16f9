import numpy as np
import pytest
import torch

from monai_medgen.data import demo_slices
from monai_medgen.engines import DiffusionPrepareBatch, InfererLoss, build_vdm_trainer, evaluate_bpd, warmup_cosine
from monai_medgen.inferers import VDMInferer
from monai_medgen.metrics import png_bits_per_dim
from monai_medgen.networks import ScoreUNet
from monai_medgen.schedules import LearnedLinearSchedule


def test_warmup_cosine_shape():
    f = warmup_cosine(10, 110, final_factor=1e-3)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5 * (1 + 1e-3), rel=1e-3) and f(110) == pytest.approx(1e-3)
    assert all(f(i) >= f(i + 1) for i in range(10, 120))
    with pytest.raises(ValueError, match="total_steps"):
        warmup_cosine(100, 50)


def test_prepare_batch_label_dropout_to_null_class():
    pb = DiffusionPrepareBatch(label_key="label", label_dropout=0.5, null_class=3)
    batch = {"image": torch.zeros(2000, 1, 2, 2), "label": torch.ones(2000, dtype=torch.long)}
    inputs, targets, args, kwargs = pb(batch)
    labels = kwargs["class_labels"]
    assert inputs.shape == (2000, 1, 2, 2) and set(labels.tolist()) == {1, 3}
    assert 0.4 < (labels == 3).float().mean() < 0.6
    with pytest.raises(ValueError, match="null_class"):
        DiffusionPrepareBatch(label_key="label", label_dropout=0.1)
    with pytest.raises(KeyError, match="img"):
        DiffusionPrepareBatch(image_key="img")(batch)
    with pytest.raises(TypeError, match="loss"):
        InfererLoss()(torch.zeros(1))


@pytest.mark.slow
def test_short_supervised_training_on_real_slices_lowers_heldout_bpd():
    torch.manual_seed(0)
    train = demo_slices("mni152", size=64)
    test = np.stack([d["image"] for d in demo_slices("colin27", size=64, num_slices=4)])
    net = ScoreUNet(2, 1, channels=(8, 16), num_res_blocks=1, norm_num_groups=8, num_head_channels=8, grid_levels=256)
    inferer = VDMInferer(LearnedLinearSchedule())
    before = evaluate_bpd(inferer, net, test, num_time_samples=8)["bpd"]
    trainer, ema = build_vdm_trainer(
        train, net, inferer, batch_size=8, crop_size=32, lr=3e-3, warmup_steps=5, total_steps=200, max_epochs=4
    )
    trainer.run()
    assert trainer.state.iteration == 4 * (len(train) // 8)
    after = evaluate_bpd(inferer, net, test, num_time_samples=8)["bpd"]
    ema_bpd = evaluate_bpd(inferer, ema.ema_model, test, num_time_samples=8)["bpd"]
    assert after < before - 1.0, (before, after)
    assert np.isfinite(ema_bpd)
    assert png_bits_per_dim(test) > 0.5
