"""练习 6.4 DPO:DPO 损失,以及"给定提示时一条回答的对数概率"。

把每个函数里的 `raise NotImplementedError` 换成你的实现,然后运行
`make check-exercises EX=6.4`(或 `python -m exercises.check --notebook 6.4`)。
做完再对照课程的实现:llmtrain/dpo.py 里的同名函数。
"""

from __future__ import annotations

import torch


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """一批偏好对的 DPO 损失(sigmoid 形式),返回批内平均的标量张量。

    输入:四个形状相同 (n,) 的张量,分别是策略模型与参考模型对 chosen / rejected 回答的序列对数概率。
    loss = -log σ(β · [(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))]),再对 n 个偏好对取平均。
    loss 必须能对策略模型的对数概率求梯度(不要用 .item() 或 detach)。
    也可以像 llmtrain 一样返回一个对象或元组,只要 loss 是它的 `.loss` 或第一项。
    """
    raise NotImplementedError


def sequence_logprobs(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """每一行"回答在给定提示下的对数概率":labels != -100 的那些 token 的对数概率之和,形状 (batch,)。

    输入:input_ids / attention_mask / labels 形状都是 (batch, seq);每行是"提示 + 回答 + 右侧 padding",
    labels 在回答的 token 上等于 input_ids,在提示和 padding 上是 -100。
    提示:`model(input_ids=..., attention_mask=...).logits` 在位置 t 预测的是第 t+1 个 token;
    先用 log_softmax 得到对数概率,再取出目标 token 的那一项,只把回答的 token 加起来。
    """
    raise NotImplementedError
