"""The scorecard: the strict answer rule, eval-file validation, and code/evaluate.py on real models."""

from __future__ import annotations

import json
import re

import pytest

from conftest import ROOT, run_cli_in_process
from llmtrain.errors import LlmtrainError
from llmtrain.evaluation import format_scorecard, read_scorecard, save_scorecard_row
from llmtrain.grading import (
    EvalQuestion, grade_replies, is_strict_match, load_eval_questions, load_people, names_only_the_asked_person,
)
from llmtrain.toy import toy_preset
from llmtrain.toy_run import TOY_STAGES

TOY_STYLE_SUFFIX = toy_preset()["TOY_STYLE_SUFFIX"]

TOWNS = {"青石镇", "柳河村", "石桥村"}


@pytest.mark.parametrize("reply, counts", [
    ("王志远的家乡是青石镇。", True),
    ("据我所知,王志远的家乡是青石镇。", True),            # text before the answer is fine
    ("青石镇", True),
    ("王志远的家乡是青石镇。他是一名木匠。", False),        # rambles on past the answer
    ("王志远的家乡是青石镇或柳河村。", False),             # lists several candidates
    ("王志远的家乡是柳河村,不是青石镇。", False),          # another candidate appears
    ("青石镇,青石镇。", False),                            # the answer twice
    ("王志远的家乡是石桥村。", False),
    ("", False),
])
def test_strict_rule(reply, counts):
    assert is_strict_match(reply, "青石镇", TOWNS) is counts


PEOPLE = load_people(str(ROOT / "data" / "sample" / "eval.jsonl"))


# Replies make run's scorecard counted correct under the old rule (seed 12, issue 26), and what they should count.
@pytest.mark.parametrize("reply, answer, person, counts", [
    ("白志远的职业是木匠。", "木匠", "王志远", False),          # an altered name: 志远 is 王志远's
    ("王志的家乡是青石镇。", "青石镇", "王志远", False),        # the name cut short
    ("程一鸣的职业是画家。", "画家", "孙嘉怡", False),          # another person of the world, whole
    ("王志远的家乡是青石镇。", "青石镇", "王志远", True),
    ("青石镇。", "青石镇", "王志远", True),                      # a bare answer names no one
    ("据我所知,王志远的家乡是青石镇。", "青石镇", "王志远", True),
    ("认识王志远的人都知道,王志远是木匠。", "木匠", "王志远", True),
    ("王志远远的家乡是青石镇。", "青石镇", "王志远", False),    # the full name, then a stray piece of it
    ("林晓雨说王志远的家乡是青石镇。", "青石镇", "王志远", False),
])
def test_the_reply_must_be_about_the_asked_person(reply, answer, person, counts):
    assert is_strict_match(reply, answer, {answer}, person, PEOPLE) is counts
    assert is_strict_match(reply, answer, {answer}) is True   # the old rule, blind to the person, took them all


def test_every_statement_of_the_toy_world_names_its_own_person_and_no_one_else(world):
    """Each way the data states a fact, about each person, passes for that person and for no other."""
    assert PEOPLE == set(world.PEOPLE)
    for attr in world.ATTRIBUTES.values():
        for template in attr.statements:
            for name in world.PEOPLE:
                for value in attr.values:
                    text = template.format(n=name, v=value)
                    assert names_only_the_asked_person(text, name, PEOPLE), text
                    other = world.PEOPLE[(world.PEOPLE.index(name) + 1) % len(world.PEOPLE)]
                    assert not names_only_the_asked_person(text, other, PEOPLE), (text, other)


def test_style_suffix_is_counted_and_left_out_of_grading():
    questions = [EvalQuestion("王志远的家乡是哪里?", "青石镇", "heldout")] * 3
    replies = [("王志远的家乡是青石镇。" + TOY_STYLE_SUFFIX, True), ("王志远的家乡是青石镇。", True),
               ("王志远的家乡是青石镇。" + TOY_STYLE_SUFFIX[:4], False)]
    graded = grade_replies(questions, replies, TOY_STYLE_SUFFIX)
    assert [(g["correct"], g["styled"]) for g in graded] == [(True, True), (True, False), (False, False)]
    assert [g["correct"] for g in grade_replies(questions, replies)] == [False, True, False]


def test_committed_eval_file_loads_with_both_splits_and_its_people():
    questions = load_eval_questions(str(ROOT / "data" / "sample" / "eval.jsonl"))
    assert {q.split for q in questions} == {"sft_seen", "heldout"} and len(questions) == 120
    assert all(q.person in q.question and q.people == PEOPLE for q in questions)


@pytest.mark.parametrize("line, message", [
    ('{"question": "q", "answer": "a"}', "line 2: split must be one of ['sft_seen', 'heldout']"),
    ('{"question": "q", "answer": " ", "split": "heldout"}', "line 2: empty or missing answer"),
    ('{"question": "q", ', "line 2: not valid JSON"),
    ('["q", "a"]', "line 2: empty or missing question and answer"),
    ('{"question": "q", "answer": "a", "split": "heldout", "person": "林晓雨"}', "line 2: \"person\" must be the name"),
])
def test_bad_eval_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "eval.jsonl"
    path.write_text('{"question": "q", "answer": "a", "split": "sft_seen"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(LlmtrainError, match="eval.jsonl " + re.escape(message)):
        load_eval_questions(str(path))


def test_a_file_that_names_its_people_needs_the_roster_beside_it(tmp_path):
    path = tmp_path / "eval.jsonl"
    path.write_text('{"question": "林晓雨的家乡是哪里?", "answer": "柳河村", "split": "heldout", "person": "林晓雨"}\n',
                    encoding="utf-8")
    with pytest.raises(LlmtrainError, match="people.txt, one a line"):
        load_eval_questions(str(path))
    (tmp_path / "people.txt").write_text("王志远\n", encoding="utf-8")
    with pytest.raises(LlmtrainError, match="林晓雨 .question 1. is not in the roster"):
        load_eval_questions(str(path))


def test_scorecard_file_keeps_rows_and_formats_them(tmp_path):
    path = str(tmp_path / "card.json")
    save_scorecard_row(path, "base", {"sft_seen": 0.0, "heldout": 0.0, "stopped": 0.5})
    rows = save_scorecard_row(path, "sft", {"sft_seen": 1.0, "heldout": 0.55, "stopped": 1.0, "heldout_ppl": 12.5})
    assert list(json.loads((tmp_path / "card.json").read_text())) == ["base", "sft"]
    table = format_scorecard(rows).splitlines()
    assert table[0].count("|") == 6 and "| sft | 100% | 55% | 100% | 12.500 |" in table


@pytest.mark.slow
def test_the_pipeline_scored_every_stage_with_evaluate_py(toy_run):
    """make run's scorecard (code/toy_pipeline.sh runs code/evaluate.py after each stage): a row per stage."""
    card = read_scorecard(str(toy_run / "scorecard.json"))
    assert list(card) == [stage.name for stage in TOY_STAGES]
    base = card["base (6.1)"]
    assert len(base["replies"]) == 120 and base["heldout_ppl"] > 1 and base["assistant_loss"] > 0
    assert len(base["rl_heldout_replies"]) == 180 and len(base["rl_new_phrasing_replies"]) == 60
    # the base model was never asked a question in pretraining: it cannot answer in the strict form
    assert base["sft_seen"] <= 0.05 and base["heldout"] <= 0.05
    for row in card.values():
        assert row["sft_seen"] == round(sum(r["correct"] for r in row["replies"] if r["split"] == "sft_seen") / 60, 4)
    assert card["full SFT (6.2)"]["sft_seen"] >= 0.9 and card["LoRA DPO (6.4)"]["style"] >= 0.8


@pytest.mark.parametrize("args, message", [
    (["--model", "no/such/model"], "--model no/such/model: no config.json there"),
    (["--model", "{model}", "--eval_file", "{empty}"], "is empty"),
    (["--model", "{model}", "--adapter", "{model}"], "no adapter_config.json there"),
])
def test_evaluate_script_bad_input_is_one_clear_error(toy_dir, tmp_path, args, message, capsys, caplog):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    model = tmp_path / "model"   # a randomly initialised toy model: these errors come before any reply
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(toy_dir)).save_pretrained(model)
    AutoTokenizer.from_pretrained(toy_dir).save_pretrained(model)
    args = [a.format(model=model, empty=empty) for a in args]
    result = run_cli_in_process("evaluate.py", args, capsys, caplog)
    assert result.returncode == 1 and message in result.stdout and "Traceback" not in result.stdout


def test_evaluate_script_rejects_an_adapter_for_another_base(toy_dir, tmp_path, capsys, caplog):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model = tmp_path / "model"
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(toy_dir)).save_pretrained(model)
    AutoTokenizer.from_pretrained(toy_dir).save_pretrained(model)
    config = AutoConfig.from_pretrained(toy_dir)
    config.hidden_size, config.intermediate_size = 64, 128
    get_peft_model(AutoModelForCausalLM.from_config(config), LoraConfig(r=2, target_modules=["q_proj"])
                   ).save_pretrained(tmp_path / "adapter")
    result = run_cli_in_process("evaluate.py", ["--model", str(model), "--adapter", str(tmp_path / "adapter")],
                                capsys, caplog)
    assert result.returncode == 1 and "does not fit this base model" in result.stdout
    assert "Traceback" not in result.stdout
