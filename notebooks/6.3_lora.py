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
# # 6.3 高效微调:从零实现 LoRA,再用 peft 微调
#
# 全量微调要更新模型的每一个参数,还要为每个参数保存梯度和优化器状态。本节跟着教材 6.3.1–6.3.5:
# 先简单回顾两类高效微调方案,再讲 LoRA 的原理,**自己写一个 LoRA 层**并和 peft 的实现逐项核对,
# 最后用 peft + Trainer 在玩具模型上做一次 LoRA 微调。
#
# 本节的 LoRA 实现在 `code/llmtrain/lora.py`。

# %% tags=["parameters"]
RANK = 8  # LoRA 的秩 r(教材:一般取 4、8、16)
ALPHA = 32  # 缩放系数 alpha,更新量乘以 alpha / r(教材的 LoraConfig)
DROPOUT = 0.1
EPOCHS = 12
LEARNING_RATE = 5e-3  # LoRA 的 B 从 0 开始,通常用比全量微调更大的学习率
SEED = 42

# %%
import copy
import inspect
import os
import warnings
from pathlib import Path

import datasets
import pandas as pd
import torch
import transformers
from IPython.display import Image, display
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmtrain import PROJECT_ROOT as ROOT
from llmtrain.toy import ensure_toy_pretrained

DATA = ROOT / "data" / "sample" / "sft.jsonl"
OUTPUT_DIR = ROOT / "output" / "notebooks" / "6.3"
IMAGES_DIR = Path(os.environ.get("COURSE_IMAGES_DIR", ROOT / "images"))
datasets.disable_progress_bars()  # keep the notebook's output readable
transformers.utils.logging.disable_progress_bar()
warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notices from inside peft/transformers
torch.manual_seed(SEED)
PRETRAINED = ensure_toy_pretrained()  # output/toy/pretrain;没有时先用 code/pretrain.sh 预训练一个
tokenizer = AutoTokenizer.from_pretrained(PRETRAINED)
base_model = AutoModelForCausalLM.from_pretrained(PRETRAINED)
print("基座模型:", PRETRAINED.relative_to(ROOT))

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
# ## 6.3.2 LoRA 的想法:更新量是低秩的
#
# 研究发现(Aghajanyan 等,2020),预训练模型在下游任务上微调时,只需要在一个维度很低的子空间里优化,
# 就能达到全量微调的大部分效果;这个子空间的维度叫**本征秩**(intrinsic rank),任务越简单,本征秩越低。
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
# 所以训练开始时 $BA = 0$,模型与基座完全相同。$\frac{\alpha}{r}$ 是缩放系数,换 $r$ 时不用重新调学习率。
#
# $BA$ 的秩最多是 $r$。拿玩具模型的 `q_proj`($128 \times 128$)做个例子:

# %%
# NBVAL_CHECK_OUTPUT
d, k, r = 128, 128, RANK
B, A = torch.randn(d, r), torch.randn(r, k)
print(f"ΔW = BA 的形状 {tuple((B @ A).shape)},秩 {torch.linalg.matrix_rank(B @ A).item()}")
print(f"直接训练 ΔW 需要 {d * k:,} 个参数,训练 B 和 A 只需要 {r * (d + k):,} 个")

# %% [markdown]
# 教材给出的参数量公式是 $\Theta = 2 \times L_{LoRA} \times d_{model} \times r$($L_{LoRA}$ 是加了 LoRA 的矩阵个数)。
# 它假设每个矩阵都是 $d_{model} \times d_{model}$ 的方阵。Qwen2 用了分组查询注意力(GQA),
# `k_proj`/`v_proj` 的输出只有 KV 头数 × 头维度,并不是方阵。一般的写法是每个矩阵 $r \times (d_{in} + d_{out})$
# (`llmtrain.lora.lora_parameter_count`)。把 LoRA 加到教材推荐的 $W_q, W_v$ 上,比较两个公式和实际数出来的参数量:

# %%
# NBVAL_CHECK_OUTPUT
from llmtrain.lora import inject_lora, lora_parameter_count
from llmtrain.modeling import qwen2_5_1_5b_config

TARGETS = ["q_proj", "v_proj"]
rows = {}
for name, config in [("玩具模型", base_model.config), ("Qwen2.5-1.5B", qwen2_5_1_5b_config())]:
    with torch.device("meta"):  # 只要形状,不分配内存
        m = AutoModelForCausalLM.from_config(config)
    L = 2 * config.num_hidden_layers
    formula = lora_parameter_count(m, TARGETS, RANK)
    inject_lora(m, TARGETS, r=RANK)
    rows[name] = {"v_proj 形状": f"{config.hidden_size} → {m.model.layers[0].self_attn.v_proj.base.out_features}",
                  "教材公式 2·L·d·r": 2 * L * config.hidden_size * RANK,
                  "r·(d_in+d_out) 求和": formula,
                  "实测可训练参数": sum(p.numel() for p in m.parameters() if p.requires_grad)}
pd.DataFrame(rows)

# %% [markdown]
# 通用公式和实测完全一致;教材公式把 `v_proj` 当成了方阵,在 GQA 模型上高估了。
# 对 1.5B 模型来说,LoRA 只训练约一百万个参数,不到总量的 0.1%。
#
# ## 6.3.4 LoRA 的代码实现
#
# peft 的实现流程是:(1)按 `target_modules` 找到要加 LoRA 的层;(2)把每个这样的 `nn.Linear` 换成 LoRA 层;
# (3)冻结其余参数,只训练 $A$、$B$。教材贴的是 peft 早期版本的 `LoraLayer`/`Linear`,它继承 `nn.Linear`,
# 新版 transformers 模型上已经不能直接用。`llmtrain.lora.LoraLinear` 是一个可以运行的小实现:包住原来的层,
# 冻结它的权重和偏置,旁路上放 `lora_A`、`lora_B`,dropout 只作用在旁路上。前向计算就是上面的公式:

# %%
from llmtrain.lora import LoraLinear

print(inspect.getsource(LoraLinear.forward))
print(inspect.getsource(LoraLinear.merge))

# %% [markdown]
# `llmtrain.lora.inject_lora` 按名字找层(列表里的名字匹配模块名的结尾,字符串则按正则完整匹配,和教材描述的 peft 一样),
# 逐个替换并冻结其余参数。注入到一个玩具模型的副本里,看看结构和可训练参数:

# %%
# NBVAL_CHECK_OUTPUT
from llmtrain.lora import lora_layers, parameter_summary

ours = inject_lora(copy.deepcopy(base_model), TARGETS, r=RANK, alpha=ALPHA)
print(ours.model.layers[0].self_attn)
print(parameter_summary(ours))
print("可训练的参数:", sorted({n.split(".", 4)[-1] for n, p in ours.named_parameters() if p.requires_grad}))
ids = tokenizer("春天来得很慢。", return_tensors="pt").input_ids
with torch.no_grad():
    print("B = 0 时与基座的最大 logits 差:", (ours(ids).logits - base_model(ids).logits).abs().max().item())

# %% [markdown]
# ### 和 peft 核对
#
# 用 peft 的 `get_peft_model` 在同一个基座上建一个同样配置的 LoRA 模型,把 $B$ 随机化(否则两边都是 0,比不出什么),
# 再用 `llmtrain.lora.copy_lora_from_peft` 把 peft 的 $A$、$B$ 复制到我们的模型里。两边的输出应当一致;
# 合并(merge)、取消合并(unmerge)后也应当一致(`tests/test_lora.py` 还核对了几步训练之后两边仍然一致):

# %%
# NBVAL_CHECK_OUTPUT
from peft import LoraConfig, get_peft_model

from llmtrain.lora import copy_lora_from_peft

theirs = get_peft_model(copy.deepcopy(base_model), LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                                                              target_modules=TARGETS, task_type="CAUSAL_LM"))
for name, p in theirs.named_parameters():
    if "lora_B" in name:
        torch.nn.init.normal_(p, std=0.02)
print("从 peft 复制的张量数:", copy_lora_from_peft(theirs, ours))
print("可训练参数一样多:", sum(p.numel() for p in ours.parameters() if p.requires_grad)
      == sum(p.numel() for p in theirs.parameters() if p.requires_grad))
with torch.no_grad():
    ref = theirs(ids).logits
    checks = {"我们的 LoRA vs peft": ours(ids).logits}
    for layer in lora_layers(ours):
        layer.merge()
    checks["merge 之后"] = ours(ids).logits
    for layer in lora_layers(ours):
        layer.unmerge()
    checks["unmerge 之后"] = ours(ids).logits
    checks["peft merge_and_unload"] = copy.deepcopy(theirs).merge_and_unload()(ids).logits
for name, logits in checks.items():
    print(f"{name:24s} 与 peft 的最大 logits 差 ≤ 1e-5: {(logits - ref).abs().max().item() <= 1e-5}")

# %% [markdown]
# 合并之后,LoRA 层就是一个普通的线性层,推理没有额外开销——这正是它相对 Adapter 的优势。
#
# ## 6.3.5 使用 peft 实现 LoRA 微调
#
# 实际训练时我们直接用 peft。`llmtrain.lora.add_peft_lora` 先检查 `target_modules` 确实能匹配到线性层
# (匹配不到时列出模型里有哪些线性层),再调用 `get_peft_model`;如果开了梯度检查点,还要调用
# `enable_input_require_grads()`,否则会报 "element 0 of tensors does not require grad"。
# 数据和 6.2 节相同(ChatML + 只监督回答 + 打包),训练器也相同:

# %%
from transformers import Trainer, TrainingArguments

from llmtrain.lora import add_peft_lora
from llmtrain.sft_data import build_sft_dataset, load_sft_dataset, make_collator

train_set = build_sft_dataset(load_sft_dataset([str(DATA)]), tokenizer, max_len=512)


def lora_sft(targets: list[str], run_name: str):
    """Fine-tune a fresh copy of the base model with peft LoRA on `targets`; return the trainer."""
    model = add_peft_lora(AutoModelForCausalLM.from_pretrained(PRETRAINED), targets, RANK, ALPHA, DROPOUT)
    model.config.use_cache = False  # packing: see 6.2
    args = TrainingArguments(output_dir=str(OUTPUT_DIR / run_name), per_device_train_batch_size=8,
                             num_train_epochs=EPOCHS, learning_rate=LEARNING_RATE, warmup_steps=10,
                             logging_steps=25, save_strategy="no", report_to="none", use_cpu=True, seed=SEED,
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=train_set, processing_class=tokenizer,
                      data_collator=make_collator(tokenizer, packing=True))
    trainer.train()
    model.config.use_cache = True
    return trainer


lora_trainer = lora_sft(TARGETS, "lora-qv")
lora_trainer.model.print_trainable_parameters()

# %%
from llmtrain.plotting import plot_loss

losses = [e["loss"] for e in lora_trainer.state.log_history if "loss" in e]
print(f"第一次记录的 loss {losses[0]:.2f},最后一次 {losses[-1]:.2f}")
display(Image(plot_loss(lora_trainer.state.log_history, str(IMAGES_DIR / "6.3_lora_loss.png"),
                        "6.3 toy LoRA SFT (q_proj, v_proj, r=8)")))

# %% [markdown]
# 训练得到的是 adapter:`save_pretrained` 只保存 $A$、$B$ 和配置(几十 KB);部署时可以
# `merge_and_unload()` 合并成一个普通模型,和任何 transformers 模型一样保存、加载。合并后问几个问题:

# %%
from llmtrain.generation import chat

merged = copy.deepcopy(lora_trainer.model).merge_and_unload()  # keep the trained PeftModel intact
for q in ["3加5等于几?", "“快”的反义词是什么?", "你好"]:
    print(f"问: {q}  LoRA 模型答: {chat(merged, tokenizer, q, max_new_tokens=24)!r}")

# %% [markdown]
# ### LoRA 的容量和它的局限
#
# 玩具模型只有一百万个参数,只在 $W_q, W_v$ 上加 r=8 的 LoRA,可训练参数仅 1.4%,学到的东西明显少于 6.2 节的全量 SFT
# (全量 SFT 的 loss 能降到 1 左右)。把 LoRA 加到全部 7 种线性层上,容量大了约 5 倍:

# %%
all_linear = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
wide_trainer = lora_sft(all_linear, "lora-all-linear")
summary = {}
for name, t in [("LoRA q_proj, v_proj", lora_trainer), ("LoRA 全部线性层", wide_trainer)]:
    logged = [e["loss"] for e in t.state.log_history if "loss" in e]
    summary[name] = {"可训练参数": f"{sum(p.numel() for p in t.model.parameters() if p.requires_grad):,}",
                     "最后的 loss": f"{logged[-1]:.2f}"}
pd.DataFrame(summary).T

# %% [markdown]
# 在真正的大模型上,基座已经很强,LoRA 只需要"引导"它按新格式作答,效果通常接近全量微调;
# 在这个一百万参数的玩具上,我们能清楚地看到容量的限制。这也对应教材最后的提醒:
# **LoRA 擅长让模型适应任务和格式,但只调整低秩矩阵,很难向模型注入新的知识**,所以一般不用 LoRA 做预训练或需要学习大量新知识的后训练。
#
# ### 用脚本运行
#
# `code/finetune.py --use_lora` 走的是和全量 SFT 相同的 Trainer/DeepSpeed 路径,参数 `--lora_r`、`--lora_alpha`、
# `--lora_dropout`、`--lora_target_modules`(默认 `q_proj,v_proj`),保存 adapter;`--merge_lora` 另外在输出目录的 `merged/`
# 下保存合并后的普通模型。`bench/lora_vs_full.py` 比较全量与 LoRA 的可训练参数、优化器状态、峰值内存和速度(结果见 README)。
#
# ```bash
# PRESET=toy USE_LORA=1 bash code/finetune.sh     # 玩具:2 个 CPU 进程
# USE_LORA=1 bash code/finetune.sh                # 教材设置:Qwen2.5-1.5B + BelleGroup
# python code/chat.py --model output/toy/sft-lora/merged "你好"
# ```
