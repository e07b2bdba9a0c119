"""练习 6.3 LoRA:从零写一个 LoRA 线性层,并把它合并回原权重。

把每个方法里的 `raise NotImplementedError` 换成你的实现,然后运行
`make check-exercises EX=6.3`(或 `python -m exercises.check --notebook 6.3`)。
做完再对照课程的实现:llmtrain/lora.py 里的 `LoraLinear`。
"""

from __future__ import annotations

import torch
from torch import nn


class LoraLinear(nn.Module):
    """给一个 `nn.Linear` 加上 LoRA 旁路:h = W0·x + b + (alpha / r) · B·A·x。

    约定(评分程序按这些名字读取):
    - `self.base`:传入的原线性层,它的权重和偏置都冻结(requires_grad=False);
    - `self.lora_A = nn.Linear(in_features, r, bias=False)`,`self.lora_B = nn.Linear(r, out_features, bias=False)`,可训练;
    - A 随机初始化(例如 `nn.init.kaiming_uniform_(w, a=math.sqrt(5))`,与 peft 相同),B 初始化为 0:
      训练开始时 B·A = 0,输出与原层完全相同;
    - 缩放系数是 alpha / r;dropout 只作用在 LoRA 旁路的输入上(评分用 dropout=0)。
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        raise NotImplementedError

    def merge(self) -> None:
        """把 (alpha / r) · B·A 加进原层的权重 `self.base.weight`;之后 forward 只用合并后的权重(不再走旁路)。"""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """未合并时:原层输出加上缩放后的旁路输出;合并后:只用原层(它的权重已含 B·A)。"""
        raise NotImplementedError
