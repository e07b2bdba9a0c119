"""6.5: code/grpo.py and grpo.sh: the session pipeline's LoRA-GRPO, a short run with held-out accuracy before and
after, resume, and the errors (in-process)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import ROOT, run_cli_in_process, run_script
from llmtrain.evaluation import task_accuracy
from llmtrain.grading import load_prompt_dataset
from llmtrain.lora import load_adapter, lora_parameter_count
from llmtrain.toy import toy_preset

SAMPLE_RL_EVAL = ROOT / "data" / "sample" / "grpo_eval.jsonl"
PROMPT = {"prompt": "林晓雨是哪里人?", "answer": "柳河村", "task": "fact"}


def grpo_args(model_dir, output_dir, train_file, *flags: str) -> list[str]:
    return ["--model_name_or_path", str(model_dir), "--train_files", str(train_file),
            "--output_dir", str(output_dir), "--use_cpu", "--bf16", "false", "--report_to", "none",
            "--num_generations", "4", "--per_device_train_batch_size", "8", *flags]


def write_jsonl(path, records) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def test_bad_prompt_files_and_flags_exit_1_and_write_nothing(tmp_path, toy_dir, capsys, caplog):
    def grpo(*args: str):
        return run_cli_in_process("grpo.py", list(args), capsys, caplog)

    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [PROMPT, {"prompt": "3加5等于几?", "answer": "八", "task": "arithmetic"}])
    result = grpo(*grpo_args(toy_dir, tmp_path / "o1", bad))
    assert result.returncode == 1, result.stdout[-3000:]
    assert f"{bad} line 2: an arithmetic answer must be an integer" in result.stdout
    assert "Traceback" not in result.stdout and not (tmp_path / "o1").exists()

    good = tmp_path / "good.jsonl"
    write_jsonl(good, [PROMPT])
    result = grpo(*grpo_args(toy_dir, tmp_path / "o2", good), "--num_generations", "3")
    assert result.returncode == 1, result.stdout[-3000:]
    assert "must be divisible by num_generations (3)" in result.stdout and "--help lists them" in result.stdout
    assert not (tmp_path / "o2").exists()

    result = grpo(*grpo_args(toy_dir, tmp_path / "o3", good), "--block_size", "40", "--max_completion_length", "32")
    assert result.returncode == 1 and "Every prompt of" in result.stdout and "raise --block_size" in result.stdout
    assert not (tmp_path / "o3").exists()

    result = grpo(*grpo_args(toy_dir, tmp_path / "o4", good), "--style_weight", "0.5")
    assert result.returncode == 1 and "--style_weight rewards ending with --style_suffix" in result.stdout


@pytest.mark.slow
def test_toy_lora_grpo_in_the_pipeline_kept_the_format_reward_and_the_kl(toy_run):
    """The session pipeline's `PRESET=toy bash code/grpo.sh` (make run's GRPO, 120 steps)."""
    preset = toy_preset()
    assert "Process rank: 1, device: cpu, world size: 2" in (toy_run / "grpo-lora.log").read_text()
    state = json.loads((toy_run / "grpo-lora" / "trainer_state.json").read_text())
    assert state["global_step"] == preset["TOY_GRPO_MAX_STEPS"]
    logs = [e for e in state["log_history"] if "reward" in e]
    assert len(logs) == preset["TOY_GRPO_MAX_STEPS"] // preset["TOY_LOGGING_STEPS"]
    for e in logs:  # TRL sums the weighted rewards: the verifiable one and the closing sentence's format reward
        assert e["reward"] == pytest.approx(
            e["rewards/verifiable/mean"] + preset["TOY_GRPO_STYLE_WEIGHT"] * e["rewards/style/mean"], abs=1e-5)
        assert 0 < e["completions/mean_length"] <= preset["TOY_GRPO_MAX_COMPLETION"]
    assert all(e["kl"] > 0 for e in logs[1:])   # the policy has left the reference; the penalty is at work


@pytest.mark.slow
def test_toy_lora_grpo_on_two_processes_evaluates_then_resumes(tmp_path, toy_run):
    start = toy_run / "dpo-lora" / "merged"   # the model make run's GRPO starts from
    held_out = tmp_path / "held_out.jsonl"
    write_jsonl(held_out, [json.loads(line) for line in SAMPLE_RL_EVAL.read_text(encoding="utf-8").splitlines()[::30]])
    shutil.copy(SAMPLE_RL_EVAL.with_name("people.txt"), tmp_path)   # the grader's list of every name, beside the file
    out = tmp_path / "grpo"
    weight = float(toy_preset()["TOY_GRPO_STYLE_WEIGHT"])
    result = run_script(["bash", "code/grpo.sh"], PRESET="toy", MODEL_DIR=str(start), OUTPUT_DIR=str(out),
                        MAX_STEPS="4", SAVE_STEPS="2", LOGGING_STEPS="1", EVAL_FILES=str(held_out),
                        MASTER_PORT="29542")
    assert result.returncode == 0, result.stdout[-5000:]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    logs = [e for e in state["log_history"] if "reward" in e]
    assert len(logs) == 4
    for e in logs:  # TRL sums the weighted rewards: the verifiable one and the closing sentence's format reward
        assert e["reward"] == pytest.approx(e["rewards/verifiable/mean"] + weight * e["rewards/style/mean"], abs=1e-5)
        assert 0 < e["completions/mean_length"] <= int(toy_preset()["TOY_GRPO_MAX_COMPLETION"])
    assert logs[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # step 1: the policy is still the reference

    base = AutoModelForCausalLM.from_pretrained(start)
    saved = json.loads((out / "train_results.json").read_text())
    assert saved["trainable_params"] == lora_parameter_count(base, toy_preset()["TOY_LORA_TARGETS"].split(","), 8)
    assert saved["reward"] == logs[-1]["reward"]

    # held-out accuracy before (the SFT model) and after (the saved adapter), recomputed from the saved files
    tokenizer = AutoTokenizer.from_pretrained(out)
    rows = load_prompt_dataset([str(held_out)])
    policy = load_adapter(AutoModelForCausalLM.from_pretrained(start), str(out)).eval()
    evaluated = json.loads((out / "eval_results.json").read_text())
    replies = json.loads((out / "eval_replies.json").read_text())
    after = task_accuracy(policy, tokenizer, rows, 32, toy_preset()["TOY_STYLE_SUFFIX"])
    assert evaluated["eval_accuracy"] == after["accuracy"] and replies["after"] == after["replies"]
    before = task_accuracy(AutoModelForCausalLM.from_pretrained(start), tokenizer, rows, 32,
                           toy_preset()["TOY_STYLE_SUFFIX"])
    assert evaluated["eval_accuracy_before"] == before["accuracy"] and len(replies["before"]) == len(rows)

    ids = tokenizer("林晓雨是哪里人?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()(ids).logits
        assert (merged - policy(ids).logits).abs().max().item() <= 1e-5

    # the same command with more steps resumes from checkpoint-4 and trains only the new steps
    result = run_script(["bash", "code/grpo.sh"], PRESET="toy", MODEL_DIR=str(start), OUTPUT_DIR=str(out),
                        MAX_STEPS="6", SAVE_STEPS="2", LOGGING_STEPS="1", EVAL_FILES="none", MASTER_PORT="29543")
    assert result.returncode == 0, result.stdout[-5000:]
    resumed = json.loads((out / "trainer_state.json").read_text())
    assert resumed["global_step"] == 6
    assert [e for e in resumed["log_history"] if "reward" in e][:4] == logs  # the first run's logs, from the checkpoint
