"""6.2: ask a fine-tuned model a few questions and print its replies.

    python code/chat.py --model output/toy/sft "3加5等于几?" "“大”的反义词是什么?"
"""

import argparse
import sys

from transformers import AutoModelForCausalLM

from llmtrain.errors import LlmtrainError
from llmtrain.generation import chat
from llmtrain.modeling import load_tokenizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A model folder (weights + tokenizer), e.g. output/toy/sft")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("questions", nargs="+")
    args = parser.parse_args(argv)
    try:
        tokenizer = load_tokenizer(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model)
    except (LlmtrainError, OSError) as err:
        print(f"Cannot load a chat model from {args.model}: {err}", file=sys.stderr)
        return 1
    for question in args.questions:
        print(f"用户: {question}\n模型: {chat(model, tokenizer, question, args.max_new_tokens)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
