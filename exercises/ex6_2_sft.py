"""练习 6.2 有监督微调:只监督助手回答的 labels,以及无 padding 打包时的 position_ids。

把每个函数里的 `raise NotImplementedError` 换成你的实现,然后运行
`make check-exercises EX=6.2`(或 `python -m exercises.check --notebook 6.2`)。
做完再对照课程的实现:llmtrain/sft_data.py 里的同名函数。
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from llmtrain.sft_data import normalize_conversation  # 可以直接用:BelleGroup 格式 -> 以 system 开头的 messages
from llmtrain.tokenizer import DEFAULT_SYSTEM_MESSAGE


def tokenize_conversation(
    conversations: Any,
    tokenizer: PreTrainedTokenizerBase,
    max_len: int,
    system_message: str = DEFAULT_SYSTEM_MESSAGE,
) -> dict[str, list[int]]:
    """一段对话 -> `{"input_ids": [...], "labels": [...]}`,不补齐,最多 `max_len` 个 token。

    输入:BelleGroup 格式的轮次,如 `[{"from": "human", "value": "..."}, {"from": "assistant", "value": "..."}]`;
    `normalize_conversation(conversations, system_message)` 把它变成 `[{"role": "system", ...}, {"role": "user", ...}, ...]`。
    input_ids:整段 ChatML 文本 `<|im_start|>{role}\\n{content}<|im_end|>\\n`(每轮一段)一次分词
    (`add_special_tokens=False`),与 `tokenizer.apply_chat_template(messages)` 的结果相同。
    labels:助手每条回答的 token 及紧随其后的 `<|im_end|>` 等于 input_ids,其余位置(system、user、
    `<|im_start|>assistant\\n` 这一行开头、轮与轮之间的换行)都是 -100。
    超过 `max_len` 时两者都只保留前 `max_len` 个。提示:`return_offsets_mapping=True` 给出每个 token 的字符区间。
    """
    raise NotImplementedError


def packed_position_ids(examples: list[dict[str, list[int]]]) -> torch.Tensor:
    """无 padding 打包的一批样本的 position_ids:形状 (1, 总 token 数) 的整数张量。

    输入:若干个样本,每个有 `"input_ids"`。打包时它们首尾相接放进同一行;
    每段对话的位置编号都从 0 开始重新数:0, 1, 2, ..., 下一段又从 0 开始。
    这正是 transformers 的 `DataCollatorWithFlattening` 给出的 position_ids;模型也是从编号回到 0 的地方
    把注意力切成一段一段,使一段对话看不到别的对话。
    """
    raise NotImplementedError
