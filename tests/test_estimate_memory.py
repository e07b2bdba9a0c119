"""6.1.5: code/estimate_memory.py as a reader runs it: JSON values, the #106 verdict, plans, bad input (in-process;
the shell plan, which the launchers eval, in a subprocess as they run it)."""

import json
import re
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import run_cli_in_process, run_script
from llmtrain.memory import card_memory_needed, estimate_training_memory, fits
from llmtrain.modeling import count_parameters, qwen2_5_1_5b_config, toy_config

TEXTBOOK = ["--preset", "qwen2.5-1.5b", "--per_device_train_batch_size", "16", "--block_size", "2048",
            "--num_gpus", "4", "--zero_stage", "2", "--dtype", "bf16"]


def estimate(capsys, caplog, *args: str) -> str:
    result = run_cli_in_process("estimate_memory.py", list(args), capsys, caplog)
    assert result.returncode == 0, result.stdout
    return result.stdout


def run_json(capsys, caplog, *args: str) -> dict:
    return json.loads(next(line for line in estimate(capsys, caplog, *args, "--json").splitlines()
                           if line.startswith("{")))


def test_textbook_job_does_not_fit_4_x_48gb_but_the_plan_does(capsys, caplog):
    report = run_json(capsys, caplog, *TEXTBOOK, "--activation_checkpointing", "--gpu_memory_gib", "48")
    expected = estimate_training_memory(qwen2_5_1_5b_config(), 16, 2048, "bf16", 2, 4, activation_checkpointing=True)
    assert report["peak_gib"] == round(expected.peak / 2**30, 2)
    assert report["peak_gib"] > 48 and report["fits"] is False   # happy-llm #106: OOM on 4 x 48 GB
    plan = report["plan"]
    assert plan["per_device_batch"] * plan["gradient_accumulation_steps"] * 4 == 16 * 4 * 4
    assert plan["peak_gib"] < plan["card_gib"] <= 48   # the allocated peak and what the card must hold for it
    assert report["card_gib"] == round(card_memory_needed(expected) / 2**30, 2)


def test_qlora_needs_half_the_weights_and_the_table_shows_both_numbers(capsys, caplog):
    flags = ("--preset", "qwen2.5-1.5b", "--per_device_train_batch_size", "1", "--lora_r", "8",
             "--activation_checkpointing", "--use_liger_kernel", "--expandable_segments")
    lora, qlora = run_json(capsys, caplog, *flags), run_json(capsys, caplog, *flags, "--load_in_4bit")
    with torch.device("meta"):   # the 1.5B model's parameters, counted (not the formula the estimate uses)
        n_params = count_parameters(AutoModelForCausalLM.from_config(qwen2_5_1_5b_config()))
    assert lora["terms_gib"]["weights"] == round(2 * n_params / 2**30, 2)   # bf16: 2 bytes a weight
    # 4-bit NF4 stores about half a byte a weight (the formula itself is checked against bitsandbytes in test_memory)
    assert 0.45 < qlora["terms_gib"]["weights"] / lora["terms_gib"]["weights"] < 0.6
    assert qlora["card_gib"] < 8 - 2   # QLoRA of 1.5B on an 8 GiB card, with room for batch > 1
    table = estimate(capsys, caplog, "--preset", "qwen2.5-1.5b", "--lora_r", "8", "--load_in_4bit")
    assert "GiB allocated per GPU" in table and "card memory needed = peak x 1.36" in table and "QLoRA" in table


def test_config_folder_and_fp32_terms(tmp_path, capsys, caplog):
    config = toy_config(vocab_size=4096, eos_token_id=0)
    config.save_pretrained(tmp_path)
    report = run_json(capsys, caplog, "--config_name", str(tmp_path), "--per_device_train_batch_size", "2",
                      "--block_size", "64", "--dtype", "fp32", "--zero_stage", "0")
    expected = estimate_training_memory(config, 2, 64, "fp32", 0, 1).gib()
    assert report["terms_gib"] == expected and report["peak_gib"] == expected["peak"]


def test_shell_plan_the_chapter_preset_evals_fits_24gb(tmp_path):
    # The command code/pretrain.sh's chapter branch runs (and evals) to choose BATCH_SIZE and GRAD_ACC.
    qwen2_5_1_5b_config().save_pretrained(tmp_path / "qwen-1.5b")
    result = run_script([sys.executable, "code/estimate_memory.py", "--shell_plan", "--config_name", str(tmp_path / "qwen-1.5b"), "--gpu_memory_gib", "24",
                         "--num_gpus", "4", "--block_size", "2048", "--dtype", "bf16",
                         "--deepspeed", "code/ds_config_zero2.json", "--activation_checkpointing"])
    assert result.returncode == 0, result.stdout
    plan = re.search(r"BATCH_SIZE=(\d+) GRAD_ACC=(\d+)", result.stdout)
    batch, grad_acc = int(plan[1]), int(plan[2])
    estimate = estimate_training_memory(qwen2_5_1_5b_config(), batch, 2048, "bf16", 2, 4, activation_checkpointing=True)
    assert fits(estimate, 24) and batch * grad_acc * 4 == 256


@pytest.mark.parametrize("args, message", [
    (["--preset", "qwen-7b"], "unknown"),
    (["--config_name", "tests"], "no config.json"),
    (["--preset", "qwen2.5-1.5b", "--per_device_train_batch_size", "0"], "must be positive"),
    (["--preset", "qwen2.5-1.5b", "--block_size", "-1"], "must be positive"),
    (["--preset", "qwen2.5-1.5b", "--zero_stage", "4"], "must be 0, 1, 2 or 3"),
    (["--preset", "qwen2.5-1.5b", "--gpu_memory_gib", "2"], "smaller than the weights alone"),
    (["--preset", "qwen2.5-1.5b", "--load_in_4bit"], "--load_in_4bit is QLoRA"),
    (["--preset", "qwen2.5-1.5b", "--load_in_4bit", "--lora_r", "8", "--zero_stage", "3"], "--load_in_4bit with ZeRO-3"),
])
def test_bad_input_is_one_clear_line_and_exit_1(args, message, capsys, caplog):
    result = run_cli_in_process("estimate_memory.py", args, capsys, caplog)
    assert result.returncode == 1
    assert message in result.stdout and "Traceback" not in result.stdout
    assert len([line for line in result.stdout.splitlines() if line.startswith("ERROR - llmtrain")]) == 1
