"""The exercise graders: they accept llmtrain's implementations, report untouched stubs as not implemented,
and reject each planted mistake with the message that teaches it."""

from __future__ import annotations

import ast
import subprocess
import sys

import exercise_mistakes as mistakes
import pytest
from conftest import ROOT, script_env

from exercises import check

EXERCISES = {e.name: e for e in check.EXERCISES}


def is_untouched_stub(path, name: str) -> bool:
    """Whether `name` in the stub file still only raises NotImplementedError (every method, for a class)."""
    node = next(n for n in ast.parse(path.read_text(encoding="utf-8")).body if getattr(n, "name", None) == name)
    functions = [n for n in node.body if isinstance(n, ast.FunctionDef)] if isinstance(node, ast.ClassDef) else [node]

    def only_raises(function: ast.FunctionDef) -> bool:
        body = [s for s in function.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        body = [s for s in body if "super().__init__()" not in ast.unparse(s)]
        return len(body) == 1 and isinstance(body[0], ast.Raise) and "NotImplementedError" in ast.unparse(body[0])

    return all(only_raises(f) for f in functions)


@pytest.fixture(scope="module", autouse=True)
def quiet_libraries(toy_dir):
    check.silence_libraries()


@pytest.mark.parametrize("notebook", sorted(check.NOTEBOOKS))
def test_every_grader_accepts_the_reference_implementation(notebook):
    results = check.grade_notebook(notebook, "reference")
    assert [r.exercise.name for r in results] == [e.name for e in check.EXERCISES if e.notebook == notebook]
    assert {r.exercise.name: (r.status, r.message) for r in results} == {
        r.exercise.name: (check.PASSED, "") for r in results}


@pytest.mark.parametrize("notebook", sorted(check.NOTEBOOKS))
def test_untouched_stubs_report_not_implemented_per_exercise(notebook):
    path = check.EXERCISES_DIR / check.NOTEBOOKS[notebook][1]
    for result in check.grade_notebook(notebook, "learner"):
        if not is_untouched_stub(path, result.exercise.name):
            continue  # a learner has started this one: its grade is theirs
        assert result.status == check.NOT_IMPLEMENTED, result.message
        assert "还没实现" in result.message and path.name in result.message


PLANTED = [
    ("tokenize_with_eos", mistakes.tokenize_without_eos, "末尾少了 EOS"),
    ("group_texts", mistakes.group_keeping_remainder, "最后一块只有"),
    ("group_texts", mistakes.group_dropping_eos, "每篇文档末尾的 EOS 要原样留在拼接结果里"),
    ("group_texts", mistakes.group_per_document, "不要每篇文档单独切块"),
    ("group_texts", mistakes.group_with_shifted_labels, "labels 向左错开了一位"),
    ("logits_bytes", mistakes.logits_bytes_in_working_dtype, "你只算了 bf16 的 logits 本身"),
    ("logits_bytes", mistakes.logits_bytes_over_hidden_size, "不是 hidden_size 个"),
    ("tokenize_conversation", mistakes.supervising_the_prompt, "(user 轮)"),
    ("tokenize_conversation", mistakes.not_supervising_im_end, "(assistant 回答后的 <|im_end|>)应被监督(label = input_ids),你的是 -100"),
    ("tokenize_conversation", mistakes.pad_id_as_ignore, "不监督的位置应是 -100"),
    ("packed_position_ids", mistakes.positions_counting_on, "position_ids 应从 0 重新数"),
    ("LoraLinear", mistakes.LoraScaledByAlpha, "你乘的是 α,应乘 α/r"),
    ("LoraLinear", mistakes.LoraWithRandomB, "lora_B 初始应全为 0"),
    ("LoraLinear", mistakes.LoraMergingWithoutScaling, "你合并后的权重与 W + (α/r)·B·A 相差"),
    ("LoraLinear", mistakes.LoraTrainingTheBase, "原层的权重和偏置应冻结"),
    ("LoraLinear", mistakes.LoraBypassAfterMerge, "merge 之后 forward 又加了一次旁路"),
    ("dpo_loss", mistakes.dpo_loss_flipped_sign, "符号反了"),
    ("dpo_loss", mistakes.dpo_loss_without_reference, "没有减去参考模型的对数概率"),
    ("dpo_loss", mistakes.dpo_loss_summed, "你的是求和"),
    ("dpo_loss", mistakes.dpo_loss_as_number, "它不能求梯度"),
    ("dpo_loss", mistakes.dpo_loss_raising, "运行时出错 RuntimeError"),
    ("group_advantages", mistakes.advantages_over_whole_batch, "把整批奖励一起标准化了"),
    ("group_advantages", mistakes.advantages_population_std, "用了总体标准差"),
    ("group_advantages", mistakes.advantages_without_eps, "出现了 nan/inf"),
    ("k3_kl", mistakes.k3_reversed, "方向反了"),
    ("k3_kl", mistakes.kl_k1, "这是 k1"),
    ("sequence_logprobs", mistakes.logprobs_with_prompt, "把提示(prompt)的 token 也算进去了"),
    ("sequence_logprobs", mistakes.logprobs_without_shift, "没有错开一位"),
    ("sequence_logprobs", mistakes.logprobs_averaged, "你的是平均"),
]


@pytest.mark.parametrize("name, wrong, teaching", PLANTED, ids=[w.__name__ for _, w, _ in PLANTED])
def test_grader_rejects_a_planted_mistake_with_its_teaching_message(name, wrong, teaching):
    result = check.grade(EXERCISES[name], wrong)
    assert result.status == check.FAILED
    assert teaching in result.message


def test_every_exercise_has_a_planted_mistake():
    assert {name for name, _, _ in PLANTED} == set(EXERCISES)


def test_lora_scaling_message_gives_the_size_of_the_merge_error():
    message = check.grade(EXERCISES["LoraLinear"], mistakes.LoraMergingWithoutScaling).message
    assert "检查缩放" in message and "你没有乘缩放系数 α/r" in message


def test_supervised_user_turn_is_named_by_its_positions():
    message = check.grade(EXERCISES["tokenize_conversation"], mistakes.supervising_the_prompt).message
    assert message.startswith("位置 0–") and "应为 -100,你的 labels 监督了它们" in message and "样本 sample-" in message


def test_an_exception_in_the_learners_code_is_one_line_with_its_place():
    message = check.grade(EXERCISES["dpo_loss"], mistakes.dpo_loss_raising).message
    assert "\n" not in message and "exercise_mistakes.py 第" in message and "dpo_loss_raising" in message


def test_a_learner_file_that_does_not_import_fails_each_exercise_with_the_error(tmp_path):
    (tmp_path / "ex6_4_dpo.py").write_text("def dpo_loss(:\n", encoding="utf-8")
    results = check.grade_notebook("6.4", "learner", exercises_dir=tmp_path)
    assert [r.status for r in results] == [check.FAILED, check.FAILED]
    assert all("ex6_4_dpo.py 无法导入:SyntaxError" in r.message for r in results)


def test_a_learner_file_with_a_right_answer_passes_and_the_exit_code_says_so(tmp_path, monkeypatch, capsys):
    (tmp_path / "ex6_4_dpo.py").write_text("from llmtrain.dpo import dpo_loss, sequence_logprobs\n", encoding="utf-8")
    monkeypatch.setattr(check, "EXERCISES_DIR", tmp_path)
    assert check.main(["--notebook", "6.4"]) == 0
    assert "[通过] dpo_loss" in capsys.readouterr().out


def test_make_target_grades_the_reference_quietly_and_exits_zero():
    run = subprocess.run([sys.executable, "-m", "exercises.check", "--solution", "reference"], cwd=ROOT,
                         env=script_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stderr == ""
    assert run.stdout.count("[通过]") == len(check.EXERCISES)


def test_stubs_make_the_exit_code_nonzero(capsys):
    path = check.EXERCISES_DIR / check.NOTEBOOKS["6.1"][1]
    if not all(is_untouched_stub(path, e.name) for e in check.EXERCISES if e.notebook == "6.1"):
        pytest.skip("the 6.1 exercises have been started")
    assert check.main(["--notebook", "6.1"]) == 1
    assert capsys.readouterr().out.count("[未实现]") == 3
