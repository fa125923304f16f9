"""``python -m monai_medgen.bundle.configs BUNDLE [EXTRA.yaml ...] [--config train.yaml]``: print the list form of
``--config_file`` for a bundle's training (the shared bases it names, its train.yaml, then the extra configs)."""

from __future__ import annotations

import argparse
import sys

from monai_medgen.bundle.configs import train_config_arg


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monai_medgen.bundle.configs", description=__doc__)
    parser.add_argument("bundle", help="bundle folder")
    parser.add_argument(
        "extra", nargs="*", help="more configs of the bundle merged after it (e.g. train_multigpu.yaml)"
    )
    parser.add_argument("--config", default="train.yaml", help="the bundle's config (default: train.yaml)")
    args = parser.parse_args(argv)
    try:
        print(train_config_arg(args.bundle, args.extra, args.config))
    except ValueError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
