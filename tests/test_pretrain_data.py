"""6.1.3: loading, tokenizing (+EOS) and grouping the pretraining corpus; bad input is named precisely."""

from __future__ import annotations

import json

import pytest

from llmtrain.errors import LlmtrainError
from llmtrain.pretrain_data import build_pretrain_dataset, group_texts, load_text_dataset, read_jsonl_texts
from conftest import SAMPLE_PRETRAIN


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def test_group_texts_gives_full_blocks_and_labels_equal_inputs():
    docs = {"input_ids": [[1, 2, 3, 0], [4, 5, 0], [6, 7, 8, 9, 0]]}  # 12 tokens
    out = group_texts(docs, block_size=5)
    assert out["input_ids"] == [[1, 2, 3, 0, 4], [5, 0, 6, 7, 8]]  # 2 tokens dropped
    assert out["labels"] == out["input_ids"]
    assert out["labels"][0] is not out["input_ids"][0]  # a copy, not an alias


def test_sample_corpus_blocks_are_full_and_documents_are_separated_by_eos(toy_tokenizer):
    raw = load_text_dataset([str(SAMPLE_PRETRAIN)])
    batch = 1000  # build_pretrain_dataset's map_batch_size: each batch of documents is grouped on its own
    blocks = build_pretrain_dataset(raw, toy_tokenizer, block_size=64, map_batch_size=batch)
    eos = toy_tokenizer.eos_token_id
    texts = list(read_jsonl_texts(str(SAMPLE_PRETRAIN)))
    assert len(texts) > batch, "the sample corpus should span several map batches"
    assert all(len(ids) == 64 for ids in blocks["input_ids"])
    assert blocks["labels"] == blocks["input_ids"]
    # Per batch of documents, the concatenation of its blocks is exactly its documents, each followed by EOS,
    # in order, less a remainder shorter than one block.
    expected = []
    for start in range(0, len(texts), batch):
        tokens = [t for text in texts[start:start + batch]
                  for t in toy_tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]]
        expected += tokens[: len(tokens) // 64 * 64]
    flat = [t for ids in blocks["input_ids"] for t in ids]
    assert flat == expected
    assert flat.count(eos) > len(texts) // 2


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", ['{"text": "一"}', '{"text": "二"}', '{"text": "三"'])
    with pytest.raises(LlmtrainError, match=r"bad\.jsonl line 3: not valid JSON"):
        load_text_dataset([path])


@pytest.mark.parametrize("record", [{"content": "没有 text 字段"}, {"text": 42}, {"text": None}, ["text"]])
def test_line_without_string_text_is_named(tmp_path, record):
    path = write_lines(tmp_path / "c.jsonl", ['{"text": "第一行"}', json.dumps(record, ensure_ascii=False)])
    with pytest.raises(LlmtrainError, match=r'c\.jsonl line 2: no string "text" field'):
        load_text_dataset([path])


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(LlmtrainError, match=r"empty\.jsonl is empty"):
        load_text_dataset([str(empty)])
    blank = write_lines(tmp_path / "blank.jsonl", ["", "  "])
    with pytest.raises(LlmtrainError, match=r"blank\.jsonl has no data lines"):
        load_text_dataset([blank])
    with pytest.raises(LlmtrainError, match=r"nope\.jsonl: no such file"):
        load_text_dataset([str(tmp_path / "nope.jsonl")])


def test_corpus_smaller_than_one_block_says_how_many_tokens(tmp_path, toy_tokenizer):
    path = write_lines(tmp_path / "tiny.jsonl", ['{"text": "春天来得很慢。"}'])
    n_tokens = len(toy_tokenizer("春天来得很慢。")["input_ids"]) + 1
    with pytest.raises(LlmtrainError, match=rf"has {n_tokens} tokens \(EOS included\) but one block needs 512"):
        build_pretrain_dataset(load_text_dataset([path]), toy_tokenizer, block_size=512)
