"""Run the app on this machine: find the Python that has MONAI Label, start and stop a ``monailabel start_server``
process, and write a small studies folder and degraded inputs from the held-out Colin27 brain.

Used by ``tests/test_monailabel.py`` and ``scripts/monailabel_latency.py``; no MONAI Label import here (the server
runs in its own virtual environment, see :func:`monailabel_python`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from monai_medgen.data import demo_slices, load_colin27, scale_intensity
from monai_medgen.dicomweb import stop_process_group
from monai_medgen.transforms import RandMixedNoise, SimulateLowResolution

__all__ = [
    "APP_DIR",
    "ENV_PYTHON",
    "MONAILabelServer",
    "free_port",
    "monailabel_python",
    "write_demo_inputs",
]

#: the app folder given to ``monailabel start_server --app``
APP_DIR = Path(__file__).resolve().parent
REPO = APP_DIR.parents[2]
#: environment variable naming the Python of MONAI Label's virtual environment
ENV_PYTHON = "MEDGEN_MONAILABEL_PYTHON"
DEFAULT_VENV = REPO / ".venv-monailabel"
BUILD_HINT = (
    "build MONAI Label's own virtual environment with 'bash scripts/build_monailabel_venv.sh' (it creates "
    ".venv-monailabel: torch 2.14.1, torchvision 0.29.1, monailabel 0.8.5 with numpy<2, pydicom<3, pynetdicom<3, "
    "dicomweb-client<0.60, and this project), or set MEDGEN_MONAILABEL_PYTHON to the python of such an environment"
)


def monailabel_python() -> str:
    """The Python that runs the server: ``$MEDGEN_MONAILABEL_PYTHON``, else ``<repo>/.venv-monailabel/bin/python``.

    Raises:
        FileNotFoundError: saying how to build the environment, when neither exists.
    """
    configured = os.environ.get(ENV_PYTHON, "").strip()
    if configured:
        if not os.access(configured, os.X_OK):
            raise FileNotFoundError(f"{ENV_PYTHON}={configured!r} is not an executable Python; {BUILD_HINT}.")
        return configured
    candidate = DEFAULT_VENV / "bin" / "python"
    if candidate.is_file():
        return str(candidate)
    raise FileNotFoundError(
        f"no Python with MONAI Label found ({ENV_PYTHON} is not set, {candidate} is missing): {BUILD_HINT}."
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MONAILabelServer:
    """``monailabel start_server --app monai_medgen/apps/monailabel --studies DIR --host 127.0.0.1 --port P`` as a
    subprocess in its own process group, stopped (SIGTERM, then SIGKILL) on :meth:`stop` or when the ``with``
    block ends, also on failure.

    Args:
        studies: the studies folder (NIfTI files; MONAI Label's local datastore) or a DICOMweb root
            (``http://host:8042/dicom-web``; the server then runs in ``log_path``'s folder).
        python: the Python with MONAI Label (default :func:`monailabel_python`).
        port: default a free one.
        conf: ``--conf key value`` pairs (e.g. ``{"models": "cddpm_denoising_2d"}``).
        log_path: file for the server's output (default ``<studies>/../monailabel_server.log``; for a DICOMweb
            ``studies``, in a new temporary folder).
        startup_timeout: seconds to wait for ``/info/`` to answer.
        env: extra environment variables for the server.
    """

    def __init__(self, studies, python=None, port=None, conf=None, log_path=None, startup_timeout=600.0, env=None):
        self.studies = str(studies)
        self.python = python or monailabel_python()
        self.port = int(port or free_port())
        self.conf = dict(conf or {})
        if log_path is None and self.remote:
            import tempfile

            log_path = Path(tempfile.mkdtemp(prefix="medgen_monailabel_log_")) / "monailabel_server.log"
        self.log_path = str(log_path or Path(self.studies).resolve().parent / "monailabel_server.log")
        self.startup_timeout = float(startup_timeout)
        self.env = dict(env or {})
        self.process = None
        self.startup_seconds = None

    @property
    def remote(self) -> bool:
        """Whether the studies are a DICOMweb server rather than a folder."""
        return self.studies.startswith(("http://", "https://"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list:
        cmd = [
            self.python,
            "-m",
            "monailabel.main",
            "start_server",
            "--app",
            str(APP_DIR),
            "--studies",
            self.studies,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        for key, value in self.conf.items():
            cmd += ["--conf", str(key), str(value)]
        return cmd

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def start(self) -> MONAILabelServer:
        env = {**os.environ, **self.env}
        start = time.perf_counter()
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                cwd=str(Path(self.log_path if self.remote else self.studies).resolve().parent),
            )
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"monailabel start_server exited with status {self.process.returncode} before answering; "
                        f"its log ({self.log_path}) ends with:\n{self.log_tail()}"
                    )
                try:
                    with urllib.request.urlopen(f"{self.url}/info/", timeout=5) as answer:
                        json.loads(answer.read())
                    break
                except (urllib.error.URLError, OSError, ValueError):
                    pass
                if time.perf_counter() - start > self.startup_timeout:
                    raise RuntimeError(
                        f"monailabel start_server did not answer /info/ within {self.startup_timeout:.0f} s; its log "
                        f"({self.log_path}) ends with:\n{self.log_tail()}"
                    )
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.perf_counter() - start
        return self

    def stop(self) -> None:
        """Stop the server's process group (SIGTERM, SIGKILL after 15 s); safe to call twice."""
        stop_process_group(self.process)

    def __enter__(self) -> MONAILabelServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------
# demo data
# ---------------------------------------------------------------------------------------------
def _save(volume: np.ndarray, affine: np.ndarray, path: Path, description: str) -> str:
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(volume, dtype=np.float32), np.asarray(affine, dtype=np.float64))
    img.header["descrip"] = description.encode()[:79]
    img.set_qform(np.asarray(affine, dtype=np.float64), code=1)
    nib.save(img, str(path))
    return str(path)


def write_demo_inputs(studies, inputs, seed: int = 1000) -> dict:
    """Real data for the app, from the held-out Colin27 brain (Debian's ``mricron-data``).

    ``studies`` gets the datastore images: ``colin27_slices.nii.gz`` (8 axial slices as the 2D bundles see them:
    the brain box resized to 128 x 128, 1.41 mm pixels, the central 64 x 64 crop; 5.66 mm apart) and
    ``colin27_1mm.nii.gz`` (a 48 x 48 x 32 box of the brain at its native 1 mm, in its own world space).
    ``inputs`` gets what a client uploads, made with the package's degradations (the test-set parameters):
    ``slices_lowres`` (4x coarser in-plane, area), ``slices_noisy`` (Gaussian 0.1 + 5% salt-and-pepper),
    ``slices_masked`` and ``slices_mask`` (a 16 x 16 hole in every slice, 1 = missing), ``volume_thick``
    (4x thicker slices along the third axis).

    Returns:
        ``{name: path}`` of all these files (``slices`` and ``volume`` for the datastore images).
    """
    import torch
    from monai.data import MetaTensor

    studies, inputs = Path(studies), Path(inputs)
    studies.mkdir(parents=True, exist_ok=True)
    inputs.mkdir(parents=True, exist_ok=True)
    paths = {}

    # 2D bundles' scale: 128 x 128 over the brain box, central 64 x 64
    slices = np.stack([d["image"][0] for d in demo_slices("colin27", size=128, num_slices=8)], -1)[32:96, 32:96]
    sp = 181.0 / 128
    affine = np.diag([sp, sp, 4 * sp, 1.0])
    affine[:2, 3] = 32 * sp
    paths["slices"] = _save(
        slices, affine, studies / "colin27_slices.nii.gz", "Colin27 axial slices (monai_medgen demo)"
    )

    fine = MetaTensor(torch.as_tensor(slices)[None], affine=torch.as_tensor(affine))
    low = SimulateLowResolution([4.0, 4.0, 1.0]).downsample(fine)  # area; the affine of the coarse pixels
    paths["slices_lowres"] = _save(
        np.asarray(low[0]),
        np.asarray(low.affine),
        inputs / "slices_lowres.nii.gz",
        "Colin27 slices, 4x coarser in-plane",
    )
    noisy = np.stack(
        [
            np.asarray(RandMixedNoise(0.1, 0.05, low=0.0, high=1.0, seed=seed + k)(slices[None, ..., k]))[0]
            for k in range(slices.shape[-1])
        ],
        -1,
    )
    paths["slices_noisy"] = _save(noisy, affine, inputs / "slices_noisy.nii.gz", "Colin27 slices with noise")
    mask = np.zeros_like(slices)
    mask[24:40, 24:40] = 1
    paths["slices_masked"] = _save(
        slices * (1 - mask), affine, inputs / "slices_masked.nii.gz", "Colin27 slices with a hole"
    )
    paths["slices_mask"] = _save(mask, affine, inputs / "slices_mask.nii.gz", "inpainting mask, 1 = missing")

    # 3D bundle's scale: native 1 mm, a box at the brain's centre
    vol, vol_affine = load_colin27()
    vol = scale_intensity(vol)
    centre = [int(np.mean(np.nonzero(vol.sum(axis=tuple(a for a in range(3) if a != k)))[0])) for k in range(3)]
    size = (48, 48, 32)
    start = [c - s // 2 for c, s in zip(centre, size)]
    box = vol[tuple(slice(a, a + s) for a, s in zip(start, size))]
    box_affine = np.asarray(vol_affine, dtype=np.float64).copy()
    box_affine[:3, 3] = box_affine[:3, :3] @ np.asarray(start, dtype=np.float64) + box_affine[:3, 3]
    paths["volume"] = _save(box, box_affine, studies / "colin27_1mm.nii.gz", "Colin27 1 mm box (monai_medgen demo)")
    thick = SimulateLowResolution([1.0, 1.0, 4.0]).downsample(
        MetaTensor(torch.as_tensor(box)[None], affine=torch.as_tensor(box_affine))
    )
    paths["volume_thick"] = _save(
        np.asarray(thick[0]), np.asarray(thick.affine), inputs / "volume_thick.nii.gz", "Colin27 1 mm box, 4 mm slices"
    )
    return paths
