"""Graders of notebook 6.3: a LoRA layer (with merge, unmerge and dropout), injecting it into a model, and the
number of parameters it trains; each checked against peft on the same weights."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from exercises.graders.common import Wrong, gradients, largest_gap, toy_model


def peft_linear(base: nn.Linear, r: int, alpha: float, dropout: float) -> nn.Module:
    """peft's LoRA layer around a copy of `base` (its `lora_A["default"]`, `lora_B["default"]`)."""
    from peft import LoraConfig, inject_adapter_in_model

    holder = inject_adapter_in_model(LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=["proj"]),
                                     nn.ModuleDict({"proj": copy.deepcopy(base)}))
    return holder["proj"]


def set_lora(layer: nn.Module, a: torch.Tensor, b: torch.Tensor) -> None:
    """Give a learner's layer (`lora_A`, `lora_B`) or a peft layer (`lora_A["default"]`, ...) the values A and B."""
    lora_a, lora_b = layer.lora_A, layer.lora_B
    if isinstance(lora_a, nn.ModuleDict):
        lora_a, lora_b = lora_a["default"], lora_b["default"]
    with torch.no_grad():
        lora_a.weight.copy_(a)
        lora_b.weight.copy_(b)


def effective_scaling(delta: torch.Tensor, unscaled: torch.Tensor) -> float | None:
    """The s with delta ≈ s · unscaled (least squares), or None when delta is not a multiple of it."""
    s = (delta * unscaled).sum() / (unscaled * unscaled).sum()
    if (delta - s * unscaled).abs().max() > 1e-4 * (1 + delta.abs().max()):
        return None
    return s.item()


def scaling_hint(s: float | None, r: int, alpha: float) -> str:
    """Name the scaling the learner used, when it is one of the usual wrong ones."""
    for value, text in [(alpha, "你乘的是 α,应乘 α/r"), (1.0, "你没有乘缩放系数 α/r"), (r / alpha, "你乘的是 r/α,应乘 α/r"),
                        (0.0, "你没有加上 B·A 这一项")]:
        if s is not None and math.isclose(s, value, rel_tol=1e-4, abs_tol=1e-6):
            return f"{text}(这里 α={alpha:g}、r={r},α/r={alpha / r:g})"
    found = "不是 B·A 的倍数(检查 A、B 的顺序与转置)" if s is None else f"是 B·A 的 {s:.4g} 倍"
    return f"你加上的那一项{found},应为 (α/r)·B·A = {alpha / r:g}·B·A"


# ---------------------------------------------------------------- LoraLinear


def check_structure(layer: nn.Module, base: nn.Linear, r: int, d_in: int, d_out: int) -> None:
    """Frozen base, trainable lora_A (r × d_in) and lora_B (d_out × r) of the base's dtype, B zero, A random."""
    if any(p.requires_grad for p in base.parameters()):
        raise Wrong("LoraLinear.base_trainable", "原层的权重和偏置应冻结(requires_grad=False),你的还会训练:LoRA 只训练 A 和 B")
    for name, shape in [("lora_A", (r, d_in)), ("lora_B", (d_out, r))]:
        weight = getattr(getattr(layer, name, None), "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise Wrong("LoraLinear.missing_attribute",
                        f"找不到 self.{name}.weight:约定 self.{name} 是一个 nn.Linear(bias=False)")
        if tuple(weight.shape) != shape:
            raise Wrong("LoraLinear.wrong_shape", f"{name}.weight 的形状应为 {shape}(in_features={d_in}、"
                        f"out_features={d_out}、r={r}),你的是 {tuple(weight.shape)}")
        if not weight.requires_grad:
            raise Wrong("LoraLinear.lora_frozen", f"{name} 应可训练(requires_grad=True):LoRA 训练的正是 A 和 B")
        if weight.dtype != base.weight.dtype:
            raise Wrong("LoraLinear.dtype", f"原层是 {base.weight.dtype},你的 {name} 是 {weight.dtype}:A、B 要建在原层的 dtype "
                        "和 device 上(bf16 训练时,fp32 的 A 遇上 bf16 的输入会报 dtype 不一致,或者悄悄多占显存)")
    if layer.lora_B.weight.abs().max() > 0:
        raise Wrong("LoraLinear.b_not_zero", f"lora_B 初始应全为 0(A 随机):训练开始时 B·A = 0,输出与原层完全相同;你的 B "
                    f"最大绝对值 {layer.lora_B.weight.abs().max().item():.3g}")
    if layer.lora_A.weight.abs().max() == 0:
        raise Wrong("LoraLinear.a_zero", "lora_A 不应全为 0:A 和 B 都是 0 时两者的梯度都为 0,LoRA 永远学不动;A 用随机初始化")


def grade_lora_linear(lora_linear: type) -> None:
    """6.3.4: frozen base, A random and B zero (output = base at start), α/r scaling, gradients, merge and unmerge,
    dropout on the LoRA path only and only in train mode, A and B in the base's dtype; checked against peft."""
    r, alpha, d_in, d_out = 4, 8.0, 24, 16
    torch.manual_seed(0)
    base = nn.Linear(d_in, d_out)
    w0, b0 = base.weight.detach().clone(), base.bias.detach().clone()
    x = torch.randn(5, d_in)
    layer = lora_linear(base, r, alpha)
    check_structure(layer, base, r, d_in, d_out)
    with torch.no_grad():
        start_gap = (layer(x) - (x @ w0.T + b0)).abs().max().item()
    if start_gap > 1e-6:
        raise Wrong("LoraLinear.start_differs", f"B = 0 时输出应与原层完全相同,你的相差 {start_gap:.3g}:forward = 原层输出 + "
                    "缩放 × 旁路输出")

    torch.manual_seed(1)  # trained-looking A and B, the same in peft's layer
    a, b = torch.randn(r, d_in) * 0.1, torch.randn(d_out, r) * 0.1
    theirs = peft_linear(base, r, alpha, 0.0)
    with torch.no_grad():
        theirs.base_layer.weight.copy_(w0)
    set_lora(layer, a, b)
    set_lora(theirs, a, b)
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = layer(x_ours), theirs(x_theirs)
    gap = (out.detach() - expected.detach()).abs().max().item()
    if gap > 1e-5:
        s = effective_scaling(out.detach() - (x @ w0.T + b0), x @ a.T @ b.T)
        raise Wrong("LoraLinear.scaling", f"A、B 取相同的值时,你的输出与 peft 的 LoRA 层相差 {gap:.3g}:{scaling_hint(s, r, alpha)}")
    probe = torch.randn_like(expected)  # any loss: the gradients of <output, probe>
    ours_grads = gradients((out * probe).sum(), [layer.lora_A.weight, layer.lora_B.weight, x_ours])
    their_grads = gradients((expected * probe).sum(), [theirs.lora_A["default"].weight, theirs.lora_B["default"].weight,
                                                       x_theirs])
    if any(g.abs().max() == 0 for g in ours_grads[:2]):
        raise Wrong("LoraLinear.no_grad", "lora_A / lora_B 没有得到梯度:旁路要用 self.lora_A、self.lora_B 参与 forward 的计算图"
                    "(不要用 .data、detach 或 torch.no_grad)")
    for name, mine, their in zip(["lora_A", "lora_B", "输入 x"], ours_grads, their_grads):
        if largest_gap([mine], [their]) > 1e-5:
            raise Wrong("LoraLinear.gradient", f"输出对了,但对 {name} 的梯度与 peft 相差 {largest_gap([mine], [their]):.3g}"
                        f"(梯度本身最大 {their.abs().max().item():.3g}):旁路的每一步都要留在计算图里;对输入 x 的梯度"
                        "要同时经过原层和旁路传回去,前面各层的 LoRA 靠它学习(不要 detach 旁路的输入)")

    with torch.no_grad():
        theirs.merge()
        layer.merge()
        merged_gap = (base.weight - theirs.base_layer.weight).abs().max().item()
        if merged_gap > 1e-5:
            s = effective_scaling(base.weight - w0, b @ a)
            raise Wrong("LoraLinear.merge_scaling", f"你合并后的权重与 W + (α/r)·B·A 相差 {merged_gap:.3g}:"
                        f"检查缩放。{scaling_hint(s, r, alpha)}")
        after = layer(x)
        after_gap = (after - expected).abs().max().item()
        if after_gap > 1e-5:
            doubled = (after - expected - x @ a.T @ b.T * (alpha / r)).abs().max().item() < 1e-5
            raise Wrong("LoraLinear.merge_output", "merge 之后 forward 又加了一次旁路(B·A 被算了两次):合并后 forward "
                        "只用已含 B·A 的原层" if doubled else f"merge 之后的输出与合并前相差 {after_gap:.3g}:合并不应改变层的输出")
        layer.unmerge()
        unmerged_gap = (base.weight - w0).abs().max().item()
        if unmerged_gap > 1e-5:
            raise Wrong("LoraLinear.unmerge_weight", f"unmerge 之后原层的权重与合并前相差 {unmerged_gap:.3g}:unmerge 要减去 "
                        "merge 加上的同一个 (α/r)·B·A,让原层回到 W0(换一个适配器、或继续训练之前要做这一步)")
        again = (layer(x) - expected).abs().max().item()
        if again > 1e-5:
            raise Wrong("LoraLinear.unmerge_forward", f"unmerge 之后的输出与合并前相差 {again:.3g}:权重已经还原,forward 要重新"
                        "加上旁路(记住层是否处于合并状态)")

    check_dropout(lora_linear, w0, b0, a, b, x, r, alpha)
    half = nn.Linear(d_in, d_out).to(torch.bfloat16)
    check_structure(lora_linear(half, r, alpha), half, r, d_in, d_out)


def check_dropout(lora_linear: type, w0: torch.Tensor, b0: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                  x: torch.Tensor, r: int, alpha: float) -> None:
    """Dropout 0.5 acts on the LoRA path's input in train mode only: the base output is never dropped, and with the
    same random seed the output equals peft's."""
    p = 0.5
    base = nn.Linear(*reversed(w0.shape))
    with torch.no_grad():
        base.weight.copy_(w0)
        base.bias.copy_(b0)
    layer, theirs = lora_linear(base, r, alpha, p), peft_linear(base, r, alpha, p)
    layer.train()
    theirs.train()
    with torch.no_grad():
        set_lora(layer, a, torch.zeros_like(b))
        on_base = (layer(x) - (x @ w0.T + b0)).abs().max().item()
        if on_base > 1e-6:
            raise Wrong("LoraLinear.dropout_on_base", f"dropout={p}、B = 0、train 模式下,你的输出与原层相差 {on_base:.3g}:"
                        "dropout 只作用在旁路的输入上(peft 也是 lora_B(lora_A(dropout(x)))),原层的输出不能被丢弃")
        set_lora(layer, a, b)
        set_lora(theirs, a, b)
        torch.manual_seed(7)
        trained = layer(x)
        torch.manual_seed(7)
        expected = theirs(x)
        without = x @ w0.T + b0 + x @ a.T @ b.T * (alpha / r)
        if (trained - expected).abs().max() > 1e-5:
            if (trained - without).abs().max() < 1e-5:
                raise Wrong("LoraLinear.dropout_ignored", f"dropout={p} 时 train 模式下你的输出与没有 dropout 时相同:"
                            "dropout 参数被忽略了,旁路的输入要经过 nn.Dropout(p)")
            raise Wrong("LoraLinear.dropout_place", f"dropout={p}、train 模式、同一个随机种子下,你的输出与 peft 相差 "
                        f"{(trained - expected).abs().max().item():.3g}:dropout 作用在旁路的输入 x 上,每次 forward 调用一次,"
                        "即 lora_B(lora_A(dropout(x)))")
        layer.eval()
        evaluated = (layer(x) - without).abs().max().item()
        if evaluated > 1e-5:
            raise Wrong("LoraLinear.dropout_in_eval", f"eval 模式下你的输出与不带 dropout 的结果相差 {evaluated:.3g}:"
                        "dropout 只在训练时起作用;用 nn.Dropout(它看 self.training),或 F.dropout(..., training=self.training)")


# ---------------------------------------------------------------- inject_lora


def lora_wrapped(module: nn.Module) -> bool:
    """Whether a module is a LoRA layer: it holds `lora_A` and `lora_B`."""
    return hasattr(module, "lora_A") and hasattr(module, "lora_B")


def reachable(model: nn.Module, name: str, module: nn.Module) -> bool:
    """Whether `name` leads to `module` through the model's real tree (not a child registered under a dotted name)."""
    try:
        return model.get_submodule(name) is module
    except AttributeError:
        return False


INJECT_IDS = torch.tensor([[5, 17, 300, 42, 1000, 7, 99, 12], [8, 8, 400, 3, 2, 501, 60, 11]])
INJECT_CASES = [(("q_proj", "v_proj"), 4, 8.0), (r".*\.(k|o)_proj", 2, 4.0)]


@lru_cache(maxsize=len(INJECT_CASES))
def peft_injection(target_modules: str | tuple[str, ...], r: int, alpha: float) -> dict[str, Any]:
    """What peft makes of `toy_model(0)` for these targets, computed once: the names of the layers it wraps
    (without peft's prefix), the base model's logits on INJECT_IDS, random A and B for each wrapped layer, and the
    logits of peft's model with those A and B."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    model = toy_model(0)
    with torch.no_grad():
        base_logits = model(INJECT_IDS).logits
    theirs = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=targets))
    layers = {n.removeprefix("base_model.model."): m for n, m in theirs.named_modules() if isinstance(m, LoraLayer)}
    torch.manual_seed(3)
    weights = {name: (torch.randn_like(layer.lora_A["default"].weight) * 0.1,
                      torch.randn_like(layer.lora_B["default"].weight) * 0.1) for name, layer in sorted(layers.items())}
    for name, (a, b) in weights.items():
        set_lora(layers[name], a, b)
    with torch.no_grad():
        logits = theirs(INJECT_IDS).logits
    return {"names": set(layers), "base_logits": base_logits, "weights": weights, "logits": logits}


def grade_inject_lora(inject_lora: Callable) -> None:
    """6.3.4: every targeted nn.Linear of a toy Qwen2 replaced in place by a LoRA layer (list entries match name
    endings, a string is a regex matched against the whole name, as in peft), everything else frozen; the model's
    output then equals the base's, and with peft's A and B equals peft's."""
    for target_modules, r, alpha in INJECT_CASES:
        theirs = peft_injection(target_modules, r, alpha)
        expected = theirs["names"]
        targets = target_modules if isinstance(target_modules, str) else list(target_modules)
        model = toy_model(0)
        where = f"(target_modules={targets!r},r={r},α={alpha:g})"
        returned = inject_lora(model, targets, r, alpha)
        if returned is not model:
            raise Wrong("inject_lora.returns", f"应原地修改并返回传入的模型,你返回的是 {type(returned).__name__}{where}")
        missing = sorted(n for n in expected if not lora_wrapped(model.get_submodule(n)))
        extra = sorted(n for n, m in model.named_modules()
                       if n not in expected and lora_wrapped(m) and reachable(model, n, m))
        if isinstance(target_modules, str) and (missing or extra):
            raise Wrong("inject_lora.regex", f"字符串形式的 target_modules 是一个正则表达式,要与模块的完整名字整串匹配"
                        f"(re.fullmatch,peft 的规则){where}:应替换 {len(expected)} 个层,你漏了 {len(missing)} 个"
                        f"{'(如 ' + missing[0] + ')' if missing else ''}、多了 {len(extra)} 个"
                        f"{'(如 ' + extra[0] + ')' if extra else ''}")
        if missing:
            raise Wrong("inject_lora.not_replaced", f"{missing[0]} 等 {len(missing)} 个目标层还是原来的 nn.Linear{where}:"
                        "要在它的父模块上用 setattr(parent, 子模块名, LoraLinear(...)) 替换(model.get_submodule 找父模块;"
                        "setattr(model, '带点的名字', ...) 只会多挂一个新属性)")
        if extra:
            raise Wrong("inject_lora.extra_modules", f"{extra[0]} 等 {len(extra)} 个层不在目标里,你也换成了 LoRA{where}:"
                        "只替换与 target_modules 匹配的层;列表里的名字要等于模块名的最后一段(或最后几段),"
                        "不是子串,也不是同一类的所有层")
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        lora_params = {n for n, _ in model.named_parameters() if ".lora_A." in n or ".lora_B." in n}
        if trainable - lora_params:
            count = sum(p.numel() for n, p in model.named_parameters() if n in trainable - lora_params)
            raise Wrong("inject_lora.others_trainable", f"除了 A、B 还有 {count:,} 个参数可训练(如 "
                        f"{sorted(trainable - lora_params)[0]}){where}:先冻结整个模型,LoRA 只训练 A 和 B")
        if lora_params - trainable:
            raise Wrong("inject_lora.lora_frozen", f"{sorted(lora_params - trainable)[0]} 被冻结了{where}:冻结整个模型要在"
                        "替换之前做,否则新建的 A、B 也被冻住,什么也学不到")
        with torch.no_grad():
            start_gap = (model(INJECT_IDS).logits - theirs["base_logits"]).abs().max().item()
        if start_gap > 1e-5:
            raise Wrong("inject_lora.start_differs", f"刚注入 LoRA 时,模型的输出应与基座完全相同(B = 0),你的相差 "
                        f"{start_gap:.3g}{where}")
        for name, (a, b) in theirs["weights"].items():
            set_lora(model.get_submodule(name), a, b)
        with torch.no_grad():
            gap = (model(INJECT_IDS).logits - theirs["logits"]).abs().max().item()
        if gap > 1e-4:
            raise Wrong("inject_lora.differs_from_peft", f"A、B 取 peft 的值时,你的模型输出与 peft 的相差 {gap:.3g}{where}:"
                        "把 r、alpha、dropout 原样传给每个 LoRA 层(注意参数的顺序)")


# ---------------------------------------------------------------- lora_parameter_count


@lru_cache(maxsize=2)
def meta_model(name: str) -> nn.Module:
    """The toy model or Qwen2.5-1.5B built on the meta device: shapes only, no memory."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from llmtrain.modeling import qwen2_5_1_5b_config
    from llmtrain.toy import ensure_toy_assets

    config = qwen2_5_1_5b_config() if name == "Qwen2.5-1.5B" else AutoConfig.from_pretrained(ensure_toy_assets())
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


@lru_cache(maxsize=8)
def peft_trainable_count(name: str, target_modules: str | tuple[str, ...], r: int) -> int:
    """What peft trains for these targets (on the meta model): the independent count each case is checked with."""
    from peft import LoraConfig, get_peft_model

    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    theirs = get_peft_model(copy.deepcopy(meta_model(name)), LoraConfig(r=r, target_modules=targets))
    return sum(p.numel() for p in theirs.parameters() if p.requires_grad)


def grade_lora_parameter_count(lora_parameter_count: Callable) -> None:
    """6.3.3: r · (d_in + d_out) summed over the targeted linear layers, on the toy model and Qwen2.5-1.5B (GQA: k and
    v project to num_key_value_heads × head_dim, not hidden_size); a string target is a regex over whole names."""
    from llmtrain.lora import lora_parameter_count as reference

    for name, target_modules, r in [("玩具模型", ("q_proj", "v_proj"), 8), ("Qwen2.5-1.5B", ("q_proj", "v_proj"), 8),
                                    ("Qwen2.5-1.5B", ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                      "down_proj"), 16),
                                    ("玩具模型", r".*\.(k|v)_proj", 4)]:
        model = meta_model(name)
        targets = target_modules if isinstance(target_modules, str) else list(target_modules)
        expected = reference(model, targets, r)
        if expected != peft_trainable_count(name, target_modules, r):
            raise RuntimeError(f"课程内部错误:llmtrain 与 peft 的 LoRA 参数量不一致({target_modules},r={r})")
        got = lora_parameter_count(model, copy.copy(targets), r)
        if not isinstance(got, int) or isinstance(got, bool):
            raise Wrong("lora_parameter_count.not_int", f"应返回参数个数(int),你返回的是 {type(got).__name__}")
        if got == expected:
            continue
        case = f"{name},target_modules={target_modules!r},r={r}:应为 {expected:,},你的是 {got:,}。"
        if isinstance(target_modules, str):
            raise Wrong("lora_parameter_count.regex", case + "字符串形式的 target_modules 是正则表达式,与模块的完整名字整串匹配"
                        "(re.fullmatch),不是名字列表")
        config = model.config
        layers = [m for n, m in model.named_modules()
                  if isinstance(m, nn.Linear) and n.split(".")[-1] in target_modules]
        if got == sum(2 * config.hidden_size * r for _ in layers):
            kv = config.num_key_value_heads * config.hidden_size // config.num_attention_heads
            raise Wrong("lora_parameter_count.square", case + f"你把每个矩阵都当成了 hidden_size × hidden_size 的方阵(教材的 "
                        f"2·L·d·r)。Qwen2 用分组查询注意力(GQA):k_proj、v_proj 只输出 num_key_value_heads × head_dim = "
                        f"{config.num_key_value_heads} × {config.hidden_size // config.num_attention_heads} = {kv} 维;"
                        "MLP 的矩阵也不是方阵。按每个层自己的 in_features、out_features 算")
        if got == sum(m.in_features * m.out_features for m in layers) or \
                got == sum(r * m.in_features * m.out_features for m in layers):
            raise Wrong("lora_parameter_count.full_matrix", case + "你数的是整个 ΔW(d_in × d_out 个数):LoRA 训练的是 "
                        "A(r × d_in)和 B(d_out × r),每个层 r·(d_in + d_out) 个")
        if got in (expected + sum(m.out_features + r for m in layers), expected + sum(m.out_features for m in layers)):
            raise Wrong("lora_parameter_count.bias", case + "A、B 是没有偏置的线性层(bias=False),只数它们的权重")
        raise Wrong("lora_parameter_count.other", case + f"是正确值的 {got / expected:.3g} 倍:对每个名字与目标匹配的 "
                    "nn.Linear 数 A、B 的参数")
