"""The one-line errors of bad params: ``invalid params: <key> = <value> (<what is allowed>)``.

:func:`params_error` turns the first problem of a pydantic validation into that line, in the
schema's own words (ranges, allowed values, known keys); :func:`fail` and :func:`choice`
raise it for the checks that relate several blocks.
"""

from __future__ import annotations

from types import UnionType
from typing import Annotated, Any, Literal, NoReturn, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from .schema import Params


class ParamsError(ValueError):
    """A parameter value that is not allowed; the message names key and value."""


def fail(key: str, value: Any, allowed: str) -> NoReturn:
    raise ParamsError(f"invalid params: {key} = {value!r} ({allowed})")


def choice(value: Any, key: str, allowed: list[str]) -> None:
    if value not in allowed:
        fail(key, value, f"allowed: {', '.join(map(str, allowed))}")


def _dotted(location: tuple) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in location).lstrip(".")


def _field_at(location: tuple, root: type[BaseModel]) -> tuple[type[BaseModel] | None, Any]:
    """(the model holding the last key, the annotation of the value) at a validation error's location in ``root``."""
    model, annotation = None, root
    for part in location:
        kinds, _ = _parts(annotation)
        block = next((kind for kind in kinds if isinstance(kind, type) and issubclass(kind, BaseModel)), None)
        container = next((kind for kind in kinds if get_origin(kind) in (dict, list)), None)
        if block is not None:
            model, field = block, block.model_fields.get(str(part))
            if field is None:
                return model, None
            annotation = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
        elif container is not None:
            annotation = get_args(container)[-1]  # the value type of dict[str, X] or list[X]
    return model, annotation


def _parts(annotation: Any) -> tuple[list, list]:
    """The types (classes, Literal[...], dict[...], list[...]) and the constraints (``Ge(0)``, ...) in an
    annotation, through Annotated, Optional and Field metadata."""
    kinds, constraints, stack = [], [], [annotation]
    while stack:
        item = stack.pop()
        origin = get_origin(item)
        if origin is Annotated:
            stack.extend(get_args(item))
        elif origin is Union or isinstance(item, UnionType):
            stack.extend(arg for arg in get_args(item) if arg is not type(None))
        elif isinstance(item, FieldInfo):
            stack.extend(item.metadata)
        elif isinstance(item, type) or origin is not None:
            kinds.append(item)
        elif item is not None:
            constraints.append(item)
    return kinds, constraints


def _range(annotation: Any) -> str | None:
    """``an integer in [1, inf)`` / ``a number in [0.0, 1.0]`` for a constrained number, else None."""
    kinds, constraints = _parts(annotation)
    kind = int if int in kinds else float if float in kinds else None
    if kind is None:
        return None
    bound = {name: getattr(c, name) for c in constraints for name in ("ge", "gt", "le", "lt") if hasattr(c, name)}
    low, high = bound.get("ge", bound.get("gt")), bound.get("le", bound.get("lt"))
    low_text = "-inf" if low is None else repr(kind(low))
    high_text = "inf" if high is None else repr(kind(high))
    return (f"{'an integer' if kind is int else 'a number'} in {'(' if 'gt' in bound or low is None else '['}"
            f"{low_text}, {high_text}{')' if 'lt' in bound or high is None else ']'}")


def _explain(error: dict, root: type[BaseModel]) -> str:
    """What is allowed, in the words of the one-line error, for one pydantic error of ``root``."""
    model, annotation = _field_at(error["loc"], root)
    kind = error["type"]
    if kind == "missing":
        return "missing"
    if kind == "extra_forbidden":
        return f"not a known key; allowed: {', '.join(model.model_fields) if model else '?'}"
    if kind == "bool_type":
        return "allowed: true, false"
    if kind in ("too_short", "string_too_short"):  # every length constraint of the schema is min_length=1
        return "must not be empty"
    literals = [get_args(item) for item in _parts(annotation)[0] if get_origin(item) is Literal]
    if literals:
        return "allowed: " + ", ".join(map(str, literals[0]))
    numbers = _range(annotation)
    if kind == "finite_number":
        return "must be a finite number" + (numbers.removeprefix("a number") if numbers else "")
    if numbers is not None:
        return f"must be {numbers}"
    message = error["msg"]
    return message[0].lower() + message[1:]


def params_error(error: ValidationError, within: tuple[str, ...] = (),
                 root: type[BaseModel] | None = None) -> ParamsError:
    """The one-line error for the first problem of a validation of params: of all of them, of the block at
    ``within`` (validated as part of :class:`Params`), or of ``root``, a model validated alone at ``within``."""
    errors = error.errors()
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])  # a misspelled key, not its absence
    value = None if first["type"] == "missing" else first["input"]
    located = {**first, "loc": first["loc"] if root is not None else (*within, *first["loc"])}
    explained = _explain(located, root or Params)
    return ParamsError(f"invalid params: {_dotted((*within, *first['loc']))} = {value!r} ({explained})")
