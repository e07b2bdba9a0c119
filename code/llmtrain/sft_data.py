"""6.2.2: SFT data: conversations -> ChatML token ids + labels that supervise only the assistant replies.

Fixes over the chapter's `preprocess`: the ignore id is -100 (the chapter used the pad id, so the
model was trained to predict padding over every prompt and pad position), samples are not padded
to 2048 (batches are padded to their longest sample, or packed without any padding), and the
supervised positions come from character offsets of one tokenization of the whole rendered text,
so they are right for any tokenizer, whatever it does with "\\n" or role names.
On the scripts' training path (code/finetune.py; DPO renders its pairs with the same ChatML).
"""

from __future__ import annotations

import logging
from typing import Any

import datasets
import torch
from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening, PreTrainedTokenizerBase

from llmtrain.errors import LlmtrainError
from llmtrain.jsonl import load_jsonl, preview
from llmtrain.tokenizer import DEFAULT_SYSTEM_MESSAGE, IM_END, IM_START

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # what transformers' cross-entropy skips
ROLES = {"human": "user", "user": "user", "assistant": "assistant", "system": "system"}
FORMAT_HINT = (
    'each line must be one JSON object like {"conversations": [{"from": "human", "value": "..."}, '
    '{"from": "assistant", "value": "..."}], "id": "..."} (OpenAI-style {"role", "content"} turns work too)'
)


def normalize_conversation(
    conversations: Any, system_message: str = DEFAULT_SYSTEM_MESSAGE
) -> list[dict[str, str]]:
    """6.2.2: BelleGroup (`from`/`value`) or OpenAI (`role`/`content`) turns -> chat messages, system first.

    "human" becomes Qwen's "user" role. A leading system turn replaces `system_message`; leading
    assistant turns are dropped, as the chapter does, so the conversation opens with the user.
    """
    if not isinstance(conversations, list) or not conversations:
        raise LlmtrainError(f"'conversations' must be a non-empty list of turns, got {preview(conversations)}")
    messages = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict):
            raise LlmtrainError(f"turn {i} is not an object: {preview(turn)}")
        role = turn.get("from", turn.get("role"))
        content = turn.get("value", turn.get("content"))
        if role not in ROLES:
            raise LlmtrainError(f"turn {i} has unknown role {role!r}; expected one of {sorted(ROLES)}")
        if not isinstance(content, str):
            raise LlmtrainError(f"turn {i} ({role}) has a non-string value {preview(content)}")
        messages.append({"role": ROLES[role], "content": content})
    if messages[0]["role"] == "system":
        system_message = messages.pop(0)["content"]
    while messages and messages[0]["role"] == "assistant":
        messages.pop(0)
    if any(m["role"] == "system" for m in messages):
        raise LlmtrainError("a system turn may only come first")
    if not any(m["role"] == "assistant" for m in messages):
        raise LlmtrainError("the conversation has no assistant reply to learn from")
    return [{"role": "system", "content": system_message}, *messages]


def render_chatml(messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """6.2.2: Qwen's ChatML text for `messages`, and the character spans SFT supervises.

    Each turn is `<|im_start|>{role}\\n{content}<|im_end|>\\n`; the supervised spans are each
    assistant reply plus the `<|im_end|>` that closes it, so the model also learns to stop.
    """
    text, spans = "", []
    for m in messages:
        text += f"{IM_START}{m['role']}\n"
        if m["role"] == "assistant":
            spans.append((len(text), len(text) + len(m["content"]) + len(IM_END)))
        text += f"{m['content']}{IM_END}\n"
    return text, spans


def _is_single_token(tokenizer: PreTrainedTokenizerBase, token: str) -> bool:
    token_id = tokenizer.convert_tokens_to_ids(token)
    return (token_id is not None and token_id != tokenizer.unk_token_id
            and tokenizer(token, add_special_tokens=False)["input_ids"] == [token_id])


def check_chat_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """6.2.2: the tokenizer must be a fast one that keeps `<|im_start|>` and `<|im_end|>` as single tokens."""
    missing = [t for t in (IM_START, IM_END) if not _is_single_token(tokenizer, t)]
    if missing:
        raise LlmtrainError(
            f"The tokenizer has no ChatML special token(s) {', '.join(missing)}. Add them with "
            f"tokenizer.add_special_tokens({{'additional_special_tokens': {[IM_START, IM_END]}}}) and "
            "model.resize_token_embeddings(len(tokenizer)), then save both."
        )
    if not tokenizer.is_fast:
        raise LlmtrainError("SFT label masks need a fast tokenizer (character offsets); load it with use_fast=True.")


def tokenize_conversation(
    conversations: Any,
    tokenizer: PreTrainedTokenizerBase,
    max_len: int,
    system_message: str = DEFAULT_SYSTEM_MESSAGE,
) -> dict[str, list[int]]:
    """6.2.2: one conversation -> {"input_ids", "labels"}, unpadded, at most `max_len` tokens.

    Labels are -100 except on the tokens of each assistant reply and its closing `<|im_end|>`.
    The whole ChatML text is tokenized at once (exactly as `apply_chat_template` does) and a token
    is supervised when its characters overlap a reply span. After truncation a sample may have
    no supervised token left; `build_sft_dataset` drops and counts those.
    """
    text, spans = render_chatml(normalize_conversation(conversations, system_message))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = enc["input_ids"]
    labels = [
        token if any(start < end_span and end > start_span for start_span, end_span in spans) else IGNORE_INDEX
        for token, (start, end) in zip(input_ids, enc["offset_mapping"])
    ]
    return {"input_ids": input_ids[:max_len], "labels": labels[:max_len]}


def load_sft_dataset(train_files: list[str], max_train_samples: int | None = None) -> datasets.Dataset:
    """6.2.2: load SFT JSON lines with `datasets` (memory-mapped, so a 3.5M-line file is fine).

    `max_train_samples` keeps the first N samples (the chapter hard-coded 10,000 lines).
    """

    def check(record: Any, path: str, lineno: int) -> None:
        if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
            raise LlmtrainError(f"{path} line {lineno}: no 'conversations' list in {preview(record)}; {FORMAT_HINT}.")

    ds = load_jsonl(train_files, "conversations", check, FORMAT_HINT)
    if max_train_samples is not None:
        ds = ds.select(range(min(max_train_samples, len(ds))))
    return ds


def build_sft_dataset(
    raw: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    max_len: int,
    num_proc: int | None = None,
    system_message: str = DEFAULT_SYSTEM_MESSAGE,
) -> datasets.Dataset:
    """6.2.2: tokenize every conversation (`tokenize_conversation`); drop and count the unsupervised ones.

    A malformed conversation stops the run with an error naming the sample (index and id).
    """
    check_chat_tokenizer(tokenizer)

    def tokenize(example: dict[str, Any], index: int) -> dict[str, list[int]]:
        try:
            return tokenize_conversation(example["conversations"], tokenizer, max_len, system_message)
        except LlmtrainError as err:
            name = f"sample {index}" + (f" (id {example['id']!r})" if example.get("id") is not None else "")
            raise LlmtrainError(f"{name}: {err}") from None

    tokenized = raw.map(tokenize, with_indices=True, num_proc=num_proc, remove_columns=raw.column_names,
                        desc="Rendering ChatML and masking labels")
    kept = tokenized.filter(lambda ex: any(t != IGNORE_INDEX for t in ex["labels"]), num_proc=num_proc)
    dropped = len(tokenized) - len(kept)
    if dropped:
        logger.warning("Dropped %d of %d samples: no assistant token left within %d tokens", dropped,
                       len(tokenized), max_len)
    if len(kept) == 0:
        raise LlmtrainError(f"No sample keeps an assistant token within {max_len} tokens: raise --block_size.")
    logger.info("%d conversations ready for SFT (max %d tokens)", len(kept), max_len)
    return kept


def make_collator(tokenizer: PreTrainedTokenizerBase, packing: bool) -> Any:
    """6.2.2: batches without the chapter's padding to 2048.

    packing=True: padding-free packing (transformers' DataCollatorWithFlattening): the batch's
    conversations go end to end in one row, position_ids restart at each one, and with no
    attention mask the model keeps attention inside each conversation (needs use_cache=False,
    see `llmtrain.training.build_trainer`). packing=False: pad to the longest sample, labels with -100.
    """
    if packing:
        return DataCollatorWithFlattening()
    return DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=IGNORE_INDEX)


def packed_position_ids(examples: list[dict[str, list[int]]]) -> torch.Tensor:
    """6.2.2: the position_ids of a padding-free packed batch, shape (1, total tokens): 0, 1, 2, ... per sample.

    The same ids `DataCollatorWithFlattening` (make_collator(packing=True)) builds: counting restarts at 0 at
    each conversation, and that restart is where the model cuts the attention into per-conversation blocks.
    """
    return torch.tensor([[position for ex in examples for position in range(len(ex["input_ids"]))]])


def textbook_padded(example: dict[str, list[int]], pad_token_id: int, max_len: int = 2048) -> dict[str, list[int]]:
    """6.2.2: the chapter's version of a sample, kept to measure its defects: pad to `max_len`, and use
    the pad id as the "ignore" label, which cross-entropy does not ignore."""
    n_pad = max_len - len(example["input_ids"])
    labels = [pad_token_id if t == IGNORE_INDEX else t for t in example["labels"]]
    return {
        "input_ids": example["input_ids"] + [pad_token_id] * n_pad,
        "labels": labels + [pad_token_id] * n_pad,
        "attention_mask": [1] * len(example["input_ids"]) + [0] * n_pad,
    }


def pad_to_length(example: dict[str, list[int]], pad_token_id: int, max_len: int) -> dict[str, list[int]]:
    """6.2.2: `textbook_padded`'s layout with the right ignore id: pad to `max_len`, labels -100 off the replies.

    Side by side with `textbook_padded`, only the labels differ, so a run with each shows what the pad id does.
    """
    n_pad = max_len - len(example["input_ids"])
    return {
        "input_ids": example["input_ids"] + [pad_token_id] * n_pad,
        "labels": example["labels"] + [IGNORE_INDEX] * n_pad,
        "attention_mask": [1] * len(example["input_ids"]) + [0] * n_pad,
    }


def chat_template_agreement(conversations: list[Any], tokenizer: PreTrainedTokenizerBase) -> list[dict[str, bool]]:
    """6.2.2: check `tokenize_conversation` against `apply_chat_template(..., return_assistant_tokens_mask=True)`.

    One dict per conversation: same token ids, same supervision mask, and whether the template's mask marks
    anything at all (a template without `{% generation %}` returns an all-zero mask and only a warning).
    """
    results = []
    for conv in conversations:
        ours = tokenize_conversation(conv, tokenizer, max_len=1 << 30)
        ref = tokenizer.apply_chat_template(normalize_conversation(conv), tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        results.append({"same_ids": ours["input_ids"] == ref["input_ids"],
                        "same_mask": [t != IGNORE_INDEX for t in ours["labels"]] == [bool(m) for m in ref["assistant_masks"]],
                        "mask_nonempty": sum(ref["assistant_masks"]) > 0})
    return results
