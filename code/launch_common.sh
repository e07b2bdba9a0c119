# Sourced at the top of pretrain.sh, finetune.sh and dpo.sh (6.1.5): what their presets share, the
# LoRA flags, and the deepspeed launcher with the TrainingArguments flags every script passes.
# The calling script sets CODE_DIR, PRESET and, per preset, MODEL_DIR, TRAIN_FILES, OUTPUT_DIR,
# BATCH_SIZE, LR, EPOCHS, WARMUP_STEPS, BLOCK_SIZE, SAVE_STEPS; everything else has a default here.
#   preset_defaults                      first: the shared values (and, for toy, code/presets/toy.env)
#   lora_flags                           USE_LORA=1: sets LORA_FLAGS (only the LORA_* overrides given)
#   launch SCRIPT.py [flags of that script...]

# Shared by every preset and script; each can be set from the environment. The toy values are for
# a CPU-only machine: 2 processes over gloo, one core each, fp32.
preset_defaults() {
  case "$PRESET" in
    chapter)
      NUM_GPUS=${NUM_GPUS:-}              # empty: every visible GPU
      WORKERS=${WORKERS:-10}
      CHECKPOINTING=${CHECKPOINTING-"--activation_checkpointing"}  # the chapter's --gradient_checkpointing, renamed in transformers 5
      ;;
    toy)
      source "$CODE_DIR/presets/toy.env"  # the toy values shared with the notebooks and tests
      NUM_GPUS=${NUM_GPUS:-$TOY_NUM_PROCESSES}
      WORKERS=${WORKERS:-1}
      PRECISION=${PRECISION-}             # fp32 on CPU
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
