"""The course notebooks' shared set-up: seed, quiet output, a figure folder, and toy TrainingArguments."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
from transformers import TrainingArguments

from llmtrain import PROJECT_ROOT


def setup_notebook(seed: int = 42) -> Path:
    """Seed every generator, silence progress bars and library warnings, and return the figure folder.

    On a machine without a GPU it also tells DeepSpeed (imported later by Trainer and TRL) to use the CPU
    accelerator, which it otherwise announces at every import.

    Figures go to output/figures, so running a notebook never changes tracked files; `make notebooks`
    sets COURSE_IMAGES_DIR=images to regenerate the committed ones.
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    transformers.set_seed(seed)
    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    for name in ("DeepSpeed", "accelerate", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    folder = Path(os.environ.get("COURSE_IMAGES_DIR", PROJECT_ROOT / "output" / "figures"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def toy_training_args(output_dir: str | Path, **overrides: Any) -> TrainingArguments:
    """The notebooks' TrainingArguments on a CPU: log every 5 steps, no checkpoints, no tracker, no progress bar.

    `overrides` are any TrainingArguments fields (learning_rate, num_train_epochs, ...).
    """
    values: dict[str, Any] = dict(
        output_dir=str(output_dir), logging_steps=5, save_strategy="no", report_to="none",
        disable_tqdm=True, use_cpu=True, seed=42, data_seed=42,
    )
    values.update(overrides)
    return TrainingArguments(**values)
