"""parse -> validate -> resolve for specs. Each step is a function of its own."""

from __future__ import annotations

import difflib
import functools
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from runner.core.data import registry
from runner.core.errors import Problem, SpecError
from runner.core.jobspec.checks import check, run_adapter
from runner.core.jobspec.convert import MARKERS, is_llamafactory
from runner.core.jobspec.image import ImageSpec
from runner.core.jobspec.job import METHODS, JobSpec
from runner.core.jobspec.partial import Unchecked, salvage
from runner.core.jobspec.yaml_loader import RESOLVED_HEADER, Loc, Source, load_yaml

M = typing.TypeVar("M", bound=BaseModel)
# Checks beyond the schema, on the validated spec (or the parts of it that validated).
Checks = typing.Callable[[Any, Path], list[tuple[Loc, str]]]


def load_job(
    path: str | Path, *, base: Path | None = None, env: dict[str, str] | None = None,
    writes: Path | None = None, files: bool = True, launched_here: bool = False,
) -> JobSpec:  # fmt: skip
    """Parse and validate a job spec; raise SpecError listing every problem.

    Relative paths inside the spec are taken from `base` (the working directory by default),
    as they are when a user runs a command from the project root. `writes`: the directory the
    job writes (an existing run directory), checked instead of output.dir. `files=False`: the
    schema only, for a finished run's own spec (its data may have moved since; chat needs none).
    `launched_here`: runner starts the node itself (validate, submit), not a launcher that gives
    each node its rendezvous (render --target hosts|k8s|slurm).
    """
    source = load_yaml(path, env)
    if source.problems and source.data is None:
        raise SpecError(source.problems)
    if not files:
        return validate(source, base or Path.cwd(), JobSpec, lambda spec, b: [])
    return validate(
        source, base or Path.cwd(), JobSpec,
        lambda spec, b: check(spec, b, writes=writes, launched_here=launched_here),
    )  # fmt: skip


def load_image(name_or_path: str | Path, images_dir: Path | None = None) -> ImageSpec:
    """An image spec by file path, or by name from images/ (images/NAME.yaml)."""
    path = Path(name_or_path)
    if not path.suffix:
        path = (images_dir or Path.cwd() / "images") / f"{name_or_path}.yaml"
        if not path.exists():
            have = sorted(p.stem for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
            raise SpecError(
                [
                    Problem(
                        str(path), 0, 0, "", f"no such image spec; known images: {', '.join(have) or 'none'}"
                    )
                ]
            )
    source = load_yaml(path)
    if source.problems and source.data is None:
        raise SpecError(source.problems)
    from runner.core.jobspec.compat import image_checks

    return validate(source, Path.cwd(), ImageSpec, image_checks)


def validate(source: Source, base: Path, model: type[M] = JobSpec, checks: Checks = check) -> M:  # type: ignore[assignment]
    """Schema and checks on parsed data; every problem is collected before raising. The checks
    run on the typed spec; where the schema refused parts of it, on the parts it did not."""
    problems = list(source.problems)
    spec = None
    if not isinstance(source.data, dict):
        problems.append(Problem(source.file, 1, 1, "", "a spec must be a mapping of keys"))
    elif model is JobSpec and is_llamafactory(source.data):
        line, col = source.position((next(k for k in MARKERS if k in source.data),), key=True)
        problems.append(Problem(source.file, line, col, "", "this is a LLaMA-Factory training config, not a "
                                f"runner job spec; convert it with: runner convert {source.file}"))  # fmt: skip
    else:
        try:
            typed = spec = model.model_validate(source.data)
        except ValidationError as e:
            problems += [_problem(source, err, model) for err in e.errors()]
            locs = [_data_loc(source.data, tuple(err["loc"])) for err in e.errors()]
            typed = salvage(model, source.data, locs)  # the checks run on the parts that validated
        if typed is not None:
            problems += [source.problem(loc, msg) for loc, msg in _checked(checks, typed, base)]
    if problems:
        raise SpecError(_unique(problems))
    assert spec is not None
    return spec


def _checked(checks: Checks, spec: Any, base: Path) -> list[tuple[Loc, str]]:
    try:
        return checks(spec, base)
    except Unchecked:  # checks that read a part the schema refused, and reported
        return []


def resolve(spec: JobSpec, base: Path) -> JobSpec:
    """Fill in what the user left implicit: absolute paths and derived defaults."""
    spec = spec.model_copy(deep=True)
    spec.model.path = str((base / spec.model.path).resolve())
    if spec.model.adapter:
        spec.model.adapter = str(run_adapter(spec.model.adapter, base).resolve())
    if spec.ppo.reward_model:  # an rm run becomes its adapter/, as model.adapter does
        spec.ppo.reward_model = str(run_adapter(spec.ppo.reward_model, base).resolve())
    registry_dir = base / (spec.data.dataset_dir or ".")
    for i, ds in enumerate(spec.data.datasets):
        if ds.name and not ds.path:  # a registry entry becomes an explicit file, format and columns
            spec.data.datasets[i] = ds = registry.dataset(ds, registry_dir, spec.stage)
        ds.path = str((base / ds.path).resolve())  # type: ignore[operator]
    spec.data.dataset_dir = None  # every dataset is a path now
    spec.output.dir = str((base / spec.output.dir).resolve())
    if getattr(spec.method, "alpha", "n/a") is None:  # 2 x the rank (AdaLoRA's: the rank it starts with)
        rank = spec.method.init_r if spec.method.type == "adalora" else spec.method.r  # type: ignore[union-attr]
        spec.method.alpha = 2.0 * rank  # type: ignore[union-attr]
    return spec


# --- pydantic errors -> one line each, in the user's words -------------------------------

# Names users bring from LLaMA-Factory, PEFT and plain scripts, mapped to ours.
SYNONYMS = {
    "rank": "r", "lora_rank": "r", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout",
    "lora_target": "target", "target_modules": "target", "model_name_or_path": "path",
    "lr": "learning_rate", "epochs": "num_train_epochs", "batch_size": "per_device_train_batch_size",
    "max_length": "cutoff_len", "max_seq_length": "cutoff_len", "dataset": "datasets",
    "pre_seq_len": "num_virtual_tokens", "finetuning_type": "type", "output_dir": "dir",
}  # fmt: skip


def _problem(src: Source, err: dict[str, Any], model: type[BaseModel]) -> Problem:
    loc = _data_loc(src.data, tuple(err["loc"]))
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "extra_forbidden":
        valid = _fields_at(model, src.data, loc[:-1])
        close = _suggest(str(loc[-1]), valid, _section(loc[:-1]), _sections(model))
        hint = (
            f"did you mean {' or '.join(map(repr, close))}?" if close else f"valid keys: {', '.join(valid)}"
        )
        return src.problem(loc, f"unknown key; {hint}", key=True)
    if kind == "missing":
        return src.problem(loc, "required key is missing; add it", key=True)
    return src.problem(loc, _message(kind, ctx, got, err["msg"]))


def _suggest(key: str, valid: list[str], here: str, sections: dict[str, list[str]]) -> list[str]:
    """What an unknown key most likely meant: this section's key or synonym, then the same key in
    another section (by its full path), then a close spelling here, then one elsewhere."""
    names = [key, SYNONYMS[key]] if key in SYNONYMS else [key]
    exact = [n for n in names if n in valid]
    if exact:
        return exact[:1]
    elsewhere = {p: f for p, f in sections.items() if p != here}
    for n in names:
        hits = [_join(p, n) for p, fields in elsewhere.items() if n in fields]
        if hits:
            return hits[:2]

    def closest(fields: list[str], cutoff: float) -> tuple[float, str] | None:
        spelled = {f: f for f in fields} | {s: t for s, t in SYNONYMS.items() if t in fields}
        scored = [(difflib.SequenceMatcher(None, key, s).ratio(), s) for s in spelled]
        best = max(scored, default=(0.0, ""))
        return (best[0], spelled[best[1]]) if best[0] >= cutoff else None

    mine = closest(valid, 0.5)
    if mine:
        return [mine[1]]
    theirs = [(hit[0], _join(p, hit[1])) for p, f in elsewhere.items() if (hit := closest(f, 0.75))]
    return [max(theirs)[1]] if theirs else []


def _join(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


def _section(loc: Loc) -> str:
    """A section's path with list indexes as [] (data.datasets[])."""
    out = ""
    for part in loc:
        out += "[]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@functools.lru_cache(maxsize=8)
def _sections(model: type[BaseModel]) -> dict[str, list[str]]:
    """Every mapping of the schema by path (the methods' keys together under `method`)."""
    out: dict[str, list[str]] = {}

    def walk(tp: Any, path: str) -> None:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is typing.Annotated:
            walk(args[0], path)
        elif origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            for arg in args:
                walk(arg, path)
        elif origin is list:
            walk(args[0], path + "[]")
        elif isinstance(tp, type) and issubclass(tp, BaseModel):
            fields = out.setdefault(path, [])
            fields += [name for name in tp.model_fields if name not in fields]
            for name, field in tp.model_fields.items():
                walk(field.annotation, _join(path, name))

    walk(model, "")
    return out


def _message(kind: str, ctx: dict[str, Any], got: Any, msg: str) -> str:
    shown = f"(got {got!r})"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        limit = next(iter(ctx.values()))
        limit = int(limit) if isinstance(limit, float) and limit.is_integer() else limit
        return f"must be {bounds[kind]} {limit} {shown}"
    if kind in ("literal_error", "union_tag_invalid", "enum"):
        options = ctx.get("expected") or ctx.get("expected_tags") or ""
        options = options.replace("'", "").replace(" or ", ", ")
        if kind == "union_tag_invalid":
            got = ctx.get("tag", got)
            shown = f"(got {got!r})"
        close = difflib.get_close_matches(str(got), [o.strip() for o in options.split(",")], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"must be one of {options} {shown}{hint}"
    if kind == "union_tag_not_found":
        return f"needs a 'type' key: one of {', '.join(METHODS)}"
    if kind == "string_pattern_mismatch":
        return f"must use only letters, digits, '.', '_' and '-', starting with a letter or digit {shown}"
    if kind == "too_short":
        return f"must list at least {ctx.get('min_length', 1)} item(s) {shown}"
    types = {
        "int": "a whole number", "float": "a number", "bool": "true or false",
        "string": "a string", "dict": "a mapping of keys", "list": "a list", "model": "a mapping of keys",
    }  # fmt: skip
    for prefix, name in types.items():
        if kind.startswith(prefix + "_") or kind == f"{prefix}_type":
            return f"must be {name} {shown}"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    return f"{msg[0].lower()}{msg[1:]} {shown}"


def _data_loc(data: Any, loc: Loc) -> Loc:
    """Pydantic's loc with union tags (method: lora) dropped, as the user wrote the keys."""
    out: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        here = isinstance(node, dict) and part in node or isinstance(node, list) and isinstance(part, int)
        if not here and part in METHODS and i + 1 < len(loc):
            continue  # a discriminator tag, not a key
        out.append(part)
        node = node[part] if here and isinstance(node, (dict, list)) and _has(node, part) else None
    return tuple(out)


def _has(node: Any, part: Any) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(part, int) and 0 <= part < len(node)


def _fields_at(model: type[BaseModel], data: Any, loc: Loc) -> list[str]:
    """Valid key names of the mapping at loc, for did-you-mean hints."""
    tp: Any = model
    node = data
    for part in loc:
        tp = _pick(tp, node)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            tp = tp.model_fields[str(part)].annotation if str(part) in tp.model_fields else None
        elif typing.get_origin(tp) in (list, dict):
            tp = typing.get_args(tp)[-1]
        node = (
            node.get(part)
            if isinstance(node, dict)
            else (
                node[part] if isinstance(node, list) and isinstance(part, int) and part < len(node) else None
            )
        )
    tp = _pick(tp, node)
    return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def _pick(tp: Any, node: Any) -> Any:
    """Unwrap Annotated/Optional/discriminated unions down to one concrete type."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            tag = node.get("type") if isinstance(node, dict) else None
            chosen = [m for m in members if _tag(m) == tag] or members
            tp = chosen[0]
        else:
            return tp


def _tag(tp: Any) -> Any:
    if isinstance(tp, type) and issubclass(tp, BaseModel) and "type" in tp.model_fields:
        args = typing.get_args(tp.model_fields["type"].annotation)
        return args[0] if args else None
    return None


def _unique(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        if (p.line, p.col, p.path, p.message) not in seen:
            seen.add((p.line, p.col, p.path, p.message))
            out.append(p)
    return out


def to_yaml(spec: JobSpec) -> str:
    """The fully resolved spec as YAML, every default written out and marked `# default`, so
    what the user set stays apart from what runner filled in."""
    import io

    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.default_flow_style = False
    yaml.allow_unicode = True
    yaml.width = 4096
    out = io.StringIO()
    out.write(f"{RESOLVED_HEADER} every key written out; those marked `# default` were not set\n")
    yaml.dump(_commented(spec), out)
    return out.getvalue()


def _commented(model: BaseModel):
    """model_dump as a ruamel map whose defaulted keys carry a `# default` comment."""
    from ruamel.yaml.comments import CommentedMap

    dumped = model.model_dump(mode="json")
    out = CommentedMap()
    for key, value in dumped.items():
        child = getattr(model, key)
        if isinstance(child, BaseModel):
            value = _commented(child)
        elif isinstance(child, list) and child and all(isinstance(c, BaseModel) for c in child):
            value = [_commented(c) for c in child]
        out[key] = value
        if key not in model.model_fields_set and not _touched(child):
            out.yaml_add_eol_comment("default", key)
    return out


def _touched(value) -> bool:
    """A section the user left out, but within which resolve filled something in."""
    return isinstance(value, BaseModel) and bool(value.model_fields_set)
