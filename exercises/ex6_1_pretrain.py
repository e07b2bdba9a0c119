"""练习 6.1 预训练:把文档变成训练块,断点续训时找对 checkpoint,再算一算 logits 要多少显存。

把每个函数里的 `raise NotImplementedError` 换成你的实现,然后运行
`make check-exercises EX=6.1`(或 `python -m exercises.check --notebook 6.1`)。
评分程序除了玩具分词器,还会用 pad 与 eos 不同的分词器、默认加 BOS 的分词器来检查你的代码。
做完再对照课程的实现:llmtrain/pretrain_data.py、llmtrain/checkpoints.py、llmtrain/memory.py 里的同名函数
(直接 import 它们不算完成,评分程序会指出来)。
"""

from __future__ import annotations

from transformers import PretrainedConfig, PreTrainedTokenizerBase, TrainingArguments


def tokenize_with_eos(texts: list[str], tokenizer: PreTrainedTokenizerBase) -> dict[str, list[list[int]]]:
    """把一批文档分词,每篇文档的 token 后面接上分词器的 EOS。

    输入:`texts` 是若干篇文档(字符串);`tokenizer` 是任意一个 Hugging Face 分词器。
    输出:`{"input_ids": [[...], [...], ...]}`,每篇文档一个 token 列表,顺序与 `texts` 相同。
    规则:只要文档本身的 token,不要分词器自己加的任何特殊 token;每篇的最后一个 token 是 EOS。
    为什么:文档拼接成训练块之后,模型只能靠 EOS 看出一篇文档在哪里结束(教材代码没有加)。
    """
    raise NotImplementedError


def group_texts(examples: dict[str, list[list[int]]], block_size: int) -> dict[str, list[list[int]]]:
    """把一批已分词的文档首尾拼接,切成长度正好为 `block_size` 的训练块。

    输入:`examples["input_ids"]` 是每篇文档的 token 列表(末尾已有 EOS),这是 `datasets.map(batched=True)`
    交给你的一批。
    输出:`{"input_ids": 块的列表, "labels": 块的列表}`,每块正好 `block_size` 个 token;不够一块时两个都是空列表。
    规则:文档按原顺序首尾相接,EOS 原样保留;凑不满一块的余数丢掉。labels 是什么、要不要自己错开,
    想一想 transformers 的因果语言模型在算 loss 时做了什么。
    """
    raise NotImplementedError


def find_resume_checkpoint(training_args: TrainingArguments, overwrite_output_dir: bool = False) -> str | None:
    """断点续训:返回要从哪个 checkpoint 目录继续训练的路径,或者 None(从头训练);不能开始训练时抛出异常。

    输入:`training_args.output_dir`(Trainer 在里面写 `checkpoint-<步数>` 目录)、
    `training_args.resume_from_checkpoint`(用户用 --resume_from_checkpoint 指定的目录,或 None);
    `overwrite_output_dir`:用户明确要求从头训练到这个目录里。
    输出:checkpoint 目录的路径(str),或 None。出错时抛出任何 Exception(例如 ValueError),信息说明原因。
    规则:
    - 用户指定了 checkpoint 时就用它,但它必须完整;
    - 否则从 output_dir 里最新的**完整** checkpoint 继续。Trainer 保存 checkpoint 时最后才写 `trainer_state.json`:
      没有这个文件的 checkpoint 是保存到一半被打断的;只认名字正好是 `checkpoint-<步数>` 的目录;
    - output_dir 不存在或为空:从头训练;不为空却没有可续训的 checkpoint:报错(以免把结果写进别人的目录),
      除非 `overwrite_output_dir`。
    """
    raise NotImplementedError


def logits_bytes(config: PretrainedConfig, tokens: int, dtype: str, liger_kernel: bool = False) -> int:
    """显存模型里"logits 与 loss"这一项:反向传播开始时,一张卡上与 logits 一样大的缓冲区一共占多少字节。

    输入:模型配置 `config`,`tokens` = 每卡 batch × block_size,`dtype` 是训练精度 "fp32"、"bf16" 或 "fp16"。
    输出:字节数(int)。
    提示:每个 token 有多少个 logit?transformers 的 causal-LM loss 在哪种精度里算?反向刚开始时,
    哪几份与 logits 同样大小的张量同时存在(6.1.5 的显存一节逐项量过)?
    `liger_kernel=True`(Liger 的融合交叉熵)不在本练习范围,评分只用默认的 False。
    """
    raise NotImplementedError
