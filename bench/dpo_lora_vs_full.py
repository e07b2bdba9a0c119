"""6.4 benchmark: LoRA-DPO (reference = the adapter disabled) vs full DPO (a second, frozen reference model).

    python bench/dpo_lora_vs_full.py [--steps 30] [--batch_size 4]

Each variant runs in a fresh process (so peak memory is its own): the toy SFT model (output/toy/sft,
else the toy pretrained model), the pairs of data/sample/dpo.jsonl rendered by `llmtrain.dpo`, one
DPO step = `dpo_batch_loss` (policy forward + reference forward, no grad) + backward + torch AdamW.
Prints the models and parameters each variant holds, optimizer-state bytes (measured from the
optimizer), peak resident memory above what the process held before loading any model, steps/s
and tokens/s; then the same accounting computed for Qwen2.5-1.5B (no weights allocated).
"""

import argparse
import copy
import json
import resource
import subprocess
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmtrain import PROJECT_ROOT
from llmtrain.dpo import build_preference_dataset, dpo_batch_loss, load_preference_dataset, pad_preference_batch
from llmtrain.lora import add_peft_lora
from llmtrain.memory import dpo_model_state_bytes
from llmtrain.modeling import count_parameters, qwen2_5_1_5b_config
from llmtrain.toy_run import require_toy_model

TARGETS, RANK, BETA = ["q_proj", "v_proj"], 8, 0.1


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def toy_sft_dir():
    sft = PROJECT_ROOT / "output" / "toy" / "sft"
    return sft if (sft / "model.safetensors").exists() else require_toy_model("pretrain")


def run_variant(variant: str, steps: int, batch_size: int) -> dict:
    torch.manual_seed(0)
    model_dir = toy_sft_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pairs = build_preference_dataset(load_preference_dataset([str(PROJECT_ROOT / "data" / "sample" / "dpo.jsonl")]),
                                     tokenizer, max_len=256)
    features = [pairs[i] for i in range(len(pairs))]
    before = rss_bytes()
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.config.use_cache = False
    if variant == "lora":
        policy, reference = add_peft_lora(model, TARGETS, RANK, alpha=32, dropout=0.0), None
    else:  # full DPO: the policy trains every weight, so the reference must be a frozen copy
        policy, reference = model, copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-4)
    policy.train()
    tokens = 0
    start = time.perf_counter()
    for step in range(steps):
        batch = pad_preference_batch([features[(step * batch_size + j) % len(features)] for j in range(batch_size)],
                                     tokenizer.pad_token_id)
        dpo_batch_loss(policy, batch, BETA, reference).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        tokens += int(batch["attention_mask"].sum())
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                if torch.is_tensor(t) and t.dim() > 0)
    held = count_parameters(policy) + (count_parameters(reference) if reference else 0)
    return {"models": 1 if reference is None else 2, "held": held,
            "trainable": count_parameters(policy, trainable_only=True),
            "optimizer_bytes": state, "peak_extra_bytes": max(0, peak - before),
            "steps_per_s": steps / seconds, "tokens_per_s": tokens / seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=4, help="pairs per step (2x sequences)")
    parser.add_argument("--variant", choices=["full", "lora"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.steps, args.batch_size)))
        return 0
    rows = {}
    for variant in ("full", "lora"):
        out = subprocess.run([sys.executable, __file__, "--variant", variant, "--steps", str(args.steps),
                              "--batch_size", str(args.batch_size)], capture_output=True, text=True, check=True)
        rows[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"toy model ({toy_sft_dir().name}), {args.steps} DPO steps of {args.batch_size} pairs, "
          f"{torch.get_num_threads()} CPU threads, fp32 AdamW\n")
    print("| variant | models in memory | parameters held | trainable | optimizer state | peak memory above start "
          "| steps/s | tokens/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
        label = "full DPO (reference copy)" if name == "full" else "LoRA q,v r=8 (adapter off = reference)"
        print(f"| {label} | {r['models']} | {r['held']:,} | {r['trainable']:,} | "
              f"{r['optimizer_bytes'] / 2**10:,.0f} KiB | {r['peak_extra_bytes'] / 2**20:,.0f} MiB | "
              f"{r['steps_per_s']:.2f} | {r['tokens_per_s']:,.0f} |")

    print("\nQwen2.5-1.5B, computed model states (`llmtrain.memory.dpo_model_state_bytes`): bf16 weights (2 B/param), "
          "bf16 grads (2 B) and mixed-precision AdamW (12 B) per trainable parameter")
    print("| variant | policy + grads + optimizer | reference | total |\n| --- | ---: | ---: | ---: |")
    for label, targets in (("full DPO", None), ("LoRA-DPO", TARGETS)):
        states = dpo_model_state_bytes(qwen2_5_1_5b_config(), targets, RANK)
        reference = f"{states['reference'] / 2**30:.1f} GiB" if states["reference"] else "0 (adapter off)"
        print(f"| {label} | {states['policy'] / 2**30:.2f} GiB | {reference} | {sum(states.values()) / 2**30:.2f} GiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
