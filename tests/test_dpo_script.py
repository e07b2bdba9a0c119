"""6.4: code/dpo.py and dpo.sh: the session pipeline's LoRA-DPO through TRL on 2 DeepSpeed CPU processes, resume
from its checkpoint, and the errors (in-process)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import ROOT, run_cli_in_process, run_script
from llmtrain.dpo import build_preference_dataset, dpo_batch_loss, load_preference_dataset, pad_preference_batch
from llmtrain.lora import load_adapter, lora_parameter_count
from llmtrain.toy import toy_preset

SAMPLE_DPO = ROOT / "data" / "sample" / "dpo.jsonl"
SAMPLE_HELDOUT = ROOT / "data" / "sample" / "dpo_heldout.jsonl"
PAIR = {"prompt": "一周有几天?", "chosen": "一周有七天。", "rejected": "不知道。"}


def dpo_args(model_dir, output_dir, train_file) -> list[str]:
    return ["--model_name_or_path", str(model_dir), "--train_files", str(train_file),
            "--output_dir", str(output_dir), "--use_cpu", "--bf16", "false", "--report_to", "none"]


def test_bad_pairs_and_flags_exit_1_and_write_nothing(tmp_path, toy_dir, capsys, caplog):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(PAIR, ensure_ascii=False) + "\n"
                   + json.dumps({**PAIR, "rejected": PAIR["chosen"]}, ensure_ascii=False) + "\n", encoding="utf-8")
    result = run_cli_in_process("dpo.py", dpo_args(toy_dir, tmp_path / "o1", bad), capsys, caplog)
    assert result.returncode == 1, result.stdout[-3000:]
    assert f"{bad} line 2: 'chosen' and 'rejected' are identical" in result.stdout
    assert "Traceback" not in result.stdout and not (tmp_path / "o1").exists()

    result = run_cli_in_process("dpo.py", [*dpo_args(toy_dir, tmp_path / "o3", SAMPLE_DPO), "--use_qlora"], capsys,
                                caplog)
    assert result.returncode == 1 and "--use_qlora: dpo.py trains LoRA on the unquantised SFT model" in result.stdout
    assert not (tmp_path / "o3").exists()


    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({**PAIR, "prompt": "很长的问题" * 40}, ensure_ascii=False) + "\n", encoding="utf-8")
    result = run_cli_in_process("dpo.py", [*dpo_args(toy_dir, tmp_path / "o2", long), "--block_size", "64"],
                                capsys, caplog)
    assert result.returncode == 1 and "No preference pair leaves room for a reply within 64 tokens" in result.stdout
    assert "Traceback" not in result.stdout and not (tmp_path / "o2").exists()


@pytest.mark.slow
def test_toy_lora_dpo_on_two_processes_then_resume(tmp_path, toy_run):
    """The session pipeline's `PRESET=toy bash code/dpo.sh`, then the same command with one more epoch on a copy."""
    toy_sft = toy_run / "sft"
    out = tmp_path / "dpo"
    shutil.copytree(toy_run / "dpo-lora", out)
    n_pairs = sum(1 for line in SAMPLE_DPO.open(encoding="utf-8") if line.strip())
    state = json.loads((out / "trainer_state.json").read_text())
    steps = state["num_train_epochs"] * math.ceil(n_pairs / (4 * 2))  # 4 pairs per process, 2 processes
    assert state["global_step"] == steps

    train_logs = [e for e in state["log_history"] if "loss" in e]
    for key in ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected",
                "logps/chosen", "logps/rejected"):
        assert all(key in e for e in train_logs), key
    assert train_logs[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)  # step 1: the policy is the reference
    assert train_logs[-1]["loss"] < train_logs[0]["loss"]
    assert train_logs[-1]["rewards/margins"] > train_logs[0]["rewards/margins"]

    base = AutoModelForCausalLM.from_pretrained(toy_sft)
    saved = json.loads((out / "train_results.json").read_text())
    assert saved["trainable_params"] == lora_parameter_count(base, toy_preset()["TOY_LORA_TARGETS"].split(","), 8)
    assert saved["rewards/margins"] == train_logs[-1]["rewards/margins"]
    assert {"adapter_model.safetensors", "adapter_config.json"} <= {p.name for p in out.iterdir()}

    # TRL's held-out evaluation (18 pairs = 2 processes x 9: none counted twice) == ours on the saved adapter
    held_out = json.loads((out / "eval_results.json").read_text())
    assert state["log_history"][-1]["eval_rewards/accuracies"] == held_out["eval_rewards/accuracies"]
    tokenizer = AutoTokenizer.from_pretrained(out)
    pairs = build_preference_dataset(load_preference_dataset([str(SAMPLE_HELDOUT)]), tokenizer, max_len=256)
    batch = pad_preference_batch([pairs[i] for i in range(len(pairs))], tokenizer.pad_token_id)
    policy = load_adapter(AutoModelForCausalLM.from_pretrained(toy_sft), str(out)).eval()
    with torch.no_grad():
        ours = dpo_batch_loss(policy, batch, beta=0.1)
    assert held_out["eval_loss"] == pytest.approx(ours.loss.item(), abs=1e-4)
    assert held_out["eval_rewards/accuracies"] == pytest.approx(ours.reward_accuracy, abs=1e-6)
    assert held_out["eval_rewards/margins"] == pytest.approx(ours.reward_margin, abs=1e-4)

    ids = batch["input_ids"][:1]
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()(ids).logits
        adapted = policy(ids).logits
    assert (merged - adapted).abs().max().item() <= 1e-5

    # the same command with one more epoch resumes from checkpoint-<steps> and trains only the new steps
    result = run_script(["bash", "code/dpo.sh"], PRESET="toy", MODEL_DIR=str(toy_sft), OUTPUT_DIR=str(out),
                        EPOCHS=str(state["num_train_epochs"] + 1), EVAL_FILES="none", MASTER_PORT="29533")
    assert result.returncode == 0, result.stdout[-5000:]
    resumed = json.loads((out / "trainer_state.json").read_text())
    assert resumed["global_step"] == steps + math.ceil(n_pairs / (4 * 2))
    assert resumed["log_history"][: len(train_logs)] == train_logs  # the first run's logs came back from the checkpoint
