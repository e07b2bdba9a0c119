"""6.1-6.5 benchmark: does the scorecard hold on every seed? `make run`'s toy pipeline once per SEED.

    python bench/seed_spread.py [--seeds 12 1 2 3 4 5] [--output_dir output/bench/seeds] [--results bench/seed_spread.json]

For each seed, code/toy_pipeline.sh (what `make run` runs: every stage through its launcher, DeepSpeed on 2 CPU
processes, each stage scored by code/evaluate.py) with SEED set, into <output_dir>/seed<N>; about 5-6 minutes a seed
on 2 idle cores. Each seed's row is read from its scorecard.json, plus what the scorecard does not hold:
  - the base's greedy completions of the eval facts as statements ("what pretraining stored",
    `statement_completion_accuracy`);
  - the DPO model (GRPO's start) sampled 8 times per held-out RL prompt at temperature 1: the share of samples that
    are right and pass@8, the share of prompts with at least one right sample (`sampled_accuracy`);
  - on the DPO and GRPO models' held-out RL replies, the accuracy under the old rule (blind to the person) and the
    share the grader rejects only because they name another person.
Prints one row per seed, the range and the mean; writes them with the date, the machine and the library versions to
--results after every seed (committed: the README's and the notebooks' seed tables are read from it). Each seed's
folder keeps its models, logs and scorecard (--output_dir, git-ignored), which bench/grpo_ablation.py starts from.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from importlib.metadata import version
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from llmtrain import PROJECT_ROOT
from llmtrain.evaluation import read_scorecard, sampled_accuracy, statement_completion_accuracy
from llmtrain.grading import is_strict_match, load_prompt_dataset
from llmtrain.toy import ensure_toy_assets, run_bash_script, toy_preset
from sft_throughput import cpu_name  # bench/ is on sys.path when run as a script

SAMPLE = PROJECT_ROOT / "data" / "sample"
SCORECARD_COLUMNS = {  # seed table column: (scorecard row, key)
    "base chat seen": ("base (6.1)", "sft_seen"), "base chat heldout": ("base (6.1)", "heldout"),
    "SFT seen": ("full SFT (6.2)", "sft_seen"), "SFT heldout": ("full SFT (6.2)", "heldout"),
    "SFT style": ("full SFT (6.2)", "style"),
    "LoRA seen": ("LoRA SFT (6.3)", "sft_seen"), "LoRA heldout": ("LoRA SFT (6.3)", "heldout"),
    "DPO seen": ("LoRA DPO (6.4)", "sft_seen"), "DPO heldout": ("LoRA DPO (6.4)", "heldout"),
    "DPO style": ("LoRA DPO (6.4)", "style"),
    "SFT RL": ("full SFT (6.2)", "rl_heldout"), "DPO RL": ("LoRA DPO (6.4)", "rl_heldout"),
    "DPO RL new phrasing": ("LoRA DPO (6.4)", "rl_new_phrasing"),
    "GRPO seen": ("LoRA GRPO (6.5)", "sft_seen"), "GRPO heldout": ("LoRA GRPO (6.5)", "heldout"),
    "GRPO style": ("LoRA GRPO (6.5)", "style"), "GRPO RL": ("LoRA GRPO (6.5)", "rl_heldout"),
    "GRPO RL new phrasing": ("LoRA GRPO (6.5)", "rl_new_phrasing"),
}
SAMPLES_PER_PROMPT = 8


def run_seed(seed: int, out: Path) -> dict[str, float]:
    """make run's pipeline with `seed` into `out` (emptied by the pipeline first); the seed's row."""
    run_bash_script(PROJECT_ROOT / "code" / "toy_pipeline.sh", SEED=str(seed), TOY_RUN_DIR=str(out))
    card = read_scorecard(str(out / "scorecard.json"))
    row = {column: card[stage][key] for column, (stage, key) in SCORECARD_COLUMNS.items()}
    tokenizer = AutoTokenizer.from_pretrained(out / "sft")
    statements = statement_completion_accuracy(AutoModelForCausalLM.from_pretrained(out / "pretrain"), tokenizer,
                                               str(SAMPLE / "eval.jsonl"))
    row["base statements seen"], row["base statements heldout"] = statements["sft_seen"], statements["heldout"]
    sampled = sampled_accuracy(AutoModelForCausalLM.from_pretrained(out / "dpo-lora" / "merged"), tokenizer,
                               load_prompt_dataset([str(SAMPLE / "grpo_eval.jsonl")]), SAMPLES_PER_PROMPT,
                               toy_preset()["TOY_GRPO_MAX_COMPLETION"], toy_preset()["TOY_STYLE_SUFFIX"], seed=seed)
    row["DPO RL sampled"], row[f"DPO RL pass@{SAMPLES_PER_PROMPT}"] = sampled["sampled"], sampled["pass_at_k"]
    for stage, name in (("LoRA DPO (6.4)", "DPO"), ("LoRA GRPO (6.5)", "GRPO")):
        old_rule = old_rule_verdicts(card[stage]["rl_heldout_replies"])
        row[f"{name} RL old rule"] = round(sum(old_rule) / len(old_rule), 4)
        row[f"{name} RL another person"] = round(sum(old and not r["correct"] for old, r in zip(
            old_rule, card[stage]["rl_heldout_replies"])) / len(old_rule), 4)
    return row


def old_rule_verdicts(replies: list[dict]) -> list[bool]:
    """Each reply graded as before the grader knew who was asked (`is_strict_match` without the person): a reply it
    accepts and the current grader rejects names someone other than the asked person."""
    style = toy_preset()["TOY_STYLE_SUFFIX"]
    candidates = {r["answer"] for r in replies}
    return [is_strict_match(r["reply"].removesuffix(style), r["answer"], candidates) for r in replies]


def markdown_table(rows: dict[int, dict[str, float]]) -> str:
    """The seed table: one row per seed, then the range and the mean of each column."""
    columns = list(next(iter(rows.values())))
    lines = ["| seed | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    lines += [f"| {seed} | " + " | ".join(f"{v:.0%}" for v in row.values()) + " |" for seed, row in rows.items()]
    values = {k: [row[k] for row in rows.values()] for k in columns}
    lines.append("| range | " + " | ".join(f"{min(v):.0%}–{max(v):.0%}" for v in values.values()) + " |")
    lines.append("| mean | " + " | ".join(f"{sum(v) / len(v):.0%}" for v in values.values()) + " |")
    return "\n".join(lines)


def machine() -> str:
    """The CPU's name (`sft_throughput.cpu_name`), its widest vector unit and the core count: matrix kernels differ
    between AVX2 and AVX-512, so the same seed trains a slightly different model on another CPU (README)."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        flags = []
    vector = next((isa for isa in ("avx512f", "avx2") if isa in flags), "")
    name = f"{cpu_name()} ({vector})" if vector else cpu_name()
    return f"{name}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def write_results(path: str, rows: dict[int, dict[str, float]], seconds: dict[int, int]) -> None:
    """The rows with the date, the machine, the library versions and the toy preset they were measured with."""
    results = dict(
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), machine=machine(),
        versions={name: version(name) for name in ("torch", "transformers", "deepspeed", "peft", "trl", "datasets")},
        toy_preset=toy_preset(), seconds_per_seed=seconds, rows=rows, table=markdown_table(rows))
    Path(path).write_text(json.dumps(results, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[12, 1, 2, 3, 4, 5], help="12 is make run's seed.")
    parser.add_argument("--output_dir", default=str(PROJECT_ROOT / "output" / "bench" / "seeds"))
    parser.add_argument("--results", default=str(PROJECT_ROOT / "bench" / "seed_spread.json"))
    parser.add_argument("--add", action="store_true", help="Keep the seeds already in --results (measured with the "
                        "same toy preset) and add these.")
    args = parser.parse_args()
    ensure_toy_assets()
    rows, seconds = {}, {}
    if args.add and Path(args.results).is_file():
        earlier = json.loads(Path(args.results).read_text(encoding="utf-8"))
        if earlier["toy_preset"] != json.loads(json.dumps(toy_preset())):
            raise SystemExit(f"{args.results} was measured with another toy preset: rerun every seed without --add.")
        rows = {int(seed): row for seed, row in earlier["rows"].items()}
        seconds = {int(seed): s for seed, s in earlier["seconds_per_seed"].items()}
    for seed in args.seeds:
        start = time.time()
        rows[seed] = run_seed(seed, Path(args.output_dir) / f"seed{seed}")
        seconds[seed] = round(time.time() - start)
        print(f"seed {seed} ({seconds[seed]} s): " + ", ".join(f"{k} {v:.0%}" for k, v in rows[seed].items()),
              flush=True)
        write_results(args.results, rows, seconds)  # after every seed: an interrupted run keeps what it measured
    print("\n" + markdown_table(rows) + f"\n\nResults: {args.results}")


if __name__ == "__main__":
    main()
