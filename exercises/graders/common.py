"""What every grader shares: the `Wrong` verdict, the toy assets and their variants, and small comparisons.

A grader runs the learner's code on real inputs (the toy tokenizer, the sample data, a randomly initialised toy
Qwen2) and on variants built to expose a plausible wrong answer: a tokenizer whose pad token differs from its
EOS, one whose BPE merges across the places a turn-by-turn tokenization would cut, and one whose chat template
has no `{% generation %}` mask.
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from typing import Any

import torch

from llmtrain import PROJECT_ROOT

SAMPLE = PROJECT_ROOT / "data" / "sample"
KEY = re.compile(r"^[A-Za-z0-9_]+\.[a-z0-9_]+$")


class Wrong(Exception):
    """The learner's answer is wrong. `key` ("exercise.mistake") names the mistake, the message teaches it.

    Every key is a string literal in the graders' source, so the tests can list them all and check that a
    planted mistake triggers each one.
    """

    def __init__(self, key: str, message: str) -> None:
        if not KEY.match(key):
            raise ValueError(f"message key {key!r} is not 'exercise.mistake'")
        super().__init__(message)
        self.key = key


# ---------------------------------------------------------------- tokenizers


def load_toy_tokenizer() -> Any:
    """A fresh copy of the course's toy tokenizer (artifacts/toy, built in a second or two when missing)."""
    from transformers import AutoTokenizer

    from llmtrain.toy import ensure_toy_assets

    return AutoTokenizer.from_pretrained(ensure_toy_assets())


@lru_cache(maxsize=1)
def toy_tokenizer() -> Any:
    """The toy tokenizer, shared by the graders (never modified)."""
    return load_toy_tokenizer()


@lru_cache(maxsize=1)
def tokenizer_with_own_pad() -> Any:
    """The toy tokenizer plus a pad token of its own: pad != eos, as in Qwen2.5-Instruct (pad <|endoftext|>,
    eos <|im_end|>). On the toy tokenizer pad == eos, so an answer that mixes them up cannot be told apart."""
    tokenizer = load_toy_tokenizer()
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    return tokenizer


@lru_cache(maxsize=1)
def tokenizer_adding_bos() -> Any:
    """The toy tokenizer with a BOS token that `tokenizer(text)` puts in front by default, as Llama's does."""
    from tokenizers.processors import TemplateProcessing

    tokenizer = load_toy_tokenizer()
    tokenizer.add_special_tokens({"bos_token": "<s>"})
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.bos_token_id)])
    assert tokenizer("你好")["input_ids"][0] == tokenizer.bos_token_id
    assert tokenizer("你好", add_special_tokens=False)["input_ids"][0] != tokenizer.bos_token_id
    return tokenizer


def byte_level_token(text: str) -> str:
    """How byte-level BPE spells `text` in its vocabulary (each UTF-8 byte mapped to one printable character)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    table = bytes_to_unicode()
    return "".join(table[b] for b in text.encode("utf-8"))


@lru_cache(maxsize=1)
def tokenizer_merging_across_turns() -> Any:
    """A toy tokenizer whose BPE merges "\\n" with the character after it, across the boundary between
    `<|im_start|>assistant\\n` and the reply (and between any "\\n" and a following CJK character).

    The toy tokenizer cuts text into one pre-token per character, so tokenizing each part of a conversation on its
    own gives the same ids as tokenizing it whole; BPE tokenizers in general (Qwen2.5's real one included) do not
    promise that. Here the pre-tokenizer is dropped and one merge per character is added, so only a tokenization of
    the whole text gives the ids `apply_chat_template` gives.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from llmtrain.tokenizer import IM_END, IM_START

    base = toy_tokenizer()
    data = json.loads(base.backend_tokenizer.to_str())
    data["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                             "use_regex": False}
    vocab, merges = data["model"]["vocab"], data["model"]["merges"]
    next_id = max(max(vocab.values()), max(t["id"] for t in data["added_tokens"])) + 1
    newline = byte_level_token("\n")
    for text in sample_reply_openings():
        piece = byte_level_token(text)
        if piece not in vocab:  # the character is not one token of the toy vocabulary: no merge to add
            continue
        vocab[newline + piece] = next_id
        merges.append([newline, piece] if isinstance(merges[0], list) else f"{newline} {piece}")
        next_id += 1
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)), eos_token=base.eos_token, pad_token=base.pad_token,
        additional_special_tokens=[IM_START, IM_END], chat_template=base.chat_template,
        clean_up_tokenization_spaces=False)
    assert len(tokenizer("\n" + sample_reply_openings()[0], add_special_tokens=False)["input_ids"]) == 1
    return tokenizer


@lru_cache(maxsize=1)
def tokenizer_without_generation_mask() -> Any:
    """The toy tokenizer with its chat template stripped of `{% generation %}`, like Qwen2.5's stock template:
    `apply_chat_template(..., return_assistant_tokens_mask=True)` then returns an all-zero mask."""
    tokenizer = load_toy_tokenizer()
    tokenizer.chat_template = re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", tokenizer.chat_template)
    assert "endgeneration" not in tokenizer.chat_template
    return tokenizer


# ---------------------------------------------------------------- sample data


@lru_cache(maxsize=1)
def sample_documents() -> tuple[str, ...]:
    """The first eight documents of the pretraining sample corpus."""
    from llmtrain.pretrain_data import read_jsonl_texts

    texts = read_jsonl_texts(str(SAMPLE / "pretrain.jsonl"))
    return tuple(next(texts) for _ in range(8))


@lru_cache(maxsize=1)
def sample_conversations() -> tuple[tuple[str, list[dict[str, str]]], ...]:
    """A single-turn and a two-turn conversation from data/sample/sft.jsonl, with their ids."""
    from llmtrain.jsonl import iter_jsonl

    rows = [record for _, record in iter_jsonl(str(SAMPLE / "sft.jsonl"), "SFT conversations")]
    single = next(r for r in rows if len(r["conversations"]) == 2)
    double = next(r for r in rows if sum(t["from"] == "human" for t in r["conversations"]) == 2)
    return (single["id"], single["conversations"]), (double["id"], double["conversations"])


def sample_reply_openings() -> list[str]:
    """The first character of every assistant reply in `sample_conversations`."""
    return sorted({turn["value"][0] for _, conv in sample_conversations() for turn in conv
                   if turn["from"] == "assistant"})


@lru_cache(maxsize=1)
def sample_preference_pairs() -> tuple[dict[str, list[int]], ...]:
    """Two tokenized preference pairs from data/sample/dpo.jsonl (`llmtrain.dpo.tokenize_preference`): two, so
    that chosen-first halves and interleaved rows differ."""
    from llmtrain.dpo import normalize_preference, tokenize_preference
    from llmtrain.jsonl import iter_jsonl

    records = iter_jsonl(str(SAMPLE / "dpo.jsonl"), "preference pairs")
    return tuple(tokenize_preference(normalize_preference(next(records)[1]), toy_tokenizer(), 256)
                 for _ in range(2))


# ---------------------------------------------------------------- models


def toy_model(seed: int, **config_overrides: Any) -> torch.nn.Module:
    """A randomly initialised toy Qwen2 (artifacts/toy/config.json with one of its 4 layers: depth changes nothing a
    grader checks, and graders run many forward passes), in eval mode; `config_overrides` change the config first
    (e.g. attention_dropout)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from llmtrain.toy import ensure_toy_assets

    config = AutoConfig.from_pretrained(ensure_toy_assets())
    config.num_hidden_layers, config.layer_types = 1, config.layer_types[:1]
    for key, value in config_overrides.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


# ---------------------------------------------------------------- comparisons and formatting


def human_bytes(n: float) -> str:
    """'1.23 GiB' from a byte count, or MiB below one GiB."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


def span_text(first: int, last: int) -> str:
    """'12–20' for a run, '12' for one position."""
    return f"{first}" if first == last else f"{first}–{last}"


def first_difference(got: list[Any], expected: list[Any]) -> int:
    """The first position where two lists differ (the shorter length when one is a prefix of the other)."""
    return next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))


def as_int_rows(value: Any, what: str) -> list[list[int]]:
    """A list of token lists from the learner (lists or tensors), or `Wrong` saying what came back instead."""
    try:
        return [[int(t) for t in row] for row in value]
    except (TypeError, ValueError):
        raise Wrong("common.not_token_lists",
                    f"{what} 应是若干个 token 列表(list[list[int]]),你返回的是 {type(value).__name__}") from None


def loss_of(result: Any, exercise: str) -> torch.Tensor:
    """The loss inside a learner's result: the tensor itself, its `.loss`, or its first item."""
    if isinstance(result, torch.Tensor):
        loss = result
    elif hasattr(result, "loss"):
        loss = result.loss
    elif isinstance(result, (tuple, list)) and result:
        loss = result[0]
    else:
        loss = result
    if not isinstance(loss, torch.Tensor):
        raise Wrong("common.loss_not_tensor",
                    f"{exercise} 应返回 loss 张量(或 .loss / 第一项是 loss 的对象、元组),你的 loss 是 "
                    f"{type(loss).__name__}:不要用 .item() 或 float(),梯度要从 loss 传回模型")
    return loss


def close(got: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-6) -> bool:
    """Same shape and values within tolerance (the learner's tensor compared in float64, detached)."""
    got = got.detach().to(torch.float64)
    expected = expected.detach().to(torch.float64)
    return got.shape == expected.shape and bool(torch.allclose(got, expected, rtol=rtol, atol=atol))


def gradients(value: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """d value / d each input (zeros where the input does not take part), without touching `.grad`."""
    found = torch.autograd.grad(value, inputs, allow_unused=True, retain_graph=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(found, inputs)]


def largest_gap(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """The largest absolute element-wise difference between two lists of tensors."""
    return max((x.detach().double() - y.detach().double()).abs().max().item() for x, y in zip(a, b))


def relative_gap(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """||a - b|| / ||b|| over all tensors together: how far a gradient is from the right one, for its size."""
    diff = math.sqrt(sum(((x.detach().double() - y.detach().double()) ** 2).sum().item() for x, y in zip(a, b)))
    size = math.sqrt(sum((y.detach().double() ** 2).sum().item() for y in b))
    return diff / size if size > 0 else diff
