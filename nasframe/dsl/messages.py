"""Validation errors of the DSL as one line per place at fault: the field, the value given,
and what is wrong, in words, never through pydantic's internals (``function-after[...]``,
``Input should be a valid dictionary or instance of OpSpec``)."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

__all__ = ["format_validation_error"]

_TAGS = ("reversible", "sequential")  # discriminator tags pydantic puts in error locations


_UNION_MEMBER = re.compile(r"^(OpSet|OpSpec|bool|int|float|str)$|\[")  # loc parts of a union


def _shown(value: Any) -> str:
    """The value given, as the message shows it: a DSL object by its kind, others by repr."""
    if isinstance(value, BaseModel):
        return f"a {type(value).__name__}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _field_model(annotation: Any) -> Any:
    """The first DSL model inside an annotation (``list[OpSpec]`` -> OpSpec)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _field_model(arg)
        if found is not None:
            return found
    return None


def _owner(root: type[BaseModel] | None, loc: list[Any],
           kinds: Mapping[str, type[BaseModel]]) -> Any:
    """The model class that owns the last part of ``loc`` (for naming its fields)."""
    cls: Any = root
    for part in loc[:-1]:
        if part in kinds:
            cls = kinds[part]
        elif isinstance(cls, type) and issubclass(cls, BaseModel) and part in cls.model_fields:
            cls = _field_model(cls.model_fields[part].annotation)
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def _message(errors: list[dict[str, Any]], root: type[BaseModel] | None,
             loc: list[Any], kinds: Mapping[str, type[BaseModel]]) -> str:
    """One message for the errors pydantic gives at one place (several for a union)."""
    e = errors[0]
    kind, value, ctx = e["type"], e.get("input"), e.get("ctx") or {}
    classes = {x.get("ctx", {}).get("class_name") for x in errors if x["type"] == "model_type"}
    if "OpSpec" in classes:
        return (f"{_shown(value)} is not an op; an op is a name or nf.op(...)"
                + (", a choice a list of ops" if "OpSet" in classes else ""))
    if "OpSet" in classes:
        return f"{_shown(value)} is not an op set; a choice is a list of ops or nf.OpSet([...])"
    if {x["type"] for x in errors} >= {"bool_type", "string_type"}:  # an op parameter
        return f"{_shown(value)} is not a number, string or boolean"
    if kind == "greater_than_equal":
        return f"{_shown(value)} is below the minimum {ctx['ge']}"
    if kind == "less_than_equal":
        return f"{_shown(value)} is above the maximum {ctx['le']}"
    if kind == "greater_than":
        return f"{_shown(value)} is not greater than {ctx['gt']}"
    if kind == "less_than":
        return f"{_shown(value)} is not less than {ctx['lt']}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"{_shown(value)} is not an integer"
    if kind in ("float_type", "float_parsing"):
        return f"{_shown(value)} is not a number"
    if kind in ("bool_type", "bool_parsing"):
        return f"{_shown(value)} is not a boolean"
    if kind == "string_type":
        return f"{_shown(value)} is not a string"
    if kind == "literal_error":
        return f"{_shown(value)} is not one of {ctx['expected'].replace(' or ', ', ')}"
    if kind == "missing":
        return "missing; it must be given"
    if kind == "extra_forbidden":
        owner = _owner(root, loc, kinds)
        if owner is None:
            return f"not a field here (given {_shown(value)})"
        fields = [f for f in owner.model_fields if f != "kind"]
        return f"{owner.__name__} has no field {loc[-1]!r}; its fields: {', '.join(fields)}"
    if kind == "dict_type":
        return f"{_shown(value)} is not a mapping"
    if kind in ("list_type", "tuple_type"):
        return f"{_shown(value)} is not a list"
    if kind in ("union_tag_not_found", "model_attributes_type") and loc[-1:] in (
            ["encoder"], ["decoder"]):
        if isinstance(value, dict):
            return ("a part given as a mapping needs kind 'reversible' (a Stack) or "
                    "'sequential' (a Sequential)")
        return f"{_shown(value)} is not a layer; a part is nf.Stack(...) or nf.Sequential(...)"
    if kind == "union_tag_invalid":
        return (f"kind {ctx.get('tag')!r} is not 'reversible' (a Stack) or "
                "'sequential' (a Sequential)")
    if kind in ("model_type", "model_attributes_type"):
        return f"{_shown(value)} is not a {ctx.get('class_name', 'declaration')}"
    return str(e["msg"]).removeprefix("Value error, ")


def format_validation_error(err: ValidationError, root: str,
                            model: type[BaseModel] | None = None,
                            kinds: Mapping[str, type[BaseModel]] | None = None) -> str:
    """One ``field: message`` line per place at fault; the value given is in each message.

    ``root`` names an error without a field, ``model`` is the class validated, ``kinds`` the
    classes of a tagged union by tag (to name the fields of the part at fault).
    """
    kinds = kinds or {}
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for e in err.errors():
        loc = tuple(p for p in e["loc"]
                    if not (isinstance(p, str) and (p in _TAGS or _UNION_MEMBER.search(p))))
        groups.setdefault(loc, []).append(e)
    lines = []
    for loc, errors in groups.items():
        where = ".".join(str(p) for p in loc) or root
        message = _message(errors, model, _loc_fields(errors[0]["loc"]), kinds)
        lines.append(f"{where}: {message}" if where else message)
    return "\n".join(lines)


def _loc_fields(loc: tuple[Any, ...]) -> list[Any]:
    """A pydantic location without its union-member parts (the tags stay, for ``_owner``)."""
    return [p for p in loc if not (isinstance(p, str) and _UNION_MEMBER.search(p))]
