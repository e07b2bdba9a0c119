"""6.1.2: build a causal LM from a config (pretraining from scratch) or from pretrained weights.

On the scripts' training path: every script loads its config, tokenizer and model here.
"""

from __future__ import annotations

import logging
import os

import torch
from transformers import (
    AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase,
    Qwen2Config,
)

from llmtrain.errors import LlmtrainError

logger = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "auto": "auto"}


def toy_config(vocab_size: int, eos_token_id: int) -> Qwen2Config:
    """6.1.2: a tiny Qwen2 config (GQA, tied embeddings; sdpa attention by default) that trains on a CPU in minutes.

    Same architecture family as Qwen2.5-1.5B, only narrower and shallower; see `qwen2_5_1_5b_config`.
    """
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=True,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
    )


def qwen2_5_1_5b_config() -> Qwen2Config:
    """6.1.2: the values of Qwen2.5-1.5B's config.json (figure 6.4), for comparison and meta-device counts."""
    return Qwen2Config(
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        max_position_embeddings=131072,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=151643,
        eos_token_id=151643,
    )


def qwen2_parameter_formula(config: PretrainedConfig) -> int:
    """6.1.2: Qwen2 parameter count from its config alone, no weights allocated.

    Tied embedding V·d, then per layer: q (d·d + d), k and v (d·kv + kv each, kv = KV heads × head
    size: GQA makes them narrow), o (d·d), the SwiGLU MLP (3·d·ffn) and two RMSNorms (2·d); plus the final norm d.
    """
    d = config.hidden_size
    kv = config.num_key_value_heads * (d // config.num_attention_heads)
    attention = (d * d + d) + 2 * (d * kv + kv) + d * d
    mlp = 3 * d * config.intermediate_size
    head = 0 if config.tie_word_embeddings else config.vocab_size * d
    return config.vocab_size * d + head + config.num_hidden_layers * (attention + mlp + 2 * d) + d


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """6.1.5 / 6.3: number of distinct parameters (or only those that train); tied embeddings count once.

    Works on the meta device too, so the 1.5B model can be counted without allocating it.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _check_folder(path: str, flag: str) -> None:
    """The course loads models from local folders only (offline-safe); a missing one is named early."""
    if not os.path.isdir(path):
        raise LlmtrainError(
            f"{flag} {path}: no such folder. Download the model first, e.g. "
            f"`python code/download_model.py --repo_id Qwen/Qwen2.5-1.5B --local_dir {path}`, "
            "or build the toy assets with `make toy` (artifacts/toy)."
        )


def load_config(name_or_path: str, trust_remote_code: bool = False, flag: str = "--config_name") -> PretrainedConfig:
    """6.1.2: `AutoConfig.from_pretrained` with a clear error, naming `flag`, when the folder is missing or unusable."""
    _check_folder(name_or_path, flag)
    try:
        return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise LlmtrainError(
            f"{flag} {name_or_path}: cannot load a model config ({err}). "
            "Point it at a folder holding config.json (a downloaded model or artifacts/toy)."
        ) from err


def load_model(
    config_name: str | None,
    model_name_or_path: str | None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """6.1.2 / 6.1.5: a fresh model from `config_name`, else pretrained weights from `model_name_or_path`.

    `trust_remote_code` stays off unless asked for: it runs Python code shipped in the model folder.
    """
    resolved = DTYPES[dtype] if dtype else None
    if config_name is not None:
        config = load_config(config_name, trust_remote_code)
        logger.warning("Initialising a new model from scratch (config %s)", config_name)
        model = AutoModelForCausalLM.from_config(config, dtype=resolved, trust_remote_code=trust_remote_code)
        what = "New model to pretrain"
    elif model_name_or_path is not None:
        _check_folder(model_name_or_path, "--model_name_or_path")
        logger.warning("Loading a pretrained model from %s", model_name_or_path)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                model_name_or_path, dtype=resolved, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as err:
            raise LlmtrainError(
                f"--model_name_or_path {model_name_or_path}: cannot load a causal LM ({err})."
            ) from err
        what = "Pretrained model to continue training"
    else:
        raise LlmtrainError("Pass --config_name (train from scratch) or --model_name_or_path (start from weights).")
    n_params = count_parameters(model)
    logger.info("%s - Total size=%.2fM params", what, n_params / 2**20)
    return model


def load_model_4bit(model_name_or_path: str, device: torch.device | str, compute_dtype: torch.dtype,
                    trust_remote_code: bool = False) -> PreTrainedModel:
    """6.3 (QLoRA): pretrained weights with every linear layer of the decoder stored in 4-bit NF4 on `device`.

    bitsandbytes keeps per 64 weights one 4-bit NF4 code each plus one absmax scale, itself quantised
    to 8 bits per block of 256 scales (double quantisation); matmuls dequantise to `compute_dtype`.
    The embeddings, norms and (tied) output layer are not quantised; peft's
    `prepare_model_for_kbit_training` then freezes everything and keeps those in fp32 for stable training.
    """
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise LlmtrainError("--use_qlora needs bitsandbytes: pip install -e . "
                            "(or train plain LoRA: drop --use_qlora / USE_QLORA).")
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    _check_folder(model_name_or_path, "--model_name_or_path")
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=compute_dtype)
    logger.info("Loading %s with 4-bit NF4 weights (double quantisation, %s compute) on %s",
                   model_name_or_path, str(compute_dtype).removeprefix("torch."), device)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_name_or_path, quantization_config=quantization,
                                                     device_map={"": device}, dtype=compute_dtype,
                                                     trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise LlmtrainError(f"--model_name_or_path {model_name_or_path}: cannot load in 4-bit ({err}).") from err
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    logger.info("4-bit model: %.1f MiB of weights and buffers (get_memory_footprint)", model.get_memory_footprint() / 2**20)
    return model


def load_tokenizer(path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """6.1.2: `AutoTokenizer.from_pretrained` from a local folder, with a clear error when it cannot load."""
    _check_folder(path, "--tokenizer_name")
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as err:
        raise LlmtrainError(f"--tokenizer_name {path}: cannot load a tokenizer ({err}).") from err


def resolve_block_size(config: PretrainedConfig, requested: int | None, default: int) -> int:
    """6.1.3 / 6.2.2: the --block_size to use: the requested one (checked), else min(default, the model's max
    positions)."""
    max_positions = getattr(config, "max_position_embeddings", None) or default
    if requested is None:
        return min(default, max_positions)
    if requested > max_positions:
        raise LlmtrainError(f"--block_size {requested} exceeds the model's max_position_embeddings {max_positions}.")
    return requested
