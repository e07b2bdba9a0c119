"""6.2 benchmark: the chapter's padding to 2048 vs dynamic padding vs padding-free packing.

    python bench/sft_throughput.py [--steps 5] [--batch_size 8]

Same toy pretrained model, same sample conversations (max length 2048, as in the chapter), one
run: real-token fraction and supervised (assistant) tokens trained per second for each way of
building batches. Targets: packing >= 0.95 real tokens; packing >= 3x the textbook's supervised
tokens/s. Exits 1 when a target is missed.
"""

import argparse
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmtrain import PROJECT_ROOT
from llmtrain.benchmark import compare_sft_batching
from llmtrain.sft_data import build_sft_dataset, load_sft_dataset
from llmtrain.toy import ensure_toy_pretrained


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    model_dir = ensure_toy_pretrained()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    samples = build_sft_dataset(load_sft_dataset([str(PROJECT_ROOT / "data" / "sample" / "sft.jsonl")]),
                                tokenizer, max_len=2048)
    features = [samples[i] for i in range(len(samples))]
    results = compare_sft_batching(model, tokenizer, features, args.batch_size, args.steps)

    print(f"{len(features)} conversations, batch {args.batch_size}, {args.steps} steps each, "
          f"{torch.get_num_threads()} CPU threads\n")
    print("| batching | real-token fraction | positions per step | supervised tokens/s | vs textbook |")
    print("| --- | ---: | ---: | ---: | ---: |")
    base = next(iter(results.values()))["supervised_tokens_per_s"]
    for name, r in results.items():
        print(f"| {name} | {r['real_token_fraction']:.3f} | {r['tokens_per_step']:.0f} | "
              f"{r['supervised_tokens_per_s']:.0f} | {r['supervised_tokens_per_s'] / base:.1f}x |")
    packing = results["packing (padding-free)"]
    ok = packing["real_token_fraction"] >= 0.95 and packing["supervised_tokens_per_s"] >= 3 * base
    print(f"\ntargets (packing >= 0.95 real tokens, >= 3x textbook supervised tokens/s): {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
