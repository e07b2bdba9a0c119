"""Graders of notebook 6.1: documents to blocks, resuming from a checkpoint, the logits term of the memory model."""

from __future__ import annotations

import copy
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

from exercises.graders.common import (Wrong, as_int_rows, first_difference, human_bytes, sample_documents,
                                      tokenizer_adding_bos, tokenizer_with_own_pad, toy_tokenizer)


# ---------------------------------------------------------------- tokenize_with_eos


def grade_tokenize_with_eos(tokenize_with_eos: Callable) -> None:
    """6.1.3: every document's tokens (no special tokens added) followed by the tokenizer's EOS; checked on the toy
    tokenizer, on one whose pad differs from its EOS, and on one that adds a BOS by default."""
    from llmtrain.pretrain_data import tokenize_with_eos as reference

    texts = list(sample_documents()[:4])
    for tokenizer, which in [(toy_tokenizer(), "玩具分词器"), (tokenizer_with_own_pad(), "pad 与 eos 不同的分词器"),
                             (tokenizer_adding_bos(), "默认在开头加 BOS 的分词器")]:
        expected = reference(texts, tokenizer)["input_ids"]
        got = tokenize_with_eos(list(texts), tokenizer)
        if not isinstance(got, dict) or "input_ids" not in got:
            raise Wrong("tokenize_with_eos.not_a_dict", f'应返回 {{"input_ids": [...]}},你返回的是 {type(got).__name__}')
        rows = as_int_rows(got["input_ids"], '返回值的 "input_ids"')
        if len(rows) != len(texts):
            raise Wrong("tokenize_with_eos.row_count", f"输入 {len(texts)} 篇文档,应返回 {len(texts)} 个 token 列表"
                        f"(每篇一个),你返回了 {len(rows)} 个")
        eos, pad, bos = tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id
        for i, (row, want) in enumerate(zip(rows, expected)):
            if row == want:
                continue
            if row == want[:-1]:
                raise Wrong("tokenize_with_eos.missing_eos",
                            f"文档 {i} 的末尾少了 EOS({tokenizer.eos_token},id {eos}):不加 EOS,文档拼接成训练块后,"
                            "模型看不出一篇文档在哪里结束、下一篇从哪里开始(这正是教材代码的缺陷)")
            if row == [eos] + want[:-1]:
                raise Wrong("tokenize_with_eos.eos_at_start",
                            f"文档 {i} 的 EOS 应加在末尾(表示\"这篇结束了\"),你加在了开头")
            if pad != eos and row == want[:-1] + [pad]:
                raise Wrong("tokenize_with_eos.pad_for_eos",
                            f"{which}上,文档 {i} 末尾你加的是 pad_token_id({pad},{tokenizer.pad_token}),"
                            f"不是 eos_token_id({eos},{tokenizer.eos_token})。玩具分词器的 pad 恰好就是 eos,"
                            "所以在它上面看不出区别;Qwen2.5-Instruct 这类分词器两者不同,模型就学不到文档的结尾")
            if bos is not None and row[:1] == [bos] and row[1:] == want:
                raise Wrong("tokenize_with_eos.added_special_tokens",
                            f"{which}上,文档 {i} 开头多了 BOS({tokenizer.bos_token}):tokenizer(text) 默认会加上"
                            "分词器自己的特殊 token(Llama 类分词器加 BOS),要用 add_special_tokens=False,"
                            "只在末尾加 EOS")
            j = first_difference(row, want)
            raise Wrong("tokenize_with_eos.token_mismatch",
                        f"{which}上,文档 {i} 的 token 与 tokenizer(text, add_special_tokens=False) 的 input_ids + [EOS] "
                        f"不同:位置 {j} 你的是 {row[j] if j < len(row) else '(没有)'},应为 "
                        f"{want[j] if j < len(want) else '(没有)'}(你的长度 {len(row)},应为 {len(want)})")


# ---------------------------------------------------------------- group_texts


def full_blocks(documents: list[list[int]], block_size: int) -> list[list[int]]:
    """The documents concatenated in order and cut into full blocks (what the grader simulates mistakes with)."""
    ids = list(chain.from_iterable(documents))
    return [ids[i : i + block_size] for i in range(0, len(ids) // block_size * block_size, block_size)]


def grade_group_texts(group_texts: Callable) -> None:
    """6.1.3: documents concatenated (their EOS kept) and cut into full blocks; labels = input_ids."""
    from llmtrain.pretrain_data import group_texts as reference
    from llmtrain.pretrain_data import tokenize_with_eos

    tokenizer = toy_tokenizer()
    examples = tokenize_with_eos(list(sample_documents()[:6]), tokenizer)
    first = {"input_ids": [examples["input_ids"][0][:5]]}
    for case, block_size in [(examples, 16), (examples, 64), (first, 16), (first, 5)]:
        docs = case["input_ids"]
        expected = reference(copy.deepcopy(case), block_size)["input_ids"]
        got = group_texts(copy.deepcopy(case), block_size)
        n_tokens = sum(len(ids) for ids in docs)
        where = f"(block_size={block_size},{len(docs)} 篇文档共 {n_tokens} 个 token)"
        if not isinstance(got, dict) or "input_ids" not in got or "labels" not in got:
            keys = sorted(got) if isinstance(got, dict) else type(got).__name__
            raise Wrong("group_texts.not_a_dict", f'应返回含 "input_ids" 和 "labels" 两个键的 dict,你返回的是 {keys}')
        blocks = as_int_rows(got["input_ids"], '"input_ids"')
        labels = as_int_rows(got["labels"], '"labels"')
        if blocks == expected and labels == expected:
            continue
        if blocks == expected:
            if labels == [b[1:] + [-100] for b in blocks] or labels == [b[1:] for b in blocks]:
                raise Wrong("group_texts.labels_shifted",
                            "labels 应与 input_ids 完全相同,你的 labels 向左错开了一位:错开一位由模型计算 loss 时"
                            "自己完成,预处理时再移一次,模型就学成了预测后面第二个 token")
            raise Wrong("group_texts.labels_differ",
                        f"labels 应与 input_ids 完全相同(因果语言模型的标签就是输入本身){where}")
        remainder = list(chain.from_iterable(docs))[len(expected) * block_size :]
        if blocks == expected + [remainder] and remainder:
            raise Wrong("group_texts.remainder_kept",
                        f"最后一块只有 {len(remainder)} 个 token{where}:只保留完整的块,拼接后不足 block_size 的余数要丢掉"
                        "(一个 batch 里的块要一样长;余数也可能短到只剩几个 token)")
        if blocks == [d[i : i + block_size] for d in docs for i in range(0, len(d), block_size)] or \
                blocks == [d[i : i + block_size] for d in docs for i in range(0, len(d) - block_size + 1, block_size)]:
            raise Wrong("group_texts.per_document",
                        f"你把每篇文档单独切块{where}:先把所有文档拼成一条再切,否则短文档成了短块(或被整篇丢掉),"
                        "块里也看不到一篇文档结束、下一篇开始的 EOS")
        if blocks == full_blocks([d[:-1] for d in docs], block_size):
            raise Wrong("group_texts.eos_dropped",
                        f"你的块里没有文档末尾的 EOS({tokenizer.eos_token}){where}:EOS 要原样留在拼接结果里,"
                        "模型才知道一篇文档在哪里结束")
        lengths = sorted({len(b) for b in blocks})
        raise Wrong("group_texts.blocks_differ",
                    f"应切出 {len(expected)} 块、每块 {block_size} 个 token{where};你切出 {len(blocks)} 块,"
                    f"块长 {lengths}。规则:按原顺序首尾相接,再每 block_size 个切一块,余数丢掉")


# ---------------------------------------------------------------- find_resume_checkpoint


@dataclass(frozen=True)
class ResumeCase:
    """One output folder and what `find_resume_checkpoint` must make of it.

    `folders` maps a folder inside output_dir to True (a complete checkpoint: it holds trainer_state.json), False
    (an incomplete one) or None (not a checkpoint); `files` are plain files; `expected` is the checkpoint name to
    resume from, None, or "error".
    """

    key: str
    folders: dict[str, bool | None]
    expected: str | None
    why: str
    files: tuple[str, ...] = ()
    make_output_dir: bool = True
    overwrite: bool = False
    user_checkpoint: str | None = None


RESUME_CASES = [
    ResumeCase("find_resume_checkpoint.no_output_dir", {}, None, make_output_dir=False,
               why="output_dir 还不存在(第一次训练)时应返回 None:从头开始训练"),
    ResumeCase("find_resume_checkpoint.empty_output_dir", {}, None,
               why="output_dir 存在但是空的时应返回 None:从头开始训练"),
    ResumeCase("find_resume_checkpoint.numeric_order", {"checkpoint-9": True, "checkpoint-10": True}, "checkpoint-10",
               why="最新的是步数最大的那个:按步数(整数)比较,不是按名字的字符串排序(字符串里 'checkpoint-9' > "
                   "'checkpoint-10')"),
    ResumeCase("find_resume_checkpoint.incomplete", {"checkpoint-10": True, "checkpoint-15": False}, "checkpoint-10",
               why="checkpoint-15 里没有 trainer_state.json:Trainer 保存到一半时进程被杀了,它最后才写这个文件。"
                   "只从完整的 checkpoint 续训(transformers 的 get_last_checkpoint 不检查这一点)"),
    ResumeCase("find_resume_checkpoint.not_a_checkpoint", {"checkpoint-10": True, "checkpoint-final": True,
                                                           "checkpoint-30-tmp": True},
               "checkpoint-10", files=("checkpoint-20",),
               why="只认名字正好是 checkpoint-<步数> 的目录:checkpoint-20 是个文件,checkpoint-final、"
                   "checkpoint-30-tmp 不是 Trainer 起的名字"),
    ResumeCase("find_resume_checkpoint.nonempty_without_checkpoint", {"runs": None}, "error", files=("notes.txt",),
               why="output_dir 不是空的、却没有 checkpoint:直接训练会把结果写进别人的目录,应报错"
                   "(并提示 --overwrite_output_dir 或换一个 --output_dir)"),
    ResumeCase("find_resume_checkpoint.only_incomplete", {"checkpoint-5": False}, "error",
               why="唯一的 checkpoint-5 不完整(没有 trainer_state.json),没有可以续训的 checkpoint,目录又不是空的:应报错"),
    ResumeCase("find_resume_checkpoint.overwrite", {"checkpoint-10": True}, None, overwrite=True,
               why="overwrite_output_dir=True 表示从头重新训练:不续训,返回 None(也不报错)"),
    ResumeCase("find_resume_checkpoint.overwrite", {"runs": None}, None, files=("notes.txt",), overwrite=True,
               why="overwrite_output_dir=True 表示就要训练进这个非空目录:返回 None,不报错"),
    ResumeCase("find_resume_checkpoint.user_checkpoint", {"checkpoint-10": True, "checkpoint-20": True, "old": True},
               "old", user_checkpoint="old",
               why="用户用 --resume_from_checkpoint 指定了一个完整的 checkpoint,就从它续训,即使目录里有更新的"),
    ResumeCase("find_resume_checkpoint.user_checkpoint_incomplete", {"checkpoint-10": True, "half": False}, "error",
               user_checkpoint="half",
               why="用户指定的 checkpoint 不完整(没有 trainer_state.json):应报错,说明它不能用来续训"),
]


def build_output_dir(root: Path, case: ResumeCase) -> Path:
    """An output_dir laid out as `case` describes, under `root`."""
    out = root / "output"
    if case.make_output_dir:
        out.mkdir()
    for name, complete in case.folders.items():
        (out / name).mkdir(parents=True)
        if complete is not None:
            (out / name / "model.safetensors").write_bytes(b"")
        if complete:
            (out / name / "trainer_state.json").write_text("{}", encoding="utf-8")
    for name in case.files:
        (out / name).write_text("", encoding="utf-8")
    return out


def describe_outcome(outcome: str | None | BaseException, out: Path) -> str:
    """What the learner's function did, in words."""
    if isinstance(outcome, BaseException):
        return f"你的函数抛出了 {type(outcome).__name__}"
    if outcome is None:
        return "你的返回值是 None"
    return f"你返回了 {os.path.relpath(outcome, out.parent) if os.path.isabs(outcome) else outcome}"


def same_path(got: object, want: Path) -> bool:
    """Whether the learner's returned path (str or Path, relative or absolute) names `want`."""
    try:
        return Path(os.fspath(got)).resolve() == want.resolve()
    except TypeError:
        return False


def grade_find_resume_checkpoint(find_resume_checkpoint: Callable) -> None:
    """6.1.5: the newest complete checkpoint-N folder, None to start fresh, an error where training would clobber a
    folder; the user's --resume_from_checkpoint first. Checked against llmtrain on temporary folders."""
    from transformers import TrainingArguments

    from llmtrain.checkpoints import find_resume_checkpoint as reference

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=os.path.join(tmp, "unused"), report_to=[])
        for n, case in enumerate(RESUME_CASES):
            root = Path(tmp) / str(n)
            root.mkdir()
            out = build_output_dir(root, case)
            args.output_dir = str(out)
            args.resume_from_checkpoint = str(out / case.user_checkpoint) if case.user_checkpoint else None
            try:
                want: str | None = reference(args, case.overwrite)
            except Exception:  # llmtrain raises LlmtrainError where training must not start
                want = "error"
            want_name = None if want in (None, "error") else os.path.basename(want)
            if want_name != case.expected and want != case.expected:
                raise RuntimeError(f"课程内部错误:llmtrain 对 {case.key} 给出 {want},应为 {case.expected}")
            try:
                got: str | None | BaseException = find_resume_checkpoint(args, case.overwrite)
            except NotImplementedError:
                raise
            except Exception as error:  # an error is the right answer in some cases
                got = error
            if case.expected == "error":
                ok = isinstance(got, BaseException)
            elif case.expected is None:
                ok = got is None
            else:
                ok = not isinstance(got, BaseException) and got is not None and same_path(got, out / case.expected)
            if not ok:
                entries = [f"{k}/{'(不完整)' if v is False else ''}" for k, v in case.folders.items()] + list(case.files)
                layout = (f"output_dir 里有:{', '.join(entries)}" if entries
                          else "output_dir 是空目录" if case.make_output_dir else "output_dir 不存在")
                want_text = {"error": "应报错", None: "应返回 None"}.get(case.expected, f"应返回 {case.expected}")
                raise Wrong(case.key, layout
                            + (",overwrite_output_dir=True" if case.overwrite else "")
                            + (f",--resume_from_checkpoint {case.user_checkpoint}" if case.user_checkpoint else "")
                            + f"。{want_text},{describe_outcome(got, out)}。{case.why}")


# ---------------------------------------------------------------- logits_bytes


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
            raise Wrong("logits_bytes.not_a_number", f"应返回字节数(一个数),你返回的是 {type(got).__name__}")
        if math.isclose(got, expected, rel_tol=1e-9):
            continue
        case = (f"{name}(vocab_size={vocab}),每卡 batch {batch} × block {block} = {tokens} 个 token,{dtype}:"
                f"你的 {got:,.0f} 字节({human_bytes(got)}),应为 {expected:,} 字节({human_bytes(expected)})。")
        per_logit = got / (tokens * vocab)
        if math.isclose(per_logit, WORKING_BYTES[dtype]) and dtype != "fp32":
            raise Wrong("logits_bytes.working_dtype",
                        case + f"你只算了 {dtype} 的 logits 本身(每个 {WORKING_BYTES[dtype]} 字节):transformers 的 loss "
                        "先把 logits 升到 fp32,反向开始时 log_softmax 的输出、它的梯度和 logits 的梯度同时存在,都是 fp32")
        if math.isclose(per_logit, 4):
            raise Wrong("logits_bytes.one_fp32_copy",
                        case + "你只算了一份 fp32 的 logits(每个 4 字节):反向开始时同时存在的 fp32 缓冲不止一份"
                        "(log_softmax 的输出、它的梯度、logits 的梯度)")
        if math.isclose(got, expected / vocab * config.hidden_size):
            raise Wrong("logits_bytes.hidden_size",
                        case + "每个 token 的 logits 有 vocab_size 个(词表里每个词一个分数),不是 hidden_size 个")
        raise Wrong("logits_bytes.other", case + f"是正确值的 {got / expected:.3g} 倍。数一数:每个 token 有几个 logit,"
                    "反向开始时每个 logit 有几份缓冲、每份几字节(与训练精度无关,loss 一律在 fp32 里算)")
