#!/bin/bash
# Continue training cddpm_denoising_2d and cddpm_inpainting_2d on a lent GPU within the present device limits (one
# command of at most 10 minutes, 15 minutes of device time per session, a starting machine included; at most 64 MiB
# of working tree travels and 64 MiB of files come back, 16 MiB each).  Issue 13's remaining rows wait on longer
# training of these two networks, which this 2-core CPU cannot give (about 5 minutes per 100 iterations of 16 crops).
# Each lent session adds about 7 minutes of training to the weights it starts from; the sessions chain.
#
#   1. here:   bash scripts/gpu_continue_restoration.sh prepare [INIT_DIR]
#              builds the ignored folder .gpu/: the wheels the device image lacks (monai, nibabel, nilearn,
#              pytorch-ignite, fire, termcolor; Python 3.12), the three label atlases of the corpus and the Colin27
#              validation brain (mricron-data), a placeholder SimpleITK (imported by monai_medgen.io, unused in
#              training), and the starting weights as float16 copies (INIT_DIR/<bundle>/models/model.pt, default
#              bundles/: the committed weights; or the folder a previous `fetch` wrote).  Then it takes every
#              committed bundle's weights (bundles/*/models/*.pt, 141 MB) out of the working tree, so that what
#              travels stays under 64 MiB, after checking that none differs from the commit (`restore` brings them
#              back from git).
#   2. device: run(command="bash scripts/gpu_continue_restoration.sh run", carry=[".gpu"], timeout_s=570)
#              trains both bundles at once for TL seconds each (default 400) from those weights (init_from), with
#              their own train.yaml and last fine-tuning stage (train_masked.yaml, train_biharmonic.yaml), 48 crops
#              per iteration, half of them at the times the bundles' samplers call the network; writes the EMA
#              weights in 16 MB parts, their model_info.json and the logs to $OUT.
#   3. here:   bash scripts/gpu_continue_restoration.sh fetch FILES_AT [DEST]     (FILES_AT: the run's files_at)
#              joins the parts into DEST/<bundle>/ (default runs/gpu_<date>/<bundle>/, a copy of the bundle with the
#              new weights; the committed bundles are left alone), then `restore`.
#   4. here:   python scripts/evaluate_restoration.py --scenarios denoise_gsp denoise_rician inpaint_box inpaint_stroke \
#                  --num-samples 4 --bundles-dir DEST      (adopt the weights only where the panel says so)
#   restore:   bash scripts/gpu_continue_restoration.sh restore   (the weights files missing from the working tree
#              checked out again; a changed one is left alone)
#
# DRY=1 bash scripts/gpu_continue_restoration.sh run: two CPU iterations per bundle here, to check the wiring.
set -u
BUNDLES="cddpm_denoising_2d cddpm_inpainting_2d"
ATLASES="HarvardOxford-cort-maxprob-thr0-1mm.nii.gz JHU-WhiteMatter-labels-1mm.nii.gz AICHAmc.nii.gz ch2bet.nii.gz"
WHEELS="monai==1.6.1 nibabel==5.4.2 nilearn==0.14.1 pytorch-ignite==0.5.5 fire==0.7.1 termcolor==3.3.0"
MRICRON=${MRICRON:-/usr/share/mricron/templates}
PY=${PY:-python3}
cd "$(dirname "$0")/.." || exit 1

weights() { git ls-files -z 'bundles/*/models/*.pt'; }  # NUL-separated, for xargs -0

prepare() {
  local init=${1:-bundles}
  restore > /dev/null || exit 1  # a second prepare: the weights an earlier one took out come back first
  mkdir -p .git/info .gpu/whl .gpu/mricron .gpu/stub/SimpleITK .gpu/init
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
  rm -f .gpu/whl/*.whl
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/whl $WHEELS || exit 1
  for f in $ATLASES; do cp "$MRICRON/$f" .gpu/mricron/ || exit 1; done
  echo '"""Placeholder: monai_medgen.io imports SimpleITK; training never reads NRRD / MHA."""' > .gpu/stub/SimpleITK/__init__.py
  for b in $BUNDLES; do
    $PY - "$init/$b/models/model.pt" ".gpu/init/$b.pt" <<'EOF' || exit 1
import hashlib, json, sys
from pathlib import Path
import torch
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
state = torch.load(src, map_location="cpu", weights_only=True)
torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, dst)
info = src.with_name(src.stem + "_info.json")
if info.is_file():  # the same entries (iteration, task), naming the float16 copy they now sit beside
    entries = json.loads(info.read_text())
    entries["float16_copy_of"] = entries.get("weights_sha256")
    entries["weights"], entries["weights_sha256"] = dst.name, hashlib.sha256(dst.read_bytes()).hexdigest()
    dst.with_name(dst.stem + "_info.json").write_text(json.dumps(entries, indent=2) + "\n")
print(f"{src} -> {dst} (float16, {dst.stat().st_size / 1e6:.1f} MB)")
EOF
  done
  if ! weights | xargs -0 git diff --quiet HEAD --; then
    echo "prepare: a committed weights file differs from HEAD; commit or restore it first (nothing taken out)." >&2
    exit 1
  fi
  weights | xargs -0 rm -f
  echo "taken out of the working tree (git restores them: $0 restore): $(weights | tr -cd '\0' | wc -c) weights files"
  echo "travels: $( (git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1; \
    du -sb .gpu | cut -f1) | awk '{s += $1} END {printf "%.1f MB", s / 1e6}')"
}

restore() {  # only the weights files missing from the working tree: a changed one is left as it is
  local missing
  missing=$(git ls-files -z --deleted 'bundles/*/models/*.pt' | tr -cd '\0' | wc -c)
  git ls-files -z --deleted 'bundles/*/models/*.pt' | xargs -0 -r git checkout -- && echo "restored: $missing weights files"
}

run() {
  local T0 TL
  T0=$(date +%s)
  OUT=${OUT:-/tmp/gpu_out}
  mkdir -p "$OUT"

  if [ -z "${DRY:-}" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD:$PWD/.gpu/stub
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  fi
  export PYTHONUNBUFFERED=1 MONAI_MEDGEN_MRICRON=$PWD/.gpu/mricron MONAI_MEDGEN_COLIN27=$PWD/.gpu/mricron/ch2bet.nii.gz
  $PY -c "import torch, monai, numpy, monai_medgen.tasks.training; print('torch', torch.__version__, 'monai', monai.__version__, 'numpy', numpy.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())" || exit 1
  TL=${TL:-400}
  # The cosine learning rate is planned for about the iterations TL seconds give: the denoiser's draws are cheap
  # (8 ms an item on one CPU core here) and the GPU sets its pace (stop 22: 6276 iterations of 48 crops in 460 s,
  # three trainings sharing one H200); the inpainting draws need a thin-plate fill each (67 ms), so its 10 data
  # workers set its pace, about 3 iterations a second.
  local D_EP=6 D_LEN=1000 D_NW=5 I_EP=3 I_LEN=500 I_NW=10 WORK=${WORK:-/tmp/gpu_bundles}
  [ -n "${DRY:-}" ] && { D_EP=1; D_LEN=2; D_NW=1; I_EP=1; I_LEN=2; I_NW=1; }
  local common="--resume False --time_limit $TL --batch_size 48 --warmup_steps 100 --sample_interval 0
    --log_every 100 --focus_fraction 0.5 --lr 0.0002"
  rm -rf "$WORK" && mkdir -p "$WORK" || exit 1
  train() {  # in a copy of the bundle under WORK: nothing in the checkout is written
    local name=$1 stage=$2; shift 2
    local B=$WORK/$name
    cp -r "bundles/$name" "$B" && rm -rf "$B/runs" "$B/models/"*.pt
    # shellcheck disable=SC2086
    ( $PY -m monai.bundle run --config_file "$($PY -m monai_medgen.bundle.configs $B "$stage")" --bundle_root $B \
        --meta_file $B/configs/metadata.json --logging_file $B/configs/logging.conf --init_from "$PWD/.gpu/init/$name.pt" \
        $common "$@" ) > "$OUT/$name.log" 2>&1
    echo "$name exit $? after $(( $(date +%s) - T0 )) s"
  }
  [ -z "${DRY:-}" ] && (timeout $((TL + 90)) nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader -l 60 &)
  train cddpm_denoising_2d train_masked.yaml --focus_times "[1.0,0.5]" --max_epochs $D_EP --epoch_length $D_LEN \
    --num_workers $D_NW --val_interval 2 &
  train cddpm_inpainting_2d train_biharmonic.yaml --focus_times "[1.0,0.8]" --max_epochs $I_EP --epoch_length $I_LEN \
    --num_workers $I_NW --val_interval 1 &
  wait
  for b in $BUNDLES; do
    cat "$WORK/$b/models/model_info.json" 2>/dev/null; echo
    sha256sum "$WORK/$b/models/model.pt"
    cp "$WORK/$b/models/model_info.json" "$OUT/${b}_model_info.json" 2>/dev/null
    split -b 16000000 -d "$WORK/$b/models/model.pt" "$OUT/${b}_model.pt.part" 2>/dev/null
  done
  pkill -f "nvidia-smi --query" 2>/dev/null
  ( cd "$OUT" && tar czf logs.tar.gz ./*.log && rm -f ./*.log )
  ls -la "$OUT"
  echo "total $(( $(date +%s) - T0 )) s"
}

fetch() {
  local from=$1 dest=${2:-runs/gpu_$(date +%Y%m%d_%H%M)}
  restore || exit 1
  for b in $BUNDLES; do
    ls "$from/${b}_model.pt.part"* > /dev/null 2>&1 || { echo "fetch: no parts of $b under $from" >&2; continue; }
    mkdir -p "$dest"
    rm -rf "${dest:?}/$b" && cp -r "bundles/$b" "$dest/$b" && rm -rf "$dest/$b/runs"
    cat "$from/${b}_model.pt.part"* > "$dest/$b/models/model.pt"
    cp "$from/${b}_model_info.json" "$dest/$b/models/model_info.json" 2>/dev/null
    (cd "$dest/$b/models" && sha256sum model.pt > model.pt.sha256)
    echo "$dest/$b: $(cat "$dest/$b/models/model_info.json" 2>/dev/null)"
  done
  [ -f "$from/logs.tar.gz" ] && mkdir -p "$dest" && tar xzf "$from/logs.tar.gz" -C "$dest" && echo "logs: $dest/*.log"
}

case "${1:-}" in
  prepare) shift; prepare "$@" ;;
  run) run ;;
  fetch) shift; [ $# -ge 1 ] || { echo "fetch needs FILES_AT" >&2; exit 2; }; fetch "$@" ;;
  restore) restore ;;
  *) echo "usage: $0 prepare [INIT_DIR] | run | fetch FILES_AT [DEST] | restore" >&2; exit 2 ;;
esac
