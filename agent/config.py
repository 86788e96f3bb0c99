"""Load the YAML configuration, validate it, and report every problem with file, line and column.

`load_config(path)` returns a typed `Config` or raises `ConfigError` holding all problems found,
each printed as `FILE:LINE:COL: field.path: message`. Nothing here touches the network.

Devices may name a profile (`profile: eastron-sdm630`, or a path to a profile file) and the
`quantities` to read from it; the profile's quantities become ordinary points, with ids
`<device name>.<quantity>`, before the configuration is validated (see config/profiles/README.md).
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from agent.profiles import Profile
from agent.settings import (
    ENERGY_DERIVED_FEATURES,
    REGISTER_COUNT,
    AnyDevice,
    Config,
    FieldError,
    OpcUaDevice,
    parse_modbus_address,
)

_M = TypeVar("_M", bound=BaseModel)

__all__ = [
    "PROFILES_DIR",
    "ConfigError",
    "ConfigProblem",
    "UnknownProfile",
    "load_config",
    "load_profile",
    "load_yaml",
    "profile_names",
    "profile_path",
]


def _shipped_profiles() -> Path:
    """config/profiles of a source checkout, else where a wheel installs them
    (`{prefix}/share/shopfloor-agent/profiles`, see pyproject.toml)."""
    checkout = Path(__file__).resolve().parent.parent / "config" / "profiles"
    installed = Path(sys.prefix) / "share" / "shopfloor-agent" / "profiles"
    return checkout if checkout.is_dir() or not installed.is_dir() else installed


# The shipped profiles: data files, one YAML file per meter model.
PROFILES_DIR = _shipped_profiles()

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
    except ValueError:
        # Python refuses to convert integers of more than 4,300 digits (a denial-of-service
        # guard); no configuration value comes near.
        found = re.search(r"\d{4300,}", text)
        line = text.count("\n", 0, found.start()) + 1 if found else 1
        column = found.start() - text.rfind("\n", 0, found.start()) if found else 1
        raise ConfigError(
            [ConfigProblem(file, line, column, "(yaml)", "a number with thousands of digits")]
        ) from None


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
    except (YAMLError, ValueError):
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


def load_config(path: str | Path, *, check_models: bool = False) -> Config:
    """Read, validate and cross-check a configuration file.

    Relative paths inside it (data directory, secret files) are taken relative to the file.
    With `check_models`, the stations' models are also loaded and recognised (this imports
    onnxruntime: `shopfloor check` does it, tools that only read the file do not).
    Raises `ConfigError` with every problem found, never a bare pydantic or YAML exception.
    """
    path = Path(path)
    try:
        return _load_config(path, check_models)
    except RecursionError:
        message = "the file nests lists or mappings too deeply to be a configuration"
        raise ConfigError([ConfigProblem(str(path), 1, 1, "(yaml)", message)]) from None


def _load_config(path: Path, check_models: bool) -> Config:
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
    expander = _ProfileExpander(locator, path.parent)
    expander.expand(document)
    problems = expander.problems
    unexpanded = expander.unexpanded
    problems.extend(_cross_check(document, locator, path.parent))
    config = None
    try:
        config = Config.model_validate(document)
    except ValidationError as exc:
        schema_problems = _problems_from_pydantic(exc, locator)
        # A device whose profile could not be used has no points: that is not news. A device
        # whose addressing is misspelt cannot have its points' addresses judged either.
        silenced = {f"devices[{d}].points" for d in unexpanded}
        bad_addressing = [
            p.field.removesuffix("addressing")
            for p in schema_problems
            if p.field.endswith("].addressing")
        ]
        problems.extend(
            problem
            for problem in schema_problems
            if problem.field not in silenced
            and not (
                problem.field.endswith(".address")
                and any(problem.field.startswith(f"{d}points[") for d in bad_addressing)
            )
        )
    if problems or config is None:
        # The configuration file's problems first, then those of each profile file.
        raise ConfigError(
            sorted(problems, key=lambda p: (p.file != locator.file, p.file, _position(p)))
        )
    config = _resolve_paths(config, path.parent)
    if check_models and config.stations:
        model_problems = _check_models(config, locator)
        if model_problems:
            raise ConfigError(model_problems)
    return config


def _check_models(config: Config, locator: _Locator) -> list[ConfigProblem]:
    """Load every station model as the agent will, so that a model the agent cannot use is a
    located problem now rather than a failed start."""
    try:
        from inference.session import ModelError
        from inference.vision.adapters import load_vision_model
    except ImportError as exc:
        message = (
            f"stations need the vision extra, which is not installed ({exc}): "
            "pip install 'shopfloor-agent[vision]'"
        )
        return [locator.problem(("stations",), message, at_key=True)]
    problems = []
    for s, station in enumerate(config.stations):
        for m, model in enumerate(station.models):
            try:
                load_vision_model(
                    model.path, threads=1, threshold=model.threshold, ng_classes=model.ng_classes
                )
            except ModelError as exc:
                problems.append(locator.problem(("stations", s, "models", m, "path"), str(exc)))
    return problems


# No valid configuration nests deeper than about 6 levels; a much deeper one is a mistake, and
# locating problems in it would exhaust the round-trip parser's recursion.
_MAX_DEPTH = 32


# A configuration of 10,000 points has about 100,000 values. YAML aliases can make a small file
# expand to billions (an "alias bomb"), which would keep every later step busy for hours.
_MAX_VALUES = 2_000_000


def _check_depth(document: dict[str, Any], text: str, file: str) -> None:
    values = 0
    for key, value in document.items():
        stack = [(value, 1)]
        while stack:
            node, depth = stack.pop()
            values += 1
            problem = None
            if depth > _MAX_DEPTH:
                problem = f"nests lists or mappings more than {_MAX_DEPTH} levels deep"
            elif values > _MAX_VALUES:
                problem = (
                    f"expands to more than {_MAX_VALUES:,} values (YAML aliases repeated "
                    "within each other?)"
                )
            if problem is not None:
                found = re.search(rf"^{re.escape(str(key))}\s*:", text, re.MULTILINE)
                line = text.count("\n", 0, found.start()) + 1 if found else 1
                raise ConfigError([ConfigProblem(file, line, 1, str(key), problem)])
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


# The file settings of mqtt.tls: resolved against the config file's directory, checked to exist.
_MQTT_TLS_FILES = ("ca_file", "cert_file", "key_file", "key_password_file")


def _resolve_paths(config: Config, base: Path) -> Config:
    data_dir = config.agent.data_dir
    if not data_dir.is_absolute():
        data_dir = _resolve(base, data_dir)
    password_file = config.mqtt.password_file
    if password_file is not None and not password_file.is_absolute():
        password_file = _resolve(base, password_file)
    mqtt_update: dict[str, Any] = {"password_file": password_file}
    tls = config.mqtt.tls
    if tls is not None:
        tls_update = {
            name: _resolve(base, path)
            for name in _MQTT_TLS_FILES
            if (path := getattr(tls, name)) is not None and not path.is_absolute()
        }
        mqtt_update["tls"] = tls.model_copy(update=tls_update)
    return config.model_copy(
        update={
            "agent": config.agent.model_copy(update={"data_dir": data_dir}),
            "mqtt": config.mqtt.model_copy(update=mqtt_update),
            "devices": [_resolve_device_paths(device, base) for device in config.devices],
            "cameras": [
                camera.model_copy(update={"folder": _resolve(base, camera.folder)})
                if camera.folder is not None
                else camera
                for camera in config.cameras
            ],
            "energy": [
                consumer.model_copy(
                    update={
                        "baseline": consumer.baseline.model_copy(
                            update={"model": _resolve(base, consumer.baseline.model)}
                        )
                    }
                )
                if consumer.baseline is not None
                else consumer
                for consumer in config.energy
            ],
            "stations": [
                station.model_copy(
                    update={
                        "models": [
                            model.model_copy(update={"path": _resolve(base, model.path)})
                            for model in station.models
                        ]
                    }
                )
                for station in config.stations
            ],
        }
    )


def _resolve_device_paths(device: AnyDevice, base: Path) -> AnyDevice:
    """An OPC UA device's certificate, key and password files, relative to the config file."""
    if not isinstance(device, OpcUaDevice):
        return device

    def resolved(model: _M, *names: str) -> _M:
        update = {}
        for name in names:
            path = getattr(model, name)
            if path is not None and not path.is_absolute():
                update[name] = _resolve(base, path)
        return model.model_copy(update=update) if update else model

    update: dict[str, Any] = {
        "security": resolved(device.security, "certificate", "private_key"),
    }
    if device.user is not None:
        update["user"] = resolved(device.user, "password_file", "certificate", "private_key")
    return device.model_copy(update=update)


class _Locator:
    """Finds the line and column of a field path, parsing the file with positions only when
    the first problem needs one."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.text = text
        self._document: CommentedMap | None = None
        # Points that a profile added, ("devices", d, "points", p), and the place in the file
        # that asked for them: the `quantities` item, or `profile` when it took them all.
        self.expanded: dict[Loc, Loc] = {}

    @property
    def document(self) -> CommentedMap:
        """The file parsed in round-trip mode, which keeps every node's position."""
        if self._document is None:
            self._document = _parse_with_positions(self.text, self.file)
        return self._document

    def problem(self, loc: Loc, message: str, *, at_key: bool = False) -> ConfigProblem:
        loc = self.expanded.get(loc[:4], loc)
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


def _problems_from_pydantic(
    exc: ValidationError, locator: _Locator, root: type[BaseModel] = Config
) -> list[ConfigProblem]:
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
                locator.problem(loc, _unknown_field(key, loc, locator.document, root), at_key=True)
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
                loc = (*loc, *error_object.path)
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
        if step == "[key]":
            continue  # a mapping key that failed validation: its position is the key's own
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


def _unknown_field(key: str, loc: Loc, document: CommentedMap, root: type[BaseModel]) -> str:
    allowed = _allowed_fields(loc[:-1], document, root)
    message = f"unknown field '{key}'"
    if allowed:
        close = difflib.get_close_matches(key, allowed, n=1)
        if close:
            message += f"; did you mean '{close[0]}'?"
        message += f" (allowed here: {', '.join(allowed)})"
    return message


def _allowed_fields(loc: Loc, document: CommentedMap, root: type[BaseModel]) -> list[str]:
    """The field names of the model found at `loc`, for 'did you mean' hints."""
    annotation: Any = root
    node: Any = document
    for step in loc:
        annotation = _pick_member(_unwrap(annotation), node)
        if typing.get_origin(annotation) is dict and isinstance(step, str):
            annotation = typing.get_args(annotation)[1]  # a mapping of names to models
            node = node.get(step) if isinstance(node, dict) else None
        elif isinstance(step, int):
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
        occupied: dict[str, list[tuple[int, int, str, object, str]]] = {}
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
            notation = str(point.get("addressing", device.get("addressing", "protocol")))
            span = _register_span(point, notation)
            if span is None:
                continue
            table, start, end = span
            bit = point.get("bit") if point.get("type") == "bool" else None
            for other_start, other_end, other_id, other_bit, other_notation in occupied.get(
                table, []
            ):
                # Bits of one register are separate points; only the same bit twice overlaps.
                if bit is not None and other_bit is not None and bit != other_bit:
                    continue
                if start <= other_end and other_start <= end:
                    problems.append(
                        locator.problem(
                            (*point_loc, "address"),
                            f"{_span(table, start, end, notation)} overlaps point '{other_id}' "
                            f"at {_span(table, other_start, other_end, other_notation)}",
                        )
                    )
                    break
            occupied.setdefault(table, []).append((start, end, str(point_id), bit, notation))
    problems.extend(_check_vision(document, locator, base, point_owner))
    problems.extend(_check_energy(document, locator, base, point_owner))
    mqtt = document.get("mqtt")
    if isinstance(mqtt, dict):
        files: list[tuple[Loc, object]] = [(("mqtt", "password_file"), mqtt.get("password_file"))]
        variables: list[tuple[Loc, object]] = [(("mqtt", "password_env"), mqtt.get("password_env"))]
        tls = mqtt.get("tls")
        if isinstance(tls, dict):
            files.extend((("mqtt", "tls", name), tls.get(name)) for name in _MQTT_TLS_FILES)
            variables.append((("mqtt", "tls", "key_password_env"), tls.get("key_password_env")))
        for loc, file in files:
            missing = _missing(base, file, "file")
            if missing:
                problems.append(locator.problem(loc, missing))
        for loc, variable in variables:
            if isinstance(variable, str) and variable not in os.environ:
                problems.append(locator.problem(loc, f"environment variable {variable} is not set"))
    return problems


# Station outputs that hold a number rather than a state: a coil cannot carry them.
_NUMBER_OUTPUTS = ("class_id", "error_code", "counter", "heartbeat")


def _check_vision(
    document: dict[str, Any], locator: _Locator, base: Path, point_owner: dict[str, Loc]
) -> list[ConfigProblem]:
    """Cameras and stations: unique names, existing files and folders, and station points
    that exist on a device (and, for outputs, that the device can write)."""
    problems: list[ConfigProblem] = []
    cameras = document.get("cameras")
    camera_names: dict[str, Loc] = {}
    for c, camera in enumerate(cameras if isinstance(cameras, list) else []):
        if not isinstance(camera, dict):
            continue
        problems.extend(_name_taken(camera, ("cameras", c, "name"), camera_names, locator))
        missing = _missing(base, camera.get("folder"), "folder")
        if missing:
            problems.append(locator.problem(("cameras", c, "folder"), missing))
    stations = document.get("stations")
    station_names: dict[str, Loc] = {}
    for s, station in enumerate(stations if isinstance(stations, list) else []):
        if not isinstance(station, dict):
            continue
        problems.extend(_name_taken(station, ("stations", s, "name"), station_names, locator))
        camera = station.get("camera")
        if isinstance(camera, str) and camera not in camera_names:
            known = ", ".join(camera_names) or "none is configured under cameras:"
            problems.append(
                locator.problem(
                    ("stations", s, "camera"), f"no camera named '{camera}' (cameras: {known})"
                )
            )
        references: list[tuple[Loc, object, str | None]] = [
            (("stations", s, "part_id"), station.get("part_id"), None),
            (("stations", s, "ack"), station.get("ack"), None),
        ]
        trigger = station.get("trigger")
        if isinstance(trigger, dict):
            references.append((("stations", s, "trigger", "point"), trigger.get("point"), None))
        outputs = station.get("outputs")
        if isinstance(outputs, dict):
            references.extend(
                (("stations", s, "outputs", key), value, key) for key, value in outputs.items()
            )
        for loc, point_id, output in references:
            if not isinstance(point_id, str):
                continue
            owner = point_owner.get(point_id)
            if owner is None:
                problems.append(
                    locator.problem(
                        loc,
                        f"no point with id '{point_id}': station points must be configured "
                        "on a device under devices:",
                    )
                )
            elif output is not None:
                refusal = _unwritable(document, owner, output)
                if refusal:
                    problems.append(locator.problem(loc, f"'{point_id}' {refusal}"))
        models = station.get("models")
        for m, model in enumerate(models if isinstance(models, list) else []):
            path = model.get("path") if isinstance(model, dict) else None
            missing = _missing(base, path, "model file")
            if missing:
                problems.append(locator.problem(("stations", s, "models", m, "path"), missing))
    return problems


def _check_energy(
    document: dict[str, Any], locator: _Locator, base: Path, point_owner: dict[str, Loc]
) -> list[ConfigProblem]:
    """Energy consumers: unique names, every point they read configured on a device, and the
    baseline model file present."""
    problems: list[ConfigProblem] = []
    consumers = document.get("energy")
    names: dict[str, Loc] = {}
    for e, consumer in enumerate(consumers if isinstance(consumers, list) else []):
        if not isinstance(consumer, dict):
            continue
        problems.extend(_name_taken(consumer, ("energy", e, "name"), names, locator))
        references: list[tuple[Loc, object]] = [
            (("energy", e, key), consumer.get(key)) for key in ("state_point", "parts", "rejects")
        ]
        for meter in ("energy", "power"):
            settings = consumer.get(meter)
            if isinstance(settings, dict):
                references.append((("energy", e, meter, "point"), settings.get("point")))
        baseline = consumer.get("baseline")
        if isinstance(baseline, dict):
            missing = _missing(base, baseline.get("model"), "model file")
            if missing:
                problems.append(locator.problem(("energy", e, "baseline", "model"), missing))
            features = baseline.get("features")
            for feature, source in (features if isinstance(features, dict) else {}).items():
                if source not in ENERGY_DERIVED_FEATURES:
                    references.append((("energy", e, "baseline", "features", feature), source))
        for loc, point_id in references:
            if isinstance(point_id, str) and point_id not in point_owner:
                problems.append(
                    locator.problem(
                        loc,
                        f"no point with id '{point_id}': "
                        + (
                            "a feature is a point configured on a device under devices:, or "
                            f"one of {', '.join(ENERGY_DERIVED_FEATURES)}"
                            if "features" in loc
                            else "energy points must be configured on a device under devices:"
                        ),
                    )
                )
    return problems


def _missing(base: Path, value: object, kind: str) -> str | None:
    """Why the file (or folder, when `kind` is "folder") a setting names cannot be used, or
    None if it exists (or the setting is not a usable path, which the schema reports)."""
    if not isinstance(value, str) or "\0" in value:
        return None
    resolved = _resolve(base, Path(value))
    shown = repr(value) + (f" ({resolved})" if str(resolved) != value else "")
    try:
        exists = resolved.is_dir() if kind == "folder" else resolved.is_file()
    except OSError as exc:  # a name too long, a directory the agent may not enter
        return f"{kind} {shown} cannot be checked: {exc.strerror or exc}"
    return None if exists else f"{kind} {shown} does not exist"


def _name_taken(
    entry: dict[str, Any], loc: Loc, names: dict[str, Loc], locator: _Locator
) -> list[ConfigProblem]:
    """A problem if the camera's or station's name at `loc` is already in `names` (which it
    then joins); `loc` is (section, index, "name")."""
    name = entry.get("name")
    if not isinstance(name, str):
        return []
    if name in names:
        kind = str(loc[0]).removesuffix("s")
        message = f"{kind} name '{name}' is already used by {_where(names[name], locator)}"
        return [locator.problem(loc, message)]
    names[name] = loc
    return []


def _unwritable(document: dict[str, Any], owner: Loc, output: str) -> str | None:
    """Why a station cannot write `output` to the point at `owner` (None if it can)."""
    device = document["devices"][owner[1]]
    point = device["points"][owner[3]]
    if device.get("driver") == "opcua":
        return None
    notation = point.get("addressing", device.get("addressing", "protocol"))
    if notation not in ("protocol", "one_based", "modicon"):
        return None  # reported at the point itself
    try:
        table, _ = parse_modbus_address(point.get("address", ""), notation)
    except ValueError:
        return None
    if table in ("input", "discrete"):
        return f"is in the read-only {table} table: the station cannot write its {output} there"
    if table == "holding" and point.get("type") == "bool":
        return (
            "is one bit of a holding register, which cannot be written without a "
            "read-modify-write race: use a coil or a whole register"
        )
    if table == "coil":
        if output in _NUMBER_OUTPUTS:
            return f"is a coil, but {output} is a number: use a holding register"
        return None
    value_type = str(point.get("type"))
    if not value_type.startswith(("int", "uint")):
        return f"is a {value_type} register; the station's {output} needs an integer type"
    if output == "class_id" and value_type.startswith("uint"):
        return (
            f"is {value_type}, but class_id is -1 when an inspection has no image: use a "
            "signed type such as int16"
        )
    return None


def _where(loc: Loc, locator: _Locator) -> str:
    shown = locator.expanded.get(loc[:4])
    if shown is not None:  # a point from a profile: name the quantity that asked for it
        return f"{_dotted(shown)} (line {locator.position(shown)[0]})"
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


def _span(table: str, start: int, end: int, notation: str) -> str:
    """Registers written the way the user wrote the address."""
    if notation == "modicon":
        digit = {"coil": "0", "discrete": "1", "input": "3", "holding": "4"}[table]
        first, last = f"{digit}{start + 1:04d}", f"{digit}{end + 1:04d}"
        return first if start == end else f"{first}-{last}"
    shift = 1 if notation == "one_based" else 0
    first_text = f"{table}:{start + shift}"
    return first_text if start == end else f"{first_text}-{end + shift}"


# -- device profiles ----------------------------------------------------------------------------


class UnknownProfile(ValueError):
    """A `profile:` value that names no shipped profile and no existing profile file."""


def profile_names(directory: Path = PROFILES_DIR) -> list[str]:
    """The names of the profiles shipped in `directory`, sorted."""
    return sorted(path.stem for path in directory.glob("*.yaml"))


def _is_path(reference: str) -> bool:
    return "/" in reference or os.sep in reference or reference.endswith((".yaml", ".yml"))


def profile_path(reference: str, base: Path) -> Path:
    """The file a `profile:` value refers to: a shipped profile's name, or a path to a profile
    file (relative paths are relative to `base`, the configuration file's directory).

    Raises `UnknownProfile` with a message for the user when there is no such profile.
    """
    if "\0" in reference:
        raise UnknownProfile("a profile name or path cannot contain a NUL character")
    if _is_path(reference):
        path = base / Path(reference).expanduser()
        if not path.is_file():
            shown = repr(reference)
            if str(_resolve(base, Path(reference))) != reference:
                shown += f" ({_resolve(base, Path(reference))})"
            raise UnknownProfile(f"profile file {shown} does not exist")
        return path
    names = profile_names()
    if reference in names:
        return PROFILES_DIR / f"{reference}.yaml"
    message = f"unknown profile '{reference}'"
    close = difflib.get_close_matches(reference.lower(), names, n=1, cutoff=0.5)
    if close:
        message += f"; did you mean '{close[0]}'?"
    shipped = ", ".join(names) or "none"
    raise UnknownProfile(
        f"{message} (shipped: {shipped}; or give the path of your own profile file, "
        "e.g. ./profiles/my-meter.yaml)"
    )


def load_profile(reference: str | Path, base: Path = Path()) -> Profile:
    """Read and validate a profile given by name (`eastron-sdm630`) or path.

    Raises `UnknownProfile` when there is no such profile, and `ConfigError` with every problem
    of a broken profile file, each naming that file, line and column.
    """
    if isinstance(reference, Path):
        reference = str(reference)
    return _read_profile(profile_path(reference, base))


def _read_profile(path: Path) -> Profile:
    file = str(path)
    try:
        text = _read_text(path)
        document = _parse_fast(text, file)
        if not isinstance(document, dict):
            message = "a profile must be a mapping with description, device and quantities"
            raise ConfigError([ConfigProblem(file, 1, 1, "(file)", message)])
        _check_depth(document, text, file)
    except RecursionError:
        message = "the file nests lists or mappings too deeply to be a profile"
        raise ConfigError([ConfigProblem(file, 1, 1, "(yaml)", message)]) from None
    locator = _Locator(file, text)
    try:
        return Profile.model_validate(document)
    except ValidationError as exc:
        problems = _problems_from_pydantic(exc, locator, Profile)
        raise ConfigError(sorted(problems, key=_position)) from None


class _ProfileExpander:
    """Turns each device's `profile` + `quantities` into points, in the document itself.

    Each profile file is read once per configuration, however many devices use it, so its
    problems are reported once too.
    """

    def __init__(self, locator: _Locator, base: Path) -> None:
        self.locator = locator
        self.base = base
        self.problems: list[ConfigProblem] = []
        # Devices without their profile's points: their "no points" error is a consequence.
        self.unexpanded: set[int] = set()
        self._loaded: dict[Path, Profile | None] = {}

    def expand(self, document: dict[str, Any]) -> None:
        """Expand every device of the document that names a profile."""
        devices = document.get("devices")
        if not isinstance(devices, list):
            return
        for d, device in enumerate(devices):
            if isinstance(device, dict):
                devices[d] = self._device(d, device)

    def _profile(self, reference: str) -> Profile | None:
        path = profile_path(reference, self.base)
        key = _resolve(Path(), path)
        if key not in self._loaded:
            try:
                self._loaded[key] = _read_profile(path)
            except ConfigError as exc:
                self.problems.extend(exc.problems)
                self._loaded[key] = None
        return self._loaded[key]

    def _device(self, d: int, device: dict[str, Any]) -> dict[str, Any]:
        reference = device.get("profile")
        if reference is None:
            if device.get("quantities") is not None:
                self.unexpanded.add(d)
                self._problem(
                    (d, "quantities"),
                    "quantities are read from a profile: add profile: NAME "
                    f"(shipped: {', '.join(profile_names()) or 'none'})",
                )
            return device
        self.unexpanded.add(d)  # until it is done
        if not isinstance(reference, str):
            return device  # the schema reports the wrong type
        try:
            profile = self._profile(reference)
        except UnknownProfile as exc:
            self._problem((d, "profile"), str(exc))
            return device
        name, own = device.get("name"), device.get("points", [])
        chosen = self._chosen(d, device.get("quantities"), reference, profile)
        if profile is None or chosen is None or not isinstance(name, str):
            return device  # the schema reports a missing name
        if not isinstance(own, list):
            self.unexpanded.discard(d)  # points that are not a list are the problem
            return device
        points = list(own)
        for loc, quantity in chosen:
            self.locator.expanded[("devices", d, "points", len(points))] = loc
            points.append(_point(name, quantity, profile))
        if len(chosen) == len(device.get("quantities") or chosen):
            self.unexpanded.discard(d)
        expanded = {**device, "points": points}
        # A profile's limits are the meter's: the device's own setting applies only if lower.
        for field, limit in profile.device.model_dump(exclude_none=True).items():
            own_value = device.get(field)
            if own_value is None or (
                isinstance(own_value, int) and not isinstance(own_value, bool) and own_value > limit
            ):
                expanded[field] = limit
        return expanded

    def _chosen(
        self, d: int, quantities: Any, reference: str, profile: Profile | None
    ) -> list[tuple[Loc, str]] | None:
        """(where it was asked for, quantity) for each known quantity the device asks for, or
        None when the list is unusable. Without `quantities` the device reads them all."""
        if profile is None:
            return None
        available = list(profile.quantities)
        if quantities is None:
            return [(("devices", d, "profile"), quantity) for quantity in available]
        if not isinstance(quantities, list):
            return None  # the schema reports the wrong type
        if not quantities:
            self._problem(
                (d, "quantities"),
                f"lists no quantity: leave quantities out to read all {len(available)} "
                f"quantities of profile {reference}, or name the ones to read",
            )
            return None
        chosen: list[tuple[Loc, str]] = []
        seen: set[str] = set()
        for q, quantity in enumerate(quantities):
            if not isinstance(quantity, str):
                continue  # the schema reports the wrong type
            if quantity in seen:
                self._problem((d, "quantities", q), f"quantity '{quantity}' is listed twice")
            elif quantity not in profile.quantities:
                message = f"unknown quantity '{quantity}' in profile {reference}"
                close = difflib.get_close_matches(quantity, available, n=1)
                if close:
                    message += f"; did you mean '{close[0]}'?"
                message += f" (available: {', '.join(available)})"
                self._problem((d, "quantities", q), message)
            else:
                chosen.append((("devices", d, "quantities", q), quantity))
            seen.add(quantity)
        return chosen

    def _problem(self, loc: Loc, message: str) -> None:
        self.problems.append(self.locator.problem(("devices", *loc), message))


def _point(device_name: str, quantity: str, profile: Profile) -> dict[str, Any]:
    """The point, as it would be written in the configuration, that reads one quantity."""
    spec = profile.quantities[quantity]
    point: dict[str, Any] = {
        "id": f"{device_name}.{quantity}",
        "address": spec.address,
        "type": spec.type,
        "order": spec.order,
        "scale": spec.scale,
        # Profiles always give protocol addresses, whatever the device's own points use.
        "addressing": "protocol",
    }
    if spec.unit is not None:
        point["unit"] = spec.unit
    if spec.description is not None:
        point["description"] = spec.description
    if spec.unavailable is not None:
        point["unavailable"] = list(spec.unavailable)
    return point
