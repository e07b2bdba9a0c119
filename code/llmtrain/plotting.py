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


def plot_series(
    series: dict[str, tuple[list[float], list[float]]], out_png: str, xlabel: str, ylabel: str, title: str
) -> str:
    """6.1.4: draw named (x, y) curves on one axis, save a PNG and return its path."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, (x, y) in series.items():
        ax.plot(x, y, "o-" if len(x) < 12 else "-", label=name, markersize=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def plot_loss(log_history: list[dict[str, Any]], out_png: str, title: str = "Training loss") -> str:
    """6.1.4: plot train (and eval, if any) loss against the step from a Trainer log history."""
    series = {}
    for key, name in (("loss", "train loss"), ("eval_loss", "eval loss")):
        points = [(e["step"], e[key]) for e in log_history if key in e]
        if points:
            series[name] = tuple(map(list, zip(*points)))
    return plot_series(series, out_png, "step", "cross-entropy loss", title)
