"""The MONAI Label app as a hostile client sees it: each attack S1-S7 of issue 14 against a real
``monailabel start_server`` (MONAI Label's own virtual environment: ``$MEDGEN_MONAILABEL_PYTHON``, else
``<repo>/.venv-monailabel/bin/python``; ``bash scripts/build_monailabel_venv.sh`` builds it).

The sandbox holds the server's studies folder, a folder ``outside/`` with files an attacker aims at, the server's
temporary folder (``TMPDIR``) and its log. After every test no file outside the studies folder has changed (size,
time, SHA-256), and the server's private upload folder is empty. Timings are not asserted here (see
``scripts/monailabel_latency.py``); the checks that ``/info/`` answers while an inference runs are functional.

Without the server: names, headers, parameters, the job queue and the work estimate (pure functions of
:mod:`monai_medgen.apps.monailabel.confine` and :mod:`monai_medgen.apps.monailabel.served`).
"""

import gzip
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_medgen.apps.monailabel import confine, served
from monai_medgen.apps.monailabel.local import MONAILabelServer, write_demo_inputs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts" / "slicer" / "MedGen"))
from MedGenLib import medgen_client  # noqa: E402  (the Slicer module's helper package)

#: models the attacks go through, the first one served (restoration first: it reads the image's voxels); the
#: server serves every bundle of the repository that loads
PREFERRED = (
    "cddpm_denoising_2d",
    "cddpm_super_resolution_2d",
    "cddpm_inpainting_2d",
    "vdm_brain_mri_2d",
    "cddpm_class_conditional_2d",
)
INPAINTING = "cddpm_inpainting_2d"
MAX_UPLOAD_MB = 48
GIB = 2**30


# ---------------------------------------------------------------------------------------------
# the sandbox and the server
# ---------------------------------------------------------------------------------------------
def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    root = tmp_path_factory.mktemp("monailabel_security")
    studies = root / "server" / "studies"
    data = write_demo_inputs(studies, root / "inputs")
    outside = root / "outside"
    outside.mkdir()
    victim = outside / "victim.nii.gz"
    victim.write_bytes(Path(data["slices"]).read_bytes())
    (outside / "secret.txt").write_text("not for clients\n")
    tmp = root / "tmp"
    tmp.mkdir()
    stale = tmp / f"{confine.UploadFolder.PREFIX}{_dead_pid()}_killed"  # what a killed server leaves
    stale.mkdir()
    (stale / "old_upload.nii.gz").write_bytes(b"left by a killed server")
    return {
        "root": root,
        "studies": studies,
        "outside": outside,
        "victim": victim,
        "tmp": tmp,
        "stale": stale,
        "log": root / "server" / "monailabel_server.log",
        **data,
    }


@pytest.fixture(scope="module")
def server(sandbox):
    srv = MONAILabelServer(
        sandbox["studies"],
        conf={"bundles": str(REPO / "bundles"), "max_upload_mb": MAX_UPLOAD_MB},
        log_path=sandbox["log"],
        env={"TMPDIR": str(sandbox["tmp"]), "OMP_NUM_THREADS": "1"},
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
    assert srv.process.poll() is not None


class Served:
    """The models the server serves: ``main`` (the attacks' target: a restoration model when one is served),
    ``inpaint`` (None when the inpainting bundle does not load) and their request options."""

    def __init__(self, info: dict):
        self.info = info
        served = [m for m in PREFERRED if m in info] or sorted(info)
        assert served, "the server serves no model"
        self.main = served[0]
        self.restores = info[self.main]["medgen"]["task"] != "generate"
        self.inpaint = INPAINTING if INPAINTING in info else None

    def fast(self, model=None, steps=1, **extra) -> dict:
        """Options of a quick request to ``model`` (default :attr:`main`)."""
        medgen = self.info[model or self.main]["medgen"]
        out = {"steps": steps, "seed": 0, **extra}
        if "adapt_steps" in medgen["limits"]:  # the denoiser's test-time adaptation (default 40 steps) off
            out.setdefault("adapt_steps", 0)
        if medgen["task"] == "generate" and medgen["spatial_dims"] == 2:
            out.setdefault("num_slices", 1)
        return out

    def path(self, model=None) -> str:
        return f"/infer/{model or self.main}"


@pytest.fixture(scope="module")
def models(server):
    return Served(call(server, "GET", "/info/")[1]["models"])


def _files(folder: Path, skip=()) -> dict:
    out = {}
    for path in sorted(folder.rglob("*")):
        if any(path == s or s in path.parents for s in skip) or not path.is_file():
            continue
        stat = path.stat()
        out[str(path.relative_to(folder))] = (
            stat.st_size,
            stat.st_mtime_ns,
            hashlib.sha256(path.read_bytes()).hexdigest(),
        )
    return out


def _private(sandbox) -> Path:
    found = [p for p in sandbox["tmp"].glob(f"{confine.UploadFolder.PREFIX}*") if p != sandbox["stale"]]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(autouse=True)
def nothing_outside_changes(request):
    """Every test with the server: no file outside the studies folder changes; the server's private folder is empty
    after it."""
    if "server" not in request.fixturenames:
        yield
        return
    sandbox = request.getfixturevalue("sandbox")
    request.getfixturevalue("server")
    skip = (sandbox["studies"], sandbox["log"], sandbox["tmp"])
    before = _files(sandbox["root"], skip)
    tmp_before = sorted(p.name for p in sandbox["tmp"].iterdir())
    yield
    assert _files(sandbox["root"], skip) == before, "a file outside the studies folder changed"
    assert sorted(p.name for p in sandbox["tmp"].iterdir()) == tmp_before, "the server left files in its TMPDIR"
    assert list(_private(sandbox).iterdir()) == [], "an upload or result stayed in the server's private folder"


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------
def call(server, method, path, query=None, fields=None, files=None, body=None, headers=None, timeout=600):
    """``(status, parsed JSON or bytes)`` of one request; ``files``: ``{field: (filename, bytes)}``."""
    url = f"{server.url}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    headers = dict(headers or {})
    if fields is not None or files is not None:
        body, headers["Content-Type"] = medgen_client.encode_multipart(fields or {}, files or {})
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            status, kind, data = answer.status, answer.headers.get("Content-Type", ""), answer.read()
    except urllib.error.HTTPError as e:
        status, kind, data = e.code, e.headers.get("Content-Type", ""), e.read()
    return status, (json.loads(data) if kind.startswith("application/json") and data else data)


def refused(answer, status, *fragments):
    """A 4xx answer with a message holding every fragment."""
    got, body = answer
    assert got == status, (got, body)
    assert isinstance(body, dict) and isinstance(body.get("detail"), str), body
    for fragment in fragments:
        assert fragment in body["detail"], (fragment, body["detail"])
    return body["detail"]


def upload(path, name=None):
    return (name or os.path.basename(path), Path(path).read_bytes())


def listed(server) -> set:
    return set(call(server, "GET", "/datastore/", {"output": "all"})[1]["objects"])


NEVER_A_PATH = "never a path"


# ---------------------------------------------------------------------------------------------
# S1: datastore ids and tags are names
# ---------------------------------------------------------------------------------------------
def test_s1_datastore_ids_and_tags_are_names_never_paths(server, sandbox):
    image = upload(sandbox["slices_noisy"])
    victim = str(sandbox["victim"])
    images_before = listed(server)
    for target in (
        "../../x",
        "../../outside/victim",
        victim,
        str(sandbox["root"] / "x"),
        "..",
        ".hidden",
        "a/b",
        "a\\b",
    ):
        refused(
            call(server, "PUT", "/datastore/image", {"image": target}, files={"file": image}),
            400,
            "image must be a name",
            NEVER_A_PATH,
        )
        refused(call(server, "PUT", "/datastore/", {"image": target}, files={"file": image}), 400, NEVER_A_PATH)
        refused(call(server, "DELETE", "/datastore/image", {"id": target}), 400, "id must be a name", NEVER_A_PATH)
        refused(call(server, "DELETE", "/datastore/", {"id": target}), 400, NEVER_A_PATH)
        refused(call(server, "GET", "/datastore/image", {"image": target}), 400, NEVER_A_PATH)
        refused(
            call(
                server,
                "PUT",
                "/datastore/label",
                {"image": "colin27_slices", "tag": target},
                files={"label": upload(sandbox["slices_mask"])},
            ),
            400,
            "tag must be a name",
            NEVER_A_PATH,
        )
        refused(
            call(
                server,
                "PUT",
                "/datastore/label",
                {"image": target, "tag": "final"},
                files={"label": upload(sandbox["slices_mask"])},
            ),
            400,
            NEVER_A_PATH,
        )
        refused(call(server, "DELETE", "/datastore/label", {"id": "colin27_slices", "tag": target}), 400, NEVER_A_PATH)
        refused(call(server, "GET", "/datastore/label", {"label": "colin27_slices", "tag": target}), 400, NEVER_A_PATH)
    # an uploaded file name with a path in it gives only its stem as the id, inside the studies folder
    status, body = call(
        server, "PUT", "/datastore/image", files={"file": upload(sandbox["slices_noisy"], "../../evil.nii.gz")}
    )
    assert (status, body) == (200, {"image": "evil"}), body
    assert (sandbox["studies"] / "evil.nii.gz").is_file() and not (sandbox["root"] / "evil.nii.gz").exists()
    refused(
        call(server, "PUT", "/datastore/image", {"image": "evil"}, files={"file": image}),
        409,
        "already in the datastore",
    )
    assert call(server, "DELETE", "/datastore/image", {"id": "evil"}) == (200, {})
    assert not (sandbox["studies"] / "evil.nii.gz").exists()
    refused(call(server, "DELETE", "/datastore/image", {"id": "evil"}), 404, "no image 'evil'")
    assert listed(server) == images_before
    assert sandbox["victim"].is_file()


def test_s1_disabled_endpoints_answer_404_with_a_message(server):
    for method, path in [
        ("PUT", "/session/"),
        ("GET", "/logs/"),
        ("POST", "/reload"),
        ("GET", "/model/cddpm_denoising_2d"),
        ("PUT", "/model/cddpm_denoising_2d"),
        ("GET", "/ohif/../../etc/passwd"),
        ("POST", "/batch/infer/x"),
        ("POST", "/train/"),
        ("GET", "/datastore/dataset"),
        ("POST", "/infer/wsi/cddpm_denoising_2d"),
    ]:
        refused(call(server, method, path, body=b"" if method != "GET" else None), 404, "does not serve")


def test_s1_head_checks_the_image_checksum(server, sandbox):
    """HEAD /datastore/image?check_sum=[ALGO:]digest: 200 for the image's digest (any case, algorithm named or
    not), 404 for another, 400 naming the algorithms for one MONAI Label cannot compute."""
    (path,) = sandbox["studies"].glob("colin27_slices.*")
    data = path.read_bytes()
    sha256, md5 = hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest()
    query = {"image": "colin27_slices"}
    for check_sum in (sha256, f"SHA256:{sha256.upper()}", f"md5:{md5}"):
        assert call(server, "HEAD", "/datastore/image", {**query, "check_sum": check_sum})[0] == 200, check_sum
    assert call(server, "HEAD", "/datastore/image", {**query, "check_sum": "0" * 64})[0] == 404
    assert call(server, "HEAD", "/datastore/image", {**query, "check_sum": f"SHA1:{'0' * 40}"})[0] == 400
    assert call(server, "HEAD", "/datastore/image", {"image": "nope", "check_sum": sha256})[0] == 404


# ---------------------------------------------------------------------------------------------
# S2: infer reads datastore images and uploads only
# ---------------------------------------------------------------------------------------------
def test_s2_infer_never_reads_a_server_path(server, sandbox, models):
    params = {"params": json.dumps(models.fast())}
    existing, missing = str(sandbox["victim"]), str(sandbox["outside"] / "no_such_file.nii.gz")
    answers = [call(server, "POST", models.path(), {"image": p}, fields=params) for p in (existing, missing)]
    details = [refused(a, 400, "image must be a name", NEVER_A_PATH) for a in answers]
    # the same status and message for a path that exists and one that does not: nothing leaks; each ends with the
    # value it was given, echoed and cut to 80 characters (77 and "..."), and nothing else
    parts = [d.rsplit("; got ", 1) for d in details]
    assert all(len(p) == 2 for p in parts) and parts[0][0] == parts[1][0]
    for (_, echo), value in zip(parts, (existing, missing)):
        assert echo == repr(value if len(value) <= 80 else value[:77] + "...") + "."
    refused(call(server, "POST", models.path(), {"image": "../outside/victim"}, fields=params), 400, NEVER_A_PATH)
    # a path in params (image, label, ...) is no option
    target = models.inpaint or models.main
    for key in ("image", "label", "session", "skip_writer", "logging"):
        fields = {"params": json.dumps({**models.fast(target), key: existing})}
        refused(
            call(server, "POST", models.path(target), {"image": "colin27_slices"}, fields=fields),
            400,
            f"['{key}'] is not an option",
            "never as a path",
        )
    # the mask as a text field (a server path) is refused: uploads only
    refused(
        call(
            server,
            "POST",
            models.path(target),
            {"image": "colin27_slices"},
            fields={"params": json.dumps(models.fast(target)), "label": existing},
        ),
        400,
        "label must be an uploaded file",
    )
    refused(
        call(server, "POST", models.path(), {"image": "colin27_slices", "session_id": "x"}, fields=params),
        400,
        "sessions are not served",
    )
    refused(
        call(server, "POST", models.path(), {"image": "no_such_image"}, fields=params),
        404,
        "no image 'no_such_image' in the datastore",
    )


def test_s2_the_allowed_ways_still_work(server, sandbox, models, tmp_path):
    fast = {"params": json.dumps(models.fast(steps=2))}
    status, body = call(
        server, "POST", models.path(), {"output": "json"}, fields=fast, files={"file": upload(sandbox["slices_noisy"])}
    )
    assert status == 200 and body["medgen"]["synthetic"] is True, body
    status, body = call(server, "POST", models.path(), {"image": "colin27_slices", "output": "image"}, fields=fast)
    assert status == 200 and body[:2] == b"\x1f\x8b"
    (tmp_path / "out.nii.gz").write_bytes(body)
    assert len(nib.load(str(tmp_path / "out.nii.gz")).shape) == 3
    # a label for a datastore image under a tag that is a name, used as the inpainting mask, then removed
    assert (
        call(
            server,
            "PUT",
            "/datastore/label",
            {"image": "colin27_slices", "tag": "mask"},
            files={"label": upload(sandbox["slices_mask"])},
        )[0]
        == 200
    )
    assert (sandbox["studies"] / "labels" / "mask" / "colin27_slices.nii.gz").is_file()
    if models.inpaint:
        status, body = call(
            server,
            "POST",
            models.path(models.inpaint),
            {"image": "colin27_slices", "output": "json"},
            fields={"params": json.dumps({**models.fast(models.inpaint), "label_tag": "mask"})},
        )
        assert status == 200 and body["medgen"]["task"] == "inpaint"
        status, body = call(
            server,
            "POST",
            models.path(models.inpaint),
            {"output": "json"},
            fields={"params": json.dumps(models.fast(models.inpaint))},
            files={"file": upload(sandbox["slices_masked"]), "label": upload(sandbox["slices_mask"])},
        )
        assert status == 200 and body["medgen"]["task"] == "inpaint"
    assert call(server, "DELETE", "/datastore/label", {"id": "colin27_slices", "tag": "mask"}) == (200, {})
    refused(call(server, "DELETE", "/datastore/label", {"id": "colin27_slices", "tag": "mask"}), 404, "no label")


# ---------------------------------------------------------------------------------------------
# S3: the declared size is checked before decoding; memory stays near idle
# ---------------------------------------------------------------------------------------------
def _memory(pid: int) -> tuple:
    """(VmRSS, VmHWM) of a process in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def test_s3_huge_declared_size_is_refused_before_decoding(server, sandbox, models, tmp_path):
    zeros = tmp_path / "zeros_800.nii.gz"
    nib.save(
        nib.Nifti1Image(np.zeros((800, 800, 800), np.uint8), np.eye(4)), str(zeros)
    )  # 2.2 MB gzipped, 512 MB decoded
    assert zeros.stat().st_size < 4 * 2**20
    pid = server.process.pid
    idle, peak_before = _memory(pid)
    samples, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            samples.append(_memory(pid)[0])
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        data = upload(zeros)
        declared = "declares 800 x 800 x 800 = 512000000 voxels"
        for model in {models.main, models.inpaint or models.main}:
            refused(call(server, "POST", models.path(model), files={"file": data}), 413, declared, "at most 16777216")
        if models.inpaint:
            refused(
                call(server, "POST", models.path(models.inpaint), {"image": "colin27_slices"}, files={"label": data}),
                413,
                declared,
            )
        refused(call(server, "PUT", "/datastore/image", {"image": "zeros"}, files={"file": data}), 413, declared)
        refused(
            call(server, "PUT", "/datastore/label", {"image": "colin27_slices"}, files={"label": data}), 413, declared
        )
        # the largest image accepted (256^3 float32, declared = the cap) is decoded once before it is stored
        largest = tmp_path / "zeros_256.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((256, 256, 256), np.float32), np.eye(4)), str(largest))
        assert call(server, "PUT", "/datastore/image", {"image": "largest"}, files={"file": upload(largest)}) == (
            200,
            {"image": "largest"},
        )
        assert call(server, "DELETE", "/datastore/image", {"id": "largest"}) == (200, {})
    finally:
        stop.set()
        sampler.join()
    _, peak_after = _memory(pid)
    print(
        f"\nserver RSS idle {idle / GIB:.2f} GiB, sampled max {max(samples) / GIB:.2f} GiB over {len(samples)} samples, "
        f"high-water mark before/after {peak_before / GIB:.2f}/{peak_after / GIB:.2f} GiB"
    )
    assert max(samples) - idle < GIB
    assert peak_after <= max(peak_before, idle + GIB)  # the high-water mark never rose above idle + 1 GiB
    assert not {"zeros", "largest"} & listed(server)


def test_s3_output_grid_is_bounded_too(server, sandbox, models, tmp_path):
    if not models.restores:
        pytest.skip(f"no restoration bundle loads (serving {sorted(models.info)})")
    wide = tmp_path / "wide.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((600, 600, 2), np.float32), np.eye(4)), str(wide))
    refused(
        call(server, "POST", models.path(), fields={"params": json.dumps(models.fast())}, files={"file": upload(wide)}),
        400,
        "too large",
    )


# ---------------------------------------------------------------------------------------------
# S4: bounded work per request, a bounded queue, /info/ answers while inferences run
# ---------------------------------------------------------------------------------------------
def test_s4_one_request_cannot_ask_for_days_of_compute(server, sandbox, models):
    info = call(server, "GET", "/info/")[1]
    limits = info["medgen"]["limits"]
    assert (
        limits["max_work"] == 2e8
        and limits["max_voxels"] == 256**3
        and limits["max_upload_bytes"] == MAX_UPLOAD_MB * 2**20
    )
    medgen = models.info[models.main]["medgen"]
    max_steps = medgen["limits"]["steps"][1]
    if models.restores:
        options, what = (
            {"steps": max_steps, "num_samples": 16},
            f"steps {max_steps} x num_samples 16 x the 64 x 64 x 8 image",
        )
    else:
        options, what = models.fast(steps=max_steps, num_slices=64), f"steps {max_steps} x num_slices 64"
    refused(
        call(server, "POST", models.path(), {"image": "colin27_slices"}, fields={"params": json.dumps(options)}),
        400,
        "request too large",
        what,
        "at most 2e+08",
    )


def test_s4_info_answers_while_inferences_run_and_the_queue_is_bounded(server, sandbox, models):
    results = {}
    long = models.fast(steps=15, num_samples=2) if models.restores else models.fast(steps=200, num_slices=4)

    def infer(name, options):
        results[name] = call(
            server,
            "POST",
            models.path(),
            {"image": "colin27_slices", "output": "json"},
            fields={"params": json.dumps(options)},
        )

    long_job = threading.Thread(target=infer, args=("long", long))
    long_job.start()
    waiting = []
    try:
        deadline = time.time() + 120
        while call(server, "GET", "/info/", timeout=30)[1]["medgen"]["queue"]["running"] < 1:
            assert time.time() < deadline and long_job.is_alive(), "the inference never started"
            time.sleep(0.1)
        answers = []
        for _ in range(5):  # /info/ answers while the job runs (timings: scripts/monailabel_latency.py)
            status, info = call(server, "GET", "/info/", timeout=30)
            answers.append((status, info["medgen"]["queue"]["running"]))
        assert all(status == 200 for status, _ in answers) and any(running == 1 for _, running in answers), answers
        waiting += [threading.Thread(target=infer, args=(f"wait{k}", models.fast())) for k in range(2)]
        for t in waiting:
            t.start()
        while call(server, "GET", "/info/", timeout=30)[1]["medgen"]["queue"]["waiting"] < 2:
            assert time.time() < deadline and long_job.is_alive(), "the waiting jobs never queued"
            time.sleep(0.05)
        refused(
            call(
                server, "POST", models.path(), {"image": "colin27_slices"}, fields={"params": json.dumps(models.fast())}
            ),
            429,
            "the server is busy",
            "retry later",
        )
    finally:
        long_job.join()
        for t in waiting:
            t.join()
    assert {k: v[0] for k, v in results.items()} == {"long": 200, "wait0": 200, "wait1": 200}, results
    assert call(server, "GET", "/info/")[1]["medgen"]["queue"] == {
        "running": 0,
        "waiting": 0,
        "workers": 1,
        "max_waiting": 2,
    }


# ---------------------------------------------------------------------------------------------
# S5: uploads leave nothing behind
# ---------------------------------------------------------------------------------------------
def test_s5_uploads_are_removed_after_success_and_failure(server, sandbox, models, tmp_path):
    private = _private(sandbox)
    assert private.stat().st_mode & 0o777 == 0o700
    assert not sandbox["stale"].exists(), "the folder a killed server left was not removed at start"
    truncated = tmp_path / "truncated.nii"
    nib.save(nib.Nifti1Image(np.ones((64, 64, 8), np.float32), np.eye(4)), str(truncated))
    truncated.write_bytes(truncated.read_bytes()[:-1000])
    nan = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(np.full((64, 64, 8), np.nan, np.float32), np.eye(4)), str(nan))
    fast = {"params": json.dumps(models.fast())}
    requests = [
        (models.main, fast, {"file": upload(sandbox["slices_noisy"])}, 200),
        (models.main, fast, {"file": upload(truncated)}, 400),
        (models.main, fast, {"file": upload(nan)}, 400),
        (models.main, {"params": json.dumps({"steps": "many"})}, {"file": upload(sandbox["slices_noisy"])}, 400),
        (models.main, fast, {"file": upload(sandbox["slices_noisy"]), "label": upload(nan)}, 400),
    ]
    if models.inpaint:
        fast_inpaint = {"params": json.dumps(models.fast(models.inpaint))}
        requests += [
            (
                models.inpaint,
                fast_inpaint,
                {"file": upload(sandbox["slices_masked"]), "label": upload(sandbox["slices_mask"])},
                200,
            ),
            (models.inpaint, fast_inpaint, {"file": upload(sandbox["slices_masked"]), "label": upload(nan)}, 400),
        ]
    for model, fields, files, status in requests:
        got, body = call(server, "POST", models.path(model), {"output": "json"}, fields=fields, files=files)
        assert got == status, body
        assert list(private.iterdir()) == []
    refused(
        call(server, "POST", models.path(), fields={"params": "{}"}, files={"file": upload(truncated)}),
        400,
        "truncated",
    )
    refused(call(server, "PUT", "/datastore/image", {"image": "nan"}, files={"file": upload(nan)}), 400, "NaN")
    assert "nan" not in listed(server) and not (sandbox["studies"] / "nan.nii.gz").exists()


# ---------------------------------------------------------------------------------------------
# S6: datastore uploads are checked
# ---------------------------------------------------------------------------------------------
def test_s6_datastore_uploads_are_checked(server, sandbox, tmp_path):
    before = listed(server)
    studies_before = sorted(p.name for p in sandbox["studies"].iterdir())
    rng = np.random.default_rng(0)
    noise = rng.bytes((MAX_UPLOAD_MB - 8) * 2**20)  # random bytes under the byte cap: refused by type
    refused(
        call(server, "PUT", "/datastore/image", {"image": "noise"}, files={"file": ("noise.nii.gz", noise)}),
        400,
        "not a NIfTI",
        "NRRD",
    )
    big = rng.bytes((MAX_UPLOAD_MB + 8) * 2**20)  # over the byte cap: refused by its Content-Length
    refused(
        call(server, "PUT", "/datastore/image", {"image": "big"}, files={"file": ("big.nii.gz", big)}),
        413,
        "the server accepts at most",
    )
    fake_gz = gzip.compress(b"#!/bin/sh\necho hello\n")
    refused(
        call(server, "PUT", "/datastore/image", {"image": "script"}, files={"file": ("run.sh", fake_gz)}),
        400,
        "not a gzipped NIfTI",
    )
    detached = (
        b"NRRD0004\ntype: float\ndimension: 3\nsizes: 4 4 4\nencoding: raw\ndata file: "
        + str(sandbox["victim"]).encode()
        + b"\n\n"
    )
    refused(
        call(server, "PUT", "/datastore/image", {"image": "detached"}, files={"file": ("x.nrrd", detached)}),
        400,
        "separate data file",
    )
    mhd = f"ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_FLOAT\nElementDataFile = {sandbox['victim']}\n"
    refused(
        call(server, "PUT", "/datastore/image", {"image": "mhd"}, files={"file": ("x.mha", mhd.encode())}),
        400,
        "separate data file",
    )
    pair = bytearray(348)
    pair[:4] = (348).to_bytes(4, "little")
    pair[344:348] = b"ni1\x00"
    refused(
        call(server, "PUT", "/datastore/image", {"image": "pair"}, files={"file": ("x.hdr", bytes(pair))}),
        400,
        "NIfTI pair",
    )
    other_grid = tmp_path / "other_grid.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 8), np.float32), np.eye(4)), str(other_grid))
    refused(
        call(
            server,
            "PUT",
            "/datastore/label",
            {"image": "colin27_slices", "tag": "final"},
            files={"label": upload(other_grid)},
        ),
        400,
        "not the image's",
    )
    refused(
        call(server, "PUT", "/datastore/image", {"image": "nofile"}, fields={"params": "{}"}), 400, "upload the image"
    )
    assert listed(server) == before
    assert sorted(p.name for p in sandbox["studies"].iterdir()) == studies_before


# ---------------------------------------------------------------------------------------------
# S7: every client error is a 4xx with a message
# ---------------------------------------------------------------------------------------------
def test_s7_malformed_requests_get_4xx_with_a_message(server, sandbox, models):
    image = {"file": upload(sandbox["slices_noisy"])}
    infer = models.path()
    refused(
        call(server, "POST", infer, fields={"params": "{bad json"}, files=image),
        400,
        "params must be a JSON object",
        "not valid JSON",
    )
    refused(call(server, "POST", infer, fields={"params": "[1, 2]"}, files=image), 400, "got a JSON list")
    refused(
        call(server, "POST", infer, fields={"params": "{}"}),
        400,
        "give the id of a datastore image",
        "upload the image",
    )
    refused(call(server, "POST", infer, body=b""), 400, "give the id of a datastore image")
    refused(
        call(server, "POST", infer, {"image": "colin27_slices"}, fields={"params": "{}"}, files=image), 400, "not both"
    )
    refused(
        call(server, "POST", infer, {"image": "colin27_slices", "output": "dicom_seg"}), 400, "output must be one of"
    )
    refused(
        call(server, "POST", infer, {"image": "colin27_slices"}, fields={"params": json.dumps({"steps": 0})}),
        400,
        "steps must be an integer",
    )
    refused(
        call(server, "POST", infer, {"image": "colin27_slices"}, fields={"params": json.dumps({"sampler": ["x"]})}),
        400,
        "sampler must be one of",
    )
    refused(
        call(server, "POST", "/infer/no_such_model", {"image": "colin27_slices"}), 404, "is not served", models.main
    )
    refused(
        call(
            server,
            "POST",
            infer,
            body=b"--xyz\r\nnot a multipart body",
            headers={"Content-Type": "multipart/form-data; boundary=xyz"},
        ),
        400,
    )
    refused(
        call(server, "POST", infer, {"image": "colin27_slices"}, files={"params": ("p.json", b"{}")}),
        400,
        "params must be a form field of text",
    )
    refused(
        call(server, "POST", "/activelearning/random", body=b"{not json", headers={"Content-Type": "application/json"}),
        400,
        "not valid JSON",
    )
    refused(call(server, "POST", "/activelearning/no_such_strategy", body=b"{}"), 404, "strategies")
    refused(
        call(server, "PUT", "/datastore/image/info", {"image": "colin27_slices"}, fields={"info": "[]"}),
        400,
        "info must be a JSON object",
    )
    refused(call(server, "GET", "/datastore/image/info", {"image": "no_such_image"}), 404, "no image")
    refused(call(server, "GET", "/datastore/image"), 400, "image must be a name")
    refused(call(server, "GET", "/datastore/", {"output": "bogus"}), 400, "output must be one of")
    status, info = call(server, "GET", "/datastore/image/info", {"image": "colin27_slices"})
    assert status == 200 and "path" not in info  # no server path in an answer
    status, body = call(
        server, "POST", "/activelearning/random", body=b"{}", headers={"Content-Type": "application/json"}
    )
    assert status == 200 and "path" not in body and body["id"] in listed(server)


# ---------------------------------------------------------------------------------------------
# without the server
# ---------------------------------------------------------------------------------------------
def test_names_are_checked():
    for good in ("colin27_slices", "scan 1 (copy)", "a.b", "x" * 128, "final", "synthetic_vdm_11"):
        assert confine.check_name(good) == good
    for bad in (
        "",
        "..",
        ".",
        "../x",
        "/etc/passwd",
        "a/b",
        "a\\b",
        "C:x",
        ".hidden",
        "-rf",
        " x",
        "x ",
        "x.",
        "x" * 129,
        "a\x00b",
        "a\nb",
        None,
        3,
        ["a"],
    ):
        with pytest.raises(served.RequestError, match="never a path") as e:
            confine.check_name(bad, "image")
        assert e.value.status_code == 400


def _nifti_bytes(shape, dtype=np.float32, gz=True, tmp_path=None) -> bytes:
    path = tmp_path / ("x.nii.gz" if gz else "x.nii")
    nib.save(nib.Nifti1Image(np.zeros(shape, dtype), np.eye(4)), str(path))
    return path.read_bytes()


def test_headers_are_read_before_decoding(tmp_path):
    for gz in (True, False):
        head = _nifti_bytes((5, 6, 7), gz=gz, tmp_path=tmp_path)
        header = confine.sniff_image(head)
        assert (header.kind, header.shape, header.suffix) == ("nifti", (5, 6, 7), ".nii.gz" if gz else ".nii")
    two = tmp_path / "two.nii"
    nib.save(nib.Nifti2Image(np.zeros((3, 4, 5), np.int16), np.eye(4)), str(two))
    assert confine.sniff_image(two.read_bytes()).shape == (3, 4, 5)
    with pytest.raises(served.RequestError, match="800 x 800 x 800") as e:
        big = bytearray(gzip.decompress(_nifti_bytes((2, 2, 2), tmp_path=tmp_path))[:352])
        big[40:48] = np.array([3, 800, 800, 800], "<i2").tobytes()
        confine.check_declared_size(confine.sniff_image(gzip.compress(bytes(big))), "image", 256**3)
    assert e.value.status_code == 413
    nrrd = confine.sniff_image(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 10 20 30\nencoding: gzip\n\n\x1f\x8b")
    assert (nrrd.kind, nrrd.shape, nrrd.bytes_per_voxel) == ("nrrd", (10, 20, 30), 2)
    mha = confine.sniff_image(
        b"ObjectType = Image\nNDims = 3\nDimSize = 4 5 6\nElementNumberOfChannels = 2\n"
        b"ElementType = MET_FLOAT\nElementDataFile = LOCAL\n" + b"\0" * 16
    )
    assert (mha.kind, mha.shape) == ("mha", (4, 5, 6, 2))
    for head, text in [
        (b"\x89PNG\r\n", "not a NIfTI"),
        (gzip.compress(b"hello"), "not a gzipped NIfTI"),
        (b"NRRD0004\nsizes: 4 4\ndata file: /etc/x\n\n", "separate data file"),
        (b"NRRD0004\nsizes: 4 -4\n\n", "invalid dimensions"),
        (b"ObjectType = Image\nDimSize = 4 4\nElementDataFile = /etc/x\n", "separate data file"),
    ]:
        with pytest.raises(served.RequestError, match=text):
            confine.sniff_image(head)
    truncated = tmp_path / "t.nii"
    truncated.write_bytes(_nifti_bytes((8, 8, 8), gz=False, tmp_path=tmp_path)[:-10])
    with pytest.raises(served.RequestError, match="truncated"):
        confine.inspect_image_file(truncated)


def test_uploads_are_copied_with_a_byte_cap_and_stale_folders_removed(tmp_path):
    import io

    folder = confine.UploadFolder(tmp_path)
    assert folder.path.stat().st_mode & 0o777 == 0o700 and folder.contains(folder.new_path(".nii"))
    target = folder.new_path(".bin")
    assert confine.copy_limited(io.BytesIO(b"x" * 100), target, 100) == 100
    assert os.stat(target).st_mode & 0o777 == 0o600
    with pytest.raises(served.RequestError, match="larger than 99 bytes") as e:
        confine.copy_limited(io.BytesIO(b"x" * 100), folder.new_path(".bin"), 99)
    assert e.value.status_code == 413 and folder.files() == [os.path.basename(target)]
    folder.remove(target)
    stale = tmp_path / f"{confine.UploadFolder.PREFIX}{_dead_pid()}_x"
    stale.mkdir()
    again = confine.UploadFolder(tmp_path)
    assert not stale.exists() and folder.path.exists() and again.removed_stale == [str(stale)]
    folder.close()
    again.close()
    assert not folder.path.exists() and not again.path.exists()


def test_params_are_the_model_options_only():
    assert confine.parse_params('{"steps": 3, "client_id": "slicer"}', ["steps"]) == {"steps": 3}
    assert confine.parse_params("", ["steps"]) == {} and confine.parse_params(None, ["steps"]) == {}
    for text, message in [
        ("{", "not valid JSON"),
        ("[]", "got a JSON list"),
        ('"x"', "got a JSON str"),
        ('{"image": "/etc/passwd"}', "['image'] is not an option"),
        ('{"label": "x", "model": "y"}', "['label', 'model'] are not options"),
    ]:
        with pytest.raises(served.RequestError, match=message.replace("[", r"\[").replace("]", r"\]")):
            confine.parse_params(text, ["steps"])


def test_the_job_queue_is_bounded():
    queue = confine.JobQueue(workers=1, max_waiting=1)
    release = threading.Event()
    running = queue.submit(release.wait, 30)
    waiting = queue.submit(lambda: "done")
    with pytest.raises(served.RequestError, match="the server is busy") as e:
        queue.submit(lambda: None)
    assert e.value.status_code == 429
    assert queue.status()["waiting"] + queue.status()["running"] == 2
    release.set()
    assert running.result(10) is True and waiting.result(10) == "done"
    assert queue.submit(lambda: 7).result(10) == 7
    queue.shutdown()


def test_limits_from_conf():
    limits = confine.ServerLimits.from_conf(
        {"max_voxels": "1000", "max_upload_mb": "2", "max_work": "1e6", "max_waiting": "0"}
    )
    assert limits.describe() == {"max_voxels": 1000, "max_upload_bytes": 2 * 2**20, "max_work": 1e6, "max_waiting": 0}
    assert confine.ServerLimits.from_conf({}).describe()["max_work"] == 2e8
    with pytest.raises(ValueError, match="--conf max_work must be a number"):
        confine.ServerLimits.from_conf({"max_work": "lots"})
    with pytest.raises(ValueError, match="--conf max_voxels must be >= 1"):
        confine.ServerLimits.from_conf({"max_voxels": "0"})


def test_work_estimate_names_what_makes_it_large():
    base = dict(name="m", root=Path("."), version="0", network=None, inferer=None, max_steps=2000)
    sr = served.ServedModel(task="sr", spatial_dims=2, factor=4.0, **base)
    options = sr.parse_options({"steps": 10, "num_samples": 2})
    assert sr.work(options, (16, 16, 8)) == 10 * 2 * 64 * 64 * 8
    with pytest.raises(served.RequestError, match=r"steps 10 x num_samples 2 x the 16 x 16 x 8 image at factor 4.0"):
        sr.check_work(options, (16, 16, 8), 1e5)
    volume = served.ServedModel(
        task="sr", spatial_dims=3, factor=[1.0, 1.0, 4.0], patch_size=(64, 64, 64), overlap=0.25, **base
    )
    # 100 x 48 x 32 at (1, 1, 4) -> 100 x 48 x 128: two patches along x (interval 48), one along y, three along z
    assert volume.work(volume.parse_options({"steps": 1, "factor": "1,1,4"}), (100, 48, 32)) == 2 * 64 * 48 * 3 * 64
    gen = served.ServedModel(
        task="generate", spatial_dims=2, image_size=64, class_names=["a", "b"], guidance_scale=2.0, **base
    )
    assert gen.work(gen.parse_options({"steps": 5, "num_slices": 4}), None) == 5 * 4 * 64 * 64 * 2
    assert gen.work(gen.parse_options({"steps": 5, "num_slices": 4, "guidance": 0}), None) == 5 * 4 * 64 * 64
