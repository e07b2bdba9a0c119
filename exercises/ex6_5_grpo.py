"""练习 6.5 GRPO:组内相对优势,以及 KL 惩罚用的 k3 估计量。

把每个函数里的 `raise NotImplementedError` 换成你的实现,然后运行
`make check-exercises EX=6.5`(或 `python -m exercises.check --notebook 6.5`)。
做完再对照课程的实现:llmtrain/grpo.py 里的同名函数。
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """每条回答的优势:它的奖励减去**同组**奖励的均值,再除以同组奖励的标准差加 1e-4。

    输入:rewards 形状 (n,),n = 问题数 × group_size;相邻的 group_size 条是同一个问题的回答
    (第 0..G-1 条答第一个问题,第 G..2G-1 条答第二个……)。返回形状 (n,) 的张量。
    标准差用样本标准差(torch.std 的默认,除以 G-1),和 TRL 一样;加 1e-4 是为了一组奖励全相同时得到 0 而不是 0/0。
    """
    raise NotImplementedError


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """逐 token 的 KL(π ‖ π_ref) 估计(Schulman 的 k3):exp(ref − logp) − (ref − logp) − 1。

    输入:两个形状相同的张量,分别是策略模型与参考模型给采样出的每个 token 的对数概率。返回同形状的张量。
    它在两个对数概率相等处为 0、处处不为负;必须能对 logps 求梯度(不要用 .item() 或 detach)。
    """
    raise NotImplementedError
