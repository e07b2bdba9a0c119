"""`make run`'s toy models: where they live and how a notebook, a test or the chat page asks for one.

`make run` trains five stages into one folder, `output/toy` (or `$TOY_RUN_DIR`; the tests train the same
pipeline once into a temporary folder and point TOY_RUN_DIR there). Nothing here trains or deletes anything:
a stage that is missing is an error that names the command which makes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from llmtrain import PROJECT_ROOT
from llmtrain.errors import LlmtrainError

TOY_RUN_ENV = "TOY_RUN_DIR"


def toy_run_dir() -> Path:
    """The folder of `make run`'s models: $TOY_RUN_DIR when set, else output/toy in the repository."""
    return Path(os.environ.get(TOY_RUN_ENV) or PROJECT_ROOT / "output" / "toy")


@dataclass(frozen=True)
class ToyStage:
    """One stage of `make run`: its scorecard row name, its model folder and, for LoRA, its adapter folder
    (both relative to `toy_run_dir()`)."""

    name: str
    model: str
    adapter: str | None = None


TOY_STAGES = (
    ToyStage("base (6.1)", "pretrain"),
    ToyStage("full SFT (6.2)", "sft"),
    ToyStage("LoRA SFT (6.3)", "pretrain", "sft-lora"),
    ToyStage("LoRA DPO (6.4)", "sft", "dpo-lora"),
    ToyStage("LoRA GRPO (6.5)", "dpo-lora/merged", "grpo-lora"),
)
SCORECARD_FILE = "scorecard.json"


def require_toy_model(folder: str) -> Path:
    """The trained model or adapter `folder` of `make run` (e.g. "sft", "dpo-lora/merged"); an error naming the
    command that makes it when it is not there. Never trains anything itself."""
    path = toy_run_dir() / folder
    if not ((path / "model.safetensors").is_file() or (path / "adapter_model.safetensors").is_file()):
        raise LlmtrainError(f"No trained toy model in {path}. `make run` trains every stage into {toy_run_dir()} "
                            f"(about 6 minutes on 2 cores); then run this again.")
    return path
