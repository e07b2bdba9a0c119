"""7.1 lesson: the toy world scored both ways through lm-evaluation-harness, and what the two ways disagree on.

    python bench/lm_eval_toy.py [--seeds 12 1 2] [--output_dir output/bench/lm_eval] \
        [--results bench/results/lm_eval_toy.json]

Every model is scored by lm-eval (`llmtrain.harness`, the same calls as code/benchmark.py --chat) on
toy_world_mc (4-way choice by log-likelihood) and toy_world_gen (greedy reply, the scorecard's strict rule):
1. `make run`'s five stages (toy_run_dir(): run `make run` first), with a per-question count of where the
   two scorings disagree.
2. Chance level: untrained toy models (random weights, --untrained_seeds).
3. Format vs knowledge (--seeds; make run's own base and SFT for seed 12): the pretrained base, its full SFT and a
   format-only SFT: data/sample/sft.jsonl without the 60 questions about the seen people's facts (it keeps
   everyday chat and the in-context questions about other names: the reply's wording, no closed-book question).
4. Contamination (--contamination_seeds): pretraining without the held-out people's biographies, then full SFT
   without and with the 60 held-out eval questions and their answers added; the SFT models also on 6.5's
   held-out RL prompts (data/sample/grpo_eval.jsonl: the same people's facts asked in words SFT never uses).
Every training run is a PRESET=toy launcher (DeepSpeed, 2 CPU processes) with only SEED and the data changed.
Writes every number with the date, the machine and the versions to --results, after each run. The defaults took
59 minutes on 2 cores shared with other jobs (2026-12-06).
"""

import argparse
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from llmtrain import PROJECT_ROOT
from llmtrain.evaluation import add_rl_task_column, statement_prompt
from llmtrain.grading import load_eval_questions
from llmtrain.harness import (TOY_CHOICES, TOY_EVAL_FILE, TOY_TASKS, benchmark_record, end_of_turn_gen_kwargs,
                              load_lm, run_tasks, task_manager, write_json_atomically)
from llmtrain.toy import ensure_toy_assets, run_bash_script, toy_preset
from llmtrain.toy_run import TOY_STAGES, require_toy_model, toy_run_dir

CODE = PROJECT_ROOT / "code"
SAMPLE = PROJECT_ROOT / "data" / "sample"
RL_EVAL_FILE = str(SAMPLE / "grpo_eval.jsonl")
MAKE_RUN_SEED = 12  # code/launch_common.sh's default SEED: make run's models are this seed's
logger = logging.getLogger("lm_eval_toy")


def score(model: str | Path, adapter: str | Path | None = None, rl_task: bool = False) -> dict[str, Any]:
    """Both toy tasks through lm-eval: accuracy per form and split, and each question's two verdicts."""
    lm = load_lm(str(model), str(adapter) if adapter else None, device="cpu")
    rows, samples = run_tasks(lm, list(TOY_TASKS), task_manager(list(TOY_TASKS)), chat=True,
                              gen_kwargs=end_of_turn_gen_kwargs(lm.tokenizer, "hf"))
    names = {"acc": "", "acc_norm": "_norm", "strict_acc": ""}  # mc, mc_norm (per byte), gen; then per split
    values = {r["task"].removeprefix("toy_world_").replace("mc", "mc" + names[r["metric"]], 1): r["value"]
              for r in rows if r["metric"] in names}
    verdicts: dict[int, dict[str, int]] = {}
    for task, logged in samples.items():
        form = "gen" if "gen" in task else "mc"
        for s in logged:
            verdicts.setdefault(s["doc"]["index"], {})[form] = int(s["strict_acc" if form == "gen" else "acc"])
    result = dict(values, seconds={r["task"]: r["seconds"] for r in rows if r["group"] is None},
                  disagreements={"mc_right_gen_wrong": sum(v["mc"] and not v["gen"] for v in verdicts.values()),
                                 "gen_right_mc_wrong": sum(v["gen"] and not v["mc"] for v in verdicts.values())})
    if rl_task:
        tokenizer = AutoTokenizer.from_pretrained(model)
        result["rl_heldout"] = add_rl_task_column({}, lm.model, tokenizer, RL_EVAL_FILE,
                                                  toy_preset()["TOY_STYLE_SUFFIX"])["rl_heldout"]
    logger.info("%s%s: %s", model, f" + {adapter}" if adapter else "", {k: v for k, v in values.items()})
    return result


def untrained_model(seed: int, out: Path) -> Path:
    """A toy model with random weights (the toy config, `seed`), saved with the toy tokenizer."""
    toy = ensure_toy_assets()
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(toy)).save_pretrained(out)
    AutoTokenizer.from_pretrained(toy).save_pretrained(out)
    return out


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def training_files(out: Path) -> dict[str, Path]:
    """The variants' data: pretraining without the held-out people, format-only SFT, and SFT + the test."""
    questions = load_eval_questions(str(TOY_EVAL_FILE))
    heldout_people = {q.person for q in questions if q.split == "heldout"}
    asked = {q.question for q in questions}
    pretrain = [json.loads(line) for line in (SAMPLE / "pretrain.jsonl").read_text(encoding="utf-8").splitlines()]
    sft = [json.loads(line) for line in (SAMPLE / "sft.jsonl").read_text(encoding="utf-8").splitlines()]
    leaked = [{"conversations": [{"from": "human", "value": q.question},
                                 {"from": "assistant", "value": f"{statement_prompt(q.question)}{q.answer}。"}],
               "id": f"leaked-{i:03d}"} for i, q in enumerate(questions) if q.split == "heldout"]
    kept = [d for d in pretrain if not any(p in d["text"] for p in heldout_people)]
    return {
        "pretrain_without_heldout": write_jsonl(out / "pretrain_without_heldout.jsonl", kept),
        "sft_format_only": write_jsonl(out / "sft_format_only.jsonl",
                                       [c for c in sft if c["conversations"][0]["value"] not in asked]),
        "sft_contaminated": write_jsonl(out / "sft_contaminated.jsonl", sft + leaked),
    }


def train(script: str, seed: int, out: Path, **env: str) -> Path:
    """One PRESET=toy launcher run into `out` (emptied first: the launchers resume from checkpoints they find)."""
    shutil.rmtree(out, ignore_errors=True)
    run_bash_script(CODE / script, PRESET="toy", SEED=str(seed), OUTPUT_DIR=str(out), **env)
    return out


def format_run(seed: int, out: Path, files: dict[str, Path], stages: dict[str, Any]) -> dict[str, Any]:
    """The base and full SFT of `seed` (make run's own for MAKE_RUN_SEED), and a format-only SFT from the same base."""
    if seed == MAKE_RUN_SEED:
        base, scores = toy_run_dir() / "pretrain", {"base": stages["base (6.1)"], "sft": stages["full SFT (6.2)"]}
    else:
        base = train("pretrain.sh", seed, out / "pretrain")
        scores = {"base": score(base), "sft": score(train("finetune.sh", seed, out / "sft", MODEL_DIR=str(base)))}
    scores["sft_format_only"] = score(train("finetune.sh", seed, out / "sft-format", MODEL_DIR=str(base),
                                            TRAIN_FILES=str(files["sft_format_only"])))
    return scores


def contamination_run(seed: int, out: Path, files: dict[str, Path]) -> dict[str, Any]:
    """Pretraining without the held-out people, then full SFT without and with the 60 held-out test questions."""
    base = train("pretrain.sh", seed, out / "pretrain-nh", TRAIN_FILES=str(files["pretrain_without_heldout"]))
    clean = train("finetune.sh", seed, out / "sft-nh", MODEL_DIR=str(base))
    leaked = train("finetune.sh", seed, out / "sft-nh-contaminated", MODEL_DIR=str(base),
                   TRAIN_FILES=str(files["sft_contaminated"]))
    return {"base_without_heldout": score(base), "sft_without_heldout": score(clean, rl_task=True),
            "sft_without_heldout_contaminated": score(leaked, rl_task=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[MAKE_RUN_SEED, 1, 2],
                        help="Seeds of the base / full SFT / format-only SFT runs.")
    parser.add_argument("--contamination_seeds", type=int, nargs="+", default=[MAKE_RUN_SEED])
    parser.add_argument("--untrained_seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output_dir", default=str(PROJECT_ROOT / "output" / "bench" / "lm_eval"))
    parser.add_argument("--results", default=str(PROJECT_ROOT / "bench" / "results" / "lm_eval_toy.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s - %(name)s - %(message)s")
    out = Path(args.output_dir)

    files = training_files(out)
    record = benchmark_record([], model=str(toy_run_dir()), adapter=None, backend="hf", chat=True, device="cpu",
                              limit=None, num_fewshot=None)
    for key in ("rows", "model", "adapter", "limit", "num_fewshot"):
        del record[key]
    record.update(choices=TOY_CHOICES, chance_level=1 / TOY_CHOICES, make_run_seed=MAKE_RUN_SEED,
                  data={k: {"file": v.name, "records": len(v.read_text(encoding="utf-8").splitlines())}
                        for k, v in files.items()})
    stages = {stage.name: score(require_toy_model(stage.model),
                                require_toy_model(stage.adapter) if stage.adapter else None) for stage in TOY_STAGES}
    record["make_run_stages"] = stages
    record["untrained"] = {seed: score(untrained_model(seed, out / f"untrained-{seed}"))
                           for seed in args.untrained_seeds}
    record["format"], record["contamination"] = {}, {}
    write_json_atomically(args.results, record)
    # the file is rewritten after each run: an interrupted benchmark keeps what it finished
    for seed in args.seeds:
        record["format"][seed] = format_run(seed, out / f"seed-{seed}", files, stages)
        write_json_atomically(args.results, record)
    for seed in args.contamination_seeds:
        record["contamination"][seed] = contamination_run(seed, out / f"seed-{seed}", files)
        write_json_atomically(args.results, record)
    print(json.dumps({k: record[k] for k in ("make_run_stages", "untrained")}, ensure_ascii=False, indent=1))
    print(f"written to {args.results}")


if __name__ == "__main__":
    main()
