"""Convert bundles' weights files to MONAI's convention: ``models/model.pt`` (and ``models/autoencoder.pt``) become
the network's plain state_dict; the learned schedule goes to ``models/model_schedule.pt`` and the other entries
(iteration, epoch, task family, scale factor, ...) to ``models/<stem>_info.json``; ``large_files.yml`` is rewritten
with the new SHA-256 hashes.  Files already converted are left alone.

    python scripts/convert_model_pt.py bundles/cddpm_denoising_2d bundles/cddpm_inpainting_2d
"""

from __future__ import annotations

import argparse
import sys

from monai_medgen.bundle import convert_bundle


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "bundles", nargs="+", metavar="BUNDLE", help="bundle folder(s), e.g. bundles/cddpm_denoising_2d"
    )
    parser.add_argument("--no-large-files", action="store_true", help="do not rewrite large_files.yml")
    args = parser.parse_args(argv)
    for bundle in args.bundles:
        try:
            results = convert_bundle(bundle, large_files=not args.no_large_files)
        except (ValueError, FileNotFoundError) as e:
            print(f"{bundle}: {e}", file=sys.stderr)
            return 2
        if not results:
            print(f"{bundle}: no weights files in models/")
        for r in results:
            what = "converted" if r["converted"] else "already a plain state_dict"
            extra = ", schedule in its own file" if r["schedule"] else ""
            print(f"{r['path']}: {what}{extra}; info {sorted(r['info'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
