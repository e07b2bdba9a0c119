"""6.2-6.5: the scorecard: what each training stage added, measured on questions it was or was not taught.

One row per model: greedy answers to `data/sample/eval.jsonl` through the chat template, graded by
`llmtrain.grading` per split ("sft_seen": asked in the SFT data; "heldout": the fact is only in
the pretraining text), plus held-out perplexity on pretraining-style text, the loss on the
assistant tokens of held-out conversations and (6.5) the held-out accuracy on the RL task.
On the scripts' path: code/evaluate.py writes every row of `make run`'s scorecard with it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Collection
from typing import Any

import datasets
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llmtrain.errors import LlmtrainError
from llmtrain.grading import (
    SPLITS, fact_candidates, grade_replies, load_eval_questions, load_prompt_dataset, names_only_the_asked_person,
    score_replies,
)
from llmtrain.grpo import sample_groups, stop_at_end_of_turn
from llmtrain.pretrain_data import read_jsonl_texts
from llmtrain.sft_data import IGNORE_INDEX, load_sft_dataset, tokenize_conversation
from llmtrain.tokenizer import DEFAULT_SYSTEM_MESSAGE, IM_END

@torch.no_grad()
def generate_replies(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: list[str],
    max_new_tokens: int = 48,
    batch_size: int = 32,
    system_message: str = DEFAULT_SYSTEM_MESSAGE,
) -> list[tuple[str, bool]]:
    """6.2: greedy replies through the chat template, in left-padded batches; (reply, stopped at <|im_end|>)."""
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    model.eval()
    replies = []
    try:
        for start in range(0, len(questions), batch_size):
            chats = [[{"role": "system", "content": system_message}, {"role": "user", "content": q}]
                     for q in questions[start:start + batch_size]]
            inputs = tokenizer.apply_chat_template(chats, add_generation_prompt=True, return_tensors="pt",
                                                   return_dict=True, padding=True)
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                    eos_token_id=im_end, pad_token_id=tokenizer.pad_token_id)
            for row in output[:, inputs["input_ids"].shape[1]:].tolist():
                stopped = im_end in row
                row = row[:row.index(im_end)] if stopped else row
                replies.append((tokenizer.decode(row, skip_special_tokens=True), stopped))
    finally:
        tokenizer.padding_side = padding_side
    return replies


@torch.no_grad()
def mean_token_loss(model: PreTrainedModel, samples: list[dict[str, list[int]]]) -> float:
    """Mean cross-entropy over all labelled tokens of `samples` ({"input_ids", "labels"}), one sample at a time."""
    model.eval()
    total, count = 0.0, 0
    for sample in samples:
        input_ids, labels = torch.tensor([sample["input_ids"]]), torch.tensor([sample["labels"]])
        n = int((labels[:, 1:] != IGNORE_INDEX).sum())
        if n:
            total += float(model(input_ids=input_ids, labels=labels).loss) * n
            count += n
    if not count:
        raise LlmtrainError("No token to score: the held-out files are empty or too short.")
    return total / count


def heldout_perplexity(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, files: list[str],
                       max_len: int = 1024) -> float:
    """6.1.4: perplexity = exp(mean next-token loss) on documents the model never trained on (EOS appended)."""
    samples = []
    for path in files:
        for text in read_jsonl_texts(path):
            ids = (tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])[:max_len]
            samples.append({"input_ids": ids, "labels": ids})
    return math.exp(mean_token_loss(model, samples))


def heldout_assistant_loss(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, files: list[str],
                           max_len: int = 1024, system_message: str = DEFAULT_SYSTEM_MESSAGE) -> float:
    """6.2.2: mean loss on the assistant tokens (the tokens SFT trains) of held-out conversations."""
    conversations = load_sft_dataset(files)["conversations"]
    return mean_token_loss(model, [tokenize_conversation(c, tokenizer, max_len, system_message)
                                   for c in conversations])


def scorecard_row(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    eval_file: str,
    valid_text_files: list[str] = (),
    valid_conversation_files: list[str] = (),
    style_suffix: str | None = None,
) -> dict[str, Any]:
    """6.2-6.4: one scorecard row: strict accuracy per split, share of replies that stop, perplexity, assistant loss.

    With `style_suffix` (the closing sentence 6.4's preference asks for), also the share of replies that
    end with it; a reply is then graded with that sentence removed, so the style neither helps nor hurts
    accuracy. Every reply is kept under "replies", so a number can always be traced back to what the model said.
    """
    questions = load_eval_questions(eval_file)
    graded = grade_replies(questions, generate_replies(model, tokenizer, [q.question for q in questions]), style_suffix)
    row: dict[str, Any] = {}
    for split in SPLITS:
        in_split = [g for g in graded if g["split"] == split]
        row[split] = round(sum(g["correct"] for g in in_split) / len(in_split), 4) if in_split else None
    row["stopped"] = round(sum(g["stopped"] for g in graded) / len(graded), 4)
    if style_suffix:
        row["style"] = round(sum(g["styled"] for g in graded) / len(graded), 4)
    if valid_text_files:
        row["heldout_ppl"] = round(heldout_perplexity(model, tokenizer, list(valid_text_files)), 3)
    if valid_conversation_files:
        row["assistant_loss"] = round(heldout_assistant_loss(model, tokenizer, list(valid_conversation_files)), 4)
    row["replies"] = graded
    return row


SCORECARD_COLUMNS = {
    "sft_seen": "sft_seen acc", "heldout": "heldout acc", "stopped": "stops at im_end",
    "style": "ends with style suffix", "heldout_ppl": "held-out ppl", "assistant_loss": "held-out assistant loss",
    "rl_heldout": "RL task heldout acc", "rl_new_phrasing": "RL task new phrasing acc",
}
SHARE_COLUMNS = ("sft_seen", "heldout", "stopped", "style", "rl_heldout", "rl_new_phrasing")  # shown as percentages


def format_scorecard(rows: dict[str, dict[str, Any]]) -> str:
    """6.2-6.4: the scorecard as a markdown table, one row per run, columns the metrics any row has."""
    keys = [k for k in SCORECARD_COLUMNS if any(k in row for row in rows.values())]
    lines = ["| run | " + " | ".join(SCORECARD_COLUMNS[k] for k in keys) + " |",
             "| --- |" + " ---: |" * len(keys)]
    for name, row in rows.items():
        cells = []
        for k in keys:
            value = row.get(k)
            cells.append("" if value is None else f"{value:.0%}" if k in SHARE_COLUMNS
                         else f"{value:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def read_scorecard(path: str) -> dict[str, dict[str, Any]]:
    """The scorecard JSON ({run name: row}); empty when the file does not exist yet."""
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save_scorecard_row(path: str, name: str, row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Add or replace run `name` in the scorecard JSON at `path` (written atomically); returns the whole card."""
    rows = read_scorecard(path)
    rows[name] = row
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(rows, f, ensure_ascii=False, indent=1)
    os.chmod(tmp, 0o644)  # mkstemp's file is private to its owner; a scorecard is for everyone to read
    os.replace(tmp, path)
    return rows


# 6.1: what a base model knows before any SFT: does it complete the plain statement of a fact?
QUESTION_ENDINGS = ("哪里?", "什么?")


def statement_prompt(question: str) -> str:
    """6.1: the eval question's fact as the opening of its canonical statement: "X的家乡是哪里?" -> "X的家乡是".

    The toy world's questions end with the asked-for word; the first pretraining phrasing of each
    fact is the question with the answer in that place (data/sample/build_samples.py).
    """
    for ending in QUESTION_ENDINGS:
        if question.endswith(ending):
            return question[: -len(ending)]
    raise LlmtrainError(f"Cannot turn {question!r} into a statement: it does not end with one of {QUESTION_ENDINGS}.")


@torch.no_grad()
def statement_completion_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    eval_file: str,
    max_new_tokens: int = 8,
    batch_size: int = 40,
) -> dict[str, Any]:
    """6.1: greedy completions of each eval fact's statement ("林晓雨的家乡是" -> "柳河村。"), no chat template.

    A completion counts when it starts with the answer. Returns the accuracy per split and every
    completion under "completions" ({prompt, answer, split, completion, correct}).
    """
    questions = load_eval_questions(eval_file)
    prompts = [statement_prompt(q.question) for q in questions]
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    model.eval()
    completions = []
    try:
        for start in range(0, len(prompts), batch_size):
            inputs = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True,
                               add_special_tokens=False)
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id)
            completions += tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = padding_side
    graded = [dict(prompt=p, answer=q.answer, split=q.split, completion=c, correct=c.startswith(q.answer))
              for p, q, c in zip(prompts, questions, completions)]
    result: dict[str, Any] = {}
    for split in SPLITS:
        in_split = [g for g in graded if g["split"] == split]
        result[split] = round(sum(g["correct"] for g in in_split) / len(in_split), 4) if in_split else None
    result["completions"] = graded
    return result


def wrong_person_replies(row: dict[str, Any], people: Collection[str], split: str = "heldout") -> dict[str, Any]:
    """6.2: of a scorecard row's wrong replies in `split`, those that name someone other than the asked person.

    Each reply of the row carries the person its question asks about; `people` is the world's roster
    (`llmtrain.grading.load_people`). Returns the counts and those replies.
    """
    wrong = [g for g in row["replies"] if g["split"] == split and not g["correct"]]
    other = [g for g in wrong if g.get("person") and not names_only_the_asked_person(g["reply"], g["person"], people)]
    return {"wrong": len(wrong), "other_person": len(other), "examples": other}


def task_accuracy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: datasets.Dataset,
                  max_new_tokens: int = 32, style_suffix: str | None = None) -> dict[str, Any]:
    """6.5: greedy replies to held-out prompts (`generate_replies`, stopping at `<|im_end|>`), scored by the reward
    GRPO trains with (`llmtrain.grading.score_replies`).

    With `style_suffix` (6.4's closing sentence) a reply is scored with that ending removed, as the
    scorecard grades. Returns {"accuracy", "replies": [{prompt, answer, person, reply, correct}]}: every reply kept.
    """
    questions = [p[-1]["content"] for p in rows["prompt"]]
    system = rows["prompt"][0][0]["content"]
    replies = [r for r, _ in generate_replies(model, tokenizer, questions, max_new_tokens, system_message=system)]
    graded = [r.removesuffix(style_suffix) if style_suffix else r for r in replies]
    scores = score_replies(graded, rows, fact_candidates(rows))
    return {"accuracy": round(sum(scores) / len(scores), 4),
            "replies": [dict(prompt=q, answer=a, person=p, reply=r, correct=bool(s))
                        for q, a, p, r, s in zip(questions, rows["answer"], rows["person"], replies, scores)]}


def add_rl_task_column(row: dict[str, Any], model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                       rl_eval_file: str, style_suffix: str | None = None, column: str = "rl_heldout"
                       ) -> dict[str, Any]:
    """6.5: a scorecard row (`scorecard_row`) gains the RL task's held-out accuracy on `rl_eval_file` under `column`
    ("rl_heldout": new people, the phrasings RL trained on; "rl_new_phrasing": a phrasing it never saw; greedy, up
    to 48 new tokens as the other columns) and every reply under "<column>_replies"; replies are graded without
    `style_suffix`."""
    result = task_accuracy(model, tokenizer, load_prompt_dataset([rl_eval_file]), max_new_tokens=48,
                           style_suffix=style_suffix)
    row[column], row[f"{column}_replies"] = result["accuracy"], result["replies"]
    return row


def sampled_accuracy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: datasets.Dataset, k: int,
                     max_new_tokens: int, style_suffix: str | None = None, seed: int = 0) -> dict[str, float]:
    """6.5: what RL has to work with: `k` replies sampled per prompt at temperature 1 (`llmtrain.grpo.sample_groups`,
    as GRPO samples), graded like `task_accuracy`. Returns the share of right samples ("sampled") and pass@k, the
    share of prompts with at least one right sample ("pass_at_k"): a prompt whose samples are all wrong gives GRPO
    nothing to reinforce."""
    torch.manual_seed(seed)
    stop_at_end_of_turn(model, tokenizer)
    right = []
    for start in range(0, len(rows), 8):
        chunk = rows.select(range(start, min(start + 8, len(rows))))
        batch = sample_groups(model, tokenizer, list(chunk["prompt"]), k, max_new_tokens)
        replies = [c.removesuffix(style_suffix) if style_suffix else c for c in batch["completions"]]
        right += score_replies(replies, chunk.select([i for i in range(len(chunk)) for _ in range(k)]),
                               fact_candidates(rows))
    per_prompt = [right[i * k:(i + 1) * k] for i in range(len(rows))]
    return {"sampled": round(sum(right) / len(right), 4),
            "pass_at_k": round(sum(max(p) for p in per_prompt) / len(per_prompt), 4)}
