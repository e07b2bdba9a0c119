# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
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
# # 6.4 偏好对齐:从零实现 DPO,和 TRL 核对,再用 LoRA 训练
#
# 教材第六章讲完了预训练、SFT 和 LoRA,说 LoRA 同样适用于 DPO、KTO 这类对齐方法,但没有真正演示对齐。
# 本节补上这一步:推导 DPO 的损失,**自己实现它**(损失和一个手写的训练循环),和 TRL 的 `DPOTrainer` 逐项、逐步核对,
# 然后用 TRL + peft 在 `make run` 训练好的玩具 SFT 模型上做一次 LoRA-DPO,最后在成绩单上对比训练前后。
#
# 本节的实现在 `code/llmtrain/dpo.py`,脚本是 `code/dpo.py` / `code/dpo.sh`。

# %% tags=["parameters"]
from llmtrain.toy import toy_preset

TOY = toy_preset()  # code/presets/toy.env:与 PRESET=toy bash code/dpo.sh 用同一组数值
EPOCHS = TOY["TOY_DPO_EPOCHS"]
LEARNING_RATE = TOY["TOY_DPO_LR"]
BETA = TOY["TOY_DPO_BETA"]  # DPO 的 beta:策略模型离参考模型能走多远
BATCH_SIZE = TOY["TOY_NUM_GPUS"] * TOY["TOY_DPO_BATCH_SIZE"]  # 脚本是 2 个进程 × 4 对,这里一个进程 8 对
OVERTRAIN_EPOCHS = 3 * EPOCHS  # 6.4.8:同样的设置训练 3 倍的 epoch,看推过头会怎样
SEED = 42

# %%
import inspect
import json
import logging
import math
import re
import time

import pandas as pd
import torch
from IPython.display import Image, Markdown, display
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback

from llmtrain import PROJECT_ROOT as ROOT
from llmtrain.notebook import fresh_output_dir, setup_notebook, shown_path
from llmtrain.toy_run import require_toy_model

START = time.perf_counter()
IMAGES_DIR = setup_notebook(SEED)
OUTPUT_DIR = fresh_output_dir("6.4")  # output/notebooks/6.4,每次运行先清空:这里的模型和成绩单都来自这一次运行
TRAIN_FILE = ROOT / "data" / "sample" / "dpo.jsonl"
HELDOUT_FILE = ROOT / "data" / "sample" / "dpo_heldout.jsonl"
SFT = require_toy_model("sft")  # make run 训练的 output/toy/sft;还没有时它会告诉你先运行 make run
tokenizer = AutoTokenizer.from_pretrained(SFT)
sft_model = AutoModelForCausalLM.from_pretrained(SFT).eval()
print("起点:", shown_path(SFT), "—— make run 的全量 SFT 模型(PRESET=toy bash code/finetune.sh,DeepSpeed 2 个进程)")

# %% [markdown]
# ## 6.4.1 为什么 SFT 之后还要偏好对齐
#
# SFT 让模型**模仿一条标准回答**:数据只说"这样答",没说"这样答比那样答好"。很多要求很难写成唯一的标准答案
# (语气、格式、安全、有没有把握),却很容易在两条回答之间比较出好坏。**偏好数据**就是这样的三元组:
# 一个问题(prompt)、一条更好的回答(chosen)、一条较差的回答(rejected)。
#
# 经典做法是 RLHF(InstructGPT):先用偏好数据训练一个**奖励模型**,再用 PPO 让语言模型在**训练中不断采样回答**、
# 由奖励模型打分来更新,同时用 KL 惩罚拉住它不离 SFT 模型太远。这要同时维护策略、参考、奖励、价值四个模型,
# 调参也难。**DPO**(Direct Preference Optimization,Rafailov 等,2023)证明同一个目标可以直接在偏好对上用一个
# 分类式的损失来优化:**不需要奖励模型,训练中也不需要采样**,只需要策略模型和一个冻结的参考模型(SFT 模型)。
#
# 本节的玩具偏好:回答关于人物的问题时,**答完再补一句"还想知道什么,尽管问我。"**。SFT 数据里已经有一部分回答
# 这样结尾(像是有的标注员习惯这么写),所以 SFT 模型偶尔也会这样说;偏好数据要做的是让它**每次都这样说**。
# chosen 是带这句结尾的回答,rejected 是答完就停的回答,两者的事实完全相同。训练用的偏好对和留出的偏好对问的是
# 不同的人,用来检验学到的是"风格"而不是记住了某几个问题。数一数:

# %%
from llmtrain.dpo import build_preference_dataset, load_preference_dataset
STYLE = TOY["TOY_STYLE_SUFFIX"]  # 6.4 的偏好:关于人物的回答以这句话结尾(code/presets/toy.env)

raw_train, raw_heldout = load_preference_dataset([str(TRAIN_FILE)]), load_preference_dataset([str(HELDOUT_FILE)])


def person(question: str) -> str:
    """The person a toy question asks about: its name, before 的 or 最喜欢 ("林晓雨最喜欢的水果是什么?")."""
    return re.match(r"(.+?)(?:最喜欢|的)", question).group(1)


def people(pairs):
    """The people a preference file asks about."""
    return {person(prompt[-1]["content"]) for prompt in pairs["prompt"]}


assert not people(raw_train) & people(raw_heldout)
print(f"训练偏好对 {len(raw_train)} 条,问到 {len(people(raw_train))} 个人;"
      f"留出偏好对 {len(raw_heldout)} 条,问到 {len(people(raw_heldout))} 个人;两份共同的人:{len(people(raw_train) & people(raw_heldout))} 个")
example = raw_train[0]
print("prompt  :", example["prompt"][-1]["content"])
print("chosen  :", example["chosen"])
print("rejected:", example["rejected"])
with open(ROOT / "data" / "sample" / "sft.jsonl", encoding="utf-8") as f:
    sft_replies = [turn["value"] for line in f for turn in json.loads(line)["conversations"] if turn["from"] == "assistant"]
print(f"sft.jsonl 的 {len(sft_replies)} 条助手回答里,{sum(r.endswith(STYLE) for r in sft_replies)} 条以“{STYLE}”结尾")

# %% [markdown]
# ## 6.4.2 从奖励模型的目标推出 DPO 的损失
#
# **奖励模型(Bradley-Terry)。** 给回答打分 $r(x, y)$,认为 chosen $y_w$ 胜过 rejected $y_l$ 的概率是
# $P(y_w \succ y_l \mid x) = \sigma\big(r(x, y_w) - r(x, y_l)\big)$,训练奖励模型就是最小化
# $-\log \sigma\big(r(x, y_w) - r(x, y_l)\big)$。
#
# **带 KL 约束的强化学习。** RLHF 要找的策略是
# $\max_\pi \ \mathbb{E}_{y \sim \pi}[r(x, y)] - \beta\, \mathrm{KL}\big(\pi(\cdot \mid x) \,\|\, \pi_{\mathrm{ref}}(\cdot \mid x)\big)$,
# 它有闭式最优解 $\pi^*(y \mid x) = \frac{1}{Z(x)} \pi_{\mathrm{ref}}(y \mid x) \exp\big(r(x, y) / \beta\big)$,
# 其中 $Z(x)$ 是对所有回答求和的归一化常数,算不出来。
#
# **隐式奖励。** 把上式反过来解出奖励:$r(x, y) = \beta \log \frac{\pi^*(y \mid x)}{\pi_{\mathrm{ref}}(y \mid x)} + \beta \log Z(x)$。
# 也就是说,**任何策略都隐含着一个奖励** $\beta \log \frac{\pi}{\pi_{\mathrm{ref}}}$,只差一个只和 $x$ 有关的常数。
#
# **代回 Bradley-Terry。** 两条回答的奖励相减时,$\beta \log Z(x)$ 正好抵消,剩下的全是能算的量:
#
# $$\mathcal{L}_{\mathrm{DPO}} = -\log \sigma\Big(\beta \Big[\log \frac{\pi_\theta(y_w \mid x)}{\pi_{\mathrm{ref}}(y_w \mid x)} - \log \frac{\pi_\theta(y_l \mid x)}{\pi_{\mathrm{ref}}(y_l \mid x)}\Big]\Big)$$
#
# 于是"训练奖励模型 + 强化学习"变成了对策略模型直接做一次二分类:让 chosen 的对数比高过 rejected 的对数比。
# $\beta$ 越小,允许策略离参考模型越远。训练开始时 $\pi_\theta = \pi_{\mathrm{ref}}$,两个对数比都是 0,损失是 $\log 2 \approx 0.693$。

# %% [markdown]
# ## 6.4.3 实现:一条回答的对数概率,和 DPO 损失
#
# 公式里的 $\log \pi(y \mid x)$ 是**整条回答**的对数概率:回答里每个 token 在前文条件下的对数概率之和。
# prompt 部分不计分,padding 也不计分。做法和 SFT 的标签一样:不计分的位置标签是 -100。
# `llmtrain.dpo.sequence_logprobs` 算这个和(位置 $t$ 的 logits 预测第 $t+1$ 个 token,所以要错开一位),
# `llmtrain.dpo.dpo_loss` 由策略和参考模型的四个对数概率按上面的公式算损失,并给出 TRL 也会记录的隐式奖励。
# 这两个函数是本节的练习 1、2,源码放在练习之后。

# %%
from llmtrain.dpo import dpo_loss, sequence_logprobs

# %% [markdown]
# 偏好对用和 SFT **完全相同的 ChatML 渲染**(`build_preference_dataset` 复用 `sft_data.tokenize_conversation`),
# 计分的正好是 SFT 训练过的那些 token:回答加上结尾的 `<|im_end|>`。`pad_preference_batch` 把一批 n 对拼成 2n 行
# (先 n 行 chosen,再 n 行 rejected),右侧补齐。看第一对的 chosen 行里哪些 token 被计分:

# %% tags=["nbval-check-output"]
from llmtrain.dpo import pad_preference_batch

BLOCK_SIZE = TOY["TOY_DPO_BLOCK_SIZE"]
train_pairs = build_preference_dataset(raw_train, tokenizer, max_len=BLOCK_SIZE)
heldout_pairs = build_preference_dataset(raw_heldout, tokenizer, max_len=BLOCK_SIZE)
batch = pad_preference_batch([train_pairs[0], train_pairs[1]], tokenizer.pad_token_id)
row, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
print("不计分(prompt):", repr(tokenizer.decode([t for t, lab in zip(row, labels) if lab == -100])))
print("计分的 token   :", [tokenizer.decode([t]) for t, lab in zip(row, labels) if lab != -100])
print("批的形状:", tuple(batch["input_ids"].shape), "= (2 对 × chosen/rejected, 最长一行的 token 数)")

# %% [markdown]
# 一批里每一对的损失就是 `dpo_loss` 的四个输入:策略和参考模型各给 chosen、rejected 一个对数概率。
# 用 LoRA 时参考模型不必另存一份:**关掉 adapter 的同一个模型就是 SFT 模型**。`llmtrain.dpo.dpo_batch_loss`
# 把这几步串起来:策略模型一次前向算出 2n 行的对数概率(要梯度),再在 `disable_adapter()` 里、不求梯度地算参考模型的,
# 最后交给 `dpo_loss`(练习 3,源码同样放在练习之后)。

# %%
from llmtrain.dpo import dpo_batch_loss

# %% [markdown]
# ## 6.4.4 TRL 的 `DPOTrainer`
#
# TRL 的用法和 `Trainer` 一样:一个模型、一份 `DPOConfig`(`TrainingArguments` 加上 `beta` 等 DPO 的参数)、
# 一个有 `prompt`/`chosen`/`rejected` 三列的数据集。传 `peft_config` 而 `ref_model=None` 时,TRL 自己给模型加上 LoRA,
# 参考模型就是关掉 adapter 的同一个模型,和上面的 `dpo_batch_loss` 一样。先原样用一次:把偏好对写成对话格式交给它,
# 看它把第一对渲染成了哪些 token(`.train()` 就能开始训练,6.4.7 再训练):

# %%
import trl
from peft import LoraConfig
from trl import DPOConfig, DPOTrainer


def dpo_config(run_name: str, **overrides) -> DPOConfig:
    """TRL's DPOConfig on a CPU: fp32 and no activation checkpointing (TRL turns both on by default), quiet."""
    values = dict(output_dir=str(OUTPUT_DIR / run_name), beta=BETA, max_length=BLOCK_SIZE, bf16=False,
                  activation_checkpointing=False, use_cpu=True, report_to="none", save_strategy="no",
                  disable_tqdm=True, seed=SEED, data_seed=SEED)
    values.update(overrides)
    return DPOConfig(**values)


LORA = dict(task_type="CAUSAL_LM", r=8, lora_alpha=32, lora_dropout=0.1,
            target_modules=TOY["TOY_LORA_TARGETS"].split(","))  # 每个线性层,和 code/dpo.sh 的玩具预设相同
as_messages = raw_train.map(lambda ex: {"chosen": [{"role": "assistant", "content": ex["chosen"]}],
                                        "rejected": [{"role": "assistant", "content": ex["rejected"]}]})
plain = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(SFT), args=dpo_config("plain"),
                   train_dataset=as_messages, processing_class=tokenizer, peft_config=LoraConfig(**LORA))
print("TRL", trl.__version__, "| 参考模型:", "关掉 adapter 的同一个模型" if plain.ref_model is None else "另一份模型")
print("prompt 的 token 和我们的相同:", plain.train_dataset[0]["prompt_ids"] == train_pairs[0]["prompt_ids"])
print("TRL 渲染的 chosen:", repr(tokenizer.decode(plain.train_dataset[0]["chosen_ids"])))
print("我们渲染的 chosen:", repr(tokenizer.decode(train_pairs[0]["chosen_ids"])))
del plain

# %% [markdown]
# prompt 一样,回答差一个 token:TRL 用对话模板渲染"prompt + 回答",再减去 prompt,于是 `<|im_end|>` 后面的换行也算进了
# 回答。SFT 从没在这个换行上训练过(它的标签是 -100),生成时模型也在 `<|im_end|>` 就停下。为了让两种实现对同一批
# token 计分,`llmtrain.dpo.TokenizedPairsDPOTrainer` 让 TRL 直接用我们渲染好的 token id。它只改一处:
# `DPOTrainer.__init__` 调用 `_prepare_dataset` 把文本渲染成 `prompt_ids`/`chosen_ids`/`rejected_ids`,
# 而 TRL 没有公开的参数能跳过文本偏好对的这一步,所以子类**覆盖这个私有方法**,原样返回已经分好词的数据集。
# 私有方法在任何一个新版本里都可能改名或改行为:`requirements.txt` 把 TRL 固定在 1.16.x,`tests/test_dpo.py`
# 每次都拿它和 TRL 的损失核对。其余(collator、损失、日志、训练循环)都还是 TRL 的:

# %%
from llmtrain.dpo import TokenizedPairsDPOTrainer

print(inspect.getsource(TokenizedPairsDPOTrainer))

# %% [markdown]
# ### 在同一批数据上核对
#
# 在同一个模型、同一批数据上,用 TRL 和我们的实现各算一遍。设置和后面真正训练时一样:在 SFT 模型上加 LoRA
# (这里把 $B$ 设成标准差 0.01 的随机数:$B = 0$ 时策略就等于参考,奖励全是 0,比不出什么;太大又会让每一对都排错),
# 参考模型是关掉 adapter 的同一个模型。
# `llmtrain.dpo.compare_with_trl` 比较批、参考模型的对数概率、损失和 TRL 记录的各项指标,返回最大差值
# (`tests/test_dpo.py` 用的是同一个函数):

# %%
from llmtrain.dpo import compare_with_trl

check = TokenizedPairsDPOTrainer(model=AutoModelForCausalLM.from_pretrained(SFT), ref_model=None,
                                 args=dpo_config("check"), train_dataset=train_pairs, processing_class=tokenizer,
                                 peft_config=LoraConfig(**LORA))
generator = torch.Generator().manual_seed(SEED)
with torch.no_grad():  # B ≠ 0:策略离开参考模型一点点,一批里有的偏好对排对、有的排错
    for name, p in check.model.named_parameters():
        if "lora_B" in name:
            p.copy_(0.01 * torch.randn(p.shape, generator=generator))
check.remove_callback(PrinterCallback)  # TRL's log line goes to log_history only
check_pairs = [train_pairs[i] for i in range(8)]
diffs = compare_with_trl(check, check_pairs)
# 被比较的量本身有多大:在同一个模型、同一批上用我们的实现再算一遍
check_batch = pad_preference_batch(check_pairs, tokenizer.pad_token_id)
check_args = (check_batch["input_ids"], check_batch["attention_mask"], check_batch["labels"])
with torch.no_grad():
    policy_logps = sequence_logprobs(check.model, *check_args)
    with check.model.disable_adapter():
        reference_logps = sequence_logprobs(check.model, *check_args)
    ours_check = dpo_loss(*policy_logps.chunk(2), *reference_logps.chunk(2), beta=BETA)
sizes = {"batch (ids, mask, labels)": f"{int(check_batch['attention_mask'].sum())} 个 token",
         "reference log-probs": f"{reference_logps.abs().max():.2f}",
         "loss": f"{ours_check.loss.item():.4f}",
         "rewards/chosen": f"{ours_check.chosen_rewards.mean().item():+.4f}",
         "rewards/rejected": f"{ours_check.rejected_rewards.mean().item():+.4f}",
         "rewards/accuracies": f"{ours_check.reward_accuracy:.3f}",
         "rewards/margins": f"{ours_check.reward_margin:+.4f}",
         "logps/chosen": f"{policy_logps.chunk(2)[0].mean().item():.3f}",
         "logps/rejected": f"{policy_logps.chunk(2)[1].mean().item():.3f}"}
display(pd.DataFrame({"比较的量(我们的值)": sizes, "|TRL − 我们|": {k: f"{v:.1e}" for k, v in diffs.items()},
                      "≤ 1e-4": {k: v <= 1e-4 for k, v in diffs.items()}}))
value_diffs = {k: v for k, v in diffs.items() if not k.startswith("batch")}
display(Markdown(
    f"第一列是被比较的量本身:参考模型的对数概率最大到 {reference_logps.abs().max():.1f},"
    f"每一对的奖励差在 {(ours_check.chosen_rewards - ours_check.rejected_rewards).min():+.3f} 到 "
    f"{(ours_check.chosen_rewards - ours_check.rejected_rewards).max():+.3f} 之间,{len(check_pairs)} 对里排对的占 "
    f"{ours_check.reward_accuracy:.0%}:adapter 让策略离开了参考模型,"
    + ("比的不是两个 0。" if 0 < ours_check.reward_accuracy < 1 else "只是奖励准确率落在了 0 或 1 上。")
    + f"值的差最大 {max(value_diffs.values()):.1e}。"))

# %% [markdown]
# 只比前向的值还不够:一个 detach 了一边的损失值完全对、梯度却是错的。再在同一批上比较对 LoRA 参数的梯度,
# 一边是 TRL 的 `compute_loss` 反向,一边是我们的 `dpo_batch_loss` 反向:

# %%
def lora_gradients(loss: torch.Tensor) -> dict[str, torch.Tensor]:
    """Backward `loss` and return a copy of every trainable parameter's gradient (then clear them)."""
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in check.model.named_parameters() if p.requires_grad}
    check.model.zero_grad()
    return grads


check.model.train()
check.model.zero_grad()
trl_grads = lora_gradients(check.compute_loss(check.model, check.data_collator(check_pairs)))
our_grads = lora_gradients(dpo_batch_loss(check.model, check_batch, BETA).loss)
grad_norm = torch.sqrt(sum(g.pow(2).sum() for g in trl_grads.values())).item()
grad_diff = torch.sqrt(sum((trl_grads[n] - our_grads[n]).pow(2).sum() for n in trl_grads)).item()
print(f"对 {len(trl_grads)} 个 LoRA 张量的梯度:TRL 的梯度范数 {grad_norm:.2e},两边之差的范数 {grad_diff:.2e}"
      f"(相对差 {grad_diff / grad_norm:.1e})")

# %% [markdown]
# 两边一致:批完全相同,其余的差在 float32 的舍入量级(一条回答的对数概率是十几个 float32 数的和,
# TRL 的 LM 头分块计算,求和的顺序和我们不同)。`tests/test_dpo.py` 还核对了参考模型是另一份独立模型(全量 DPO)的情形。
#
# ## 6.4.5 手写的训练循环,和 `DPOTrainer` 逐步对照
#
# 一步的损失对上了,训练循环里还有什么?取数据的顺序、优化器、学习率调度、梯度裁剪。`train_lora_dpo_by_hand`
# 把这些写成十几行:

# %%
from llmtrain.dpo import train_lora_dpo_by_hand

print(inspect.getsource(train_lora_dpo_by_hand))

# %% [markdown]
# 让 TRL 在同样的条件下训练同样的步数,两边的差别只剩实现本身:
#
# - **同一个起点**:同一个 SFT 模型,同一份 LoRA 初始权重(A 随机,B = 0)。TRL 在构造时自己建 adapter,
#   我们把它刚建好的 adapter 权重拷进自己的模型。
# - **同样的顺序**:TRL 默认每个 epoch 打乱数据,这里设 `train_sampling_strategy="sequential"`,第 k 步用第 k 批。
# - **没有 dropout**:TRL 默认 `disable_dropout=True`,把 LoRA 的 dropout 也关了;我们的 adapter 建成 dropout 0。
# - **同样的优化器**:`adamw_torch`,不衰减权重,学习率不预热、不衰减(`constant`),梯度裁剪到 TRL 的默认值。

# %%
from peft import get_peft_model

LOOP_STEPS, LOOP_PAIRS = 10, TOY["TOY_DPO_BATCH_SIZE"]
loop_args = dpo_config("loop", per_device_train_batch_size=LOOP_PAIRS, max_steps=LOOP_STEPS, learning_rate=LEARNING_RATE,
                       lr_scheduler_type="constant", optim="adamw_torch", train_sampling_strategy="sequential",
                       logging_steps=1)
trl_loop = TokenizedPairsDPOTrainer(model=AutoModelForCausalLM.from_pretrained(SFT), ref_model=None, args=loop_args,
                                    train_dataset=train_pairs, processing_class=tokenizer, peft_config=LoraConfig(**LORA))
trl_loop.remove_callback(PrinterCallback)
print(f"两边的设置:β = {BETA},学习率 {LEARNING_RATE:g}({loop_args.lr_scheduler_type.value}),{LOOP_STEPS} 步 × {LOOP_PAIRS} 对,"
      f"优化器 {loop_args.optim.value},weight_decay {loop_args.weight_decay},max_grad_norm {loop_args.max_grad_norm},"
      f"disable_dropout {loop_args.disable_dropout},取数据 {loop_args.train_sampling_strategy}")

policy = get_peft_model(AutoModelForCausalLM.from_pretrained(SFT), LoraConfig(**{**LORA, "lora_dropout": 0.0}))
policy.load_state_dict(trl_loop.model.state_dict())  # TRL 刚建好的 adapter:同一个起点
start = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
ours = train_lora_dpo_by_hand(policy, [train_pairs[i] for i in range(LOOP_STEPS * LOOP_PAIRS)], tokenizer.pad_token_id,
                              BETA, LEARNING_RATE, LOOP_PAIRS, LOOP_STEPS)
trl_loop.train()
theirs = [e["loss"] for e in trl_loop.state.log_history if "loss" in e]
trl_weights = dict(trl_loop.model.named_parameters())
pd.DataFrame({"手写循环": [f"{x:.7f}" for x in ours], "TRL DPOTrainer": [f"{x:.7f}" for x in theirs],
              "|差|": [f"{abs(a - b):.1e}" for a, b in zip(ours, theirs)]}, index=pd.RangeIndex(1, LOOP_STEPS + 1, name="step"))

# %% [markdown]
# 训练后的 adapter 怎么比?AdamW 把每个梯度除以它自己的滑动均方根,所以每个元素每步最多走大约一个学习率,不管梯度多小。
# 一个元素的梯度如果在几步里正负相抵,它的步长就是几个几乎抵消的数的差,float32 的舍入差在这里会被放大成看得见的
# 步长差;这种元素上的差有多大,还取决于 CPU 用哪套向量指令求和。所以逐个元素的最大差只拿来看,判断用整体的相对差:
# 两边 adapter 之差的范数,除以 TRL 这几步的更新量的范数(`llmtrain.dpo.relative_update_difference`):

# %%
from llmtrain.dpo import relative_update_difference

print(inspect.getsource(relative_update_difference))

# %%
LOSS_TOLERANCE, UPDATE_TOLERANCE = 1e-5, 1e-3
loss_diff = max(abs(a - b) for a, b in zip(ours, theirs))
update_diff = relative_update_difference(start, dict(policy.named_parameters()), trl_weights)
update_norm = torch.sqrt(sum((trl_weights[n].detach() - p).pow(2).sum() for n, p in start.items())).item()
assert len(theirs) == LOOP_STEPS and loss_diff <= LOSS_TOLERANCE and update_diff <= UPDATE_TOLERANCE
element_diff, element = max(((p - trl_weights[n]).abs().max().item(), n) for n, p in policy.named_parameters()
                            if p.requires_grad)
element_moves = (trl_weights[element] - start[element]).abs()
worst = (dict(policy.named_parameters())[element] - trl_weights[element]).abs().argmax()
display(Markdown(
    f"{LOOP_STEPS} 步里损失从 {ours[0]:.4f} 变到 {ours[-1]:.4f}(变化 {ours[0] - ours[-1]:.4f}),两条轨迹每一步的差最大 "
    f"**{loss_diff:.1e}**(容差 {LOSS_TOLERANCE:.0e})。差从哪里来:0.69 附近相邻两个 float32 数相差 "
    f"{torch.finfo(torch.float32).eps / 2:.1e},TRL 的 LM 头只对计分的位置分块计算,舍入和我们对整张 logits 做 "
    "log_softmax 不同,这点舍入差又随 AdamW 的每一步带下去。"
    f"容差比损失一步里最小的变化({min(abs(a - b) for a, b in zip(ours, ours[1:])):.1e})小得多。\n\n"
    f"训练后,TRL 的 adapter 离起点走了(范数){update_norm:.2e},两边 adapter 之差的范数是它的 **{update_diff:.1e}**"
    f"(容差 {UPDATE_TOLERANCE:.0e})。"
    f"逐个元素看,最大的差 {element_diff:.1e} 出在 `{element.removeprefix('base_model.model.')}` 里:"
    f"这个元素 {LOOP_STEPS} 步只走了 {element_moves.flatten()[worst].item():.1e},"
    f"而同一个矩阵里走得最远的元素走了 {element_moves.max().item():.1e}"
    f"(上限约 {LOOP_STEPS} 步 × 学习率 = {LOOP_STEPS * LEARNING_RATE:.1e})。走得这么少,说明它的梯度在这几步里正负相抵"
    "(梯度一直同号的元素每步都走满约一个学习率),步长正是被舍入左右的那种。"
))

# %% [markdown]
# 为什么不直接 `copy.deepcopy` TRL 的模型当作我们的起点?TRL 构造时给模型的 `forward` 打了补丁
# (`trl.trainer.utils.add_fused_lm_head`,只算被计分位置的对数概率,不生成整张 logits),补丁把**原模型**的 `forward`
# 记在闭包里。深拷贝出来的副本调用的仍是原模型的权重:把副本的权重全部清零,输出一点不变:

# %%
import copy

clone = copy.deepcopy(trl_loop.model)
with torch.no_grad():
    for p in clone.parameters():
        p.zero_()
    same = torch.equal(clone(input_ids=batch["input_ids"]).logits, trl_loop.model(input_ids=batch["input_ids"]).logits)
print("权重清零的副本和原模型输出相同:", same)
del clone

# %% [markdown]
# 所以本节从不深拷贝 TRL 用过的模型:要另一份模型就重新 `from_pretrained`,要 TRL 的 adapter 就拷它的 `state_dict`。
#
# ## 6.4.6 训练前:SFT 模型自己更喜欢哪条回答
#
# 在留出的偏好对上,直接看 SFT 模型给 chosen 和 rejected 的对数概率:

# %%
heldout_batch = pad_preference_batch([heldout_pairs[i] for i in range(len(heldout_pairs))], tokenizer.pad_token_id)
with torch.no_grad():
    logps = sequence_logprobs(sft_model, heldout_batch["input_ids"], heldout_batch["attention_mask"],
                              heldout_batch["labels"])
    before = dpo_batch_loss(sft_model, heldout_batch, BETA, reference=sft_model)  # 训练前:策略 = 参考
chosen_logps, rejected_logps = logps.chunk(2)
print(f"SFT 模型:chosen 平均 log π = {chosen_logps.mean():.2f},rejected 平均 log π = {rejected_logps.mean():.2f}")
print(f"SFT 模型本身认为 chosen 更可能的对数: {(chosen_logps > rejected_logps).sum().item()} / {len(chosen_logps)}")
print(f"训练前(策略 = 参考):DPO 损失 {before.loss.item():.4f}(log 2 = 0.6931),"
      f"奖励准确率 {before.reward_accuracy:.0%},奖励差 {before.reward_margin:.1f}")

# %%
display(Markdown(
    f"SFT 模型给 chosen 的平均对数概率{'低于' if chosen_logps.mean() < rejected_logps.mean() else '高于'} rejected"
    f"({chosen_logps.mean():.2f} 对 {rejected_logps.mean():.2f}),但 chosen 并非不可能:它在 SFT 里见过这句结尾。"
    "注意**奖励准确率在训练开始时按定义就是 0**:策略和参考是同一个模型,每条回答的隐式奖励 "
    "$\\beta \\log \\frac{\\pi}{\\pi_{\\mathrm{ref}}}$ 都是 0,chosen 并不\"严格大于\" rejected。"
    "所以\"训练前\"要看的是 SFT 模型自己的对数概率,而不是奖励准确率。"
))

# %% [markdown]
# chosen 和 rejected 的前半段一字不差,只在答完那句话之后分开:rejected 在这里输出 `<|im_end|>`,chosen 接着说
# "还想知道什么……"。同一个前文下,相同 token 的对数概率在两条回答里完全一样,在 DPO 的差里正好抵消,
# **梯度只作用在两条回答不同的那几个 token 上**。逐个 token 看第一对:

# %%
pair = pad_preference_batch([heldout_pairs[0]], tokenizer.pad_token_id)
with torch.no_grad():
    logits = sft_model(input_ids=pair["input_ids"], attention_mask=pair["attention_mask"]).logits
token_logps = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, pair["input_ids"][:, 1:, None])[..., 0]
scored = pair["labels"][:, 1:] != -100
per_token = [[(tokenizer.decode([t]), round(lp, 2)) for t, lp, keep in
              zip(pair["input_ids"][i, 1:].tolist(), token_logps[i].tolist(), scored[i].tolist()) if keep] for i in (0, 1)]
shared = next(k for k, (c, r) in enumerate(zip(*per_token)) if c != r)
print("两条回答共同的前缀:", "".join(t for t, _ in per_token[0][:shared]),
      f"(逐 token 对数概率完全相同:{per_token[0][:shared] == per_token[1][:shared]})")
print("chosen 从这里起:  ", per_token[0][shared:])
print("rejected 从这里起:", per_token[1][shared:])

# %%
(fork_chosen, lp_chosen), (fork_rejected, lp_rejected) = per_token[0][shared], per_token[1][shared]
rest = sum(lp for _, lp in per_token[0][shared + 1:])
display(Markdown(
    f"分叉处,SFT 模型给 `{fork_rejected}` 的对数概率是 {lp_rejected},给 chosen 的 \"{fork_chosen}\" 是 {lp_chosen}"
    f"({'更倾向于答完就停' if lp_rejected > lp_chosen else '更倾向于接着说下去'});"
    f"一旦说出 \"{fork_chosen}\",chosen 后面 {len(per_token[0]) - shared - 1} 个 token 的对数概率合计 {rest:.2f}"
    f"(概率 {math.exp(rest):.0%}{',几乎是确定的' if math.exp(rest) > 0.5 else ''})。"
    "DPO 要做的就是把分叉处的选择翻过来。"
))

# %% [markdown]
# ## 6.4.7 用 TRL 做 LoRA-DPO
#
# 和 `code/dpo.py --use_lora` 一样:peft 的 LoRA 加在每个线性层上(注意力的 q、k、v、o 和 MLP 的 gate、up、down,
# 与 6.3 里玩具预设的 LoRA SFT 相同;只加在教材的 $W_q, W_v$ 上时,有的种子学不会结尾句,见 README),`ref_model=None`,
# TRL 计算参考对数概率时关掉 adapter——**内存里只有一份模型权重**。TRL 的 `DPOConfig` 默认开 bf16 和梯度检查点,
# CPU 上都关掉;它默认 `disable_dropout=True`,LoRA 的 dropout 也一并关掉。这次用玩具预设的完整设置
# (打乱数据、预热后线性衰减):

# %%
def train_lora_dpo(run_name: str, epochs: int) -> TokenizedPairsDPOTrainer:
    """LoRA-DPO on the toy SFT model with this notebook's settings; returns the trained TRL trainer."""
    policy = AutoModelForCausalLM.from_pretrained(SFT)
    policy.config.use_cache = False  # 训练时用不上 KV cache
    args = dpo_config(run_name, per_device_train_batch_size=BATCH_SIZE, per_device_eval_batch_size=len(heldout_pairs),
                      num_train_epochs=epochs, learning_rate=LEARNING_RATE,
                      warmup_steps=TOY["TOY_DPO_WARMUP_STEPS"], logging_steps=2)
    dpo_trainer = TokenizedPairsDPOTrainer(model=policy, ref_model=None, args=args, train_dataset=train_pairs,
                                           processing_class=tokenizer, peft_config=LoraConfig(**LORA))
    dpo_trainer.remove_callback(PrinterCallback)  # 不逐条打印日志;下面从 log_history 里画图
    dpo_trainer.train()
    policy.config.use_cache = True
    return dpo_trainer


print(f"β = {BETA},学习率 {LEARNING_RATE:g}(预热 {TOY['TOY_DPO_WARMUP_STEPS']} 步后线性衰减),{EPOCHS} 个 epoch,"
      f"每步 {BATCH_SIZE} 对,LoRA r={LORA['r']}、alpha={LORA['lora_alpha']},加在 {LORA['target_modules']} 上")
trainer = train_lora_dpo("lora-dpo", EPOCHS)
print("参考模型:", "关掉 adapter 的同一个模型" if trainer.ref_model is None else "另一份模型")
trainer.model.print_trainable_parameters()
history = [e for e in trainer.state.log_history if "rewards/accuracies" in e]
print(f"{trainer.state.global_step} 步;第一次记录的 loss {history[0]['loss']:.2f},最后一次 {history[-1]['loss']:.2f}")

# %% [markdown]
# TRL 每次记录都带上 DPO 的指标:`rewards/accuracies`(批内 chosen 奖励高于 rejected 的比例)、`rewards/margins`
# (两者奖励之差的平均)、`logps/chosen`、`logps/rejected`(策略模型下两条回答的对数概率)。画出来
# (第一张图左轴是损失,右轴是奖励准确率):

# %%
import matplotlib.pyplot as plt

from llmtrain.plotting import plot_series


def curve(log_history, key):
    return [e["step"] for e in log_history], [e[key] for e in log_history]


def plot_loss_and_accuracy(log_history, out_png: str, title: str) -> str:
    """DPO loss on the left axis, reward accuracy on the right one: two scales, each labelled."""
    fig, loss_ax = plt.subplots(figsize=(6, 3.5))
    acc_ax = loss_ax.twinx()
    loss_ax.plot(*curve(log_history, "loss"), "o-", color="tab:blue", markersize=3, label="DPO loss")
    acc_ax.plot(*curve(log_history, "rewards/accuracies"), "s--", color="tab:orange", markersize=3,
                label="reward accuracy")
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("DPO loss (log 2 = 0.693 at the start)", color="tab:blue")
    acc_ax.set_ylabel("reward accuracy (training batch)", color="tab:orange")
    acc_ax.set_ylim(-0.05, 1.05)
    loss_ax.set_title(title)
    loss_ax.grid(alpha=0.3)
    fig.legend(loc="center right", bbox_to_anchor=(0.85, 0.5))
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


display(Image(plot_loss_and_accuracy(history, str(IMAGES_DIR / "6.4_dpo_loss_accuracy.png"),
                                     "6.4 toy LoRA-DPO: loss and reward accuracy")))
display(Image(plot_series({"chosen reward": curve(history, "rewards/chosen"),
                           "rejected reward": curve(history, "rewards/rejected"), "margin": curve(history, "rewards/margins")},
                          str(IMAGES_DIR / "6.4_dpo_rewards.png"), "step", "beta * log(pi / pi_ref)",
                          "6.4 implicit rewards (training batches)")))
display(Image(plot_series({"log pi(chosen)": curve(history, "logps/chosen"),
                           "log pi(rejected)": curve(history, "logps/rejected")},
                          str(IMAGES_DIR / "6.4_dpo_logps.png"), "step", "sequence log-prob",
                          "6.4 log-probs under the policy (training batches)")))


def logp_summary(log_history):
    """First, highest and last logged log pi(chosen), and first and last log pi(rejected), as one line."""
    chosen = [e["logps/chosen"] for e in log_history]
    return (f"log π(chosen):第一次 {chosen[0]:.2f},最高 {max(chosen):.2f},最后 {chosen[-1]:.2f};"
            f"log π(rejected):第一次 {log_history[0]['logps/rejected']:.2f},最后 {log_history[-1]['logps/rejected']:.2f}")


print("训练批上", logp_summary(history))

# %%
def change(first: float, last: float) -> str:
    return "升" if last > first else "降" if last < first else "没变"


first, last = history[0], history[-1]
flipped = first["logps/chosen"] < first["logps/rejected"] and last["logps/chosen"] > last["logps/rejected"]
display(Markdown(
    f"损失从第一次记录的 {first['loss']:.3f} {change(first['loss'], last['loss'])}到 {last['loss']:.3f},"
    f"训练批上的奖励准确率从 {first['rewards/accuracies']:.0%} 到 {last['rewards/accuracies']:.0%}。"
    f"chosen 的对数概率{change(first['logps/chosen'], last['logps/chosen'])}了"
    f"({first['logps/chosen']:.2f} → {last['logps/chosen']:.2f}),"
    f"rejected 的{change(first['logps/rejected'], last['logps/rejected'])}了"
    f"({first['logps/rejected']:.2f} → {last['logps/rejected']:.2f}):最后一次记录时 chosen "
    + ("高于" if last["logps/chosen"] > last["logps/rejected"] else "仍低于") + " rejected"
    + (",第一次记录时正相反,分叉处的选择翻了过来。" if flipped else "。")
    + "DPO 只要求 chosen 的对数比**相对** rejected 变大,并不要求 chosen 本身的概率变大——6.4.8 里训练得更久时,"
    "就能看到 chosen 的对数概率也会掉下去。"
))


# %% [markdown]
# ### 损失为什么越降越慢:DPO 梯度的权重
#
# 记 $\hat r_w = \beta \log \frac{\pi_\theta(y_w \mid x)}{\pi_{\mathrm{ref}}(y_w \mid x)}$,$\hat r_l$ 同理。对损失求导:
#
# $$\nabla_\theta \mathcal{L}_{\mathrm{DPO}} = -\beta\, \sigma(\hat r_l - \hat r_w)\,
# \big[\nabla_\theta \log \pi_\theta(y_w \mid x) - \nabla_\theta \log \pi_\theta(y_l \mid x)\big]$$
#
# 方括号里是"抬高 chosen、压低 rejected"的方向,前面的 $\sigma(\hat r_l - \hat r_w)$ 是每一对的**权重**:还排错的一对
# ($\hat r_l > \hat r_w$)权重接近 1,已经排对、拉得越开的一对权重越接近 0。训练开始时两个奖励都是 0,每一对的权重都是 0.5。
# 用训练好的 adapter 在全部训练偏好对上算一遍:

# %%
train_batch = pad_preference_batch([train_pairs[i] for i in range(len(train_pairs))], tokenizer.pad_token_id)
with torch.no_grad():
    trained = dpo_batch_loss(trainer.model, train_batch, BETA)
weights = torch.sigmoid(trained.rejected_rewards - trained.chosen_rewards)
margins = trained.chosen_rewards - trained.rejected_rewards
print(f"{len(weights)} 对训练偏好对,训练后:奖励差 r̂_w − r̂_l 最小 {margins.min():.3f}、中位数 {margins.median():.3f}、最大 {margins.max():.3f}")
print(f"梯度权重 σ(r̂_l − r̂_w):训练前每对 0.5,训练后最小 {weights.min():.3f}、中位数 {weights.median():.3f}、最大 {weights.max():.3f}")
print(f"损失 −log σ(r̂_w − r̂_l) 的平均:训练前 {math.log(2):.3f},训练后 {trained.loss.item():.3f}")
print("损失和权重都只由奖励差 m 决定:", ";".join(
    f"m = {m:g} 时损失 {-math.log(1 / (1 + math.exp(-m))):.3f}、权重 {1 / (1 + math.exp(m)):.3f}" for m in (0, 0.5, 1, 2, 4)))

# %%
display(Markdown(
    f"训练后奖励差的中位数是 {margins.median():.2f},对应的梯度权重中位数 {weights.median():.2f}(训练开始时 0.5):"
    "排对了的偏好对推得越来越轻。损失 $-\\log \\sigma(m)$ 在 $m$ 变大时只是慢慢趋近 0,它的斜率正是这个权重,"
    "所以损失曲线越往后越平;再加上学习率在线性衰减,损失停在 "
    f"{trained.loss.item():.2f} 附近,而不是降到 0。β 把对数比缩小了 {1 / BETA:g} 倍:要让权重降到 0.1 以下,"
    f"对数比之差要超过 {math.log(9) / BETA:.0f} 左右,这正是 β 限制策略离参考模型多远的方式。"))

# %% [markdown]
# 在留出的偏好对上评估(TRL 的 `evaluate`,奖励相对关掉 adapter 的参考模型计算):

# %%
after = trainer.evaluate(heldout_pairs)
print(f"留出偏好对的奖励准确率:训练前 {before.reward_accuracy:.0%} → 训练后 {after['eval_rewards/accuracies']:.0%}"
      f"(奖励差 {after['eval_rewards/margins']:.2f})")
print(f"留出偏好对的平均 log π:chosen {chosen_logps.mean():.2f} → {after['eval_logps/chosen']:.2f},"
      f"rejected {rejected_logps.mean():.2f} → {after['eval_logps/rejected']:.2f}")

# %% [markdown]
# ## 6.4.8 成绩单:训练前后
#
# 奖励准确率只说明模型"打分"时偏向 chosen,要看模型**生成时**是不是真的这样回答,还得用成绩单:
# 对 `eval.jsonl` 的问题做贪心生成,统计以"还想知道什么,尽管问我。"结尾的回答所占比例,同时看严格准确率有没有下降
# (`grade_replies` 先去掉这句结尾再按 `is_strict_match` 判分,所以这句话本身不算对也不算错)。
# 把 LoRA 合并进权重后评估;本节的成绩单存在 `output/notebooks/6.4/scorecard.json`,每次运行从空白开始:

# %%
from llmtrain.evaluation import format_scorecard, read_scorecard, save_scorecard_row, scorecard_row

EVAL_FILE = str(ROOT / "data" / "sample" / "eval.jsonl")
SCORECARD = OUTPUT_DIR / "scorecard.json"
rows = {}


def add_row(name, model):
    """Score `model` on eval.jsonl, save the row in this notebook's scorecard and print its key numbers."""
    rows[name] = scorecard_row(model, tokenizer, EVAL_FILE, style_suffix=STYLE)
    save_scorecard_row(str(SCORECARD), name, rows[name])
    row = rows[name]
    print(f"{name:26s} 以“{STYLE}”结尾 {row['style']:.0%},sft_seen 准确率 {row['sft_seen']:.0%},"
          f"heldout 准确率 {row['heldout']:.0%}")


add_row("SFT before DPO (6.4)", sft_model)
add_row("DPO (6.4)", trainer.model.merge_and_unload().eval())  # 训练已结束:直接合并,不深拷贝(见 6.4.5)

# %%
def points(before_value: float, after_value: float) -> str:
    delta = round(100 * after_value) - round(100 * before_value)
    return f"{before_value:.0%} → {after_value:.0%}(" + ("持平" if delta == 0 else f"{delta:+d} 个百分点") + ")"


sft_row, dpo_row = rows["SFT before DPO (6.4)"], rows["DPO (6.4)"]
wrong_before = [i for i, g in enumerate(sft_row["replies"]) if not g["correct"]]
still_wrong = [i for i in wrong_before if not dpo_row["replies"][i]["correct"]]
newly_wrong = [i for i, g in enumerate(dpo_row["replies"]) if not g["correct"] and sft_row["replies"][i]["correct"]]
display(Markdown(
    f"奖励准确率到了 {after['eval_rewards/accuracies']:.0%},生成{'也跟着变了' if dpo_row['style'] > sft_row['style'] else '却没有变'}:"
    f"以这句话结尾的回答 {points(sft_row['style'], dpo_row['style'])};"
    f"`sft_seen` 准确率 {points(sft_row['sft_seen'], dpo_row['sft_seen'])},"
    f"`heldout` 准确率 {points(sft_row['heldout'], dpo_row['heldout'])}。"
    f"偏好对里 chosen 和 rejected 的事实完全相同,DPO 没有教任何事实:SFT 模型答错的 {len(wrong_before)} 题,"
    f"DPO 之后仍答错 {len(still_wrong)} 题;反过来,SFT 答对、DPO 之后答错的有 {len(newly_wrong)} 题"
    + ("(DPO 没有教新事实,却会把一部分已经会的回答带偏,下面\"推过头\"一节把这一点放大来看)。" if newly_wrong else "。")
    + "换随机种子重跑整条流程时这些数会变,"
    "几个种子上的结果见 `bench/seed_spread.py`(README 的\"实测结果\")。"
))

# %% [markdown]
# 没有教事实,为什么还有题目从错变对?把 SFT 答错、DPO 之后答对的回答并排看:

# %%
fixed = [i for i in wrong_before if dpo_row["replies"][i]["correct"]]


def ran_on(g) -> bool:
    """The reply said the answer but did not stop there: no <|im_end|> within the limit, or the answer repeated."""
    return not g["stopped"] or g["reply"].count(g["answer"]) > 1


for i in fixed:
    before_g, after_g = sft_row["replies"][i], dpo_row["replies"][i]
    print(f"{before_g['question']}(答案 {before_g['answer']})\n  SFT: {before_g['reply'][:60]!r}"
          f"{'…' if len(before_g['reply']) > 60 else ''}(停在 <|im_end|>:{before_g['stopped']})\n  DPO: {after_g['reply']!r}")
runaway = [i for i in fixed if ran_on(sft_row["replies"][i])]
if fixed:
    display(Markdown(
        f"DPO 之后答对的 {len(fixed)} 题里,{len(runaway)} 题是 SFT 模型把答案说对了却停不下来(一遍遍重复,"
        "直到生成的长度上限),严格判分因此算错。"
        + ("DPO 学的正是\"答完这句就结束\":chosen 在答案后面接一句结尾,再以 `<|im_end|>` 收住,这几条失控的重复就此停下。"
           "所以 heldout 的上升来自回答的收尾,不是新学到的事实。" if runaway else "")))

# %% [markdown]
# ### 为什么不直接在 chosen 上做 SFT?
#
# chosen 就是想要的回答,把"问题 + chosen"当成 SFT 数据再训练一轮不行吗?做一个对照:同一个 SFT 模型、同样的 LoRA
# (每个线性层,r=8,不加 dropout,和 TRL 的 DPO 一样)、同样的每步对话数、epoch 数和学习率,只把损失换成 6.2 的 SFT 损失
# (`llmtrain.training.build_trainer`,只监督回答)。学习率用 DPO 的,再用它的 10 倍各训练一次:

# %%
import datasets

from llmtrain.lora import add_peft_lora
from llmtrain.notebook import toy_training_args
from llmtrain.sft_data import build_sft_dataset, make_collator
from llmtrain.training import build_trainer

chosen_sft_data = build_sft_dataset(datasets.Dataset.from_dict({"conversations": [
    prompt + [{"role": "assistant", "content": chosen}] for prompt, chosen in zip(raw_train["prompt"], raw_train["chosen"])]}),
    tokenizer, max_len=BLOCK_SIZE)


def train_sft_on_chosen(run_name: str, learning_rate: float):
    """LoRA SFT of the SFT model on prompt + chosen: DPO's adapters, batch, epochs and schedule, SFT's loss."""
    policy = add_peft_lora(AutoModelForCausalLM.from_pretrained(SFT), LORA["target_modules"], LORA["r"],
                           LORA["lora_alpha"], 0.0)
    args = toy_training_args(OUTPUT_DIR / run_name, per_device_train_batch_size=BATCH_SIZE, num_train_epochs=EPOCHS,
                             learning_rate=learning_rate, warmup_steps=TOY["TOY_DPO_WARMUP_STEPS"], logging_steps=2,
                             seed=SEED, data_seed=SEED)
    sft_trainer = build_trainer(policy, args, tokenizer, chosen_sft_data, data_collator=make_collator(tokenizer, packing=True))
    sft_trainer.remove_callback(PrinterCallback)
    sft_trainer.train()
    sft_trainer.model.config.use_cache = True
    return sft_trainer


baseline_logps = {}
for lr in (LEARNING_RATE, 10 * LEARNING_RATE):
    name = f"SFT on chosen, lr {lr:g} (6.4)"
    sft_trainer = train_sft_on_chosen(f"sft-on-chosen-{lr:g}", lr)
    with torch.no_grad():
        baseline_logps[name] = sequence_logprobs(sft_trainer.model, heldout_batch["input_ids"],
                                                 heldout_batch["attention_mask"], heldout_batch["labels"]).chunk(2)
    print(f"{sft_trainer.state.global_step} 步(DPO 是 {trainer.state.global_step} 步)")
    add_row(name, sft_trainer.model.merge_and_unload().eval())

# %%
compare = {"SFT before DPO (6.4)": (chosen_logps, rejected_logps),
           "DPO (6.4)": (torch.tensor([after["eval_logps/chosen"]]), torch.tensor([after["eval_logps/rejected"]]))}
compare |= baseline_logps
pd.DataFrame({name: {"结尾句": f"{rows[name]['style']:.0%}", "sft_seen": f"{rows[name]['sft_seen']:.0%}",
                     "heldout": f"{rows[name]['heldout']:.0%}",
                     "留出偏好对 log π(chosen)": f"{c.mean():.2f}", "log π(rejected)": f"{r.mean():.2f}",
                     "两者之差": f"{c.mean() - r.mean():+.2f}"}
              for name, (c, r) in compare.items()}).T

# %%
with torch.no_grad():  # SFT 模型(训练前)给留出偏好对里 chosen 的每个 token 的对数概率
    logits = sft_model(input_ids=heldout_batch["input_ids"], attention_mask=heldout_batch["attention_mask"]).logits
token_lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, heldout_batch["input_ids"][:, 1:, None])[..., 0]
scored_tokens = heldout_batch["labels"][:, 1:] != -100
n_pairs, prefix_nll, total_nll = len(heldout_pairs), 0.0, 0.0
for i in range(n_pairs):
    chosen_ids = heldout_batch["input_ids"][i, 1:][scored_tokens[i]].tolist()
    rejected_ids = heldout_batch["input_ids"][n_pairs + i, 1:][scored_tokens[n_pairs + i]].tolist()
    fork = next(k for k, (a, b) in enumerate(zip(chosen_ids, rejected_ids)) if a != b)
    chosen_lp = token_lp[i][scored_tokens[i]]
    prefix_nll, total_nll = prefix_nll - chosen_lp[:fork].sum().item(), total_nll - chosen_lp.sum().item()
print(f"SFT 模型下,{n_pairs} 条留出 chosen 的负对数概率合计 {total_nll:.1f},其中落在与 rejected 相同的前缀上的 "
      f"{prefix_nll:.1f}({prefix_nll / total_nll:.0%})")

# %%
same_lr, ten_lr = (f"SFT on chosen, lr {lr:g} (6.4)" for lr in (LEARNING_RATE, 10 * LEARNING_RATE))
gap = {name: (c.mean() - r.mean()).item() for name, (c, r) in compare.items()}
rejected_mean = {name: r.mean().item() for name, (c, r) in compare.items()}
sft_also_learns = rows[same_lr]["style"] >= rows["DPO (6.4)"]["style"] - 0.05
display(Markdown(
    f"同样的学习率、同样的 {trainer.state.global_step} 步,在 chosen 上做 SFT 让结尾句从 {rows['SFT before DPO (6.4)']['style']:.0%} "
    f"到 {rows[same_lr]['style']:.0%},DPO 到 {rows['DPO (6.4)']['style']:.0%};学习率放大 10 倍,SFT 到 "
    f"{rows[ten_lr]['style']:.0%}(sft_seen {rows[ten_lr]['sft_seen']:.0%},heldout {rows[ten_lr]['heldout']:.0%})。"
    f"留出偏好对上 chosen 与 rejected 的对数概率之差:SFT 模型 {gap['SFT before DPO (6.4)']:+.2f},DPO 之后 {gap['DPO (6.4)']:+.2f},"
    f"在 chosen 上 SFT 之后 {gap[same_lr]:+.2f} / {gap[ten_lr]:+.2f}。\n\n"
    + ("**在这个玩具偏好上,只在 chosen 上做 SFT 也学得会**。原因在上一格:SFT 的损失是 chosen 每个 token 的负对数概率之和,"
       f"而 SFT 模型早就会说答案,这个和只有 {prefix_nll / total_nll:.0%} 落在与 rejected 相同的前缀上,"
       "SFT 的梯度其实也集中在分叉处和那句结尾上,和 DPO 的去处差不多。" if sft_also_learns else
       f"同样的学习率下,在 chosen 上做 SFT 的结尾句不如 DPO。")
    + "两者的差别在别处。第一,SFT 从不看 rejected:\"答完就停\"只是因为分叉处 chosen 说了别的才被间接压低;"
    f"同样的学习率下,留出 rejected 的平均 log π 在 DPO 之后是 {rejected_mean['DPO (6.4)']:.2f},"
    f"在 chosen 上 SFT 之后是 {rejected_mean[same_lr]:.2f}。第二,SFT 没有参考模型:它一直把 log π(chosen) 往 0 推,"
    "DPO 只要求相对参考模型拉开差距,拉开之后权重 $\\sigma(\\hat r_l - \\hat r_w)$ 变小,就不再使劲。"
    "偏好数据不可替代的,是 rejected 也像样、甚至是 SFT 模型自己更愿意说的回答,好坏散在整条回答里:"
    "只模仿 chosen,学不到\"另一条差在哪里\"。"))

# %% [markdown]
# ### 推过头会怎样
#
# DPO 的损失只看 chosen 相对 rejected 的对数比,只要还能把两者拉开,它就一直推。同样的设置,训练 3 倍的 epoch:

# %%
print(f"{OVERTRAIN_EPOCHS} 个 epoch(= 3 × {EPOCHS}),其余设置同上")
long_trainer = train_lora_dpo("lora-dpo-long", OVERTRAIN_EPOCHS)
long_history = [e for e in long_trainer.state.log_history if "rewards/accuracies" in e]
print(f"{long_trainer.state.global_step} 步;训练批上", logp_summary(long_history))
display(Image(plot_series({"log pi(chosen)": curve(long_history, "logps/chosen"),
                           "log pi(rejected)": curve(long_history, "logps/rejected")},
                          str(IMAGES_DIR / "6.4_dpo_logps_long.png"), "step", "sequence log-prob",
                          f"6.4 log-probs, {OVERTRAIN_EPOCHS} epochs (training batches)")))
LONG = f"DPO, {OVERTRAIN_EPOCHS} epochs (6.4)"
add_row(LONG, long_trainer.model.merge_and_unload().eval())
display(Markdown(format_scorecard(read_scorecard(str(SCORECARD)))))


# %%
def starts_with_person(row) -> float:
    """Share of replies that begin with the name of the person the question asks about."""
    return sum(g["reply"].startswith(person(g["question"])) for g in row["replies"]) / len(row["replies"])


for name, row in rows.items():
    print(f"{name:26s} 以问到的人名开头的回答 {starts_with_person(row):.0%}")

# %%
long_row = rows[LONG]
chosen_long = [e["logps/chosen"] for e in long_history]
first_c, peak_c, last_c = chosen_long[0], max(chosen_long), chosen_long[-1]
shape = ("先升后降,最后比第一次记录还低" if peak_c > first_c > last_c else
         "先升后降,但最后仍高于第一次记录" if peak_c > last_c >= first_c else "一路没有回落")
accuracy_fell = long_row["sft_seen"] < dpo_row["sft_seen"] or long_row["heldout"] < dpo_row["heldout"]
display(Markdown(
    f"训练 {OVERTRAIN_EPOCHS} 个 epoch,chosen 的对数概率{shape}({first_c:.2f} → 最高 {peak_c:.2f} → {last_c:.2f}),"
    f"rejected 被压到 {long_history[-1]['logps/rejected']:.2f}。文献里常说的现象就是这样:DPO 只管两者之差,"
    "压 rejected 的同时 chosen 也可能一起往下掉。"
    f"成绩单上,结尾句 {points(dpo_row['style'], long_row['style'])}(与 {EPOCHS} 个 epoch 相比),"
    f"`sft_seen` {points(dpo_row['sft_seen'], long_row['sft_seen'])},"
    f"`heldout` {points(dpo_row['heldout'], long_row['heldout'])};"
    f"以问到的人名开头的回答 {points(starts_with_person(dpo_row), starts_with_person(long_row))}。"
    + ("每一对里 rejected 和 chosen 只在答完之后分叉,可 LoRA 的参数在所有位置共用:把\"答完就停\"压得太狠,"
       "前面的回答也被带偏了。所以 DPO 的 epoch 和学习率都要小,`code/presets/toy.env` 用 "
       f"{EPOCHS} 个 epoch;判断训练得够不够,看的是生成,不是奖励准确率。" if accuracy_fell else
       "这一次准确率没有下降;判断训练得够不够,看的仍是生成,不是奖励准确率。")
))

# %% [markdown]
# 几条回答对照(`sft_seen` 取两条;`heldout` 取 SFT 答对的一条和答错的一条,如果有;✗ 表示按严格规则判错):

# %%
replies = {name: row["replies"] for name, row in rows.items() if not name.startswith("SFT on chosen")}
sft_replies_graded = replies["SFT before DPO (6.4)"]
seen = [i for i, g in enumerate(sft_replies_graded) if g["split"] == "sft_seen"][:2]
heldout_right = [i for i, g in enumerate(sft_replies_graded) if g["split"] == "heldout" and g["correct"]][:1]
heldout_wrong = [i for i, g in enumerate(sft_replies_graded) if g["split"] == "heldout" and not g["correct"]][:1]
pd.DataFrame([{"问题": sft_replies_graded[i]["question"],
               **{name.removesuffix(" (6.4)"): r[i]["reply"] + ("" if r[i]["correct"] else " ✗")
                  for name, r in replies.items()}} for i in seen + heldout_right + heldout_wrong])

# %% [markdown]
# ## 在 GPU 上运行
#
# 教材规模的作业:6.2 节 `bash code/finetune.sh` 得到的 Qwen2.5-1.5B SFT 模型,加上公开的中英文偏好数据
# `llamafactory/DPO-En-Zh-20k`(中文部分,由 `python code/download_dataset.py dpo --local_dir autodl-tmp/dataset/dpo_data` 下载),
# LoRA r=8,bf16,1 个 epoch:
#
# ```bash
# python code/download_dataset.py dpo --local_dir autodl-tmp/dataset/dpo_data
# USE_LORA=1 bash code/dpo.sh        # 默认就是 LoRA;参考模型 = 关掉 adapter 的同一个模型
# USE_LORA=0 bash code/dpo.sh        # 全量 DPO:TRL 另外加载一份冻结的模型作参考
# PRESET=toy bash code/dpo.sh        # 玩具:2 个 CPU 进程,就是 6.4.7 的设置
# bash code/dpo.sh --loss_type ipo   # 额外参数原样交给 code/dpo.py(这里换成 IPO 损失)
# ```
#
# LoRA-DPO 和全量 DPO 的差别主要在内存:全量 DPO 的每个参数都有梯度和 Adam 状态,还要多存一份参考模型。
# 按 bf16 权重、混合精度 AdamW 计算 Qwen2.5-1.5B 的模型状态(不含激活和 logits;`bench/dpo_lora_vs_full.py`
# 在玩具模型上实测两种做法的内存和速度):

# %% tags=["nbval-check-output"]
from llmtrain.memory import dpo_model_state_bytes
from llmtrain.modeling import qwen2_5_1_5b_config

GiB = 2**30
table = {}
for name, targets in [("全量 DPO", None), ("LoRA-DPO (q_proj, v_proj, r=8)", ["q_proj", "v_proj"])]:
    states = dpo_model_state_bytes(qwen2_5_1_5b_config(), targets, r=8)
    table[name] = {"策略模型(权重+梯度+Adam)": f"{states['policy'] / GiB:.1f} GiB",
                   "参考模型": f"{states['reference'] / GiB:.1f} GiB",
                   "合计": f"{sum(states.values()) / GiB:.1f} GiB"}
pd.DataFrame(table).T

# %%
print(f"本 notebook 运行用时 {time.perf_counter() - START:.0f} 秒")

# %% [markdown]
# ## 练习
#
# 练习在 `exercises/ex6_4_dpo.py`,检查:`make check-exercises EX=6.4`。评分程序用随机初始化的玩具 Qwen2 和样例偏好对,
# 比较值,也比较梯度。
#
# 1. `sequence_logprobs`:一条回答在给定提示下的对数概率。学到:logits 要错开一位;只有回答的 token 计分;
#    bf16 的 logits 先升到 fp32 再 log_softmax;不要在函数里切换 train/eval(train 模式下 dropout 照常);
#    为什么用 log_softmax 而不是 log(softmax)(很自信的模型上后者得到 -inf)。
# 2. `dpo_loss`:由四个序列对数概率和 β 算出 DPO 损失。学到:符号、β 的位置、为什么减去参考模型、批内平均;
#    对数比相差几百时手写的 log σ 会溢出;loss 要对 chosen 和 rejected 两边都有梯度。
# 3. `dpo_batch_loss`:LoRA 策略上一步 DPO 的损失。学到:参考模型就是关掉适配器的同一个模型(不另存一份、不求梯度、
#    用完打开);`pad_preference_batch` 前一半是 chosen、后一半是 rejected;传了 reference 时(全参数 DPO)就用它。
#
# 评分程序认得常见错误并说明原因:符号反了、没减参考模型、求和而不是平均、detach 了一边(值对、梯度错)、
# 把提示的 token 也算进对数概率、没有错开一位、bf16 里算 log_softmax、参考模型与策略相同(loss 恒为 log 2)、
# 适配器没有重新打开、chosen/rejected 分错、参考模型有了梯度。做完对照 `code/llmtrain/dpo.py`。

# %% [markdown]
# ### 练习之后:课程的实现
#
# `llmtrain.dpo` 里的三个函数,6.4.3 起用的就是它们:

# %%
for function in (sequence_logprobs, dpo_loss, dpo_batch_loss):
    print(inspect.getsource(function))
