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
# # 6.1 模型预训练:用 transformers 从零训练一个迷你 Qwen2
#
# 第五章我们亲手写了 LLaMA 结构和训练循环。真正做项目时,大家更常用现成的框架:模型结构不必重写,
# 多卡训练、断点续训、日志这些"杂活"也有人替我们做好。本节跟着教材 6.1.1–6.1.5,用
# **transformers + datasets + DeepSpeed** 走一遍预训练的完整流程。
#
# 为了让每个单元都能在笔记本电脑的 CPU 上几分钟内跑完,我们把教材里的 Qwen2.5-1.5B 换成了
# **同一结构、尺寸缩小的玩具模型**,分词器则是在仓库自带的样例语料上现场训练的。
# 代码的写法与真实任务完全相同,换一个配置目录就能在 GPU 上训练真正的 1.5B 模型。
#
# 本 notebook 调用的函数都在 `code/llmtrain/` 里,每个单元会注明出处。

# %% tags=["parameters"]
# papermill 参数:玩具规模的设置(括号里是教材在 GPU 上的取值)
BLOCK_SIZE = 128  # 每个训练样本的 token 数(教材 2048)
BATCH_SIZE = 8  # 每步的样本数(教材每卡 16,梯度累积 4)
MAX_STEPS = 400  # 训练步数(教材按 epoch 训练)
LEARNING_RATE = 2e-3  # 小模型能承受更大的学习率(教材 1e-4)
SEED = 42
RUN_DEEPSPEED = True  # 是否在 6.1.5 里真的启动 2 个进程的 DeepSpeed 训练
DS_EPOCHS = 3

# %%
import json
import os
import shutil
from pathlib import Path

import datasets
import pandas as pd
import torch
from IPython.display import Image, display

from llmtrain import PROJECT_ROOT as ROOT
from llmtrain.toy import build_toy_assets, run_bash_script

TOY_DIR = ROOT / "artifacts" / "toy"  # 玩具分词器 + 配置,结构与下载的 Qwen2.5 目录相同
DATA = ROOT / "data" / "sample" / "pretrain.jsonl"
OUTPUT_DIR = ROOT / "output" / "notebooks" / "6.1"
IMAGES_DIR = Path(os.environ.get("COURSE_IMAGES_DIR", ROOT / "images"))
if not (TOY_DIR / "config.json").exists():
    build_toy_assets(str(TOY_DIR), [str(DATA)])
torch.manual_seed(SEED)
datasets.disable_progress_bars()  # keep the notebook's output readable
print("项目根目录:", ROOT.name, "| torch", torch.__version__, "| 设备: CPU,线程数", torch.get_num_threads())

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

# %%
# NBVAL_CHECK_OUTPUT
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

# %%
# NBVAL_CHECK_OUTPUT
model = AutoModelForCausalLM.from_config(config)
print(model)

# %% [markdown]
# 参数量可以直接数,也可以按结构写出公式(`llmtrain.modeling.qwen2_parameter_formula`):
# 词嵌入 $V d$(与输出层共享,只算一次),每层的注意力 $q: d^2+d$、$k,v: d\,d_{kv}+d_{kv}$(GQA 让 $d_{kv}$ 变窄)、$o: d^2$,
# 前馈层 $3\,d\,d_{ffn}$,两个 RMSNorm $2d$,最后再加一个 $d$。
# 1.5B 模型我们在 `meta` 设备上构建:只有形状、不分配内存,所以在笔记本上也能"数"出它的参数量。

# %%
# NBVAL_CHECK_OUTPUT
with torch.device("meta"):
    big = AutoModelForCausalLM.from_config(real)
for name, m, c in [("玩具模型", model, config), ("Qwen2.5-1.5B", big, real)]:
    n = count_parameters(m)
    print(f"{name:14s} 实测 {n:>13,d}  公式 {qwen2_parameter_formula(c):>13,d}  "
          f"(教材的记法: Total size={n / 2**20:.2f}M params)")

# %% [markdown]
# 分词器同样用 `AutoTokenizer.from_pretrained` 加载。玩具分词器是字节级 BPE(与 Qwen2.5 相同的算法),
# 词表 2048,带有 Qwen 的三个特殊 token:`<|endoftext|>`(文档结束,也用作 padding)、`<|im_start|>`、`<|im_end|>`(对话模板用,6.2 节会讲)。

# %%
# NBVAL_CHECK_OUTPUT
tokenizer = AutoTokenizer.from_pretrained(TOY_DIR)
print(type(tokenizer).__name__, "词表大小", len(tokenizer))
print("特殊 token:", {t: tokenizer.convert_tokens_to_ids(t) for t in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]})
ids = tokenizer("学习率决定了每一步参数更新的幅度。")["input_ids"]
print(len(ids), "个 token:", [tokenizer.decode([i]) for i in ids])

# %% [markdown]
# ## 6.1.3 预训练数据处理
#
# 预训练语料的格式与出门问问序列猴子数据集相同:每行一个 JSON 对象 `{"text": "..."}`。
# 仓库自带的 `data/sample/pretrain.jsonl` 是我们自己写的 100 篇中文短文。
# `llmtrain.pretrain_data.load_text_dataset` 用 `datasets.load_dataset("json")` 加载,并做了校验:
# 某一行不是合法 JSON、缺少字符串类型的 `text` 字段、文件为空时,会报出**文件名和行号**,而不是一串看不懂的 Arrow 报错。

# %%
# NBVAL_CHECK_OUTPUT
from llmtrain.pretrain_data import build_pretrain_dataset, group_texts, load_text_dataset, tokenize_with_eos

raw = load_text_dataset([str(DATA)])
print(raw)
print("列名:", raw.column_names)
print("第一篇:", raw[0]["text"][:60], "...")

# %% [markdown]
# 接下来分两步:
#
# 1. **分词**:`datasets.map(batched=True)` 批量调用分词器。与教材不同,我们在每篇文档末尾补上分词器的 EOS
#    (`llmtrain.pretrain_data.tokenize_with_eos`)。
# 2. **拼接切块**:预训练通常把很多篇文档首尾相接,再切成等长的 block,这样没有一个位置被浪费在 padding 上。
#    `group_texts` 每个 block 都恰好 `BLOCK_SIZE` 个 token,最后凑不满的部分丢弃;因果语言模型的 `labels` 就是 `input_ids`
#    (模型内部会自动错开一位)。
#
# 为什么要加 EOS?看一个例子:把三篇极短的"文档"拼起来切块。

# %%
# NBVAL_CHECK_OUTPUT
docs = ["今天下雨。", "一加一等于二。", "猫在睡觉。"]
chapter_style = {"input_ids": tokenizer(docs)["input_ids"]}  # 教材:不加 EOS
ours = tokenize_with_eos(docs, tokenizer)
print("教材做法:", tokenizer.decode(group_texts(chapter_style, 12)["input_ids"][0]))
print("本课程:  ", tokenizer.decode(group_texts(ours, 12)["input_ids"][0]))

# %% [markdown]
# 不加 EOS 时,"今天下雨。一加一等于二。"在模型看来就是一段连续的话,它会去学习一篇文档结尾和下一篇开头之间并不存在的联系;
# 加上 `<|endoftext|>` 后,模型能看到文档的边界,生成时也学会了"在哪里停下"。
# 现在处理整个样例语料(`llmtrain.pretrain_data.build_pretrain_dataset`,就是上面两步加上校验):

# %%
# NBVAL_CHECK_OUTPUT
blocks = build_pretrain_dataset(raw, tokenizer, block_size=BLOCK_SIZE)
eos_per_block = [ids.count(tokenizer.eos_token_id) for ids in blocks["input_ids"]]
print(blocks)
print(f"{len(blocks)} 个 block,每个 {len(blocks[0]['input_ids'])} 个 token;"
      f"block 内的文档边界(EOS)共 {sum(eos_per_block)} 处,教材的做法是 0 处")
print("第 1 个 block:\n" + tokenizer.decode(blocks[0]["input_ids"]))

# %% [markdown]
# 还有一个边界情况:如果语料总长还不够一个 block,教材的 `group_texts` 会悄悄返回长度不齐的样本(或者空数据集),
# 训练到一半才出错。我们的实现直接报错,告诉你有多少 token、一个 block 需要多少:

# %%
# NBVAL_CHECK_OUTPUT
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

# %%
from transformers import Trainer, TrainingArguments, default_data_collator

args = TrainingArguments(
    output_dir=str(OUTPUT_DIR / "trainer"),
    per_device_train_batch_size=BATCH_SIZE,
    max_steps=MAX_STEPS,
    learning_rate=LEARNING_RATE,
    warmup_steps=10,  # 先预热,再线性衰减到 0
    logging_steps=25,
    save_strategy="no",
    report_to="none",
    use_cpu=True,
    seed=SEED,
    disable_tqdm=True,
)
trainer = Trainer(
    model=model,
    args=args,
    train_dataset=blocks,
    processing_class=tokenizer,
    data_collator=default_data_collator,
)
loader = trainer.get_train_dataloader()
print("采样器:", type(loader.batch_sampler.sampler).__name__)
for epoch in range(2):
    loader.set_epoch(epoch)
    print(f"epoch {epoch} 的前两个 batch(block 序号):", list(loader.batch_sampler)[:2])

# %% [markdown]
# 每个 epoch 都重新打乱。开始训练(CPU 上约半分钟):

# %%
result = trainer.train()
print(f"{result.global_step} 步,用时 {result.metrics['train_runtime']:.1f} 秒")

# %% [markdown]
# loss 从约 $\ln 2048 \approx 7.6$(对 2048 个 token 均匀瞎猜)开始下降。`llmtrain.plotting.plot_loss` 从 `trainer.state.log_history` 画出曲线,
# 图存在 `images/` 下:

# %%
from llmtrain.plotting import plot_loss

losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
print(f"第一次记录的 loss {losses[0]:.2f},最后一次 {losses[-1]:.2f}")
display(Image(plot_loss(trainer.state.log_history, str(IMAGES_DIR / "6.1_loss.png"), "6.1 toy pretraining")))

# %% [markdown]
# 让训练好的模型续写几句(贪心解码,加一点重复惩罚)。它只见过 100 篇短文、约 7 千个 token:
# 开头常常能"背"出见过的句子,接着就语无伦次了(偶尔出现的 `�` 是半个汉字的字节)。
# 这正是小模型在小语料上反复训练的样子;真正的预训练用的是数百亿 token,每条数据只看一两遍。

# %%
model.eval()
for prompt in ["春天", "训练一个大模型", "学习率"]:
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=30, do_sample=False, repetition_penalty=1.2,
                             pad_token_id=tokenizer.pad_token_id)
    print(repr(tokenizer.decode(out[0], skip_special_tokens=False)))

# %% [markdown]
# ## 6.1.5 使用 DeepSpeed 实现分布式训练
#
# 真正的预训练要跑几天甚至几周,不适合放在 notebook 里,一般写成 Python 脚本,再用 shell 脚本设置超参数并启动。
# 仓库里的 `code/pretrain.py` 就是教材脚本的现代化版本:
#
# - 用 `HfArgumentParser` 同时解析三组参数:`ModelArguments`、`DataArguments`(`llmtrain.args`)和 transformers 的全部 `TrainingArguments`;
# - 用 logging 记录训练信息(多进程时只有主进程打印 INFO);
# - **断点续训**:输出目录里已有 checkpoint 时自动从最新的完整 checkpoint 继续
#   (`llmtrain.training.find_resume_checkpoint`);目录非空却没有 checkpoint 时报错,并提示 `--overwrite_output_dir`;
# - 追踪工具(wandb、swanlab、tensorboard)通过 `--report_to` 按需开启,默认不联网;
# - 日志里额外记录 tokens/s 和 MFU(`llmtrain.training.ThroughputCallback`):MFU = 6·N·(tokens/s) ÷ 硬件峰值算力。
#
# ### ZeRO-2 省了多少显存
#
# 混合精度 + Adam 训练时,每个参数要占:bf16 权重 2 字节、bf16 梯度 2 字节、优化器状态 12 字节
# (fp32 主权重、一阶矩、二阶矩各 4 字节)。普通数据并行每张卡都存一整份;ZeRO-1 把优化器状态切到 $N$ 张卡上,
# ZeRO-2 再切梯度,ZeRO-3 连权重也切。用 `llmtrain.memory.zero_memory_per_gpu` 算一下 Qwen2.5-1.5B(不含激活值):

# %%
# NBVAL_CHECK_OUTPUT
from llmtrain.memory import zero_memory_per_gpu

n_real = count_parameters(big)
pd.DataFrame(
    {f"{gpus} 卡, ZeRO-{stage}": {k: round(v / 2**30, 1) for k, v in zero_memory_per_gpu(n_real, gpus, stage).items()}
     for gpus in (2, 8) for stage in (0, 2, 3)}
).rename_axis("GiB / 卡")

# %% [markdown]
# 不切分时,1.5B 模型光是权重、梯度和优化器状态每张卡就要约 23 GiB;8 卡 ZeRO-2 降到约 5.4 GiB,省下的显存留给激活值和更大的 batch。
#
# ### DeepSpeed 配置
#
# `code/ds_config_zero2.json` 沿用教材的配置,值为 `"auto"` 的项由 Trainer 按命令行参数填写(学习率、batch size、是否 bf16……)。
# 唯一的改动:删掉了 `WarmupLR` 调度器。它预热结束后让学习率**一直停在最大值**,
# 而教材的命令行里 `--warmup_steps 200` 看起来像是"预热后衰减"。去掉它之后由 Trainer 负责调度(预热 + 线性衰减)。
# 下面用 DeepSpeed 自己的 `WarmupLR` 类和刚才 Trainer 实际用过的学习率对比一下:

# %%
from deepspeed.runtime.lr_schedules import WarmupLR

from llmtrain.plotting import plot_series

optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=LEARNING_RATE)
warmup_lr = WarmupLR(optimizer, warmup_min_lr=0.0, warmup_max_lr=LEARNING_RATE, warmup_num_steps=10)
deepspeed_lrs = []
for _ in range(MAX_STEPS):
    optimizer.step()
    warmup_lr.step()
    deepspeed_lrs.append(warmup_lr.get_last_lr()[0])
logged = [(e["step"], e["learning_rate"]) for e in trainer.state.log_history if "learning_rate" in e]
steps, trainer_lrs = zip(*logged)
print(f"第 {steps[-1]} 步的学习率: Trainer {trainer_lrs[-1]:.2e},WarmupLR {deepspeed_lrs[steps[-1] - 1]:.2e}")
display(Image(plot_series(
    {"DeepSpeed WarmupLR (chapter config)": (list(range(1, MAX_STEPS + 1)), deepspeed_lrs),
     "Trainer: warmup + linear decay (ours)": (list(steps), list(trainer_lrs))},
    str(IMAGES_DIR / "6.1_lr_schedule.png"), "step", "learning rate", "Learning-rate schedules")))

# %% [markdown]
# ### 启动脚本
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
# 没有 GPU 也能体验同一条路径:`PRESET=toy` 用玩具资产,由 `deepspeed` 启动器拉起 **2 个 CPU 进程**,
# 进程之间用 gloo 通信,ZeRO-2 把优化器状态和梯度切成两份,数据也在两个进程之间切分。
# (transformers 5 在 CPU 上默认会让每个进程都以为自己是唯一的进程;`llmtrain.training.parse_args` 先建立 gloo 的分布式状态再交给 Trainer,解决了这个问题。)

# %%
if RUN_DEEPSPEED:
    ds_out = OUTPUT_DIR / "deepspeed"
    shutil.rmtree(ds_out, ignore_errors=True)
    log = run_bash_script(ROOT / "code" / "pretrain.sh", PRESET="toy", OUTPUT_DIR=str(ds_out),
                          EPOCHS=str(DS_EPOCHS), SAVE_STEPS="1000")
    print("PRESET=toy bash code/pretrain.sh -> 成功")
    for line in log.splitlines():
        if "world size" in line or "documents ->" in line:
            print(line.split(" - ", 2)[-1])
    state = json.loads((ds_out / "trainer_state.json").read_text())
    ds_logs = [e for e in state["log_history"] if "loss" in e]
    print(f"{state['global_step']} 步,loss {ds_logs[0]['loss']:.2f} -> {ds_logs[-1]['loss']:.2f},"
          f"两进程合计约 {ds_logs[-1]['tokens_per_second']:,.0f} tokens/s,MFU {ds_logs[-1]['mfu']:.2f}")

# %% [markdown]
# 日志里两个进程都报告 `world size: 2`。保存下来的目录(模型权重 + 分词器)可以直接 `from_pretrained`,
# 下一节的 SFT 就从这样一个预训练好的模型出发。
#
# ## 小结
#
# | 教材的写法 | 本课程 |
# | --- | --- |
# | 文档之间不加分隔 | 每篇文档末尾加 EOS |
# | 语料不足一个 block 时静默出错 | 报错并给出 token 数 |
# | `IterableWrapper` + `tokenizer=` | 直接传 `Dataset` + `processing_class=` |
# | `WarmupLR` 让学习率预热后不再衰减 | Trainer 负责预热 + 衰减 |
# | `trust_remote_code=True`、启动时 `wandb.init` | 默认关闭,按需通过参数开启 |
# | CPU 上 DeepSpeed 多进程各自为战 | gloo 上真正的 2 进程 ZeRO-2 |
