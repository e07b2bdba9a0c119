"""6.1.4-6.1.5: the Trainer the chapter's scripts build, how it trains and saves, and merging LoRA for saving.

On the scripts' training path: after `llmtrain.launch.parse_flags_and_set_up_process` and the data, every script
builds its trainer here (or TRL's), then `train_and_save`; LoRA runs also `save_merged_model`.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import datasets
import torch
from transformers import PreTrainedTokenizerBase, Trainer, TrainingArguments

from llmtrain.errors import LlmtrainError
from llmtrain.modeling import count_parameters
from llmtrain.plotting import plot_loss
from llmtrain.throughput import ThroughputCallback, device_peak_flops

logger = logging.getLogger(__name__)


def split_for_eval(
    samples: datasets.Dataset, percentage: int, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """6.1.4: hold out `percentage`% (0 < p < 100, checked by DataArguments) of the samples, at least one, for eval."""
    if percentage <= 0:
        return samples, None
    if len(samples) < 2:
        raise LlmtrainError(f"--validation_split_percentage {percentage} needs at least 2 samples (have {len(samples)}).")
    n_eval = max(1, len(samples) * percentage // 100)
    parts = samples.train_test_split(test_size=n_eval, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def build_trainer(
    model: torch.nn.Module,
    training_args: TrainingArguments,
    tokenizer: Any,
    train_dataset: Any,
    eval_dataset: Any = None,
    data_collator: Any = None,
    peak_tflops: float | None = None,
) -> Trainer:
    """6.1.4: the chapter's Trainer, updated for transformers 5 (processing_class, a real Dataset).

    The dataset goes in as a `datasets.Dataset`, not the chapter's IterableWrapper, so the
    Trainer builds a distributed, shuffling sampler. Throughput and MFU are added to the logs.
    """
    if training_args.include_num_input_tokens_seen == "no":
        training_args.include_num_input_tokens_seen = "all"
    # Training never reuses a KV cache, and with a cache object in the forward pass the model
    # cannot derive per-conversation attention from position_ids: packed SFT batches would attend
    # across conversations. `train_and_save` turns the cache back on for the saved model.
    model.config.use_cache = False
    peak = peak_tflops * 1e12 if peak_tflops else device_peak_flops(training_args.device)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=data_collator,
    )
    # First in line, so trackers (tensorboard, wandb, swanlab) see the added metrics too.
    n_params = count_parameters(model)
    trainer.callback_handler.callbacks.insert(0, ThroughputCallback(n_params, peak))
    return trainer


def train_and_save(trainer: Trainer, checkpoint: str | None) -> dict[str, float]:
    """6.1.5: train (resuming from `checkpoint`), save model, metrics, state and the loss plot.

    With an eval set, also reports eval loss and perplexity = exp(eval loss).
    """
    logger.info("Starting training%s", f" from {checkpoint}" if checkpoint else "")
    result = trainer.train(resume_from_checkpoint=checkpoint)
    result.metrics["trainable_params"] = count_parameters(trainer.model, trainable_only=True)
    metrics = dict(result.metrics)
    if trainer.eval_dataset is not None:  # still without KV cache: packed eval batches stay isolated
        eval_metrics = trainer.evaluate()
        eval_metrics["perplexity"] = math.exp(min(eval_metrics["eval_loss"], 50.0))
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    trainer.model.config.use_cache = True  # for generation with the saved model
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    if trainer.is_world_process_zero():
        out = os.path.join(trainer.args.output_dir, "loss.png")
        plot_loss(trainer.state.log_history, out)
        logger.info("Loss curve saved to %s", out)
    return metrics


def save_merged_model(model: Any, tokenizer: PreTrainedTokenizerBase, output_dir: str) -> str:
    """6.3.5: merge a peft LoRA model's adapters into its base and save the plain model (+ tokenizer) in
    <output_dir>/merged; returns that folder. The model passed in is changed: its adapters are merged away."""
    merged_dir = os.path.join(output_dir, "merged")
    model.merge_and_unload().save_pretrained(merged_dir)
    tokenizer.save_pretrained(merged_dir)
    logger.info("Base model + LoRA adapter merged into a plain model: %s", merged_dir)
    return merged_dir
