"""6.2-6.5: the grader: what was asked (eval questions, RL prompts) and what counts as a right answer.

One rule in one place for the scorecard (`llmtrain.evaluation`) and GRPO's verifiable reward (`llmtrain.grpo`,
code/grpo.py): a fact reply counts only when it commits to the answer and stops there (`is_strict_match`); an
arithmetic reply when its final integer is the answer (`arithmetic_reward`). On the scripts' path (the reward
code/grpo.py trains with, the scores code/evaluate.py writes).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import datasets

from llmtrain.errors import LlmtrainError
from llmtrain.jsonl import iter_jsonl, load_normalized_jsonl, preview
from llmtrain.tokenizer import DEFAULT_SYSTEM_MESSAGE

SPLITS = ("sft_seen", "heldout")
EVAL_HINT = ('each line must be one JSON object like {"question": "...", "answer": "...", '
             '"split": "sft_seen" | "heldout"}')
# What may follow the answer in a reply that counts: closing punctuation and space, nothing else.
CLOSING = re.compile(r"[\s。.!！]*")


TASKS = ("arithmetic", "fact")
PROMPT_HINT = ('each line must be one JSON object like {"prompt": "9加18等于几?", "answer": "27"} '
               '(optional "task": "arithmetic" (default, the answer an integer) or "fact")')
# A reply's final integer, followed by nothing but closing punctuation or space.
FINAL_INTEGER = re.compile(r"(-?\d+)[\s。.!！]*$")


@dataclass(frozen=True)
class EvalQuestion:
    question: str
    answer: str
    split: str


def load_eval_questions(path: str) -> list[EvalQuestion]:
    """6.2: the scorecard's questions; a bad line is an error naming the file, the line and the fix."""
    questions = []
    for lineno, record in iter_jsonl(path, EVAL_HINT):
        fields = record if isinstance(record, dict) else {}
        bad = [k for k in ("question", "answer") if not isinstance(fields.get(k), str) or not fields[k].strip()]
        if bad or fields.get("split") not in SPLITS:
            what = f"empty or missing {' and '.join(bad)}" if bad else f"split must be one of {list(SPLITS)}"
            raise LlmtrainError(f"{path} line {lineno}: {what} in {preview(record)}; {EVAL_HINT}.")
        questions.append(EvalQuestion(fields["question"], fields["answer"], fields["split"]))
    return questions


def is_strict_match(reply: str, answer: str, candidates: set[str]) -> bool:
    """6.2: the scorecard's rule: a reply counts only when it commits to the answer and stops there.

    The answer appears exactly once, only closing punctuation follows it (a reply that rambles on
    past the answer does not count), and no other candidate answer appears (a reply that lists
    several candidates does not count). Candidates are all answers of the eval file.
    """
    if reply.count(answer) != 1:
        return False
    if not CLOSING.fullmatch(reply[reply.index(answer) + len(answer):]):
        return False
    return not any(other in reply for other in candidates if other not in answer and answer not in other)


def normalize_prompt_record(record: Any, system_message: str = DEFAULT_SYSTEM_MESSAGE) -> dict[str, Any]:
    """6.5: one {"prompt", "answer"[, "task"]} record -> {"prompt": [system, user] messages, "answer", "task"}."""
    if not isinstance(record, dict) or "prompt" not in record or "answer" not in record:
        raise LlmtrainError(f"needs 'prompt' and 'answer', got {preview(record)}")
    prompt, answer, task = record["prompt"], record["answer"], record.get("task", "arithmetic")
    if not isinstance(prompt, str) or not prompt.strip():
        raise LlmtrainError(f"'prompt' must be a non-empty string, got {preview(prompt)}")
    if task not in TASKS:
        raise LlmtrainError(f"'task' must be one of {list(TASKS)}, got {preview(task)}")
    if isinstance(answer, int) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str) or not answer.strip():
        raise LlmtrainError(f"'answer' must be a non-empty string, got {preview(answer)}")
    if task == "arithmetic" and not re.fullmatch(r"-?\d+", answer):
        raise LlmtrainError(f"an arithmetic answer must be an integer, got {preview(answer)}")
    return {"prompt": [{"role": "system", "content": system_message}, {"role": "user", "content": prompt}],
            "answer": answer, "task": task}


def load_prompt_dataset(files: list[str], system_message: str = DEFAULT_SYSTEM_MESSAGE) -> datasets.Dataset:
    """6.5: read and check prompt JSON lines; the first bad record stops the run, naming file and line."""
    return load_normalized_jsonl(files, lambda record: normalize_prompt_record(record, system_message), PROMPT_HINT)


def fact_candidates(rows: datasets.Dataset) -> frozenset[str]:
    """The answers of the fact prompts: `is_strict_match` rejects a reply that names another of them."""
    return frozenset(a for a, t in zip(rows["answer"], rows["task"]) if t == "fact")


def arithmetic_reward(reply: str, answer: str, candidates: frozenset[str] = frozenset()) -> float:
    """6.5: 1.0 when the reply's final integer is exactly `answer` and only closing punctuation follows, else 0.0.

    "9加18等于27。" and "27" score 1; "等于127。", "27或28", "27,对吗?" and an empty or number-free reply
    score 0. `candidates` is unused (the same signature as `fact_reward`).
    """
    match = FINAL_INTEGER.search(reply)
    return float(match is not None and match.group(1) == answer)


def fact_reward(reply: str, answer: str, candidates: frozenset[str] = frozenset()) -> float:
    """6.5: 1.0 when the scorecard's strict rule accepts the reply (`is_strict_match`), else 0.0."""
    return float(is_strict_match(reply, answer, set(candidates)))


REWARDS: dict[str, Callable[[str, str, frozenset[str]], float]] = {"arithmetic": arithmetic_reward,
                                                                   "fact": fact_reward}


def score_replies(replies: list[str], answers: list[str], tasks: list[str],
                  candidates: frozenset[str] = frozenset()) -> list[float]:
    """6.5: the reward of each reply, by its task's function (`REWARDS`)."""
    return [REWARDS[task](reply, answer, candidates) for reply, answer, task in zip(replies, answers, tasks,
                                                                                     strict=True)]


def grade_replies(questions: list[EvalQuestion], replies: list[tuple[str, bool]],
                  style_suffix: str | None = None) -> list[dict[str, Any]]:
    """6.2-6.4: each (reply, stopped) graded by `is_strict_match` against all answers of the eval file.

    With `style_suffix`, a reply ending with it is graded without it and marked "styled".
    """
    candidates = {q.answer for q in questions}
    graded = []
    for q, (reply, stopped) in zip(questions, replies, strict=True):
        styled = bool(style_suffix) and reply.endswith(style_suffix)
        answer_part = reply[:-len(style_suffix)] if styled else reply
        graded.append(dict(question=q.question, answer=q.answer, split=q.split, reply=reply, stopped=stopped,
                           correct=is_strict_match(answer_part, q.answer, candidates), styled=styled))
    return graded
