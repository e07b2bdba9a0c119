#!/usr/bin/env bash
# 6.2: launch code/finetune.py (SFT) with the deepspeed launcher (ZeRO-2, code/ds_config_zero2.json).
#
#   bash code/finetune.sh                 the chapter's job: Qwen2.5-1.5B on BelleGroup, 3 epochs, bf16
#   PRESET=toy bash code/finetune.sh      the toy pretrained model on data/sample/sft.jsonl, 2 CPU processes
#   USE_LORA=1 ...                        6.3.5: LoRA adapters through peft (r=8, alpha=32, dropout=0.1 on the
#                                         chapter's q_proj,v_proj; the toy preset: every linear layer), plus the
#                                         merged model in $OUTPUT_DIR/merged
#   USE_QLORA=1 ...                       QLoRA: the same adapters on a base loaded in 4-bit NF4 (bitsandbytes,
#                                         double quantisation); the merged model is merged into the unquantised base
#   USE_LIGER=0 ...                       chapter preset: without Liger's fused cross-entropy (default: on when a
#                                         GPU and liger-kernel are present)
#
# The values of each preset are in code/presets/chapter.env and toy.env (SFT_*); any of them can be set from the
# environment (the list is in code/launch_common.sh); extra arguments go to finetune.py (e.g. --packing false).
source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"

check_switch USE_LORA
check_switch USE_QLORA "QLoRA needs bitsandbytes (pip install -e .)"
if [ "${USE_QLORA:-0}" = 1 ]; then
  start_stage SFT QLORA LORA        # QLoRA is LoRA on a 4-bit base: LoRA's values unless QLoRA has its own
elif [ "${USE_LORA:-0}" = 1 ]; then
  start_stage SFT LORA
else
  start_stage SFT
fi
take_preset MAX_TRAIN_SAMPLES
extra=()
[ -n "$MAX_TRAIN_SAMPLES" ] && extra+=(--max_train_samples "$MAX_TRAIN_SAMPLES")
adapters=()
if [ "${#VARIANTS[@]}" -gt 0 ]; then
  lora_flags
  extra+=("${LORA_FLAGS[@]}")
  # With LoRA only the adapters have gradients and Adam states; QLoRA also stores the base in 4 bits.
  adapters=(--lora_r "${LORA_R:-8}" --lora_target_modules "$LORA_TARGETS")
fi
if [ "${USE_QLORA:-0}" = 1 ]; then
  extra+=(--use_qlora)
  adapters+=(--load_in_4bit)
fi
if [ "$PRESET" = chapter ]; then
  use_liger
fi
require_model_dir
plan_batch "${adapters[@]}"
launch "$CODE_DIR/finetune.py" --model_name_or_path "$MODEL_DIR" "${extra[@]}" "${LIGER_FLAGS[@]}" "$@"
