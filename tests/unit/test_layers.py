"""The layers hold: the core imports neither side, the host side never imports the in-container
side (nor torch and the libraries on it), the in-container side never imports the host side, and
no module imports itself back through others. Read from the source (every import, also those
inside functions), so a crossing fails here before it can matter at run time."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "runner"
# What each layer may import of runner itself.
ALLOWED = {
    "runner.core": ("runner.core",),
    "runner.host": ("runner.core", "runner.host"),
    "runner.train": ("runner.core", "runner.train"),
}
# What the training image carries and the host install does not: torch and the libraries on it.
TRAINING_LIBRARIES = (
    "torch", "transformers", "peft", "trl", "accelerate", "deepspeed", "datasets", "bitsandbytes",
    "tokenizers", "safetensors", "liger_kernel", "flash_attn", "fastapi", "uvicorn", "starlette",
    "jieba", "nltk", "rouge_score", "rouge_chinese", "sacrebleu", "matplotlib", "numpy",
)  # fmt: skip
# The host's own tools: the command line, templates, the Docker engine.
HOST_LIBRARIES = ("click", "jinja2", "docker")
FORBIDDEN = {
    "runner.core": TRAINING_LIBRARIES + HOST_LIBRARIES,
    "runner.host": TRAINING_LIBRARIES,
    "runner.train": HOST_LIBRARIES,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, module) for every import in the file; `from P import m` is P.m where m is a module."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
            out += [
                (node.lineno, f"{node.module}.{a.name}")
                for a in node.names
                if f"{node.module}.{a.name}" in known
            ]
    return out


def layer_of(module: str) -> str | None:
    return next((layer for layer in ALLOWED if module == layer or module.startswith(layer + ".")), None)


def crossings(tree: dict[str, Path]) -> list[str]:
    found = []
    for module, path in tree.items():
        layer = layer_of(module)
        if layer is None:
            continue
        for line, imported in imports(path, set(tree)):
            where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{line}"
            if imported.startswith("runner."):
                target = layer_of(imported)
                if target is not None and target not in ALLOWED[layer]:
                    found.append(f"{where}: {layer} imports {imported} ({target})")
            top = imported.split(".")[0]
            if top in FORBIDDEN[layer]:
                found.append(f"{where}: {layer} imports {top}")
    return found


def cycles(tree: dict[str, Path]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), over every import."""
    graph = {
        m: sorted({i for _, i in imports(p, set(tree)) if i in tree and i != m}) for m, p in tree.items()
    }
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_every_module_belongs_to_a_layer():
    loose = [m for m in modules() if layer_of(m) is None and m != "runner"]
    assert not loose, f"modules outside runner/core, runner/host and runner/train: {loose}"


def test_no_import_crosses_a_layer():
    found = crossings(modules())
    assert not found, "imports across the layers:\n" + "\n".join(found)


def test_no_import_cycles():
    found = cycles(modules())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_check_sees_a_crossing(tmp_path: Path):
    """The two checks above fail on what they guard against (a planted copy of the tree)."""
    planted = tmp_path / "runner" / "train" / "planted.py"
    planted.parent.mkdir(parents=True)
    planted.write_text("from runner.host.execute.runs import RunRecord\nimport click\n", encoding="utf-8")
    found = crossings({"runner.train.planted": planted})
    assert any("runner.train imports runner.host.execute.runs" in f for f in found), found
    assert any("runner.train imports click" in f for f in found), found
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("import runner.core.b\n", encoding="utf-8")
    b.write_text("from runner.core import a\n", encoding="utf-8")
    assert cycles({"runner.core.a": a, "runner.core.b": b}) == [["runner.core.a", "runner.core.b"]]


@pytest.mark.parametrize(
    "module", sorted(m for m in modules() if layer_of(m) != "runner.train" and not m.endswith("__main__"))
)
def test_importing_changes_nothing_in_the_environment(module: str):
    """No side effect on import: a process that imports a helper keeps its environment."""
    code = f"import os, json; before = dict(os.environ); import {module}; print(json.dumps(dict(os.environ) == before))"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "WANDB_"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "true", f"importing {module} changed os.environ"


def test_the_cli_loads_no_torch_and_no_pydantic():
    code = (
        "import sys, runner.host.cli\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'trl', 'deepspeed', 'datasets', 'accelerate',"
        " 'pydantic') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_training_modules_change_nothing_on_import():
    """The in-container modules too: importing one (as the tests and the benchmark do) leaves the
    environment as it was; the entry points make the process offline themselves."""
    train = sorted(m for m in modules() if layer_of(m) == "runner.train" and not m.endswith("__main__"))
    code = (
        # The libraries' own import-time settings (torch's inductor cache, ...) are theirs, not ours.
        "import os, json, importlib, torch, transformers, peft, trl, datasets, accelerate\n"
        "import transformers.trainer\n"
        "before = dict(os.environ); changed = []\n"
        f"for m in {train!r}:\n"
        "    importlib.import_module(m)\n"
        "    if dict(os.environ) != before: changed.append(m); before = dict(os.environ)\n"
        "print(json.dumps(changed))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "WANDB_"))}
    env["HF_HUB_OFFLINE"] = "1"  # the suite never reaches the hub, whatever a library does on import
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
