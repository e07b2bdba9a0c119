# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 6.2 有监督微调(SFT):只在回答上计算损失
#
# 上一节得到的预训练模型只会"接着往下写"。要让它按照用户的要求作答,需要用成对的"指令—回答"数据继续训练,
# 这就是有监督微调(Supervised Fine-Tuning,SFT)。本节跟着教材 6.2.1–6.2.2,
# 在玩具预训练模型上完成一次 SFT,并用数字说明教材代码里的两个问题:**忽略标签用错了**、**每条样本都补齐到 2048**。
#
# 本节用到的函数在 `code/llmtrain/sft_data.py`(数据)、`benchmark.py`(吞吐测量)、`generation.py`(对话)中。

# %% tags=["parameters"]
MAX_LEN = 512  # 单条对话的最大 token 数(教材 2048;样例对话都很短)
BATCH_SIZE = 8  # 每步的对话条数
EPOCHS = 12
LEARNING_RATE = 1e-3
BENCH_STEPS = 3  # 比较三种组 batch 方式时,每种训练几步
SEED = 42

# %%
import os
from pathlib import Path

import datasets
import pandas as pd
import torch
import transformers
from IPython.display import SVG, Image, display
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmtrain import PROJECT_ROOT as ROOT
from llmtrain.toy import ensure_toy_pretrained

DATA = ROOT / "data" / "sample" / "sft.jsonl"
OUTPUT_DIR = ROOT / "output" / "notebooks" / "6.2"
IMAGES_DIR = Path(os.environ.get("COURSE_IMAGES_DIR", ROOT / "images"))
datasets.disable_progress_bars()  # keep the notebook's output readable
transformers.utils.logging.disable_progress_bar()
torch.manual_seed(SEED)
PRETRAINED = ensure_toy_pretrained()  # output/toy/pretrain;没有时先用 code/pretrain.sh 预训练一个
tokenizer = AutoTokenizer.from_pretrained(PRETRAINED)
base_model = AutoModelForCausalLM.from_pretrained(PRETRAINED)
print("基座模型:", PRETRAINED.relative_to(ROOT), "| 词表", len(tokenizer))

# %% [markdown]
# ## 6.2.1 Pretrain 与 SFT 的区别
#
# 两者都是因果语言模型(CLM):给定前文,预测下一个 token。区别只在**哪些位置计算损失**:
#
# - 预训练:文本的每一个位置都算损失,模型学习语言本身和其中的知识;
# - SFT:输入是一段对话,只有**助手的回答**计算损失,用户的问题、系统提示只作为条件。
#   我们要模型学会"怎样回答",而不是学会"复述问题"。
#
# 实现上,不需要计算损失的位置把标签设为 **-100**:transformers 的交叉熵损失(`ignore_index=-100`)会跳过它们。
# 所以 SFT 代码和预训练相比,几乎只有数据处理这一步不同。

# %% [markdown]
# ## 6.2.2 微调数据处理
#
# 教材使用 BelleGroup 的中文指令数据,每行一个对话:`{"conversations": [{"from": "human", "value": ...}, {"from": "assistant", ...}], "id": ...}`。
# `data/sample/sft.jsonl` 是同样格式的样例(我们自己写的 291 条,由 `data/sample/build_sft_sample.py` 生成):
# 有闲聊、常识问答、多轮对话,也有一批答案可以精确核对的小任务(加减法、反义词、数字数、星期几、单词翻译),
# 几条对话以助手开头(BelleGroup 里也有这种情况,教材的做法是丢掉开头的非用户轮次)。

# %%
# NBVAL_CHECK_OUTPUT
from llmtrain.sft_data import load_sft_dataset, normalize_conversation

raw = load_sft_dataset([str(DATA)])
print(raw)
lengths = pd.Series([len(c) for c in raw["conversations"]]).value_counts().sort_index()
print("每条对话的轮数:", dict(lengths))
example = next(c for c in raw["conversations"] if len(c) == 4)
for turn in example:
    print(f"  {turn['from']:>9}: {turn['value']}")

# %% [markdown]
# ### Chat Template
#
# 对话要先按模板拼成一段文本。我们沿用 Qwen2.5 的 ChatML 模板:每一轮写成 `<|im_start|>角色\n内容<|im_end|>\n`,
# 开头加上默认的系统提示 "You are a helpful assistant."。
# 教材把角色名 `user` 改成了数据里的 `human`;我们把 `human` 映射回 Qwen 的 `user`,这样微调后的模型直接就能配合
# `apply_chat_template` 和各种 OpenAI 风格的推理框架使用(`llmtrain.sft_data.normalize_conversation` 也接受 `{"role", "content"}` 格式)。

# %%
# NBVAL_CHECK_OUTPUT
from llmtrain.sft_data import render_chatml

messages = normalize_conversation(example)
text, spans = render_chatml(messages)
print(text)
print("需要监督的字符区间:", [text[a:b] for a, b in spans])

# %% [markdown]
# ### 标签:只监督回答和它后面的 `<|im_end|>`
#
# 教材的 `preprocess` 把模板的每一段分别分词再拼接,并假设 `"\n"`、角色名会被分成固定的 token。
# 换一个分词器,这些假设就可能不成立(比如 BPE 把 `"\n"` 和后面的字合并成一个 token)。
# `llmtrain.sft_data.tokenize_conversation` 的做法更稳妥:把整段文本**一次性**分词(与 `apply_chat_template` 完全相同),
# 再用每个 token 的字符偏移判断它是否落在回答区间里。回答末尾的 `<|im_end|>` 也要监督——模型得学会"说完了就停"。

# %%
# NBVAL_CHECK_OUTPUT
from llmtrain.plotting import label_mask_svg
from llmtrain.sft_data import IGNORE_INDEX, tokenize_conversation

encoded = tokenize_conversation(example, tokenizer, max_len=MAX_LEN)
tokens = [tokenizer.decode([i]) for i in encoded["input_ids"]]
supervised = [label != IGNORE_INDEX for label in encoded["labels"]]
print(f"{len(tokens)} 个 token,其中 {sum(supervised)} 个参与损失计算:")
print("".join(f"[{t}]" if s else t for t, s in zip(tokens, supervised)).replace("\n", "↵\n"))

# %%
display(SVG(label_mask_svg(tokens, supervised, str(IMAGES_DIR / "6.2_label_mask.svg"))))

# %% [markdown]
# 绿色是参与损失的 token,灰色的标签是 -100。玩具分词器只在中文语料上训练过,所以英文的系统提示被拆成了单个字母;
# 偶尔出现的 `�` 是一个汉字被拆成的两个字节 token。
#
# 这个掩码和 transformers 自己算出来的一致吗?玩具分词器的模板在助手回答外面包了 `{% generation %}` 标记,
# `apply_chat_template(..., return_assistant_tokens_mask=True)` 会据此给出"助手 token"掩码。逐条核对全部样例:

# %%
# NBVAL_CHECK_OUTPUT
same_ids = same_mask = 0
for conv in raw["conversations"]:
    ours = tokenize_conversation(conv, tokenizer, max_len=4096)
    ref = tokenizer.apply_chat_template(normalize_conversation(conv), tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    same_ids += ours["input_ids"] == ref["input_ids"]
    same_mask += [label != IGNORE_INDEX for label in ours["labels"]] == [bool(m) for m in ref["assistant_masks"]]
print(f"{len(raw)} 条对话:token 完全一致 {same_ids} 条,监督掩码完全一致 {same_mask} 条")

# %% [markdown]
# (注意:Qwen2.5 官方的模板里**没有** `{% generation %}`,对它调用 `return_assistant_tokens_mask=True` 只会得到全 0 的掩码和一条警告,
# 所以不能直接依赖这个参数,这里只把它当作核对工具。)
#
# 整个数据集用 `llmtrain.sft_data.build_sft_dataset` 处理:逐条渲染、打标签;截断到 `MAX_LEN` 后如果一个回答 token 都不剩,
# 这条样本会被丢掉并在日志里计数;格式有问题的样本(未知角色、值不是字符串、没有助手回答……)会报错并指出是第几条、id 是什么。

# %%
# NBVAL_CHECK_OUTPUT
from llmtrain.sft_data import build_sft_dataset

train_set = build_sft_dataset(raw, tokenizer, max_len=MAX_LEN)
features = [train_set[i] for i in range(len(train_set))]
n_tokens = sum(len(f["input_ids"]) for f in features)
n_supervised = sum(label != IGNORE_INDEX for f in features for label in f["labels"])
print(train_set)
print(f"共 {n_tokens} 个 token,其中 {n_supervised} 个({n_supervised / n_tokens:.0%})是回答,参与损失计算")

# %% [markdown]
# ### 教材代码的两个问题,用数字说话
#
# **问题一:忽略标签用了 pad id。** 教材写的是 `IGNORE_TOKEN_ID = tokenizer.pad_token_id`,而 Qwen 的 pad token 是 `<|endoftext|>`。
# 交叉熵只会跳过 -100,于是所有"不该监督"的位置(系统提示、用户问题、padding)都变成了训练目标:让模型在这些位置输出 `<|endoftext|>`。
# `llmtrain.sft_data.textbook_padded` 复现了教材的样本格式,统计一下:

# %%
# NBVAL_CHECK_OUTPUT
from llmtrain.sft_data import textbook_padded

chapter = [textbook_padded(f, tokenizer.pad_token_id, 2048) for f in features]
pad_targets = sum(label == tokenizer.pad_token_id for f in chapter for label in f["labels"])
all_targets = sum(len(f["labels"]) for f in chapter)
print(f"教材格式:{all_targets:,} 个标签位置中,{pad_targets:,} 个({pad_targets / all_targets:.1%})"
      f"在教模型输出 <|endoftext|>;真正的回答 token 只有 {n_supervised:,} 个")

# %% [markdown]
# 模型会被这 99% 以上的"假目标"淹没:它学到的最省事的策略,就是到处预测 `<|endoftext|>`。
#
# **问题二:每条样本都补齐到 2048。** 样例对话平均只有几十个 token,补齐到 2048 后,绝大部分计算都花在了 padding 上。
# 两种更好的组 batch 方式(`llmtrain.sft_data.make_collator`):
#
# - **动态 padding**:每个 batch 只补齐到其中最长的样本(transformers 的 `DataCollatorForSeq2Seq`,标签用 -100 补齐);
# - **无 padding 的打包(packing)**:把一个 batch 的对话首尾相接放进同一行,`position_ids` 在每条对话开头归零,
#   模型据此让注意力只在各自的对话内部进行(transformers 的 `DataCollatorWithFlattening`)。这是训练脚本的默认方式。
#
# `llmtrain.benchmark.compare_sft_batching` 在同一个玩具模型上,用三种方式各训练几步并计时(CPU 上约半分钟):

# %%
from llmtrain.benchmark import compare_sft_batching

results = compare_sft_batching(base_model, tokenizer, features, batch_size=BATCH_SIZE, steps=BENCH_STEPS)
table = pd.DataFrame(results).T[["real_token_fraction", "tokens_per_step", "supervised_tokens_per_s"]]
table["speed-up"] = table["supervised_tokens_per_s"] / table["supervised_tokens_per_s"].iloc[0]
table.round(2)

# %% [markdown]
# 补齐到 2048 时,真实 token 不到 5%;动态 padding 和打包都把每秒训练的回答 token 数提高了几十倍。
# 这份样例里对话长度相近,动态 padding 只浪费了约一成。打包在这里反而稍慢:CPU 上的 sdpa 注意力对打包的整行
# 用块对角掩码计算,注意力的计算量随整行长度的平方增长;GPU 上配合 flash-attention 时,打包走变长(varlen)kernel,
# 只计算每条对话内部的注意力,这部分开销就没有了。样本长度越参差(真实的 BelleGroup 数据就是这样),
# 动态 padding 浪费得越多,而打包始终没有 padding。
#
# ### 打包的一个陷阱:KV cache
#
# "注意力不跨对话"有个前提:前向计算时既没有 attention mask,也没有 KV cache 对象。而模型配置默认 `use_cache=True`,
# 训练时的前向计算也会创建一个空的 cache,于是 transformers 不再从 `position_ids` 推断对话边界,打包的对话之间就会互相"偷看"。
# 把同一条对话放在打包的 batch 里和单独计算,比较 logits:

# %%
# NBVAL_CHECK_OUTPUT
from llmtrain.sft_data import make_collator

pack = make_collator(tokenizer, packing=True)(features[:4])
starts = (pack["position_ids"][0] == 0).nonzero().flatten().tolist() + [pack["input_ids"].shape[1]]
probe = AutoModelForCausalLM.from_pretrained(PRETRAINED).train()
for use_cache in (True, False):
    probe.config.use_cache = use_cache
    with torch.no_grad():
        packed = probe(**pack).logits[0]
        diffs = [(packed[a:b] - probe(input_ids=pack["input_ids"][:, a:b]).logits[0]).abs().max().item()
                 for a, b in zip(starts, starts[1:])]
    print(f"use_cache={use_cache}: 各对话打包 vs 单独计算的最大 logits 差 = {max(diffs):.1e}")

# %% [markdown]
# 所以 `llmtrain.training.build_trainer` 在训练前把 `use_cache` 关掉(训练本来也用不到 cache),保存模型前再打开;
# `tests/test_sft_data.py` 用 Trainer 实际使用的模型和 collator 检查了这一点。
#
# ### 用 Trainer 训练
#
# 其余部分与预训练完全相同:`TrainingArguments` + `Trainer`,只是 collator 换成打包的那个。

# %%
from transformers import Trainer, TrainingArguments

model = AutoModelForCausalLM.from_pretrained(PRETRAINED)
model.config.use_cache = False  # 见上文:打包训练必须关掉
args = TrainingArguments(
    output_dir=str(OUTPUT_DIR / "trainer"),
    per_device_train_batch_size=BATCH_SIZE,
    num_train_epochs=EPOCHS,
    learning_rate=LEARNING_RATE,
    warmup_steps=10,
    logging_steps=25,
    save_strategy="no",
    report_to="none",
    use_cpu=True,
    seed=SEED,
    disable_tqdm=True,
)
trainer = Trainer(model=model, args=args, train_dataset=train_set, processing_class=tokenizer,
                  data_collator=make_collator(tokenizer, packing=True))
result = trainer.train()
model.config.use_cache = True
print(f"{result.global_step} 步,用时 {result.metrics['train_runtime']:.1f} 秒")

# %%
from llmtrain.plotting import plot_loss

losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
print(f"第一次记录的 loss {losses[0]:.2f},最后一次 {losses[-1]:.2f}(只在回答 token 上计算)")
display(Image(plot_loss(trainer.state.log_history, str(IMAGES_DIR / "6.2_sft_loss.png"), "6.2 toy SFT")))

# %% [markdown]
# ### 和微调后的模型聊几句
#
# `llmtrain.generation.chat` 用分词器的模板渲染问题(`add_generation_prompt=True` 会在末尾加上 `<|im_start|>assistant\n`),
# 贪心解码,生成到 `<|im_end|>` 为止。对比一下微调前的基座模型:

# %%
from llmtrain.generation import chat

questions = ["3加5等于几?", "“快”的反义词是什么?", "星期三的后一天是星期几?", "“月亮”用英语怎么说?", "你好"]
for q in questions:
    print(f"问: {q}\n  SFT 之前: {chat(base_model, tokenizer, q, max_new_tokens=24)!r}\n"
          f"  SFT 之后: {chat(model, tokenizer, q, max_new_tokens=24)!r}")

# %% [markdown]
# 基座模型只会接着写一串字,停不下来;SFT 之后,模型学会了回答的格式(复述问题里的关键词、用句号结尾)并且会在 `<|im_end|>` 处停下。
# 一百万参数、几百条数据,答案本身常常是错的——格式比知识容易学得多,这也是 6.3 节末尾提醒的:微调擅长教"怎么说",不擅长注入新知识。
#
# ### 用脚本和 DeepSpeed 运行
#
# `code/finetune.py` 是教材 SFT 脚本的现代化版本,参数、日志、断点续训、报错方式都和 `pretrain.py` 一致,另外:
# 默认打包(`--packing false` 改为动态 padding)、`--max_train_samples` 取代教材写死的前 10,000 条、
# 数据经 `datasets` 内存映射加载(350 万行的 BelleGroup 文件也不会整个读进 Python 列表)。
#
# ```bash
# PRESET=toy bash code/finetune.sh     # 玩具:从 output/toy/pretrain 出发,2 个 CPU 进程,约 1 分钟
# bash code/finetune.sh                # 教材设置:Qwen2.5-1.5B + BelleGroup,3 个 epoch,bf16,ZeRO-2
# python code/chat.py --model output/toy/sft "3加5等于几?"
# ```
#
# | 教材的写法 | 本课程 |
# | --- | --- |
# | `IGNORE_TOKEN_ID = pad_token_id` | -100,交叉熵真正跳过的值 |
# | 每条样本补齐到 2048 | 无 padding 打包(默认)或按 batch 动态 padding |
# | 分段分词并假设 `"\n"` 的切分方式 | 整段分词 + 字符偏移定位回答,与 `apply_chat_template` 逐条一致 |
# | `readlines()[:10000]` 读进列表 | `datasets` 内存映射 + `--max_train_samples` |
# | 截断后可能没有任何监督 token | 丢弃并计数 |
