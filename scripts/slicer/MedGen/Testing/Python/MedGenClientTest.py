"""The MedGen module's Slicer-free helpers (``MedGenLib``), as a plain ``unittest`` module: run by Slicer's ctest
(``Testing/Python/CMakeLists.txt``) and by the repository's ``tests/test_slicer_client.py``.  No server, no scene."""

import json
import os
import sys
import unittest

_MODULE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if os.path.isdir(os.path.join(_MODULE_DIR, "MedGenLib")) and _MODULE_DIR not in sys.path:  # run from the source tree
    sys.path.insert(0, _MODULE_DIR)

from MedGenLib import background, medgen_client  # noqa: E402

# an /info/ entry as the monai_medgen app sends it (trimmed), and a stock model the module leaves out
INFO = {
    "models": {
        "cddpm_denoising_2d": {
            "type": "others",
            "dimension": 2,
            "description": "blind denoising",
            "config": {"sampler": ["dpm++", "ancestral", "ddim"], "steps": 4, "seed": 0, "num_samples": 1},
            "medgen": {
                "task": "denoise",
                "spatial_dims": 2,
                "needs_mask": False,
                "limits": {"steps": [1, 2000], "seed": [0, 2147483647], "num_samples": [1, 16]},
            },
        },
        "segmentation_spleen": {"type": "segmentation", "dimension": 3, "config": {"device": ["cpu"]}},
    }
}


class MedGenClientTest(unittest.TestCase):
    def test_parse_info_and_request_params(self):
        models = medgen_client.parse_info(INFO)
        self.assertEqual(list(models), ["cddpm_denoising_2d"])
        model = models["cddpm_denoising_2d"]
        self.assertEqual([o.name for o in model.options], ["sampler", "steps", "seed", "num_samples"])
        self.assertEqual(
            medgen_client.request_params(model, {"steps": 5.0, "sampler": "ddim"}), {"steps": 5, "sampler": "ddim"}
        )
        with self.assertRaisesRegex(ValueError, "steps must be in"):
            medgen_client.request_params(model, {"steps": 0})

    def test_multipart_round_trip(self):
        data = b"\r\n--x\r\n" + bytes(range(256))
        body, content_type = medgen_client.encode_multipart(
            {"params": json.dumps({"steps": 2})}, {"file": ("a.nii.gz", data)}
        )
        parts = medgen_client.decode_multipart(body, content_type)
        self.assertEqual(parts["file"]["data"], data)
        self.assertEqual(json.loads(parts["params"]["data"]), {"steps": 2})

    def test_names(self):
        self.assertEqual(medgen_client.result_volume_name("MRHead", "denoise"), "MRHead (synthetic, denoise)")
        self.assertEqual(
            medgen_client.uncertainty_volume_name("MRHead", "inpaint"), "MRHead (synthetic, inpaint, uncertainty)"
        )

    def test_background_call_and_busy_text(self):
        call = background.BackgroundCall(lambda: "answer")
        self.assertTrue(call.wait(10))
        self.assertEqual(call.result(), "answer")

        def fails():
            raise medgen_client.ServerError("server error 400: steps must be an integer", 400)

        failed = background.BackgroundCall(fails)
        failed.wait(10)
        with self.assertRaisesRegex(medgen_client.ServerError, "steps must be"):
            failed.result()
        text = background.busy_text("cddpm_denoising_2d on MRHead", 12.4, background.describe_volume((256, 256, 130)))
        self.assertEqual(
            text,
            "cddpm_denoising_2d on MRHead (256 x 256 x 130 voxels): 12 s - the server reports no "
            "progress for one volume; waiting for its answer.",
        )


if __name__ == "__main__":
    unittest.main()
