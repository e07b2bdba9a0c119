#!/usr/bin/env bash
# 6.2: launch code/finetune.py (SFT) with the deepspeed launcher (ZeRO-2, code/ds_config_zero2.json).
#
#   bash code/finetune.sh                 the chapter's job: Qwen2.5-1.5B on BelleGroup, 3 epochs, bf16
#   PRESET=toy bash code/finetune.sh      the toy pretrained model on data/sample/sft.jsonl, 2 CPU processes
#   USE_LORA=1 ...                        6.3.5: LoRA adapters through peft (r=8, alpha=32, dropout=0.1 on the
#                                         chapter's q_proj,v_proj; the toy preset: every linear layer,
#                                         TOY_LORA_TARGETS), plus the merged model in $OUTPUT_DIR/merged
#   USE_QLORA=1 ...                       QLoRA: the same adapters on a base loaded in 4-bit NF4 (bitsandbytes,
#                                         double quantisation); the merged model is merged into the unquantised base
#   USE_LIGER=0 ...                       chapter preset: without Liger's fused cross-entropy (default: on when a
#                                         GPU and liger-kernel are present)
#
# Every variable below can be set from the environment; extra arguments go to finetune.py
# (e.g. --packing false). HOSTFILE, DS_CONFIG, REPORT_TO, MASTER_PORT work as in pretrain.sh.
set -euo pipefail

CODE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$CODE_DIR")
PRESET=${PRESET:-chapter}
USE_LORA=${USE_LORA:-0}
USE_QLORA=${USE_QLORA:-0}

source "$CODE_DIR/launch_common.sh"
check_switch USE_LORA
check_switch USE_QLORA "QLoRA needs bitsandbytes (pip install -r requirements.txt)"
[ "$USE_QLORA" = 1 ] && USE_LORA=1   # QLoRA is LoRA on a 4-bit base
LORA_SUFFIX=$([ "$USE_QLORA" = 1 ] && echo "-qlora" || { [ "$USE_LORA" = 1 ] && echo "-lora"; } || true)
preset_defaults
LIGER_FLAGS=()
case "$PRESET" in
  chapter)
    MODEL_DIR=${MODEL_DIR:-autodl-tmp/qwen-1.5b}
    TRAIN_FILES=${TRAIN_FILES:-autodl-tmp/dataset/sft_data/BelleGroup/train_3.5M_CN.json}
    OUTPUT_DIR=${OUTPUT_DIR:-autodl-tmp/output/sft$LORA_SUFFIX}
    MAX_TRAIN_SAMPLES=${MAX_TRAIN_SAMPLES-10000}   # the chapter's first 10,000 conversations; empty: all
    LR=${LR:-1e-4}
    EPOCHS=${EPOCHS:-3}
    WARMUP_STEPS=${WARMUP_STEPS:-200}
    BLOCK_SIZE=${BLOCK_SIZE:-2048}
    SAVE_STEPS=${SAVE_STEPS:-100}
    use_liger
    # With LoRA only the adapters have gradients and Adam states; QLoRA also stores the base in 4 bits.
    adapters=()
    [ "$USE_LORA" = 1 ] && adapters=(--lora_r "${LORA_R:-8}" --lora_target_modules "${LORA_TARGETS:-q_proj,v_proj}")
    [ "$USE_QLORA" = 1 ] && adapters+=(--load_in_4bit)
    plan_batch "${adapters[@]}"
    ;;
  toy)
    MODEL_DIR=${MODEL_DIR:-$ROOT/output/toy/pretrain}
    TRAIN_FILES=${TRAIN_FILES:-$ROOT/data/sample/sft.jsonl}
    OUTPUT_DIR=${OUTPUT_DIR:-$ROOT/output/toy/sft$LORA_SUFFIX}
    MAX_TRAIN_SAMPLES=${MAX_TRAIN_SAMPLES-}
    BATCH_SIZE=${BATCH_SIZE:-$TOY_SFT_BATCH_SIZE}
    LR=${LR:-$([ "$USE_LORA" = 1 ] && echo "$TOY_LORA_LR" || echo "$TOY_SFT_LR")}   # QLoRA: LoRA's
    EPOCHS=${EPOCHS:-$([ "$USE_LORA" = 1 ] && echo "$TOY_LORA_EPOCHS" || echo "$TOY_SFT_EPOCHS")}
    WARMUP_STEPS=${WARMUP_STEPS:-$TOY_SFT_WARMUP_STEPS}
    BLOCK_SIZE=${BLOCK_SIZE:-$TOY_SFT_MAX_LEN}
    LORA_TARGETS=${LORA_TARGETS:-$TOY_LORA_TARGETS}   # used only with USE_LORA=1 / USE_QLORA=1
    SAVE_STEPS=${SAVE_STEPS:-100}
    if [ ! -f "$MODEL_DIR/model.safetensors" ]; then
      echo "No pretrained toy model in $MODEL_DIR: pretraining it first"
      PRESET=toy OUTPUT_DIR="$MODEL_DIR" bash "$CODE_DIR/pretrain.sh"
    fi
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
  lora_flags
  extra+=("${LORA_FLAGS[@]}")
fi
[ "$USE_QLORA" = 1 ] && extra+=(--use_qlora)
launch "$CODE_DIR/finetune.py" --model_name_or_path "$MODEL_DIR" "${extra[@]}" "${LIGER_FLAGS[@]}" "$@"
