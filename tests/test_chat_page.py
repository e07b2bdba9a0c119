"""The chat page (code/chat_page.py): the real Gradio server on make run's models, asked through Gradio's client.

Each stage's greedy reply must be the one code/evaluate.py recorded in the scorecard for the same question, and
its verdict the scorecard's; stages given by hand load, and bad ones show a clear message in their card.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT, run_cli_in_process, script_env, stop_server
from llmtrain.chat_page import Graders
from llmtrain.errors import LlmtrainError
from llmtrain.evaluation import read_scorecard
from llmtrain.grading import load_eval_questions
from llmtrain.toy import toy_preset
from llmtrain.toy_run import SCORECARD_FILE, TOY_STAGES

SAMPLE = ROOT / "data" / "sample"
GREEDY = "贪心(与成绩单相同)"
SAMPLING = "采样"
RL_FILES = [SAMPLE / "grpo_eval.jsonl", SAMPLE / "grpo_eval_new_phrasing.jsonl"]
TOY_STYLE_SUFFIX = toy_preset()["TOY_STYLE_SUFFIX"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def chat_page_server(args: list[str], toy_run: Path, timeout: float = 180) -> Iterator[str]:
    """Start `python code/chat_page.py ARGS` on a free port; yield its URL once it says it is running; stop it after.

    Its output is read on a thread all along (a full pipe would stall the server) and shown when it fails.
    """
    port = free_port()
    proc = subprocess.Popen([sys.executable, "code/chat_page.py", "--port", str(port), *args], cwd=ROOT,
                            env=script_env(TOY_RUN_DIR=str(toy_run)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while not any(url in line for line in lines):
            if proc.poll() is not None or time.monotonic() > deadline:
                reader.join(timeout=5)
                why = f"exit code {proc.returncode}" if proc.poll() is not None else f"not up after {timeout} s"
                pytest.fail(f"the chat page did not start ({why}):\n" + "".join(lines[-40:]))
            time.sleep(0.2)
        yield url + "/"
    finally:
        stop_server(proc, 20)


def scorecard_questions() -> list[str]:
    """A handful the page is asked: two SFT-seen and two held-out scorecard questions, two RL-task prompts."""
    questions = load_eval_questions(str(SAMPLE / "eval.jsonl"))
    seen = [q.question for q in questions if q.split == "sft_seen"]
    heldout = [q.question for q in questions if q.split == "heldout"]
    rl = list(Graders(None, RL_FILES, TOY_STYLE_SUFFIX).rl)
    return [seen[0], seen[13], heldout[0], heldout[21], rl[0], rl[-1]]   # the last: the phrasing RL never saw


def recorded(row: dict, question: str) -> dict:
    """What code/evaluate.py recorded for `question` in a scorecard row: {reply, correct, answer[, stopped]}."""
    found = [g for g in row["replies"] if g["question"] == question] + [
        g for g in row["rl_heldout_replies"] + row["rl_new_phrasing_replies"] if g["prompt"] == question]
    assert len(found) == 1, question
    return found[0]


def ask(client, question: str, stages: list[str], mode: str = GREEDY, seed: int = 0,
        max_new_tokens: int = 48) -> tuple[str, list[str], list[dict]]:
    """One click of the page's 提问 button through Gradio's client: (status line, every card's HTML, records)."""
    status, *cards, records = client.predict(question, stages, mode, 1.0, 1.0, 0, seed, max_new_tokens,
                                             api_name="/answer")
    return status, cards, records


def check_reply_matches_scorecard(record: dict, row: dict, question: str) -> None:
    expected = recorded(row, question)
    assert record["error"] is None
    assert record["done"]
    assert record["reply"] == expected["reply"], (record["stage"], question)
    assert record["verdict"]["expected"] == expected["answer"]
    assert record["verdict"]["correct"] == expected["correct"], (record["stage"], question, record["reply"])
    if "stopped" in expected:
        assert record["stopped"] == expected["stopped"]
    # the shaded pieces spell the reply; each carries the probability the model gave its tokens
    assert "".join(t["text"] for t in record["tokens"] if not t["special"]) == record["reply"]
    assert all(0 < p <= 1 for t in record["tokens"] for p in t["token_probs"])


@pytest.mark.slow  # make run's models, or the page's server
def test_each_stage_greedy_reply_and_verdict_are_the_scorecards(toy_run):
    from gradio_client import Client

    rows = read_scorecard(str(toy_run / SCORECARD_FILE))
    names = [s.name for s in TOY_STAGES]
    questions = scorecard_questions()
    with chat_page_server([], toy_run) as url:
        client = Client(url, verbose=False)
        verdicts = set()
        for question in questions:
            status, cards, records = ask(client, question, names)
            assert status.startswith("完成:5 个阶段,贪心"), status
            assert [r["stage"] for r in records] == names
            for record, card in zip(records, cards, strict=True):
                check_reply_matches_scorecard(record, rows[record["stage"]], question)
                verdicts.add(record["verdict"]["correct"])
                assert "与成绩单记录的贪心回答一致" in card and 'data-role="scorecard"' in card
    assert verdicts == {True, False}, "the questions should include replies graded right and wrong"


def check_probabilities_are_the_models(record: dict, model_dir: Path, question: str) -> None:
    """The page's probability of each token equals a plain forward pass over prompt + reply (teacher forcing)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmtrain.chat_page import chat_inputs

    ids = [i for t in record["tokens"] for i in t["ids"]]
    probs = [p for t in record["tokens"] for p in t["token_probs"]]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompt = chat_inputs(tokenizer, question)["input_ids"]
    with torch.no_grad():
        logits = model(torch.cat([prompt, torch.tensor([ids])], dim=1)).logits[0, prompt.shape[1] - 1:-1]
    expected = torch.softmax(logits.float(), dim=-1)[torch.arange(len(ids)), torch.tensor(ids)]
    assert len(ids) > 3
    assert torch.allclose(torch.tensor(probs), expected, atol=1e-4), (probs, expected.tolist())
    assert min(probs) < 0.99, "a reply where every token is near-certain would not show the shading"


@pytest.fixture(scope="module")
def random_toy_model(toy_dir):
    """A randomly initialised toy model (artifacts/toy): its replies run on without stopping and split characters."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(toy_dir)).eval(), \
        AutoTokenizer.from_pretrained(toy_dir)


@pytest.mark.parametrize("question", ["林晓雨的家乡是哪里?", "你好", "3加5等于几?"])
def test_streamed_greedy_reply_is_generate_replies(random_toy_model, question):
    """Streaming only watches: the tokens and text are generate_replies's, the pieces spell the text."""
    from llmtrain.chat_page import stream_reply
    from llmtrain.evaluation import generate_replies

    model, tokenizer = random_toy_model
    *growing, reply = list(stream_reply(model, tokenizer, question))
    ((text, stopped),) = generate_replies(model, tokenizer, [question])
    assert reply.done and not any(r.done for r in growing)
    assert (reply.text, reply.stopped) == (text, stopped)
    assert "".join(p.text for p in reply.pieces if not p.special) == text
    assert [i for p in reply.pieces for i in p.token_ids] == reply.token_ids
    assert len(reply.token_ids) == 48 or stopped


def other_base_model(run: Path, folder: Path) -> Path:
    """A toy-sized model of another shape (twice the MLP width), with make run's tokenizer: LoRA-SFT's adapter
    does not fit it."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(run / "pretrain")
    config.intermediate_size *= 2
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(run / "pretrain").save_pretrained(folder)
    return folder


@pytest.mark.slow  # make run's models, or the page's server
def test_stages_given_by_hand_bad_folders_and_sampling(toy_run, tmp_path):
    from gradio_client import Client

    rows = read_scorecard(str(toy_run / SCORECARD_FILE))
    other = other_base_model(toy_run, tmp_path / "other")
    args = ["--stage", f"SFT by hand={toy_run / 'sft'}",
            "--stage", f"LoRA DPO (6.4)={toy_run / 'sft'},{toy_run / 'dpo-lora'}",
            "--stage", f"DPO on the base={toy_run / 'pretrain'},{toy_run / 'dpo-lora'}",  # fits, but wrong base
            "--stage", f"missing={tmp_path / 'nothing'}",
            "--stage", f"not a model={SAMPLE}",
            "--stage", f"other base={other},{toy_run / 'sft-lora'}",
            "--scorecard", str(toy_run / SCORECARD_FILE)]
    loaded = ["SFT by hand", "LoRA DPO (6.4)", "DPO on the base"]  # offered; the other three show their error
    question = scorecard_questions()[3]
    with chat_page_server(args, toy_run) as url:
        client = Client(url, verbose=False)
        status, cards, records = ask(client, question, loaded)
        assert [r["stage"] for r in records] == loaded
        check_reply_matches_scorecard(records[0], rows["full SFT (6.2)"], question)
        check_reply_matches_scorecard(records[1], rows["LoRA DPO (6.4)"], question)
        check_probabilities_are_the_models(records[0], toy_run / "sft", question)
        assert "成绩单里没有这一行" in cards[0] and 'data-role="scorecard"' in cards[1]
        assert 'data-role="base-warning"' in cards[2] and 'data-role="base-warning"' not in cards[1]
        assert f"Model folder {tmp_path / 'nothing'} does not exist" in cards[3]
        assert f"Model folder {SAMPLE} has no config.json" in cards[4]
        assert "does not fit this base model" in cards[5] and "sft-lora" in cards[5]
        assert "Traceback" not in "".join(cards)

        # sampling: the same seed gives the same reply; the verdict still comes from the scorecard's grader
        first = ask(client, question, ["SFT by hand"], SAMPLING, seed=3)
        again = ask(client, question, ["SFT by hand"], SAMPLING, seed=3)
        assert first[0].startswith("完成:1 个阶段,采样") and first[2] == again[2]
        assert first[2][0]["verdict"]["expected"] == recorded(rows["full SFT (6.2)"], question)["answer"]

        # a question in no eval file gets no verdict; an empty question gets a message, not an error
        _, _, (record, *_) = ask(client, "你好", loaded)
        assert record["reply"] and record["verdict"] is None
        status, _, records = ask(client, "  ", loaded)
        assert status == "请先输入一个问题。" and records == []


@pytest.mark.slow  # make run's models, or the page's server
def test_page_grades_every_recorded_reply_as_the_scorecard_did(toy_run):
    """Graders (the page's verdicts) agree with every verdict make run's scorecard recorded, both eval files."""
    graders = Graders(SAMPLE / "eval.jsonl", RL_FILES, TOY_STYLE_SUFFIX)
    rows = read_scorecard(str(toy_run / SCORECARD_FILE))
    checked = 0
    for stage in TOY_STAGES:
        row = rows[stage.name]
        for g in row["replies"]:
            verdict = graders.grade(g["question"], g["reply"], g["stopped"])
            assert (verdict.correct, verdict.styled, verdict.expected) == (g["correct"], g["styled"], g["answer"])
            checked += 1
        for g in row["rl_heldout_replies"] + row["rl_new_phrasing_replies"]:
            assert graders.grade(g["prompt"], g["reply"], True).correct == g["correct"]
            checked += 1
    assert checked == 5 * (120 + 180 + 60)


def test_duplicate_stage_names_are_one_clear_error(capsys, caplog, monkeypatch):
    for name, value in (("GRADIO_ANALYTICS_ENABLED", "False"), ("HF_HUB_OFFLINE", "1")):
        monkeypatch.setenv(name, value)   # what the script sets when imported; restored after
    result = run_cli_in_process("chat_page.py", ["--stage", "a=output/x", "--stage", "a=output/y"], capsys, caplog)
    assert result.returncode == 1
    assert "Two stages have the same name" in result.stdout and "Traceback" not in result.stdout
