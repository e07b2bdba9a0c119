"""Grade the exercises: `python -m exercises.check [--notebook 6.4] [--solution reference]` (`make check-exercises`).

Each exercise is graded on its own: an untouched stub reports "not implemented yet", an exception inside the
learner's code is reported in one line, a wrong answer gets the grader's teaching message. Exit code 0 only
when every graded exercise passes. `--solution reference` grades llmtrain's own implementations instead,
which shows that the graders accept a right answer.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from exercises import graders

EXERCISES_DIR = Path(__file__).resolve().parent
NOTEBOOKS = {"6.1": ("预训练", "ex6_1_pretrain.py"), "6.2": ("有监督微调 SFT", "ex6_2_sft.py"),
             "6.3": ("LoRA", "ex6_3_lora.py"), "6.4": ("DPO", "ex6_4_dpo.py"), "6.5": ("GRPO", "ex6_5_grpo.py")}


@dataclass(frozen=True)
class Exercise:
    """One exercise: the name it has in the stub file and in llmtrain, and the grader that checks it."""

    notebook: str
    name: str
    reference_module: str
    grade: Callable[[Any], None]


EXERCISES = [
    Exercise("6.1", "tokenize_with_eos", "llmtrain.pretrain_data", graders.grade_tokenize_with_eos),
    Exercise("6.1", "group_texts", "llmtrain.pretrain_data", graders.grade_group_texts),
    Exercise("6.1", "logits_bytes", "llmtrain.memory", graders.grade_logits_bytes),
    Exercise("6.2", "tokenize_conversation", "llmtrain.sft_data", graders.grade_tokenize_conversation),
    Exercise("6.2", "packed_position_ids", "llmtrain.sft_data", graders.grade_packed_position_ids),
    Exercise("6.3", "LoraLinear", "llmtrain.lora", graders.grade_lora_linear),
    Exercise("6.4", "dpo_loss", "llmtrain.dpo", graders.grade_dpo_loss),
    Exercise("6.4", "sequence_logprobs", "llmtrain.dpo", graders.grade_sequence_logprobs),
    Exercise("6.5", "group_advantages", "llmtrain.grpo", graders.grade_group_advantages),
    Exercise("6.5", "k3_kl", "llmtrain.grpo", graders.grade_k3_kl),
]

PASSED, FAILED, NOT_IMPLEMENTED = "通过", "未通过", "未实现"


@dataclass(frozen=True)
class Result:
    """The outcome of grading one exercise: PASSED, FAILED or NOT_IMPLEMENTED, and what to tell the learner."""

    exercise: Exercise
    status: str
    message: str = ""


def silence_libraries() -> None:
    """No library warnings or progress bars in the grader's output: only the grades are printed."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed (imported by TRL) announces the accelerator otherwise
    warnings.simplefilter("ignore")
    for name in ("bitsandbytes", "transformers", "datasets", "peft", "trl", "DeepSpeed", "accelerate", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()


def load_learner_file(path: Path) -> ModuleType:
    """Import a learner's exercise file by path (fresh each time, so edits are picked up)."""
    spec = importlib.util.spec_from_file_location(f"exercises_learner_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def where_raised(error: BaseException, path: Path | None) -> str:
    """'ex6_3_lora.py 第 27 行 LoraLinear.__init__': the innermost frame in the learner's file (else the innermost)."""
    frames = list(traceback.walk_tb(error.__traceback__))
    mine = [(f, line) for f, line in frames if path is not None and Path(f.f_code.co_filename) == path]
    frame, lineno = (mine or frames)[-1]
    name = getattr(frame.f_code, "co_qualname", frame.f_code.co_name)  # co_qualname: Python 3.11+
    return f"{Path(frame.f_code.co_filename).name} 第 {lineno} 行 {name}"


def grade(exercise: Exercise, implementation: Any, path: Path | None = None) -> Result:
    """Run one grader on one implementation; never raises for what the learner's code does."""
    try:
        exercise.grade(implementation)
    except graders.Wrong as wrong:
        return Result(exercise, FAILED, str(wrong))
    except NotImplementedError as error:
        return Result(exercise, NOT_IMPLEMENTED, f"还没实现(not implemented yet,{where_raised(error, path)}):"
                                                 "把 raise NotImplementedError 换成你的实现")
    except Exception as error:  # the learner's code raised: one line, not a traceback
        first_line = (str(error).strip().splitlines() or [""])[0]
        return Result(exercise, FAILED, f"运行时出错 {type(error).__name__}: {first_line}({where_raised(error, path)})")
    return Result(exercise, PASSED)


def grade_notebook(notebook: str, solution: str, exercises_dir: Path | None = None) -> list[Result]:
    """Grade one notebook's exercises: the learner's file in `exercises_dir` (default: this folder), or
    llmtrain's implementations (solution="reference")."""
    selected = [e for e in EXERCISES if e.notebook == notebook]
    if solution == "reference":
        return [grade(e, getattr(importlib.import_module(e.reference_module), e.name)) for e in selected]
    path = (exercises_dir or EXERCISES_DIR) / NOTEBOOKS[notebook][1]
    try:
        module = load_learner_file(path)
    except Exception as error:  # a syntax error or a failing import in the learner's file
        first_line = (str(error).strip().splitlines() or [""])[0]
        message = f"{path.name} 无法导入:{type(error).__name__}: {first_line}"
        return [Result(e, FAILED, message) for e in selected]
    results = []
    for exercise in selected:
        implementation = getattr(module, exercise.name, None)
        if implementation is None:
            results.append(Result(exercise, FAILED, f"{path.name} 里找不到 {exercise.name}:保留练习给出的名字"))
        else:
            results.append(grade(exercise, implementation, path))
    return results


def format_results(notebook: str, results: list[Result], solution: str) -> str:
    """The report of one notebook: a header line, then one line per exercise with its status and message."""
    title, filename = NOTEBOOKS[notebook]
    source = "参考实现 llmtrain" if solution == "reference" else f"exercises/{filename}"
    lines = [f"== {notebook} {title}({source})"]
    for r in results:
        lines.append(f"  [{r.status}] {r.exercise.name}" + (f":{r.message}" if r.message else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Grade, print the report, and return the exit code (0 only when every graded exercise passed)."""
    parser = argparse.ArgumentParser(description="给 exercises/ 里的练习评分(make check-exercises)")
    parser.add_argument("--notebook", choices=sorted(NOTEBOOKS), help="只评这一个 notebook 的练习,如 6.4")
    parser.add_argument("--solution", choices=["learner", "reference"], default="learner",
                        help="learner:评 exercises/ 里你写的代码(默认);reference:评课程自己的实现 llmtrain")
    args = parser.parse_args(argv)
    silence_libraries()
    start = time.perf_counter()
    results = []
    for notebook in [args.notebook] if args.notebook else sorted(NOTEBOOKS):
        notebook_results = grade_notebook(notebook, args.solution)
        print(format_results(notebook, notebook_results, args.solution), flush=True)
        results += notebook_results
    counts = {status: sum(r.status == status for r in results) for status in (PASSED, FAILED, NOT_IMPLEMENTED)}
    print(f"合计 {len(results)} 个练习:" + ",".join(f"{s} {n}" for s, n in counts.items())
          + f"(评分用时 {time.perf_counter() - start:.1f} 秒)")
    return 0 if counts[PASSED] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
