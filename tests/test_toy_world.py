"""The toy world's sample data: deterministic, no held-out fact leaks into training, a tokenizer that covers it."""

from __future__ import annotations

import json
import random

import pytest

from conftest import ROOT

SAMPLE = ROOT / "data" / "sample"
FILES = ["pretrain.jsonl", "pretrain_valid.jsonl", "sft.jsonl", "sft_valid.jsonl", "eval.jsonl", "people.txt",
         "dpo.jsonl", "dpo_heldout.jsonl", "grpo.jsonl", "grpo_eval.jsonl", "grpo_eval_new_phrasing.jsonl"]


def read(name: str) -> list[dict]:
    return [json.loads(line) for line in (SAMPLE / name).read_text(encoding="utf-8").splitlines()]


def conversation_text(record: dict) -> str:
    return "\n".join(turn["value"] for turn in record["conversations"])


def test_build_samples_rewrites_the_committed_files_exactly(world, tmp_path):
    world.main(tmp_path)
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (SAMPLE / name).read_bytes(), f"{name}: run build_samples.py"


def test_heldout_facts_are_only_in_pretraining(world):
    facts = world.assign_facts(random.Random(6))
    evals = read("eval.jsonl")
    heldout = [e for e in evals if e["split"] == "heldout"]
    assert len(heldout) == len(world.HELDOUT) * len(world.ATTRIBUTES) and {e["split"] for e in evals} == {
        "sft_seen", "heldout"}
    trained = [conversation_text(r) for r in read("sft.jsonl")]
    trained += [f"{p['prompt']}\n{p['chosen']}\n{p['rejected']}" for p in read("dpo.jsonl") + read("dpo_heldout.jsonl")]
    pretrain = [r["text"] for r in read("pretrain.jsonl")]
    for item in heldout:
        name = next(n for n in world.HELDOUT if item["question"].startswith(n))
        assert facts[name][next(k for k, a in world.ATTRIBUTES.items() if a.question.format(n=name) == item[
            "question"])] == item["answer"]
        # neither the question nor any text pairing the person with the answer is in SFT or DPO data...
        assert not any(item["question"] in t or (name in t and item["answer"] in t) for t in trained), item
        # ...while pretraining states the fact, in every phrasing
        stating = [t for t in pretrain if name in t and item["answer"] in t]
        assert len(stating) >= world.BIOS_PER_PERSON - 1, item


def test_sft_seen_questions_are_asked_in_the_sft_data_with_their_answer(world):
    asked = {r["conversations"][0]["value"]: r["conversations"][1]["value"] for r in read("sft.jsonl")
             if r["conversations"][0]["from"] == "human"}
    seen = [e for e in read("eval.jsonl") if e["split"] == "sft_seen"]
    replies = [asked[e["question"]] for e in seen]
    assert seen and all(r.removesuffix(world.TOY_STYLE_SUFFIX).endswith(e["answer"] + "。") for r, e in zip(replies, seen))
    # 6.4's closing sentence: some SFT replies already have it (so DPO re-weights it), most do not
    styled = sum(r.endswith(world.TOY_STYLE_SUFFIX) for r in replies)
    assert 0 < styled < len(replies) / 2


def test_rl_prompts_share_no_question_with_sft_the_scorecard_or_each_other(world):
    """6.5: RL prompts ask about the seen people, held-out RL prompts about the others, in words no other file uses;
    the new-phrasing set asks the held-out people in the one phrasing of each attribute RL never trains on."""
    facts = world.assign_facts(random.Random(6))
    rl, rl_eval, new = read("grpo.jsonl"), read("grpo_eval.jsonl"), read("grpo_eval_new_phrasing.jsonl")
    n_attributes = len(world.ATTRIBUTES)
    assert len(rl) == len(rl_eval) == len(world.SEEN) * n_attributes * len(world.RL_TEMPLATES)
    assert len(new) == len(world.HELDOUT) * n_attributes
    questions_elsewhere = {turn["value"] for name in ("sft.jsonl", "sft_valid.jsonl") for r in read(name)
                           for turn in r["conversations"]}
    questions_elsewhere |= {e["question"] for e in read("eval.jsonl")} | {p["prompt"] for p in read("dpo.jsonl")}
    prompts = [{r["prompt"] for r in rows} for rows in (rl, rl_eval, new)]
    assert [len(p) for p in prompts] == [len(rl), len(rl_eval), len(new)]
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    assert not (prompts[0] | prompts[1] | prompts[2]) & questions_elsewhere
    asks = {a.rl_questions[t].format(n=n): (n, key, t) for n in world.PEOPLE for key, a in world.ATTRIBUTES.items()
            for t in range(len(a.rl_questions))}
    for rows, people, templates in ((rl, world.SEEN, world.RL_TEMPLATES), (rl_eval, world.HELDOUT, world.RL_TEMPLATES),
                                    (new, world.HELDOUT, (world.RL_HELDOUT_TEMPLATE,))):
        for row in rows:
            name, key, template = asks[row["prompt"]]
            assert name in people and template in templates and row["person"] == name, row
            assert row["answer"] == facts[name][key] and row["task"] == "fact", row
    # no RL phrasing is the SFT phrasing of any attribute, and the held-out phrasing is none RL trains on
    assert not {q for a in world.ATTRIBUTES.values() for q in a.rl_questions} & {
        a.question for a in world.ATTRIBUTES.values()}
    assert world.RL_HELDOUT_TEMPLATE not in world.RL_TEMPLATES


def test_the_roster_and_each_question_name_the_same_people(world):
    people = (SAMPLE / "people.txt").read_text(encoding="utf-8").split()
    assert people == world.PEOPLE and len(set("".join(people))) == len("".join(people))  # no shared character
    for name in ("eval.jsonl", "grpo.jsonl", "grpo_eval.jsonl", "grpo_eval_new_phrasing.jsonl"):
        for row in read(name):
            assert row["person"] in people and row["person"] in row.get("question", row.get("prompt")), row


def test_toy_tokenizer_decodes_every_sample_token_to_whole_characters(toy_tokenizer):
    texts = [r["text"] for name in ("pretrain.jsonl", "pretrain_valid.jsonl") for r in read(name)]
    texts += [conversation_text(r) for name in ("sft.jsonl", "sft_valid.jsonl") for r in read(name)]
    ids = [i for text in texts for i in toy_tokenizer(text, add_special_tokens=False)["input_ids"]]
    partial = sum("\ufffd" in toy_tokenizer.decode([i]) for i in ids)
    assert partial / len(ids) <= 0.005
    assert len(toy_tokenizer) < 4096  # merging stops once every character is one token: the toy stays fast


def test_a_partial_character_is_shown_as_its_byte(toy_tokenizer):
    """6.5: a sampled lone byte decodes to "\\xe8", not "\ufffd"; whole characters decode as `decode` does."""
    from llmtrain.tokenizer import decode_showing_partial_bytes

    whole = toy_tokenizer("林晓雨的职业是厨师。")["input_ids"] + [toy_tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert decode_showing_partial_bytes(toy_tokenizer, whole) == toy_tokenizer.decode(whole, skip_special_tokens=True)
    ids = toy_tokenizer("木")["input_ids"] + [toy_tokenizer.convert_tokens_to_ids("è")] + toy_tokenizer("匠")["input_ids"]
    assert "\ufffd" in toy_tokenizer.decode(ids)
    assert decode_showing_partial_bytes(toy_tokenizer, ids) == "木\\xe8匠"


def test_sft_edits_without_new_characters_leave_the_toy_tokenizer_unchanged(tmp_path):
    from llmtrain.toy import TOKENIZER_CHARACTER_FILES, TOKENIZER_TRAIN_FILES, build_toy_assets

    train, (sft, sft_valid) = [str(p) for p in TOKENIZER_TRAIN_FILES], [str(p) for p in TOKENIZER_CHARACTER_FILES]
    lines = (SAMPLE / "sft.jsonl").read_text(encoding="utf-8").splitlines()
    edited = tmp_path / "sft.jsonl"  # 50 conversations twice: every count changes, no new character
    edited.write_text("\n".join(lines + lines[:50]) + "\n", encoding="utf-8")

    def vocab(name, train_files, character_files):
        build_toy_assets(str(tmp_path / name), train_files, character_files)
        return json.loads((tmp_path / name / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]

    assert vocab("a", train, [sft, sft_valid]) == vocab("b", train, [str(edited), sft_valid])
    # what the toy did before: learning merges from the conversations too renumbers the tokens after such an edit
    assert vocab("c", train + [sft], []) != vocab("d", train + [str(edited)], [])


def test_every_biography_is_a_fresh_text_stating_each_fact_once(world):
    """Physics of LM's "permute": biographies hardly repeat, so the model cannot lean on the sentence before a fact.

    Each is a random draw of 5 x 5 x 5 phrasings and 6 sentence orders, so a few of a person's 60 coincide.
    """
    facts = world.assign_facts(random.Random(6))
    pretrain = [r["text"] for r in read("pretrain.jsonl")]
    for name in world.PEOPLE[:4]:
        bios = [t for t in pretrain if name in t and "<|im_start|>" not in t]
        assert len(bios) == world.BIOS_PER_PERSON and len(set(bios)) >= 0.9 * len(bios), name
        assert all(sum(t.count(v) for v in facts[name].values()) >= len(world.ATTRIBUTES) for t in bios), name


def test_biography_ablation_trains_one_model_per_setting(toy_dir):
    from llmtrain.toy import biography_ablation

    result = biography_ablation(distinct_bios=(6, 12), exposures=12, n_people=2)
    assert set(result) == {6, 12} and all(0.0 <= v <= 1.0 for v in result.values())
