"""Answers to the exercises written here, not taken from llmtrain: one right answer per exercise (a grader must
accept a right answer that is not the course's own code) and plausible wrong ones, each planted to draw one of the
graders' messages. `tests/test_exercises.py` lists which message each wrong answer must get."""

from __future__ import annotations

import math
import os
import re

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100
TRAINER_STATE = "trainer_state.json"


# ================================================================ right answers

# ---- 6.1
def tokenize_with_eos(texts, tokenizer):
    """Each document's own tokens, then EOS."""
    rows = []
    for text in texts:
        rows.append(tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
    return {"input_ids": rows}


def group_texts(examples, block_size):
    """Concatenate, keep the full blocks; the labels are the blocks themselves."""
    flat = [t for doc in examples["input_ids"] for t in doc]
    blocks = [flat[k * block_size : (k + 1) * block_size] for k in range(len(flat) // block_size)]
    return {"input_ids": blocks, "labels": [b[:] for b in blocks]}


def complete_checkpoints(output_dir):
    """step -> path of every checkpoint-<step> folder holding trainer_state.json."""
    found = {}
    for name in os.listdir(output_dir):
        match = re.fullmatch(r"checkpoint-(\d+)", name)
        path = os.path.join(output_dir, name)
        if match and os.path.isfile(os.path.join(path, TRAINER_STATE)):
            found[int(match.group(1))] = path
    return found


def find_resume_checkpoint(training_args, overwrite_output_dir=False):
    """The user's complete checkpoint, else the newest complete one; None to start; an error to protect a folder."""
    if training_args.resume_from_checkpoint:
        if not os.path.isfile(os.path.join(training_args.resume_from_checkpoint, TRAINER_STATE)):
            raise ValueError(f"{training_args.resume_from_checkpoint} is not a complete checkpoint")
        return training_args.resume_from_checkpoint
    out = training_args.output_dir
    if overwrite_output_dir or not os.path.isdir(out) or not os.listdir(out):
        return None
    found = complete_checkpoints(out)
    if not found:
        raise ValueError(f"{out} is not empty and has no checkpoint")
    return found[max(found)]


def logits_bytes(config, tokens, dtype, liger_kernel=False):
    """Three fp32 buffers of tokens × vocab at the start of backward."""
    return tokens * config.vocab_size * 3 * 4


# ---- 6.2
def render(conversations, system_message="You are a helpful assistant."):
    """ChatML text and the character spans of each reply with its <|im_end|>."""
    from llmtrain.sft_data import normalize_conversation

    text, spans = "", []
    for m in normalize_conversation(conversations, system_message):
        text += f"<|im_start|>{m['role']}\n"
        start = len(text)
        text += m["content"] + "<|im_end|>"
        if m["role"] == "assistant":
            spans.append((start, len(text)))
        text += "\n"
    return text, spans


def tokenize_conversation(conversations, tokenizer, max_len, system_message="You are a helpful assistant."):
    """One tokenization of the whole text; a token is supervised when its characters overlap a reply span."""
    text, spans = render(conversations, system_message)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [t if any(a < e and b > s for s, e in spans) else IGNORE
              for t, (a, b) in zip(enc["input_ids"], enc["offset_mapping"])]
    return {"input_ids": enc["input_ids"][:max_len], "labels": labels[:max_len]}


def make_collator(tokenizer, packing):
    """Packing: one row, positions restarting, each sample's first label -100. Else right padding, -100 labels."""

    def packed(features):
        ids, labels, positions = [], [], []
        for f in features:
            ids += f["input_ids"]
            labels += [IGNORE] + f["labels"][1:]
            positions += range(len(f["input_ids"]))
        return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
                "position_ids": torch.tensor([positions])}

    def padded(features):
        width = max(len(f["input_ids"]) for f in features)
        pad = [width - len(f["input_ids"]) for f in features]
        pad_id = tokenizer.pad_token_id
        return {"input_ids": torch.tensor([f["input_ids"] + [pad_id] * n for f, n in zip(features, pad)]),
                "attention_mask": torch.tensor([[1] * len(f["input_ids"]) + [0] * n for f, n in zip(features, pad)]),
                "labels": torch.tensor([f["labels"] + [IGNORE] * n for f, n in zip(features, pad)])}

    return packed if packing else padded


# ---- 6.3
class LoraLinear(nn.Module):
    """Frozen base plus scaling · B A x; A like nn.Linear's default, B zero."""

    def __init__(self, base, r, alpha, dropout=0.0):
        super().__init__()
        self.base = base.requires_grad_(False)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Linear(base.in_features, r, bias=False, **factory)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, **factory)
        nn.init.zeros_(self.lora_B.weight)
        self.dropout = nn.Dropout(dropout)
        self.scaling = alpha / r
        self.merged = False

    def delta(self):
        return self.scaling * (self.lora_B.weight @ self.lora_A.weight)

    def merge(self):
        with torch.no_grad():
            self.base.weight += self.delta()
        self.merged = True

    def unmerge(self):
        with torch.no_grad():
            self.base.weight -= self.delta()
        self.merged = False

    def bypass(self, x):
        return self.lora_B(self.lora_A(self.dropout(x))) * self.scaling

    def forward(self, x):
        return self.base(x) if self.merged else self.base(x) + self.bypass(x)


def targeted(model, target_modules):
    """Names of the linear layers peft's rule selects: regex full match, or name endings."""
    if isinstance(target_modules, str):
        def match(name):
            return re.fullmatch(target_modules, name) is not None
    else:
        def match(name):
            return any(name == t or name.endswith("." + t) for t in target_modules)
    return [n for n, m in model.named_modules() if n and isinstance(m, nn.Linear) and match(n)]


def inject_lora(model, target_modules, r=8, alpha=32, dropout=0.0, layer=LoraLinear):
    """Freeze everything, then swap each target for a LoRA layer on its parent."""
    names = targeted(model, target_modules)
    model.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, layer(getattr(parent, child), r, alpha, dropout))
    return model


def lora_parameter_count(model, target_modules, r):
    """r · (in + out) per targeted layer."""
    return sum(r * (model.get_submodule(n).in_features + model.get_submodule(n).out_features)
               for n in targeted(model, target_modules))


# ---- 6.4
def sequence_logprobs(model, input_ids, attention_mask, labels):
    """log_softmax in fp32, shifted by one, summed where the label is not -100."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    target = labels[:, 1:]
    keep = target != IGNORE
    picked = logp.gather(-1, target.masked_fill(~keep, 0).unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(~keep, 0.0).sum(-1)


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """-log σ(β · difference of log-ratios), averaged."""
    margin = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return -F.logsigmoid(beta * margin).mean()


def reference_logps(policy, args, reference):
    """The reference's log-probs without a gradient: the given model, else the policy with its adapter off."""
    with torch.no_grad():
        if reference is not None:
            return sequence_logprobs(reference, *args)
        with policy.disable_adapter():
            return sequence_logprobs(policy, *args)


def dpo_batch_loss(policy, batch, beta, reference=None):
    """Policy and reference log-probs of the 2n rows; chosen rows first."""
    args = (batch["input_ids"], batch["attention_mask"], batch["labels"])
    logps = sequence_logprobs(policy, *args)
    ref = reference_logps(policy, args, reference)
    n = logps.shape[0] // 2
    return dpo_loss(logps[:n], logps[n:], ref[:n], ref[n:], beta)


# ---- 6.5
def group_advantages(rewards, group_size, scale=True):
    """Centred per group of consecutive rows; divided by the group's sample std + 1e-4 when scaling."""
    if group_size < 2:
        raise ValueError("a group needs at least two replies")
    grouped = rewards.reshape(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (grouped.std(dim=1, keepdim=True) + 1e-4)
    return centred.reshape(-1)


def k3_kl(logps, ref_logps):
    """exp(ref - logp) - (ref - logp) - 1."""
    log_ratio = ref_logps - logps
    return log_ratio.exp() - log_ratio - 1


def per_token_grpo(logps, old_logps, ref_logps, advantages, beta, epsilon, epsilon_high, kl_ratio_correction):
    """The clipped objective's negative plus β · k3 (times the ratio when correcting), per token."""
    ratio = (logps - old_logps).exp()
    high = epsilon if epsilon_high is None else epsilon_high
    adv = advantages[:, None]
    loss = -torch.minimum(ratio * adv, ratio.clamp(1 - epsilon, 1 + high) * adv)
    if beta:
        kl = k3_kl(logps, ref_logps)
        loss = loss + beta * (kl * ratio if kl_ratio_correction else kl)
    return loss


def grpo_loss(logps, old_logps, ref_logps, advantages, mask, beta, epsilon=0.2, epsilon_high=None,
              loss_type="grpo", kl_ratio_correction=True):
    """Masked per-token loss, averaged per completion then over completions, or over all tokens."""
    per_token = per_token_grpo(logps, old_logps, ref_logps, advantages, beta, epsilon, epsilon_high,
                               kl_ratio_correction) * mask
    if loss_type == "grpo":
        return (per_token.sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    return per_token.sum() / mask.sum().clamp(min=1)


RIGHT_ANSWERS = {f.__name__: f for f in [
    tokenize_with_eos, group_texts, find_resume_checkpoint, logits_bytes, tokenize_conversation, make_collator,
    LoraLinear, inject_lora, lora_parameter_count, sequence_logprobs, dpo_loss, dpo_batch_loss, group_advantages,
    k3_kl, grpo_loss]}


# ================================================================ wrong answers

# ---- 6.1 tokenize_with_eos
def tokenize_returning_text(texts, tokenizer):
    """Hands back the texts themselves."""
    return {"input_ids": list(texts)}


def tokenize_as_list(texts, tokenizer):
    """The rows without the dict around them."""
    return tokenize_with_eos(texts, tokenizer)["input_ids"]


def tokenize_into_one_row(texts, tokenizer):
    """All documents joined into one token list (one row for the whole batch)."""
    return {"input_ids": [[t for row in tokenize_with_eos(texts, tokenizer)["input_ids"] for t in row]]}


def tokenize_without_eos(texts, tokenizer):
    """The chapter's code: no EOS."""
    return {"input_ids": tokenizer(texts, add_special_tokens=False)["input_ids"]}


def tokenize_eos_first(texts, tokenizer):
    """EOS in front of each document."""
    eos = tokenizer.eos_token_id
    return {"input_ids": [[eos] + tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]}


def tokenize_with_pad_for_eos(texts, tokenizer):
    """pad_token_id where the EOS belongs (the toy tokenizer's pad is its eos)."""
    pad = tokenizer.pad_token_id
    return {"input_ids": [tokenizer(t, add_special_tokens=False)["input_ids"] + [pad] for t in texts]}


def tokenize_with_default_special_tokens(texts, tokenizer):
    """tokenizer(text) with its defaults: a BOS where the tokenizer adds one."""
    return {"input_ids": [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in texts]}


def tokenize_with_newline(texts, tokenizer):
    """Ends each document with a newline as well."""
    return {"input_ids": [tokenizer(t + "\n", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                          for t in texts]}


# ---- 6.1 group_texts
def blocks_of(documents, block_size):
    flat = [t for doc in documents for t in doc]
    return [flat[i : i + block_size] for i in range(0, len(flat) // block_size * block_size, block_size)]


def group_returning_blocks_only(examples, block_size):
    """The blocks, no dict."""
    return blocks_of(examples["input_ids"], block_size)


def group_with_shifted_labels(examples, block_size):
    """Shifts the labels itself (the model already does)."""
    blocks = blocks_of(examples["input_ids"], block_size)
    return {"input_ids": blocks, "labels": [b[1:] + [IGNORE] for b in blocks]}


def group_masking_first_label(examples, block_size):
    """-100 on each block's first label, as if it were a packed conversation."""
    blocks = blocks_of(examples["input_ids"], block_size)
    return {"input_ids": blocks, "labels": [[IGNORE] + b[1:] for b in blocks]}


def group_keeping_remainder(examples, block_size):
    """Keeps the last, shorter block."""
    flat = [t for doc in examples["input_ids"] for t in doc]
    blocks = [flat[i : i + block_size] for i in range(0, len(flat), block_size)]
    return {"input_ids": blocks, "labels": [b[:] for b in blocks]}


def group_per_document(examples, block_size):
    """Cuts every document on its own."""
    blocks = [doc[i : i + block_size] for doc in examples["input_ids"] for i in range(0, len(doc), block_size)]
    return {"input_ids": blocks, "labels": [b[:] for b in blocks]}


def group_dropping_eos(examples, block_size):
    """Strips each document's EOS before concatenating."""
    blocks = blocks_of([doc[:-1] for doc in examples["input_ids"]], block_size)
    return {"input_ids": blocks, "labels": [b[:] for b in blocks]}


def group_newest_first(examples, block_size):
    """Concatenates the documents in reverse order."""
    blocks = blocks_of(examples["input_ids"][::-1], block_size)
    return {"input_ids": blocks, "labels": [b[:] for b in blocks]}


# ---- 6.1 find_resume_checkpoint
def resume_listing_a_missing_dir(training_args, overwrite_output_dir=False):
    """Lists output_dir before checking it exists."""
    if not os.listdir(training_args.output_dir):
        return None
    return find_resume_checkpoint(training_args, overwrite_output_dir)


def resume_refusing_an_empty_dir(training_args, overwrite_output_dir=False):
    """An empty output_dir counts as 'no checkpoint': an error."""
    if os.path.isdir(training_args.output_dir) and not os.listdir(training_args.output_dir):
        raise ValueError("no checkpoint")
    return find_resume_checkpoint(training_args, overwrite_output_dir)


def resume_sorting_names(training_args, overwrite_output_dir=False):
    """The newest is the largest name as a string."""
    found = find_resume_checkpoint(training_args, overwrite_output_dir)
    if found is None or training_args.resume_from_checkpoint:
        return found
    return max(complete_checkpoints(training_args.output_dir).values())


def resume_from_last_checkpoint(training_args, overwrite_output_dir=False):
    """transformers' get_last_checkpoint: the newest checkpoint-N folder, complete or not."""
    from transformers.trainer_utils import get_last_checkpoint

    found = find_resume_checkpoint(training_args, overwrite_output_dir)
    return found if found is None or training_args.resume_from_checkpoint else get_last_checkpoint(
        training_args.output_dir)


def resume_taking_anything_named_checkpoint(training_args, overwrite_output_dir=False):
    """Any complete folder whose name starts with checkpoint-, numbered by its first digits."""
    found = find_resume_checkpoint(training_args, overwrite_output_dir)
    if found is None or training_args.resume_from_checkpoint:
        return found
    out = training_args.output_dir
    names = [n for n in os.listdir(out) if n.startswith("checkpoint-") and re.search(r"\d+", n)
             and os.path.isfile(os.path.join(out, n, TRAINER_STATE))]
    return os.path.join(out, max(names, key=lambda n: int(re.search(r"\d+", n).group())))


def resume_never_refusing(training_args, overwrite_output_dir=False):
    """No checkpoint to resume: start fresh, whatever the folder holds."""
    try:
        return find_resume_checkpoint(training_args, overwrite_output_dir)
    except ValueError:
        if training_args.resume_from_checkpoint:
            raise
        return None


def resume_refusing_only_without_folders(training_args, overwrite_output_dir=False):
    """An error only when no checkpoint-N folder exists at all; incomplete ones mean 'start fresh'."""
    try:
        return find_resume_checkpoint(training_args, overwrite_output_dir)
    except ValueError:
        out = training_args.output_dir
        if training_args.resume_from_checkpoint or not any(n.startswith("checkpoint-") for n in os.listdir(out)):
            raise
        return None


def resume_ignoring_overwrite(training_args, overwrite_output_dir=False):
    """Never looks at overwrite_output_dir."""
    return find_resume_checkpoint(training_args, False)


def resume_ignoring_the_users_checkpoint(training_args, overwrite_output_dir=False):
    """Always the newest checkpoint in output_dir."""
    found = complete_checkpoints(training_args.output_dir) if os.path.isdir(training_args.output_dir) else {}
    if training_args.resume_from_checkpoint and found:
        return found[max(found)]
    return find_resume_checkpoint(training_args, overwrite_output_dir)


def resume_trusting_the_user(training_args, overwrite_output_dir=False):
    """Returns the user's checkpoint without checking it."""
    if training_args.resume_from_checkpoint:
        return training_args.resume_from_checkpoint
    return find_resume_checkpoint(training_args, overwrite_output_dir)


# ---- 6.1 logits_bytes
def logits_size_as_text(config, tokens, dtype, liger_kernel=False):
    """A human-readable string instead of a number."""
    return f"{tokens * config.vocab_size * 12 / 2**30:.2f} GiB"


def logits_bytes_in_working_dtype(config, tokens, dtype, liger_kernel=False):
    """Counts the 16-bit logits only."""
    return tokens * config.vocab_size * (4 if dtype == "fp32" else 2)


def logits_bytes_one_fp32_copy(config, tokens, dtype, liger_kernel=False):
    """One fp32 copy of the logits."""
    return tokens * config.vocab_size * 4


def logits_bytes_over_hidden_size(config, tokens, dtype, liger_kernel=False):
    """hidden_size where the vocabulary belongs."""
    return tokens * config.hidden_size * 12


def logits_bytes_in_the_forward(config, tokens, dtype, liger_kernel=False):
    """The forward's peak instead: bf16 logits, fp32 copy and log_softmax output (10 bytes)."""
    return tokens * config.vocab_size * 10


# ---- 6.2 tokenize_conversation
def tokenize_returning_a_pair(conversations, tokenizer, max_len, system_message="You are a helpful assistant."):
    """A tuple instead of a dict."""
    sample = tokenize_conversation(conversations, tokenizer, max_len, system_message)
    return sample["input_ids"], sample["labels"]


def tokenize_without_truncating(conversations, tokenizer, max_len, system_message="You are a helpful assistant."):
    """Ignores max_len."""
    return tokenize_conversation(conversations, tokenizer, 1 << 30, system_message)


def tokenize_turn_by_turn(conversations, tokenizer, max_len, system_message="You are a helpful assistant."):
    """Each piece tokenized on its own and concatenated, labels from the pieces (the chapter's way)."""
    from llmtrain.sft_data import normalize_conversation

    ids, labels = [], []

    def piece(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    for m in normalize_conversation(conversations, system_message):
        head, body, tail = piece(f"<|im_start|>{m['role']}\n"), piece(m["content"] + "<|im_end|>"), piece("\n")
        ids += head + body + tail
        labels += [IGNORE] * len(head) + (body if m["role"] == "assistant" else [IGNORE] * len(body))
        labels += [IGNORE] * len(tail)
    return {"input_ids": ids[:max_len], "labels": labels[:max_len]}


def tokenize_without_system_turn(conversations, tokenizer, max_len, system_message="You are a helpful assistant."):
    """Renders the conversation without its system turn."""
    sample = tokenize_conversation(conversations, tokenizer, 1 << 30, system_message)
    cut = sample["input_ids"].index(tokenizer.convert_tokens_to_ids("<|im_start|>"), 1)
    return {"input_ids": sample["input_ids"][cut:][:max_len], "labels": sample["labels"][cut:][:max_len]}


def tokenize_truncating_ids_only(conversations, tokenizer, max_len, system_message="You are a helpful assistant."):
    """Cuts input_ids at max_len but not the labels."""
    sample = tokenize_conversation(conversations, tokenizer, 1 << 30, system_message)
    return {"input_ids": sample["input_ids"][:max_len], "labels": sample["labels"]}


def tokenize_with_shifted_labels(conversations, tokenizer, max_len, system_message="You are a helpful assistant."):
    """Shifts the labels left by one itself."""
    sample = tokenize_conversation(conversations, tokenizer, max_len, system_message)
    return {"input_ids": sample["input_ids"], "labels": sample["labels"][1:] + [IGNORE]}


def tokenize_with_template_mask(conversations, tokenizer, max_len, system_message="You are a helpful assistant."):
    """apply_chat_template's assistant mask: all zero when the template has no {% generation %}."""
    from llmtrain.sft_data import normalize_conversation

    enc = tokenizer.apply_chat_template(normalize_conversation(conversations, system_message), tokenize=True,
                                        return_dict=True, return_assistant_tokens_mask=True)
    labels = [t if m else IGNORE for t, m in zip(enc["input_ids"], enc["assistant_masks"])]
    return {"input_ids": list(enc["input_ids"])[:max_len], "labels": labels[:max_len]}


def tokenize_with_pad_as_ignore(conversations, tokenizer, max_len, system_message="You are a helpful assistant."):
    """The chapter's labels: the pad id where -100 belongs."""
    sample = tokenize_conversation(conversations, tokenizer, max_len, system_message)
    return {"input_ids": sample["input_ids"],
            "labels": [tokenizer.pad_token_id if t == IGNORE else t for t in sample["labels"]]}


def tokenize_supervising_everything(conversations, tokenizer, max_len, system_message="You are a helpful assistant."):
    """Labels = input_ids: the system and user turns are learned too."""
    sample = tokenize_conversation(conversations, tokenizer, max_len, system_message)
    return {"input_ids": sample["input_ids"], "labels": list(sample["input_ids"])}


def tokenize_by_token_start(conversations, tokenizer, max_len, system_message="You are a helpful assistant."):
    """A token is supervised when it starts inside a reply span (misses a token that straddles its start)."""
    text, spans = render(conversations, system_message)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [t if any(s <= a < e for s, e in spans) else IGNORE
              for t, (a, _) in zip(enc["input_ids"], enc["offset_mapping"])]
    return {"input_ids": enc["input_ids"][:max_len], "labels": labels[:max_len]}


def tokenize_without_im_end(conversations, tokenizer, max_len, system_message="You are a helpful assistant."):
    """Supervises the reply text but not the <|im_end|> that closes it."""
    sample = tokenize_conversation(conversations, tokenizer, max_len, system_message)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return {"input_ids": sample["input_ids"], "labels": [IGNORE if t == im_end else t for t in sample["labels"]]}


def tokenize_last_reply_only(conversations, tokenizer, max_len, system_message="You are a helpful assistant."):
    """Supervises only the last assistant reply."""
    text, spans = render(conversations, system_message)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    s, e = spans[-1]
    labels = [t if a < e and b > s else IGNORE for t, (a, b) in zip(enc["input_ids"], enc["offset_mapping"])]
    return {"input_ids": enc["input_ids"][:max_len], "labels": labels[:max_len]}


def tokenize_with_mask_as_labels(conversations, tokenizer, max_len, system_message="You are a helpful assistant."):
    """1 on supervised positions instead of the token id."""
    sample = tokenize_conversation(conversations, tokenizer, max_len, system_message)
    return {"input_ids": sample["input_ids"], "labels": [IGNORE if t == IGNORE else 1 for t in sample["labels"]]}


# ---- 6.2 make_collator
def collator_named(tokenizer, packing):
    """The name of the strategy instead of a collator."""
    return "flatten" if packing else "longest"


def collator_without_positions(tokenizer, packing):
    """Packs, but forgets the position_ids."""
    collate = make_collator(tokenizer, packing)
    if not packing:
        return collate
    return lambda features: {k: v for k, v in collate(features).items() if k != "position_ids"}


def collator_with_attention_mask(tokenizer, packing):
    """Packs and adds an all-ones attention mask."""
    collate = make_collator(tokenizer, packing)

    def with_mask(features):
        batch = collate(features)
        return {**batch, "attention_mask": torch.ones_like(batch["input_ids"])}

    return with_mask if packing else collate


def collator_padding_when_packing(tokenizer, packing):
    """'Packing' that pads each sample into its own row."""
    padded = make_collator(tokenizer, False)

    def rows(features):
        batch = padded(features)
        positions = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"])
        return {"input_ids": batch["input_ids"], "labels": batch["labels"], "position_ids": positions}

    return rows if packing else padded


def collator_sorting_by_length(tokenizer, packing):
    """Sorts the samples by length before packing."""
    collate = make_collator(tokenizer, packing)
    return (lambda features: collate(sorted(features, key=lambda f: len(f["input_ids"])))) if packing else collate


def collator_counting_on(tokenizer, packing):
    """0..N-1 over the packed row, as if it were one document."""
    collate = make_collator(tokenizer, packing)

    def counting(features):
        batch = collate(features)
        return {**batch, "position_ids": torch.arange(batch["input_ids"].shape[1]).unsqueeze(0)}

    return counting if packing else collate


def collator_counting_from_one(tokenizer, packing):
    """Positions 1, 2, 3, ... per sample."""
    collate = make_collator(tokenizer, packing)

    def from_one(features):
        batch = collate(features)
        return {**batch, "position_ids": batch["position_ids"] + 1}

    return from_one if packing else collate


def collator_keeping_first_labels(tokenizer, packing):
    """Concatenates the labels as they are."""
    collate = make_collator(tokenizer, packing)

    def keeping(features):
        return {**collate(features), "labels": torch.tensor([[t for f in features for t in f["labels"]]])}

    return keeping if packing else collate


def collator_masking_last_labels(tokenizer, packing):
    """-100 on each sample's last label instead of its first."""
    collate = make_collator(tokenizer, packing)

    def masking(features):
        labels = [t for f in features for t in f["labels"][:-1] + [IGNORE]]
        return {**collate(features), "labels": torch.tensor([labels])}

    return masking if packing else collate


def collator_shifting_labels(tokenizer, packing):
    """Shifts each sample's labels by one itself."""
    collate = make_collator(tokenizer, packing)

    def shifting(features):
        labels = [t for f in features for t in f["labels"][1:] + [IGNORE]]
        return {**collate(features), "labels": torch.tensor([labels])}

    return shifting if packing else collate


def collator_padding_to_max_len(tokenizer, packing):
    """Pads every sample to 512 tokens."""
    collate = make_collator(tokenizer, packing)

    def to_512(features):
        return collate(features + [{"input_ids": [0] * 512, "labels": [IGNORE] * 512}])

    def trimmed(features):
        batch = to_512(features)
        return {k: v[:-1] for k, v in batch.items()}

    return collate if packing else trimmed


def collator_padding_left(tokenizer, packing):
    """Pads on the left."""
    if packing:
        return make_collator(tokenizer, True)

    def left(features):
        width = max(len(f["input_ids"]) for f in features)
        pad = [width - len(f["input_ids"]) for f in features]
        pad_id = tokenizer.pad_token_id
        return {"input_ids": torch.tensor([[pad_id] * n + f["input_ids"] for f, n in zip(features, pad)]),
                "attention_mask": torch.tensor([[0] * n + [1] * len(f["input_ids"]) for f, n in zip(features, pad)]),
                "labels": torch.tensor([[IGNORE] * n + f["labels"] for f, n in zip(features, pad)])}

    return left


def collator_without_padding_mask(tokenizer, packing):
    """An attention mask of ones everywhere."""
    collate = make_collator(tokenizer, packing)
    if packing:
        return collate
    return lambda features: {**collate(features), "attention_mask": torch.ones_like(collate(features)["input_ids"])}


def collator_padding_labels_with_pad_id(tokenizer, packing):
    """The chapter's padding: labels padded with the pad id."""
    collate = make_collator(tokenizer, packing)
    if packing:
        return collate

    def pad_id(features):
        batch = collate(features)
        labels = batch["labels"].masked_fill(batch["attention_mask"] == 0, tokenizer.pad_token_id)
        return {**batch, "labels": labels}

    return pad_id


def collator_padding_ids_with_ignore(tokenizer, packing):
    """Pads the input ids with -100 too."""
    collate = make_collator(tokenizer, packing)
    if packing:
        return collate

    def ignore(features):
        batch = collate(features)
        return {**batch, "input_ids": batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE)}

    return ignore


# ---- 6.3 LoraLinear
class LoraTrainingTheBase(LoraLinear):
    """Forgets to freeze the base layer."""

    def __init__(self, base, r, alpha, dropout=0.0):
        super().__init__(base, r, alpha, dropout)
        base.requires_grad_(True)


class LoraWithOtherNames(nn.Module):
    """Keeps A and B as self.A and self.B."""

    def __init__(self, base, r, alpha, dropout=0.0):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.A = nn.Parameter(torch.randn(r, base.in_features) * 0.01)
        self.B = nn.Parameter(torch.zeros(base.out_features, r))


class LoraWithTransposedA(LoraLinear):
    """lora_A built as Linear(r, in_features)."""

    def __init__(self, base, r, alpha, dropout=0.0):
        super().__init__(base, r, alpha, dropout)
        self.lora_A = nn.Linear(r, base.in_features, bias=False)


class LoraFrozenEverything(LoraLinear):
    """Freezes the whole layer at the end of __init__, A and B too."""

    def __init__(self, base, r, alpha, dropout=0.0):
        super().__init__(base, r, alpha, dropout)
        self.requires_grad_(False)


class LoraInFloat32(LoraLinear):
    """Builds A and B in fp32 whatever the base's dtype."""

    def __init__(self, base, r, alpha, dropout=0.0):
        super().__init__(base, r, alpha, dropout)
        self.lora_A.float()
        self.lora_B.float()


class LoraWithRandomB(LoraLinear):
    """B initialised like A."""

    def __init__(self, base, r, alpha, dropout=0.0):
        super().__init__(base, r, alpha, dropout)
        nn.init.kaiming_uniform_(self.lora_B.weight, a=math.sqrt(5))


class LoraAllZero(LoraLinear):
    """A and B both zero."""

    def __init__(self, base, r, alpha, dropout=0.0):
        super().__init__(base, r, alpha, dropout)
        nn.init.zeros_(self.lora_A.weight)


class LoraAddingTheBiasTwice(LoraLinear):
    """Writes the base layer out by hand and adds its bias a second time."""

    def forward(self, x):
        return self.base(x) + self.base.bias + self.bypass(x)


class LoraScaledByAlpha(LoraLinear):
    """α where α/r belongs."""

    def __init__(self, base, r, alpha, dropout=0.0):
        super().__init__(base, r, alpha, dropout)
        self.scaling = alpha


class LoraOnWeightData(LoraLinear):
    """The bypass through .data: no gradient reaches A or B."""

    def bypass(self, x):
        return x @ self.lora_A.weight.data.T @ self.lora_B.weight.data.T * self.scaling


class LoraDetachingItsInput(LoraLinear):
    """Detaches the bypass's input: no gradient flows back through the bypass."""

    def bypass(self, x):
        return super().bypass(x.detach())


class LoraMergingWithoutScaling(LoraLinear):
    """merge adds B A, forgetting α/r."""

    def merge(self):
        with torch.no_grad():
            self.base.weight += self.lora_B.weight @ self.lora_A.weight
        self.merged = True


class LoraBypassAfterMerge(LoraLinear):
    """Keeps adding the bypass after merging."""

    def forward(self, x):
        return self.base(x) + self.bypass(x)


class LoraUnmergingWithoutScaling(LoraLinear):
    """unmerge takes out B A, forgetting α/r."""

    def unmerge(self):
        with torch.no_grad():
            self.base.weight -= self.lora_B.weight @ self.lora_A.weight
        self.merged = False


class LoraStayingMerged(LoraLinear):
    """unmerge restores the weight but forgets that the layer is no longer merged."""

    def unmerge(self):
        with torch.no_grad():
            self.base.weight -= self.delta()


class LoraDroppingTheOutput(LoraLinear):
    """Dropout on the layer's whole output."""

    def forward(self, x):
        return self.dropout(super().forward(x))


class LoraIgnoringDropout(LoraLinear):
    """Never applies dropout."""

    def bypass(self, x):
        return self.lora_B(self.lora_A(x)) * self.scaling


class LoraDroppingAfterA(LoraLinear):
    """Dropout on the r-dimensional A x instead of x."""

    def bypass(self, x):
        return self.lora_B(self.dropout(self.lora_A(x))) * self.scaling


class LoraDroppingInEval(LoraLinear):
    """F.dropout with its default training=True: dropout in eval mode too."""

    def bypass(self, x):
        return self.lora_B(self.lora_A(F.dropout(x, self.dropout.p))) * self.scaling


# ---- 6.3 inject_lora
def inject_returning_nothing(model, target_modules, r=8, alpha=32, dropout=0.0):
    """Modifies the model in place but returns None."""
    inject_lora(model, target_modules, r, alpha, dropout)


def inject_with_names_only(model, target_modules, r=8, alpha=32, dropout=0.0):
    """Treats a regex string as a list of names (its characters)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)
             and any(n == t or n.endswith("." + t) for t in target_modules)]
    model.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoraLinear(getattr(parent, child), r, alpha, dropout))
    return model


def inject_by_dotted_setattr(model, target_modules, r=8, alpha=32, dropout=0.0):
    """setattr(model, 'model.layers.0.self_attn.q_proj', ...): a new attribute, the old layer stays."""
    names = targeted(model, target_modules)
    model.requires_grad_(False)
    for name in names:
        setattr(model, name, LoraLinear(model.get_submodule(name), r, alpha, dropout))
    return model


def inject_into_all_attention(model, target_modules, r=8, alpha=32, dropout=0.0):
    """Every attention projection, whatever the targets."""
    return inject_lora(model, r".*\.self_attn\.\w+_proj", r, alpha, dropout)


def inject_without_freezing(model, target_modules, r=8, alpha=32, dropout=0.0):
    """Swaps the layers but leaves the rest of the model trainable."""
    inject_lora(model, target_modules, r, alpha, dropout)
    for name, p in model.named_parameters():
        p.requires_grad_(True)
    for name, p in model.named_parameters():
        if "lora_" not in name and ".base." in name:
            p.requires_grad_(False)
    return model


def inject_then_freeze(model, target_modules, r=8, alpha=32, dropout=0.0):
    """Freezes the model after swapping the layers: A and B are frozen too."""
    inject_lora(model, target_modules, r, alpha, dropout)
    return model.requires_grad_(False)


def inject_with_random_b(model, target_modules, r=8, alpha=32, dropout=0.0):
    """Injects a layer whose B starts random."""
    return inject_lora(model, target_modules, r, alpha, dropout, layer=LoraWithRandomB)


def inject_with_a_fixed_alpha(model, target_modules, r=8, alpha=32, dropout=0.0):
    """Forgets to pass alpha on: every layer gets α = 16."""
    return inject_lora(model, target_modules, r, 16, dropout)


# ---- 6.3 lora_parameter_count
def count_as_float(model, target_modules, r):
    """The right number as a float."""
    return float(lora_parameter_count(model, target_modules, r))


def count_square_matrices(model, target_modules, r):
    """The chapter's 2 · L · d_model · r: every matrix taken as d_model × d_model."""
    return 2 * len(targeted(model, target_modules)) * model.config.hidden_size * r


def count_full_update(model, target_modules, r):
    """Counts the whole ΔW, d_in × d_out."""
    return sum(model.get_submodule(n).in_features * model.get_submodule(n).out_features
               for n in targeted(model, target_modules))


def count_with_bias(model, target_modules, r):
    """Gives B a bias."""
    return sum(r * (model.get_submodule(n).in_features + model.get_submodule(n).out_features)
               + model.get_submodule(n).out_features for n in targeted(model, target_modules))


def count_regex_as_names(model, target_modules, r):
    """Iterates a regex string as if it were a list of names."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)
             and any(n == t or n.endswith("." + t) for t in target_modules)]
    return sum(r * (model.get_submodule(n).in_features + model.get_submodule(n).out_features) for n in names)


def count_without_rank(model, target_modules, r):
    """Forgets the rank: d_in + d_out per layer."""
    return sum(model.get_submodule(n).in_features + model.get_submodule(n).out_features
               for n in targeted(model, target_modules))


# ---- 6.4 sequence_logprobs
def logprobs_as_list(model, input_ids, attention_mask, labels):
    """A Python list."""
    return sequence_logprobs(model, input_ids, attention_mask, labels).tolist()


def logprobs_keeping_a_dim(model, input_ids, attention_mask, labels):
    """Shape (batch, 1)."""
    return sequence_logprobs(model, input_ids, attention_mask, labels).unsqueeze(1)


def logprobs_in_eval_mode(model, input_ids, attention_mask, labels):
    """Switches the model to eval mode 'to be safe'."""
    model.eval()
    return sequence_logprobs(model, input_ids, attention_mask, labels)


def logprobs_with_prompt(model, input_ids, attention_mask, labels):
    """Scores every real token, the prompt's too."""
    return sequence_logprobs(model, input_ids, attention_mask, input_ids.masked_fill(attention_mask == 0, IGNORE))


def logprobs_of_every_position(model, input_ids, attention_mask, labels):
    """Scores every position, padding included."""
    return sequence_logprobs(model, input_ids, attention_mask, input_ids)


def logprobs_without_shift(model, input_ids, attention_mask, labels):
    """Scores token t with the logits at position t."""
    logp = torch.log_softmax(model(input_ids=input_ids, attention_mask=attention_mask).logits.float(), dim=-1)
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * (labels != IGNORE)).sum(-1)


def logprobs_averaged(model, input_ids, attention_mask, labels):
    """The mean over reply tokens."""
    return sequence_logprobs(model, input_ids, attention_mask, labels) / (labels[:, 1:] != IGNORE).sum(-1)


def logprobs_over_the_wrong_axis(model, input_ids, attention_mask, labels):
    """log_softmax over the sequence axis instead of the vocabulary."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=1)
    target = labels[:, 1:]
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * (target != IGNORE)).sum(-1)


def logprobs_without_grad(model, input_ids, attention_mask, labels):
    """Computed under torch.no_grad."""
    with torch.no_grad():
        return sequence_logprobs(model, input_ids, attention_mask, labels)


def logprobs_in_model_dtype(model, input_ids, attention_mask, labels):
    """log_softmax in the logits' own dtype (bf16 on a bf16 model)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    target = labels[:, 1:]
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1).float()
    return (picked * (target != IGNORE)).sum(-1)


def logprobs_of_softmax(model, input_ids, attention_mask, labels):
    """log(softmax(logits)): underflows to log 0 on confident logits."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    logp = torch.log(torch.softmax(logits[:, :-1], dim=-1))
    target = labels[:, 1:]
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(target == IGNORE, 0.0).sum(-1)


def logprobs_with_epsilon(model, input_ids, attention_mask, labels):
    """log(softmax + 1e-10): finite, but floored at about -23 per token."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    logp = torch.log(torch.softmax(logits[:, :-1], dim=-1) + 1e-10)
    target = labels[:, 1:]
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(target == IGNORE, 0.0).sum(-1)


# ---- 6.4 dpo_loss
def margins(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
    return (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)


def dpo_loss_as_number(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """A Python float."""
    return (dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta).item(),)


def dpo_loss_as_a_column(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """One loss per pair, as a column."""
    m = margins(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return -F.logsigmoid(beta * m).unsqueeze(1)


def dpo_loss_by_hand(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """-log(sigmoid(x)) written out: log 0 = -inf at large negative margins."""
    m = margins(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return -torch.log(torch.sigmoid(beta * m)).mean()


def dpo_loss_per_pair(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """No mean."""
    m = margins(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return -F.logsigmoid(beta * m)


def dpo_loss_summed(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """Sums over pairs."""
    m = margins(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return -F.logsigmoid(beta * m).sum()


def dpo_loss_flipped_sign(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """Rejected minus chosen."""
    m = margins(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return -F.logsigmoid(-beta * m).mean()


def dpo_loss_without_minus(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """log σ instead of -log σ."""
    m = margins(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return F.logsigmoid(beta * m).mean()


def dpo_loss_without_beta(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """Forgets β."""
    return -F.logsigmoid(margins(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                 ref_rejected_logps)).mean()


def dpo_loss_without_reference(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """Compares the policy's log-probs only."""
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps)).mean()


def dpo_loss_beta_on_chosen_only(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                                 beta):
    """β multiplies the chosen log-ratio only."""
    m = beta * (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return -F.logsigmoid(m).mean()


def dpo_loss_detached(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """The right value, cut off from the graph and wrapped in a new tensor."""
    return torch.tensor(dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                                 beta).item())


def dpo_loss_training_chosen_only(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                                  beta):
    """Detaches the rejected side: 'only the chosen reply should be learned'."""
    return dpo_loss(policy_chosen_logps, policy_rejected_logps.detach(), ref_chosen_logps, ref_rejected_logps, beta)


def dpo_loss_raising(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """A learner's bug that raises inside their function."""
    return policy_chosen_logps @ ref_rejected_logps.unsqueeze(0)


# ---- 6.4 dpo_batch_loss
def rows(batch):
    return batch["input_ids"], batch["attention_mask"], batch["labels"]


def batch_loss_in_eval_mode(policy, batch, beta, reference=None):
    """Switches the policy to eval mode to get 'clean' log-probs, and leaves it there."""
    policy.eval()
    return dpo_batch_loss(policy, batch, beta, reference)


def batch_loss_leaving_the_adapter_off(policy, batch, beta, reference=None):
    """Disables the adapter for the reference and never enables it again."""
    logps = sequence_logprobs(policy, *rows(batch))
    policy.base_model.disable_adapter_layers()
    with torch.no_grad():
        ref = sequence_logprobs(policy if reference is None else reference, *rows(batch))
    n = logps.shape[0] // 2
    return dpo_loss(logps[:n], logps[n:], ref[:n], ref[n:], beta)


def batch_loss_per_pair(policy, batch, beta, reference=None):
    """One loss per pair."""
    logps = sequence_logprobs(policy, *rows(batch))
    ref = reference_logps(policy, rows(batch), reference)
    n = logps.shape[0] // 2
    return dpo_loss_per_pair(logps[:n], logps[n:], ref[:n], ref[n:], beta)


def batch_loss_against_itself(policy, batch, beta, reference=None):
    """The policy's own log-probs, detached, as the reference."""
    logps = sequence_logprobs(policy, *rows(batch))
    ref = logps.detach()
    n = logps.shape[0] // 2
    return dpo_loss(logps[:n], logps[n:], ref[:n], ref[n:], beta)


def batch_loss_interleaved(policy, batch, beta, reference=None):
    """Takes rows 0, 2, 4, ... as chosen."""
    logps = sequence_logprobs(policy, *rows(batch))
    ref = reference_logps(policy, rows(batch), reference)
    return dpo_loss(logps[0::2], logps[1::2], ref[0::2], ref[1::2], beta)


def batch_loss_rejected_first(policy, batch, beta, reference=None):
    """Takes the first half as rejected."""
    logps = sequence_logprobs(policy, *rows(batch))
    ref = reference_logps(policy, rows(batch), reference)
    n = logps.shape[0] // 2
    return dpo_loss(logps[n:], logps[:n], ref[n:], ref[:n], beta)


def batch_loss_ignoring_the_reference(policy, batch, beta, reference=None):
    """Always the adapter-disabled policy as reference."""
    return dpo_batch_loss(policy, batch, beta, None)


def batch_loss_with_beta_one(policy, batch, beta, reference=None):
    """Forgets to pass β on."""
    return dpo_batch_loss(policy, batch, 1.0, reference)


def batch_loss_without_grad(policy, batch, beta, reference=None):
    """Everything under torch.no_grad."""
    with torch.no_grad():
        return dpo_batch_loss(policy, batch, beta, reference)


def batch_loss_training_chosen_only(policy, batch, beta, reference=None):
    """The rejected rows' policy log-probs without a gradient."""
    logps = sequence_logprobs(policy, *rows(batch))
    ref = reference_logps(policy, rows(batch), reference)
    n = logps.shape[0] // 2
    return dpo_loss(logps[:n], logps[n:].detach(), ref[:n], ref[n:], beta)


def batch_loss_with_reference_gradients(policy, batch, beta, reference=None):
    """The reference model's forward outside torch.no_grad."""
    if reference is None:
        return dpo_batch_loss(policy, batch, beta)
    logps, ref = sequence_logprobs(policy, *rows(batch)), sequence_logprobs(reference, *rows(batch))
    n = logps.shape[0] // 2
    return dpo_loss(logps[:n], logps[n:], ref[:n], ref[n:], beta)


# ---- 6.5 group_advantages
def advantages_as_list(rewards, group_size, scale=True):
    """A Python list."""
    return group_advantages(rewards, group_size, scale).tolist()


def advantages_per_group(rewards, group_size, scale=True):
    """One number per group: its mean against the batch mean."""
    means = rewards.reshape(-1, group_size).mean(dim=1)
    return means - means.mean()


def advantages_without_eps(rewards, group_size, scale=True):
    """No 1e-4: a group of equal rewards divides 0 by 0."""
    grouped = rewards.reshape(-1, group_size)
    return ((grouped - grouped.mean(1, keepdim=True)) / grouped.std(1, keepdim=True)).reshape(-1)


def advantages_over_whole_batch(rewards, group_size, scale=True):
    """One baseline for the whole batch."""
    return (rewards - rewards.mean()) / (rewards.std() + 1e-4)


def advantages_population_std(rewards, group_size, scale=True):
    """Divides by the population std."""
    grouped = rewards.reshape(-1, group_size)
    spread = grouped.std(1, unbiased=False, keepdim=True)
    return ((grouped - grouped.mean(1, keepdim=True)) / (spread + 1e-4)).reshape(-1)


def advantages_strided(rewards, group_size, scale=True):
    """Groups every n/G-th reply together (a transposed view)."""
    return group_advantages(rewards.reshape(group_size, -1).T.reshape(-1), group_size, scale).reshape(
        -1, group_size).T.reshape(-1)


def advantages_never_scaled(rewards, group_size, scale=True):
    """Ignores scale: always only centred."""
    return group_advantages(rewards, group_size, False)


def advantages_always_scaled(rewards, group_size, scale=True):
    """Ignores scale: always divided by the std."""
    return group_advantages(rewards, group_size, True)


def advantages_over_variance(rewards, group_size, scale=True):
    """Divides by the group's variance instead of its standard deviation."""
    grouped = rewards.reshape(-1, group_size)
    return ((grouped - grouped.mean(1, keepdim=True)) / (grouped.var(1, keepdim=True) + 1e-4)).reshape(-1)


def advantages_for_any_group(rewards, group_size, scale=True):
    """No check on the group size: a group of one gives nan, silently."""
    grouped = rewards.reshape(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    return (centred / (grouped.std(dim=1, keepdim=True) + 1e-4) if scale else centred).reshape(-1)


# ---- 6.5 k3_kl
def kl_as_list(logps, ref_logps):
    """A Python list."""
    return k3_kl(logps, ref_logps).tolist()


def kl_averaged(logps, ref_logps):
    """The mean over tokens instead of one value per token."""
    return k3_kl(logps, ref_logps).mean()


def kl_reversed(logps, ref_logps):
    """exp(logp - ref) - (logp - ref) - 1: the estimator of KL(pi_ref || pi)."""
    return k3_kl(ref_logps, logps)


def kl_k1(logps, ref_logps):
    """The plain log-ratio."""
    return logps - ref_logps


def kl_k2(logps, ref_logps):
    """Half the squared log-ratio."""
    return 0.5 * (logps - ref_logps) ** 2


def kl_without_minus_one(logps, ref_logps):
    """exp(ref - logp) - (ref - logp)."""
    return k3_kl(logps, ref_logps) + 1


def kl_without_linear_term(logps, ref_logps):
    """exp(ref - logp) - 1."""
    return (ref_logps - logps).exp() - 1


def kl_detached(logps, ref_logps):
    """The right values without a gradient."""
    return k3_kl(logps.detach(), ref_logps)


def kl_with_detached_ratio(logps, ref_logps):
    """The exponential term detached, as if it were an importance weight."""
    log_ratio = ref_logps - logps
    return log_ratio.exp().detach() - log_ratio - 1


# ---- 6.5 grpo_loss
def grpo_per_token_loss(logps, old_logps, ref_logps, advantages, mask, beta, epsilon=0.2, epsilon_high=None,
                        loss_type="grpo", kl_ratio_correction=True):
    """The per-token losses, not reduced."""
    return per_token_grpo(logps, old_logps, ref_logps, advantages, beta, epsilon, epsilon_high,
                          kl_ratio_correction) * mask


def grpo_dividing_by_token_count(logps, old_logps, ref_logps, advantages, mask, beta, epsilon=0.2, epsilon_high=None,
                                 loss_type="grpo", kl_ratio_correction=True):
    """Divides by each completion's token count without a floor: 0/0 for an empty completion."""
    per_token = grpo_per_token_loss(logps, old_logps, ref_logps, advantages, mask, beta, epsilon, epsilon_high,
                                    loss_type, kl_ratio_correction)
    if loss_type == "grpo":
        return (per_token.sum(-1) / mask.sum(-1)).mean()
    return per_token.sum() / mask.sum()


def grpo_without_mask(logps, old_logps, ref_logps, advantages, mask, beta, epsilon=0.2, epsilon_high=None,
                      loss_type="grpo", kl_ratio_correction=True):
    """Every position counts, padding too."""
    return grpo_loss(logps, old_logps, ref_logps, advantages, torch.ones_like(mask), beta, epsilon, epsilon_high,
                     loss_type, kl_ratio_correction)


def grpo_always_dapo(logps, old_logps, ref_logps, advantages, mask, beta, epsilon=0.2, epsilon_high=None,
                     loss_type="grpo", kl_ratio_correction=True):
    """One mean over all completion tokens, whatever loss_type says."""
    return grpo_loss(logps, old_logps, ref_logps, advantages, mask, beta, epsilon, epsilon_high, "dapo",
                     kl_ratio_correction)


def grpo_always_per_completion(logps, old_logps, ref_logps, advantages, mask, beta, epsilon=0.2, epsilon_high=None,
                               loss_type="grpo", kl_ratio_correction=True):
    """Per-completion means, whatever loss_type says."""
    return grpo_loss(logps, old_logps, ref_logps, advantages, mask, beta, epsilon, epsilon_high, "grpo",
                     kl_ratio_correction)


def grpo_over_padded_length(logps, old_logps, ref_logps, advantages, mask, beta, epsilon=0.2, epsilon_high=None,
                            loss_type="grpo", kl_ratio_correction=True):
    """Divides each completion's sum by the padded length T."""
    per_token = grpo_per_token_loss(logps, old_logps, ref_logps, advantages, mask, beta, epsilon, epsilon_high,
                                    loss_type, kl_ratio_correction)
    return (per_token.sum(-1) / mask.shape[1]).mean()


def grpo_with_components(logps, old_logps, ref_logps, advantages, mask, beta, epsilon, epsilon_high,
                         kl_ratio_correction, clip=True, pessimistic=True, ratio=None, kl=None, kl_weight=None,
                         detach_correction=False, detach_kl=False):
    """The loss with one part replaced, for the planted mistakes below (per completion, then over completions)."""
    ratio = (logps - old_logps).exp() if ratio is None else ratio
    high = epsilon if epsilon_high is None else epsilon_high
    adv = advantages[:, None]
    clipped = ratio.clamp(1 - epsilon, 1 + high) * adv if clip else ratio * adv
    per_token = -(torch.minimum if pessimistic else torch.maximum)(ratio * adv, clipped)
    if beta:
        kl = k3_kl(logps, ref_logps) if kl is None else kl
        if kl_ratio_correction:
            kl = kl * (ratio.detach() if detach_correction else ratio)
        per_token = per_token + (beta if kl_weight is None else kl_weight) * (kl.detach() if detach_kl else kl)
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()


def grpo_without_clipping(logps, old_logps, ref_logps, advantages, mask, beta, epsilon=0.2, epsilon_high=None,
                          loss_type="grpo", kl_ratio_correction=True):
    """-ρA, no clip."""
    return grpo_with_components(logps, old_logps, ref_logps, advantages, mask, beta, epsilon, epsilon_high,
                                kl_ratio_correction, clip=False)


def grpo_taking_max(logps, old_logps, ref_logps, advantages, mask, beta, epsilon=0.2, epsilon_high=None,
                    loss_type="grpo", kl_ratio_correction=True):
    """max where min belongs."""
    return grpo_with_components(logps, old_logps, ref_logps, advantages, mask, beta, epsilon, epsilon_high,
                                kl_ratio_correction, pessimistic=False)


def grpo_symmetric_clip(logps, old_logps, ref_logps, advantages, mask, beta, epsilon=0.2, epsilon_high=None,
                        loss_type="grpo", kl_ratio_correction=True):
    """Ignores epsilon_high."""
    return grpo_loss(logps, old_logps, ref_logps, advantages, mask, beta, epsilon, None, loss_type,
                     kl_ratio_correction)


def grpo_inverted_ratio(logps, old_logps, ref_logps, advantages, mask, beta, epsilon=0.2, epsilon_high=None,
                        loss_type="grpo", kl_ratio_correction=True):
    """exp(old - new)."""
    return grpo_with_components(logps, old_logps, ref_logps, advantages, mask, beta, epsilon, epsilon_high,
                                kl_ratio_correction, ratio=(old_logps - logps).exp())


def grpo_ignoring_old_logps(logps, old_logps, ref_logps, advantages, mask, beta, epsilon=0.2, epsilon_high=None,
                            loss_type="grpo", kl_ratio_correction=True):
    """The ratio against logps itself, detached."""
    return grpo_loss(logps, logps.detach(), ref_logps, advantages, mask, beta, epsilon, epsilon_high, loss_type,
                     kl_ratio_correction)


def grpo_without_kl(logps, old_logps, ref_logps, advantages, mask, beta, epsilon=0.2, epsilon_high=None,
                    loss_type="grpo", kl_ratio_correction=True):
    """No KL term at all."""
    return grpo_loss(logps, old_logps, ref_logps, advantages, mask, 0.0, epsilon, epsilon_high, loss_type,
                     kl_ratio_correction)


def grpo_subtracting_kl(logps, old_logps, ref_logps, advantages, mask, beta, epsilon=0.2, epsilon_high=None,
                        loss_type="grpo", kl_ratio_correction=True):
    """-β · KL: a reward for drifting away."""
    return grpo_with_components(logps, old_logps, ref_logps, advantages, mask, beta, epsilon, epsilon_high,
                                kl_ratio_correction, kl_weight=-beta)


def grpo_with_k1(logps, old_logps, ref_logps, advantages, mask, beta, epsilon=0.2, epsilon_high=None,
                 loss_type="grpo", kl_ratio_correction=True):
    """k1 for the KL."""
    return grpo_with_components(logps, old_logps, ref_logps, advantages, mask, beta, epsilon, epsilon_high,
                                kl_ratio_correction, kl=None if ref_logps is None else logps - ref_logps)


def grpo_with_reversed_kl(logps, old_logps, ref_logps, advantages, mask, beta, epsilon=0.2, epsilon_high=None,
                          loss_type="grpo", kl_ratio_correction=True):
    """k3 with logp and ref swapped."""
    return grpo_with_components(logps, old_logps, ref_logps, advantages, mask, beta, epsilon, epsilon_high,
                                kl_ratio_correction, kl=None if ref_logps is None else k3_kl(ref_logps, logps))


def grpo_never_correcting(logps, old_logps, ref_logps, advantages, mask, beta, epsilon=0.2, epsilon_high=None,
                          loss_type="grpo", kl_ratio_correction=True):
    """Ignores kl_ratio_correction=True."""
    return grpo_loss(logps, old_logps, ref_logps, advantages, mask, beta, epsilon, epsilon_high, loss_type, False)


def grpo_always_correcting(logps, old_logps, ref_logps, advantages, mask, beta, epsilon=0.2, epsilon_high=None,
                           loss_type="grpo", kl_ratio_correction=True):
    """Ignores kl_ratio_correction=False."""
    return grpo_loss(logps, old_logps, ref_logps, advantages, mask, beta, epsilon, epsilon_high, loss_type, True)


def grpo_with_batch_advantage(logps, old_logps, ref_logps, advantages, mask, beta, epsilon=0.2, epsilon_high=None,
                              loss_type="grpo", kl_ratio_correction=True):
    """One advantage for everyone: the batch mean."""
    return grpo_loss(logps, old_logps, ref_logps, advantages.mean().expand_as(advantages), mask, beta, epsilon,
                     epsilon_high, loss_type, kl_ratio_correction)


def grpo_as_number(logps, old_logps, ref_logps, advantages, mask, beta, epsilon=0.2, epsilon_high=None,
                   loss_type="grpo", kl_ratio_correction=True):
    """The right value, rebuilt as a new tensor."""
    return torch.tensor(grpo_loss(logps, old_logps, ref_logps, advantages, mask, beta, epsilon, epsilon_high,
                                  loss_type, kl_ratio_correction).item())


def grpo_with_detached_ratio(logps, old_logps, ref_logps, advantages, mask, beta, epsilon=0.2, epsilon_high=None,
                             loss_type="grpo", kl_ratio_correction=True):
    """The ratio detached: right value, no policy gradient."""
    return grpo_with_components(logps, old_logps, ref_logps, advantages, mask, beta, epsilon, epsilon_high,
                                kl_ratio_correction, ratio=(logps - old_logps).exp().detach())


def grpo_with_detached_correction(logps, old_logps, ref_logps, advantages, mask, beta, epsilon=0.2, epsilon_high=None,
                                  loss_type="grpo", kl_ratio_correction=True):
    """The KL's ratio factor detached."""
    return grpo_with_components(logps, old_logps, ref_logps, advantages, mask, beta, epsilon, epsilon_high,
                                kl_ratio_correction, detach_correction=True)


def grpo_with_detached_kl(logps, old_logps, ref_logps, advantages, mask, beta, epsilon=0.2, epsilon_high=None,
                          loss_type="grpo", kl_ratio_correction=True):
    """The whole KL term detached: right value, no pull back to the reference."""
    return grpo_with_components(logps, old_logps, ref_logps, advantages, mask, beta, epsilon, epsilon_high,
                                kl_ratio_correction, detach_kl=True)
