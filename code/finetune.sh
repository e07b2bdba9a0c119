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

source "$CODE_DIR/launch_common.sh"
preset_defaults
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
    # bf16 where the GPU has it; fp16 (with loss scaling) on V100 / T4, which do not.
    PRECISION=${PRECISION-$("${PYTHON:-python}" -c 'import torch; print("--fp16" if torch.cuda.is_available() and not torch.cuda.is_bf16_supported() else "--bf16")')}
    # USE_LIGER=1 adds --use_liger_kernel: Liger's fused linear cross-entropy never materialises the
    # batch x 2048 x 151,936 logits (GPU only; `pip install liger-kernel`, not in requirements.txt).
    liger=()
    [ "${USE_LIGER:-0}" = 1 ] && liger=(--use_liger_kernel) && set -- --use_liger_kernel "$@"
    # Per-device batch and gradient accumulation that fit the card by llmtrain.memory and keep the
    # chapter's global batch (16 x 4 per GPU; packed SFT batches are as full as pretraining blocks, and
    # with LoRA only the adapters have gradients and Adam states): GPU_MEM_GIB=24|48|80, else read from
    # GPU 0. BATCH_SIZE / GRAD_ACC from the environment win (one alone: the other keeps the chapter's value).
    # (Without the model folder, the check after this case statement says how to get it.)
    if [ -z "${BATCH_SIZE:-}${GRAD_ACC:-}" ] && [ -f "$MODEL_DIR/config.json" ]; then
      lora=()
      [ "$USE_LORA" = 1 ] && lora=(--lora_r "${LORA_R:-8}" --lora_target_modules "${LORA_TARGETS:-q_proj,v_proj}")
      gpus=${NUM_GPUS:-$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)}
      [ "$gpus" -gt 0 ] || gpus=1
      plan=$("${PYTHON:-python}" "$CODE_DIR/estimate_memory.py" --shell_plan --config_name "$MODEL_DIR" "${liger[@]}" \
        "${lora[@]}" --gpu_memory_gib "${GPU_MEM_GIB:-auto}" --num_gpus "$gpus" --block_size "$BLOCK_SIZE" \
        --dtype "$(case "$PRECISION" in *fp16*) echo fp16 ;; *bf16*) echo bf16 ;; *) echo fp32 ;; esac)" \
        --deepspeed "${DS_CONFIG:-$CODE_DIR/ds_config_zero2.json}" ${CHECKPOINTING:+--activation_checkpointing})
      eval "$plan"
    fi
    BATCH_SIZE=${BATCH_SIZE:-16}
    GRAD_ACC=${GRAD_ACC:-4}
    ;;
  toy)
    MODEL_DIR=${MODEL_DIR:-$ROOT/output/toy/pretrain}
    TRAIN_FILES=${TRAIN_FILES:-$ROOT/data/sample/sft.jsonl}
    OUTPUT_DIR=${OUTPUT_DIR:-$ROOT/output/toy/sft$LORA_SUFFIX}
    MAX_TRAIN_SAMPLES=${MAX_TRAIN_SAMPLES-}
    BATCH_SIZE=${BATCH_SIZE:-$TOY_SFT_BATCH_SIZE}
    LR=${LR:-$([ "$USE_LORA" = 1 ] && echo "$TOY_LORA_LR" || echo "$TOY_SFT_LR")}
    EPOCHS=${EPOCHS:-$([ "$USE_LORA" = 1 ] && echo "$TOY_LORA_EPOCHS" || echo "$TOY_SFT_EPOCHS")}
    WARMUP_STEPS=${WARMUP_STEPS:-$TOY_SFT_WARMUP_STEPS}
    BLOCK_SIZE=${BLOCK_SIZE:-$TOY_SFT_MAX_LEN}
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
launch "$CODE_DIR/finetune.py" --model_name_or_path "$MODEL_DIR" "${extra[@]}" "$@"
