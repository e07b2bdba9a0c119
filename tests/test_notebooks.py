"""The notebooks: each .ipynb and its py:percent pair say the same thing, and each runs once per session.

That one run is papermill's, on toy parameters and on the session's toy pipeline (TOY_RUN_DIR); the test then
checks what its outputs say and compares the cells tagged `nbval-check-output` (outputs that do not depend on
the parameters) with the committed ones, as nbval's lax mode would on a second run. The five runs go side by side
(`notebook_runs` in conftest.py), one core each, beside the session's other slow tests.
"""

from __future__ import annotations

import re
from concurrent.futures import Future
from pathlib import Path

import jupytext
import nbformat
import pytest

from conftest import NOTEBOOKS, ROOT, TOY_PARAMETERS


def without_version(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if "jupytext_version" not in line)


def test_every_notebook_has_a_pair_and_toy_parameters():
    assert NOTEBOOKS, "no notebooks found"
    assert {p.stem for p in NOTEBOOKS} == {p.stem for p in (ROOT / "notebooks").glob("*.py")}
    assert {p.stem for p in NOTEBOOKS} == set(TOY_PARAMETERS)


CHECKED = "nbval-check-output"


def text_outputs(cell) -> list[str]:
    """A code cell's outputs as nbval compares them: stream text and the plain-text form of results. Consecutive
    chunks of one stream are joined: where a kernel cuts a print into chunks depends on timing, not on the code."""
    texts, last_stream = [], None
    for output in cell.get("outputs", []):
        stream = output.get("name") if output.get("output_type") == "stream" else None
        if stream is not None and stream == last_stream:
            texts[-1] += output.get("text", "")
        elif stream is not None:
            texts.append(output.get("text", ""))
        elif "text/plain" in output.get("data", {}):
            texts.append(output["data"]["text/plain"])
        last_stream = stream
    return texts


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.stem)
def test_py_pair_is_in_sync(ipynb):
    expected = jupytext.writes(jupytext.read(ipynb), fmt="py:percent")
    actual = ipynb.with_suffix(".py").read_text(encoding="utf-8")
    assert without_version(actual) == without_version(expected), f"{ipynb.name} and its .py differ: run `make sync`"


@pytest.mark.slow
@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_once_on_toy_parameters_and_matches_its_committed_outputs(
        ipynb, notebook_runs: dict[str, Future]):
    out = notebook_runs[ipynb.stem].result()
    folder = Path(out.metadata["papermill"]["output_path"]).parent
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in out.cells)
    committed = [c for c in nbformat.read(ipynb, as_version=4).cells if c.cell_type == "code"]
    executed = [c for c in out.cells if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]
    checked = [(a, b) for a, b in zip(committed, executed, strict=True) if CHECKED in a.metadata.get("tags", [])]
    for before, now in checked:
        assert text_outputs(now) == text_outputs(before), f"a {CHECKED} cell changed:\n{before.source[:300]}"
    text = "\n".join(o.get("text", "") for c in out.cells if c.cell_type == "code" for o in c.outputs)
    if ipynb.stem != "6.5_grpo":  # GRPO's loss is no progress measure: its reward is (below)
        first, last = map(float, re.search(r"第一次记录的 loss ([\d.]+),最后一次 ([\d.]+)", text).groups())
        # DPO starts at log 2 = 0.69 and its preferred ending is already likely under the SFT model: it ends near 0.55
        assert last < first - (0.1 if ipynb.stem == "6.4_dpo" else 0.5)
    if ipynb.stem == "6.1_pretrain":
        assert "60 步" in text
        assert "与手写的两步相同: True" in text and "ArrowInvalid" in text  # the two datasets.map calls by hand
        assert re.search(r"--num_gpus 2 \\\n\s+--master_port \d+ code/pretrain\.py", text)   # the launch command, a free port
        assert "--deepspeed code/ds_config_zero2.json" in text
        assert "100.00% 解码为完整字符" in text  # every token a whole character: no "\ufffd"
        acc_diff = float(re.search(r"5 步后参数的最大差 ([\d.e+-]+)", text).group(1))
        assert acc_diff < 1e-4, "gradient accumulation 4 x 2 should match 1 x 8"
        assert "续训这次执行的步: 第 11 … 20 步" in text and "参数最大差 0.0e+00" in text
        assert "RUN_DEEPSPEED=False:跳过" in text  # CI never writes output/toy/pretrain
        assert "续写事实陈述的准确率" in text and "问: " in text  # the base's statement completions and replies
        assert "\ufffd" not in text and "Setting accelerator" not in text
    if ipynb.stem == "6.2_sft":
        n = len((ROOT / "data" / "sample" / "sft.jsonl").read_text(encoding="utf-8").splitlines())
        assert f"{n} 条对话:token 完全一致 {n} 条,监督掩码完全一致 {n} 条,模板掩码非空 {n} 条" in text
        # one packed row from the collator, whose conversations do not see each other once use_cache is off
        assert "'position_ids': (1," in text
        assert "use_cache=False: 各对话打包 vs 单独计算的最大 logits 差 < 1e-3" in text
        # the SFT ran through make run's command: code/finetune.sh, 2 DeepSpeed processes
        assert "world size: 2" in text and "每步 2 个进程" in text
    if ipynb.stem in ("6.2_sft", "6.3_lora"):  # each ends with its row on the shared scorecard
        tables = "\n".join(o.get("data", {}).get("text/markdown", "") for c in out.cells if c.cell_type == "code"
                           for o in c.outputs)
        name = "full SFT (6.2)" if ipynb.stem == "6.2_sft" else "LoRA SFT (6.3)"
        assert re.search(re.escape(f"| {name} |") + r" \d+% \| \d+% \|", tables), tables
    if ipynb.stem == "6.3_lora":
        # B = 0, A random: the first step's gradient reaches B only; A's follows once B has left 0
        (a1, b1), (a2, b2) = re.findall(r"第 \d 步:A 的梯度最大绝对值 ([\d.e+-]+),B 的梯度最大绝对值 ([\d.e+-]+)", text)
        assert float(a1) == 0 and float(b1) > 0 and float(a2) > 0 and float(b2) > 0
        assert text.count("与 peft 的最大 logits 差 ≤ 1e-5: True") == 4  # ours, merge, unmerge, peft's merge
        assert "B = 0 时与基座的最大 logits 差: 0.0" in text
        markdown = "\n".join(o.get("data", {}).get("text/markdown", "") for c in out.cells if c.cell_type == "code"
                             for o in c.outputs)
        assert "| full SFT (6.2) |" in markdown and "sft_seen 与 heldout 之和最高的是学习率" in markdown
    if ipynb.stem == "6.4_dpo":
        before, after = map(int, re.search(r"留出偏好对的奖励准确率:训练前 (\d+)% → 训练后 (\d+)%", text).groups())
        assert before == 0 and after >= 80
        rows = {name: tuple(map(int, numbers)) for name, *numbers in re.findall(
            r"(SFT before DPO|DPO|DPO, \d+ epochs) \(6\.4\)\s+以“还想知道什么,尽管问我。”结尾 (\d+)%,sft_seen 准确率 (\d+)%,"
            r"heldout 准确率 (\d+)%", text)}
        (style_before, seen_before, heldout_before), (style_after, seen_after, heldout_after) = (
            rows["SFT before DPO"], rows["DPO"])
        # the targets: the preference shows in greedy replies; SFT accuracy drops by at most 10 points
        assert style_before < 50 and style_after >= 80
        assert seen_after >= seen_before - 10 and heldout_after >= heldout_before - 10
        # the long run shows what the prose says: log pi(chosen) rises, then falls well back; held-out accuracy drops
        first, peak, last = map(float, re.search(
            r"\d+ 步;训练批上 log π\(chosen\):第一次 ([-\d.]+),最高 ([-\d.]+),最后 ([-\d.]+)", text).groups())
        assert peak > first and peak > last + 0.5
        (long_heldout,) = [heldout for name, (_, _, heldout) in rows.items() if name.endswith("epochs")]
        assert long_heldout < heldout_after
        # the hand-written loop ran next to TRL (the notebook asserts their agreement) and the deepcopy pitfall shows
        assert "两边的设置:β = " in text and "权重清零的副本和原模型输出相同: True" in text
    if ipynb.stem == "6.5_grpo":
        assert "与 TRL 的差都在 1e-5 以内(梯度:差的范数 / 梯度的范数 ≤ 1e-4): True" in text
        assert "梯度一比就露出来" in text   # the planted detached branch: same loss value, another gradient
        assert "第一遍裁掉的比例都是 0: True" in text   # two passes per batch: the clipping acts on the second only
        markdown = "\n".join(o.get("data", {}).get("text/markdown", "") for c in out.cells if c.cell_type == "code"
                              for o in c.outputs)
        assert re.search(r"4 步\(\d+ 秒,两边合计\),每步损失的差最大 \*\*[\d.e+-]+\*\*", markdown), markdown
        first, last = map(float, re.search(r"答对的比例:第一次记录 ([\d.]+),\n?最后一次 ([\d.]+)", text).groups())
        assert last > first
        before, after = map(int, re.search(r"留出的 RL 问题\(新的人\):DPO 模型答对 (\d+)%,GRPO 之后 (\d+)%", text).groups())
        assert after >= before + 10  # +10 points or more on every seed (bench/seed_spread.json)
    assert list((folder / "images").glob("*.png"))
