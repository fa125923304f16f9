"""How much of the bundles' configs is repeated verbatim: for each config name, the non-comment lines of every
bundle's file and how many of them appear, identically, in all bundles that have the file.  The shared parts live
once in ``monai_medgen/bundle/configs/`` (merged before a bundle's ``train.yaml``).

    python scripts/config_sharing.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def content_lines(path: Path) -> list[str]:
    """The file's lines without blank lines and whole-line comments (trailing comments kept)."""
    lines = [line.rstrip() for line in path.read_text().splitlines()]
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def sharing(bundles: Path, name: str) -> tuple[int, int, int]:
    """(bundles with configs/<name>, their non-comment lines, lines repeated verbatim in all of them)."""
    files = sorted(bundles.glob(f"*/configs/{name}"))
    if not files:
        return 0, 0, 0
    lines = {f: content_lines(f) for f in files}
    common = set.intersection(*(set(v) for v in lines.values())) if len(files) > 1 else set()
    total = sum(len(v) for v in lines.values())
    repeated = sum(sum(1 for line in v if line in common) for v in lines.values())
    return len(files), total, repeated


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", default=str(REPO / "bundles"), help="folder of bundles (default: bundles/)")
    parser.add_argument("--configs", nargs="+", default=["train.yaml", "inference.yaml", "evaluate.yaml"])
    args = parser.parse_args(argv)
    print("| config | bundles | lines (no comments) | repeated verbatim in all | share |")
    print("|---|---|---|---|---|")
    for name in args.configs:
        n, total, repeated = sharing(Path(args.bundles), name)
        share = f"{100 * repeated / total:.1f}%" if total else "-"
        print(f"| {name} | {n} | {total} | {repeated} | {share} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
