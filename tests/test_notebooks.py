"""The notebooks: each .ipynb and its py:percent pair say the same thing, and each runs under papermill.

nbval (make test / make test-notebooks) additionally re-executes the committed notebooks and
compares the cells marked `# NBVAL_CHECK_OUTPUT` with their committed outputs.
"""

from __future__ import annotations

import re

import jupytext
import papermill
import pytest

from conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# Smaller than the notebooks' own defaults: papermill checks the parameters path, nbval the defaults.
TOY_PARAMETERS = {
    "6.1_pretrain": {"MAX_STEPS": 150, "RUN_DEEPSPEED": False},
    "6.2_sft": {"EPOCHS": 4, "BENCH_STEPS": 1},
    "6.3_lora": {"EPOCHS": 3},
}


def without_version(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if "jupytext_version" not in line)


def test_every_notebook_has_a_pair_and_toy_parameters():
    assert NOTEBOOKS, "no notebooks found"
    assert {p.stem for p in NOTEBOOKS} == {p.stem for p in (ROOT / "notebooks").glob("*.py")}
    assert {p.stem for p in NOTEBOOKS} == set(TOY_PARAMETERS)


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.stem)
def test_py_pair_is_in_sync(ipynb):
    expected = jupytext.writes(jupytext.read(ipynb), fmt="py:percent")
    actual = ipynb.with_suffix(".py").read_text(encoding="utf-8")
    assert without_version(actual) == without_version(expected), f"{ipynb.name} and its .py differ: run `make sync`"


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_under_papermill_with_toy_parameters(ipynb, tmp_path, monkeypatch, toy_pretrained):
    monkeypatch.setenv("COURSE_IMAGES_DIR", str(tmp_path / "images"))
    out = papermill.execute_notebook(
        str(ipynb), str(tmp_path / ipynb.name), parameters=TOY_PARAMETERS[ipynb.stem],
        cwd=str(ipynb.parent), kernel_name="python3", progress_bar=False,
    )
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in out.cells)
    text = "\n".join(o.get("text", "") for c in out.cells if c.cell_type == "code" for o in c.outputs)
    first, last = map(float, re.search(r"第一次记录的 loss ([\d.]+),最后一次 ([\d.]+)", text).groups())
    assert last < first - 0.5
    if ipynb.stem == "6.1_pretrain":
        assert "150 步" in text
    if ipynb.stem == "6.2_sft":
        n = len((ROOT / "data" / "sample" / "sft.jsonl").read_text(encoding="utf-8").splitlines())
        assert f"{n} 条对话:token 完全一致 {n} 条,监督掩码完全一致 {n} 条" in text
    assert list((tmp_path / "images").glob("*.png"))
