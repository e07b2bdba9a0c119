"""7.1: how good is my model? Benchmarks through EleutherAI's lm-evaluation-harness (the `lm-eval` package).

lm-eval does the evaluating: C-Eval (its validation split: the test split's labels are not public), CMMLU,
GSM8K or any task it knows. This module only assembles a run: the model (a folder, optionally with a peft
LoRA adapter; Hugging Face or vLLM), the chat format for chat models and a stop at <|im_end|>, one timed
lm-eval call per task, and a record of the numbers with the versions and the device.

The toy world is an lm-eval task too (code/lm_eval_tasks/toy_world, no download): the eval questions of
data/sample/eval.jsonl as 4-way multiple choice scored by log-likelihood, and as generation graded by the
scorecard's strict rule (`llmtrain.evaluation.grade_replies`).
"""

from __future__ import annotations

import datetime
import functools
import importlib.util
import json
import logging
import os
import random
import tempfile
import time
from collections import defaultdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtrain import PROJECT_ROOT
from llmtrain.errors import LlmtrainError
from llmtrain.evaluation import statement_prompt
from llmtrain.grading import SPLITS, EvalQuestion, grade_replies, load_eval_questions
from llmtrain.grpo import end_of_reply_ids
from llmtrain.toy import toy_preset

if TYPE_CHECKING:  # lm-eval and datasets are imported where they are used: importing lm_eval takes seconds
    from datasets import DatasetDict
    from lm_eval.api.model import LM
    from lm_eval.tasks import TaskManager
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

TASKS_DIR = PROJECT_ROOT / "code" / "lm_eval_tasks"
TOY_EVAL_FILE = PROJECT_ROOT / "data" / "sample" / "eval.jsonl"
BENCHMARK_TASKS = ("ceval-valid", "cmmlu", "gsm8k")  # 7.1: C-Eval (validation split), CMMLU, GSM8K
TOY_TASKS = ("toy_world_mc", "toy_world_gen")
TOY_CHOICES = 4  # the right value and three others of the same attribute: chance is 1 in 4
BACKENDS = ("hf", "vllm")
# A group's subtasks are printed under it when there are this few (the toy world's two splits); C-Eval's 52 and
# CMMLU's 67 subjects are kept in the JSON only.
MAX_SUBTASK_ROWS = 4
VERSIONED_PACKAGES = ("lm_eval", "transformers", "torch", "peft", "datasets", "accelerate", "vllm")


# ---------------------------------------------------------------- the toy world as an lm-eval task
def attribute_of(question: EvalQuestion) -> str:
    """7.1: what a toy question asks, without its person: "林晓雨的家乡是哪里?" -> "的家乡是哪里?"."""
    if not question.person:
        raise LlmtrainError(f"{question.question!r} says nothing of whom it asks: the toy task needs eval records "
                            'with "person" (data/sample/eval.jsonl, written by data/sample/build_samples.py).')
    return question.question.replace(question.person, "", 1)


def toy_world_docs(questions: list[EvalQuestion], n_choices: int = TOY_CHOICES) -> list[dict[str, Any]]:
    """7.1: one lm-eval document per eval question: the question, its statement opening, and `n_choices` values.

    The distractors are other values of the same attribute (another town for a hometown question), drawn
    and shuffled with the question as the seed, so the documents are the same on every run. "index" is the
    question's position in the eval file.
    """
    values: dict[str, list[str]] = defaultdict(list)
    for q in questions:
        if q.answer not in values[attribute_of(q)]:
            values[attribute_of(q)].append(q.answer)
    docs = []
    for index, q in enumerate(questions):
        others = [v for v in values[attribute_of(q)] if v != q.answer]
        if len(others) < n_choices - 1:
            raise LlmtrainError(f"{q.question!r} has {len(others)} other values of its attribute in the eval file; "
                                f"{n_choices}-way choice needs {n_choices - 1}.")
        rng = random.Random(q.question)
        choices = rng.sample(others, n_choices - 1) + [q.answer]
        rng.shuffle(choices)
        docs.append(dict(index=index, question=q.question, answer=q.answer, split=q.split,
                         statement=statement_prompt(q.question), choices=choices, gold=choices.index(q.answer)))
    return docs


@functools.cache
def toy_eval_questions() -> tuple[EvalQuestion, ...]:
    """7.1: the toy task's questions (data/sample/eval.jsonl), read once per process."""
    return tuple(load_eval_questions(str(TOY_EVAL_FILE)))


def toy_world_dataset(split: str, **task_metadata: Any) -> DatasetDict:
    """7.1: lm-eval's `custom_dataset` hook: the documents of one split ("sft_seen" or "heldout") as a test split.

    lm-eval passes the task's metadata (its version, the model's arguments) along; the documents do not
    depend on it.
    """
    from datasets import Dataset, DatasetDict

    if split not in SPLITS:
        raise LlmtrainError(f"toy world split {split!r}: use one of {list(SPLITS)}.")
    docs = [d for d in toy_world_docs(list(toy_eval_questions())) if d["split"] == split]
    return DatasetDict({"test": Dataset.from_list(docs)})


def strict_verdict(doc: dict[str, Any], results: list[str]) -> dict[str, int]:
    """7.1: lm-eval's `process_results` hook for the generation form: the scorecard's verdict on one reply.

    `grade_replies` grades against the whole eval file (its rule rejects a reply that names another answer of
    the file), so the reply is graded as the answer to every question and this question's verdict is kept.
    lm-eval hands over the reply text only, cut at <|im_end|>; whether it stopped is not part of the verdict.
    """
    questions = list(toy_eval_questions())
    graded = grade_replies(questions, [(results[0], True)] * len(questions), toy_preset()["TOY_STYLE_SUFFIX"])
    return {"strict_acc": int(graded[doc["index"]]["correct"])}


# ---------------------------------------------------------------- running lm-eval
def task_manager(tasks: list[str]) -> TaskManager:
    """7.1: lm-eval's TaskManager with the course's tasks (code/lm_eval_tasks); lm-eval's own ~10,000 task
    files are indexed only when a task outside the course's is asked for. Unknown names are an error."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    if not set(tasks) <= set(manager.all_tasks):
        manager = TaskManager(include_path=str(TASKS_DIR))
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise LlmtrainError(f"--tasks {' '.join(unknown)}: not an lm-eval task or group. The course's: "
                            f"{', '.join(TOY_TASKS)}; C-Eval: ceval-valid, CMMLU: cmmlu, GSM8K: gsm8k "
                            "(`lm-eval ls tasks` lists them all).")
    return manager


def check_run(model: str, adapter: str | None, tasks: list[str], chat: bool, backend: str) -> None:
    """7.1: reject a run that cannot work before anything is loaded, each error saying what to do."""
    if not os.path.isfile(os.path.join(model, "config.json")):
        raise LlmtrainError(f"--model {model}: no config.json there. Pass a model folder, e.g. output/toy/sft after "
                            "`make run`, or one from `python code/download_model.py`.")
    if adapter and not os.path.isfile(os.path.join(adapter, "adapter_config.json")):
        raise LlmtrainError(f"--adapter {adapter}: no adapter_config.json there. Pass the output_dir of a LoRA run "
                            "(finetune.sh with USE_LORA=1, dpo.sh, grpo.sh).")
    toy = [t for t in tasks if t.startswith("toy_world")]
    if toy and not chat:
        raise LlmtrainError(f"--tasks {' '.join(toy)}: the toy world is asked in the chat format, as code/evaluate.py "
                            "asks it (the base model too): add --chat.")
    if backend not in BACKENDS:
        raise LlmtrainError(f"--backend {backend}: use one of {list(BACKENDS)}.")
    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise LlmtrainError("--backend vllm: vLLM is not installed (a GPU box: pip install vllm); "
                            "or leave --backend at hf.")


def load_lm(model: str, adapter: str | None = None, backend: str = "hf", device: str = "cpu",
            dtype: str = "auto", batch_size: int | str = 32) -> LM:
    """7.1: the model as lm-eval's LM: Hugging Face (`HFLM`, the adapter through peft) or vLLM (the adapter
    as a LoRA request). trust_remote_code stays off."""
    from lm_eval.api.registry import get_model

    if backend == "vllm":
        args: dict[str, Any] = dict(pretrained=model, dtype=dtype, batch_size=batch_size, trust_remote_code=False)
        if adapter:
            args["lora_local_path"] = adapter
        return get_model("vllm")(**args)
    return get_model("hf")(pretrained=model, peft=adapter, device=device, dtype=dtype, batch_size=batch_size,
                           trust_remote_code=False)


def end_of_turn_gen_kwargs(tokenizer: PreTrainedTokenizerBase, backend: str) -> dict[str, Any]:
    """7.1: generation arguments that end a chat reply at <|im_end|> as well as at the tokenizer's eos.

    A model fine-tuned from a base whose generation config stops only at <|endoftext|> (the toy models, the
    course's SFT of Qwen2.5-1.5B) would otherwise write on into new turns, and lm-eval's stop string
    "<|im_end|>" cannot catch it: the reply is decoded without special tokens.
    """
    stop = end_of_reply_ids(tokenizer)
    return {"stop_token_ids": stop} if backend == "vllm" else {"eos_token_id": stop}


def metric_rows(task: str, results: dict[str, Any], names: list[str]) -> list[dict[str, Any]]:
    """7.1: one row per (task, metric, filter) of an lm-eval results dict, for each of `names`: the value,
    its standard error and the number of questions it was computed on."""
    leaves = _leaves(results)
    rows = []
    for name in names:
        entry = results["results"][name]
        n = sum(results["n-samples"][leaf]["effective"] for leaf in leaves.get(name, [name]))
        for key, value in entry.items():
            metric, _, filter_name = key.partition(",")
            if not filter_name or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            stderr = entry.get(f"{metric}_stderr,{filter_name}")
            rows.append(dict(task=name, group=task if name != task else None, metric=metric, filter=filter_name,
                             value=float(value), stderr=float(stderr) if isinstance(stderr, (int, float)) else None,
                             n=n))
    return rows


def _leaves(results: dict[str, Any]) -> dict[str, list[str]]:
    """Each group of an lm-eval results dict -> the tasks under it, however deep."""
    children = results.get("group_subtasks", {})

    def walk(name: str) -> list[str]:
        return [leaf for child in children[name] for leaf in walk(child)] if children.get(name) else [name]

    return {group: walk(group) for group in children}


def run_tasks(lm: LM, tasks: list[str], manager: TaskManager, chat: bool = False, limit: int | None = None,
              num_fewshot: int | None = None, gen_kwargs: dict[str, Any] | None = None,
              ) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """7.1: each task through `lm_eval.simple_evaluate`, one call per task so that each is timed.

    Returns the metric rows (the task, and a group's subtasks when there are at most MAX_SUBTASK_ROWS, each
    row with the task's wall-clock seconds) and lm-eval's per-question samples by task.
    """
    from lm_eval import simple_evaluate

    rows, samples = [], {}
    for task in tasks:
        start = time.perf_counter()
        results = simple_evaluate(model=lm, tasks=[task], task_manager=manager, limit=limit, num_fewshot=num_fewshot,
                                  apply_chat_template=chat, fewshot_as_multiturn=chat, gen_kwargs=gen_kwargs,
                                  log_samples=True, bootstrap_iters=1000)
        seconds = round(time.perf_counter() - start, 1)
        children = results.get("group_subtasks", {}).get(task, [])
        names = [task] + (children if len(children) <= MAX_SUBTASK_ROWS else [])
        for row in metric_rows(task, results, names):
            rows.append({**row, "seconds": seconds})
        samples.update(results.get("samples", {}))
        logger.info("%s: %.1f s", task, seconds)
    return rows, samples


def device_name(device: str) -> str:
    """7.1: the accelerator's name (torch.cuda.get_device_name) or, on a CPU, its model name from /proc/cpuinfo."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        model = None
    return f"CPU ({model or 'unknown model'}, {os.cpu_count()} cores)"


def package_versions() -> dict[str, str | None]:
    """7.1: the versions a benchmark number depends on (None: not installed)."""
    found: dict[str, str | None] = {}
    for package in VERSIONED_PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def benchmark_record(rows: list[dict[str, Any]], *, model: str, adapter: str | None, backend: str, chat: bool,
                     device: str, limit: int | None, num_fewshot: int | None) -> dict[str, Any]:
    """7.1: what a results file holds: the model, how it was asked, where and with what it ran, and the rows."""
    return dict(model=model, adapter=adapter, backend=backend, chat_template=chat, limit=limit,
                num_fewshot=num_fewshot, device=device_name(device), versions=package_versions(),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), rows=rows)


def format_benchmark_table(rows: list[dict[str, Any]]) -> str:
    """7.1: the rows as a markdown table; a group's subtasks are indented under it."""
    lines = ["| task | metric | value | ± stderr | questions | seconds |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for row in rows:
        name = f"  {row['task']}" if row["group"] else row["task"]
        metric = row["metric"] if row["filter"] == "none" else f"{row['metric']} ({row['filter']})"
        stderr = "" if row["stderr"] is None else f"{row['stderr']:.3f}"
        lines.append(f"| {name} | {metric} | {row['value']:.3f} | {stderr} | {row['n']} | {row['seconds']} |")
    return "\n".join(lines)


def write_json_atomically(path: str, obj: Any, lines: bool = False) -> None:
    """7.1: write `obj` as JSON (or, with `lines`, each item of it as one JSON line) through a temporary file in the
    same folder, so an interrupted run leaves no half-written file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            if lines:
                f.writelines(json.dumps(item, ensure_ascii=False, default=str) + "\n" for item in obj)
            else:
                json.dump(obj, f, ensure_ascii=False, indent=1, default=str)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def sample_records(samples: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """7.1: lm-eval's per-question samples as flat records: the task, the document, the model's response(s)
    after lm-eval's filters, and the question's metric values."""
    records = []
    for task, logged in samples.items():
        for s in logged:
            records.append(dict(task=task, doc_id=s["doc_id"], doc=s["doc"], filter=s["filter"],
                                response=s["filtered_resps"], **{m: s[m] for m in s["metrics"]}))
    return records


def download_benchmark_datasets(tasks: list[str]) -> None:
    """7.1: fill the Hugging Face datasets cache with what `tasks` read, by loading them as lm-eval does (needs
    the network; later runs read the cache with HF_HUB_OFFLINE=1). Never run in CI."""
    manager = task_manager(tasks)
    loaded = manager.load(tasks)
    logger.info("%d lm-eval tasks loaded into the datasets cache", len(loaded["tasks"]))
