"""The out-of-distribution score (:mod:`monai_medgen.ood`, ``monai-medgen score``) on real images: degenerate inputs
refused with a one-line message, the score is the model's bits/dim minus the codec's on the same 8-bit slice, and a
held-out Colin27 slice scores as more typical than a noise image or a photograph under the trained 2D VDM."""

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_medgen import cli, ood
from monai_medgen.metrics import png_bits_per_dim
from monai_medgen.pipelines import load_bundle

COLIN = "/usr/share/mricron/templates/ch2bet.nii.gz"
VDM = Path(__file__).resolve().parents[1] / "bundles" / "vdm_brain_mri_2d"
needs_colin = pytest.mark.skipif(
    not os.path.isfile(COLIN), reason="Colin27 (mricron-data: ch2bet.nii.gz) not installed"
)
needs_vdm = pytest.mark.skipif(
    not (VDM / "models" / "model.pt").is_file(), reason="no trained vdm_brain_mri_2d weights"
)


@pytest.fixture(scope="module")
def colin_slice():
    """An axial Colin27 slice through the ventricles (scanner units, 2D)."""
    return np.asarray(nib.load(COLIN).dataobj, dtype=np.float32)[:, :, 95]


@pytest.fixture(scope="module")
def vdm():
    bundle = load_bundle(VDM, "cpu", kind="vdm")
    return bundle.network, bundle.inferer


def _save(tmp_path, name, array) -> str:
    path = tmp_path / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=np.float32), np.eye(4)), str(path))
    return str(path)


# ---------------------------------------------------------------------------------------------
# degenerate inputs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "image, fragment",
    [
        (np.full((64, 64), 7.0), "is constant (7 everywhere)"),
        (np.zeros((64, 64, 8)), "is constant (0 everywhere)"),
        (np.random.default_rng(0).random((4, 4)), "is too small to score: 4x4"),
        (np.full((64, 64), 5.0) + 1e-4 * np.random.default_rng(0).random((64, 64)), "is near-constant"),
        (-np.random.default_rng(0).random((32, 32)), "has no positive voxels"),
        (np.where(np.eye(32) > 0, np.nan, 1.0), "NaN or infinite"),
    ],
)
def test_degenerate_inputs_refused(image, fragment):
    with pytest.raises(ValueError) as e:
        ood.prepare_slices(image, name="scan.nii.gz")
    assert str(e.value).startswith("scan.nii.gz ") and fragment in str(e.value)


@needs_vdm
@pytest.mark.parametrize("case", ["constant", "tiny"])
def test_cli_refuses_degenerate_input_with_one_line(case, tmp_path, capsys):
    image = np.full((64, 64), 100.0) if case == "constant" else np.random.default_rng(0).random((4, 4)) + 1
    path = _save(tmp_path, case, image)
    rc = cli.main(
        ["score", "--bundle", str(VDM), "--input", path, "--device", "cpu", "--json", str(tmp_path / "r.json")]
    )
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1, err
    expected = "is constant (100 everywhere)" if case == "constant" else "is too small to score: 4x4"
    assert lines[0].startswith(f"monai-medgen score: error: --input {path} ") and expected in lines[0]
    assert not (tmp_path / "r.json").exists()


# ---------------------------------------------------------------------------------------------
# the score on real images
# ---------------------------------------------------------------------------------------------
@needs_colin
@needs_vdm
def test_score_is_model_minus_codec_bits(colin_slice, vdm):
    network, inferer = vdm
    slices = ood.prepare_slices(colin_slice, 128, name="colin")
    assert slices.shape == (1, 1, 128, 128) and 0 <= slices.min() and slices.max() <= 1
    out = ood.score_slices(slices, network, inferer, num_time_samples=16, seed=3)
    # the codec compresses exactly the 8-bit image the model reads
    levels = ood.eight_bit(slices)
    assert levels.dtype == np.uint8 and np.abs(levels - 255.0 * slices[:, 0]).max() <= 0.5 + 1e-4
    np.testing.assert_allclose(out["codec_bpd"], [png_bits_per_dim(levels / 255.0)])
    np.testing.assert_allclose(out["bpd"], ood.model_bits_per_dim(slices, network, inferer, 16, seed=3))
    np.testing.assert_allclose(out["score"], out["bpd"] - out["codec_bpd"])
    # a held-out brain slice: the model codes it in fewer bits than PNG (a negative score)
    assert 1.0 < out["bpd"][0] < out["codec_bpd"][0] < 5.0


@needs_colin
@needs_vdm
def test_cli_prints_and_writes_raw_codec_and_corrected(colin_slice, tmp_path, capsys):
    path = _save(tmp_path, "colin", colin_slice)
    report = tmp_path / "r.json"
    rc = cli.main(
        ["score", "--bundle", str(VDM), "--input", path, "--device", "cpu", "--json", str(report), "--score", "texture"]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "| input | bits/dim | PNG bits/dim | texture score | score | flag |" in out
    saved = json.loads(report.read_text())
    row = saved["results"][0]
    assert saved["codec"] == "png" and saved["threshold"] == ood.DEFAULT_THRESHOLDS["png"]
    assert saved["threshold_source"] == "default" and saved["score_kind"] == "texture"
    assert row["score"] == pytest.approx(row["bpd"] - row["codec_bpd"]) == row["texture_score"]
    assert row["out_of_distribution"] is False  # a held-out brain slice is not flagged
    cells = [c.strip() for c in next(line for line in out.splitlines() if line.startswith(f"| {path}")).split("|")]
    assert [float(c) for c in cells[2:6]] == pytest.approx(
        [row["bpd"], row["codec_bpd"], row["texture_score"], row["score"]], abs=1e-3
    )


@needs_colin
@needs_vdm
def test_brain_more_typical_than_noise_and_photograph(colin_slice, vdm):
    import skimage.data

    network, inferer = vdm
    rng = np.random.default_rng(0)
    images = {
        "colin27": colin_slice,
        "constant plus noise": 0.5 + 0.1 * rng.standard_normal((128, 128)),
        "camera": skimage.data.camera(),
    }
    score = {
        k: ood.score_slices(ood.prepare_slices(v, name=k), network, inferer, num_time_samples=16)["score"][0]
        for k, v in images.items()
    }
    assert score["colin27"] < ood.DEFAULT_THRESHOLDS["png"] < min(score["constant plus noise"], score["camera"]), score


@needs_colin
def test_codecs_on_a_brain_slice(colin_slice):
    slices = ood.prepare_slices(colin_slice, 128, name="colin")
    png = ood.codec_bits_per_dim(slices, "png")
    assert png.shape == (1,) and 2.0 < png[0] < 5.0
    with pytest.raises(ValueError, match="codec must be one of"):
        ood.codec_bits_per_dim(slices, "gif")
    pytest.importorskip("imagecodecs")
    assert ood.codec_bits_per_dim(slices, "jpegxl")[0] < png[0]  # the stronger codec


# ---------------------------------------------------------------------------------------------
# the layout score (the bundle's whole-slice layout model)
# ---------------------------------------------------------------------------------------------
needs_layout = pytest.mark.skipif(
    not (VDM / "models" / "layout_model.pt").is_file(), reason="no trained layout model in vdm_brain_mri_2d"
)


@pytest.fixture(scope="module")
def layout():
    return ood.load_layout_model(load_bundle(VDM, "cpu", kind="vdm"))


@needs_colin
@needs_layout
def test_layout_score_flags_turned_brains_and_photographs(colin_slice, layout):
    """The held-out brain slice the right way round scores below the calibrated threshold; the same slice turned a
    quarter or front to back (texture unchanged: the texture score cannot tell) and a photograph score above it."""
    import skimage.data

    assert layout is not None and layout.size == 32
    brain = ood.prepare_slices(colin_slice, 128, name="colin")
    images = {
        "colin27": brain,
        "quarter turn": np.rot90(brain, 1, (-2, -1)).copy(),
        "front to back": np.flip(brain, -1).copy(),
        "camera": ood.prepare_slices(skimage.data.camera(), 128, name="camera"),
    }
    scores = {k: ood.layout_scores(v, layout, num_time_samples=16) for k, v in images.items()}
    for out in scores.values():
        assert set(out) == {"layout_bpd", "layout_codec_bpd", "layout_turned_bpd", "layout_score"}
        best_alternative = np.minimum(out["layout_codec_bpd"], out["layout_turned_bpd"])
        np.testing.assert_allclose(out["layout_score"], out["layout_bpd"] - best_alternative)
    threshold = ood.LAYOUT_THRESHOLDS["png"]
    assert scores["colin27"]["layout_score"][0] < 0 and scores["colin27"]["layout_score"][0] < threshold
    for name in ("quarter turn", "front to back", "camera"):
        assert scores[name]["layout_score"][0] > threshold, (name, scores[name], threshold)
    # a turned brain is best explained by the model turned back, a photograph by the codec
    assert scores["quarter turn"]["layout_turned_bpd"][0] < scores["quarter turn"]["layout_codec_bpd"][0]
    assert scores["camera"]["layout_codec_bpd"][0] < scores["camera"]["layout_turned_bpd"][0]


def test_turned_bits_per_dim_shape_and_square_check():
    from monai_medgen.inferers import VDMInferer
    from monai_medgen.networks import ScoreUNet
    from monai_medgen.schedules import LearnedLinearSchedule

    net = ScoreUNet(spatial_dims=2, in_channels=1, channels=[8, 16], num_res_blocks=1, norm_num_groups=4)
    inferer = VDMInferer(schedule=LearnedLinearSchedule())
    x = np.random.default_rng(0).random((3, 1, 16, 16)).astype(np.float32)
    bits = ood.turned_bits_per_dim(x, net, inferer, num_time_samples=2, seed=1, batch_size=2)
    assert bits.shape == (3, 1 + len(ood.TURNS)) and np.isfinite(bits).all()
    np.testing.assert_allclose(bits, ood.turned_bits_per_dim(x, net, inferer, num_time_samples=2, seed=1, batch_size=2))
    with pytest.raises(ValueError, match="square"):
        ood.turned_bits_per_dim(x[..., :8], net, inferer)


@needs_colin
@needs_layout
def test_cli_layout_score_and_bundle_without_layout(colin_slice, tmp_path, capsys):
    import shutil

    path = _save(tmp_path, "colin", colin_slice)
    report = tmp_path / "r.json"
    rc = cli.main(["score", "--bundle", str(VDM), "--input", path, "--device", "cpu", "--json", str(report)])
    out = capsys.readouterr().out
    assert rc == 0 and "| layout bits/dim | layout PNG bits/dim | layout turned bits/dim | score | flag |" in out
    saved = json.loads(report.read_text())
    row = saved["results"][0]
    assert saved["score_kind"] == "layout" and saved["threshold"] == ood.LAYOUT_THRESHOLDS["png"]
    assert row["num_slices"] == 1  # a 2D input: the row is its one slice
    assert row["score"] == pytest.approx(row["layout_bpd"] - min(row["layout_codec_bpd"], row["layout_turned_bpd"]))
    assert row["out_of_distribution"] is False
    # a copy of the bundle without the layout weights: texture score by default, --score layout refused
    bare = tmp_path / "bare"
    shutil.copytree(VDM, bare, ignore=shutil.ignore_patterns("layout_model*", "runs", "outputs"))
    assert cli.main(["score", "--bundle", str(bare), "--input", path, "--device", "cpu"]) == 0
    assert "| input | bits/dim | PNG bits/dim | texture score | score | flag |" in capsys.readouterr().out
    assert cli.main(["score", "--bundle", str(bare), "--input", path, "--device", "cpu", "--score", "layout"]) == 2
    err = capsys.readouterr().err
    assert "--score layout" in err and "ships no layout model" in err
