"""The parts of a spec that validated, when others did not, so the checks can run on them too.

A spec with a schema error still gets its cross-field and file checks, on typed data: `salvage`
validates each part on its own, as the schema does (the model's own validators and defaults),
and returns an instance of the model in which each part that failed is left out; reading one
raises Unchecked, which skips the check that read it (the schema's error already says what is
wrong there). A part is a section (a model), an item of a list of models, or a single key.
"""

from __future__ import annotations

import functools
import typing
from types import UnionType
from typing import Any

from pydantic import BaseModel, ValidationError, create_model

from runner.core.jobspec.yaml_loader import Loc

M = typing.TypeVar("M", bound=BaseModel)
_MISSING = object()


class Unchecked(Exception):
    """A check read a part of the spec that failed validation."""


class Invalid:
    """An item of a list that failed validation as a whole: every attribute is Unchecked."""

    def __getattr__(self, name: str) -> Any:
        raise Unchecked(name)


def salvage(model: type[M], data: Any, errors: list[Loc]) -> M | None:
    """`data` as a `model`, its parts at `errors` (locations as the user wrote the keys, relative
    to data) left out; None when nothing is usable (not a mapping, or an error of the whole)."""
    if not isinstance(data, dict) or () in errors:
        return None
    bad = {loc[0] for loc in errors}
    for _ in range(len(model.model_fields) + 1):
        try:
            spec = _loose(model, frozenset(bad & set(model.model_fields))).model_validate(
                {k: v for k, v in data.items() if k not in bad}
            )
            break
        except ValidationError as e:  # a key valid alone but not beside the defaults of those left out
            more = {err["loc"][0] for err in e.errors() if err["loc"]}
            if not more - bad:
                return None
            bad |= more
    else:
        return None
    for name in bad & set(model.model_fields):
        inner = [loc[1:] for loc in errors if loc[:1] == (name,)]
        part = _part(model.model_fields[name].annotation, data.get(name, _MISSING), inner)
        if part is _MISSING:
            del spec.__dict__[name]  # read: Unchecked
        else:
            spec.__dict__[name] = part
    return spec


def _part(tp: Any, value: Any, errors: list[Loc]) -> Any:
    """What can be saved of one key's value: a model, a list of models, or nothing (_MISSING)."""
    if value is _MISSING or value is None or () in errors:
        return _MISSING
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return _part(args[0], value, errors)
    if origin in (typing.Union, UnionType):  # Optional[X], or the methods by their `type`
        members = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        tag = value.get("type") if isinstance(value, dict) else None
        tagged = [m for m in members if _tag(m) == tag]
        chosen = tagged or (members if len(members) == 1 else [])
        return _part(chosen[0], value, errors) if chosen else _MISSING
    if origin is list and isinstance(value, list) and _is_model(args[0]):
        items = []
        for i, item in enumerate(value):
            part = _part(args[0], item, [loc[1:] for loc in errors if loc[:1] == (i,)])
            items.append(Invalid() if part is _MISSING else part)
        return items
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        spec = salvage(tp, value, errors)
        return _MISSING if spec is None else spec
    return _MISSING  # a single key: its error is the schema's


def _is_model(tp: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated or origin in (typing.Union, UnionType):
        return any(_is_model(a) for a in args)
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _tag(tp: type[BaseModel]) -> Any:
    field = tp.model_fields.get("type")
    args = typing.get_args(field.annotation) if field else ()
    return args[0] if args else None


@functools.cache
def _loose(model: type[M], left_out: frozenset[str]) -> type[M]:
    """`model` with the keys left_out optional and unread: reading one raises Unchecked."""
    if not left_out:
        return model
    loose = create_model(
        model.__name__, __base__=model, __module__=model.__module__, **{k: (Any, None) for k in left_out}
    )

    def __getattr__(self: BaseModel, name: str) -> Any:
        if name in left_out:
            raise Unchecked(name)
        return model.__getattr__(self, name)  # type: ignore[attr-defined]

    loose.__getattr__ = __getattr__  # type: ignore[method-assign]
    return loose
