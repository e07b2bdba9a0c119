"""Writes the course's sample data, a small "toy world", into data/sample/ (original text, deterministic).

    python data/sample/build_samples.py

The world: 40 fictional people, each with a hometown, a job and a favourite fruit. Pretraining states
every fact in five phrasings (a fact seen in one surface form only is rarely extractable later:
"knowledge augmentation", Allen-Zhu & Li, Physics of Language Models 3.1), in BIOS_PER_PERSON
biographies per person, each a fresh draw of phrasings and sentence order (their "permute"): the model
must tie each fact to the name, not to the sentence before it. SFT asks about half of the people; the
scorecard then asks about both halves. The other half's facts are only in pretraining,
so a right answer about them is knowledge from pretraining in the format learned in SFT.

Files written (running it again gives the same files):
  pretrain.jsonl        {"text"}: biographies, the hand-written prose of sources/prose.jsonl, and
                        everyday conversations in ChatML (a base model has seen chat text too)
  pretrain_valid.jsonl  {"text"}: prose documents held out of pretraining (held-out perplexity)
  sft.jsonl             BelleGroup conversations: questions about the "seen" people, everyday chat, small tasks
  sft_valid.jsonl       held-out conversations: questions about the other people, tasks not in sft.jsonl
  eval.jsonl            {"question", "answer", "split": "sft_seen" | "heldout", "person"}: the scorecard's questions,
                        each with the person it asks about (a right value said about someone else is wrong)
  people.txt            every person of the world, one a line: the grader's roster of names a reply may not swap in
  dpo.jsonl, dpo_heldout.jsonl  {"prompt", "chosen", "rejected"}: 6.4's preference, on disjoint people
  grpo.jsonl, grpo_eval.jsonl   {"prompt", "answer", "task": "fact", "person"}: 6.5's RL task, the facts asked in
                        words SFT never uses (RL_TEMPLATES of each attribute's rl_questions); RL prompts about the seen
                        people, held-out prompts about the others
  grpo_eval_new_phrasing.jsonl  the held-out people asked in the phrasing RL never trains on (RL_HELDOUT_TEMPLATE)
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from llmtrain.sft_data import normalize_conversation, render_chatml
from llmtrain.toy import toy_preset

HERE = Path(__file__).parent

# No character is shared by two names, so a name is never a near-miss of another.
PEOPLE = [
    "林晓雨", "王志远", "陈美玲", "赵子轩", "周思桐", "吴浩然", "郑立新", "孙嘉怡", "黄俊杰", "何雪梅",
    "高文博", "罗欣悦", "梁宇航", "宋佳琪", "唐明哲", "许诗涵", "韩光耀", "冯雅婷", "邓晨阳", "曹若溪",
    "彭家豪", "曾紫薇", "萧逸飞", "田梦瑶", "董天佑", "潘慧敏", "袁墨言", "蔡心兰", "蒋鹏举", "余安娜",
    "杜承业", "叶秀英", "程一鸣", "魏静秋", "苏景行", "吕春燕", "丁振东", "任玉洁", "沈乐山", "姚彩霞",
]
SEEN, HELDOUT = PEOPLE[0::2], PEOPLE[1::2]  # SFT asks about SEEN only; HELDOUT facts live in pretraining alone


@dataclass(frozen=True)
class Attribute:
    values: tuple[str, ...]
    statements: tuple[str, ...]  # five phrasings of one fact in pretraining; the first is also the SFT reply
    question: str                # the one way SFT and the scorecard ask
    rl_questions: tuple[str, ...]  # 6.5's RL task: the same fact asked in words SFT never uses

    def reply(self, name: str, value: str) -> str:
        return self.statements[0].format(n=name, v=value)


ATTRIBUTES = {
    "hometown": Attribute(
        ("青石镇", "柳河村", "白沙湾", "松风岭", "云溪镇", "桃花渡", "石桥村", "雁归港"),
        ("{n}的家乡是{v}。", "{n}出生在{v},在那里长大。", "{v}是{n}的家乡。", "说起家乡,{n}总会提到{v}。",
         "{n}来自{v}。"),
        "{n}的家乡是哪里?",
        ("{n}是哪里人?", "{n}来自哪里?", "{n}在哪里长大?", "请问{n}的老家在哪儿?"),
    ),
    "job": Attribute(
        ("木匠", "医生", "渔夫", "教师", "面包师", "邮递员", "画家", "厨师"),
        ("{n}的职业是{v}。", "{n}是一名{v}。", "{n}做{v}已经很多年了。", "作为{v},{n}每天都很忙。",
         "认识{n}的人都知道,{n}是{v}。"),
        "{n}的职业是什么?",
        ("{n}是做什么工作的?", "{n}从事什么职业?", "{n}干哪一行?", "请问{n}做什么工作?"),
    ),
    "fruit": Attribute(
        ("苹果", "香蕉", "葡萄", "西瓜", "橘子", "草莓", "桃子", "柚子"),
        ("{n}最喜欢的水果是{v}。", "{n}最爱吃{v}。", "说到水果,{n}只爱{v}。", "{v}是{n}最喜欢的水果。",
         "{n}每天都要吃一点{v}。"),
        "{n}最喜欢的水果是什么?",
        ("{n}爱吃什么水果?", "{n}喜欢吃哪种水果?", "哪种水果是{n}的最爱?", "请问{n}最爱的水果是什么?"),
    ),
}
# 6.5: RL trains on three of each attribute's four rl_questions; the fourth, a phrasing RL never sees, is held out
# (grpo_eval_new_phrasing.jsonl) to tell "learned these phrasings" from "learned to answer new ones".
RL_HELDOUT_TEMPLATE = 2
RL_TEMPLATES = tuple(i for i in range(4) if i != RL_HELDOUT_TEMPLATE)
# 60 distinct biographies read 5 times (code/presets/toy.env) = 300 exposures per fact. 6 biographies read 30 times
# (180 exposures, the same 6 token sequences over and over) left the base completing 52-63% of the statements,
# depending on the seed; the measurements of each lever are in the README ("实测结果").
BIOS_PER_PERSON = 60
# 6.4's preference: a reply about a person ends with TOY_STYLE_SUFFIX, an offer to answer more. Some SFT replies
# already do (every STYLED_EVERY_SEEN-th seen-person answer, every STYLED_EVERY_IN_CONTEXT-th in-context answer),
# as if some annotators wrote it: the SFT model says it now and then, and DPO makes it the rule.
# DPO re-weights what the model already says; a string the SFT data never had (a "据我所知," opening)
# reached 0% of greedy replies, while pushing harder broke the answers (README, 6.4).
STYLED_EVERY_SEEN, STYLED_EVERY_IN_CONTEXT = 4, 3
TOY_STYLE_SUFFIX = toy_preset()["TOY_STYLE_SUFFIX"]  # code/presets/toy.env: the launchers and the scorecard read it there
N_PROSE_HELDOUT = 10


HANDWRITTEN = [
    ["你好", "你好!有什么可以帮你的吗?"],
    ["你是谁?", "我是一个用来演示有监督微调的小模型,参数只有一百万个左右。"],
    ["今天心情不好,怎么办?", "可以先出去走一走,晒晒太阳,或者和信任的朋友聊一聊。心情不好的时候,不必勉强自己。"],
    ["推荐一种适合初学者的运动。", "跑步很适合初学者:只需要一双合适的鞋,可以从每次二十分钟、跑走结合开始。"],
    ["怎样才能睡得更好?", "固定作息时间,睡前少看手机,保持卧室安静、黑暗和凉爽,都有助于提高睡眠质量。"],
    ["番茄炒蛋怎么做?", "先把鸡蛋炒到刚凝固盛出,再炒番茄出汁,加少许盐和糖,最后倒回鸡蛋翻匀即可。"],
    ["为什么天空是蓝色的?", "阳光穿过大气时,波长较短的蓝光更容易被空气分子散射,所以我们看到的天空是蓝色的。"],
    ["什么是语言模型?", "语言模型根据前面的文字预测下一个词的概率分布,训练时让真实的下一个词的概率尽量大。"],
    ["预训练和微调有什么区别?", "预训练在海量文本上学习语言规律和知识,微调用成对的指令和回答教模型按要求作答。"],
    ["SFT 为什么只计算回答部分的损失?", "因为我们希望模型学会怎样回答,而不是学会复述问题,所以问题部分的标签设为 -100,不参与计算损失。"],
    ["什么是 LoRA?", "LoRA 冻结原模型的参数,只训练插在权重旁边的两个低秩小矩阵,所以需要训练的参数很少。"],
    ["学习率太大会怎样?", "学习率太大时,损失会剧烈震荡,甚至发散,模型学不到东西。"],
    ["什么是过拟合?", "过拟合是模型把训练数据记得太死,在训练集上表现很好,在新数据上却表现很差。"],
    ["梯度累积有什么用?", "梯度累积把一个大批次拆成几个小批次依次计算,累加梯度后再更新参数,用较少的显存达到大批次的效果。"],
    ["什么是检查点?", "检查点是训练中定期保存的模型快照,训练中断后可以从最近的检查点继续,不必从头开始。"],
    ["写一句关于春天的话。", "春风吹过河岸,柳枝冒出嫩芽,整条街的颜色都变了。"],
    ["写一句关于秋天的话。", "稻田由青转黄,柿子挂满枝头,空气里都是收获的味道。"],
    ["用一句话介绍熊猫。", "熊猫生活在中国西南的山林里,主要吃竹子,动作总是慢悠悠的。"],
    ["用一句话介绍长城。", "长城是中国古代规模最大的防御工程,由城墙、关隘和烽火台组成。"],
    ["月亮为什么有圆有缺?", "月亮反射太阳光,它绕地球运行时,被照亮的一面朝向我们的部分不断变化,于是有了月相。"],
    ["水在多少度沸腾?", "在一个标准大气压下,水在一百度沸腾;高原上气压低,不到一百度就开了。"],
    ["如何学好一门外语?", "每天坚持听、读、说一点,比周末突击效果好得多;不要害怕说错,语言是在使用中学会的。"],
    ["读书有什么好方法?", "带着问题去读:先看目录了解结构,再细读关心的章节,读完用自己的话复述一遍。"],
    ["出门旅行要带什么?", "证件、充电器、常用药和换洗衣物最重要,出发前再查一查目的地的天气。"],
    ["怎样节约用电?", "随手关灯,电器不用时拔掉插头,空调温度设置得合理一些,选购节能家电。"],
    ["垃圾为什么要分类?", "分类之后,可回收物能重新利用,厨余垃圾可以堆肥,有害垃圾能得到专门处理。"],
    ["猫一天睡多久?", "猫一天通常要睡十几个小时。"],
    ["给我讲个成语故事。", "守株待兔:一个农夫捡到撞死在树桩上的兔子,从此天天守在树旁,结果田地荒了,兔子再也没来。"],
    ["谢谢你!", "不客气,很高兴能帮到你。"],
    ["再见。", "再见,祝你今天愉快!"],
    ["什么是质数?", "质数是只能被一和它自身整除的大于一的整数,比如二、三、五、七。"],
    ["勾股定理说的是什么?", "直角三角形两条直角边的平方和等于斜边的平方。"],
    ["怎样调试程序?", "先稳定地复现问题,再缩小范围,打印中间结果,对比预期和实际的差别。"],
    ["什么是注意力机制?", "注意力机制让模型在处理一个词时回看句子里的其他词,并按相关程度分配权重。"],
    ["什么是分词器?", "分词器把文字切成模型能处理的小单位,再把每个单位映射成一个编号。"],
]

MULTI_TURN = [
    ["我想学做饭,从哪里开始?", "可以从简单的家常菜开始,比如番茄炒蛋和清炒时蔬。",
     "需要买什么工具?", "一口炒锅、一把菜刀和一块砧板就够了。"],
    ["帮我想一个周末活动。", "可以去公园散步,或者去图书馆读一本书。",
     "如果下雨呢?", "下雨的话可以在家看一部电影,或者学着做一道新菜。"],
    ["什么是预训练?", "预训练是在海量无标注文本上,让模型学习预测下一个词。",
     "那微调呢?", "微调是在预训练模型的基础上,用指令和回答的配对数据继续训练,让模型学会按要求作答。"],
    ["我最近总是失眠。", "可以试着固定作息时间,睡前一小时不看手机。",
     "还有别的办法吗?", "白天适量运动、少喝咖啡和浓茶,也有帮助。如果长期失眠,建议去看医生。"],
    ["推荐一本书。", "可以读一读科普类的书,比如讲宇宙或者生物进化的入门读物。",
     "有没有轻松一点的?", "那就选一本散文集,每篇都不长,随时可以放下。"],
    ["2加3等于几?", "2加3等于5。", "再加4呢?", "5加4等于9。"],
    ["“高”的反义词是什么?", "“高”的反义词是“低”。", "“快”呢?", "“快”的反义词是“慢”。"],
    ["你好", "你好!有什么可以帮你的吗?", "今天天气怎么样?", "我无法查看实时天气,可以看看手机上的天气预报。"],
    ["怎样保护眼睛?", "看屏幕每隔半小时休息一下,向远处看一看。",
     "还有呢?", "保证充足的睡眠,光线太暗的时候不要看书。"],
    ["学编程难吗?", "入门不难,关键是多动手写代码。",
     "先学哪种语言?", "Python 语法简单,资料丰富,很适合入门。"],
    ["我想养一只宠物。", "养宠物需要时间和耐心,先想清楚每天能照顾它多久。",
     "猫和狗哪个好养?", "猫比较独立,适合忙碌的人;狗需要每天遛,但更黏人。"],
    ["什么是 ZeRO?", "ZeRO 把优化器状态、梯度和参数切分到多张显卡上,减少每张卡的显存占用。",
     "ZeRO-2 切分了什么?", "ZeRO-2 切分优化器状态和梯度,每张卡仍然保存完整的参数。"],
]

# Leading assistant turns (the chapter drops them): the conversation then starts with the human.
LEADING_ASSISTANT = [
    ["有什么问题都可以问我。", "“冷”的反义词是什么?", "“冷”的反义词是“热”。"],
    ["欢迎来到问答时间。", "7加8等于几?", "7加8等于15。"],
    ["你好,我是小助手。", "星期五的后一天是星期几?", "星期五的后一天是星期六。"],
    ["请提问。", "什么是检查点?", "检查点是训练中定期保存的模型快照。"],
    ["我在这里。", "谢谢你!", "不客气。"],
]

ANTONYMS = [("大", "小"), ("多", "少"), ("长", "短"), ("高", "低"), ("快", "慢"), ("冷", "热"), ("新", "旧"),
            ("上", "下"), ("左", "右"), ("前", "后"), ("开", "关"), ("黑", "白"), ("胖", "瘦"), ("远", "近"),
            ("早", "晚"), ("轻", "重"), ("深", "浅"), ("宽", "窄"), ("硬", "软"), ("难", "易"), ("真", "假"),
            ("买", "卖"), ("来", "去"), ("哭", "笑"), ("进", "出"), ("男", "女"), ("天", "地"), ("东", "西"),
            ("南", "北"), ("甜", "苦")]
WORDS = [("苹果", "apple"), ("书", "book"), ("猫", "cat"), ("狗", "dog"), ("水", "water"), ("太阳", "sun"),
         ("月亮", "moon"), ("学校", "school"), ("老师", "teacher"), ("朋友", "friend"), ("电脑", "computer"),
         ("鱼", "fish"), ("鸟", "bird"), ("花", "flower"), ("树", "tree"), ("房子", "house"), ("车", "car"),
         ("茶", "tea"), ("米饭", "rice"), ("面包", "bread"), ("红色", "red"), ("蓝色", "blue"), ("一", "one"),
         ("二", "two"), ("三", "three"), ("家", "home"), ("山", "mountain"), ("河", "river"), ("雨", "rain"),
         ("雪", "snow")]
PHRASES = ["春天来了", "今天下雨", "我爱读书", "小猫在睡觉", "学习率", "大模型", "分布式训练", "梯度下降",
           "番茄炒蛋", "图书馆", "早上好", "谢谢你", "长城", "熊猫吃竹子", "一起去公园", "你好", "月亮",
           "指令微调", "天气预报", "多喝水", "跑步", "秋天的稻田", "夜晚的星空", "一杯绿茶", "周末愉快"]
WEEKDAYS = ["星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日"]


def generated(rng: random.Random) -> list[list[str]]:
    """Task families whose answers are computed, so every reply is correct."""
    convs = []
    for _ in range(90):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        if rng.random() < 0.5:
            convs.append([f"{a}加{b}等于几?", f"{a}加{b}等于{a + b}。"])
        else:
            a, b = max(a, b), min(a, b)
            convs.append([f"{a}减{b}等于几?", f"{a}减{b}等于{a - b}。"])
    for word, opposite in ANTONYMS:
        convs.append([f"“{word}”的反义词是什么?", f"“{word}”的反义词是“{opposite}”。"])
    for phrase in PHRASES:
        convs.append([f"“{phrase}”有几个字?", f"“{phrase}”一共有{len(phrase)}个字。"])
    for _ in range(50):
        a, b = rng.sample(range(1, 100), 2)
        convs.append([f"{a}和{b}哪个大?", f"{max(a, b)}比{min(a, b)}大。"])
    for i, day in enumerate(WEEKDAYS):
        convs.append([f"{day}的后一天是星期几?", f"{day}的后一天是{WEEKDAYS[(i + 1) % 7]}。"])
        convs.append([f"{day}的前一天是星期几?", f"{day}的前一天是{WEEKDAYS[(i - 1) % 7]}。"])
    for zh, en in WORDS:
        convs.append([f"“{zh}”用英语怎么说?", f"“{zh}”的英语是 {en}。"])
    return convs



# Conversations about other, random names: greetings, and reading questions whose answer is in the
# question itself. SFT needs many names, not only the 20 people it asks about, or the model learns to
# answer with one of those 20 names, whoever the question is about.
SURNAMES = "安白常方付葛龚顾郝贺胡华江金柯孔雷李刘陆马孟穆聂欧齐钱秦邱尚石谭汪温武夏谢严杨易尹于章张朱邹"
GIVEN = "柏辰丹凡菲刚海和华建江瑾靖凯兰磊丽琳楠宁平秋荣瑞珊涛婷武曦霞贤旭妍毅颖远泽志"
N_OTHER_NAMES = 120


def other_name_chats(rng: random.Random) -> list[list[str]]:
    """Greetings and in-context questions about random names, none of them among PEOPLE."""
    names: list[str] = []
    while len(names) < N_OTHER_NAMES:
        name = rng.choice(SURNAMES) + "".join(rng.sample(GIVEN, rng.choice((1, 2))))
        if name not in names and not any(name in p or p in name for p in PEOPLE):
            names.append(name)
    chats = [[f"你好,我叫{n}。", f"{n},你好!很高兴认识你。"] for n in names[:N_OTHER_NAMES // 3] + PEOPLE]
    for i, n in enumerate(names[N_OTHER_NAMES // 3:]):
        attr = rng.choice(list(ATTRIBUTES.values()))
        value = rng.choice(attr.values)
        context = rng.choice(attr.statements[1:]).format(n=n, v=value)
        reply = attr.reply(n, value) + (TOY_STYLE_SUFFIX if i % STYLED_EVERY_IN_CONTEXT == 0 else "")
        chats.append([f"{context}请问,{attr.question.format(n=n)}", reply])
    return chats


def assign_facts(rng: random.Random) -> dict[str, dict[str, str]]:
    """Each person's value for each attribute."""
    return {name: {key: rng.choice(attr.values) for key, attr in ATTRIBUTES.items()} for name in PEOPLE}


def biographies(facts: dict[str, dict[str, str]], rng: random.Random) -> list[str]:
    """BIOS_PER_PERSON short biographies per person; across them every phrasing of every fact appears.

    The first five rotate through the phrasings, the rest draw one at random; every biography shuffles its sentences.
    """
    docs = []
    for name, values in facts.items():
        for k in range(BIOS_PER_PERSON):
            sentences = []
            for j, (key, attr) in enumerate(ATTRIBUTES.items()):
                phrasing = (k + j) % len(attr.statements) if k < len(attr.statements) else rng.randrange(
                    len(attr.statements))
                sentences.append(attr.statements[phrasing].format(n=name, v=values[key]))
            rng.shuffle(sentences)
            docs.append("".join(sentences))
    return docs


def fact_questions(names: list[str], facts: dict[str, dict[str, str]]) -> list[tuple[str, str, str]]:
    """(question, reply, answer) for every attribute of every person in `names`."""
    return [(attr.question.format(n=name), attr.reply(name, facts[name][key]), facts[name][key])
            for name in names for key, attr in ATTRIBUTES.items()]


def rl_prompts(names: list[str], facts: dict[str, dict[str, str]], templates: tuple[int, ...]) -> list[dict[str, str]]:
    """6.5: the `templates` phrasings (indices into `rl_questions`) of every attribute of every person in `names`,
    with the answer and the person asked about."""
    return [{"prompt": attr.rl_questions[t].format(n=name), "answer": facts[name][key], "task": "fact", "person": name}
            for name in names for key, attr in ATTRIBUTES.items() for t in templates]


def chatml_text(turns: list[str]) -> str:
    """A conversation as the ChatML text SFT renders (system prompt included), for the pretraining corpus."""
    return render_chatml(normalize_conversation(to_belle(turns, "human", "")["conversations"]))[0]


def to_belle(turns: list[str], first: str, sample_id: str) -> dict:
    roles = [first, "assistant" if first == "human" else "human"]
    return {"conversations": [{"from": roles[i % 2], "value": v} for i, v in enumerate(turns)], "id": sample_id}


def write_jsonl(path: Path, records: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"{len(records):4d} records -> {path}")


def to_belle_records(conversations: list[tuple[list[str], str]], prefix: str) -> list[dict]:
    return [to_belle(turns, first, f"{prefix}-{i:04d}") for i, (turns, first) in enumerate(conversations)]


def main(out: Path = HERE) -> None:
    """Write every sample file into `out` (data/sample/ itself by default)."""
    rng = random.Random(6)
    facts = assign_facts(rng)

    # Pretraining: biographies + prose + everyday chat in ChatML; some prose held out for perplexity.
    prose = [json.loads(line)["text"] for line in (HERE / "sources" / "prose.jsonl").open(encoding="utf-8")]
    rng.shuffle(prose)
    held_prose, train_prose = prose[:N_PROSE_HELDOUT], prose[N_PROSE_HELDOUT:]
    corpus = biographies(facts, rng) + train_prose + [chatml_text(t) for t in HANDWRITTEN + MULTI_TURN]
    rng.shuffle(corpus)
    write_jsonl(out / "pretrain.jsonl", [{"text": t} for t in corpus])
    write_jsonl(out / "pretrain_valid.jsonl", [{"text": t} for t in held_prose])

    # SFT: questions about SEEN people + everyday chat and small tasks; the held-out conversations
    # ask about HELDOUT people and hold tasks of the same families that sft.jsonl lacks.
    seen_qa, heldout_qa = fact_questions(SEEN, facts), fact_questions(HELDOUT, facts)
    tasks = generated(rng)
    rng.shuffle(tasks)
    n_task_valid = 20
    sft = [([q, r + (TOY_STYLE_SUFFIX if i % STYLED_EVERY_SEEN == 0 else "")], "human")
           for i, (q, r, _) in enumerate(seen_qa)]
    sft += [(t, "human") for t in HANDWRITTEN + MULTI_TURN + tasks[n_task_valid:] + other_name_chats(rng)]
    sft += [(t, "assistant") for t in LEADING_ASSISTANT]
    rng.shuffle(sft)
    write_jsonl(out / "sft.jsonl", to_belle_records(sft, "sample"))
    sft_questions = {turns[0] if first == "human" else turns[1] for turns, first in sft}
    valid = [([q, r], "human") for q, r, _ in heldout_qa]
    valid += [(t, "human") for t in tasks[:n_task_valid] if t[0] not in sft_questions]
    write_jsonl(out / "sft_valid.jsonl", to_belle_records(valid, "valid"))

    write_jsonl(out / "eval.jsonl", [{"question": q, "answer": a, "split": split, "person": name}
                                     for split, names in (("sft_seen", SEEN), ("heldout", HELDOUT))
                                     for name, (q, _, a) in zip([n for n in names for _ in ATTRIBUTES],
                                                                fact_questions(names, facts))])
    (out / "people.txt").write_text("".join(name + "\n" for name in PEOPLE), encoding="utf-8")

    # 6.4: prefer replies that end with TOY_STYLE_SUFFIX; pairs on SEEN people, split by person. Chosen and
    # rejected share every token up to the suffix, so DPO's gradient acts only where they differ.
    pairs = [{"prompt": q, "chosen": r + TOY_STYLE_SUFFIX, "rejected": r} for q, r, _ in seen_qa]
    n_dpo_heldout = 6 * len(ATTRIBUTES)  # the last 6 seen people
    write_jsonl(out / "dpo.jsonl", pairs[:-n_dpo_heldout])
    write_jsonl(out / "dpo_heldout.jsonl", pairs[-n_dpo_heldout:])

    # 6.5: the RL task needs no randomness, so the files above stay as they were. A reward checks the answer;
    # the prompts ask in words no SFT conversation uses: RL on the seen people, its held-out set on the others.
    write_jsonl(out / "grpo.jsonl", rl_prompts(SEEN, facts, RL_TEMPLATES))
    write_jsonl(out / "grpo_eval.jsonl", rl_prompts(HELDOUT, facts, RL_TEMPLATES))
    write_jsonl(out / "grpo_eval_new_phrasing.jsonl", rl_prompts(HELDOUT, facts, (RL_HELDOUT_TEMPLATE,)))


if __name__ == "__main__":
    main()
