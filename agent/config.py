"""Load the YAML configuration, validate it, and report every problem with file, line and column.

`load_config(path)` returns a typed `Config` or raises `ConfigError` holding all problems found,
each printed as `FILE:LINE:COL: field.path: message`. Nothing here touches the network.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from agent.settings import REGISTER_COUNT, Config, FieldError, parse_modbus_address

__all__ = ["ConfigError", "ConfigProblem", "load_config", "load_yaml"]

Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a configuration file, and where."""

    file: str
    line: int
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.field}: {self.message}"


class ConfigError(Exception):
    """The configuration cannot be used; `problems` lists every reason found."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


def load_yaml(path: Path) -> Any:
    """Parse a YAML file keeping line and column of every node (round-trip mode)."""
    return _parse_with_positions(_read_text(path), str(path))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(str(path), 1, 1, "(file)", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigProblem(str(path), 1, 1, "(file)", str(exc))]) from None


def _parse_with_positions(text: str, file: str) -> Any:
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        return yaml.load(text)
    except MarkedYAMLError as exc:
        raise ConfigError([_yaml_problem(file, exc)]) from None
    except YAMLError as exc:
        raise ConfigError([ConfigProblem(file, 1, 1, "(yaml)", str(exc))]) from None


def _parse_fast(text: str, file: str) -> Any:
    """Plain Python values, with the C parser when ruamel.yaml.clib is installed: 8 times
    faster than the round-trip parser, which otherwise only runs when a problem needs a
    position.

    The C parser follows libyaml's stricter scanning rules (it rejects `{address: input:0}`,
    which YAML 1.2 allows), so whatever it refuses is parsed again by the round-trip parser,
    whose verdict counts.
    """
    yaml = YAML(typ="safe")
    yaml.allow_duplicate_keys = False
    try:
        return yaml.load(text)
    except YAMLError:
        return _plain(_parse_with_positions(text, file))


def _plain(node: Any) -> Any:
    """Copy ruamel's commented containers and scalar subclasses into plain Python values."""
    if isinstance(node, dict):
        return {str(key): _plain(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_plain(item) for item in node]
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node


def _yaml_problem(file: str, exc: MarkedYAMLError) -> ConfigProblem:
    """Say what the parser found wrong, where, and where the construct it was reading began."""
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    problem = (exc.problem or str(exc)).split("\n")[0]
    if isinstance(exc, DuplicateKeyError):
        message = f"{problem}: each key may appear once per mapping"
    elif problem == "mapping values are not allowed here":
        message = (
            f"{problem}: check the indentation of this line, or quote a value that contains ': '"
        )
    else:
        message = problem
        context = exc.context_mark
        if (
            exc.context
            and context is not None
            and (context.line + 1, context.column + 1)
            != (
                line,
                column,
            )
        ):
            message += (
                f" ({exc.context.removeprefix('while ')} that starts at line {context.line + 1}, "
                f"column {context.column + 1})"
            )
    return ConfigProblem(file, line, column, "(yaml)", message)


def load_config(path: str | Path) -> Config:
    """Read, validate and cross-check a configuration file.

    Relative paths inside it (data directory, secret files) are taken relative to the file.
    Raises `ConfigError` with every problem found, never a bare pydantic or YAML exception.
    """
    path = Path(path)
    try:
        return _load_config(path)
    except RecursionError:
        message = "the file nests lists or mappings too deeply to be a configuration"
        raise ConfigError([ConfigProblem(str(path), 1, 1, "(yaml)", message)]) from None


def _load_config(path: Path) -> Config:
    text = _read_text(path)
    document = _parse_fast(text, str(path))
    if not isinstance(document, dict):
        found = (
            "empty" if document is None else "a list" if isinstance(document, list) else "a value"
        )
        message = f"the file must be a mapping with agent, mqtt and devices; it is {found}"
        raise ConfigError([ConfigProblem(str(path), 1, 1, "(file)", message)])
    _check_depth(document, text, str(path))
    locator = _Locator(str(path), text)
    problems = _cross_check(document, locator, path.parent)
    config = None
    try:
        config = Config.model_validate(document)
    except ValidationError as exc:
        problems.extend(_problems_from_pydantic(exc, locator))
    if problems or config is None:
        raise ConfigError(sorted(problems, key=_position))
    return _resolve_paths(config, path.parent)


# No valid configuration nests deeper than about 6 levels; a much deeper one is a mistake, and
# locating problems in it would exhaust the round-trip parser's recursion.
_MAX_DEPTH = 32


def _check_depth(document: dict[str, Any], text: str, file: str) -> None:
    for key, value in document.items():
        stack = [(value, 1)]
        while stack:
            node, depth = stack.pop()
            if depth > _MAX_DEPTH:
                found = re.search(rf"^{re.escape(key)}\s*:", text, re.MULTILINE)
                line = text.count("\n", 0, found.start()) + 1 if found else 1
                message = f"nests lists or mappings more than {_MAX_DEPTH} levels deep"
                raise ConfigError([ConfigProblem(file, line, 1, key, message)])
            if isinstance(node, dict):
                stack.extend((child, depth + 1) for child in node.values())
            elif isinstance(node, list):
                stack.extend((child, depth + 1) for child in node)


def _resolve(base: Path, path: Path) -> Path:
    """`base / path` made absolute, symbolic links resolved where that is possible (a link
    loop is reported when the file is used, not here)."""
    try:
        return (base / path).resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(base / path))


def _position(problem: ConfigProblem) -> tuple[int, int]:
    return problem.line, problem.column


def _resolve_paths(config: Config, base: Path) -> Config:
    data_dir = config.agent.data_dir
    if not data_dir.is_absolute():
        data_dir = _resolve(base, data_dir)
    password_file = config.mqtt.password_file
    if password_file is not None and not password_file.is_absolute():
        password_file = _resolve(base, password_file)
    return config.model_copy(
        update={
            "agent": config.agent.model_copy(update={"data_dir": data_dir}),
            "mqtt": config.mqtt.model_copy(update={"password_file": password_file}),
        }
    )


class _Locator:
    """Finds the line and column of a field path, parsing the file with positions only when
    the first problem needs one."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.text = text
        self._document: CommentedMap | None = None

    @property
    def document(self) -> CommentedMap:
        """The file parsed in round-trip mode, which keeps every node's position."""
        if self._document is None:
            self._document = _parse_with_positions(self.text, self.file)
        return self._document

    def problem(self, loc: Loc, message: str, *, at_key: bool = False) -> ConfigProblem:
        line, column = self.position(loc, at_key=at_key)
        return ConfigProblem(self.file, line, column, _dotted(loc) or "(root)", message)

    def position(self, loc: Loc, *, at_key: bool = False) -> tuple[int, int]:
        node: Any = self.document
        line, column = 0, 0
        for index, step in enumerate(loc):
            last = index == len(loc) - 1
            if isinstance(node, CommentedMap):
                if step not in node:
                    # A missing field: point at the key of the mapping that lacks it (set by the
                    # previous step), or at the mapping itself when it is a list item.
                    if index == 0 or isinstance(loc[index - 1], int):
                        line, column = _start(node)
                    break
                key_pos = node.lc.key(step)
                value_pos = node.lc.value(step)
                line, column = key_pos if (at_key and last) else value_pos
                if isinstance(node[step], CommentedMap | CommentedSeq) and not at_key:
                    line, column = key_pos
                node = node[step]
            elif isinstance(node, CommentedSeq) and isinstance(step, int) and step < len(node):
                line, column = node.lc.item(step)
                node = node[step]
            else:
                break
        return line + 1, column + 1


def _start(node: CommentedMap | CommentedSeq) -> tuple[int, int]:
    return node.lc.line, node.lc.col


def _dotted(loc: Iterable[str | int]) -> str:
    text = ""
    for step in loc:
        if isinstance(step, int):
            text += f"[{step}]"
        else:
            text += f".{step}" if text else step
    return text


# Messages that do not show the offending value themselves.
_SHOW_INPUT = {
    "int_parsing",
    "int_type",
    "int_from_float",
    "float_parsing",
    "float_type",
    "bool_parsing",
    "bool_type",
    "string_type",
    "literal_error",
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
    "string_too_long",
}


def _problems_from_pydantic(exc: ValidationError, locator: _Locator) -> list[ConfigProblem]:
    errors = exc.errors(include_url=False)
    unknown_keys = {
        _data_loc(error["loc"], locator.document)
        for error in errors
        if error["type"] == "extra_forbidden"
    }
    problems = []
    for error in errors:
        loc = _data_loc(error["loc"], locator.document)
        kind = error["type"]
        context = error.get("ctx", {})
        if kind == "extra_forbidden":
            key = str(loc[-1])
            problems.append(
                locator.problem(loc, _unknown_field(key, loc, locator.document), at_key=True)
            )
        elif kind == "missing":
            if _misspelt(loc, unknown_keys):
                continue  # the unknown-key message already says "did you mean"
            problems.append(locator.problem(loc, f"required field '{loc[-1]}' is missing"))
        elif kind == "union_tag_invalid":
            problems.append(
                locator.problem(
                    (*loc, "driver"),
                    f"unknown driver '{context.get('tag')}' "
                    f"(supported: {context.get('expected_tags', '').replace(chr(39), '')})",
                )
            )
        elif kind == "too_short":
            minimum = context.get("min_length", 1)
            problems.append(
                locator.problem(
                    loc, f"needs at least {minimum} entr{'y' if minimum == 1 else 'ies'}"
                )
            )
        elif kind == "union_tag_not_found":
            problems.append(locator.problem((*loc, "driver"), "required field 'driver' is missing"))
        else:
            error_object = context.get("error")
            if isinstance(error_object, FieldError):
                loc = (*loc, error_object.field)
            message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
            value = error.get("input")
            if kind in _SHOW_INPUT and not isinstance(value, dict | list):
                message += f", got {value!r}"
            problems.append(locator.problem(loc, message))
    return problems


def _misspelt(missing: Loc, unknown_keys: set[Loc]) -> bool:
    siblings = [str(key[-1]) for key in unknown_keys if key[:-1] == missing[:-1]]
    return bool(difflib.get_close_matches(str(missing[-1]), siblings, n=1))


def _data_loc(loc: Loc, document: CommentedMap) -> Loc:
    """Drop the steps pydantic adds that are not in the file (discriminated-union tags)."""
    kept: list[str | int] = []
    node: Any = document
    for step in loc:
        if isinstance(node, dict) and isinstance(step, str) and step not in node:
            if node.get("driver") == step:
                continue
            kept.append(step)
            node = None
            continue
        kept.append(step)
        if isinstance(node, dict):
            node = node.get(step)
        elif isinstance(node, list) and isinstance(step, int) and step < len(node):
            node = node[step]
        else:
            node = None
    return tuple(kept)


def _unknown_field(key: str, loc: Loc, document: CommentedMap) -> str:
    allowed = _allowed_fields(loc[:-1], document)
    message = f"unknown field '{key}'"
    if allowed:
        close = difflib.get_close_matches(key, allowed, n=1)
        if close:
            message += f"; did you mean '{close[0]}'?"
        message += f" (allowed here: {', '.join(allowed)})"
    return message


def _allowed_fields(loc: Loc, document: CommentedMap) -> list[str]:
    """The field names of the model found at `loc`, for 'did you mean' hints."""
    annotation: Any = Config
    node: Any = document
    for step in loc:
        annotation = _pick_member(_unwrap(annotation), node)
        if isinstance(step, int):
            args = typing.get_args(annotation)
            annotation = args[0] if args else None
            node = node[step] if isinstance(node, list) and step < len(node) else None
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(step)
            annotation = field.annotation if field else None
            node = node.get(step) if isinstance(node, dict) else None
        else:
            return []
    annotation = _pick_member(_unwrap(annotation), node)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _pick_member(annotation: Any, node: Any) -> Any:
    """The member of a union of models (devices) that the document's `driver` names."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return annotation
    driver = node.get("driver") if isinstance(node, dict) else None
    for member in typing.get_args(annotation):
        field = getattr(member, "model_fields", {}).get("driver")
        if field is not None and driver in typing.get_args(field.annotation):
            return member
    return annotation


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _cross_check(document: dict[str, Any], locator: _Locator, base: Path) -> list[ConfigProblem]:
    """Checks that span several fields: unique names, overlapping registers, secret sources.

    They run on the raw document, defensively, so that they are reported together with schema
    errors instead of only after those are fixed.
    """
    problems: list[ConfigProblem] = []
    devices = document.get("devices")
    device_names: dict[str, Loc] = {}
    point_owner: dict[str, Loc] = {}
    for d, device in enumerate(devices if isinstance(devices, list) else []):
        if not isinstance(device, dict):
            continue
        name = device.get("name")
        if isinstance(name, str):
            loc: Loc = ("devices", d, "name")
            if name in device_names:
                problems.append(
                    locator.problem(
                        loc,
                        f"device name '{name}' is already used by "
                        f"{_where(device_names[name], locator)}",
                    )
                )
            device_names.setdefault(name, loc)
        points = device.get("points")
        occupied: dict[str, list[tuple[int, int, str, object]]] = {}
        for p, point in enumerate(points if isinstance(points, list) else []):
            if not isinstance(point, dict):
                continue
            point_loc: Loc = ("devices", d, "points", p)
            point_id = point.get("id")
            if isinstance(point_id, str):
                if point_id in point_owner:
                    problems.append(
                        locator.problem(
                            (*point_loc, "id"),
                            f"point id '{point_id}' is already used by "
                            f"{_where(point_owner[point_id], locator)}",
                        )
                    )
                point_owner.setdefault(point_id, (*point_loc, "id"))
            span = _register_span(point, device.get("addressing", "protocol"))
            if span is None:
                continue
            table, start, end = span
            bit = point.get("bit") if point.get("type") == "bool" else None
            for other_start, other_end, other_id, other_bit in occupied.get(table, []):
                # Bits of one register are separate points; only the same bit twice overlaps.
                if bit is not None and other_bit is not None and bit != other_bit:
                    continue
                if start <= other_end and other_start <= end:
                    problems.append(
                        locator.problem(
                            (*point_loc, "address"),
                            f"{_span(table, start, end)} overlaps point '{other_id}' "
                            f"at {_span(table, other_start, other_end)}",
                        )
                    )
                    break
            occupied.setdefault(table, []).append((start, end, str(point_id), bit))
    mqtt = document.get("mqtt")
    if isinstance(mqtt, dict):
        password_file = mqtt.get("password_file")
        if isinstance(password_file, str) and "\0" not in password_file:
            resolved = _resolve(base, Path(password_file))
            if not resolved.is_file():
                shown = repr(password_file)
                if str(resolved) != password_file:
                    shown += f" ({resolved})"
                problems.append(
                    locator.problem(("mqtt", "password_file"), f"file {shown} does not exist")
                )
        password_env = mqtt.get("password_env")
        if isinstance(password_env, str) and password_env not in os.environ:
            problems.append(
                locator.problem(
                    ("mqtt", "password_env"), f"environment variable {password_env} is not set"
                )
            )
    return problems


def _where(loc: Loc, locator: _Locator) -> str:
    line, _ = locator.position(loc)
    return f"{_dotted(loc[:-1])} (line {line})"


def _register_span(point: dict[str, Any], addressing: Any) -> tuple[str, int, int] | None:
    """(table, first, last) occupied by a point, or None if its address is not valid."""
    addressing = point.get("addressing", addressing)
    if addressing not in ("protocol", "one_based", "modicon"):
        return None
    try:
        table, start = parse_modbus_address(point.get("address", ""), addressing)
    except ValueError:
        return None
    width = 1
    value_type = str(point.get("type"))
    if table in ("input", "holding") and value_type == "string":
        length = point.get("length")
        width = (length + 1) // 2 if isinstance(length, int) and length > 0 else 1
    elif table in ("input", "holding"):
        width = REGISTER_COUNT.get(value_type, 1)
    return table, start, start + width - 1


def _span(table: str, start: int, end: int) -> str:
    return f"{table}:{start}" if start == end else f"{table}:{start}-{end}"
