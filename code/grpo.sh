#!/usr/bin/env bash
# 6.5: launch code/grpo.py (GRPO through TRL, a reward a program checks) with the deepspeed launcher (ZeRO-2).
#
#   bash code/grpo.sh                the chapter-scale job: the SFT'd Qwen2.5-1.5B (bash code/finetune.sh) on
#                                    GSM8K's grade-school word problems (the exact final integer is the reward;
#                                    python code/download_dataset.py gsm8k), bf16, LoRA r=8
#   PRESET=toy bash code/grpo.sh     the toy DPO model (6.4, merged) on data/sample/grpo.jsonl (facts asked in
#                                    words SFT never used), held-out accuracy on data/sample/grpo_eval.jsonl,
#                                    2 CPU processes, LoRA on every linear layer (TOY_LORA_TARGETS), plus a
#                                    format reward for 6.4's closing sentence (STYLE_WEIGHT)
#   USE_LORA=0 ...                   every weight trains and TRL holds a second, frozen copy as the reference
#
# Every variable below can be set from the environment; extra arguments go to grpo.py (e.g. --loss_type grpo,
# --beta 0). HOSTFILE, DS_CONFIG, REPORT_TO, MASTER_PORT work as in pretrain.sh.
set -euo pipefail

CODE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$CODE_DIR")
PRESET=${PRESET:-chapter}
USE_LORA=${USE_LORA:-1}
LORA_SUFFIX=$([ "$USE_LORA" = 1 ] && echo "-lora" || true)

source "$CODE_DIR/launch_common.sh"
check_switch USE_LORA
if [ "$PRESET" = toy ]; then
  LOGGING_STEPS=${LOGGING_STEPS:-5}   # reward, KL and reply-length curves
fi
preset_defaults
case "$PRESET" in
  chapter)
    MODEL_DIR=${MODEL_DIR:-autodl-tmp/output/sft}
    TRAIN_FILES=${TRAIN_FILES:-autodl-tmp/dataset/gsm8k/train.jsonl}
    EVAL_FILES=${EVAL_FILES-autodl-tmp/dataset/gsm8k/test.jsonl}
    OUTPUT_DIR=${OUTPUT_DIR:-autodl-tmp/output/grpo$LORA_SUFFIX}
    GROUP=${GROUP:-8}
    BATCH_SIZE=${BATCH_SIZE:-16}        # replies per GPU and step: 2 prompts x 8
    GRAD_ACC=${GRAD_ACC:-4}
    LR=${LR:-$([ "$USE_LORA" = 1 ] && echo 1e-5 || echo 1e-6)}
    EPOCHS=${EPOCHS:-1}
    WARMUP_STEPS=${WARMUP_STEPS:-0.05}  # < 1: a ratio of the total steps
    BLOCK_SIZE=${BLOCK_SIZE:-1024}      # not used by GRPO (prompt and reply lengths are below); the launcher passes it
    BETA=${BETA:-0.04}
    MAX_COMPLETION=${MAX_COMPLETION:-512}
    STYLE_SUFFIX=${STYLE_SUFFIX:-}      # GSM8K's reward is the final integer alone
    STYLE_WEIGHT=${STYLE_WEIGHT:-0}
    SAVE_STEPS=${SAVE_STEPS:-100}
    ;;
  toy)
    MODEL_DIR=${MODEL_DIR:-$ROOT/output/toy/dpo-lora/merged}
    TRAIN_FILES=${TRAIN_FILES:-$ROOT/data/sample/grpo.jsonl}
    EVAL_FILES=${EVAL_FILES-$ROOT/data/sample/grpo_eval.jsonl}
    OUTPUT_DIR=${OUTPUT_DIR:-$ROOT/output/toy/grpo$LORA_SUFFIX}
    GROUP=${GROUP:-$TOY_GRPO_GROUP}
    BATCH_SIZE=${BATCH_SIZE:-$TOY_GRPO_BATCH_SIZE}
    LR=${LR:-$TOY_GRPO_LR}
    LORA_TARGETS=${LORA_TARGETS:-$TOY_LORA_TARGETS}   # used only with USE_LORA=1
    LORA_DROPOUT=${LORA_DROPOUT:-0}     # the replies are scored under the weights that sampled them
    EPOCHS=${EPOCHS:-1}
    MAX_STEPS=${MAX_STEPS:-$TOY_GRPO_STEPS}
    WARMUP_STEPS=${WARMUP_STEPS:-0}
    BLOCK_SIZE=${BLOCK_SIZE:-128}
    BETA=${BETA:-$TOY_GRPO_BETA}
    MAX_COMPLETION=${MAX_COMPLETION:-$TOY_GRPO_MAX_COMPLETION}
    STYLE_SUFFIX=${STYLE_SUFFIX-$(python -c 'from llmtrain.evaluation import TOY_STYLE_SUFFIX; print(TOY_STYLE_SUFFIX)')}
    STYLE_WEIGHT=${STYLE_WEIGHT:-$TOY_GRPO_STYLE_WEIGHT}
    SAVE_STEPS=${SAVE_STEPS:-50}
    CHECKPOINTING=${CHECKPOINTING:---activation_checkpointing false}   # TRL's default is on
    if [ "$MODEL_DIR" = "$ROOT/output/toy/dpo-lora/merged" ] && [ ! -f "$MODEL_DIR/model.safetensors" ]; then
      echo "No toy DPO model in $MODEL_DIR: running 6.4 first"
      PRESET=toy bash "$CODE_DIR/dpo.sh"
    fi
    ;;
esac

if [ ! -f "$MODEL_DIR/config.json" ]; then
  cat >&2 <<EOT
No model to start from in $MODEL_DIR.
Fine-tune one first (bash code/finetune.sh writes autodl-tmp/output/sft), or point MODEL_DIR at yours;
and the prompts: python code/download_dataset.py gsm8k --local_dir autodl-tmp/dataset/gsm8k
EOT
  exit 1
fi

extra=(--beta "$BETA" --num_generations "$GROUP" --max_completion_length "$MAX_COMPLETION")
[ -n "$EVAL_FILES" ] && extra+=(--eval_files $EVAL_FILES)
[ -n "$STYLE_SUFFIX" ] && extra+=(--style_suffix "$STYLE_SUFFIX" --style_weight "$STYLE_WEIGHT")
if [ "$USE_LORA" = 1 ]; then
  lora_flags
  extra+=("${LORA_FLAGS[@]}")
fi
launch "$CODE_DIR/grpo.py" --model_name_or_path "$MODEL_DIR" "${extra[@]}" "$@"
