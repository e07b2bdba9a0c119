"""6.1-6.4 benchmark: how much of the scorecard is the random seed? make run's toy pipeline once per SEED.

    python bench/seed_spread.py [--seeds 12 1 2 3] [--output_dir output/bench/seeds]

For each seed, the same launchers as `make run` with SEED set (PRESET=toy: DeepSpeed, 2 CPU processes):
code/pretrain.sh, code/finetune.sh (full SFT) and code/dpo.sh (LoRA-DPO), about 3 minutes a seed on 2 cores.
Then each stage is scored: the base's greedy completions of the eval facts as statements ("what pretraining
stored", `statement_completion_accuracy`), and the scorecard of the SFT and DPO models (`scorecard_row`).
Prints one row per seed and the range; the rows go to <output_dir>/seed_spread.json.
"""

import argparse
import json
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from llmtrain import PROJECT_ROOT
from llmtrain.evaluation import TOY_STYLE_SUFFIX, scorecard_row, statement_completion_accuracy
from llmtrain.lora import load_adapter
from llmtrain.toy import ensure_toy_assets, run_bash_script

EVAL_FILE = str(PROJECT_ROOT / "data" / "sample" / "eval.jsonl")
CODE = PROJECT_ROOT / "code"
COLUMNS = ["base statements seen", "base statements heldout", "SFT seen", "SFT heldout", "SFT style",
           "DPO seen", "DPO heldout", "DPO style"]


def run_seed(seed: int, out: Path) -> dict[str, float]:
    """Pretrain, fine-tune and DPO with `seed` (the toy preset otherwise unchanged); score each stage."""
    env = dict(PRESET="toy", SEED=str(seed))
    run_bash_script(CODE / "pretrain.sh", **env, OUTPUT_DIR=str(out / "pretrain"))
    run_bash_script(CODE / "finetune.sh", **env, MODEL_DIR=str(out / "pretrain"), OUTPUT_DIR=str(out / "sft"))
    run_bash_script(CODE / "dpo.sh", **env, MODEL_DIR=str(out / "sft"), OUTPUT_DIR=str(out / "dpo-lora"))
    tokenizer = AutoTokenizer.from_pretrained(out / "sft")
    statements = statement_completion_accuracy(AutoModelForCausalLM.from_pretrained(out / "pretrain"), tokenizer,
                                               EVAL_FILE)
    sft = scorecard_row(AutoModelForCausalLM.from_pretrained(out / "sft"), tokenizer, EVAL_FILE,
                        style_suffix=TOY_STYLE_SUFFIX)
    dpo_model = load_adapter(AutoModelForCausalLM.from_pretrained(out / "sft"), str(out / "dpo-lora"))
    dpo = scorecard_row(dpo_model, tokenizer, EVAL_FILE, style_suffix=TOY_STYLE_SUFFIX)
    values = [statements["sft_seen"], statements["heldout"], sft["sft_seen"], sft["heldout"], sft["style"],
              dpo["sft_seen"], dpo["heldout"], dpo["style"]]
    return dict(zip(COLUMNS, values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[12, 1, 2, 3], help="12 is make run's seed.")
    parser.add_argument("--output_dir", default=str(PROJECT_ROOT / "output" / "bench" / "seeds"))
    args = parser.parse_args()
    ensure_toy_assets()
    rows = {}
    for seed in args.seeds:
        rows[seed] = run_seed(seed, Path(args.output_dir) / f"seed{seed}")
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.0%}" for k, v in rows[seed].items()), flush=True)
    print("\n| seed | " + " | ".join(COLUMNS) + " |\n| --- |" + " ---: |" * len(COLUMNS))
    for seed, row in rows.items():
        print(f"| {seed} | " + " | ".join(f"{v:.0%}" for v in row.values()) + " |")
    print("| range | " + " | ".join(f"{min(r[k] for r in rows.values()):.0%}–{max(r[k] for r in rows.values()):.0%}"
                                   for k in COLUMNS) + " |")
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.output_dir) / "seed_spread.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
