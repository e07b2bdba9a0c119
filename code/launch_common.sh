# Sourced by pretrain.sh and finetune.sh: the deepspeed launcher and the TrainingArguments flags
# both scripts pass (6.1.5). Uses the variables the calling script has set (NUM_GPUS, BATCH_SIZE...).
#   launch SCRIPT.py [flags of that script...]

launch() {
  local script=$1
  shift
  local launcher=(deepspeed)
  [ -n "$NUM_GPUS" ] && launcher+=(--num_gpus "$NUM_GPUS")
  [ -n "${HOSTFILE:-}" ] && launcher+=(--hostfile "$HOSTFILE")     # multi-node
  [ -n "${MASTER_PORT:-}" ] && launcher+=(--master_port "$MASTER_PORT")
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
