"""6.2.2: measure SFT batching strategies on a real model: padding waste and supervised tokens per second."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import PreTrainedModel, default_data_collator

from llmtrain.sft_data import IGNORE_INDEX, make_collator, textbook_padded


def measure_batching(
    model: PreTrainedModel,
    features: list[dict[str, list[int]]],
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    real_tokens: list[int],
    supervised: list[int],
    batch_size: int,
    steps: int,
) -> dict[str, float]:
    """6.2.2: train a copy of `model` for `steps` batches (AdamW, train mode) and time it.

    `real_tokens[i]` and `supervised[i]` count the conversation tokens and the truly supervised
    (assistant) tokens of `features[i]` before any padding, so a strategy is credited for neither
    padding nor labels on padding. Real-token fraction = real tokens / all positions computed.
    """
    model = copy.deepcopy(model)
    model.config.use_cache = False
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    real = total = target = 0
    start = time.perf_counter()
    for step in range(steps):
        idx = [(step * batch_size + j) % len(features) for j in range(batch_size)]
        batch = collate([features[i] for i in idx])
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        total += batch["input_ids"].numel()
        real += sum(real_tokens[i] for i in idx)
        target += sum(supervised[i] for i in idx)
    seconds = time.perf_counter() - start
    return {"real_token_fraction": real / total, "supervised_tokens_per_s": target / seconds,
            "tokens_per_step": total / steps, "seconds": seconds}


def compare_sft_batching(
    model: PreTrainedModel, tokenizer: Any, features: list[dict[str, list[int]]],
    batch_size: int = 8, steps: int = 4, textbook_len: int = 2048,
) -> dict[str, dict[str, float]]:
    """6.2.2: the chapter's padding to `textbook_len` vs dynamic padding vs padding-free packing, same model."""
    counts = ([len(f["input_ids"]) for f in features], [sum(t != IGNORE_INDEX for t in f["labels"]) for f in features])
    textbook = [textbook_padded(f, tokenizer.pad_token_id, textbook_len) for f in features]
    strategies = {
        f"textbook (pad to {textbook_len})": (textbook, default_data_collator),
        "dynamic padding": (features, make_collator(tokenizer, packing=False)),
        "packing (padding-free)": (features, make_collator(tokenizer, packing=True)),
    }
    return {name: measure_batching(model, data, collate, *counts, batch_size, steps)
            for name, (data, collate) in strategies.items()}
