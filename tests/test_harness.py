"""7.1: the toy world as an lm-eval task, and code/benchmark.py through the real harness on the toy models."""

from __future__ import annotations

import collections
import inspect
import json

import pytest
import yaml

from conftest import run_cli_in_process, run_script
from llmtrain.evaluation import generate_replies, read_scorecard
from llmtrain.grading import load_eval_questions
from llmtrain.harness import (TASKS_DIR, TOY_CHOICES, TOY_EVAL_FILE, attribute_of, strict_verdict, toy_world_dataset,
                              toy_world_docs)
from llmtrain.tokenizer import IM_END
from llmtrain.toy import toy_preset
from llmtrain.toy_run import TOY_STAGES

TOY_STYLE_SUFFIX = toy_preset()["TOY_STYLE_SUFFIX"]


def test_multiple_choice_documents_offer_the_answer_and_three_values_of_the_same_attribute():
    questions = load_eval_questions(str(TOY_EVAL_FILE))
    docs = toy_world_docs(questions)
    values = collections.defaultdict(set)
    for q in questions:
        values[attribute_of(q)].add(q.answer)
    assert len(docs) == len(questions) == 120
    for doc, q in zip(docs, questions):
        assert len(set(doc["choices"])) == TOY_CHOICES and doc["choices"][doc["gold"]] == q.answer
        assert set(doc["choices"]) <= values[attribute_of(q)]
        assert q.question.startswith(doc["statement"]) and doc["statement"].endswith("是")
    # drawn with the question as the seed: the same documents on every run, the answer not always in one place
    assert toy_world_docs(questions) == docs
    assert len({d["gold"] for d in docs}) == TOY_CHOICES
    splits = {split: len(toy_world_dataset(split)["test"]) for split in ("sft_seen", "heldout")}
    assert splits == {"sft_seen": 60, "heldout": 60}


def test_generation_task_asks_as_generate_replies_does():
    template = yaml.safe_load((TASKS_DIR / "toy_world" / "_toy_world_gen_yaml").read_text(encoding="utf-8")
                              .replace("!function ", ""))
    default_tokens = inspect.signature(generate_replies).parameters["max_new_tokens"].default
    assert template["generation_kwargs"]["max_gen_toks"] == default_tokens
    assert template["generation_kwargs"]["until"] == [IM_END] and template["generation_kwargs"]["do_sample"] is False


@pytest.mark.parametrize("reply, verdict", [
    ("林晓雨的家乡是柳河村。", 1),
    ("林晓雨的家乡是柳河村。" + TOY_STYLE_SUFFIX, 1),      # 6.4's closing sentence is graded without it
    ("林晓雨的家乡是柳河村。她是一名厨师。", 0),           # rambles on past the answer
    ("林晓雨的家乡是柳河村或雁归港。", 0),                 # names another answer of the eval file
    ("林晓雨的家乡是雁归港。", 0),
])
def test_strict_verdict_is_the_scorecards(reply, verdict):
    doc = next(d for d in toy_world_docs(load_eval_questions(str(TOY_EVAL_FILE)))
               if d["question"] == "林晓雨的家乡是哪里?")
    assert strict_verdict(doc, [reply]) == {"strict_acc": verdict}


def test_benchmark_rejects_bad_input_with_a_clear_message(tmp_path, toy_dir, capsys, caplog):
    out = tmp_path / "out" / "results.json"
    cases = [
        (["--model", str(tmp_path / "nowhere"), "--tasks", "toy_world_gen", "--chat"], "no config.json there"),
        (["--model", str(toy_dir), "--tasks", "toy_world_gen"], "add --chat"),
        (["--model", str(toy_dir), "--adapter", str(toy_dir), "--tasks", "toy_world_gen", "--chat"],
         "no adapter_config.json there"),
    ]
    for args, message in cases:
        result = run_cli_in_process("benchmark.py", [*args, "--device", "cpu", "--output", str(out)], capsys, caplog)
        assert result.returncode == 1 and message in result.stdout, result.stdout[-2000:]
        assert "Traceback" not in result.stdout and not out.parent.exists()


@pytest.mark.slow
def test_toy_world_through_lm_eval_gives_evaluate_py_verdicts(tmp_path, toy_run):
    """The DPO stage (a LoRA adapter on the full SFT model, 6.4's closing sentence): code/benchmark.py's
    generation verdicts, question by question, are code/evaluate.py's (the session pipeline scored the stage with
    it, every reply kept in scorecard.json); the multiple-choice form runs too."""
    stage = next(s for s in TOY_STAGES if s.name.startswith("LoRA DPO"))
    model, adapter = str(toy_run / stage.model), str(toy_run / stage.adapter)
    graded = read_scorecard(str(toy_run / "scorecard.json"))[stage.name]["replies"]
    expected = {r["question"]: r["correct"] for r in graded}

    out, samples = tmp_path / "bench" / "dpo.json", tmp_path / "bench" / "samples.jsonl"
    result = run_script(["python", "code/benchmark.py", "--model", model, "--adapter", adapter, "--chat",
                         "--tasks", "toy_world_gen", "toy_world_mc", "--device", "cpu", "--output", str(out),
                         "--samples", str(samples)])
    assert result.returncode == 0, result.stdout[-3000:]
    records = [json.loads(line) for line in samples.read_text(encoding="utf-8").splitlines()]
    verdicts = {r["doc"]["question"]: bool(r["strict_acc"]) for r in records if "strict_acc" in r}
    assert len(verdicts) == 120 and verdicts == expected
    # the replies themselves too (this model ends every reply with <|im_end|>, so both stop at the same token)
    assert {r["doc"]["question"]: r["response"][0] for r in records if "strict_acc" in r} == {
        r["question"]: r["reply"] for r in graded}
    assert 0 < sum(verdicts.values()) < 120, "a comparison of verdicts that are all alike proves little"

    record = json.loads(out.read_text(encoding="utf-8"))
    assert record["adapter"] == adapter and record["versions"]["lm_eval"] and record["device"].startswith("CPU")
    rows = {(r["task"], r["metric"]): r for r in record["rows"]}
    gen, mc = rows[("toy_world_gen", "strict_acc")], rows[("toy_world_mc", "acc")]
    assert gen["n"] == mc["n"] == 120 and gen["seconds"] > 0
    assert gen["value"] == pytest.approx(sum(expected.values()) / 120)
    heldout = rows[("toy_world_gen_heldout", "strict_acc")]
    heldout_verdicts = [v for q, v in expected.items() if q in {r["doc"]["question"] for r in records
                                                                if r["task"] == "toy_world_gen_heldout"}]
    assert heldout["n"] == len(heldout_verdicts) == 60
    assert heldout["value"] == pytest.approx(sum(heldout_verdicts) / 60)
    assert "| toy_world_gen | strict_acc |" in result.stdout
