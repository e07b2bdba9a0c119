"""6.4: DPO (Direct Preference Optimization) written from scratch, checked against TRL's DPOTrainer.

A preference pair is a prompt with a chosen and a rejected reply. DPO needs four numbers per pair:
the log-probability of each reply under the policy being trained and under the frozen reference
(the SFT model), each the sum over the reply's tokens given the prompt. The loss is the
Bradley-Terry objective of a reward model whose reward is beta * log(pi / pi_ref):

    loss = -log sigmoid(beta * [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))])

Pairs are rendered with the SFT ChatML (`llmtrain.sft_data`), so DPO scores exactly the tokens SFT
trained on: each reply plus its closing `<|im_end|>`, no extra BOS/EOS. With LoRA the reference is
the same model with its adapter disabled: no second copy of the weights. `TokenizedPairsDPOTrainer`
runs the real job through TRL on these very token ids.

A from-scratch reference the notebooks teach (6.4 trains with it and checks it against TRL); code/dpo.py's
training path uses only the data helpers and `TokenizedPairsDPOTrainer`.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any

import datasets
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase
from trl import DPOTrainer

from llmtrain.errors import LlmtrainError
from llmtrain.jsonl import load_normalized_jsonl, preview
from llmtrain.sft_data import IGNORE_INDEX, check_chat_tokenizer, normalize_conversation, tokenize_conversation
from llmtrain.tokenizer import DEFAULT_SYSTEM_MESSAGE

logger = logging.getLogger(__name__)

FORMAT_HINT = (
    'each line must be one JSON object like {"prompt": "...", "chosen": "...", "rejected": "..."}, or its '
    'conversational form {"prompt": [{"role": "user", "content": "..."}], "chosen": [{"role": "assistant", '
    '"content": "..."}], "rejected": [...]}'
)
PAIR_KEYS = ("prompt", "chosen", "rejected")


def _reply_text(reply: Any, key: str) -> str:
    """A reply is a string, or (conversational form) a list holding one assistant message."""
    if isinstance(reply, list) and len(reply) == 1 and isinstance(reply[0], dict):
        turn = reply[0]
        if turn.get("role", turn.get("from")) != "assistant":
            raise LlmtrainError(f"'{key}' must be one assistant message, got {preview(reply)}")
        reply = turn.get("content", turn.get("value"))
    if not isinstance(reply, str):
        raise LlmtrainError(f"'{key}' must be a string or [{{\"role\": \"assistant\", \"content\": ...}}], "
                            f"got {preview(reply)}")
    if not reply.strip():
        raise LlmtrainError(f"'{key}' is empty")
    return reply


def normalize_preference(record: Any, system_message: str = DEFAULT_SYSTEM_MESSAGE) -> dict[str, Any]:
    """6.4: one preference record -> {"prompt": chat messages (system first), "chosen": str, "rejected": str}.

    The prompt is a string (one user turn) or a list of turns (BelleGroup or OpenAI style, as in
    SFT); it must end with a user turn. Replies must be non-empty and differ from each other.
    """
    if not isinstance(record, dict) or any(key not in record for key in PAIR_KEYS):
        raise LlmtrainError(f"needs 'prompt', 'chosen' and 'rejected', got {preview(record)}")
    prompt = record["prompt"]
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if not isinstance(turns, list) or not turns:
        raise LlmtrainError(f"'prompt' must be a string or a non-empty list of turns, got {preview(prompt)}")
    chosen, rejected = _reply_text(record["chosen"], "chosen"), _reply_text(record["rejected"], "rejected")
    if chosen == rejected:
        raise LlmtrainError("'chosen' and 'rejected' are identical: the pair states no preference")
    # normalize_conversation checks roles and contents exactly as SFT does; the reply is then split off again
    messages = normalize_conversation([*turns, {"role": "assistant", "content": chosen}], system_message)[:-1]
    if messages[-1]["role"] != "user" or not messages[-1]["content"].strip():
        raise LlmtrainError(f"the prompt must end with a non-empty user turn, got {preview(prompt)}")
    return {"prompt": messages, "chosen": chosen, "rejected": rejected}


def load_preference_dataset(files: list[str], system_message: str = DEFAULT_SYSTEM_MESSAGE) -> datasets.Dataset:
    """6.4: read and check preference JSON lines; the first bad record stops the run, naming file and line.

    Every line is checked (a line without prompt/chosen/rejected, an empty string, chosen identical
    to rejected), so nothing is trained on a file with a broken pair.
    """
    return load_normalized_jsonl(files, lambda record: normalize_preference(record, system_message), FORMAT_HINT)


def _prompt_and_reply(
    messages: list[dict[str, str]], reply: str, tokenizer: PreTrainedTokenizerBase
) -> tuple[list[int], list[int]]:
    """Token ids of the ChatML prompt (up to `<|im_start|>assistant\\n`) and of `reply<|im_end|>`.

    The SFT tokenization (`tokenize_conversation`) of the whole conversation is reused: the reply
    is the last run of supervised labels, the prompt everything before it; the `\\n` after the
    closing `<|im_end|>` belongs to neither, as in SFT.
    """
    sample = tokenize_conversation([*messages, {"role": "assistant", "content": reply}], tokenizer, sys.maxsize)
    ids, labels = sample["input_ids"], sample["labels"]
    end = max(i for i, label in enumerate(labels) if label != IGNORE_INDEX) + 1
    start = end
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return ids[:start], ids[start:end]


def tokenize_preference(
    pair: dict[str, Any], tokenizer: PreTrainedTokenizerBase, max_len: int
) -> dict[str, list[int]]:
    """6.4: one normalized pair -> {"prompt_ids", "chosen_ids", "rejected_ids"} (TRL's column names).

    Prompt + reply is cut to `max_len` tokens by shortening the reply; a prompt that leaves no room
    for a reply gets empty reply ids, and `build_preference_dataset` drops it.
    """
    prompt_ids, chosen_ids = _prompt_and_reply(pair["prompt"], pair["chosen"], tokenizer)
    rejected_prompt_ids, rejected_ids = _prompt_and_reply(pair["prompt"], pair["rejected"], tokenizer)
    if rejected_prompt_ids != prompt_ids:
        raise LlmtrainError("the tokenizer merges the prompt's last token into the reply; use a tokenizer that "
                            "keeps '\\n' after '<|im_start|>assistant' a token of its own")
    room = max(max_len - len(prompt_ids), 0)
    return {"prompt_ids": prompt_ids, "chosen_ids": chosen_ids[:room], "rejected_ids": rejected_ids[:room]}


def build_preference_dataset(
    pairs: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_len: int, num_proc: int | None = None
) -> datasets.Dataset:
    """6.4: tokenize every pair (`tokenize_preference`); drop and count those whose prompt fills `max_len`."""
    check_chat_tokenizer(tokenizer)
    tokenized = pairs.map(tokenize_preference, fn_kwargs={"tokenizer": tokenizer, "max_len": max_len},
                          num_proc=num_proc, remove_columns=pairs.column_names, desc="Rendering preference pairs")
    kept = tokenized.filter(lambda ex: len(ex["chosen_ids"]) > 0, num_proc=num_proc)
    dropped = len(tokenized) - len(kept)
    if dropped:
        logger.warning("Dropped %d of %d pairs: the prompt leaves no room for a reply within %d tokens",
                       dropped, len(tokenized), max_len)
    if len(kept) == 0:
        raise LlmtrainError(f"No preference pair leaves room for a reply within {max_len} tokens: "
                            "raise --block_size or shorten the prompts.")
    logger.info("%d preference pairs ready for DPO (max %d tokens)", len(kept), max_len)
    return kept


def pad_preference_batch(examples: list[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """6.4: n pairs -> one batch of 2n rows (chosen rows first, then rejected), padded on the right.

    Labels are the input ids on the reply tokens and -100 on the prompt and the padding, so a
    reply's log-probability is read from exactly its own tokens.
    """
    rows, labels = [], []
    for key in ("chosen_ids", "rejected_ids"):  # 1. 先放所有 chosen 行, 再放所有 rejected 行
        for ex in examples:
            rows.append(ex["prompt_ids"] + ex[key])
            labels.append([IGNORE_INDEX] * len(ex["prompt_ids"]) + ex[key])  # 2. prompt 不计分
    width = max(len(r) for r in rows)  # 3. 右侧补齐到本批最长
    pad = [width - len(r) for r in rows]
    return {
        "input_ids": torch.tensor([r + [pad_token_id] * n for r, n in zip(rows, pad)]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * n for r, n in zip(rows, pad)]),
        "labels": torch.tensor([lab + [IGNORE_INDEX] * n for lab, n in zip(labels, pad)]),
    }


def sequence_logprobs(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """6.4: log pi(reply | prompt) per row: the sum of the log-probabilities of the tokens labelled != -100."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    # 1. 位置 t 的 logits 预测第 t+1 个 token: 错开一位; bf16/fp16 的 logits 先升到 fp32 再算 softmax
    logits, targets = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32)), labels[:, 1:]
    mask = targets != IGNORE_INDEX
    # 2. 每个位置取出目标 token 的 log 概率 (-100 先换成 0, 再由 mask 清掉)
    token_logps = torch.gather(F.log_softmax(logits, dim=-1), 2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    # 3. 只把回复部分的 token 加起来: 整句回复的 log 概率
    return (token_logps * mask).sum(dim=-1)


@dataclass
class DPOLoss:
    """6.4: the DPO loss of a batch and what it teaches: implicit rewards, reward accuracy and margin."""

    loss: torch.Tensor
    chosen_rewards: torch.Tensor    # beta * (log pi(y_w) - log ref(y_w)), one per pair
    rejected_rewards: torch.Tensor  # beta * (log pi(y_l) - log ref(y_l))
    reward_accuracy: float          # share of pairs whose chosen reward beats the rejected one
    reward_margin: float            # mean of chosen - rejected reward


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> DPOLoss:
    """6.4: the sigmoid (Bradley-Terry) DPO loss, -log sigmoid(beta * (chosen log-ratio - rejected log-ratio))."""
    # 1. 对数比: 策略模型比参考模型更(或更不)喜欢这条回复多少
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    # 2. Bradley-Terry: 隐式奖励之差过 sigmoid, 取负对数, 对批内平均
    loss = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios)).mean()
    # 3. 隐式奖励 r = beta * log(pi / pi_ref), 只用于观察, 不求梯度
    chosen_rewards, rejected_rewards = beta * chosen_logratios.detach(), beta * rejected_logratios.detach()
    return DPOLoss(
        loss=loss,
        chosen_rewards=chosen_rewards,
        rejected_rewards=rejected_rewards,
        reward_accuracy=(chosen_rewards > rejected_rewards).float().mean().item(),
        reward_margin=(chosen_rewards - rejected_rewards).mean().item(),
    )


def dpo_batch_loss(
    policy: torch.nn.Module, batch: dict[str, torch.Tensor], beta: float, reference: torch.nn.Module | None = None
) -> DPOLoss:
    """6.4: one DPO step's loss on a `pad_preference_batch` batch.

    `reference=None` means the policy is a peft LoRA model and the reference is the same model
    with its adapter disabled (the SFT weights): no second copy of the model in memory.
    """
    # 1. 策略模型: chosen 与 rejected 一次前向, 需要梯度
    policy_logps = sequence_logprobs(policy, batch["input_ids"], batch["attention_mask"], batch["labels"])
    # 2. 参考模型: 不求梯度; LoRA 时关掉 adapter 就是 SFT 模型本身
    with torch.no_grad():
        if reference is None:
            if not hasattr(policy, "disable_adapter"):
                raise LlmtrainError("dpo_batch_loss without a reference needs a peft (LoRA) policy.")
            with policy.disable_adapter():
                ref_logps = sequence_logprobs(policy, batch["input_ids"], batch["attention_mask"], batch["labels"])
        else:
            ref_logps = sequence_logprobs(reference, batch["input_ids"], batch["attention_mask"], batch["labels"])
    # 3. 批的前一半是 chosen, 后一半是 rejected
    policy_chosen, policy_rejected = policy_logps.chunk(2)
    ref_chosen, ref_rejected = ref_logps.chunk(2)
    return dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)


def train_lora_dpo_by_hand(
    policy: torch.nn.Module,
    examples: list[dict[str, list[int]]],
    pad_token_id: int,
    beta: float,
    learning_rate: float,
    pairs_per_step: int,
    steps: int,
    max_grad_norm: float = 1.0,
) -> list[float]:
    """6.4: DPO training written out: `steps` AdamW updates of a peft LoRA policy on `examples` in order; each loss.

    The reference is the policy with its adapter disabled (`dpo_batch_loss`). The optimizer is TRL's with
    `optim="adamw_torch"`, `lr_scheduler_type="constant"` and its default `weight_decay=0` and `max_grad_norm=1`;
    step k uses pairs k*n .. k*n+n-1, as TRL's batches under `train_sampling_strategy="sequential"`. Each returned
    loss is the one the step's update descends (computed before the update), as TRL logs it.
    """
    if steps * pairs_per_step > len(examples):
        raise LlmtrainError(f"{steps} steps of {pairs_per_step} pairs need {steps * pairs_per_step} pairs, "
                            f"got {len(examples)}")
    trainable = [p for p in policy.parameters() if p.requires_grad]  # LoRA: only the adapter's A and B
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0)
    policy.train()
    losses = []
    for step in range(steps):
        # 1. 按顺序取下一批 n 对, 拼成 2n 行 (先 chosen 后 rejected)
        batch = pad_preference_batch(examples[step * pairs_per_step:(step + 1) * pairs_per_step], pad_token_id)
        # 2. 策略带 adapter 前向, 参考关掉 adapter 前向, 得到 DPO 损失
        loss = dpo_batch_loss(policy, batch, beta).loss
        # 3. 反向传播, 梯度裁剪到 max_grad_norm, AdamW 更新
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
        optimizer.step()
        losses.append(loss.item())
    return losses


def relative_update_difference(
    start: dict[str, torch.Tensor], ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]
) -> float:
    """How far two trainings of the same parameters `start` ended apart, relative to how far `theirs` moved.

    ||ours - theirs|| / ||theirs - start||, each norm over all tensors of `start` together. An element-wise
    maximum is the wrong yardstick after AdamW: it divides each gradient by its running RMS, so in a coordinate
    whose gradient nearly cancels over the steps a float32 rounding difference becomes a visible step difference.
    """
    moved = sum((theirs[n].detach() - p).pow(2).sum() for n, p in start.items())
    apart = sum((ours[n].detach() - theirs[n].detach()).pow(2).sum() for n in start)
    if moved == 0:
        raise LlmtrainError("the parameters did not move from their start, so there is no update to compare")
    return (apart / moved).sqrt().item()


class TokenizedPairsDPOTrainer(DPOTrainer):
    """6.4: TRL's DPOTrainer on the pairs `build_preference_dataset` already rendered and tokenized.

    Left to itself, TRL renders pairs again: through the chat template its replies also take the
    `\n` after `<|im_end|>`, and string pairs get no ChatML at all but an `<|endoftext|>`. Feeding it
    our ids keeps one rendering (SFT's) for both implementations; its collator, loss and logging stay TRL's.
    `_prepare_dataset` is private to TRL (no public option skips it for text pairs), so a TRL release may
    change it: requirements.txt pins trl to 1.16.x and tests/test_dpo.py checks this class against TRL's loss.
    """

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset  # the pairs already hold TRL's columns: prompt_ids, chosen_ids, rejected_ids


def compare_with_trl(trainer: DPOTrainer, examples: list[dict[str, list[int]]]) -> dict[str, float]:
    """6.4: our DPO and TRL's on the same model and batch: the largest |TRL - ours| of each quantity.

    `trainer` is a TRL DPOTrainer built on the model (with a separate `ref_model`, or a peft policy whose
    reference is the adapter disabled); `examples` are pairs from `build_preference_dataset`. Compared:
    the padded batch (TRL's collator vs `pad_preference_batch`), the reference's per-sequence log-probs
    (and the policy's, when the reference is a separate model: TRL's helper computes either), then TRL's
    training loss and the metrics it logs for that step vs `dpo_loss`. Runs in train mode, as a training
    step does (TRL's `disable_dropout` makes it deterministic); nothing is updated.
    """
    ours_batch = pad_preference_batch(examples, trainer.processing_class.pad_token_id)
    trl_batch = trainer.data_collator(examples)
    trl_as_ours = {"input_ids": trl_batch["input_ids"], "attention_mask": trl_batch["attention_mask"],
                   "labels": trl_batch["input_ids"].masked_fill(trl_batch["completion_mask"] == 0, IGNORE_INDEX)}
    diffs = {"batch (ids, mask, labels)": max((trl_as_ours[k] - ours_batch[k]).abs().max().item() for k in ours_batch)}
    model, beta = trainer.model, trainer.args.beta
    model.train()
    args = (ours_batch["input_ids"], ours_batch["attention_mask"], ours_batch["labels"])
    with torch.no_grad():
        policy_logps = sequence_logprobs(model, *args)
        if trainer.ref_model is None:
            with model.disable_adapter():
                ref_logps = sequence_logprobs(model, *args)
        else:
            ref_logps = sequence_logprobs(trainer.ref_model, *args)
            trl_policy = torch.cat(trainer.compute_ref_log_probs(model, trl_batch))  # no adapter switch here
            diffs["policy log-probs"] = (trl_policy - policy_logps).abs().max().item()
        trl_ref = torch.cat(trainer.compute_ref_log_probs(
            model if trainer.ref_model is None else trainer.ref_model, trl_batch))
        diffs["reference log-probs"] = (trl_ref - ref_logps).abs().max().item()
        ours = dpo_loss(*policy_logps.chunk(2), *ref_logps.chunk(2), beta=beta)
        trl_loss = trainer.compute_loss(model, trl_batch).item()
    trainer.log({})  # TRL averages what compute_loss recorded into its log entry
    logged = trainer.state.log_history[-1]
    diffs["loss"] = abs(trl_loss - ours.loss.item())
    chosen_logps, rejected_logps = policy_logps.chunk(2)
    for key, value in [("rewards/chosen", ours.chosen_rewards.mean().item()),
                       ("rewards/rejected", ours.rejected_rewards.mean().item()),
                       ("rewards/accuracies", ours.reward_accuracy), ("rewards/margins", ours.reward_margin),
                       ("logps/chosen", chosen_logps.mean().item()), ("logps/rejected", rejected_logps.mean().item())]:
        diffs[key] = abs(logged[key] - value)
    return diffs
