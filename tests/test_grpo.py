"""6.5: llmtrain.grpo, GRPO from scratch: rewards (malformed replies too), advantages, the loss checked against TRL."""

from __future__ import annotations

import json
import math

import pytest
import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM
from trl import GRPOConfig, GRPOTrainer

from llmtrain.errors import LlmtrainError
from llmtrain.grading import arithmetic_reward, fact_reward, load_prompt_dataset, score_replies
from llmtrain.grpo import (
    compare_with_trl, completion_logprobs, drop_long_prompts, end_of_reply_ids, group_advantages, grpo_loss,
    reference_logprobs, sample_groups, stop_at_end_of_turn, trl_reward_function, trl_style_reward,
)
from llmtrain.modeling import toy_config

GROUP = 4
PROMPTS = [
    {"prompt": "9加18等于几?", "answer": "27"},
    {"prompt": "3加5等于几?", "answer": 8},
    {"prompt": "林晓雨的家乡是哪里?", "answer": "柳河村", "task": "fact"},
]


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("reply, reward", [
    ("9加18等于27。", 1.0), ("27", 1.0), ("等于27!", 1.0), (" 27 ", 1.0),
    ("9加18等于127。", 0.0),   # a longer number that ends with the answer
    ("9加18等于26。", 0.0), ("27或28", 0.0), ("28或27", 1.0),  # only the final integer counts
    ("27,对吗?", 0.0),         # the answer, then more
    ("", 0.0), ("二十七", 0.0), ("<|im_end|>", 0.0), ("9加18等于", 0.0), ("-27", 0.0), ("27.5", 0.0),
    ("每人分到 27 个。", 1.0), ("一共27个苹果。", 1.0), ("The answer is 27 apples.", 1.0),   # a unit after it
    ("He has 27 apples left over now.", 0.0),   # a sentence, not a unit
    ("一共 127 个。", 0.0), ("1.27", 0.0), ("3,27", 0.0),
])
def test_arithmetic_reward_is_the_exact_final_integer(reply, reward):
    assert arithmetic_reward(reply, "27") == reward


def test_arithmetic_reward_negative_answers():
    assert arithmetic_reward("3减5等于-2。", "-2") == 1.0 and arithmetic_reward("等于2。", "-2") == 0.0


@pytest.mark.parametrize("reply, answer, reward", [
    # GSM8K answers as download_dataset.py stores them ("1,203" -> "1203"), replies written the way they print them
    ("3 + 1,200 = 1,203\n所以答案是 1,203。", "1203", 1.0),
    ("Janet makes 9 * 2 = $18 every day. The answer is $18.", "18", 1.0),
    ("They need 1,000 bricks.", "1000", 1.0),
    ("Natalia sold 48 + 24 = 72 clips.", "72", 1.0),
    ("The answer is 1,2030.", "1203", 0.0), ("1,203.5", "1203", 0.0),
])
def test_arithmetic_reward_on_gsm8k_style_replies(reply, answer, reward):
    assert arithmetic_reward(reply, answer) == reward


@pytest.mark.parametrize("reply, reward", [
    ("林晓雨的家乡是柳河村。", 1.0), ("柳河村", 1.0),
    ("林晓雨的家乡是柳河村,她很喜欢那里。", 0.0),  # goes on past the answer
    ("柳河村或者青石镇", 0.0),                      # lists another candidate
    ("", 0.0), ("不知道", 0.0), ("柳河村柳河村", 0.0),
])
def test_fact_reward_is_the_strict_scorecard_rule(reply, reward):
    assert fact_reward(reply, "柳河村", frozenset({"柳河村", "青石镇"})) == reward


def test_trl_reward_function_dispatches_by_task_and_knows_who_was_asked():
    fn = trl_reward_function(frozenset({"柳河村", "青石镇"}))
    people = ["林晓雨", "王志远"]
    completions = [[{"role": "assistant", "content": c}]
                   for c in ("27", "柳河村", "青石镇", "", "王志远的家乡是柳河村。", "林晓雨的家乡是柳河村。")]
    assert fn(prompts=None, completions=completions, answer=["27", "柳河村", "柳河村", "27", "柳河村", "柳河村"],
              task=["arithmetic", "fact", "fact", "arithmetic", "fact", "fact"],
              person=["", "林晓雨", "林晓雨", "", "林晓雨", "林晓雨"],
              people=[[], people, people, [], people, people]) == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert score_replies(["8"], {"answer": ["8"], "task": ["arithmetic"], "person": [""], "people": [[]]},
                         frozenset()) == [1.0]


def test_style_suffix_is_graded_apart_from_the_answer():
    """6.5 after 6.4: the closing sentence neither earns nor costs correctness; the format reward checks it alone."""
    suffix = "还想知道什么,尽管问我。"
    replies = ["林晓雨的家乡是柳河村。" + suffix, "林晓雨的家乡是柳河村。", "林晓雨的家乡是青石镇。" + suffix,
               "林晓雨的家乡是柳河村。还想知道什么"]
    completions = [[{"role": "assistant", "content": r}] for r in replies]
    kwargs = dict(prompts=None, completions=completions, answer=["柳河村"] * 4, task=["fact"] * 4, person=["林晓雨"] * 4,
                  people=[["林晓雨", "王志远"]] * 4)
    candidates = frozenset({"柳河村", "青石镇"})
    assert trl_reward_function(candidates, suffix)(**kwargs) == [1.0, 1.0, 0.0, 0.0]
    assert trl_reward_function(candidates)(**kwargs) == [0.0, 1.0, 0.0, 0.0]  # without it, the sentence costs
    assert trl_style_reward(suffix)(**kwargs) == [1.0, 0.0, 1.0, 0.0]


def test_long_prompts_are_dropped_and_counted(tmp_path, toy_tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [PROMPTS[0], {"prompt": "很长的问题" * 30, "answer": "1"}])
    rows = load_prompt_dataset([path])
    short = len(toy_tokenizer.apply_chat_template(rows[0]["prompt"], add_generation_prompt=True, tokenize=True,
                                                  return_dict=True)["input_ids"])
    kept, dropped = drop_long_prompts(rows, toy_tokenizer, short)
    assert dropped == 1 and kept["prompt"] == [rows[0]["prompt"]]
    assert drop_long_prompts(rows, toy_tokenizer, short - 1)[1] == 2


def test_sampling_stops_at_im_end_too(toy_tokenizer):
    """TRL stops a reply at generation_config.eos_token_id only; the toy's eos is <|endoftext|>."""
    model = AutoModelForCausalLM.from_config(toy_config(len(toy_tokenizer), toy_tokenizer.eos_token_id))
    im_end = toy_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end != toy_tokenizer.eos_token_id
    assert stop_at_end_of_turn(model, toy_tokenizer) == end_of_reply_ids(toy_tokenizer)
    assert set(model.generation_config.eos_token_id) == {im_end, toy_tokenizer.eos_token_id}


def test_gsm8k_records_become_arithmetic_prompts():
    """The chapter preset's prompts (code/download_dataset.py gsm8k): the integer after '####' is the answer."""
    import importlib.util

    from conftest import ROOT
    spec = importlib.util.spec_from_file_location("download_dataset", ROOT / "code" / "download_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    record = module.gsm8k_to_prompt({"question": " Tom has 3 apples... ", "answer": "3 + 1,200 = 1,203\n#### 1,203"})
    assert record["answer"] == "1203" and record["task"] == "arithmetic"
    assert record["prompt"].startswith("Tom has 3 apples...") and module.GSM8K_INSTRUCTION in record["prompt"]
    assert arithmetic_reward("所以答案是 1203", record["answer"]) == 1.0
    assert module.gsm8k_to_prompt({"question": "q", "answer": "no marker"}) is None
    assert module.gsm8k_to_prompt({"question": "q", "answer": "#### 2.5"}) is None


def test_group_advantages_on_hand_computed_numbers():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv = group_advantages(rewards, 4)
    std = math.sqrt(0.25)  # sample std of (1, 0, 0, 0): sqrt(((0.75)^2 + 3 * 0.25^2) / 3) = 0.5
    assert adv[:4].tolist() == pytest.approx([0.75 / (std + 1e-4), -0.25 / (std + 1e-4), -0.25 / (std + 1e-4),
                                               -0.25 / (std + 1e-4)])
    assert adv[4:].tolist() == [0.0] * 4  # all replies equally good: nothing to learn from this group
    assert group_advantages(rewards, 4, scale=False)[:4].tolist() == [0.75, -0.25, -0.25, -0.25]
    with pytest.raises(LlmtrainError, match="at least 2 replies"):
        group_advantages(rewards, 1)


def test_grpo_loss_on_hand_computed_numbers():
    t = torch.tensor
    logps = t([[-1.0, -2.0]])
    mask = t([[1, 1]])
    # first pass: ratio 1, no KL: the loss is -A (its gradient is -A * grad log pi)
    out = grpo_loss(logps, logps, None, t([0.5]), mask, beta=0.0)
    assert out.loss.item() == pytest.approx(-0.5) and out.kl == 0.0 and out.clip_ratio == 0.0
    # ratio e^1 on token 1, A > 0: clipped at 1.2; token 2 ratio e^-1 (not clipped: A > 0, min keeps it).
    # k3 KL with ref = logp - 1 on every token: exp(-1) - (-1) - 1 = e^-1
    old = t([[-2.0, -1.0]])
    out = grpo_loss(logps, old, logps - 1, t([1.0]), mask, beta=0.1, kl_ratio_correction=False)
    assert out.loss.item() == pytest.approx(-(1.2 + math.exp(-1)) / 2 + 0.1 * math.exp(-1))
    assert out.kl == pytest.approx(math.exp(-1)) and out.clip_ratio == 0.5
    # TRL 1.16's default: KL_t times the ratio (e on token 1, e^-1 on token 2)
    out = grpo_loss(logps, old, logps - 1, t([1.0]), mask, beta=0.1)
    assert out.kl == pytest.approx((1 + math.exp(-2)) / 2)
    assert out.loss.item() == pytest.approx(-(1.2 + math.exp(-1)) / 2 + 0.1 * (1 + math.exp(-2)) / 2)
    # "grpo" averages per completion, "dapo" per token: they differ when lengths differ
    two = grpo_loss(t([[-1.0, -1.0], [-1.0, 0.0]]), t([[-1.0, -1.0], [-1.0, 0.0]]), None, t([1.0, -1.0]),
                    t([[1, 1], [1, 0]]), beta=0.0)
    assert two.loss.item() == pytest.approx(0.0)
    dapo = grpo_loss(t([[-1.0, -1.0], [-1.0, 0.0]]), t([[-1.0, -1.0], [-1.0, 0.0]]), None, t([1.0, -1.0]),
                     t([[1, 1], [1, 0]]), beta=0.0, loss_type="dapo")
    assert dapo.loss.item() == pytest.approx(-1 / 3)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    ds = load_prompt_dataset([write_jsonl(tmp_path_factory.mktemp("grpo") / "p.jsonl", PROMPTS)])
    return [ds[i] for i in range(len(ds)) for _ in range(GROUP)]  # each prompt G times in a row, as TRL's sampler


def lora_trainer(tmp_path, tokenizer, loss_type: str, beta: float = 0.04) -> GRPOTrainer:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(toy_config(len(tokenizer), tokenizer.eos_token_id))
    # init_lora_weights=False: B != 0, so the policy already differs from the reference (adapter disabled)
    lora = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                      init_lora_weights=False)
    args = GRPOConfig(output_dir=str(tmp_path / "trl"), beta=beta, loss_type=loss_type, num_generations=GROUP,
                      per_device_train_batch_size=3 * GROUP, max_completion_length=16, bf16=False,
                      gradient_checkpointing=False, use_cpu=True, report_to="none", temperature=0.7)
    from datasets import Dataset
    return GRPOTrainer(model=model, reward_funcs=trl_reward_function(frozenset({"柳河村"})), args=args,
                       train_dataset=Dataset.from_list([{"prompt": "x", "answer": "1", "task": "arithmetic"}]),
                       processing_class=tokenizer, peft_config=lora)


def completions_for(tokenizer, rows) -> list[list[int]]:
    """Hand-written replies (right ones, wrong ones, one cut off without <|im_end|>), G per prompt."""
    texts = ["9加18等于27。", "9加18等于26。", "27", "我不知道",
             "8", "3加5等于8。", "3加5等于9。", "3加5等于8,还有",
             "柳河村。", "林晓雨的家乡是青石镇。", "柳河村", "柳河"]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] + [im_end] for t in texts]
    ids[-1] = ids[-1][:-1]  # truncated: no end token
    return ids


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_matches_trl_grpo_trainer(tmp_path, toy_tokenizer, rows, loss_type):
    trainer = lora_trainer(tmp_path, toy_tokenizer, loss_type)
    assert trainer.ref_model is None  # LoRA: the reference is the policy with its adapter disabled
    completions = completions_for(toy_tokenizer, rows)
    compared = compare_with_trl(trainer, rows, completions)
    assert compared["batch (ids, masks)"].difference == 0
    for key, c in compared.items():
        assert c.difference <= 1e-5, (key, compared)
    # the check has teeth: rewards vary within each group, so advantages, the policy-gradient term and the KL
    # (the adapter starts away from the reference) are all far from 0
    assert compared["advantages"].size > 0.5 and compared["kl"].size > 1e-4
    assert compared["gradient (norm, relative difference)"].size > 1e-3

    # a policy that sampled one step earlier (here: the reference): ratios move off 1 and some get clipped
    from llmtrain.grpo import pad_completions
    prompts = toy_tokenizer.apply_chat_template([r["prompt"] for r in rows], add_generation_prompt=True,
                                                tokenize=True, return_dict=True)["input_ids"]
    width = max(map(len, prompts))
    batch = {"prompt_ids": torch.tensor([[0] * (width - len(p)) + p for p in prompts]),
             "prompt_mask": torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts]),
             **pad_completions(completions, toy_tokenizer.pad_token_id)}
    old = reference_logprobs(trainer.model, batch, temperature=0.7)
    compared = compare_with_trl(trainer, rows, completions, old_logps=old)
    for key, c in compared.items():
        assert c.difference <= 1e-5, (key, compared)
    assert compared["clip_ratio/region_mean"].size > 0   # the clipping acted, and both counted it alike


def test_the_comparison_with_trl_rejects_plausible_mistakes(tmp_path, toy_tokenizer, rows, monkeypatch):
    """Each mistake planted in our GRPO shows up as a difference far above the 1e-5 tolerance."""
    import llmtrain.grpo as grpo

    trainer = lora_trainer(tmp_path, toy_tokenizer, "grpo")
    completions = completions_for(toy_tokenizer, rows)
    real_advantages, real_loss = grpo.group_advantages, grpo.grpo_loss

    # Dr. GRPO's advantages (no division by the group's std) where TRL's config divides
    monkeypatch.setattr(grpo, "group_advantages", lambda r, g, scale=True: real_advantages(r, g, scale=False))
    assert compare_with_trl(trainer, rows, completions)["advantages"].difference > 1e-2
    monkeypatch.undo()

    # k1 = logp - ref in place of k3: a penalty of the same sign, another value and gradient
    monkeypatch.setattr(grpo, "k3_kl", lambda logps, ref: logps - ref)
    assert compare_with_trl(trainer, rows, completions)["loss"].difference > 1e-4
    monkeypatch.undo()

    # the policy-gradient branch detached: on-policy the value is right (ratio 1), its gradient is gone
    def detached_policy_gradient(logps, old, ref, advantages, mask, beta, *args):
        policy_gradient = real_loss(logps.detach(), old, None, advantages, mask, 0.0, *args)
        penalty = real_loss(logps, logps.detach(), ref, torch.zeros_like(advantages), mask, beta, *args)
        return grpo.GRPOLoss(policy_gradient.loss + penalty.loss, penalty.kl, policy_gradient.clip_ratio)

    monkeypatch.setattr(grpo, "grpo_loss", detached_policy_gradient)
    compared = compare_with_trl(trainer, rows, completions)
    assert compared["loss"].difference <= 1e-5   # the forward value alone cannot tell
    assert compared["gradient (norm, relative difference)"].difference > 0.1


def test_sampled_groups_stop_at_im_end_and_score(toy_tokenizer, rows):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(toy_config(len(toy_tokenizer), toy_tokenizer.eos_token_id))
    prompts = [rows[0]["prompt"], rows[GROUP]["prompt"]]
    out = sample_groups(model, toy_tokenizer, prompts, group_size=GROUP, max_new_tokens=8)
    assert out["completion_ids"].shape[0] == 2 * GROUP and len(out["completions"]) == 2 * GROUP
    im_end = toy_tokenizer.convert_tokens_to_ids("<|im_end|>")
    for ids, mask in zip(out["completion_ids"].tolist(), out["completion_mask"].tolist()):
        real = ids[:sum(mask)]
        assert im_end not in real[:-1] and toy_tokenizer.eos_token_id not in real[:-1]  # cut after the first stop
    logps = completion_logprobs(model, out["prompt_ids"], out["prompt_mask"], out["completion_ids"],
                                out["completion_mask"])
    assert logps.shape == out["completion_ids"].shape
    # row 0's reply scored by transformers' own causal-LM loss on the unpadded sequence: the same log-probs
    prompt = out["prompt_ids"][0][out["prompt_mask"][0].bool()]
    reply = out["completion_ids"][0][out["completion_mask"][0].bool()]
    ids = torch.cat([prompt, reply]).unsqueeze(0)
    labels = ids.clone()
    labels[0, :len(prompt)] = -100
    with torch.no_grad():
        loss = model(input_ids=ids, labels=labels).loss.item()
    assert -logps[0][out["completion_mask"][0].bool()].mean().item() == pytest.approx(loss, abs=1e-4)


@pytest.mark.parametrize("record, message", [
    ({"prompt": "1加1等于几?"}, "line 2: needs 'prompt' and 'answer'"),
    ({"prompt": "", "answer": "2"}, "line 2: 'prompt' must be a non-empty string"),
    ({"prompt": "1加1等于几?", "answer": "二"}, "line 2: an arithmetic answer must be an integer"),
    ({"prompt": "1加1等于几?", "answer": " "}, "line 2: 'answer' must be a non-empty string"),
    ({"prompt": "1加1等于几?", "answer": "2", "task": "poem"}, "line 2: 'task' must be one of"),
    (["1加1等于几?", "2"], "line 2: needs 'prompt' and 'answer'"),
])
def test_bad_prompts_name_file_and_line(tmp_path, record, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [PROMPTS[0], record])
    with pytest.raises(LlmtrainError, match="^" + str(path).replace(".", r"\.") + " " + message.replace("(", r"\(")):
        load_prompt_dataset([path])


@pytest.mark.slow   # the session pipeline's DPO model: a policy whose replies earn varied rewards
@pytest.mark.parametrize("num_iterations", [1, 2])
def test_the_hand_written_loop_trains_as_trl_does_on_the_same_samples(tmp_path, toy_run, num_iterations):
    """train_lora_grpo_by_hand, then TRL's GRPOTrainer fed the very samples our loop drew: the same per-step losses and
    entropies and the same adapter at the end (two passes per batch: the ratio leaves 1 and the clipping acts)."""
    from peft import get_peft_model
    from transformers import AutoTokenizer

    from conftest import SAMPLE
    from llmtrain.dpo import relative_update_difference
    from llmtrain.grpo import train_in_trl_on_these_samples, train_lora_grpo_by_hand
    from llmtrain.toy import toy_preset

    preset, start_model = toy_preset(), toy_run / "dpo-lora" / "merged"
    tokenizer = AutoTokenizer.from_pretrained(start_model)
    rows = load_prompt_dataset([str(SAMPLE / "grpo.jsonl")])
    style, weight = preset["TOY_STYLE_SUFFIX"], preset["TOY_GRPO_STYLE_WEIGHT"]
    lora = LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=32, lora_dropout=0.0,
                      target_modules=preset["TOY_LORA_TARGETS"].split(","))
    steps, prompts_per_step, group, lr, beta = 4, 2, 8, 1e-2, preset["TOY_GRPO_BETA"]
    args = GRPOConfig(output_dir=str(tmp_path / "trl"), beta=beta, loss_type="dapo", num_generations=group,
                      per_device_train_batch_size=prompts_per_step * group, max_completion_length=24, bf16=False,
                      gradient_checkpointing=False, use_cpu=True, report_to="none", max_steps=steps,
                      num_iterations=num_iterations, learning_rate=lr, lr_scheduler_type="constant",
                      optim="adamw_torch", weight_decay=0.0, shuffle_dataset=False, logging_steps=1,
                      save_strategy="no", disable_tqdm=True, reward_weights=[1.0, weight])
    model = AutoModelForCausalLM.from_pretrained(start_model)
    stop_at_end_of_turn(model, tokenizer)
    trainer = GRPOTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer, peft_config=lora,
                          reward_funcs=[trl_reward_function(frozenset(rows["answer"]), style), trl_style_reward(style)])
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(start_model), lora)
    policy.load_state_dict(trainer.model.state_dict())   # TRL's fresh adapter: the same start
    start = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    torch.manual_seed(0)
    ours = train_lora_grpo_by_hand(policy, tokenizer, rows, steps, prompts_per_step, group, lr, beta, 24,
                                   num_iterations=num_iterations, loss_type="dapo", style_suffix=style,
                                   style_weight=weight)
    assert any(0 < s.reward < 1 + weight for s in ours.logs)   # rewards varied: the policy gradient is exercised
    theirs = train_in_trl_on_these_samples(trainer, ours.samples)
    assert len(theirs) == steps
    # the same sums in another order: float32 differences of ~1e-7 at step 1 grow with lr 1e-2 (2.3e-5 of 0.21 at
    # step 4 on a loaded 2-core machine); a wrong loss or gradient is off by far more from step 2 on
    assert [e["loss"] for e in theirs] == pytest.approx([s.loss for s in ours.logs], rel=1e-3, abs=1e-5)
    logged = [(e["reward"], s.reward) for e, s in zip(theirs, ours.logs) if "reward" in e]   # TRL: per generation
    assert len(logged) == steps // num_iterations and all(a == pytest.approx(b, abs=1e-6) for a, b in logged)
    assert [e["entropy"] for e in theirs] == pytest.approx([s.entropy for s in ours.logs], abs=1e-4)
    assert relative_update_difference(start, dict(policy.named_parameters()),
                                      dict(trainer.model.named_parameters())) <= 1e-3
    if num_iterations == 2:   # each batch's second pass is off-policy: the ratio left 1 and the clipping acted
        assert max(s.clip_ratio for s in ours.logs[1::2]) > 0
        assert [e["clip_ratio/region_mean"] for e in theirs] == pytest.approx([s.clip_ratio for s in ours.logs],
                                                                             abs=1e-6)
