#!/usr/bin/env bash
# Issue 18's GPU check, rerunnable on whatever GPU is present: the chapter's jobs through the course's own
# launch scripts (PRESET=chapter, NUM_GPUS=1, a few optimizer steps each), written to one results file with the
# schema of bench/results/gpu_h200_2026-11-30.json.
#
#   bash bench/gpu_chapter_job.sh [RESULTS.json]      default: bench/results/gpu_<gpu>_<date>.json
#   DRY_RUN=1 bash bench/gpu_chapter_job.sh /tmp/x.json   the same plumbing on a tiny model, on a CPU (a minute or two)
#   ROWS="pretrain plans sft" ...                     only some groups (pretrain, plans, sft, dpo)
#
# Rows:
#   pretrain  the issue's five pretraining runs (16 x 4 with and without expandable segments, 4 x 1 without
#             checkpointing, 16 x 4 with Liger, 2 x 1) on the Qwen2.5-1.5B config, block 2048, bf16, ZeRO-2
#   plans     each card plan (24/48/80 GiB) as the launcher picks it (Liger when installed, expandable segments),
#             run under torch.cuda.set_per_process_memory_fraction((card - CUDA context) / total) so the big GPU
#             acts as that card: an OOM there is a finding; "no_plan" = the launcher said nothing fits
#   sft       finetune.sh full SFT, LoRA and QLoRA (USE_QLORA=1) from randomly initialised 1.5B weights
#   dpo       dpo.sh (LoRA-DPO) from the same weights (TRL's trainer logs no tokens/s or allocator peaks: this row
#             has nvidia-smi only)
# Every run is capped at RUN_TIMEOUT seconds (default 150); about 8 minutes in all on an H100/H200.
#
# A GPU box without network and without datasets/deepspeed/TRL: carry wheels with the checkout. On a machine
# with network, in this repository:
#   bash bench/gpu_chapter_job.sh --download-wheels 3.12     (the GPU box's Python version) -> output/wheels/
# (deepspeed is an sdist: its wheel is built with `pip wheel --no-deps`; it is pure Python, ops build by JIT.)
# Then carry output/wheels (git-ignored; about 50 MiB without bitsandbytes, which adds 43 MiB: set
# WITH_BNB=1 to include it). On the GPU box this script installs whatever of them is missing, offline.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python}
WHEELS=${WHEELS:-$ROOT/output/wheels}   # output/ is git-ignored: carry it to the GPU box
if [ "${1:-}" = --download-wheels ]; then
  pyver=${2:?"--download-wheels PYTHON_VERSION (e.g. 3.12, the GPU box's)"}
  mkdir -p "$WHEELS"
  # What the GPU box lacks, at the versions this environment installed from pyproject.toml (the one list).
  carried=$("$PYTHON" "$ROOT/bench/gpu_chapter_job.py" carried)
  wheels=() deepspeed=""
  for spec in $carried; do
    case "$spec" in
      deepspeed==*) deepspeed=$spec ;;                                  # an sdist: built into a wheel below
      bitsandbytes==*) [ "${WITH_BNB:-0}" = 1 ] && wheels+=("$spec") ;;
      *) wheels+=("$spec") ;;
    esac
  done
  "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version "$pyver" \
    --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 -d "$WHEELS" "${wheels[@]}"
  "$PYTHON" -m pip wheel --no-deps "$deepspeed" -w "$WHEELS"
  du -sh "$WHEELS"
  exit 0
fi

cd "$ROOT"
DRY_RUN=${DRY_RUN:-0}
ROWS=${ROWS:-pretrain plans sft dpo}
RUN_TIMEOUT=${RUN_TIMEOUT:-150}
MASTER_PORT=${MASTER_PORT:-29650}   # not the launcher's default 29500, which another job may hold

# 1. What is missing, installed offline from the carried wheels.
missing=()
for module in datasets deepspeed trl peft liger_kernel bitsandbytes; do
  "$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$module') is None)" \
    || missing+=("${module//_/-}")
done
if [ ${#missing[@]} -gt 0 ] && [ -d "$WHEELS" ]; then
  echo "Installing from $WHEELS: ${missing[*]}"
  "$PYTHON" -m pip install --no-index --find-links "$WHEELS" "${missing[@]}" \
    || echo "Some packages are not in $WHEELS; the rows that need them are marked as errors." >&2
fi

HAS_GPU=$("$PYTHON" -c 'import torch; print(int(torch.cuda.is_available()))')
if [ "$HAS_GPU" = 0 ] && [ "$DRY_RUN" != 1 ]; then
  echo "No CUDA GPU visible: run this on a GPU machine, or DRY_RUN=1 for the plumbing on a CPU." >&2
  exit 1
fi
if [ "$HAS_GPU" = 1 ]; then
  GPU_NAME=$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0).replace("NVIDIA ", "").split()[0].lower())')
  TOTAL_MIB=$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_properties(0).total_memory // 2**20)')
else
  GPU_NAME=cpu-dry-run
  TOTAL_MIB=0
fi
RESULTS=${1:-bench/results/gpu_${GPU_NAME}_$(date -u +%F).json}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_chapter_job.XXXX")}
echo "Work folder $WORK; results -> $RESULTS"

# 2. Model folders (the Qwen2.5-1.5B config; random 1.5B weights for SFT/DPO) and data.
if [ "$DRY_RUN" = 1 ]; then
  "$PYTHON" bench/gpu_chapter_job.py prepare "$WORK" --tiny
  BLOCK=64 STEPS=2 BIG=2 SMALL=1 CARDS="3"
  export WORKERS=${WORKERS:-1} GPU_MEM_GIB=${GPU_MEM_GIB:-3}   # no GPU to read: a 3 GiB "card" keeps the plans small
  RUN_TIMEOUT=${RUN_TIMEOUT_DRY:-900}
else
  "$PYTHON" bench/gpu_chapter_job.py prepare "$WORK"
  BLOCK=2048 STEPS=5 BIG=16 SMALL=2 CARDS="80 48 24"
fi
echo "{\"block_size\": $BLOCK}" > "$WORK/settings.json"
: > "$WORK/rows.jsonl"

# The training processes (LOCAL_RANK set by the deepspeed launcher) cap their allocator when GPU_CHECK_CARD_GIB is
# set: the card minus the CUDA context the H200 measured (1.7 GiB), as a share of this GPU.
mkdir -p "$WORK/site"
cat > "$WORK/site/sitecustomize.py" <<'EOF'
import os
if os.environ.get("LOCAL_RANK") is not None and os.environ.get("GPU_CHECK_CARD_GIB"):
    import torch
    if torch.cuda.is_available():
        device = int(os.environ["LOCAL_RANK"])
        total = torch.cuda.get_device_properties(device).total_memory
        usable = (float(os.environ["GPU_CHECK_CARD_GIB"]) - 1.7) * 2**30
        torch.cuda.set_per_process_memory_fraction(min(1.0, usable / total), device)
EOF

estimate() {  # ESTIMATE_FLAGS... -> "peak_gib card_gib" for the row
  "$PYTHON" code/estimate_memory.py --config_name "$WORK/config" --num_gpus 1 --block_size "$BLOCK" --dtype bf16 \
    --deepspeed code/ds_config_zero2.json "$@" --json 2>/dev/null \
    | "$PYTHON" -c 'import json, sys; r = json.loads(sys.stdin.read().strip().splitlines()[-1]); print(r["peak_gib"], r["card_gib"])' \
    || echo "none none"
}

# run NAME SCRIPT "ENV..." "ESTIMATE FLAGS" -> one row
run() {
  local name=$1 script=$2 envs=$3 est_flags=$4 out="$WORK/runs/$1" log="$WORK/logs/$1.log" smi="$WORK/logs/$1.smi"
  mkdir -p "$WORK/logs" "$WORK/runs"
  rm -rf "$out"
  local smi_pid=""
  if [ "$HAS_GPU" = 1 ] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 200 > "$smi" 2>/dev/null &
    smi_pid=$!
  fi
  local status=ok
  # shellcheck disable=SC2086
  env PRESET=chapter NUM_GPUS=1 MASTER_PORT="$MASTER_PORT" OUTPUT_DIR="$out" MAX_STEPS="$STEPS" LOGGING_STEPS=1 SAVE_STEPS=100000 \
    BLOCK_SIZE="$BLOCK" PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}" $envs \
    timeout "$RUN_TIMEOUT" bash "code/$script" > "$log" 2>&1 || status=error
  [ -n "$smi_pid" ] && kill "$smi_pid" 2>/dev/null && wait "$smi_pid" 2>/dev/null || true
  grep -q "out of memory\|OutOfMemoryError" "$log" && status=oom
  grep -q "Not even per-device batch" "$log" && status=no_plan
  local batch grad_acc
  batch=$(grep -o -- '--per_device_train_batch_size [0-9]*' "$log" | tail -1 | awk '{print $2}')
  grad_acc=$(grep -o -- '--gradient_accumulation_steps [0-9]*' "$log" | tail -1 | awk '{print $2}')
  local liger=0 ckpt=1 alloc fraction=none
  grep -q -- '--use_liger_kernel' "$log" && liger=1
  case " $envs " in *" ACTIVATION_CHECKPOINTING=0 "*) ckpt=0 ;; esac
  alloc=$(sed -n 's/.*PYTORCH_CUDA_ALLOC_CONF=\([^ ]*\).*/\1/p' <<< " $envs ")
  [ -z "$alloc" ] && alloc="expandable_segments:True"   # the chapter preset's (code/presets/chapter.env)
  [ "$alloc" = default ] && alloc=""
  case " $envs " in *" GPU_CHECK_CARD_GIB="*)
    card=$(sed -n 's/.*GPU_CHECK_CARD_GIB=\([^ ]*\).*/\1/p' <<< " $envs ")
    [ "$TOTAL_MIB" -gt 0 ] && fraction=$("$PYTHON" -c "print(round(($card - 1.7) * 1024 / $TOTAL_MIB, 4))") ;;
  esac
  local flags="$est_flags"
  [ "$ckpt" = 1 ] && flags="$flags --activation_checkpointing"
  [ "$liger" = 1 ] && flags="$flags --use_liger_kernel"
  [ "$alloc" = "expandable_segments:True" ] && flags="$flags --expandable_segments"
  local est
  # shellcheck disable=SC2086
  est=$(estimate --per_device_train_batch_size "${batch:-1}" $flags)
  local message
  message=$(grep -v '^\s*$' "$log" | grep -i "error\|out of memory\|Not even" | tail -1 | cut -c1-300 || true)
  "$PYTHON" bench/gpu_chapter_job.py row "$WORK" "$name" "$script" "$out" "$smi" "$status" \
    "batch=${batch:-}" "grad_acc=${grad_acc:-}" "checkpointing=$ckpt" "liger=$liger" "alloc_conf=$alloc" \
    "fraction=$fraction" "estimate_gib=${est% *}" "card_gib=${est#* }" "message=$message"
  rm -rf "$out"   # a 1.5B checkpoint per row would fill the disk
}

CFG="MODEL_DIR=$WORK/config TRAIN_FILES=$WORK/pretrain.jsonl"
W="MODEL_DIR=$WORK/weights"
for group in $ROWS; do
  case "$group" in
    pretrain)
      run "$BIG x 4 (the chapter's)" pretrain.sh "$CFG BATCH_SIZE=$BIG GRAD_ACC=4 USE_LIGER=0 PYTORCH_CUDA_ALLOC_CONF=default" ""
      run "$BIG x 4, expandable_segments:True" pretrain.sh \
        "$CFG BATCH_SIZE=$BIG GRAD_ACC=4 USE_LIGER=0 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" ""
      run "4 x 1, no checkpointing" pretrain.sh "$CFG BATCH_SIZE=4 GRAD_ACC=1 USE_LIGER=0 ACTIVATION_CHECKPOINTING=0 PYTORCH_CUDA_ALLOC_CONF=default" ""
      [ "$HAS_GPU" = 1 ] && run "$BIG x 4, Liger" pretrain.sh "$CFG BATCH_SIZE=$BIG GRAD_ACC=4 USE_LIGER=1 PYTORCH_CUDA_ALLOC_CONF=default" ""
      run "$SMALL x 1 (the 24 GiB plan's batch)" pretrain.sh "$CFG BATCH_SIZE=$SMALL GRAD_ACC=1 USE_LIGER=0 PYTORCH_CUDA_ALLOC_CONF=default" ""
      ;;
    plans)
      for card in $CARDS; do
        run "$card GiB card plan (launch defaults)" pretrain.sh "$CFG GPU_MEM_GIB=$card GPU_CHECK_CARD_GIB=$card" ""
      done
      ;;
    sft)
      run "full SFT (launch defaults)" finetune.sh "$W TRAIN_FILES=$WORK/sft.jsonl MAX_TRAIN_SAMPLES=none" ""
      run "LoRA SFT (launch defaults)" finetune.sh "$W TRAIN_FILES=$WORK/sft.jsonl MAX_TRAIN_SAMPLES=none USE_LORA=1" \
        "--lora_r 8"
      run "QLoRA SFT (launch defaults)" finetune.sh "$W TRAIN_FILES=$WORK/sft.jsonl MAX_TRAIN_SAMPLES=none USE_QLORA=1" \
        "--lora_r 8 --load_in_4bit"
      ;;
    dpo)
      run "LoRA DPO (launch defaults)" dpo.sh "$W TRAIN_FILES=$WORK/dpo.jsonl BATCH_SIZE=4 GRAD_ACC=1" "--lora_r 8"
      ;;
    *) echo "Unknown row group $group: pretrain, plans, sft or dpo" >&2; exit 1 ;;
  esac
done

"$PYTHON" bench/gpu_chapter_job.py write "$WORK" "$RESULTS"
