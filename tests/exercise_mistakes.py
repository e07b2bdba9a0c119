"""Plausible wrong answers to the exercises, each planted once: the graders must reject every one of them."""

from __future__ import annotations

from itertools import chain

import torch
import torch.nn.functional as F
from torch import nn

from llmtrain.dpo import sequence_logprobs
from llmtrain.lora import LoraLinear
from llmtrain.sft_data import IGNORE_INDEX, tokenize_conversation


# ---- 6.1
def tokenize_without_eos(texts, tokenizer):
    """The chapter's code: documents tokenized, no EOS between them."""
    return {"input_ids": tokenizer(texts, add_special_tokens=False)["input_ids"]}


def group_keeping_remainder(examples, block_size):
    """Keeps the last, shorter block."""
    ids = list(chain.from_iterable(examples["input_ids"]))
    blocks = [ids[i : i + block_size] for i in range(0, len(ids), block_size)]
    return {"input_ids": blocks, "labels": [list(b) for b in blocks]}


def group_dropping_eos(examples, block_size):
    """Strips each document's last token (its EOS) before concatenating."""
    return group_keeping_full_blocks([doc[:-1] for doc in examples["input_ids"]], block_size)


def group_keeping_full_blocks(documents, block_size):
    ids = list(chain.from_iterable(documents))
    blocks = [ids[i : i + block_size] for i in range(0, len(ids) // block_size * block_size, block_size)]
    return {"input_ids": blocks, "labels": [list(b) for b in blocks]}


def group_per_document(examples, block_size):
    """Cuts every document on its own, so short documents give short blocks."""
    blocks = [doc[i : i + block_size] for doc in examples["input_ids"] for i in range(0, len(doc), block_size)]
    return {"input_ids": blocks, "labels": [list(b) for b in blocks]}


def group_with_shifted_labels(examples, block_size):
    """Shifts the labels by one itself (the model already does)."""
    grouped = group_keeping_full_blocks(examples["input_ids"], block_size)
    return {"input_ids": grouped["input_ids"], "labels": [b[1:] + [IGNORE_INDEX] for b in grouped["input_ids"]]}


def logits_bytes_in_working_dtype(config, tokens, dtype, liger_kernel=False):
    """Counts the bf16 logits only."""
    return tokens * config.vocab_size * (4 if dtype == "fp32" else 2)


def logits_bytes_over_hidden_size(config, tokens, dtype, liger_kernel=False):
    """hidden_size where the vocabulary belongs."""
    return tokens * config.hidden_size * 12


# ---- 6.2
def supervising_the_prompt(conversations, tokenizer, max_len, system_message="You are a helpful assistant."):
    """Labels = input_ids everywhere: the user turn (and the system turn) are learned too."""
    sample = tokenize_conversation(conversations, tokenizer, max_len, system_message)
    return {"input_ids": sample["input_ids"], "labels": list(sample["input_ids"])}


def not_supervising_im_end(conversations, tokenizer, max_len, system_message="You are a helpful assistant."):
    """Supervises the reply text but not the <|im_end|> that closes it."""
    sample = tokenize_conversation(conversations, tokenizer, max_len, system_message)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    labels = [IGNORE_INDEX if t == im_end else t for t in sample["labels"]]
    return {"input_ids": sample["input_ids"], "labels": labels}


def pad_id_as_ignore(conversations, tokenizer, max_len, system_message="You are a helpful assistant."):
    """The chapter's labels: the pad id where -100 belongs."""
    sample = tokenize_conversation(conversations, tokenizer, max_len, system_message)
    labels = [tokenizer.pad_token_id if t == IGNORE_INDEX else t for t in sample["labels"]]
    return {"input_ids": sample["input_ids"], "labels": labels}


def positions_counting_on(examples):
    """0..N-1 over the whole packed row, as if it were one document."""
    return torch.arange(sum(len(ex["input_ids"]) for ex in examples)).unsqueeze(0)


# ---- 6.3
class LoraScaledByAlpha(LoraLinear):
    """α where α/r belongs."""

    def __init__(self, base, r, alpha, dropout=0.0):
        super().__init__(base, r, alpha, dropout)
        self.scaling = alpha


class LoraWithRandomB(LoraLinear):
    """B initialised like A: the layer no longer starts as the base model."""

    def __init__(self, base, r, alpha, dropout=0.0):
        super().__init__(base, r, alpha, dropout)
        nn.init.normal_(self.lora_B.weight)


class LoraMergingWithoutScaling(LoraLinear):
    """merge adds B·A, forgetting α/r."""

    def merge(self):
        self.base.weight.data += self.lora_B.weight @ self.lora_A.weight
        self.merged = True


class LoraTrainingTheBase(LoraLinear):
    """Forgets to freeze the base layer."""

    def __init__(self, base, r, alpha, dropout=0.0):
        super().__init__(base, r, alpha, dropout)
        base.requires_grad_(True)


class LoraBypassAfterMerge(LoraLinear):
    """Keeps adding the bypass after merging: B·A counted twice."""

    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_A(x)) * self.scaling


# ---- 6.4
def dpo_loss_flipped_sign(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """Rejected minus chosen: the policy is pushed towards the rejected replies."""
    margin = (policy_rejected_logps - ref_rejected_logps) - (policy_chosen_logps - ref_chosen_logps)
    return -F.logsigmoid(beta * margin).mean()


def dpo_loss_without_reference(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """Compares the policy's log-probs only."""
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps)).mean()


def dpo_loss_summed(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """Sums over pairs instead of averaging."""
    margin = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return -F.logsigmoid(beta * margin).sum()


def dpo_loss_as_number(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """The right value, cut off from the graph by .item()."""
    margin = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return (torch.tensor(-F.logsigmoid(beta * margin).mean().item()),)


def dpo_loss_raising(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """A learner's bug that raises inside their function."""
    return policy_chosen_logps @ ref_rejected_logps.unsqueeze(0)


def logprobs_with_prompt(model, input_ids, attention_mask, labels):
    """Scores every real token, the prompt's too."""
    return sequence_logprobs(model, input_ids, attention_mask, input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX))


def logprobs_without_shift(model, input_ids, attention_mask, labels):
    """Scores token t with the logits at position t (which predict token t+1)."""
    logps = torch.log_softmax(model(input_ids=input_ids, attention_mask=attention_mask).logits, dim=-1)
    token_logps = torch.gather(logps, 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token_logps * (labels != IGNORE_INDEX)).sum(dim=-1)


def logprobs_averaged(model, input_ids, attention_mask, labels):
    """The mean over reply tokens instead of the sum."""
    return sequence_logprobs(model, input_ids, attention_mask, labels) / (labels[:, 1:] != IGNORE_INDEX).sum(dim=-1)


# ---- 6.5
def advantages_over_whole_batch(rewards, group_size):
    """One baseline for the whole batch instead of one per prompt."""
    return (rewards - rewards.mean()) / (rewards.std() + 1e-4)


def advantages_population_std(rewards, group_size):
    """Divides by the population std (G) instead of the sample std (G - 1)."""
    grouped = rewards.view(-1, group_size)
    return ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, unbiased=False, keepdim=True) + 1e-4)).view(-1)


def advantages_without_eps(rewards, group_size):
    """No 1e-4: a group whose rewards are all equal divides 0 by 0."""
    grouped = rewards.view(-1, group_size)
    return ((grouped - grouped.mean(1, keepdim=True)) / grouped.std(1, keepdim=True)).view(-1)


def k3_reversed(logps, ref_logps):
    """exp(logp - ref) - (logp - ref) - 1: the estimator of KL(pi_ref || pi)."""
    delta = logps - ref_logps
    return torch.exp(delta) - delta - 1


def kl_k1(logps, ref_logps):
    """The plain log-ratio, negative on some tokens."""
    return logps - ref_logps
