"""A PACS round trip: a Colin27 MR series into Orthanc, restored from there by ``monai-medgen restore --dicomweb``,
and the derived series read back from Orthanc with the tags that say what it is.

::

    sudo apt-get install orthanc orthanc-dicomweb mricron-data
    python scripts/pacs_roundtrip.py                                    # a private Orthanc on 127.0.0.1, removed after
    python scripts/pacs_roundtrip.py --dicomweb http://127.0.0.1:8042/dicom-web     # an Orthanc that runs already

Without ``--dicomweb`` a private Orthanc (:class:`monai_medgen.dicomweb.OrthancServer`: its own storage in a
temporary folder, a free port, a generated user) runs for the duration.  The series is a few axial slices of the
held-out Colin27 brain at 2 mm in-plane with Gaussian noise (``--noise``), stored as an MR series of 16-bit slices
(STOW-RS); ``monai-medgen restore`` then reads it (QIDO-RS, WADO-RS), restores it with ``--bundle`` and stores the
derived series into the same study (STOW-RS).  The script prints the derived series' tags as Orthanc returns them
(WADO-RS metadata) next to the input's, and exits with status 1 if any check fails (new UIDs, same study and
geometry, ImageType DERIVED, "synthetic" in the DerivationDescription).

``tests/test_pacs.py`` uses :func:`write_colin27_series`, :func:`series_tags` and :func:`check_derived`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: the tags printed for the input and the derived series
TAGS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "Modality",
    "ImageType",
    "DerivationDescription",
    "Rows",
    "Columns",
    "PixelSpacing",
    "SliceThickness",
    "ImageOrientationPatient",
)


def write_colin27_series(
    folder: str | os.PathLike,
    num_slices: int = 4,
    in_plane: int = 2,
    slice_step: int = 4,
    noise: float = 0.0,
    seed: int = 0,
) -> tuple[str, str]:
    """Axial slices of Colin27 as an MR DICOM series (uint16, one file per slice, Explicit VR Little Endian).

    Args:
        folder: new folder for the files.
        num_slices: slices, centred on the brain.
        in_plane: in-plane downsampling (mean over ``in_plane`` x ``in_plane`` voxels of the 1 mm template).
        slice_step: distance between slices in 1 mm voxels.
        noise: Gaussian noise, as a fraction of the 99.5th percentile of the brain.
        seed: seed of the noise.

    Returns:
        (StudyInstanceUID, SeriesInstanceUID).
    """
    from pydicom.uid import generate_uid

    from monai_medgen import io
    from monai_medgen.data import load_colin27, scale_intensity

    vol, affine = load_colin27()
    vol = scale_intensity(vol)
    centre = int(np.mean(np.nonzero(vol.sum(axis=(0, 1)))[0]))
    zs = centre + slice_step * (np.arange(num_slices) - (num_slices - 1) / 2)
    zs = np.round(zs).astype(int)
    nx, ny = (vol.shape[0] // in_plane) * in_plane, (vol.shape[1] // in_plane) * in_plane
    block = vol[:nx, :ny, zs].reshape(nx // in_plane, in_plane, ny // in_plane, in_plane, num_slices).mean(axis=(1, 3))
    if noise > 0:
        block = block + np.random.default_rng(seed).normal(0, noise, block.shape)
    stored = np.rint(np.clip(block, 0, None) * 1000).astype(np.uint16)  # (columns, rows, slices)

    a = np.asarray(affine, dtype=np.float64)
    ras = np.eye(4)
    ras[:3, :2] = a[:3, :2] * in_plane
    ras[:3, 2] = a[:3, 2] * slice_step
    ras[:3, 3] = a[:3, :3] @ np.array([(in_plane - 1) / 2, (in_plane - 1) / 2, zs[0]]) + a[:3, 3]
    lps = ras.copy()
    lps[:2] *= -1

    folder = Path(folder)
    folder.mkdir(parents=True)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    for k in range(num_slices):
        ds = io.new_mr_instance(study, series)
        ds.Modality, ds.PatientID, ds.PatientName = "MR", "COLIN27", "Colin27^Template"
        ds.StudyDescription, ds.StudyID, ds.AccessionNumber = "monai_medgen PACS round trip", "1", ""
        ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = "T1 Colin27 (noisy)", 3, k + 1
        ds.FrameOfReferenceUID = frame_of_reference
        io.set_mr_slice(ds, lps, k, stored[:, :, k], bits_stored=16)
        path = str(folder / f"IM_{k + 1:04d}.dcm")
        try:
            ds.save_as(path, enforce_file_format=True)
        except TypeError:  # pydicom < 3
            ds.is_little_endian, ds.is_implicit_VR = True, False
            ds.save_as(path, write_like_original=False)
    return study, series


def _value(item: dict, keyword: str):
    from pydicom.datadict import tag_for_keyword

    values = (item.get(f"{tag_for_keyword(keyword):08X}") or {}).get("Value")
    if not values:
        return None
    if isinstance(values[0], dict) and "Alphabetic" in values[0]:  # person names
        values = [v.get("Alphabetic") for v in values]
    return (
        values[0]
        if len(values) == 1
        and keyword not in ("ImageType", "PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient")
        else values
    )


def series_tags(client, study_uid: str, series_uid: str) -> dict:
    """The tags of a series as the server returns them (WADO-RS metadata): :data:`TAGS` of its first instance, its
    SOPInstanceUIDs and each instance's ImagePositionPatient (in slice order), SourceImageSequence references."""
    meta = client.retrieve_series_metadata(study_uid, series_uid)
    meta.sort(key=lambda m: int(_value(m, "InstanceNumber") or 0))
    tags = {k: _value(meta[0], k) for k in TAGS}
    tags["instances"] = len(meta)
    tags["SOPInstanceUIDs"] = [_value(m, "SOPInstanceUID") for m in meta]
    tags["ImagePositionPatient"] = [_value(m, "ImagePositionPatient") for m in meta]
    sources = []
    for m in meta:
        seq = (m.get("00082112") or {}).get("Value") or []
        sources += [(s.get("00081155") or {}).get("Value", [None])[0] for s in seq]
    tags["SourceImageSequence"] = sources
    return tags


def derived_series_of(client, study_uid: str, input_series: str, before: set) -> list[str]:
    """SeriesInstanceUIDs in the study that are neither the input nor among ``before``."""
    from monai_medgen.dicomweb import SERIES_UID, dicom_json_value

    uids = [dicom_json_value(s, SERIES_UID) for s in client.search_series(study_uid)]
    return [u for u in uids if u and u != input_series and u not in before]


def check_derived(original: dict, derived: dict, model: str) -> list[str]:
    """What is wrong with ``derived`` as a derived series of ``original`` (both :func:`series_tags`); empty if
    nothing."""
    problems = []

    def need(ok, what):
        if not ok:
            problems.append(what)

    def floats(v):
        return np.asarray(v, dtype=np.float64) if v is not None else None

    need(derived["StudyInstanceUID"] == original["StudyInstanceUID"], "the same StudyInstanceUID")
    need(derived["SeriesInstanceUID"] != original["SeriesInstanceUID"], "a new SeriesInstanceUID")
    need(set(derived["SOPInstanceUIDs"]).isdisjoint(original["SOPInstanceUIDs"]), "new SOPInstanceUIDs")
    need(
        len(set(derived["SOPInstanceUIDs"])) == derived["instances"] == original["instances"], "one instance per slice"
    )
    need("DERIVED" in (derived["ImageType"] or []), "ImageType DERIVED")
    text = str(derived["DerivationDescription"] or "")
    need("synthetic" in text.lower() and model in text, f"a DerivationDescription naming {model} and 'synthetic'")
    need(str(derived["SeriesDescription"] or "").startswith("SYNTHETIC"), "a SeriesDescription starting with SYNTHETIC")
    for key in ("Rows", "Columns", "Modality"):
        need(derived[key] == original[key], f"the input's {key}")
    for key in ("PixelSpacing", "ImageOrientationPatient", "SliceThickness", "ImagePositionPatient"):
        a, b = floats(derived[key]), floats(original[key])
        need(
            a is not None and b is not None and a.shape == b.shape and np.allclose(a, b, atol=1e-4),
            f"the input's {key}",
        )
    need(
        sorted(derived["SourceImageSequence"]) == sorted(original["SOPInstanceUIDs"]),
        "a SourceImageSequence pointing at the input's instances",
    )
    return problems


def print_tags(title: str, tags: dict, file=sys.stdout) -> None:
    print(f"{title}:", file=file)
    for key, value in tags.items():
        if key in ("SOPInstanceUIDs", "SourceImageSequence", "ImagePositionPatient") and isinstance(value, list):
            shown = f"{len(value)} values, first {value[0]!r}, last {value[-1]!r}" if value else "[]"
        else:
            shown = repr(value)
        print(f"  {key:24s} {shown}", file=file)


def run(
    dicomweb_url: str,
    username: str | None,
    password: str | None,
    bundle: str,
    steps: int,
    device: str,
    noise: float,
    work: Path,
) -> int:
    from monai_medgen import cli
    from monai_medgen.dicomweb import PASSWORD_ENV, DICOMwebClient

    client = DICOMwebClient(dicomweb_url, username=username, password=password)
    study, series = write_colin27_series(work / "colin27_series", noise=noise)
    client.store_instances(sorted((work / "colin27_series").glob("*.dcm")))
    original = series_tags(client, study, series)
    before = set(derived_series_of(client, study, series, set()))
    url = client.url if not username else client.url.replace("://", f"://{username}@", 1)
    command = [
        "restore",
        "--bundle",
        bundle,
        "--dicomweb",
        url,
        "--study-uid",
        study,
        "--series-uid",
        series,
        "--steps",
        str(steps),
        "--device",
        device,
    ]
    print("monai-medgen " + " ".join(command), file=sys.stderr)
    if password is not None:
        os.environ[PASSWORD_ENV] = password
    start = time.perf_counter()
    rc = cli.main(command)
    print(f"monai-medgen restore exited with {rc} after {time.perf_counter() - start:.1f} s", file=sys.stderr)
    if rc != 0:
        return 1
    new = derived_series_of(client, study, series, before)
    if len(new) != 1:
        print(f"expected one new series in study {study}, found {new}", file=sys.stderr)
        return 1
    derived = series_tags(client, study, new[0])
    print_tags("input series (Orthanc)", original)
    print_tags("derived series (Orthanc)", derived)
    problems = check_derived(original, derived, Path(bundle).resolve().name)
    print(json.dumps({"derived_series": new[0], "problems": problems}))
    return 1 if problems else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dicomweb",
        default=None,
        metavar="URL",
        help="DICOMweb root of a running PACS (default: a private Orthanc for the duration)",
    )
    parser.add_argument("--user", default=None, help="HTTP user of --dicomweb (password in $MEDGEN_DICOMWEB_PASSWORD)")
    parser.add_argument("--bundle", default=str(REPO / "bundles" / "cddpm_denoising_2d"), help="restoration bundle")
    parser.add_argument("--steps", type=int, default=10, help="sampling steps")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--noise", type=float, default=0.05, help="Gaussian noise of the input series")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="monai_medgen_pacs_") as tmp:
        work = Path(tmp)
        if args.dicomweb:
            return run(
                args.dicomweb,
                args.user,
                os.environ.get("MEDGEN_DICOMWEB_PASSWORD") if args.user else None,
                args.bundle,
                args.steps,
                args.device,
                args.noise,
                work,
            )
        from monai_medgen.dicomweb import OrthancServer

        with OrthancServer(work / "orthanc") as orthanc:
            print(f"private Orthanc at {orthanc.dicomweb_url} (user {orthanc.username})", file=sys.stderr)
            return run(
                orthanc.dicomweb_url,
                orthanc.username,
                orthanc.password,
                args.bundle,
                args.steps,
                args.device,
                args.noise,
                work,
            )


if __name__ == "__main__":
    sys.exit(main())
