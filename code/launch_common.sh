# Sourced first by each of the four launchers, code/pretrain.sh, finetune.sh, dpo.sh and grpo.sh (6.1.5):
# everything they share. Sourcing it sets `set -euo pipefail`, CODE_DIR, ROOT, PRESET (chapter, the default, or
# toy) and RUN_DIR (the toy preset's output/toy, or $TOY_RUN_DIR), reads code/presets/$PRESET.env, and defines:
#   start_stage STAGE [VARIANT...]  the launch's stage (PRETRAIN, SFT, DPO, GRPO) and variants (LORA, QLORA, FULL);
#                                   takes every shared setting (below) from the environment or the preset
#   take_preset NAME...             each NAME from the environment, else the preset's value for this stage:
#                                   <PRESET>_<STAGE>_<VARIANT>_<NAME>, <PRESET>_<STAGE>_<NAME>, <PRESET>_<NAME>.
#                                   Empty or unset takes the preset's; the word `none` means "nothing" (empty)
#   check_switch NAME [hint]        NAME must be empty, 0 or 1 (else one line and exit 1)
#   lora_flags                      sets LORA_FLAGS (the adapter flags, the merged model too)
#   use_liger                       chapter: sets LIGER_FLAGS from USE_LIGER (default: on with a GPU + liger-kernel)
#   plan_batch [estimate flags...]  BATCH_SIZE / GRAD_ACC that fit the card (code/estimate_memory.py), when the preset
#                                   plans (PLAN_BATCH=1) and neither was given
#   print_memory_estimate [flags]   the memory model's estimate of this launch, printed before it (chapter GRPO)
#   require_model_dir               MODEL_DIR must hold a model; toy preset, default folder: the stage before makes it
#   launch SCRIPT.py [flags...]     the deepspeed launcher with the TrainingArguments flags every script passes
# Shared settings (each a variable of that name, e.g. LR=1e-4 bash code/pretrain.sh): MODEL_DIR TRAIN_FILES
# OUTPUT_DIR NUM_GPUS WORKERS PRECISION (auto|bf16|fp16|fp32) ACTIVATION_CHECKPOINTING (1|0) BATCH_SIZE GRAD_ACC LR
# EPOCHS MAX_STEPS WARMUP_STEPS BLOCK_SIZE LOGGING_STEPS SAVE_STEPS SEED DS_CONFIG REPORT_TO; also HOSTFILE
# (multi-node) and MASTER_PORT (default: a free port on a single node), and PYTHON (the interpreter; default: python).
set -euo pipefail

CODE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$CODE_DIR")
PRESET=${PRESET:-chapter}
PYTHON=${PYTHON:-python}
case "$PRESET" in
  chapter|toy) ;;
  *) echo "Unknown PRESET=$PRESET: use 'chapter' (default) or 'toy'." >&2; exit 2 ;;
esac
RUN_DIR=${TOY_RUN_DIR:-$ROOT/output/toy}
source "$CODE_DIR/presets/$PRESET.env"
PRESET_PREFIX=$(echo "$PRESET" | tr '[:lower:]' '[:upper:]')
STAGE=
VARIANTS=()
LIGER_FLAGS=()   # use_liger fills it (chapter preset)

preset_value() {
  local key keys=() variant
  for variant in "${VARIANTS[@]}"; do
    keys+=("${PRESET_PREFIX}_${STAGE}_${variant}_$1")
  done
  [ -n "$STAGE" ] && keys+=("${PRESET_PREFIX}_${STAGE}_$1")
  keys+=("${PRESET_PREFIX}_$1")
  for key in "${keys[@]}"; do
    if [ -n "${!key+x}" ]; then
      echo "${!key}"
      return 0
    fi
  done
}

TAKEN=()
take_preset() {
  local name value
  for name in "$@"; do
    value=${!name:-}
    [ -n "$value" ] || value=$(preset_value "$name")
    [ "$value" = none ] && value=
    printf -v "$name" '%s' "$value"
    TAKEN+=("$name")
  done
}

start_stage() {
  STAGE=$1
  shift
  VARIANTS=("$@")
  GIVEN_BATCH="${BATCH_SIZE:-}${GRAD_ACC:-}"   # a batch given by hand is never re-planned
  take_preset MODEL_DIR TRAIN_FILES OUTPUT_DIR NUM_GPUS WORKERS PRECISION ACTIVATION_CHECKPOINTING BATCH_SIZE \
    GRAD_ACC LR EPOCHS MAX_STEPS WARMUP_STEPS BLOCK_SIZE LOGGING_STEPS SAVE_STEPS SEED DS_CONFIG REPORT_TO PLAN_BATCH
  local threads allocator
  threads=$(preset_value OMP_NUM_THREADS)
  [ -n "$threads" ] && export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$threads}
  allocator=${PYTORCH_CUDA_ALLOC_CONF:-$(preset_value ALLOCATOR)}
  if [ -n "$allocator" ] && [ "$allocator" != default ]; then
    export PYTORCH_CUDA_ALLOC_CONF=$allocator
  else
    unset PYTORCH_CUDA_ALLOC_CONF
  fi
  return 0
}

check_switch() {
  local value=${!1:-}
  case "$value" in
    ""|0|1) ;;
    *) echo "$1=$value: use 1 (on) or 0 (off)${2:+; $2}." >&2; exit 1 ;;
  esac
}

# USE_LORA=1 (6.3.5): train peft LoRA adapters and also save the merged model. LORA_R, LORA_ALPHA, LORA_DROPOUT and
# LORA_TARGETS are passed when set here or in the preset; otherwise the script's LoraArguments defaults hold: the
# chapter's r=8, alpha=32, dropout=0.1.
lora_flags() {
  take_preset LORA_R LORA_ALPHA LORA_DROPOUT LORA_TARGETS
  LORA_FLAGS=(--use_lora --merge_lora)
  [ -n "$LORA_R" ] && LORA_FLAGS+=(--lora_r "$LORA_R")
  [ -n "$LORA_ALPHA" ] && LORA_FLAGS+=(--lora_alpha "$LORA_ALPHA")
  [ -n "$LORA_DROPOUT" ] && LORA_FLAGS+=(--lora_dropout "$LORA_DROPOUT")
  [ -n "$LORA_TARGETS" ] && LORA_FLAGS+=(--lora_target_modules "$LORA_TARGETS")
  return 0
}

# Liger's fused linear cross-entropy never materialises the batch x 2048 x 151,936 logits: on the H200 the
# chapter's job took 2.5x less memory and ran 1.31x faster with it. USE_LIGER unset: on when a GPU is present
# and liger-kernel is installed (pip install -e '.[gpu]'); USE_LIGER=0 off, USE_LIGER=1 on.
use_liger() {
  check_switch USE_LIGER "or leave it unset (on when a GPU and liger-kernel are present)"
  if [ -z "${USE_LIGER:-}" ]; then
    if "$PYTHON" -c 'import importlib.util, sys
importlib.util.find_spec("liger_kernel") or sys.exit(1)   # without it, no need to start torch (1-2 s)
import torch
sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
      USE_LIGER=1
    else
      USE_LIGER=0
    fi
  fi
  LIGER_FLAGS=()
  [ "$USE_LIGER" = 1 ] && LIGER_FLAGS=(--use_liger_kernel)
  return 0
}

# The chapter's per-device batch 16 x 2048 needs ~67 GiB allocated per GPU without Liger (logits + fp32 loss
# buffers; happy-llm #106 ran out of memory on 4 x 48 GB), and the caching allocator reserves more on top.
# Keep its global batch (BATCH_SIZE x GRAD_ACC per GPU) with the per-device batch and gradient accumulation whose
# allocated peak x measured allocator reserve + CUDA context fits the card (llmtrain.memory): GPU_MEM_GIB=24|48|80,
# else read from GPU 0. Without the model folder nothing is planned (require_model_dir says how to get it).
# Arguments: extra code/estimate_memory.py flags (LoRA / QLoRA); LIGER_FLAGS and PRECISION are read.
plan_batch() {
  [ "$PLAN_BATCH" = 1 ] && [ -z "$GIVEN_BATCH" ] && [ -f "$MODEL_DIR/config.json" ] || return 0
  local plan
  memory_model_flags
  plan=$("$PYTHON" "$CODE_DIR/estimate_memory.py" --shell_plan "${MEMORY_FLAGS[@]}" "$@" \
    --gpu_memory_gib "${GPU_MEM_GIB:-auto}" --global_batch_size $((BATCH_SIZE * GRAD_ACC * MEMORY_GPUS))) \
    || exit 1   # its message says what to change
  eval "$plan"
}

# print_memory_estimate [estimate flags...]: the memory model's per-GPU estimate of this launch, term by term, on
# stderr before it starts (the card it needs; on a GPU, whether it fits). Nothing without the model folder.
print_memory_estimate() {
  [ -f "$MODEL_DIR/config.json" ] || return 0
  memory_model_flags
  local card=()
  if [ -n "${GPU_MEM_GIB:-}" ]; then
    card=(--gpu_memory_gib "$GPU_MEM_GIB")
  elif "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    card=(--gpu_memory_gib auto)
  fi
  "$PYTHON" "$CODE_DIR/estimate_memory.py" "${MEMORY_FLAGS[@]}" --per_device_train_batch_size "$BATCH_SIZE" \
    "${card[@]}" "$@" >&2 || exit 1
}

# MEMORY_FLAGS / MEMORY_GPUS: code/estimate_memory.py's description of this launch (model, GPUs, block, precision,
# ZeRO stage, checkpointing, Liger, allocator).
memory_model_flags() {
  local expandable=()
  MEMORY_GPUS=$NUM_GPUS
  [ "$MEMORY_GPUS" = all ] && MEMORY_GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  [ "${MEMORY_GPUS:-0}" -gt 0 ] || MEMORY_GPUS=1
  case "${PYTORCH_CUDA_ALLOC_CONF:-}" in *expandable_segments:True*) expandable=(--expandable_segments) ;; esac
  MEMORY_FLAGS=(--config_name "$MODEL_DIR" --num_gpus "$MEMORY_GPUS" --block_size "$BLOCK_SIZE" --dtype "$PRECISION"
                --deepspeed "$DS_CONFIG" "${LIGER_FLAGS[@]}" "${expandable[@]}")
  [ "$ACTIVATION_CHECKPOINTING" = 1 ] && MEMORY_FLAGS+=(--activation_checkpointing)
  return 0
}

# What each stage starts from, and how to get it when it is missing.
missing_model_message() {
  case "$STAGE" in
    PRETRAIN) cat <<EOF
No model config in $MODEL_DIR.
Download the Qwen2.5-1.5B folder (config + tokenizer) first, for example:
  python code/download_model.py --repo_id Qwen/Qwen2.5-1.5B --local_dir $MODEL_DIR
or point MODEL_DIR at an existing model folder, or run the toy job: PRESET=toy bash code/pretrain.sh
EOF
    ;;
    SFT) cat <<EOF
No model in $MODEL_DIR.
Download Qwen2.5-1.5B (or use your own pretrained output) first, for example:
  python code/download_model.py --repo_id Qwen/Qwen2.5-1.5B --local_dir $MODEL_DIR
and the SFT data: python code/download_dataset.py sft --local_dir autodl-tmp/dataset/sft_data/BelleGroup
EOF
    ;;
    DPO) cat <<EOF
No SFT model in $MODEL_DIR.
Fine-tune one first (bash code/finetune.sh writes autodl-tmp/output/sft), or point MODEL_DIR at yours;
and the preference data: python code/download_dataset.py dpo --local_dir autodl-tmp/dataset/dpo_data
EOF
    ;;
    GRPO) cat <<EOF
No model to start from in $MODEL_DIR.
Fine-tune one first (bash code/finetune.sh writes autodl-tmp/output/sft), or point MODEL_DIR at yours;
and the prompts: python code/download_dataset.py gsm8k --local_dir autodl-tmp/dataset/gsm8k
EOF
    ;;
  esac
}

# The toy preset builds what a stage starts from when its default folder is missing: the toy assets for
# pretraining, then each stage the one before (pretrain.sh, finetune.sh, dpo.sh), into the same RUN_DIR with that
# stage's own preset values (SEED, NUM_GPUS, WORKERS, PRECISION, ACTIVATION_CHECKPOINTING, DS_CONFIG and REPORT_TO
# carry over). A MODEL_DIR given by hand is never built into: a typo stops with the message.
require_model_dir() {
  if [ ! -f "$MODEL_DIR/config.json" ] && [ "$PRESET" = toy ] && [ "$MODEL_DIR" = "$(preset_value MODEL_DIR)" ]; then
    local before
    case "$STAGE" in
      PRETRAIN) echo "Building the toy assets in $MODEL_DIR"
        (cd "$ROOT" && "$PYTHON" -m llmtrain.toy --output_dir "$MODEL_DIR") ;;
      SFT) before=pretrain.sh ;;
      DPO) before=finetune.sh ;;
      GRPO) before=dpo.sh ;;
    esac
    if [ -n "${before:-}" ]; then
      echo "No toy model in $MODEL_DIR: running PRESET=toy bash code/$before first"
      local run_wide=" SEED NUM_GPUS WORKERS PRECISION ACTIVATION_CHECKPOINTING DS_CONFIG REPORT_TO " name
      (for name in "${TAKEN[@]}" USE_LORA USE_QLORA; do   # the stage before takes its own preset values
         [[ $run_wide == *" $name "* ]] || unset "$name"
       done
       PRESET=toy bash "$CODE_DIR/$before")
    fi
  fi
  if [ ! -f "$MODEL_DIR/config.json" ]; then
    missing_model_message >&2
    exit 1
  fi
}

launch() {
  local script=$1
  shift
  local launcher=(deepspeed) precision=()
  [ "$NUM_GPUS" != all ] && launcher+=(--num_gpus "$NUM_GPUS")
  [ -n "${HOSTFILE:-}" ] && launcher+=(--hostfile "$HOSTFILE")     # multi-node
  # The launcher's default port 29500 is taken by any other run on this machine (a notebook, a second make run):
  # single-node launches pick a free one unless MASTER_PORT says otherwise.
  [ -z "${MASTER_PORT:-}" ] && [ -z "${HOSTFILE:-}" ] && MASTER_PORT=$("$PYTHON" -c 'import socket
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  [ -n "${MASTER_PORT:-}" ] && launcher+=(--master_port "$MASTER_PORT")
  case "$PRECISION" in
    auto) ;;                                  # the script takes it from the machine
    bf16) precision=(--bf16 true --fp16 false) ;;
    fp16) precision=(--fp16 true --bf16 false) ;;
    fp32) precision=(--bf16 false --fp16 false) ;;
    *) echo "PRECISION=$PRECISION: use auto, bf16, fp16 or fp32." >&2; exit 1 ;;
  esac
  check_switch ACTIVATION_CHECKPOINTING
  # On a CPU, DeepSpeed's shared-memory allreduce gives each rank a 66 MB buffer in /dev/shm, named after the port,
  # and never removes it: every launch would keep 132 MB of RAM until the next reboot. Removed when this one ends.
  [ -n "${MASTER_PORT:-}" ] && trap 'rm -f /dev/shm/deepspeed_allreduce_buffer_"$(id -u)"_*_"$MASTER_PORT"_*' EXIT
  # TRAIN_FILES is split into words on purpose: several files.
  set -x
  "${launcher[@]}" "$script" \
    --train_files $TRAIN_FILES \
    --per_device_train_batch_size "$BATCH_SIZE" \
    --gradient_accumulation_steps "$GRAD_ACC" \
    --do_train \
    --output_dir "$OUTPUT_DIR" \
    --eval_strategy no \
    --learning_rate "$LR" \
    --num_train_epochs "$EPOCHS" \
    --max_steps "$MAX_STEPS" \
    --warmup_steps "$WARMUP_STEPS" \
    --logging_strategy steps \
    --logging_steps "$LOGGING_STEPS" \
    --save_strategy steps \
    --save_steps "$SAVE_STEPS" \
    --preprocessing_num_workers "$WORKERS" \
    --save_total_limit 1 \
    --seed "$SEED" \
    --block_size "$BLOCK_SIZE" \
    "${precision[@]}" \
    --activation_checkpointing "$([ "$ACTIVATION_CHECKPOINTING" = 1 ] && echo true || echo false)" \
    --deepspeed "$DS_CONFIG" \
    --report_to "${REPORT_TO:-none}" \
    "$@"
}
