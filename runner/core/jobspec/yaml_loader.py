"""Read YAML into plain data while remembering where every key and value was written.

Positions let validation say `jobs/x.yaml:12:3 training.learning_rate: ...` instead of
a bare message. Environment variables are interpolated here (`${VAR}`, `${VAR:-default}`),
so a missing variable is reported at the line that uses it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import YAMLError

from runner.core.errors import Problem
from runner.core.jobspec.yaml_errors import duplicate_problems, syntax_problem

Loc = tuple[str | int, ...]
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class Source:
    """Plain data from one YAML file plus the 1-based (line, col) of each key and value."""

    file: str
    data: Any
    keys: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    values: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    resolved: bool = False  # a run's resolved spec (RESOLVED_HEADER)

    def position(self, loc: Loc, *, key: bool = False) -> tuple[int, int]:
        """Best position for loc: the key or value itself, else its nearest written parent."""
        table = self.keys if key else self.values
        for n in range(len(loc), -1, -1):
            part = loc[:n]
            if part in table:
                return table[part]
            if part in self.keys:
                return self.keys[part]
        return (1, 1)

    def problem(self, loc: Loc, message: str, *, key: bool = False) -> Problem:
        line, col = self.position(loc, key=key)
        return Problem(self.file, line, col, dotted(loc), message)


def dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# The first line of a run's resolved spec (runner.core.jobspec.to_yaml): its `# default` keys are read
# as unset, so a run's spec.yaml validates to exactly what the user's spec did.
RESOLVED_HEADER = "# resolved spec:"


def load_yaml(path: str | Path, env: dict[str, str] | None = None) -> Source:
    """Parse one YAML file. Syntax errors and unset variables land in `Source.problems`."""
    file = str(path)
    env = dict(os.environ) if env is None else env
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return Source(file, None, problems=[Problem(file, 0, 0, "", "no such file")])
    except (OSError, UnicodeDecodeError) as e:
        return Source(file, None, problems=[Problem(file, 0, 0, "", f"cannot be read: {e}")])
    try:
        doc = YAML(typ="rt").load(text)
    except DuplicateKeyError as e:
        return Source(file, None, problems=duplicate_problems(file, text, e, _key_paths(text)))
    except YAMLError as e:  # MarkedYAMLError with a line, or e.g. a control character without one
        return Source(file, None, problems=[syntax_problem(file, text, e)])
    source = Source(file, None)
    source.resolved = text.startswith(RESOLVED_HEADER)
    source.data = _plain(doc, (), source, env)
    if source.data is None:
        source.data = {}
    return source


def _key_paths(text: str) -> dict[tuple[int, int], str]:
    """(line, col) -> dotted path of every key, from a parse that lets duplicate keys through."""
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = True
    try:
        doc = yaml.load(text)
    except YAMLError:
        return {}
    source = Source("", None)
    _plain(doc, (), source, {})
    return {position: dotted(loc) for loc, position in source.keys.items()}


def _defaulted(node: CommentedMap, key: Any) -> bool:
    """Whether a resolved spec marks this key `# default` (runner filled it in, the user did not)."""
    tokens = node.ca.items.get(key) or []
    comments = [t for t in tokens if t is not None and not isinstance(t, list)]
    comments += [t for ts in tokens if isinstance(ts, list) for t in ts if t is not None]
    if isinstance(node.get(key), CommentedMap) and node[key].ca.comment:
        comments += [t for t in node[key].ca.comment if t is not None and not isinstance(t, list)]
    return any(getattr(t, "value", "").strip().startswith("# default") for t in comments)


def _plain(node: Any, loc: Loc, src: Source, env: dict[str, str]) -> Any:
    if isinstance(node, CommentedMap):
        out = {}
        for key, value in node.items():
            if src.resolved and _defaulted(node, key):
                continue  # left to the schema's default, as when the user wrote the spec
            try:
                (line, col), (vline, vcol) = node.lc.key(key), node.lc.value(key)
            except (KeyError, TypeError):
                (line, col), (vline, vcol) = (node.lc.line, node.lc.col), (node.lc.line, node.lc.col)
            key = str(key)  # a key written as `:` or `? [a]` is no name; the schema refuses it
            child = (*loc, key)
            src.keys[child] = (line + 1, col + 1)
            src.values[child] = (vline + 1, vcol + 1)
            out[key] = _plain(value, child, src, env)
        return out
    if isinstance(node, CommentedSeq):
        out = []
        for i, value in enumerate(node):
            line, col = node.lc.item(i)
            src.values[(*loc, i)] = (line + 1, col + 1)
            out.append(_plain(value, (*loc, i), src, env))
        return out
    if isinstance(node, str):
        return _interpolate(str(node), loc, src, env)
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    return node


# Variables that hold credentials: a spec is copied into every run directory and its records,
# so it may never carry one.
_SECRET = re.compile(r"TOKEN|SECRET|PASSW|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIAL", re.I)


def _interpolate(text: str, loc: Loc, src: Source, env: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if _SECRET.search(name):
            src.problems.append(src.problem(loc, f"${{{name}}} would write a secret into the run's spec.yaml "
                                                 "and records; a job spec never carries credentials (an offline "
                                                 "job needs none)"))  # fmt: skip
            return m.group(0)
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        src.problems.append(
            src.problem(
                loc,
                f"environment variable {name} is not set; export {name}=... or write ${{{name}:-default}}",
            )
        )
        return m.group(0)

    return _ENV.sub(sub, text)
