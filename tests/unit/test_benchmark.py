"""Multiple-choice benchmarks read from local files in their authors' layouts (MMLU, C-Eval,
CMMLU) and asked as LLaMA-Factory's evaluation asks them; no model here."""

from __future__ import annotations

import pytest

from runner.core.jobspec.job import BenchmarkSpec, JobSpec
from runner.train.tools.benchmark import BenchmarkError, detect, load, messages
from tests.conftest import DATA

BENCH = DATA / "benchmark"


def test_each_layout_is_recognised_and_read():
    assert [detect(BENCH / f"{n}-tiny") for n in ("mmlu", "ceval", "cmmlu")] == ["mmlu", "ceval", "cmmlu"]
    layout, split, lang, subjects = load(BenchmarkSpec(path=str(BENCH / "ceval-tiny")))
    assert (layout, split, lang) == ("ceval", "val", "zh")  # C-Eval's test answers are not published
    physics = subjects[1]
    assert (physics.key, physics.name, physics.category) == ("high_school_physics", "高中物理", "STEM")
    assert len(physics.shots) == 2 and len(physics.questions) == 3
    assert physics.questions[2].choices == {"A": "空气", "B": "水", "C": "钢铁", "D": "真空"}
    assert physics.questions[2].answer == "D"
    layout, split, lang, subjects = load(BenchmarkSpec(path=str(BENCH / "mmlu-tiny")))
    assert (layout, split, lang) == ("mmlu", "test", "en")
    assert subjects[0].name == "astronomy" and subjects[1].name == "high school computer science"
    assert subjects[0].questions[0].answer == "C" and list(subjects[0].questions[0].choices) == list("ABCD")
    layout, split, lang, subjects = load(BenchmarkSpec(path=str(BENCH / "cmmlu-tiny")))
    assert (layout, split, lang, subjects[0].questions[1].answer) == ("cmmlu", "test", "zh", "B")


def test_the_prompt_is_few_shot_chat_turns_with_the_subject_line():
    _, _, _, subjects = load(BenchmarkSpec(path=str(BENCH / "ceval-tiny")))
    net = subjects[0]
    turns = messages(net, net.questions[0], 2, "zh")
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant", "user"]
    assert turns[0]["content"] == (
        "以下是中国关于计算机网络考试的单项选择题，请选出其中的正确答案。\n\n"
        "TCP 协议工作在哪一层？\nA. 物理层\nB. 传输层\nC. 应用层\nD. 数据链路层\n答案："
    )
    assert turns[1]["content"] == "B" and turns[-1]["content"].endswith("D. 组播地址\n答案：")
    zero = messages(net, net.questions[0], 0, "en")
    assert zero == [{"role": "user", "content": "The following are multiple choice questions (with answers) about "
                     "计算机网络.\n\nIP 地址 127.0.0.1 表示____。\nA. 广播地址\nB. 本机回环地址\nC. 网关地址\nD. 组播地址\nAnswer:"}]  # fmt: skip


def test_what_cannot_be_scored_is_refused_with_the_reason():
    with pytest.raises(BenchmarkError, match="use split: val"):
        load(BenchmarkSpec(path=str(BENCH / "ceval-tiny"), split="test"))
    with pytest.raises(BenchmarkError, match="no val file for \\['law'\\]"):
        load(BenchmarkSpec(path=str(BENCH / "ceval-tiny"), subjects=["law"]))
    with pytest.raises(BenchmarkError, match="no dev/ directory"):
        load(BenchmarkSpec(path=str(BENCH)))
    _, _, _, subjects = load(BenchmarkSpec(path=str(BENCH / "ceval-tiny"), subjects=["computer_network"]), 2)
    assert [len(s.questions) for s in subjects] == [2]


def test_a_benchmark_eval_spec_needs_no_data_section():
    spec = JobSpec.model_validate(
        {"name": "b", "stage": "eval", "model": {"path": "m"}, "eval": {"benchmark": {"path": "tests/b"}}}
    )
    assert [d.path for d in spec.data.datasets] == ["tests/b"]  # mounted read-only, as data is
