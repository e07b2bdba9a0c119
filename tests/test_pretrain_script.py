"""6.1.5: code/pretrain.py and pretrain.sh: errors in-process, then real runs: resume after SIGKILL, the
overwrite flag, and the session pipeline's 2-process DeepSpeed pretraining."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

from conftest import ROOT, SAMPLE_PRETRAIN, run_cli_in_process, run_script, script_env
from llmtrain.checkpoints import delete_checkpoints
from llmtrain.launch import STALE_BUILD_LOCK_SECONDS, use_environment_torch_extensions
from llmtrain.toy import toy_preset
from llmtrain.toy_run import TOY_STAGES


def pretrain_args(toy_dir, output_dir, *extra: str, train_file=SAMPLE_PRETRAIN) -> list[str]:
    return [
        "--config_name", str(toy_dir), "--tokenizer_name", str(toy_dir),
        "--train_files", str(train_file), "--block_size", "64", "--per_device_train_batch_size", "4",
        "--learning_rate", "2e-3", "--logging_steps", "5", "--report_to", "none", "--use_cpu",
        "--output_dir", str(output_dir), *extra,
    ]


def pretrain(capsys, caplog, *args: str):
    return run_cli_in_process("pretrain.py", list(args), capsys, caplog)


def assert_failed_cleanly(result, output_dir, message: str) -> None:
    assert result.returncode == 1, result.stdout[-3000:]
    assert message in result.stdout, result.stdout[-3000:]
    assert "Traceback" not in result.stdout, result.stdout[-3000:]
    assert not output_dir.exists() or not any(output_dir.iterdir())


def test_bad_inputs_exit_1_with_a_clear_message(tmp_path, toy_dir, capsys, caplog):
    out = tmp_path / "out"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "一"}\n{"text": "二",}\n', encoding="utf-8")
    assert_failed_cleanly(pretrain(capsys, caplog, *pretrain_args(toy_dir, out, train_file=bad)), out,
                          "bad.jsonl line 2: not valid JSON")
    assert_failed_cleanly(pretrain(capsys, caplog, *pretrain_args(toy_dir, out, "--config_name", str(tmp_path / "no"))),
                          out, "no: no such folder")
    tiny = tmp_path / "tiny.jsonl"
    tiny.write_text('{"text": "很短。"}\n', encoding="utf-8")
    assert_failed_cleanly(pretrain(capsys, caplog, *pretrain_args(toy_dir, out, train_file=tiny)), out,
                          "but one block needs 64")
    # a flag value TrainingArguments rejects in its own checks: one line, as in dpo.py and grpo.py
    assert_failed_cleanly(pretrain(capsys, caplog, *pretrain_args(toy_dir, out, "--load_best_model_at_end")), out,
                          "--help lists them")

    out.mkdir()
    (out / "notes.txt").write_text("someone else's file")
    result = pretrain(capsys, caplog, *pretrain_args(toy_dir, out))
    assert result.returncode == 1
    assert "is not empty and holds no checkpoint" in result.stdout and "--overwrite_output_dir" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def final_weights(output_dir) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(output_dir, "model.safetensors"))


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_and_matches_an_uninterrupted_run(tmp_path, toy_dir):
    """Same command twice: the second run resumes from the last complete checkpoint.

    Tolerance: max abs weight difference 1e-5 (same data order, RNG state restored, no dropout).
    """
    args = ("--max_steps", "40", "--save_steps", "10", "--seed", "3")
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    ref = run_script(["python", "code/pretrain.py", *pretrain_args(toy_dir, reference, *args)])
    assert ref.returncode == 0, ref.stdout[-3000:]

    cmd = ["python", "code/pretrain.py", *pretrain_args(toy_dir, killed, *args)]
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


@pytest.mark.slow
def test_overwrite_output_dir_checks_the_inputs_first_then_starts_over(tmp_path, toy_dir, capsys, caplog):
    out = tmp_path / "out"
    first = pretrain(capsys, caplog, *pretrain_args(toy_dir, out, "--max_steps", "4", "--save_steps", "2",
                                                    "--validation_split_percentage", "10"))
    assert first.returncode == 0, first.stdout[-3000:]
    metrics = json.loads((out / "eval_results.json").read_text())
    assert math.isclose(metrics["perplexity"], math.exp(metrics["eval_loss"]), rel_tol=1e-6)
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-2", "checkpoint-4"]

    # a typo in the data path stops the run before --overwrite_output_dir deletes anything
    typo = pretrain(capsys, caplog, *pretrain_args(toy_dir, out, "--overwrite_output_dir",
                                                   train_file=tmp_path / "pretrian.jsonl"))
    assert typo.returncode == 1 and "pretrian.jsonl" in typo.stdout
    assert sorted(p.name for p in out.glob("checkpoint-*")) == checkpoints

    again = pretrain(capsys, caplog, *pretrain_args(toy_dir, out, "--max_steps", "2", "--save_steps", "2",
                                                    "--overwrite_output_dir"))
    assert again.returncode == 0, again.stdout[-3000:]
    assert "Resuming" not in again.stdout
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2


def test_every_rank_enters_the_checkpoint_barrier_even_before_the_output_folder_exists(tmp_path):
    # A rank that returned early (no folder yet) while another, a moment later, saw the folder and entered the
    # barrier left that one waiting for ever: a 2-process GRPO run hung. The barrier cannot depend on the disk.
    args = TrainingArguments(output_dir=str(tmp_path / "not-yet"), report_to="none", use_cpu=True)
    entered = []

    @contextlib.contextmanager
    def barrier(desc: str = ""):
        entered.append(desc)
        yield

    args.main_process_first = barrier
    delete_checkpoints(args)
    assert entered == ["clearing old checkpoints"] and not (tmp_path / "not-yet").exists()


@pytest.mark.slow
def test_no_launch_of_the_pipeline_left_its_shared_memory_allreduce_buffers_behind(toy_run):
    """Each CPU rank's 66 MB /dev/shm buffer of DeepSpeed's shm allreduce is named after the launch's port; before
    launch_common.sh removed them, every stage of every `make run` kept 132 MB of RAM until a reboot."""
    for stage in (stage.adapter or stage.model for stage in TOY_STAGES):   # each stage's log is <folder>.log
        log = (toy_run / f"{stage}.log").read_text()
        assert log.count("deepspeed_shm_comm_op built successfully") == 2   # both ranks allreduced through /dev/shm
        port = re.search(r"--master_port (\d+) ", log).group(1)
        left = list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"))
        assert not left, f"{stage}: {left}"


@pytest.mark.slow
def test_toy_deepspeed_pretraining_ran_two_processes_that_split_the_data(toy_run):
    """The session pipeline's `PRESET=toy bash code/pretrain.sh` (the first stage of make run)."""
    log = (toy_run / "pretrain.log").read_text()
    lock = Path(sys.prefix) / "torch_extensions" / "deepspeed_shm_comm" / "lock"
    assert f"Removed {lock}: a build lock 60 minutes old" in log   # planted by the toy_run fixture
    assert (lock.parent / "deepspeed_shm_comm.so").is_file()   # compiled into this environment, not ~/.cache
    assert "Process rank: 0, device: cpu, world size: 2" in log
    assert "Process rank: 1, device: cpu, world size: 2" in log

    preset = toy_preset()
    out = toy_run / "pretrain"
    n_blocks = int(log.split(" documents -> ")[1].split(" blocks")[0])
    state = json.loads((out / "trainer_state.json").read_text())
    per_step = preset["TOY_PRETRAIN_BATCH_SIZE"] * preset["TOY_NUM_GPUS"]
    assert state["global_step"] == preset["TOY_PRETRAIN_EPOCHS"] * math.ceil(n_blocks / per_step)  # the data split
    assert state["num_input_tokens_seen"] == state["global_step"] * per_step * preset["TOY_PRETRAIN_BLOCK_SIZE"]
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
    # set, then deleted: monkeypatch restores the variable's first value even after use_environment_torch_extensions
    # sets it below (a bare delenv of an unset variable restored nothing, and every later launch of the session
    # compiled DeepSpeed's ops again into this test's folder: a minute)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "deleted below")
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))   # not this environment's: the session's pipeline
    assert use_environment_torch_extensions() == tmp_path / "venv" / "torch_extensions"   # may be building there
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
