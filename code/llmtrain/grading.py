"""6.2-6.5: the grader: what was asked (eval questions, RL prompts) and what counts as a right answer.

One rule in one place for the scorecard (`llmtrain.evaluation`) and GRPO's verifiable reward (`llmtrain.grpo`,
code/grpo.py): a fact reply counts only when it commits to the answer, stops there and, when it names a person,
names the one who was asked (`is_strict_match`); an arithmetic reply when its final integer is the answer
(`arithmetic_reward`). On the scripts' path (the reward code/grpo.py trains with, the scores code/evaluate.py writes).

A record that says whom it asks about ("person") is graded against the roster of its world: people.txt in the same
folder (data/sample/people.txt, written by data/sample/build_samples.py), every name a reply may not swap in.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import datasets

from llmtrain.errors import LlmtrainError
from llmtrain.jsonl import iter_jsonl, load_normalized_jsonl, preview
from llmtrain.tokenizer import DEFAULT_SYSTEM_MESSAGE

SPLITS = ("sft_seen", "heldout")
EVAL_HINT = ('each line must be one JSON object like {"question": "...", "answer": "...", '
             '"split": "sft_seen" | "heldout"} (optional "person": whom it asks about)')
TASKS = ("arithmetic", "fact")
PROMPT_HINT = ('each line must be one JSON object like {"prompt": "9加18等于几?", "answer": "27"} '
               '(optional "task": "arithmetic" (default, the answer an integer) or "fact"; optional "person")')
PEOPLE_FILE = "people.txt"
# What may follow the answer in a reply that counts: closing punctuation and space, nothing else.
CLOSING = re.compile(r"[\s。.!！]*")
# A reply's final integer ("1,203" as 1203), then at most a unit of one or two words ("18 个。", "72 clips."), then
# nothing but closing punctuation or space. Not part of a longer number ("127" is not 27, "27.5" not 5).
FINAL_INTEGER = re.compile(r"(?<![\d.,])(-?\d{1,3}(?:,\d{3})+|-?\d+)(?:\s*[^\W\d_]{1,12}){0,2}[\s。.!！]*$")


# ---------------------------------------------------------------- who was asked
def load_people(data_file: str) -> frozenset[str]:
    """The roster of the world `data_file` belongs to: people.txt in its folder, one name a line."""
    path = os.path.join(os.path.dirname(os.path.abspath(data_file)), PEOPLE_FILE)
    if not os.path.isfile(path):
        raise LlmtrainError(f"{data_file} says whom each question asks about (\"person\"), so the grader needs every "
                            f"name of its world: put them in {path}, one a line (data/sample/people.txt is the "
                            "toy world's).")
    with open(path, encoding="utf-8") as f:
        return frozenset(line.strip() for line in f if line.strip())


def names_only_the_asked_person(reply: str, person: str, people: Collection[str]) -> bool:
    """6.2-6.5: False when `reply` names someone other than `person`, whole or garbled.

    A reply names a person of the roster when two adjacent characters of it belong to the same name: "王志远",
    but also "王志" (cut short) and "白志远" (altered) point at 王志远. (The toy world's names share no character, so
    two of one name's characters side by side are no accident.) Every such pair must lie inside an occurrence of the
    asked person's full name; a reply that names nobody ("青石镇。") names no one else either.
    """
    covered: set[int] = set()
    for match in re.finditer(re.escape(person), reply):
        covered.update(range(match.start(), match.end()))
    names_of: dict[str, set[str]] = {}
    for name in people:
        for char in name:
            names_of.setdefault(char, set()).add(name)
    for i in range(len(reply) - 1):
        if names_of.get(reply[i], set()) & names_of.get(reply[i + 1], set()) and not {i, i + 1} <= covered:
            return False
    return True


def is_strict_match(reply: str, answer: str, candidates: Collection[str], person: str | None = None,
                    people: Collection[str] = ()) -> bool:
    """6.2: the scorecard's rule: a reply counts only when it commits to the answer, stops there and is about the
    person who was asked.

    The answer appears exactly once, only closing punctuation follows it (a reply that rambles on past the answer
    does not count), no other candidate answer appears (a reply that lists several candidates does not count), and,
    when the question names its `person`, the reply names no one else of `people` (`names_only_the_asked_person`).
    Candidates are all answers of the eval file.
    """
    if reply.count(answer) != 1:
        return False
    if not CLOSING.fullmatch(reply[reply.index(answer) + len(answer):]):
        return False
    if any(other in reply for other in candidates if other not in answer and answer not in other):
        return False
    return person is None or names_only_the_asked_person(reply, person, people)


# ---------------------------------------------------------------- the scorecard's questions
@dataclass(frozen=True)
class EvalQuestion:
    """One scorecard question; `person` (whom it asks about) and `people` (its world's roster) when the file says."""

    question: str
    answer: str
    split: str
    person: str | None = None
    people: frozenset[str] = field(default=frozenset(), repr=False)


def load_eval_questions(path: str) -> list[EvalQuestion]:
    """6.2: the scorecard's questions; a bad line is an error naming the file, the line and the fix."""
    records = []
    for lineno, record in iter_jsonl(path, EVAL_HINT):
        fields = record if isinstance(record, dict) else {}
        bad = [k for k in ("question", "answer") if not isinstance(fields.get(k), str) or not fields[k].strip()]
        if bad or fields.get("split") not in SPLITS:
            what = f"empty or missing {' and '.join(bad)}" if bad else f"split must be one of {list(SPLITS)}"
            raise LlmtrainError(f"{path} line {lineno}: {what} in {preview(record)}; {EVAL_HINT}.")
        if "person" in fields and (not isinstance(fields["person"], str) or fields["person"] not in fields["question"]):
            raise LlmtrainError(f"{path} line {lineno}: \"person\" must be the name the question asks about, got "
                                f"{preview(fields['person'])} in {preview(record)}.")
        records.append(fields)
    people = load_people(path) if any("person" in r for r in records) else frozenset()
    for lineno, r in enumerate(records, 1):
        if "person" in r and r["person"] not in people:
            raise LlmtrainError(f"{path}: {r['person']} (question {lineno}) is not in the roster "
                                f"{os.path.join(os.path.dirname(os.path.abspath(path)), PEOPLE_FILE)}.")
    return [EvalQuestion(r["question"], r["answer"], r["split"], r.get("person"), people if "person" in r else
                         frozenset()) for r in records]


def grade_replies(questions: list[EvalQuestion], replies: list[tuple[str, bool]],
                  style_suffix: str | None = None) -> list[dict[str, Any]]:
    """6.2-6.4: each (reply, stopped) graded by `is_strict_match` against all answers of the eval file and, when the
    question says so, its person.

    With `style_suffix`, a reply ending with it is graded without it and marked "styled".
    """
    candidates = {q.answer for q in questions}
    graded = []
    for q, (reply, stopped) in zip(questions, replies, strict=True):
        styled = bool(style_suffix) and reply.endswith(style_suffix)
        answer_part = reply[:-len(style_suffix)] if styled else reply
        graded.append(dict(question=q.question, answer=q.answer, split=q.split, person=q.person, reply=reply,
                           stopped=stopped, styled=styled,
                           correct=is_strict_match(answer_part, q.answer, candidates, q.person, q.people)))
    return graded


# ---------------------------------------------------------------- the RL task's prompts and rewards
def normalize_prompt_record(record: Any, system_message: str = DEFAULT_SYSTEM_MESSAGE) -> dict[str, Any]:
    """6.5: one {"prompt", "answer"[, "task", "person"]} record -> {"prompt": [system, user] messages, "answer",
    "task", "person"} ("person" is "" when the record names none)."""
    if not isinstance(record, dict) or "prompt" not in record or "answer" not in record:
        raise LlmtrainError(f"needs 'prompt' and 'answer', got {preview(record)}")
    prompt, answer, task = record["prompt"], record["answer"], record.get("task", "arithmetic")
    person = record.get("person", "")
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
    if not isinstance(person, str) or (person and person not in prompt):
        raise LlmtrainError(f"'person' must be the name the prompt asks about, got {preview(person)}")
    return {"prompt": [{"role": "system", "content": system_message}, {"role": "user", "content": prompt}],
            "answer": answer, "task": task, "person": person}


def load_prompt_dataset(files: list[str], system_message: str = DEFAULT_SYSTEM_MESSAGE) -> datasets.Dataset:
    """6.5: read and check prompt JSON lines; the first bad record stops the run, naming file and line.

    When prompts name their person, each row also carries its world's roster ("people", `load_people`), so a reward
    function that TRL calls row by row knows every name a reply may not swap in.
    """
    rows = load_normalized_jsonl(files, lambda record: normalize_prompt_record(record, system_message), PROMPT_HINT)
    people = sorted(set().union(*(load_people(f) for f in files))) if any(rows["person"]) else []
    missing = sorted({p for p in rows["person"] if p} - set(people))
    if missing:
        raise LlmtrainError(f"{', '.join(files)}: {', '.join(missing)} not in the roster ({PEOPLE_FILE} beside "
                            "the prompt files).")
    return rows.add_column("people", [people if p else [] for p in rows["person"]])


def fact_candidates(rows: datasets.Dataset) -> frozenset[str]:
    """The answers of the fact prompts: `is_strict_match` rejects a reply that names another of them."""
    return frozenset(a for a, t in zip(rows["answer"], rows["task"]) if t == "fact")


def arithmetic_reward(reply: str, answer: str, candidates: Collection[str] = frozenset(), person: str = "",
                      people: Collection[str] = ()) -> float:
    """6.5: 1.0 when the reply's final integer is exactly `answer` and at most a unit and closing punctuation follow,
    else 0.0.

    "9加18等于27。", "27", "一共 1,203 元。" (for 1203) and "每人分到 18 个。" score 1; "等于127。", "27或28", "27,对吗?",
    "27.5" and an empty or number-free reply score 0. `candidates`, `person` and `people` are unused (the same
    signature as `fact_reward`).
    """
    match = FINAL_INTEGER.search(reply)
    return float(match is not None and match.group(1).replace(",", "") == answer)


def fact_reward(reply: str, answer: str, candidates: Collection[str] = frozenset(), person: str = "",
                people: Collection[str] = ()) -> float:
    """6.5: 1.0 when the scorecard's strict rule accepts the reply (`is_strict_match`, about `person` when given),
    else 0.0."""
    return float(is_strict_match(reply, answer, candidates, person or None, people))


REWARDS: dict[str, Callable[..., float]] = {"arithmetic": arithmetic_reward, "fact": fact_reward}


def score_replies(replies: list[str], rows: datasets.Dataset | dict[str, list], candidates: Collection[str]
                  ) -> list[float]:
    """6.5: the reward of each reply to the prompt row beside it, by its task's function (`REWARDS`); `rows` has the
    columns of `load_prompt_dataset` ("answer", "task", "person", "people")."""
    return [REWARDS[task](reply, answer, candidates, person, people) for reply, answer, task, person, people
            in zip(replies, rows["answer"], rows["task"], rows["person"], rows["people"], strict=True)]
