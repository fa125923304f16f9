#!/usr/bin/env bash
# MONAI Label's own virtual environment for the monai_medgen app (monai_medgen/apps/monailabel).
#
# monailabel 0.8.5 forces numpy < 2 and needs pydicom < 3, pynetdicom < 3, dicomweb-client < 0.60 and a
# torchvision that matches torch, so it does not share the project's main environment. This builds:
#   torch 2.14.1 + torchvision 0.29.1, monailabel 0.8.5 with those pins, and this project (editable), the pins kept
#   in the same resolution so that installing the project cannot lift them; then `pip check`.
#
# Usage: bash scripts/build_monailabel_venv.sh [VENV_DIR] [--force]
#   VENV_DIR defaults to .venv-monailabel at the repository root (what tests/test_monailabel.py uses when
#   MEDGEN_MONAILABEL_PYTHON is not set). An existing complete environment is reused unless --force.
# Then: export MEDGEN_MONAILABEL_PYTHON="$VENV_DIR/bin/python"
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-monailabel
FORCE=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    *) VENV="$arg" ;;
  esac
done
PINS=('numpy<2' 'pydicom<3' 'pynetdicom<3' 'dicomweb-client<0.60')

check() {
  "$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import monailabel, monai_medgen.apps.monailabel.served  # noqa: F401
assert md.version("monailabel") == "0.8.5", md.version("monailabel")
assert md.version("torch").startswith("2.14.1") and md.version("torchvision").startswith("0.29.1")
assert int(md.version("numpy").split(".")[0]) < 2 and int(md.version("pydicom").split(".")[0]) < 3
print("monailabel", md.version("monailabel"), "| monai", md.version("monai"), "| torch", md.version("torch"),
      "| torchvision", md.version("torchvision"), "| numpy", md.version("numpy"), "| pydicom", md.version("pydicom"))
EOF
}

if [ "$FORCE" = 0 ] && [ -x "$VENV/bin/python" ] && versions=$(check 2>/dev/null); then
  echo "reusing $VENV: $versions"
  exit 0
fi

# pip warns once per absent local index folder; keep its real messages
pip_quiet() { "$VENV/bin/pip" "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }

start=$(date +%s)
rm -rf "$VENV"
python3 -m venv "$VENV"
pip_quiet install -q torch==2.14.1 torchvision==0.29.1
pip_quiet install -q monailabel==0.8.5 "${PINS[@]}"
pip_quiet install -q -e . "${PINS[@]}"
pip_quiet check
echo "built $VENV in $(( $(date +%s) - start )) s: $(check)"
