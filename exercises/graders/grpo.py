"""Graders of notebook 6.5: group-relative advantages, the k3 KL estimator, and the GRPO loss (masking, clipping,
normalisation, KL), each on several group sizes and shapes, values and gradients."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from exercises.graders.common import Wrong, close, gradients, loss_of, relative_gap

EPS = 1e-4


# ---------------------------------------------------------------- group_advantages


def grade_group_advantages(group_advantages: Callable) -> None:
    """6.5.2: (r - mean of its group) / (sample std of its group + 1e-4), groups being G consecutive rows, for
    G = 2, 3, 4 and 6; scale=False only subtracts the mean; a group of one is an error."""
    torch.manual_seed(0)
    from llmtrain.grpo import group_advantages as reference

    cases = [(torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.25, 1.0, 0.0]), 4, True),
             (torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0]), 2, True),
             (torch.tensor([0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 0.2, 0.0, 0.1, 0.9, 0.0, 0.0, 1.0, 0.3, 0.0, 0.6]), 4, True),
             (torch.rand(18), 3, True), (torch.rand(12) * 5, 6, True), (torch.rand(12), 4, False)]
    for rewards, group, scale in cases:
        where = f"({len(rewards)} 条回答,group_size={group}" + (",scale=False" if not scale else "") + ")"
        got = group_advantages(rewards.clone(), group, *([] if scale else [False]))
        if not isinstance(got, torch.Tensor):
            raise Wrong("group_advantages.not_tensor", f"应返回张量(每条回答一个优势),你返回的是 {type(got).__name__}")
        got = got.reshape(-1) if got.numel() == rewards.numel() else got
        if got.shape != rewards.shape:
            raise Wrong("group_advantages.shape", f"形状应为 ({len(rewards)},):每条回答一个优势,你的是 {tuple(got.shape)}{where}")
        expected = reference(rewards, group, scale)
        if close(got, expected, atol=1e-4, rtol=1e-4):
            continue
        if not torch.isfinite(got).all():
            raise Wrong("group_advantages.not_finite", f"你的结果里出现了 nan/inf{where}:有一组的回答奖励全相同,标准差是 0,"
                        "要在分母上加 1e-4,这样这组的优势是 0(这组什么也学不到)")
        grouped = rewards.view(-1, group)
        centred = (grouped - grouped.mean(1, keepdim=True)).view(-1)
        n_groups = len(rewards) // group
        strided = rewards.view(group, n_groups).T.reshape(-1)  # rows i, i + n/G, i + 2n/G, ... taken as one group
        candidates = [
            ("group_advantages.whole_batch", "把整批奖励一起标准化了:基线应是同一个问题那一组回答的均值,不同问题的难度不同,"
             "不能混在一起", (rewards - rewards.mean()) / (rewards.std() + EPS)),
            ("group_advantages.population_std", "用了总体标准差(除以 G):TRL 和本课程用样本标准差(torch.std 的默认,除以 G-1);"
             "G 小时两者差得多", ((grouped - grouped.mean(1, keepdim=True))
                                  / (grouped.std(1, unbiased=False, keepdim=True) + EPS)).view(-1)),
            ("group_advantages.strided_groups", "分组方式错了:相邻的 group_size 条是同一个问题的回答(rewards.view(-1, G)),"
             "你把每隔 n/G 条的回答当成了一组",
             reference(strided, group, scale).view(n_groups, group).T.reshape(-1)),
            ("group_advantages.not_scaled", "只减了组内均值,没有除以组内标准差 + 1e-4(那是 scale=False,Dr. GRPO 的做法)",
             centred),
            ("group_advantages.scaled_anyway", "scale=False 时只减组内均值、不除以标准差(Dr. GRPO):你仍然除了",
             reference(rewards, group, True)),
        ]
        for key, message, value in candidates:
            if close(got, value, atol=1e-4, rtol=1e-4):
                raise Wrong(key, f"{message}{where}")
        row = int((got.double() - expected.double()).abs().argmax())
        raise Wrong("group_advantages.other", f"第 {row} 条回答的优势应为 {expected[row].item():.4f},你的是 "
                    f"{got[row].item():.4f}{where}:减去同组(相邻 group_size 条)奖励的均值,再除以同组的样本标准差 + 1e-4")
    try:
        group_advantages(torch.tensor([1.0, 0.0, 1.0]), 1)
    except NotImplementedError:
        raise
    except Exception:  # the right answer: a group of one has no relative advantage
        return
    raise Wrong("group_advantages.group_of_one", "group_size=1 时应报错:优势是相对同组其他回答而言的,一组只有一条回答时"
                "没有可比的(标准差也没有定义),GRPO 每个问题至少要采样 2 条")


# ---------------------------------------------------------------- k3_kl


def grade_k3_kl(k3_kl: Callable) -> None:
    """6.5.2: exp(ref - logp) - (ref - logp) - 1 per token, differentiable in logps with the gradient of that formula,
    on two shapes and on log-ratios up to ±8."""
    from llmtrain.grpo import k3_kl as reference

    torch.manual_seed(0)
    logps = -3 * torch.rand(3, 5)
    ref = logps + 0.5 * torch.randn(3, 5)
    ref[0, :2] = logps[0, :2]  # where the two agree, KL is 0
    wide = -10 * torch.rand(2, 4, 6)
    for logp, ref_logp in [(logps, ref), (wide, wide + torch.linspace(-8, 8, 6))]:
        policy = logp.clone().requires_grad_()
        got = k3_kl(policy, ref_logp.clone())
        if not isinstance(got, torch.Tensor):
            raise Wrong("k3_kl.not_tensor", f"应返回张量(每个 token 一个值),你返回的是 {type(got).__name__}")
        if got.shape != logp.shape:
            raise Wrong("k3_kl.shape", f"形状应与输入相同 {tuple(logp.shape)}(逐 token 的估计,先不要求平均),"
                        f"你的是 {tuple(got.shape)}")
        ours = logp.clone().requires_grad_()
        expected = reference(ours, ref_logp)
        if not close(got, expected, rtol=1e-5, atol=1e-5):
            delta = logp - ref_logp
            candidates = [
                ("k3_kl.reversed", "方向反了:你算的是 exp(logp − ref) − (logp − ref) − 1,它估计的是 KL(π_ref ‖ π);"
                 "采样来自 π,要估计 KL(π ‖ π_ref),指数里是 ref − logp", reference(ref_logp, logp)),
                ("k3_kl.k1", "这是 k1 = log π − log π_ref:它的期望也是 KL,但单个 token 上可以是负数,方差也大;k3 处处不为负",
                 delta),
                ("k3_kl.k2", "这是 k2 = ½(log π − log π_ref)²:两者接近时与 k3 差不多,差得远时(这里对数比到 ±8)有偏;"
                 "k3 无偏且不为负", 0.5 * delta**2),
                ("k3_kl.missing_minus_one", "少了最后的 −1:两个对数概率相等时 k3 应为 0,你的是 1", expected.detach() + 1),
            ]
            for key, message, value in candidates:
                if close(got, value, rtol=1e-5, atol=1e-5):
                    raise Wrong(key, message)
            i = tuple(int(k) for k in torch.nonzero((got.detach() - expected.detach()).abs() > 1e-5)[0])
            raise Wrong("k3_kl.other", f"位置 {i} 应为 {expected[i].item():.5f},你的是 {got[i].item():.5f}"
                        "(logp、ref 都给了,代进 k3 的定义核对一下)")
        if not got.requires_grad:
            raise Wrong("k3_kl.no_grad", "值对了,但它不能对 logps 求梯度:KL 惩罚要进损失,不要用 .item()、detach 或 numpy")
        mine, theirs = gradients(got.sum(), [policy])[0], gradients(expected.sum(), [ours])[0]
        if relative_gap([mine], [theirs]) > 1e-5:
            raise Wrong("k3_kl.gradient", f"值对了,但对 logps 的梯度不对(应为 1 − exp(ref − logp),如 "
                        f"{theirs.reshape(-1)[:3].tolist()} …,你的是 {mine.reshape(-1)[:3].tolist()} …):公式里的每一项都要留在计算图里;梯度正是 k3 把策略"
                        "拉回参考模型的力,截断 exp 那一项就只剩一个常数推力")


# ---------------------------------------------------------------- grpo_loss


@dataclass(frozen=True)
class GrpoCase:
    """One call of grpo_loss: shapes, lengths, whether the ratio is 1 (first pass over the batch), the options."""

    name: str
    group: int
    lengths: tuple[int, ...]
    width: int
    first_pass: bool = False
    beta: float = 0.04
    epsilon: float = 0.2
    epsilon_high: float | None = None
    loss_type: str = "grpo"
    correction: bool = True


GRPO_CASES = [
    GrpoCase("第二次更新同一批数据(比率偏离 1,有的被裁剪)", 3, (6, 3, 5, 2, 4, 1), 6),
    GrpoCase("loss_type='dapo',epsilon_high=0.28", 3, (6, 3, 5, 2, 4, 1), 6, epsilon_high=0.28, loss_type="dapo"),
    GrpoCase("首次更新(old_logps 就是 logps 的值,比率为 1)", 4, (5, 2, 4, 4, 1, 3, 5, 2), 5, first_pass=True),
    GrpoCase("beta=0(不要 KL,ref_logps=None)", 2, (4, 4, 1, 3), 4, beta=0.0),
    GrpoCase("kl_ratio_correction=False", 4, (5, 2, 4, 4, 1, 3, 5, 2), 5, correction=False),
    GrpoCase("有一条补全一个 token 也没有(mask 全为 0)", 3, (6, 0, 5, 2, 4, 1), 6),
]


def grpo_inputs(case: GrpoCase) -> dict[str, torch.Tensor | None]:
    """Log-probs [B, T] for a case: the policy's, the sampling policy's, the reference's; advantages and mask."""
    from llmtrain.grpo import group_advantages

    generator = torch.Generator().manual_seed(len(case.lengths) * 100 + case.width)
    shape = (len(case.lengths), case.width)
    logps = -3 * torch.rand(shape, generator=generator) - 0.05
    old = logps if case.first_pass else logps + 0.4 * torch.randn(shape, generator=generator)
    ref = logps + 0.3 * torch.randn(shape, generator=generator)
    rewards = torch.rand(len(case.lengths), generator=generator).round()
    rewards[: case.group] = torch.tensor([1.0, 0.0] * case.group)[: case.group]  # the first group is mixed
    mask = (torch.arange(case.width) < torch.tensor(case.lengths).unsqueeze(1)).long()
    return {"logps": logps, "old_logps": old, "ref_logps": ref if case.beta else None,
            "advantages": group_advantages(rewards, case.group), "mask": mask}


def simulated_grpo_loss(logps: torch.Tensor, inputs: dict[str, torch.Tensor | None], case: GrpoCase,
                        variant: str = "") -> torch.Tensor:
    """The GRPO loss with one usual mistake (`variant`), so that a learner's wrong answer can be named."""
    old, ref, adv, mask = inputs["old_logps"], inputs["ref_logps"], inputs["advantages"].unsqueeze(1), inputs["mask"]
    mask = torch.ones_like(mask) if variant == "grpo_loss.mask_ignored" else mask
    mask = mask.to(logps.dtype)
    old = logps.detach() if variant == "grpo_loss.old_ignored" else old
    ratio = torch.exp(old - logps) if variant == "grpo_loss.ratio_inverted" else torch.exp(logps - old)
    ratio = ratio.detach() if variant == "grpo_loss.ratio_detached" else ratio
    high = case.epsilon if case.epsilon_high is None or variant == "grpo_loss.symmetric_clip" else case.epsilon_high
    clipped = torch.clamp(ratio, 1 - case.epsilon, 1 + high)
    if variant == "grpo_loss.no_clip":
        per_token = -ratio * adv
    elif variant == "grpo_loss.max_not_min":
        per_token = -torch.max(ratio * adv, clipped * adv)
    else:
        per_token = -torch.min(ratio * adv, clipped * adv)
    if case.beta and variant != "grpo_loss.kl_missing":
        delta = ref - logps
        kl = {"grpo_loss.kl_k1": -delta,
              "grpo_loss.kl_reversed": torch.exp(-delta) + delta - 1}.get(variant, torch.exp(delta) - delta - 1)
        correction = {"grpo_loss.correction_ignored": False,
                      "grpo_loss.correction_always": True}.get(variant, case.correction)
        if correction:
            kl = kl * (ratio.detach() if variant == "grpo_loss.correction_detached" else ratio)
        per_token = per_token + (-case.beta if variant == "grpo_loss.kl_sign" else case.beta) * kl
    loss_type = {"grpo_loss.dapo_for_grpo": "dapo", "grpo_loss.grpo_for_dapo": "grpo"}.get(variant, case.loss_type)
    if variant == "grpo_loss.fixed_length":
        return ((per_token * mask).sum(-1) / mask.shape[1]).mean()
    if loss_type == "grpo":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


VALUE_MISTAKES = {
    "grpo_loss.mask_ignored": "padding 的位置也算进了损失:补全右侧补齐,mask 为 0 的位置不是模型采出的 token,每个求和、求平均都只在 "
                    "mask 为 1 的位置上",
    "grpo_loss.dapo_for_grpo": "loss_type='grpo' 要先在每条补全内对它的 token 求平均,再对补全求平均;你对整批的 token 一起求了平均"
                     "(那是 'dapo':长回答的 token 多,权重就大)",
    "grpo_loss.grpo_for_dapo": "loss_type='dapo' 要对整批所有补全的 token 一起求平均(除以 mask 的总和);你先在每条补全内求了平均",
    "grpo_loss.fixed_length": "除以的是补齐后的长度 T,不是每条补全真实的 token 数(mask 的和):短回答的损失被压小了",
    "grpo_loss.no_clip": "没有裁剪:比率偏离 1 太多时,PPO 的目标取 min(ρA, clip(ρ, 1−ε, 1+ε)A),不让一次更新走得太远",
    "grpo_loss.max_not_min": "应取 min(ρA, clip(ρ)A) 再加负号(悲观的那一个),你取了 max",
    "grpo_loss.symmetric_clip": "上界应是 1 + epsilon_high(给了 epsilon_high 时;DAPO 的 clip-higher),你两边都用了 epsilon",
    "grpo_loss.ratio_inverted": "比率反了:ρ = π / π_old = exp(logps − old_logps),你算的是 exp(old_logps − logps)",
    "grpo_loss.old_ignored": "比率的分母是采样时的策略 old_logps,你用了 logps 自己(detach 后):第二次更新同一批数据时比率不再是 1,"
                   "裁剪正是为这时准备的",
    "grpo_loss.kl_missing": "少了 KL 惩罚 β·KL_t:没有它,策略会一路偏离参考模型(6.5 的失败模式)",
    "grpo_loss.kl_sign": "KL 惩罚的符号反了:损失里是 +β·KL_t,越偏离参考模型损失越大",
    "grpo_loss.kl_k1": "KL 项用了 k1 = logps − ref_logps:要用 k3 = exp(ref − logp) − (ref − logp) − 1(不为负、方差小)",
    "grpo_loss.kl_reversed": "KL 项方向反了:k3 = exp(ref − logp) − (ref − logp) − 1,你的指数里是 logp − ref",
    "grpo_loss.correction_ignored": "kl_ratio_correction=True 时每个 token 的 KL 要乘以比率 ρ_t(TRL 1.16 的默认):比率偏离 1 时数值就不同",
    "grpo_loss.correction_always": "kl_ratio_correction=False 时 KL 不乘比率,你仍然乘了",
}
GRADIENT_MISTAKES = {
    "grpo_loss.ratio_detached": "损失的值对,但梯度不对:比率 ρ = exp(logps − old_logps) 不能 detach。首次更新时 ρ = 1,"
                      "策略梯度 A·∇log π 正是从 ρ 对 logps 的导数来的;detach 之后只剩 KL 项的梯度",
    "grpo_loss.correction_detached": "损失的值对,但梯度不对:KL 乘以比率时比率不能 detach。乘 ρ 的意义就在梯度上"
                           "(它让 KL 的梯度成为真正的反向 KL 的梯度),数值在首次更新时本来就不变",
}


def grade_grpo_loss(grpo_loss: Callable) -> None:
    """6.5.2: per completion token -min(ρA, clip(ρ, 1-ε, 1+ε_high)A) + β·k3 (times ρ with kl_ratio_correction),
    averaged per completion then over completions ("grpo") or over all completion tokens ("dapo"), masked; its value
    and its gradient with respect to logps, on six cases (group sizes 2 to 4, an empty completion, β = 0)."""
    from llmtrain.grpo import grpo_loss as reference

    for case in GRPO_CASES:
        inputs = grpo_inputs(case)
        ours, theirs = inputs["logps"].clone().requires_grad_(), inputs["logps"].clone().requires_grad_()
        old = ours.detach() if case.first_pass else inputs["old_logps"]
        args = dict(beta=case.beta, epsilon=case.epsilon, epsilon_high=case.epsilon_high, loss_type=case.loss_type,
                    kl_ratio_correction=case.correction)
        expected = reference(theirs, theirs.detach() if case.first_pass else old, inputs["ref_logps"],
                             inputs["advantages"], inputs["mask"], **args).loss
        loss = loss_of(grpo_loss(ours, old, inputs["ref_logps"], inputs["advantages"].clone(), inputs["mask"].clone(),
                                 **args), "grpo_loss")
        where = f"({case.name})"
        if loss.numel() != 1:
            raise Wrong("grpo_loss.shape", f"应返回一个标量 loss,你的形状是 {tuple(loss.shape)}{where}")
        loss = loss.reshape(())
        if not torch.isfinite(loss):
            raise Wrong("grpo_loss.not_finite", f"你的 loss 是 {loss.item()}{where}:一条补全的 mask 全为 0 时(采样立刻结束,"
                        "或被截断的补全整条被屏蔽),它的 token 数是 0,0/0 = nan。分母用 mask.sum(...).clamp(min=1)")
        if not close(loss, expected, rtol=1e-5, atol=1e-6):
            simulated = {key: simulated_grpo_loss(theirs.detach(), {**inputs, "old_logps": old}, case, key)
                         for key in VALUE_MISTAKES}
            for key, message in VALUE_MISTAKES.items():
                if not close(simulated[key], expected, rtol=1e-5, atol=1e-6) and close(loss, simulated[key]):
                    raise Wrong(key, f"{message}{where}")
            raise Wrong("grpo_loss.other", f"loss 应为 {expected.item():.6f},你的是 {loss.item():.6f}{where}:逐项核对"
                        "比率、裁剪、优势(每条补全一个,乘在它的每个 token 上)、KL、掩码和求平均的方式")
        if not loss.requires_grad:
            raise Wrong("grpo_loss.no_grad", f"loss 的值对,但不能对 logps 求梯度{where}:不要用 .item()、detach 或 torch.no_grad")
        mine, want = gradients(loss, [ours])[0], gradients(expected, [theirs])[0]
        if relative_gap([mine], [want]) > 1e-4:
            for key, message in GRADIENT_MISTAKES.items():
                probe = inputs["logps"].clone().requires_grad_()
                value = simulated_grpo_loss(probe, {**inputs, "old_logps": probe.detach() if case.first_pass else old},
                                            case, key)
                simulated_grad = gradients(value, [probe])[0]
                if relative_gap([simulated_grad], [want]) > 1e-4 and relative_gap([mine], [simulated_grad]) < 1e-4:
                    raise Wrong(key, f"{message}{where}")
            raise Wrong("grpo_loss.gradient_other", f"loss 的值对,但对 logps 的梯度与参考实现相差 "
                        f"{relative_gap([mine], [want]):.2%}(相对大小){where}:每一项都要留在计算图里")

