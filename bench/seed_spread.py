"""6.1-6.5 benchmark: does the scorecard hold on every seed? make run's toy pipeline once per SEED.

    python bench/seed_spread.py [--seeds 12 1 2 3 4 5] [--output_dir output/bench/seeds] [--results bench/seed_spread.json]
    python bench/seed_spread.py --grpo --seeds 12 1 2 --results bench/grpo_seed_spread.json

For each seed, the same launchers as `make run` with SEED set (PRESET=toy: DeepSpeed, 2 CPU processes):
code/pretrain.sh, code/finetune.sh (full SFT), code/finetune.sh with USE_LORA=1 (LoRA SFT) and code/dpo.sh
(LoRA-DPO on the full SFT model), about 4 minutes a seed on 2 cores. Then each stage is scored: the base's greedy
completions of the eval facts as statements ("what pretraining stored", `statement_completion_accuracy`) and its
answers to the questions in chat format, and the scorecard of the SFT, LoRA and DPO models (`scorecard_row`).
With --grpo, also code/grpo.sh (6.5: LoRA-GRPO on the merged DPO model, about 2 minutes more) and the held-out
accuracy on the RL task (data/sample/grpo_eval.jsonl) of the SFT, DPO and GRPO models, with the GRPO model's
scorecard. Prints one row per seed, the range and the mean; writes them with the date, the machine and the
library versions to --results (committed: the README's seed tables are read from them).
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import time
from importlib.metadata import version
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from llmtrain import PROJECT_ROOT
from llmtrain.evaluation import add_rl_task_column, scorecard_row, statement_completion_accuracy
from llmtrain.lora import load_adapter
from llmtrain.toy import ensure_toy_assets, run_bash_script, toy_preset
from sft_throughput import cpu_name  # bench/ is on sys.path when run as a script

EVAL_FILE = str(PROJECT_ROOT / "data" / "sample" / "eval.jsonl")
RL_EVAL_FILE = str(PROJECT_ROOT / "data" / "sample" / "grpo_eval.jsonl")
CODE = PROJECT_ROOT / "code"
TOY_STYLE_SUFFIX = toy_preset()["TOY_STYLE_SUFFIX"]
COLUMNS = ["base statements seen", "base statements heldout", "base chat seen", "base chat heldout",
           "SFT seen", "SFT heldout", "SFT style", "LoRA seen", "LoRA heldout",
           "DPO seen", "DPO heldout", "DPO style"]
GRPO_COLUMNS = ["SFT RL", "DPO RL", "GRPO seen", "GRPO heldout", "GRPO style", "GRPO RL"]


def run_seed(seed: int, out: Path, grpo: bool = False) -> dict[str, float]:
    """Pretrain, fine-tune (full and LoRA), DPO and with `grpo` GRPO with `seed` (the toy preset otherwise
    unchanged); score each stage.

    `out` is emptied first: the scripts resume from checkpoints they find there, which an earlier recipe left.
    """
    shutil.rmtree(out, ignore_errors=True)
    env = dict(PRESET="toy", SEED=str(seed))
    run_bash_script(CODE / "pretrain.sh", **env, OUTPUT_DIR=str(out / "pretrain"))
    run_bash_script(CODE / "finetune.sh", **env, MODEL_DIR=str(out / "pretrain"), OUTPUT_DIR=str(out / "sft"))
    run_bash_script(CODE / "finetune.sh", **env, USE_LORA="1", MODEL_DIR=str(out / "pretrain"),
                    OUTPUT_DIR=str(out / "sft-lora"))
    run_bash_script(CODE / "dpo.sh", **env, MODEL_DIR=str(out / "sft"), OUTPUT_DIR=str(out / "dpo-lora"))
    if grpo:
        run_bash_script(CODE / "grpo.sh", **env, MODEL_DIR=str(out / "dpo-lora" / "merged"),
                        OUTPUT_DIR=str(out / "grpo-lora"), EVAL_FILES="none")
    tokenizer = AutoTokenizer.from_pretrained(out / "sft")
    base = AutoModelForCausalLM.from_pretrained(out / "pretrain")
    statements = statement_completion_accuracy(base, tokenizer, EVAL_FILE)
    chat = scorecard_row(base, tokenizer, EVAL_FILE)
    sft_model = AutoModelForCausalLM.from_pretrained(out / "sft")
    sft = scorecard_row(sft_model, tokenizer, EVAL_FILE, style_suffix=TOY_STYLE_SUFFIX)
    lora = scorecard_row(load_adapter(AutoModelForCausalLM.from_pretrained(out / "pretrain"), str(out / "sft-lora")),
                         tokenizer, EVAL_FILE)
    dpo_model = load_adapter(AutoModelForCausalLM.from_pretrained(out / "sft"), str(out / "dpo-lora"))
    dpo = scorecard_row(dpo_model, tokenizer, EVAL_FILE, style_suffix=TOY_STYLE_SUFFIX)
    values = [statements["sft_seen"], statements["heldout"], chat["sft_seen"], chat["heldout"],
              sft["sft_seen"], sft["heldout"], sft["style"], lora["sft_seen"], lora["heldout"],
              dpo["sft_seen"], dpo["heldout"], dpo["style"]]
    if grpo:
        grpo_model = load_adapter(AutoModelForCausalLM.from_pretrained(out / "dpo-lora" / "merged"),
                                  str(out / "grpo-lora"))
        grpo_row = scorecard_row(grpo_model, tokenizer, EVAL_FILE, style_suffix=TOY_STYLE_SUFFIX)
        for row, model in ((sft, sft_model), (dpo, dpo_model), (grpo_row, grpo_model)):
            add_rl_task_column(row, model, tokenizer, RL_EVAL_FILE, TOY_STYLE_SUFFIX)
        values += [sft["rl_heldout"], dpo["rl_heldout"], grpo_row["sft_seen"], grpo_row["heldout"], grpo_row["style"],
                   grpo_row["rl_heldout"]]
    return dict(zip(COLUMNS + GRPO_COLUMNS, values))


def markdown_table(rows: dict[int, dict[str, float]]) -> str:
    """The seed table: one row per seed, then the range and the mean of each column."""
    columns = list(next(iter(rows.values())))
    lines = ["| seed | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    lines += [f"| {seed} | " + " | ".join(f"{v:.0%}" for v in row.values()) + " |" for seed, row in rows.items()]
    values = {k: [row[k] for row in rows.values()] for k in columns}
    lines.append("| range | " + " | ".join(f"{min(v):.0%}–{max(v):.0%}" for v in values.values()) + " |")
    lines.append("| mean | " + " | ".join(f"{sum(v) / len(v):.0%}" for v in values.values()) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[12, 1, 2, 3, 4, 5], help="12 is make run's seed.")
    parser.add_argument("--output_dir", default=str(PROJECT_ROOT / "output" / "bench" / "seeds"))
    parser.add_argument("--results", default=str(PROJECT_ROOT / "bench" / "seed_spread.json"))
    parser.add_argument("--grpo", action="store_true", help="Also GRPO (6.5) and the RL task's held-out accuracy.")
    args = parser.parse_args()
    ensure_toy_assets()
    rows, seconds = {}, {}
    for seed in args.seeds:
        start = time.time()
        rows[seed] = run_seed(seed, Path(args.output_dir) / f"seed{seed}", args.grpo)
        seconds[seed] = round(time.time() - start)
        print(f"seed {seed} ({seconds[seed]} s): " + ", ".join(f"{k} {v:.0%}" for k, v in rows[seed].items()),
              flush=True)
        write_results(args.results, rows, seconds)  # after every seed: an interrupted run keeps what it measured
    print("\n" + markdown_table(rows) + f"\n\nResults: {args.results}")


def cpu_model() -> str:
    """The CPU's name (`sft_throughput.cpu_name`) and its widest vector unit: matrix kernels differ between AVX2 and
    AVX-512, so the same seed trains a slightly different model on another CPU (a few points on a column; README)."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        flags = []
    vector = next((isa for isa in ("avx512f", "avx2") if isa in flags), "")
    return f"{cpu_name()} ({vector})" if vector else cpu_name()


def write_results(path: str, rows: dict[int, dict[str, float]], seconds: dict[int, int]) -> None:
    """The rows with the date, the machine, the library versions and the toy preset they were measured with."""
    results = dict(
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        machine=f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        versions={name: version(name) for name in ("torch", "transformers", "deepspeed", "peft", "trl", "datasets")},
        toy_preset=toy_preset(), seconds_per_seed=seconds, rows=rows, table=markdown_table(rows))
    Path(path).write_text(json.dumps(results, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
