"""QLoRA (USE_QLORA=1 bash code/finetune.sh): a 4-bit NF4 base with LoRA adapters, run on the CPU through the
launch script (bitsandbytes >= 0.49 has a CPU backend), and the clear errors around it."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from conftest import run_script
from llmtrain.errors import LlmtrainError
from llmtrain.modeling import load_model_4bit
from llmtrain.toy import toy_preset


def test_without_bitsandbytes_qlora_says_what_to_install(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a))
    with pytest.raises(LlmtrainError, match=r"--use_qlora needs bitsandbytes: pip install -e \. "):
        load_model_4bit(str(tmp_path), "cpu", torch.float32)


@pytest.mark.slow
def test_toy_qlora_through_finetune_sh_on_two_cpu_processes(tmp_path, toy_dir):
    base = tmp_path / "base"   # a randomly initialised toy model is enough to check the plumbing
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(toy_dir)).save_pretrained(base)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(toy_dir / name, base / name)
    out = tmp_path / "sft-qlora"
    result = run_script(["bash", "code/finetune.sh"], PRESET="toy", USE_QLORA="1", MODEL_DIR=str(base),
                        OUTPUT_DIR=str(out), MAX_STEPS="3", MASTER_PORT="29531")
    assert result.returncode == 0, result.stdout[-5000:]
    assert "world size: 2" in result.stdout and "with 4-bit NF4 weights (double quantisation" in result.stdout
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == sorted(toy_preset()["TOY_LORA_TARGETS"].split(",")) and adapter["r"] == 8
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3
    merged = json.loads((out / "merged" / "config.json").read_text())
    assert "quantization_config" not in merged   # merged into the unquantised base: a plain model
    AutoModelForCausalLM.from_pretrained(out / "merged")
