"""Choose a VDM bundle's schedule endpoints (gamma_0, or gamma_1) by the variational bound on its TRAINING images.

    python scripts/fit_vdm_gamma_min.py bundles/vdm_brain_mri_2d                 # table only
    python scripts/fit_vdm_gamma_min.py bundles/vdm_brain_mri_2d --write         # and store the best gamma_0
    python scripts/fit_vdm_gamma_min.py bundles/vdm_brain_mri_3d --candidates $(seq -15 0.1 -12)
    python scripts/fit_vdm_gamma_min.py bundles/vdm_brain_mri_2d --endpoint max --candidates $(seq 6 0.5 12)

The continuous-time bound depends on the noise schedule only through its two endpoints, and training learns them
with the network. The learned gamma_0 can stop short of the best one (a discretisation-aware network predicts the
noise at levels below it almost exactly, while the reconstruction term at gamma_0 is a large share of the bits).
This script scans candidate gamma_0 values with :meth:`monai_medgen.inferers.VDMInferer.gamma_min_scan` on the
bundle's own training data (the MNI152 demo brain, or ``--dataset_dir``), never on the held-out images, prints the
change of the bound per candidate, and with ``--write`` moves the schedule's gamma_0 to the best candidate (gamma_1
kept) in ``models/<model>_schedule.pt``, the network weights unchanged, the scan recorded in ``<model>_info.json``.
``--endpoint max`` does the same for the upper endpoint gamma_1 (prior term against the integral above gamma_1,
:meth:`~monai_medgen.inferers.VDMInferer.gamma_max_scan`), gamma_0 kept.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from monai_medgen.bundle import load_model, prepare_items, read_model_info, save_model
from monai_medgen.engines import slice_training_transforms
from monai_medgen.inferers import VDMInferer
from monai_medgen.schedules import LearnedLinearSchedule

DEFAULT_CANDIDATES = tuple(round(-15.0 + 0.1 * i, 1) for i in range(26))  # -15.0, -14.9, ..., -12.5


def training_images(config: ConfigParser, spatial_dims: int, dataset_dir: str, planes, num_slices: int):
    """The bundle's training images at its evaluation size, [-1, 1], one tensor (N, 1, *spatial)."""
    size = int(config.get_parsed_content("image_size"))
    kwargs = dict(spatial_dims=spatial_dims, size=size)
    if spatial_dims == 2:
        kwargs.update(planes=tuple(planes), num_slices=num_slices)
    items = prepare_items(dataset_dir, **kwargs)
    transform = slice_training_transforms(None, flip=False)
    return torch.stack([transform(dict(item))["image"] for item in items]).float()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path, help="a VDM bundle folder (vdm_brain_mri_2d, vdm_brain_mri_3d)")
    parser.add_argument("--model", default="models/model.pt", help="weights file inside the bundle")
    parser.add_argument("--endpoint", choices=("min", "max"), default="min", help="gamma_0 (min) or gamma_1 (max)")
    parser.add_argument("--candidates", type=float, nargs="+", default=None, help="default: -15 to -12.5 (min)")
    parser.add_argument("--dataset_dir", default="", help="training images ('' = the bundle's demo training brain)")
    parser.add_argument("--planes", nargs="+", default=["axial", "coronal", "sagittal"], help="2D bundles only")
    parser.add_argument("--num-slices", type=int, default=4, help="evenly spaced slices per plane (2D)")
    parser.add_argument("--step", type=float, default=0.1, help="grid spacing of the integral, in gamma")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="store the best gamma_0 in the model's schedule")
    args = parser.parse_args(argv)

    config = ConfigParser()
    config.read_config(str(args.bundle / "configs" / "evaluate.yaml"))
    config["device"] = "$torch.device('cpu')"
    network = config.get_parsed_content("network").eval()
    schedule = config.get_parsed_content("schedule")  # the bundle's own schedule definition
    if args.write and not isinstance(schedule, LearnedLinearSchedule):
        parser.error(
            f"--write moves the endpoint of a LearnedLinearSchedule; this bundle's is {type(schedule).__name__}."
        )
    model_path = args.bundle / args.model
    load_model(model_path, network, schedule)
    spatial_dims = int(config.get_parsed_content("network_def#spatial_dims"))
    images = training_images(config, spatial_dims, args.dataset_dir, args.planes, args.num_slices)
    which = args.endpoint
    if args.candidates is None and which == "max":
        parser.error("--endpoint max needs --candidates (values of gamma_1 to try)")
    candidates = list(DEFAULT_CANDIDATES) if args.candidates is None else args.candidates
    name, term = (f"gamma_{0 if which == 'min' else 1}", "reconstruction" if which == "min" else "prior")
    learned = float(schedule.endpoints()[0 if which == "min" else 1].detach())
    print(f"{model_path}: {name} {learned:.3f}; {images.shape[0]} training image(s) of {tuple(images.shape[2:])}")

    inferer = VDMInferer(schedule=schedule)
    scan_fn = inferer.gamma_min_scan if which == "min" else inferer.gamma_max_scan
    scan = scan_fn(
        images, network, candidates, step=args.step, batch_size=4, generator=torch.Generator().manual_seed(args.seed)
    )
    print(f"| {name} | change of the bound (bits/dim) | {term} term (bits/dim) |\n|---|---|---|")
    for g, d, r in zip(scan[f"gamma_{which}"].tolist(), scan["delta_bpd"].tolist(), scan[term].tolist()):
        print(f"| {g:.3f}{' (current)' if abs(g - learned) < 1e-6 else ''} | {d:+.4f} | {r:.4f} |")
    best = int(torch.argmin(scan["delta_bpd"]))
    gamma_best, gain = float(scan[f"gamma_{which}"][best]), float(scan["delta_bpd"][best])
    print(f"best {name} on the training images: {gamma_best:.3f} ({gain:+.4f} bits/dim against the current one)")
    if args.write and gain >= 0:
        print("nothing written: no candidate lowers the bound on the training images")
    if args.write and gain < 0:
        info = read_model_info(model_path)
        for key in ("weights", "weights_sha256"):
            info.pop(key, None)
        info[f"gamma_{which}_fit"] = {
            "before": round(learned, 4),
            "chosen": round(gamma_best, 4),
            "change_bpd_on_training_images": round(gain, 4),
            "images": f"{images.shape[0]} training image(s), {args.dataset_dir or 'demo training brain'}",
            "scan": {
                f"{g:.3f}": round(d, 4) for g, d in zip(scan[f"gamma_{which}"].tolist(), scan["delta_bpd"].tolist())
            },
        }
        (schedule.set_gamma_min if which == "min" else schedule.set_gamma_max)(gamma_best)
        save_model(model_path, network, schedule, **info)
        print(
            f"written: {name} {gamma_best:.3f} in {os.fspath(model_path)}'s schedule; {json.dumps(info[f'gamma_{which}_fit'])}"
        )


if __name__ == "__main__":
    main()
