#!/usr/bin/env bash
# 6.1.5: launch code/pretrain.py with the deepspeed launcher (ZeRO-2, code/ds_config_zero2.json).
#
#   bash code/pretrain.sh                 the chapter's job: Qwen2.5-1.5B architecture, block 2048, bf16, Liger
#                                         when installed (USE_LIGER=0 off), batch planned for the card (GPU_MEM_GIB)
#   PRESET=toy bash code/pretrain.sh      the same script on the toy assets: 2 CPU processes, fp32, ~1 min
#
# The values of each preset are in code/presets/chapter.env and toy.env; any of them can be set from the
# environment (e.g. OUTPUT_DIR=... NUM_GPUS=8 MAX_STEPS=50 SEED=1; the list is in code/launch_common.sh); extra
# arguments are passed on to pretrain.py (e.g. --resume_from_checkpoint DIR). Multi-node: HOSTFILE=hostfile (the
# deepspeed launcher's format). ZeRO-3 + optimizer offload: DS_CONFIG=code/ds_config_zero3.json.
source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"

start_stage PRETRAIN
if [ "$PRESET" = chapter ]; then
  use_liger
fi
require_model_dir
plan_batch
launch "$CODE_DIR/pretrain.py" --config_name "$MODEL_DIR" --tokenizer_name "$MODEL_DIR" "${LIGER_FLAGS[@]}" "$@"
