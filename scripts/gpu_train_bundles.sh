#!/bin/bash
# The GPU training run of stop 22 (2026-12-04), exactly as it ran on the lent machine (one NVIDIA H200, 16 CPU cores,
# torch 2.11.0+cu130, numpy 2.5.2, Python 3.12), from the repository root:
#
#   TL=460 bash scripts/gpu_train_bundles.sh        # ($OUT: where the weights and logs are written)
#
# It trains three bundles at once on the one GPU, each with its own train.yaml through `python -m monai.bundle run`
# and the overrides below (a larger denoising / inpainting network, 48/96/192 channels; a larger VDM on whole
# 128x128 slices of all three planes), from scratch (--resume False), for TL seconds of wall-clock each
# (the TimeLimit handler; the cosine learning rate was planned for R_EP x R_LEN iterations, so a run cut by the time
# limit ends before the schedule does).  The machine had no monai, nibabel, nilearn, pytorch-ignite, fire or
# termcolor: their wheels travelled in .gpu/whl; the mricron-data atlases and Colin27 (validation) in .gpu/mricron;
# SimpleITK (imported by monai_medgen.io, unused in training) was a placeholder module in .gpu/stub.
# DRY=1 PY=python: two CPU iterations per bundle, to check the wiring.
set -u
T0=$(date +%s)
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
PY=${PY:-python3}
if [ -z "${DRY:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD:$PWD/.gpu/stub
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  nproc
fi
export PYTHONUNBUFFERED=1 MONAI_MEDGEN_MRICRON=$PWD/.gpu/mricron MONAI_MEDGEN_COLIN27=$PWD/.gpu/mricron/ch2bet.nii.gz
$PY -c "import torch, monai, numpy, monai_medgen.tasks.training; print('torch', torch.__version__, 'monai', monai.__version__, 'numpy', numpy.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())" || exit 1
TL=${TL:-430}
if [ -n "${DRY:-}" ]; then R_EP=1; R_LEN=2; V_EP=1; V_LEN=2; NW=1; VI=1; else R_EP=12; R_LEN=1000; V_EP=20; V_LEN=500; NW=6; VI=2; fi
train() {
  local name=$1; shift
  local B=bundles/$name
  ( $PY -m monai.bundle run --config_file "$($PY -m monai_medgen.bundle.configs $B)" --bundle_root $B \
      --meta_file $B/configs/metadata.json --logging_file $B/configs/logging.conf --resume False --time_limit $TL \
      --sample_interval 0 "$@" ) > "$OUT/$name.log" 2>&1
  echo "$name exit $? after $(( $(date +%s) - T0 )) s"
}
REST="--network_def#channels [48,96,192] --network_def#num_res_blocks 1 --network_def#norm_num_groups 16 --network_def#num_head_channels 32 --batch_size 48 --num_workers $NW --max_epochs $R_EP --epoch_length $R_LEN --val_interval $VI --warmup_steps 200 --log_every 100"
(timeout 520 nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader -l 60 &)
train cddpm_denoising_2d $REST &
train cddpm_inpainting_2d $REST &
train vdm_brain_mri_2d --network_def#channels [32,64,128] --network_def#num_res_blocks 2 --network_def#norm_num_groups 16 \
  --network_def#num_head_channels 32 --crop_size 128 --planes "['axial','coronal','sagittal']" --batch_size 32 --num_workers 0 \
  --max_epochs $V_EP --epoch_length $V_LEN --val_interval $VI --lr 0.001 --log_every 100 &
wait
for b in cddpm_denoising_2d cddpm_inpainting_2d vdm_brain_mri_2d; do
  cat bundles/$b/models/model_info.json 2>/dev/null; echo
  sha256sum bundles/$b/models/model.pt
  split -b 16000000 -d bundles/$b/models/model.pt "$OUT/${b}_model.pt.part" 2>/dev/null
  cp bundles/$b/models/model_schedule.pt "$OUT/${b}_model_schedule.pt" 2>/dev/null
done
pkill -f "nvidia-smi --query" 2>/dev/null
( cd "$OUT" && tar czf logs.tar.gz *.log && rm -f *.log )
ls -la "$OUT"
echo "total $(( $(date +%s) - T0 )) s"
