"""6.1.2: toy assets load like a downloaded Qwen2.5 folder; parameter counts match the formula."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from llmtrain.errors import LlmtrainError
from llmtrain.modeling import count_parameters, load_model, qwen2_5_1_5b_config, qwen2_parameter_formula
from llmtrain.tokenizer import IM_END, IM_START


def test_toy_folder_loads_like_a_qwen_folder(toy_dir, toy_tokenizer):
    config = AutoConfig.from_pretrained(toy_dir)
    assert config.model_type == "qwen2"
    assert config.num_key_value_heads < config.num_attention_heads  # GQA
    assert config.tie_word_embeddings
    assert config.vocab_size == len(toy_tokenizer)
    eos = toy_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert toy_tokenizer.eos_token_id == toy_tokenizer.pad_token_id == eos == config.eos_token_id
    assert all(toy_tokenizer.convert_tokens_to_ids(t) != toy_tokenizer.unk_token_id for t in (IM_START, IM_END))
    # Each special token is one id, never split by BPE.
    assert len(toy_tokenizer(f"{IM_START}user\n你好{IM_END}")["input_ids"]) >= 3
    assert toy_tokenizer(IM_START)["input_ids"] == [toy_tokenizer.convert_tokens_to_ids(IM_START)]


def test_chat_template_marks_exactly_the_assistant_reply(toy_tokenizer):
    messages = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好,有什么可以帮你?"}]
    out = toy_tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    text = toy_tokenizer.decode(out["input_ids"])
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    supervised = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert toy_tokenizer.decode(supervised) == "你好,有什么可以帮你?<|im_end|>"


def test_toy_model_parameter_count_matches_formula(toy_dir):
    model = load_model(str(toy_dir), None)
    assert count_parameters(model) == qwen2_parameter_formula(model.config)
    assert model.config._attn_implementation == "sdpa"


def test_formula_counts_an_untied_head():
    config = qwen2_5_1_5b_config()
    config.tie_word_embeddings = False
    config.num_hidden_layers = 1
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert count_parameters(model) == qwen2_parameter_formula(config)


def test_qwen2_5_1_5b_counted_on_meta_device():
    config = qwen2_5_1_5b_config()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    n = count_parameters(model)
    assert n == qwen2_parameter_formula(config)
    assert 1.5e9 < n < 1.6e9  # "1.5B", as the model card says


def test_missing_model_folder_is_named(tmp_path):
    with pytest.raises(LlmtrainError, match=r"--config_name .*nowhere: no such folder.*download_model\.py"):
        load_model(str(tmp_path / "nowhere"), None)
    with pytest.raises(LlmtrainError, match=r"--model_name_or_path .*nowhere: no such folder"):
        load_model(None, str(tmp_path / "nowhere"))
    with pytest.raises(LlmtrainError, match="Pass --config_name"):
        load_model(None, None)
