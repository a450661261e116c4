"""The licenses of an image's packages, read from their metadata, and the image's license policy.

What a package states is read in this order: `License-Expression` (PEP 639, an SPDX
expression); `License` when it is an SPDX expression or a common name for one ("Apache 2.0",
"MIT License", "BSD 3-Clause", also as the first line of a whole license text); its license
classifiers. A classifier may name a family rather than one license ("BSD License": 0BSD,
BSD-2-Clause, BSD-3-Clause, ...): such a license is one of those candidates, unknown which.
Several classifiers count as all applying, since the metadata does not say they are a choice.

The policy (`licenses:` in the image spec) judges each license identifier: denied when a deny
pattern matches it; allowed when an allow pattern does, or, with no allow list, when it is a
known SPDX identifier; unknown otherwise. A choice (`OR`) takes its best branch, a conjunction
(`AND`) its worst, and a family its candidates' verdict where they agree, else unknown.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from runner.core.errors import RunnerError
from runner.core.jobspec.image import LicensePolicy
from runner.host.images.distmeta import Metadata

log = logging.getLogger(__name__)

ALLOWED, UNKNOWN, DENIED = "allowed", "unknown", "denied"
_RANK = {DENIED: 0, UNKNOWN: 1, ALLOWED: 2}

# fmt: off
_BSD = ("0BSD", "BSD-1-Clause", "BSD-2-Clause", "BSD-3-Clause", "BSD-4-Clause")
_APACHE = ("Apache-1.0", "Apache-1.1", "Apache-2.0")
_GPL = ("GPL-1.0-only", "GPL-1.0-or-later", "GPL-2.0-only", "GPL-2.0-or-later", "GPL-3.0-only", "GPL-3.0-or-later")
_LGPL = ("LGPL-2.0-only", "LGPL-2.0-or-later", "LGPL-2.1-only", "LGPL-2.1-or-later", "LGPL-3.0-only",
         "LGPL-3.0-or-later")
_AFL = ("AFL-1.1", "AFL-1.2", "AFL-2.0", "AFL-2.1", "AFL-3.0")

# Trove classifiers (after "License :: ") -> the SPDX identifiers they may mean.
CLASSIFIERS: dict[str, tuple[str, ...]] = {
    "OSI Approved :: MIT License": ("MIT",),
    "OSI Approved :: MIT No Attribution License (MIT-0)": ("MIT-0",),
    "OSI Approved :: Apache Software License": _APACHE,
    "OSI Approved :: BSD License": _BSD,
    "OSI Approved :: ISC License (ISCL)": ("ISC",),
    "OSI Approved :: Python Software Foundation License": ("PSF-2.0",),
    "OSI Approved :: Mozilla Public License 1.1 (MPL 1.1)": ("MPL-1.1",),
    "OSI Approved :: Mozilla Public License 2.0 (MPL 2.0)": ("MPL-2.0",),
    "OSI Approved :: GNU General Public License (GPL)": _GPL,
    "OSI Approved :: GNU General Public License v2 (GPLv2)": ("GPL-2.0-only",),
    "OSI Approved :: GNU General Public License v2 or later (GPLv2+)": ("GPL-2.0-or-later",),
    "OSI Approved :: GNU General Public License v3 (GPLv3)": ("GPL-3.0-only",),
    "OSI Approved :: GNU General Public License v3 or later (GPLv3+)": ("GPL-3.0-or-later",),
    "OSI Approved :: GNU Library or Lesser General Public License (LGPL)": _LGPL,
    "OSI Approved :: GNU Lesser General Public License v2 (LGPLv2)": ("LGPL-2.0-only", "LGPL-2.1-only"),
    "OSI Approved :: GNU Lesser General Public License v2 or later (LGPLv2+)": (
        "LGPL-2.0-or-later", "LGPL-2.1-or-later"),
    "OSI Approved :: GNU Lesser General Public License v3 (LGPLv3)": ("LGPL-3.0-only",),
    "OSI Approved :: GNU Lesser General Public License v3 or later (LGPLv3+)": ("LGPL-3.0-or-later",),
    "OSI Approved :: GNU Affero General Public License v3": ("AGPL-3.0-only",),
    "OSI Approved :: GNU Affero General Public License v3 or later (AGPLv3+)": ("AGPL-3.0-or-later",),
    "OSI Approved :: Academic Free License (AFL)": _AFL,
    "OSI Approved :: Eclipse Public License 1.0 (EPL-1.0)": ("EPL-1.0",),
    "OSI Approved :: Eclipse Public License 2.0 (EPL-2.0)": ("EPL-2.0",),
    "OSI Approved :: Boost Software License 1.0 (BSL-1.0)": ("BSL-1.0",),
    "OSI Approved :: The Unlicense (Unlicense)": ("Unlicense",),
    "OSI Approved :: zlib/libpng License": ("Zlib",),
    "OSI Approved :: Historical Permission Notice and Disclaimer (HPND)": ("HPND",),
    "OSI Approved :: Universal Permissive License (UPL)": ("UPL-1.0",),
    "OSI Approved :: European Union Public Licence 1.2 (EUPL 1.2)": ("EUPL-1.2",),
    "CC0 1.0 Universal (CC0 1.0) Public Domain Dedication": ("CC0-1.0",),
}

# Common ways a `License` field names a license, lower case, without a trailing "license".
ALIASES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("apache 2.0", "apache 2", "apache-2", "apache2", "apache license 2.0",
                     "apache license, version 2.0", "apache license version 2.0", "apache software 2.0",
                     "apache software license 2.0", "asl 2.0", "apache v2", "apache 2.0 license"),
                    ("Apache-2.0",)),
    **dict.fromkeys(("apache", "apache software"), _APACHE),
    **dict.fromkeys(("mit", "the mit", "expat"), ("MIT",)),
    **dict.fromkeys(("bsd 3-clause", "bsd-3", "bsd 3 clause", "3-clause bsd", "new bsd", "modified bsd",
                     "revised bsd", "bsd-3 clause"), ("BSD-3-Clause",)),
    **dict.fromkeys(("bsd 2-clause", "bsd-2", "2-clause bsd", "simplified bsd", "freebsd"), ("BSD-2-Clause",)),
    "bsd": _BSD,
    **dict.fromkeys(("psf", "psfl", "python software foundation", "psf-2.0"), ("PSF-2.0",)),
    **dict.fromkeys(("mpl 2.0", "mpl2", "mozilla public license 2.0", "mpl v2"), ("MPL-2.0",)),
    **dict.fromkeys(("gplv3", "gpl v3", "gpl-3", "gnu gpl v3", "gpl 3"), ("GPL-3.0-only", "GPL-3.0-or-later")),
    **dict.fromkeys(("gplv3+", "gpl v3+", "gplv3 or later"), ("GPL-3.0-or-later",)),
    **dict.fromkeys(("gplv2", "gpl v2", "gpl-2", "gpl 2"), ("GPL-2.0-only", "GPL-2.0-or-later")),
    **dict.fromkeys(("gplv2+", "gpl v2+"), ("GPL-2.0-or-later",)),
    **dict.fromkeys(("gpl", "gnu gpl", "gnu general public"), _GPL),
    **dict.fromkeys(("lgpl", "gnu lgpl", "gnu lesser general public"), _LGPL),
    **dict.fromkeys(("lgplv3", "lgpl v3", "lgpl-3"), ("LGPL-3.0-only", "LGPL-3.0-or-later")),
    **dict.fromkeys(("lgplv3+", "lgpl v3+"), ("LGPL-3.0-or-later",)),
    **dict.fromkeys(("agplv3", "agpl v3", "agpl-3", "agpl"), ("AGPL-3.0-only", "AGPL-3.0-or-later")),
}
# fmt: on


class LicenseError(RunnerError):
    exit_code = 6


@functools.cache
def _licensing():
    from license_expression import get_spdx_licensing

    return get_spdx_licensing()


def _known(key: str) -> bool:
    return key in _licensing().known_symbols


def spdx(text: str) -> str | None:
    """`text` as a normalized SPDX expression (deprecated ids updated: GPL-3.0 -> GPL-3.0-only),
    or None when it is not one of known identifiers."""
    licensing = _licensing()
    try:
        parsed = licensing.parse(text, validate=False)
    except Exception:  # the parser raises several types on text that is no expression
        return None
    if parsed is None or not all(_known(s.key) for s in licensing.license_symbols(parsed)):
        return None
    return parsed.render()


# ----------------------------------------------------------------------------------------------
# what a package declares


@dataclass(frozen=True)
class Declared:
    """What a package says its license is, read once, with where it was read from."""

    text: str  # as shown in reports: the expression, the name, or the classifiers
    source: str  # License-Expression, License, License (first line), classifier, reviewed, none
    expression: str | None = None  # an SPDX expression, where one was read
    families: tuple[tuple[str, ...], ...] = ()  # otherwise: licenses that all apply, each a set of candidates

    @property
    def known(self) -> bool:
        return bool(self.expression or self.families)


NONE = Declared("(none stated)", "none")


def _alias(name: str) -> tuple[str, ...] | None:
    key = re.sub(r"\s+", " ", name.strip().lower()).removeprefix("the ")
    key = re.sub(r"\s*(licen[sc]e)$", "", key).strip(" .,")
    return ALIASES.get(key)


def declared(meta: Metadata | None, reviewed: str | None = None) -> Declared:
    """What `meta` states (or what the site's review established, which comes first)."""
    if reviewed:
        return Declared(spdx(reviewed) or reviewed, "reviewed", spdx(reviewed))
    if meta is None:
        return NONE
    if expression := (meta.get("License-Expression") or "").strip():
        return Declared(spdx(expression) or expression, "License-Expression", spdx(expression))
    text = (meta.get("License") or "").strip()
    if text.upper() in ("UNKNOWN", "NONE"):  # what old setuptools wrote for "not stated"
        text = ""
    if text and "\n" not in text and len(text) <= 100:
        if parsed := spdx(text):
            return Declared(parsed, "License", parsed)
        if (ids := _alias(text)) is not None:
            return _from_candidates(text, "License", [ids])
    elif text:
        first = next((line for line in text.splitlines() if line.strip()), "")
        if (ids := _alias(first)) is not None:
            return _from_candidates(first.strip(), "License (first line)", [ids])
    classifiers = [
        c.removeprefix("License :: ") for c in meta.get_all("Classifier") or [] if c.startswith("License :: ")
    ]
    mapped = [CLASSIFIERS[c] for c in classifiers if c in CLASSIFIERS]
    if mapped and len(mapped) == len(classifiers):
        return _from_candidates("; ".join(c.split(" :: ")[-1] for c in classifiers), "classifier", mapped)
    if text or classifiers:  # something is stated, but not in a form that can be judged
        shown = text.splitlines()[0][:60] if text else "; ".join(classifiers)
        return Declared(shown, "License" if text else "classifier")
    return NONE


def _from_candidates(text: str, source: str, families: list[tuple[str, ...]]) -> Declared:
    if all(len(f) == 1 for f in families):
        return Declared(" AND ".join(f[0] for f in families), source, " AND ".join(f[0] for f in families))
    return Declared(text, source, None, tuple(families))


# ----------------------------------------------------------------------------------------------
# the policy


def _matches(patterns: Iterable[str], key: str) -> str | None:
    return next((p for p in patterns if fnmatch.fnmatchcase(key.lower(), p.lower())), None)


def _verdict_of_id(policy: LicensePolicy, key: str, label: str | None = None) -> tuple[str, str | None]:
    """(verdict, the deny pattern that decided it) of one identifier. `label` is `X WITH Y` where
    an exception applies: an allow entry naming it whole lifts a deny of X alone."""
    names = [n for n in (label, key) if n]
    denied = next((p for n in names if (p := _matches(policy.deny, n))), None)
    if denied and not (label and _matches(policy.allow, label)):
        return DENIED, denied
    if any(_matches(policy.allow, n) for n in names):
        return ALLOWED, None
    if policy.allow:
        return UNKNOWN, None
    return (ALLOWED if _known(key) else UNKNOWN), None


@dataclass
class Judged:
    """A package's license as the policy sees it."""

    name: str
    version: str
    declared: Declared
    verdict: str
    denied_by: list[str] = field(default_factory=list)  # deny patterns that decided it

    @property
    def shown(self) -> str:
        if self.declared.source == "none":
            return "no license stated"
        if self.declared.families and self.declared.source != "reviewed":
            may = "; ".join(" or ".join(f) for f in self.declared.families)
            return f"{self.declared.text} ({self.declared.source}: {may})"
        return f"{self.declared.text} ({self.declared.source})"


def judge(policy: LicensePolicy, name: str, version: str, decl: Declared) -> Judged:
    denied_by: list[str] = []

    def leaf(key: str, label: str | None = None) -> str:
        verdict, pattern = _verdict_of_id(policy, key, label)
        if pattern:
            denied_by.append(pattern)
        return verdict

    def family(candidates: tuple[str, ...]) -> str:
        verdicts = {leaf(c) for c in candidates}
        return verdicts.pop() if len(verdicts) == 1 else UNKNOWN

    def tree(node) -> str:
        from license_expression import LicenseWithExceptionSymbol

        licensing = _licensing()
        if isinstance(node, licensing.AND | licensing.OR):
            verdicts = [tree(a) for a in node.args]
            pick = min if isinstance(node, licensing.AND) else max
            return pick(verdicts, key=_RANK.__getitem__)
        if isinstance(node, LicenseWithExceptionSymbol):
            return leaf(node.license_symbol.key, str(node))
        return leaf(node.key)

    if decl.expression:
        verdict = tree(_licensing().parse(decl.expression, validate=False))
    elif decl.families:
        verdict = min((family(f) for f in decl.families), key=_RANK.__getitem__)
    else:
        verdict = UNKNOWN
    return Judged(name, version, decl, verdict, sorted(set(denied_by)) if verdict == DENIED else [])


def policy_problems(policy: LicensePolicy) -> list[str]:
    """allow and deny entries that can never match: neither a known SPDX identifier nor a pattern
    matching one (a typo such as `GPL3` would otherwise let every GPL package through)."""
    licensing = _licensing()
    keys = [k for k in licensing.known_symbols if not k.startswith("LicenseRef-scancode-")]
    problems = []
    for where, entries in (("allow", policy.allow), ("deny", policy.deny)):
        for entry in entries:
            if entry.startswith("LicenseRef-") or spdx(entry):
                continue
            if "*" in entry and any(fnmatch.fnmatchcase(k.lower(), entry.lower()) for k in keys):
                continue
            close = _closest(entry, keys)
            hint = f"; did you mean {' or '.join(close)}?" if close else " (see https://spdx.org/licenses/)"
            problems.append(
                f"licenses.{where}: {entry!r} is no SPDX license identifier and matches none{hint}"
            )
    for name, expression in policy.reviewed.items():
        if not spdx(expression) and not expression.startswith("LicenseRef-"):
            problems.append(f"licenses.reviewed.{name}: {expression!r} is not an SPDX license expression "
                            "(e.g. MIT, Apache-2.0, BSD-3-Clause OR MIT)")  # fmt: skip
    return problems


def _closest(entry: str, keys: list[str]) -> list[str]:
    """The identifiers `entry` most likely meant, compared without case and punctuation: those it
    begins (GPL3 -> GPL-3.0-only, GPL-3.0-or-later), else the nearest spelling."""

    if (ids := _alias(entry)) is not None:
        return list(ids[:2])

    def bare(text: str) -> str:
        return re.sub(r"[^a-z0-9]", "", text.lower())

    by_bare: dict[str, str] = {}
    for key in sorted(keys, key=lambda k: (k.endswith("+"), len(k), k)):  # deprecated spellings last
        by_bare.setdefault(bare(key), key)
    starting = sorted((k for b, k in by_bare.items() if b.startswith(bare(entry))), key=lambda k: (len(k), k))
    if starting:
        return starting[:2]
    return [by_bare[b] for b in difflib.get_close_matches(bare(entry), list(by_bare), n=1, cutoff=0.6)]


def judge_all(policy: LicensePolicy, packages: Iterable[tuple[str, str, Metadata | None]]) -> list[Judged]:
    """Every package (name, version, its metadata or None) judged; `reviewed` applies by name."""
    from runner.host.images.distmeta import normalize

    reviewed = {normalize(k): v for k, v in policy.reviewed.items()}
    return [judge(policy, n, v, declared(m, reviewed.get(normalize(n)))) for n, v, m in packages]


def enforce(
    policy: LicensePolicy, judged: list[Judged], where: str, required_by: Callable[[str], str] = lambda n: "",
    warn: Callable[[str], None] = log.warning,
) -> None:  # fmt: skip
    """Refuse (LicenseError, one message naming each package and its license) what the policy
    denies, and what it does not know when `unknown: refuse`; warn about the unknown otherwise."""
    if problems := policy_problems(policy):
        raise LicenseError("\n".join(f"{where} {p}" for p in problems))
    denied = [j for j in judged if j.verdict == DENIED]
    unknown = [j for j in judged if j.verdict == UNKNOWN]
    refused = denied + (unknown if policy.unknown == "refuse" else [])

    def line(j: Judged) -> str:
        why = f"denied by {', '.join(j.denied_by)}" if j.verdict == DENIED else _unknown_why(policy, j)
        via = required_by(j.name)
        return f"{j.name} {j.version}: {j.shown}, {why}" + (f"; required by {via}" if via else "")

    if refused:
        what = "licenses.deny" if denied else "licenses.unknown"
        if len(refused) == 1:
            head = f"{where} {what}: the policy refuses {line(refused[0])}"
            body = []
        else:
            head = f"{where} {what}: the policy refuses the license of {len(refused)} packages:"
            body = [f"  {line(j)}" for j in refused]
        fix = ("drop what requires it, allow its license, or, where its metadata is wrong, state what "
               "your review found under licenses.reviewed")  # fmt: skip
        raise LicenseError("\n".join([head, *body, fix]))
    for j in unknown:
        warn(f"{where} licenses.unknown: {line(j)}")


def _unknown_why(policy: LicensePolicy, j: Judged) -> str:
    if not j.declared.known:
        if j.declared.source == "none":
            return "its metadata has no License-Expression, License or license classifier"
        return "not an SPDX license expression"
    if j.declared.families and any(len(f) > 1 for f in j.declared.families):
        return "which of these it is decides it, and the metadata does not say"
    return "not on licenses.allow" if policy.allow else "not a known SPDX license"


def report(judged: list[Judged], title: str, policy: LicensePolicy) -> str:
    """The license report: one line per package, then what the policy made of them."""
    rules = (f"allow {', '.join(policy.allow) or 'any license not denied'}; deny {', '.join(policy.deny) or 'none'}; "
             f"unknown: {policy.unknown}")  # fmt: skip
    rows = [("package", "version", "license", "from", "verdict")]
    for j in sorted(judged, key=lambda j: j.name.lower()):
        decl = j.declared
        text = decl.text if not decl.families else j.shown.removesuffix(f" ({decl.source})")
        rows.append((j.name, j.version, text, decl.source, j.verdict))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"# {title}", f"# policy: {rules}"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, [*widths, 0], strict=True)).rstrip() for r in rows]
    counts = {v: sum(j.verdict == v for j in judged) for v in (ALLOWED, UNKNOWN, DENIED)}
    lines.append(f"# {len(judged)} packages: " + ", ".join(f"{n} {v}" for v, n in counts.items()))
    return "\n".join(lines) + "\n"
