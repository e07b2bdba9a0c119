#!/usr/bin/env bash
# 6.1.5: launch code/pretrain.py with the deepspeed launcher (ZeRO-2, code/ds_config_zero2.json).
#
#   bash code/pretrain.sh                 the chapter's job: Qwen2.5-1.5B architecture, block 2048, bf16, Liger
#                                         when installed (USE_LIGER=0 off), batch planned for the card (GPU_MEM_GIB)
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
LIGER_FLAGS=()
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
    use_liger
    plan_batch
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

launch "$CODE_DIR/pretrain.py" --config_name "$MODEL_DIR" --tokenizer_name "$MODEL_DIR" "${LIGER_FLAGS[@]}" "$@"
