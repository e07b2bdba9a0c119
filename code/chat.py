"""6.2: ask a fine-tuned model a few questions and print its replies.

    python code/chat.py --model output/toy/sft "3加5等于几?" "“大”的反义词是什么?"
"""

import argparse

from transformers import AutoModelForCausalLM

from llmtrain.errors import LlmtrainError, run_cli
from llmtrain.generation import chat
from llmtrain.modeling import load_tokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A model folder (weights + tokenizer), e.g. output/toy/sft")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("questions", nargs="+")
    args = parser.parse_args(argv)
    tokenizer = load_tokenizer(args.model)
    try:
        model = AutoModelForCausalLM.from_pretrained(args.model)
    except OSError as err:
        raise LlmtrainError(f"Cannot load a chat model from {args.model}: {err}") from err
    for question in args.questions:
        print(f"用户: {question}\n模型: {chat(model, tokenizer, question, args.max_new_tokens)}\n")


if __name__ == "__main__":
    run_cli(main)
