"""6.1.5 benchmark: the memory model (llmtrain.memory) against the measured peak of real training steps.

    python bench/memory_model.py [--json bench/memory_model_cpu.json]

Each config runs in a fresh process: build a small Qwen2 model (fp32, CPU) and a batch, take one
warm-up step (forward, backward, AdamW step) so the optimizer states exist, then reset the peak
resident set size (write "5" to /proc/self/clear_refs) and take the measured step. Measured =
peak RSS during that step - RSS before it; estimated = the model's peak - its model states (the
weights, gradients and Adam states already resident before the step). Gradients stay allocated
between steps (zero_grad(set_to_none=False)), as under gradient accumulation. glibc is told to
serve every allocation from 64 KiB up by mmap, so freed tensors go back to the OS and the RSS
follows the live tensors. Target: estimate within +/-20% of measured on every config; exits 1 if missed.

What this CPU run does not cover: GPU mixed precision (16-bit activations; the model's bf16 terms
are checked by counting saved tensors in tests/test_memory.py, not by a GPU measurement), CUDA's
caching allocator, DeepSpeed's buffers and the CUDA/NCCL context.
"""

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# (name, vocab, hidden, intermediate, layers, batch, block, activation checkpointing)
CONFIGS = [
    ("Qwen vocab, batch 1 x 256", 151_936, 64, 176, 2, 1, 256, False),
    ("Qwen vocab, batch 2 x 512, ckpt", 151_936, 64, 176, 2, 2, 512, True),
    ("vocab 8k, batch 4 x 1024", 8_192, 256, 704, 4, 4, 1024, False),
    ("vocab 8k, batch 4 x 1024, ckpt", 8_192, 256, 704, 4, 4, 1024, True),
    ("vocab 32k, batch 8 x 256", 32_000, 128, 352, 4, 8, 256, False),
    ("vocab 1k, wide layers, batch 4 x 1024, ckpt", 1_024, 384, 1536, 4, 4, 1024, True),
]
TOLERANCE = 0.20
MIB = 2**20


def rss_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def build_config(vocab: int, hidden: int, intermediate: int, layers: int):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                       tie_word_embeddings=True)


def measure_one(index: int) -> dict:
    """Run config `index` in this process: one warm-up step, then the measured step."""
    import torch
    from transformers import AutoModelForCausalLM

    from llmtrain.memory import estimate_training_memory

    name, vocab, hidden, intermediate, layers, batch, block, ckpt = CONFIGS[index]
    torch.manual_seed(0)
    config = build_config(vocab, hidden, intermediate, layers)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.config.use_cache = False
    if ckpt:
        model.activation_checkpointing_enable()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    input_ids = torch.randint(0, vocab, (batch, block))

    def step() -> None:
        loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)

    step()
    gc.collect()
    before = rss_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    measured = rss_bytes("VmHWM") - before

    estimate = estimate_training_memory(config, batch, block, dtype="fp32", zero_stage=0, num_gpus=1,
                                        activation_checkpointing=ckpt)
    estimated = estimate.peak - estimate.model_states
    return {
        "name": name, "vocab_size": vocab, "hidden_size": hidden, "layers": layers, "batch": batch, "block": block,
        "activation_checkpointing": ckpt, "estimated_step_mib": round(estimated / MIB, 1),
        "measured_step_mib": round(measured / MIB, 1), "ratio": round(estimated / measured, 3),
        "estimated_model_states_mib": round(estimate.model_states / MIB, 1),
        "estimated_peak_mib": round(estimate.peak / MIB, 1), "step_seconds": round(seconds, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file (for the notebook's plot)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)   # internal: measure config N in this process
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure_one(args.one)))
        return 0

    env = dict(os.environ, HF_HUB_OFFLINE="1", MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    rows = []
    for index in range(len(CONFIGS)):
        out = subprocess.run([sys.executable, __file__, "--one", str(index)], env=env, check=True,
                             stdout=subprocess.PIPE, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))

    print(f"One fp32 training step on this CPU ({os.cpu_count()} cores); memory of the step itself "
          "(peak RSS - RSS before the step) vs the model's peak - model states.\n")
    print("| config | vocab | batch x block | ckpt | estimated MiB | measured MiB | estimate/measured |")
    print("| --- | ---: | ---: | :---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['name']} | {r['vocab_size']:,} | {r['batch']} x {r['block']} | "
              f"{'yes' if r['activation_checkpointing'] else 'no'} | {r['estimated_step_mib']:,.1f} | "
              f"{r['measured_step_mib']:,.1f} | {r['ratio']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"\nrows written to {args.json}")
    missed = [r["name"] for r in rows if abs(r["ratio"] - 1) > TOLERANCE]
    if missed:
        print(f"\nMISSED the +/-{TOLERANCE:.0%} target: {', '.join(missed)}")
        return 1
    print(f"\nEvery config within +/-{TOLERANCE:.0%}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
