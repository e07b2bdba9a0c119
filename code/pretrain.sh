#!/usr/bin/env bash
# 6.1.5: launch code/pretrain.py with the deepspeed launcher (ZeRO-2, code/ds_config_zero2.json).
#
#   bash code/pretrain.sh                 the chapter's job: Qwen2.5-1.5B architecture, block 2048, bf16
#   PRESET=toy bash code/pretrain.sh      the same script on the toy assets: 2 CPU processes, fp32, ~1 min
#
# Every variable below can be set from the environment (e.g. OUTPUT_DIR=... NUM_GPUS=8 MAX_STEPS=50 SEED=1);
# extra arguments are passed on to pretrain.py (e.g. --resume_from_checkpoint DIR).
# The launcher and the shared TrainingArguments flags live in code/launch_common.sh.
# Multi-node: HOSTFILE=hostfile (the deepspeed launcher's format). ZeRO-3 + optimizer offload:
# DS_CONFIG=code/ds_config_zero3.json. Trackers: REPORT_TO=wandb|swanlab|tensorboard.
set -euo pipefail

CODE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$CODE_DIR")
PRESET=${PRESET:-chapter}

source "$CODE_DIR/launch_common.sh"
preset_defaults
case "$PRESET" in
  chapter)
    MODEL_DIR=${MODEL_DIR:-autodl-tmp/qwen-1.5b}
    TRAIN_FILES=${TRAIN_FILES:-autodl-tmp/dataset/pretrain_data/mobvoi_seq_monkey_general_open_corpus_small.jsonl}
    OUTPUT_DIR=${OUTPUT_DIR:-autodl-tmp/output/pretrain}
    LR=${LR:-1e-4}
    EPOCHS=${EPOCHS:-1}
    WARMUP_STEPS=${WARMUP_STEPS:-200}
    BLOCK_SIZE=${BLOCK_SIZE:-2048}
    SAVE_STEPS=${SAVE_STEPS:-100}
    # bf16 where the GPU has it; fp16 (with loss scaling) on V100 / T4, which do not.
    PRECISION=${PRECISION-$("${PYTHON:-python}" -c 'import torch; print("--fp16" if torch.cuda.is_available() and not torch.cuda.is_bf16_supported() else "--bf16")')}
    # USE_LIGER=1 adds --use_liger_kernel: Liger's fused linear cross-entropy never materialises the
    # batch x 2048 x 151,936 logits (GPU only; `pip install liger-kernel`, not in requirements.txt).
    liger=()
    [ "${USE_LIGER:-0}" = 1 ] && liger=(--use_liger_kernel) && set -- --use_liger_kernel "$@"
    # The textbook's 16 x 2048 per GPU needs ~67 GiB (logits + fp32 loss buffers; happy-llm #106 ran out of
    # memory on 4 x 48 GB). Keep its global batch (16 x 4 per GPU) with the per-device batch and gradient
    # accumulation that fit the card by llmtrain.memory: GPU_MEM_GIB=24|48|80, else read from GPU 0.
    # BATCH_SIZE / GRAD_ACC from the environment win (one of them alone: the other keeps the chapter's value).
    # (Without the model folder, the check after this case statement says how to get it.)
    if [ -z "${BATCH_SIZE:-}${GRAD_ACC:-}" ] && [ -f "$MODEL_DIR/config.json" ]; then
      gpus=${NUM_GPUS:-$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)}
      [ "$gpus" -gt 0 ] || gpus=1
      plan=$("${PYTHON:-python}" "$CODE_DIR/estimate_memory.py" --shell_plan --config_name "$MODEL_DIR" "${liger[@]}" \
        --gpu_memory_gib "${GPU_MEM_GIB:-auto}" --num_gpus "$gpus" --block_size "$BLOCK_SIZE" \
        --dtype "$(case "$PRECISION" in *fp16*) echo fp16 ;; *bf16*) echo bf16 ;; *) echo fp32 ;; esac)" \
        --deepspeed "${DS_CONFIG:-$CODE_DIR/ds_config_zero2.json}" ${CHECKPOINTING:+--activation_checkpointing})
      eval "$plan"
    fi
    BATCH_SIZE=${BATCH_SIZE:-16}
    GRAD_ACC=${GRAD_ACC:-4}
    ;;
  toy)
    MODEL_DIR=${MODEL_DIR:-$ROOT/artifacts/toy}
    TRAIN_FILES=${TRAIN_FILES:-$ROOT/data/sample/pretrain.jsonl}
    OUTPUT_DIR=${OUTPUT_DIR:-$ROOT/output/toy/pretrain}
    BATCH_SIZE=${BATCH_SIZE:-$TOY_PRETRAIN_BATCH_SIZE}
    LR=${LR:-$TOY_PRETRAIN_LR}
    EPOCHS=${EPOCHS:-$TOY_PRETRAIN_EPOCHS}
    WARMUP_STEPS=${WARMUP_STEPS:-$TOY_PRETRAIN_WARMUP_STEPS}
    BLOCK_SIZE=${BLOCK_SIZE:-$TOY_BLOCK_SIZE}
    SAVE_STEPS=${SAVE_STEPS:-50}
    if [ ! -f "$MODEL_DIR/config.json" ]; then
      echo "Building the toy assets in $MODEL_DIR"
      (cd "$ROOT" && "${PYTHON:-python}" -m llmtrain.toy --output_dir "$MODEL_DIR")
    fi
    ;;
esac

if [ ! -f "$MODEL_DIR/config.json" ]; then
  cat >&2 <<EOF
No model config in $MODEL_DIR.
Download the Qwen2.5-1.5B folder (config + tokenizer) first, for example:
  python code/download_model.py --repo_id Qwen/Qwen2.5-1.5B --local_dir $MODEL_DIR
or point MODEL_DIR at an existing model folder, or run the toy job: PRESET=toy bash code/pretrain.sh
EOF
  exit 1
fi

launch "$CODE_DIR/pretrain.py" --config_name "$MODEL_DIR" --tokenizer_name "$MODEL_DIR" "$@"
