"""Graders of notebook 6.4: a reply's log-probability, the DPO loss, and one DPO step's loss on a LoRA policy whose
reference is the same model with its adapter disabled."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from exercises.graders.common import (Wrong, close, gradients, loss_of, relative_gap, sample_preference_pairs,
                                      toy_model, toy_tokenizer)

IGNORE = -100
BATCH_BETA = 0.1


def preference_batch() -> dict[str, torch.Tensor]:
    """The sample preference pairs padded into one batch (chosen rows first, then rejected)."""
    from llmtrain.dpo import pad_preference_batch

    return pad_preference_batch(list(sample_preference_pairs()), toy_tokenizer().pad_token_id)


# ---------------------------------------------------------------- sequence_logprobs


def unshifted_logprobs(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The sum over reply tokens of log p(token t | ...) read at position t itself (no shift): a usual mistake."""
    log_probs = torch.log_softmax(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                                  .logits.float(), dim=-1)
    labels = batch["labels"]
    token = torch.gather(log_probs, 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token * (labels != IGNORE)).sum(dim=1)


def in_working_dtype(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """log_softmax taken in the model's own dtype (bf16) instead of fp32: the rounding a bf16 answer carries."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    token = torch.gather(torch.log_softmax(logits, dim=-1), 2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token.float() * (targets != IGNORE)).sum(dim=1)


def call_sequence_logprobs(sequence_logprobs: Callable, model: nn.Module, batch: dict[str, torch.Tensor],
                           seed: int) -> torch.Tensor:
    """The learner's log-probs on copies of the batch, after seeding dropout; checks the type and the shape."""
    torch.manual_seed(seed)
    got = sequence_logprobs(model, batch["input_ids"].clone(), batch["attention_mask"].clone(), batch["labels"].clone())
    if not isinstance(got, torch.Tensor):
        raise Wrong("sequence_logprobs.not_tensor", f"应返回张量(每行一个数),你返回的是 {type(got).__name__}")
    rows = batch["input_ids"].shape[0]
    if tuple(got.shape) != (rows,):
        raise Wrong("sequence_logprobs.shape", f"形状应为 ({rows},):每行(每条回答)一个对数概率,你的是 {tuple(got.shape)}")
    return got


def logprob_models() -> dict[str, nn.Module]:
    """Fresh models for the four checks: eval and train mode (attention dropout 0.1), bf16, and a very confident
    one (the final norm scaled by 300: logits hundreds apart, most probabilities below fp32's 1e-45)."""
    models = {"eval": toy_model(0, attention_dropout=0.1), "train": toy_model(0, attention_dropout=0.1).train(),
              "bf16": toy_model(0).to(torch.bfloat16), "confident": toy_model(0)}
    with torch.no_grad():
        models["confident"].model.norm.weight.mul_(300.0)
    return models


@lru_cache(maxsize=1)
def reference_logprobs() -> dict[str, torch.Tensor]:
    """llmtrain's log-probs for each check, computed once (seed k before the k-th check, as the learner gets)."""
    from llmtrain.dpo import sequence_logprobs as reference

    batch = preference_batch()
    found = {}
    with torch.no_grad():
        for seed, (name, model) in enumerate(logprob_models().items()):
            torch.manual_seed(seed)
            found[name] = reference(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    return found


def grade_sequence_logprobs(sequence_logprobs: Callable) -> None:
    """6.4.3: per row, the sum of log p(token | everything before it) over the reply tokens (labels != -100) only;
    log_softmax in fp32 whatever the model's dtype, differentiable, the model's train/eval mode left alone; checked
    in eval and train mode (attention dropout 0.1), on a bf16 model and on a very confident one."""
    from llmtrain.dpo import sequence_logprobs as reference

    batch = preference_batch()
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    models, references = logprob_models(), reference_logprobs()
    model, expected = models["eval"], references["eval"]
    got = call_sequence_logprobs(sequence_logprobs, model, batch, 0)
    if model.training:
        raise Wrong("sequence_logprobs.mode_changed", "调用之后模型从 eval 模式变成了 train 模式:计算对数概率的函数不要改"
                    "模型的 train/eval 模式,那是调用者的事(训练时要 dropout,评估时不要)")
    if not close(got, expected, rtol=1e-4, atol=1e-3):
        with torch.no_grad():
            candidates = [
                ("sequence_logprobs.prompt_counted", "把提示(prompt)的 token 也算进去了:只有 labels != -100 的回答 token "
                 "计分,否则 chosen 与 rejected 的差里混进了同一个提示",
                 reference(model, ids, mask, ids.masked_fill(mask == 0, IGNORE))),
                ("sequence_logprobs.padding_counted", "把提示和 padding 的 token 都算进去了:只有 labels != -100 的回答 "
                 "token 计分;padding 位置的 attention_mask 是 0,它们的对数概率毫无意义", reference(model, ids, mask, ids)),
                ("sequence_logprobs.not_shifted", "没有错开一位:位置 t 的 logits 预测的是第 t+1 个 token,应用 logits[:, :-1] "
                 "去对 labels[:, 1:]", unshifted_logprobs(model, batch)),
                ("sequence_logprobs.averaged", "应对回答的 token 求和(整条回答的对数概率 log π(y|x)),你的是平均",
                 expected / (labels[:, 1:] != IGNORE).sum(dim=1)),
            ]
        for key, message, value in candidates:
            if close(got, value, rtol=1e-4, atol=1e-3):
                raise Wrong(key, message)
        row = int((got.detach().double() - expected.double()).abs().argmax())
        raise Wrong("sequence_logprobs.other", f"第 {row} 行应为 {expected[row].item():.3f},你的是 {got[row].item():.3f}:"
                    "对每个回答 token 取 log_softmax 后目标 token 的那一项,再求和")
    if not got.requires_grad:
        raise Wrong("sequence_logprobs.no_grad", "值对了,但结果不能求梯度:DPO 的损失要经过它把梯度传回策略模型,"
                    "不要用 torch.no_grad、detach 或 .item()")

    model = models["train"]
    got = call_sequence_logprobs(sequence_logprobs, model, batch, 1)
    if not model.training or not close(got, references["train"], rtol=1e-4, atol=1e-3):
        raise Wrong("sequence_logprobs.mode_changed", "train 模式(attention dropout 0.1)下,同一个随机种子,你的结果与参考实现"
                    "不同" + ("" if model.training else ",而且调用之后模型变成了 eval 模式") + ":不要在函数里调用 model.eval() "
                    "或 model.train(),训练时 dropout 要照常起作用,模式由调用者决定")

    with torch.no_grad():
        got = call_sequence_logprobs(sequence_logprobs, models["bf16"], batch, 2)
        if not close(got, references["bf16"], rtol=1e-4, atol=1e-3):
            gap = (got.double() - references["bf16"].double()).abs().max().item()
            hint = "先把 logits 升到 fp32(.float())再算 log_softmax;课程在 GPU 上用 bf16 训练"
            if close(got, in_working_dtype(models["bf16"], batch), rtol=1e-4, atol=1e-3):
                hint = "bf16 只有 8 位有效数字,log_softmax 的每个 token 误差约 1%,几十个 token 加起来就偏了。" + hint
            raise Wrong("sequence_logprobs.bf16", f"bf16 模型上你的结果与在 fp32 里算 log_softmax 的结果相差 {gap:.3g}:{hint}")
        got = call_sequence_logprobs(sequence_logprobs, models["confident"], batch, 3)
    expected = references["confident"]
    if not torch.isfinite(got).all():
        raise Wrong("sequence_logprobs.underflow", f"一个很自信的模型(logits 相差几百)上你的结果是 {got.tolist()}:"
                    "先 softmax 再取 log 时,小于 1e-45 的概率在 fp32 里变成 0,log 0 = -inf。"
                    "用 log_softmax(内部先减去最大值),它直接给出有限的对数概率")
    if not close(got, expected, rtol=1e-4, atol=1e-3):
        shown = ", ".join(f"{v:.1f}" for v in got.tolist())
        want = ", ".join(f"{v:.1f}" for v in expected.tolist())
        raise Wrong("sequence_logprobs.confident_other", f"一个很自信的模型(logits 相差几百)上,你的结果 [{shown}] 与参考实现 "
                    f"[{want}] 不同:极小的概率也要算准,用 log_softmax;log(softmax + 一个小数) 会把每个 token 的对数概率截在"
                    "那个小数的对数上")


# ---------------------------------------------------------------- dpo_loss


def grade_dpo_loss(dpo_loss: Callable) -> None:
    """6.4.2: -log sigmoid(beta * (chosen log-ratio - rejected log-ratio)), averaged over pairs; its gradient with
    respect to both policy inputs; finite at margins of hundreds (where a hand-written log(sigmoid) overflows)."""
    from llmtrain.dpo import dpo_loss as reference

    torch.manual_seed(0)
    n = 8
    cases = []
    for beta in (0.1, 0.5):
        pc, pr = -20 - 10 * torch.rand(n), -20 - 10 * torch.rand(n)
        cases.append((f"β={beta} ", beta, pc, pr, pc + torch.randn(n), pr + torch.randn(n)))
    pc, pr = -40 - 10 * torch.rand(n), -40 - 10 * torch.rand(n)
    margins = torch.tensor([400.0, -400.0, 300.0, -300.0, 0.5, -0.5, 120.0, -120.0])
    cases.append(("对数比之差达到几百(训练后期很常见)", 1.0, pc, pr, pc - margins / 2, pr + margins / 2))
    for name, beta, pc, pr, rc, rr in cases:
        policy_chosen, policy_rejected = pc.clone().requires_grad_(), pr.clone().requires_grad_()
        loss = loss_of(dpo_loss(policy_chosen, policy_rejected, rc.clone(), rr.clone(), beta), "dpo_loss")
        ours_chosen, ours_rejected = pc.clone().requires_grad_(), pr.clone().requires_grad_()
        expected = reference(ours_chosen, ours_rejected, rc, rr, beta).loss
        if loss.numel() != 1 and loss.shape != (n,):
            raise Wrong("dpo_loss.shape", f"loss 应是标量(批内平均),你的形状是 {tuple(loss.shape)}({name})")
        if not torch.isfinite(loss).all():
            raise Wrong("dpo_loss.not_finite", f"{name}时你的 loss 是 {loss.detach().reshape(-1)[:3].tolist()}:"
                        "σ(x) 在 x 为 −几百时在 fp32 里下溢成 0,log 0 = −inf;exp(−x) 在 x 为 −几百时上溢成 inf。"
                        "用 F.logsigmoid(它按 x 的正负选不会溢出的算法),不要自己写 log(sigmoid(x)) 或 log(1 + exp(−x))")
        if not close(loss.reshape(expected.shape) if loss.numel() == 1 else loss, expected, rtol=1e-5, atol=1e-6):
            logits = beta * ((pc - rc) - (pr - rr))
            candidates = [
                ("dpo_loss.per_pair", "没有对偏好对取平均:应返回批内平均的标量,你返回了每对一个 loss", -F.logsigmoid(logits)),
                ("dpo_loss.summed", "应对偏好对取平均(mean),你的是求和:loss 的大小(和梯度)会随 batch 大小变",
                 -F.logsigmoid(logits).sum()),
                ("dpo_loss.flipped_sign", "符号反了:你的 loss 在策略更偏好 rejected 时才变小。chosen 的对数比要高过 rejected 的",
                 -F.logsigmoid(-logits).mean()),
                ("dpo_loss.missing_minus", "少了最前面的负号:loss = −log σ(…) 是正数,你的是 log σ(…),梯度下降会把它推向反方向",
                 F.logsigmoid(logits).mean()),
                ("dpo_loss.no_beta", "少了 β:β 控制策略能离参考模型多远,要乘在对数比之差上", -F.logsigmoid(logits / beta).mean()),
                ("dpo_loss.no_reference", "没有减去参考模型的对数概率:DPO 比较的是策略相对参考模型的变化 log π/π_ref,"
                 "不是 log π 本身", -F.logsigmoid(beta * (pc - pr)).mean()),
            ]
            for key, message, value in candidates:
                if close(loss, value, rtol=1e-5, atol=1e-6):
                    raise Wrong(key, f"{message}({name.strip()})")
            shown = f"{loss.item():.4f}" if loss.numel() == 1 else f"形状 {tuple(loss.shape)}"
            raise Wrong("dpo_loss.other", f"{name}时 loss 应为 {expected.item():.4f},你的是 {shown}")
        if not loss.requires_grad:
            raise Wrong("dpo_loss.no_grad", "loss 的值对,但它不能求梯度:不要对策略的对数概率用 .item()、detach 或 numpy")
        mine = gradients(loss.sum(), [policy_chosen, policy_rejected])
        theirs = gradients(expected, [ours_chosen, ours_rejected])
        for which, g, want in zip(["chosen", "rejected"], mine, theirs):
            if relative_gap([g], [want]) > 1e-4:
                raise Wrong("dpo_loss.gradient", f"{name}时 loss 的值对,但对策略 {which} 对数概率的梯度不对(应为 "
                            f"{want[:3].tolist()} …,你的是 {g[:3].tolist()} …):两项都要留在计算图里(不要 detach 其中一项),"
                            "训练同时提高 chosen、压低 rejected 的概率")


# ---------------------------------------------------------------- dpo_batch_loss


def lora_policy(seed: int) -> nn.Module:
    """A toy Qwen2 with peft LoRA on q_proj and v_proj, B random so the adapter changes the output; train mode."""
    from peft import LoraConfig, get_peft_model

    policy = get_peft_model(toy_model(seed), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return policy.train()


def batch_loss_models(separate: bool) -> tuple[nn.Module, nn.Module | None]:
    """A fresh LoRA policy, and the separate reference model (its parameters requiring grad) when `separate`."""
    return lora_policy(0), toy_model(2).train() if separate else None


@lru_cache(maxsize=2)
def reference_batch_loss(separate: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """llmtrain's DPO loss on the sample batch and its gradient on the LoRA parameters, computed once per case."""
    from llmtrain.dpo import dpo_batch_loss as reference

    policy, ref_model = batch_loss_models(separate)
    loss = reference(policy, preference_batch(), BATCH_BETA, ref_model).loss
    return loss.detach(), gradients(loss, [p for p in policy.parameters() if p.requires_grad])


def grade_dpo_batch_loss(dpo_batch_loss: Callable) -> None:
    """6.4.3: policy log-probs (with the adapter, with a gradient) and reference log-probs (the same model with its
    adapter disabled, or the `reference` model; no gradient), chosen rows first; the policy left as it was."""
    from peft.tuners.lora import LoraLayer

    from llmtrain.dpo import dpo_loss, sequence_logprobs

    batch = preference_batch()
    args = (batch["input_ids"], batch["attention_mask"], batch["labels"])
    beta = BATCH_BETA
    for separate in (False, True):
        policy, ref_model = batch_loss_models(separate)
        lora = [p for p in policy.parameters() if p.requires_grad]
        expected, want_grads = reference_batch_loss(separate)
        where = "(reference 是另一个模型)" if separate else "(reference=None:参考模型是关掉适配器的同一个模型)"
        result = dpo_batch_loss(policy, {k: v.clone() for k, v in batch.items()}, beta,
                                *([ref_model] if separate else []))
        loss = loss_of(result, "dpo_batch_loss")
        if not policy.training:
            raise Wrong("dpo_batch_loss.mode_changed", f"调用之后策略模型变成了 eval 模式{where}:训练的一步要在 train 模式下"
                        "进行(dropout 照常起作用);参考模型的对数概率用 torch.no_grad 和关掉适配器得到,不用切换模式")
        if any(layer.disable_adapters for layer in policy.modules() if isinstance(layer, LoraLayer)):
            raise Wrong("dpo_batch_loss.adapter_left_disabled", f"调用之后策略模型的适配器还关着{where}:"
                        "用 with policy.disable_adapter(): 只在算参考模型的那一次前向里关掉适配器,出了 with 自动打开")
        if loss.numel() != 1:
            raise Wrong("dpo_batch_loss.shape", f"应返回一个标量 loss(对偏好对平均),你的形状是 {tuple(loss.shape)}{where}")
        if not close(loss.reshape(()), expected, rtol=1e-4, atol=1e-5):
            with torch.no_grad():
                policy_logps = sequence_logprobs(policy, *args)
                with policy.disable_adapter():
                    disabled_logps = sequence_logprobs(policy, *args)
                ref_logps = disabled_logps if not separate else sequence_logprobs(ref_model, *args)
            chosen, rejected = policy_logps.chunk(2)
            ref_chosen, ref_rejected = ref_logps.chunk(2)
            candidates = [
                ("dpo_batch_loss.reference_is_policy", "参考模型的对数概率与策略的完全相同,loss 恒为 log 2 ≈ 0.693:"
                 "LoRA 时参考模型是关掉适配器的同一个模型(with policy.disable_adapter():),不是带着适配器的策略本身",
                 dpo_loss(chosen, rejected, chosen, rejected, beta).loss),
                ("dpo_batch_loss.interleaved", "chosen 和 rejected 的行分错了:pad_preference_batch 先放 n 行 chosen,再放 "
                 "n 行 rejected(前一半、后一半,.chunk(2)),不是交替排列",
                 dpo_loss(policy_logps[0::2], policy_logps[1::2], ref_logps[0::2], ref_logps[1::2], beta).loss),
                ("dpo_batch_loss.halves_swapped", "chosen 和 rejected 反了:批的前一半是 chosen,后一半是 rejected",
                 dpo_loss(rejected, chosen, ref_rejected, ref_chosen, beta).loss),
                ("dpo_batch_loss.reference_ignored", "传了 reference 模型,你却仍用关掉适配器的策略当参考:reference 不是 "
                 "None 时(全参数 DPO),参考模型就是它",
                 dpo_loss(chosen, rejected, *disabled_logps.chunk(2), beta).loss),
            ]
            for key, message, value in candidates:
                if close(loss.reshape(()), value, rtol=1e-4, atol=1e-5):
                    raise Wrong(key, f"{message}{where}")
            raise Wrong("dpo_batch_loss.other", f"loss 应为 {expected.item():.5f},你的是 {loss.item():.5f}{where}:"
                        "策略(带适配器)和参考模型各算一次 sequence_logprobs,按前一半 chosen、后一半 rejected 交给 dpo_loss")
        if not loss.requires_grad:
            raise Wrong("dpo_batch_loss.no_grad", f"loss 的值对,但不能求梯度{where}:策略模型的前向不能放在 torch.no_grad 里")
        got_grads = gradients(loss.reshape(()), lora)
        if relative_gap(got_grads, want_grads) > 1e-4:
            raise Wrong("dpo_batch_loss.gradient", f"loss 的值对,但 LoRA 参数的梯度与参考实现相差 "
                        f"{relative_gap(got_grads, want_grads):.2%}(相对大小){where}:chosen 和 rejected 两部分的策略对数"
                        "概率都要带着梯度(一次前向算 2n 行最简单),只有参考模型那一份不要梯度")
        if separate:
            loss.reshape(()).backward()
            leaked = [n for n, p in ref_model.named_parameters() if p.grad is not None]
            if leaked:
                raise Wrong("dpo_batch_loss.reference_grad", f"反向传播之后参考模型的 {leaked[0]} 等 {len(leaked)} 个参数有了梯度"
                            f"{where}:参考模型不训练,它的前向要放在 torch.no_grad() 里,否则白白保存激活值、算梯度,显存翻倍")
