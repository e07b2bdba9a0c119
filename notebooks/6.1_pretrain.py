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
# # 6.1 模型预训练:用 transformers 从零训练一个迷你 Qwen2
#
# 第五章我们亲手写了 LLaMA 结构和训练循环。真正做项目时,大家更常用现成的框架:模型结构不必重写,
# 多卡训练、断点续训、日志这些"杂活"也有人替我们做好。本节跟着教材 6.1.1–6.1.5,用
# **transformers + datasets + DeepSpeed** 走一遍预训练的完整流程。
#
# 为了让每个单元都能在笔记本电脑的 CPU 上几分钟内跑完,我们把教材里的 Qwen2.5-1.5B 换成了
# **同一结构、尺寸缩小的玩具模型**,分词器则是在仓库自带的样例语料上训练的。
# 代码的写法与真实任务完全相同,换一个配置目录就能在 GPU 上训练真正的 1.5B 模型。
# 本节最后用 DeepSpeed 按 `make run` 的配方训练基座模型;`make run` 训练出的 `output/toy/pretrain` 就是 6.2 SFT 和 6.3 LoRA 的起点。
#
# 本 notebook 调用的函数都在 `code/llmtrain/` 里,每个单元会注明出处。

# %% tags=["parameters"]
# papermill 参数:玩具规模的设置(括号里是教材在 GPU 上的取值)
BLOCK_SIZE = 128  # 每个训练样本的 token 数(教材 2048)
BATCH_SIZE = 8  # 每步的样本数(教材每卡 16,梯度累积 4)
MAX_STEPS = 100  # 6.1.4 在 notebook 里训练的步数(教材按 epoch 训练)
LEARNING_RATE = 2e-3  # 小模型能承受更大的学习率(教材 1e-4)
SEED = 42
RUN_DEEPSPEED = True  # 6.1.5:用 2 个进程的 DeepSpeed 按 make run 的配方再训练一个基座(CPU 上一两分钟)
EXPOSURES = 600  # "一个事实要读多少遍?"的小实验里每个事实读几遍(600:约 1 分钟;改成 300 再跑一次试试)

# %%
import inspect
import json
import logging
import os
import shutil
import socket
import time

import pandas as pd
import torch
from IPython.display import Image, Markdown, display

from llmtrain import PROJECT_ROOT as ROOT
from llmtrain.notebook import fresh_output_dir, setup_notebook, shown_path
from llmtrain.toy import ensure_toy_assets, run_bash_script, toy_preset
from llmtrain.toy_run import require_toy_model

IMAGES_DIR = setup_notebook(SEED)  # 随机种子、关掉进度条和已知无关的警告;图存在 output/figures(make notebooks 时是 images/)
TOY_DIR = ensure_toy_assets()  # artifacts/toy:玩具分词器 + 配置,结构与下载的 Qwen2.5 目录相同
SAMPLE = ROOT / "data" / "sample"
DATA = SAMPLE / "pretrain.jsonl"
OUTPUT_DIR = fresh_output_dir("6.1")  # output/notebooks/6.1,每次运行先清空:这里的东西都来自这一次运行
PRESET = toy_preset()  # code/presets/toy.env:code/pretrain.sh 的 PRESET=toy 用的同一组取值
# 玩具模型的矩阵很小,多开线程省不了多少时间;机器上还有别的进程时,线程互相等待反而慢得多。
# 所以和 DeepSpeed 的 toy 预设(每个进程 OMP_NUM_THREADS=1)一样,这里也只用 1 个线程。
torch.set_num_threads(1)
print("torch", torch.__version__, "| 设备: CPU,本进程的线程数", torch.get_num_threads())
print("玩具预设:", {k: shown_path(v) if isinstance(v, str) and v.startswith(str(ROOT)) else v
                   for k, v in PRESET.items() if k.startswith(("TOY_PRETRAIN", "TOY_NUM_GPUS"))})

# %% [markdown]
# ## 6.1.1 框架介绍
#
# - **transformers**:Hugging Face 维护的模型库。上百种结构(BERT、GPT、LLaMA、Qwen……)都实现好了,
#   用 `AutoConfig` / `AutoModelForCausalLM` / `AutoTokenizer` 三个入口就能按名字或目录加载。
# - **Trainer**:把训练循环、梯度累积、混合精度、保存 checkpoint、日志、分布式(DDP、DeepSpeed)
#   都包装好了,我们只需要准备模型、数据和一组 `TrainingArguments`。
# - **datasets**:用 Arrow 格式存数据,支持内存映射和多进程 `map`,几十 GB 的语料也能流畅处理。
# - **DeepSpeed**:微软的分布式训练库,ZeRO 技术把优化器状态、梯度、参数切分到多张卡上,是训练大模型的标配。
#
# 现在新模型发布时基本都会第一时间提供 transformers 版本,所以掌握这一套工具,就能直接站在开源模型的肩膀上做后训练和微调。

# %% [markdown]
# ## 6.1.2 初始化 LLM
#
# 一个模型目录里的 `config.json` 描述了模型结构:隐藏层大小、层数、注意力头数、词表大小等。
# 教材用 Qwen2.5-1.5B 的配置从零初始化模型;我们的玩具目录 `artifacts/toy/` 有同样的文件,
# 只是把尺寸调小了。先把两份配置并排看一看(`llmtrain.modeling.qwen2_5_1_5b_config` 记录了真实模型的取值):

# %% tags=["nbval-check-output"]
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from llmtrain.modeling import count_parameters, qwen2_5_1_5b_config, qwen2_parameter_formula

config = AutoConfig.from_pretrained(TOY_DIR)
real = qwen2_5_1_5b_config()
fields = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
          "num_key_value_heads", "vocab_size", "max_position_embeddings", "tie_word_embeddings"]
table = {name: [getattr(c, f) for f in fields] + [c.rope_parameters["rope_theta"]]
         for name, c in [("玩具模型", config), ("Qwen2.5-1.5B", real)]}
pd.DataFrame(table, index=fields + ["rope_theta"])

# %% [markdown]
# 两者都是 `qwen2` 结构:分组查询注意力(KV 头比查询头少)、SwiGLU 前馈层、RMSNorm、旋转位置编码、输入输出共享词嵌入。
# 用 `AutoModelForCausalLM.from_config` 按配置建出一个**随机初始化**的模型(因果语言模型,所以用 `ForCausalLM`;
# 分类任务则用 `AutoModelForSequenceClassification`)。注意这里没有 `trust_remote_code=True`:
# Qwen2 已经内置在 transformers 中,不需要执行模型目录里的代码,教材里那样无条件打开是一个安全隐患。

# %% tags=["nbval-check-output"]
model = AutoModelForCausalLM.from_config(config)
print(model)

# %% [markdown]
# 参数量可以直接数,也可以按结构写出公式(`llmtrain.modeling.qwen2_parameter_formula`):
# 词嵌入 $V d$(与输出层共享,只算一次),每层的注意力 $q: d^2+d$、$k,v: d\,d_{kv}+d_{kv}$(GQA 让 $d_{kv}$ 变窄)、$o: d^2$,
# 前馈层 $3\,d\,d_{ffn}$,两个 RMSNorm $2d$,最后再加一个 $d$。
# 1.5B 模型我们在 `meta` 设备上构建:只有形状、不分配内存,所以在笔记本上也能"数"出它的参数量。
# 教材脚本打印的 `Total size=...M params` 是参数个数除以 $2^{20}=1{,}048{,}576$,不是除以一百万,所以 1.5B 模型显示成 "1472.20M";
# 按十进制算它有 15.4 亿个参数。

# %% tags=["nbval-check-output"]
with torch.device("meta"):
    big = AutoModelForCausalLM.from_config(real)
for name, m, c in [("玩具模型", model, config), ("Qwen2.5-1.5B", big, real)]:
    n = count_parameters(m)
    print(f"{name:14s} 实测 {n:>13,d}  公式 {qwen2_parameter_formula(c):>13,d}  "
          f"教材的记法 n/2^20 = {n / 2**20:.2f}M,十进制 n/10^6 = {n / 1e6:.2f}M")
print(f"Qwen2.5-1.5B 按十进制约 {count_parameters(big) / 1e8:.1f} 亿个参数")

# %% [markdown]
# 分词器同样用 `AutoTokenizer.from_pretrained` 加载。玩具分词器是字节级 BPE(与 Qwen2.5 相同的算法),
# 带有 Qwen 的三个特殊 token:`<|endoftext|>`(文档结束,也用作 padding)、`<|im_start|>`、`<|im_end|>`(对话模板用,6.2 节会讲)。
# 它和 Qwen2.5 的分词器有一处不同:BPE 之前先把每个非 ASCII 字符单独切开,所以合并只发生在一个字符的字节内部,
# **每个汉字正好是一个 token**。语料这么小,若不这样做,BPE 会把词表花在高频的多字词上,生僻字只剩下半个字的字节,
# 解码出来就是乱码符号。

# %% tags=["nbval-check-output"]
tokenizer = AutoTokenizer.from_pretrained(TOY_DIR)
print(type(tokenizer).__name__, "词表大小", len(tokenizer))
print("特殊 token:", {t: tokenizer.convert_tokens_to_ids(t) for t in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]})
ids = tokenizer("林晓雨的家乡是柳河村。")["input_ids"]
print(len(ids), "个 token:", [tokenizer.decode([i]) for i in ids])

# %% [markdown]
# ## 6.1.3 预训练数据处理
#
# 预训练语料的格式与出门问问序列猴子数据集相同:每行一个 JSON 对象 `{"text": "..."}`。
# `llmtrain.pretrain_data.load_text_dataset` 用 `datasets.load_dataset("json")` 加载,并做了校验:
# 某一行不是合法 JSON、不是合法 UTF-8、缺少字符串类型的 `text` 字段、文件为空时,会报出**文件名和行号**,而不是一串看不懂的 Arrow 报错。

# %% tags=["nbval-check-output"]
from llmtrain.pretrain_data import build_pretrain_dataset, group_texts, load_text_dataset, tokenize_with_eos

raw = load_text_dataset([str(DATA)])
print(raw)

# %% [markdown]
# ### 一个玩具世界
#
# 样例语料 `data/sample/pretrain.jsonl` 是一个"玩具世界",由 `data/sample/build_samples.py` 确定性地生成:
# 40 个**虚构**的人物,每人有家乡、职业、最喜欢的水果三个事实(人名、地名都是编的);每人几十篇短小的"传记",
# 每篇各自随机挑选说法、打乱句子顺序;另有一些手写的短文和日常对话(ChatML 格式,真实的预训练语料里也有对话)。
# 看看林晓雨的两篇传记:

# %% tags=["nbval-check-output"]
texts = raw["text"]
bios = [t for t in texts if "林晓雨" in t]
print(f"{len(texts)} 篇文档,其中提到林晓雨的 {sum('林晓雨' in t for t in texts)} 篇。两篇传记:")
for t in bios[:2]:
    print("  ", t)

# %% [markdown]
# 同一个事实在语料里用**五种说法**出现。Allen-Zhu 和 Li 在 *Physics of Language Models, Part 3.1* 中发现:
# 一个事实如果只以一种固定说法出现,模型虽然能背下这句话,之后却很难用它回答问题;
# 同一事实换着说法多出现几次("知识增强",knowledge augmentation),模型才会把它存成可以提取的知识。
# 把语料里所有说到林晓雨家乡的句子找出来:

# %% tags=["nbval-check-output"]
hometown = json.loads((SAMPLE / "eval.jsonl").read_text(encoding="utf-8").splitlines()[0])["answer"]
sentences = sorted({s + "。" for t in texts for s in t.split("。") if "林晓雨" in s and hometown in s})
print(f"林晓雨的家乡 = {hometown},{len(sentences)} 种说法:")
for s in sentences:
    print("  ", s)

# %% [markdown]
# 6.2 的 SFT 数据只问其中 20 个人的事实;评测文件 `data/sample/eval.jsonl` 对 40 个人都提问,分成 `sft_seen`(SFT 问过的人)
# 和 `heldout`(只在预训练语料里出现过的人)。本节最后会看看:只经过预训练的模型,到底"知道"了多少。
#
# 先确认分词器真的没有半个字的 token:把整个样例语料分词,逐个 token 解码,数一数有多少 token 解码后是完整的字符
# (不含 Unicode 替换符 U+FFFD):

# %% tags=["nbval-check-output"]
all_ids = [i for t in texts for i in tokenizer(t, add_special_tokens=False)["input_ids"]]
whole = sum("\ufffd" not in tokenizer.decode([i]) for i in all_ids)
chars = sum(len(t) for t in texts)
print(f"{len(all_ids):,} 个 token 中 {whole / len(all_ids):.2%} 解码为完整字符;"
      f"语料共 {chars:,} 个字符,平均每个 token {chars / len(all_ids):.2f} 个字符")

# %% [markdown]
# 接下来分两步,都用 `datasets.map`:
#
# 1. **分词**(`llmtrain.pretrain_data.tokenize_with_eos`):批量调用分词器。与教材不同,我们在每篇文档末尾补上分词器的 EOS,
#    并且只留下 `input_ids`。分词器本来还会返回 `attention_mask`(教材的数据集里就有这一列),为什么不要它,切完块再说。
# 2. **拼接切块**(`llmtrain.pretrain_data.group_texts`,对应教材的 `group_texts`):预训练通常把很多篇文档首尾相接,
#    再切成等长的 block,这样没有一个位置被浪费在 padding 上。每个 block 都恰好 `block_size` 个 token,最后凑不满的部分丢弃。
#
# 这两个函数是本节练习 1、2 要写的,它们的源码放在练习之后;这里先看它们做了什么。为什么要加 EOS?把三篇极短的"文档"拼起来切块看一看:

# %% tags=["nbval-check-output"]
docs = ["今天下雨。", "一加一等于二。", "猫在睡觉。"]
chapter_style = {"input_ids": tokenizer(docs)["input_ids"]}  # 教材:不加 EOS
ours = tokenize_with_eos(docs, tokenizer)
print("教材做法:", tokenizer.decode(group_texts(chapter_style, 12)["input_ids"][0]))
print("本课程:  ", tokenizer.decode(group_texts(ours, 12)["input_ids"][0]))

# %% [markdown]
# 不加 EOS 时,"今天下雨。一加一等于二。"在模型看来就是一段连续的话,它会去学习一篇文档结尾和下一篇开头之间并不存在的联系;
# 加上 `<|endoftext|>` 后,模型能看到文档的边界;每篇文档的结尾都是一个要预测的 EOS,模型也就能学到"在哪里停下"
# (本节最后在训练好的基座上量一量)。
#
# 现在对整个样例语料做这两步。两次 `map` 的参数各有用处:`batched=True` 让函数一次拿到一批文档(一个"列名 → 列表"的字典);
# `num_proc` 是并行的进程数(教材取 10,脚本里对应 `--preprocessing_num_workers`;样例语料很小,`None` 表示不另开进程);
# `remove_columns` 删掉原来的 `text` 列:

# %% tags=["nbval-check-output"]
NUM_PROC = None  # 教材:num_proc=10
tokenized = raw.map(lambda batch: tokenize_with_eos(batch["text"], tokenizer),
                    batched=True, num_proc=NUM_PROC, remove_columns=raw.column_names)
grouped = tokenized.map(group_texts, fn_kwargs={"block_size": BLOCK_SIZE},
                        batched=True, batch_size=1000, num_proc=NUM_PROC)
print(tokenized)
print(grouped)

# %% [markdown]
# `remove_columns` 不只是省空间:`group_texts` 把一批文档变成了数量不同的一批 block,如果 `text` 列还留着,
# 新旧两列的行数对不上,`map` 就会报错。去掉这个参数试一试:

# %% tags=["nbval-check-output"]
kept_text = raw.map(lambda batch: tokenize_with_eos(batch["text"], tokenizer), batched=True)
try:
    kept_text.map(group_texts, fn_kwargs={"block_size": BLOCK_SIZE}, batched=True, batch_size=1000)
except Exception as err:  # pyarrow 的 ArrowInvalid
    print(type(err).__name__ + ":", err)

# %% [markdown]
# 脚本里用的是 `llmtrain.pretrain_data.build_pretrain_dataset`:就是上面这两次 `map`,再加两项检查(分词器必须有 EOS、语料至少够一个 block)。
# 它切出的 block 与手写的两步逐个相同:

# %% tags=["nbval-check-output"]
blocks = build_pretrain_dataset(raw, tokenizer, block_size=BLOCK_SIZE)
eos_per_block = [ids.count(tokenizer.eos_token_id) for ids in blocks["input_ids"]]
print(blocks)
print("与手写的两步相同:", blocks["input_ids"] == grouped["input_ids"])
print(f"{len(blocks)} 个 block,每个 {len(blocks[0]['input_ids'])} 个 token;"
      f"block 内的文档边界(EOS)共 {sum(eos_per_block)} 处,教材的做法是 0 处")
print("第 1 个 block:\n" + tokenizer.decode(blocks[0]["input_ids"]))

# %% [markdown]
# 每篇文档末尾一个 EOS,进了 block 的 EOS 却比文档数少几个。原因在 `map(batched=True)`:它每次只把一批文档
# (`batch_size` 篇,datasets 的默认值是 1000,`build_pretrain_dataset` 也用它)交给 `group_texts`,每一批**各自**拼接、
# 各自丢掉凑不满一个 block 的尾巴,尾巴里的 EOS 也一起丢了。逐批数一数,再按教材的 `batch_size=40000` 数一遍:

# %%
EOS_ID = tokenizer.eos_token_id


def per_map_batch(batch_size: int) -> pd.DataFrame:
    """group_texts 在每个 map 批次里做的事:拼接、切块、丢掉尾巴;尾巴里有几个 EOS。"""
    rows = []
    for start in range(0, len(tokenized), batch_size):
        ids = [i for doc in tokenized[start:start + batch_size]["input_ids"] for i in doc]
        kept = len(ids) // BLOCK_SIZE * BLOCK_SIZE
        rows.append({"文档": min(batch_size, len(tokenized) - start), "token": len(ids), "block": kept // BLOCK_SIZE,
                     "丢掉的尾巴 (token)": len(ids) - kept, "尾巴里的 EOS": ids[kept:].count(EOS_ID)})
    return pd.DataFrame(rows)


by_1000, by_40000 = per_map_batch(1000), per_map_batch(40000)
display(by_1000)
kept_eos = sum(eos_per_block)
display(Markdown(
    f"{len(raw):,} 篇文档分成 {len(by_1000)} 批,每批丢掉一条尾巴,尾巴里共有 {by_1000['尾巴里的 EOS'].sum()} 个 EOS:"
    f"{len(raw):,} − {by_1000['尾巴里的 EOS'].sum()} = {len(raw) - by_1000['尾巴里的 EOS'].sum():,},"
    f"正是 block 里数到的 {kept_eos:,} 个。教材的 `batch_size=40000` 让整个样例语料成为一批,只丢一条尾巴:"
    f"{by_40000['block'].sum()} 个 block"
    f"({f'和分 {len(by_1000)} 批时一样多' if by_40000['block'].sum() == len(blocks) else f'分批时是 {len(blocks)} 个'}),"
    f"丢掉 {by_40000['尾巴里的 EOS'].sum()} 个 EOS。"
    f"批越大丢得越少,代价是一批的全部 token 要同时放在内存里拼接;真实语料有上亿篇文档,每批丢掉的不到一个 block,可以忽略。"))

# %% [markdown]
# 数据集只有 `input_ids` 和 `labels` 两列,没有 `attention_mask`。`attention_mask` 的用处是标出 padding:值为 0 的位置不被注意。
# 这里每个 block 都是满的,没有一个 padding,掩码只会是全 1;模型拿不到 `attention_mask` 时就按全 1 处理,
# 因果掩码(每个位置只看它前面的位置)则是模型自己加的。所以传不传都一样,用两个 block 验证一下:

# %%
from transformers import default_data_collator

batch = default_data_collator([blocks[i] for i in range(2)])
print({k: tuple(v.shape) for k, v in batch.items()})
with torch.no_grad():
    loss_without = model(**batch).loss
    loss_with = model(**batch, attention_mask=torch.ones_like(batch["input_ids"])).loss
print(f"不传 attention_mask 的 loss {loss_without:.6f},传全 1 的 {loss_with:.6f}")

# %% [markdown]
# 同一个 block 里的文档因此能"看见"排在它前面的文档;夹在中间的 EOS 告诉模型:前面那篇已经结束了。大规模预训练通常也是这样做的。

# %% [markdown]
# 还有一个边界情况:如果语料总长还不够一个 block,教材的 `group_texts` 会悄悄返回长度不齐的样本(或者空数据集),
# 训练到一半才出错。我们的实现直接报错,告诉你有多少 token、一个 block 需要多少:

# %% tags=["nbval-check-output"]
from llmtrain import LlmtrainError

try:
    build_pretrain_dataset(raw.select(range(2)), tokenizer, block_size=2048)
except LlmtrainError as err:
    print("LlmtrainError:", err)

# %% [markdown]
# ## 6.1.4 使用 Trainer 进行训练
#
# 训练超参数放在 `TrainingArguments` 里,再把模型、参数、数据交给 `Trainer`。与教材相比有三处更新:
#
# - transformers 5 中 `Trainer(tokenizer=...)` 改名为 `processing_class=...`;
# - 训练集直接传 `datasets.Dataset`。教材用的 `torchdata` 的 `IterableWrapper` 在新版 torchdata 中已被删除,
#   而且把数据包成 IterableDataset 后 Trainer 不会再为它建随机采样器,每个 epoch 的数据顺序都一样;
# - `default_data_collator` 把已经等长的 block 直接堆成张量(预训练不需要 padding)。
#
# 教材打开了 `gradient_checkpointing`(用重算换显存);玩具模型很小,这里关掉它以节省时间。
# 我们每一步都记一次日志(`logging_steps=1`),这样后面画学习率曲线时能看清预热的那几步。

# %%
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments


def make_args(output_dir, **overrides):
    """这一节几次训练共用的 TrainingArguments(overrides 覆盖其中的项)。"""
    values = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=BATCH_SIZE,
        max_steps=MAX_STEPS,
        learning_rate=LEARNING_RATE,
        warmup_steps=10,  # 先预热 10 步,再线性衰减到 0
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=SEED,
        disable_tqdm=True,  # 不要进度条……
    )
    values.update(overrides)
    return TrainingArguments(**values)


def make_trainer(model, args):
    trainer = Trainer(model=model, args=args, train_dataset=blocks, processing_class=tokenizer,
                      data_collator=default_data_collator)
    trainer.remove_callback(PrinterCallback)  # ……也不要把每条日志打印出来
    return trainer


trainer = make_trainer(model, make_args(OUTPUT_DIR / "trainer"))
loader = trainer.get_train_dataloader()
print("采样器:", type(loader.batch_sampler.sampler).__name__)
for epoch in range(2):
    loader.set_epoch(epoch)
    print(f"epoch {epoch} 的前两个 batch(block 序号):", list(loader.batch_sampler)[:2])

# %% [markdown]
# 每个 epoch 都重新打乱。开始训练:

# %%
result = trainer.train()
epochs = result.global_step * BATCH_SIZE / len(blocks)
print(f"{result.global_step} 步(约 {epochs:.0f} 个 epoch),用时 {result.metrics['train_runtime']:.1f} 秒")

# %% [markdown]
# `llmtrain.plotting.plot_loss` 从 `trainer.state.log_history` 画出 loss 曲线:

# %%
from llmtrain.plotting import plot_loss

losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
print(f"第一次记录的 loss {losses[0]:.2f},最后一次 {losses[-1]:.2f}(均匀瞎猜 {len(tokenizer)} 个 token 时是 "
      f"ln {len(tokenizer)} = {torch.log(torch.tensor(float(len(tokenizer)))):.2f})")
display(Image(plot_loss(trainer.state.log_history, str(IMAGES_DIR / "6.1_loss.png"), "6.1 toy pretraining")))

# %% [markdown]
# ### 梯度累积
#
# 显存放不下一个大 batch 时,可以把它拆成几个 micro-batch 依次前向、反向,梯度累加起来再更新一次参数
# (`gradient_accumulation_steps`)。教材每卡 16 个样本、累积 4 次,等于每卡每次更新看 64 个样本。
# 验证一下它真的等价:同一个初始模型、同样的数据顺序,训练 5 步,一次用 1 × 8 个 block,一次用 4 个 micro-batch × 2 个 block:

# %%
class StepsRun(TrainerCallback):
    """记下这一次 train() 真正执行了哪些步。"""

    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def train_copy(init_state, resume=None, **overrides):
    """从同一份初始参数出发训练一个新模型(resume:从这个 checkpoint 继续)。"""
    m = AutoModelForCausalLM.from_config(config)
    m.load_state_dict(init_state)
    t = make_trainer(m, make_args(overrides.pop("output_dir", OUTPUT_DIR / "demo"), **overrides))
    t.add_callback(StepsRun())
    t.train(resume_from_checkpoint=resume)
    return m, t


torch.manual_seed(SEED)
init = AutoModelForCausalLM.from_config(config).state_dict()
start = time.perf_counter()
full_model, full_trainer = train_copy(init, max_steps=5, per_device_train_batch_size=8)
accum_model, accum_trainer = train_copy(init, max_steps=5, per_device_train_batch_size=2, gradient_accumulation_steps=4)
loss_full = [e["loss"] for e in full_trainer.state.log_history if "loss" in e]
loss_accum = [e["loss"] for e in accum_trainer.state.log_history if "loss" in e]
diff = max((a - b).abs().max().item() for a, b in zip(full_model.parameters(), accum_model.parameters()))
print("每步 loss, 1 × 8:      ", [round(x, 4) for x in loss_full])
print("每步 loss, 4 × 2 累积: ", [round(x, 4) for x in loss_accum])
print(f"5 步后参数的最大差 {diff:.1e}(两次共用时 {time.perf_counter() - start:.1f} 秒)")

# %% [markdown]
# 两种做法的 loss 和参数只差浮点舍入。这里每个 block 都是满的 128 个 token;SFT 里样本长短不一,
# 累积时要按整个大 batch 的 token 数求平均,而不是把每个 micro-batch 的平均 loss 再平均一次,
# 从 transformers 4.46 起 Trainer 已经这样做了(`num_items_in_batch`)。
#
# ### 保存 checkpoint 与断点续训
#
# 长时间的训练一定会被打断:机器重启、抢占、显存不足……`save_steps` 让 Trainer 定期把模型、优化器状态、学习率调度器、
# 随机数状态和已经走过的步数存进 `checkpoint-N` 目录;`trainer.train(resume_from_checkpoint=...)` 从那里接着训练。
# 先不间断地训练 20 步,每 10 步存一次;再假装训练在第 10 步后中断,用一个**新建的**模型从 `checkpoint-10` 继续:

# %%
ckpt_dir = OUTPUT_DIR / "checkpoints"
shutil.rmtree(ckpt_dir, ignore_errors=True)
start = time.perf_counter()
straight_model, straight = train_copy(init, output_dir=str(ckpt_dir), max_steps=20, save_strategy="steps", save_steps=10)
print("保存的 checkpoint:", sorted(p.name for p in ckpt_dir.glob("checkpoint-*")))
resumed_model, resumed = train_copy(init, output_dir=str(ckpt_dir), max_steps=20, resume=str(ckpt_dir / "checkpoint-10"))
resumed_steps = resumed.callback_handler.pop_callback(StepsRun).steps
diff = max((a - b).abs().max().item() for a, b in zip(straight_model.parameters(), resumed_model.parameters()))
print(f"续训这次执行的步: 第 {resumed_steps[0]} … {resumed_steps[-1]} 步(共 {len(resumed_steps)} 步),"
      f"最终 global_step = {resumed.state.global_step}")
print(f"第 20 步的 loss: 不间断 {straight.state.log_history[-2]['loss']:.4f},续训 {resumed.state.log_history[-2]['loss']:.4f};"
      f"参数最大差 {diff:.1e}(用时 {time.perf_counter() - start:.1f} 秒)")

# %% [markdown]
# 续训从第 11 步接着记,结果与不间断的训练一致:数据顺序(Trainer 跳过了这个 epoch 已经用过的 batch)、
# 学习率和 Adam 的动量都恢复了。`code/pretrain.py` 更进一步:输出目录里有 checkpoint 时自动从最新的一个继续
# (`llmtrain.checkpoints.find_resume_checkpoint`)。

# %% [markdown]
# ## 6.1.5 使用 DeepSpeed 实现分布式训练
#
# 真正的预训练要跑几天甚至几周,不适合放在 notebook 里,一般写成 Python 脚本,再用 shell 脚本设置超参数并启动。
# 仓库里的 `code/pretrain.py` 就是教材脚本的现代化版本。它的 `main` 按编号分成五步,每一步的注释写了对应的小节:

# %%
script = (ROOT / "code" / "pretrain.py").read_text(encoding="utf-8")
print(script[script.index("def main"):script.index('if __name__')].rstrip())

# %% [markdown]
# 和教材的脚本相比:
#
# - 第 1 步用 `HfArgumentParser` 同时解析四组参数:`ModelArguments`、`DataArguments`、`RunArguments`(`llmtrain.args`)和 transformers 的全部 `TrainingArguments`,
#   所以 shell 脚本里的每个 `--xxx` 都对应某个 dataclass 的一个字段,拼错了会直接报错;
# - 第 2 步用 logging 记录训练信息(多进程时只有主进程打印 INFO);**断点续训**:输出目录里已有 checkpoint 时自动从最新的完整 checkpoint 继续
#   (`llmtrain.checkpoints.find_resume_checkpoint`),目录非空却没有 checkpoint 时报错,并提示 `--overwrite_output_dir`;
# - 第 3、4 步就是 6.1.2、6.1.3 在 notebook 里做过的事;`main_process_first` 让主进程先处理数据并写进缓存,其他进程随后直接读缓存;
# - 第 5 步的 `build_trainer` 组装 6.1.4 的 `Trainer`,另外在日志里记录 tokens/s 和 MFU(见下文);追踪工具(wandb、swanlab、tensorboard)
#   通过 `--report_to` 按需开启,默认不联网。
#
# ### DeepSpeed 配置
#
# `code/ds_config_zero2.json` 沿用教材的配置,值为 `"auto"` 的项由 Trainer 按命令行参数填写(学习率、batch size、是否 bf16……):

# %%
print((ROOT / "code" / "ds_config_zero2.json").read_text(encoding="utf-8"))

# %% [markdown]
# `zero_optimization.stage: 2` 就是 ZeRO-2。混合精度 + Adam 训练时,每个参数要占 bf16 权重 2 字节、bf16 梯度 2 字节、
# 优化器状态 12 字节(fp32 主权重、一阶矩、二阶矩各 4 字节)。普通数据并行每张卡都存一整份;ZeRO-1 把优化器状态切到 $N$ 张卡上,
# ZeRO-2 再切梯度,ZeRO-3 连权重也切(各省多少,启动之后的"显存"一节算给你看)。两个 `bucket_size` 是梯度归约和参数收集时每次通信的元素个数,
# `overlap_comm` 让通信和反向计算同时进行。唯一的改动:删掉了教材配置里的 `scheduler`(`WarmupLR`)。它预热结束后让学习率**一直停在最大值**,
# 而教材的命令行里 `--warmup_steps 200` 看起来像是"预热后衰减"。去掉它之后由 Trainer 负责调度(预热 + 线性衰减)。
# 下面用 DeepSpeed 自己的 `WarmupLR` 类和 6.1.4 里 Trainer 每一步实际用过的学习率对比一下:

# %%
from deepspeed.runtime.lr_schedules import WarmupLR

from llmtrain.plotting import plot_series

logging.getLogger("DeepSpeed").setLevel(logging.ERROR)  # WarmupLR 构造时会警告"调度器还没开始",这里无关紧要
optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=LEARNING_RATE)
warmup_lr = WarmupLR(optimizer, warmup_min_lr=0.0, warmup_max_lr=LEARNING_RATE, warmup_num_steps=10)
deepspeed_lrs = []
for _ in range(MAX_STEPS):
    optimizer.step()
    warmup_lr.step()
    deepspeed_lrs.append(warmup_lr.get_last_lr()[0])
logged = [(e["step"], e["learning_rate"]) for e in trainer.state.log_history if "learning_rate" in e]
steps, trainer_lrs = zip(*logged)
peak_step = steps[trainer_lrs.index(max(trainer_lrs))]
print(f"Trainer:第 1 步 {trainer_lrs[0]:.1e},第 {peak_step} 步到达最大值 {max(trainer_lrs):.1e},第 {steps[-1]} 步 {trainer_lrs[-1]:.1e}")
print(f"WarmupLR:第 {steps[-1]} 步仍是 {deepspeed_lrs[steps[-1] - 1]:.1e}")
display(Image(plot_series(
    {"DeepSpeed WarmupLR (chapter config)": (list(range(1, MAX_STEPS + 1)), deepspeed_lrs),
     "Trainer: warmup + linear decay (ours)": (list(steps), list(trainer_lrs))},
    str(IMAGES_DIR / "6.1_lr_schedule.png"), "step", "learning rate", "Learning-rate schedules")))

# %% [markdown]
# ### 启动脚本:用 DeepSpeed 训练基座模型
#
# `code/pretrain.sh` 把教材的超参数写在脚本顶部,每一项都可以用环境变量覆盖;默认就是教材的真实任务。
# 在 GPU 机器上(见 README)下载好 Qwen2.5-1.5B 的配置和语料后:
#
# ```bash
# bash code/pretrain.sh                        # 教材设置:block 2048、bf16、ZeRO-2、所有可见 GPU
# NUM_GPUS=8 OUTPUT_DIR=/data/out bash code/pretrain.sh
# HOSTFILE=hostfile bash code/pretrain.sh      # 多机
# ```
#
# 没有 GPU 也能体验同一条路径:`PRESET=toy` 用玩具资产(取值在 `code/presets/toy.env`),由 `deepspeed` 启动器拉起
# **2 个 CPU 进程**,进程之间用 gloo 通信,ZeRO-2 把优化器状态和梯度切成两份,数据也在两个进程之间切分。
# (transformers 5 在 CPU 上默认会让每个进程都以为自己是唯一的进程;`llmtrain.launch.start_gloo_process_group_for_cpu_deepspeed` 先建立 gloo 的分布式状态再交给 Trainer,解决了这个问题。)
# `make run` 的第一步就是 `PRESET=toy bash code/pretrain.sh`,训练出的 `output/toy/pretrain` 是 6.2、6.3 的起点。
#
# 脚本最后执行的到底是哪条命令?把 `deepspeed` 换成一个只打印参数的 shell 函数,"空跑"一遍脚本就知道了(bash 启动时会先读 `BASH_ENV` 指向的文件):

# %%
NOTEBOOK_BASE = OUTPUT_DIR / "pretrain"  # 这个 notebook 自己的基座,不动 make run 的 output/toy/pretrain
print_instead = OUTPUT_DIR / "print_deepspeed.sh"
print_instead.write_text('deepspeed() { printf "%q " deepspeed "$@"; echo; }\n')
dry_run = run_bash_script(ROOT / "code" / "pretrain.sh", PRESET="toy", OUTPUT_DIR=str(NOTEBOOK_BASE),
                          BASH_ENV=str(print_instead))
command = next(line for line in dry_run.splitlines() if line.startswith("deepspeed "))
print(command.replace(f"{ROOT}/", "").strip().replace(" --", " \\\n    --"))

# %% [markdown]
# `--num_gpus 2` 在 CPU 上就是 2 个进程;每个进程每步 `--per_device_train_batch_size` 个 block,两个进程合起来是一步的 batch;
# `--num_train_epochs` 个 epoch;每 `--logging_steps` 步记一次日志。`RUN_DEEPSPEED=True` 时下面真的启动它,
# 输出到本 notebook 自己的目录(`output/notebooks/6.1/pretrain`),不覆盖 `make run` 训练好、其他 notebook 正在用的 `output/toy/pretrain`;
# 同样的配方、同样的随机种子,两次训练应该得到同样的曲线,后面会比较。

# %%
MAKE_RUN_BASE = require_toy_model("pretrain")  # make run 训练的 output/toy/pretrain:6.2、6.3 的起点;还没有时它会告诉你先运行 make run
if RUN_DEEPSPEED:
    with socket.socket() as free:  # 另选一个空闲端口,免得和同时在跑的其他训练抢 deepspeed 默认的 29500
        free.bind(("127.0.0.1", 0))
        port = str(free.getsockname()[1])
    start = time.perf_counter()
    launch_log = run_bash_script(ROOT / "code" / "pretrain.sh", PRESET="toy", OUTPUT_DIR=str(NOTEBOOK_BASE),
                                 MASTER_PORT=port)
    wall = time.perf_counter() - start
    loss_lines = [line[line.index("{'loss'"):] for line in launch_log.splitlines() if "{'loss'" in line]
    shown = [line for line in launch_log.splitlines() if "world size" in line] + loss_lines[:2] + ["..."] + loss_lines[-2:]
    print(f"启动日志共 {len(launch_log.splitlines())} 行,用时 {wall:.0f} 秒(含启动);其中的进程信息和首尾两条 loss 记录:")
    print("\n".join(shown))
    SHOWN_BASE = NOTEBOOK_BASE
else:
    print("RUN_DEEPSPEED=False:跳过 DeepSpeed 训练。下面的数字读自 make run 训练的 output/toy/pretrain/trainer_state.json,"
          "不是这次的启动日志。")
    SHOWN_BASE = MAKE_RUN_BASE
state = json.loads((SHOWN_BASE / "trainer_state.json").read_text())
results = json.loads((SHOWN_BASE / "train_results.json").read_text())
ds_logs = [e for e in state["log_history"] if "loss" in e]
world = results["num_input_tokens_seen"] // (state["global_step"] * state["train_batch_size"] * PRESET["TOY_PRETRAIN_BLOCK_SIZE"])
if not RUN_DEEPSPEED:
    print("trainer_state.json 里的首尾两条 loss 记录:")
    keys = ("step", "epoch", "loss", "learning_rate", "tokens_per_second", "mfu")
    print("\n".join(str({k: e[k] for k in keys if k in e}) if e != "..." else e for e in ds_logs[:2] + ["..."] + ds_logs[-2:]))
print(f"{shown_path(SHOWN_BASE)}:{world} 个进程 × 每进程 {state['train_batch_size']} 个 block,"
      f"{state['global_step']} 步 = {results['epoch']:.0f} 个 epoch,训练 {results['train_runtime']:.0f} 秒;"
      f"loss {ds_logs[0]['loss']:.2f}(第 {ds_logs[0]['step']} 步)→ {ds_logs[-1]['loss']:.2f}(第 {ds_logs[-1]['step']} 步)")

# %% [markdown]
# 日志开头每个进程报一行 `world size`;每条 `{'loss': ...}` 是主进程每 `--logging_steps` 步打印的一次记录,
# 其中的 `tokens_per_second` 和 `mfu` 是 `llmtrain.throughput.ThroughputCallback` 加进去的。同样的记录也存在输出目录的 `trainer_state.json` 里,
# 下图就从那里读。`make run` 的基座是 6.2、6.3 的起点:

# %%
from llmtrain.plotting import read_log_history

curves = {"make run: output/toy/pretrain": read_log_history(str(MAKE_RUN_BASE / "trainer_state.json"))}
if RUN_DEEPSPEED:
    curves["this notebook: output/notebooks/6.1/pretrain"] = state["log_history"]
loss_points = {name: ([e["step"] for e in h if "loss" in e], [e["loss"] for e in h if "loss" in e])
               for name, h in curves.items()}
if RUN_DEEPSPEED:
    (_, ours), (_, theirs) = loss_points["this notebook: output/notebooks/6.1/pretrain"], loss_points["make run: output/toy/pretrain"]
    gap = max(abs(a - b) for a, b in zip(ours, theirs)) if len(ours) == len(theirs) else float("nan")
    print(f"两次训练各记录 {len(ours)} / {len(theirs)} 次 loss,逐条相比最大差 {gap:.4f}")
display(Image(plot_series(loss_points, str(IMAGES_DIR / "6.1_deepspeed_loss.png"), "step", "training loss (cross-entropy)",
                          "Toy base: PRESET=toy bash code/pretrain.sh (2 processes, ZeRO-2)")))

# %% [markdown]
# 最后是吞吐和 MFU(model FLOPs utilization)。MFU = 6·N·(每秒 token 数)÷(进程数 × 每个进程的峰值算力),6·N 是一个 token 前向加反向的浮点运算量。
# GPU 的峰值查的是数据手册(A100、H100……的 bf16 峰值);CPU 没有这样的表,每个进程在组装 Trainer 时(`build_trainer`)
# 用**自己的线程**实测一次 fp32 矩阵乘的速度,当作"峰值":

# %%
from llmtrain.throughput import measure_cpu_matmul_flops

print(inspect.getsource(measure_cpu_matmul_flops))
n_toy = count_parameters(model)
last = ds_logs[-1]
threads = os.environ.get("OMP_NUM_THREADS") or "1"  # pretrain.sh 的 toy 预设:export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
implied_peak = 6 * n_toy * last["tokens_per_second"] / (last["mfu"] * world)
display(Markdown(
    f"最后一次记录:{world} 个进程合计 **{last['tokens_per_second']:,.0f} tokens/s**,MFU **{last['mfu']:.2f}**。"
    f"玩具模型 N = {n_toy:,},由这两个数倒推,每个进程当时量到的矩阵乘速度约 {implied_peak / 1e9:.1f} GFLOP/s。"
    f"玩具预设让每个进程只用 {threads} 个线程(`OMP_NUM_THREADS`),所以这是 **{threads} 个线程跑 512×512 矩阵乘**的实测速度,"
    f"不是这颗 CPU 的硬件峰值;机器上别的进程抢 CPU 时,量到的速度和训练速度都会变。"
    f"CPU 上的 MFU 只回答一个问题:训练离'这台机器此刻做一个大矩阵乘'还差多远。"))

# %% [markdown]
# 保存下来的目录(模型权重 + 分词器)可以直接 `from_pretrained`,本节最后就这样加载 `make run` 的基座来考它。
#
# ## 显存:ZeRO 省了多少,我的显卡放得下吗
#
# 上面的启动在 CPU 上跑的是玩具模型。换成教材的 Qwen2.5-1.5B、放到 GPU 上,第一个问题就是显存够不够。
#
# ### ZeRO-2 省了多少显存
#
# 按 DeepSpeed 配置那里说的字节数(bf16 权重 2、bf16 梯度 2、Adam 状态 12),用 `llmtrain.memory.zero_memory_per_gpu`
# 算一下 Qwen2.5-1.5B 每张卡一直占着的模型状态(不含激活值):

# %% tags=["nbval-check-output"]
from llmtrain.memory import zero_memory_per_gpu

n_real = count_parameters(big)
pd.DataFrame(
    {f"{gpus} 卡, ZeRO-{stage}": {k: round(v / 2**30, 1) for k, v in zero_memory_per_gpu(n_real, gpus, stage).items()}
     for gpus in (2, 8) for stage in (0, 2, 3)}
).rename_axis("GiB / 卡")

# %% [markdown]
# 这张表只有一直占着的三项。单卡训练(没有别的卡可切)时还要再加一项:更新参数的那一刻,DeepSpeed 把梯度复制成 fp32
# 交给 fp32 的 Adam,每个参数再多 4 字节(下文 `estimate_training_memory` 里的 `optimizer_step` 一项):

# %% tags=["nbval-check-output"]
from llmtrain.memory import GIB, estimate_training_memory

qwen = real  # Qwen2.5-1.5B 的配置
states = zero_memory_per_gpu(n_real, 1, 0)["total"] / GIB
fp32_grads = estimate_training_memory(qwen, 1, 2048, "bf16", zero_stage=2, num_gpus=1).optimizer_step / GIB
eight = zero_memory_per_gpu(n_real, 8, 2)["total"] / GIB
display(Markdown(
    f"单卡:权重 + 梯度 + 优化器状态 **{states:.1f} GiB**,更新参数时再加 fp32 梯度 {fp32_grads:.1f} GiB,"
    f"合计 **{states + fp32_grads:.1f} GiB**,还没算一个激活值。"
    f"8 卡 ZeRO-2 时一直占着的三项降到每卡 {eight:.1f} GiB。"))

# %% [markdown]
# ### 我的显卡放得下吗
#
# 上面的 ZeRO 表只算了模型状态(权重、梯度、优化器状态)。真正训练时还有两大块:反向要用的**激活值**,以及词表上的
# **logits 和 loss 缓冲**。`llmtrain.memory.estimate_training_memory` 把一步训练拆成几项,逐项按字节数计算每张卡的显存:
#
# - `weights / gradients / optimizer_states`:和上面的 ZeRO 表相同(bf16 权重 2 字节、梯度 2 字节、Adam 12 字节),ZeRO 把后几项切到各卡;
# - `activations`:前向时每层为反向保存下来的张量(两个 RMSNorm 各存一份升到 fp32 的输入,注意力存 q、k、v 和输出,SwiGLU 存 4 个中间维度的张量);
#   打开激活检查点后每层只存输入;
# - `layer_backward`:反向传播经过某一层时**临时**多出来的显存:MLP 反向时同时存在的两个中间维度的梯度;
#   开了检查点时还要加上这一层重新前向算出来的全部激活值。它出现时 loss 缓冲已经释放,所以两者取大的那个,不相加;
# - `logits_and_loss`:loss 把 logits 升到 fp32,反向开始时还有 3 份 fp32 缓冲;
# - `optimizer_step`:只在 `optimizer.step()` 那一刻存在:DeepSpeed 把本卡负责的那份梯度转成 fp32 交给优化器。
#
# 峰值 = 模型状态 + max(激活值 + max(logits 缓冲, 一层的反向), 优化器更新)。先看教材的设置:每卡 16 × 2048,4 卡 ZeRO-2:

# %% tags=["nbval-check-output"]
from llmtrain.memory import fits, plan_for_card

textbook = dict(per_device_batch=16, seq_len=2048, dtype="bf16", zero_stage=2, num_gpus=4)
estimates = {ckpt: estimate_training_memory(qwen, **textbook, activation_checkpointing=ckpt) for ckpt in (False, True)}
pd.DataFrame({f"检查点{'开' if ckpt else '关'}": e.gib() for ckpt, e in estimates.items()}
             ).rename_axis("GiB / 卡 (16 x 2048, bf16, ZeRO-2, 4 卡)")

# %% tags=["nbval-check-output"]
lines = []
for ckpt, e in estimates.items():
    ratio = e.logits / e.activations
    lines.append(f"- 检查点{'开' if ckpt else '关'}:`logits_and_loss` {e.logits / GIB:.2f} GiB,激活值 {e.activations / GIB:.2f} GiB,"
                 f"logits 一项{'是激活值的 %.1f 倍' % ratio if ratio > 1 else '只有激活值的 %.0f%%' % (100 * ratio)}。")
display(Markdown("\n".join(lines)))

# %% [markdown]
# 检查点只能省激活值,对 logits 一项毫无帮助:不开检查点时两项都很大,开了之后几乎只剩 logits。
# 这就是上游 happy-llm #106 在 4 × 48 GB 上显存不足的原因,算一下:

# %%
tokens = 16 * 2048
print(f"一个 micro-batch 的 logits: {tokens:,} 个位置 x {qwen.vocab_size:,} 词 = {tokens * qwen.vocab_size / 1e9:.1f}e9 个数")
for what, nbytes in [("bf16 logits", 2), ("fp32 副本 (loss 里 .float())", 4), ("log_softmax 的 fp32 输出", 4),
                     ("它的梯度 (fp32)", 4), ("logits 的梯度 (fp32)", 4)]:
    print(f"  {what:<28} {tokens * qwen.vocab_size * nbytes / GIB:6.1f} GiB")
est = estimates[True]
print(f"反向开始时仍在的 3 个 fp32 缓冲: {est.logits / GIB:.1f} GiB; 峰值 {est.peak / GIB:.1f} GiB, 48 GB 卡放得下吗? {fits(est, 48)}")

# %% [markdown]
# 前向算 loss 时 bf16 logits、fp32 副本和 log_softmax 的输出同时存在(10 字节/位置);反向开始时前两份已释放,
# 但 log_softmax 的输出、它的梯度和 logits 的梯度都是 fp32(12 字节/位置)。再看每卡 batch 变小、打开检查点各省多少:

# %% tags=["nbval-check-output"]
by_batch = {ckpt: {b: estimate_training_memory(qwen, b, 2048, "bf16", 2, 4, activation_checkpointing=ckpt)
                   for b in (1, 2, 4, 8, 16)} for ckpt in (False, True)}
pd.DataFrame({f"检查点{'开' if ckpt else '关'}": {b: e.gib()["peak"] for b, e in row.items()}
              for ckpt, row in by_batch.items()}).rename_axis("每卡 batch → 峰值 GiB")

# %% tags=["nbval-check-output"]
lines = []
for ckpt, row in by_batch.items():
    one, sixteen = row[1].peak / GIB, row[16].peak / GIB
    per_sample = (sixteen - one) / 15
    lines.append(f"- 检查点{'开' if ckpt else '关'}:batch 1 → 16,峰值 {one:.2f} → {sixteen:.2f} GiB,只涨到 {sixteen / one:.1f} 倍;"
                 f"可以拆成固定的 {one - per_sample:.2f} GiB(其中模型状态 {row[1].model_states / GIB:.2f} GiB)"
                 f"加上每个样本 {per_sample:.2f} GiB(它的激活值和 logits 缓冲)。")
display(Markdown("\n".join(lines)))

# %% [markdown]
# 峰值是"固定开销 + 每个样本的开销",每个样本的那部分随 batch 线性增长。省显存的办法因此是**缩小 micro-batch、加大梯度累积**
# (6.1.4 验证过两者等价),全局 batch 不变。`llmtrain.memory.plan_for_card` 为每种显卡挑出放得下的最大每卡 batch;
# `code/pretrain.sh` 的 chapter 预设用的就是它(`GPU_MEM_GIB=24|48|80`,命令行版本是 `code/estimate_memory.py`)。
# "放得下"由 `fits` 判断:

# %%
print(inspect.getsource(fits))
rows = {}
for card in (24, 48, 80):
    for ckpt in (False, True):
        plan = plan_for_card(qwen, card, 2048, 16 * 4 * 4, 4, dtype="bf16", zero_stage=2, activation_checkpointing=ckpt)
        rows[(f"{card} GiB", "开" if ckpt else "关")] = plan.__dict__ if plan else {"per_device_batch": "放不下"}
pd.DataFrame(rows).T.rename_axis(["显卡", "检查点"])

# %% [markdown]
# 另一条路是不生成完整的 logits:Liger Kernel 的融合线性层 + 交叉熵(`--use_liger_kernel`,只能在 GPU 上用,需要另装 `liger-kernel`)
# 按块计算 loss 和梯度,logits 一项从几十 GiB 降到 1 GiB 左右:

# %% tags=["nbval-check-output"]
plain = estimates[True]
liger = estimate_training_memory(qwen, **textbook, activation_checkpointing=True, liger_kernel=True)
pd.DataFrame({"普通 loss": plain.gib(), "Liger 融合 loss": liger.gib()}).rename_axis("GiB / 卡")

# %% [markdown]
# 模型算得对不对?先在 CPU 上核对:`bench/memory_model.py` 真跑一步训练(前向、反向、AdamW 更新),每个配置一个新进程,
# 量这一步额外用了多少内存。量的是 **RSS**(resident set size,常驻内存:进程此刻真正占着的物理内存);
# `/proc/self/status` 里的 `VmHWM` 是 RSS 的峰值,更新前先把它清零,量完减去更新前的 RSS。
# CPU 上是 fp32 训练(没有混合精度),所以这里验证的是 fp32 的各项;bf16 的激活值公式由 `tests/test_memory.py`
# 逐个统计 autograd 保存的张量来核对。下图和表读的是基准保存的结果 `bench/memory_model_cpu.json`:

# %%
import matplotlib.pyplot as plt

bench_rows = json.loads((ROOT / "bench" / "memory_model_cpu.json").read_text())
fig, ax = plt.subplots(figsize=(5, 5))
for r in bench_rows:
    ax.scatter(r["measured_step_mib"], r["estimated_step_mib"], label=r["name"])
top = max(max(r["measured_step_mib"], r["estimated_step_mib"]) for r in bench_rows) * 1.1
ax.plot([0, top], [0, top], "k--", lw=1, label="estimate = measured")
ax.fill_between([0, top], [0, 0.8 * top], [0, 1.2 * top], color="grey", alpha=0.15, label="±20%")
ax.set_xlabel("measured: peak RSS of one step - RSS before (MiB)")
ax.set_ylabel("llmtrain.memory estimate (MiB)")
ax.legend(fontsize=7)
fig.savefig(IMAGES_DIR / "6.1_memory_model.png", dpi=120, bbox_inches="tight")
plt.close(fig)
display(Image(str(IMAGES_DIR / "6.1_memory_model.png")))
print(f"估计 / 实测: {min(r['ratio'] for r in bench_rows):.3f} – {max(r['ratio'] for r in bench_rows):.3f}")
pd.DataFrame(bench_rows)[["name", "estimated_step_mib", "measured_step_mib", "ratio"]]

# %% [markdown]
# CPU 上量不到的是 GPU 独有的部分:CUDA 的缓存分配器、DeepSpeed 的通信桶、CUDA/NCCL 上下文。
# 这些在一块 H200 上量过:用本课程的 `code/pretrain.sh` 跑教材的预训练任务(Qwen2.5-1.5B 结构、block 2048、bf16、ZeRO-2,单卡),
# 结果存在 `bench/results/gpu_h200_2026-11-30.json`。下表把它和本节的模型并排(模型的估计在这里现算):

# %%
gpu = json.loads((ROOT / "bench" / "results" / "gpu_h200_2026-11-30.json").read_text(encoding="utf-8"))
print(f"测量:{gpu['date']},{gpu['gpu']['count']} 块 {gpu['gpu']['name']}({gpu['gpu']['memory_mib'] / 1024:.0f} GiB),"
      f"驱动 {gpu['gpu']['driver']}")
print("版本:", ", ".join(f"{name} {version}" for name, version in gpu["versions"].items()))
job = gpu["job"]
h200 = []
for r in gpu["rows"]:
    e = estimate_training_memory(qwen, r["per_device_batch"], job["block_size"], job["precision"], job["zero_stage"],
                                 gpu["gpu"]["count"], activation_checkpointing=r["activation_checkpointing"],
                                 liger_kernel=r["liger"])
    h200.append({"设置 (每卡 batch x 梯度累积)": r["name"], "检查点": "开" if r["activation_checkpointing"] else "关",
                 "模型估计 GiB": round(e.peak / GIB, 2), "allocated GiB": r["allocated_gib"],
                 "allocated / 估计": round(r["allocated_gib"] / (e.peak / GIB), 3),
                 "reserved GiB": r["reserved_gib"], "reserved / allocated": round(r["reserved_gib"] / r["allocated_gib"], 2),
                 "nvidia-smi GiB": r["nvidia_smi_gib"]})
h200 = pd.DataFrame(h200)
h200

# %% tags=["nbval-check-output"]
deviation = (h200["allocated / 估计"] - 1).abs().max()
ratios = h200["reserved / allocated"]
chapter, expandable = gpu["rows"][0], gpu["rows"][1]
context = [r["nvidia_smi_gib"] - r["reserved_gib"] for r in gpu["rows"]]
display(Markdown(
    f"- 模型预测的是 **allocated** 峰值(`torch.cuda.max_memory_allocated`:张量实际占用的显存):{len(h200)} 个设置里"
    f"实测与估计最多相差 {deviation:.1%}。\n"
    f"- 显卡上被占住的更多。PyTorch 的缓存分配器把释放掉的显存块留着给下一次分配用,它向 CUDA 申请并一直占着的是 **reserved**"
    f"(`torch.cuda.max_memory_reserved`),是 allocated 的 {ratios.min():.2f}–{ratios.max():.2f} 倍:大小不一的块拼不严,留下碎片。\n"
    f"- 设 `PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True` 后,分配器可以把一段显存接着往后扩,碎片变少:"
    f"教材设置的 reserved 从 {chapter['reserved_gib']:.2f} 降到 {expandable['reserved_gib']:.2f} GiB"
    f"(allocated 的 {chapter['reserved_gib'] / chapter['allocated_gib']:.2f} 倍 → "
    f"{expandable['reserved_gib'] / expandable['allocated_gib']:.2f} 倍),allocated 不变。\n"
    f"- nvidia-smi 看到的还要比 reserved 多 {min(context):.2f}–{max(context):.2f} GiB:CUDA 上下文和 cuBLAS 的工作区。"))

# %% [markdown]
# 所以规划一张卡时,要拿"allocated 峰值 × 分配器的倍数 + CUDA 上下文"和显存比,而不是只拿模型估计的 allocated 峰值。
# 另外注意这是单卡的数字:单卡时 ZeRO 没有别的卡可切,模型状态全在这一张卡上,所以比上面 4 卡的表大。

# %% [markdown]
# ## 基座模型学到了什么
#
# 预训练只教模型"接着往下写"。下面考的都是 `make run` 训练的基座 `output/toy/pretrain`(6.2、6.3 的起点),
# 用 `llmtrain.notebook.load_toy_base` 加载。先用预训练语料里的说法考它:给出 "林晓雨的家乡是",看它能不能接上正确的地名。
# `llmtrain.evaluation.statement_completion_accuracy` 把 `eval.jsonl` 的每个问题改写成这样的开头
# ("林晓雨的家乡是哪里?" → "林晓雨的家乡是"),贪心续写,续写以正确答案开头就算对。

# %%
from llmtrain.evaluation import (
    format_scorecard, save_scorecard_row, scorecard_row, statement_completion_accuracy,
)
from llmtrain.grading import load_eval_questions
from llmtrain.notebook import load_toy_base

base_path, base_tokenizer, base = load_toy_base()
EVAL_FILE = str(SAMPLE / "eval.jsonl")
facts = statement_completion_accuracy(base, base_tokenizer, EVAL_FILE)
n_split = {split: sum(c["split"] == split for c in facts["completions"]) for split in ("sft_seen", "heldout")}
print(f"评测 {shown_path(base_path)}。续写事实陈述的准确率:sft_seen {facts['sft_seen']:.0%}({n_split['sft_seen']} 个事实),"
      f"heldout {facts['heldout']:.0%}({n_split['heldout']} 个事实)")
for split in ("sft_seen", "heldout"):
    for c in [c for c in facts["completions"] if c["split"] == split][:3]:
        print(f"  [{split:8s}] {c['prompt']} → {c['completion']!r}  答案 {c['answer']} {'✓' if c['correct'] else '✗'}")

# %% [markdown]
# SFT 还没开始,对这个基座来说两组人没有区别,唯一的差别是语料本身。数一数两组人各出现在多少篇文档里:

# %%
questions = load_eval_questions(EVAL_FILE)
people = {split: sorted({q.person for q in questions if q.split == split})
          for split in ("sft_seen", "heldout")}
for split, names in people.items():
    per_person = [sum(name in t for t in texts) for name in names]
    print(f"{split:8s}:{len(names)} 人,每人出现在 {min(per_person)}–{max(per_person)} 篇文档里")

# %% [markdown]
# ### EOS 教会了它在哪里停下
#
# 上面的续写在答案之后常常接着写下一件事:语料里的每篇传记正好写三件事(家乡、职业、水果),每件事一句话。
# 6.1.3 说过,加了 EOS 之后每篇文档的结尾都是一个要预测的 token。量一量基座在传记里各处预测 `<|endoftext|>` 的概率:
# 句子中间、第一句和第二句的句号之后(文档还没完),第三句的句号之后(文档结束)。

# %%
EOS_ID = base_tokenizer.eos_token_id
names = people["sft_seen"] + people["heldout"]  # 上一格:评测里的 40 个人
three_sentence_bios = [t for t in texts if t.count("。") == 3 and t.endswith("。") and any(n in t for n in names)]
(period,) = base_tokenizer("。", add_special_tokens=False)["input_ids"]  # 每个汉字、每个全角标点都是一个 token
p_by_place = {"句子中间": [], "第 1 句之后": [], "第 2 句之后": [], "第 3 句之后(文档结束)": []}
places = list(p_by_place)
with torch.no_grad():
    for start in range(0, len(three_sentence_bios), 64):
        chunk = [base_tokenizer(t, add_special_tokens=False)["input_ids"] for t in three_sentence_bios[start:start + 64]]
        width = max(map(len, chunk))
        ids = torch.tensor([c + [EOS_ID] * (width - len(c)) for c in chunk])
        mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in chunk])
        p_eos = torch.softmax(base(input_ids=ids, attention_mask=mask).logits.float(), -1)[..., EOS_ID]
        for row, c in enumerate(chunk):
            sentences_done = 0
            for pos, token in enumerate(c):
                if token == period:
                    sentences_done += 1
                    p_by_place[places[sentences_done]].append(p_eos[row, pos].item())
                else:
                    p_by_place["句子中间"].append(p_eos[row, pos].item())
mean_p = {place: sum(v) / len(v) for place, v in p_by_place.items()}
print(f"{len(three_sentence_bios)} 篇三句话的传记,基座预测下一个 token 是 <|endoftext|> 的平均概率:")
for place, p in mean_p.items():
    print(f"  {place:12s} {p:7.2%}({len(p_by_place[place]):,} 个位置)")
prompt = base_tokenizer("林晓雨", return_tensors="pt", add_special_tokens=False)
with torch.no_grad():
    out = base.generate(**prompt, max_new_tokens=60, do_sample=False, eos_token_id=EOS_ID, pad_token_id=EOS_ID)
continuation = out[0, prompt["input_ids"].shape[1]:].tolist()
stopped_at_eos = continuation[-1] == EOS_ID
print(f"贪心续写 \"林晓雨\"({len(continuation)} 个新 token,{'以 <|endoftext|> 停下' if stopped_at_eos else '写满上限仍未停'}):"
      + base_tokenizer.decode(continuation))

# %%
inside, first, second, end = mean_p.values()
display(Markdown(
    f"句子中间,基座几乎从不预测文档结束(平均 {inside:.2%});句号之后才会:第 1 句之后 {first:.0%},第 2 句之后 {second:.0%},"
    f"第 3 句之后 {end:.0%}。"
    + ("它学到的是\"一件事说完才可能结束,说得越多越该结束\"" if inside < first < second < end else
       "它学到的是\"说完一句才可能结束\"")
    + (",只是数不准(传记总是三句,第 2 句之后却已经有一多半的把握):" if second > 0.5 else ":")
    + ("贪心续写时说完一件事就生成了 `<|endoftext|>`,`generate` 在那里停下。" if stopped_at_eos and
       continuation.count(period) == 1 else
       "贪心续写在 `<|endoftext|>` 处停下。" if stopped_at_eos else "贪心续写没有在上限之内停下。")
    + "无论数得准不准,这个\"结束\"都是 EOS 教的:教材的数据没有 EOS,模型从没见过结束这个目标,续写只能一直写到 "
    "`max_new_tokens` 为止。"))

# %% [markdown]
# ### 一个事实要读多少遍?
#
# 基座能不能把事实存成"问得出来"的知识,取决于预训练怎么读这些事实。`make run` 的配方里每个事实读几百遍,
# 而且每一遍都是一篇新写的传记(说法和句序都不同);只把同几篇传记反复读,模型会把整段文字背下来,
# 换个开头就接不上了(Physics of Language Models 3.1 所说的"知识增强"要靠每次换一种写法)。
#
# 下面这个小实验(`llmtrain.toy.biography_ablation`,约 1 分钟)只用前 8 个人的传记,从头训练两个玩具模型,
# 两者读每个事实的**次数相同**:一个反复读每人同 6 篇传记,一个读每人 60 篇各不相同的传记,然后让它们补全这 8 个人的事实陈述。

# %%
from llmtrain.toy import biography_ablation

ablation = biography_ablation(distinct_bios=(6, 60), exposures=EXPOSURES, n_people=8, seed=0)
for distinct, acc in ablation.items():
    print(f"每人 {distinct:2d} 篇不同的传记 × {EXPOSURES // distinct:3d} 遍:补全事实陈述 {acc:.0%}")
fixed, fresh = ablation[6], ablation[60]
display(Markdown(
    f"同样读 {EXPOSURES} 遍,换着写的传记补全对 {fresh:.0%},反复读同 6 篇的 {fixed:.0%}"
    f"({'换着写的更好' if fresh > fixed else '反复读的不差' if fresh < fixed else '两者相同'})。"
    "次数太少时结论可能反过来:换着写的传记要读够遍数,模型才记得住每个事实;"
    "完整语料、多个种子上各个做法的对照见 README 的\"实测结果\"。"))

# %% [markdown]
# 能续写对的那些事实,已经存进了参数。接着用 6.2 的**成绩单**(`llmtrain.evaluation.scorecard_row`)考同一个模型:
# 同样的事实,这次是通过对话模板**提问**,回答必须给出答案并就此停下才算对;另外报告预训练验证集 `pretrain_valid.jsonl` 上的困惑度
# 和留出对话 `sft_valid.jsonl` 里助手回复部分的 loss。这一行成绩单存到本 notebook 的 `output/notebooks/6.1/scorecard.json`:

# %%
row = scorecard_row(base, base_tokenizer, EVAL_FILE, [str(SAMPLE / "pretrain_valid.jsonl")], [str(SAMPLE / "sft_valid.jsonl")])
save_scorecard_row(str(OUTPUT_DIR / "scorecard.json"), "base (6.1)", row)
display(Markdown(format_scorecard({"base (6.1)": row})))
for r in row["replies"][:3]:
    print(f"问: {r['question']}  答案: {r['answer']}\n答: {r['reply']!r}\n")

# %% [markdown]
# 它为什么会"接话",却答不出事实?看看预训练语料里有什么、没有什么:

# %%
all_people = people["sft_seen"] + people["heldout"]
chats = [t for t in texts if "<|im_start|>" in t]
chats_about_people = [t for t in chats if any(name in t for name in all_people)]
asked_in_corpus = [q.question for q in questions if any(q.question in t for t in texts)]
print(f"预训练语料 {len(texts)} 篇文档,其中 ChatML 对话 {len(chats)} 段;提到这 {len(all_people)} 个人的对话 {len(chats_about_people)} 段;"
      f"eval.jsonl 的 {len(questions)} 个问题原样出现在语料里的 {len(asked_in_corpus)} 个")
print(f"基座的回答以 <|im_end|> 结束的比例 {row['stopped']:.0%};问答准确率 sft_seen {row['sft_seen']:.0%},heldout {row['heldout']:.0%};"
      f"续写陈述句 sft_seen {facts['sft_seen']:.0%},heldout {facts['heldout']:.0%}")

# %%
never_asked = not chats_about_people and not asked_in_corpus
chat_first = tokenizer.decode(blocks[0]["input_ids"]).startswith("<|im_start|>")
seen = (f"它**没见过**的是关于这 {len(all_people)} 个人的问答:没有一段对话提到他们,也没有一个评测问题出现在语料里,"
        "他们的事实只以陈述句出现在传记里。" if never_asked else
        f"关于这 {len(all_people)} 个人,语料里有 {len(chats_about_people)} 段对话提到他们、"
        f"{len(asked_in_corpus)} 个评测问题原样出现。")
display(Markdown(
    f"基座**见过**对话这种形式:语料里有 {len(chats)} 段 ChatML 格式的日常对话"
    f"{'(6.1.3 打印的第 1 个 block 就以一段开头)' if chat_first else ''},"
    f"所以被提问时它会顺着模板往下写,{row['stopped']:.0%} 的回答以 `<|im_end|>` 收尾。{seen}"
    f"问答准确率因此是 sft_seen {row['sft_seen']:.0%}、heldout {row['heldout']:.0%};"
    f"而同样的事实写成陈述句的开头,它能接对 {facts['sft_seen']:.0%} / {facts['heldout']:.0%}。"
    "它学会的是'这句话怎么往下写',还没学会从一个问题找到存着的答案。"))

# %% [markdown]
# 让它学会回答,正是下一节 SFT 的任务;而 heldout 那一半的人 SFT 从不问起,6.2 的成绩单会告诉我们,
# 这些只在预训练里学到的知识,SFT 之后能不能被问出来。
#
# ## 小结
#
# | 教材的写法 | 本课程 |
# | --- | --- |
# | 文档之间不加分隔 | 每篇文档末尾加 EOS |
# | 语料不足一个 block 时静默出错 | 报错并给出 token 数 |
# | `IterableWrapper` + `tokenizer=` | 直接传 `Dataset` + `processing_class=` |
# | `WarmupLR` 让学习率预热后不再衰减 | Trainer 负责预热 + 衰减 |
# | 只算模型状态的显存表 | 加上激活值和 logits,按显卡挑每卡 batch 和梯度累积;在 H200 上核对 allocated 与 reserved |
# | `trust_remote_code=True`、启动时 `wandb.init` | 默认关闭,按需通过参数开启 |
# | CPU 上 DeepSpeed 多进程各自为战 | gloo 上真正的 2 进程 ZeRO-2 |

# %% [markdown]
# ## 练习
#
# 练习在 `exercises/ex6_1_pretrain.py`。每个函数的文档字符串只写约定(输入、输出、用文字说的规则),函数名和参数与
# llmtrain 里的实现相同。写完运行 `make check-exercises EX=6.1`:每个练习给出"通过""未实现",或者指出错在哪里、为什么。
#
# 1. `tokenize_with_eos`:分词,每篇文档末尾加 EOS。学到:拼接成块之后,模型只能靠 EOS 看出文档的边界;EOS 不是 pad
#    (评分程序用一个 pad 与 eos 不同的分词器检查,玩具分词器的 pad 恰好就是 eos),也不要让分词器自己加 BOS。
# 2. `group_texts`:把 `map` 交来的一批文档首尾拼接,切成正好 `block_size` 个 token 的块。学到:余数为什么丢掉、
#    EOS 要留在块里、labels 为什么不自己错开;也能解释为什么进了块的 EOS 比文档数少一点(每个 `map` 批次都丢掉自己的余数)。
# 3. `find_resume_checkpoint`:断点续训从哪个 checkpoint 继续。学到:只认完整的 checkpoint(Trainer 最后才写
#    `trainer_state.json`),按步数而不是按名字的字符串比较,目录非空却没有 checkpoint 时为什么要报错,
#    `--overwrite_output_dir` 与 `--resume_from_checkpoint` 各是什么意思(transformers 的 `get_last_checkpoint` 不检查完整性)。
# 4. `logits_bytes`:显存模型里"logits 与 loss"这一项的字节数。学到:在教材的 batch 下,大词表的 logits 为什么是显存的大头,
#    以及它为什么与训练精度无关。
#
# 评分程序认得常见错误并说明原因:漏了 EOS、用 pad 代替 EOS、多了 BOS、保留了余数、每篇文档单独切块、自己错开 labels、
# 按字符串排序 checkpoint、从不完整的 checkpoint 续训、非空目录不报错、只算了 bf16 的 logits 本身……
# 做完再对照 `code/llmtrain/pretrain_data.py`、`code/llmtrain/checkpoints.py` 与 `code/llmtrain/memory.py`。

# %% [markdown]
# ### 练习之后:课程的实现
#
# 练习 1、2 在 `llmtrain.pretrain_data` 里的实现(6.1.3 用的就是它们):

# %%
print(inspect.getsource(tokenize_with_eos))
print(inspect.getsource(group_texts))
