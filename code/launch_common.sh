# Sourced at the top of pretrain.sh, finetune.sh and dpo.sh (6.1.5): what their presets share, the
# LoRA flags, and the deepspeed launcher with the TrainingArguments flags every script passes.
# The calling script sets CODE_DIR, PRESET and, per preset, MODEL_DIR, TRAIN_FILES, OUTPUT_DIR,
# BATCH_SIZE, LR, EPOCHS, WARMUP_STEPS, BLOCK_SIZE, SAVE_STEPS; everything else has a default here.
#   preset_defaults                      first: the shared values (and, for toy, code/presets/toy.env)
#   lora_flags                           USE_LORA=1: sets LORA_FLAGS (only the LORA_* overrides given)
#   use_liger                            chapter: sets LIGER_FLAGS from USE_LIGER (default: on with a GPU + liger-kernel)
#   plan_batch [estimate flags...]       chapter: BATCH_SIZE / GRAD_ACC that fit the card (code/estimate_memory.py)
#   check_switch NAME [hint]             NAME must be empty, 0 or 1 (else one line and exit 1)
#   launch SCRIPT.py [flags of that script...]

# Shared by every preset and script; each can be set from the environment. The toy values are for
# a CPU-only machine: 2 processes over gloo, one core each, fp32.
preset_defaults() {
  case "$PRESET" in
    chapter)
      NUM_GPUS=${NUM_GPUS:-}              # empty: every visible GPU
      WORKERS=${WORKERS:-10}
      CHECKPOINTING=${CHECKPOINTING-"--activation_checkpointing"}  # the chapter's --gradient_checkpointing, renamed in transformers 5
      PRECISION=${PRECISION-}             # empty: each script takes bf16 / fp16 (V100, T4) / fp32 (CPU) from the machine
      # Measured on an H200 (bench/results/gpu_h200_2026-11-30.json): the chapter's 16 x 4 job reserved 27.8 GiB above
      # the allocated peak with the default caching allocator, 20.6 GiB with expandable segments, at the same
      # tokens/s (32,436 vs 32,397). PYTORCH_CUDA_ALLOC_CONF= (empty) keeps PyTorch's default.
      export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF-expandable_segments:True}
      ;;
    toy)
      source "$CODE_DIR/presets/toy.env"  # the toy values shared with the notebooks and tests
      NUM_GPUS=${NUM_GPUS:-$TOY_NUM_PROCESSES}
      WORKERS=${WORKERS:-1}
      PRECISION=${PRECISION-"--bf16 false"}   # fp32 on any machine: the toy results are fp32's
      CHECKPOINTING=${CHECKPOINTING-}
      export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
      GRAD_ACC=${GRAD_ACC:-1}
      ;;
    *)
      echo "Unknown PRESET=$PRESET: use 'chapter' (default) or 'toy'." >&2
      exit 2
      ;;
  esac
  LOGGING_STEPS=${LOGGING_STEPS:-5}
}

# USE_LORA=1 (6.3.5): train peft LoRA adapters and also save the merged model. The LoRA flags are
# passed only when set here (LORA_R, LORA_ALPHA, LORA_DROPOUT, LORA_TARGETS); otherwise the script's
# LoraArguments defaults hold: the chapter's r=8, alpha=32, dropout=0.1 on q_proj,v_proj.
lora_flags() {
  LORA_FLAGS=(--use_lora --merge_lora)
  [ -n "${LORA_R:-}" ] && LORA_FLAGS+=(--lora_r "$LORA_R")
  [ -n "${LORA_ALPHA:-}" ] && LORA_FLAGS+=(--lora_alpha "$LORA_ALPHA")
  [ -n "${LORA_DROPOUT:-}" ] && LORA_FLAGS+=(--lora_dropout "$LORA_DROPOUT")
  [ -n "${LORA_TARGETS:-}" ] && LORA_FLAGS+=(--lora_target_modules "$LORA_TARGETS")
  return 0
}

check_switch() {
  local value=${!1:-}
  case "$value" in
    ""|0|1) ;;
    *) echo "$1=$value: use 1 (on) or 0 (off)${2:+; $2}." >&2; exit 1 ;;
  esac
}

# Liger's fused linear cross-entropy never materialises the batch x 2048 x 151,936 logits: on the H200 the
# chapter's job took 2.5x less memory and ran 1.31x faster with it. USE_LIGER unset: on when a GPU is present
# and liger-kernel is installed (pip install -r requirements-gpu.txt); USE_LIGER=0 off, USE_LIGER=1 on.
use_liger() {
  check_switch USE_LIGER "or leave it unset (on when a GPU and liger-kernel are present)"
  if [ -z "${USE_LIGER:-}" ]; then
    if "${PYTHON:-python}" -c 'import importlib.util, sys, torch
sys.exit(not (torch.cuda.is_available() and importlib.util.find_spec("liger_kernel")))' 2>/dev/null; then
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
# Keep its global batch (16 x 4 per GPU) with the per-device batch and gradient accumulation whose allocated
# peak x measured allocator reserve + CUDA context fits the card (llmtrain.memory): GPU_MEM_GIB=24|48|80, else
# read from GPU 0. BATCH_SIZE / GRAD_ACC from the environment win (one alone: the other keeps the chapter's
# value). Without the model folder nothing is planned (the script's check says how to get it).
# Arguments: extra code/estimate_memory.py flags (LoRA / QLoRA); LIGER_FLAGS and PRECISION are read.
plan_batch() {
  if [ -z "${BATCH_SIZE:-}${GRAD_ACC:-}" ] && [ -f "$MODEL_DIR/config.json" ]; then
    local gpus dtype plan expandable=()
    gpus=${NUM_GPUS:-$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)}
    [ "$gpus" -gt 0 ] || gpus=1
    case "$PRECISION" in
      *fp16*) dtype=fp16 ;;
      *"bf16 false"*) dtype=fp32 ;;
      *bf16*) dtype=bf16 ;;
      *) dtype=$("${PYTHON:-python}" -c 'import torch
print("fp32" if not torch.cuda.is_available() else "bf16" if torch.cuda.is_bf16_supported() else "fp16")') ;;
    esac
    case "${PYTORCH_CUDA_ALLOC_CONF:-}" in *expandable_segments:True*) expandable=(--expandable_segments) ;; esac
    plan=$("${PYTHON:-python}" "$CODE_DIR/estimate_memory.py" --shell_plan --config_name "$MODEL_DIR" \
      "${LIGER_FLAGS[@]}" "${expandable[@]}" "$@" --gpu_memory_gib "${GPU_MEM_GIB:-auto}" --num_gpus "$gpus" \
      --block_size "$BLOCK_SIZE" --dtype "$dtype" --deepspeed "${DS_CONFIG:-$CODE_DIR/ds_config_zero2.json}" \
      ${CHECKPOINTING:+--activation_checkpointing}) || exit 1   # its message says what to change
    eval "$plan"
  fi
  BATCH_SIZE=${BATCH_SIZE:-16}
  GRAD_ACC=${GRAD_ACC:-4}
}

launch() {
  local script=$1
  shift
  local launcher=(deepspeed)
  [ -n "$NUM_GPUS" ] && launcher+=(--num_gpus "$NUM_GPUS")
  [ -n "${HOSTFILE:-}" ] && launcher+=(--hostfile "$HOSTFILE")     # multi-node
  [ -n "${MASTER_PORT:-}" ] && launcher+=(--master_port "$MASTER_PORT")
  # TRAIN_FILES, PRECISION and CHECKPOINTING are split into words on purpose: several files, or a flag
  # with its value ("--bf16 false"); empty, they pass nothing.
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
    --max_steps "${MAX_STEPS:--1}" \
    --warmup_steps "$WARMUP_STEPS" \
    --logging_strategy steps \
    --logging_steps "$LOGGING_STEPS" \
    --save_strategy steps \
    --save_steps "$SAVE_STEPS" \
    --preprocessing_num_workers "$WORKERS" \
    --save_total_limit 1 \
    --seed "${SEED:-12}" \
    --block_size "$BLOCK_SIZE" \
    $PRECISION \
    $CHECKPOINTING \
    --deepspeed "${DS_CONFIG:-$CODE_DIR/ds_config_zero2.json}" \
    --report_to "${REPORT_TO:-none}" \
    "$@"
}
