"""6.2: code/finetune.py and finetune.sh, run for real: 2-process DeepSpeed SFT, errors, padded batches."""

from __future__ import annotations

import json
import math

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import ROOT, run_script
from llmtrain.lora import load_adapter, lora_parameter_count
from llmtrain.tokenizer import IM_END
from llmtrain.toy import toy_preset

SAMPLE_SFT = ROOT / "data" / "sample" / "sft.jsonl"


def finetune_cmd(model_dir, output_dir, *extra: str, train_file=SAMPLE_SFT) -> list[str]:
    return ["python", "code/finetune.py", "--model_name_or_path", str(model_dir), "--train_files", str(train_file),
            "--block_size", "256", "--per_device_train_batch_size", "8", "--report_to", "none", "--use_cpu",
            "--output_dir", str(output_dir), *extra]


def test_toy_sft_launch_runs_two_processes_and_learns_to_stop(tmp_path, toy_pretrained):
    out = tmp_path / "sft"
    result = run_script(["bash", "code/finetune.sh"], PRESET="toy", MODEL_DIR=str(toy_pretrained),
                        OUTPUT_DIR=str(out), MASTER_PORT="29518")
    assert result.returncode == 0, result.stdout[-5000:]
    assert "Process rank: 1, device: cpu, world size: 2" in result.stdout
    assert "Batching: padding-free packing" in result.stdout
    n = sum(1 for _ in SAMPLE_SFT.open(encoding="utf-8"))
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == state["num_train_epochs"] * math.ceil(n / (8 * 2))  # data split over 2 ranks
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


def test_padded_batches_and_sft_errors(tmp_path, toy_pretrained):
    out = tmp_path / "padded"
    result = run_script(finetune_cmd(toy_pretrained, out, "--packing", "false", "--max_steps", "3",
                                     "--max_train_samples", "40"))
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Batching: padding to the longest sample" in result.stdout and "40 conversations" in result.stdout

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"conversations": [{"from": "robot", "value": "嗨"}], "id": "r-1"}\n', encoding="utf-8")
    result = run_script(finetune_cmd(toy_pretrained, tmp_path / "o1", train_file=bad))
    assert result.returncode == 1 and "sample 0 (id 'r-1'): turn 0 has unknown role 'robot'" in result.stdout
    assert "Traceback" not in result.stdout and not (tmp_path / "o1").exists()

    result = run_script(["python", "code/finetune.py", "--train_files", str(SAMPLE_SFT), "--output_dir",
                         str(tmp_path / "o2"), "--use_cpu"])
    assert result.returncode == 1 and "SFT starts from a pretrained model" in result.stdout


def test_toy_lora_launch_saves_an_adapter_that_reloads_and_a_matching_merged_model(tmp_path, toy_pretrained):
    out = tmp_path / "lora"
    result = run_script(["bash", "code/finetune.sh"], PRESET="toy", USE_LORA="1", MODEL_DIR=str(toy_pretrained),
                        OUTPUT_DIR=str(out), EPOCHS="2", MASTER_PORT="29519")
    assert result.returncode == 0, result.stdout[-5000:]
    assert "Process rank: 1, device: cpu, world size: 2" in result.stdout
    assert {"adapter_model.safetensors", "adapter_config.json"} <= {p.name for p in out.iterdir()}

    base = AutoModelForCausalLM.from_pretrained(toy_pretrained)
    expected = lora_parameter_count(base, toy_preset()["TOY_LORA_TARGETS"].split(","), 8)  # the toy preset's
    assert json.loads((out / "train_results.json").read_text())["trainable_params"] == expected
    ids = AutoTokenizer.from_pretrained(out)("3加5等于几?", return_tensors="pt").input_ids
    with torch.no_grad():
        plain = base(ids).logits
        adapted = load_adapter(base, str(out)).eval()(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()(ids).logits
    assert (adapted - plain).abs().max().item() > 1e-3  # training moved the adapter away from B = 0
    assert (merged - adapted).abs().max().item() <= 1e-5
