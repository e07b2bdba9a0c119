"""6.2 benchmark: the chapter's padding to 2048 vs dynamic padding vs padding-free packing.

    python bench/sft_throughput.py [--steps 5] [--batch_size 8] [--json bench/results/sft_throughput_cpu.json]

Same toy pretrained model, same sample conversations (max length 2048, as in the chapter), one
run: real-token fraction and supervised (assistant) tokens trained per second for each way of
building batches. Targets: packing >= 0.95 real tokens; packing >= 3x the textbook's supervised
tokens/s. Exits 1 when a target is missed.

The rows, with the date, the machine (CPU, cores, threads, load average at the start) and the library
versions, go to the JSON file (committed: the README's table and notebook 6.2 read it).
"""

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmtrain import PROJECT_ROOT
from llmtrain.benchmark import compare_sft_batching
from llmtrain.sft_data import build_sft_dataset, load_sft_dataset
from llmtrain.toy_run import require_toy_model

SFT_FILE = PROJECT_ROOT / "data" / "sample" / "sft.jsonl"


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--json", type=Path, default=PROJECT_ROOT / "bench" / "results" / "sft_throughput_cpu.json",
                        help="where the results go (empty string: nowhere)")
    args = parser.parse_args()
    torch.manual_seed(0)
    load_at_start = os.getloadavg()
    model_dir = require_toy_model("pretrain")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    samples = build_sft_dataset(load_sft_dataset([str(SFT_FILE)]), tokenizer, max_len=2048)
    features = [samples[i] for i in range(len(samples))]
    results = compare_sft_batching(model, tokenizer, features, args.batch_size, args.steps)

    print(f"{len(features)} conversations, batch {args.batch_size}, {args.steps} steps each, "
          f"{torch.get_num_threads()} CPU threads\n")
    print("| batching | real-token fraction | positions per step | supervised tokens/s | vs textbook |")
    print("| --- | ---: | ---: | ---: | ---: |")
    base = next(iter(results.values()))["supervised_tokens_per_s"]
    for name, r in results.items():
        r["vs_textbook"] = r["supervised_tokens_per_s"] / base
        print(f"| {name} | {r['real_token_fraction']:.3f} | {r['tokens_per_step']:.0f} | "
              f"{r['supervised_tokens_per_s']:.0f} | {r['vs_textbook']:.1f}x |")
    packing = results["packing (padding-free)"]
    ok = packing["real_token_fraction"] >= 0.95 and packing["supervised_tokens_per_s"] >= 3 * base
    print(f"\ntargets (packing >= 0.95 real tokens, >= 3x textbook supervised tokens/s): {'met' if ok else 'MISSED'}")
    if str(args.json):
        record = {
            "schema": "llmtrain-sft-throughput/1",
            "date": datetime.date.today().isoformat(),
            "command": "python bench/sft_throughput.py " + " ".join(sys.argv[1:]),
            "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "load_average_1_5_15_min_at_start": [round(x, 2) for x in load_at_start],
                        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__},
            "data": {"file": str(SFT_FILE.relative_to(PROJECT_ROOT)), "conversations": len(features),
                     "max_length": 2048},
            "batch_size": args.batch_size, "steps": args.steps,
            "model": str(Path(model_dir).relative_to(PROJECT_ROOT)) if Path(model_dir).is_relative_to(PROJECT_ROOT)
            else str(model_dir),
            "columns": {"real_token_fraction": "conversation tokens / positions computed",
                        "tokens_per_step": "positions computed per step (batch x padded length, or the packed row)",
                        "supervised_tokens_per_s": "assistant tokens trained per second (AdamW step included)",
                        "seconds": "wall time of the measured steps",
                        "vs_textbook": "supervised tokens/s relative to padding to 2048"},
            "rows": {name: {k: round(v, 4) for k, v in r.items()} for name, r in results.items()},
            "targets_met": ok,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"results written to {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
