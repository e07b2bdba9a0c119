#!/usr/bin/env bash
# 6.2: launch code/finetune.py (SFT) with the deepspeed launcher (ZeRO-2, code/ds_config_zero2.json).
#
#   bash code/finetune.sh                 the chapter's job: Qwen2.5-1.5B on BelleGroup, 3 epochs, bf16
#   PRESET=toy bash code/finetune.sh      the toy pretrained model on data/sample/sft.jsonl, 2 CPU processes
#   USE_LORA=1 ...                        6.3.5: LoRA adapters through peft (r=8, alpha=32, dropout=0.1 on
#                                         q_proj,v_proj), plus the merged model in $OUTPUT_DIR/merged
#
# Every variable below can be set from the environment; extra arguments go to finetune.py
# (e.g. --packing false). HOSTFILE, DS_CONFIG, REPORT_TO, MASTER_PORT work as in pretrain.sh.
set -euo pipefail

CODE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$CODE_DIR")
PRESET=${PRESET:-chapter}
USE_LORA=${USE_LORA:-0}
LORA_SUFFIX=$([ "$USE_LORA" = 1 ] && echo "-lora" || true)

case "$PRESET" in
  chapter)
    MODEL_DIR=${MODEL_DIR:-autodl-tmp/qwen-1.5b}
    TRAIN_FILES=${TRAIN_FILES:-autodl-tmp/dataset/sft_data/BelleGroup/train_3.5M_CN.json}
    OUTPUT_DIR=${OUTPUT_DIR:-autodl-tmp/output/sft$LORA_SUFFIX}
    NUM_GPUS=${NUM_GPUS:-}              # empty: every visible GPU
    MAX_TRAIN_SAMPLES=${MAX_TRAIN_SAMPLES-10000}   # the chapter's first 10,000 conversations; empty: all
    BATCH_SIZE=${BATCH_SIZE:-16}
    GRAD_ACC=${GRAD_ACC:-4}
    LR=${LR:-1e-4}
    EPOCHS=${EPOCHS:-3}
    WARMUP_STEPS=${WARMUP_STEPS:-200}
    BLOCK_SIZE=${BLOCK_SIZE:-2048}
    LOGGING_STEPS=${LOGGING_STEPS:-5}
    SAVE_STEPS=${SAVE_STEPS:-100}
    WORKERS=${WORKERS:-10}
    PRECISION=${PRECISION:---bf16}
    CHECKPOINTING=${CHECKPOINTING:---activation_checkpointing}   # the chapter's --gradient_checkpointing, renamed in transformers 5
    ;;
  toy)
    MODEL_DIR=${MODEL_DIR:-$ROOT/output/toy/pretrain}
    TRAIN_FILES=${TRAIN_FILES:-$ROOT/data/sample/sft.jsonl}
    OUTPUT_DIR=${OUTPUT_DIR:-$ROOT/output/toy/sft$LORA_SUFFIX}
    NUM_GPUS=${NUM_GPUS:-2}             # on a CPU-only machine: 2 processes over gloo
    MAX_TRAIN_SAMPLES=${MAX_TRAIN_SAMPLES-}
    BATCH_SIZE=${BATCH_SIZE:-8}
    GRAD_ACC=${GRAD_ACC:-1}
    LR=${LR:-$([ "$USE_LORA" = 1 ] && echo 5e-3 || echo 1e-3)}   # adapters start at zero: a larger step
    EPOCHS=${EPOCHS:-12}
    WARMUP_STEPS=${WARMUP_STEPS:-10}
    BLOCK_SIZE=${BLOCK_SIZE:-512}
    LOGGING_STEPS=${LOGGING_STEPS:-5}
    SAVE_STEPS=${SAVE_STEPS:-100}
    WORKERS=${WORKERS:-1}
    PRECISION=${PRECISION:-}            # fp32 on CPU
    CHECKPOINTING=${CHECKPOINTING:-}
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # one core per process
    if [ ! -f "$MODEL_DIR/model.safetensors" ]; then
      echo "No pretrained toy model in $MODEL_DIR: pretraining it first"
      PRESET=toy OUTPUT_DIR="$MODEL_DIR" bash "$CODE_DIR/pretrain.sh"
    fi
    ;;
  *)
    echo "Unknown PRESET=$PRESET: use 'chapter' (default) or 'toy'." >&2
    exit 2
    ;;
esac

if [ ! -f "$MODEL_DIR/config.json" ]; then
  cat >&2 <<EOF
No model in $MODEL_DIR.
Download Qwen2.5-1.5B (or use your own pretrained output) first, for example:
  python code/download_model.py --repo_id Qwen/Qwen2.5-1.5B --local_dir $MODEL_DIR
and the SFT data: python code/download_dataset.py sft --local_dir autodl-tmp/dataset/sft_data/BelleGroup
EOF
  exit 1
fi

extra=()
[ -n "$MAX_TRAIN_SAMPLES" ] && extra+=(--max_train_samples "$MAX_TRAIN_SAMPLES")
if [ "$USE_LORA" = 1 ]; then
  extra+=(--use_lora --lora_r "${LORA_R:-8}" --lora_alpha "${LORA_ALPHA:-32}" --lora_dropout "${LORA_DROPOUT:-0.1}"
          --lora_target_modules "${LORA_TARGETS:-q_proj,v_proj}" --merge_lora)
fi
source "$CODE_DIR/launch_common.sh"
launch "$CODE_DIR/finetune.py" --model_name_or_path "$MODEL_DIR" "${extra[@]}" "$@"
