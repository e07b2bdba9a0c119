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
# 这就是有监督微调(Supervised Fine-Tuning,SFT)。本节跟着教材 6.2.1–6.2.2,从 6.1 训练出的玩具基座出发做一次全量 SFT,
# 用数字说明教材代码里的两个问题(**忽略标签用错了**、**每条样本都补齐到 2048**),最后用成绩单检查 SFT 到底教会了模型什么。
#
# 本节用到的函数在 `code/llmtrain/sft_data.py`(数据)、`training.py`(Trainer)、`evaluation.py`(成绩单)、
# `benchmark.py`(吞吐测量)中。

# %% tags=["parameters"]
from llmtrain.toy import toy_preset

PRESET = toy_preset()  # code/presets/toy.env:PRESET=toy bash code/finetune.sh 用的同一组取值
MAX_LEN = PRESET["TOY_SFT_MAX_LEN"]  # 单条对话的最大 token 数(教材 2048;样例对话都很短)
BATCH_SIZE = PRESET["TOY_SFT_BATCH_SIZE"] * PRESET["TOY_NUM_PROCESSES"]  # 每步的对话条数 = 脚本两个进程合起来的 batch
EPOCHS = PRESET["TOY_SFT_EPOCHS"]
LEARNING_RATE = PRESET["TOY_SFT_LR"]
WARMUP_STEPS = PRESET["TOY_SFT_WARMUP_STEPS"]
PAD_ID_STEPS = 30  # 用教材的 pad id 标签训练几步
BENCH_STEPS = 3  # 比较三种组 batch 方式时,每种训练几步
SEED = 42

# %%
import inspect

import datasets
import pandas as pd
import torch
from IPython.display import SVG, Image, Markdown, display
from transformers import AutoModelForCausalLM, AutoTokenizer, default_data_collator
from transformers.trainer_callback import PrinterCallback


from llmtrain import PROJECT_ROOT as ROOT
from llmtrain.notebook import setup_notebook, toy_training_args
from llmtrain.toy import ensure_toy_pretrained
from llmtrain.training import build_trainer, train_and_save

IMAGES_DIR = setup_notebook(SEED)  # 随机种子、关掉进度条和警告;图存在 output/figures(make notebooks 时是 images/)
SAMPLE = ROOT / "data" / "sample"
DATA = SAMPLE / "sft.jsonl"
OUTPUT_DIR = ROOT / "output" / "notebooks" / "6.2"
SCORECARD = ROOT / "output" / "notebooks" / "scorecard.json"
PRETRAINED = ensure_toy_pretrained()  # output/toy/pretrain:6.1 / make run 用同一配方训练的基座;没有时先训练一个(约 2 分钟)
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
# `data/sample/sft.jsonl` 是同样格式的样例,由 `data/sample/build_samples.py` 生成,属于课程的"玩具世界":
# 40 个虚构人物,各有家乡、职业和最喜欢的水果,预训练语料用五种说法写过每一条事实。SFT 数据里有:
#
# - **关于其中 20 个人("seen")的事实问答**,例如"周思桐的职业是什么?";另外 20 个人的事实只出现在预训练语料里,
#   成绩单用它们检验 SFT 能否把预训练学到的知识"调出来";
# - **日常对话和小任务**(闲聊、加减法、反义词、星期几、单词翻译,以及几条多轮对话),有几条以助手开头
#   (BelleGroup 里也有这种情况,教材的做法是丢掉开头的非用户轮次);
# - **关于其他名字的对话**:打招呼("你好,我叫白妍江。")和"阅读理解"式的问题,答案就写在问题里
#   ("西瓜是郝丹最喜欢的水果。请问,郝丹最喜欢的水果是什么?")。如果 SFT 数据里出现的人名只有那 20 个,
#   模型很容易学成"不管问谁,都用这 20 个名字之一作答";这些对话让它学到"回答里的名字要照抄问题里的名字"。

# %%
# NBVAL_CHECK_OUTPUT
from llmtrain.evaluation import load_eval_questions
from llmtrain.sft_data import load_sft_dataset, normalize_conversation

raw = load_sft_dataset([str(DATA)])
seen_questions = {q.question for q in load_eval_questions(str(SAMPLE / "eval.jsonl")) if q.split == "sft_seen"}


def kind(conv):
    first = conv[0]["value"] if conv[0]["from"] == "human" else conv[1]["value"]
    if first in seen_questions:
        return "seen 人物的事实问答"
    if first.startswith("你好,我叫") or "请问," in first:
        return "其他名字:打招呼 / 答案在问题里"
    return "日常对话和小任务"


kinds = pd.Series([kind(c) for c in raw["conversations"]])
print(raw)
print(kinds.value_counts().to_string())
for name in kinds.unique():
    conv = raw["conversations"][kinds[kinds == name].index[0]]
    print(f"\n[{name}]")
    for turn in conv:
        print(f"  {turn['from']:>9}: {turn['value']}")
example = next(c for c in raw["conversations"] if len(c) == 4)  # 一条多轮对话,下面用它演示模板和标签

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
from llmtrain.sft_data import IGNORE_INDEX, tokenize_conversation

print(inspect.getsource(tokenize_conversation))

# %%
# NBVAL_CHECK_OUTPUT
from llmtrain.plotting import label_mask_svg

encoded = tokenize_conversation(example, tokenizer, max_len=MAX_LEN)
tokens = [tokenizer.decode([i]) for i in encoded["input_ids"]]
supervised = [label != IGNORE_INDEX for label in encoded["labels"]]
print(f"{len(tokens)} 个 token,其中 {sum(supervised)} 个参与损失计算:")
print("".join(f"[{t}]" if s else t for t, s in zip(tokens, supervised)).replace("\n", "↵\n"))

# %%
display(SVG(label_mask_svg(tokens, supervised, str(IMAGES_DIR / "6.2_label_mask.svg"))))

# %% [markdown]
# 绿色是参与损失的 token,灰色的标签是 -100。玩具分词器只在样例数据上训练过,英文的系统提示被拆成了单个字母;
# 每个汉字都是一个完整的 token(分词器不会把汉字拆成字节碎片)。
#
# 这个掩码和 transformers 自己算出来的一致吗?玩具分词器的模板在助手回答外面包了 `{% generation %}` 标记,
# `apply_chat_template(..., return_assistant_tokens_mask=True)` 会据此给出"助手 token"掩码。
# `llmtrain.sft_data.chat_template_agreement` 逐条核对全部样例(`tests/test_sft_data.py` 调用的是同一个函数):

# %%
# NBVAL_CHECK_OUTPUT
from llmtrain.sft_data import chat_template_agreement

agreement = pd.DataFrame(chat_template_agreement(raw["conversations"], tokenizer))
print(f"{len(raw)} 条对话:token 完全一致 {agreement['same_ids'].sum()} 条,"
      f"监督掩码完全一致 {agreement['same_mask'].sum()} 条,模板掩码非空 {agreement['mask_nonempty'].sum()} 条")

# %% [markdown]
# (注意:Qwen2.5 官方的模板里**没有** `{% generation %}`,对它调用 `return_assistant_tokens_mask=True` 只会得到全 0 的掩码和一条警告,
# 所以不能直接依赖这个参数,这里只把它当作核对工具,并且检查掩码非空。)
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
print(f"共 {n_tokens} 个 token,其中 {n_supervised} 个({n_supervised / n_tokens:.0%})是回答,参与损失计算;"
      f"最长的对话 {max(len(f['input_ids']) for f in features)} 个 token")

# %% [markdown]
# ### 教材代码的两个问题,用数字说话
#
# **问题一:忽略标签用了 pad id。** 教材写的是 `IGNORE_TOKEN_ID = tokenizer.pad_token_id`,而 Qwen 的 pad token 是 `<|endoftext|>`。
# 交叉熵只会跳过 -100,于是所有"不该监督"的位置(系统提示、用户问题、padding)都变成了训练目标:让模型在这些位置输出 `<|endoftext|>`。
# `llmtrain.sft_data.textbook_padded` 复现了教材的样本格式,统计一下:

# %%
# NBVAL_CHECK_OUTPUT
from llmtrain.sft_data import pad_to_length, textbook_padded

chapter = [textbook_padded(f, tokenizer.pad_token_id, 2048) for f in features]
pad_targets = sum(label == tokenizer.pad_token_id for f in chapter for label in f["labels"])
all_targets = sum(len(f["labels"]) for f in chapter)
print(f"教材格式:{all_targets:,} 个标签位置中,{pad_targets:,} 个({pad_targets / all_targets:.1%})"
      f"在教模型输出 <|endoftext|>;真正的回答 token 只有 {n_supervised:,} 个")

# %% [markdown]
# 这样训练会怎样?在 CPU 上补齐到 2048 太慢,下面只补齐到 128(比最长的样例对话还长),其余完全按教材:
# 标签用 pad id。对照组的输入完全相同,只是标签换成 -100(`llmtrain.sft_data.pad_to_length`)。
# 两组都从基座出发,学习率和后面正式 SFT 相同,各训练 `PAD_ID_STEPS` 步,然后对几个问题贪心生成,
# 数一数生成的 token 里有多少是 `<|endoftext|>`(`llmtrain.generation.greedy_token_ids` 保留特殊 token):

# %%
from llmtrain.generation import greedy_token_ids

probe_questions = ["林晓雨的家乡是哪里?", "王志远的职业是什么?", "你好", "3加5等于几?", "“快”的反义词是什么?"]
label_runs = {}
for name, layout in [("教材:pad id 作标签", textbook_padded), ("本课程:-100", pad_to_length)]:
    model = AutoModelForCausalLM.from_pretrained(PRETRAINED)
    trainer = build_trainer(model, toy_training_args(OUTPUT_DIR / "labels", max_steps=PAD_ID_STEPS, per_device_train_batch_size=8,
                                                     learning_rate=LEARNING_RATE, warmup_steps=WARMUP_STEPS),
                            tokenizer, datasets.Dataset.from_list([layout(f, tokenizer.pad_token_id, 128) for f in features]),
                            data_collator=default_data_collator)
    trainer.remove_callback(PrinterCallback)  # 不逐条打印日志;loss 在 trainer.state.log_history 里
    trainer.train()
    model.config.use_cache = True
    replies = [greedy_token_ids(model, tokenizer, q, max_new_tokens=24) for q in probe_questions]
    label_runs[name] = {
        "最后的训练 loss": round([e["loss"] for e in trainer.state.log_history if "loss" in e][-1], 2),
        "<|endoftext|> 占生成 token": f"{sum(t == tokenizer.pad_token_id for r in replies for t in r) / sum(map(len, replies)):.0%}",
        "以 <|im_end|> 结束的回答": sum(r[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>") for r in replies),
        **{q: tokenizer.decode(r).replace("<|endoftext|>", "⟨eot⟩") for q, r in zip(probe_questions, replies)},
    }
pd.DataFrame(label_runs)

# %% [markdown]
# 在本次运行里(表中数字来自上面这个单元):用 pad id 作标签的一组,训练 loss 降到 0.36,比 -100 那组的 2.34 "好看"得多,
# 但这个 loss 大部分来自"在提示和 padding 处预测 `<|endoftext|>`"这种白送的目标;它生成的 token 有 61% 是 `<|endoftext|>`,
# 5 个回答里只有 3 个以 `<|im_end|>` 结束,"你好"的回答从第一个 token 起就全是 `<|endoftext|>`。
# -100 那组生成里没有一个 `<|endoftext|>`,5 个回答里 4 个以 `<|im_end|>` 结束(训练步数太少,内容大多还不对,下面的正式 SFT 才训练够)。
# 补齐到 2048 时 pad 目标占 99.3%,比这里的 128 还多得多。
#
# **问题二:每条样本都补齐到 2048。** 样例对话平均只有几十个 token,补齐到 2048 后,绝大部分计算都花在了 padding 上。
# 两种更好的组 batch 方式(`llmtrain.sft_data.make_collator`):
#
# - **动态 padding**:每个 batch 只补齐到其中最长的样本(transformers 的 `DataCollatorForSeq2Seq`,标签用 -100 补齐);
# - **无 padding 的打包(packing)**:把一个 batch 的对话首尾相接放进同一行,`position_ids` 在每条对话开头归零,
#   模型据此让注意力只在各自的对话内部进行(transformers 的 `DataCollatorWithFlattening`)。这是训练脚本的默认方式。
#
# `llmtrain.benchmark.compare_sft_batching` 在同一个玩具模型上,用三种方式各训练几步并计时:

# %%
from llmtrain.benchmark import compare_sft_batching

results = compare_sft_batching(base_model, tokenizer, features, batch_size=8, steps=BENCH_STEPS)
table = pd.DataFrame(results).T[["real_token_fraction", "tokens_per_step", "supervised_tokens_per_s"]]
table["speed-up"] = table["supervised_tokens_per_s"] / table["supervised_tokens_per_s"].iloc[0]
table.round(2)

# %% [markdown]
# 本次运行:补齐到 2048 时真实 token 只占 2%;动态 padding 和打包每秒训练的回答 token 都是教材做法的
# 许多倍(上表最后一列;计时受机器负载影响,每次运行差别很大)。打包没有任何 padding(真实 token 比例 1.0);样本长度越参差
# (真实的 BelleGroup 数据就是这样),动态 padding 浪费得越多。在 GPU 上配合 flash-attention 时,打包走变长(varlen)kernel,
# 只计算每条对话内部的注意力。
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
    print(f"use_cache={use_cache}: 各对话打包 vs 单独计算的最大 logits 差 {'> 1e-3' if max(diffs) > 1e-3 else '< 1e-3'}")

# %% [markdown]
# 所以 `llmtrain.training.build_trainer` 在训练前把 `use_cache` 关掉(训练本来也用不到 cache),`train_and_save` 保存模型前再打开;
# `tests/test_sft_data.py` 用 Trainer 实际使用的模型和 collator 检查了这一点。
#
# ### 用 Trainer 训练
#
# 其余部分与预训练相同:`build_trainer`(教材的 Trainer,换成 transformers 5 的写法)+ `train_and_save`(训练、保存模型和日志),
# 只是 collator 换成打包的那个。学习率、epoch 数、warmup 取自玩具预设,和 `PRESET=toy bash code/finetune.sh` 相同;
# 脚本用 2 个进程、每个进程每步 8 条对话,这里一个进程每步 `BATCH_SIZE` 条,每步看到的数据量一样。

# %%
model = AutoModelForCausalLM.from_pretrained(PRETRAINED)
args = toy_training_args(OUTPUT_DIR / "sft", per_device_train_batch_size=BATCH_SIZE, num_train_epochs=EPOCHS,
                         learning_rate=LEARNING_RATE, warmup_steps=WARMUP_STEPS, seed=SEED)
trainer = build_trainer(model, args, tokenizer, train_set, data_collator=make_collator(tokenizer, packing=True))
trainer.remove_callback(PrinterCallback)
metrics = train_and_save(trainer, checkpoint=None)  # 模型存到 output/notebooks/6.2/sft,6.3 会拿它做对照
print(f"{trainer.state.global_step} 步,用时 {metrics['train_runtime']:.1f} 秒;模型存在 {OUTPUT_DIR.relative_to(ROOT) / 'sft'}")

# %%
from llmtrain.plotting import plot_loss

losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
print(f"第一次记录的 loss {losses[0]:.2f},最后一次 {losses[-1]:.2f}(只在回答 token 上计算)")
display(Image(plot_loss(trainer.state.log_history, str(IMAGES_DIR / "6.2_sft_loss.png"), "6.2 toy SFT")))

# %% [markdown]
# ### 和微调前后的模型聊几句
#
# `llmtrain.generation.chat` 用分词器的模板渲染问题(`add_generation_prompt=True` 会在末尾加上 `<|im_start|>assistant\n`),
# 贪心解码,生成到 `<|im_end|>` 为止。前两个问题的人物是 seen(这两句问话原样出现在 SFT 数据里),
# 后两个是 held-out(人物的事实只在预训练语料里),最后两个是 SFT 数据里的闲聊和小任务:

# %%
from llmtrain.generation import chat

probes = [("林晓雨的家乡是哪里?", "SFT 数据里有"), ("周思桐最喜欢的水果是什么?", "SFT 数据里有"),
          ("王志远的家乡是哪里?", "held-out"), ("赵子轩的职业是什么?", "held-out"),
          ("你好", "SFT 数据里有"), ("3加5等于几?", "SFT 数据里有")]
for q, where in probes:
    print(f"问({where}): {q}\n  SFT 之前: {chat(base_model, tokenizer, q, max_new_tokens=24)!r}\n"
          f"  SFT 之后: {chat(model, tokenizer, q, max_new_tokens=24)!r}")

# %% [markdown]
# 本次运行里,基座模型(SFT 之前)对事实问题答的是一串和问题无关的字,但它会在 `<|im_end|>` 处停下,
# 对"你好"还能答出"你好!有什么可以帮你的吗?"——这句问候以 ChatML 格式出现在预训练语料里,基座见过对话模板。
# SFT 之后,四个人物问题都按"X的家乡是……"的格式作答;两个 held-out 人物的事实 SFT 数据里没有,答案只能来自预训练。
# 有的回答末尾多了一句"还想知道什么,尽管问我。"(这里最多生成 24 个 token,所以被截断了):SFT 数据里约四分之一的
# 人物回答这样结尾,6.4 节会用偏好数据让模型每次都这样说;问赵子轩的那条在答案后面又多说了半句,严格判分会判它错。
# "3加5等于几?"答成了"3加1等于5。":一百万参数的模型没学会加法,格式对、内容错。
# 每个回答对不对,要看下面的成绩单。
#
# ### 成绩单
#
# 几个问题说明不了多少。`llmtrain.evaluation.scorecard_row` 用 `data/sample/eval.jsonl` 的全部问题考模型:
# 40 个人每人 3 个问题,seen 的 60 个、held-out 的 60 个;贪心解码,**严格判分**(回答里恰好出现一次正确答案、
# 答案后面只有句号之类的结尾、没有出现别的候选答案才算对)。另外还有:回答是否以 `<|im_end|>` 结束、
# 留出文本的困惑度、留出对话里助手回复部分的 loss。这一行存进 `output/notebooks/scorecard.json`(6.1 写了基座那一行,6.3 会写 LoRA 那一行):

# %%
from llmtrain.evaluation import format_scorecard, save_scorecard_row, scorecard_row

row = scorecard_row(model, tokenizer, str(SAMPLE / "eval.jsonl"), [str(SAMPLE / "pretrain_valid.jsonl")],
                    [str(SAMPLE / "sft_valid.jsonl")])
card = save_scorecard_row(str(SCORECARD), "full SFT (6.2)", row)
display(Markdown(format_scorecard(card)))

# %% [markdown]
# held-out 的问题答错时,模型说了什么?`llmtrain.evaluation.wrong_person_replies` 数一数错误回答里有多少在讲**另一个人**
# (回答里出现了 eval 文件里别的人名,却没有被问到的那个):

# %%
from llmtrain.evaluation import wrong_person_replies

wrong = wrong_person_replies(row, "heldout")
print(f"held-out 答错 {wrong['wrong']} 个,其中 {wrong['other_person']} 个在讲另一个人:")
for g in wrong["examples"][:5]:
    print(f"  {g['question']}  ->  {g['reply']}  (正确答案:{g['answer']})")

# %% [markdown]
# 本次运行的成绩单(表里的 "full SFT (6.2)" 一行;其他行是别的 notebook 运行时写进去的,没运行过就没有):
# 基座在两组问题上都是 0%;全量 SFT 之后 seen 90%,held-out 58%。留出对话的助手 loss 从基座的 2.865 降到 0.416。
#
# held-out 的事实从没在 SFT 数据里以问答形式出现过,只能来自预训练:6.1 里基座只能把其中 63% 的陈述句补全对,
# 这差不多就是 SFT 能问出来的上限。答错的 25 个里有 7 个在讲另一个人(上面列出的例子),模型把问题里的人换成了
# SFT 数据里问过的人,再答那个人的事实。这两件事都对随机种子很敏感:同一份数据、同样的超参数,只换种子时,
# 基座补全 held-out 陈述句的比例在 52%–63%,全量 SFT 的 held-out 准确率在 35%–70%(`bench/seed_spread.py`,
# README 的"实测结果")。调玩具预设时还看到,
# 学习率更大或训练更久,模型就更倾向于用 SFT 里见过的名字作答(`code/presets/toy.env` 里 `TOY_SFT_LR` 的注释);
# SFT 数据里"其他名字"的对话就是为了压低这类错误,但在一百万参数的模型上压得并不彻底。
#
# ### 用脚本和 DeepSpeed 运行
#
# `code/finetune.py` 是教材 SFT 脚本的现代化版本,参数、日志、断点续训、报错方式都和 `pretrain.py` 一致,另外:
# 默认打包(`--packing false` 改为动态 padding)、`--max_train_samples` 取代教材写死的前 10,000 条、
# 数据经 `datasets` 内存映射加载(350 万行的 BelleGroup 文件也不会整个读进 Python 列表)。
#
# ```bash
# PRESET=toy bash code/finetune.sh     # 玩具:从 output/toy/pretrain 出发,2 个 CPU 进程,预设同上
# bash code/finetune.sh                # 教材设置:Qwen2.5-1.5B + BelleGroup,3 个 epoch,bf16,ZeRO-2
# python code/evaluate.py --model output/toy/sft --eval_file data/sample/eval.jsonl   # 同一张成绩单
# ```
#
# | 教材的写法 | 本课程 |
# | --- | --- |
# | `IGNORE_TOKEN_ID = pad_token_id` | -100,交叉熵真正跳过的值 |
# | 每条样本补齐到 2048 | 无 padding 打包(默认)或按 batch 动态 padding |
# | 分段分词并假设 `"\n"` 的切分方式 | 整段分词 + 字符偏移定位回答,与 `apply_chat_template` 逐条一致 |
# | `readlines()[:10000]` 读进列表 | `datasets` 内存映射 + `--max_train_samples` |
# | 截断后可能没有任何监督 token | 丢弃并计数 |
