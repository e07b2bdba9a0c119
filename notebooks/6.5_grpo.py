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
# # 6.5 用可验证的奖励做强化学习:自己写出 GRPO 的训练循环,一次只改一处,看 RL 到底学到了什么
#
# 6.4 的 DPO 只在**现成的**回答对上学习,训练中不采样。本节走到强化学习:模型**自己采样**一组回答,由一段**程序**判对错
# (不需要奖励模型),答对的回答被加强、答错的被压低。DeepSeek-R1 用的就是这种做法(GRPO),奖励是数学题的最终答案、
# 代码能否通过测试这类"可以验证"的信号。
#
# 本节的顺序:
# 1. 玩具世界里的 RL 任务,以及**判分程序必须知道问的是谁**(否则模型会学会"说对一个值,说错一个人");
# 2. GRPO 的目标,一组回答的采样、打分与优势,和 TRL 的 `GRPOTrainer` 逐项核对(并看核对能抓住哪些错误);
# 3. **自己写出训练循环**,和 `GRPOTrainer` 在同样的样本上逐步对照;一批数据更新两次时,裁剪才真正起作用;
# 4. `make run` 的 GRPO(TRL + DeepSpeed 2 个进程)的曲线;
# 5. RL 学到了什么:新的人、新的问法、pass@8 与贪心准确率、答成别人的回答;
# 6. 一次只改一处(β、优势除不除以标准差、损失怎样平均、格式奖励、判分程序管不管人),每处在几个种子上;
# 7. RL 做不到的事。
#
# 实现在 `code/llmtrain/grpo.py`(算法)和 `code/llmtrain/grading.py`(判分),脚本是 `code/grpo.py` / `code/grpo.sh`。

# %% tags=["parameters"]
from llmtrain.toy import toy_preset

TOY = toy_preset()  # code/presets/toy.env:与 PRESET=toy bash code/grpo.sh 用同一组数值
GROUP = TOY["TOY_GRPO_GROUP"]  # 每个问题采样几条回答
LEARNING_RATE = TOY["TOY_GRPO_LR"]
BETA = TOY["TOY_GRPO_BETA"]  # KL 惩罚的权重
STYLE_WEIGHT = TOY["TOY_GRPO_STYLE_WEIGHT"]  # 以 6.4 的结尾句结束的格式奖励
MAX_COMPLETION = TOY["TOY_GRPO_MAX_COMPLETION"]
PROMPTS_PER_STEP = TOY["TOY_NUM_GPUS"] * TOY["TOY_GRPO_BATCH_SIZE"] // GROUP  # 和 make run 一样:每步 4 个问题
LOOP_STEPS = 20  # 6.5.6 手写的训练循环走多少步(TRL 在同样的样本上再走一遍)
EVAL_EVERY = 10  # 每隔几步在留出的问题上测一次贪心准确率
TWO_PASS_STEPS = 4  # 一批数据更新两次(num_iterations=2)的对照走多少步
SEED = 42

# %%
import inspect
import json
import time
from collections import Counter

import pandas as pd
import torch
from IPython.display import Image, Markdown, display
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback

from llmtrain import PROJECT_ROOT as ROOT
from llmtrain.grading import load_people, load_prompt_dataset
from llmtrain.notebook import fresh_output_dir, setup_notebook, shown_path
from llmtrain.toy_run import require_toy_model

START = time.perf_counter()
IMAGES_DIR = setup_notebook(SEED)
OUTPUT_DIR = fresh_output_dir("6.5")  # output/notebooks/6.5,每次运行先清空
GRPO_DIR = require_toy_model("grpo-lora")  # make run 训练的 output/toy/grpo-lora;还没有时它会告诉你先运行 make run
DPO_MERGED = require_toy_model("dpo-lora/merged")
STYLE = TOY["TOY_STYLE_SUFFIX"]  # 6.4 的结尾句:判分时先去掉,格式奖励看它
SAMPLE = ROOT / "data" / "sample"
tokenizer = AutoTokenizer.from_pretrained(DPO_MERGED)
rl_train = load_prompt_dataset([str(SAMPLE / "grpo.jsonl")])
rl_eval = load_prompt_dataset([str(SAMPLE / "grpo_eval.jsonl")])
rl_new = load_prompt_dataset([str(SAMPLE / "grpo_eval_new_phrasing.jsonl")])
PEOPLE = load_people(str(SAMPLE / "grpo.jsonl"))  # 这个世界全部 40 个人名(data/sample/people.txt)
SEEDS = json.loads((ROOT / "bench" / "seed_spread.json").read_text(encoding="utf-8"))  # 多个种子上的 make run
ABLATION = json.loads((ROOT / "bench" / "grpo_ablation.json").read_text(encoding="utf-8"))  # 一次只改一处
print("起点:", shown_path(DPO_MERGED), "—— 6.4 的 LoRA-DPO 合并后的模型(make run)")
print("GRPO 适配器:", shown_path(GRPO_DIR), "—— PRESET=toy bash code/grpo.sh(DeepSpeed 2 个进程)")

# %% [markdown]
# ## 6.5.1 RL 任务:换一种问法问同样的事实
#
# SFT 只用一种问法问事实("林晓雨的家乡是哪里?"),成绩单也只这样问。换一种 SFT 里从没出现过的问法
# ("林晓雨是哪里人?""王志远干哪一行?"),模型还答得出吗?对错由程序判定:成绩单的严格规则,所以这是一个**可验证的奖励**。
#
# 每个属性有四种新问法。RL 只用其中三种练习,而且只问 SFT 问过的 20 个人(`grpo.jsonl`);评测分两份:
# - `grpo_eval.jsonl`:**新的人**(另外 20 个,他们的事实只在预训练里),**练过的问法**;成绩单上的 "RL task heldout acc";
# - `grpo_eval_new_phrasing.jsonl`:新的人,**第四种问法**,RL 一次也没练过;成绩单上的 "RL task new phrasing acc"。
#
# 两份都答得好,才说明学到的是"这一类问法问的是哪个属性",而不是记住了三句问法。

# %%
sft_questions = {turn["value"] for line in open(SAMPLE / "sft.jsonl", encoding="utf-8")
                 for turn in json.loads(line)["conversations"]}
files = {"grpo.jsonl(RL 训练)": rl_train, "grpo_eval.jsonl(新的人)": rl_eval,
         "grpo_eval_new_phrasing.jsonl(新的人、新问法)": rl_new}
questions = {name: {p[-1]["content"] for p in rows["prompt"]} for name, rows in files.items()}
for name, asked in questions.items():
    others = set().union(*(q for n, q in questions.items() if n != name))
    print(f"{name}: {len(asked)} 个问题,与 SFT 相同的 {len(asked & sft_questions)} 个,与另外两份相同的 {len(asked & others)} 个")
templates = {name: sorted({q.replace(p, "{人}") for q, p in zip((x[-1]["content"] for x in rows["prompt"]), rows["person"])})
             for name, rows in files.items()}
print("RL 练的问法:", "、".join(templates["grpo.jsonl(RL 训练)"]))
print("RL 没练过的问法:", "、".join(templates["grpo_eval_new_phrasing.jsonl(新的人、新问法)"]))

# %% [markdown]
# DPO 模型(GRPO 的起点)对这些问题答得怎样?`make run` 的成绩单上每一行都有这两列(`code/evaluate.py --rl_eval_file
# ... --rl_new_phrasing_file ...`,和其他列一样先去掉结尾句再判分)。`make run` 已经给 DPO 模型和它的 GRPO 适配器各打了一行,
# 每条回答都存在 `output/toy/scorecard.json` 里;这里直接读出来(重新生成一遍要一分多钟,结果一样),先看 DPO 模型答错的问题:

# %%
from peft import PeftModel

from llmtrain.evaluation import format_scorecard
from llmtrain.toy_run import toy_run_dir

scorecard = json.loads((toy_run_dir() / "scorecard.json").read_text(encoding="utf-8"))
card = {name: scorecard[name] for name in ("LoRA DPO (6.4)", "LoRA GRPO (6.5)")}
dpo_model = AutoModelForCausalLM.from_pretrained(DPO_MERGED).eval()
grpo_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(DPO_MERGED), str(GRPO_DIR)).eval()
dpo_row, grpo_row = card["LoRA DPO (6.4)"], card["LoRA GRPO (6.5)"]
wrong = [r for r in dpo_row["rl_heldout_replies"] if not r["correct"]]
print(f"DPO 模型:用 SFT 的问法,sft_seen {dpo_row['sft_seen']:.0%}、heldout {dpo_row['heldout']:.0%};换成新问法,"
      f"新的人 {dpo_row['rl_heldout']:.0%},新的人加新问法 {dpo_row['rl_new_phrasing']:.0%}")
print(f"DPO 模型答错的 RL 问题(新的人){len(wrong)} / {len(dpo_row['rl_heldout_replies'])} 条,前几条:")
for r in wrong[:5]:
    print(f"  问: {r['prompt']}  答案 {r['answer']}  模型: {r['reply']}")

# %% [markdown]
# 事实模型是知道的(同样这些人,用 SFT 的问法它几乎全答对),它不认识的是新的问法:常常答成另一个属性,或者答非所问。
# 这正是 RL 能帮上忙的地方:只要**采样**时偶尔答对,奖励就能把答对的那种回答加强。
#
# 一个不看问题的基线能拿多少分?每个属性总答训练集里最常见的那个值("家乡"都答同一个镇):

# %%
import importlib.util
import sys

spec = importlib.util.spec_from_file_location("build_samples", SAMPLE / "build_samples.py")
world = importlib.util.module_from_spec(spec)
sys.modules["build_samples"] = world  # dataclasses look their module up there
spec.loader.exec_module(world)
attribute_of = {value: key for key, attr in world.ATTRIBUTES.items() for value in attr.values}
most_common = {key: Counter(a for a in rl_train["answer"] if attribute_of[a] == key).most_common(1)[0][0]
               for key in world.ATTRIBUTES}
for name, rows in (("新的人", rl_eval), ("新的人、新问法", rl_new)):
    baseline = sum(most_common[attribute_of[a]] == a for a in rows["answer"]) / len(rows)
    print(f"{name}:每个属性总答最常见的值({'、'.join(most_common.values())}),答对 {baseline:.0%}")

# %% [markdown]
# ## 6.5.2 判分程序必须知道问的是谁
#
# 成绩单的规则最初只看**值**:答案恰好出现一次、之后只有标点、不提别的候选。它不看回答讲的是**谁**。
# 问"王志远干哪一行?",回答"白志远的职业是木匠。"(王志远确实是木匠)也算对。对 RL 来说这是一个漏洞:
# 奖励只要值对,模型就可以把问题里的人换成别人,照样拿分,这就是**奖励投机**(reward hacking)。
#
# 现在每个问题都带着它问的人("person"),`data/sample/people.txt` 列出这个世界的全部人名。规则多了一条
# (`llmtrain.grading.names_only_the_asked_person`):回答里只要出现**同一个名字里相邻的两个字**("王志""志远"),
# 就算提到了这个人;这些字必须落在被问的人的完整名字里。这个世界的名字两两没有相同的字,所以残缺的("王志")和改了一个字的
# ("白志远")都认得出来,只给值的回答("木匠。")仍然算对。成绩单和 GRPO 的奖励用的是同一个函数:

# %%
from llmtrain.grading import is_strict_match, names_only_the_asked_person

print(inspect.getsource(names_only_the_asked_person))
examples = [("白志远的职业是木匠。", "木匠", "王志远"), ("王志的家乡是青石镇。", "青石镇", "王志远"),
            ("程一鸣的职业是画家。", "画家", "孙嘉怡"), ("王志远的职业是木匠。", "木匠", "王志远"), ("木匠。", "木匠", "王志远")]
display(pd.DataFrame([{"问的人": person, "回答": reply, "只看值(旧规则)": is_strict_match(reply, answer, {answer}),
                       "也看人(现在)": is_strict_match(reply, answer, {answer}, person, PEOPLE)}
                      for reply, answer, person in examples]))

# %% [markdown]
# 漏洞被利用了吗?`bench/grpo_ablation.py` 在几个种子上用**旧规则**当奖励训练了同样的 GRPO(提示文件去掉 "person",
# 判分程序就只看值),再用新规则判分。下面是 RL 评测(新的人)上,"旧规则算对、新规则不算"的回答占多少,
# 即说对了值、说错了人的回答:

# %%
runs = ABLATION["runs"]
seeds = sorted(runs["grader blind to the person"], key=int)
rows = []
for seed in seeds:
    blind, preset = runs["grader blind to the person"][seed], runs["preset"][seed]
    start = SEEDS["rows"][seed]
    rows.append({"seed": seed, "DPO 起点:答错了人": f"{start['DPO RL another person']:.0%}",
                 "旧规则训练:答错了人": f"{blind['rl_another_person']:.0%}",
                 "旧规则训练:旧规则下的准确率": f"{blind['rl_old_rule']:.0%}",
                 "旧规则训练:真正答对": f"{blind['rl']:.0%}",
                 "新规则训练:答错了人": f"{preset['rl_another_person']:.0%}", "新规则训练:真正答对": f"{preset['rl']:.0%}"})
display(pd.DataFrame(rows).set_index("seed"))
blind_examples = [r for seed in seeds for r in runs["grader blind to the person"][seed]["another_person_replies"]][:4]
print("旧规则训练出的模型,答错了人的回答举例:")
for r in blind_examples:
    print(f"  问: {r['prompt']}  答案 {r['answer']}  模型: {r['reply']}")

# %%
gain_old = [runs["grader blind to the person"][s]["rl_old_rule"] - SEEDS["rows"][s]["DPO RL old rule"] for s in seeds]
hacked = [runs["grader blind to the person"][s]["rl_another_person"] - SEEDS["rows"][s]["DPO RL another person"]
          for s in seeds]
exploited = [s for s, h in zip(seeds, hacked) if h >= 0.02]
display(Markdown(
    f"按旧规则看,旧规则训练的 GRPO 在 {len(seeds)} 个种子上比起点多答对 {min(gain_old):.0%}–{max(gain_old):.0%};"
    f"\"答错了人\"的回答比起点多了 {min(hacked):+.0%}–{max(hacked):+.0%}。"
    + (f"在种子 {'、'.join(exploited)} 上,一部分\"进步\"是奖励投机:模型学会了说出一个对的值,却不在乎是谁的。"
       + ("别的种子上没有量到这样的增加:漏洞一直在,被不被利用,要看训练碰巧加强了哪些回答。"
          if len(exploited) < len(seeds) else "")
       if exploited else "这几个种子上没有量到这样的增加(≥ 2 个百分点):漏洞在,这 120 步里没有被利用。")
    + "新规则下这类回答拿不到奖励,训练就不会加强它们。"))

# %% [markdown]
# ## 6.5.3 GRPO 的目标
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
# $\ell_t = -\min\big(\rho_t A,\ \mathrm{clip}(\rho_t, 1-\varepsilon_{low}, 1+\varepsilon_{high}) A\big) + \beta\, \mathrm{KL}_t$,
# $\mathrm{KL}_t = e^{\mathrm{ref}_t - \log\pi_t} - (\mathrm{ref}_t - \log\pi_t) - 1$(Schulman 的 k3 估计量,恒非负)。
# 每批数据只更新一次时 $\rho_t = 1$,裁剪不起作用,剩下的梯度是 $A\, \nabla \log \pi$ 加上 KL 项的梯度;
# 所以奖励全是 0 时策略梯度为 0,**KL 项仍有梯度**,把策略往参考模型拉。
#
# 实现这些公式的 `group_advantages`、`k3_kl` 和 `grpo_loss` 是本节的练习(见最后),源码放在练习之后。
# 下面先看它们算出来的数。一组 4 条回答的小例子:两条答对、两条答错,一组只有一条答对,以及一组全对:

# %%
from llmtrain.grpo import group_advantages

rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
for scale in (True, False):
    adv = group_advantages(rewards, group_size=4, scale=scale)
    print(f"{'除以组内标准差(GRPO)' if scale else '不除(Dr. GRPO)':16s}:",
          " | ".join(", ".join(f"{a:+.2f}" for a in adv[i:i + 4].tolist()) for i in (0, 4, 8)))

# %% [markdown]
# 三个设计选择,各对应 `grpo_loss` 里的一行:
#
# - **除不除以标准差。** 上面第二组(4 条里只有 1 条对)除以标准差后,对的那条优势比第一组的还大:几乎全错(或几乎全对)
#   的组,标准差小,被除出来的优势反而大,这些组在梯度里的分量被放大了。Dr. GRPO(Liu 等,2025)认为这是一种偏差,
#   去掉除法(`scale_rewards="none"`)。6.5.9 在几个种子上比较两种做法。
# - **损失怎样平均。** "grpo"(DeepSeekMath 原文)先在每条回答自己的 token 上平均,再对回答平均:短回答的每个 token
#   分量更重,答错的长回答受到的惩罚被摊薄;"dapo"(TRL 1.16 的默认,`make run` 用它)对整批 token 一起平均;
#   "dr_grpo" 除以一个常数(回答数 × 最长长度),完全没有按长度的归一化。
# - **KL 为什么乘以比率。** k3 的值对策略的梯度,其期望是 KL(π_ref ‖ π) 的梯度,方向反了;乘上比率 ρ(数值上第一次更新时是 1)
#   之后,梯度的期望才是 KL(π ‖ π_ref) 的梯度(TRL 1.16 的默认 `use_bias_correction_kl`,出自 DeepSeek-V3.2)。
# - **裁剪的上界(clip-higher)。** DAPO 把上界 $\varepsilon_{high}$ 设得比下界大:让采样概率很低、却答对了的 token 能多涨一些,
#   防止策略的熵塌下去(`epsilon_high`)。熵在 TRL 的日志里叫 "entropy",6.5.7 画出它。
#
# 三种平均方式在同一批数上的差别:两条回答,一条 3 个 token、优势 +1,一条 1 个 token、优势 −1:

# %%
from llmtrain.grpo import grpo_loss

logps = torch.zeros(2, 3)
mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
for loss_type in ("grpo", "dapo", "dr_grpo"):
    out = grpo_loss(logps, logps, None, torch.tensor([1.0, -1.0]), mask, beta=0.0, loss_type=loss_type,
                    max_completion_length=3)
    print(f"{loss_type:8s} 损失 {out.loss.item():+.3f}")

# %% [markdown]
# "grpo" 下两条回答各占一半,损失是 0;"dapo" 按 token 数计,长的那条(优势为正)占 3/4;"dr_grpo" 除以 2 × 3。
#
# ## 6.5.4 采样一组回答,打分,算优势
#
# 用起点模型(DPO)对前 16 个 RL 问题各采样 `GROUP` 条回答(温度 1.0,和训练时一样),由奖励函数打分,
# 下面展示两组:第一个"有对有错"的组,和第一个"得分全相同"的组。
# 注意一个坑:玩具分词器(以及 Qwen2.5 的基座)的 eos 是 `<|endoftext|>`,而对话以 `<|im_end|>` 结束;
# TRL 只在 `generation_config.eos_token_id` 处停下,所以脚本先调用 `stop_at_end_of_turn` 把两者都设为结束符,
# 否则每条回答都会一直生成到长度上限,一条也得不到分。

# %%
from llmtrain.grading import fact_candidates, score_replies
from llmtrain.grpo import sample_groups, stop_at_end_of_turn
from llmtrain.tokenizer import decode_showing_partial_bytes

print("结束符 id:", stop_at_end_of_turn(dpo_model, tokenizer))
torch.manual_seed(SEED)
tried = list(range(16))
sampled = sample_groups(dpo_model, tokenizer, list(rl_train.select(tried)["prompt"]), GROUP, max_new_tokens=MAX_COMPLETION)
graded = [c.removesuffix(STYLE) for c in sampled["completions"]]  # 和成绩单一样,先去掉结尾句再判分
all_rewards = torch.tensor(score_replies(graded, rl_train.select([i for i in tried for _ in range(GROUP)]),
                                         fact_candidates(rl_train))).view(len(tried), GROUP)
mixed = [i for i in tried if all_rewards[i].std() > 0]
same = [i for i in tried if all_rewards[i].std() == 0]
print(f"{len(tried)} 组里,有对有错的 {len(mixed)} 组,{GROUP} 条回答得分全相同的 {len(same)} 组"
      "(全相同的组优势全是 0,策略梯度从它们那里学不到东西)")
assert mixed, "no group with both right and wrong replies among these prompts: sample more of them"
picked = mixed[:1] + same[:1]
rows_of = [i * GROUP + j for i in picked for j in range(GROUP)]
completion_ids = [sampled["completion_ids"][k][:int(sampled["completion_mask"][k].sum())].tolist() for k in rows_of]
group_rewards = all_rewards[picked].reshape(-1)
group_adv = group_advantages(group_rewards, GROUP)
shown = [decode_showing_partial_bytes(tokenizer, ids) for ids in completion_ids]  # 半个汉字显示成它的字节
display(pd.DataFrame({"问题": [rl_train[i]["prompt"][-1]["content"] for i in picked for _ in range(GROUP)],
                      "回答": shown, "奖励": group_rewards.tolist(), "优势": [round(a, 2) for a in group_adv.tolist()]}))
partial = sum("\\x" in r for r in shown)
print(f"{partial} 条回答里有单独的字节(表中的 \\xNN):温度 1 的采样偶尔挑中半个汉字的 token,"
      "tokenizer.decode 会把它变成 U+FFFD 替换符")

# %% [markdown]
# ## 6.5.5 和 TRL 的 `GRPOTrainer` 逐项核对
#
# `compare_with_trl` 让 TRL 拿到**同一批**问题和回答(替换掉它的采样这一步),由 TRL 自己分词、调用奖励函数、
# 算优势、参考模型的对数概率和损失;我们从零算同样的量,再比较损失对 LoRA 参数的梯度。奖励和 `make run` 一样先去掉结尾句,
# 所以一组里有对有错,优势不是 0,**策略梯度这一项真的被比较到了**。每一项都打印它本身有多大,和两边差多少:
# 差很小而量本身不小,这个核对才有分量。
# LoRA 的 B 矩阵一开始是 0,策略就等于参考模型,KL 为 0;为了让 KL 项也被核对到,先给 B 一点小的随机值。
# TRL 1.16 的默认损失是 "dapo",DeepSeekMath 原文是 "grpo",两种都核对。梯度按"差的范数 / 梯度的范数"判断:
# 每组优势之和为 0,梯度是一些几乎相等的项之差,两边 float32 的舍入(TRL 用 logsumexp 逐行算,我们用 log_softmax)抵消不掉。

# %%
from datasets import Dataset
from peft import LoraConfig
from trl import GRPOConfig, GRPOTrainer

from llmtrain.grpo import compare_with_trl, trl_reward_function

rows = [rl_train[i] for i in picked for _ in range(GROUP)]
LORA = dict(task_type="CAUSAL_LM", r=8, lora_alpha=32, lora_dropout=0.0, target_modules=TOY["TOY_LORA_TARGETS"].split(","))


def check_trainer(loss_type: str) -> GRPOTrainer:
    """A GRPOTrainer on the DPO model with make run's reward (closing sentence set aside); its LoRA B moved off 0."""
    torch.manual_seed(SEED)
    args = GRPOConfig(output_dir=str(OUTPUT_DIR / "trl-check"), beta=BETA, loss_type=loss_type, num_generations=GROUP,
                      per_device_train_batch_size=len(rows), max_completion_length=MAX_COMPLETION, bf16=False,
                      activation_checkpointing=False, use_cpu=True, report_to="none", disable_tqdm=True)
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(DPO_MERGED), args=args,
                          reward_funcs=trl_reward_function(fact_candidates(rl_train), STYLE),
                          train_dataset=Dataset.from_list([dict(rl_train[0])]), processing_class=tokenizer,
                          peft_config=LoraConfig(**LORA))
    trainer.remove_callback(PrinterCallback)  # TRL's log lines: the table below says what matters
    with torch.no_grad():  # B = 0 would make the policy the reference (KL 0): move it a little
        for name, weight in trainer.model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0.0, 0.01)
    return trainer


tables = {}
for loss_type in ("dapo", "grpo"):
    compared = compare_with_trl(check_trainer(loss_type), rows, completion_ids, style_suffix=STYLE)
    tables[loss_type] = compared
    assert all(c.difference <= 1e-5 for k, c in compared.items() if not k.startswith("gradient")), compared
    assert compared["gradient (norm, relative difference)"].difference <= 1e-4, compared
    assert compared["advantages"].size > 0.5  # rewards differ within a group: the policy gradient is compared
display(pd.DataFrame({(loss_type, col): {k: f"{getattr(c, field):.1e}" for k, c in compared.items()}
                      for loss_type, compared in tables.items() for col, field in (("大小", "size"), ("差", "difference"))}))
print("与 TRL 的差都在 1e-5 以内(梯度:差的范数 / 梯度的范数 ≤ 1e-4): True")

# %% [markdown]
# 这个核对能抓住什么样的错?把一个常见的错误放进我们的实现:策略梯度那一项里的对数概率 `detach()` 掉
# (第一次更新时比率是 1,**损失的值完全不变**,只是这一项不再有梯度):

# %%
import llmtrain.grpo as grpo_module

honest_loss = grpo_module.grpo_loss


def detached_policy_gradient(logps, old, ref, advantages, mask, beta, *args, **kwargs):
    policy_gradient = honest_loss(logps.detach(), old, None, advantages, mask, 0.0, *args, **kwargs)
    penalty = honest_loss(logps, logps.detach(), ref, torch.zeros_like(advantages), mask, beta, *args, **kwargs)
    return grpo_module.GRPOLoss(policy_gradient.loss + penalty.loss, penalty.kl, policy_gradient.clip_ratio)


grpo_module.grpo_loss = detached_policy_gradient
try:
    planted = compare_with_trl(check_trainer("dapo"), rows, completion_ids, style_suffix=STYLE)
finally:
    grpo_module.grpo_loss = honest_loss
print(f"损失:大小 {planted['loss'].size:.1e},差 {planted['loss'].difference:.1e} —— 值一样,看不出来")
print(f"梯度:范数 {planted['gradient (norm, relative difference)'].size:.1e},差的范数是它的 "
      f"{planted['gradient (norm, relative difference)'].difference:.0%} —— 梯度一比就露出来")

# %% [markdown]
# 只比较前向的值,这个错会被放过;比较梯度就不会。练习的评分程序也是这样检查 `grpo_loss` 的。
#
# ## 6.5.6 自己写出训练循环,和 `GRPOTrainer` 逐步对照
#
# 一步的损失和梯度对上了,训练循环里还有什么?取问题的顺序、采样、打分、优势、参考模型、优化器、梯度裁剪。
# `train_lora_grpo_by_hand` 把这些写成三十来行,全是前面用过的零件:

# %%
from llmtrain.grpo import train_in_trl_on_these_samples, train_lora_grpo_by_hand

print(inspect.getsource(train_lora_grpo_by_hand).split('    """', 2)[0] + inspect.getsource(
    train_lora_grpo_by_hand).split('    """', 2)[2])

# %% [markdown]
# 让 TRL 在同样的条件下走同样的步数,两边的差别只剩实现本身:
#
# - **同一个起点、同一份 LoRA 初始权重**:TRL 构造时自己建 adapter,我们把它的权重拷进自己的模型(6.4 讲过为什么不深拷贝)。
# - **同样的问题顺序**:`shuffle_dataset=False`,第 k 步用第 k 批问题。
# - **同样的样本**:采样是随机的,两边各采各的就没法逐步比较。我们的循环把每一步采到的回答记下来,
#   `train_in_trl_on_these_samples` 把 TRL 的采样换成按顺序交出这些回答;打分、优势、参考模型、损失、更新都由 TRL 自己做。
# - **同样的优化器**:`adamw_torch`,不衰减权重,学习率不变(`constant`),梯度裁剪到 1。
#
# 一步只有 4 个问题 × 8 条回答,采样的奖励曲线大半是噪声;看学没学会,要在留出的问题上测**贪心**准确率,
# 这里每隔 `EVAL_EVERY` 步测一次(新的人,每个属性取一部分问题,省时间)。

# %%
from peft import get_peft_model

from llmtrain.dpo import relative_update_difference
from llmtrain.evaluation import task_accuracy
from llmtrain.grpo import trl_style_reward

probe = rl_eval.select(range(0, len(rl_eval), 3))  # 每 3 个留出问题取一个


def loop_args(name: str, steps: int, num_iterations: int) -> GRPOConfig:
    """TRL's side of the comparison: make run's GRPO settings on one process, the loop's optimizer and order."""
    return GRPOConfig(output_dir=str(OUTPUT_DIR / name), beta=BETA, loss_type="dapo", num_generations=GROUP,
                      per_device_train_batch_size=PROMPTS_PER_STEP * GROUP, max_completion_length=MAX_COMPLETION,
                      max_steps=steps, num_iterations=num_iterations, learning_rate=LEARNING_RATE,
                      lr_scheduler_type="constant", optim="adamw_torch", weight_decay=0.0, shuffle_dataset=False,
                      logging_steps=1, save_strategy="no", bf16=False, activation_checkpointing=False, use_cpu=True,
                      report_to="none", disable_tqdm=True, reward_weights=[1.0, STYLE_WEIGHT], seed=SEED)


def side_by_side(name: str, steps: int, num_iterations: int = 1, every: int | None = None):
    """The hand-written loop, then TRL fed its samples, from the same start: per-step logs of both."""
    model = AutoModelForCausalLM.from_pretrained(DPO_MERGED)
    stop_at_end_of_turn(model, tokenizer)
    trainer = GRPOTrainer(model=model, args=loop_args(name, steps, num_iterations), train_dataset=rl_train,
                          processing_class=tokenizer, peft_config=LoraConfig(**LORA),
                          reward_funcs=[trl_reward_function(fact_candidates(rl_train), STYLE), trl_style_reward(STYLE)])
    trainer.remove_callback(PrinterCallback)
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(DPO_MERGED), LoraConfig(**LORA))
    policy.load_state_dict(trainer.model.state_dict())  # TRL 刚建好的 adapter:同一个起点
    start = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    greedy = {0: task_accuracy(policy, tokenizer, probe, 48, STYLE)["accuracy"]}

    def measure(step, model):
        if every and step % every == 0:
            greedy[step] = task_accuracy(model, tokenizer, probe, 48, STYLE)["accuracy"]

    torch.manual_seed(SEED)
    ours = train_lora_grpo_by_hand(policy, tokenizer, rl_train, steps, PROMPTS_PER_STEP, GROUP, LEARNING_RATE, BETA,
                                   MAX_COMPLETION, num_iterations=num_iterations, loss_type="dapo", style_suffix=STYLE,
                                   style_weight=STYLE_WEIGHT, on_step=measure)
    theirs = train_in_trl_on_these_samples(trainer, ours.samples)
    update = relative_update_difference(start, dict(policy.named_parameters()), dict(trainer.model.named_parameters()))
    moved = torch.sqrt(sum((p.detach() - start[n]).pow(2).sum() for n, p in trainer.model.named_parameters()
                           if n in start)).item()
    return ours, theirs, update, moved, greedy


loop_start = time.perf_counter()
ours, theirs, update_diff, moved, greedy = side_by_side("loop", LOOP_STEPS, every=EVAL_EVERY)
loop_seconds = time.perf_counter() - loop_start
LOSS_TOLERANCE, UPDATE_TOLERANCE = 1e-3, 1e-3  # 损失:|差| ≤ 1e-3 × |损失| + 1e-5
loss_diff = max(abs(o.loss - t["loss"]) for o, t in zip(ours.logs, theirs))
assert len(theirs) == LOOP_STEPS and update_diff <= UPDATE_TOLERANCE
assert all(abs(o.loss - t["loss"]) <= LOSS_TOLERANCE * abs(t["loss"]) + 1e-5 for o, t in zip(ours.logs, theirs))
steps_table = pd.DataFrame({"手写循环 loss": [f"{o.loss:+.6f}" for o in ours.logs],
                            "TRL loss": [f"{t['loss']:+.6f}" for t in theirs],
                            "|差|": [f"{abs(o.loss - t['loss']):.1e}" for o, t in zip(ours.logs, theirs)],
                            "奖励(采样)": [f"{o.reward:.2f}" for o in ours.logs],
                            "熵:手写 / TRL": [f"{o.entropy:.3f} / {t['entropy']:.3f}" for o, t in zip(ours.logs, theirs)],
                            "KL": [f"{o.kl:.4f}" for o in ours.logs]},
                           index=pd.RangeIndex(1, LOOP_STEPS + 1, name="step"))
display(steps_table)

# %%
display(Markdown(
    f"{LOOP_STEPS} 步({loop_seconds:.0f} 秒,两边合计),每步损失的差最大 **{loss_diff:.1e}**(容差是损失的 {LOSS_TOLERANCE:.0e} 倍加 1e-5:"
    "同样的加法换了顺序,float32 的舍入差在第 1 步约 1e-7,随着更新一步步放大),"
    f"损失本身在 {min(abs(o.loss) for o in ours.logs):.1e}–{max(abs(o.loss) for o in ours.logs):.1e} 之间;"
    f"训练后两边 adapter 之差的范数是 TRL 这几步更新量({moved:.1e})的 **{update_diff:.1e}**(容差 {UPDATE_TOLERANCE:.0e},"
    "为什么按范数比较见 6.4.5)。\n\n"
    "每步的采样奖励在 "
    f"{min(o.reward for o in ours.logs):.2f}–{max(o.reward for o in ours.logs):.2f} 之间跳来跳去:只有 {PROMPTS_PER_STEP} 个问题,"
    "几个问题的难易就能让它大起大落。留出问题上的贪心准确率:"
    + ",".join(f"第 {s} 步 {a:.0%}" for s, a in greedy.items()) + "。"))

# %% [markdown]
# ### 一批数据更新两次:比率离开 1,裁剪开始起作用
#
# 上面每批回答只用来更新一次,第一次更新时比率恒为 1,PPO 的裁剪形同虚设。`num_iterations=2` 让同一批回答再用一次:
# 第二次时策略已经走了一步,比率离开 1,超出 $[1-\varepsilon, 1+\varepsilon]$ 又"对优势有利"的 token 被裁掉,
# 它们的梯度是 0。同样和 TRL 逐步对照,看裁掉的比例(TRL 记作 `clip_ratio/region_mean`):

# %%
two_ours, two_theirs, two_update, _, _ = side_by_side("two-pass", TWO_PASS_STEPS, num_iterations=2)
two_loss = max(abs(o.loss - t["loss"]) for o, t in zip(two_ours.logs, two_theirs))
two_clip = max(abs(o.clip_ratio - t["clip_ratio/region_mean"]) for o, t in zip(two_ours.logs, two_theirs))
assert two_update <= UPDATE_TOLERANCE and two_clip <= 1e-6
assert all(abs(o.loss - t["loss"]) <= LOSS_TOLERANCE * abs(t["loss"]) + 1e-5 for o, t in zip(two_ours.logs, two_theirs))
display(pd.DataFrame({"第几遍": ["第一遍(新采样)", "第二遍(同一批)"] * (TWO_PASS_STEPS // 2),
                      "裁掉的 token 比例:手写": [f"{o.clip_ratio:.3f}" for o in two_ours.logs],
                      "TRL": [f"{t['clip_ratio/region_mean']:.3f}" for t in two_theirs],
                      "loss 之差": [f"{abs(o.loss - t['loss']):.1e}" for o, t in zip(two_ours.logs, two_theirs)]},
                     index=pd.RangeIndex(1, TWO_PASS_STEPS + 1, name="step")))
print(f"第一遍裁掉的比例都是 0: {all(o.clip_ratio == 0 for o in two_ours.logs[0::2])};"
      f"第二遍最多裁掉 {max(o.clip_ratio for o in two_ours.logs[1::2]):.1%};adapter 之差 / 更新量 {two_update:.1e}")

# %% [markdown]
# ## 6.5.7 `make run` 的 GRPO:曲线
#
# `code/grpo.sh` 的玩具预设:从 DPO 合并后的模型出发,LoRA 加在每个线性层上;每步 2 个进程 × 16 条回答 =
# 4 个问题 × 8 条;奖励是两项之和:答对记 1(先去掉结尾句再判分),以结尾句结束再加 `STYLE_WEIGHT`
# (为什么要这一项,见 6.5.9)。TRL 每隔 5 步记录一次奖励的均值与组内标准差、两项奖励各自的均值、回答的平均长度、KL 和熵:

# %%
from llmtrain.plotting import plot_series, read_log_history

history = [e for e in read_log_history(str(GRPO_DIR / "trainer_state.json")) if "reward" in e]
steps = [e["step"] for e in history]
curves = {
    "correct (rewards/verifiable/mean)": [e["rewards/verifiable/mean"] for e in history],
    "closing sentence (rewards/style/mean)": [e["rewards/style/mean"] for e in history],
    "reward std within a group (reward_std)": [e["reward_std"] for e in history],
    "KL": [e["kl"] for e in history],
    "entropy": [e["entropy"] for e in history],
}
png = plot_series({k: (steps, v) for k, v in curves.items()}, str(IMAGES_DIR / "6.5_grpo_curves.png"), "step",
                  "value", "LoRA-GRPO (make run)")
display(Image(png))
length_png = plot_series({"completions/mean_length": (steps, [e["completions/mean_length"] for e in history])},
                         str(IMAGES_DIR / "6.5_grpo_length.png"), "step", "tokens", "Mean sampled reply length")
display(Image(length_png))
first, last = history[0], history[-1]
runtime = json.loads((GRPO_DIR / "train_results.json").read_text())["train_runtime"]
print(f"共 {last['step']} 步,训练 {runtime:.0f} 秒(2 个进程);答对的比例:第一次记录 {first['rewards/verifiable/mean']:.2f},"
      f"最后一次 {last['rewards/verifiable/mean']:.2f};以结尾句结束:{first['rewards/style/mean']:.2f} → "
      f"{last['rewards/style/mean']:.2f};KL:{first['kl']:.3f} → {last['kl']:.3f};熵:{first['entropy']:.3f} → {last['entropy']:.3f}")

# %% [markdown]
# 这些是**采样**(温度 1.0)时的比例。熵下降,说明策略在这些问题上越来越确定:RL 在"磨尖"它已有的分布。
#
# ## 6.5.8 RL 学到了什么
#
# 先看 `make run` 的 GRPO 在两份留出问题上的前后对比,以及成绩单的其他各列:

# %%
before = {r["prompt"]: r for r in dpo_row["rl_heldout_replies"]}
changed = [(before[r["prompt"]], r) for r in grpo_row["rl_heldout_replies"] if r["correct"] and not before[r["prompt"]]["correct"]]
print(f"留出的 RL 问题(新的人):DPO 模型答对 {dpo_row['rl_heldout']:.0%},GRPO 之后 {grpo_row['rl_heldout']:.0%};"
      f"新的人加新问法:{dpo_row['rl_new_phrasing']:.0%} → {grpo_row['rl_new_phrasing']:.0%}")
print(f"新答对 {len(changed)} 条,例如:")
for old, new in changed[:4]:
    print(f"  问: {new['prompt']}\n    DPO : {old['reply']}\n    GRPO: {new['reply']}")
display(Markdown(format_scorecard(card)))

# %% [markdown]
# 一个种子说明不了多少。`bench/seed_spread.py` 把 `make run` 的整条流程(预训练到 GRPO,全部换种子)各跑一遍,
# 下表读自它的结果文件;"DPO 采样答对" 是起点模型对每个留出问题采样 8 条(温度 1)答对的比例,"pass@8" 是 8 条里
# 至少有一条答对的问题所占比例:

# %%
spread = pd.DataFrame(SEEDS["rows"]).T
columns = {"DPO RL": "DPO 贪心(新的人)", "DPO RL sampled": "DPO 采样答对", "DPO RL pass@8": "DPO pass@8",
           "GRPO RL": "GRPO 贪心(新的人)", "DPO RL new phrasing": "DPO 贪心(新问法)",
           "GRPO RL new phrasing": "GRPO 贪心(新问法)", "DPO seen": "DPO seen", "GRPO seen": "GRPO seen",
           "DPO heldout": "DPO heldout", "GRPO heldout": "GRPO heldout", "DPO style": "DPO 结尾句",
           "GRPO style": "GRPO 结尾句"}
display(spread[list(columns)].rename(columns=columns).map(lambda v: f"{v:.0%}"))
print(f"{len(spread)} 个种子,{SEEDS['date']},{SEEDS['machine']}")

# %%
gain = spread["GRPO RL"] - spread["DPO RL"]
gain_new = spread["GRPO RL new phrasing"] - spread["DPO RL new phrasing"]
above_pass = (spread["GRPO RL"] > spread["DPO RL pass@8"]).sum()
others = {k: (spread[f"GRPO {k}"] - spread[f"DPO {k}"]).abs().max() for k in ("seen", "heldout", "style")}
display(Markdown(
    f"每个种子上,新的人的 RL 问题都涨了 {gain.min():.0%}–{gain.max():.0%};没练过的第四种问法在 {(gain_new > 0.02).sum()} / "
    f"{len(spread)} 个种子上涨了 2 个百分点以上(变化 {gain_new.min():+.0%}–{gain_new.max():+.0%})。成绩单的其他各列在所有种子上变化不超过:seen {others['seen']:.0%}、heldout {others['heldout']:.0%}、"
    f"结尾句 {others['style']:.0%}。\n\n"
    f"GRPO 之后的贪心准确率在 {above_pass} / {len(spread)} 个种子上**超过**了起点模型在同一批留出问题上的 pass@8:"
    "这些问题 RL 一次也没练过,起点模型采样 8 次也多半答不对,训练后却答对了。能迁移过来的,是在**训练**问题上学到的东西。"))

# %% [markdown]
# "RL 只是把模型已经会采样的回答磨尖"这句话,要在 RL **练的**那些问题上检验:起点模型在训练问题上采样时答对的有多少?

# %%
from llmtrain.evaluation import sampled_accuracy

train_probe = rl_train.select(range(0, len(rl_train), 2))
train_sampled = sampled_accuracy(dpo_model, tokenizer, train_probe, GROUP, MAX_COMPLETION, STYLE, seed=SEED)
trained_greedy = task_accuracy(grpo_model, tokenizer, train_probe, 48, STYLE)["accuracy"]
start_greedy = task_accuracy(dpo_model, tokenizer, train_probe, 48, STYLE)["accuracy"]
print(f"RL 训练问题(每 2 个取 1 个,{len(train_probe)} 个,make run 的种子):DPO 起点采样答对 {train_sampled['sampled']:.0%},"
      f"pass@{GROUP} {train_sampled['pass_at_k']:.0%},贪心 {start_greedy:.0%};GRPO 之后贪心 {trained_greedy:.0%}")

# %%
display(Markdown(
    f"在训练问题上,起点模型采样 {GROUP} 次至少答对一次的问题占 {train_sampled['pass_at_k']:.0%},GRPO 之后贪心答对"
    f" {trained_greedy:.0%}" + ("(没有超过 pass@8)" if trained_greedy <= train_sampled["pass_at_k"] else "(超过了 pass@8)")
    + ":RL 的原料是起点模型偶尔采样出来的正确回答,一组 8 条全错的问题,优势全是 0,策略梯度帮不上它;"
    "被加强的回答里学到的\"这种问法问的是哪个属性\",再迁移到新的人和新的问法上。多个种子上,起点模型在留出问题上的"
    f"采样答对率与 GRPO 的涨幅的相关系数是 {spread['DPO RL sampled'].corr(gain):+.2f}(只有 {len(spread)} 个种子,仅供参考)。"))

# %% [markdown]
# GRPO 只用 SFT 问过的那 20 个人练习三种新问法,新的人也答对得多了:它学到的是"这三种问法问的是哪个属性",
# 而事实本身早在预训练里就存下了。没练过的第四种问法并不总跟着涨(上面的表):学到的东西贴着练过的问法,离"问法无关"还远。这和 6.2 的结论一脉相承:预训练存知识,之后的每一步(SFT、RL)教的是怎样把知识取出来。
#
# ## 6.5.9 一次只改一处
#
# `bench/grpo_ablation.py` 从每个种子的 DPO 模型出发,用 `make run` 的 GRPO(2 个进程、120 步、同样的种子)训练,
# 每次只改一个设置,再按 `make run` 的方式打分。表中每格是各个种子的平均,括号里是最小–最大,最后一列是种子数:

# %%
metrics = {"rl": "RL(新的人)", "rl_new_phrasing": "RL(新问法)", "seen": "seen", "heldout": "heldout", "style": "结尾句",
           "rl_another_person": "答错了人"}
table = {}
for config, per_seed in runs.items():
    table[config] = {label: f"{sum(r[m] for r in per_seed.values()) / len(per_seed):.0%} "
                            f"({min(r[m] for r in per_seed.values()):.0%}–{max(r[m] for r in per_seed.values()):.0%})"
                     for m, label in metrics.items()}
    table[config]["种子数"] = len(per_seed)
display(pd.DataFrame(table).T)
print(f"种子 {', '.join(seeds)};{ABLATION['date']},{ABLATION['machine']}")


# %%
def mean(config: str, metric: str, over: list[str]) -> float:
    return sum(runs[config][seed][metric] for seed in over) / len(over)


versus_preset = {config: {"种子数": len(per_seed), **{label: f"{100 * (mean(config, m, list(per_seed)) - mean('preset', m, list(per_seed))):+.0f}"
                                                      for m, label in metrics.items()}}
                 for config, per_seed in runs.items() if config != "preset"}
print("和预设在同样的种子上比,每一列差多少个百分点(正数:比预设高):")
display(pd.DataFrame(versus_preset).T)
changed = [c for c in runs if c != "preset"]
collapsed = min(changed, key=lambda c: sum(mean(c, m, list(runs[c])) - mean("preset", m, list(runs[c]))
                                           for m in ("seen", "heldout", "style")))
over = list(runs[collapsed])
broken = [r for seed in over for r in runs[collapsed][seed]["wrong_replies"]][:4]
display(Markdown(
    f"成绩单的其他各列掉得最多的一行是 **{collapsed}**(seen {mean(collapsed, 'seen', over):.0%}、heldout "
    f"{mean(collapsed, 'heldout', over):.0%}、结尾句 {mean(collapsed, 'style', over):.0%};同样的种子上预设是 "
    f"{mean('preset', 'seen', over):.0%}、{mean('preset', 'heldout', over):.0%}、{mean('preset', 'style', over):.0%})。"
    "它答错的 RL 回答是这样的:"))
for r in broken:
    print(f"  问: {r['prompt']}  答案 {r['answer']}  模型: {r['reply']}")

# %% [markdown]
# 怎么读这张表:
#
# - **β(KL 的权重)。** 奖励只看 RL 问题答没答对,别的什么也不管。KL 把策略拉在参考模型(DPO 模型)附近,
#   旧问法(成绩单的 seen、heldout)和结尾句才不被改坏;β 越小,策略越能走远,这些列也就越没有保护(上表 β 的两行)。
#   nanochat 和 DAPO 都不要 KL:它们从一个只会这一类任务的模型出发、只关心这一个任务,并且用很多步、很大的 batch,
#   策略走远了也无妨;TRL 也因此把默认值改成 0。这门课的 RL 从一个什么都要会的聊天模型出发,又只用 4 个问题一步、
#   120 步,离参考模型近一点是它留住其他能力的办法,所以保留了 KL。
# - **除不除以标准差、损失怎样平均。** 改的是每条回答、每个 token 在梯度里占多少分量(6.5.3),步长和方向都跟着变;
#   在这个任务上差多少,看上面与预设的差值,并看它在各个种子上是否同号,种子数少的行只当作一次观察。
# - **格式奖励。** 结尾句对判分无益也无害(判分前先去掉),但采样时一句开了头的结尾句常常跑偏,整条回答就拿 0 分;
#   没有格式奖励,训练不在乎这句话,它留不留得住全凭运气(上表结尾句一列)。0.25 的格式奖励让它有了分量。
# - **判分程序管不管人。** 见 6.5.2:不管人时,有的种子上"答错了人"的回答变多,RL 的分数里混进了投机;看人的规则把这个漏洞堵上。
#
# ## 6.5.10 RL 做不到的事
#
# RL 只能加强模型**已经会偶尔采样出来**的回答。`bench/grpo_ablation.py` 还试了一个做不到的任务:
# 20 以内、SFT 没问过的加减法,从种子 12 的 DPO 模型出发,同样的 GRPO 设置:

# %%
arith = ABLATION["arithmetic"]
print(f"留出的算术题贪心准确率:训练前 {arith['held_out_before']:.0%},训练后 {arith['held_out_after']:.0%};"
      f"采样时答对的比例(每 5 步一次):{' '.join(f'{r:.2f}' for r in arith['reward'])}")
for r in arith["replies_after"]:
    print(f"  问: {r['prompt']}  答案 {r['answer']}  模型: {r['reply']}")

# %% [markdown]
# 采样几乎从不答对,一组 8 条的奖励几乎总是全 0,优势全 0,没有什么可以加强的:一个百万参数、只见过几十道算术题的模型,
# RL 也教不会它做加法。

# %%
print(f"本 notebook 运行时间 {time.perf_counter() - START:.0f} 秒")

# %% [markdown]
# ## 练习
#
# 练习在 `exercises/ex6_5_grpo.py`,检查:`make check-exercises EX=6.5`。评分程序用几种组大小和形状,比较值,也比较对 logps 的梯度。
#
# 1. `group_advantages`:由一批奖励和组大小算出每条回答的优势。学到:基线是**同一个问题**那组回答的均值(不同问题难度不同),
#    样本标准差,全对或全错的一组优势为 0(分母上的 1e-4),`scale=False` 是 Dr. GRPO 的做法,一组只有一条时为什么要报错。
# 2. `k3_kl`:KL 惩罚逐 token 的 k3 估计量。学到:估计的是哪个方向的 KL(采样来自策略模型),为什么不用可能为负的 k1
#    或有偏的 k2,以及它对 logps 的梯度如何把策略拉回参考模型。
# 3. `grpo_loss`:裁剪的比率目标加 KL。学到:掩码(补齐的位置不算)、裁剪的上下界(epsilon_high)、"grpo" 与 "dapo"
#    两种求平均的方式、空补全为什么会得到 nan、比率为什么不能 detach(首次更新时 ρ = 1,梯度全靠它)。
#
# 评分程序认得常见错误并说明原因:整批一起标准化、总体标准差、分组方式错、全相同的一组得到 nan、KL 方向反了、用了 k1/k2、
# 没有掩码、求平均的方式错、没有裁剪或取了 max、比率反了或 detach 了、KL 的符号或比率修正错。
#
# ## 练习之后:课程的实现
#
# 做完再对照 `code/llmtrain/grpo.py`:

# %%
from llmtrain.grpo import k3_kl

for function in (group_advantages, k3_kl, grpo_loss):
    print(inspect.getsource(function))
