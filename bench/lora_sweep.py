"""6.3 benchmark: LoRA's verdicts on several seeds: vs full SFT, the learning rate, q_proj,v_proj vs every linear layer.

    python bench/lora_sweep.py [--seeds 12 1 2] [--lrs 5e-3 5e-4 1e-2 2e-3] [--output_dir output/bench/lora_sweep]
                               [--results bench/lora_sweep.json]

For each seed, its own toy base: `PRESET=toy SEED=N bash code/pretrain.sh` (make run's first stage with that seed),
scored once; then, on that base and with SEED=N, full SFT (`PRESET=toy bash code/finetune.sh`, make run's second
stage) and LoRA SFT through the same launcher (`PRESET=toy USE_LORA=1 bash code/finetune.sh`: 2 DeepSpeed processes,
the preset's r, alpha, dropout, batch and epochs) for every learning rate (LR) and both target sets (LORA_TARGETS:
the chapter's q_proj,v_proj and the preset's every linear layer). Each model (an adapter on its base) is scored with
make run's scorecard (`llmtrain.evaluation.scorecard_row`, as code/evaluate.py: strict accuracy per split with 6.4's
closing sentence set aside, held-out perplexity, held-out assistant loss). Seeds 12, 1 and 2 are make run's seed and
the first two of bench/seed_spread.py: on the same CPU, the same bases and full SFT models as there. About 45 minutes
on 2 idle cores (3 bases, 3 full SFT, 24 LoRA runs).

Writes the rows (one per seed and setting: the base, full SFT, LoRA per learning rate and target set) with the date,
the machine, the library versions and the toy preset to --results after every run (committed: notebook 6.3 reads
it). A base or model already trained in --output_dir is scored again, not retrained (--fresh retrains everything).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import time
from importlib.metadata import version
from pathlib import Path

import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmtrain import PROJECT_ROOT
from llmtrain.evaluation import scorecard_row, wrong_person_replies
from llmtrain.grading import load_people
from llmtrain.lora import load_adapter
from llmtrain.toy import ensure_toy_assets, run_bash_script, toy_preset
from seed_spread import machine  # bench/ is on sys.path when run as a script

SAMPLE = PROJECT_ROOT / "data" / "sample"
CHAPTER_TARGETS = "q_proj,v_proj"
SCORE_KEYS = ("sft_seen", "heldout", "stopped", "style", "heldout_ppl", "assistant_loss")


def score(model, tokenizer) -> dict[str, float]:
    """The scorecard's numbers of `model` (make run's columns), and how many wrong held-out replies name another
    person."""
    preset = toy_preset()
    row = scorecard_row(model, tokenizer, str(SAMPLE / "eval.jsonl"), [str(SAMPLE / "pretrain_valid.jsonl")],
                        [str(SAMPLE / "sft_valid.jsonl")], style_suffix=preset["TOY_STYLE_SUFFIX"])
    wrong = wrong_person_replies(row, load_people(str(SAMPLE / "eval.jsonl")), "heldout")
    return {**{k: row[k] for k in SCORE_KEYS}, "heldout_wrong": wrong["wrong"],
            "heldout_other_person": wrong["other_person"]}


def train_base(seed: int, out: Path) -> dict[str, float]:
    """The toy base of `seed` (make run's pretraining stage), scored."""
    if not (out / "model.safetensors").is_file():
        shutil.rmtree(out, ignore_errors=True)
        run_bash_script(PROJECT_ROOT / "code" / "pretrain.sh", PRESET="toy", SEED=str(seed), OUTPUT_DIR=str(out))
    return score(AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out))


def train_lora(seed: int, base: Path, lr: str, targets: str, out: Path) -> dict[str, float]:
    """LoRA SFT of `base` through code/finetune.sh (the toy preset but LR, LORA_TARGETS and SEED), scored on `base`."""
    if not (out / "adapter_model.safetensors").is_file():
        shutil.rmtree(out, ignore_errors=True)
        run_bash_script(PROJECT_ROOT / "code" / "finetune.sh", PRESET="toy", USE_LORA="1", SEED=str(seed),
                        MODEL_DIR=str(base), OUTPUT_DIR=str(out), LR=lr, LORA_TARGETS=targets)
    state = json.loads((out / "trainer_state.json").read_text(encoding="utf-8"))
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    model = load_adapter(AutoModelForCausalLM.from_pretrained(base), str(out))  # as code/evaluate.py --adapter
    return {**score(model, AutoTokenizer.from_pretrained(base)), "first_loss": losses[0], "last_loss": losses[-1],
            "steps": state["global_step"],
            "adapter_params": sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)}


def train_full(seed: int, base: Path, out: Path) -> dict[str, float]:
    """Full SFT of `base` through code/finetune.sh with the toy preset and SEED (make run's second stage), scored."""
    if not (out / "model.safetensors").is_file():
        shutil.rmtree(out, ignore_errors=True)
        run_bash_script(PROJECT_ROOT / "code" / "finetune.sh", PRESET="toy", SEED=str(seed), MODEL_DIR=str(base),
                        OUTPUT_DIR=str(out))
    state = json.loads((out / "trainer_state.json").read_text(encoding="utf-8"))
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    return {**score(AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)),
            "first_loss": losses[0], "last_loss": losses[-1], "steps": state["global_step"]}


def summary(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per setting (full SFT; LoRA per target set and learning rate): min, mean and max over seeds of the accuracies."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["stage"] == "lora":
            groups.setdefault(f"LoRA {r['targets']} lr {r['lr']}", []).append(r)
        elif r["stage"] == "full":
            groups.setdefault("full SFT", []).append(r)
    return {name: {f"{k} {stat}": round(fn([r[k] for r in runs]), 4)
                   for k in ("sft_seen", "heldout") for stat, fn in
                   (("min", min), ("mean", lambda v: sum(v) / len(v)), ("max", max))} | {"seeds": len(runs)}
            for name, runs in groups.items()}


def preset_values() -> dict[str, int | float | str]:
    """The toy preset without its folders (they name this machine's checkout, not the recipe)."""
    return {k: v for k, v in toy_preset().items() if not (isinstance(v, str) and str(PROJECT_ROOT) in v)}


def write_results(path: Path, args: argparse.Namespace, rows: list[dict], started: float) -> None:
    """The rows and their summary, with the date, the machine, the versions and the preset they were measured with."""
    results = dict(
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), machine=machine(),
        versions={name: version(name) for name in ("torch", "transformers", "deepspeed", "peft", "trl", "datasets")},
        toy_preset=preset_values(), command=f"python bench/lora_sweep.py --seeds {' '.join(map(str, args.seeds))} "
                                         f"--lrs {' '.join(args.lrs)}",
        seeds=args.seeds, lrs=args.lrs, targets={"every linear layer": toy_preset()["TOY_LORA_TARGETS"],
                                                 "q_proj,v_proj": CHAPTER_TARGETS},
        minutes=round((time.time() - started) / 60, 1), rows=rows, summary=summary(rows))
    path.write_text(json.dumps(results, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[12, 1, 2], help="12 is make run's seed.")
    parser.add_argument("--lrs", nargs="+", default=["5e-3", "5e-4", "1e-2", "2e-3"],
                        help="LoRA learning rates, in the order they are run; 5e-3 is the preset's (TOY_SFT_LORA_LR), "
                             "5e-4 full SFT's (TOY_SFT_LR).")
    parser.add_argument("--output_dir", type=Path, default=PROJECT_ROOT / "output" / "bench" / "lora_sweep")
    parser.add_argument("--results", type=Path, default=PROJECT_ROOT / "bench" / "lora_sweep.json")
    parser.add_argument("--fresh", action="store_true", help="Retrain every base and adapter.")
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    ensure_toy_assets()
    if args.fresh:
        shutil.rmtree(args.output_dir, ignore_errors=True)
    targets = {"every linear layer": toy_preset()["TOY_LORA_TARGETS"], "q_proj,v_proj": CHAPTER_TARGETS}
    rows, started = [], time.time()
    bases = {seed: args.output_dir / f"seed{seed}" / "pretrain" for seed in args.seeds}
    for seed, base in bases.items():
        start = time.time()
        rows.append({"seed": seed, "stage": "base", **train_base(seed, base), "seconds": round(time.time() - start)})
        print(f"seed {seed} base: heldout ppl {rows[-1]['heldout_ppl']:.1f} ({rows[-1]['seconds']} s)", flush=True)
        write_results(args.results, args, rows, started)
    # the most telling settings first (the preset's learning rate, then the others in --lrs order), every seed of one
    # setting before the next: an interrupted sweep still has whole settings
    for lr in args.lrs:
        for name, target_list in targets.items():
            for seed, base in bases.items():
                start = time.time()
                out = args.output_dir / f"seed{seed}" / f"lora-{'all' if name.startswith('every') else 'qv'}-lr{lr}"
                row = train_lora(seed, base, lr, target_list, out)
                rows.append({"seed": seed, "stage": "lora", "targets": name, "lr": lr, **row,
                             "seconds": round(time.time() - start)})
                print(f"seed {seed} {name} lr {lr}: sft_seen {row['sft_seen']:.0%}, heldout {row['heldout']:.0%}, "
                      f"ppl {row['heldout_ppl']:.1f}, last loss {row['last_loss']:.2f} ({rows[-1]['seconds']} s)",
                      flush=True)
                write_results(args.results, args, rows, started)
        if lr == args.lrs[0]:  # full SFT on the same bases, next to the preset's LoRA
            for seed, base in bases.items():
                start = time.time()
                row = train_full(seed, base, args.output_dir / f"seed{seed}" / "sft")
                rows.append({"seed": seed, "stage": "full", "lr": str(toy_preset()["TOY_SFT_LR"]), **row,
                             "seconds": round(time.time() - start)})
                print(f"seed {seed} full SFT: sft_seen {row['sft_seen']:.0%}, heldout {row['heldout']:.0%}, "
                      f"ppl {row['heldout_ppl']:.1f} ({rows[-1]['seconds']} s)", flush=True)
                write_results(args.results, args, rows, started)
    print(json.dumps(summary(rows), ensure_ascii=False, indent=1))
    print(f"Results: {args.results}")


if __name__ == "__main__":
    main()
