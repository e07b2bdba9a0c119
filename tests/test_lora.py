"""6.3: our from-scratch LoRA against peft (logits, training, merge), the parameter formula, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

from llmtrain.errors import LlmtrainError
from llmtrain.lora import (
    LoraLinear, copy_lora_from_peft, inject_lora, load_adapter, lora_layers, lora_parameter_count,
)
from llmtrain.modeling import count_parameters, qwen2_5_1_5b_config

TARGETS = ["q_proj", "v_proj"]


@pytest.fixture
def base(toy_dir):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(toy_dir))


def ours_and_peft(base, r=8, alpha=16):
    """Same base weights, same A and B (B made non-zero so the adapters really act)."""
    theirs = get_peft_model(copy.deepcopy(base), LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0,
                                                            target_modules=TARGETS, task_type="CAUSAL_LM"))
    for name, p in theirs.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    ours = inject_lora(copy.deepcopy(base), TARGETS, r=r, alpha=alpha)
    assert copy_lora_from_peft(theirs, ours) == 2 * 2 * base.config.num_hidden_layers
    return ours, theirs


def batch(seed=0, n=2, length=24):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 2000, (n, length), generator=g)
    return {"input_ids": ids, "labels": ids}


def test_new_lora_layer_starts_as_the_base_layer():
    base = torch.nn.Linear(16, 8)
    layer = LoraLinear(base, r=4, alpha=8)
    x = torch.randn(3, 16)
    assert torch.equal(layer(x), base(x))
    assert layer.scaling == 2.0
    assert not base.weight.requires_grad and layer.lora_A.weight.requires_grad


def test_same_logits_and_trainable_count_as_peft(base):
    ours, theirs = ours_and_peft(base)
    assert (count_parameters(ours, trainable_only=True) == count_parameters(theirs, trainable_only=True)
            == lora_parameter_count(base, TARGETS, 8))
    with torch.no_grad():
        diff = (ours(**batch()).logits - theirs(**batch()).logits).abs().max().item()
    assert diff <= 1e-5
    plain = base(**batch()).logits
    assert (ours(**batch()).logits - plain).abs().max().item() > 1e-3  # the adapters do something


def test_still_equal_to_peft_after_identical_training_steps(base):
    """Tolerance: max abs logits difference 1e-4 after 5 AdamW steps (float32 summation order differs)."""
    ours, theirs = ours_and_peft(base)
    for model in (ours, theirs):
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for step in range(5):
            model(**batch(seed=step)).loss.backward()
            opt.step()
            opt.zero_grad()
    with torch.no_grad():
        after = ours(**batch(seed=99)).logits
        diff = (after - theirs(**batch(seed=99)).logits).abs().max().item()
        moved = (after - base(**batch(seed=99)).logits).abs().max().item()
    assert diff <= 1e-4 and moved > 1e-2


def test_merge_unmerge_and_peft_merge_and_unload_agree(base):
    ours, theirs = ours_and_peft(base)
    with torch.no_grad():
        unmerged = ours(**batch()).logits
        for layer in lora_layers(ours):
            layer.merge()
        merged = ours(**batch()).logits
        for layer in lora_layers(ours):
            layer.unmerge()
        again = ours(**batch()).logits
        plain_peft = theirs.merge_and_unload()(**batch()).logits
    assert (merged - unmerged).abs().max().item() <= 1e-5
    assert (again - unmerged).abs().max().item() <= 1e-5
    assert (plain_peft - unmerged).abs().max().item() <= 1e-5
    for name, layer in ours.named_modules():  # unmerge restored the base weights
        if isinstance(layer, LoraLinear):
            assert torch.allclose(layer.base.weight, base.get_submodule(name).weight, atol=1e-6)


def test_disabling_the_adapter_gives_the_base_model(base):
    ours, _ = ours_and_peft(base)
    for layer in lora_layers(ours):
        layer.merge()
        layer.disabled = True
    with torch.no_grad():
        assert (ours(**batch()).logits - base(**batch()).logits).abs().max().item() <= 1e-5


@pytest.mark.parametrize("config_name", ["toy", "qwen2.5-1.5b"])
def test_parameter_formula_against_measured_counts(toy_dir, config_name):
    config = AutoConfig.from_pretrained(toy_dir) if config_name == "toy" else qwen2_5_1_5b_config()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    d, kv = config.hidden_size, config.num_key_value_heads * config.hidden_size // config.num_attention_heads
    layers, r = config.num_hidden_layers, 8
    before = count_parameters(model)
    inject_lora(model, TARGETS, r=r)
    measured = count_parameters(model) - before
    assert measured == count_parameters(model, trainable_only=True)
    with torch.device("meta"):   # shapes only: a 1.5B model is not allocated
        fresh = AutoModelForCausalLM.from_config(config)
    assert measured == lora_parameter_count(fresh, TARGETS, r) \
        == layers * r * ((d + d) + (d + kv))  # q: d -> d, v: d -> kv (GQA)
    with torch.device("meta"):
        square = AutoModelForCausalLM.from_config(config)
    inject_lora(square, ["q_proj", "o_proj"], r=r)  # both d x d: the chapter's formula holds
    assert count_parameters(square, trainable_only=True) == 2 * (2 * layers) * d * r


def test_injection_errors_are_clear(base):
    with pytest.raises(LlmtrainError, match=r"match no module\. Linear layers in this model: down_proj, gate_proj"):
        inject_lora(copy.deepcopy(base), ["query"])
    with pytest.raises(LlmtrainError, match="r must be a positive integer, got 0"):
        inject_lora(copy.deepcopy(base), TARGETS, r=0)
    with pytest.raises(LlmtrainError, match=r"target model\.embed_tokens is Embedding, not nn\.Linear"):
        inject_lora(copy.deepcopy(base), ["embed_tokens"])
    layer = LoraLinear(torch.nn.Linear(4, 4), r=2, alpha=4)
    layer.merge()
    with pytest.raises(LlmtrainError, match="already merged"):
        layer.merge()


def test_adapter_for_another_shape_is_refused(tmp_path, base, toy_dir):
    theirs = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=TARGETS, task_type="CAUSAL_LM"))
    theirs.save_pretrained(tmp_path / "adapter")
    config = AutoConfig.from_pretrained(toy_dir)
    config.hidden_size, config.intermediate_size = 64, 160
    other = AutoModelForCausalLM.from_config(config)
    with pytest.raises(LlmtrainError, match=r"does not fit this base model \(size mismatch"):
        load_adapter(other, str(tmp_path / "adapter"))
    assert load_adapter(copy.deepcopy(base), str(tmp_path / "adapter")) is not None
