"""One generation for every front-end (``monai_medgen.pipelines.generate``): the geometry rule, the options, the
sampling signature ``sample(input_noise, network, ...)`` of every inferer, and the files written."""

from __future__ import annotations

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_medgen.inferers import ConditionalDiffusionInferer, SamplingOptions, VDMInferer
from monai_medgen.networks import ScoreUNet
from monai_medgen.pipelines import GenerateOptions, GenerativeModel, generate, generate_files, generation_affine
from monai_medgen.schedules import DiscreteSchedule


def world(affine, ijk):
    return affine[:3, :3] @ np.asarray(ijk, dtype=np.float64) + affine[:3, 3]


def oblique_reference(shape=(1, 100, 60, 9)):
    angle = np.deg2rad(30)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.8, 1.0, 3.0])
    affine[:3, 3] = [10.0, -20.0, 5.0]
    return MetaTensor(torch.zeros(shape), affine=torch.as_tensor(affine)), affine, rot


def test_one_slice_lies_on_the_middle_slice_and_covers_the_field_of_view():
    reference, ref_affine, rot = oblique_reference()
    out = generation_affine(reference, (64, 64))
    np.testing.assert_allclose(world(out, (31.5, 31.5, 0)), world(ref_affine, (49.5, 29.5, 4)), atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(out[:3, :3], axis=0), [80 / 64, 80 / 64, 3.0])
    np.testing.assert_allclose(out[:3, :3] / np.linalg.norm(out[:3, :3], axis=0), rot, atol=1e-12)
    # a stack of 5 is the same plane at its middle, one reference slice apart
    stack = generation_affine(reference, (64, 64), 5)
    np.testing.assert_allclose(world(stack, (10, 20, 2)), world(out, (10, 20, 0)), atol=1e-9)


def test_volumes_cover_the_reference_on_every_axis_with_isotropic_voxels():
    reference, ref_affine, _ = oblique_reference((1, 40, 60, 30))  # 32 x 60 x 90 mm
    out = generation_affine(reference, (16, 24, 16))
    spacing = np.linalg.norm(out[:3, :3], axis=0)
    np.testing.assert_allclose(spacing, [90 / 16] * 3)  # the largest extent per voxel: 90 mm over 16
    np.testing.assert_allclose(world(out, (7.5, 11.5, 7.5)), world(ref_affine, (19.5, 29.5, 14.5)), atol=1e-9)


def test_without_reference_trained_geometry_or_centred_spacing():
    plain = generation_affine(None, (64, 64), 8, spacing=2.0)
    np.testing.assert_allclose(world(plain, (31.5, 31.5, 3.5)), 0, atol=1e-12)
    trained = np.diag([1.0, 1.0, 1.0, 1.0])
    trained[:3, 3] = [-80, -112, -70]
    same = generation_affine(None, (160, 192, 160), trained_affine=trained, trained_size=(160, 192, 160))
    np.testing.assert_allclose(same, trained)
    larger = generation_affine(None, (192, 224, 192), trained_affine=trained, trained_size=(160, 192, 160))
    np.testing.assert_allclose(world(larger, (95.5, 111.5, 95.5)), world(trained, (79.5, 95.5, 79.5)), atol=1e-9)


def test_options_are_checked_with_named_errors():
    with pytest.raises(ValueError, match="num_samples"):
        GenerateOptions(num_samples=0)
    with pytest.raises(ValueError, match="guidance_scale"):
        GenerateOptions(guidance_scale=-1)
    with pytest.raises(ValueError, match="sampler"):
        SamplingOptions(sampler="euler")
    with pytest.raises(TypeError, match="num_stepz"):
        VDMInferer().sample(torch.randn(1, 1, 8, 8), ScoreUNet(2, 1, channels=(8, 8), norm_num_groups=4), num_stepz=2)


def _model(inferer, num_classes=None):
    torch.manual_seed(0)
    net = ScoreUNet(2, 1, channels=(8, 16), norm_num_groups=4, num_classes=num_classes).eval()
    return GenerativeModel(net, inferer, "tiny", image_size=20, spacing=2.0)


@pytest.mark.parametrize("kind", ["vdm", "ddpm"])
def test_generate_same_seed_same_samples_and_files(kind, tmp_path):
    inferer = VDMInferer() if kind == "vdm" else ConditionalDiffusionInferer(DiscreteSchedule.linear_betas(50))
    model = _model(inferer, num_classes=2)
    options = GenerateOptions(num_samples=3, batch_size=2, num_steps=3, sampler="ddim", seed=4, class_label=1)
    a = generate(model, options, verbose=False)
    b = generate(model, options, verbose=False)
    assert a.images.shape == (3, 1, 20, 20) and torch.equal(a.images, b.images)  # 20 is sampled padded to 24
    assert 0 <= float(a.images.min()) and float(a.images.max()) <= 1
    with pytest.raises(ValueError, match="class_label 5"):
        generate(model, GenerateOptions(class_label=5), verbose=False)
    reference, ref_affine, _ = oblique_reference()
    ref_file = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((100, 60, 9), np.float32), ref_affine), str(ref_file))
    written = generate_files(model, tmp_path / "out", dataclasses.replace(options, num_frames=2), str(ref_file))
    img = nib.load(written["nifti"][0])
    assert img.shape == (20, 20) and img.header["descrip"].item().decode().startswith("SYNTHETIC")
    np.testing.assert_allclose(img.affine, generation_affine(reference, (20, 20)), atol=1e-5)
    np.testing.assert_allclose(np.asarray(img.dataobj), a.images[0, 0].numpy(), atol=1e-6)
    sidecar = json.loads((tmp_path / "out" / "sample_000_synthetic.nii.gz.json").read_text())
    assert sidecar["model"] == "tiny" and sidecar["seed"] == 4 and len(sidecar["input_checksum"]) == 64
    assert written["gif"] is not None and (tmp_path / "out" / "samples.png").is_file()


def test_cascade_of_the_2d_vdm_bundle_gives_whole_fine_slices_consistent_with_its_layout_sample():
    """vdm_brain_mri_2d generates with its cascade: whole 32 x 32 slices from the layout model, then the shipped 4x
    super-resolution bundle; area-downsampled, each output is the layout sample itself."""
    from pathlib import Path

    from monai_medgen.pipelines import Upsampler, load_bundle, model_of, sample_images

    bundles = Path(__file__).resolve().parents[1] / "bundles"
    model = model_of(load_bundle(bundles / "vdm_brain_mri_2d", "cpu", kind="generative"))
    assert model.upsampler is not None and model.size == (32, 32) and model.output_size == (128, 128)
    options = GenerateOptions(num_samples=2, num_steps=8, seed=3).with_defaults()
    out = generate(model, options, verbose=False)
    assert out.images.shape == (2, 1, 128, 128) and "super-resolution" in out.provenance.extra["cascade"]
    np.testing.assert_allclose(np.linalg.norm(out.affine[:3, :3], axis=0)[:2], [model.spacing] * 2)
    coarse, _ = sample_images(model.network, model.inferer, (32, 32), options, "cpu", verbose=False)
    coarse = ((coarse + 1) / 2).clamp(0, 1)
    down = torch.nn.functional.avg_pool2d(out.images, 4)
    assert float((down - coarse).pow(2).mean().sqrt() / coarse.pow(2).mean().sqrt()) < 1e-3
    fine_texture = out.images - torch.nn.functional.interpolate(down, scale_factor=4, mode="bicubic")
    assert float(fine_texture.abs().mean()) > 1e-3  # the upsampler adds detail, not just interpolation
    with pytest.raises(ValueError, match=r"image_size \[90, 90\] must be a multiple of 4"):
        generate(model, GenerateOptions(num_samples=1, num_steps=2, image_size=90), verbose=False)
    with pytest.raises(ValueError, match="upsampler_bundle"):
        Upsampler.from_bundle(bundles / "vdm_brain_mri_2d", 4)  # a VDM, not a super-resolution bundle
    with pytest.raises(ValueError, match="factor must be an integer"):
        Upsampler(model.upsampler.network, model.upsampler.inferer, 2.5)
