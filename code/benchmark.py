"""7.1: score a model on standard benchmarks (C-Eval, CMMLU, GSM8K) or the toy world with lm-evaluation-harness.

    python code/benchmark.py --model autodl-tmp/qwen-1.5b --tasks ceval-valid cmmlu gsm8k \
        --output autodl-tmp/bench/qwen2.5-1.5b.json
    python code/benchmark.py --model autodl-tmp/output/sft --adapter autodl-tmp/output/dpo-lora --chat \
        --tasks ceval-valid cmmlu gsm8k --output autodl-tmp/bench/dpo.json
    python code/benchmark.py --model output/toy/pretrain --chat --tasks toy_world_mc toy_world_gen \
        --device cpu --output output/bench/toy-base.json

lm-eval does the evaluating (`lm_eval.simple_evaluate`, one timed call per task); this script loads the model
once (Hugging Face, or vLLM with --backend vllm), asks chat models (--chat) through their chat template with
replies ending at <|im_end|>, and writes the numbers with the model, the number of questions, the time, the
versions and the device to --output (JSON), then prints them as a table. --limit N scores the first N
questions of each task (subject) for a quick look. --samples also writes every question with the model's
response and its score (JSON lines). The benchmarks' data must be in the datasets cache first
(`python code/download_dataset.py benchmarks`); the toy world's tasks (code/lm_eval_tasks) read data/sample.
"""

import argparse
import logging
import sys

from llmtrain.errors import run_cli
from llmtrain.harness import (BACKENDS, benchmark_record, check_run, end_of_turn_gen_kwargs, format_benchmark_table,
                              load_lm, run_tasks, sample_records, task_manager, write_json_atomically)

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Model folder (weights + tokenizer), e.g. output/toy/sft.")
    parser.add_argument("--adapter", help="A peft LoRA adapter folder to put on --model (e.g. output/toy/dpo-lora).")
    parser.add_argument("--tasks", nargs="+", required=True,
                        help="lm-eval task or group names: ceval-valid, cmmlu, gsm8k, toy_world_mc, toy_world_gen, ...")
    parser.add_argument("--output", required=True, help="The results JSON to write.")
    parser.add_argument("--chat", action="store_true",
                        help="Ask through the tokenizer's chat template (chat models; every toy world task).")
    parser.add_argument("--limit", type=int, help="Score only the first N questions of each task (a quick look).")
    parser.add_argument("--num_fewshot", type=int, help="Examples in each prompt (default: each task's own).")
    parser.add_argument("--backend", default="hf", choices=BACKENDS, help="hf (transformers) or vllm (if installed).")
    parser.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when there is a GPU).")
    parser.add_argument("--dtype", default="auto", help="auto (the model's), bfloat16, float16, float32.")
    parser.add_argument("--batch_size", default="32", help="Questions per forward pass, or auto (lm-eval searches).")
    parser.add_argument("--samples", help="Also write every question, response and score here (JSON lines).")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_run(args.model, args.adapter, args.tasks, args.chat, args.backend)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    manager = task_manager(args.tasks)
    batch_size = args.batch_size if args.batch_size.startswith("auto") else int(args.batch_size)
    lm = load_lm(args.model, args.adapter, args.backend, device, args.dtype, batch_size)
    gen_kwargs = end_of_turn_gen_kwargs(lm.tokenizer, args.backend) if args.chat else None
    rows, samples = run_tasks(lm, args.tasks, manager, chat=args.chat, limit=args.limit,
                              num_fewshot=args.num_fewshot, gen_kwargs=gen_kwargs)
    record = benchmark_record(rows, model=args.model, adapter=args.adapter, backend=args.backend, chat=args.chat,
                              device=device, limit=args.limit, num_fewshot=args.num_fewshot)
    if args.samples:
        write_json_atomically(args.samples, sample_records(samples), lines=True)
    write_json_atomically(args.output, record)
    print(format_benchmark_table(rows))
    print(f"\n{record['device']}; lm-eval {record['versions']['lm_eval']}; written to {args.output}")


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
