# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 6.2 有监督微调(SFT):只在回答上计算损失
#
# 6.1 训练出的基座只会"接着往下写"。要让它按用户的要求作答,需要用"指令—回答"成对的数据继续训练,
# 这一步叫有监督微调(Supervised Fine-Tuning,SFT)。本节跟着教材 6.2.1–6.2.2:先看一条对话怎样变成模型的输入和标签,
# 用实测说明教材代码的两个问题(**忽略标签用错了**、**每条样本都补齐到 2048**),再看打包(packing)怎样把几条对话放进一行;
# 最后用 `make run` 的同一条命令、同一组超参数做一次全量 SFT,用成绩单检查它学会了什么。
#
# 用到的函数都在 `code/llmtrain/` 下:`sft_data.py`(数据与 collator)、`training.py`(Trainer)、`generation.py`(对话)、
# `evaluation.py`(成绩单)、`benchmark.py`(吞吐测量)。

# %% tags=["parameters"]
from llmtrain.toy import toy_preset

PRESET = toy_preset()  # code/presets/toy.env:PRESET=toy bash code/finetune.sh(make run 的 SFT)用的同一组取值
MAX_LEN = PRESET["TOY_SFT_BLOCK_SIZE"]  # 单条对话的最大 token 数(教材 2048;样例对话都很短)
EPOCHS = PRESET["TOY_SFT_EPOCHS"]  # 全量 SFT 的 epoch 数,传给 code/finetune.sh;改了它,模型就不再是 make run 的那一个
LEARNING_RATE = PRESET["TOY_SFT_LR"]
WARMUP_STEPS = PRESET["TOY_SFT_WARMUP_STEPS"]
PAD_ID_STEPS = 30  # 用教材的 pad id 标签训练几步
BENCH_STEPS = 3  # 比较三种组 batch 方式时,每种训练几步
SEED = 42  # notebook 里几个小实验的种子(finetune.sh 用它自己的默认种子,和 make run 相同)

# %%
import inspect
import json
import math
import time

import datasets
import pandas as pd
import torch
from IPython.display import SVG, Image, Markdown, display
from transformers import AutoModelForCausalLM, default_data_collator
from transformers.trainer_callback import PrinterCallback

from llmtrain import PROJECT_ROOT as ROOT
from llmtrain.notebook import fresh_output_dir, load_toy_base, setup_notebook, shown_path, toy_training_args
from llmtrain.toy_run import toy_run_dir
from llmtrain.training import build_trainer

IMAGES_DIR = setup_notebook(SEED)  # 随机种子、关掉进度条和已知的无关警告;图存在 output/figures(make notebooks 时是 images/)
OUTPUT_DIR = fresh_output_dir("6.2")  # output/notebooks/6.2,每次运行先清空:里面的模型和成绩单都来自这一次运行
SCORECARD = OUTPUT_DIR / "scorecard.json"
SAMPLE = ROOT / "data" / "sample"
PRETRAINED, tokenizer, base_model = load_toy_base()  # output/toy/pretrain:6.1 / make run 训练的基座
print("基座模型:", shown_path(PRETRAINED), "| 词表", len(tokenizer), "| 本节的输出:", shown_path(OUTPUT_DIR))

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

# %% tags=["nbval-check-output"]
from llmtrain.grading import load_eval_questions
from llmtrain.sft_data import load_sft_dataset, normalize_conversation

raw = load_sft_dataset([str(SAMPLE / "sft.jsonl")])
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

# %% tags=["nbval-check-output"]
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
# 这个函数是本节的练习 1,源码放在练习之后;先看它对上面那段多轮对话给出的标签(方括号里的 token 参与损失计算):

# %% tags=["nbval-check-output"]
from llmtrain.plotting import label_mask_svg
from llmtrain.sft_data import IGNORE_INDEX, tokenize_conversation

encoded = tokenize_conversation(example, tokenizer, max_len=MAX_LEN)
tokens = [tokenizer.decode([i]) for i in encoded["input_ids"]]
supervised = [label != IGNORE_INDEX for label in encoded["labels"]]
print(f"{len(tokens)} 个 token,其中 {sum(supervised)} 个参与损失计算:")
print("".join(f"[{t}]" if s else t for t, s in zip(tokens, supervised)).replace("\n", "↵\n"))
system_tokens = tokens[:tokens.index("<|im_end|>") + 1]
print(f"\n系统提示这一轮切成 {len(system_tokens)} 个 token:", " | ".join(t.replace("\n", "↵") for t in system_tokens))

# %%
display(SVG(label_mask_svg(tokens, supervised, str(IMAGES_DIR / "6.2_label_mask.svg"))))

# %% [markdown]
# 绿色是参与损失的 token,灰色的标签是 -100。玩具分词器的合并规则是从预训练语料学来的,而预训练语料里的 ChatML 对话
# 都带着这句英文系统提示,所以它被切成了整词(上面最后一行);每个汉字是一个完整的 token(分词器不会把汉字拆成字节碎片)。
#
# 这个掩码和 transformers 自己算出来的一致吗?玩具分词器的模板在助手回答外面包了 `{% generation %}` 标记,
# `apply_chat_template(..., return_assistant_tokens_mask=True)` 会据此给出"助手 token"掩码。
# `llmtrain.sft_data.chat_template_agreement` 逐条核对全部样例(`tests/test_sft_data.py` 调用的是同一个函数):

# %% tags=["nbval-check-output"]
from llmtrain.sft_data import chat_template_agreement

agreement = pd.DataFrame(chat_template_agreement(raw["conversations"], tokenizer))
print(f"{len(raw)} 条对话:token 完全一致 {agreement['same_ids'].sum()} 条,"
      f"监督掩码完全一致 {agreement['same_mask'].sum()} 条,模板掩码非空 {agreement['mask_nonempty'].sum()} 条")
template_masks = [tokenizer.apply_chat_template(normalize_conversation(c), tokenize=True, return_dict=True,
                                                return_assistant_tokens_mask=True)["assistant_masks"]
                  for c in raw["conversations"]]
print(f"比较的是 {sum(map(len, template_masks)):,} 个 token 位置,模板标为助手 token 的 {sum(map(sum, template_masks)):,} 个")
# 一个看得见的错误能不能被查出来:忘了监督回答后面的 <|im_end|>
im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
without_im_end = [[label != IGNORE_INDEX and token != im_end for token, label in zip(f["input_ids"], f["labels"])]
                  for f in (tokenize_conversation(c, tokenizer, max_len=1 << 30) for c in raw["conversations"])]
caught = sum(mask != [bool(m) for m in ref] for mask, ref in zip(without_im_end, template_masks))
print(f"对照:漏掉回答末尾的 <|im_end|> 时,{caught} 条对话的掩码与模板不一致")

# %% [markdown]
# (注意:Qwen2.5 官方的模板里**没有** `{% generation %}`,对它调用 `return_assistant_tokens_mask=True` 只会得到全 0 的掩码和一条警告,
# 所以不能直接依赖这个参数,这里只把它当作核对工具,并且检查掩码非空。)
#
# 整个数据集用 `llmtrain.sft_data.build_sft_dataset` 处理:逐条渲染、打标签;截断到 `MAX_LEN` 后如果一个回答 token 都不剩,
# 这条样本会被丢掉并在日志里计数;格式有问题的样本(未知角色、值不是字符串、没有助手回答……)会报错并指出是第几条、id 是什么。

# %% tags=["nbval-check-output"]
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
# `llmtrain.sft_data.textbook_padded` 复现了教材的样本格式(补齐到 2048,标签用 pad id),统计一下:

# %% tags=["nbval-check-output"]
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
# 数一数生成的 token 里有多少是 `<|endoftext|>`(`llmtrain.generation.greedy_token_ids` 保留特殊 token)。
# 训练用的是 6.1 讲过的 Trainer(`llmtrain.training.build_trainer`,下文会看到 `code/finetune.py` 怎样调用它):

# %%
from llmtrain.generation import greedy_token_ids

IM_END_ID = tokenizer.convert_tokens_to_ids("<|im_end|>")
probe_questions = ["林晓雨的家乡是哪里?", "王志远的职业是什么?", "你好", "3加5等于几?", "“快”的反义词是什么?"]
label_runs, label_stats = {}, {}
for name, layout in [("教材:pad id 作标签", textbook_padded), ("本课程:-100", pad_to_length)]:
    padded = [layout(f, tokenizer.pad_token_id, 128) for f in features]
    model = AutoModelForCausalLM.from_pretrained(PRETRAINED)
    args = toy_training_args(OUTPUT_DIR / "labels", max_steps=PAD_ID_STEPS, per_device_train_batch_size=8,
                             learning_rate=LEARNING_RATE, warmup_steps=WARMUP_STEPS, seed=SEED, data_seed=SEED)
    trainer = build_trainer(model, args, tokenizer, datasets.Dataset.from_list(padded), data_collator=default_data_collator)
    trainer.remove_callback(PrinterCallback)  # 不逐条打印日志;loss 在 trainer.state.log_history 里
    trainer.train()
    model.config.use_cache = True
    replies = [greedy_token_ids(model, tokenizer, q, max_new_tokens=24) for q in probe_questions]
    label_stats[name] = {
        "loss": [e["loss"] for e in trainer.state.log_history if "loss" in e][-1],
        "eot_label_share": sum(x == tokenizer.pad_token_id for f in padded for x in f["labels"]) / (128 * len(padded)),
        "eot_share": sum(t == tokenizer.pad_token_id for r in replies for t in r) / sum(map(len, replies)),
        "im_end": sum(r[-1] == IM_END_ID for r in replies),
    }
    label_runs[name] = {
        "最后的训练 loss": f"{label_stats[name]['loss']:.2f}",
        "标签里 <|endoftext|> 的比例": f"{label_stats[name]['eot_label_share']:.0%}",
        "<|endoftext|> 占生成 token": f"{label_stats[name]['eot_share']:.0%}",
        "以 <|im_end|> 结束的回答": label_stats[name]["im_end"],
        **{q: tokenizer.decode(r).replace("<|endoftext|>", "⟨eot⟩") for q, r in zip(probe_questions, replies)},
    }
pd.DataFrame(label_runs)

# %%
pad_run, ours_run = label_stats["教材:pad id 作标签"], label_stats["本课程:-100"]
display(Markdown(
    f"本次运行:pad id 作标签的一组,最后的训练 loss 是 {pad_run['loss']:.2f},"
    f"{'低于' if pad_run['loss'] < ours_run['loss'] else '不低于'} -100 那组的 {ours_run['loss']:.2f}。"
    f"两个 loss 不能直接比:前者的标签里 {pad_run['eot_label_share']:.0%} 是 `<|endoftext|>`,"
    f"在提示和 padding 处预测它是很容易学会的目标;后者只在回答上计算。"
    f"看生成结果:pad id 那组生成的 token 有 {pad_run['eot_share']:.0%} 是 `<|endoftext|>`,"
    f"{len(probe_questions)} 个回答里 {pad_run['im_end']} 个以 `<|im_end|>` 结束;"
    f"-100 那组是 {ours_run['eot_share']:.0%} 和 {ours_run['im_end']} 个"
    f"(只训练了 {PAD_ID_STEPS} 步,内容对不对要看后面正式 SFT 的成绩单)。"
    f"教材补齐到 2048 时,`<|endoftext|>` 占全部标签的 {pad_targets / all_targets:.1%},比这里补齐到 128 时更多。"))

# %% [markdown]
# **问题二:每条样本都补齐到 2048。** 样例对话只有几十到一两百个 token,补齐到 2048 后,绝大部分计算都花在了 padding 上。
# 两种更好的组 batch 方式(`llmtrain.sft_data.make_collator`):
#
# - **动态 padding**:每个 batch 只补齐到其中最长的样本(transformers 的 `DataCollatorForSeq2Seq`,标签用 -100 补齐);
# - **无 padding 的打包(packing)**:把一个 batch 的对话首尾相接放进同一行,`position_ids` 在每条对话开头归零,
#   模型据此让注意力只在各自的对话内部进行(transformers 的 `DataCollatorWithFlattening`)。这是训练脚本的默认方式。
#
# `llmtrain.benchmark.compare_sft_batching` 在同一个玩具模型上,用三种方式各训练 `BENCH_STEPS` 步并计时
# ("supervised tokens/s" 是每秒训练的回答 token 数,padding 和提示都不算):

# %%
from llmtrain.benchmark import compare_sft_batching

results = compare_sft_batching(base_model, tokenizer, features, batch_size=8, steps=BENCH_STEPS)
table = pd.DataFrame(results).T[["real_token_fraction", "tokens_per_step", "supervised_tokens_per_s"]]
table["vs textbook"] = table["supervised_tokens_per_s"] / table["supervised_tokens_per_s"].iloc[0]
display(table.round(2))
textbook_row, dynamic_row, packing_row = results.values()
speedups = {name: r["supervised_tokens_per_s"] / textbook_row["supervised_tokens_per_s"] for name, r in results.items()}
packing_vs_dynamic = packing_row["supervised_tokens_per_s"] / dynamic_row["supervised_tokens_per_s"]
display(Markdown(
    f"本次运行:补齐到 2048 时,真实 token 只占计算位置的 {textbook_row['real_token_fraction']:.1%};"
    f"动态 padding 是 {dynamic_row['real_token_fraction']:.1%},打包是 {packing_row['real_token_fraction']:.1%}(没有任何 padding)。"
    f"每秒训练的回答 token,动态 padding 是教材做法的 {speedups['dynamic padding']:.1f} 倍,"
    f"打包是 {speedups['packing (padding-free)']:.1f} 倍。打包和动态 padding 相比:"
    f"每秒 {packing_row['supervised_tokens_per_s']:,.0f} 对 {dynamic_row['supervised_tokens_per_s']:,.0f} 个回答 token,"
    f"是它的 {packing_vs_dynamic:.2f} 倍({'快' if packing_vs_dynamic > 1 else '慢'})。"
    f"每种只测了 {BENCH_STEPS} 步,计时受机器负载影响,倍数每次运行都会变。"))

# %% [markdown]
# 两种做法都不再把计算浪费在 padding 上;它们之间谁快,在 CPU 上并不确定:打包的这一行用块对角的注意力掩码计算
# (整行长度的平方),动态 padding 则是每条样本各算各的。在 GPU 上配合 flash-attention 时,打包走变长(varlen)kernel,
# 只计算每条对话内部的注意力,样本长度越参差(真实的 BelleGroup 数据就是这样),动态 padding 浪费得越多,打包的优势越大。
#
# 上面的倍数只有几步,比较粗。`bench/sft_throughput.py` 用同样的三种方式各训练更多步,结果连同日期、机器、负载和库版本
# 写进仓库里的 `bench/results/sft_throughput_cpu.json`(README 的表也来自它):

# %%
bench = json.loads((ROOT / "bench" / "results" / "sft_throughput_cpu.json").read_text(encoding="utf-8"))
print(f"{bench['date']} · {bench['machine']['cpu']} · {bench['machine']['cores']} 核 · "
      f"开始时 1 分钟负载 {bench['machine']['load_average_1_5_15_min_at_start'][0]} · "
      f"torch {bench['versions']['torch']} · transformers {bench['versions']['transformers']}")
print(f"{bench['data']['conversations']} 条对话,batch {bench['batch_size']},每种 {bench['steps']} 步")
display(pd.DataFrame(bench["rows"]).T[["real_token_fraction", "tokens_per_step", "supervised_tokens_per_s",
                                         "vs_textbook"]].round(2))
least_speedup = min([r["vs_textbook"] for name, r in bench["rows"].items() if not name.startswith("textbook")]
                    + [v for name, v in speedups.items() if not name.startswith("textbook")])
bench_packing_vs_dynamic = (bench["rows"]["packing (padding-free)"]["supervised_tokens_per_s"]
                            / bench["rows"]["dynamic padding"]["supervised_tokens_per_s"])
display(Markdown(
    f"基准里打包是动态 padding 的 {bench_packing_vs_dynamic:.2f} 倍,本次运行的 {BENCH_STEPS} 步里是 {packing_vs_dynamic:.2f} 倍:"
    + ("两次都是打包更快。" if min(bench_packing_vs_dynamic, packing_vs_dynamic) > 1 else
       "两次都是动态 padding 更快。" if max(bench_packing_vs_dynamic, packing_vs_dynamic) < 1 else
       "两次的快慢不一样,在 CPU 上这两种做法的差别比测量的波动小。")
    + f"和补齐到 2048 的教材做法相比,两次测量里两种做法都至少快 {least_speedup:.0f} 倍。"))

# %% [markdown]
# ### 打包的 batch 长什么样
#
# 把最短的 3 条对话交给训练脚本用的 collator(`make_collator(tokenizer, packing=True)`,即 `DataCollatorWithFlattening`),
# 看它返回的张量:只有一行,三条对话首尾相接;`position_ids` 在每条对话的第一个 token 处回到 0;
# 标签在提示处是 -100,在回答和它的 `<|im_end|>` 处等于 `input_ids`(模型计算损失时自己错开一位:第 i 个位置的输出去预测第 i+1 个标签)。
# 没有 `attention_mask`:对话的边界全靠 `position_ids`。每条对话第一列的 label 为什么一定是 -100(即使那里不是提示)?
# 这是练习 2 要想清楚的一点,答案放在练习之后。

# %% tags=["nbval-check-output"]
from llmtrain.sft_data import make_collator

shortest = sorted(range(len(features)), key=lambda i: (len(features[i]["input_ids"]), i))[:3]
pack = make_collator(tokenizer, packing=True)([features[i] for i in shortest])
print({key: tuple(value.shape) for key, value in pack.items()})
starts = (pack["position_ids"][0] == 0).nonzero().flatten().tolist() + [pack["input_ids"].shape[1]]
for k, (a, b) in enumerate(zip(starts, starts[1:]), 1):
    print(f"\n对话 {k}:第 {a}–{b - 1} 列")
    print(pd.DataFrame({
        "token": [tokenizer.decode([i]).replace("\n", "↵") for i in pack["input_ids"][0, a:b]],
        "input_ids": pack["input_ids"][0, a:b].tolist(),
        "position_ids": pack["position_ids"][0, a:b].tolist(),
        "labels": pack["labels"][0, a:b].tolist(),
    }).T.to_string(header=False))

# %% [markdown]
# ### 打包的一个陷阱:KV cache
#
# "注意力不跨对话"有个前提:前向计算时既没有 attention mask,也没有 KV cache 对象。而模型配置默认 `use_cache=True`,
# 训练时的前向计算也会创建一个空的 cache,于是 transformers 不再从 `position_ids` 推断对话边界,打包的对话之间就会互相"偷看"。
# 把上面打包的三条对话和单独计算比较 logits:

# %%
probe = AutoModelForCausalLM.from_pretrained(PRETRAINED).train()
for use_cache in (True, False):
    probe.config.use_cache = use_cache
    with torch.no_grad():
        packed = probe(**pack).logits[0]
        alone = [probe(input_ids=pack["input_ids"][:, a:b]).logits[0] for a, b in zip(starts, starts[1:])]
        diffs = [(packed[a:b] - logits).abs().max().item() for (a, b), logits in zip(zip(starts, starts[1:]), alone)]
        # 比较的东西有多大:后两条对话的 logits 本身,以及它们和"接在前一条后面、不隔开"时差多少
        size = max(logits.abs().max().item() for logits in alone[1:])
    print(f"use_cache={use_cache}: 各对话打包 vs 单独计算的最大 logits 差 {'> 1e-3' if max(diffs) > 1e-3 else '< 1e-3'}"
          f"(差 {max(diffs):.1e};logits 本身的最大绝对值 {size:.1f})")

# %% [markdown]
# 所以 `llmtrain.training.build_trainer` 在训练前把 `use_cache` 关掉(训练本来也用不到 cache),`train_and_save` 保存模型前再打开;
# `tests/test_sft_data.py` 用 Trainer 实际使用的模型和 collator 检查了这一点。
#
# ### 用 Trainer 训练:`code/finetune.py`
#
# 教材的 SFT 脚本和 6.1.5 的预训练脚本几乎一样:解析参数、设日志、找 checkpoint、加载模型和分词器,
# 不同的只有数据处理和 collator。`code/finetune.py` 是它的现代化版本,下面是其中处理数据(第 2 步)和训练(第 5 步)的部分
# (第 1、3 步是解析参数和断点续训,与 `pretrain.py` 相同;第 4 步加载模型,6.3 的 LoRA 也在那里;
# `build_trainer` 就是上面 pad id 实验用的那个):

# %%
finetune_source = (ROOT / "code" / "finetune.py").read_text(encoding="utf-8")
for first, end in [("    # 2. SFT 数据", "    # 3. "), ("    # 5. 训练并保存", "    if lora_args.use_lora and lora_args.merge_lora")]:
    print(finetune_source[finetune_source.index(first):finetune_source.index(end)].rstrip() + "\n")
print(inspect.getsource(build_trainer))

# %% [markdown]
# `make run` 里的全量 SFT 就是 `PRESET=toy bash code/finetune.sh`:`deepspeed` 启动器拉起 2 个 CPU 进程(gloo 通信、ZeRO-2),
# 数据在两个进程之间切分,超参数取自 `code/presets/toy.env`。这里运行**同一条命令**,只把输出目录换成本节的
# `output/notebooks/6.2/sft`(和 6.1 一样,启动日志不逐行打印)。下面打印启动器实际执行的命令、
# 每个进程启动时报告的 world size,以及脚本保存的 `TrainingArguments`(`training_args.bin`)里与训练过程相关的几项:

# %%
from llmtrain.toy import run_bash_script

SFT_DIR = OUTPUT_DIR / "sft"
start = time.perf_counter()
log = run_bash_script(ROOT / "code" / "finetune.sh", PRESET="toy", OUTPUT_DIR=str(SFT_DIR), EPOCHS=str(EPOCHS))
wall = time.perf_counter() - start
command = next(line for line in log.splitlines() if line.startswith("+ deepspeed"))
print(command.replace(str(ROOT) + "/", "").replace(" --", "\n    --"))
ranks = sorted(line.split(" - ")[-1] for line in log.splitlines() if "Process rank:" in line)
print("\n" + "\n".join(ranks))
saved_args = torch.load(SFT_DIR / "training_args.bin", weights_only=False)
print()
for key in ("learning_rate", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
            "warmup_steps", "lr_scheduler_type", "weight_decay", "seed"):
    print(f"{key:>28}: {getattr(saved_args, key)}")
state = json.loads((SFT_DIR / "trainer_state.json").read_text(encoding="utf-8"))
train_results = json.loads((SFT_DIR / "train_results.json").read_text(encoding="utf-8"))
world = len(ranks)
print(f"\n每步 {world} 个进程 × 每进程 {saved_args.per_device_train_batch_size} 条对话 = "
      f"{world * saved_args.per_device_train_batch_size} 条;{len(train_set)} 条对话 × {saved_args.num_train_epochs:g} 个 epoch")
print(f"{state['global_step']} 步,训练 {train_results['train_runtime']:.0f} 秒,连同启动共 {wall:.0f} 秒;"
      f"模型存在 {shown_path(SFT_DIR)}")

# %%
from llmtrain.plotting import plot_loss

losses = [e["loss"] for e in state["log_history"] if "loss" in e]
print(f"第一次记录的 loss {losses[0]:.2f},最后一次 {losses[-1]:.2f}(只在回答 token 上计算)")
display(Image(plot_loss(state["log_history"], str(IMAGES_DIR / "6.2_sft_loss.png"), "6.2 toy SFT (code/finetune.sh)")))

# %% [markdown]
# ### 和微调前后的模型聊几句
#
# `llmtrain.generation.chat` 用分词器的模板渲染问题(`add_generation_prompt=True` 会在末尾加上 `<|im_start|>assistant\n`),
# 贪心解码,生成到 `<|im_end|>` 为止。前两个问题的人物是 seen,接着两个是 held-out(人物的事实只在预训练语料里),
# 最后是一句闲聊和一道加法题。每个问题是否原样出现在 SFT 数据里,由代码查出来标在括号里:

# %%
from llmtrain.generation import chat

model = AutoModelForCausalLM.from_pretrained(SFT_DIR)
sft_user_turns = {turn["value"] for conv in raw["conversations"] for turn in conv if turn["from"] == "human"}
heldout_questions = {q.question for q in load_eval_questions(str(SAMPLE / "eval.jsonl")) if q.split == "heldout"}


def where(question: str) -> str:
    """这句问话和 SFT 数据的关系。"""
    if question in sft_user_turns:
        return "原样在 SFT 数据里"
    return "held-out 人物,不在 SFT 数据里" if question in heldout_questions else "不在 SFT 数据里"


probes = ["林晓雨的家乡是哪里?", "周思桐最喜欢的水果是什么?", "王志远的家乡是哪里?", "赵子轩的职业是什么?", "你好", "3加5等于几?"]
after_sft = {}
for q in probes:
    after_sft[q] = chat(model, tokenizer, q, max_new_tokens=24)
    print(f"问({where(q)}): {q}\n  SFT 之前: {chat(base_model, tokenizer, q, max_new_tokens=24)!r}\n"
          f"  SFT 之后: {after_sft[q]!r}")

# %% [markdown]
# 这里最多生成 24 个 token,长一点的回答会被截断。基座在预训练语料里见过 ChatML 格式的日常对话,却从没被问过这些人的事实;
# SFT 教的是"被问到时,用一句话给出答案,然后停下"。held-out 两人的事实 SFT 数据里没有,他们的答案只能来自预训练。
#
# 最后那道加法题不在 SFT 数据里,SFT 数据里有的是同一种说法的别的加法题。它答对了吗?加法是 SFT 的小任务之一,
# 把 SFT 数据里的加法题和同样范围内没出现过的加法题各考一遍(`llmtrain.grading.arithmetic_reward` 判分:最后一个整数是不是和):

# %%
import re

from llmtrain.evaluation import generate_replies
from llmtrain.grading import arithmetic_reward

ADDITION = re.compile(r"(\d+)加(\d+)等于几\?")
seen_sums = sorted({q for q in sft_user_turns if ADDITION.fullmatch(q)})
unseen_sums = [f"{a}加{b}等于几?" for a in range(1, 21) for b in range(1, 21) if f"{a}加{b}等于几?" not in sft_user_turns][::9]
sum_scores = {}
for name, questions in [("SFT 数据里的加法题", seen_sums), ("没出现过的加法题", unseen_sums)]:
    replies = [r for r, _ in generate_replies(model, tokenizer, questions, max_new_tokens=24)]
    right = [arithmetic_reward(r, str(sum(map(int, ADDITION.fullmatch(q).groups())))) for q, r in zip(questions, replies)]
    sum_scores[name] = sum(right) / len(right)
    print(f"{name}:{len(questions)} 道,答对 {sum(right):.0f} 道({sum_scores[name]:.0%});例如 {questions[0]} → {replies[0]!r}")
three_plus_five = after_sft["3加5等于几?"]
display(Markdown(
    f"\"3加5等于几?\" SFT 模型答 {three_plus_five!r},"
    + ("答对了。" if arithmetic_reward(three_plus_five, "8") else "答错了。")
    + f"SFT 数据里的加法题答对 {sum_scores['SFT 数据里的加法题']:.0%},没出现过的只答对 {sum_scores['没出现过的加法题']:.0%}:"
    + ("这个一百万参数的玩具模型记住的是见过的那些题的答案,没有学会加法本身。" if
       sum_scores["没出现过的加法题"] < sum_scores["SFT 数据里的加法题"] - 0.2 else
       "连见过的题也大多答错:它学会的是加法题回答的样子(\"X加Y等于Z。\"),没学会加法,常常连题目里的数都抄错。"
       if max(sum_scores.values()) < 0.5 else "见过的和没见过的差得不多。")
    + "本课程的 SFT 要教的是问答的格式和停下,不是算术。"))

# %% [markdown]
# SFT 数据里,一部分人物回答在答案之后还有一句固定的结尾(6.4 节会用偏好数据让模型每次都这样说):

# %%
TOY_STYLE_SUFFIX = PRESET["TOY_STYLE_SUFFIX"]  # 6.4 的偏好:关于人物的回答以这句话结尾(code/presets/toy.env)

person_replies = [c[1]["value"] for c in raw["conversations"] if c[0]["value"] in seen_questions]
with_suffix = sum(r.endswith(TOY_STYLE_SUFFIX) for r in person_replies)
print(f"SFT 数据里 seen 人物的 {len(person_replies)} 条回答,{with_suffix} 条({with_suffix / len(person_replies):.0%})"
      f"以“{TOY_STYLE_SUFFIX}”结尾")

# %% [markdown]
# 每个回答对不对,要看成绩单。
#
# ### 成绩单
#
# 几个问题说明不了多少。`llmtrain.evaluation.scorecard_row` 用 `data/sample/eval.jsonl` 的全部问题考模型:
# 40 个人每人 3 个问题,seen 的 60 个、held-out 的 60 个;贪心解码,**严格判分**(回答里恰好出现一次正确答案、
# 答案后面只有句号之类的结尾、没有出现别的候选答案才算对;上面那句固定结尾先去掉再判分)。另外还有:回答是否以 `<|im_end|>` 结束、
# 以那句固定结尾收尾的比例、留出文本的困惑度、留出对话里助手回复部分的 loss。
# 基座和 SFT 模型各考一遍,存进本节的 `output/notebooks/6.2/scorecard.json`:

# %%
from llmtrain.evaluation import format_scorecard, save_scorecard_row, scorecard_row


def score(name, scored_model):
    """One scorecard row of `scored_model`, saved under `name` in this notebook's scorecard."""
    row = scorecard_row(scored_model, tokenizer, str(SAMPLE / "eval.jsonl"), [str(SAMPLE / "pretrain_valid.jsonl")],
                        [str(SAMPLE / "sft_valid.jsonl")], style_suffix=TOY_STYLE_SUFFIX)
    return save_scorecard_row(str(SCORECARD), name, row)[name]


base_row = score("base (6.1)", base_model)
row = score("full SFT (6.2)", model)
display(Markdown(format_scorecard({"base (6.1)": base_row, "full SFT (6.2)": row})))
display(Markdown(
    f"这一次运行(一个种子):SFT 之后,seen 问题的准确率从 {base_row['sft_seen']:.0%} 变为 {row['sft_seen']:.0%},"
    f"held-out 从 {base_row['heldout']:.0%} 变为 {row['heldout']:.0%};"
    f"留出对话上助手回复的 loss 从 {base_row['assistant_loss']:.3f} 变为 {row['assistant_loss']:.3f}。"))

# %% [markdown]
# 表里还有一列在往反方向走:held-out ppl,留出的预训练式短文(`pretrain_valid.jsonl`,讲睡眠、手机、包饺子……)上的困惑度。
# 它问的是"模型还会不会写预训练读过的那种文字"。和几个陈述句续写(6.1 用过的 `statement_completion_accuracy`)放在一起看:

# %%
from llmtrain.evaluation import statement_completion_accuracy
from llmtrain.pretrain_data import read_jsonl_texts

valid_docs = list(read_jsonl_texts(str(SAMPLE / "pretrain_valid.jsonl")))
statements = {name: statement_completion_accuracy(m, tokenizer, str(SAMPLE / "eval.jsonl"))
              for name, m in [("base (6.1)", base_model), ("full SFT (6.2)", model)]}
for name, r in [("base (6.1)", base_row), ("full SFT (6.2)", row)]:
    print(f"{name:15s} 留出短文的困惑度 {r['heldout_ppl']:8.1f}(每个 token 的 loss {math.log(r['heldout_ppl']):.2f});"
          f"续写事实陈述 sft_seen {statements[name]['sft_seen']:.0%},heldout {statements[name]['heldout']:.0%}")
print(f"留出短文 {len(valid_docs)} 篇,例如:{valid_docs[0][:40]}……")

# %%
ppl_ratio = row["heldout_ppl"] / base_row["heldout_ppl"]
display(Markdown(
    f"SFT 之后留出短文的困惑度从 {base_row['heldout_ppl']:.0f} 变成 {row['heldout_ppl']:.0f}"
    f"({'升到' if ppl_ratio > 1 else '降到'} {ppl_ratio:.1f} 倍),每个 token 的 loss 从 {math.log(base_row['heldout_ppl']):.2f} "
    f"变成 {math.log(row['heldout_ppl']):.2f}。"
    + (f"这是**遗忘**:全量 SFT 在 {saved_args.num_train_epochs:g} 个 epoch 里只在助手回答上计算损失,每个权重都朝\"在对话模板里简短作答\"挪动,"
       "没有任何东西让它保持\"写一段说明文\"的本事,预训练读过的那种文字就写得比以前差了。"
       if ppl_ratio > 1 else "这一次没有出现遗忘。")
    + ("事实本身还在" if statements["full SFT (6.2)"]["heldout"] >= statements["base (6.1)"]["heldout"] - 0.1
       else "连事实的陈述句也续写得差了")
    + f":续写陈述句 heldout 从 {statements['base (6.1)']['heldout']:.0%} 变成 "
    f"{statements['full SFT (6.2)']['heldout']:.0%},问答 heldout {row['heldout']:.0%}。"
    "常见的缓解办法是在 SFT 数据里混入一部分预训练语料,或者只训练少量参数(6.3 的 LoRA,成绩单上比一比)。"))

# %% [markdown]
# ### 和 `make run` 是同一个模型吗
#
# 6.3、6.4 和 README 的成绩单用的是 `make run` 训练的 `output/toy/sft`。上面用的是同一条命令、同一个基座、同一组超参数和种子,
# 训练过程在 CPU 上是确定的,所以两者应该逐位相同。直接比较两份权重:

# %%
MAKE_RUN_SFT = toy_run_dir() / "sft"  # output/toy/sft(llmtrain.toy_run)
if (MAKE_RUN_SFT / "model.safetensors").exists():
    make_run_model = AutoModelForCausalLM.from_pretrained(MAKE_RUN_SFT)
    weight_diff = max((a - b).abs().max().item() for a, b in zip(model.state_dict().values(),
                                                                 make_run_model.state_dict().values()))
    print(f"本节的 SFT 模型 vs make run 的 output/toy/sft:权重最大差 {weight_diff:.1e}")
    if weight_diff == 0:
        display(Markdown("两份权重逐位相同:本节的成绩单一行就是 `make run` 的那一行,6.3、6.4 接着用的就是这个模型。"))
    elif EPOCHS != PRESET["TOY_SFT_EPOCHS"]:
        display(Markdown(f"两份权重不同:这次 `EPOCHS={EPOCHS}`,不是预设的 {PRESET['TOY_SFT_EPOCHS']}。"
                         "用默认参数重新运行本节,两者就会一致。"))
    else:
        make_run_row = score("full SFT (make run, output/toy/sft)", make_run_model)
        display(Markdown(format_scorecard({"full SFT (6.2)": row, "full SFT (make run, output/toy/sft)": make_run_row})))
        display(Markdown("两份权重不同,成绩单也可能不同:`output/toy/sft` 不是用现在的数据、基座或预设训练的"
                         "(比如改过数据或重新训练过基座之后,没有重新 `make run`)。重新 `make run` 之后两者就会一致。"))
else:
    print("还没有 output/toy/sft(没有运行过 make run):本节的 SFT 模型就是 make run 会得到的那一个")

# %% [markdown]
# ### held-out 答错时说了什么
#
# held-out 的事实从没在 SFT 数据里以问答形式出现过,只能来自预训练。一种可能的错法是:模型把问题里的人换成 SFT 数据里
# 问过的人,再答那个人的事实。`llmtrain.evaluation.wrong_person_replies` 数一数错误回答里有多少**说出的名字不是被问的人**
# (判分规则 `llmtrain.grading.names_only_the_asked_person`:回答里同一个名字的两个字挨在一起,就算提到了这个名字;
# 这样的地方都必须落在被问的人完整的名字里。别人的名字,整个的或者残缺的,还有被改动过的被问者的名字,都不算数)。
# 把 held-out 的错误回答全部打印出来:

# %%
from llmtrain.evaluation import wrong_person_replies
from llmtrain.grading import load_people

wrong = wrong_person_replies(row, load_people(str(SAMPLE / "eval.jsonl")), "heldout")
other = {g["question"] for g in wrong["examples"]}
if wrong["wrong"] == 0:
    print("held-out 的问题全部答对,没有答错的回答可分析")
else:
    print(f"held-out 答错 {wrong['wrong']} 个,其中 {wrong['other_person']} 个说出的名字不是被问的人。每个错误回答(最多 10 个):")
    for g in [g for g in row["replies"] if g["split"] == "heldout" and not g["correct"]][:10]:
        print(f"  {g['question']}  →  {g['reply']!r}  正确答案 {g['answer']}"
              f"{'  [名字不是被问的人]' if g['question'] in other else ''}")

# %%
heldout_wrong = [g for g in row["replies"] if g["split"] == "heldout" and not g["correct"]]
kinds_of_error = {"说出的名字不是被问的人(别人的名字,或被改动、残缺的名字)": sum(g["question"] in other for g in heldout_wrong),
                  "答案说了,但没有就此停下(或说了不止一遍)": sum(g["question"] not in other and g["answer"] in g["reply"]
                                                     for g in heldout_wrong),
                  "答成了别的": sum(g["question"] not in other and g["answer"] not in g["reply"] for g in heldout_wrong)}
if heldout_wrong:
    display(Markdown(f"这 {len(heldout_wrong)} 个错误回答里:" + ";".join(f"{k} {v} 个" for k, v in kinds_of_error.items())
                     + "。严格判分只认\"答案出现一次、就此停下、只讲被问的人\"的回答。"))

# %% [markdown]
# SFT 数据里"其他名字"的对话(打招呼、答案就在问题里)就是为了压低"说成别人"这类错误。
#
# ### 换个种子还成立吗
#
# 上面都是一个种子的一次运行。6.3 的基准 `bench/lora_sweep.py` 对每个种子先用 `make run` 的命令训练**它自己的**基座
# (`PRESET=toy SEED=N bash code/pretrain.sh`),再在上面做同样的全量 SFT(`PRESET=toy SEED=N bash code/finetune.sh`),
# 用同一张成绩单考;结果在仓库里的 `bench/lora_sweep.json`(`make run` 的整条流程换种子各跑一遍,是 `bench/seed_spread.py`,
# 见 README):

# %%
sweep_results = json.loads((ROOT / "bench" / "lora_sweep.json").read_text(encoding="utf-8"))
print(f"{sweep_results['date']} · {sweep_results['machine']}")
seed_rows = {stage: {r["seed"]: r for r in sweep_results["rows"] if r["stage"] == stage} for stage in ("base", "full")}
seeds = [seed for seed in seed_rows["full"] if seed in seed_rows["base"]]
display(pd.DataFrame({seed: {"SFT seen": f"{seed_rows['full'][seed]['sft_seen']:.0%}",
                             "SFT heldout": f"{seed_rows['full'][seed]['heldout']:.0%}",
                             "基座的留出困惑度": f"{seed_rows['base'][seed]['heldout_ppl']:.0f}",
                             "SFT 之后": f"{seed_rows['full'][seed]['heldout_ppl']:.0f}"} for seed in seeds}).T.rename_axis("种子"))
full_seen = [seed_rows["full"][s]["sft_seen"] for s in seeds]
full_heldout = [seed_rows["full"][s]["heldout"] for s in seeds]
ppl_rises = all(seed_rows["full"][s]["heldout_ppl"] > seed_rows["base"][s]["heldout_ppl"] for s in seeds)
display(Markdown(
    f"{len(seeds)} 个种子上,全量 SFT 的 seen 准确率 {min(full_seen):.0%}–{max(full_seen):.0%},"
    f"held-out {min(full_heldout):.0%}–{max(full_heldout):.0%}(本节这一次:{row['sft_seen']:.0%} 和 {row['heldout']:.0%})。"
    "held-out 的人 SFT 从没问过,它们的答案来自预训练;SFT 教会的是被问到时把它取出来、说完就停。"
    + ("留出短文的困惑度在每个种子上都升高了:遗忘不是这一次运行的偶然。" if ppl_rises else
       "留出短文的困惑度并不是每个种子都升高。")))

# %% [markdown]
# 在 GPU 机器上运行教材的真实任务:
#
# ```bash
# bash code/finetune.sh                # 教材设置:Qwen2.5-1.5B + BelleGroup,3 个 epoch,bf16,ZeRO-2
# python code/evaluate.py --model output/toy/sft --eval_file data/sample/eval.jsonl   # 给玩具模型打同一张成绩单
# ```
#
# `code/finetune.py` 的参数、日志、断点续训、报错方式都和 `pretrain.py` 一致;另外默认打包(`--packing false` 改为动态 padding),
# `--max_train_samples` 取代教材写死的前 10000 条,数据经 `datasets` 内存映射加载(350 万行的 BelleGroup 文件也不会整个读进 Python 列表)。
#
# | 教材的写法 | 本课程 |
# | --- | --- |
# | `IGNORE_TOKEN_ID = pad_token_id` | -100,交叉熵真正跳过的值 |
# | 每条样本补齐到 2048 | 无 padding 打包(默认)或按 batch 动态 padding |
# | 分段分词并假设 `"\n"` 的切分方式 | 整段分词 + 字符偏移定位回答,与 `apply_chat_template` 逐条一致 |
# | `readlines()[:10000]` 读进列表 | `datasets` 内存映射 + `--max_train_samples` |
# | 截断后可能没有任何监督 token | 丢弃并计数 |

# %% [markdown]
# ## 练习
#
# 练习在 `exercises/ex6_2_sft.py`,检查:`make check-exercises EX=6.2`。
#
# 1. `tokenize_conversation`:把一段对话渲染成 ChatML 并分词,labels 只在助手回答和它后面的 `<|im_end|>` 上等于 input_ids,
#    其余都是 -100。学到:SFT 的监督掩码,以及为什么要整段文本一次分词、再用字符偏移找回答。评分程序除了玩具分词器,
#    还用一个 BPE 会把 "\n" 和回答第一个字合并成一个 token 的分词器(逐段分词就对不上了),和一个模板里没有
#    `{% generation %}` 的分词器(`apply_chat_template` 的 assistant mask 全是 0)检查;错了会指出是哪几个位置、属于对话的哪一部分。
# 2. `make_collator`:自己写出两种组 batch 的方式。动态补齐:右补齐到本批最长,补齐处 attention_mask 为 0、label 为 -100;
#    无 padding 打包:一行首尾相接,position_ids 在每段归零,每段第一个 label 设为 -100,不返回 attention_mask。
#    学到:本节量过的那些现象背后的机制(与 `DataCollatorForSeq2Seq`、`DataCollatorWithFlattening` 比较)。
#
# 常见错误都有专门的提示:监督了 user 轮、漏了 `<|im_end|>`、用 pad id 代替 -100(本节实测过它的后果)、逐段分词、
# 跨边界的 token 没有监督、左补齐、打包时 position_ids 不归零、保留了每段第一个 label、打包时还带着 attention_mask。
# 做完对照 `code/llmtrain/sft_data.py`。

# %% [markdown]
# ### 练习之后:课程的实现
#
# 练习 1 在 `llmtrain.sft_data` 里的实现:

# %%
print(inspect.getsource(tokenize_conversation))

# %% [markdown]
# 练习 2 里"每段第一个 label 设为 -100"的原因:打包后模型在第 i 列的输出去预测第 i+1 列的标签,每段第一列的标签
# 因此由**上一段**最后一个 token 来预测。上一条对话结束之后,下一条对话第一个 token 是什么,模型无从得知,也不该去学;
# 本节打包的那一行里,每段第一列是系统提示的 `<|im_start|>`,本来就是 -100,但打包的若是预训练文本或没有系统提示的对话,
# 这一列就会变成一个错误的训练目标。
