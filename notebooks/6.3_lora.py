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
# # 6.3 高效微调:从零实现 LoRA,再用 peft 微调
#
# 全量微调要更新模型的每一个参数,还要为每个参数保存梯度和优化器状态。本节跟着教材 6.3.1–6.3.5:
# 先量一量全量微调到底贵在哪里,再讲 LoRA 的原理,**自己写一个 LoRA 层**(逐段读它的源码)并和 peft 的实现逐项核对,
# 最后用 peft + Trainer 在玩具模型上做一次 LoRA 微调,和全量 SFT 放在同一张成绩单上比较。
#
# 本节的 LoRA 实现在 `code/llmtrain/lora.py`。

# %% tags=["parameters"]
from llmtrain.toy import toy_preset

PRESET = toy_preset()  # code/presets/toy.env:PRESET=toy USE_LORA=1 bash code/finetune.sh 用的同一组取值
RANK = 8  # LoRA 的秩 r(教材:一般取 4、8、16)
ALPHA = 32  # 缩放系数 alpha,旁路的输出乘以 alpha / r(教材的 LoraConfig)
DROPOUT = 0.1  # 只作用在 LoRA 旁路上(教材的 LoraConfig)
EPOCHS = PRESET["TOY_SFT_LORA_EPOCHS"]
LEARNING_RATE = PRESET["TOY_SFT_LORA_LR"]  # LoRA 单独的学习率;全量 SFT 用 TOY_SFT_LR
SWEEP_LEARNING_RATES = [PRESET["TOY_SFT_LR"]]  # 6.3.5 里再用这些学习率各训练一次 LoRA(同样的 epoch 数):全量 SFT 的学习率
BATCH_SIZE = PRESET["TOY_SFT_BATCH_SIZE"] * PRESET["TOY_NUM_GPUS"]  # 和 6.2 一样:脚本两个进程合起来的 batch
WARMUP_STEPS = PRESET["TOY_SFT_WARMUP_STEPS"]
SEED = 42

# %%
import copy
import inspect
import math

import pandas as pd
import torch
from IPython.display import Image, Markdown, display
from transformers import AutoModelForCausalLM
from transformers.trainer_callback import PrinterCallback

from llmtrain import PROJECT_ROOT as ROOT
from llmtrain.notebook import fresh_output_dir, load_toy_base, setup_notebook, shown_path, toy_training_args

IMAGES_DIR = setup_notebook(SEED)  # 随机种子、关掉进度条和已知无关的警告;图存在 output/figures
SAMPLE = ROOT / "data" / "sample"
OUTPUT_DIR = fresh_output_dir("6.3")  # output/notebooks/6.3,每次运行先清空:里面的模型和成绩单都来自这一次运行
SCORECARD = OUTPUT_DIR / "scorecard.json"
PRETRAINED, tokenizer, base_model = load_toy_base()  # output/toy/pretrain:make run 训练的基座,也是全量 SFT 的起点
print(f"基座模型 {shown_path(PRETRAINED)},参数 {sum(p.numel() for p in base_model.parameters()):,} 个")

# %% [markdown]
# ## 6.3.1 高效微调方案
#
# 全量微调的代价在于:每个参数都要存梯度,Adam 还要为每个参数存两份状态。对资源有限的团队来说,
# 更现实的做法是**冻结原模型,只训练很少的新参数**。教材介绍了两类思路:
#
# - **Adapter Tuning**:在每个 Transformer 层里插入小的 Adapter 模块——先把维度 $d$ 投影到很小的 $m$($m \ll d$),
#   再投影回 $d$。只训练 Adapter。缺点是推理时多了这些层,计算变慢(推理延迟)。
# - **Prefix Tuning**(及其改进 P-Tuning):在输入前面加一段可训练的"虚拟 token"作为前缀,只训练前缀。
#   缺点是前缀占用了序列长度,能留给真实输入的长度变短了。
#
# LoRA 可以看作改进的 Adapter:它的旁路在训练后能**合并回原权重**,推理时没有任何额外计算。

# %% [markdown]
# 在玩具模型上量一量:同一批打包的对话,全量微调和教材的 LoRA($W_q, W_v$,r=8)各用 torch 的 AdamW 训练 3 步,
# 再从张量本身数出权重、梯度和优化器状态占多少字节(`llmtrain.benchmark.measure_training_steps`,
# `bench/lora_vs_full.py` 用的是同一个函数,另外在独立进程里测峰值内存):

# %%
from llmtrain.benchmark import measure_training_steps
from llmtrain.lora import add_peft_lora
from llmtrain.sft_data import build_sft_dataset, load_sft_dataset, make_collator

CHAPTER_TARGETS = ["q_proj", "v_proj"]  # 教材 6.3.5 的 target_modules:只在 W_q、W_v 上加 LoRA
train_set = build_sft_dataset(load_sft_dataset([str(SAMPLE / "sft.jsonl")]), tokenizer,
                              max_len=PRESET["TOY_SFT_BLOCK_SIZE"])
collate = make_collator(tokenizer, packing=True)
batches = [collate([train_set[i] for i in range(s, s + BATCH_SIZE)]) for s in range(0, 3 * BATCH_SIZE, BATCH_SIZE)]
measured = {}
for name in ("全量微调", "LoRA q_proj, v_proj, r=8"):
    m = AutoModelForCausalLM.from_pretrained(PRETRAINED)
    m.config.use_cache = False  # 打包训练:见 6.2
    if name.startswith("LoRA"):
        m = add_peft_lora(m, CHAPTER_TARGETS, RANK, ALPHA, DROPOUT)
    measured[name] = measure_training_steps(m, batches)
pd.DataFrame({name: {"可训练参数": f"{r['trainable_params']:,}", "权重 (KiB)": f"{r['weights'] / 2**10:,.0f}",
                     "梯度 (KiB)": f"{r['gradients'] / 2**10:,.0f}", "AdamW 状态 (KiB)": f"{r['optimizer'] / 2**10:,.0f}",
                     "AdamW 状态 / 可训练参数 (字节)": r["optimizer"] // r["trainable_params"]}
              for name, r in measured.items()}).T

# %%
full_state, lora_state = measured.values()
kib = lambda n: f"{n / 2**10:,.0f} KiB"  # noqa: E731
display(Markdown(
    f"AdamW 为每个可训练参数存两个 fp32 张量(一阶矩和二阶矩),正好 {full_state['optimizer'] // full_state['trainable_params']} 字节;"
    f"梯度也只为可训练参数存在。LoRA 冻结了原模型,这两项随可训练参数一起缩小:梯度 {kib(lora_state['gradients'])}、"
    f"AdamW 状态 {kib(lora_state['optimizer'])},全量微调是 {kib(full_state['gradients'])} 和 {kib(full_state['optimizer'])}。"
    f"权重本身一个字节也没少,反而多了 $A$、$B$ 的 {kib(lora_state['weights'] - full_state['weights'])}。"))

# %% [markdown]
# 在这个一百万参数的玩具上,每一项最多几 MB。放到 Qwen2.5-1.5B 上(混合精度 AdamW:fp32 主权重 + 两个矩,
# 每个可训练参数 12 字节)按同样的方式算:

# %% tags=["nbval-check-output"]
from llmtrain.lora import lora_parameter_count
from llmtrain.modeling import count_parameters, qwen2_5_1_5b_config

with torch.device("meta"):  # 只要形状,不分配内存
    big = AutoModelForCausalLM.from_config(qwen2_5_1_5b_config())
n_big, n_big_lora = count_parameters(big), lora_parameter_count(big, CHAPTER_TARGETS, RANK)
print(f"Qwen2.5-1.5B 参数 {n_big:,}(十进制 {n_big / 1e6:,.1f}M;教材脚本打印的 {n_big / 2**20:,.2f}M 是 n/2^20)")
print(f"全量微调:优化器状态 12 × {n_big:,} 字节 = {12 * n_big / 2**30:.1f} GiB,梯度(bf16)再加 {2 * n_big / 2**30:.1f} GiB")
print(f"LoRA q,v r=8:可训练 {n_big_lora:,} 个(全部参数的 {n_big_lora / n_big:.3%}),"
      f"优化器状态 {12 * n_big_lora / 2**20:.1f} MiB,梯度 {2 * n_big_lora / 2**20:.1f} MiB")

# %% [markdown]
# ## 6.3.2 LoRA 的想法:更新量是低秩的
#
# Aghajanyan 等(2020)发现,预训练模型在下游任务上微调时,只需要在一个维度很低的随机子空间里优化,
# 就能达到全量微调的大部分效果;能做到这一点的最小子空间维度叫**本征维度**(intrinsic dimension),
# 预训练越充分、模型越大,本征维度越低。LoRA 的作者(Hu 等,2021)据此进一步假设:微调时权重的**更新量**也有很低的
# "本征秩"(intrinsic rank),所以可以直接用低秩矩阵来表示它。
# 用教材的记号:微调后的参数 $\theta^D = \theta^D_0 + \theta^d M$,其中 $\theta^d$ 是低维的可训练参数,
# $M$ 把它投影回原来的 $D$ 维空间。LoRA 把这个想法落实到每个权重矩阵上。
#
# LoRA 的好处:不同任务各训练一份很小的 LoRA 模块,共享同一个基座;优化器只需要为少量参数保存状态;
# 训练后可以合并,没有推理延迟;还能和其他方法组合使用。

# %% [markdown]
# ## 6.3.3 LoRA 的原理
#
# 对一个预训练权重 $W_0 \in \mathbb{R}^{d \times k}$,LoRA 把它的更新写成两个小矩阵的乘积:
#
# $$W_0 + \Delta W = W_0 + BA,\quad B \in \mathbb{R}^{d \times r},\ A \in \mathbb{R}^{r \times k},\ r \ll \min(d, k)$$
#
# 前向计算变成 $h = W_0 x + \frac{\alpha}{r} B A x$。训练时 $W_0$ 冻结;$A$ 随机初始化,$B$ 初始化为 0,
# 所以训练开始时 $BA = 0$,模型与基座完全相同。$\frac{\alpha}{r}$ 是缩放系数;LoRA 论文的理由是,有了它,
# 换 $r$ 时不太需要重新调学习率。
#
# $BA$ 的秩最多是 $r$。拿玩具模型的 `q_proj`($128 \times 128$)做个例子:

# %% tags=["nbval-check-output"]
d, k, r = 128, 128, RANK
B, A = torch.randn(d, r), torch.randn(r, k)
print(f"ΔW = BA 的形状 {tuple((B @ A).shape)},秩 {torch.linalg.matrix_rank(B @ A).item()}")
print(f"直接训练 ΔW 需要 {d * k:,} 个参数,训练 B 和 A 只需要 {r * (d + k):,} 个")

# %% [markdown]
# 教材给出的参数量公式是 $\Theta = 2 \times L_{LoRA} \times d_{model} \times r$($L_{LoRA}$ 是加了 LoRA 的矩阵个数)。
# 它假设每个矩阵都是 $d_{model} \times d_{model}$ 的方阵。Qwen2 用了分组查询注意力(GQA),
# `k_proj`/`v_proj` 的输出只有 KV 头数 × 头维度,并不是方阵。把 LoRA 加到教材推荐的 $W_q, W_v$ 上,
# 比较教材公式和实际数出来的可训练参数(正确的公式是练习 3,放在练习之后):

# %% tags=["nbval-check-output"]
from llmtrain.lora import inject_lora

param_rows = {}
for name, config in [("玩具模型", base_model.config), ("Qwen2.5-1.5B", qwen2_5_1_5b_config())]:
    with torch.device("meta"):  # 只要形状,不分配内存
        m = AutoModelForCausalLM.from_config(config)
    L = 2 * config.num_hidden_layers
    total = count_parameters(m)
    inject_lora(m, CHAPTER_TARGETS, r=RANK)
    trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
    param_rows[name] = {"v_proj 形状": f"{config.hidden_size} → {m.model.layers[0].self_attn.v_proj.base.out_features}",
                  "教材公式 2·L·d·r": f"{2 * L * config.hidden_size * RANK:,}",
                  "实测可训练参数": f"{trainable:,}",
                  "占原模型参数": f"{trainable / total:.2%}"}
pd.DataFrame(param_rows)

# %% [markdown]
# 教材公式把 `v_proj` 当成了方阵,在 GQA 模型上高估了可训练参数。
# 表的最后一行是 LoRA 参数占**原模型**参数的比例(分母是加 LoRA 之前的参数量):在 1.5B 的模型上,它比在玩具上小得多。
#
# ## 6.3.4 LoRA 的代码实现
#
# peft 的实现流程是:(1)按 `target_modules` 找到要加 LoRA 的层;(2)把每个这样的 `nn.Linear` 换成 LoRA 层;
# (3)冻结其余参数,只训练 $A$、$B$。教材贴的是 peft 早期版本的 `LoraLayer`/`Linear`,它继承 `nn.Linear`,
# 新版 transformers 模型上已经不能直接用。`llmtrain.lora.LoraLinear` 是一个可以运行的小实现,它的构造函数做了下面几件事
# (写出这个层是本节的练习 1,源码放在练习之后)。对照教材的 `Linear`:
#
# - **包住原层,而不是继承它。** 教材的 `Linear` 继承 `nn.Linear`,替换时再把原层的 `weight`、`bias` 复制过去;
#   这里直接把原层存成 `self.base`,并把它的每个参数设成 `requires_grad_(False)`:权重和偏置都冻结。
# - **$A$、$B$ 是两个没有偏置的 `nn.Linear`**:`lora_A` 把 `in_features` 维压到 $r$ 维,`lora_B` 再放大到 `out_features` 维。
# - **`scaling = alpha / r`**:旁路的输出乘以它,对应公式里的 $\frac{\alpha}{r}$。
# - **dropout 只在旁路上**;比例为 0 时放一个 `nn.Identity()`(教材的写法是 `lambda x: x`,peft 新版也用 `nn.Identity()`)。
# - **$B$ 置零,$A$ 用 kaiming-uniform**,而教材(和 LoRA 论文正文)说的是"对 $A$ 使用随机高斯初始化"。
#   这里照的是 peft 的默认做法。看 peft 的源码(`LoraLayer.reset_lora_parameters`,`init_lora_weights=True` 是默认值):

# %%
import peft
from peft.tuners.lora.layer import LoraLayer

source = inspect.getsource(LoraLayer.reset_lora_parameters).splitlines()
end = next((i for i, line in enumerate(source) if "lora_embedding_A" in line), len(source))
print(f"peft {peft.__version__}:\n" + "\n".join(source[:end]))

# %% [markdown]
# 注释说得很清楚:默认的 $A$ 按 `nn.Linear` 的默认方式初始化(kaiming-uniform,`a=√5`),链接指向微软的 LoRA 参考代码
# (loralib)——论文作者自己的代码就是这样写的。想要论文正文的高斯初始化,peft 提供 `init_lora_weights="gaussian"`,
# 标准差是 $1/r$。两种做法的共同点才是要紧的:**$A$ 是随机的,$B$ 是 0**。在一个 `q_proj` 大小的层上看看初始值:

# %%
from llmtrain.lora import LoraLinear

layer = LoraLinear(torch.nn.Linear(128, 128), r=RANK, alpha=ALPHA)
a = layer.lora_A.weight
print(f"A {tuple(a.shape)}:取值在 [{a.min():.4f}, {a.max():.4f}],kaiming_uniform(a=√5) 的边界是 ±1/√in_features = "
      f"±{1 / math.sqrt(128):.4f};标准差 {a.std():.4f}(peft 的 gaussian 选项是 1/r = {1 / RANK:.4f})")
print(f"B {tuple(layer.lora_B.weight.shape)}:全为 0 = {bool((layer.lora_B.weight == 0).all())};"
      f"scaling = alpha / r = {ALPHA} / {RANK} = {layer.scaling}")
print("可训练:", [n for n, p in layer.named_parameters() if p.requires_grad],
      " 冻结:", [n for n, p in layer.named_parameters() if not p.requires_grad])

# %% [markdown]
# 为什么一个置零、另一个必须随机?看梯度。记 $s = \frac{\alpha}{r}$,$g$ 是损失对这一层输出 $h$ 的梯度:
#
# $$\frac{\partial L}{\partial B} = s\, g\, (A x)^\top, \qquad \frac{\partial L}{\partial A} = s\, B^\top g\, x^\top$$
#
# $B = 0$ 时 $A$ 的梯度恰好是 0,$B$ 的梯度却不是(因为 $Ax \neq 0$)。所以第一步只有 $B$ 在动;$B$ 离开 0 之后,
# $A$ 才开始收到梯度。要是 $A$ 和 $B$ 都是 0,两者的梯度永远是 0,什么也学不到;反过来($A = 0$、$B$ 随机)同样能让
# $BA = 0$ 并开始训练,只是第一步动的换成了 $A$,peft 和论文选的是 $B = 0$。在上面这个层上走两步 AdamW 验证:

# %%
x = torch.randn(4, 128)
optimizer = torch.optim.AdamW([p for p in layer.parameters() if p.requires_grad], lr=1e-3)
for step in (1, 2):
    optimizer.zero_grad()
    layer(x).pow(2).mean().backward()  # 随便一个损失:输出的平方
    print(f"第 {step} 步:A 的梯度最大绝对值 {layer.lora_A.weight.grad.abs().max():.2e},"
          f"B 的梯度最大绝对值 {layer.lora_B.weight.grad.abs().max():.2e}")
    optimizer.step()

# %% [markdown]
# 接下来是前向计算和合并。`forward` 就是上面的公式 $W_0 x + s \cdot B(A(\mathrm{dropout}(x)))$(教材只让读的那个 `elif` 分支);
# `merge` 把 $s \cdot BA$ 加进原权重,之后前向只算一次 $W x$;`unmerge` 再把它减回去。
#
# 最后是"替换"这一步。`llmtrain.lora.inject_lora`(练习 2)先用 `check_targets` 按名字找层(列表里的名字匹配模块名的结尾,
# 字符串则按正则完整匹配,和教材描述的 peft 一样;匹配不到或者不是线性层时报错),然后冻结整个模型,
# 再用 `setattr` 把父模块上的那个属性换成包住原层的 `LoraLinear`。
#
# 注入到一个玩具模型的副本里,看看结构和可训练参数;$B = 0$,所以输出和基座一模一样:

# %% tags=["nbval-check-output"]
from llmtrain.lora import lora_layers, parameter_summary

ours = inject_lora(copy.deepcopy(base_model), CHAPTER_TARGETS, r=RANK, alpha=ALPHA, dropout=DROPOUT)
print(ours.model.layers[0].self_attn)
print(parameter_summary(ours))
print("可训练的参数:", sorted({n.split(".", 4)[-1] for n, p in ours.named_parameters() if p.requires_grad}))
ids = tokenizer("春天来得很慢。", return_tensors="pt").input_ids
with torch.no_grad():
    print("B = 0 时与基座的最大 logits 差:", (ours(ids).logits - base_model(ids).logits).abs().max().item())

# %%
n_base, n_adapter = count_parameters(base_model), sum(p.numel() for p in ours.parameters() if p.requires_grad)
with torch.no_grad():
    base_logits = base_model(ids).logits
print(f"上面比较的 logits 本身:{tuple(base_logits.shape)},最大绝对值 {base_logits.abs().max():.2f},差是 0.0:B = 0 的旁路一点也没改变输出")
print(f"trainable% 的分母是加了 LoRA 之后的全部参数:{n_adapter:,} / {n_base + n_adapter:,} = {n_adapter / (n_base + n_adapter):.4%};"
      f"前面表里的 {n_adapter / n_base:.2%} 除的是原模型的 {n_base:,} 个参数")

# %% [markdown]
# ### 和 peft 核对
#
# dropout 只在训练模式下起作用(训练时按 `DROPOUT` 的比例随机把旁路的输入置零),推理和下面的核对都在 eval 模式,它什么也不做。
# `dropout=0` 时我们和 peft 都不建 `nn.Dropout`,而是放一个 `nn.Identity()`(peft 的 `LoraLayer.update_layer`
# 就是这样写的),所以在 `lora_dropout=0.0` 的配置里打印出来的是 `lora_dropout: Identity()`,并不是漏掉了 dropout。
#
# 用 peft 的 `get_peft_model` 在同一个基座上建一个同样配置的 LoRA 模型(dropout 设为 0,两边的前向计算才能逐位比较),
# 把 $B$ 随机化(否则两边都是 0,比不出什么),再用 `llmtrain.lora.copy_lora_from_peft` 把 peft 的 $A$、$B$ 复制到我们的模型里。
# 两边的输出应当一致;合并(merge)、取消合并(unmerge)后也应当一致(`tests/test_lora.py` 还核对了几步训练之后两边仍然一致):

# %% tags=["nbval-check-output"]
from peft import LoraConfig, get_peft_model

from llmtrain.lora import copy_lora_from_peft

theirs = get_peft_model(copy.deepcopy(base_model), LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                                                              target_modules=CHAPTER_TARGETS, task_type="CAUSAL_LM"))
for name, p in theirs.named_parameters():
    if "lora_B" in name:
        torch.nn.init.normal_(p, std=0.02)
print("从 peft 复制的张量数:", copy_lora_from_peft(theirs, ours))
ours.eval(), theirs.eval()  # inject_lora 新建的 Dropout 默认处于训练模式;核对在 eval 模式(dropout 不起作用)下进行
print("可训练参数一样多:", sum(p.numel() for p in ours.parameters() if p.requires_grad)
      == sum(p.numel() for p in theirs.parameters() if p.requires_grad))
with torch.no_grad():
    ref = theirs(ids).logits
    checks = {"我们的 LoRA vs peft": ours(ids).logits}
    for lora_layer in lora_layers(ours):
        lora_layer.merge()
    checks["merge 之后"] = ours(ids).logits
    for lora_layer in lora_layers(ours):
        lora_layer.unmerge()
    checks["unmerge 之后"] = ours(ids).logits
    checks["peft merge_and_unload"] = copy.deepcopy(theirs).merge_and_unload()(ids).logits
for name, logits in checks.items():
    print(f"{name:24s} 与 peft 的最大 logits 差 ≤ 1e-5: {(logits - ref).abs().max().item() <= 1e-5}")

# %% [markdown]
# 这个核对有没有分辨力,要看被比较的东西有多大:如果 LoRA 旁路对输出的改变本身就小于 1e-5,两边写错了也会"一致"。
# 把 peft 模型与基座之差(旁路的作用)和上面四个差值并排打印:

# %%
lora_effect = (ref - base_logits).abs().max().item()
gaps = {name: (logits - ref).abs().max().item() for name, logits in checks.items()}
print(f"LoRA 旁路(B 随机化之后)让 logits 改变了最多 {lora_effect:.2e};logits 本身最大绝对值 {ref.abs().max():.2f}")
for name, gap in gaps.items():
    print(f"  {name:24s} 与 peft 之差 {gap:.1e}")
display(Markdown(f"四个差值最大 {max(gaps.values()):.1e},比旁路的作用 {lora_effect:.1e} 小 "
                 f"{math.floor(math.log10(lora_effect / max(max(gaps.values()), 1e-12)))} 个数量级以上;"
                 "缩放系数、$A$ 与 $B$ 的位置或者合并的符号只要写错一处,差值就会和旁路的作用同一个量级。"))

# %% [markdown]
# 合并之后,LoRA 层就是一个普通的线性层,推理没有额外开销——这正是它相对 Adapter 的优势。
#
# ## 6.3.5 使用 peft 实现 LoRA 微调
#
# 实际训练时我们直接用 peft。`llmtrain.lora.add_peft_lora` 先检查 `target_modules` 确实能匹配到线性层
# (匹配不到时列出模型里有哪些线性层),再调用 `get_peft_model`;如果开了梯度检查点,还要调用
# `enable_input_require_grads()`,否则会报 "element 0 of tensors does not require grad"。
# 数据和 6.2 节相同(ChatML + 只监督回答 + 打包),训练器也相同(`llmtrain.training.build_trainer`),
# 只是学习率和 epoch 数是 LoRA 自己的(玩具预设 `code/presets/toy.env`,和 `make run` 里的 LoRA SFT 相同)。
#
# 还有一处和教材不同:LoRA 加在**每个线性层**上(注意力的 q、k、v、o 和 MLP 的 gate、up、down,预设里的
# `TOY_LORA_TARGETS`),而不只是 $W_q, W_v$。QLoRA 的论文(Dettmers 等,2023)发现要在所有线性层上加适配器,
# LoRA 才追得上全量微调;在这个玩具上是不是这样,后面"加在哪些层上"一节用教材的 q、v 再训练一次,并读出几个种子上的结果。

# %%
from llmtrain.training import build_trainer


TARGETS = PRESET["TOY_LORA_TARGETS"].split(",")  # 每个线性层;make run 的 LoRA SFT 用的同一组


def train_lora(learning_rate: float, name: str, base=None, targets=TARGETS):
    """教材 6.3.5 的做法:基座(默认 fp32 的 PRETRAINED)+ get_peft_model(经 add_peft_lora)+ Trainer;只保存 adapter。"""
    base = AutoModelForCausalLM.from_pretrained(PRETRAINED) if base is None else base
    model = add_peft_lora(base, targets, RANK, ALPHA, DROPOUT)
    args = toy_training_args(OUTPUT_DIR / name, per_device_train_batch_size=BATCH_SIZE, num_train_epochs=EPOCHS,
                             learning_rate=learning_rate, warmup_steps=WARMUP_STEPS, seed=SEED)
    trainer = build_trainer(model, args, tokenizer, train_set, data_collator=collate)
    trainer.remove_callback(PrinterCallback)  # 不逐条打印日志;loss 在 trainer.state.log_history 里
    trainer.train()
    trainer.save_model()  # PeftModel 只保存 A、B 和 adapter_config.json
    trainer.model.config.use_cache = True  # build_trainer 为打包训练关掉了 KV cache;生成时打开
    return trainer


print(f"LoRA:学习率 {LEARNING_RATE:g},{EPOCHS} 个 epoch;全量 SFT(make run):学习率 {PRESET['TOY_SFT_LR']:g},"
      f"{PRESET['TOY_SFT_EPOCHS']} 个 epoch;两者每步都是 {BATCH_SIZE} 条对话,预热 {WARMUP_STEPS} 步")
lora_trainer = train_lora(LEARNING_RATE, "lora")
runtime = lora_trainer.state.log_history[-1]["train_runtime"]
n_trainable = sum(p.numel() for p in lora_trainer.model.parameters() if p.requires_grad)
adapter_bytes = (OUTPUT_DIR / "lora" / "adapter_model.safetensors").stat().st_size
print(f"{lora_trainer.state.global_step} 步,用时 {runtime:.1f} 秒,可训练参数 {n_trainable:,};"
      f"保存的 adapter_model.safetensors {adapter_bytes / 2**10:.0f} KiB")

# %% [markdown]
# 把这次的 loss 曲线和全量 SFT 的画在一起。全量 SFT 的曲线来自 `make run` 训练的 `output/toy/sft/trainer_state.json`
# (`PRESET=toy bash code/finetune.sh`,2 个 DeepSpeed 进程;还不存在时 `require_toy_model` 会告诉你先运行 `make run`),
# 和 LoRA 同一个基座、同样的数据和每步对话数。横轴用 epoch,两条曲线的 epoch 数不同:

# %%
from llmtrain.plotting import plot_log_histories, read_log_history
from llmtrain.toy_run import require_toy_model

SFT = require_toy_model("sft")
sft_history = read_log_history(str(SFT / "trainer_state.json"))
curves = {f"LoRA r={RANK}, lr {LEARNING_RATE:g} (this notebook)": lora_trainer.state.log_history,
          f"full SFT, lr {PRESET['TOY_SFT_LR']:g} (make run: output/toy/sft)": sft_history}
for name, history in curves.items():
    losses = [e["loss"] for e in history if "loss" in e]
    print(f"{name}: 第一次记录的 loss {losses[0]:.2f},最后一次 {losses[-1]:.2f}")
print(f"ln(词表大小) = {math.log(len(tokenizer)):.2f}")
display(Image(plot_log_histories(curves, str(IMAGES_DIR / "6.3_lora_loss.png"),
                                 "6.3 toy SFT: LoRA (every linear layer) vs full fine-tuning")))

# %%
from llmtrain.evaluation import mean_token_loss

start_loss = mean_token_loss(base_model, [train_set[i] for i in range(len(train_set))])  # 训练前:基座在 SFT 数据的回答上
lora_logs = [e for e in lora_trainer.state.log_history if "loss" in e]
sft_logs = [e for e in sft_history if "loss" in e]
ln_vocab = math.log(len(tokenizer))
print(f"训练前,基座在 SFT 数据回答 token 上的平均 loss {start_loss:.2f}(两种微调共同的起点;均匀乱猜是 ln V = {ln_vocab:.2f})")
for name, logs in [("LoRA", lora_logs), ("全量 SFT", sft_logs)]:
    print(f"{name:8s} 第一次记录在第 {logs[0]['step']} 步:loss {logs[0]['loss']:.2f}(前 {logs[0]['step']} 步的平均),"
          f"此时学习率 {logs[0]['learning_rate']:.1e};最后一次 {logs[-1]['loss']:.2f}")

# %%
pretrain_docs = (SAMPLE / "pretrain.jsonl").read_text(encoding="utf-8").splitlines()
n_chatml = sum("<|im_start|>" in line for line in pretrain_docs)
lr_ratio = lora_logs[0]["learning_rate"] / sft_logs[0]["learning_rate"]
display(Markdown(
    f"两条曲线的第一个点不是起点:Trainer 每 {lora_logs[0]['step']} 步记一次,记下的是这几步 loss 的平均。"
    f"共同的起点是基座的 {start_loss:.2f},"
    + (f"已经低于乱猜的 {ln_vocab:.2f},因为预训练语料的 {len(pretrain_docs)} 篇文档里有 {n_chatml} 篇 ChatML 对话,"
       "基座认得对话模板。" if start_loss < ln_vocab else f"并不比乱猜的 {ln_vocab:.2f} 低。")
    + f"LoRA 的第一个点({lora_logs[0]['loss']:.2f})比全量 SFT 的({sft_logs[0]['loss']:.2f})"
    f"{'低' if lora_logs[0]['loss'] < sft_logs[0]['loss'] else '高'},"
    f"是因为两者都在预热,而 LoRA 的学习率是全量 SFT 的 {lr_ratio:.0f} 倍:前几步里它已经走得更远,"
    "并不说明 LoRA 的起点更好。"
    f"最后一次记录,全量 SFT {sft_logs[-1]['loss']:.2f},LoRA {lora_logs[-1]['loss']:.2f}"
    f"(LoRA 训练 {EPOCHS} 个 epoch,全量 {PRESET['TOY_SFT_EPOCHS']} 个;LoRA 的训练 loss 还带着旁路上 dropout 的噪声)。"))

# %% [markdown]
# 训练得到的是 adapter:`save_model` 只保存 $A$、$B$ 和配置(文件大小打印在训练那一格)。部署时可以
# `merge_and_unload()` 合并成一个普通模型,和任何 transformers 模型一样保存、加载。合并后问一句闲聊、一道加法题:

# %%
from llmtrain.generation import chat
from llmtrain.grading import arithmetic_reward

merged = copy.deepcopy(lora_trainer.model).merge_and_unload()  # 复制一份再合并,训练好的 PeftModel 保持原样
print(type(merged).__name__, "里还有 LoRA 层吗:", any("lora" in n for n, _ in merged.named_parameters()))
for q in ["你好", "3加5等于几?"]:
    reply = chat(merged, tokenizer, q, max_new_tokens=24)
    print(f"问: {q}  LoRA 模型答: {reply!r}")
print(f"3加5 {'答对' if arithmetic_reward(reply, '8') else '答错'}了。这道题不在 SFT 数据里;"
      "6.2 把 SFT 数据里的加法题和没见过的加法题各考了一遍")

# %% [markdown]
# ### 成绩单:LoRA 和全量 SFT 并排
#
# 用 6.2 的成绩单(`llmtrain.evaluation.scorecard_row`:120 个问题,贪心生成,严格判分)考合并后的 LoRA 模型,
# 也考 `make run` 的全量 SFT 模型,两行都写进本节自己的 `output/notebooks/6.3/scorecard.json`:

# %%
from llmtrain.evaluation import (
    format_scorecard, heldout_perplexity, save_scorecard_row, scorecard_row, wrong_person_replies,
)
from llmtrain.grading import load_people

TOY_STYLE_SUFFIX = PRESET["TOY_STYLE_SUFFIX"]  # 6.4 的结尾句:成绩单判分时先去掉它


def score(model, name: str) -> dict:
    """考一个模型,把这一行写进本节的成绩单;和 make run 一样,6.4 教的结尾句先去掉再判分。"""
    row = scorecard_row(model, tokenizer, str(SAMPLE / "eval.jsonl"), [str(SAMPLE / "pretrain_valid.jsonl")],
                        [str(SAMPLE / "sft_valid.jsonl")], style_suffix=TOY_STYLE_SUFFIX)
    save_scorecard_row(str(SCORECARD), name, row)
    return row


full_row = score(AutoModelForCausalLM.from_pretrained(SFT), "full SFT (6.2)")
lora_row = score(merged, "LoRA SFT (6.3)")
display(Markdown(format_scorecard({"full SFT (6.2)": full_row, "LoRA SFT (6.3)": lora_row})))
for split in ("sft_seen", "heldout"):
    shown = [g for g in lora_row["replies"] if g["split"] == split][:2]
    for g in shown:
        print(f"[{split}] 问: {g['question']}  答案: {g['answer']}  LoRA 答: {g['reply']!r}  "
              f"{'✓' if g['correct'] else '✗'}")

# %%
pct = lambda v: f"{round(100 * v)}%"  # noqa: E731  (和表格一样取整到百分点)


def versus(a: float, b: float) -> str:
    """按表格显示的整数百分点比较。"""
    a, b = round(100 * a), round(100 * b)
    return "高于" if a > b else "低于" if a < b else "等于"


PEOPLE = load_people(str(SAMPLE / "eval.jsonl"))  # 这个世界的全部人名:判分时回答里不能换成别人
wrong = {split: wrong_person_replies(lora_row, PEOPLE, split) for split in ("sft_seen", "heldout")}
n_total = sum(p.numel() for p in merged.parameters())
base_ppl = heldout_perplexity(base_model, tokenizer, [str(SAMPLE / "pretrain_valid.jsonl")])
display(Markdown(
    f"**这是一次运行**(SEED={SEED},一个种子)的数字,下一小节再看几个种子:\n\n"
    f"- **格式。** LoRA 只训练 {n_trainable:,} 个参数(原模型 {n_total:,} 个参数的 {n_trainable / n_total:.1%}),"
    f"回答在 `<|im_end|>` 处停下的比例 {pct(lora_row['stopped'])},全量 SFT {pct(full_row['stopped'])}。\n"
    f"- **问谁答谁。** SFT 问过的问题(sft_seen):LoRA {pct(lora_row['sft_seen'])},"
    f"{versus(lora_row['sft_seen'], full_row['sft_seen'])}全量 SFT 的 {pct(full_row['sft_seen'])};"
    f"只在预训练里出现过的问题(heldout):LoRA {pct(lora_row['heldout'])},"
    f"{versus(lora_row['heldout'], full_row['heldout'])}全量 SFT 的 {pct(full_row['heldout'])}。"
    f"留出对话的助手 loss(越低越好):LoRA {lora_row['assistant_loss']:.3f},全量 SFT {full_row['assistant_loss']:.3f}。\n"
    f"- **答错的在说什么。** LoRA 答错的 sft_seen 问题 {wrong['sft_seen']['wrong']} 个,其中 "
    f"{wrong['sft_seen']['other_person']} 个说出的名字不是被问的人;heldout 答错 {wrong['heldout']['wrong']} 个,其中 "
    f"{wrong['heldout']['other_person']} 个说出的名字不是被问的人(6.2 讲过这条判分规则)。\n"
    f"- **忘掉了多少。** 留出短文(预训练式的文字)的困惑度:基座 {base_ppl:.0f},全量 SFT {full_row['heldout_ppl']:.0f},"
    f"LoRA {lora_row['heldout_ppl']:.0f}。"
    + ("两种微调都让基座写不好它读过的那种文字了(6.2 讲过,这是遗忘),"
       + ("LoRA 忘得少:它冻结了原权重,只加了一个低秩的修改。" if lora_row["heldout_ppl"] < full_row["heldout_ppl"]
          else "这一次 LoRA 并没有忘得更少。")
       if min(lora_row["heldout_ppl"], full_row["heldout_ppl"]) > base_ppl else "")))

# %% [markdown]
# 两行的训练方式不完全相同:全量 SFT 是 `make run` 用 2 个 DeepSpeed 进程训练的,LoRA 是本 notebook 在一个进程里训练的
# (每步的对话数相同;LoRA 的训练 loss 还带着旁路上的 dropout)。教材最后的提醒(LoRA 擅长适应任务和格式,不适合注入大量新知识)在这里没有被检验:
# SFT 数据问到的事实都在预训练语料里,两种微调都没有学新事实,比的是"把已有的知识按问答格式调出来"。
#
# ### 换几个种子:`bench/lora_sweep.py`
#
# 一次运行的几个百分点说明不了什么:换一个种子,预训练出的基座、数据的顺序、LoRA 的初始 $A$ 都会变。
# `bench/lora_sweep.py` 对每个种子先用 `make run` 的命令训练**它自己的**基座(`PRESET=toy SEED=N bash code/pretrain.sh`),
# 再在这个基座上用同一个启动脚本做全量 SFT 和 LoRA SFT(`PRESET=toy [USE_LORA=1] bash code/finetune.sh`,
# 2 个 DeepSpeed 进程,LoRA 取几个学习率、两组目标层),每个模型都用 `make run` 的成绩单考一遍。结果在仓库里的
# `bench/lora_sweep.json`。先看预设的两行(全量 SFT 与每个线性层上的 LoRA):

# %%
import json

sweep_results = json.loads((ROOT / "bench" / "lora_sweep.json").read_text(encoding="utf-8"))
print(f"bench/lora_sweep.json:{sweep_results['date']} · {sweep_results['machine']} · 用时 {sweep_results['minutes']} 分钟")
print("版本:", ", ".join(f"{k} {v}" for k, v in sweep_results["versions"].items()))
ALL_LAYERS, QV = "every linear layer", "q_proj,v_proj"


def bench_rows(stage: str, targets: str | None = None, lr: str | None = None) -> dict[int, dict]:
    """{seed: row} of one setting of the sweep."""
    return {r["seed"]: r for r in sweep_results["rows"] if r["stage"] == stage
            and (targets is None or r.get("targets") == targets) and (lr is None or float(r["lr"]) == float(lr))}


bench_base, bench_full = bench_rows("base"), bench_rows("full")
bench_lora = bench_rows("lora", ALL_LAYERS, LEARNING_RATE)
seeds = [seed for seed in bench_full if seed in bench_lora]
per_seed = pd.DataFrame({seed: {
    "全量 SFT seen": pct(bench_full[seed]["sft_seen"]), "全量 SFT heldout": pct(bench_full[seed]["heldout"]),
    f"LoRA seen": pct(bench_lora[seed]["sft_seen"]), f"LoRA heldout": pct(bench_lora[seed]["heldout"]),
    "ppl 基座": f"{bench_base[seed]['heldout_ppl']:.0f}", "ppl 全量 SFT": f"{bench_full[seed]['heldout_ppl']:.0f}",
    "ppl LoRA": f"{bench_lora[seed]['heldout_ppl']:.0f}"} for seed in seeds}).T.rename_axis("种子")
print(f"LoRA:每个线性层,r={RANK},学习率 {LEARNING_RATE:g},{PRESET['TOY_SFT_LORA_EPOCHS']} 个 epoch;"
      f"全量 SFT:学习率 {PRESET['TOY_SFT_LR']:g},{PRESET['TOY_SFT_EPOCHS']} 个 epoch")
per_seed

# %%
gaps = {split: [round(100 * bench_lora[s][split]) - round(100 * bench_full[s][split]) for s in seeds]
        for split in ("sft_seen", "heldout")}


def gap_words(values: list[int]) -> str:
    """LoRA 减全量 SFT 的百分点,几个种子的范围说成一句话。"""
    if all(v < 0 for v in values):
        return f"每个种子都低于全量 SFT({min(values)} 到 {max(values)} 个百分点)"
    if all(v > 0 for v in values):
        return f"每个种子都高于全量 SFT(+{min(values)} 到 +{max(values)} 个百分点)"
    if all(v == 0 for v in values):
        return "每个种子都和全量 SFT 相同"
    return f"和全量 SFT 互有高低(差 {min(values):+d} 到 {max(values):+d} 个百分点)"


forgets_less = all(bench_lora[s]["heldout_ppl"] < bench_full[s]["heldout_ppl"] for s in seeds)
display(Markdown(
    f"{len(seeds)} 个种子上,LoRA 的 sft_seen {gap_words(gaps['sft_seen'])},heldout {gap_words(gaps['heldout'])}。"
    f"本节那一次运行的差是 {round(100 * lora_row['heldout']) - round(100 * full_row['heldout']):+d} 个百分点(heldout)。"
    + ("留出短文的困惑度在每个种子上都是 LoRA 低于全量 SFT:LoRA 忘得少。" if forgets_less else
       "留出短文的困惑度并不是每个种子都是 LoRA 更低。")
    + "这就是\"在这个玩具上 LoRA 与全量 SFT 相比如何\"的答案;一次运行的差距落在种子之间的起伏里时,不能单独拿来下结论。"))

# %% [markdown]
# ### 学习率要单独测
#
# LoRA 的学习率要单独定,不能默认照搬全量微调的。先在本 notebook 里**再训练一次**(一个种子、一次运行):
# 同一个 LoRA 配置、同样的 epoch 数,只把学习率换成全量 SFT 的,看 loss 和成绩单怎么变:

# %%
sweep = {LEARNING_RATE: (lora_trainer, lora_row)}
for lr in sorted(set(SWEEP_LEARNING_RATES) - {LEARNING_RATE}):
    trainer = train_lora(lr, f"lora-lr{lr:g}")
    sweep[lr] = (trainer, score(copy.deepcopy(trainer.model).merge_and_unload(), f"LoRA SFT, lr {lr:g}"))
sweep = dict(sorted(sweep.items()))
table = {}
for lr, (trainer, row) in sweep.items():
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    table[f"lr {lr:g}(一次运行)"] = {"最后一次 loss": f"{losses[-1]:.2f}", "sft_seen": pct(row["sft_seen"]),
                                  "heldout": pct(row["heldout"]), "助手 loss": f"{row['assistant_loss']:.3f}"}
display(pd.DataFrame(table).T)
display(Image(plot_log_histories(
    {f"LoRA lr {lr:g}": trainer.state.log_history for lr, (trainer, _) in sweep.items()}
    | {f"full SFT lr {PRESET['TOY_SFT_LR']:g} (make run)": sft_history},
    str(IMAGES_DIR / "6.3_lora_learning_rates.png"), f"6.3 toy LoRA r={RANK}: learning rates, {EPOCHS} epochs")))

# %% [markdown]
# 同样的比较在 `bench/lora_sweep.py` 里做了几个学习率、两组目标层,每个设置都换了几个种子。下表每格是几个种子的平均
# (括号里是最低–最高),下图每个点是一个种子:

# %%
import matplotlib.pyplot as plt

bench_lrs = sorted({float(r["lr"]) for r in sweep_results["rows"] if r["stage"] == "lora"})
grid, points = {}, {}
for targets in (ALL_LAYERS, QV):
    for lr in bench_lrs:
        runs = bench_rows("lora", targets, lr)
        if runs:
            points[(targets, lr)] = runs
            grid[(targets, f"{lr:g}")] = {
                split: f"{pct(sum(r[split] for r in runs.values()) / len(runs))}"
                       f"({pct(min(r[split] for r in runs.values()))}–{pct(max(r[split] for r in runs.values()))})"
                for split in ("sft_seen", "heldout")} | {"种子数": len(runs)}
display(pd.DataFrame(grid).T.rename_axis(["目标层", "学习率"]))
fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
for ax, split in zip(axes, ("sft_seen", "heldout")):
    for targets, color in ((ALL_LAYERS, "tab:blue"), (QV, "tab:orange")):
        lrs = [lr for lr in bench_lrs if (targets, lr) in points]
        for lr in lrs:
            ax.scatter([lr] * len(points[(targets, lr)]), [r[split] for r in points[(targets, lr)].values()],
                       color=color, alpha=0.6, s=18)
        ax.plot(lrs, [sum(r[split] for r in points[(targets, lr)].values()) / len(points[(targets, lr)]) for lr in lrs],
                "-", color=color, label=f"LoRA on {targets} (mean of seeds)")
    full_values = [r[split] for r in bench_full.values()]
    ax.axhspan(min(full_values) - 0.005, max(full_values) + 0.005, color="grey", alpha=0.25, label="full SFT (range of seeds)")
    ax.set_xscale("log")
    ax.set_xlabel("LoRA learning rate")
    ax.set_title(f"{split} accuracy")
    ax.grid(alpha=0.3)
axes[0].set_ylabel("accuracy")
axes[1].legend(fontsize=7, loc="lower right")
fig.suptitle(f"6.3 bench/lora_sweep.py: r={RANK}, {PRESET['TOY_SFT_LORA_EPOCHS']} epochs, {len(bench_base)} seeds")
fig.tight_layout()
fig.savefig(IMAGES_DIR / "6.3_lora_sweep.png", dpi=120)
plt.close(fig)
display(Image(str(IMAGES_DIR / "6.3_lora_sweep.png")))

# %%
mean = {key: {split: sum(r[split] for r in runs.values()) / len(runs) for split in ("sft_seen", "heldout")}
        for key, runs in points.items()}
best_lr = max((lr for targets, lr in mean if targets == ALL_LAYERS),
              key=lambda lr: mean[(ALL_LAYERS, lr)]["sft_seen"] + mean[(ALL_LAYERS, lr)]["heldout"])
sft_lr = float(PRESET["TOY_SFT_LR"])
text = (f"每个线性层上的 LoRA,{len(bench_base)} 个种子平均,sft_seen 与 heldout 之和最高的是学习率 {best_lr:g}"
        f"(sft_seen {pct(mean[(ALL_LAYERS, best_lr)]['sft_seen'])},heldout {pct(mean[(ALL_LAYERS, best_lr)]['heldout'])});"
        f"预设的 {LEARNING_RATE:g} {'就是它' if best_lr == LEARNING_RATE else '不是它'}。")
if (ALL_LAYERS, sft_lr) in points:
    at_sft = points[(ALL_LAYERS, sft_lr)]
    lora_at_sft = sum(r["heldout"] for r in at_sft.values()) / len(at_sft)
    full_mean = sum(r["heldout"] for r in bench_full.values()) / len(bench_full)
    text += (f"用全量 SFT 的学习率 {sft_lr:g} 时,LoRA 的 heldout 在各个种子上是 "
             f"{'、'.join(pct(r['heldout']) for r in at_sft.values())},"
             f"全量 SFT 是 {'、'.join(pct(r['heldout']) for r in bench_full.values())}"
             + (":LoRA 的更新 $\\frac{\\alpha}{r} BA$ 从 0 开始、只有很少的参数,同样的学习率下走不了那么远,"
                "照搬全量微调的学习率就学不够。" if lora_at_sft < full_mean - 0.05 else "。"))
display(Markdown(text + f"(本 notebook 里那一次运行:lr {sft_lr:g} 时 heldout {pct(sweep[sft_lr][1]['heldout'])},"
                        f"lr {LEARNING_RATE:g} 时 {pct(sweep[LEARNING_RATE][1]['heldout'])}。)"
                 if sft_lr in sweep and LEARNING_RATE in sweep else text))

# %% [markdown]
# 学习率到底取多大,和全量微调一样,要在自己的任务上测出来;上面这张表就是最小的一次"测"。

# %% [markdown]
# ### 加在哪些层上:教材的 q、v 与每个线性层
#
# 同样的学习率、同样的 epoch 数,只把 `target_modules` 换成教材的 `q_proj`、`v_proj`,在本 notebook 里再训练一次、考一次(一次运行):

# %%
chapter_trainer = train_lora(LEARNING_RATE, "lora-qv", targets=CHAPTER_TARGETS)
chapter_row = score(copy.deepcopy(chapter_trainer.model).merge_and_unload(), "LoRA SFT, q_proj+v_proj")
n_chapter = sum(p.numel() for p in chapter_trainer.model.parameters() if p.requires_grad)
display(Markdown(format_scorecard({"full SFT (6.2)": full_row, "LoRA SFT (6.3)": lora_row,
                                   "LoRA SFT, q_proj+v_proj": chapter_row})))
for g in [g for g in chapter_row["replies"] if g["split"] == "heldout" and not g["correct"]][:3]:
    print(f"[heldout] 问: {g['question']}  答案: {g['answer']}  q、v 上的 LoRA 答: {g['reply']!r}")

# %%
chapter_wrong = wrong_person_replies(chapter_row, PEOPLE, "heldout")
qv_best = {lr: m for (targets, lr), m in mean.items() if targets == QV}
all_best = {lr: m for (targets, lr), m in mean.items() if targets == ALL_LAYERS}
qv_lr = max(qv_best, key=lambda lr: qv_best[lr]["heldout"])
all_lr = max(all_best, key=lambda lr: all_best[lr]["heldout"])
qv_below_everywhere = all(
    r["heldout"] < points[(ALL_LAYERS, lr)][seed]["heldout"]
    for (targets, lr), runs in points.items() if targets == QV and (ALL_LAYERS, lr) in points
    for seed, r in runs.items() if seed in points[(ALL_LAYERS, lr)])
other_person = {targets: sum(r["heldout_other_person"] for r in points[(targets, lr)].values())
                / max(1, sum(r["heldout_wrong"] for r in points[(targets, lr)].values()))
                for targets, lr in ((QV, qv_lr), (ALL_LAYERS, all_lr))}
display(Markdown(
    f"这一次运行:只在 q、v 上时可训练参数 {n_chapter:,} 个(每个线性层时是 {n_trainable:,} 个),"
    f"heldout {pct(chapter_row['heldout'])},{versus(chapter_row['heldout'], lora_row['heldout'])}每个线性层的 "
    f"{pct(lora_row['heldout'])};sft_seen {pct(chapter_row['sft_seen'])}({versus(chapter_row['sft_seen'], lora_row['sft_seen'])}"
    f" {pct(lora_row['sft_seen'])})。heldout 答错的 {chapter_wrong['wrong']} 个里,{chapter_wrong['other_person']} 个说出的名字不是被问的人。\n\n"
    f"几个种子上(`bench/lora_sweep.json`):q、v 在它最好的学习率 {qv_lr:g} 下 heldout 平均 {pct(qv_best[qv_lr]['heldout'])},"
    f"每个线性层在它最好的 {all_lr:g} 下 {pct(all_best[all_lr]['heldout'])};"
    + ("同一个学习率、同一个种子比,q、v 的 heldout 每一次都更低。" if qv_below_everywhere else
       "同一个学习率、同一个种子比,q、v 并不是每一次都更低。")
    + f"各自最好的学习率下,heldout 的错误回答里名字不是被问的人的比例:q、v {other_person[QV]:.0%},"
    f"每个线性层 {other_person[ALL_LAYERS]:.0%}。"))

# %% [markdown]
# 留出问题考的是:问到一个 SFT 没问过的人,模型要把问题里的名字接到回答里,再取出预训练时存下的这个人的事实。
# 这些事实在预训练的权重里;LoRA 冻结这些权重,只在旁边加低秩的修改,两种做法的差别在于修改能落在多少个矩阵上。
# 答错时说出的名字不是被问的人,多半是把 SFT 数据里见过的名字搬到了留出问题上。为什么只改注意力的两个矩阵更容易这样,本节没有拆开验证;
# 在更大的模型上,加在哪些层同样要在自己的任务上测,预设的这组是在这个玩具上、几个种子上测出来的。

# %% [markdown]
# ### QLoRA:把冻结的基座存成 4 bit
#
# 教材 6.3 提到 QLoRA,上游没有给出代码。LoRA 只训练 A、B,基座是冻结的;既然冻结,它就不必用 16 bit 存。
# QLoRA(Dettmers 等,2023)把基座线性层的权重量化成 **4-bit NF4**,前向时逐层反量化成计算精度再做矩阵乘,
# 梯度只流向 LoRA 的 A、B。bitsandbytes 实际存的是:
#
# - 每个权重一个 4-bit 码(半个字节)。码表是 16 个按正态分布分位数取的值(NF4):训练好的权重近似正态,按分位数取值让每个码用得一样多;
# - 每 64 个权重一个 absmax(这一块的最大绝对值,把码表缩放回真实大小);
# - **双重量化**:absmax 本身再量化成 8 bit,每 256 个 absmax 共用一组 fp32 缩放和偏移。
#
# 嵌入、norm 和偏置不量化:peft 的 `prepare_model_for_kbit_training` 把它们转成 fp32 以求稳定。
# `llmtrain.memory.weight_bytes_4bit` 按这个规则计算权重,`estimate_training_memory(..., load_in_4bit=True)` 把它作为权重项。
# 先算每个参数几个字节,再算 Qwen2.5-1.5B:

# %%
from llmtrain.memory import (
    CUDA_CONTEXT_GIB, GIB, NF4_BYTES_PER_PARAM, RESERVE_FACTOR_EXPANDABLE, card_memory_needed, estimate_training_memory,
    linear_weight_numel, lora_trainable_params, weight_bytes_4bit,
)
from llmtrain.modeling import qwen2_5_1_5b_config, qwen2_parameter_formula

qwen = qwen2_5_1_5b_config()
n_all, n_linear = qwen2_parameter_formula(qwen), linear_weight_numel(qwen)
print(f"NF4 每个参数 {NF4_BYTES_PER_PARAM:.4f} 字节 = 0.5(4-bit 码)+ 1/64(每 64 个权重一个 8-bit absmax)"
      f"+ 8/(64·256)(每 256 个 absmax 一组 fp32 缩放与偏移)")
print(f"量化的线性层参数 {n_linear / 1e9:.3f} B;不量化、保持 fp32 的(嵌入、norm、偏置){(n_all - n_linear) / 1e9:.3f} B")
bf16_weights, nf4_weights = n_all * 2 / GIB, weight_bytes_4bit(qwen) / GIB
print(f"权重:bf16 {bf16_weights:.2f} GiB → 4-bit {nf4_weights:.2f} GiB")

# %% [markdown]
# 权重只是一步训练峰值里的一项。单卡、block 2048、每卡 4 条、开激活检查点和 Liger(GPU 上的默认)时,把三种微调逐项比较;
# 最后一行"需要的显存"= 估计峰值 × 分配器的保留系数 + CUDA 上下文。这两个数不是本机量的:它们是按一块 H200 上的测量
# (6.1 的"我的显卡放得下吗"一节,`bench/results/gpu_h200_2026-11-30.json`)**定下来的**常数(`llmtrain.memory`),
# 下面把常数和那次测量并排打印:

# %%
adapters = lora_trainable_params(qwen, CHAPTER_TARGETS, RANK)
setups = {"全量 SFT": {}, f"LoRA r={RANK}": dict(trainable_params=adapters),
          f"QLoRA r={RANK}": dict(trainable_params=adapters, load_in_4bit=True)}
estimates = {name: estimate_training_memory(qwen, 4, 2048, "bf16", zero_stage=2, num_gpus=1,
                                            activation_checkpointing=True, liger_kernel=True, **extra)
             for name, extra in setups.items()}
h200 = json.loads((ROOT / "bench" / "results" / "gpu_h200_2026-11-30.json").read_text(encoding="utf-8"))
expandable_runs = [r for r in h200["rows"] if "expandable_segments:True" in (r["pytorch_cuda_alloc_conf"] or "")]
ratios = ", ".join(f"{r['reserved_gib'] / r['allocated_gib']:.3f}" for r in expandable_runs)
print(f"保留系数 {RESERVE_FACTOR_EXPANDABLE}(expandable_segments:True);H200 上这种设置测了 {len(expandable_runs)} 次,"
      f"reserved / allocated = {ratios}:"
      "系数取的是略高于测量值的整数百分比,是一个拟合出来的上界,不是每张卡都一样")
print(f"CUDA 上下文 {CUDA_CONTEXT_GIB} GiB;H200 上 nvidia-smi 比 reserved 多 "
      f"{min(r['nvidia_smi_gib'] - r['reserved_gib'] for r in h200['rows']):.2f}–"
      f"{max(r['nvidia_smi_gib'] - r['reserved_gib'] for r in h200['rows']):.2f} GiB")
card_gib = {name: card_memory_needed(est, expandable_segments=True) / GIB for name, est in estimates.items()}
display(pd.DataFrame({name: {**est.gib(), "需要的显存": round(card_gib[name], 2)} for name, est in estimates.items()}))
full_states = {k: v for k, v in estimates["全量 SFT"].gib().items() if k in ("weights", "gradients", "optimizer_states")}
fits = lambda gib: "、".join(str(card) for card in (8, 12, 16) if gib <= card)  # noqa: E731
display(Markdown(
    f"全量 SFT 单是权重、梯度和 Adam 状态就要 {sum(full_states.values()):.1f} GiB,"
    f"需要 {card_gib['全量 SFT']:.1f} GiB,8/12/16 GiB 的卡{'都放不下' if not fits(card_gib['全量 SFT']) else '放得下'};"
    f"LoRA 去掉了基座的梯度和优化器状态,需要 {card_gib[f'LoRA r={RANK}']:.1f} GiB;"
    f"QLoRA 再把权重从 {bf16_weights:.2f} GiB 压到 {nf4_weights:.2f} GiB,需要 {card_gib[f'QLoRA r={RANK}']:.1f} GiB。"
    f"8/12/16 GiB 里放得下的卡:LoRA {fits(card_gib[f'LoRA r={RANK}']) or '无'} GiB,"
    f"QLoRA {fits(card_gib[f'QLoRA r={RANK}']) or '无'} GiB。"))

# %% [markdown]
# (`USE_QLORA=1 bash code/finetune.sh` 按显卡大小选 batch;README 的显卡表列出了 8、12、16 GiB 卡上的计划。)
#
# bitsandbytes 0.50 在 CPU 上也能做 4-bit 计算,所以在玩具模型上真跑一次:同一个基座、同样的 LoRA 和训练参数,
# 只是基座以 NF4 加载(`llmtrain.modeling.load_model_4bit`;CPU 上用 fp32 计算)。

# %%
from llmtrain.lora import load_adapter
from llmtrain.modeling import load_model_4bit

base_4bit = load_model_4bit(str(PRETRAINED), "cpu", torch.float32)
base_fp32_mib = AutoModelForCausalLM.from_pretrained(PRETRAINED).get_memory_footprint() / 2**20
footprint_4bit = base_4bit.get_memory_footprint()
n_embed = base_model.get_input_embeddings().weight.numel()
embed_bytes = base_4bit.get_input_embeddings().weight.numel() * base_4bit.get_input_embeddings().weight.element_size()
print(f"4-bit 基座占 {footprint_4bit / 2**20:.2f} MiB,fp32 基座 {base_fp32_mib:.2f} MiB")
print(f"词嵌入 {n_embed:,} 个参数,占玩具模型参数的 {n_embed / count_parameters(base_model):.0%};它不量化(fp32),"
      f"在 4-bit 基座里占 {embed_bytes / 2**20:.2f} MiB,是全部字节的 {embed_bytes / footprint_4bit:.0%}")
qlora_trainer = train_lora(LEARNING_RATE, "qlora", base=base_4bit)
print(f"{qlora_trainer.state.global_step} 步,用时 {qlora_trainer.state.log_history[-1]['train_runtime']:.1f} 秒")
# 评测:bitsandbytes 0.50.2 的 CPU 内核在 4-bit 模型的生成(推理路径)上会出错,训练不受影响;所以把训练好的适配器装回
# 未量化的同一个基座再考,和脚本 `--merge_lora` 把它合并进未量化基座的做法一致。
qlora_model = load_adapter(AutoModelForCausalLM.from_pretrained(PRETRAINED), str(OUTPUT_DIR / "qlora"))
qlora_row = score(qlora_model, "QLoRA SFT (6.3)")
display(Markdown(format_scorecard({"full SFT (6.2)": full_row, "LoRA SFT (6.3)": lora_row, "QLoRA SFT (6.3)": qlora_row})))
seed_heldout = [r["heldout"] for r in bench_lora.values()]
qlora_gap = round(100 * qlora_row["heldout"]) - round(100 * lora_row["heldout"])
seed_span = round(100 * max(seed_heldout)) - round(100 * min(seed_heldout))
display(Markdown(
    f"4-bit 基座上训练的适配器(一次运行,和上面的 LoRA 同一个种子,只有基座量化了):sft_seen {pct(qlora_row['sft_seen'])}"
    f"({versus(qlora_row['sft_seen'], lora_row['sft_seen'])} LoRA 的 {pct(lora_row['sft_seen'])}),"
    f"heldout {pct(qlora_row['heldout'])}({versus(qlora_row['heldout'], lora_row['heldout'])} LoRA 的 {pct(lora_row['heldout'])},"
    f"差 {qlora_gap:+d} 个百分点)。同一个 LoRA 设置只换种子,heldout 在 {len(seed_heldout)} 个种子上是 "
    f"{pct(min(seed_heldout))}–{pct(max(seed_heldout))}(相差 {seed_span} 个百分点,`bench/lora_sweep.json`)。"
    + ("两行之差不比种子之间的起伏大,这一次运行看不出 4-bit 基座让 LoRA 变好还是变坏;"
       if abs(qlora_gap) <= seed_span else "两行之差比种子之间的起伏还大,值得换几个种子再量一次;")
    + "要下结论,得像 `bench/lora_sweep.py` 那样换几个种子。"))

# %% [markdown]
# 玩具模型的词嵌入只占约四分之一的参数,但它不量化、按 fp32 存,线性层却只剩半个字节一个参数,于是嵌入成了 4-bit 基座的
# 大头(上面打印了比例)。所以这里省下的字节不能代表 1.5B 上的比例(上面的表才是);要看的是量化基座上的适配器和 LoRA 学到的差多少。GPU 上:`USE_QLORA=1 bash code/finetune.sh`(基座用 bf16 计算,`merged/` 里是合并到未量化基座的完整模型)。
#
# ### 用脚本运行
#
# `code/finetune.py --use_lora` 走的是和全量 SFT 相同的 Trainer/DeepSpeed 路径,参数 `--lora_r`、`--lora_alpha`、
# `--lora_dropout`、`--lora_target_modules`(默认是教材的 `q_proj,v_proj`;`PRESET=toy` 时是预设的 `TOY_LORA_TARGETS`),保存 adapter;`--merge_lora` 另外在输出目录的 `merged/`
# 下保存合并后的普通模型。`bench/lora_vs_full.py` 比较全量与 LoRA 的可训练参数、优化器状态、峰值内存和速度(结果见 README)。
#
# ```bash
# PRESET=toy USE_LORA=1 bash code/finetune.sh     # 玩具:2 个 CPU 进程,预设同上
# USE_LORA=1 bash code/finetune.sh                # 教材设置:Qwen2.5-1.5B + BelleGroup
# python code/evaluate.py --model output/toy/pretrain --adapter output/toy/sft-lora --eval_file data/sample/eval.jsonl
# ```

# %% [markdown]
# ## 练习
#
# 练习在 `exercises/ex6_3_lora.py`,检查:`make check-exercises EX=6.3`。评分程序在同一组权重上把你的代码与 peft 比较。
#
# 1. `LoraLinear`(`__init__`、`forward`、`merge`、`unmerge`):从零写一个 LoRA 线性层。学到:冻结原层;A 随机而 B 为零,
#    训练开始时输出与原层完全相同、A 和 B 又都学得动;缩放系数 α/r;合并后推理不多花一次矩阵乘法,取消合并能完全还原;
#    dropout 只在旁路输入上、只在训练模式下;A、B 建在原层的 dtype 上(bf16)。评分程序还比较对 A、B 和输入 x 的梯度。
# 2. `inject_lora`:把模型里的目标层原地换成你的 `LoraLinear`,其余参数全部冻结。学到:peft 的目标规则(列表匹配名字结尾,
#    字符串是正则、整串匹配),为什么要在父模块上 setattr,为什么冻结要在替换之前。
# 3. `lora_parameter_count`:加上 LoRA 之后要训练多少参数。学到:教材公式 2·L·d·r 的假设是什么,Qwen2 的 GQA 为什么让它不成立。
#
# 常见错误都有专门的提示:乘了 α 而不是 α/r、B 没有初始化为零、A 和 B 都是零、合并时忘了缩放、合并后又加了一次旁路、
# 取消合并没有还原、dropout 作用在原层上或在 eval 模式下仍起作用、A/B 是 fp32 而原层是 bf16、原层没有冻结、
# 用带点的名字 setattr、把方阵公式用在 GQA 上。做完对照 `code/llmtrain/lora.py`。

# %% [markdown]
# ### 练习之后:课程的实现
#
# 练习 1:`llmtrain.lora.LoraLinear` 的构造、前向、合并与取消合并。

# %%
for method in (LoraLinear.__init__, LoraLinear.forward, LoraLinear.delta_weight, LoraLinear.merge, LoraLinear.unmerge):
    print(inspect.getsource(method))

# %% [markdown]
# 练习 2:`inject_lora`。

# %%
print(inspect.getsource(inject_lora))

# %% [markdown]
# 练习 3:每个加了 LoRA 的矩阵 $W \in \mathbb{R}^{d_{out} \times d_{in}}$ 多出 $A$($r \times d_{in}$)和 $B$($d_{out} \times r$),
# 共 $r(d_{in} + d_{out})$ 个参数;教材的 $2 d_{model} r$ 只在 $d_{in} = d_{out} = d_{model}$ 时成立。
# `llmtrain.lora.lora_parameter_count` 按这个公式逐个矩阵求和,和 6.3.3 那张表里实测的可训练参数比一比:

# %%
print(inspect.getsource(lora_parameter_count))
for name, config in [("玩具模型", base_model.config), ("Qwen2.5-1.5B", qwen2_5_1_5b_config())]:
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(config)
    formula = lora_parameter_count(m, CHAPTER_TARGETS, RANK)
    print(f"{name}:r·(d_in+d_out) 求和 {formula:,},6.3.3 实测 {param_rows[name]['实测可训练参数']}")
