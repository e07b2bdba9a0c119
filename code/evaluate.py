"""6.2-6.4: one scorecard row for a model (or base model + LoRA adapter): what did this stage add?

    python code/evaluate.py --model output/toy/sft --eval_file data/sample/eval.jsonl \
        --valid_text data/sample/pretrain_valid.jsonl --valid_conversations data/sample/sft_valid.jsonl \
        --name "full SFT" --scorecard output/toy/scorecard.json

Greedy replies to the eval questions through the chat template, strict accuracy per split
(`llmtrain.grading.is_strict_match`), the share of replies that stop at <|im_end|>, held-out
perplexity and held-out assistant-token loss. Prints the row (or, with --scorecard, every row
of that file after adding this one) as a markdown table; the JSON keeps every reply. With
--rl_eval_file (6.5's held-out RL prompts, data/sample/grpo_eval.jsonl) the row also has the RL task's
greedy accuracy, graded by the reward GRPO trains with (`llmtrain.evaluation.task_accuracy`).
"""

import argparse
import json
import logging
import os
import sys

from transformers import AutoModelForCausalLM

from llmtrain.errors import LlmtrainError, run_cli
from llmtrain.evaluation import add_rl_task_column, format_scorecard, save_scorecard_row, scorecard_row
from llmtrain.lora import load_adapter
from llmtrain.modeling import load_tokenizer

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Model folder (weights + tokenizer), e.g. output/toy/sft.")
    parser.add_argument("--adapter", help="A peft LoRA adapter folder to put on --model (e.g. output/toy/sft-lora).")
    parser.add_argument("--eval_file", default="data/sample/eval.jsonl",
                        help='JSON lines {"question", "answer", "split": "sft_seen" | "heldout"}.')
    parser.add_argument("--valid_text", nargs="*", default=[], help='Held-out {"text"} files for perplexity.')
    parser.add_argument("--valid_conversations", nargs="*", default=[],
                        help="Held-out conversation files for the assistant-token loss.")
    parser.add_argument("--style_suffix", help="Also report the share of replies that end with this sentence (6.4's "
                        "preference); replies are graded without it.")
    parser.add_argument("--rl_eval_file", help='6.5: held-out RL prompts {"prompt", "answer", "task"}: the RL '
                        "task's accuracy (replies graded without --style_suffix).")
    parser.add_argument("--rl_new_phrasing_file", help="6.5: held-out RL prompts in a phrasing RL never trained on "
                        "(data/sample/grpo_eval_new_phrasing.jsonl): a column of its own.")
    parser.add_argument("--name", help="Run name of the row (default: the model folder).")
    parser.add_argument("--scorecard", help="JSON file of all rows ({name: row}): add this row to it.")
    parser.add_argument("--json", help="Write this row alone, with every reply, to this JSON file.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not os.path.isfile(os.path.join(args.model, "config.json")):
        raise LlmtrainError(f"--model {args.model}: no config.json there. Pass a saved model folder, e.g. "
                            "output/toy/sft after `make run`.")
    tokenizer = load_tokenizer(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    if args.adapter:
        if not os.path.isfile(os.path.join(args.adapter, "adapter_config.json")):
            raise LlmtrainError(f"--adapter {args.adapter}: no adapter_config.json there. Pass the output_dir of "
                                "a LoRA run (finetune.py --use_lora).")
        model = load_adapter(model, args.adapter)
    row = scorecard_row(model, tokenizer, args.eval_file, args.valid_text, args.valid_conversations,
                        args.style_suffix)
    if args.rl_eval_file:
        add_rl_task_column(row, model, tokenizer, args.rl_eval_file, args.style_suffix)
    if args.rl_new_phrasing_file:
        add_rl_task_column(row, model, tokenizer, args.rl_new_phrasing_file, args.style_suffix, "rl_new_phrasing")
    name = args.name or os.path.basename(os.path.normpath(args.adapter or args.model))
    rows = save_scorecard_row(args.scorecard, name, row) if args.scorecard else {name: row}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(row, f, ensure_ascii=False, indent=1)
    print(format_scorecard(rows))


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
