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
from llmtrain.toy import toy_preset

PRESET = toy_preset()  # code/presets/toy.env:PRESET=toy USE_LORA=1 bash code/finetune.sh 用的同一组取值
RANK = 8  # LoRA 的秩 r(教材:一般取 4、8、16)
ALPHA = 32  # 缩放系数 alpha,更新量乘以 alpha / r(教材的 LoraConfig)
DROPOUT = 0.1  # 只作用在 LoRA 旁路上(教材的 LoraConfig)
EPOCHS = PRESET["TOY_LORA_EPOCHS"]
LEARNING_RATE = PRESET["TOY_LORA_LR"]  # 单独为 LoRA 调过的学习率,见 6.3.5
BATCH_SIZE = PRESET["TOY_SFT_BATCH_SIZE"] * PRESET["TOY_NUM_PROCESSES"]  # 和 6.2 一样:脚本两个进程合起来的 batch
WARMUP_STEPS = PRESET["TOY_SFT_WARMUP_STEPS"]
SEED = 42

# %%
import copy
import inspect
import math

import pandas as pd
import torch
from IPython.display import Image, Markdown, display
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.trainer_callback import PrinterCallback


from llmtrain import PROJECT_ROOT as ROOT
from llmtrain.notebook import setup_notebook, toy_training_args
from llmtrain.toy import ensure_toy_pretrained
from llmtrain.training import build_trainer, train_and_save

IMAGES_DIR = setup_notebook(SEED)  # 随机种子、关掉进度条和警告;图存在 output/figures(make notebooks 时是 images/)
SAMPLE = ROOT / "data" / "sample"
DATA = SAMPLE / "sft.jsonl"
OUTPUT_DIR = ROOT / "output" / "notebooks" / "6.3"
SCORECARD = ROOT / "output" / "notebooks" / "scorecard.json"
PRETRAINED = ensure_toy_pretrained()  # output/toy/pretrain:和 6.2 全量 SFT 相同的起点
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
# 在玩具模型上量一量:同一批打包的对话,全量微调和 LoRA($W_q, W_v$,r=8)各用 torch 的 AdamW 训练 3 步,
# 再从张量本身数出权重、梯度和优化器状态占多少字节(`llmtrain.lora.measure_training_steps`,
# `bench/lora_vs_full.py` 用的是同一个函数,另外在独立进程里测峰值内存):

# %%
from llmtrain.lora import add_peft_lora, measure_training_steps
from llmtrain.sft_data import build_sft_dataset, load_sft_dataset, make_collator

train_set = build_sft_dataset(load_sft_dataset([str(DATA)]), tokenizer, max_len=PRESET["TOY_SFT_MAX_LEN"])
collate = make_collator(tokenizer, packing=True)
batches = [collate([train_set[i] for i in range(s, s + BATCH_SIZE)]) for s in range(0, 3 * BATCH_SIZE, BATCH_SIZE)]
memory = {}
for name in ("全量微调", "LoRA q_proj, v_proj, r=8"):
    m = AutoModelForCausalLM.from_pretrained(PRETRAINED)
    m.config.use_cache = False  # 打包训练:见 6.2
    if name.startswith("LoRA"):
        m = add_peft_lora(m, ["q_proj", "v_proj"], RANK, ALPHA, DROPOUT)
    r = measure_training_steps(m, batches)
    memory[name] = {"可训练参数": f"{r['trainable_params']:,}", "权重 (KiB)": f"{r['weights'] / 2**10:,.0f}",
                    "梯度 (KiB)": f"{r['gradients'] / 2**10:,.0f}", "AdamW 状态 (KiB)": f"{r['optimizer'] / 2**10:,.0f}",
                    "AdamW 状态 / 可训练参数 (字节)": r["optimizer"] // r["trainable_params"]}
pd.DataFrame(memory).T

# %% [markdown]
# AdamW 为每个可训练参数存两个 fp32 张量(一阶、二阶矩),正好 8 字节;梯度也只为可训练参数存在。LoRA 冻结了原模型,
# 这两项随可训练参数一起缩小(这里是 56 KiB 和 112 KiB,全量微调是 3,976 KiB 和 7,951 KiB);权重本身一个字节也没少,
# 反而多了 $A$、$B$ 的 56 KiB。在这个一百万参数的玩具上,这些都只是几 MB;
# 放到 Qwen2.5-1.5B 上(混合精度 AdamW:fp32 主权重 + 两个矩,每个可训练参数 12 字节)按同样的方式算:

# %%
# NBVAL_CHECK_OUTPUT
from llmtrain.lora import lora_parameter_count
from llmtrain.modeling import count_parameters, qwen2_5_1_5b_config

with torch.device("meta"):  # 只要形状,不分配内存
    big = AutoModelForCausalLM.from_config(qwen2_5_1_5b_config())
n_big, n_big_lora = count_parameters(big), lora_parameter_count(big, ["q_proj", "v_proj"], RANK)
print(f"Qwen2.5-1.5B 参数 {n_big:,}(十进制 {n_big / 1e6:,.1f}M;教材脚本打印的 {n_big / 2**20:,.2f}M 是 n/2^20)")
print(f"全量微调:优化器状态 12 × {n_big:,} 字节 = {12 * n_big / 2**30:.1f} GiB,梯度(bf16)再加 {2 * n_big / 2**30:.1f} GiB")
print(f"LoRA q,v r=8:可训练 {n_big_lora:,} 个,优化器状态 {12 * n_big_lora / 2**20:.1f} MiB,梯度 {2 * n_big_lora / 2**20:.1f} MiB")

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

ours = inject_lora(copy.deepcopy(base_model), TARGETS, r=RANK, alpha=ALPHA, dropout=DROPOUT)
print(ours.model.layers[0].self_attn)
print(parameter_summary(ours))
print("可训练的参数:", sorted({n.split(".", 4)[-1] for n, p in ours.named_parameters() if p.requires_grad}))
ids = tokenizer("春天来得很慢。", return_tensors="pt").input_ids
with torch.no_grad():
    print("B = 0 时与基座的最大 logits 差:", (ours(ids).logits - base_model(ids).logits).abs().max().item())

# %% [markdown]
# ### 和 peft 核对
#
# dropout 只在训练模式下起作用(训练时随机把旁路输入的 10% 置零),推理和下面的核对都在 eval 模式,它什么也不做。
# `dropout=0` 时我们和 peft 都不建 `nn.Dropout`,而是放一个 `nn.Identity()`(peft 的 `LoraLayer.update_layer`
# 就是这样写的),所以在 `lora_dropout=0.0` 的配置里打印出来的是 `lora_dropout: Identity()`,并不是漏掉了 dropout。
#
# 用 peft 的 `get_peft_model` 在同一个基座上建一个同样配置的 LoRA 模型(dropout 设为 0,两边的前向计算才能逐位比较),把 $B$ 随机化(否则两边都是 0,比不出什么),
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
ours.eval(), theirs.eval()  # inject_lora 新建的 Dropout 默认处于训练模式;核对在 eval 模式(dropout 不起作用)下进行
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
# 数据和 6.2 节相同(ChatML + 只监督回答 + 打包),训练器也相同(`build_trainer` + `train_and_save`)。
#
# **学习率。** 常听到的说法是"$B$ 从 0 开始,所以 LoRA 需要更大的学习率"。这不成立:$B = 0$ 只让训练开始时的更新量 $BA$ 为 0,
# 第一步之后 $B$ 就不再是 0,它对该用多大的学习率没有什么直接影响。LoRA 的学习率和全量微调一样,要**测**出来。
# 玩具预设的取值是在这台 2 核 CPU 上用脚本(`PRESET=toy bash code/finetune.sh`,2 个 DeepSpeed 进程,成绩单 `code/evaluate.py`)
# 调出来的(在加入 6.4 的结尾句之前的样例数据上):全量 SFT 用 5e-4、6 个 epoch,seen 100%;LoRA($W_q, W_v$,r=8)
# 用 5e-3 或只训练 6 个 epoch 时,seen 停在 55% 以下(6 个 epoch 约 50%),用 1e-2、10 个 epoch 时 seen 约 80%。
# 所以这里的 LoRA 用 1e-2 训练 10 个 epoch,全量 SFT 用 5e-4 训练 6 个 epoch:各自用调过的设置,比较才公平。

# %%
from llmtrain.lora import add_peft_lora

model = add_peft_lora(AutoModelForCausalLM.from_pretrained(PRETRAINED), TARGETS, RANK, ALPHA, DROPOUT)
args = toy_training_args(OUTPUT_DIR / "lora", per_device_train_batch_size=BATCH_SIZE, num_train_epochs=EPOCHS,
                         learning_rate=LEARNING_RATE, warmup_steps=WARMUP_STEPS, seed=SEED)
lora_trainer = build_trainer(model, args, tokenizer, train_set, data_collator=make_collator(tokenizer, packing=True))
lora_trainer.remove_callback(PrinterCallback)  # 不逐条打印日志;loss 在 trainer.state.log_history 里
metrics = train_and_save(lora_trainer, checkpoint=None)  # 存 adapter 到 output/notebooks/6.3/lora
print(f"{lora_trainer.state.global_step} 步,用时 {metrics['train_runtime']:.1f} 秒,"
      f"可训练参数 {metrics['trainable_params']:,}")

# %%
from llmtrain.plotting import plot_loss

losses = [e["loss"] for e in lora_trainer.state.log_history if "loss" in e]
print(f"第一次记录的 loss {losses[0]:.2f},最后一次 {losses[-1]:.2f};ln(词表大小) = {math.log(len(tokenizer)):.2f}")
display(Image(plot_loss(lora_trainer.state.log_history, str(IMAGES_DIR / "6.3_lora_loss.png"),
                        "6.3 toy LoRA SFT (q_proj, v_proj, r=8)")))

# %% [markdown]
# 本次运行:LoRA 的 loss 从 5.01 开始,低于 ln(词表大小) = 7.61(完全随机猜的水平),最后降到 1.26。
# 基座在预训练时就见过 ChatML 格式的对话(`<|im_start|>`、`<|im_end|>` 和系统提示都在预训练语料里),
# 冻结的词嵌入里这些 token 已经有了有意义的向量;6.2 里基座对"你好"已经能答出"你好!有什么可以帮你的吗?"。
# 所以 LoRA 不需要从零学这些特殊 token,回答也不再是乱码。
#
# 训练得到的是 adapter:`save_pretrained` 只保存 $A$、$B$ 和配置(几十 KB);部署时可以
# `merge_and_unload()` 合并成一个普通模型,和任何 transformers 模型一样保存、加载。合并后问几个问题
# (前两个人物在 SFT 数据里,后两个是 held-out):

# %%
from llmtrain.generation import chat

merged = copy.deepcopy(lora_trainer.model).merge_and_unload()  # keep the trained PeftModel intact
for q in ["林晓雨的家乡是哪里?", "周思桐最喜欢的水果是什么?", "王志远的家乡是哪里?", "赵子轩的职业是什么?", "你好", "3加5等于几?"]:
    print(f"问: {q}  LoRA 模型答: {chat(merged, tokenizer, q, max_new_tokens=24)!r}")

# %% [markdown]
# ### 成绩单:LoRA 和全量 SFT 并排
#
# 用 6.2 的成绩单考合并后的模型,写进同一个 `output/notebooks/scorecard.json`。6.2 运行过的话,表里还有全量 SFT 那一行
# (两者从同一个基座出发、用同样的数据和 batch,各自用调过的学习率和 epoch 数):

# %%
from llmtrain.evaluation import format_scorecard, save_scorecard_row, scorecard_row, wrong_person_replies

row = scorecard_row(merged, tokenizer, str(SAMPLE / "eval.jsonl"), [str(SAMPLE / "pretrain_valid.jsonl")],
                    [str(SAMPLE / "sft_valid.jsonl")])
card = save_scorecard_row(str(SCORECARD), "LoRA SFT (6.3)", row)
display(Markdown(format_scorecard(card)))
for split in ("sft_seen", "heldout"):
    wrong = wrong_person_replies(row, split)
    print(f"{split}: 答错 {wrong['wrong']} 个,其中 {wrong['other_person']} 个在讲另一个人")

# %% [markdown]
# 本次运行的数字(表里 "full SFT (6.2)" 一行来自 6.2 的运行;单独运行本 notebook 时没有这一行):
#
# - **能学到的:格式。** LoRA 只训练 14,336 个参数(1.4%),回答 100% 以 `<|im_end|>` 结束,"你好"也答得像样。
# - **没学好的:问谁答谁。** 即使多训练了几个 epoch(10 对 6),seen 67% 对全量 SFT 的 90%,held-out 27% 对 58%;
#   留出对话的助手 loss 0.836 对 0.416。答错的回答大多在讲另一个人(上面的统计:seen 答错 20 个里 19 个,
#   held-out 44 个里 37 个),上面两个 held-out 问题就是这样。格式和"某个人的事实"都学到了,
#   把回答和问题里的那个名字对上,$W_q, W_v$ 上 r=8 的增量学得比全量 SFT 差得多。
# - 这一步对随机种子很敏感(README 的"实测结果":全量 SFT 换种子时 held-out 在 35%–70%),这里的数字是一次运行。
#
# 这些数字只说明:在这个一百万参数的玩具上,只改 $W_q, W_v$ 的 r=8 LoRA 容量明显不够;它们不能说明 LoRA 在大模型上的表现。
# 教材最后的提醒(LoRA 擅长适应任务和格式,不适合注入大量新知识)在这里没有被检验:我们的 LoRA 没有学任何新事实,
# 它和全量 SFT 的差距出现在"调出已有知识"这一步。
#
# ### 用脚本运行
#
# `code/finetune.py --use_lora` 走的是和全量 SFT 相同的 Trainer/DeepSpeed 路径,参数 `--lora_r`、`--lora_alpha`、
# `--lora_dropout`、`--lora_target_modules`(默认 `q_proj,v_proj`),保存 adapter;`--merge_lora` 另外在输出目录的 `merged/`
# 下保存合并后的普通模型。`bench/lora_vs_full.py` 比较全量与 LoRA 的可训练参数、优化器状态、峰值内存和速度(结果见 README)。
#
# ```bash
# PRESET=toy USE_LORA=1 bash code/finetune.sh     # 玩具:2 个 CPU 进程,预设同上
# USE_LORA=1 bash code/finetune.sh                # 教材设置:Qwen2.5-1.5B + BelleGroup
# python code/evaluate.py --model output/toy/pretrain --adapter output/toy/sft-lora --eval_file data/sample/eval.jsonl
# ```
