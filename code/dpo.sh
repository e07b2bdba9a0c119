#!/usr/bin/env bash
# 6.4: launch code/dpo.py (DPO through TRL) with the deepspeed launcher (ZeRO-2, code/ds_config_zero2.json).
#
#   bash code/dpo.sh                 the chapter-scale job: the SFT'd Qwen2.5-1.5B (bash code/finetune.sh) on
#                                    llamafactory/DPO-En-Zh-20k (zh), 1 epoch, bf16 (fp16 on V100/T4), LoRA r=8
#   PRESET=toy bash code/dpo.sh      the toy SFT model on data/sample/dpo.jsonl, 2 CPU processes, LoRA on
#                                    every linear layer
#   USE_LORA=0 ...                   full DPO: every weight trains and TRL holds a second, frozen copy of
#                                    the model as the reference (LoRA: the adapter disabled is the reference)
#
# The values of each preset are in code/presets/chapter.env and toy.env (DPO_*); any of them can be set from the
# environment (the list is in code/launch_common.sh, plus EVAL_FILES, EVAL_BATCH_SIZE, BETA); extra arguments go to
# dpo.py (e.g. --loss_type ipo).
source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"

check_switch USE_LORA
start_stage DPO "$([ "${USE_LORA:-1}" = 1 ] && echo LORA || echo FULL)"   # LoRA by default
take_preset EVAL_FILES EVAL_BATCH_SIZE BETA
extra=(--beta "$BETA" --per_device_eval_batch_size "$EVAL_BATCH_SIZE")
[ -n "$EVAL_FILES" ] && extra+=(--eval_files $EVAL_FILES)   # several files: split into words on purpose
if [ "${USE_LORA:-1}" = 1 ]; then
  lora_flags
  extra+=("${LORA_FLAGS[@]}")
fi
require_model_dir
launch "$CODE_DIR/dpo.py" --model_name_or_path "$MODEL_DIR" "${extra[@]}" "$@"
