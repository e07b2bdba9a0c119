"""6.1.4: pictures the course shows: the loss curve read from Trainer's log history.

On the scripts' training path (`train_and_save` writes loss.png); the notebooks draw their figures with it too.
"""

from __future__ import annotations

import html
import json
import os
from typing import Any

from matplotlib.figure import Figure


def read_log_history(trainer_state_json: str) -> list[dict[str, Any]]:
    """6.1.4: the `log_history` list of a Trainer's trainer_state.json (output dir or checkpoint)."""
    with open(trainer_state_json, encoding="utf-8") as f:
        return json.load(f)["log_history"]


def plot_series(
    series: dict[str, tuple[list[float], list[float]]], out_png: str, xlabel: str, ylabel: str, title: str
) -> str:
    """6.1.4: draw named (x, y) curves on one axis, save a PNG and return its path."""
    fig = Figure(figsize=(6, 3.5))  # a figure of its own, drawn by Agg: no pyplot state, no backend chosen globally
    ax = fig.subplots()
    for name, (x, y) in series.items():
        ax.plot(x, y, "o-" if len(x) < 12 else "-", label=name, markersize=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if series:  # a run shorter than its logging interval logs no curve: an empty plot, no legend warning
        ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=120)
    return out_png


def plot_loss(log_history: list[dict[str, Any]], out_png: str, title: str = "Training loss") -> str:
    """6.1.4: plot train (and eval, if any) loss against the step from a Trainer log history."""
    series = {}
    for key, name in (("loss", "train loss"), ("eval_loss", "eval loss")):
        points = [(e["step"], e[key]) for e in log_history if key in e]
        if points:
            series[name] = tuple(map(list, zip(*points)))
    return plot_series(series, out_png, "step", "cross-entropy loss", title)


def label_mask_svg(tokens: list[str], supervised: list[bool], out_svg: str, width: int = 860) -> str:
    """6.2.2: draw a tokenized conversation as boxes, green where the token is supervised (label != -100).

    A row ends after each token holding a newline, so the picture keeps ChatML's line structure.
    SVG text uses the viewer's fonts, which display Chinese where matplotlib's default font cannot.
    """
    def box_width(text: str) -> int:
        return 10 + sum(15 if ord(ch) > 0x2E80 else 8 for ch in text)

    shapes, x, y, row_h = [], 10, 40, 30
    for token, sup in zip(tokens, supervised):
        label = token.replace("\n", "↵")
        w = box_width(label)
        if x + w > width - 10:
            x, y = 10, y + row_h
        fill, stroke = ("#b9e4bd", "#2e7d32") if sup else ("#eeeeee", "#9e9e9e")
        shapes.append(f'<rect x="{x}" y="{y}" width="{w - 2}" height="{row_h - 6}" rx="3" fill="{fill}" '
                      f'stroke="{stroke}"/><text x="{x + 5}" y="{y + 17}">{html.escape(label)}</text>')
        x += w
        if "\n" in token:
            x, y = 10, y + row_h
    legend = ('<rect x="10" y="8" width="16" height="16" fill="#b9e4bd" stroke="#2e7d32"/>'
              '<text x="32" y="21">supervised (label = token id)</text>'
              '<rect x="260" y="8" width="16" height="16" fill="#eeeeee" stroke="#9e9e9e"/>'
              '<text x="282" y="21">ignored (label = -100)</text>')
    height = y + row_h + 10
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="Noto Sans CJK SC, PingFang SC, Microsoft YaHei, sans-serif" font-size="13">'
           f'<rect width="100%" height="100%" fill="white"/>{legend}{"".join(shapes)}</svg>')
    os.makedirs(os.path.dirname(os.path.abspath(out_svg)), exist_ok=True)
    with open(out_svg, "w", encoding="utf-8") as f:
        f.write(svg)
    return out_svg


def plot_log_histories(histories: dict[str, list[dict[str, Any]]], out_png: str, title: str,
                       x: str = "epoch") -> str:
    """6.3: the training loss of several Trainer log histories on one axis (x: "epoch" or "step"), saved as a PNG.

    Against the epoch, runs with different step counts per epoch (or different epoch counts) line up.
    """
    series = {}
    for name, history in histories.items():
        points = [(e[x], e["loss"]) for e in history if "loss" in e and x in e]
        series[name] = tuple(map(list, zip(*points)))
    return plot_series(series, out_png, x, "training loss (cross-entropy)", title)
