#!/usr/bin/env bash
# 6.4: launch code/dpo.py (DPO through TRL) with the deepspeed launcher (ZeRO-2, code/ds_config_zero2.json).
#
#   bash code/dpo.sh                 the chapter-scale job: the SFT'd Qwen2.5-1.5B (bash code/finetune.sh) on
#                                    llamafactory/DPO-En-Zh-20k (zh), 1 epoch, bf16 (fp16 on V100/T4), LoRA r=8
#   PRESET=toy bash code/dpo.sh      the toy SFT model on data/sample/dpo.jsonl, 2 CPU processes, LoRA on
#                                    every linear layer (TOY_LORA_TARGETS)
#   USE_LORA=0 ...                   full DPO: every weight trains and TRL holds a second, frozen copy of
#                                    the model as the reference (LoRA: the adapter disabled is the reference)
#
# Every variable below can be set from the environment; extra arguments go to dpo.py
# (e.g. --loss_type ipo). HOSTFILE, DS_CONFIG, REPORT_TO, MASTER_PORT work as in pretrain.sh.
set -euo pipefail

CODE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$CODE_DIR")
PRESET=${PRESET:-chapter}
USE_LORA=${USE_LORA:-1}
LORA_SUFFIX=$([ "$USE_LORA" = 1 ] && echo "-lora" || true)

source "$CODE_DIR/launch_common.sh"
check_switch USE_LORA
if [ "$PRESET" = toy ]; then
  LOGGING_STEPS=${LOGGING_STEPS:-2}   # 24 steps in all: log every other one, for the reward and log-prob curves
fi
preset_defaults
case "$PRESET" in
  chapter)
    MODEL_DIR=${MODEL_DIR:-autodl-tmp/output/sft}
    TRAIN_FILES=${TRAIN_FILES:-autodl-tmp/dataset/dpo_data/dpo_zh.jsonl}
    EVAL_FILES=${EVAL_FILES:-}
    OUTPUT_DIR=${OUTPUT_DIR:-autodl-tmp/output/dpo$LORA_SUFFIX}
    BATCH_SIZE=${BATCH_SIZE:-4}         # pairs per GPU: 8 sequences (chosen + rejected) per forward
    EVAL_BATCH_SIZE=${EVAL_BATCH_SIZE:-4}
    GRAD_ACC=${GRAD_ACC:-4}
    LR=${LR:-$([ "$USE_LORA" = 1 ] && echo 5e-5 || echo 5e-7)}   # DPO steps are small; full DPO smaller still
    EPOCHS=${EPOCHS:-1}
    WARMUP_STEPS=${WARMUP_STEPS:-0.1}   # < 1: a ratio of the total steps
    BLOCK_SIZE=${BLOCK_SIZE:-1024}
    BETA=${BETA:-0.1}
    SAVE_STEPS=${SAVE_STEPS:-100}
    ;;
  toy)
    MODEL_DIR=${MODEL_DIR:-$ROOT/output/toy/sft}
    TRAIN_FILES=${TRAIN_FILES:-$ROOT/data/sample/dpo.jsonl}
    EVAL_FILES=${EVAL_FILES-$ROOT/data/sample/dpo_heldout.jsonl}
    OUTPUT_DIR=${OUTPUT_DIR:-$ROOT/output/toy/dpo$LORA_SUFFIX}
    BATCH_SIZE=${BATCH_SIZE:-$TOY_DPO_BATCH_SIZE}
    EVAL_BATCH_SIZE=${EVAL_BATCH_SIZE:-9}   # 18 held-out pairs = 2 processes x 9: TRL counts no pair twice
    LR=${LR:-$([ "$USE_LORA" = 1 ] && echo "$TOY_DPO_LR" || echo "$TOY_DPO_FULL_LR")}
    LORA_TARGETS=${LORA_TARGETS:-$TOY_LORA_TARGETS}   # used only with USE_LORA=1
    EPOCHS=${EPOCHS:-$TOY_DPO_EPOCHS}
    WARMUP_STEPS=${WARMUP_STEPS:-$TOY_DPO_WARMUP_STEPS}
    BLOCK_SIZE=${BLOCK_SIZE:-$TOY_DPO_BLOCK_SIZE}
    BETA=${BETA:-$TOY_DPO_BETA}
    SAVE_STEPS=${SAVE_STEPS:-100}
    CHECKPOINTING=${CHECKPOINTING:---activation_checkpointing false}   # TRL's default is on
    if [ ! -f "$MODEL_DIR/model.safetensors" ]; then
      echo "No toy SFT model in $MODEL_DIR: fine-tuning it first"
      PRESET=toy OUTPUT_DIR="$MODEL_DIR" bash "$CODE_DIR/finetune.sh"
    fi
    ;;
esac

if [ ! -f "$MODEL_DIR/config.json" ]; then
  cat >&2 <<EOF
No SFT model in $MODEL_DIR.
Fine-tune one first (bash code/finetune.sh writes autodl-tmp/output/sft), or point MODEL_DIR at yours;
and the preference data: python code/download_dataset.py dpo --local_dir autodl-tmp/dataset/dpo_data
EOF
  exit 1
fi

extra=(--beta "$BETA" --per_device_eval_batch_size "$EVAL_BATCH_SIZE")
[ -n "$EVAL_FILES" ] && extra+=(--eval_files $EVAL_FILES)
if [ "$USE_LORA" = 1 ]; then
  lora_flags
  extra+=("${LORA_FLAGS[@]}")
fi
launch "$CODE_DIR/dpo.py" --model_name_or_path "$MODEL_DIR" "${extra[@]}" "$@"
