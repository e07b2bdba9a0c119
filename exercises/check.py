"""Grade the exercises: `python -m exercises.check [--notebook 6.4] [--solution reference]` (`make check-exercises`).

Each exercise is graded on its own: an untouched stub reports "not implemented yet", an exception inside the
learner's code is reported in one line, an answer that merely imports the course's implementation (or a library
function that does the whole exercise) is told so, a wrong answer gets the grader's teaching message. Exit code 0
only when every graded exercise passes. `--solution reference` grades llmtrain's own implementations instead,
which shows that the graders accept a right answer.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import inspect
import logging
import os
import sys
import textwrap
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from exercises.graders import dpo, grpo, lora, pretrain, sft
from exercises.graders.common import Wrong

EXERCISES_DIR = Path(__file__).resolve().parent
NOTEBOOKS = {"6.1": ("预训练", "ex6_1_pretrain.py"), "6.2": ("有监督微调 SFT", "ex6_2_sft.py"),
             "6.3": ("LoRA", "ex6_3_lora.py"), "6.4": ("DPO", "ex6_4_dpo.py"), "6.5": ("GRPO", "ex6_5_grpo.py")}


@dataclass(frozen=True)
class Exercise:
    """One exercise: its name in the stub file and in llmtrain, its grader, and what a learner may not borrow.

    `borrowed` lists "module:attribute" of library objects that do the whole exercise (the llmtrain reference
    itself is always on the list): a learner's answer that is or calls one of them is not graded.
    """

    notebook: str
    name: str
    reference_module: str
    grade: Callable[[Any], None]
    borrowed: tuple[str, ...] = ()

    def reference(self) -> Any:
        """llmtrain's implementation: what `--solution reference` grades."""
        return getattr(importlib.import_module(self.reference_module), self.name)

    def forbidden(self) -> dict[int, str]:
        """id -> dotted name of every object whose use makes the learner's answer not their own."""
        found = {id(self.reference()): f"{self.reference_module}.{self.name}"}
        for spec in self.borrowed:
            module, _, attribute = spec.partition(":")
            found[id(getattr(importlib.import_module(module), attribute))] = f"{module}.{attribute}"
        return found


EXERCISES = [
    Exercise("6.1", "tokenize_with_eos", "llmtrain.pretrain_data", pretrain.grade_tokenize_with_eos),
    Exercise("6.1", "group_texts", "llmtrain.pretrain_data", pretrain.grade_group_texts),
    Exercise("6.1", "find_resume_checkpoint", "llmtrain.checkpoints", pretrain.grade_find_resume_checkpoint),
    Exercise("6.1", "logits_bytes", "llmtrain.memory", pretrain.grade_logits_bytes,
             ("llmtrain.memory:estimate_training_memory",)),
    Exercise("6.2", "tokenize_conversation", "llmtrain.sft_data", sft.grade_tokenize_conversation),
    Exercise("6.2", "make_collator", "llmtrain.sft_data", sft.grade_make_collator,
             ("transformers:DataCollatorWithFlattening", "transformers:DataCollatorForSeq2Seq")),
    Exercise("6.3", "LoraLinear", "llmtrain.lora", lora.grade_lora_linear,
             ("peft.tuners.lora:LoraLayer", "peft.tuners.lora:Linear", "peft:inject_adapter_in_model")),
    Exercise("6.3", "inject_lora", "llmtrain.lora", lora.grade_inject_lora,
             ("llmtrain.lora:check_targets", "peft:get_peft_model", "peft:inject_adapter_in_model")),
    Exercise("6.3", "lora_parameter_count", "llmtrain.lora", lora.grade_lora_parameter_count,
             ("llmtrain.memory:lora_trainable_params", "peft:get_peft_model", "peft:inject_adapter_in_model")),
    Exercise("6.4", "sequence_logprobs", "llmtrain.dpo", dpo.grade_sequence_logprobs),
    Exercise("6.4", "dpo_loss", "llmtrain.dpo", dpo.grade_dpo_loss),
    Exercise("6.4", "dpo_batch_loss", "llmtrain.dpo", dpo.grade_dpo_batch_loss),
    Exercise("6.5", "group_advantages", "llmtrain.grpo", grpo.grade_group_advantages),
    Exercise("6.5", "k3_kl", "llmtrain.grpo", grpo.grade_k3_kl),
    Exercise("6.5", "grpo_loss", "llmtrain.grpo", grpo.grade_grpo_loss),
]

PASSED, FAILED, NOT_IMPLEMENTED = "通过", "未通过", "未实现"
# Loggers that print while grading: libraries at import or model creation, llmtrain's own warnings (e.g. about an
# incomplete checkpoint the 6.1 grader builds on purpose).
QUIET_LOGGERS = ("bitsandbytes", "transformers", "datasets", "peft", "trl", "DeepSpeed", "accelerate", "torch",
                 "kernels", "llmtrain")


@dataclass(frozen=True)
class Result:
    """The outcome of grading one exercise: PASSED, FAILED or NOT_IMPLEMENTED, what to tell the learner, and the
    key of the message ("exercise.mistake" from a grader, "check.*" from here; empty when passed)."""

    exercise: Exercise
    status: str
    message: str = ""
    key: str = ""


def silence_libraries() -> None:
    """No library warnings or progress bars in the grader's output: only the grades are printed."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed (imported by TRL) announces the accelerator otherwise
    warnings.simplefilter("ignore")
    for name in QUIET_LOGGERS:
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


def names_used(function: Callable) -> Iterator[Any]:
    """The objects a function's source refers to: its global and closure names, dotted attributes of them, and
    what its own import statements import. Only what can be resolved without running the function."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):  # no source (built at run time): its code object's global names
        code = getattr(function, "__code__", None)
        yield from (function.__globals__[n] for n in (code.co_names if code else ()) if n in function.__globals__)
        return
    scope = dict(function.__globals__)
    for name, cell in zip(function.__code__.co_freevars, function.__closure__ or ()):
        try:
            scope[name] = cell.cell_contents
        except ValueError:  # a closure variable not assigned yet
            continue
    for node in ast.walk(tree):  # imports inside the function come first: they shadow globals
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                try:
                    scope[alias.asname or alias.name] = getattr(importlib.import_module(node.module), alias.name)
                except (ImportError, AttributeError):
                    continue
        elif isinstance(node, ast.Import):
            for alias in node.names:
                try:
                    scope[alias.asname or alias.name.split(".")[0]] = importlib.import_module(
                        alias.name if alias.asname else alias.name.split(".")[0])
                except ImportError:
                    continue
    for node in ast.walk(tree):
        chain: list[str] = []
        while isinstance(node, ast.Attribute):
            chain.insert(0, node.attr)
            node = node.value
        if not isinstance(node, ast.Name) or node.id not in scope:
            continue
        value = scope[node.id]
        yield value
        for attribute in chain:  # module.attribute.attribute: only through modules and classes, never an instance
            if not isinstance(value, (ModuleType, type)):
                break
            value = getattr(value, attribute, None)
            yield value


def borrowed_from(implementation: Any, forbidden: dict[int, str]) -> str | None:
    """The dotted name of a forbidden object the learner's answer is, subclasses, or uses (also through helpers
    defined in the learner's own file); None when the answer is their own."""
    home = getattr(implementation, "__module__", None)
    seen: set[int] = set()

    def visit(obj: Any) -> str | None:
        if id(obj) in forbidden:
            return forbidden[id(obj)]
        if id(obj) in seen or getattr(obj, "__module__", None) != home:
            return None
        seen.add(id(obj))
        if isinstance(obj, type):
            for base in obj.__mro__[1:]:
                if id(base) in forbidden:
                    return forbidden[id(base)]
            members = [m.__func__ if isinstance(m, (staticmethod, classmethod)) else m for m in vars(obj).values()]
            return next((found for m in members if inspect.isfunction(m) and (found := visit(m))), None)
        if inspect.isfunction(obj):
            return next((found for used in names_used(obj) if (found := visit(used))), None)
        return None

    if isinstance(home, str) and home.split(".")[0] == "llmtrain":
        return f"{home}.{getattr(implementation, '__qualname__', type(implementation).__name__)}"
    return visit(implementation)


def grade(exercise: Exercise, implementation: Any, path: Path | None = None, own_work: bool = True) -> Result:
    """Run one grader on one implementation; never raises for what the learner's code does.

    `own_work` (a learner's answer, not llmtrain's) first rejects an answer that is or calls the course's
    implementation or a library function that does the whole exercise.
    """
    if own_work:
        source = borrowed_from(implementation, exercise.forbidden())
        if source is not None:
            whose = "课程自己的实现" if source.startswith("llmtrain") else "库里现成的实现"
            return Result(exercise, FAILED, f"你的 {exercise.name} 直接用了{whose} {source}:练习是自己写出这个机制,"
                                            "评分程序不给别人的代码打分。删掉这个 import,自己实现;写完再对照 "
                                            f"{exercise.reference_module}", "check.borrowed")
    try:
        exercise.grade(implementation)
    except Wrong as wrong:
        return Result(exercise, FAILED, str(wrong), wrong.key)
    except NotImplementedError as error:
        return Result(exercise, NOT_IMPLEMENTED, f"还没实现(not implemented yet,{where_raised(error, path)}):"
                                                 "把 raise NotImplementedError 换成你的实现", "check.not_implemented")
    except Exception as error:  # the learner's code raised: one line, not a traceback
        first_line = (str(error).strip().splitlines() or [""])[0]
        return Result(exercise, FAILED, f"运行时出错 {type(error).__name__}: {first_line}({where_raised(error, path)})",
                      "check.raised")
    return Result(exercise, PASSED)


def grade_notebook(notebook: str, solution: str, exercises_dir: Path | None = None) -> list[Result]:
    """Grade one notebook's exercises: the learner's file in `exercises_dir` (default: this folder), or
    llmtrain's implementations (solution="reference")."""
    selected = [e for e in EXERCISES if e.notebook == notebook]
    if solution == "reference":
        return [grade(e, e.reference(), own_work=False) for e in selected]
    path = (exercises_dir or EXERCISES_DIR) / NOTEBOOKS[notebook][1]
    try:
        module = load_learner_file(path)
    except Exception as error:  # a syntax error or a failing import in the learner's file
        first_line = (str(error).strip().splitlines() or [""])[0]
        message = f"{path.name} 无法导入:{type(error).__name__}: {first_line}"
        return [Result(e, FAILED, message, "check.import_failed") for e in selected]
    results = []
    for exercise in selected:
        implementation = getattr(module, exercise.name, None)
        if implementation is None:
            results.append(Result(exercise, FAILED, f"{path.name} 里找不到 {exercise.name}:保留练习给出的名字",
                                  "check.missing_name"))
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
