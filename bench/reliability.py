"""`make reliability`: the reliability figures, measured now, as the README's table.

Runs the fault, offline, bad-input, fuzzing, tamper and secret tests (the long fault runs too)
and prints one Markdown table: each test that measures something prints a line
`RELIABILITY <what>: <figure>`, and the bad-input corpora are counted from the tests that passed.
Exit status: pytest's.

    python bench/reliability.py [--fast] [-- extra pytest arguments]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITES = [  # what runs; missing files (a tier not present) are left out
    "tests/integration/test_faults.py",
    "tests/docker/test_faults.py",
    "tests/integration/test_offline.py",
    "tests/docker/test_executor.py::test_remote_code_that_downloads_fails_fast_in_the_container",
    "tests/unit/test_bad_specs.py",
    "tests/unit/test_bad_data.py",
    "tests/unit/test_image_specs.py",
    "tests/unit/test_lock.py",
    "tests/unit/test_bundle_errors.py",
    "tests/docker/test_bundle_errors.py",
    "tests/unit/test_cli.py",
    "tests/unit/test_bad_cli.py",
    "tests/unit/test_fuzz.py",
    "tests/docker/test_lockdown.py",
]
# Bad-input corpora: a passing test of these files whose name says it refuses (BAD_INPUT) is one
# bad input refused with its expected message.
CORPORA = {
    "test_bad_specs": "job specs",
    "test_bad_data": "data sets",
    "test_image_specs": "image specs",
    "test_lock": "lock files",
    "test_bundle_errors": "bundles",
    "test_cli": "CLI arguments",
    "test_bad_cli": "CLI arguments",
}

BAD_INPUT = re.compile(
    r"golden|refus|damage|contradiction|cannot|unknown|missing|hint|fills|fails|hostile|tamper"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="leave out the slow fault runs")
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args()
    suites = [s for s in SUITES if (ROOT / s.split("::")[0]).exists()]
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        marks = "not slow" if args.fast else "slow or not slow"
        cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-m", marks,
               f"--junitxml={junit}", *suites, *args.pytest_args]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        passed = _passed(junit) if junit.exists() else Counter()
    lines = re.findall(r"^.*?RELIABILITY (.+?): (.+)$", run.stdout, flags=re.M)
    print("| what | measured |")
    print("| --- | --- |")
    for what, figure in lines:
        print(f"| {what} | {figure} |")
    corpus: Counter = Counter()
    for module, name in CORPORA.items():
        corpus[name] += passed[module]
    corpus = +corpus  # the kinds with a passing case
    if corpus:
        total = sum(corpus.values())
        parts = ", ".join(f"{n} {name}" for name, n in corpus.items())
        print(f"| bad inputs refused with their message | {total} ({parts}) |")
    summary = run.stdout.strip().splitlines()[-1:] or ["(no output)"]
    print(f"\npytest: {summary[0]}", file=sys.stderr)
    if run.returncode:
        print(run.stdout[-5000:] + run.stderr[-3000:], file=sys.stderr)
    return run.returncode


def _passed(junit: Path) -> Counter:
    """Passed test cases per test module name."""
    counts: Counter = Counter()
    for case in ET.parse(junit).getroot().iter("testcase"):
        if any(child.tag in ("failure", "error", "skipped") for child in case):
            continue
        module = case.get("classname", "").rsplit(".", 1)[-1]
        if module not in CORPORA or BAD_INPUT.search(case.get("name", "")):
            counts[module] += 1
    return counts


if __name__ == "__main__":
    sys.exit(main())
