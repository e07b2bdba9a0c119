"""Graders of notebook 6.2: the SFT label mask, and the two ways to batch conversations (padding, packing)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch

from exercises.graders.common import (Wrong, first_difference, sample_conversations, span_text,
                                      tokenizer_merging_across_turns, tokenizer_without_generation_mask, toy_tokenizer)

IGNORE = -100


# ---------------------------------------------------------------- tokenize_conversation


def token_regions(conversations: list[dict[str, str]], tokenizer: Any) -> list[str]:
    """For every token of the rendered ChatML, which part of the conversation it starts in (in Chinese)."""
    from llmtrain.sft_data import normalize_conversation
    from llmtrain.tokenizer import IM_END, IM_START

    text, parts = "", []  # (start, end, name) character ranges
    for m in normalize_conversation(conversations):
        head = f"{IM_START}{m['role']}\n"
        if m["role"] == "assistant":
            body = len(text) + len(head)
            parts += [(len(text), body, "<|im_start|>assistant 这一行的开头"),
                      (body, body + len(m["content"]), "assistant 回答"),
                      (body + len(m["content"]), body + len(m["content"]) + len(IM_END), "assistant 回答后的 <|im_end|>")]
        else:
            parts.append((len(text), len(text) + len(head) + len(m["content"]) + len(IM_END), f"{m['role']} 轮"))
        text += f"{head}{m['content']}{IM_END}"
        parts.append((len(text), len(text) + 1, "轮末的换行"))
        text += "\n"
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return [next(name for s, e, name in parts if s <= start < e) for start, _ in offsets]


def describe_runs(positions: list[int], regions: list[str]) -> str:
    """'12–20(user 轮)、31(assistant 回答后的 <|im_end|>)': runs of positions within one part of the conversation."""
    runs: list[tuple[int, int]] = []
    for p in positions:
        if runs and p == runs[-1][1] + 1 and regions[p] == regions[runs[-1][1]]:
            runs[-1] = (runs[-1][0], p)
        else:
            runs.append((p, p))
    return "、".join(f"{span_text(first, last)}({regions[first]})" for first, last in runs)


def straddling_tokens(conversations: list[dict[str, str]], tokenizer: Any) -> list[int]:
    """Positions whose token holds characters both before and inside a reply (BPE merged across the boundary)."""
    from llmtrain.sft_data import normalize_conversation, render_chatml

    text, spans = render_chatml(normalize_conversation(conversations))
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return [i for i, (a, b) in enumerate(offsets) if any(a < start < b for start, _ in spans)]


def grade_tokenize_conversation(tokenize_conversation: Callable) -> None:
    """6.2.2: ChatML ids as apply_chat_template gives them; labels -100 except assistant replies and their <|im_end|>.

    Checked on the toy tokenizer, on one whose BPE merges "\\n" with the reply's first character (a turn-by-turn
    tokenization gives other ids there), and on one whose chat template has no generation mask.
    """
    from llmtrain.sft_data import chat_template_agreement
    from llmtrain.sft_data import tokenize_conversation as reference

    conversations = sample_conversations()
    cases = []
    for tokenizer, which in [(toy_tokenizer(), "玩具分词器"),
                             (tokenizer_merging_across_turns(), "会把 \"\\n\" 与回答第一个字合并的分词器"),
                             (tokenizer_without_generation_mask(), "对话模板里没有 {% generation %} 的分词器")]:
        two_turn_length = len(reference(conversations[1][1], tokenizer, 4096)["input_ids"])
        # the last case cuts the second reply short: labels are truncated with the ids
        cases += [(tokenizer, which, conv, max_len) for conv, max_len in
                  [(conversations[0], 4096), (conversations[1], 4096), (conversations[1], two_turn_length - 4)]]
    agreement = chat_template_agreement([conv for _, conv in conversations], tokenizer_merging_across_turns())
    if not all(result["same_ids"] and result["same_mask"] for result in agreement):
        raise RuntimeError(f"课程内部错误:llmtrain 与 apply_chat_template 在合并分词器上不一致 {agreement}")
    for tokenizer, which, (sample_id, conv), max_len in cases:
        where = f"({which},样本 {sample_id},max_len={max_len})"
        expected = reference(copy.deepcopy(conv), tokenizer, max_len)
        got = tokenize_conversation(copy.deepcopy(conv), tokenizer, max_len)
        if not isinstance(got, dict) or "input_ids" not in got or "labels" not in got:
            raise Wrong("tokenize_conversation.not_a_dict",
                        f'应返回含 "input_ids" 和 "labels" 的 dict,你返回的是 {type(got).__name__}')
        ids, labels = [int(t) for t in got["input_ids"]], [int(t) for t in got["labels"]]
        want_ids, want_labels = expected["input_ids"], expected["labels"]
        if len(ids) > max_len:
            raise Wrong("tokenize_conversation.too_long",
                        f"input_ids 有 {len(ids)} 个 token,超过了 max_len{where}:只保留前 max_len 个")
        if ids != want_ids:
            j = first_difference(ids, want_ids)
            mine = tokenizer.decode(ids[j : j + 2]) if j < len(ids) else "(没有)"
            want = tokenizer.decode(want_ids[j : j + 2]) if j < len(want_ids) else "(没有)"
            if tokenizer.decode(ids) == tokenizer.decode(want_ids):
                raise Wrong("tokenize_conversation.tokenized_in_pieces",
                            f"文字相同,token 却从位置 {j} 起不同{where}:你的是 {mine!r},apply_chat_template 的是 {want!r}。"
                            "你把对话切成几段分别分词再拼接;BPE 会跨过你切开的地方合并(这里 \"\\n\" 和回答的第一个字是一个 "
                            "token),所以要把整段 ChatML 文本一次分词,再用字符偏移(return_offsets_mapping)找回答")
            raise Wrong("tokenize_conversation.ids_differ",
                        f"input_ids 与 apply_chat_template 的分词结果从位置 {j} 起不同{where}:你的是 {mine!r},"
                        f"应为 {want!r}。渲染整段 ChatML 文本(每轮 <|im_start|>角色\\n内容<|im_end|>\\n)后一次分词,"
                        "add_special_tokens=False")
        if len(labels) != len(ids):
            raise Wrong("tokenize_conversation.length_mismatch",
                        f"labels 有 {len(labels)} 个,input_ids 有 {len(ids)} 个{where}:两者应一样长,逐位置对应")
        if labels == want_labels:
            continue
        regions = token_regions(conv, tokenizer)
        masked = [i for i, want in enumerate(want_labels) if want == IGNORE]
        missing = [i for i, want in enumerate(want_labels) if want != IGNORE and labels[i] == IGNORE]
        if labels[:-1] == want_labels[1:] or labels[1:] == want_labels[:-1]:
            raise Wrong("tokenize_conversation.labels_shifted",
                        f"labels 被你错开了一位{where}:labels 与 input_ids 逐位置对齐,错开一位由模型计算 loss 时自己完成")
        if all(label == IGNORE for label in labels):
            raise Wrong("tokenize_conversation.nothing_supervised",
                        f"你的 labels 全是 -100{where},这条样本什么也学不到。若你用的是 apply_chat_template 的 "
                        "assistant_masks:模板里没有 {% generation %}(Qwen2.5 的原版模板就没有)时它返回全 0,"
                        "只警告一次。监督区间要自己从渲染的文本里找(助手回答加 <|im_end|> 的字符区间)")
        wrong_ignore = {labels[i] for i in masked if labels[i] not in (IGNORE, ids[i])}
        if wrong_ignore and all(labels[i] != ids[i] for i in masked):
            raise Wrong("tokenize_conversation.pad_as_ignore",
                        f"不监督的位置应是 -100(cross-entropy 跳过的值),你用了 {sorted(wrong_ignore)[:3]}{where}:"
                        "用 pad id 当\"忽略\"是教材代码的缺陷,模型会被训练成在提示上输出 pad")
        supervised_extra = [i for i in masked if labels[i] != IGNORE]
        if supervised_extra:
            raise Wrong("tokenize_conversation.prompt_supervised",
                        f"位置 {describe_runs(supervised_extra, regions)}应为 -100,你的 labels 监督了它们{where}:"
                        "SFT 只学助手的回答,提示部分不算 loss(与 apply_chat_template 的 assistant_masks 相同)")
        straddling = [i for i in missing if i in straddling_tokens(conv, tokenizer)]
        if straddling:
            i = straddling[0]
            raise Wrong("tokenize_conversation.straddling_token",
                        f"位置 {i} 的 token {tokenizer.decode([ids[i]])!r} 一半是提示里的换行、一半是回答的第一个字{where},"
                        "你没有监督它。只要 token 的字符与回答区间有重叠就要监督(apply_chat_template 的 assistant_masks "
                        "也这样算),否则回答的第一个字永远学不到")
        if missing:
            if all("<|im_end|>" in regions[i] for i in missing):
                raise Wrong("tokenize_conversation.im_end_unsupervised",
                            f"位置 {describe_runs(missing, regions)}应被监督(label = input_ids),你的是 -100{where}:"
                            "不学 <|im_end|>,模型就学不会在回答完时停下")
            raise Wrong("tokenize_conversation.reply_unsupervised",
                        f"位置 {describe_runs(missing, regions)}应被监督(label = input_ids),你的是 -100{where}:"
                        "助手回答的每个 token 都要学")
        j = first_difference(labels, want_labels)
        raise Wrong("tokenize_conversation.label_value",
                    f"位置 {j}({regions[j]})的 label 应为 {want_labels[j]}(即 input_ids[{j}]),你的是 {labels[j]}{where}")


# ---------------------------------------------------------------- make_collator


def collator_features() -> list[dict[str, list[int]]]:
    """Three SFT samples of different lengths, and one sample supervised from its first token on (a continued
    pretraining document packed with the conversations): its first label is where packing must cut."""
    from llmtrain.sft_data import tokenize_conversation

    tokenizer = toy_tokenizer()
    features = [tokenize_conversation(conv, tokenizer, 4096) for _, conv in sample_conversations()]
    features.append(tokenize_conversation(sample_conversations()[0][1], tokenizer, 12))
    document = tokenizer("林晓雨的家乡是柳河村。", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return [features[0], {"input_ids": document, "labels": list(document)}, features[1], features[2]]


def as_batch(got: Any, keys: list[str], what: str) -> dict[str, torch.Tensor]:
    """The learner's batch as tensors, or `Wrong` saying what is missing."""
    if not isinstance(got, Mapping) or any(k not in got for k in keys):
        found = sorted(got) if isinstance(got, Mapping) else type(got).__name__
        raise Wrong("make_collator.batch_keys", f"{what}的 collator 应返回含 {keys} 的 dict(值是张量),你返回的是 {found}")
    try:
        return {k: torch.as_tensor(got[k]).long() for k in keys}
    except (TypeError, ValueError, RuntimeError):
        raise Wrong("make_collator.batch_keys", f"{what}的 collator 返回的 {keys} 应是形状相同的整数张量") from None


def check_packed(batch: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], lengths: list[int],
                 features: list[dict[str, list[int]]]) -> None:
    """Compare a packed batch with DataCollatorWithFlattening's, naming the mistake."""
    total = sum(lengths)
    starts = [sum(lengths[:k]) for k in range(len(lengths))]
    for key in ("input_ids", "labels", "position_ids"):
        if tuple(batch[key].shape) != (1, total):
            raise Wrong("make_collator.packed_shape",
                        f"打包时 {key} 的形状应为 (1, {total}):{len(lengths)} 个样本(长度 {lengths})首尾相接放进一行,"
                        f"没有 padding;你的是 {tuple(batch[key].shape)}")
    if not torch.equal(batch["input_ids"], expected["input_ids"]):
        raise Wrong("make_collator.packed_ids", "打包时 input_ids 应是各样本按原顺序首尾相接,你的不是")
    positions, want_positions = batch["position_ids"][0].tolist(), expected["position_ids"][0].tolist()
    if positions != want_positions:
        k = next(k for k, s in enumerate(starts) if positions[s] != 0) if any(positions[s] for s in starts) else None
        if k is not None and positions[starts[k]] == starts[k]:
            raise Wrong("make_collator.positions_continue",
                        f"第 {k + 1} 个样本从打包行的位置 {starts[k]} 开始,它的 position_ids 应从 0 重新数,你的接着前一个"
                        f"样本数成了 {starts[k]}, {starts[k] + 1}, …:transformers 正是从 position_ids 回到 0 的地方把注意力"
                        "切开;不归零,几段对话就被当成一篇长文,互相看得见")
        j = first_difference(positions, want_positions)
        raise Wrong("make_collator.positions_other",
                    f"打包行位置 {j} 的 position_id 应为 {want_positions[j]},你的是 {positions[j]}"
                    "(每个样本内从 0 起逐个加一)")
    labels, want = batch["labels"][0].tolist(), expected["labels"][0].tolist()
    if labels == want:
        return
    concatenated = [label for f in features for label in f["labels"]]
    if labels == concatenated:
        k = next(k for k, s in enumerate(starts) if k > 0 and concatenated[s] != IGNORE)
        raise Wrong("make_collator.first_label_kept",
                    f"第 {k + 1} 个样本第一个位置(打包行的第 {starts[k]} 列)的 label 应为 -100,你保留了它:模型计算 loss 时"
                    "把 labels 左移一位,前一个样本最后一个 token 的输出要去预测这个 label,于是模型学着从一段对话猜下一段的"
                    "开头。DataCollatorWithFlattening 把每个样本第一个位置的 label 设为 -100")
    if labels == [label for f in features for label in f["labels"][:-1] + [IGNORE]]:
        raise Wrong("make_collator.last_label_masked",
                    "你把每个样本最后一个位置的 label 设成了 -100:模型把 labels 左移一位,跨段的那一次预测落在下一个样本"
                    "第一个位置的 label 上,要设 -100 的是那里;最后一个位置是样本自己的 token,要照常学")
    j = first_difference(labels, want)
    raise Wrong("make_collator.packed_labels",
                f"打包行位置 {j} 的 label 应为 {want[j]},你的是 {labels[j]}:labels 是各样本的 labels 首尾相接"
                "(不要自己错开),只把每个样本第一个位置设为 -100")


def check_padded(batch: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], lengths: list[int],
                 tokenizer: Any) -> None:
    """Compare a dynamically padded batch with DataCollatorForSeq2Seq's, naming the mistake."""
    shape = tuple(expected["input_ids"].shape)
    for key in ("input_ids", "attention_mask", "labels"):
        if tuple(batch[key].shape) != shape:
            longer = batch[key].dim() == 2 and batch[key].shape[0] == shape[0] and batch[key].shape[1] > shape[1]
            raise Wrong("make_collator.padded_shape",
                        f"不打包时 {key} 的形状应为 {shape}:{len(lengths)} 个样本(长度 {lengths})各占一行,"
                        f"只补齐到本批最长的 {shape[1]} 个 token;你的是 {tuple(batch[key].shape)}"
                        + (":补齐到固定长度(教材补到 2048)时,大部分计算花在 padding 上" if longer else ""))
    if all(torch.equal(batch[k], expected[k]) for k in expected):
        return
    width = shape[1]
    left = {k: torch.stack([torch.roll(row, width - n) for row, n in zip(expected[k], lengths)]) for k in expected}
    if all(torch.equal(batch[k], left[k]) for k in expected):
        raise Wrong("make_collator.padded_left",
                    "你在左边补齐:训练时应补在右边(DataCollatorForSeq2Seq 按 tokenizer.padding_side,这里是 right)。"
                    "模型不传 position_ids 时按列号给位置,左补齐让每个样本的位置整体后移,和推理时对不上")
    real = expected["attention_mask"].bool()
    if not torch.equal(batch["attention_mask"], expected["attention_mask"]):
        raise Wrong("make_collator.padded_attention_mask",
                    "attention_mask 应在真实 token 上为 1、在 padding 上为 0:否则模型的注意力会看到 padding")
    if torch.equal(batch["labels"][real], expected["labels"][real]) and (batch["labels"][~real] != IGNORE).any():
        pads = sorted(set(batch["labels"][~real].tolist()) - {IGNORE})
        raise Wrong("make_collator.padded_labels",
                    f"padding 位置的 label 应为 -100(cross-entropy 跳过的值),你的是 {pads[:3]}"
                    + (f"(tokenizer.pad_token_id = {tokenizer.pad_token_id}):教材的缺陷,模型被训练成在每个"
                       "样本后面输出 pad" if tokenizer.pad_token_id in pads else ""))
    raise Wrong("make_collator.padded_other",
                "不打包时应与 DataCollatorForSeq2Seq(tokenizer, padding='longest', label_pad_token_id=-100) 相同:"
                "input_ids 右侧用 pad_token_id 补齐,attention_mask 在 padding 上为 0,labels 右侧用 -100 补齐")


def grade_make_collator(make_collator: Callable) -> None:
    """6.2.2: packing=True builds what DataCollatorWithFlattening builds (one row, positions restarting, each sample's
    first label -100, no attention mask); packing=False what DataCollatorForSeq2Seq builds (right padding to the
    longest sample, labels padded with -100)."""
    from llmtrain.sft_data import make_collator as reference

    tokenizer = toy_tokenizer()
    features = collator_features()
    lengths = [len(f["input_ids"]) for f in features]
    for packing, keys, what in [(True, ["input_ids", "labels", "position_ids"], "打包(packing=True)"),
                                (False, ["input_ids", "attention_mask", "labels"], "动态补齐(packing=False)")]:
        collate = make_collator(tokenizer, packing)
        if not callable(collate):
            raise Wrong("make_collator.not_callable",
                        f"make_collator 应返回一个 collator(可调用对象:样本列表 -> 张量 dict),你返回的是 {type(collate).__name__}")
        expected = reference(tokenizer, packing)(copy.deepcopy(features))
        got = collate(copy.deepcopy(features))
        if packing and isinstance(got, Mapping) and "attention_mask" in got:
            raise Wrong("make_collator.packed_attention_mask",
                        "打包时不要返回 attention_mask:有了它(哪怕全是 1),transformers 就按它算一整行的因果注意力,"
                        "不再从 position_ids 归零的地方切开,几段对话就能互相看见")
        batch = as_batch(got, keys, what)
        if packing:
            check_packed(batch, expected, lengths, features)
        else:
            check_padded(batch, expected, lengths, tokenizer)
