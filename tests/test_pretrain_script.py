"""6.1.5: code/pretrain.py and pretrain.sh, run for real: errors, resume after SIGKILL, DeepSpeed on 2 CPU processes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import ROOT, SAMPLE_PRETRAIN, run_script, script_env
from llmtrain.training import STALE_BUILD_LOCK_SECONDS, use_environment_torch_extensions


def pretrain_cmd(toy_dir, output_dir, *extra: str, train_file=SAMPLE_PRETRAIN) -> list[str]:
    return [
        "python", "code/pretrain.py", "--config_name", str(toy_dir), "--tokenizer_name", str(toy_dir),
        "--train_files", str(train_file), "--block_size", "64", "--per_device_train_batch_size", "4",
        "--learning_rate", "2e-3", "--logging_steps", "5", "--report_to", "none", "--use_cpu",
        "--output_dir", str(output_dir), *extra,
    ]


def assert_failed_cleanly(result, output_dir, message: str) -> None:
    assert result.returncode != 0, result.stdout[-3000:]
    assert message in result.stdout, result.stdout[-3000:]
    assert "Traceback" not in result.stdout, result.stdout[-3000:]
    assert not output_dir.exists() or not any(output_dir.iterdir())


def test_bad_inputs_exit_nonzero_with_a_clear_message(tmp_path, toy_dir):
    out = tmp_path / "out"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "一"}\n{"text": "二",}\n', encoding="utf-8")
    assert_failed_cleanly(run_script(pretrain_cmd(toy_dir, out, train_file=bad)), out,
                          "bad.jsonl line 2: not valid JSON")

    result = run_script(pretrain_cmd(toy_dir, out, "--config_name", str(tmp_path / "missing")))
    assert_failed_cleanly(result, out, "missing: no such folder")

    tiny = tmp_path / "tiny.jsonl"
    tiny.write_text('{"text": "很短。"}\n', encoding="utf-8")
    assert_failed_cleanly(run_script(pretrain_cmd(toy_dir, out, train_file=tiny)), out, "but one block needs 64")

    out.mkdir()
    (out / "notes.txt").write_text("someone else's file")
    result = run_script(pretrain_cmd(toy_dir, out))
    assert result.returncode != 0
    assert "is not empty and holds no checkpoint" in result.stdout and "--overwrite_output_dir" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def final_weights(output_dir) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(output_dir, "model.safetensors"))


def test_sigkill_then_rerun_resumes_and_matches_an_uninterrupted_run(tmp_path, toy_dir):
    """Same command twice: the second run resumes from the last complete checkpoint.

    Tolerance: max abs weight difference 1e-5 (same data order, RNG state restored, no dropout).
    """
    args = ("--max_steps", "40", "--save_steps", "10", "--seed", "3")
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    ref = run_script(pretrain_cmd(toy_dir, reference, *args))
    assert ref.returncode == 0, ref.stdout[-3000:]

    cmd = pretrain_cmd(toy_dir, killed, *args)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_checkpoint = killed / "checkpoint-10" / "trainer_state.json"
    deadline = time.time() + 300
    while not first_checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first_checkpoint.exists() and proc.returncode == -signal.SIGKILL
    assert not (killed / "model.safetensors").exists()  # it really was cut off mid-run

    rerun = run_script(cmd)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert "Resuming training from" in rerun.stdout and "checkpoint-" in rerun.stdout
    a, b = final_weights(reference), final_weights(killed)
    assert a.keys() == b.keys()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff <= 1e-5, diff
    assert json.loads((killed / "trainer_state.json").read_text())["global_step"] == 40


def test_overwrite_output_dir_starts_over(tmp_path, toy_dir):
    out = tmp_path / "out"
    first = run_script(pretrain_cmd(toy_dir, out, "--max_steps", "4", "--save_steps", "2"))
    assert first.returncode == 0, first.stdout[-3000:]
    again = run_script(pretrain_cmd(toy_dir, out, "--max_steps", "2", "--save_steps", "2", "--overwrite_output_dir"))
    assert again.returncode == 0, again.stdout[-3000:]
    assert "Resuming" not in again.stdout
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2


def test_validation_split_reports_perplexity(tmp_path, toy_dir):
    out = tmp_path / "out"
    result = run_script(pretrain_cmd(toy_dir, out, "--max_steps", "3", "--validation_split_percentage", "10"))
    assert result.returncode == 0, result.stdout[-3000:]
    metrics = json.loads((out / "eval_results.json").read_text())
    assert math.isclose(metrics["perplexity"], math.exp(metrics["eval_loss"]), rel_tol=1e-6)


def test_toy_deepspeed_launch_runs_two_processes_that_split_the_data(tmp_path, toy_dir):
    out = tmp_path / "ds"
    # a build lock left by a run killed while compiling DeepSpeed's shm op: without its removal the launch waits forever
    lock = Path(sys.prefix) / "torch_extensions" / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.touch()
    os.utime(lock, (time.time() - 3600, time.time() - 3600))
    result = run_script(["bash", "code/pretrain.sh"], PRESET="toy", OUTPUT_DIR=str(out), EPOCHS="6",
                        SAVE_STEPS="1000", MASTER_PORT="29517")
    assert result.returncode == 0, result.stdout[-5000:]
    assert f"Removed {lock}: a build lock 60 minutes old" in result.stdout
    assert (lock.parent / "deepspeed_shm_comm.so").is_file()   # compiled into this environment, not ~/.cache
    assert "Process rank: 0, device: cpu, world size: 2" in result.stdout
    assert "Process rank: 1, device: cpu, world size: 2" in result.stdout

    n_blocks = int(result.stdout.split(" documents -> ")[1].split(" blocks")[0])
    state = json.loads((out / "trainer_state.json").read_text())
    per_step = 4 * 2  # per-device batch 4 on each of 2 ranks
    assert state["global_step"] == 6 * math.ceil(n_blocks / per_step)  # 6 epochs over the split data
    assert state["num_input_tokens_seen"] == state["global_step"] * per_step * 128
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert losses[-1] < losses[0] - 0.5
    assert (out / "loss.png").stat().st_size > 0

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("春天来得很慢。", return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    assert loss < math.log(len(tokenizer))  # better than uniform guessing


def test_build_locks_younger_than_a_compile_are_kept_and_the_directory_is_per_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    assert use_environment_torch_extensions() == Path(sys.prefix) / "torch_extensions"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    fresh, stale = tmp_path / "fused_adam" / "lock", tmp_path / "deepspeed_shm_comm" / "lock"
    for lock in (fresh, stale):
        lock.parent.mkdir()
        lock.touch()
    old = time.time() - STALE_BUILD_LOCK_SECONDS - 5
    os.utime(stale, (old, old))
    assert use_environment_torch_extensions() == tmp_path
    assert fresh.exists() and not stale.exists()


def test_download_model_offline_fails_clearly_and_writes_nothing(tmp_path):
    target = tmp_path / "qwen"
    result = run_script(["python", "code/download_model.py", "--local_dir", str(target)])
    assert result.returncode == 1
    assert "Could not download Qwen/Qwen2.5-1.5B" in result.stdout
    assert not target.exists()


def test_chapter_preset_without_the_model_folder_says_how_to_get_it(tmp_path):
    result = run_script(["bash", "code/pretrain.sh"], MODEL_DIR=str(tmp_path / "qwen-1.5b"))
    assert result.returncode == 1
    assert "No model config in" in result.stdout and "code/download_model.py" in result.stdout
