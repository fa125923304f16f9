"""The 3D Slicer module without Slicer and without a server: its plain client
(``scripts/slicer/MedGen/MedGenLib/medgen_client.py``: ``/info/`` parsing on an entry recorded from the real app,
option checks, the multipart request and answer formats laid out byte for byte as MONAI Label 0.8.5 sends them,
error messages and names), its background call and busy text (``MedGenLib/background.py``), and its layout as a
Slicer scripted-module extension (CMake lists naming files that exist, one ``.py`` at the module's top, the ``.ui``
holding every widget ``MedGen.py`` uses, the icon, the ``Testing/`` unittest module run here too).

``tests/test_monailabel.py`` drives the same client against a real ``monailabel start_server``.
"""

import ast
import base64
import io as io_module
import json
import re
import sys
import threading
import unittest
import urllib.parse
import xml.etree.ElementTree as ET
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_medgen import io
from monai_medgen.apps.monailabel.local import free_port

SLICER = Path(__file__).resolve().parents[1] / "scripts" / "slicer"
MODULE = SLICER / "MedGen"
sys.path.insert(0, str(MODULE))
from MedGenLib import background, medgen_client  # noqa: E402  (the Slicer module's helper package)

# recorded from GET /info/ of the app (two models, trimmed), plus a stock MONAI Label model the module ignores
INFO = {
    "name": "monai_medgen",
    "models": {
        "cddpm_super_resolution_2d": {
            "type": "others",
            "labels": [],
            "dimension": 2,
            "description": "monai_medgen 4x super-resolution of 2D T1-weighted brain MRI slices (cddpm_super_resolution_2d)",
            "config": {
                "sampler": ["dpm++", "ancestral", "ddim"],
                "steps": 20,
                "seed": 0,
                "num_samples": 1,
                "factor": 4.0,
            },
            "medgen": {
                "bundle": "cddpm_super_resolution_2d",
                "task": "super_resolution",
                "spatial_dims": 2,
                "needs_mask": False,
                "classes": [],
                "limits": {"steps": [1, 2000], "seed": [0, 2147483647], "num_samples": [1, 16], "factor": [1.0, 8.0]},
            },
        },
        "cddpm_inpainting_2d": {
            "type": "others",
            "labels": [],
            "dimension": 2,
            "description": "inpainting",
            "config": {"sampler": ["dpm++", "ancestral", "ddim"], "steps": 20, "seed": 0, "num_samples": 1},
            "medgen": {
                "task": "inpaint",
                "spatial_dims": 2,
                "needs_mask": True,
                "classes": [],
                "limits": {"steps": [1, 2000], "seed": [0, 2147483647], "num_samples": [1, 16]},
            },
        },
        "segmentation_spleen": {
            "type": "segmentation",
            "labels": ["spleen"],
            "dimension": 3,
            "description": "stock",
            "config": {"device": ["cpu"]},
        },
    },
    "strategies": {"generate": {"description": "Generate a new synthetic volume"}},
}


def test_parse_info_keeps_the_app_models_with_their_options():
    models = medgen_client.parse_info(INFO)
    assert sorted(models) == ["cddpm_inpainting_2d", "cddpm_super_resolution_2d"]  # the stock model is left out
    sr = models["cddpm_super_resolution_2d"]
    assert (sr.task, sr.spatial_dims, sr.needs_mask, sr.generative) == ("super_resolution", 2, False, False)
    opts = {o.name: o for o in sr.options}
    assert [o.name for o in sr.options] == ["sampler", "steps", "seed", "num_samples", "factor"]
    assert (opts["sampler"].kind, opts["sampler"].default, opts["sampler"].choices) == (
        "choice",
        "dpm++",
        ["dpm++", "ancestral", "ddim"],
    )
    assert (opts["steps"].kind, opts["steps"].default, opts["steps"].minimum, opts["steps"].maximum) == (
        "int",
        20,
        1,
        2000,
    )
    assert (opts["factor"].kind, opts["factor"].minimum, opts["factor"].maximum) == ("float", 1.0, 8.0)
    assert models["cddpm_inpainting_2d"].needs_mask
    with pytest.raises(ValueError, match="/info/"):
        medgen_client.parse_info({"name": "not a server answer"})


def test_request_params_checks_widget_values():
    sr = medgen_client.parse_info(INFO)["cddpm_super_resolution_2d"]
    assert medgen_client.request_params(sr, {"sampler": "ddim", "steps": 10.0, "factor": "2"}) == {
        "sampler": "ddim",
        "steps": 10,
        "factor": 2.0,
    }
    assert medgen_client.request_params(sr, {}) == {}  # the server's defaults
    for values, text in [
        ({"sampler": "euler"}, "sampler must be one of"),
        ({"steps": 0}, "steps must be in [1, 2000]"),
        ({"steps": 2.5}, "steps must be an integer"),
        ({"factor": "x"}, "factor must be a number"),
        ({"factor": float("inf")}, "factor must be a finite"),
        ({"guidance": 1}, "not an option"),
    ]:
        with pytest.raises(ValueError, match=text.replace("[", r"\[").replace("]", r"\]")):
            medgen_client.request_params(sr, values)


def test_multipart_round_trip_keeps_binary_data_exact():
    rng = np.random.default_rng(0)
    nasty = b"\r\n--not-the-boundary\r\n\r\n" + rng.integers(0, 256, 5000, dtype=np.uint8).tobytes() + b"\r\n"
    body, content_type = medgen_client.encode_multipart(
        {"params": json.dumps({"steps": 5})}, {"file": ("scan.nii.gz", nasty), "label": ("m.nii.gz", b"")}
    )
    parts = medgen_client.decode_multipart(body, content_type)
    assert parts["file"]["data"] == nasty and parts["file"]["filename"] == "scan.nii.gz"
    assert parts["label"]["data"] == b"" and json.loads(parts["params"]["data"]) == {"steps": 5}
    with pytest.raises(ValueError, match="boundary"):
        medgen_client.decode_multipart(body, "application/json")


def _server_answer(params: dict, image: bytes, filename: str) -> tuple:
    """An /infer answer as MONAI Label 0.8.5 sends it (requests_toolbelt's MultipartEncoder, recorded layout)."""
    b = "24dd867fea7d4e14973a8e7cc888fa4e"
    body = (
        f'--{b}\r\nContent-Disposition: form-data; name="params"\r\nContent-Type: application/json\r\n\r\n'.encode()
        + json.dumps(params).encode()
        + f'\r\n--{b}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + image
        + f"\r\n--{b}--\r\n".encode()
    )
    return f"multipart/form-data; boundary={b}", body


def test_parse_infer_response_and_save_result_and_uncertainty(tmp_path):
    affine = np.diag([1.5, 1.5, 4.0, 1.0])
    mean = MetaTensor(torch.rand(1, 8, 8, 3), affine=torch.as_tensor(affine))
    std = MetaTensor(torch.rand(1, 8, 8, 3) * 0.1, affine=torch.as_tensor(affine))
    prov = io.Provenance(model="cddpm_denoising_2d", task="denoise", sampler="dpm++", steps=5, seed=0)
    io.write_image(mean, tmp_path / "mean.nii.gz", provenance=prov)
    io.write_image(std, tmp_path / "std.nii.gz", provenance=prov)
    params = {
        "medgen": {
            "task": "denoise",
            "provenance": json.loads(prov.to_json()),
            "uncertainty": {
                "format": "nii.gz",
                "encoding": "base64",
                "data": base64.b64encode((tmp_path / "std.nii.gz").read_bytes()).decode(),
            },
        },
        "latencies": {"total": 1.2},
    }
    content_type, body = _server_answer(params, (tmp_path / "mean.nii.gz").read_bytes(), "x_denoise_synthetic.nii.gz")
    result = medgen_client.parse_infer_response(content_type, body)
    assert result.task == "denoise" and result.image_filename == "x_denoise_synthetic.nii.gz"
    image_path, std_path = result.save(str(tmp_path / "out"), "MRHead")
    assert Path(image_path).name == "MRHead.nii.gz" and Path(std_path).name == "MRHead_std.nii.gz"
    for path, ref in ((image_path, mean), (std_path, std)):
        img = nib.load(path)
        np.testing.assert_allclose(img.get_fdata(), ref[0].numpy(), atol=1e-6)
        np.testing.assert_allclose(img.affine, affine)
        assert io.is_synthetic(path)
    only_json = medgen_client.parse_infer_response(
        "application/json", json.dumps({"medgen": {"task": "inpaint"}}).encode()
    )
    assert only_json.image is None and only_json.task == "inpaint" and only_json.uncertainty() is None
    with pytest.raises(ValueError, match="no image"):
        only_json.save(str(tmp_path), "x")


def test_build_infer_request_uploads_image_mask_and_params(tmp_path):
    image, mask = tmp_path / "scan.nii.gz", tmp_path / "hole.nii.gz"
    image.write_bytes(b"image bytes")
    mask.write_bytes(b"mask bytes")
    req = medgen_client.build_infer_request(
        "http://127.0.0.1:8000/", "cddpm_inpainting_2d", str(image), {"steps": 5}, str(mask)
    )
    assert req.get_method() == "POST" and req.full_url == "http://127.0.0.1:8000/infer/cddpm_inpainting_2d?output=all"
    parts = medgen_client.decode_multipart(req.data, req.get_header("Content-type"))
    assert parts["file"]["data"] == b"image bytes" and parts["file"]["filename"] == "scan.nii.gz"
    assert parts["label"]["data"] == b"mask bytes" and json.loads(parts["params"]["data"]) == {"steps": 5}
    by_id = medgen_client.build_infer_request("http://h:1", "vdm_brain_mri_2d", image_id="colin 27", params={})
    query = urllib.parse.parse_qs(urllib.parse.urlparse(by_id.full_url).query)
    assert query == {"output": ["all"], "image": ["colin 27"]}
    assert set(medgen_client.decode_multipart(by_id.data, by_id.get_header("Content-type"))) == {"params"}
    with pytest.raises(ValueError, match="image_path or image_id"):
        medgen_client.build_infer_request("http://h:1", "m")
    with pytest.raises(ValueError, match="mask_path"):
        medgen_client.build_infer_request("http://h:1", "m", str(image), mask_path=str(tmp_path / "none.nii.gz"))


def test_error_messages_and_names():
    assert medgen_client.error_message(400, b'{"detail":"steps must be an integer in [1, 2000], got 5000."}') == (
        "server error 400: steps must be an integer in [1, 2000], got 5000."
    )
    assert "field required" in medgen_client.error_message(422, json.dumps({"detail": [{"msg": "field required"}]}))
    assert medgen_client.error_message(500, b"Internal Server Error") == "server error 500: Internal Server Error"
    assert medgen_client.result_volume_name("MRHead", "denoise") == "MRHead (synthetic, denoise)"
    assert medgen_client.uncertainty_volume_name("MRHead", "inpaint") == "MRHead (synthetic, inpaint, uncertainty)"


def test_client_reports_an_unreachable_server():
    with pytest.raises(ValueError, match="http"):
        medgen_client.MedGenClient("127.0.0.1:8000")
    client = medgen_client.MedGenClient(f"http://127.0.0.1:{free_port()}", timeout=5)  # nothing listens there
    with pytest.raises(medgen_client.ServerError, match="could not reach") as e:
        client.info()
    assert e.value.status is None


# ---------------------------------------------------------------------------------------------
# the busy indicator (MONAI Label reports no progress for one request)
# ---------------------------------------------------------------------------------------------
def test_background_call_returns_raises_and_times():
    release = threading.Event()
    ticks = iter([100.0, 103.4, 107.9])  # start, while running, end
    call = background.BackgroundCall(lambda: release.wait(10) and "volume", clock=lambda: next(ticks))
    assert not call.done
    with pytest.raises(RuntimeError, match="still running"):
        call.result()
    assert call.elapsed == pytest.approx(3.4)
    release.set()
    assert call.wait(10) and call.result() == "volume"
    assert call.elapsed == pytest.approx(7.9)  # frozen at the end

    def fails():
        raise medgen_client.ServerError("server error 400: steps must be an integer in [1, 2000], got 5000.", 400)

    failed = background.BackgroundCall(fails)
    failed.wait(10)
    with pytest.raises(medgen_client.ServerError, match="5000") as e:
        failed.result()
    assert e.value.status == 400
    with pytest.raises(ValueError, match="callable"):
        background.BackgroundCall("not a function")


def test_busy_text_names_model_input_size_and_seconds():
    detail = background.describe_volume((256, 256, 130))
    assert detail == "256 x 256 x 130 voxels" and background.describe_volume(None) == ""
    assert background.busy_text("cddpm_denoising_2d on MRHead", 61.6, detail) == (
        "cddpm_denoising_2d on MRHead (256 x 256 x 130 voxels): 62 s - the server reports no progress for one volume; "
        "waiting for its answer."
    )
    assert background.busy_text("Generating a new volume", -1).startswith("Generating a new volume: 0 s")


# ---------------------------------------------------------------------------------------------
# the extension's layout
# ---------------------------------------------------------------------------------------------
def _cmake_list(text: str, name: str) -> list:
    """The entries of ``set(NAME a b c)`` in a CMakeLists text, ``${MODULE_NAME}`` expanded."""
    match = re.search(rf"set\({name}\s+(.*?)\)", text, re.S)
    assert match, f"set({name} ...) missing"
    return [e.replace("${MODULE_NAME}", "MedGen") for e in match.group(1).split()]


def test_module_folder_is_a_slicer_scripted_module_extension():
    # Slicer loads every .py at the top of a module folder as a module: only MedGen.py may be there
    assert sorted(p.name for p in MODULE.glob("*.py")) == ["MedGen.py"]
    extension = (SLICER / "CMakeLists.txt").read_text()
    for needed in (
        "project(MedGen)",
        "find_package(Slicer REQUIRED)",
        "add_subdirectory(MedGen)",
        "Slicer_EXTENSION_GENERATE_CONFIG",
        "Slicer_EXTENSION_CPACK",
    ):
        assert needed in extension
    module = (MODULE / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in module and "add_subdirectory(Testing)" in module
    scripts, resources = _cmake_list(module, "MODULE_PYTHON_SCRIPTS"), _cmake_list(module, "MODULE_PYTHON_RESOURCES")
    for entry in scripts + resources:
        assert (MODULE / entry).is_file(), entry
    # every helper of MedGenLib is installed with the module
    assert sorted(e for e in scripts if e.startswith("MedGenLib/")) == sorted(
        f"MedGenLib/{p.name}" for p in (MODULE / "MedGenLib").glob("*.py")
    )
    assert "Resources/Icons/MedGen.png" in resources and "Resources/UI/MedGen.ui" in resources
    from PIL import Image

    with Image.open(MODULE / "Resources" / "Icons" / "MedGen.png") as icon:
        assert icon.format == "PNG" and icon.size == (128, 128)
    assert (MODULE / "Testing" / "CMakeLists.txt").read_text().strip() == "add_subdirectory(Python)"
    testing = (MODULE / "Testing" / "Python" / "CMakeLists.txt").read_text()
    for test in re.findall(r"slicer_add_python_unittest\(SCRIPT (\S+)\)", testing):
        assert (MODULE / "Testing" / "Python" / test).is_file(), test


def test_ui_file_holds_every_widget_the_module_uses():
    root = ET.parse(MODULE / "Resources" / "UI" / "MedGen.ui").getroot()
    top = root.find("widget")
    assert (top.get("class"), top.get("name")) == ("qMRMLWidget", "MedGen")  # setMRMLScene reaches the selectors
    widgets = {w.get("name"): w.get("class") for w in root.iter("widget")}
    source = (MODULE / "MedGen.py").read_text()
    used = set(re.findall(r"self\.ui\.(\w+)", source))
    assert used, "MedGen.py builds its widget from the .ui"
    missing = used - set(widgets)
    assert not missing, f"MedGen.py uses widgets missing from MedGen.ui: {sorted(missing)}"
    assert widgets["inputVolumeSelector"] == "qMRMLNodeComboBox"
    assert widgets["maskSegmentSelector"] == "qMRMLSegmentSelectorWidget"
    assert widgets["progressBar"] == "QProgressBar"
    receivers = {
        c.findtext("receiver") for c in root.iter("connection") if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    assert receivers == {"inputVolumeSelector", "maskSegmentSelector"}
    # the module file itself: valid Python that takes its helpers from MedGenLib and its layout from the .ui
    tree = ast.parse(source)
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "MedGenLib" in imported and 'loadUI(self.resourcePath("UI/MedGen.ui"))' in source


def test_testing_unittest_module_passes_here():
    sys.path.insert(0, str(MODULE / "Testing" / "Python"))
    try:
        import MedGenClientTest
    finally:
        sys.path.remove(str(MODULE / "Testing" / "Python"))
    result = unittest.TextTestRunner(verbosity=0, stream=io_module.StringIO()).run(
        unittest.defaultTestLoader.loadTestsFromModule(MedGenClientTest)
    )
    assert result.testsRun == 4 and result.wasSuccessful(), result.failures + result.errors
