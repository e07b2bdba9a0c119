"""One grader per exercise: runs the learner's code on real tensors and compares it with llmtrain or a library.

A grader returns None when the answer is right and raises `Wrong` with a message that teaches (in Chinese)
when it is not. It diagnoses the usual mistakes by computing them too and naming the one that matches.
"""

from __future__ import annotations

import copy
import math
from functools import lru_cache
from typing import Any, Callable

import torch
from torch import nn

from llmtrain import PROJECT_ROOT

SAMPLE = PROJECT_ROOT / "data" / "sample"


class Wrong(Exception):
    """The learner's answer is wrong; the message says where and why."""


@lru_cache(maxsize=1)
def toy_tokenizer() -> Any:
    """The course's toy tokenizer (artifacts/toy, built in a second or two when missing)."""
    from transformers import AutoTokenizer

    from llmtrain.toy import ensure_toy_assets

    return AutoTokenizer.from_pretrained(ensure_toy_assets())


def human_bytes(n: float) -> str:
    """'1.23 GiB' from a byte count, or MiB below one GiB."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


def span_text(first: int, last: int) -> str:
    """'12–20' for a run, '12' for one position."""
    return f"{first}" if first == last else f"{first}–{last}"


def as_int_rows(value: Any, what: str) -> list[list[int]]:
    """A list of token lists from the learner (lists or tensors), or `Wrong` saying what came back instead."""
    try:
        return [[int(t) for t in row] for row in value]
    except (TypeError, ValueError):
        raise Wrong(f"{what} 应是若干个 token 列表(list[list[int]]),你返回的是 {type(value).__name__}") from None


def first_difference(got: list[int], expected: list[int]) -> int:
    """The first position where two lists differ (the shorter length when one is a prefix of the other)."""
    return next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))


# ---------------------------------------------------------------- 6.1


def sample_documents(n: int) -> list[str]:
    """The first `n` documents of the pretraining sample corpus."""
    from llmtrain.pretrain_data import read_jsonl_texts

    texts = read_jsonl_texts(str(SAMPLE / "pretrain.jsonl"))
    return [next(texts) for _ in range(n)]


def grade_tokenize_with_eos(tokenize_with_eos: Callable) -> None:
    """6.1: every document's tokens (no special tokens added) followed by the tokenizer's EOS."""
    from llmtrain.pretrain_data import tokenize_with_eos as reference

    tokenizer = toy_tokenizer()
    texts = sample_documents(4)
    expected = reference(texts, tokenizer)["input_ids"]
    got = tokenize_with_eos(list(texts), tokenizer)
    if not isinstance(got, dict) or "input_ids" not in got:
        raise Wrong(f'应返回 {{"input_ids": [...]}},你返回的是 {type(got).__name__}')
    rows = as_int_rows(got["input_ids"], '返回值的 "input_ids"')
    if len(rows) != len(texts):
        raise Wrong(f"输入 {len(texts)} 篇文档,应返回 {len(texts)} 个 token 列表(每篇一个),你返回了 {len(rows)} 个")
    eos = tokenizer.eos_token_id
    for i, (row, want) in enumerate(zip(rows, expected)):
        if row == want:
            continue
        if row == want[:-1]:
            raise Wrong(f"文档 {i} 的末尾少了 EOS({tokenizer.eos_token},id {eos}):不加 EOS,文档拼接成训练块后,"
                        "模型看不出一篇文档在哪里结束、下一篇从哪里开始(这正是教材代码的缺陷)")
        if row == [eos] + want[:-1]:
            raise Wrong(f"文档 {i} 的 EOS 应加在末尾(表示\"这篇结束了\"),你加在了开头")
        j = first_difference(row, want)
        raise Wrong(f"文档 {i} 的 token 与 tokenizer(text, add_special_tokens=False) 的 input_ids + [EOS] 不同:"
                    f"位置 {j} 你的是 {row[j] if j < len(row) else '(没有)'},应为 {want[j] if j < len(want) else '(没有)'}"
                    f"(你的长度 {len(row)},应为 {len(want)})")


def grade_group_texts(group_texts: Callable) -> None:
    """6.1: documents concatenated (their EOS kept) and cut into full blocks; labels = input_ids."""
    from llmtrain.pretrain_data import group_texts as reference
    from llmtrain.pretrain_data import tokenize_with_eos

    tokenizer = toy_tokenizer()
    eos = tokenizer.eos_token_id
    examples = tokenize_with_eos(sample_documents(6), tokenizer)
    cases = [(examples, 16), (examples, 64), ({"input_ids": [examples["input_ids"][0][:5]]}, 16)]
    for case, block_size in cases:
        expected = reference(copy.deepcopy(case), block_size)["input_ids"]
        got = group_texts(copy.deepcopy(case), block_size)
        n_tokens = sum(len(ids) for ids in case["input_ids"])
        where = f"(block_size={block_size},{len(case['input_ids'])} 篇文档共 {n_tokens} 个 token)"
        if not isinstance(got, dict) or "input_ids" not in got or "labels" not in got:
            keys = sorted(got) if isinstance(got, dict) else type(got).__name__
            raise Wrong(f'应返回含 "input_ids" 和 "labels" 两个键的 dict,你返回的是 {keys}')
        blocks = as_int_rows(got["input_ids"], '"input_ids"')
        labels = as_int_rows(got["labels"], '"labels"')
        if not expected and blocks:
            raise Wrong(f"语料不足一块时应返回空列表{where}:你返回了 {len(blocks)} 块,"
                        f"第一块 {len(blocks[0])} 个 token。不足 block_size 的余数要丢掉")
        short = [(i, len(b)) for i, b in enumerate(blocks) if len(b) != block_size]
        if short:
            i, length = short[0]
            if i == len(blocks) - 1 and len(short) == 1:
                raise Wrong(f"最后一块只有 {length} 个 token{where}:只保留完整的块,拼接后不足 block_size 的余数要丢掉")
            raise Wrong(f"第 {i} 块有 {length} 个 token,每块都应正好 {block_size} 个{where}:先把所有文档拼成一条再切,"
                        "不要每篇文档单独切块")
        got_eos = sum(t == eos for b in blocks for t in b)
        want_eos = sum(t == eos for b in expected for t in b)
        if got_eos < want_eos:
            raise Wrong(f"你的块里只有 {got_eos} 个 EOS({tokenizer.eos_token},id {eos}),应有 {want_eos} 个{where}:"
                        "每篇文档末尾的 EOS 要原样留在拼接结果里,模型才知道一篇文档在哪里结束")
        if len(blocks) != len(expected):
            raise Wrong(f"应切出 {len(expected)} 块,你切出 {len(blocks)} 块{where}:共 {n_tokens} 个 token 时应有 "
                        f"{n_tokens} // {block_size} 块")
        if blocks != expected:
            i = next(k for k, (a, b) in enumerate(zip(blocks, expected)) if a != b)
            raise Wrong(f"第 {i} 块的内容与\"按顺序拼接所有文档再切开\"不同{where}:从第 {first_difference(blocks[i], expected[i])} "
                        "个 token 起不一样。文档要按原顺序首尾相接")
        if labels != blocks:
            if len(labels) == len(blocks) and all(lab[:-1] == b[1:] for lab, b in zip(labels, blocks)):
                raise Wrong("labels 应与 input_ids 完全相同,你的 labels 向左错开了一位:错开一位由模型计算 loss 时"
                            "自己完成,预处理时再移一次,模型就学成了预测后面第二个 token")
            raise Wrong(f"labels 应与 input_ids 完全相同(因果语言模型的标签就是输入本身){where}")


def grade_logits_bytes(logits_bytes: Callable) -> None:
    """6.1.5: tokens x vocab x 12 bytes (three fp32 buffers at the start of backward), whatever the dtype."""
    from transformers import AutoConfig

    from llmtrain.memory import WORKING_BYTES
    from llmtrain.memory import logits_bytes as reference
    from llmtrain.modeling import qwen2_5_1_5b_config
    from llmtrain.toy import ensure_toy_assets

    toy, qwen = AutoConfig.from_pretrained(ensure_toy_assets()), qwen2_5_1_5b_config()
    for name, config, batch, block, dtype in [("玩具模型", toy, 8, 256, "bf16"), ("Qwen2.5-1.5B", qwen, 16, 2048, "bf16"),
                                              ("Qwen2.5-1.5B", qwen, 1, 2048, "fp32")]:
        tokens, vocab = batch * block, config.vocab_size
        expected = reference(config, tokens, dtype)
        got = logits_bytes(config, tokens, dtype)
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            raise Wrong(f"应返回字节数(一个数),你返回的是 {type(got).__name__}")
        if math.isclose(got, expected, rel_tol=1e-9):
            continue
        case = (f"{name}(vocab_size={vocab}),每卡 batch {batch} × block {block} = {tokens} 个 token,{dtype}:"
                f"你的 {got:,.0f} 字节({human_bytes(got)}),应为 {expected:,} 字节({human_bytes(expected)})。")
        per_logit = got / (tokens * vocab)
        if math.isclose(per_logit, WORKING_BYTES[dtype]):
            raise Wrong(case + f"你只算了 {dtype} 的 logits 本身(每个 {WORKING_BYTES[dtype]} 字节):transformers 的 loss "
                        "先把 logits 升到 fp32,反向开始时同时有 log_softmax 的 fp32 输出、它的梯度和 logits 的 fp32 梯度,"
                        "每个 logit 3 × 4 = 12 字节")
        if math.isclose(per_logit, 4):
            raise Wrong(case + "你只算了一份 fp32(每个 logit 4 字节):反向开始时有三份 fp32 缓冲"
                        "(log_softmax 的输出、它的梯度、logits 的梯度),每个 logit 12 字节")
        if math.isclose(got, tokens * config.hidden_size * 12):
            raise Wrong(case + "每个 token 的 logits 有 vocab_size 个(词表里每个词一个分数),不是 hidden_size 个")
        raise Wrong(case + f"是正确值的 {got / expected:.3g} 倍。提示:tokens × vocab_size × 每个 logit 的字节数,"
                    "且与训练精度无关(loss 一律在 fp32 里算)")


# ---------------------------------------------------------------- 6.2


def sample_conversations() -> list[tuple[str, list[dict[str, str]]]]:
    """A single-turn and a two-turn conversation from data/sample/sft.jsonl, with their ids."""
    from llmtrain.sft_data import load_sft_dataset

    rows = load_sft_dataset([str(SAMPLE / "sft.jsonl")])
    single = next(r for r in rows if len(r["conversations"]) == 2)
    double = next(r for r in rows if sum(t["from"] == "human" for t in r["conversations"]) == 2)
    return [(single["id"], single["conversations"]), (double["id"], double["conversations"])]


def token_regions(conversations: list[dict[str, str]], tokenizer: Any) -> list[str]:
    """For every token of the rendered ChatML, which part of the conversation it belongs to (in Chinese)."""
    from llmtrain.sft_data import normalize_conversation
    from llmtrain.tokenizer import IM_END, IM_START

    text, parts = "", []  # (start, end, name) character ranges
    for m in normalize_conversation(conversations):
        head = f"{IM_START}{m['role']}\n"
        if m["role"] == "assistant":
            parts += [(len(text), len(text) + len(head), "<|im_start|>assistant 这一行的开头"),
                      (len(text) + len(head), len(text) + len(head) + len(m["content"]), "assistant 回答"),
                      (len(text) + len(head) + len(m["content"]), len(text) + len(head) + len(m["content"]) + len(IM_END),
                       "assistant 回答后的 <|im_end|>")]
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


def grade_tokenize_conversation(tokenize_conversation: Callable) -> None:
    """6.2.2: ChatML ids as apply_chat_template gives them; labels -100 except assistant replies and their <|im_end|>."""
    from llmtrain.sft_data import IGNORE_INDEX, chat_template_agreement, normalize_conversation
    from llmtrain.sft_data import tokenize_conversation as reference

    tokenizer = toy_tokenizer()
    conversations = sample_conversations()
    agreement = chat_template_agreement([conv for _, conv in conversations], tokenizer)
    if not all(all(result.values()) for result in agreement):
        raise RuntimeError(f"课程内部错误:llmtrain 与 apply_chat_template 的监督掩码不一致 {agreement}")
    two_turn_length = len(reference(conversations[1][1], tokenizer, 4096)["input_ids"])
    # the last case cuts the second reply short: labels are truncated with the ids
    for (sample_id, conv), max_len in [(conversations[0], 4096), (conversations[1], 4096),
                                       (conversations[1], two_turn_length - 4)]:
        where = f"(样本 {sample_id},max_len={max_len})"
        expected = reference(copy.deepcopy(conv), tokenizer, max_len)
        got = tokenize_conversation(copy.deepcopy(conv), tokenizer, max_len)
        if not isinstance(got, dict) or "input_ids" not in got or "labels" not in got:
            raise Wrong(f'应返回含 "input_ids" 和 "labels" 的 dict,你返回的是 {type(got).__name__}')
        ids, labels = [int(t) for t in got["input_ids"]], [int(t) for t in got["labels"]]
        want_ids, want_labels = expected["input_ids"], expected["labels"]
        if len(ids) > max_len:
            raise Wrong(f"input_ids 有 {len(ids)} 个 token,超过了 max_len{where}:只保留前 max_len 个")
        if ids != want_ids:
            j = first_difference(ids, want_ids)
            mine = tokenizer.decode(ids[j : j + 3]) if j < len(ids) else "(没有)"
            want = tokenizer.decode(want_ids[j : j + 3]) if j < len(want_ids) else "(没有)"
            raise Wrong(f"input_ids 与 apply_chat_template 的分词结果从位置 {j} 起不同{where}:你的是 {mine!r},应为 {want!r}。"
                        "渲染整段 ChatML 文本(每轮 <|im_start|>角色\\n内容<|im_end|>\\n)后一次分词,add_special_tokens=False")
        if len(labels) != len(ids):
            raise Wrong(f"labels 有 {len(labels)} 个,input_ids 有 {len(ids)} 个{where}:两者应一样长,逐位置对应")
        if labels == want_labels:
            continue
        regions = token_regions(conv, tokenizer)
        if labels[:-1] == want_labels[1:] or labels[1:] == want_labels[:-1]:
            raise Wrong(f"labels 被你错开了一位{where}:labels 与 input_ids 逐位置对齐,错开一位由模型计算 loss 时自己完成")
        masked = [i for i, want in enumerate(want_labels) if want == IGNORE_INDEX]
        wrong_ignore = {labels[i] for i in masked if labels[i] != IGNORE_INDEX and labels[i] != ids[i]}
        if wrong_ignore and all(labels[i] != ids[i] for i in masked):
            raise Wrong(f"不监督的位置应是 -100(cross-entropy 跳过的值),你用了 {sorted(wrong_ignore)[:3]}{where}:"
                        "用 pad id 当\"忽略\"是教材代码的缺陷,模型会被训练成在提示上输出 pad")
        supervised_extra = [i for i in masked if labels[i] != IGNORE_INDEX]
        if supervised_extra:
            raise Wrong(f"位置 {describe_runs(supervised_extra, regions)}应为 -100,你的 labels 监督了它们{where}:"
                        "SFT 只学助手的回答,提示部分不算 loss(按 apply_chat_template 的 assistant_masks)")
        missing = [i for i, want in enumerate(want_labels) if want != IGNORE_INDEX and labels[i] == IGNORE_INDEX]
        if missing:
            why = ("不学 <|im_end|>,模型就学不会在回答完时停下" if all("<|im_end|>" in regions[i] for i in missing)
                   else "助手回答的每个 token 都要学")
            raise Wrong(f"位置 {describe_runs(missing, regions)}应被监督(label = input_ids),你的是 -100{where}:{why}")
        j = first_difference(labels, want_labels)
        raise Wrong(f"位置 {j}({regions[j]})的 label 应为 {want_labels[j]}(即 input_ids[{j}]),你的是 {labels[j]}{where}")


def grade_packed_position_ids(packed_position_ids: Callable) -> None:
    """6.2.2: position ids restart at 0 for each packed sample, as DataCollatorWithFlattening builds them."""
    from transformers import DataCollatorWithFlattening

    from llmtrain.sft_data import tokenize_conversation

    tokenizer = toy_tokenizer()
    examples = [tokenize_conversation(conv, tokenizer, 4096) for _, conv in sample_conversations()]
    examples.append(examples[0])
    expected = DataCollatorWithFlattening()(copy.deepcopy(examples))["position_ids"]
    got = torch.as_tensor(packed_position_ids(copy.deepcopy(examples)))
    lengths = [len(ex["input_ids"]) for ex in examples]
    if got.shape != expected.shape:
        raise Wrong(f"形状应为 (1, {expected.shape[1]}):{len(examples)} 个样本(长度 {lengths})打包成一行,"
                    f"你的是 {tuple(got.shape)}")
    if torch.equal(got.long(), expected):
        return
    starts = [sum(lengths[:k]) for k in range(len(lengths))]
    row = got[0].tolist()
    for k, start in enumerate(starts):
        if row[start] != 0:
            if k > 0 and row[start] == start:
                raise Wrong(f"第 {k + 1} 个样本从打包行的位置 {start} 开始,它的 position_ids 应从 0 重新数,你的接着前一个"
                            f"样本数成了 {start}, {start + 1}, …:这样模型会把几段对话当成一篇长文;"
                            "transformers 正是从 position_ids 回到 0 的地方切开注意力")
            raise Wrong(f"第 {k + 1} 个样本(从位置 {start} 开始)的 position_ids 应从 0 开始,你的是 {row[start]}")
    j = first_difference(row, expected[0].tolist())
    raise Wrong(f"位置 {j} 的 position_id 应为 {expected[0, j].item()},你的是 {row[j]}(每个样本内 0, 1, 2, … 逐个加一)")


# ---------------------------------------------------------------- 6.3


def effective_scaling(delta: torch.Tensor, unscaled: torch.Tensor) -> float | None:
    """The s with delta ≈ s · unscaled (least squares), or None when delta is not a multiple of it."""
    s = (delta * unscaled).sum() / (unscaled * unscaled).sum()
    if (delta - s * unscaled).abs().max() > 1e-4 * (1 + delta.abs().max()):
        return None
    return s.item()


def scaling_hint(s: float | None, r: int, alpha: float) -> str:
    """Name the scaling the learner used, when it is one of the usual wrong ones."""
    for value, text in [(alpha, "你乘的是 α,应乘 α/r"), (1.0, "你没有乘缩放系数 α/r"), (r / alpha, "你乘的是 r/α,应乘 α/r"),
                        (0.0, "你没有加上 B·A 这一项")]:
        if s is not None and math.isclose(s, value, rel_tol=1e-4, abs_tol=1e-6):
            return f"{text}(这里 α={alpha:g}、r={r},α/r={alpha / r:g})"
    found = "不是 B·A 的倍数(检查 A、B 的顺序与转置)" if s is None else f"是 B·A 的 {s:.4g} 倍"
    return f"你加上的那一项{found},应为 (α/r)·B·A = {alpha / r:g}·B·A"


def grade_lora_linear(lora_linear: type) -> None:
    """6.3.4: frozen base, A random and B zero (output = base at start), α/r scaling, merge; checked against peft."""
    r, alpha, d_in, d_out = 4, 8.0, 24, 16
    torch.manual_seed(0)
    base = nn.Linear(d_in, d_out)
    w0, b0 = base.weight.detach().clone(), base.bias.detach().clone()
    x = torch.randn(5, d_in)
    layer = lora_linear(base, r, alpha)
    if any(p.requires_grad for p in base.parameters()):
        raise Wrong("原层的权重和偏置应冻结(requires_grad=False),你的还会训练:LoRA 只训练 A 和 B")
    for name, shape in [("lora_A", (r, d_in)), ("lora_B", (d_out, r))]:
        weight = getattr(getattr(layer, name, None), "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise Wrong(f"找不到 self.{name}.weight:约定 self.{name} 是一个 nn.Linear(bias=False)")
        if tuple(weight.shape) != shape:
            raise Wrong(f"{name}.weight 的形状应为 {shape}(in_features={d_in}、out_features={d_out}、r={r}),"
                        f"你的是 {tuple(weight.shape)}")
        if not weight.requires_grad:
            raise Wrong(f"{name} 应可训练(requires_grad=True):LoRA 训练的正是 A 和 B")
    a, b = layer.lora_A.weight, layer.lora_B.weight
    with torch.no_grad():
        start_gap = (layer(x) - (x @ w0.T + b0)).abs().max().item()
    if b.abs().max() > 0:
        raise Wrong(f"lora_B 初始应全为 0(A 随机):训练开始时 B·A = 0,输出与原层完全相同;你的 B 最大绝对值 "
                    f"{b.abs().max().item():.3g},输出与原层相差 {start_gap:.3g}")
    if a.abs().max() == 0:
        raise Wrong("lora_A 不应全为 0:A 和 B 都是 0 时两者的梯度都为 0,LoRA 永远学不动;A 用随机初始化")
    if start_gap > 1e-6:
        raise Wrong(f"B = 0 时输出应与原层完全相同,你的相差 {start_gap:.3g}:forward = 原层输出 + 缩放 × 旁路输出")

    from peft import LoraConfig, inject_adapter_in_model  # imported late: an unfinished stub fails fast

    torch.manual_seed(1)  # trained-looking A and B, the same in peft's layer
    with torch.no_grad():
        a.copy_(torch.randn(r, d_in) * 0.1)
        b.copy_(torch.randn(d_out, r) * 0.1)
    peft_model = inject_adapter_in_model(LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"]),
                                         nn.ModuleDict({"proj": nn.Linear(d_in, d_out)}))
    peft_layer = peft_model["proj"]
    with torch.no_grad():
        peft_layer.base_layer.weight.copy_(w0)
        peft_layer.base_layer.bias.copy_(b0)
        peft_layer.lora_A["default"].weight.copy_(a)
        peft_layer.lora_B["default"].weight.copy_(b)
        expected = peft_layer(x)
    out = layer(x)
    gap = (out.detach() - expected).abs().max().item()
    if gap > 1e-5:
        s = effective_scaling(out.detach() - (x @ w0.T + b0), x @ a.detach().T @ b.detach().T)
        raise Wrong(f"A、B 取相同的值时,你的输出与 peft 的 LoRA 层相差 {gap:.3g}:{scaling_hint(s, r, alpha)}")
    out.sum().backward()
    if a.grad is None or b.grad is None or b.grad.abs().max() == 0:
        raise Wrong("lora_A / lora_B 没有得到梯度:旁路要用 self.lora_A、self.lora_B 参与 forward 的计算图(不要用 .data 或 detach)")

    with torch.no_grad():
        peft_layer.merge()
        layer.merge()
        merged_expected = peft_layer.base_layer.weight
        merged_gap = (base.weight - merged_expected).abs().max().item()
        if merged_gap > 1e-5:
            s = effective_scaling(base.weight - w0, b @ a)
            raise Wrong(f"你合并后的权重与 W + (α/r)·B·A 相差 {merged_gap:.3g}:检查缩放。{scaling_hint(s, r, alpha)}")
        after = layer(x)
    after_gap = (after - expected).abs().max().item()
    if after_gap > 1e-5:
        doubled = (after - expected - x @ a.detach().T @ b.detach().T * (alpha / r)).abs().max().item() < 1e-5
        raise Wrong("merge 之后 forward 又加了一次旁路(B·A 被算了两次):合并后 forward 只用已含 B·A 的原层" if doubled
                    else f"merge 之后的输出与合并前相差 {after_gap:.3g}:合并不应改变层的输出")


# ---------------------------------------------------------------- 6.4


def loss_of(result: Any) -> Any:
    """The loss inside a learner's `dpo_loss` result: the tensor itself, its `.loss`, or its first item."""
    if isinstance(result, torch.Tensor):
        return result
    if hasattr(result, "loss"):
        return result.loss
    if isinstance(result, (tuple, list)) and result:
        return result[0]
    raise Wrong(f"应返回 loss 张量(或 .loss / 第一项是 loss 的对象、元组),你返回的是 {type(result).__name__}")


def grade_dpo_loss(dpo_loss: Callable) -> None:
    """6.4: -log sigmoid(beta * (chosen log-ratio - rejected log-ratio)), averaged over pairs, with a gradient."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    n, answers = 8, []
    for beta in (0.1, 0.5):
        pc, pr = -20 - 10 * torch.rand(n), -20 - 10 * torch.rand(n)
        rc, rr = pc + torch.randn(n), pr + torch.randn(n)
        policy_chosen, policy_rejected = pc.clone().requires_grad_(), pr.clone().requires_grad_()
        loss = loss_of(dpo_loss(policy_chosen, policy_rejected, rc.clone(), rr.clone(), beta))
        answers.append((beta, pc, pr, rc, rr, loss))
    from llmtrain.dpo import dpo_loss as reference  # imports TRL: after the learner's code, so a stub fails fast

    for beta, pc, pr, rc, rr, loss in answers:
        expected = reference(pc, pr, rc, rr, beta).loss
        if not isinstance(loss, torch.Tensor):
            raise Wrong(f"loss 应是张量(能求梯度),你的是 {type(loss).__name__}:不要用 .item() 或 float()")
        logits = beta * ((pc - rc) - (pr - rr))
        candidates = {
            "没有对偏好对取平均:应返回批内平均的标量,你返回了每对一个 loss": -F.logsigmoid(logits),
            "应对偏好对取平均(mean),你的是求和": -F.logsigmoid(logits).sum(),
            "符号反了:你的 loss 在策略更偏好 rejected 时才变小。应为 -log σ(β·[(log π(y_w) − log π_ref(y_w)) − "
            "(log π(y_l) − log π_ref(y_l))])": -F.logsigmoid(-logits).mean(),
            "少了最前面的负号:loss = −log σ(…) 是正数,你的是 log σ(…),梯度下降会把它推向反方向":
                F.logsigmoid(logits).mean(),
            "少了 β:β 控制策略能离参考模型多远,要乘在对数比之差上": -F.logsigmoid(logits / beta).mean(),
            "没有减去参考模型的对数概率:DPO 比较的是策略相对参考模型的变化 log π/π_ref,不是 log π 本身":
                -F.logsigmoid(beta * (pc - pr)).mean(),
        }
        if loss.shape != expected.shape and loss.numel() != n:
            raise Wrong(f"loss 应是标量(批内平均),你的形状是 {tuple(loss.shape)}")
        if loss.shape == expected.shape and torch.allclose(loss.detach().float(), expected, rtol=1e-5, atol=1e-6):
            if not loss.requires_grad:
                raise Wrong("loss 的值对,但它不能求梯度:不要对策略的对数概率用 .item()、detach 或 numpy")
            continue
        for message, value in candidates.items():
            if loss.shape == value.shape and torch.allclose(loss.detach().float(), value, rtol=1e-5, atol=1e-6):
                raise Wrong(f"{message}(β={beta})")
        shown = f"{loss.item():.4f}" if loss.numel() == 1 else f"形状 {tuple(loss.shape)}"
        raise Wrong(f"β={beta} 时 loss 应为 {expected.item():.4f},你的是 {shown}")


def sequence_logprob_inputs() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A randomly initialised toy Qwen2 and a padded batch of two preference pairs from data/sample/dpo.jsonl."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from llmtrain.dpo import normalize_preference, pad_preference_batch, tokenize_preference
    from llmtrain.jsonl import iter_jsonl
    from llmtrain.toy import ensure_toy_assets

    tokenizer = toy_tokenizer()
    records = iter_jsonl(str(SAMPLE / "dpo.jsonl"), "preference pairs")
    pairs = [tokenize_preference(normalize_preference(next(records)[1]), tokenizer, 256) for _ in range(2)]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(ensure_toy_assets())).eval()
    return model, pad_preference_batch(pairs, tokenizer.pad_token_id)


def grade_sequence_logprobs(sequence_logprobs: Callable) -> None:
    """6.4: per row, the sum of log p(token | everything before it) over the reply tokens (labels != -100) only."""
    from llmtrain.dpo import sequence_logprobs as reference
    from llmtrain.sft_data import IGNORE_INDEX

    model, batch = sequence_logprob_inputs()
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    with torch.no_grad():
        expected = reference(model, ids, mask, labels)
        got = sequence_logprobs(model, ids.clone(), mask.clone(), labels.clone())
        if not isinstance(got, torch.Tensor):
            raise Wrong(f"应返回张量(每行一个数),你返回的是 {type(got).__name__}")
        if got.shape != expected.shape:
            raise Wrong(f"形状应为 ({len(ids)},):每行(每条回答)一个对数概率,你的是 {tuple(got.shape)}")
        if torch.allclose(got.float(), expected, rtol=1e-4, atol=1e-3):
            return
        log_probs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        unshifted = torch.gather(log_probs, 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        n_reply = (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)
        candidates = {
            "把提示(prompt)的 token 也算进去了:只有 labels != -100 的回答 token 计分,否则 chosen 与 rejected 的差里"
            "混进了同一个提示": reference(model, ids, mask, ids.masked_fill(mask == 0, IGNORE_INDEX)),
            "把提示和 padding 的 token 都算进去了:只有 labels != -100 的回答 token 计分": reference(model, ids, mask, ids),
            "没有错开一位:位置 t 的 logits 预测的是第 t+1 个 token,应用 logits[:, :-1] 去对 labels[:, 1:]":
                (unshifted * (labels != IGNORE_INDEX)).sum(dim=1),
            "应对回答的 token 求和(整条回答的对数概率),你的是平均": expected / n_reply,
        }
        for message, value in candidates.items():
            if torch.allclose(got.float(), value, rtol=1e-4, atol=1e-3):
                raise Wrong(message)
        row = int((got.float() - expected).abs().argmax())
        raise Wrong(f"第 {row} 行应为 {expected[row].item():.3f},你的是 {got[row].item():.3f}:对每个回答 token 取 "
                    "log_softmax 后目标 token 的那一项,再求和")


# ---------------------------------------------------------------- 6.5


def grade_group_advantages(group_advantages: Callable) -> None:
    """6.5: (r - mean of its group) / (sample std of its group + 1e-4); groups are G consecutive rows."""
    from llmtrain.grpo import group_advantages as reference

    group = 4
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.25, 1.0, 0.0])
    got = group_advantages(rewards.clone(), group)
    if not isinstance(got, torch.Tensor):
        raise Wrong(f"应返回张量(每条回答一个优势),你返回的是 {type(got).__name__}")
    got = got.reshape(-1).float() if got.numel() == rewards.numel() else got
    if got.shape != rewards.shape:
        raise Wrong(f"形状应为 ({len(rewards)},):每条回答一个优势,你的是 {tuple(got.shape)}")
    expected = reference(rewards, group)
    if torch.allclose(got, expected, atol=1e-4):
        return
    if torch.isnan(got).any() or torch.isinf(got).any():
        raise Wrong("第二组的 4 条回答奖励全相同,你的结果里出现了 nan/inf:标准差是 0,要在分母上加 1e-4,"
                    "这样这组的优势是 0(这组什么也学不到)")
    grouped = rewards.view(-1, group)
    candidates = {
        "把整批奖励一起标准化了:基线应是同一个问题那一组回答的均值,不同问题的难度不同,不能混在一起":
            (rewards - rewards.mean()) / (rewards.std() + 1e-4),
        "用了总体标准差(除以 G):TRL 和本课程用样本标准差(torch.std 的默认,除以 G-1)":
            ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, unbiased=False, keepdim=True) + 1e-4)).view(-1),
        "分组方式错了:相邻的 group_size 条是同一个问题的回答(rewards.view(-1, group_size)),"
        "你把每隔 n/G 条的回答当成了一组": reference(rewards.view(group, -1).T.reshape(-1), group).view(-1, group).T.reshape(-1),
        "只减了组内均值,没有除以组内标准差(那是 Dr. GRPO 的做法;本练习按 GRPO 原文除以 std + 1e-4)":
            (grouped - grouped.mean(1, keepdim=True)).view(-1),
    }
    for message, value in candidates.items():
        if torch.allclose(got, value.float(), atol=1e-4):
            raise Wrong(message)
    row = int((got - expected).abs().argmax())
    raise Wrong(f"第 {row} 条回答的优势应为 {expected[row].item():.4f},你的是 {got[row].item():.4f}:"
                "减去同组(相邻 group_size 条)奖励的均值,再除以同组的样本标准差 + 1e-4")


def grade_k3_kl(k3_kl: Callable) -> None:
    """6.5: exp(ref - logp) - (ref - logp) - 1 per token, differentiable in logps."""
    from llmtrain.grpo import k3_kl as reference

    torch.manual_seed(0)
    logps = -3 * torch.rand(3, 5)
    ref = logps + 0.5 * torch.randn(3, 5)
    ref[0, :2] = logps[0, :2]  # where the two agree, KL is 0
    policy = logps.clone().requires_grad_()
    got = k3_kl(policy, ref.clone())
    if not isinstance(got, torch.Tensor):
        raise Wrong(f"应返回张量(每个 token 一个值),你返回的是 {type(got).__name__}")
    if got.shape != logps.shape:
        raise Wrong(f"形状应与输入相同 {tuple(logps.shape)}(逐 token 的估计,先不要求平均),你的是 {tuple(got.shape)}")
    expected = reference(logps, ref)
    if torch.allclose(got.detach().float(), expected, atol=1e-5):
        if not got.requires_grad:
            raise Wrong("值对了,但它不能对 logps 求梯度:KL 惩罚要进损失,不要用 .item()、detach 或 numpy")
        return
    candidates = {
        "方向反了:你算的是 exp(logp − ref) − (logp − ref) − 1,它估计的是 KL(π_ref ‖ π);"
        "采样来自 π,要估计 KL(π ‖ π_ref),指数里是 ref − logp": reference(ref, logps),
        "这是 k1 = log π − log π_ref:它的期望也是 KL,但单个 token 上可以是负数,方差也大;k3 处处不为负":
            logps - ref,
        "少了最后的 −1:两个对数概率相等时 k3 应为 0,你的是 1": expected + 1,
    }
    for message, value in candidates.items():
        if torch.allclose(got.detach().float(), value, atol=1e-5):
            raise Wrong(message)
    raise Wrong(f"第一个 token 应为 {expected[0, 2].item():.5f},你的是 {got[0, 2].item():.5f}:"
                "k3 = exp(ref − logp) − (ref − logp) − 1")
