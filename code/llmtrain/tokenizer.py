"""6.1.2 / 6.2.2: a toy byte-level BPE tokenizer with Qwen's special tokens and ChatML template.

The course has no model hub, so the tokenizer the chapter downloads with Qwen2.5 is replaced by
one trained here on the sample corpus. It is saved in the same layout as a downloaded Qwen2.5
folder, so `AutoTokenizer.from_pretrained(folder)` treats both alike. Builds the toy assets (`make toy`);
not on a training path.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [EOS_TOKEN, IM_START, IM_END]
DEFAULT_SYSTEM_MESSAGE = "You are a helpful assistant."

# Qwen2.5's ChatML layout; the assistant reply and its closing <|im_end|> sit inside
# {% generation %} so that apply_chat_template(..., return_assistant_tokens_mask=True) can mark
# exactly the tokens SFT trains on (6.2.2).
CHATML_TEMPLATE = (
    "{%- if not messages or messages[0]['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM_MESSAGE + "<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def train_toy_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """6.1.2: train a byte-level BPE tokenizer (Qwen's special tokens, ChatML template) on `texts`.

    Byte-level BPE covers any string, so the tokenizer never produces an unknown token; the
    special tokens get the first ids, and `<|endoftext|>` is both EOS and PAD as in Qwen2.5.
    Unlike Qwen's, every non-ASCII character is its own pre-token, so merges stay inside one
    character: on a corpus this small, BPE would otherwise spend the vocabulary on frequent
    multi-character words and leave rare characters as partial UTF-8 bytes (decoded as "\ufffd").
    Merging stops once every character of `texts` is one token, so `vocab_size` is an upper bound.
    """
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[^\x00-\x7f]"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        additional_special_tokens=[IM_START, IM_END],
        chat_template=CHATML_TEMPLATE,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )


def decode_showing_partial_bytes(tokenizer, ids: list[int]) -> str:
    """6.5: decode `ids` (special tokens dropped) with any incomplete UTF-8 sequence shown as \\xNN, not "\ufffd".

    A sampled reply can end a character halfway: byte-level BPE keeps single bytes and partial
    characters in its vocabulary, and temperature-1 sampling sometimes picks one. `decode` turns those
    bytes into "\ufffd"; this shows which bytes the model actually produced.
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode  # the byte <-> character map of byte-level BPE

    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
    tokens = tokenizer.convert_ids_to_tokens([i for i in ids if i not in tokenizer.all_special_ids])
    raw = bytes(byte_of[char] for token in tokens for char in token)
    return raw.decode("utf-8", errors="backslashreplace")
