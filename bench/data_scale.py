"""Data larger than memory: `runner validate` and `runner submit` (tokenize + 2 steps of the tiny
model, local executor) on generated corpora of growing size, with time, tokens/s and peak memory
per size (a report, not a test).

    .venv/bin/python bench/data_scale.py                      # 0.25, 1 and 4 GB, alpaca and text
    .venv/bin/python bench/data_scale.py --sizes 0.25 --kinds alpaca --write docs/data_scale.md
    # the same sizes with an older checkout too, back to back on the same machine:
    git archive COMMIT | tar -x -C /tmp/runner-before
    .venv/bin/python bench/data_scale.py --arm before=/tmp/runner-before --arm after=.

Corpora are synthetic and seeded: alpaca JSONL (sft: instruction, sometimes input, output; English
with some Chinese) and plain text, one document a line (pt). They are written under --work (default
/tmp/runner-data-scale), reused by every arm, and deleted at the end unless --keep.

Memory: `peak RSS` is the largest resident set of any one process of the run (what /usr/bin/time
reports: getrusage of the reaped tree); `peak PSS` is the largest total over the whole process tree
at once, sampled every 0.25 s from /proc (PSS shares a page between the processes that map it, so
tokenizing workers are not counted twice). tokens/s: the training tokens over the whole command's
wall time, reading, validating, tokenizing, starting and 2 steps included; `tokenize tok/s` the
tokens over the time of the tokenization phase alone, where the run reports it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GB = 1 << 30

# --- corpora -----------------------------------------------------------------------------------

_EN = (  # noqa: SIM905
    "the model data server network offline training image wheel bank customer account balance "
    "transfer loan rate policy report quarter revenue hospital patient record doctor nurse ward "
    "factory machine sensor line shift quality defect government office permit citizen service "
    "request answer question explain summarize translate write list compare describe why how what "
    "when where which because therefore however although while after before during between under "
    "over into onto from with without about against among within is are was were be been have has "
    "had do does did will would can could should may might must shall a an and or but not no yes "
    "every each some many few more most less least first last next new old large small long short "
    "high low good bad early late open close start stop run build load save check verify sign copy"
).split()
_ZH = (  # noqa: SIM905
    "离线 服务器 模型 数据 训练 微调 镜像 依赖 银行 客户 账户 余额 转账 贷款 利率 政策 报告 医院 患者 病历 医生 工厂 设备 传感器 质量 缺陷 政府 办事 许可 市民 服务 "
    "请求 回答 问题 解释 总结 翻译"
).split()


def _sentence(rng: random.Random) -> str:
    if rng.random() < 0.2:
        return "".join(rng.choices(_ZH, k=rng.randint(6, 20))) + "。"
    words = rng.choices(_EN, k=rng.randint(6, 24))
    return " ".join(words).capitalize() + "."


def _pool(seed: int, n: int = 20_000) -> list[str]:
    rng = random.Random(seed)
    return [_sentence(rng) for _ in range(n)]


def alpaca_corpus(path: Path, size: int, seed: int = 0) -> int:
    """Alpaca JSONL of about `size` bytes; returns the number of records."""
    rng, pool, n, written = random.Random(seed), _pool(seed), 0, 0
    with path.open("w", encoding="utf-8") as f:
        while written < size:
            lines = []
            for _ in range(1000):
                record = {
                    "instruction": " ".join(rng.choices(pool, k=rng.randint(1, 3))),
                    "input": " ".join(rng.choices(pool, k=rng.randint(1, 2))) if rng.random() < 0.3 else "",
                    "output": " ".join(rng.choices(pool, k=rng.randint(3, 9))),
                }
                lines.append(json.dumps(record, ensure_ascii=False))
            chunk = "\n".join(lines) + "\n"
            f.write(chunk)
            written += len(chunk.encode("utf-8"))
            n += len(lines)
    return n


def text_corpus(path: Path, size: int, seed: int = 0) -> int:
    """Plain text of about `size` bytes, one document (a few paragraphs' worth) a line."""
    rng, pool, n, written = random.Random(seed), _pool(seed + 1), 0, 0
    with path.open("w", encoding="utf-8") as f:
        while written < size:
            chunk = "".join(" ".join(rng.choices(pool, k=rng.randint(10, 40))) + "\n" for _ in range(200))
            f.write(chunk)
            written += len(chunk.encode("utf-8"))
            n += 200
    return n


# --- measuring ---------------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """pid and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measure(cmd: list[str], env: dict, log: Path) -> dict:
    """Run `cmd`; its wall time, exit status, peak RSS (largest process) and peak PSS (tree)."""
    start = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        peak_pss, done = 0, threading.Event()

        def sample() -> None:
            nonlocal peak_pss
            while not done.wait(0.25):
                peak_pss = max(peak_pss, sum(_pss(p) for p in _tree(proc.pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {"seconds": time.monotonic() - start, "rc": proc.returncode,
            "peak_rss": usage.ru_maxrss * 1024, "peak_pss": peak_pss}  # fmt: skip


def write_spec(path: Path, kind: str, corpus: Path, model: Path, out: Path) -> None:
    stage, fmt = ("pt", "text") if kind == "text" else ("sft", "alpaca")
    spec = {
        "name": f"scale-{kind}", "stage": stage, "model": {"path": str(model)},
        "method": {"type": "lora", "r": 8},
        "data": {"datasets": [{"path": str(corpus), "format": fmt}], "cutoff_len": 1024},
        "training": {"max_steps": 2, "per_device_train_batch_size": 2, "logging_steps": 1, "save_steps": 100},
        "resources": {"gpus": 0}, "output": {"dir": str(out)},
    }  # fmt: skip
    path.write_text(json.dumps(spec, indent=1), encoding="utf-8")


def _tokens(out: Path, log: Path) -> tuple[int | None, float | None]:
    """Training tokens and the tokenization phase's seconds, from the run's results (or its log)."""
    for results in out.glob("*/*/results.json"):
        stats = json.loads(results.read_text()).get("data", {})
        if "tokens" in stats:
            return stats["tokens"], stats.get("seconds")
    found = re.findall(r"(\d+) training rows, (\d+) tokens", log.read_text(errors="replace"))
    return (int(found[-1][1]), None) if found else (None, None)


def run_one(
    arm: str, code: Path, kind: str, corpus: Path, model: Path, work: Path, steps: tuple[str, ...]
) -> dict:
    out = work / f"out-{arm}-{kind}"
    shutil.rmtree(out, ignore_errors=True)
    spec = work / f"{arm}-{kind}.json"
    write_spec(spec, kind, corpus, model, out)
    env = {**os.environ, "PYTHONPATH": str(code.resolve()), "HF_HUB_OFFLINE": "1", "RUNNER_TTY": "0"}
    cli = [sys.executable, "-m", "runner.host.cli"]
    row: dict = {"arm": arm, "kind": kind, "bytes": corpus.stat().st_size}
    if "validate" in steps:
        row["validate"] = measure([*cli, "validate", str(spec)], env, work / f"{arm}-{kind}-validate.log")
        v = row["validate"]
        print(f"  validate {kind} {_gb(row['bytes'])}: exit {v['rc']}, {_time(v['seconds'])}, "
              f"peak RSS {_gb(v['peak_rss'])}", flush=True)  # fmt: skip
    if "submit" in steps:
        log = work / f"{arm}-{kind}-submit.log"
        row["submit"] = measure([*cli, "submit", str(spec), "--executor", "local"], env, log)
        row["tokens"], row["tokenize_seconds"] = _tokens(out, log)
    shutil.rmtree(out, ignore_errors=True)  # the tokenized cache is as large as the corpus or more
    return row


# --- the table ---------------------------------------------------------------------------------


def _gb(n: float) -> str:
    return f"{n / GB:.2f} GB"


def _time(s: float) -> str:
    return f"{s:.1f} s" if s < 60 else f"{int(s // 60)} m {s % 60:02.0f} s"


def table(rows: list[dict]) -> str:
    head = ("| arm | corpus | file | tokens | validate: time, peak RSS | submit: time, peak RSS, peak PSS "
            "| tokens/s (submit) | tokenize tok/s |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    lines = [head]
    for r in rows:
        v, s = r.get("validate"), r.get("submit")
        tokens = r.get("tokens")

        def failed(m: dict) -> str:
            return f"failed (exit {m['rc']})" if m["rc"] else ""

        vcell = (failed(v) or f"{_time(v['seconds'])}, {_gb(v['peak_rss'])}") if v else "-"
        scell = (
            (failed(s) or f"{_time(s['seconds'])}, {_gb(s['peak_rss'])}, {_gb(s['peak_pss'])}") if s else "-"
        )
        rate = f"{tokens / s['seconds'] / 1e3:,.0f}k" if s and tokens and not s["rc"] else "-"
        phase = r.get("tokenize_seconds")
        trate = f"{tokens / phase / 1e3:,.0f}k" if phase and tokens else "-"
        lines.append(f"| {r['arm']} | {r['kind']} | {_gb(r['bytes'])} | {f'{tokens / 1e6:.1f} M' if tokens else '-'} "
                     f"| {vcell} | {scell} | {rate} | {trate} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _model(given: str | None, work: Path) -> Path:
    for candidate in ([Path(given)] if given else []) + [ROOT / "models" / "tiny"]:
        if (candidate / "config.json").is_file():
            return candidate
    made = work / "tiny"
    if not (made / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "runner.host.cli", "tiny-model", str(made)], cwd=ROOT, check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="0.25,1,4", help="corpus sizes in GB, comma-separated")
    parser.add_argument("--kinds", default="alpaca,text", help="alpaca (sft) and/or text (pt)")
    parser.add_argument("--arm", action="append", default=[], help="NAME=DIR: a runner checkout to measure "
                        "(repeatable; default: this one, as 'after')")  # fmt: skip
    parser.add_argument("--steps", default="validate,submit")
    parser.add_argument("--model", help="the tiny model (default: models/tiny, else one is made)")
    parser.add_argument("--work", default="/tmp/runner-data-scale")
    parser.add_argument("--keep", action="store_true", help="keep the generated corpora")
    parser.add_argument("--write", help="also write the table (markdown) and the figures (.json beside it)")
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    arms = [a.split("=", 1) for a in args.arm] or [["after", str(ROOT)]]
    model, steps = _model(args.model, work), tuple(args.steps.split(","))
    rows: list[dict] = []
    try:
        for size in (float(s) for s in args.sizes.split(",")):
            for kind in args.kinds.split(","):
                corpus = work / f"{kind}-{size:g}gb.{'jsonl' if kind == 'alpaca' else 'txt'}"
                if not corpus.exists():
                    t = time.monotonic()
                    (alpaca_corpus if kind == "alpaca" else text_corpus)(corpus, int(size * GB))
                    print(f"wrote {corpus} in {time.monotonic() - t:.0f} s", flush=True)
                for name, code in arms:
                    rows.append(run_one(name, Path(code), kind, corpus, model, work, steps))
                    print(table(rows[-1:]).splitlines()[-1], flush=True)
                if not args.keep:
                    corpus.unlink()
    finally:
        text = table(rows)
        print(text)
        if args.write and rows:
            Path(args.write).write_text(text, encoding="utf-8")
            Path(args.write).with_suffix(".json").write_text(
                json.dumps(rows, indent=1) + "\n", encoding="utf-8"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
