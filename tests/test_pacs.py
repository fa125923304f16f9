"""The PACS round trip on a real Orthanc: a private Orthanc with its DICOMweb plugin on 127.0.0.1 (its own storage,
a free port, a generated user; :class:`monai_medgen.dicomweb.OrthancServer`) gets a noisy Colin27 MR series; the
committed ``cddpm_denoising_2d`` restores it through both paths, and each derived series is read back from Orthanc:

- ``monai-medgen restore --dicomweb URL --study-uid S --series-uid T`` (QIDO-RS, WADO-RS, STOW-RS);
- the MONAI Label app started with ``--studies <Orthanc's DICOMweb root>``: ``/infer?image=<SeriesInstanceUID>``.

Checked in Orthanc: the same study, a new SeriesInstanceUID and new SOPInstanceUIDs, the input's geometry
(ImagePositionPatient of every slice, ImageOrientationPatient, PixelSpacing, SliceThickness, rows and columns),
ImageType DERIVED, the synthetic marker (DerivationDescription, SeriesDescription), references to the input's
instances, and the input series unchanged.  The derived series' tags are printed (``pytest -s`` shows them).
Bad input (unreachable server, unknown study or series, refused credentials, ...) gets one line naming the option.

The Orthanc tests are skipped only when Orthanc is not installed (``apt-get install orthanc orthanc-dicomweb``, as
``.ci/run`` does) or Colin27 is missing (``mricron-data``); the MONAI Label part needs MONAI Label's environment as
tests/test_monailabel.py does.  The client's URL, UID and multipart handling are tested without a server at the end.
"""

import importlib.util
import json
import os
import re
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_medgen import cli, dicomweb, io

REPO = Path(__file__).resolve().parents[1]
COLIN = "/usr/share/mricron/templates/ch2bet.nii.gz"
BUNDLE = REPO / "bundles" / "cddpm_denoising_2d"
ORTHANC, PLUGIN = dicomweb.find_orthanc()
needs_orthanc = [
    pytest.mark.skipif(ORTHANC is None, reason="Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)"),
    pytest.mark.skipif(
        not os.path.isfile(COLIN), reason="Colin27 template (mricron-data: ch2bet.nii.gz) not installed"
    ),
]


def orthanc_test(fn):
    for mark in needs_orthanc:
        fn = mark(fn)
    return fn


FAST = ["--steps", "2", "--device", "cpu", "--adapt-steps", "0"]


def _load_script():
    spec = importlib.util.spec_from_file_location("pacs_roundtrip", REPO / "scripts" / "pacs_roundtrip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PACS = _load_script()  # scripts/pacs_roundtrip.py: the Colin27 series, the tags read back, the checks


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    assert PLUGIN is not None, "Orthanc's DICOMweb plugin is not installed: apt-get install orthanc-dicomweb"
    server = dicomweb.OrthancServer(tmp_path_factory.mktemp("orthanc"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
    assert server.process.poll() is not None, "Orthanc still runs after stop()"


@pytest.fixture(scope="module")
def series(orthanc, tmp_path_factory):
    """A noisy Colin27 MR series (4 axial slices, 2 mm in-plane, 4 mm apart) stored in Orthanc."""
    folder = tmp_path_factory.mktemp("colin27") / "series"
    study, series_uid = PACS.write_colin27_series(folder, noise=0.05)
    client = orthanc.client()
    stored = client.store_instances(sorted(folder.glob("*.dcm")))
    assert (stored.study_uid, stored.series_uid) == (study, series_uid) and len(stored.sop_instance_uids) == 4
    return {"study": study, "series": series_uid, "folder": folder, "tags": PACS.series_tags(client, study, series_uid)}


def _new_series(orthanc, series, before=()) -> list:
    return PACS.derived_series_of(orthanc.client(), series["study"], series["series"], set(before))


def _check_in_orthanc(orthanc, series, derived_uid, tmp_path, title):
    """The derived series as Orthanc holds it: tags checked and printed, pixels read back on the input's grid."""
    client = orthanc.client()
    tags = PACS.series_tags(client, series["study"], derived_uid)
    PACS.print_tags(f"{title}: derived series read back from Orthanc", tags)
    assert PACS.check_derived(series["tags"], tags, BUNDLE.name) == []
    assert (
        tags["ImageType"] == ["DERIVED", "SECONDARY"] and tags["SeriesNumber"] == series["tags"]["SeriesNumber"] + 1000
    )
    # the pixels, downloaded again: the input's grid and world geometry, marked synthetic, this brain
    back = tmp_path / f"{title}_derived"
    client.retrieve_series(series["study"], derived_uid, back)
    restored, given = io.read_image(back), io.read_image(series["folder"])
    assert tuple(restored.shape) == tuple(given.shape) == (1, 90, 108, 4)
    np.testing.assert_allclose(restored.affine.numpy(), given.affine.numpy(), atol=1e-4)
    assert io.is_synthetic(back)
    assert np.corrcoef(restored.numpy().ravel(), given.numpy().ravel())[0, 1] > 0.9
    # the input series is as it was
    assert PACS.series_tags(client, series["study"], series["series"]) == series["tags"]


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------
@orthanc_test
def test_cli_restores_a_pacs_series_and_stores_the_derived_series(orthanc, series, monkeypatch, capsys, tmp_path):
    before = _new_series(orthanc, series)
    monkeypatch.setenv(dicomweb.PASSWORD_ENV, orthanc.password)
    url = orthanc.dicomweb_url.replace("://", f"://{orthanc.username}@")  # the password from the environment
    rc = cli.main(
        [
            "restore",
            "--bundle",
            str(BUNDLE),
            "--dicomweb",
            url,
            "--study-uid",
            series["study"],
            "--series-uid",
            series["series"],
            *FAST,
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    new = _new_series(orthanc, series, before)
    assert len(new) == 1, new
    assert out.strip().splitlines()[-1] == f"{orthanc.dicomweb_url}/studies/{series['study']}/series/{new[0]}"
    assert f"stored the derived series {new[0]} (4 instance(s), marked synthetic)" in err
    with capsys.disabled():
        _check_in_orthanc(orthanc, series, new[0], tmp_path, "monai-medgen restore --dicomweb")


@orthanc_test
def test_cli_writes_a_pacs_series_to_local_files_with_output(orthanc, series, monkeypatch, tmp_path):
    before = _new_series(orthanc, series)
    monkeypatch.setenv(dicomweb.PASSWORD_ENV, orthanc.password)
    url = orthanc.dicomweb_url.replace("://", f"://{orthanc.username}@")
    out = tmp_path / "restored.nii.gz"
    assert (
        cli.main(
            [
                "restore",
                "--bundle",
                str(BUNDLE),
                "--dicomweb",
                url,
                "--series-uid",
                series["series"],
                "--output",
                str(out),
                *FAST,
            ]
        )
        == 0
    )  # the study found by the server
    np.testing.assert_allclose(nib.load(str(out)).affine, io.read_image(series["folder"]).affine.numpy(), atol=1e-4)
    prov = io.read_provenance(out)
    assert prov.extra["dicomweb"] == {
        "url": orthanc.dicomweb_url,
        "study_uid": series["study"],
        "series_uid": series["series"],
    }
    assert _new_series(orthanc, series, before) == []  # nothing stored on the server


@orthanc_test
@pytest.mark.parametrize(
    "args, fragment",
    [
        (
            ["--dicomweb", "{unreachable}", "--series-uid", "{series}"],
            "--dicomweb {unreachable}: cannot reach the server",
        ),
        (["--dicomweb", "{user_root}/no-such-root", "--series-uid", "{series}"], "HTTP 404"),
        (["--dicomweb", "{root}", "--series-uid", "{series}"], "HTTP 401"),  # no user
        (["--dicomweb", "{wrong_user}", "--series-uid", "{series}"], "refused the user name or password"),
        (["--dicomweb", "{user_root}", "--series-uid", "1.2.3.4"], "--series-uid 1.2.3.4: no series with"),
        (
            ["--dicomweb", "{user_root}", "--study-uid", "1.2.3", "--series-uid", "{series}"],
            "--study-uid 1.2.3: no study",
        ),
        (["--dicomweb", "{user_root}", "--series-uid", "../etc/passwd"], "--series-uid must be a DICOM UID"),
        (["--dicomweb", "{user_root}"], "--dicomweb needs --series-uid"),
        (
            ["--dicomweb", "ftp://127.0.0.1/dicom-web", "--series-uid", "{series}"],
            "--dicomweb must be the http(s) address",
        ),
        (
            ["--dicomweb", "{user_root}", "--series-uid", "{series}", "--samples", "2", "--uncertainty", "{tmp}/u"],
            "--uncertainty with --dicomweb needs --output",
        ),
        (
            ["--input", "{tmp}/x.nii.gz", "--study-uid", "{series}", "--output", "{tmp}/o.nii.gz"],
            "--study-uid applies to --dicomweb",
        ),
        (["--input", "{tmp}/x.nii.gz"], "--output is required"),
        (
            ["--dicomweb", "{user_root}", "--series-uid", "{series}", "--bundle", "{sr_bundle}", "--factor", "2"],
            "a derived series stored on the server keeps the input series' grid",
        ),
    ],
)
def test_cli_pacs_errors_name_the_option(orthanc, series, monkeypatch, capsys, tmp_path, args, fragment):
    monkeypatch.setenv(dicomweb.PASSWORD_ENV, "wrong" if "{wrong_user}" in args else orthanc.password)
    user_root = orthanc.dicomweb_url.replace("://", f"://{orthanc.username}@")
    names = {
        "unreachable": f"http://127.0.0.1:{dicomweb._free_port()}/dicom-web",
        "root": orthanc.dicomweb_url,
        "user_root": user_root,
        "wrong_user": user_root,
        "series": series["series"],
        "tmp": str(tmp_path),
        "sr_bundle": str(REPO / "bundles" / "cddpm_super_resolution_2d"),
    }
    argv = [a.format(**names) for a in args]
    bundle = [] if "--bundle" in argv else ["--bundle", str(BUNDLE)]
    before = _new_series(orthanc, series)
    rc = cli.main(["restore", *bundle, *argv, *FAST])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("monai-medgen restore: error: ")]
    assert rc == 2 and len(lines) == 1, err
    assert fragment.format(**names) in lines[0], lines[0]
    assert orthanc.password not in err
    assert _new_series(orthanc, series, before) == []


def test_input_and_dicomweb_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(
            ["restore", "--bundle", str(BUNDLE), "--input", "a.nii.gz", "--dicomweb", "http://127.0.0.1/dicom-web"]
        )
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# MONAI Label on the same Orthanc
# ---------------------------------------------------------------------------------------------
def _multipart(fields: dict) -> tuple[bytes, str]:
    """A multipart/form-data body: ``{name: text}`` or ``{name: (filename, bytes)}``."""
    boundary = uuid.uuid4().hex
    body = b""
    for name, value in fields.items():
        if isinstance(value, tuple):
            head = (
                f'Content-Disposition: form-data; name="{name}"; filename="{value[0]}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            )
            data = value[1]
        else:
            head, data = f'Content-Disposition: form-data; name="{name}"\r\n\r\n', value.encode()
        body += f"--{boundary}\r\n{head}".encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _call(method: str, url: str, fields: dict | None = None, timeout: float = 300) -> tuple[int, dict]:
    body, content_type = _multipart(fields) if fields is not None else (None, None)
    request = urllib.request.Request(
        url, data=body, method=method, headers={"Content-Type": content_type} if content_type else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@orthanc_test
def test_monailabel_on_orthanc_restores_a_series_and_stores_it_back(orthanc, series, capsys, tmp_path):
    from monai_medgen.apps.monailabel.local import MONAILabelServer

    env = {
        "MONAI_LABEL_DATASTORE_USERNAME": orthanc.username,
        "MONAI_LABEL_DATASTORE_PASSWORD": orthanc.password,
        "OMP_NUM_THREADS": "1",
    }
    models = f"{BUNDLE.name},cddpm_super_resolution_2d"
    server = MONAILabelServer(
        orthanc.dicomweb_url,
        conf={"bundles": str(REPO / "bundles"), "models": models},
        log_path=tmp_path / "monailabel_server.log",
        env=env,
    )
    server.start()
    try:
        status, stats = _call("GET", f"{server.url}/datastore/?output=stats")
        assert status == 200 and stats["total"] >= 1 and stats["dicomweb"] == orthanc.dicomweb_url, stats
        # the series as a client (3D Slicer) downloads it through the app: the input's grid and values
        with urllib.request.urlopen(f"{server.url}/datastore/image?image={series['series']}", timeout=300) as answer:
            (tmp_path / "from_app.nii.gz").write_bytes(answer.read())
        given = io.read_image(series["folder"])
        img = nib.load(str(tmp_path / "from_app.nii.gz"))
        np.testing.assert_allclose(img.affine, given.affine.numpy(), atol=1e-4)
        np.testing.assert_allclose(np.asarray(img.dataobj), given[0].numpy(), atol=1e-3)

        before = _new_series(orthanc, series)
        params = json.dumps({"sampler": "dpm++", "steps": 2, "seed": 0, "adapt_steps": 0})
        status, answer = _call(
            "POST", f"{server.url}/infer/{BUNDLE.name}?image={series['series']}&output=json", {"params": params}
        )
        assert status == 200, answer
        pacs = answer["medgen"]["pacs"]
        new = _new_series(orthanc, series, before)
        assert pacs["stored"] is True and [pacs["SeriesInstanceUID"]] == new, (pacs, new)
        assert pacs["StudyInstanceUID"] == series["study"] and pacs["instances"] == 4
        assert answer["medgen"]["provenance"]["synthetic"] is True
        with capsys.disabled():
            _check_in_orthanc(orthanc, series, new[0], tmp_path, "MONAI Label /infer on --studies <Orthanc>")

        # super-resolution onto a finer grid: the volume is answered, nothing is stored (a derived series keeps the grid)
        status, answer = _call(
            "POST",
            f"{server.url}/infer/cddpm_super_resolution_2d?image={series['series']}&output=json",
            {"params": json.dumps({"steps": 1, "factor": 1.25})},
        )
        assert status == 200 and answer["medgen"]["shape"] == [112, 135, 4], answer
        assert answer["medgen"]["pacs"]["stored"] is False and "grid" in answer["medgen"]["pacs"]["reason"]

        # bad requests: an unknown series, a path as id, an upload into the PACS through the app
        status, answer = _call("POST", f"{server.url}/infer/{BUNDLE.name}?image=1.2.3.4", {"params": params})
        assert status == 404 and "no series '1.2.3.4'" in answer["detail"], answer
        status, answer = _call("POST", f"{server.url}/infer/{BUNDLE.name}?image=..%2Fetc", {"params": params})
        assert status == 400 and "never a path" in answer["detail"], answer
        upload = tmp_path / "upload.nii.gz"
        nib.save(nib.Nifti1Image(np.ones((16, 16, 2), np.float32), np.eye(4)), str(upload))
        status, answer = _call(
            "PUT", f"{server.url}/datastore/image?image=mine", {"file": ("upload.nii.gz", upload.read_bytes())}
        )
        assert status == 400 and "DICOMweb server" in answer["detail"], answer
        assert _new_series(orthanc, series, before) == new  # nothing else stored
    except BaseException:
        print(server.log_tail())
        raise
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# the client without a server
# ---------------------------------------------------------------------------------------------
def test_uids_and_addresses_are_checked(monkeypatch):
    assert dicomweb.check_uid("1.2.826.0.1.3680043.8.498.1", "--series-uid") == "1.2.826.0.1.3680043.8.498.1"
    for bad in ("", "1..2", "1.2.", "a.b", "../x", "1" * 65, None, 12):
        with pytest.raises(ValueError, match="--series-uid must be a DICOM UID"):
            dicomweb.check_uid(bad, "--series-uid")
    monkeypatch.setenv(dicomweb.PASSWORD_ENV, "from-env")
    c = dicomweb.DICOMwebClient("http://alice@127.0.0.1:8042/dicom-web/", what="--dicomweb")
    assert c.url == "http://127.0.0.1:8042/dicom-web" and c.username == "alice"  # no credentials in messages
    assert "from-env" not in repr(c) and "alice" in repr(c)
    c = dicomweb.DICOMwebClient("https://bob:s%40cret@pacs.example:443/dicomweb")
    assert c.url == "https://pacs.example:443/dicomweb" and c._auth.startswith("Basic ")
    assert dicomweb.DICOMwebClient("http://127.0.0.1:8042/dicom-web")._auth is None
    for bad, fragment in [
        ("ftp://h/dicom-web", "http(s) address"),
        ("127.0.0.1:8042", "http(s) address"),
        ("http:///dicom-web", "http(s) address"),
        ("http://h/dicom-web?x=1", "without a query"),
        ("http://h:99999/dicom-web", "invalid port"),
    ]:
        with pytest.raises(ValueError, match=re.escape(fragment)):
            dicomweb.DICOMwebClient(bad, what="--dicomweb")


def test_unreachable_server_names_the_address():
    c = dicomweb.DICOMwebClient(f"http://127.0.0.1:{dicomweb._free_port()}/dicom-web", what="--studies", timeout=5)
    with pytest.raises(dicomweb.DICOMwebError, match=r"--studies http://127\.0\.0\.1:\d+/dicom-web: cannot reach"):
        c.find_series("1.2.3")


def test_multipart_related_parts():
    body = (
        b"preamble\r\n--XyZ\r\nContent-Type: application/dicom\r\n\r\nfirst\r\n--XyZ \r\n"
        b"Content-Type: application/dicom\r\nContent-Location: /x\r\n\r\nsec\r\nond\r\n--XyZ--\r\nepilogue"
    )
    parts = dicomweb.parse_multipart_related(body, 'multipart/related; type="application/dicom"; boundary="XyZ"')
    assert [p[1] for p in parts] == [b"first", b"sec\r\nond"]
    assert parts[1][0] == {"content-type": "application/dicom", "content-location": "/x"}
    with pytest.raises(ValueError, match="no boundary"):
        dicomweb.parse_multipart_related(body, "application/dicom")
    with pytest.raises(ValueError, match="holds no part"):
        dicomweb.parse_multipart_related(b"nothing here", "multipart/related; boundary=XyZ")
