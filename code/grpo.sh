#!/usr/bin/env bash
# 6.5: launch code/grpo.py (GRPO through TRL, a reward a program checks) with the deepspeed launcher (ZeRO-2).
#
#   bash code/grpo.sh                the chapter-scale job: the SFT'd Qwen2.5-1.5B (bash code/finetune.sh) on
#                                    GSM8K's grade-school word problems (the exact final integer is the reward;
#                                    python code/download_dataset.py gsm8k), bf16, LoRA r=8
#   PRESET=toy bash code/grpo.sh     the toy DPO model (6.4, merged) on data/sample/grpo.jsonl (facts asked in
#                                    words SFT never used), held-out accuracy on data/sample/grpo_eval.jsonl,
#                                    2 CPU processes, LoRA on every linear layer, plus a format reward for 6.4's
#                                    closing sentence (STYLE_WEIGHT)
#   USE_LORA=0 ...                   every weight trains and TRL holds a second, frozen copy as the reference
#
# The values of each preset are in code/presets/chapter.env and toy.env (GRPO_*); any of them can be set from the
# environment (the list is in code/launch_common.sh, plus EVAL_FILES, GROUP, BETA, MAX_COMPLETION, STYLE_SUFFIX,
# STYLE_WEIGHT); extra arguments go to grpo.py (e.g. --loss_type grpo, --beta 0).
source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"

check_switch USE_LORA
start_stage GRPO "$([ "${USE_LORA:-1}" = 1 ] && echo LORA || echo FULL)"   # LoRA by default
take_preset EVAL_FILES GROUP BETA MAX_COMPLETION STYLE_SUFFIX STYLE_WEIGHT
extra=(--beta "$BETA" --num_generations "$GROUP" --max_completion_length "$MAX_COMPLETION")
[ -n "$EVAL_FILES" ] && extra+=(--eval_files $EVAL_FILES)   # several files: split into words on purpose
[ -n "$STYLE_SUFFIX" ] && extra+=(--style_suffix "$STYLE_SUFFIX" --style_weight "$STYLE_WEIGHT")
adapters=()
if [ "${USE_LORA:-1}" = 1 ]; then
  lora_flags
  extra+=("${LORA_FLAGS[@]}")
  adapters=(--lora_r "${LORA_R:-8}" --lora_target_modules "$LORA_TARGETS")
fi
require_model_dir
if [ "$PRESET" = chapter ]; then
  # A training step on BATCH_SIZE replies of prompt + reply (BLOCK_SIZE); sampling them adds its KV cache on top.
  print_memory_estimate "${adapters[@]}"
fi
launch "$CODE_DIR/grpo.py" --model_name_or_path "$MODEL_DIR" "${extra[@]}" "$@"
