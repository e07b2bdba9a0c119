"""6.3 benchmark: full SFT vs LoRA SFT (peft, q_proj/v_proj, r=8) on the same toy model and data.

    python bench/lora_vs_full.py [--steps 30] [--batch_size 8]

Each variant runs in a fresh process (so peak memory is its own): the toy pretrained model,
the sample conversations packed as in code/finetune.py, torch AdamW. Prints trainable
parameters, optimizer-state bytes (measured from the optimizer), the process's peak resident
memory above what it held before training, and tokens/s; then the same accounting computed
for Qwen2.5-1.5B (no weights allocated).
"""

import argparse
import json
import resource
import subprocess
import sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmtrain import PROJECT_ROOT
from llmtrain.benchmark import measure_training_steps
from llmtrain.lora import add_peft_lora, lora_parameter_count
from llmtrain.modeling import count_parameters, qwen2_5_1_5b_config
from llmtrain.sft_data import build_sft_dataset, load_sft_dataset, make_collator
from llmtrain.toy_run import require_toy_model

TARGETS, RANK = ["q_proj", "v_proj"], 8


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def run_variant(variant: str, steps: int, batch_size: int) -> dict:
    torch.manual_seed(0)
    model_dir = require_toy_model("pretrain")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.config.use_cache = False
    if variant == "lora":
        model = add_peft_lora(model, TARGETS, RANK, alpha=32, dropout=0.1)
    samples = build_sft_dataset(load_sft_dataset([str(PROJECT_ROOT / "data" / "sample" / "sft.jsonl")]),
                                tokenizer, max_len=512)
    features = [samples[i] for i in range(len(samples))]
    collate = make_collator(tokenizer, packing=True)
    batches = [collate([features[(step * batch_size + j) % len(features)] for j in range(batch_size)])
               for step in range(steps)]
    before = rss_bytes()
    measured = measure_training_steps(model, batches, lr=1e-4)  # the function notebook 6.3 shows
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"trainable": measured["trainable_params"], "total": sum(p.numel() for p in model.parameters()),
            "optimizer_bytes": measured["optimizer"], "peak_extra_bytes": max(0, peak - before),
            "tokens_per_s": measured["tokens_per_s"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--variant", choices=["full", "lora"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.steps, args.batch_size)))
        return 0
    require_toy_model("pretrain")
    rows = {}
    for variant in ("full", "lora"):
        out = subprocess.run([sys.executable, __file__, "--variant", variant, "--steps", str(args.steps),
                              "--batch_size", str(args.batch_size)], capture_output=True, text=True, check=True)
        rows[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"toy model, {args.steps} steps of {args.batch_size} packed conversations, "
          f"{torch.get_num_threads()} CPU threads, fp32 AdamW\n")
    print("| variant | trainable params | trainable % | optimizer state | peak memory above start | tokens/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
        print(f"| {'full SFT' if name == 'full' else 'LoRA q,v r=8'} | {r['trainable']:,} | "
              f"{100 * r['trainable'] / r['total']:.2f}% | {r['optimizer_bytes'] / 2**10:,.0f} KiB | "
              f"{r['peak_extra_bytes'] / 2**20:,.0f} MiB | {r['tokens_per_s']:,.0f} |")

    with torch.device("meta"):
        big = AutoModelForCausalLM.from_config(qwen2_5_1_5b_config())
    n, n_lora = count_parameters(big), lora_parameter_count(big, TARGETS, RANK)
    print("\nQwen2.5-1.5B, computed: mixed-precision AdamW keeps 12 bytes of state per trainable parameter")
    print("| variant | trainable params | optimizer state |\n| --- | ---: | ---: |")
    print(f"| full SFT | {n:,} | {12 * n / 2**30:.1f} GiB |")
    print(f"| LoRA q,v r=8 | {n_lora:,} | {12 * n_lora / 2**20:.1f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
