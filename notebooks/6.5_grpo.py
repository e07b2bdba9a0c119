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
# # 6.5 用可验证的奖励做强化学习:从零实现 GRPO,和 TRL 核对,在玩具世界上训练
#
# 6.4 的 DPO 只在**现成的**回答对上学习,训练中不采样。本节走到强化学习:模型**自己采样**一组回答,
# 由一段**程序**判对错(不需要奖励模型),答对的回答被加强、答错的被压低。DeepSeek-R1 用的就是这种做法(GRPO),
# 奖励是数学题的最终答案、代码能否通过测试这类"可以验证"的信号。
#
# 本节先说明玩具世界里的 RL 任务,推导 GRPO 的目标并**自己实现**(`llmtrain/grpo.py`),和 TRL 的 `GRPOTrainer`
# 在同一批数据上逐项核对;再读 `make run` 用 `code/grpo.sh`(TRL + DeepSpeed 2 个进程)训练出的 LoRA 适配器:
# 奖励、KL 和回答长度的曲线,训练前后的回答,成绩单上的一行;最后看一个失败模式:不要 KL、也不奖励 6.4 教的结尾句。

# %% tags=["parameters"]
from llmtrain.toy import toy_preset

TOY = toy_preset()  # code/presets/toy.env:与 PRESET=toy bash code/grpo.sh 用同一组数值
GROUP = TOY["TOY_GRPO_GROUP"]  # 每个问题采样几条回答
LEARNING_RATE = TOY["TOY_GRPO_LR"]
BETA = TOY["TOY_GRPO_BETA"]  # KL 惩罚的权重
STYLE_WEIGHT = TOY["TOY_GRPO_STYLE_WEIGHT"]  # 以 6.4 的结尾句结束的格式奖励
MAX_COMPLETION = TOY["TOY_GRPO_MAX_COMPLETION"]
BATCH_SIZE = TOY["TOY_NUM_GPUS"] * TOY["TOY_GRPO_BATCH_SIZE"]  # 脚本是 2 个进程 × 16 条,这里一个进程 32 条
FAILURE_STEPS = TOY["TOY_GRPO_MAX_STEPS"]  # 6.5.7 的失败模式训练多少步(与 make run 相同)
SEED = 42

# %%
import inspect
import json
import time

import pandas as pd
import torch
from IPython.display import Image, Markdown, display
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback

from llmtrain import PROJECT_ROOT as ROOT
from llmtrain.grading import load_prompt_dataset
from llmtrain.notebook import fresh_output_dir, setup_notebook, shown_path
from llmtrain.toy_run import require_toy_model

START = time.perf_counter()
IMAGES_DIR = setup_notebook(SEED)
OUTPUT_DIR = fresh_output_dir("6.5")  # output/notebooks/6.5,每次运行先清空
GRPO_DIR = require_toy_model("grpo-lora")  # make run 训练的 output/toy/grpo-lora;还没有时它会告诉你先运行 make run
DPO_MERGED = require_toy_model("dpo-lora/merged")
STYLE = TOY["TOY_STYLE_SUFFIX"]  # 6.4 的结尾句:判分时先去掉,格式奖励看它
tokenizer = AutoTokenizer.from_pretrained(DPO_MERGED)
rl_train = load_prompt_dataset([str(ROOT / "data" / "sample" / "grpo.jsonl")])
rl_eval = load_prompt_dataset([str(ROOT / "data" / "sample" / "grpo_eval.jsonl")])
print("起点:", shown_path(DPO_MERGED), "—— 6.4 的 LoRA-DPO 合并后的模型(make run)")
print("GRPO 适配器:", shown_path(GRPO_DIR), "—— PRESET=toy bash code/grpo.sh(DeepSpeed 2 个进程)")

# %% [markdown]
# ## 6.5.1 RL 任务:换一种问法问同样的事实
#
# SFT 只用一种问法问事实("林晓雨的家乡是哪里?"),成绩单也只这样问。换一种 SFT 里从没出现过的问法
# ("林晓雨是哪里人?""王志远干哪一行?"),模型还答得出吗?答案可以由程序判定:成绩单的严格规则
# (`is_strict_match`,答案恰好出现一次、之后只有标点、不提别的候选),所以这是一个**可验证的奖励**。
#
# RL 用的问题(`data/sample/grpo.jsonl`)问 SFT 问过的那 20 个人,留出的评测问题(`grpo_eval.jsonl`)
# 问另外 20 个人,他们的事实只在预训练里出现过;测试 `tests/test_toy_world.py` 检查两份问题互不相同,
# 也不与 SFT、成绩单、DPO 的任何问题相同。

# %%
sft_questions = {turn["value"] for line in open(ROOT / "data" / "sample" / "sft.jsonl", encoding="utf-8")
                 for turn in json.loads(line)["conversations"]}
train_q = [p[-1]["content"] for p in rl_train["prompt"]]
eval_q = [p[-1]["content"] for p in rl_eval["prompt"]]
print(f"RL 问题 {len(train_q)} 条,留出的评测问题 {len(eval_q)} 条;"
      f"与 SFT 相同的问题:{len(set(train_q + eval_q) & sft_questions)} 条,两份之间相同的:{len(set(train_q) & set(eval_q))} 条")
for row in (rl_train[0], rl_train[5], rl_train[10]):
    print(f"  {row['prompt'][-1]['content']}  答案:{row['answer']}")

# %% [markdown]
# DPO 模型(GRPO 的起点)对这些问题答得怎样?`make run` 的成绩单上每一行都有这一列("RL task heldout acc",
# 由 `code/evaluate.py --rl_eval_file` 计算,和其他列一样先去掉结尾句再判分)。这里用同样的函数给 DPO 模型和
# `make run` 的 GRPO 适配器各打一行成绩单,先看 DPO 模型答错的留出问题:

# %%
from peft import PeftModel

from llmtrain.evaluation import add_rl_task_column, format_scorecard, scorecard_row

EVAL_FILE, RL_EVAL_FILE = (str(ROOT / "data" / "sample" / n) for n in ("eval.jsonl", "grpo_eval.jsonl"))
dpo_model = AutoModelForCausalLM.from_pretrained(DPO_MERGED).eval()
grpo_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(DPO_MERGED), str(GRPO_DIR)).eval()
card = {name: add_rl_task_column(scorecard_row(model, tokenizer, EVAL_FILE, style_suffix=STYLE), model, tokenizer,
                                 RL_EVAL_FILE, STYLE)
        for name, model in (("LoRA DPO (6.4)", dpo_model), ("LoRA GRPO (6.5)", grpo_model))}
dpo_row, grpo_row = card["LoRA DPO (6.4)"], card["LoRA GRPO (6.5)"]
wrong = [r for r in dpo_row["rl_heldout_replies"] if not r["correct"]]
print(f"DPO 模型:用 SFT 的问法,sft_seen {dpo_row['sft_seen']:.0%}、heldout {dpo_row['heldout']:.0%};"
      f"换成新问法,留出 RL 问题 {dpo_row['rl_heldout']:.0%}")
print(f"DPO 模型答错的留出 RL 问题 {len(wrong)} / {len(dpo_row['rl_heldout_replies'])} 条,前几条:")
for r in wrong[:5]:
    print(f"  问: {r['prompt']}  答案 {r['answer']}  模型: {r['reply']}")

# %% [markdown]
# 事实模型是知道的(同样这些人,用 SFT 的问法它几乎全答对),它不认识的是新的问法:常常答成另一个属性,
# 或者答非所问。这正是 RL 能帮上忙的地方:只要**采样**时偶尔答对,奖励就能把答对的那种回答加强。
#
# ## 6.5.2 GRPO 的目标
#
# **策略梯度。** 要最大化 $J(\theta) = \mathbb{E}_{y \sim \pi_\theta(\cdot \mid x)}[r(x, y)]$,它的梯度是
# $\mathbb{E}\big[r(x, y)\, \nabla_\theta \log \pi_\theta(y \mid x)\big]$:采样、打分,按奖励加权提高采到的回答的对数概率。
# 直接用 $r$ 方差很大;减去一个与回答无关的**基线** $b(x)$ 不改变期望,却能大大降低方差。
#
# **组内相对优势。** PPO 用一个价值网络估计基线;GRPO(DeepSeekMath,2024)省掉它:对同一个问题采样一组 $G$ 条回答,
# 用这组奖励的均值作基线、标准差作尺度,
# $A_i = \dfrac{r_i - \mathrm{mean}(r_1..r_G)}{\mathrm{std}(r_1..r_G) + \epsilon}$。一组里全对或全错时,$A_i = 0$:这组什么也学不到。
#
# **裁剪的比率目标 + KL。** 每个回答 token 上,用比率 $\rho_t = \pi_\theta / \pi_{\mathrm{old}}$ 做 PPO 的悲观裁剪,
# 再加上与参考模型(这里是 DPO 模型,LoRA 时就是关掉适配器的同一个模型)的 KL 惩罚:
# $\ell_t = -\min\big(\rho_t A,\ \mathrm{clip}(\rho_t, 1-\varepsilon, 1+\varepsilon) A\big) + \beta\, \mathrm{KL}_t$,
# $\mathrm{KL}_t = e^{\mathrm{ref}_t - \log\pi_t} - (\mathrm{ref}_t - \log\pi_t) - 1$(Schulman 的 k3 估计量,恒非负)。
# 每批数据只更新一次时 $\rho_t = 1$,裁剪不起作用,剩下的梯度就是 $A\, \nabla \log \pi$ 加上 KL 项的梯度。
#
# 下面是 `llmtrain/grpo.py` 里的两段实现:

# %%
from llmtrain.grpo import group_advantages, grpo_loss

print(inspect.getsource(group_advantages))
print(inspect.getsource(grpo_loss))

# %% [markdown]
# 一组 4 条回答的小例子:两条答对(奖励 1)、两条答错(0),以及一组全对:

# %%
rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0])
advantages = group_advantages(rewards, group_size=4)
print("奖励:", rewards.tolist())
print("优势:", [round(a, 3) for a in advantages.tolist()], "—— 第二组全对,优势全是 0")

# %% [markdown]
# ## 6.5.3 采样一组回答,打分,算优势
#
# 用起点模型(DPO)对两个 RL 问题各采样 `GROUP` 条回答(温度 1.0,和训练时一样),由奖励函数打分。
# 注意一个坑:玩具分词器(以及 Qwen2.5 的基座)的 eos 是 `<|endoftext|>`,而对话以 `<|im_end|>` 结束;
# TRL 只在 `generation_config.eos_token_id` 处停下,所以脚本先调用 `stop_at_end_of_turn` 把两者都设为结束符,
# 否则每条回答都会一直生成到长度上限,一条也得不到分。

# %%
from llmtrain.grading import fact_candidates, score_replies
from llmtrain.grpo import sample_groups, stop_at_end_of_turn
from llmtrain.tokenizer import decode_showing_partial_bytes

print("结束符 id:", stop_at_end_of_turn(dpo_model, tokenizer))
torch.manual_seed(SEED)
picked = [rl_train[1], rl_train[6]]
groups = sample_groups(dpo_model, tokenizer, [r["prompt"] for r in picked], GROUP, max_new_tokens=MAX_COMPLETION)
answers = [r["answer"] for r in picked for _ in range(GROUP)]
completion_ids = [ids[:int(m.sum())] for ids, m in zip(groups["completion_ids"].tolist(), groups["completion_mask"])]
graded = [c.removesuffix(STYLE) for c in groups["completions"]]  # 和成绩单一样,先去掉结尾句再判分
group_rewards = torch.tensor(score_replies(graded, rl_train.select([i for i in (1, 6) for _ in range(GROUP)]),
                                           fact_candidates(rl_train)))
group_adv = group_advantages(group_rewards, GROUP)
shown = [decode_showing_partial_bytes(tokenizer, ids) for ids in completion_ids]  # 半个汉字显示成它的字节
table = pd.DataFrame({"问题": [r["prompt"][-1]["content"] for r in picked for _ in range(GROUP)],
                      "回答": shown, "奖励": group_rewards.tolist(),
                      "优势": [round(a, 2) for a in group_adv.tolist()]})
display(table)
flat = sum(bool((group_rewards[i * GROUP:(i + 1) * GROUP] == group_rewards[i * GROUP]).all()) for i in range(len(picked)))
print(f"{len(picked)} 组里有 {flat} 组的 {GROUP} 条回答得分全相同:这些组的优势全是 0,这一步从它们那里学不到东西")
partial = sum("\\x" in r for r in shown)
print(f"{partial} 条回答里有单独的字节(表中的 \\xNN):温度 1 的采样偶尔挑中半个汉字的 token,"
      "tokenizer.decode 会把它变成 U+FFFD 替换符")

# %% [markdown]
# ## 6.5.4 和 TRL 的 `GRPOTrainer` 逐项核对
#
# `compare_with_trl` 让 TRL 拿到**同一批**问题和回答(替换掉它的采样这一步),由 TRL 自己分词、调用奖励函数、
# 算优势、参考模型的对数概率和损失;我们从零算同样的量,再比较损失对 LoRA 参数的梯度。损失、优势、参考模型的对数概率、
# KL 和奖励都要求差在 1e-5 以内;梯度按"差的范数 / 梯度的范数"判断(要求 1e-4 以内):每组的优势加起来是 0,
# 梯度是一些几乎相等的项之差,两边 float32 的舍入(TRL 用 logsumexp 逐行算对数概率,我们用 log_softmax)抵消不掉,
# 在训练过的模型上按元素比的绝对差会到 1e-5 以上。
# LoRA 的 B 矩阵一开始是 0,策略就等于参考模型,KL 为 0;为了让 KL 项也被核对到,这里先给 B 一点小的随机值。
# TRL 1.16 的默认损失是 "dapo"(对整批的 token 取平均),DeepSeekMath 原文是 "grpo"(先在每条回答内平均),两种都核对。
# 奖励用 `compare_with_trl` 自己打分时的同一套规则:这批问题的答案作候选、不去掉结尾句(核对的是机制,不是奖励的设计)。

# %%
from datasets import Dataset
from peft import LoraConfig
from trl import GRPOConfig, GRPOTrainer

from llmtrain.grpo import compare_with_trl, trl_reward_function

rows = [rl_train[i] for i in (1, 6) for _ in range(GROUP)]
for loss_type in ("dapo", "grpo"):
    torch.manual_seed(SEED)
    lora = LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=32, lora_dropout=0.0,
                      target_modules=TOY["TOY_LORA_TARGETS"].split(","))
    args = GRPOConfig(output_dir=str(OUTPUT_DIR / "trl-check"), beta=BETA, loss_type=loss_type,
                      num_generations=GROUP, per_device_train_batch_size=2 * GROUP,
                      max_completion_length=MAX_COMPLETION, bf16=False, activation_checkpointing=False, use_cpu=True,
                      report_to="none", disable_tqdm=True)
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(DPO_MERGED),
                          reward_funcs=trl_reward_function(fact_candidates(Dataset.from_list(rows))), args=args,
                          train_dataset=Dataset.from_list([dict(rl_train[0])]), processing_class=tokenizer,
                          peft_config=lora)
    trainer.remove_callback(PrinterCallback)  # TRL's log lines: the differences below say what matters
    with torch.no_grad():  # B = 0 would make the policy the reference (KL 0): move it a little
        for name, weight in trainer.model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0.0, 0.01)
    diffs = compare_with_trl(trainer, rows, completion_ids)
    assert all(v <= 1e-5 for k, v in diffs.items() if not k.startswith("gradient")), diffs
    assert diffs["gradient, relative norm"] <= 1e-4, diffs
    print(f"loss_type={loss_type}: 与 TRL 的最大差 ≤ 1e-5: True;梯度之差的范数 / 梯度的范数 ≤ 1e-4: True;",
          ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))

# %% [markdown]
# ## 6.5.5 `make run` 的 GRPO:曲线
#
# `code/grpo.sh` 的玩具预设:从 DPO 合并后的模型出发,LoRA 加在每个线性层上;每步 2 个进程 × 16 条回答 =
# 4 个问题 × 8 条;奖励是两项之和:答对记 1(先去掉结尾句再判分),以结尾句结束再加 `STYLE_WEIGHT`
# (为什么要这一项,见 6.5.6)。TRL 每步记录奖励的均值与组内标准差、两项奖励各自的均值、回答的平均长度和 KL:

# %%
from llmtrain.plotting import plot_series, read_log_history

history = [e for e in read_log_history(str(GRPO_DIR / "trainer_state.json")) if "reward" in e]
steps = [e["step"] for e in history]
curves = {
    "correct (rewards/verifiable/mean)": [e["rewards/verifiable/mean"] for e in history],
    "closing sentence (rewards/style/mean)": [e["rewards/style/mean"] for e in history],
    "reward std within a group (reward_std)": [e["reward_std"] for e in history],
    "KL": [e["kl"] for e in history],
}
png = plot_series({k: (steps, v) for k, v in curves.items()}, str(IMAGES_DIR / "6.5_grpo_curves.png"), "step",
                  "value", "LoRA-GRPO (make run)")
display(Image(png))
length_png = plot_series({"completions/mean_length": (steps, [e["completions/mean_length"] for e in history])},
                         str(IMAGES_DIR / "6.5_grpo_length.png"), "step", "tokens", "Mean sampled reply length")
display(Image(length_png))
first, last = history[0], history[-1]
runtime = json.loads((GRPO_DIR / "train_results.json").read_text())["train_runtime"]
print(f"共 {last['step']} 步,训练 {runtime:.0f} 秒(2 个进程);答对的比例:第一次记录 {first['rewards/verifiable/mean']:.2f},最后一次 "
      f"{last['rewards/verifiable/mean']:.2f};以结尾句结束:{first['rewards/style/mean']:.2f} → "
      f"{last['rewards/style/mean']:.2f};KL:{first['kl']:.3f} → {last['kl']:.3f}")

# %% [markdown]
# 这些是**采样**(温度 1.0)时的比例,评测用的是贪心解码。
#
# ## 6.5.6 训练前后:留出问题上的回答和成绩单

# %%
before = {r["prompt"]: r for r in dpo_row["rl_heldout_replies"]}
changed = [(before[r["prompt"]], r) for r in grpo_row["rl_heldout_replies"] if r["correct"] and not before[r["prompt"]]["correct"]]
print(f"留出的 RL 问题:DPO 模型答对 {dpo_row['rl_heldout']:.0%},GRPO 之后 {grpo_row['rl_heldout']:.0%};"
      f"新答对 {len(changed)} 条,例如:")
for old, new in changed[:5]:
    print(f"  问: {new['prompt']}\n    DPO : {old['reply']}\n    GRPO: {new['reply']}")
display(Markdown(format_scorecard(card)))
display(Markdown(
    f"其他各列:sft_seen {dpo_row['sft_seen']:.0%} → {grpo_row['sft_seen']:.0%},heldout {dpo_row['heldout']:.0%} → "
    f"{grpo_row['heldout']:.0%},结尾句 {dpo_row['style']:.0%} → {grpo_row['style']:.0%}。"))

# %% [markdown]
# GRPO 只用 SFT 问过的那 20 个人练习新问法,留出的 20 个人的新问法也答对得多了:它学到的是"这种问法问的是哪个属性",
# 而事实本身早在预训练里就存下了。离"换什么问法都答得对"还远(用 SFT 的问法,同一个模型的 heldout 见上表)。这和 6.2 的结论一脉相承:预训练存知识,之后的每一步(SFT、RL)
# 教的是怎样把知识取出来。RL 只能加强模型**已经会偶尔采样出来**的回答:如果一条正确的回答一次也采不到,
# 一组的奖励全是 0,优势全是 0,梯度也就是 0。
#
# ## 6.5.7 一个失败模式:不要 KL,也不奖励结尾句
#
# 同样的起点、同样的问题,把 KL 权重设为 0、去掉格式奖励,用 TRL 在一个进程里训练 `FAILURE_STEPS` 步,
# 然后在成绩单的问题和留出的 RL 问题上评测:

# %%
from llmtrain.evaluation import task_accuracy

torch.manual_seed(SEED)
failure_model = AutoModelForCausalLM.from_pretrained(DPO_MERGED)
stop_at_end_of_turn(failure_model, tokenizer)
failure_args = GRPOConfig(
    output_dir=str(OUTPUT_DIR / "no-kl"), beta=0.0, num_generations=GROUP, per_device_train_batch_size=BATCH_SIZE,
    max_completion_length=MAX_COMPLETION, learning_rate=LEARNING_RATE, max_steps=FAILURE_STEPS, logging_steps=5,
    bf16=False, activation_checkpointing=False, use_cpu=True, report_to="none", save_strategy="no",
    disable_tqdm=True, seed=SEED)
failure_lora = LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=32, lora_dropout=0.0,
                          target_modules=TOY["TOY_LORA_TARGETS"].split(","))
failure = GRPOTrainer(model=failure_model, reward_funcs=trl_reward_function(fact_candidates(rl_train), STYLE),
                      args=failure_args, train_dataset=rl_train, processing_class=tokenizer, peft_config=failure_lora)
failure.remove_callback(PrinterCallback)
failure.train()
no_kl = scorecard_row(failure.model, tokenizer, EVAL_FILE, style_suffix=STYLE)
no_kl_rl = task_accuracy(failure.model, tokenizer, rl_eval, 48, STYLE)["accuracy"]
print(f"β = 0、无格式奖励,{FAILURE_STEPS} 步:留出 RL 问题 {no_kl_rl:.0%},sft_seen {no_kl['sft_seen']:.0%},"
      f"heldout {no_kl['heldout']:.0%},以结尾句结束 {no_kl['style']:.0%}")
print(f"对照(make run,β = {BETA},格式奖励 {STYLE_WEIGHT}):留出 RL 问题 {grpo_row['rl_heldout']:.0%},"
      f"sft_seen {grpo_row['sft_seen']:.0%},heldout {grpo_row['heldout']:.0%},以结尾句结束 {grpo_row['style']:.0%}")
display(Markdown(
    f"不要 KL、也不奖励结尾句时,RL 任务本身涨得更多({dpo_row['rl_heldout']:.0%} → {no_kl_rl:.0%},make run 是 "
    f"{grpo_row['rl_heldout']:.0%}),代价是别的能力:成绩单的 sft_seen {dpo_row['sft_seen']:.0%} → {no_kl['sft_seen']:.0%}、"
    f"heldout {dpo_row['heldout']:.0%} → {no_kl['heldout']:.0%},以结尾句结束 {dpo_row['style']:.0%} → {no_kl['style']:.0%}。"))

# %% [markdown]
# 奖励只看 RL 问题答没答对,别的什么也不管。没有 KL 把策略拉在参考模型附近,模型为了新问法可以随意改动,
# 旧问法(成绩单的 sft_seen、heldout)跟着被改坏;结尾句对奖励既无益也无害,采样中它时有时无,
# 训练把它当作无关的细节丢掉(β = 0 时 TRL 不计算参考模型,也就不记录 KL)。这个对照只在一个种子上跑过;
# make run 的设置在六个种子上的结果见 README。玩具预设因此用了较大的 β,并给结尾句一个小的格式奖励;
# toy.env 的注释记下了调参时量到的数字(一个进程、种子 12)。多个种子上的结果在 `bench/grpo_seed_spread.json`。

# %%
print(f"本 notebook 运行时间 {time.perf_counter() - START:.0f} 秒")

# %% [markdown]
# ## 练习
#
# 练习在 `exercises/ex6_5_grpo.py`:
#
# 1. `group_advantages`:由一批奖励和组大小算出每条回答的优势。学到:基线是**同一个问题**那组回答的均值(不同问题难度不同),
#    样本标准差,以及为什么全对或全错的一组优势是 0。
# 2. `k3_kl`:KL 惩罚逐 token 的 k3 估计量。学到:估计的是哪个方向的 KL(采样来自策略模型),为什么不用可能为负的 k1。
#
# 评分程序在相同的输入上与 `llmtrain.grpo` 比较,认得常见错误并说明原因:整批一起标准化、用总体标准差、
# 全相同的一组得到 nan、KL 方向反了、用了 k1、少了 −1。
#
# 检查:`make check-exercises EX=6.5`;全部练习:`make check-exercises`。做完对照 `code/llmtrain/grpo.py`。
