"""6.2.2 / 6.3.1: measurements on real models for the notebooks and bench/: SFT batching strategies (padding waste,
supervised tokens per second) and what a training step keeps in memory (weights, gradients, optimizer state).

Not on the scripts' training path: the notebooks and benchmarks call it to measure.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
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


def training_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """6.3.1: the bytes a training step keeps between steps, counted from the tensors themselves.

    Weights (all parameters), gradients (the trainable ones that have one) and the optimizer's state
    (AdamW: two tensors per trainable parameter). Call after at least one `optimizer.step()`.
    """
    def nbytes(t: torch.Tensor) -> int:
        return t.numel() * t.element_size()

    return {
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "weights": sum(nbytes(p) for p in model.parameters()),
        "gradients": sum(nbytes(p.grad) for p in model.parameters() if p.grad is not None),
        "optimizer": sum(nbytes(t) for s in optimizer.state.values() for t in s.values()
                         if torch.is_tensor(t) and t.dim() > 0),
    }


def measure_training_steps(
    model: nn.Module, batches: list[dict[str, torch.Tensor]], lr: float = 1e-4,
) -> dict[str, float]:
    """6.3.1: train `model` on `batches` with torch AdamW (train mode); return `training_state_bytes` and tokens/s.

    Gradients are zeroed in place (set_to_none=False), so they still count after the last step.
    """
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    tokens, start = 0, time.perf_counter()
    for batch in batches:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # zeroed, not freed: the gradients are held all the time
        tokens += batch["input_ids"].numel()
    seconds = time.perf_counter() - start
    return {**training_state_bytes(model, optimizer), "tokens_per_s": tokens / seconds}
