"""练习 6.5 GRPO:组内相对优势、KL 惩罚用的 k3 估计量,以及 GRPO 的损失(掩码、裁剪、求平均的方式)。

把每个函数里的 `raise NotImplementedError` 换成你的实现,然后运行
`make check-exercises EX=6.5`(或 `python -m exercises.check --notebook 6.5`)。
评分程序用几种组大小和形状检查值,也检查对 logps 的梯度。
做完再对照课程的实现:llmtrain/grpo.py 里的同名函数(直接 import 它们不算完成)。
"""

from __future__ import annotations

from typing import Any

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True) -> torch.Tensor:
    """每条回答的优势:它的奖励相对**同一个问题**那一组回答好多少。

    输入:rewards 形状 (n,),n = 问题数 × group_size;相邻的 group_size 条是同一个问题的回答
    (第 0..G-1 条答第一个问题,第 G..2G-1 条答第二个……)。返回形状 (n,) 的张量。
    规则:减去组内奖励的均值;`scale=True` 时再除以组内奖励的标准差(样本标准差,与 TRL 相同)加 1e-4,
    `scale=False` 时不除(Dr. GRPO)。一组奖励全相同时,这组的优势是 0。group_size < 2 时报错。
    """
    raise NotImplementedError


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """逐 token 的 KL(π ‖ π_ref) 估计:Schulman 的 k3 估计量(6.5.2)。

    输入:两个形状相同的张量,策略模型与参考模型给采样出的每个 token 的对数概率(token 从 π 采样)。
    输出:同形状的张量。它在两个对数概率相等处为 0、处处不为负,期望等于 KL(π ‖ π_ref);要能对 logps 求梯度。
    """
    raise NotImplementedError


def grpo_loss(
    logps: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor | None, advantages: torch.Tensor,
    mask: torch.Tensor, beta: float, epsilon: float = 0.2, epsilon_high: float | None = None,
    loss_type: str = "grpo", kl_ratio_correction: bool = True, max_completion_length: int | None = None,
) -> Any:
    """一批补全的 GRPO 损失(标量张量,或 `.loss` / 第一项是它的对象)。

    输入:`logps` [B, T] 当前策略给每个补全 token 的对数概率(带梯度);`old_logps` [B, T] 采样时那个策略的(不带梯度;
    同一批数据第一次更新时它就等于 logps 的值);`ref_logps` [B, T] 参考模型的(beta = 0 时为 None);
    `advantages` [B] 每条补全的优势;`mask` [B, T] 真实 token 为 1、右侧补齐为 0。
    每个 token 的损失:PPO 的裁剪目标(比率 π/π_old,裁剪区间 [1 − epsilon, 1 + epsilon_high],epsilon_high 为 None
    时等于 epsilon)取负,加上 beta × k3 KL;`kl_ratio_correction=True` 时 KL 项再乘以比率(不截断梯度)。
    汇总:"grpo" 先在每条补全自己的 token 上求平均,再对补全求平均;"dapo" 对整批所有补全 token 一起求平均。
    (课程的实现还有 "dr_grpo":总和除以常数 B × max_completion_length;评分不考它,可以不实现。)
    补齐的位置不参与;一条补全可能一个 token 也没有(mask 全 0),loss 仍要是有限的数。
    """
    raise NotImplementedError
