"""6.2: code/finetune.py and finetune.sh: the session pipeline's 2-process DeepSpeed SFT and LoRA SFT, padded
batches, and the errors (in-process)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import SAMPLE, run_cli_in_process
from llmtrain.lora import load_adapter, lora_parameter_count
from llmtrain.tokenizer import IM_END
from llmtrain.toy import toy_preset

SAMPLE_SFT = SAMPLE / "sft.jsonl"


def finetune_args(model_dir, output_dir, *extra: str, train_file=SAMPLE_SFT) -> list[str]:
    return ["--model_name_or_path", str(model_dir), "--train_files", str(train_file),
            "--block_size", "256", "--per_device_train_batch_size", "8", "--report_to", "none", "--use_cpu",
            "--output_dir", str(output_dir), *extra]


@pytest.mark.slow
def test_toy_sft_ran_two_processes_and_learned_to_stop(toy_run):
    """The session pipeline's `PRESET=toy bash code/finetune.sh` (make run's full SFT)."""
    log, out, preset = (toy_run / "sft.log").read_text(), toy_run / "sft", toy_preset()
    assert "Process rank: 1, device: cpu, world size: 2" in log
    assert "Batching: padding-free packing" in log
    n = sum(1 for _ in SAMPLE_SFT.open(encoding="utf-8"))
    state = json.loads((out / "trainer_state.json").read_text())
    per_step = preset["TOY_SFT_BATCH_SIZE"] * preset["TOY_NUM_GPUS"]
    assert state["global_step"] == preset["TOY_SFT_EPOCHS"] * math.ceil(n / per_step)  # data split over 2 ranks
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert losses[-1] < losses[0] / 2

    model, tokenizer = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    assert model.config.use_cache  # turned off for packed training, back on in the saved model
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    for question in ["3加5等于几?", "“大”的反义词是什么?", "你好", "星期一的后一天是星期几?"]:
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
        with torch.no_grad():
            reply = model.generate(**inputs, max_new_tokens=40, do_sample=False, eos_token_id=im_end)
        assert reply[0, -1].item() == im_end, tokenizer.decode(reply[0])  # the reply ends, it does not ramble


@pytest.mark.slow
def test_toy_lora_sft_saved_an_adapter_that_reloads_and_a_matching_merged_model(toy_run):
    """The session pipeline's `PRESET=toy USE_LORA=1 bash code/finetune.sh`."""
    out, base_dir = toy_run / "sft-lora", toy_run / "pretrain"
    assert "Process rank: 1, device: cpu, world size: 2" in (toy_run / "sft-lora.log").read_text()
    assert {"adapter_model.safetensors", "adapter_config.json"} <= {p.name for p in out.iterdir()}
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    expected = lora_parameter_count(base, toy_preset()["TOY_LORA_TARGETS"].split(","), 8)  # the toy preset's
    assert json.loads((out / "train_results.json").read_text())["trainable_params"] == expected
    ids = AutoTokenizer.from_pretrained(out)("3加5等于几?", return_tensors="pt").input_ids
    with torch.no_grad():
        plain = base(ids).logits
        adapted = load_adapter(base, str(out)).eval()(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()(ids).logits
    assert (adapted - plain).abs().max().item() > 1e-3  # training moved the adapter away from B = 0
    assert (merged - adapted).abs().max().item() <= 1e-5


@pytest.mark.slow
def test_padded_batches_train(tmp_path, toy_run, capsys, caplog):
    result = run_cli_in_process("finetune.py", finetune_args(
        toy_run / "pretrain", tmp_path / "padded", "--packing", "false", "--max_steps", "3",
        "--max_train_samples", "40"), capsys, caplog)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Batching: padding to the longest sample" in result.stdout and "40 conversations" in result.stdout
    assert json.loads((tmp_path / "padded" / "trainer_state.json").read_text())["global_step"] == 3


def test_sft_errors_are_one_line_and_write_nothing(tmp_path, toy_dir, capsys, caplog):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"conversations": [{"from": "robot", "value": "嗨"}], "id": "r-1"}\n', encoding="utf-8")
    result = run_cli_in_process("finetune.py", finetune_args(toy_dir, tmp_path / "o1", train_file=bad), capsys,
                                caplog)
    assert result.returncode == 1 and "sample 0 (id 'r-1'): turn 0 has unknown role 'robot'" in result.stdout
    assert "Traceback" not in result.stdout and not (tmp_path / "o1").exists()

    result = run_cli_in_process("finetune.py", ["--train_files", str(SAMPLE_SFT), "--output_dir",
                                                str(tmp_path / "o2"), "--use_cpu"], capsys, caplog)
    assert result.returncode == 1 and "SFT starts from a pretrained model" in result.stdout

    result = run_cli_in_process("finetune.py", finetune_args(tmp_path / "no-model", tmp_path / "o3"), capsys, caplog)
    assert result.returncode == 1 and "--model_name_or_path" in result.stdout and "no such folder" in result.stdout
    assert not (tmp_path / "o3").exists()
