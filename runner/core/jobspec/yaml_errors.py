"""YAML syntax errors in plain words: what is wrong, at the line that is wrong, and how to fix it.

The parser speaks of tokens ("while parsing a block collection expected <block end>"); a user
needs "this line is indented differently from the keys around it". Each known error is
translated; an unknown one keeps the parser's words after a plain lead.
"""

from __future__ import annotations

import re
from typing import Any

from runner.core.errors import Problem


def syntax_problem(file: str, text: str, e: Any) -> Problem:
    """One problem for a ruamel MarkedYAMLError (or a YAMLError without a mark)."""
    problem, context = str(getattr(e, "problem", "") or ""), str(getattr(e, "context", "") or "")
    mark, start = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
    line, col = (mark.line + 1, mark.column + 1) if mark else _position(text, getattr(e, "position", None))
    lines = text.splitlines()

    def at(n: int) -> str:
        return lines[n - 1] if 0 < n <= len(lines) else ""

    found = re.search(r"found character '(.+?)' that cannot start any token", problem)
    if found and found.group(1) in ("\\t", "\t"):
        return Problem(file, line, col, "", "a tab character; YAML indents with spaces only: replace the tab "
                                            "with spaces")  # fmt: skip
    if found:
        char = found.group(1)
        return Problem(file, line, col, "", f"a value cannot start with '{char}' in YAML; put the value in "
                                            f"quotes, e.g. \"{char}...\"")  # fmt: skip
    if "quoted scalar" in context and start is not None:
        quote = at(start.line + 1)[start.column : start.column + 1] or '"'
        return Problem(file, start.line + 1, start.column + 1, "",
                       f"the text opened with {quote} here is never closed; add the closing {quote} on this "
                       "line")  # fmt: skip
    if "flow sequence" in context or "flow mapping" in context:
        bracket, closing, what = ("[", "]", "list") if "sequence" in context else ("{", "}", "mapping")
        where = (start.line + 1, start.column + 1) if start is not None else (line, col)
        return Problem(file, *where, "", f"the {what} opened with '{bracket}' here is never closed; add "
                                         f"'{closing}' on this line, or put a value that starts with "
                                         f"'{bracket}' in quotes")  # fmt: skip
    if "could not find expected ':'" in problem and start is not None:
        key = at(start.line + 1).strip()
        return Problem(file, start.line + 1, start.column + 1, "",
                       f"'{key[:40]}' has no ':'; write it as key: value (or key: alone to start a "
                       "section)")  # fmt: skip
    if "mapping values are not allowed here" in problem:
        indent, above = _indent(at(line)), _indent(_previous(lines, line))
        if indent > above:
            return Problem(file, line, indent + 1, "",
                           f"this line is indented {indent} spaces, more than the key above it ({above}), so "
                           "YAML reads it as part of that key's value; line it up with the keys of its section")  # fmt: skip
        return Problem(file, line, col, "", "a value holds ': ', which YAML reads as a second key; put the "
                                            "value in quotes, e.g. name: \"a: b\"")  # fmt: skip
    if "expected <block end>" in problem:
        indent = _indent(at(line))
        levels = sorted(
            {_indent(x) for x in lines[: line - 1] if x.strip() and not x.lstrip().startswith("#")}
        )
        fits = ", ".join(str(n) for n in levels[-4:])
        kind = "list item" if at(line).lstrip().startswith("-") else "key"
        return Problem(file, line, indent + 1, "",
                       f"this {kind} is indented {indent} spaces, which lines up with no section above it "
                       f"(those use {fits}); indent it as the other {kind}s of its section")  # fmt: skip
    alias = re.search(r"found undefined alias '(.+?)'", problem)
    if alias:
        return Problem(file, line, col, "", f"'*{alias.group(1)}' reads as a YAML alias; put the value in "
                                            f"quotes, e.g. \"*{alias.group(1)}\"")  # fmt: skip
    if "unexpected end of stream" in problem:
        return Problem(file, min(line, max(len(lines), 1)), 1, "", "the file ends in the middle of a value; "
                                                                    "complete or remove its last lines")  # fmt: skip
    said = " ".join(x for x in (context, problem) if x) or str(e).split("\n")[0]
    return Problem(file, line, col, "", f"this is not valid YAML ({said}); check the line and the one above")


def duplicate_problems(file: str, text: str, e: Any, paths: dict[tuple[int, int], str]) -> list[Problem]:
    """A key written twice in one mapping: both places, with its dotted path. `paths`: (line, col)
    -> dotted path of the keys a duplicate-tolerant parse found."""
    mark, start = e.problem_mark, e.context_mark
    key = str(e.problem).split('"')[1] if '"' in str(e.problem) else "?"
    line, col = mark.line + 1, mark.column + 1
    lines = text.splitlines()
    first = None
    top = start.line + 1 if start is not None else 1
    same_key = re.compile(rf"""["']?{re.escape(key)}["']?\s*:""")
    for n in range(line - 1, top - 1, -1):  # the same key, at the same column, earlier in the mapping
        candidate = lines[n - 1]
        if candidate[: col - 1].replace("-", " ").strip() == "" and same_key.match(candidate[col - 1 :]):
            first = n
            break
    path = paths.get((line, col)) or (paths.get((first, col)) if first else None) or key
    if first is None:
        return [Problem(file, line, col, path, "is written twice in one section; keep one")]
    return [
        Problem(file, first, col, path, f"is written twice, here and at line {line}; keep one"),
        Problem(file, line, col, path, f"is written twice, here and at line {first}; keep one"),
    ]


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _previous(lines: list[str], line: int) -> str:
    for n in range(line - 1, 0, -1):
        if lines[n - 1].strip() and not lines[n - 1].lstrip().startswith("#"):
            return lines[n - 1]
    return ""


def _position(text: str, offset: int | None) -> tuple[int, int]:
    if offset is None:
        return 0, 0
    before = text[:offset]
    return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1
