"""The course notebooks' shared set-up: seed, quiet output, a figure folder, a fresh output folder, the toy base
model, and toy TrainingArguments. Used by the notebooks only."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, TrainingArguments

from llmtrain import PROJECT_ROOT
from llmtrain.toy_run import require_toy_model


def setup_notebook(seed: int = 42) -> Path:
    """Seed every generator, silence progress bars and library logs; return the figure folder.

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
    folder = Path(os.environ.get("COURSE_IMAGES_DIR", PROJECT_ROOT / "output" / "figures"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def fresh_output_dir(notebook: str) -> Path:
    """output/notebooks/<notebook> (or $COURSE_OUTPUT_DIR/<notebook>), emptied: what a notebook writes there (models,
    its scorecard) is from this run. The tests point COURSE_OUTPUT_DIR at a temporary folder."""
    folder = Path(os.environ.get("COURSE_OUTPUT_DIR") or PROJECT_ROOT / "output" / "notebooks") / notebook
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def shown_path(path: Path) -> str:
    """A path as a notebook prints it: relative to the repository when inside it (output/toy/sft), else whole (the
    tests' temporary TOY_RUN_DIR)."""
    path = Path(path)
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def load_toy_base() -> tuple[Path, PreTrainedTokenizerBase, PreTrainedModel]:
    """6.2/6.3: the toy pretrained base (`output/toy/pretrain`, as `make run` leaves it), its tokenizer and model.

    When it is missing, the error says which command trains it (`llmtrain.toy_run.require_toy_model`).
    """
    path = require_toy_model("pretrain")
    return path, AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)


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
