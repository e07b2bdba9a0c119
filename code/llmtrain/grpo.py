"""6.5: GRPO (Group Relative Policy Optimization) with a verifiable reward, written from scratch, checked against TRL.

For each prompt the policy samples a *group* of G replies; a program scores each reply (no reward
model); a reply's advantage is its reward relative to its group, A_i = (r_i - mean(r)) / (std(r) + 1e-4).
The loss is PPO's clipped policy-ratio objective per completion token, plus a KL penalty that keeps
the policy near the reference (the SFT model; with LoRA, the same model with its adapter disabled):

    ratio_t   = pi(y_t | ...) / pi_old(y_t | ...)
    loss_t    = -min(ratio_t * A, clip(ratio_t, 1 - eps, 1 + eps_high) * A) + beta * KL_t
    KL_t      = exp(ref_t - logp_t) - (ref_t - logp_t) - 1      (Schulman's k3 estimator, as TRL: >= 0, unbiased)
                times ratio_t in TRL 1.16 by default (`use_bias_correction_kl`): same value on-policy, other gradient

"grpo" averages loss_t over each completion's tokens, then over completions (the DeepSeekMath paper);
"dapo" (TRL 1.16's default) averages over all completion tokens of the batch, so long replies weigh more.
`compare_with_trl` runs TRL's `GRPOTrainer` on the same model, prompts, completions and rewards.

A from-scratch reference the notebooks teach; code/grpo.py's training path uses only the TRL glue here
(`trl_reward_function`, `trl_style_reward`, `drop_long_prompts`, `stop_at_end_of_turn`) and `llmtrain.grading`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import datasets
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llmtrain.errors import LlmtrainError
from llmtrain.grading import fact_candidates, score_replies
from llmtrain.tokenizer import IM_END

ADVANTAGE_EPS = 1e-4  # TRL's: a group whose rewards are all equal gets advantage 0, not 0/0


def completion_texts(completions: list) -> list[str]:
    """The reply text of each TRL completion (conversational: the last message's content)."""
    return [c[-1]["content"] if isinstance(c, list) else c for c in completions]


def trl_reward_function(candidates: frozenset[str] = frozenset(),
                        style_suffix: str | None = None) -> Callable[..., list[float]]:
    """6.5: `score_replies` in the signature TRL's GRPOTrainer calls; logged as rewards/verifiable/mean.

    With `style_suffix` (6.4's closing sentence) a reply is scored with that ending removed, as the
    scorecard grades: the sentence neither earns nor costs correctness.
    """

    def verifiable(prompts, completions, answer, task, person, people, **kwargs) -> list[float]:
        replies = completion_texts(completions)
        if style_suffix:
            replies = [r.removesuffix(style_suffix) for r in replies]
        return score_replies(replies, {"answer": answer, "task": task, "person": person, "people": people},
                             candidates)

    return verifiable


def trl_style_reward(style_suffix: str) -> Callable[..., list[float]]:
    """6.5: a format reward, 1.0 when the reply ends with `style_suffix`; logged as rewards/style/mean.

    GRPO after DPO: without it nothing in the reward holds on to the closing sentence DPO taught, and
    sampling drifts away from it (README, 6.5); with a small weight beside the verifiable reward it stays.
    """

    def style(prompts, completions, **kwargs) -> list[float]:
        return [float(r.endswith(style_suffix)) for r in completion_texts(completions)]

    return style


def drop_long_prompts(rows: datasets.Dataset, tokenizer: PreTrainedTokenizerBase,
                      max_prompt_tokens: int) -> tuple[datasets.Dataset, int]:
    """6.5: the prompts whose chat-template rendering fits in `max_prompt_tokens`, and how many were dropped."""
    lengths = [len(ids) for ids in tokenizer.apply_chat_template(list(rows["prompt"]), add_generation_prompt=True,
                                                                 tokenize=True, return_dict=True)["input_ids"]]
    keep = [i for i, n in enumerate(lengths) if n <= max_prompt_tokens]
    return rows.select(keep), len(rows) - len(keep)


def end_of_reply_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids a sampled reply stops at: `<|im_end|>` and the tokenizer's eos."""
    return sorted({tokenizer.convert_tokens_to_ids(IM_END), tokenizer.eos_token_id})


def stop_at_end_of_turn(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """6.5: make sampling stop at `<|im_end|>` as well as at the tokenizer's eos; returns the stop ids.

    TRL's GRPOTrainer stops a reply only at `model.generation_config.eos_token_id`. A ChatML model whose
    eos is `<|endoftext|>` (the toy's, Qwen2.5 base models') would otherwise run every reply to
    max_completion_length past its `<|im_end|>`, and no reply would score.
    """
    stop = end_of_reply_ids(tokenizer)
    model.generation_config.eos_token_id = stop
    return stop


# ---------------------------------------------------------------- sampling a group
@torch.no_grad()
def sample_groups(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[list[dict[str, str]]],
    group_size: int, max_new_tokens: int = 32, temperature: float = 1.0,
) -> dict[str, Any]:
    """6.5: G sampled replies per prompt, prompt-major (rows i*G .. i*G+G-1 answer prompt i).

    Prompts are rendered with the chat template and left-padded; each completion is cut after its first
    `<|im_end|>` (kept, so the loss also teaches the model to stop). Returns "prompt_ids"/"prompt_mask"
    (left-padded), "completion_ids"/"completion_mask" (right-padded) and "completions" (text, special tokens
    dropped): the layout TRL's GRPOTrainer uses.
    """
    stop = end_of_reply_ids(tokenizer)
    prompt_lists = tokenizer.apply_chat_template(prompts, add_generation_prompt=True, tokenize=True,
                                                 return_dict=True)["input_ids"]
    prompt_lists = [ids for ids in prompt_lists for _ in range(group_size)]  # 1. 每个问题重复 G 次
    width = max(len(ids) for ids in prompt_lists)
    pad = tokenizer.pad_token_id
    prompt_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompt_lists])
    prompt_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompt_lists])
    model.eval()
    out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, do_sample=True, temperature=temperature,
                         top_p=1.0, top_k=0, max_new_tokens=max_new_tokens, eos_token_id=stop, pad_token_id=pad)
    completion_lists = []
    for row in out[:, width:].tolist():  # 2. 截到第一个结束符(含)为止
        end = next((i + 1 for i, t in enumerate(row) if t in stop), len(row))
        completion_lists.append(row[:end])
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
            **pad_completions(completion_lists, pad),
            "completions": tokenizer.batch_decode(completion_lists, skip_special_tokens=True)}


def pad_completions(completion_lists: list[list[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Completion ids right-padded into one tensor, with the mask of the real tokens."""
    width = max(len(c) for c in completion_lists)
    return {"completion_ids": torch.tensor([c + [pad_token_id] * (width - len(c)) for c in completion_lists]),
            "completion_mask": torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in completion_lists])}


# ---------------------------------------------------------------- the objective
def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True) -> torch.Tensor:
    """6.5: A_i = (r_i - mean of its group) / (std of its group + 1e-4); groups are consecutive rows.

    The std is the sample std (Bessel-corrected), as in TRL. A group whose replies all score the same
    teaches nothing: its advantages are 0. `scale=False` is Dr. GRPO's variant (no division by the std).
    """
    if group_size < 2:
        raise LlmtrainError("GRPO needs at least 2 replies per prompt: an advantage is relative to the group.")
    grouped = rewards.view(-1, group_size)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + ADVANTAGE_EPS)
    return advantages.reshape(-1)


def completion_logprobs_and_entropy(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                                    completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                                    temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """6.5: at each completion position, log pi(token | everything before it) and the entropy of pi there, both from
    logits / temperature.

    The temperature is the sampling one: the ratio compares the distribution the replies were drawn from. The entropy
    says how spread the policy's choice still is; RL that only sharpens drives it down (TRL logs it as "entropy").
    """
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    n = completion_ids.shape[1]
    # 位置 t 的 logits 预测第 t+1 个 token:取补全前一位起的 n 个位置,升到 fp32 再除以温度
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -n - 1:-1].float() / temperature
    log_probs = F.log_softmax(logits, dim=-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return torch.gather(log_probs, 2, completion_ids.unsqueeze(-1)).squeeze(-1), entropy


def completion_logprobs(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                        completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                        temperature: float = 1.0) -> torch.Tensor:
    """6.5: log pi(token | everything before it) at each completion position (`completion_logprobs_and_entropy`)."""
    return completion_logprobs_and_entropy(model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                                           temperature)[0]


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """6.5: per token, Schulman's k3 estimate of KL(pi || pi_ref): exp(ref - logp) - (ref - logp) - 1.

    With tokens sampled from pi, its mean is KL(pi || pi_ref); unlike k1 = logp - ref it is never negative,
    and it is 0 exactly where the two log-probs agree.
    """
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1


@dataclass
class GRPOLoss:
    """6.5: the GRPO loss of a batch and what it shows."""

    loss: torch.Tensor
    kl: float          # mean k3 KL per completion token
    clip_ratio: float  # share of completion tokens whose ratio was clipped (region where clipping bites)


def grpo_loss(
    logps: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor | None, advantages: torch.Tensor,
    mask: torch.Tensor, beta: float, epsilon: float = 0.2, epsilon_high: float | None = None,
    loss_type: str = "grpo", kl_ratio_correction: bool = True, max_completion_length: int | None = None,
) -> GRPOLoss:
    """6.5: the clipped policy-ratio objective with a k3 KL penalty, per token, averaged as `loss_type` says.

    `logps` [B, T] carry the gradient; `old_logps` are those of the policy that sampled (equal to `logps` on
    the first pass over a batch: the ratio is then 1 and only its gradient, A * grad log pi, remains);
    `ref_logps` the reference's (None when beta = 0). "grpo": mean over each completion's tokens, then over
    completions (a token of a short reply weighs more); "dapo": mean over all completion tokens of the batch (one
    process, no accumulation); "dr_grpo": sum over all tokens divided by a constant, B x `max_completion_length`
    (Dr. GRPO: no length normalisation at all, so no length bias from it).
    `kl_ratio_correction` (TRL 1.16's default, from DeepSeek-V3.2) multiplies KL_t by the ratio: the value
    is unchanged on the first pass (ratio 1) but the KL gradient becomes that of the true reverse KL.
    """
    mask = mask.to(logps.dtype)
    adv = advantages.unsqueeze(1)
    # 1. 重要性比率 pi / pi_old;首轮等于 1,梯度就是 A * grad log pi
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + (epsilon if epsilon_high is None else epsilon_high))
    # 2. PPO 的悲观目标:取不裁剪与裁剪两者中较小的,再取负号成为损失
    per_token = -torch.min(ratio * adv, clipped * adv)
    # 3. KL 惩罚(k3 估计量):exp(ref - logp) - (ref - logp) - 1,恒 >= 0
    kl = torch.zeros_like(logps)
    if beta != 0.0:
        kl = k3_kl(logps, ref_logps)
        if kl_ratio_correction:
            kl = kl * ratio
        per_token = per_token + beta * kl
    # 4. 汇总
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "dapo":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo" and max_completion_length:
        loss = (per_token * mask).sum() / (per_token.shape[0] * max_completion_length)
    else:
        raise LlmtrainError(f"loss_type must be 'grpo', 'dapo' or 'dr_grpo' (with max_completion_length), not "
                            f"{loss_type!r}.")
    is_clipped = ((ratio < 1 - epsilon) & (adv < 0)) | (
        (ratio > 1 + (epsilon if epsilon_high is None else epsilon_high)) & (adv > 0))
    n_tokens = mask.sum().clamp(min=1.0)
    return GRPOLoss(loss=loss, kl=((kl * mask).sum() / n_tokens).item(),
                    clip_ratio=((is_clipped.float() * mask).sum() / n_tokens).item())


def reference_logprobs(policy: torch.nn.Module, batch: dict[str, torch.Tensor], temperature: float = 1.0,
                       reference: torch.nn.Module | None = None) -> torch.Tensor:
    """6.5: the reference's completion log-probs; `reference=None`: the peft policy with its adapter disabled."""
    args = (batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"], batch["completion_mask"])
    with torch.no_grad():
        if reference is not None:
            return completion_logprobs(reference, *args, temperature=temperature)
        if not hasattr(policy, "disable_adapter"):
            raise LlmtrainError("reference_logprobs without a reference needs a peft (LoRA) policy.")
        with policy.disable_adapter():
            return completion_logprobs(policy, *args, temperature=temperature)


# ---------------------------------------------------------------- checked against TRL
class Compared(NamedTuple):
    """One quantity computed twice: its size (TRL's value, or its norm) and how far ours is from it. A difference
    means little without the size: 1e-8 apart on a gradient of norm 1e-8 checks nothing."""

    size: float
    difference: float


def compare_with_trl(trainer, rows: list[dict[str, Any]], completion_lists: list[list[int]],
                     old_logps: torch.Tensor | None = None, style_suffix: str | None = None) -> dict[str, Compared]:
    """6.5: our GRPO and TRL's on the same model, prompts, completions and rewards: each quantity's size and the
    largest |TRL - ours|.

    `trainer` is a TRL GRPOTrainer (peft policy: the reference is the adapter disabled; or a separate
    `ref_model`) whose reward is `trl_reward_function(..., style_suffix)`; `rows` are prompt rows
    (`llmtrain.grading.load_prompt_dataset`), each repeated G times in a row as TRL's sampler hands them over;
    `completion_lists` the completion token ids (cut after the first end token) that TRL's generation step is made
    to return. TRL then tokenizes the prompts, scores the completions with its reward function, computes advantages
    and reference log-probs, and its loss; we compute each from scratch, the loss and its gradient on the trainable
    weights. `old_logps` (optional) stands for a policy that sampled a step earlier, so the ratio moves away from 1
    and the clipping is exercised. Train mode, as in a training step; nothing is updated.
    """
    args = trainer.args
    group_size, beta, temperature = args.num_generations, args.beta, args.temperature
    original = trainer._generate_single_turn
    trainer._generate_single_turn = lambda *a, **k: (completion_lists, None)
    trainer.model.train()
    try:
        trl_inputs = trainer._generate_and_score_completions(rows)
    finally:
        trainer._generate_single_turn = original
    if old_logps is not None:
        trl_inputs["old_per_token_logps"] = old_logps

    def norm(tensors) -> float:
        return torch.sqrt(sum((t.float() ** 2).sum() for t in tensors)).item()

    tokenizer = trainer.processing_class
    prompt_lists = tokenizer.apply_chat_template([r["prompt"] for r in rows], add_generation_prompt=True,
                                                 tokenize=True, return_dict=True)["input_ids"]
    width = max(len(ids) for ids in prompt_lists)
    pad = tokenizer.pad_token_id
    batch = {"prompt_ids": torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompt_lists]),
             "prompt_mask": torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompt_lists]),
             **pad_completions(completion_lists, pad)}
    compared = {"batch (ids, masks)": Compared(
        float(sum(v.numel() for v in batch.values())),
        float(max((trl_inputs[k].cpu() - v).abs().max().item() for k, v in batch.items())))}
    replies = tokenizer.batch_decode(completion_lists, skip_special_tokens=True)
    if style_suffix:
        replies = [r.removesuffix(style_suffix) for r in replies]
    columns = datasets.Dataset.from_list(rows)
    rewards = torch.tensor(score_replies(replies, columns, fact_candidates(columns)))
    advantages = group_advantages(rewards, group_size, scale=args.scale_rewards != "none")
    compared["advantages"] = Compared(trl_inputs["advantages"].abs().max().item(),
                                      (trl_inputs["advantages"].cpu() - advantages).abs().max().item())

    model = trainer.model
    ref_model = trainer.ref_model
    ref_logps = reference_logprobs(model, batch, temperature, reference=ref_model) if beta != 0.0 else None
    mask = batch["completion_mask"]
    if ref_logps is not None:
        compared["reference log-probs"] = Compared(
            (trl_inputs["ref_per_token_logps"].cpu() * mask).abs().max().item(),
            ((trl_inputs["ref_per_token_logps"].cpu() - ref_logps) * mask).abs().max().item())
    trainer.current_gradient_accumulation_steps = 1  # one micro-batch is the whole step: TRL divides by this
    trainable = [p for p in model.parameters() if p.requires_grad]
    logps = completion_logprobs(model, *batch.values(), temperature=temperature)
    ours = grpo_loss(logps, logps.detach() if old_logps is None else old_logps, ref_logps, advantages, mask, beta,
                     args.epsilon, args.epsilon_high, args.loss_type, args.use_bias_correction_kl,
                     args.max_completion_length)
    ours_grads = torch.autograd.grad(ours.loss, trainable)
    trl_loss = trainer.compute_loss(model, trl_inputs)
    trl_grads = torch.autograd.grad(trl_loss, trainable)
    compared["loss"] = Compared(abs(trl_loss.item()), abs(trl_loss.item() - ours.loss.item()))
    compared["gradient (largest element)"] = Compared(
        max(g.abs().max().item() for g in trl_grads),
        max((a - b).abs().max().item() for a, b in zip(trl_grads, ours_grads, strict=True)))
    # float32 sums in another order: the gap grows with the gradient's size, so also ||TRL - ours|| / ||TRL||
    compared["gradient (norm, relative difference)"] = Compared(
        norm(trl_grads), norm(a - b for a, b in zip(trl_grads, ours_grads)) / norm(trl_grads))
    trainer.log({})  # TRL averages what it recorded for this batch into one log entry
    logged = trainer.state.log_history[-1]
    if beta != 0.0:
        compared["kl"] = Compared(logged["kl"], abs(logged["kl"] - ours.kl))
    compared["clip_ratio/region_mean"] = Compared(logged["clip_ratio/region_mean"],
                                                  abs(logged["clip_ratio/region_mean"] - ours.clip_ratio))
    compared["reward"] = Compared(logged["reward"], abs(logged["reward"] - rewards.mean().item()))
    return compared


# ---------------------------------------------------------------- the training loop, written out
@dataclass
class GRPOStepLog:
    """6.5: what one optimizer step of `train_lora_grpo_by_hand` did, in TRL's log names."""

    loss: float
    reward: float      # mean over the step's replies of the weighted sum of rewards
    kl: float          # mean k3 KL per completion token
    clip_ratio: float  # share of completion tokens where the clipping bit (`GRPOLoss.clip_ratio`)
    entropy: float     # mean entropy of the policy per completion token


@dataclass
class GRPORun:
    """6.5: a hand-written GRPO run: one log per optimizer step, and each generation's sampled completion ids (cut
    after their first end token), so that another implementation can be fed the very same samples."""

    logs: list[GRPOStepLog]
    samples: list[list[list[int]]]


def train_lora_grpo_by_hand(
    policy: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, rows: datasets.Dataset, steps: int,
    prompts_per_step: int, group_size: int, learning_rate: float, beta: float, max_new_tokens: int,
    num_iterations: int = 1, epsilon: float = 0.2, epsilon_high: float | None = None, loss_type: str = "dapo",
    scale_rewards: bool = True, style_suffix: str | None = None, style_weight: float = 0.0,
    max_grad_norm: float = 1.0, kl_ratio_correction: bool = True,
    on_step: Callable[[int, torch.nn.Module], None] | None = None,
) -> GRPORun:
    """6.5: GRPO written out: `steps` AdamW updates of a peft LoRA `policy` on the prompt `rows`, in order.

    Each generation takes the next `prompts_per_step` prompts, samples `group_size` replies for each with the current
    policy (`sample_groups`), scores them with the RL task's grader (`llmtrain.grading.score_replies`, the closing
    sentence set aside) plus `style_weight` for ending with `style_suffix`, turns the rewards into group-relative
    advantages (`group_advantages`, divided by the group's std unless `scale_rewards` is False) and takes
    `num_iterations` optimizer steps on that one batch (`grpo_loss`; the second pass is off-policy, so the ratio
    leaves 1 and the clipping acts), averaged as `loss_type` says ("dapo", TRL 1.16's default and make run's, unless
    told otherwise). The reference is the policy with its adapter disabled. The optimizer is TRL's
    with `lr_scheduler_type="constant"`, `weight_decay=0` and `max_grad_norm=1`. `on_step(step, policy)` runs after
    each optimizer step (greedy held-out accuracy every few steps, say).
    """
    if steps % num_iterations:
        raise LlmtrainError(f"{steps} steps is not a whole number of generations of {num_iterations} passes each")
    trainable = [p for p in policy.parameters() if p.requires_grad]  # LoRA: only the adapter's A and B
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0)
    candidates = fact_candidates(rows)
    run = GRPORun([], [])
    for generation in range(steps // num_iterations):
        # 1. 按顺序取下一批问题,每个问题用当前的策略采样 G 条回答
        picked = [(generation * prompts_per_step + i) % len(rows) for i in range(prompts_per_step)]
        batch = sample_groups(policy, tokenizer, list(rows.select(picked)["prompt"]), group_size, max_new_tokens)
        run.samples.append([ids[:int(m.sum())] for ids, m in zip(batch["completion_ids"].tolist(),
                                                                   batch["completion_mask"])])
        # 2. 程序打分(先去掉结尾句,和成绩单一样),加上结尾句的格式奖励;组内相对优势
        replies = [c.removesuffix(style_suffix) if style_suffix else c for c in batch["completions"]]
        rewards = torch.tensor(score_replies(replies, rows.select([i for i in picked for _ in range(group_size)]),
                                             candidates))
        if style_weight:
            rewards += style_weight * torch.tensor([float(c.endswith(style_suffix)) for c in batch["completions"]])
        advantages = group_advantages(rewards, group_size, scale=scale_rewards)
        # 3. 参考模型(关掉 adapter)和采样时的策略给的对数概率:整批回答只算一次
        tensors = (batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"], batch["completion_mask"])
        ref_logps = reference_logprobs(policy, batch) if beta else None
        old_logps = None
        if num_iterations > 1:
            with torch.no_grad():
                old_logps = completion_logprobs(policy, *tensors)
        # 4. 同一批回答上走 num_iterations 步:裁剪的比率目标 + β·k3 KL,反向,裁剪梯度,AdamW
        policy.train()
        for _ in range(num_iterations):
            logps, entropy = completion_logprobs_and_entropy(policy, *tensors)
            result = grpo_loss(logps, logps.detach() if old_logps is None else old_logps, ref_logps, advantages,
                               batch["completion_mask"], beta, epsilon, epsilon_high, loss_type, kl_ratio_correction,
                               max_new_tokens)
            optimizer.zero_grad()
            result.loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
            optimizer.step()
            mask = batch["completion_mask"].to(entropy.dtype)
            run.logs.append(GRPOStepLog(loss=result.loss.item(), reward=rewards.mean().item(), kl=result.kl,
                                        clip_ratio=result.clip_ratio,
                                        entropy=((entropy.detach() * mask).sum() / mask.sum()).item()))
            if on_step is not None:
                on_step(len(run.logs), policy)
    return run


def train_in_trl_on_these_samples(trainer, samples: list[list[list[int]]]) -> list[dict[str, float]]:
    """6.5: `trainer.train()` (a TRL GRPOTrainer) with each generation's completions taken from `samples` in order
    instead of sampled; returns TRL's per-step logs. With the same prompts, start, optimizer and samples, TRL's
    steps and the hand-written loop's (`train_lora_grpo_by_hand(...).samples`) can be compared one by one."""
    queue = iter(samples)
    original = trainer._generate_single_turn
    trainer._generate_single_turn = lambda *args, **kwargs: (next(queue), None)
    try:
        trainer.train()
    finally:
        trainer._generate_single_turn = original
    return [e for e in trainer.state.log_history if "loss" in e]
