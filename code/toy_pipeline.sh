#!/usr/bin/env bash
# `make run`: the whole toy pipeline, every stage through its own launcher (DeepSpeed, 2 CPU processes each),
# each scored by code/evaluate.py as soon as it is trained (while the next stage trains, on the CPU time it leaves):
#   pretraining (6.1) -> full SFT (6.2) -> LoRA SFT (6.3) -> LoRA DPO (6.4) -> LoRA GRPO (6.5) -> scorecard
#
#   bash code/toy_pipeline.sh                       into output/toy (what `make run` does)
#   TOY_RUN_DIR=/tmp/run bash code/toy_pipeline.sh  into another folder (the tests train it once per session)
#
# The folder is emptied first: this command (re)trains every stage. Each stage's log is kept as <stage>.log beside
# its model, the scorecard as scorecard.json (every reply in it). The stage names and folders are those of
# llmtrain.toy_run.TOY_STAGES, which notebooks, tests and the chat page read.
set -euo pipefail

CODE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$CODE_DIR")
RUN_DIR=${TOY_RUN_DIR:-$ROOT/output/toy}
PYTHON=${PYTHON:-python}
source "$CODE_DIR/presets/toy.env"   # TOY_STYLE_SUFFIX: 6.4's closing sentence, set aside when grading
export TOY_RUN_DIR=$RUN_DIR PRESET=toy
SAMPLE=$ROOT/data/sample

echo "Training every toy stage into $RUN_DIR (what was there is deleted first)"
rm -rf "$RUN_DIR"
mkdir -p "$RUN_DIR"

# train LOG ENV... SCRIPT: one launcher, its output shown and kept in $RUN_DIR/LOG.log
train() {
  local log=$1
  shift
  echo "== $log: $*"
  env "$@" 2>&1 | tee "$RUN_DIR/$log.log"
  return "${PIPESTATUS[0]}"
}

# score NAME MODEL [ADAPTER]: one scorecard row, every reply kept in $RUN_DIR/scorecard.json. It runs in the
# background at the lowest CPU priority (nice 19) while the next stage trains, on the CPU time the launch leaves
# idle (start-up, loading, saving): on 2 idle cores the pipeline took 4:52 instead of 5:04, the same scorecard.
# One at a time (each writes the scorecard).
SCORING=
score() {
  wait_for_scoring
  HF_HUB_DISABLE_PROGRESS_BARS=1 nice -n 19 \
    "$PYTHON" "$CODE_DIR/evaluate.py" --name "$1" --model "$RUN_DIR/$2" ${3:+--adapter "$RUN_DIR/$3"} \
    --eval_file "$SAMPLE/eval.jsonl" --valid_text "$SAMPLE/pretrain_valid.jsonl" \
    --valid_conversations "$SAMPLE/sft_valid.jsonl" --rl_eval_file "$SAMPLE/grpo_eval.jsonl" \
    --rl_new_phrasing_file "$SAMPLE/grpo_eval_new_phrasing.jsonl" \
    --style_suffix "$TOY_STYLE_SUFFIX" --scorecard "$RUN_DIR/scorecard.json" > /dev/null &
  SCORING="$! $1"
}

# wait_for_scoring: the scoring started last has finished (the pipeline stops if it failed).
wait_for_scoring() {
  [ -n "$SCORING" ] || return 0
  local pid=${SCORING%% *} name=${SCORING#* }
  SCORING=
  wait "$pid" || { echo "Scoring the stage \"$name\" failed (code/evaluate.py, its message above)." >&2; exit 1; }
}
trap 'wait_for_scoring' EXIT   # a stage that fails still leaves the stage before it scored, and nothing running

train pretrain bash "$CODE_DIR/pretrain.sh"
score "base (6.1)" pretrain
train sft bash "$CODE_DIR/finetune.sh"
score "full SFT (6.2)" sft
train sft-lora USE_LORA=1 bash "$CODE_DIR/finetune.sh"
score "LoRA SFT (6.3)" pretrain sft-lora
train dpo-lora bash "$CODE_DIR/dpo.sh"
score "LoRA DPO (6.4)" sft dpo-lora
train grpo-lora EVAL_FILES=none bash "$CODE_DIR/grpo.sh"   # its held-out column is the scorecard's RL task
score "LoRA GRPO (6.5)" dpo-lora/merged grpo-lora
wait_for_scoring

echo
echo "Full SFT vs LoRA SFT (r=8 on every linear layer, TOY_LORA_TARGETS) on the same toy base and data:"
"$PYTHON" "$CODE_DIR/compare_runs.py" "$RUN_DIR/sft" "$RUN_DIR/sft-lora"
echo
echo "Scorecard ($RUN_DIR/scorecard.json, every reply kept there):"
"$PYTHON" -c "import sys; from llmtrain.evaluation import format_scorecard, read_scorecard
print(format_scorecard(read_scorecard(sys.argv[1])))" "$RUN_DIR/scorecard.json"
echo
echo "Models (each folder: weights or adapter, loss.png, trainer_state.json; the launcher's log beside it):"
echo "  pretrained base:   $RUN_DIR/pretrain/"
echo "  full SFT:          $RUN_DIR/sft/"
echo "  LoRA SFT adapter:  $RUN_DIR/sft-lora/  (merged plain model: merged/)"
echo "  LoRA DPO adapter:  $RUN_DIR/dpo-lora/  (merged plain model: merged/)"
echo "  LoRA GRPO adapter: $RUN_DIR/grpo-lora/ (merged plain model: merged/)"
