"""练习 6.3 LoRA:从零写一个 LoRA 线性层(合并、取消合并、dropout),把它注入模型,并数出它训练多少参数。

把每个函数(方法)里的 `raise NotImplementedError` 换成你的实现,然后运行
`make check-exercises EX=6.3`(或 `python -m exercises.check --notebook 6.3`)。
评分程序在同一组权重上把你的代码与 peft 比较:输出、梯度、合并前后、train 与 eval 模式、bf16 的原层。
做完再对照课程的实现:llmtrain/lora.py(直接 import 它、或者用 peft 代劳,不算完成)。
"""

from __future__ import annotations

import torch
from torch import nn


class LoraLinear(nn.Module):
    """给一个 `nn.Linear` 加上 LoRA 旁路:输出 = 原层的输出 + (alpha / r) × 低秩旁路 B·A 的输出。

    约定(评分程序按这些名字读取):
    - `self.base`:传入的原线性层,它的权重和偏置都冻结,不再训练;
    - `self.lora_A = nn.Linear(in_features, r, bias=False)`,`self.lora_B = nn.Linear(r, out_features, bias=False)`,
      可训练,建在原层的 dtype 和 device 上;
    - 初始化:刚建好的层,输出必须与原层完全相同,而 A、B 又都要能学到东西(想一想两者各自的梯度);
    - `dropout` 是旁路输入上的 dropout 比例(0 表示不用),只在训练模式下起作用。
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        raise NotImplementedError

    def merge(self) -> None:
        """把旁路并进原层的权重 `self.base.weight`:之后 forward 只走原层,输出不变,推理不再多算一次。"""
        raise NotImplementedError

    def unmerge(self) -> None:
        """`merge` 的逆操作:原层的权重回到合并前,forward 重新走"原层 + 旁路"。"""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """未合并时:原层输出加上缩放后的旁路输出;合并后:只用原层。"""
        raise NotImplementedError


def inject_lora(
    model: nn.Module, target_modules: str | list[str], r: int = 8, alpha: float = 32, dropout: float = 0.0
) -> nn.Module:
    """把模型里每个目标 `nn.Linear` 原地换成你的 `LoraLinear`,其余参数全部冻结;返回这个模型。

    `target_modules`:名字列表(如 `["q_proj", "v_proj"]`,等于模块名的最后一段即匹配),或者一个字符串,
    此时它是正则表达式,要与模块的完整名字(如 `model.layers.0.self_attn.q_proj`)整串匹配——与 peft 的规则相同。
    之后模型里可训练的只有各层的 A 和 B;刚注入时模型的输出与原来完全相同。
    """
    raise NotImplementedError


def lora_parameter_count(model: nn.Module, target_modules: str | list[str], r: int) -> int:
    """按 `inject_lora` 的目标规则,模型加上秩为 r 的 LoRA 之后一共要训练多少个参数(只数,不改模型)。

    `model` 可以建在 meta 设备上(只有形状、没有数值,Qwen2.5-1.5B 也不占内存)。
    教材的公式 Θ = 2 × L_LoRA × d_model × r 对 Qwen2 并不成立:找出它的假设,按每个层真实的形状来数。
    """
    raise NotImplementedError
