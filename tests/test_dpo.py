"""6.4: llmtrain.dpo, DPO from scratch: checked against TRL's DPOTrainer, on hand-computed numbers and on bad input."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from trl import DPOConfig

from llmtrain.dpo import (
    TokenizedPairsDPOTrainer, build_preference_dataset, compare_with_trl, dpo_batch_loss, dpo_loss,
    load_preference_dataset, pad_preference_batch, relative_update_difference, sequence_logprobs,
    train_lora_dpo_by_hand,
)
from llmtrain.errors import LlmtrainError
from llmtrain.modeling import toy_config

BETA = 0.1
PAIRS = [
    {"prompt": "北京是哪个国家的首都?", "chosen": "北京是中国的首都。", "rejected": "北京是日本的首都。"},
    {"prompt": "一周有几天?", "chosen": "一周有七天。", "rejected": "不知道。"},
    {"prompt": [{"role": "user", "content": "你好"},
                {"role": "assistant", "content": "你好!有什么可以帮你?"},
                {"role": "user", "content": "3加5等于几?"}],
     "chosen": [{"role": "assistant", "content": "3加5等于8。"}],
     "rejected": [{"role": "assistant", "content": "3加5等于9,一个很长的错误回答。"}]},
]


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, toy_tokenizer):
    raw = load_preference_dataset([write_jsonl(tmp_path_factory.mktemp("dpo") / "pairs.jsonl", PAIRS)])
    return build_preference_dataset(raw, toy_tokenizer, max_len=128)


def toy_model(tokenizer, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(toy_config(len(tokenizer), tokenizer.eos_token_id)).eval()


def trl_trainer(tmp_path, model, tokenizer, dataset, ref_model=None, peft_config=None) -> TokenizedPairsDPOTrainer:
    args = DPOConfig(output_dir=str(tmp_path / "trl"), beta=BETA, max_length=128, bf16=False,
                     activation_checkpointing=False, use_cpu=True, report_to="none",
                     per_device_train_batch_size=len(dataset))
    return TokenizedPairsDPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset,
                                    processing_class=tokenizer, peft_config=peft_config)


def trl_batch_loss(trainer: TokenizedPairsDPOTrainer, batch: dict) -> tuple[float, dict]:
    """TRL's own loss on `batch` (train mode, as in a training step) and the metrics it logs for it."""
    trainer.model.train()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch).item()
    trainer.log({})
    return loss, trainer.state.log_history[-1]


def test_same_rendering_for_string_and_conversational_pairs(pairs, toy_tokenizer):
    assert len(pairs) == 3
    first = pairs[0]
    assert toy_tokenizer.decode(first["prompt_ids"]) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n北京是哪个国家的首都?<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert toy_tokenizer.decode(first["chosen_ids"]) == "北京是中国的首都。<|im_end|>"  # no BOS/EOS added
    multi_turn = toy_tokenizer.decode(pairs[2]["prompt_ids"])
    assert multi_turn.count("<|im_start|>assistant\n") == 2
    assert multi_turn.endswith("3加5等于几?<|im_end|>\n<|im_start|>assistant\n")


def test_matches_trl_with_a_separate_reference_model(tmp_path, pairs, toy_tokenizer):
    reference = toy_model(toy_tokenizer, seed=0)
    policy = copy.deepcopy(reference)
    with torch.no_grad():  # a policy a little way from the reference, so the log-ratios are not zero
        for p in policy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    examples = [pairs[i] for i in range(len(pairs))]
    batch = pad_preference_batch(examples, toy_tokenizer.pad_token_id)
    with torch.no_grad():
        ours_policy = sequence_logprobs(policy, batch["input_ids"], batch["attention_mask"], batch["labels"])
        ours_ref = sequence_logprobs(reference, batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert (ours_policy - ours_ref).abs().min() > 1e-3
    assert dpo_loss(*ours_policy.chunk(2), *ours_ref.chunk(2), beta=BETA).loss.item() != pytest.approx(math.log(2))

    # the same function notebook 6.4 shows: TRL's batch, per-sequence log-probs, loss and logged metrics vs ours
    diffs = compare_with_trl(trl_trainer(tmp_path, policy, toy_tokenizer, pairs, ref_model=reference), examples)
    assert diffs["batch (ids, mask, labels)"] == 0
    # 1e-5 plus float32 rounding: TRL's fused LM head runs its log-softmax in float32, and a reply's log-prob is a
    # sum of ~10-20 terms of ~-8 (one float32 ulp of 100 is 8e-6)
    for key in ("policy log-probs", "reference log-probs", "logps/chosen", "logps/rejected"):
        assert diffs[key] <= 1e-5 + 1e-6 * ours_policy.abs().max().item(), key
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"):
        assert diffs[key] <= 1e-5, key


def test_lora_reference_is_the_base_with_the_adapter_disabled_as_in_trl(tmp_path, pairs, toy_tokenizer):
    base = toy_model(toy_tokenizer, seed=1)
    untouched = copy.deepcopy(base)
    # init_lora_weights=False: B != 0, so the adapter already moves the policy away from the base
    lora = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                      init_lora_weights=False)
    trainer = trl_trainer(tmp_path, base, toy_tokenizer, pairs, peft_config=lora)
    assert trainer.ref_model is None  # TRL keeps no second model: the reference is the adapter switched off
    assert not any("lora" in n for n, _ in untouched.named_parameters())

    examples = [pairs[i] for i in range(len(pairs))]
    batch = pad_preference_batch(examples, toy_tokenizer.pad_token_id)
    trainer.model.eval()
    with torch.no_grad():
        ours = dpo_batch_loss(trainer.model, batch, BETA)
        base_logps = sequence_logprobs(untouched, batch["input_ids"], batch["attention_mask"], batch["labels"])
        policy_logps = sequence_logprobs(trainer.model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    expected = dpo_loss(*policy_logps.chunk(2), *base_logps.chunk(2), beta=BETA)
    assert ours.loss.item() == pytest.approx(expected.loss.item(), abs=1e-6)  # adapter disabled == base weights

    loss, logged = trl_batch_loss(trainer, trainer.data_collator(examples))
    assert loss == pytest.approx(ours.loss.item(), abs=1e-5)
    assert logged["rewards/margins"] == pytest.approx(ours.reward_margin, abs=1e-5)


def test_hand_written_lora_dpo_loop_follows_trl_step_by_step(tmp_path, pairs, toy_tokenizer):
    lora = dict(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    steps, lr = len(pairs), 1e-2
    args = DPOConfig(output_dir=str(tmp_path / "trl"), beta=BETA, max_length=128, bf16=False,
                     activation_checkpointing=False, use_cpu=True, report_to="none", save_strategy="no",
                     disable_tqdm=True, per_device_train_batch_size=1, max_steps=steps, learning_rate=lr,
                     lr_scheduler_type="constant", optim="adamw_torch", train_sampling_strategy="sequential",
                     logging_steps=1)
    trainer = TokenizedPairsDPOTrainer(model=toy_model(toy_tokenizer, seed=3), ref_model=None, args=args,
                                       train_dataset=pairs, processing_class=toy_tokenizer,
                                       peft_config=LoraConfig(**lora))
    # our policy: the same base and the very adapter TRL starts from (A random, B = 0); dropout off, as TRL's
    policy = get_peft_model(toy_model(toy_tokenizer, seed=3), LoraConfig(**lora, lora_dropout=0.0))
    policy.load_state_dict(trainer.model.state_dict())
    start = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    ours = train_lora_dpo_by_hand(policy, [pairs[i] for i in range(steps)], toy_tokenizer.pad_token_id, BETA, lr,
                                  pairs_per_step=1, steps=steps)
    trainer.train()
    trl = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(trl) == steps and ours[0] == pytest.approx(math.log(2), abs=1e-6)
    assert abs(ours[-1] - ours[0]) > 1e-3  # the adapter learned, so agreement is not two flat lines
    assert max(abs(a - b) for a, b in zip(ours, trl)) <= 1e-5
    assert relative_update_difference(start, dict(policy.named_parameters()),
                                      dict(trainer.model.named_parameters())) <= 1e-3
    with pytest.raises(LlmtrainError, match="4 steps of 1 pairs need 4 pairs, got 3"):
        train_lora_dpo_by_hand(policy, [pairs[i] for i in range(steps)], toy_tokenizer.pad_token_id, BETA, lr,
                               pairs_per_step=1, steps=4)


def test_relative_update_difference_on_hand_computed_numbers():
    start = {"a": torch.zeros(2), "b": torch.zeros(1)}
    theirs = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([4.0])}  # moved by a norm of 5
    ours = {"a": torch.tensor([3.0, 0.3]), "b": torch.tensor([4.4])}  # apart by a norm of 0.5
    assert relative_update_difference(start, ours, theirs) == pytest.approx(0.1)
    with pytest.raises(LlmtrainError, match="did not move"):
        relative_update_difference(start, ours, start)


def test_dpo_loss_on_hand_computed_numbers():
    t = torch.tensor
    # pair 1: the policy raised the chosen reply by 1 nat and lowered the rejected one by 1 (vs the reference);
    # pair 2: the other way round. beta = 0.5, so the logits are +1 and -1.
    out = dpo_loss(t([-1.0, -3.0]), t([-3.0, -1.0]), t([-2.0, -2.0]), t([-2.0, -2.0]), beta=0.5)
    assert out.loss.item() == pytest.approx((math.log1p(math.exp(-1)) + math.log1p(math.exp(1))) / 2)
    assert out.chosen_rewards.tolist() == [0.5, -0.5] and out.rejected_rewards.tolist() == [-0.5, 0.5]
    assert out.reward_accuracy == 0.5 and out.reward_margin == 0.0

    same = dpo_loss(t([-4.0]), t([-6.0]), t([-4.0]), t([-6.0]), beta=0.1)  # policy == reference
    assert same.loss.item() == pytest.approx(math.log(2)) and same.reward_accuracy == 0.0


def test_padding_and_prompt_do_not_count_in_the_reply_logprob(pairs, toy_tokenizer):
    model = toy_model(toy_tokenizer, seed=2)
    alone = pad_preference_batch([pairs[1]], toy_tokenizer.pad_token_id)
    padded = pad_preference_batch([pairs[1], pairs[2]], toy_tokenizer.pad_token_id)  # pairs[2] is longer
    with torch.no_grad():
        a = sequence_logprobs(model, alone["input_ids"], alone["attention_mask"], alone["labels"])
        b = sequence_logprobs(model, padded["input_ids"], padded["attention_mask"], padded["labels"])
        logits = model(alone["input_ids"][:1]).logits[0].log_softmax(-1)
    torch.testing.assert_close(b[[0, 2]], a, atol=1e-5, rtol=0)
    start, ids = len(pairs[1]["prompt_ids"]), alone["input_ids"][0]
    by_hand = sum(logits[i - 1, ids[i]].item() for i in range(start, len(ids)))
    assert a[0].item() == pytest.approx(by_hand, abs=1e-4)


@pytest.mark.parametrize("record, message", [
    ({"prompt": "你好", "chosen": "你好!"}, "line 2: needs 'prompt', 'chosen' and 'rejected'"),
    ({"prompt": "你好", "chosen": "你好!", "rejected": "你好!"}, "line 2: 'chosen' and 'rejected' are identical"),
    ({"prompt": "你好", "chosen": " ", "rejected": "走开"}, "line 2: 'chosen' is empty"),
    ({"prompt": "", "chosen": "你好!", "rejected": "走开"},
     "line 2: the prompt must end with a non-empty user turn"),
    ({"prompt": [], "chosen": "你好!", "rejected": "走开"},
     "line 2: 'prompt' must be a string or a non-empty list"),
    ({"prompt": "你好", "chosen": [{"role": "user", "content": "你好!"}], "rejected": "走开"},
     "line 2: 'chosen' must be one assistant message"),
    ({"prompt": [{"role": "robot", "content": "你好"}], "chosen": "你好!", "rejected": "走开"},
     "line 2: turn 0 has unknown role 'robot'"),
])
def test_bad_pairs_name_file_and_line(tmp_path, record, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [PAIRS[0], record])
    with pytest.raises(LlmtrainError, match="^" + str(path).replace(".", r"\.") + " " + message.replace("(", r"\(")):
        load_preference_dataset([path])


def test_prompts_without_room_for_a_reply_are_dropped_then_an_error(tmp_path, toy_tokenizer):
    long_prompt = {"prompt": "很长的问题" * 40, "chosen": "好的。", "rejected": "不好。"}
    raw = load_preference_dataset([write_jsonl(tmp_path / "p.jsonl", [PAIRS[0], long_prompt])])
    kept = build_preference_dataset(raw, toy_tokenizer, max_len=64)
    assert len(kept) == 1 and len(kept[0]["prompt_ids"]) + len(kept[0]["chosen_ids"]) <= 64
    cut = build_preference_dataset(raw.select([0]), toy_tokenizer, max_len=len(kept[0]["prompt_ids"]) + 2)
    assert len(cut[0]["chosen_ids"]) == len(cut[0]["rejected_ids"]) == 2  # the reply is cut, not the prompt
    with pytest.raises(LlmtrainError, match="No preference pair leaves room for a reply within 16 tokens"):
        build_preference_dataset(raw, toy_tokenizer, max_len=16)
