"""练习 6.1 预训练:把文档变成训练块,再算一算 logits 要多少显存。

把每个函数里的 `raise NotImplementedError` 换成你的实现,然后运行
`make check-exercises EX=6.1`(或 `python -m exercises.check --notebook 6.1`)。
做完再对照课程的实现:llmtrain/pretrain_data.py 与 llmtrain/memory.py 里的同名函数。
"""

from __future__ import annotations

from transformers import PretrainedConfig, PreTrainedTokenizerBase


def tokenize_with_eos(texts: list[str], tokenizer: PreTrainedTokenizerBase) -> dict[str, list[list[int]]]:
    """把一批文档分词,并在每篇文档末尾加上 EOS。

    输入:`texts` 是若干篇文档(字符串)。
    输出:`{"input_ids": [[...], [...], ...]}`,每篇文档一个 token 列表,
    等于 `tokenizer(text, add_special_tokens=False)` 的 input_ids 再接上 `tokenizer.eos_token_id`。
    为什么:文档拼接成训练块之后,模型只能靠 EOS 看出一篇文档在哪里结束(教材代码没有加)。
    """
    raise NotImplementedError


def group_texts(examples: dict[str, list[list[int]]], block_size: int) -> dict[str, list[list[int]]]:
    """把一批已分词的文档首尾拼接,切成长度正好为 `block_size` 的训练块。

    输入:`examples["input_ids"]` 是每篇文档的 token 列表(已由 tokenize_with_eos 在末尾加了 EOS)。
    输出:`{"input_ids": 块的列表, "labels": 与 input_ids 相同的块的列表}`。
    规则:先把所有文档拼成一条(文档之间的 EOS 原样保留),再按 block_size 切开;
    最后不足一块的余数丢掉,只保留完整的块(不足一块时返回两个空列表)。
    labels 与 input_ids 完全相同:错开一位由模型内部完成,不要自己移位。
    """
    raise NotImplementedError


def logits_bytes(config: PretrainedConfig, tokens: int, dtype: str, liger_kernel: bool = False) -> int:
    """显存模型里"logits 与 loss"这一项:反向传播开始时,一张卡上 logits 相关的缓冲区占多少字节。

    输入:模型配置 `config`(用到 `config.vocab_size`),`tokens` = 每卡 batch × block_size,
    `dtype` 是 "fp32"、"bf16" 或 "fp16"(训练精度)。
    输出:字节数。提示:每个 token 对词表里的每个词都有一个 logit;transformers 的 loss 会先把 logits
    升到 fp32,反向开始时同时存在 log_softmax 的 fp32 输出、它的梯度、以及 logits 的 fp32 梯度。
    `liger_kernel=True`(Liger 的融合交叉熵)不在本练习范围,评分只用默认的 False。
    """
    raise NotImplementedError
