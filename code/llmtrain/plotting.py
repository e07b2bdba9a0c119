"""6.1.4: pictures the course shows: the loss curve read from Trainer's log history."""

from __future__ import annotations

import json
import os
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


def read_log_history(trainer_state_json: str) -> list[dict[str, Any]]:
    """6.1.4: the `log_history` list of a Trainer's trainer_state.json (output dir or checkpoint)."""
    with open(trainer_state_json, encoding="utf-8") as f:
        return json.load(f)["log_history"]


def plot_loss(log_history: list[dict[str, Any]], out_png: str, title: str = "Training loss") -> str:
    """6.1.4: plot train (and eval, if any) loss against the step; save a PNG and return its path."""
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png
