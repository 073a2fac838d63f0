"""Reading operator-written YAML (protocols, rigs) and reporting everything wrong with it at once.

An operator fixing a rig file wants the whole list in one go, each line naming the file, the field
(as a dotted path) and what is allowed, not a traceback that stops at the first problem.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config file: where (dotted path, '' for the whole file) and what."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class ConfigError(ValueError):
    """A protocol or rig file (or a protocol/rig pair) that cannot be used, with every problem listed."""

    def __init__(self, source: str | Path | None, problems: Sequence[Problem | str]) -> None:
        self.source = str(source) if source is not None else None
        self.problems = [p if isinstance(p, Problem) else Problem("", p) for p in problems]
        where = self.source or "configuration"
        head = f"{where}: {len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}"
        super().__init__("\n".join([head, *(f"  - {p}" for p in self.problems)]))


class CrossFieldProblems(ValueError):
    """Raised inside a model validator to report several problems, each at its own field.

    pydantic keeps the exception object in the error's context, so :func:`problems_from_validation`
    can unfold it into one line per field instead of one blob at the model's root."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


def dotted(loc: Iterable[str | int]) -> str:
    """('pumps', 2, 'port') -> 'pumps[2].port'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _join(prefix: str, field: str) -> str:
    if not prefix:
        return field
    if not field:
        return prefix
    return f"{prefix}{field}" if field.startswith("[") else f"{prefix}.{field}"


def _model_at(model: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class that sits at ``loc`` inside ``model`` (through lists, dicts, optionals)."""
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            if not isinstance(part, str) or part not in current.model_fields:
                return None
            current = current.model_fields[part].annotation
            continue
        current = _inner_model(current)
        if current is None:
            return None
        # a list index or a dict key steps into the element type, which _inner_model already gave
    current = (
        _inner_model(current)
        if not (isinstance(current, type) and issubclass(current, BaseModel))
        else current
    )
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    """The BaseModel inside ``X | None``, ``list[X]``, ``dict[str, X]``, or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is None:
        return None
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        found = [_inner_model(a) for a in args if a is not type(None)]
        found = [f for f in found if f is not None]
        return found[0] if len(found) == 1 else None
    if origin in (list, tuple, set, frozenset):
        return _inner_model(args[0]) if args else None
    if origin is dict:
        return _inner_model(args[1]) if len(args) == 2 else None
    return None


def problems_from_validation(exc: ValidationError, model: type[BaseModel]) -> list[Problem]:
    """One :class:`Problem` per pydantic error, with the allowed fields named for unknown keys."""
    problems: list[Problem] = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        field = dotted(loc)
        ctx = err.get("ctx") or {}
        inner = ctx.get("error")
        if isinstance(inner, CrossFieldProblems):
            problems.extend(Problem(_join(field, p.field), p.message) for p in inner.problems)
            continue
        kind = err["type"]
        if kind == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            allowed = ", ".join(parent.model_fields) if parent is not None else "see the documentation"
            message = f"unknown field; allowed here: {allowed}"
        elif kind == "missing":
            message = "required field is missing"
        elif kind == "value_error" and isinstance(inner, ValueError):
            message = str(inner)
        elif kind == "string_pattern_mismatch":
            message = _pattern_message(str(ctx.get("pattern", "")), err.get("input"))
        elif kind in ("tuple_type", "list_type") and isinstance(err.get("input"), str):
            message = f"give a list of numbers such as [30, 1500], not the text {err['input']!r}"
        else:
            message = err["msg"]
            if kind in ("float_parsing", "int_parsing", "float_type", "int_type", "bool_parsing"):
                message += f" (got {err.get('input')!r})"
        problems.append(Problem(field, message))
    return problems


def _pattern_message(pattern: str, value: Any) -> str:
    """A name refused by its pattern, in words: the names the files use are identifiers."""
    if pattern.startswith("^[A-Za-z_][A-Za-z0-9_"):
        extra = ", '-'" if "-]" in pattern else ""
        return (f"{value!r} is not a name this file accepts: letters, digits, '_'{extra} only, starting with a "
                "letter or '_' (no spaces, brackets or dots)")
    if ":" in pattern:
        return f"{value!r} is not module:Class (for example simulators.chemistry:AgNanoprism)"
    return f"{value!r} does not match the pattern {pattern}"


M = TypeVar("M", bound=BaseModel)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: PyYAML would silently keep the last one, and a
    duplicated 'syringe_diameter_mm' is exactly the kind of slip that must not reach a pump."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[arg-type]
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping",
                node.start_mark,
                f"duplicate key {key!r} (first on line {seen[key] + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The top-level mapping of a YAML file, or a ConfigError naming the file (and line) at fault."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(path, [f"{what} file not found"]) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, [f"cannot read the {what} file ({exc})"]) from exc
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(path, [f"{where}not valid YAML ({problem})"]) from exc
    if data is None:
        raise ConfigError(path, [f"the {what} file is empty"])
    if not isinstance(data, dict):
        raise ConfigError(path, [f"a {what} file must be a mapping of fields, got a {type(data).__name__}"])
    return data


def validate_model(model: type[M], data: dict[str, Any], source: str | Path, **context: Any) -> M:
    """``model.model_validate(data)``, with pydantic's errors turned into one ConfigError."""
    try:
        return model.model_validate(data, context={"source": str(source), **context})
    except ValidationError as exc:
        raise ConfigError(source, problems_from_validation(exc, model)) from exc
