"""Load the YAML configuration, validate it, and report every problem with file, line and column.

`load_config(path)` returns a typed `Config` or raises `ConfigError` holding all problems found,
each printed as `FILE:LINE:COL: field.path: message`. Nothing here touches the network.
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from agent.settings import Config, ModbusPoint

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
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(str(path), 1, 1, "(file)", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigProblem(str(path), 1, 1, "(file)", str(exc))]) from None
    try:
        return yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = " ".join(part for part in (exc.context, exc.problem) if part)
        message = message.split("\n")[0] if message else str(exc)
        raise ConfigError([ConfigProblem(str(path), line, column, "(yaml)", message)]) from None
    except YAMLError as exc:
        raise ConfigError([ConfigProblem(str(path), 1, 1, "(yaml)", str(exc))]) from None


def load_config(path: str | Path) -> Config:
    """Read, validate and cross-check a configuration file.

    Relative paths inside it (data directory, secret files) are taken relative to the file.
    Raises `ConfigError` with every problem found, never a bare pydantic or YAML exception.
    """
    path = Path(path)
    document = load_yaml(path)
    if not isinstance(document, CommentedMap):
        raise ConfigError(
            [
                ConfigProblem(
                    str(path), 1, 1, "(file)", "expected a mapping with agent, mqtt, devices"
                )
            ]
        )
    locator = _Locator(str(path), document)
    try:
        config = Config.model_validate(_plain(document))
    except ValidationError as exc:
        raise ConfigError(sorted(_problems_from_pydantic(exc, locator), key=_position)) from None
    config = _resolve_paths(config, path.parent)
    problems = sorted(_cross_check(config, locator), key=_position)
    if problems:
        raise ConfigError(problems)
    return config


def _position(problem: ConfigProblem) -> tuple[int, int]:
    return problem.line, problem.column


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


def _resolve_paths(config: Config, base: Path) -> Config:
    data_dir = config.agent.data_dir
    if not data_dir.is_absolute():
        data_dir = (base / data_dir).resolve()
    password_file = config.mqtt.password_file
    if password_file is not None and not password_file.is_absolute():
        password_file = (base / password_file).resolve()
    return config.model_copy(
        update={
            "agent": config.agent.model_copy(update={"data_dir": data_dir}),
            "mqtt": config.mqtt.model_copy(update={"password_file": password_file}),
        }
    )


class _Locator:
    """Finds the line and column of a field path in the parsed YAML document."""

    def __init__(self, file: str, document: CommentedMap) -> None:
        self.file = file
        self.document = document

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
                    # A discriminator tag or a missing field: stay on the enclosing mapping.
                    line, column = _start(node)
                    continue
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


def _problems_from_pydantic(exc: ValidationError, locator: _Locator) -> list[ConfigProblem]:
    problems = []
    for error in exc.errors(include_url=False):
        loc = _data_loc(error["loc"], locator.document)
        kind = error["type"]
        if kind == "extra_forbidden":
            key = str(loc[-1])
            problems.append(locator.problem(loc, _unknown_field(key, loc), at_key=True))
        elif kind == "missing":
            problems.append(locator.problem(loc, f"required field '{loc[-1]}' is missing"))
        else:
            message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
            problems.append(locator.problem(loc, message))
    return problems


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


def _unknown_field(key: str, loc: Loc) -> str:
    allowed = _allowed_fields(loc[:-1])
    message = f"unknown field '{key}'"
    if allowed:
        close = difflib.get_close_matches(key, allowed, n=1)
        if close:
            message += f"; did you mean '{close[0]}'?"
        message += f" (allowed here: {', '.join(allowed)})"
    return message


def _allowed_fields(loc: Loc) -> list[str]:
    """The field names of the model found at `loc`, for 'did you mean' hints."""
    annotation: Any = Config
    for step in loc:
        annotation = _unwrap(annotation)
        if isinstance(step, int):
            args = typing.get_args(annotation)
            annotation = args[0] if args else None
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(step)
            annotation = field.annotation if field else None
        else:
            return []
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


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


def _cross_check(config: Config, locator: _Locator) -> list[ConfigProblem]:
    """Checks that span several fields: unique names, overlapping registers, secret sources."""
    problems: list[ConfigProblem] = []
    device_names: dict[str, int] = {}
    point_owner: dict[str, Loc] = {}
    for d, device in enumerate(config.devices):
        if device.name in device_names:
            first = device_names[device.name]
            problems.append(
                locator.problem(
                    ("devices", d, "name"),
                    f"device name '{device.name}' is already used by devices[{first}]",
                )
            )
        device_names.setdefault(device.name, d)
        occupied: dict[str, list[tuple[int, int, ModbusPoint]]] = {}
        for p, point in enumerate(device.points):
            loc: Loc = ("devices", d, "points", p)
            if point.id in point_owner:
                first_line, _ = locator.position((*point_owner[point.id], "id"))
                problems.append(
                    locator.problem(
                        (*loc, "id"),
                        f"point id '{point.id}' is already used by "
                        f"{_dotted(point_owner[point.id])} (line {first_line})",
                    )
                )
            point_owner.setdefault(point.id, loc)
            start, end = point.register, point.register + point.width - 1
            for other_start, other_end, other in occupied.get(point.table, []):
                if start <= other_end and other_start <= end:
                    problems.append(
                        locator.problem(
                            (*loc, "address"),
                            f"{_span(point.table, start, end)} overlaps point '{other.id}' "
                            f"at {_span(point.table, other_start, other_end)}",
                        )
                    )
                    break
            occupied.setdefault(point.table, []).append((start, end, point))
    mqtt = config.mqtt
    if mqtt.password_file is not None and not mqtt.password_file.is_file():
        problems.append(
            locator.problem(
                ("mqtt", "password_file"), f"file {str(mqtt.password_file)!r} does not exist"
            )
        )
    if mqtt.password_env is not None and mqtt.password_env not in os.environ:
        problems.append(
            locator.problem(
                ("mqtt", "password_env"), f"environment variable {mqtt.password_env} is not set"
            )
        )
    return problems


def _span(table: str, start: int, end: int) -> str:
    return f"{table}:{start}" if start == end else f"{table}:{start}-{end}"
