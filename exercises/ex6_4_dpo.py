"""练习 6.4 DPO:一条回答的对数概率、DPO 损失,以及 LoRA 策略上一步 DPO 的损失(参考模型 = 关掉适配器的同一个模型)。

把每个函数里的 `raise NotImplementedError` 换成你的实现,然后运行
`make check-exercises EX=6.4`(或 `python -m exercises.check --notebook 6.4`)。
评分程序在随机初始化的玩具 Qwen2 和样例偏好对上检查值和梯度,也检查 bf16 的模型、train 模式下的 dropout、
相差几百的对数比。做完再对照课程的实现:llmtrain/dpo.py 里的同名函数(直接 import 它们不算完成)。
"""

from __future__ import annotations

from typing import Any

import torch


def sequence_logprobs(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """每一行"回答在给定提示下的对数概率" log π(回答 | 提示),形状 (batch,)。

    输入:input_ids / attention_mask / labels 形状都是 (batch, seq);每行是"提示 + 回答 + 右侧 padding",
    labels 在回答的 token 上等于 input_ids,在提示和 padding 上是 -100。
    输出:每行一个数,能对模型参数求梯度。不论模型是 fp32 还是 bf16,结果都要准;不要改变模型的 train/eval 模式。
    """
    raise NotImplementedError


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> Any:
    """一批偏好对的 DPO 损失(6.4.2 推导的 sigmoid 形式),对 n 个偏好对取平均的标量张量。

    输入:四个形状相同 (n,) 的张量:策略模型与参考模型对 chosen / rejected 回答的序列对数概率;β 是 DPO 的温度。
    输出:loss 张量;也可以像 llmtrain 一样返回一个对象或元组,只要 loss 是它的 `.loss` 或第一项。
    loss 要能对两个策略输入求梯度。训练后期策略与参考模型的对数比之差可以达到几百,loss 必须仍是有限的数。
    """
    raise NotImplementedError


def dpo_batch_loss(
    policy: torch.nn.Module, batch: dict[str, torch.Tensor], beta: float, reference: torch.nn.Module | None = None
) -> Any:
    """一步 DPO 训练的损失:`batch` 是 `llmtrain.dpo.pad_preference_batch` 拼好的 2n 行(先 n 行 chosen,再 n 行 rejected,
    含 "input_ids"、"attention_mask"、"labels")。返回值同 `dpo_loss`。

    `reference=None`:`policy` 是 peft 的 LoRA 模型,参考模型就是关掉适配器的同一个模型(SFT 模型本身,不另存一份);
    否则参考模型是 `reference`(全参数 DPO)。参考模型不训练;调用前后策略模型的状态(适配器、train/eval 模式)不变。
    用你上面写的 `sequence_logprobs` 和 `dpo_loss`。
    """
    raise NotImplementedError
