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
OVERTRAIN_EPOCHS = 3 * EPOCHS  # 6.4.6:同样的设置训练 3 倍的 epoch,看推过头会怎样
SEED = 42

# %%
import copy
import inspect
import time

import pandas as pd
import torch
from IPython.display import Image, Markdown, display
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback

from llmtrain import PROJECT_ROOT as ROOT
from llmtrain.notebook import setup_notebook
from llmtrain.toy import ensure_toy_sft

START = time.perf_counter()
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
# 本节的玩具偏好:回答关于人物的问题时,**答完再补一句"还想知道什么,尽管问我。"**。SFT 数据里已经有一部分回答
# 这样结尾(像是有的标注员习惯这么写:`sft.jsonl` 里每 4 条人物问答有 1 条,每 3 条"先给资料再提问"的对话有 1 条),
# 所以 SFT 模型偶尔也会这样说;偏好数据要做的是让它**每次都这样说**。chosen 是带这句结尾的回答,rejected 是
# 答完就停的回答,两者的事实完全相同。`dpo.jsonl` 用 14 个人,`dpo_heldout.jsonl` 用另外 6 个人,用来检验学到的是
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
# SFT 模型给 chosen 的概率比 rejected 低,但并非不可能:它在 SFT 里见过这句结尾。注意**奖励准确率在训练开始时按定义就是 0**:
# 策略和参考是同一个模型,每条回答的隐式奖励 $\beta \log \frac{\pi}{\pi_{\mathrm{ref}}}$ 都是 0,chosen 并不"严格大于"rejected。
# 所以"训练前"要看的是 SFT 模型自己的对数概率,而不是奖励准确率。
#
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

# %% [markdown]
# 差别集中在分叉处的那一个 token:答完之后,SFT 模型更倾向于输出 `<|im_end|>`,给"还"的对数概率低得多(上面打印的数);
# 一旦说出"还",后面几个字几乎是确定的。DPO 要做的就是把分叉处的选择翻过来。
#
# ## 6.4.5 用 TRL 做 LoRA-DPO
#
# 和 `code/dpo.py --use_lora` 一样:peft 的 LoRA 加在 $W_q, W_v$ 上(r=8),`ref_model=None`,
# TRL 计算参考对数概率时关掉 adapter——**内存里只有一份模型权重**。TRL 1.16 的 `DPOConfig` 默认开 bf16 和梯度检查点,
# CPU 上都关掉;它默认 `disable_dropout=True`,LoRA 的 dropout 也一并关掉。

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


trainer = train_lora_dpo("lora-dpo", EPOCHS)
print("参考模型:", "关掉 adapter 的同一个模型" if trainer.ref_model is None else "另一份模型")
trainer.model.print_trainable_parameters()
history = [e for e in trainer.state.log_history if "rewards/accuracies" in e]
print(f"{trainer.state.global_step} 步;第一次记录的 loss {history[0]['loss']:.2f},最后一次 {history[-1]['loss']:.2f}")

# %% [markdown]
# TRL 每次记录都带上 DPO 的指标:`rewards/accuracies`(批内 chosen 奖励高于 rejected 的比例)、`rewards/margins`
# (两者奖励之差的平均)、`logps/chosen`、`logps/rejected`(策略模型下两条回答的对数概率)。画出来:

# %%
from llmtrain.plotting import plot_series


def curve(log_history, key):
    return [e["step"] for e in log_history], [e[key] for e in log_history]


display(Image(plot_series({"loss": curve(history, "loss"), "reward accuracy": curve(history, "rewards/accuracies")},
                          str(IMAGES_DIR / "6.4_dpo_loss_accuracy.png"), "step", "", "6.4 toy LoRA-DPO: loss, reward accuracy")))
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

# %% [markdown]
# 损失从 $\log 2$ 开始下降,训练批上的奖励准确率很快到 100%。上面的数字里,chosen 的对数概率升了、rejected 的降了,
# 两者几乎交换了位置:分叉处的选择翻了过来。DPO 只要求 chosen 的对数比**相对** rejected 变大,并不要求 chosen
# 本身的概率变大——下面 6.4.6 里训练得更久时,就能看到 chosen 的对数概率也跟着掉下去。
#
# 在留出的 6 个人、18 对上评估(TRL 的 `evaluate`,奖励相对关掉 adapter 的参考模型计算):

# %%
after = trainer.evaluate(heldout_pairs)
print(f"留出偏好对的奖励准确率:训练前 {before.reward_accuracy:.0%} → 训练后 {after['eval_rewards/accuracies']:.0%}"
      f"(奖励差 {after['eval_rewards/margins']:.2f})")
print(f"留出偏好对的平均 log π:chosen {chosen_logps.mean():.2f} → {after['eval_logps/chosen']:.2f},"
      f"rejected {rejected_logps.mean():.2f} → {after['eval_logps/rejected']:.2f}")

# %% [markdown]
# ## 6.4.6 记分卡:训练前后
#
# 奖励准确率只说明模型"打分"时偏向 chosen,要看模型**生成时**是不是真的这样回答,还得用记分卡:
# 对 `eval.jsonl` 的 120 个问题做贪心生成,统计以"还想知道什么,尽管问我。"结尾的回答所占比例,同时看严格准确率有没有下降
# (`grade_replies` 先去掉这句结尾再按 `is_strict_match` 判分,所以这句话本身不算对也不算错)。把 LoRA 合并进权重后评估:

# %%
from llmtrain.evaluation import TOY_STYLE_SUFFIX as STYLE
from llmtrain.evaluation import format_scorecard, read_scorecard, save_scorecard_row, scorecard_row

EVAL_FILE = str(ROOT / "data" / "sample" / "eval.jsonl")
SCORECARD = ROOT / "output" / "notebooks" / "scorecard.json"
rows = {}


def add_row(name, model):
    """Score `model` on eval.jsonl, save the row in the notebooks' scorecard and print its key numbers."""
    rows[name] = scorecard_row(model, tokenizer, EVAL_FILE, style_suffix=STYLE)
    save_scorecard_row(str(SCORECARD), name, rows[name])
    row = rows[name]
    print(f"{name:26s} 以“{STYLE}”结尾 {row['style']:.0%},sft_seen 准确率 {row['sft_seen']:.0%},"
          f"heldout 准确率 {row['heldout']:.0%}")


add_row("SFT before DPO (6.4)", sft_model)
add_row("DPO (6.4)", copy.deepcopy(trainer.model).merge_and_unload().eval())

# %% [markdown]
# 奖励准确率到了 100%,生成也跟着变了:以这句话结尾的回答从 22% 升到 95%,`sft_seen` 准确率保持 100%,
# `heldout` 准确率从 58% 到 53%,降了 5 个百分点。DPO 没有教任何事实,SFT 模型答错的问题 DPO 之后照样答错
# (下面例子的第 4 行)。换随机种子重跑整条流程,结尾句都到了 95% 以上,两组准确率的变化在 −6 到 +7 个百分点之间
# (`bench/seed_spread.py`,README 的"实测结果")。
#
# ### 推过头会怎样
#
# DPO 的损失只看 chosen 相对 rejected 的对数比,只要还能把两者拉开,它就一直推。同样的设置训练 3 倍的 epoch:

# %%
long_trainer = train_lora_dpo("lora-dpo-long", OVERTRAIN_EPOCHS)
long_history = [e for e in long_trainer.state.log_history if "rewards/accuracies" in e]
print(f"{long_trainer.state.global_step} 步;训练批上", logp_summary(long_history))
display(Image(plot_series({"log pi(chosen)": curve(long_history, "logps/chosen"),
                           "log pi(rejected)": curve(long_history, "logps/rejected")},
                          str(IMAGES_DIR / "6.4_dpo_logps_long.png"), "step", "sequence log-prob",
                          f"6.4 log-probs, {OVERTRAIN_EPOCHS} epochs (training batches)")))
add_row(f"DPO, {OVERTRAIN_EPOCHS} epochs (6.4)", copy.deepcopy(long_trainer.model).merge_and_unload().eval())
display(Markdown(format_scorecard(read_scorecard(str(SCORECARD)))))

# %% [markdown]
# 训练 3 倍长,chosen 的对数概率先升后降,最后比训练前还低(上面打印的"第一次 / 最高 / 最后"),rejected 则被压到
# 很低:这就是文献里常说的现象,DPO 只管两者之差,压 rejected 的同时 chosen 也可能一起往下掉。记分卡上的代价:
# 这句结尾照样出现在几乎所有回答里,`sft_seen` 却从 100% 掉到 50%,`heldout` 从 53% 掉到 25%。每一对里 rejected
# 和 chosen 只在答完之后分叉,可 LoRA 的参数在所有位置共用:把"答完就停"压得太狠,整条回答都被带偏了
# (下表最后一列:回答不再以问到的人开头,事实也张冠李戴)。
# 所以 DPO 的 epoch 和学习率都要小,`code/presets/toy.env` 用 4 个 epoch;判断训练得够不够,看的是生成,不是奖励准确率。
#
# 几条回答对照(`sft_seen` 和 `heldout` 各取两条,✗ 表示按严格规则判错):

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
# bash code/dpo.sh --loss_type ipo   # 额外参数原样交给 code/dpo.py(这里换成 IPO 损失)
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
