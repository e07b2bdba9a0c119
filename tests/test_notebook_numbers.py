"""Every measured number a notebook's prose states is shown by that notebook (DESIGN.md, teaching rules).

A markdown cell may state a percentage, a size, a time, a ratio or a decimal only when an output of the same
notebook shows it (printed, or the sentence rendered from the value with `Markdown(f"...")`) or its code sets
it (`EPOCHS = 6`). Citations are allowed: years, versions, section numbers, and the chapter's own settings
listed in CITED below. Run on the committed notebooks, so a re-execution that changes a number breaks it here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

# A number with a measurement marker: a unit, %, a ratio sign, a decimal point or thousands separators.
UNIT = r"(?:%|×|倍|x(?![a-zA-Z])|GiB|MiB|KiB|GB|MB|KB|TB|秒|分钟|小时|ms|s(?![a-zA-Z])|个百分点|B(?![a-zA-Z]))"
NUMBER = re.compile(
    r"(?<![\w.\-/])"                      # not the tail of a name, a version or a path (Qwen2.5, ZeRO-2, 6.1)
    r"(?P<value>\d+(?:\.\d+)?e[-+]?\d+|\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.\d+|\d+)"
    r"(?![\w.]*\d)(?P<space>\s?)(?P<unit>" + UNIT + r")?"
)
# The chapter's own settings and facts about published models, cited rather than measured here.
CITED = {
    "1.5B",      # Qwen2.5-1.5B
    "151,936",   # Qwen2.5's vocabulary (config.json)
    "151,643",   # its BPE tokens (<|endoftext|> = 151643)
    "0.1",       # the chapter's LoRA dropout / DPO beta of the course's preset, set in code
    "1e-4",
}
SECTION = re.compile(r"^6\.\d$")
# A version or a paper's part number follows the name it belongs to ("TRL 1.16", "Physics of Language Models 3.1").
CITING = re.compile(r"(?:TRL|transformers|peft|torch|PyTorch|DeepSpeed|deepspeed|datasets|accelerate|Python|CUDA|"
                    r"liger-kernel|bitsandbytes|Models|Part|happy-llm) ?v?$")


def cell_text(cell: dict) -> str:
    source = cell["source"]
    return "".join(source) if isinstance(source, list) else source


def output_text(cell: dict) -> str:
    parts = []
    for output in cell.get("outputs", []):
        text = output.get("text", "")
        parts.append("".join(text) if isinstance(text, list) else text)
        for mime in ("text/plain", "text/markdown", "text/html"):
            value = output.get("data", {}).get(mime, "")
            parts.append("".join(value) if isinstance(value, list) else value)
    return "\n".join(parts)


def strip_markup(markdown: str) -> str:
    """Markdown without links' targets and LaTeX (formulas hold symbols and small constants, not measurements)."""
    markdown = re.sub(r"\]\([^)]*\)", "]", markdown)
    markdown = re.sub(r"\$\$.*?\$\$|\$[^$]*\$", " ", markdown, flags=re.S)
    return markdown


def measured_numbers(markdown: str) -> list[str]:
    """The numbers in `markdown` that claim a measurement: with a unit, %, a ratio, a decimal point or commas."""
    found = []
    text = strip_markup(markdown)
    for match in NUMBER.finditer(text):
        value, unit = match["value"], match["unit"] or ""
        if not (unit or "." in value or "," in value or "e" in value):
            continue
        if SECTION.match(value) or (value.isdigit() and 1900 <= int(value) <= 2100):
            continue
        if CITING.search(text[:match.start()]):
            continue
        if value in CITED or value + unit in CITED:
            continue
        found.append(value + match["space"] + unit if unit else value)
    return found


def is_shown(claim: str, shown: str) -> bool:
    """A claim is shown when its digits appear as a whole number in `shown` (a percentage with its % sign)."""
    match = NUMBER.match(claim)
    value, unit = match["value"], match["unit"] or ""
    forms = {value, value.replace(",", "")}
    pattern = "|".join(re.escape(f) for f in forms)
    suffix = r"\s?%" if unit == "%" else ""
    return re.search(r"(?<![\d.])(?:" + pattern + r")" + suffix + r"(?![\d])", shown) is not None


def unbacked_numbers(path: Path) -> list[tuple[int, str]]:
    """(markdown cell index, claim) for every measured number no output or code cell of the notebook shows."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    shown = "\n".join(cell_text(c) + "\n" + output_text(c) for c in cells if c["cell_type"] == "code")
    return [(i, claim) for i, cell in enumerate(cells) if cell["cell_type"] == "markdown"
            for claim in measured_numbers(cell_text(cell)) if not is_shown(claim, shown)]


def test_the_number_finder_sees_measurements_and_skips_citations():
    assert measured_numbers("SFT 之后 58% 答对,峰值 66.55 GiB,快 3.98 倍,共 998,656 个参数,耗时 101 秒") == [
        "58%", "66.55 GiB", "3.98 倍", "998,656", "101 秒"]
    assert measured_numbers("差在 1e-5 以上,梯度范数 3.1e-2") == ["1e-5", "3.1e-2"]
    assert measured_numbers("教材 6.1.5 用 Qwen2.5-1.5B、ZeRO-2、block 2048,2024 年,$\\ln 2 \\approx 0.693$") == []


def test_a_shown_number_must_match_whole():
    assert is_shown("58%", "heldout 58%")
    assert not is_shown("58%", "heldout 158%") and not is_shown("58%", "step 58")
    assert is_shown("3,976", "optimizer 3976 KiB") and not is_shown("3.98 倍", "3.981")
    assert is_shown("1e-5", "tolerance 1e-5") and not is_shown("1e-5", "tolerance 1e-50")


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_measured_number_in_prose_is_shown_by_the_notebook(ipynb):
    unbacked = unbacked_numbers(ipynb)
    assert not unbacked, f"{ipynb.name}: numbers in markdown that no output or code shows " + ", ".join(
        f"cell {i}: {claim!r}" for i, claim in unbacked)


def recorded_run_seconds(path: Path) -> float:
    """Wall time of a notebook's last execution: first code cell's start to last cell's reply (nbclient's timing)."""
    from datetime import datetime

    timings = [c["metadata"]["execution"] for c in json.loads(path.read_text(encoding="utf-8"))["cells"]
               if c["cell_type"] == "code" and c["metadata"].get("execution")]
    start, end = (datetime.fromisoformat(timings[0]["iopub.execute_input"].replace("Z", "+00:00")),
                  datetime.fromisoformat(timings[-1]["shell.execute_reply"].replace("Z", "+00:00")))
    return (end - start).total_seconds()


def readme_run_seconds(stem: str) -> float:
    """The run time the README's notebook table states for `stem` ("6 分 32 秒" or "48 秒")."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith(f"| [`notebooks/{stem}.ipynb`]"))
    cell = row.rstrip(" |").rsplit("|", 1)[1]
    match = re.search(r"(?:(\d+) 分 )?(\d+) 秒", cell)
    assert match, f"README's row for {stem} states no run time as 'M 分 S 秒': {cell!r}"
    return int(match[1] or 0) * 60 + int(match[2])


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.stem)
def test_readme_states_the_notebooks_recorded_run_time(ipynb):
    recorded, stated = recorded_run_seconds(ipynb), readme_run_seconds(ipynb.stem)
    assert abs(recorded - stated) <= max(10, 0.05 * recorded), (
        f"README says {ipynb.stem} runs {stated:.0f} s; its committed outputs were recorded in {recorded:.0f} s")
