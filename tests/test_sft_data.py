"""6.2.2: ChatML rendering and SFT label masks, checked against transformers; collators; bad input."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast, TrainingArguments

from conftest import ROOT
from llmtrain.errors import LlmtrainError
from llmtrain.sft_data import (
    IGNORE_INDEX, build_sft_dataset, chat_template_agreement, load_sft_dataset, make_collator, normalize_conversation,
    tokenize_conversation,
)
from llmtrain.tokenizer import CHATML_TEMPLATE, EOS_TOKEN, IM_END, IM_START
from llmtrain.training import build_trainer

SAMPLE_SFT = ROOT / "data" / "sample" / "sft.jsonl"
MULTI_TURN = [
    {"from": "human", "value": "2加3等于几?"}, {"from": "assistant", "value": "2加3等于5。"},
    {"from": "human", "value": "再加4呢?"}, {"from": "assistant", "value": "5加4等于9。"},
]


def supervised_text(tokenizer, example) -> str:
    return tokenizer.decode([t for t in example["labels"] if t != IGNORE_INDEX])


def sample_conversations():
    return [json.loads(line)["conversations"] for line in SAMPLE_SFT.read_text(encoding="utf-8").splitlines()]


def unpretokenized_tokenizer() -> PreTrainedTokenizerFast:
    """A BPE without pre-tokenization: merges run across "\\n", role names and reply boundaries,
    unlike the toy tokenizer (and Qwen2.5's), so no assumption about such splits can hold."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    texts = [f"user\n{t['value']}\nassistant\n" for conv in sample_conversations() for t in conv]
    backend.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=600, special_tokens=[EOS_TOKEN, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN,
                                   additional_special_tokens=[IM_START, IM_END], chat_template=CHATML_TEMPLATE)


def test_only_assistant_replies_and_their_im_end_are_supervised(toy_tokenizer):
    example = tokenize_conversation(MULTI_TURN, toy_tokenizer, max_len=512)
    assert len(example["input_ids"]) == len(example["labels"])
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(example["input_ids"], example["labels"]))
    assert supervised_text(toy_tokenizer, example) == "2加3等于5。<|im_end|>5加4等于9。<|im_end|>"
    text = toy_tokenizer.decode(example["input_ids"])
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n2加3等于几?<|im_end|>\n"
                    "<|im_start|>assistant\n2加3等于5。<|im_end|>\n<|im_start|>user\n再加4呢?<|im_end|>\n"
                    "<|im_start|>assistant\n5加4等于9。<|im_end|>\n")


def test_leading_assistant_turn_is_dropped_and_system_turn_kept():
    messages = normalize_conversation([{"from": "assistant", "value": "欢迎"}, *MULTI_TURN[:2]])
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    openai = [{"role": "system", "content": "你是老师。"}, {"role": "user", "content": "你好"},
              {"role": "assistant", "content": "同学好"}]
    assert normalize_conversation(openai)[0] == {"role": "system", "content": "你是老师。"}


@pytest.mark.parametrize("which", ["toy", "unpretokenized"])
def test_every_sample_matches_apply_chat_template_and_its_assistant_mask(toy_tokenizer, which):
    tokenizer = toy_tokenizer if which == "toy" else unpretokenized_tokenizer()
    conversations = sample_conversations()
    assert len(conversations) > 200
    # The same check notebook 6.2 shows (one library function for both).
    for conv, result in zip(conversations, chat_template_agreement(conversations, tokenizer)):
        assert result["same_ids"], conv
        assert result["mask_nonempty"], conv  # the template's {% generation %} really marks something
        assert result["same_mask"], conv


def test_truncation_keeps_max_len_and_drops_samples_without_supervision(tmp_path, toy_tokenizer, caplog):
    long_prompt = [{"from": "human", "value": "很长的问题" * 40}, {"from": "assistant", "value": "短回答。"}]
    path = tmp_path / "sft.jsonl"
    path.write_text("\n".join(json.dumps({"conversations": c, "id": i}, ensure_ascii=False)
                              for i, c in enumerate([MULTI_TURN, long_prompt])) + "\n", encoding="utf-8")
    assert len(tokenize_conversation(long_prompt, toy_tokenizer, max_len=30)["input_ids"]) == 30
    with caplog.at_level(logging.WARNING, logger="llmtrain"):
        ds = build_sft_dataset(load_sft_dataset([str(path)]), toy_tokenizer, max_len=100)
    assert len(ds) == 1 and "Dropped 1 of 2 samples" in caplog.text
    assert supervised_text(toy_tokenizer, ds[0]).startswith("2加3等于5。")


def test_max_train_samples_keeps_the_first_samples():
    assert len(load_sft_dataset([str(SAMPLE_SFT)], max_train_samples=7)) == 7


def write_jsonl(tmp_path, records) -> str:
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return str(path)


GOOD = {"conversations": MULTI_TURN[:2], "id": "ok-1"}


@pytest.mark.parametrize("bad, message", [
    ({"conversations": [{"from": "bot", "value": "嗨"}], "id": "x-7"}, "sample 1 (id 'x-7'): turn 0 has unknown role 'bot'"),
    ({"conversations": [{"from": "human", "value": 3}, {"from": "assistant", "value": "好"}], "id": "x-8"},
     "sample 1 (id 'x-8'): turn 0 (human) has a non-string value 3"),
    ({"conversations": [], "id": "x-6"}, "sample 1 (id 'x-6'): 'conversations' must be a non-empty list"),
    ({"conversations": [{"from": "human", "value": "只有问题"}], "id": "x-9"},
     "sample 1 (id 'x-9'): the conversation has no assistant reply"),
])
def test_bad_conversations_name_the_sample(tmp_path, toy_tokenizer, bad, message):
    raw = load_sft_dataset([write_jsonl(tmp_path, [GOOD, bad])])
    with pytest.raises(LlmtrainError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_sft_dataset(raw, toy_tokenizer, max_len=64)


def test_missing_conversations_names_the_line(tmp_path):
    with pytest.raises(LlmtrainError, match="bad.jsonl line 2: no 'conversations' list"):
        load_sft_dataset([write_jsonl(tmp_path, [GOOD, {"id": "m"}])])


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(GOOD, ensure_ascii=False) + "\n{\"conversations\": [\n", encoding="utf-8")
    with pytest.raises(LlmtrainError, match=r"broken\.jsonl line 2: not valid JSON"):
        load_sft_dataset([str(path)])


def test_tokenizer_without_chatml_tokens_says_what_to_add(toy_tokenizer):
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.train_from_iterator(["你好"], trainers.BpeTrainer(vocab_size=300, special_tokens=[EOS_TOKEN],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    plain = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS_TOKEN)
    raw = load_sft_dataset([str(SAMPLE_SFT)], max_train_samples=2)
    with pytest.raises(LlmtrainError, match=r"no ChatML special token\(s\) <\|im_start\|>, <\|im_end\|>.*add_special_tokens"):
        build_sft_dataset(raw, plain, max_len=64)


def test_dynamic_padding_pads_labels_with_ignore_index(toy_tokenizer):
    features = [tokenize_conversation(c, toy_tokenizer, 512) for c in sample_conversations()[:4]]
    batch = make_collator(toy_tokenizer, packing=False)(features)
    longest = max(len(f["input_ids"]) for f in features)
    assert batch["input_ids"].shape == batch["labels"].shape == (4, longest)
    pad = batch["attention_mask"] == 0
    assert pad.any() and (batch["labels"][pad] == IGNORE_INDEX).all()


def test_packed_conversations_do_not_attend_to_each_other(tmp_path, toy_dir, toy_tokenizer):
    """Run the model the way Trainer does (build_trainer's model, train mode, the packing collator)
    and compare each conversation's logits inside the pack with the conversation run alone."""
    features = [tokenize_conversation(c, toy_tokenizer, 512) for c in sample_conversations()[:5]]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(toy_dir))
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=5, use_cpu=True,
                             report_to="none", seed=0)
    trainer = build_trainer(model, args, toy_tokenizer, features, data_collator=make_collator(toy_tokenizer, True))
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch
    assert (batch["position_ids"] == 0).sum() == 5
    trainer.model.train()
    with torch.no_grad():
        packed = trainer.model(**batch).logits[0]
        starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
        for start, end in zip(starts, starts[1:]):
            alone = trainer.model(input_ids=batch["input_ids"][:, start:end]).logits[0]
            assert (packed[start:end] - alone).abs().max().item() < 1e-5
