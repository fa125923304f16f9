"""The MONAI Label app in a real ``monailabel start_server`` on 127.0.0.1, called over HTTP by the 3D Slicer
module's client (``scripts/slicer/MedGen/MedGenLib/medgen_client.py``), on real data: a studies folder with Colin27 (held
out) slices and a 1 mm box, and uploads degraded with the package's own degradations.

The server runs in MONAI Label's own virtual environment: ``$MEDGEN_MONAILABEL_PYTHON`` (``.ci/run`` builds it and
sets it), else ``<repo>/.venv-monailabel/bin/python``; with neither the tests fail with the command that builds it
(``bash scripts/build_monailabel_venv.sh``).  One server serves the whole module and is stopped at the end, also
when a test fails.  Options checks and geometry helpers are tested without the server at the end.
"""

import json
import os
import re
import sys
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_medgen import io
from monai_medgen.apps.monailabel import served
from monai_medgen.apps.monailabel.local import MONAILabelServer, write_demo_inputs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts" / "slicer" / "MedGen"))
from MedGenLib import medgen_client  # noqa: E402  (the Slicer module's helper package)

CLASS_BUNDLE = REPO / "bundles" / "cddpm_class_conditional_2d"
FAST = {"sampler": "dpm++", "steps": 5, "seed": 0}
DENOISE_FAST = {**FAST, "adapt_steps": 0}  # the denoising model's test-time adaptation off (its default: 40 steps)


def psnr(a, b) -> float:
    """PSNR in dB of intensities in [0, 1]."""
    return float(10 * np.log10(1.0 / np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("monailabel")
    return write_demo_inputs(root / "studies", root / "inputs")


@pytest.fixture(scope="module")
def server(data):
    srv = MONAILabelServer(Path(data["slices"]).parent, conf={"bundles": str(REPO / "bundles")})
    srv.start()  # raises (with the server's log) when it does not come up; FileNotFoundError without its venv
    try:
        yield srv
    finally:
        srv.stop()
    assert srv.process.poll() is not None, "the server process is still running after stop()"


@pytest.fixture(scope="module")
def client(server):
    return medgen_client.MedGenClient(server.url, timeout=300)


def load(path):
    img = nib.load(str(path))
    return img, np.asarray(img.get_fdata(dtype=np.float32))


def check_output(path, shape, affine):
    """float32 NIfTI of the expected grid, marked synthetic in its header."""
    img, array = load(path)
    assert img.get_data_dtype() == np.float32
    assert array.shape == tuple(shape)
    np.testing.assert_allclose(img.affine, affine, atol=1e-4)
    assert img.header["descrip"].item().decode().startswith("SYNTHETIC")
    assert io.is_synthetic(path)
    assert np.isfinite(array).all()
    return array


def world(affine, voxel):
    return (np.asarray(affine) @ np.append(np.asarray(voxel, np.float64), 1.0))[:3]


# ---------------------------------------------------------------------------------------------
# the server
# ---------------------------------------------------------------------------------------------
def test_info_lists_the_bundles_and_their_options(client):
    info = client.info()
    models = medgen_client.parse_info(info)
    tasks = {
        "cddpm_super_resolution_2d": "super_resolution",
        "cddpm_super_resolution_3d": "super_resolution",
        "cddpm_denoising_2d": "denoise",
        "cddpm_inpainting_2d": "inpaint",
        "vdm_brain_mri_2d": "generate",
    }
    if (CLASS_BUNDLE / "models" / "model.pt").is_file():
        tasks["cddpm_class_conditional_2d"] = "generate"
    for name, task in tasks.items():
        assert models[name].task == task, name
        assert models[name].needs_mask == (name == "cddpm_inpainting_2d")
    assert models["cddpm_super_resolution_3d"].spatial_dims == 3 and models["cddpm_denoising_2d"].spatial_dims == 2
    options = {o.name: o for o in models["cddpm_super_resolution_2d"].options}
    assert options["sampler"].kind == "choice" and options["sampler"].choices[0] == "dpm++"
    assert set(options["sampler"].choices) == {"ancestral", "ddim", "dpm++"}
    assert (options["steps"].kind, options["steps"].minimum, options["steps"].maximum) == ("int", 1, 2000)
    assert options["num_samples"].maximum == 16 and options["factor"].default == 4.0
    assert "num_samples" not in {o.name for o in models["vdm_brain_mri_2d"].options}
    if "cddpm_class_conditional_2d" in tasks:
        cc = {o.name: o for o in models["cddpm_class_conditional_2d"].options}
        assert cc["class"].choices == ["axial", "coronal", "sagittal"]
        assert (cc["guidance"].minimum, cc["guidance"].maximum) == (0.0, 20.0)
    assert "generate" in info["strategies"]
    assert info["medgen"]["bundles"] == str(REPO / "bundles")  # --conf bundles DIR
    assert info["medgen"]["generate_model"] in ("cddpm_class_conditional_2d", "vdm_brain_mri_2d")


def test_super_resolution_2d_beats_interpolation(client, data, tmp_path):
    from monai_medgen.restoration import upsample_in_plane

    result = client.infer("cddpm_super_resolution_2d", data["slices_lowres"], FAST)
    path, std_path = result.save(str(tmp_path), "sr")
    truth_img, truth = load(data["slices"])
    out = check_output(path, truth.shape, truth_img.affine)  # the fine grid: the truth's affine
    assert std_path is None and result.task == "super_resolution"
    prov = result.medgen["provenance"]
    assert (prov["model"], prov["sampler"], prov["steps"], prov["seed"]) == ("cddpm_super_resolution_2d", "dpm++", 5, 0)
    assert prov["synthetic"] is True and prov["extra"]["factor"] == 4.0
    low = io.read_image(data["slices_lowres"])
    nearest = np.repeat(np.repeat(np.asarray(low[0]), 4, 0), 4, 1)
    bicubic = np.asarray(upsample_in_plane(low, 4.0)[0])
    assert psnr(out, truth) > psnr(bicubic, truth) > psnr(nearest, truth)


def test_denoising_with_uncertainty(client, data, tmp_path):
    # with 1 step of test-time adaptation (the option only the denoising model offers), recorded in the provenance
    result = client.infer("cddpm_denoising_2d", data["slices_noisy"], {**FAST, "num_samples": 2, "adapt_steps": 1})
    path, std_path = result.save(str(tmp_path), "denoise")
    noisy_img, noisy = load(data["slices_noisy"])
    out = check_output(path, noisy.shape, noisy_img.affine)
    _, truth = load(data["slices"])
    assert psnr(out, truth) > psnr(noisy, truth) + 5
    std = check_output(std_path, noisy.shape, noisy_img.affine)  # second volume: the standard deviation map
    assert std.min() >= 0 and 0 < std.mean() < 0.2
    assert result.medgen["uncertainty"]["mean"] == pytest.approx(float(std.mean()), rel=1e-3)
    assert result.medgen["provenance"]["extra"]["num_samples"] == 2
    assert result.medgen["provenance"]["extra"]["adapt_steps"] == 1


def test_inpainting_with_uploaded_mask(client, data, tmp_path):
    result = client.infer("cddpm_inpainting_2d", data["slices_masked"], FAST, mask_path=data["slices_mask"])
    path, _ = result.save(str(tmp_path), "inpaint")
    masked_img, masked = load(data["slices_masked"])
    out = check_output(path, masked.shape, masked_img.affine)
    _, mask = load(data["slices_mask"])
    _, truth = load(data["slices"])
    hole = mask > 0
    np.testing.assert_allclose(out[~hole], masked[~hole], atol=1e-5)  # the known voxels are kept
    assert np.abs(out[hole] - masked[hole]).mean() > 0.2  # the hole is filled (it was 0)
    assert psnr(out[hole], truth[hole]) > psnr(masked[hole], truth[hole]) + 5


def test_inpainting_with_the_datastore_label(client, data, tmp_path):
    client.save_label("colin27_slices", data["slices_mask"], tag="final")
    result = client.infer("cddpm_inpainting_2d", image_id="colin27_slices", params=FAST)  # no upload at all
    path, _ = result.save(str(tmp_path), "inpaint_ds")
    image, truth = load(data["slices"])
    out = check_output(path, truth.shape, image.affine)
    _, mask = load(data["slices_mask"])
    hole = mask > 0
    np.testing.assert_allclose(out[~hole], truth[~hole], atol=1e-5)
    assert not np.allclose(out[hole], truth[hole], atol=1e-3)


def test_super_resolution_3d_patch_path(client, data, tmp_path):
    result = client.infer("cddpm_super_resolution_3d", data["volume_thick"], {**FAST, "factor": "1,1,4"})
    path, _ = result.save(str(tmp_path), "sr3d")
    truth_img, truth = load(data["volume"])
    out = check_output(path, truth.shape, truth_img.affine)  # 4 mm slices back onto the 1 mm grid
    assert result.medgen["provenance"]["extra"]["factor"] == [1.0, 1.0, 4.0]
    # better than trilinear interpolation of the same slices (this test's output on 2026-12-06: 27.39 against
    # 25.92 dB; `monai-medgen restore` with the same settings gives the same)
    _, thick = load(data["volume_thick"])
    trilinear = torch.nn.functional.interpolate(
        torch.as_tensor(thick, dtype=torch.float64)[None, None], size=truth.shape, mode="trilinear"
    )[0, 0].numpy()
    assert psnr(out, truth) > psnr(trilinear, truth) + 0.5


def _reference_geometry_checks(out_affine, shape, reference_img):
    """The generated stack lies in the reference's field of view: same orientation, centred on it, its larger
    in-plane side covered with square pixels."""
    ref = reference_img.affine
    ref_shape = np.asarray(reference_img.shape[:3])
    centre = world(out_affine, (np.asarray(shape) - 1) / 2)
    np.testing.assert_allclose(centre, world(ref, (ref_shape - 1) / 2), atol=1e-3)
    for k in range(3):
        a, b = out_affine[:3, k], ref[:3, k]
        assert abs(abs(np.dot(a, b)) - np.linalg.norm(a) * np.linalg.norm(b)) < 1e-6  # parallel axes
    fov = max(ref_shape[0] * np.linalg.norm(ref[:3, 0]), ref_shape[1] * np.linalg.norm(ref[:3, 1]))
    np.testing.assert_allclose(np.linalg.norm(out_affine[:3, :2], axis=0), fov / shape[0], rtol=1e-5)


def test_generate_class_conditional(client, data, tmp_path):
    if not (CLASS_BUNDLE / "models" / "model.pt").is_file():
        pytest.skip("bundles/cddpm_class_conditional_2d has no trained weights yet (models/model.pt)")
    from monai_medgen.data import demo_slices

    params = {"class": "coronal", "guidance": 2.0, "num_slices": 4, "sampler": "dpm++", "steps": 8, "seed": 3}
    result = client.infer("cddpm_class_conditional_2d", image_id="colin27_slices", params=params)
    path, _ = result.save(str(tmp_path), "generated")
    img, out = load(path)
    check_output(path, (64, 64, 4), img.affine)
    ref_img, _ = load(data["slices"])
    _reference_geometry_checks(img.affine, (64, 64, 4), ref_img)
    extra = result.medgen["provenance"]["extra"]
    assert (extra["class_label"], extra["class_name"], extra["guidance_scale"]) == (1, "coronal", 2.0)
    assert extra["shape"] == [64, 64, 4] and result.task == "generate"
    assert 0 <= out.min() and out.max() <= 1 and out.std() > 0.05
    # the class is the slice plane (demo classes): label each generated slice by its nearest held-out Colin27 slice
    held = demo_slices("colin27", size=64, planes=("axial", "coronal", "sagittal"))
    refs = torch.stack([torch.as_tensor(d["image"]) for d in held])
    gen = torch.as_tensor(out).permute(2, 0, 1)[:, None]
    small = [torch.nn.functional.interpolate(x.float(), size=(32, 32), mode="area").flatten(1) for x in (gen, refs)]
    planes = [held[int(i)]["plane"] for i in torch.cdist(*small).argmin(1)]
    assert planes.count("coronal") >= 3, planes


def test_generate_vdm(client, data, tmp_path):
    result = client.infer("vdm_brain_mri_2d", image_id="colin27_slices", params={**FAST, "steps": 3, "num_slices": 2})
    path, _ = result.save(str(tmp_path), "vdm")
    img, out = load(path)
    check_output(path, (128, 128, 2), img.affine)
    _reference_geometry_checks(img.affine, (128, 128, 2), load(data["slices"])[0])
    assert (
        result.medgen["provenance"]["task"] == "generate" and "class_label" not in result.medgen["provenance"]["extra"]
    )
    assert "super-resolution" in result.medgen["provenance"]["extra"]["cascade"]  # the bundle's cascaded sampler


def test_next_sample_generates_a_new_datastore_volume(client, tmp_path):
    entry = client.next_sample("generate", {"steps": 3, "num_slices": 2, "seed": 11})
    assert entry["id"].startswith("synthetic_") and entry["id"].endswith("_11") and entry["synthetic"] is True
    path = client.download_image(entry["id"], str(tmp_path / "next.nii.gz"))
    img, out = load(path)
    assert io.is_synthetic(path) and out.shape[2] == 2 and img.get_data_dtype() == np.float32
    again = client.next_sample("generate", {"steps": 3, "num_slices": 2})  # no seed: a new volume every time
    assert again["id"] != entry["id"]
    with urllib.request.urlopen(f"{client.server}/datastore/?output=all") as answer:
        listed = json.loads(answer.read())["objects"]
    assert entry["id"] in listed and again["id"] in listed


def _bad(client, status, fragment, *args, **kwargs):
    with pytest.raises(medgen_client.ServerError) as e:
        client.infer(*args, **kwargs)
    assert e.value.status == status, str(e.value)
    assert fragment in str(e.value), str(e.value)


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(client, data, tmp_path):
    slices_img, slices = load(data["slices"])
    two_d = tmp_path / "one_slice_2d.nii.gz"
    nib.save(nib.Nifti1Image(slices[..., 4], slices_img.affine), str(two_d))
    four_d = tmp_path / "two_channels.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([slices, slices], -1), slices_img.affine), str(four_d))
    garbage = tmp_path / "broken.nii.gz"
    garbage.write_bytes(b"\x1f\x8b not really a gzip NIfTI")
    generative = (
        "cddpm_class_conditional_2d" if (CLASS_BUNDLE / "models" / "model.pt").is_file() else "vdm_brain_mri_2d"
    )

    _bad(client, 400, "must be a volume", "cddpm_super_resolution_3d", str(two_d), FAST)  # 2D image, 3D model
    _bad(client, 400, "one channel", "cddpm_denoising_2d", str(four_d), FAST)
    _bad(client, 400, "needs a mask", "cddpm_inpainting_2d", data["slices_masked"], FAST)
    _bad(
        client,
        400,
        "steps must be an integer in [1, 2000], got 5000",
        "cddpm_denoising_2d",
        data["slices_noisy"],
        {"steps": 5000},
    )
    _bad(client, 400, "steps must be an integer", "cddpm_denoising_2d", data["slices_noisy"], {"steps": 0})
    _bad(
        client,
        400,
        "adapt_steps must be an integer in [0, 100]",
        "cddpm_denoising_2d",
        data["slices_noisy"],
        {"adapt_steps": 500},
    )
    _bad(client, 400, "guidance", generative, image_id="colin27_slices", params={"guidance": 50, "steps": 2})
    _bad(client, 400, "sampler must be one of", "cddpm_denoising_2d", data["slices_noisy"], {"sampler": "euler"})
    _bad(client, 400, "not a gzipped NIfTI", "cddpm_denoising_2d", str(garbage), FAST)  # refused on its first bytes
    _bad(client, 404, "is not served", "no_such_model", data["slices_noisy"], FAST)
    _bad(client, 404, "no image 'missing'", "cddpm_denoising_2d", image_id="missing", params=FAST)

    result = client.infer("cddpm_denoising_2d", data["slices_noisy"], {**DENOISE_FAST, "steps": 2})  # still serving
    path, _ = result.save(str(tmp_path), "after")
    check_output(path, slices.shape, slices_img.affine)


# ---------------------------------------------------------------------------------------------
# without the server: options and geometry
# ---------------------------------------------------------------------------------------------
def _model(**kw):
    base = dict(
        name="m",
        root=Path("."),
        version="0",
        task="sr",
        spatial_dims=2,
        network=None,
        inferer=None,
        max_steps=2000,
        factor=4.0,
    )
    return served.ServedModel(**{**base, **kw})


def test_options_are_checked_with_the_option_named():
    sr = _model()
    assert sr.parse_options({}) == {"sampler": "dpm++", "steps": 20, "seed": 0, "num_samples": 1, "factor": 4.0}
    # what MONAI Label sends for an option left out: the published list; "20" as text from a form field
    assert sr.parse_options({**sr.config(), "steps": "7"})["steps"] == 7
    for options, text in [
        ({"steps": 0}, "steps must be an integer in [1, 2000]"),
        ({"steps": 2001}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"steps": True}, "steps"),
        ({"steps": "many"}, "steps"),
        ({"seed": -1}, "seed"),
        ({"num_samples": 17}, "num_samples must be an integer in [1, 16]"),
        ({"sampler": "heun"}, "sampler"),
        ({"factor": 0.5}, "factor must be a number in [1, 8]"),
        ({"factor": "1,1,4"}, "one number (in-plane)"),
    ]:
        with pytest.raises(served.RequestError, match=re.escape(text)):
            sr.parse_options(options)
    assert _model(spatial_dims=3, factor=[1.0, 1.0, 4.0]).parse_options({"factor": "1, 1, 4"})["factor"] == [
        1.0,
        1.0,
        4.0,
    ]
    assert _model(spatial_dims=3).parse_options({"factor": 2})["factor"] == [2.0, 2.0, 2.0]
    gen = _model(task="generate", class_names=["axial", "coronal", "sagittal"], guidance_scale=2.0, max_steps=1000)
    opts = gen.parse_options({"class": "Sagittal", "num_slices": 4})
    assert (opts["class_label"], opts["guidance"], opts["num_slices"]) == (2, 2.0, 4)
    assert gen.parse_options({"class": 1})["class_label"] == 1
    for options, text in [
        ({"class": "oblique"}, "class must be one of"),
        ({"class": 3}, "class"),
        ({"guidance": 21}, "guidance must be a number in [0, 20]"),
        ({"guidance": "nan"}, "guidance"),
        ({"num_slices": 65}, "num_slices"),
        ({"steps": 1001}, "steps"),
    ]:
        with pytest.raises(served.RequestError, match=re.escape(text)):
            gen.parse_options(options)
    with pytest.raises(served.RequestError, match="unconditional"):
        _model(task="generate").parse_options({"guidance": 1.0})


def test_output_size_is_bounded_naming_the_cause():
    sr = _model()
    image = MetaTensor(torch.zeros(1, 128, 128, 4))
    assert sr.check_output_size(image, 4.0) == (512, 512, 4)
    with pytest.raises(served.RequestError, match="factor 8.0 would make a 1024 x 1024 x 4 grid"):
        sr.check_output_size(image, 8.0)
    with pytest.raises(served.RequestError, match="too large"):
        _model(task="denoise").check_output_size(MetaTensor(torch.zeros(1, 600, 600, 2)))
    assert _model(spatial_dims=3).check_output_size(MetaTensor(torch.zeros(1, 64, 64, 16)), [1.0, 1.0, 4.0]) == (
        64,
        64,
        64,
    )
    with pytest.raises(served.RequestError, match=re.escape("512^3")):
        _model(spatial_dims=3).check_output_size(MetaTensor(torch.zeros(1, 600, 600, 150)), [1.0, 1.0, 4.0])


def test_generation_affine_follows_an_oblique_reference():
    angle = np.deg2rad(30)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    ref_affine = np.eye(4)
    ref_affine[:3, :3] = rot @ np.diag([0.8, 1.0, 3.0])
    ref_affine[:3, 3] = [10.0, -20.0, 5.0]
    reference = MetaTensor(torch.zeros(1, 100, 60, 9), affine=torch.as_tensor(ref_affine))
    out = served.generation_affine(reference, (64, 64), 5)
    np.testing.assert_allclose(world(out, (31.5, 31.5, 2)), world(ref_affine, (49.5, 29.5, 4)), atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(out[:3, :3], axis=0), [80 / 64, 80 / 64, 3.0])  # 100 x 0.8 mm side
    np.testing.assert_allclose(out[:3, :3] / np.linalg.norm(out[:3, :3], axis=0), rot, atol=1e-12)
    cube = served.generation_affine(reference, (32, 32, 32))
    np.testing.assert_allclose(np.linalg.norm(cube[:3, :3], axis=0), [80 / 32] * 3)  # 100 x 0.8 > 9 x 3 mm
    plain = served.generation_affine(None, (64, 64), 8, spacing=2.0)
    np.testing.assert_allclose(world(plain, (31.5, 31.5, 3.5)), 0, atol=1e-12)


def test_uploads_are_read_with_clear_errors(tmp_path):
    with pytest.raises(served.RequestError, match="no such image") as e:
        served.read_upload(tmp_path / "missing.nii.gz")
    assert e.value.status_code == 404
    broken = tmp_path / "broken.nrrd"
    broken.write_text("NRRD0004\ntype: nonsense\n")
    with pytest.raises(served.RequestError, match="could not read the image"):
        served.read_upload(broken)
    nan = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(np.full((4, 4, 2), np.nan, np.float32), np.eye(4)), str(nan))
    with pytest.raises(served.RequestError, match="NaN"):
        served.read_upload(nan)


def test_bundles_are_found_and_named_models_checked(tmp_path):
    found = [p.name for p in served.find_bundles()]
    assert {"cddpm_denoising_2d", "cddpm_super_resolution_3d", "vdm_brain_mri_2d"} <= set(found)
    assert [p.name for p in served.find_bundles(names="vdm_brain_mri_2d, cddpm_denoising_2d")] == [
        "vdm_brain_mri_2d",
        "cddpm_denoising_2d",
    ]
    with pytest.raises(ValueError, match="not bundles"):
        served.find_bundles(names="nope")
    with pytest.raises(ValueError, match="does not exist"):
        served.find_bundles(tmp_path / "none")
    assert os.path.isdir(served.BUNDLES_DIR)
