"""6.5 benchmark: GRPO one change at a time, over seeds, and what RL could not do here.

    python bench/grpo_ablation.py [--seeds 12 1 2] [--seed_dir output/bench/seeds] [--results bench/grpo_ablation.json]

Starts from each seed's DPO model as bench/seed_spread.py left it (<seed_dir>/seed<N>/dpo-lora/merged; run that
first). Every configuration is `make run`'s GRPO (PRESET=toy bash code/grpo.sh: DeepSpeed, 2 CPU processes, LoRA,
120 steps, the same seed) with exactly one thing changed:
  - beta 0 (TRL's default, nanochat's and DAPO's choice) and 0.04 (TRL's old default) against the preset's 0.15;
  - advantages not divided by the group's std (Dr. GRPO);
  - the loss normalised per reply ("grpo") or by a constant ("dr_grpo") instead of per token ("dapo", TRL's default);
  - no format reward for 6.4's closing sentence;
  - the grader blind to the person (the prompt files without "person": the rule before issue 26).
("preset" is the seed's own make-run GRPO, scored again, not retrained.) Each GRPO model is scored as `make run`
scores it (the scorecard's seen, held-out and closing-sentence columns, the RL task on new people and on a new
phrasing), with the share of RL replies that name another person and a few replies of each. First, what RL could not
do: the arithmetic task (sums and differences within 20 that SFT never asked), from seed 12's DPO model, with the
reward and held-out accuracy before and after. About 2.5 minutes a run on 2 idle cores; results written after every
run with the date, machine and versions (committed, read by notebook 6.5); --add trains more seeds into them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import time
from importlib.metadata import version
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from llmtrain import PROJECT_ROOT
from llmtrain.evaluation import add_rl_task_column, scorecard_row, task_accuracy
from llmtrain.grading import load_prompt_dataset
from llmtrain.lora import load_adapter
from llmtrain.plotting import read_log_history
from llmtrain.toy import run_bash_script, toy_preset
from seed_spread import machine, old_rule_verdicts  # bench/ is on sys.path when run as a script

SAMPLE = PROJECT_ROOT / "data" / "sample"
GRPO_SH = PROJECT_ROOT / "code" / "grpo.sh"
# name: (environment for grpo.sh, extra grpo.py flags); "preset" is make run's GRPO
CONFIGS: dict[str, tuple[dict[str, str], list[str]]] = {
    "preset": ({}, []),
    "grader blind to the person": ({"TRAIN_FILES": "{blind}"}, []),   # second: issue 26's question, kept if cut short
    "beta 0": ({"BETA": "0"}, []),
    "beta 0.04": ({"BETA": "0.04"}, []),
    "advantages not divided by std": ({}, ["--scale_rewards", "none"]),
    "loss per reply (grpo)": ({}, ["--loss_type", "grpo"]),
    "loss over a constant (dr_grpo)": ({}, ["--loss_type", "dr_grpo"]),
    "no format reward": ({"STYLE_WEIGHT": "0"}, []),
}
EXAMPLES = 4  # replies kept per configuration and seed, the first RL replies the grader rejects


def blind_prompts(folder: Path) -> Path:
    """data/sample/grpo.jsonl without its "person" fields: the grader then checks the answer only (the old rule)."""
    path = folder / "grpo_blind.jsonl"
    rows = [json.loads(line) for line in (SAMPLE / "grpo.jsonl").read_text(encoding="utf-8").splitlines()]
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "person"}, ensure_ascii=False) + "\n"
                            for r in rows), encoding="utf-8")
    return path


def score(start: Path, adapter: Path, tokenizer) -> dict:
    """make run's scoring of a GRPO adapter, plus the RL replies that name another person."""
    style = toy_preset()["TOY_STYLE_SUFFIX"]
    model = load_adapter(AutoModelForCausalLM.from_pretrained(start), str(adapter))
    row = scorecard_row(model, tokenizer, str(SAMPLE / "eval.jsonl"), style_suffix=style)
    add_rl_task_column(row, model, tokenizer, str(SAMPLE / "grpo_eval.jsonl"), style)
    add_rl_task_column(row, model, tokenizer, str(SAMPLE / "grpo_eval_new_phrasing.jsonl"), style, "rl_new_phrasing")
    replies = row["rl_heldout_replies"]
    old_rule = old_rule_verdicts(replies)
    another = [r for old, r in zip(old_rule, replies) if old and not r["correct"]]
    history = [e for e in read_log_history(str(adapter / "trainer_state.json")) if "reward" in e]
    keep = ("prompt", "answer", "person", "reply")
    return {"seen": row["sft_seen"], "heldout": row["heldout"], "style": row["style"], "rl": row["rl_heldout"],
            "rl_new_phrasing": row["rl_new_phrasing"], "rl_old_rule": round(sum(old_rule) / len(replies), 4),
            "rl_another_person": round(len(another) / len(replies), 4),
            "reward_first": history[0]["reward"], "reward_last": history[-1]["reward"],
            "kl_last": history[-1].get("kl"), "length_last": history[-1]["completions/mean_length"],
            "wrong_replies": [{k: r[k] for k in keep} for r in replies if not r["correct"]][:EXAMPLES],
            "another_person_replies": [{k: r[k] for k in keep} for r in another][:EXAMPLES]}


def arithmetic_prompts(folder: Path, rng: random.Random) -> tuple[Path, Path]:
    """Sums and differences within 20 that no SFT conversation asks: 120 to train on, 60 held out."""
    asked = {t["value"] for line in (SAMPLE / "sft.jsonl").read_text(encoding="utf-8").splitlines()
             for t in json.loads(line)["conversations"]}
    pool = [(f"{a}加{b}等于几?", a + b) for a in range(1, 21) for b in range(1, 21)]
    pool += [(f"{a}减{b}等于几?", a - b) for a in range(1, 21) for b in range(1, a + 1)]
    pool = [p for p in pool if p[0] not in asked]
    rng.shuffle(pool)
    files = (folder / "arithmetic.jsonl", folder / "arithmetic_eval.jsonl")
    for path, part in zip(files, (pool[:120], pool[120:180])):
        path.write_text("".join(json.dumps({"prompt": q, "answer": str(a), "task": "arithmetic"}, ensure_ascii=False)
                                + "\n" for q, a in part), encoding="utf-8")
    return files


def arithmetic_run(start: Path, out: Path) -> dict:
    """What RL could not do: GRPO on sums and differences the SFT data never asked, from `start` (seed 12's DPO
    model) with make run's settings and no format reward; held-out greedy accuracy before and after."""
    tokenizer = AutoTokenizer.from_pretrained(start)
    train, held_out = arithmetic_prompts(out, random.Random(0))
    adapter = out / "arithmetic"
    run_bash_script(GRPO_SH, "--overwrite_output_dir", PRESET="toy", SEED="12", MODEL_DIR=str(start),
                    OUTPUT_DIR=str(adapter), TRAIN_FILES=str(train), EVAL_FILES="none", STYLE_WEIGHT="0")
    rows = load_prompt_dataset([str(held_out)])
    before = task_accuracy(AutoModelForCausalLM.from_pretrained(start), tokenizer, rows, 48)
    after = task_accuracy(load_adapter(AutoModelForCausalLM.from_pretrained(start), str(adapter)), tokenizer, rows, 48)
    history = [e for e in read_log_history(str(adapter / "trainer_state.json")) if "reward" in e]
    print(f"arithmetic, seed 12: held-out {before['accuracy']} -> {after['accuracy']}, sampled reward "
          f"{history[0]['rewards/verifiable/mean']} -> {history[-1]['rewards/verifiable/mean']}", flush=True)
    return {"seed": 12, "held_out_before": before["accuracy"], "held_out_after": after["accuracy"],
            "reward": [e["rewards/verifiable/mean"] for e in history], "reward_std": [e["reward_std"] for e in history],
            "replies_after": after["replies"][:EXAMPLES]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[12, 1, 2])
    parser.add_argument("--seed_dir", default=str(PROJECT_ROOT / "output" / "bench" / "seeds"))
    parser.add_argument("--output_dir", default=str(PROJECT_ROOT / "output" / "bench" / "grpo_ablation"))
    parser.add_argument("--results", default=str(PROJECT_ROOT / "bench" / "grpo_ablation.json"))
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS),
                        help="Train only these configurations (default: all).")
    parser.add_argument("--add", action="store_true", help="Keep the runs already in --results (the same toy preset) "
                        "and its arithmetic run; train only --seeds.")
    args = parser.parse_args()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    blind = blind_prompts(out)
    results = {"date": None, "machine": machine(), "versions": None, "toy_preset": toy_preset(), "configs": {
        name: {"env": env, "flags": flags} for name, (env, flags) in CONFIGS.items()}, "runs": {}, "seconds": {}}
    if args.add:
        earlier = json.loads(Path(args.results).read_text(encoding="utf-8"))
        if earlier["toy_preset"] != results["toy_preset"]:
            raise SystemExit(f"{args.results} was measured with another toy preset: rerun every seed without --add.")
        results.update(runs=earlier["runs"], seconds=earlier["seconds"], arithmetic=earlier["arithmetic"])

    def save() -> None:
        results["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        results["versions"] = {n: version(n) for n in ("torch", "transformers", "deepspeed", "peft", "trl")}
        Path(args.results).write_text(json.dumps(results, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    if not args.add:  # first: the seeds' runs below take the longest
        results["arithmetic"] = arithmetic_run(Path(args.seed_dir) / "seed12" / "dpo-lora" / "merged", out)
        save()

    for seed in args.seeds:
        start = Path(args.seed_dir) / f"seed{seed}" / "dpo-lora" / "merged"
        tokenizer = AutoTokenizer.from_pretrained(start)
        for name, (env, flags) in ((n, CONFIGS[n]) for n in CONFIGS if n in args.configs):
            adapter = out / f"seed{seed}" / name.replace(" ", "_")
            began = time.time()
            if name == "preset":  # make run's GRPO is this very command with this seed: score the seed's own run
                adapter = Path(args.seed_dir) / f"seed{seed}" / "grpo-lora"
            else:
                run_bash_script(GRPO_SH, "--overwrite_output_dir", *flags, PRESET="toy", SEED=str(seed),
                                MODEL_DIR=str(start), OUTPUT_DIR=str(adapter), EVAL_FILES="none",
                                **{k: v.format(blind=blind) for k, v in env.items()})
            results["runs"].setdefault(name, {})[str(seed)] = score(start, adapter, tokenizer)
            results["seconds"][f"{name}, seed {seed}"] = round(time.time() - began)
            print(f"seed {seed}, {name}: " + ", ".join(f"{k} {v}" for k, v in results["runs"][name][str(seed)].items()
                                                       if k != "wrong_replies"), flush=True)
            save()


if __name__ == "__main__":
    main()
