"""Writes the small labelled sets beside it (run it again to remake them; seeded, so the files do
not change). Each is separable by its words, so a classifier that learns at all beats chance:

- sentiment_zh.jsonl: Chinese reviews, 好评 / 差评 (stage cls, labels as names).
- reviews_en.csv: English reviews rated 1 to 5 stars, Yelp-style (stage cls, 5 classes; the
  `stars` column is text in CSV, so the stars are label names).
- topics.jsonl: what a review talks about, any of food, service, price (stage cls, multi_label).
- ner.jsonl: English sentences and Chinese ones split into characters, tagged PER, LOC, ORG in BIO
  (stage ner; columns `tokens` and `ner_tags`, as Hugging Face's CoNLL-2003 names them).
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

HERE = Path(__file__).parent
rng = random.Random(7)


def sentiment_zh(n: int = 80) -> list[dict]:
    good = ["很好", "非常棒", "特别满意", "真喜欢", "值得推荐", "好吃又实惠"]
    bad = ["太差了", "很失望", "特别糟糕", "要退货", "又慢又贵", "难吃极了"]
    things = ["这家店", "菜", "服务", "环境", "价格", "快递", "质量", "这次购物"]
    tails = ["。", "！", "，下次再说。", "，朋友也这么觉得。"]
    rows = []
    for i in range(n):
        label = "好评" if i % 2 == 0 else "差评"
        word = rng.choice(good if label == "好评" else bad)
        rows.append({"text": f"{rng.choice(things)}{word}{rng.choice(tails)}", "label": label})
    rng.shuffle(rows)
    return rows


def reviews_en(n: int = 100) -> list[dict]:
    words = {
        "1": ["terrible", "awful", "the worst"], "2": ["poor", "disappointing", "bland"],
        "3": ["okay", "average", "fine"], "4": ["good", "nice", "pleasant"],
        "5": ["excellent", "amazing", "perfect"],
    }  # fmt: skip
    things = ["food", "service", "room", "coffee", "staff", "pizza", "music"]
    rows = []
    for i in range(n):
        stars = str(i % 5 + 1)
        rows.append(
            {
                "review": f"The {rng.choice(things)} was {rng.choice(words[stars])} and the "
                f"{rng.choice(things)} was {rng.choice(words[stars])}.",
                "stars": stars,
            }
        )
    rng.shuffle(rows)
    return rows


def topics(n: int = 150) -> list[dict]:
    cues = {"food": ["delicious pasta", "cold soup", "fresh bread"],
            "service": ["a friendly waiter", "rude staff", "a slow waiter"],
            "price": ["an expensive bill", "cheap prices", "a fair price"]}  # fmt: skip
    rows = []
    for _ in range(n):
        labels = sorted(rng.sample(list(cues), rng.randint(0, 3)))
        parts = [rng.choice(cues[label]) for label in labels] or ["nothing special"]
        rows.append({"text": "We had " + " and ".join(parts) + ".", "labels": labels})
    return rows


def ner(n: int = 80) -> list[dict]:
    people = [["John", "Smith"], ["Mary"], ["Li", "Wei"], ["Anna", "Berg"]]
    places = [["Paris"], ["New", "York"], ["Berlin"], ["Hong", "Kong"]]
    orgs = [["Acme", "Corp"], ["the", "United", "Nations"], ["Globex"]]
    zh_people, zh_places, zh_orgs = ["张伟", "王芳", "李娜"], ["北京", "上海", "广州"], ["华为", "清华大学"]
    rows = []
    for i in range(n):
        if i % 4 == 3:  # Chinese, one character per word, as Chinese NER data is written
            p, loc, org = rng.choice(zh_people), rng.choice(zh_places), rng.choice(zh_orgs)
            spans = [(p, "PER"), ("在", None), (loc, "LOC"), ("的", None), (org, "ORG"), ("工作。", None)]
            tokens, tags = [], []
            for text, kind in spans:
                for k, ch in enumerate(text):
                    tokens.append(ch)
                    tags.append("O" if kind is None else ("B-" if k == 0 else "I-") + kind)
        else:
            p, loc, org = rng.choice(people), rng.choice(places), rng.choice(orgs)
            spans = rng.choice([
                [(p, "PER"), (["lives", "in"], None), (loc, "LOC"), (["."], None)],
                [(p, "PER"), (["works", "for"], None), (org, "ORG"), (["in"], None), (loc, "LOC"), (["."], None)],
                [(["Yesterday"], None), (org, "ORG"), (["hired"], None), (p, "PER"), (["."], None)],
            ])  # fmt: skip
            tokens, tags = [], []
            for words, kind in spans:
                for k, w in enumerate(words):
                    tokens.append(w)
                    tags.append("O" if kind is None else ("B-" if k == 0 else "I-") + kind)
        rows.append({"tokens": tokens, "ner_tags": tags})
    return rows


def _jsonl(name: str, rows: list[dict]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    (HERE / name).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    _jsonl("sentiment_zh.jsonl", sentiment_zh())
    with open(HERE / "reviews_en.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["review", "stars"])
        writer.writeheader()
        writer.writerows(reviews_en())
    _jsonl("topics.jsonl", topics())
    _jsonl("ner.jsonl", ner())
