# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
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
# # 6.4 偏好对齐:从零实现 DPO,和 TRL 核对,再用 LoRA 训练
#
# 教材第六章讲完了预训练、SFT 和 LoRA,说 LoRA 同样适用于 DPO、KTO 这类对齐方法,但没有真正演示对齐。
# 本节补上这一步:推导 DPO 的损失,**自己实现它**并和 TRL 的 `DPOTrainer` 逐项核对,
# 然后用 TRL + peft 在 6.2 的玩具 SFT 模型上做一次 LoRA-DPO,最后在记分卡上对比训练前后。
#
# 本节的实现在 `code/llmtrain/dpo.py`,脚本是 `code/dpo.py` / `code/dpo.sh`。

# %% tags=["parameters"]
from llmtrain.toy import toy_preset

TOY = toy_preset()  # code/presets/toy.env:与 PRESET=toy bash code/dpo.sh 用同一组数值
EPOCHS = TOY["TOY_DPO_EPOCHS"]
LEARNING_RATE = TOY["TOY_DPO_LR"]
BETA = TOY["TOY_DPO_BETA"]  # DPO 的 beta:策略模型离参考模型能走多远
BATCH_SIZE = TOY["TOY_NUM_PROCESSES"] * TOY["TOY_DPO_BATCH_SIZE"]  # 脚本是 2 个进程 × 4 对,这里一个进程 8 对
RPO_EPOCHS = 4  # 6.4.6:DPO + SFT 项,LoRA 加在全部线性层上
RPO_LEARNING_RATE = 1e-3
SEED = 42

# %%
import copy
import inspect
import os
import time

import pandas as pd
import torch
from IPython.display import Image, Markdown, display
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback

from llmtrain import PROJECT_ROOT as ROOT
from llmtrain.notebook import setup_notebook
from llmtrain.toy import ensure_toy_sft

START = time.perf_counter()
if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # TRL imports DeepSpeed, which otherwise warns that it found no GPU
IMAGES_DIR = setup_notebook(SEED)
OUTPUT_DIR = ROOT / "output" / "notebooks" / "6.4"
TRAIN_FILE = ROOT / "data" / "sample" / "dpo.jsonl"
HELDOUT_FILE = ROOT / "data" / "sample" / "dpo_heldout.jsonl"
SFT = ensure_toy_sft()  # output/toy/sft;没有时先用 code/finetune.sh 做一次 SFT
tokenizer = AutoTokenizer.from_pretrained(SFT)
sft_model = AutoModelForCausalLM.from_pretrained(SFT).eval()
print("起点(SFT 模型):", SFT.relative_to(ROOT))

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
# 本节的玩具偏好:回答关于人物的问题时,**以"据我所知,"开头**。chosen 是加了这个开头的回答,rejected 是 SFT 模型
# 学到的原样回答,两者的事实完全相同。`dpo.jsonl` 用 14 个人,`dpo_heldout.jsonl` 用另外 6 个人,用来检验学到的是
# "风格"而不是记住了某几个问题:

# %%
from llmtrain.dpo import build_preference_dataset, load_preference_dataset

raw_train, raw_heldout = load_preference_dataset([str(TRAIN_FILE)]), load_preference_dataset([str(HELDOUT_FILE)])
print(f"训练偏好对 {len(raw_train)} 条,留出偏好对 {len(raw_heldout)} 条")
example = raw_train[0]
print("prompt  :", example["prompt"][-1]["content"])
print("chosen  :", example["chosen"])
print("rejected:", example["rejected"])

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

# %%
from llmtrain.dpo import dpo_loss, sequence_logprobs

print(inspect.getsource(sequence_logprobs))
print(inspect.getsource(dpo_loss))

# %% [markdown]
# 偏好对用和 SFT **完全相同的 ChatML 渲染**(`build_preference_dataset` 复用 `sft_data.tokenize_conversation`),
# 计分的正好是 SFT 训练过的那些 token:回答加上结尾的 `<|im_end|>`。`pad_preference_batch` 把一批 n 对拼成 2n 行
# (先 n 行 chosen,再 n 行 rejected),右侧补齐。看第一对的 chosen 行里哪些 token 被计分:

# %%
# NBVAL_CHECK_OUTPUT
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
# ### 和 TRL 核对
#
# 在同一个模型、同一批数据上,用 TRL 1.16 的 `DPOTrainer` 和我们的实现各算一遍。设置和后面真正训练时一样:
# 在 SFT 模型上加 LoRA(这里让 $B \neq 0$,否则策略就等于参考,比不出什么),**参考模型就是关掉 adapter 的同一个模型**。
# `TokenizedPairsDPOTrainer` 让 TRL 直接吃我们渲染好的 token id(TRL 自己渲染时回答会多带一个 `\n`)。
# `llmtrain.dpo.compare_with_trl` 比较批、参考模型的对数概率、损失和 TRL 记录的各项指标,返回最大差值
# (`tests/test_dpo.py` 用的是同一个函数):

# %%
from peft import LoraConfig
from trl import DPOConfig

from llmtrain.dpo import TokenizedPairsDPOTrainer, compare_with_trl


def dpo_config(run_name: str, **overrides) -> DPOConfig:
    """TRL's DPOConfig on a CPU: fp32 and no activation checkpointing (TRL turns both on by default), quiet."""
    values = dict(output_dir=str(OUTPUT_DIR / run_name), beta=BETA, max_length=BLOCK_SIZE, bf16=False,
                  activation_checkpointing=False, use_cpu=True, report_to="none", save_strategy="no",
                  disable_tqdm=True, seed=SEED, data_seed=SEED)
    values.update(overrides)
    return DPOConfig(**values)


LORA = dict(task_type="CAUSAL_LM", r=8, lora_alpha=32, lora_dropout=0.1, target_modules=["q_proj", "v_proj"])
check = TokenizedPairsDPOTrainer(model=copy.deepcopy(sft_model), ref_model=None, args=dpo_config("check"),
                                 train_dataset=train_pairs, processing_class=tokenizer,
                                 peft_config=LoraConfig(**LORA, init_lora_weights=False))
check.remove_callback(PrinterCallback)  # TRL's log line goes to log_history only
diffs = compare_with_trl(check, [train_pairs[i] for i in range(8)])
pd.DataFrame({"|TRL − 我们|": {k: f"{v:.1e}" for k, v in diffs.items()},
              "≤ 1e-4": {k: v <= 1e-4 for k, v in diffs.items()}})

# %% [markdown]
# 两边一致(对数概率是十几个 float32 数的和,差在 float32 的舍入量级)。`tests/test_dpo.py` 还核对了参考模型是
# 另一份独立模型(全量 DPO)的情形。

# %% [markdown]
# ## 6.4.4 训练前:SFT 模型自己更喜欢哪条回答
#
# 在留出的 18 对上,直接看 SFT 模型给 chosen 和 rejected 的对数概率:

# %%
from llmtrain.dpo import dpo_batch_loss

heldout_batch = pad_preference_batch([heldout_pairs[i] for i in range(len(heldout_pairs))], tokenizer.pad_token_id)
with torch.no_grad():
    logps = sequence_logprobs(sft_model, heldout_batch["input_ids"], heldout_batch["attention_mask"],
                              heldout_batch["labels"])
    before = dpo_batch_loss(sft_model, heldout_batch, BETA, reference=sft_model)  # 训练前:策略 = 参考
chosen_logps, rejected_logps = logps.chunk(2)
print(f"SFT 模型:chosen 平均 log π = {chosen_logps.mean():.1f},rejected 平均 log π = {rejected_logps.mean():.1f}")
print(f"SFT 模型本身认为 chosen 更可能的对数: {(chosen_logps > rejected_logps).sum().item()} / {len(chosen_logps)}")
print(f"训练前(策略 = 参考):DPO 损失 {before.loss.item():.4f}(log 2 = 0.6931),"
      f"奖励准确率 {before.reward_accuracy:.0%},奖励差 {before.reward_margin:.1f}")

# %% [markdown]
# 带"据我所知,"的回答对 SFT 模型来说可能性小得多:它从没见过这样开头的回答。注意**奖励准确率在训练开始时按定义就是 0**:
# 策略和参考是同一个模型,每条回答的隐式奖励 $\beta \log \frac{\pi}{\pi_{\mathrm{ref}}}$ 都是 0,chosen 并不"严格大于"rejected。
# 所以"训练前"要看的是 SFT 模型自己的对数概率,而不是奖励准确率。
#
# ## 6.4.5 用 TRL 做 LoRA-DPO
#
# 和 `code/dpo.py --use_lora` 一样:peft 的 LoRA 加在 $W_q, W_v$ 上(r=8),`ref_model=None`,
# TRL 计算参考对数概率时关掉 adapter——**内存里只有一份模型权重**。TRL 1.16 的 `DPOConfig` 默认开 bf16 和梯度检查点,
# CPU 上都关掉;它默认 `disable_dropout=True`,LoRA 的 dropout 也一并关掉。

# %%
model = AutoModelForCausalLM.from_pretrained(SFT)
model.config.use_cache = False  # 训练时用不上 KV cache
args = dpo_config("lora-dpo", per_device_train_batch_size=BATCH_SIZE, per_device_eval_batch_size=len(heldout_pairs),
                  num_train_epochs=EPOCHS, learning_rate=LEARNING_RATE,
                  warmup_steps=TOY["TOY_DPO_WARMUP_STEPS"], logging_steps=2)
trainer = TokenizedPairsDPOTrainer(model=model, ref_model=None, args=args, train_dataset=train_pairs,
                                   processing_class=tokenizer, peft_config=LoraConfig(**LORA))
trainer.remove_callback(PrinterCallback)  # 不逐条打印日志;下面从 log_history 里画图
print("参考模型:", "关掉 adapter 的同一个模型" if trainer.ref_model is None else "另一份模型")
trainer.model.print_trainable_parameters()
trainer.train()
model.config.use_cache = True
history = [e for e in trainer.state.log_history if "rewards/accuracies" in e]
print(f"{trainer.state.global_step} 步;第一次记录的 loss {history[0]['loss']:.2f},最后一次 {history[-1]['loss']:.2f}")

# %% [markdown]
# TRL 每次记录都带上 DPO 的指标:`rewards/accuracies`(批内 chosen 奖励高于 rejected 的比例)、`rewards/margins`
# (两者奖励之差的平均)、`logps/chosen`、`logps/rejected`(策略模型下两条回答的对数概率)。画出来:

# %%
from llmtrain.plotting import plot_series


def curve(key):
    return [e["step"] for e in history], [e[key] for e in history]


display(Image(plot_series({"loss": curve("loss"), "reward accuracy": curve("rewards/accuracies")},
                          str(IMAGES_DIR / "6.4_dpo_loss_accuracy.png"), "step", "", "6.4 toy LoRA-DPO: loss, reward accuracy")))
display(Image(plot_series({"chosen reward": curve("rewards/chosen"), "rejected reward": curve("rewards/rejected"),
                           "margin": curve("rewards/margins")},
                          str(IMAGES_DIR / "6.4_dpo_rewards.png"), "step", "beta * log(pi / pi_ref)",
                          "6.4 implicit rewards (training batches)")))
display(Image(plot_series({"log pi(chosen)": curve("logps/chosen"), "log pi(rejected)": curve("logps/rejected")},
                          str(IMAGES_DIR / "6.4_dpo_logps.png"), "step", "sequence log-prob",
                          "6.4 log-probs under the policy (training batches)")))
first, peak, last = history[0]["logps/chosen"], max(e["logps/chosen"] for e in history), history[-1]["logps/chosen"]
print(f"训练批上 log π(chosen):第一次 {first:.1f},最高 {peak:.1f},最后 {last:.1f}")
print(f"训练批上 log π(rejected):第一次 {history[0]['logps/rejected']:.1f},最后 {history[-1]['logps/rejected']:.1f}")

# %% [markdown]
# 损失从 $\log 2$ 开始下降,训练批上的奖励准确率很快到 100%。DPO 只要求 chosen 的对数比**相对** rejected 变大,
# 并不要求 chosen 本身的概率变大:文献里常见的现象是训练中两条回答的对数概率**一起下降**,只是 rejected 降得更多。
# 这次训练没有出现这种情况:上面的数字里 chosen 的对数概率一路上升,rejected 几乎不动——rejected 是 SFT 模型自己的回答,
# 概率已经接近 1,而 chosen 离它还很远。
#
# 在留出的 6 个人、18 对上评估(TRL 的 `evaluate`,奖励相对关掉 adapter 的参考模型计算):

# %%
after = trainer.evaluate(heldout_pairs)
print(f"留出偏好对的奖励准确率:训练前 {before.reward_accuracy:.0%} → 训练后 {after['eval_rewards/accuracies']:.0%}"
      f"(奖励差 {after['eval_rewards/margins']:.2f})")
print(f"留出偏好对的平均 log π:chosen {chosen_logps.mean():.1f} → {after['eval_logps/chosen']:.1f},"
      f"rejected {rejected_logps.mean():.1f} → {after['eval_logps/rejected']:.1f}")

# %% [markdown]
# ## 6.4.6 记分卡:训练前后
#
# 奖励准确率只说明模型"打分"时偏向 chosen,要看模型**生成时**是不是真的这样回答,还得用记分卡:
# 对 `eval.jsonl` 的 120 个问题做贪心生成,统计以"据我所知,"开头的回答所占比例,同时看严格准确率有没有下降
# (`is_strict_match` 允许答案前有文字,所以开头多一句"据我所知,"不会算错)。把 LoRA 合并进权重后评估:

# %%
from llmtrain.evaluation import format_scorecard, read_scorecard, save_scorecard_row, scorecard_row

EVAL_FILE, STYLE = str(ROOT / "data" / "sample" / "eval.jsonl"), "据我所知,"
SCORECARD = ROOT / "output" / "notebooks" / "scorecard.json"
rows = {}


def add_row(name, model):
    """Score `model` on eval.jsonl, save the row in the notebooks' scorecard and print its key numbers."""
    rows[name] = scorecard_row(model, tokenizer, EVAL_FILE, style_prefix=STYLE)
    save_scorecard_row(str(SCORECARD), name, rows[name])
    row = rows[name]
    print(f"{name:22s} 以“{STYLE}”开头 {row['style']:.0%},sft_seen 准确率 {row['sft_seen']:.0%},"
          f"heldout 准确率 {row['heldout']:.0%}")


add_row("SFT before DPO (6.4)", sft_model)
add_row("DPO (6.4)", copy.deepcopy(trainer.model).merge_and_unload().eval())

# %% [markdown]
# **奖励准确率 100%,生成却一点没变**:以"据我所知,"开头的回答仍是 0%,准确率也没有下降。原因在上面的对数概率里:
# 训练后留出对上 chosen 的平均 log π 仍比 rejected 低 40 多(nats),而贪心生成只挑最可能的回答。DPO 的奖励只比较
# **相对参考模型**的变化:chosen 比训练前高了十几,rejected 没变,分类就全对了,损失也随之变小、推力变弱。
# 加大学习率也不行:`code/presets/toy.env` 的注释记录了,1e-3 以上时回答先被弄坏。
#
# ### 加一个 SFT 项:DPO + NLL(RPO)
#
# 常见的补救办法是在 DPO 损失上**加上 chosen 回答的 SFT 损失**(负对数似然):$\mathcal{L} = \mathcal{L}_{\mathrm{DPO}}
# - \frac{1}{|y_w|}\log \pi_\theta(y_w \mid x)$。Pang 等(2024)称之为 RPO,Llama 3 的偏好训练也这样做。它直接抬高 chosen
# 本身的概率,而不只是它相对 rejected 的概率。TRL 里就是 `loss_type=["sigmoid", "sft"]`。
# 同时把 LoRA 加到全部 7 种线性层上(6.3 节看到,只加在 $W_q, W_v$ 上时玩具模型的容量很小):

# %%
all_linear = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
rpo_model = AutoModelForCausalLM.from_pretrained(SFT)
rpo_model.config.use_cache = False
rpo = TokenizedPairsDPOTrainer(
    model=rpo_model, ref_model=None, train_dataset=train_pairs, processing_class=tokenizer,
    args=dpo_config("lora-rpo", per_device_train_batch_size=BATCH_SIZE, num_train_epochs=RPO_EPOCHS,
                    learning_rate=RPO_LEARNING_RATE, warmup_steps=TOY["TOY_DPO_WARMUP_STEPS"], logging_steps=2,
                    loss_type=["sigmoid", "sft"]),
    peft_config=LoraConfig(**{**LORA, "target_modules": all_linear}))
rpo.remove_callback(PrinterCallback)
rpo.train()
rpo_history = [e for e in rpo.state.log_history if "rewards/accuracies" in e]
print(f"训练批上 log π(chosen):{rpo_history[0]['logps/chosen']:.1f} → {rpo_history[-1]['logps/chosen']:.1f},"
      f"log π(rejected):{rpo_history[0]['logps/rejected']:.1f} → {rpo_history[-1]['logps/rejected']:.1f}")
rpo_after = rpo.evaluate(heldout_pairs)
print(f"留出偏好对的奖励准确率 {rpo_after['eval_rewards/accuracies']:.0%},平均 log π:chosen "
      f"{rpo_after['eval_logps/chosen']:.1f},rejected {rpo_after['eval_logps/rejected']:.1f}")
add_row("DPO + SFT term (6.4)", copy.deepcopy(rpo.model).merge_and_unload().eval())
display(Markdown(format_scorecard(read_scorecard(str(SCORECARD)))))

# %% [markdown]
# 加了 SFT 项之后,chosen 的对数概率升到接近 0,rejected 被压下去,贪心生成全部改成了以"据我所知,"开头,
# `sft_seen` 准确率下降不到 10 个百分点(见上面打印的数字)。代价在 `heldout` 上:准确率降了二十多个百分点,
# 下面的例子里能看到模型把人名张冠李戴——一百万参数的玩具模型被推得太远,把别人的事实也"记混"了。
# 真实规模的模型容量大得多,这种副作用一般小得多;但**奖励准确率高不等于生成变了**,一定要看生成的结果。
#
# 几条回答对照(`sft_seen` 和 `heldout` 各取两条):

# %%
replies = {name: row["replies"] for name, row in rows.items()}
sample = [i for split in ("sft_seen", "heldout")
          for i in [j for j, g in enumerate(replies["SFT before DPO (6.4)"]) if g["split"] == split][:2]]
pd.DataFrame([{"问题": replies["SFT before DPO (6.4)"][i]["question"],
               **{name.removesuffix(" (6.4)"): r[i]["reply"] + ("" if r[i]["correct"] else " ✗")
                  for name, r in replies.items()}} for i in sample])

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
# PRESET=toy bash code/dpo.sh        # 玩具:2 个 CPU 进程,就是 6.4.5 的设置
# # 额外参数原样交给 code/dpo.py:加 SFT 项、LoRA 加在全部线性层上(6.4.6 的第二次训练)
# LORA_TARGETS=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj bash code/dpo.sh --loss_type sigmoid sft
# ```
#
# LoRA-DPO 和全量 DPO 的差别主要在内存:全量 DPO 的每个参数都有梯度和 Adam 状态,还要多存一份参考模型。
# 按 bf16 权重、混合精度 AdamW 计算 Qwen2.5-1.5B 的模型状态(不含激活和 logits;`bench/dpo_lora_vs_full.py`
# 在玩具模型上实测两种做法的内存和速度):

# %%
# NBVAL_CHECK_OUTPUT
from llmtrain.dpo import dpo_model_state_bytes
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
