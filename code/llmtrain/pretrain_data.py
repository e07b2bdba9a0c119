"""6.1.3: pretraining data: JSON lines `{"text": ...}` -> tokens (+EOS per document) -> fixed-size blocks.

Two fixes over the chapter's code: every document ends with the tokenizer's EOS, so the model
sees where one text stops and the next begins inside a block; and a corpus too small for one
block is an error instead of a silently odd-sized or empty dataset.
On the scripts' training path (code/pretrain.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from itertools import chain
from typing import Any

import datasets
from transformers import PreTrainedTokenizerBase

from llmtrain.errors import LlmtrainError
from llmtrain.jsonl import iter_jsonl, load_jsonl, preview

logger = logging.getLogger(__name__)

FORMAT_HINT = 'each line must be one JSON object with a string field "text", e.g. {"text": "..."}'


def _check_text_record(record: Any, path: str, lineno: int) -> None:
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise LlmtrainError(f'{path} line {lineno}: no string "text" field in {preview(record)}; {FORMAT_HINT}.')


def read_jsonl_texts(path: str) -> Iterator[str]:
    """6.1.3: yield the "text" of every line of a JSON-lines file, failing on the first bad line.

    Errors name the file and the 1-based line number, so the line can be found and fixed.
    """
    for lineno, record in iter_jsonl(path, FORMAT_HINT):
        _check_text_record(record, path, lineno)
        yield record["text"]


def load_text_dataset(train_files: list[str]) -> datasets.Dataset:
    """6.1.3: load pretraining JSON lines with `datasets` (Arrow, memory-mapped), validated.

    A bad line (invalid JSON, no string "text") is reported with its file and line number.
    """
    ds = load_jsonl(train_files, "text", _check_text_record, FORMAT_HINT)
    if getattr(ds.features["text"], "dtype", None) not in ("string", "large_string"):
        # e.g. every "text" is a number: Arrow loaded it fine, the scan names the first such line
        for path in train_files:
            for _ in read_jsonl_texts(path):
                pass
    return ds.select_columns(["text"])


def tokenize_with_eos(texts: list[str], tokenizer: PreTrainedTokenizerBase) -> dict[str, list[list[int]]]:
    """6.1.3: tokenize a batch of documents and end each one with the tokenizer's EOS token."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return {"input_ids": [doc + [tokenizer.eos_token_id] for doc in ids]}


def group_texts(examples: dict[str, list[list[int]]], block_size: int) -> dict[str, list[list[int]]]:
    """6.1.3: concatenate token lists and cut them into blocks of exactly `block_size` (remainder dropped).

    For causal LM pretraining the labels are the inputs; the model shifts them by one internally.
    """
    concatenated = list(chain.from_iterable(examples["input_ids"]))
    total = (len(concatenated) // block_size) * block_size
    blocks = [concatenated[i : i + block_size] for i in range(0, total, block_size)]
    return {"input_ids": blocks, "labels": [list(b) for b in blocks]}


def build_pretrain_dataset(
    raw: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    num_proc: int | None = None,
    map_batch_size: int = 1000,
) -> datasets.Dataset:
    """6.1.3: tokenize (+EOS) and group a text dataset into `block_size` blocks ready for Trainer.

    Grouping happens per `map_batch_size` documents, so at most one partial block per batch is
    dropped. Raises when the corpus cannot fill a single block, saying how many tokens it has.
    """
    if tokenizer.eos_token_id is None:
        raise LlmtrainError("The tokenizer has no EOS token; set tokenizer.eos_token (Qwen2.5: <|endoftext|>).")
    tokenized = raw.map(
        lambda batch: tokenize_with_eos(batch["text"], tokenizer),
        batched=True,
        num_proc=num_proc,
        remove_columns=raw.column_names,
        desc="Tokenizing (+EOS per document)",
    )
    blocks = tokenized.map(
        group_texts,
        fn_kwargs={"block_size": block_size},
        batched=True,
        batch_size=map_batch_size,
        num_proc=num_proc,
        desc=f"Grouping into blocks of {block_size}",
    )
    if len(blocks) == 0:
        n_tokens = sum(len(ids) for ids in tokenized["input_ids"])
        raise LlmtrainError(
            f"The corpus has {n_tokens} tokens (EOS included) but one block needs {block_size}: "
            "add more text or lower --block_size."
        )
    logger.info("%d documents -> %d blocks of %d tokens", len(raw), len(blocks), block_size)
    return blocks
