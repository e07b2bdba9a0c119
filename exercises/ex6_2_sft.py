"""练习 6.2 有监督微调:只监督助手回答的 labels,以及把对话组成 batch 的两种方式(动态补齐、无 padding 打包)。

把每个函数里的 `raise NotImplementedError` 换成你的实现,然后运行
`make check-exercises EX=6.2`(或 `python -m exercises.check --notebook 6.2`)。
评分程序除了玩具分词器,还会用一个 BPE 会跨轮次边界合并 token 的分词器、一个对话模板里没有 `{% generation %}`
的分词器来检查你的代码。做完再对照课程的实现:llmtrain/sft_data.py 里的同名函数(直接 import 它们不算完成)。
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from llmtrain.sft_data import normalize_conversation  # noqa: F401  可以直接用:BelleGroup 格式 -> 以 system 开头的 messages
from llmtrain.tokenizer import DEFAULT_SYSTEM_MESSAGE


def tokenize_conversation(
    conversations: Any,
    tokenizer: PreTrainedTokenizerBase,
    max_len: int,
    system_message: str = DEFAULT_SYSTEM_MESSAGE,
) -> dict[str, list[int]]:
    """一段对话 -> `{"input_ids": [...], "labels": [...]}`,不补齐,最多 `max_len` 个 token。

    输入:BelleGroup 格式的轮次,如 `[{"from": "human", "value": "..."}, {"from": "assistant", "value": "..."}]`;
    `normalize_conversation(conversations, system_message)` 把它变成
    `[{"role": "system", ...}, {"role": "user", ...}, ...]`。
    input_ids:与 `tokenizer.apply_chat_template(messages)` 的 token 完全相同(Qwen 的 ChatML,每轮
    `<|im_start|>{role}\\n{content}<|im_end|>\\n`),对任何分词器都成立。
    labels:与 input_ids 等长、逐位置对应。助手每条回答的 token 以及紧随其后的 `<|im_end|>` 上等于 input_ids,
    其余位置都是 -100;一个 token 只要有字符落在回答(含 `<|im_end|>`)里就算回答的 token。
    超过 `max_len` 时两者都只保留前 `max_len` 个。
    """
    raise NotImplementedError


def make_collator(tokenizer: PreTrainedTokenizerBase, packing: bool) -> Callable[[list[dict[str, list[int]]]],
                                                                                dict[str, torch.Tensor]]:
    """返回一个 collator:把 `tokenize_conversation` 给出的若干个样本(每个有 "input_ids" 和 "labels")组成一个 batch。

    返回的 collator 输入样本列表,输出整数张量的 dict,训练时直接传给 `model(**batch)`:
    - `packing=False`(动态补齐):每个样本一行,只补齐到本批最长的样本;返回 "input_ids"、"attention_mask"、"labels",
      形状都是 (样本数, 最长长度)。补齐的位置模型既不该看到,也不该学;input_ids 用 `tokenizer.pad_token_id` 补齐。
    - `packing=True`(无 padding 打包):所有样本按顺序首尾相接放进一行;返回 "input_ids"、"labels"、"position_ids",
      形状都是 (1, 总 token 数),不要 attention_mask。模型靠 position_ids 看出每个样本从哪里开始,
      并且一个样本的任何 token 都不能学着去预测另一个样本的 token(想一想模型算 loss 时怎样对齐 logits 和 labels)。
    这正是 transformers 的 `DataCollatorForSeq2Seq(..., label_pad_token_id=-100)` 和 `DataCollatorWithFlattening`
    做的事,本练习要你自己写出来。
    """
    raise NotImplementedError
