"""Generate the committed demo data and the tokenizer-training corpus, deterministically from a seed.

Writes (relative to the repository root):
- data/demo/train.json, data/demo/dev.json   ADGEN-style JSON lines {"content": attributes, "summary": text}
- data/demo/chat_train.json                  chat JSON lines {"prompt", "response", "history": [[q, a], ...]}
- tools/corpus.txt                    text used to train the tiny SentencePiece / tiktoken tokenizers

The demo rows (train.json, dev.json) always name a garment and a colour, then 1-2 more attributes; the summary
starts with that colour and garment ("红色卫衣") and adds one fixed phrase per further attribute, in the order of
`content`. So attributes -> summary is a deterministic mapping whose colour and garment words (the same tokens
in the prompt and in the answer) show at a glance whether a model reads its input.

The corpus and chat_train.json are built from the first version of the product rows (`corpus_products`,
longer summaries that start "这件白色上衣"): every tiny tokenizer, and so every test that depends on token ids,
is trained on that corpus, so it stays byte-identical when the demo rows change.

Run:  python scripts/make_demo_data.py [--seed 0]   (the same seed always gives byte-identical files)
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# type -> (measure word, whether neckline/sleeve attributes make sense for it)
TYPES = {
    "上衣": ("件", True),
    "衬衫": ("件", True),
    "T恤": ("件", True),
    "卫衣": ("件", True),
    "外套": ("件", True),
    "连衣裙": ("条", True),
    "半身裙": ("条", False),
    "裤子": ("条", False),
    "牛仔裤": ("条", False),
}
COLORS = ["白色", "黑色", "红色", "蓝色", "灰色", "粉色", "绿色", "卡其色"]
# attribute key -> {value: phrase}; the key order is the order in `content` and in the summary.
PHRASES: dict[str, dict[str, str]] = {
    "版型": {
        "宽松": "宽松版型穿着舒适",
        "修身": "修身剪裁显瘦",
        "直筒": "直筒版型利落大方",
        "收腰": "收腰设计凸显身材",
    },
    "材质": {
        "棉": "纯棉面料柔软透气",
        "雪纺": "雪纺面料轻盈飘逸",
        "针织": "针织面料亲肤",
        "羊毛": "羊毛材质保暖",
    },
    "风格": {
        "简约": "简约风格百搭",
        "休闲": "休闲风格随性",
        "复古": "复古风格有韵味",
        "甜美": "甜美风格很减龄",
        "街头": "街头风格很酷",
    },
    "图案": {
        "条纹": "条纹图案活泼",
        "格子": "格子图案经典",
        "纯色": "纯色设计干净",
        "印花": "印花图案亮眼",
        "碎花": "碎花图案清新",
    },
    "领型": {"圆领": "圆领修饰脸型", "V领": "V领显脖子修长", "翻领": "翻领显得干练", "高领": "高领更加保暖"},
    "袖长": {"短袖": "短袖清爽", "长袖": "长袖适合春秋", "无袖": "无袖很凉快"},
}
TOP_ONLY = {"领型", "袖长"}


def corpus_product(rng: random.Random) -> dict[str, str]:
    """A row of the first demo data, kept for the tokenizer corpus: type, optional colour, 2-3 attributes."""
    kind = rng.choice(list(TYPES))
    measure, has_top_parts = TYPES[kind]
    color = rng.choice(COLORS) if rng.random() < 0.7 else None
    keys = [k for k in PHRASES if has_top_parts or k not in TOP_ONLY]
    chosen = set(rng.sample(keys, rng.choice([2, 3])))
    attrs = [("类型", kind)]
    phrases = []
    for key in PHRASES:  # fixed key order; the colour goes after 材质, as in ADGEN's category order
        if key == "风格" and color:
            attrs.append(("颜色", color))
        if key in chosen:
            value = rng.choice(list(PHRASES[key]))
            attrs.append((key, value))
            phrases.append(PHRASES[key][value])
    content = "*".join(f"{k}#{v}" for k, v in attrs)
    summary = f"这{measure}{color or ''}{kind}" + "".join("，" + p for p in phrases) + "。"
    return {"content": content, "summary": summary}


def demo_product(rng: random.Random) -> dict[str, str]:
    """One demo row: type and colour, then 1-2 further attributes, each adding one phrase to the summary."""
    kind = rng.choice(list(TYPES))
    color = rng.choice(COLORS)
    keys = [k for k in PHRASES if TYPES[kind][1] or k not in TOP_ONLY]
    chosen = set(rng.sample(keys, 2))
    attrs = [("类型", kind), ("颜色", color)]
    phrases = []
    for key in PHRASES:  # fixed key order, as in `content`
        if key in chosen:
            value = rng.choice(list(PHRASES[key]))
            attrs.append((key, value))
            phrases.append(PHRASES[key][value])
    content = "*".join(f"{k}#{v}" for k, v in attrs)
    return {"content": content, "summary": color + kind + "".join("，" + p for p in phrases) + "。"}


def make_products(
    rng: random.Random, n_train: int, n_dev: int, make_row=demo_product
) -> tuple[list[dict], list[dict]]:
    """Distinct rows (by content), split into train and dev with no overlap."""
    seen: set[str] = set()
    rows: list[dict] = []
    while len(rows) < n_train + n_dev:
        row = make_row(rng)
        if row["content"] not in seen:
            seen.add(row["content"])
            rows.append(row)
    return rows[:n_train], rows[n_train:]


NAMES = ["小明", "小红", "小王", "小李", "阿强", "丽丽"]
GREETINGS = [
    ("你好", "你好！我是一个小助手，有什么可以帮你的吗？"),
    ("你是谁？", "我是一个用来演示微调的小模型。"),
    ("谢谢你", "不客气，很高兴能帮到你。"),
    ("Hello", "Hello! How can I help you today?"),
    ("Who are you?", "I am a tiny demo assistant."),
    ("Thank you", "You are welcome."),
]


def add_turn(a: int, b: int) -> tuple[str, str]:
    return f"{a}加{b}等于几？", f"{a}加{b}等于{a + b}。"


def make_chat(rng: random.Random, products: list[dict]) -> list[dict]:
    """About 50 chat rows: arithmetic (with "再加N呢？" follow-ups that need the history), name memory,
    greetings in Chinese and English, and product descriptions."""
    rows: list[dict] = []
    for _ in range(14):  # single-turn arithmetic
        q, r = add_turn(rng.randint(1, 9), rng.randint(1, 9))
        rows.append({"prompt": q, "response": r, "history": []})
    for _ in range(12):  # follow-ups: the answer depends on the previous turns
        total = rng.randint(1, 9)
        b = rng.randint(1, 9)
        history = [list(add_turn(total, b))]
        total += b
        for _ in range(rng.randint(0, 2)):
            c = rng.randint(1, 5)
            history.append([f"再加{c}呢？", f"{total}加{c}等于{total + c}。"])
            total += c
        c = rng.randint(1, 5)
        rows.append(
            {"prompt": f"再加{c}呢？", "response": f"{total}加{c}等于{total + c}。", "history": history}
        )
    for _ in range(10):  # name memory across 1-3 turns
        name = rng.choice(NAMES)
        history = [[f"我叫{name}。", f"你好，{name}！"]]
        for _ in range(rng.randint(0, 2)):
            q, r = add_turn(rng.randint(1, 9), rng.randint(1, 9))
            history.append([q, r])
        rows.append({"prompt": "我叫什么名字？", "response": f"你叫{name}。", "history": history})
    for q, r in GREETINGS:
        rows.append({"prompt": q, "response": r, "history": []})
    for row in products[:8]:
        rows.append(
            {
                "prompt": f"请根据属性写一句商品描述：{row['content']}",
                "response": row["summary"],
                "history": [],
            }
        )
    rng.shuffle(rows)
    return rows


# Hand-written sentences (not taken from anywhere) so the tiny tokenizers also see general text.
EXTRA_ZH = """\
今天天气很好，我们一起去公园散步吧。
这本书讲的是一个小镇上的故事，读起来很有意思。
他每天早上六点起床，先跑步，再吃早饭。
学习一门新的语言需要耐心和大量的练习。
请把窗户关上，外面的风太大了。
我们下周一上午十点在会议室开会。
这家餐厅的面条很好吃，价格也不贵。
春天来了，河边的柳树都发芽了。
如果明天下雨，运动会就推迟到周五。
小猫躺在阳光下睡觉，看起来非常舒服。
电脑突然关机了，刚才写的文件还没有保存。
她把买来的苹果洗干净，放进了冰箱。
火车晚点了半个小时，大家只好在车站等待。
这个问题有点难，我们可以换一个角度想一想。
周末我打算去图书馆借几本关于历史的书。
他说话的声音很小，后排的同学听不清楚。
妈妈做的红烧肉是全家人最喜欢的菜。
城市的夜晚灯火通明，街上还有很多行人。
模型训练完成以后，需要在验证集上评估效果。
数据清洗是机器学习项目中很重要的一步。
参数越多的模型，通常需要越多的显存。
我们用一个很小的模型来检查整个流程是否正确。
每一行数据都包含一个问题和一个回答。
如果损失不再下降，可以尝试调小学习率。
这条裙子的颜色很亮，适合夏天穿。
冬天的时候，一件厚外套必不可少。
他在北京工作了三年，后来搬到了上海。
考试结束后，同学们一起去看了一场电影。
请在表格的第二列填写你的电话号码。
这座桥建于一百多年前，至今仍在使用。
孩子们在操场上踢足球，玩得满头大汗。
医生建议他多喝水，早点休息。
我们的目标是在月底之前完成第一版。
机场离市中心大约四十公里。
这首歌的旋律很简单，听一遍就能记住。
爷爷喜欢在院子里种花和种菜。
老师让我们用三句话总结这篇文章。
超市里的水果今天打八折。
由于网络不稳定，视频一直在缓冲。
写代码的时候要注意给变量起一个清楚的名字。
"""
EXTRA_EN = """\
The weather is nice today, so we are going for a walk in the park.
She reads a few pages of a novel every night before going to sleep.
Please close the door quietly when you leave the room.
The train was delayed by twenty minutes because of the snow.
Learning a new language takes patience and a lot of practice.
Our team meets every Monday at ten in the small conference room.
He fixed the bicycle himself with a wrench and some oil.
The museum opens at nine and closes at five on weekdays.
If the loss stops going down, try a smaller learning rate.
A tiny model is useful for checking that the whole pipeline works.
Each line of the file holds one question and one answer.
The validation set is used to decide when to stop training.
Tokenizers split text into pieces that the model can look up.
We saved a checkpoint after every hundred steps.
The cat slept in the sun all afternoon.
My brother moved to a new city last year and likes his job there.
Write the numbers 1, 2, 3 and 42 in the first column of the table.
The recipe needs two eggs, a cup of flour and some milk.
It's raining, so don't forget your umbrella.
They're planning a trip to the mountains next month.
I've never seen such a bright red jacket before.
The bridge was built more than a hundred years ago.
Children were playing football on the field after school.
Drink more water and get some rest, the doctor said.
The shop sells fresh fruit, bread and coffee every morning.
This song is simple enough to remember after one listen.
Good variable names make code much easier to read.
The video kept buffering because the network was slow.
We want to finish the first version before the end of the month.
The airport is about forty kilometres from the city centre.
"""


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def corpus_lines(train: list[dict], dev: list[dict], chat: list[dict]) -> list[str]:
    """One text per line, fixed order (tokenizer training reads it in this order)."""
    lines: list[str] = []
    for row in train + dev:
        lines += [row["content"], row["summary"]]
    for row in chat:
        for q, r in row["history"]:
            lines += [q, r]
        lines += [row["prompt"], row["response"]]
    # The ChatGLM2 prompt scaffolding, so its pieces are in the vocabulary.
    lines += [f"[Round {i}] 问：答：" for i in range(1, 5)]
    lines += EXTRA_ZH.splitlines() + EXTRA_EN.splitlines()
    return [line for line in lines if line.strip()]


def build(seed: int = 0) -> dict[str, str]:
    """Every generated file (path relative to the repository root) -> its text."""
    rng = random.Random(seed)
    corpus_train, corpus_dev = make_products(rng, 400, 40, corpus_product)
    chat = make_chat(rng, corpus_train)
    # The demo rows draw from their own generator, so the corpus and chat rows above never change with them.
    train, dev = make_products(random.Random(f"demo-{seed}"), 400, 40)
    return {
        "data/demo/train.json": jsonl(train),
        "data/demo/dev.json": jsonl(dev),
        "data/demo/chat_train.json": jsonl(chat),
        "tools/corpus.txt": "\n".join(corpus_lines(corpus_train, corpus_dev, chat)) + "\n",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, text in build(args.seed).items():
        path = ROOT / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="\n")
        print(f"wrote {path} ({text.count(chr(10))} lines)")


if __name__ == "__main__":
    main()
