"""6.3.3-6.3.4: LoRA written from scratch (the chapter's LoraLayer/Linear, made to work), plus peft helpers.

A frozen linear layer W0 gets a trainable low-rank path: h = W0 x + (alpha / r) · B A x, with A
random and B zero, so training starts from exactly the base model. After training, B A can be
added into W0 (merge) and the layer costs nothing extra at inference.

A from-scratch reference the notebooks teach (`LoraLinear`, `inject_lora`, checked against peft); the scripts'
training path uses peft through `add_peft_lora`, `peft_lora_config` and `load_adapter`.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from llmtrain.errors import LlmtrainError


class LoraLinear(nn.Module):
    """6.3.4: an `nn.Linear` with a LoRA bypass: frozen base weight and bias, trainable `lora_A`, `lora_B`.

    Dropout applies to the LoRA path only. `merge()` adds scaling · B A into the base weight and
    `unmerge()` takes it out again; `disabled` switches the adapter off (the plain base layer).
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if r <= 0:
            raise LlmtrainError(f"LoRA rank r must be a positive integer, got {r}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        kwargs = {"device": base.weight.device, "dtype": base.weight.dtype, "bias": False}
        self.lora_A = nn.Linear(base.in_features, r, **kwargs)
        self.lora_B = nn.Linear(r, base.out_features, **kwargs)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # As peft does: A like a default nn.Linear (Kaiming-uniform), B zero, so B A = 0 at the start.
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.merged = False
        self.disabled = False

    def delta_weight(self) -> torch.Tensor:
        """scaling · B A: the update LoRA adds to the base weight (out_features × in_features)."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def merge(self) -> None:
        """Fold the update into the base weight: one matmul at inference, no extra latency."""
        if self.merged:
            raise LlmtrainError("This LoRA layer is already merged; merging twice would add B A twice.")
        self.base.weight.data += self.delta_weight()
        self.merged = True

    def unmerge(self) -> None:
        """Take the update out of the base weight again (the inverse of `merge`, up to float rounding)."""
        if not self.merged:
            raise LlmtrainError("This LoRA layer is not merged; there is nothing to unmerge.")
        self.base.weight.data -= self.delta_weight()
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.disabled:
            if self.merged:
                self.unmerge()
            return self.base(x)
        if self.merged:
            return self.base(x)
        return self.base(x) + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, merged={self.merged}"


def _matches(name: str, target_modules: str | list[str]) -> bool:
    """peft's rule: a regex must match the full module name; a list entry must equal it or its last part(s)."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith("." + t) for t in target_modules)


def check_targets(model: nn.Module, target_modules: str | list[str], r: int) -> list[tuple[str, nn.Linear]]:
    """6.3.4: the (name, layer) pairs LoRA would wrap; errors name what exists when the targets are wrong."""
    if r <= 0:
        raise LlmtrainError(f"LoRA rank r must be a positive integer, got {r}")
    targets = [(name, module) for name, module in model.named_modules() if name and _matches(name, target_modules)]
    if not targets:
        linear = sorted({name.split(".")[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise LlmtrainError(f"target_modules {target_modules!r} match no module. Linear layers in this model: "
                            f"{', '.join(linear)}")
    for name, module in targets:
        if not isinstance(module, nn.Linear):
            raise LlmtrainError(f"target {name} is {type(module).__name__}, not nn.Linear: LoRA here wraps "
                                "linear layers only; choose linear targets such as q_proj, v_proj")
    return targets


def inject_lora(
    model: nn.Module, target_modules: str | list[str], r: int = 8, alpha: float = 32, dropout: float = 0.0
) -> nn.Module:
    """6.3.4: replace every targeted `nn.Linear` with a `LoraLinear` and freeze everything else (in place).

    `target_modules` is a list of names (e.g. ["q_proj", "v_proj"], matching name endings) or a
    regex matched against full module names, as the chapter describes.
    """
    targets = check_targets(model, target_modules, r)
    for p in model.parameters():
        p.requires_grad_(False)
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, LoraLinear(module, r, alpha, dropout))
    return model


def lora_layers(model: nn.Module) -> list[LoraLinear]:
    """All `LoraLinear` layers of a model, in module order."""
    return [m for m in model.modules() if isinstance(m, LoraLinear)]


def parameter_summary(model: nn.Module) -> str:
    """6.3.4: trainable vs total parameters, in peft's wording."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"


def lora_parameter_count(model: nn.Module, target_modules: str | list[str], r: int) -> int:
    """6.3.3: r · (d_in + d_out) for every targeted linear layer: the general form of the chapter's formula.

    The chapter's Θ = 2 · L_LoRA · d_model · r is the special case of square d_model × d_model
    matrices; under GQA Qwen2's k/v projections are d_model × (KV heads · head size), not square.
    """
    return sum(r * (m.in_features + m.out_features) for name, m in model.named_modules()
               if name and _matches(name, target_modules) and isinstance(m, nn.Linear))


def add_peft_lora(
    model: nn.Module, target_modules: list[str], r: int, alpha: float, dropout: float,
    gradient_checkpointing: bool = False,
):
    """6.3.5: wrap `model` with peft's LoRA (the path the fine-tuning script uses), targets checked first.

    With gradient checkpointing the embeddings' output must require grad, or the checkpointed
    blocks see no tensor to differentiate ("element 0 of tensors does not require grad").
    """
    from peft import get_peft_model

    peft_model = get_peft_model(model, peft_lora_config(model, target_modules, r, alpha, dropout))
    if gradient_checkpointing:
        peft_model.enable_input_require_grads()
    return peft_model


def peft_lora_config(model: nn.Module, target_modules: str | list[str], r: int, alpha: float, dropout: float):
    """6.3-6.5: a peft LoraConfig (targets "q_proj,v_proj" or a list) for `model`, targets checked first.

    TRL's trainers take it as `peft_config` and wrap the model themselves."""
    from peft import LoraConfig, TaskType

    targets = target_modules.split(",") if isinstance(target_modules, str) else list(target_modules)
    check_targets(model, targets, r)
    return LoraConfig(task_type=TaskType.CAUSAL_LM, r=r, lora_alpha=alpha, lora_dropout=dropout,
                      target_modules=targets)


def load_adapter(model: nn.Module, adapter_dir: str):
    """6.3.5: attach a saved peft LoRA adapter to `model`, with a clear error if it was trained on another shape."""
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, adapter_dir)
    except RuntimeError as err:
        if "size mismatch" not in str(err):
            raise
        first = next(line.strip() for line in str(err).splitlines() if "size mismatch" in line)
        raise LlmtrainError(f"The adapter in {adapter_dir} does not fit this base model ({first}). Load the base "
                            "model it was trained on (see base_model_name_or_path in adapter_config.json).") from err


def copy_lora_from_peft(peft_model: nn.Module, model: nn.Module) -> int:
    """6.3.4: give our LoRA layers the A/B values of a peft model with the same targets; returns tensors copied.

    peft names them `base_model.model.<module>.lora_A.default.weight`, ours `<module>.lora_A.weight`.
    """
    ours = dict(model.named_parameters())
    copied = 0
    for name, value in peft_model.named_parameters():
        if ".lora_" in name:
            target = name.removeprefix("base_model.model.").replace(".default.", ".")
            ours[target].data.copy_(value.data)
            copied += 1
    return copied
