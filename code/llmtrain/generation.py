"""6.2: talk to a fine-tuned model: the chat template renders the prompt, `generate` writes the reply.

Used by code/chat.py and the notebooks (not by training).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llmtrain.tokenizer import DEFAULT_SYSTEM_MESSAGE, IM_END


@torch.no_grad()
def greedy_token_ids(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    question: str,
    max_new_tokens: int = 64,
    system_message: str = DEFAULT_SYSTEM_MESSAGE,
) -> list[int]:
    """6.2.2: the token ids of one greedy reply to `question`, special tokens kept (so a run of <|endoftext|> shows).

    The prompt is rendered with the tokenizer's ChatML template; generation stops at `<|im_end|>`,
    the token SFT taught the model to end its replies with.
    """
    messages = [{"role": "system", "content": system_message}, {"role": "user", "content": question}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    model.eval()
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                            eos_token_id=tokenizer.convert_tokens_to_ids(IM_END), pad_token_id=tokenizer.pad_token_id)
    return output[0, inputs["input_ids"].shape[1]:].tolist()


def chat(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    question: str,
    max_new_tokens: int = 64,
    system_message: str = DEFAULT_SYSTEM_MESSAGE,
) -> str:
    """6.2: one greedy reply to `question` as text (`greedy_token_ids`, special tokens dropped)."""
    return tokenizer.decode(greedy_token_ids(model, tokenizer, question, max_new_tokens, system_message),
                            skip_special_tokens=True)
