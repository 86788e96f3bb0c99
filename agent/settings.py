"""The configuration schema: pydantic models validated once, then passed around typed.

Loading (YAML with line numbers, error reporting, cross-field checks) lives in `agent.config`.
Nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

__all__ = [
    "AgentSettings",
    "Config",
    "DeviceSettings",
    "FieldError",
    "ModbusPoint",
    "ModbusTcpDevice",
    "MqttSettings",
    "OutboxSettings",
    "parse_duration",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class FieldError(ValueError):
    """A check across fields that is really about one of them: the error points at `field`."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def parse_duration(value: object) -> float:
    """Turn `250ms`, `1s`, `5m`, `1h` or a plain number of seconds into seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 250ms, 1s, 5m or 1h, not a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        seconds = math.nan
    if math.isfinite(seconds):
        return seconds
    raise ValueError(f"expected a duration such as 250ms, 1s, 5m or 1h, got {value!r}")


def _format_seconds(seconds: float) -> str:
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"


def _duration(minimum: float, maximum: float) -> object:
    def check(seconds: float) -> float:
        if seconds < minimum:
            raise ValueError(
                f"must be at least {_format_seconds(minimum)}, got {_format_seconds(seconds)}"
            )
        if seconds > maximum:
            raise ValueError(
                f"must be at most {_format_seconds(maximum)}, got {_format_seconds(seconds)}"
            )
        return seconds

    return AfterValidator(check)


def _check_host(host: str) -> str:
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    label = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
    if not host or len(host) > 253 or not all(label.match(part) for part in labels):
        raise ValueError(f"{host!r} is neither an IP address nor a valid host name")
    return host


_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
# MQTT topic levels: no wildcards, no empty levels, no leading or trailing slash.
_PREFIX_RE = re.compile(r"^[^/+#\s]+(/[^/+#\s]+)*$")


def _check_topic_prefix(prefix: str) -> str:
    if not _PREFIX_RE.match(prefix):
        raise ValueError(
            f"{prefix!r} is not a valid topic prefix: MQTT wildcards (+ #), spaces, empty "
            "levels and a leading or trailing / are not allowed"
        )
    return prefix


def _check_name(name: str) -> str:
    if not re.match(_NAME_RE, name):
        raise ValueError(
            f"{name!r} is not a valid name: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return name


Seconds = Annotated[float, BeforeValidator(parse_duration)]
Host = Annotated[str, AfterValidator(_check_host)]


def _check_path(path: Path) -> Path:
    if "\0" in str(path):
        raise ValueError("a path cannot contain a NUL character")
    return path


FilePath = Annotated[Path, AfterValidator(_check_path)]
Port = Annotated[int, Field(ge=1, le=65535)]
Name = Annotated[str, Field(max_length=64), AfterValidator(_check_name)]


class _Strict(BaseModel):
    # defer_build: `shopfloor run` builds its Config from already validated JSON with
    # `Config.from_validated()` and never needs the validators, whose construction alone costs
    # about 5 MiB of memory (see agent/cli.py, _run).
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True, allow_inf_nan=False)


class AgentSettings(_Strict):
    """Who this agent is and where it keeps its state."""

    id: Name = Field(description="Agent id: the last level of every topic and the MQTT client id.")
    site: str | None = None
    data_dir: FilePath = Field(
        default=Path("/var/lib/shopfloor"),
        description="Outbox and other state; relative paths are relative to the config file.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class MqttSettings(_Strict):
    """The platform's broker and how to talk to it."""

    host: Host
    port: Port = 1883
    client_id: Name | None = None
    version: Annotated[Literal["5", "3.1.1"], BeforeValidator(str)] = "5"
    username: str | None = None
    password_file: FilePath | None = None
    password_env: str | None = None
    topic_prefix: Annotated[str, AfterValidator(_check_topic_prefix)] = "shopfloor"
    # No QoS 0: the outbox deletes rows on the broker's acknowledgement, which QoS 0 never
    # sends, and "no data lost" is the agent's promise.
    qos: Literal[1, 2] = 1
    keepalive: Annotated[Seconds, _duration(5, 3600)] = 30.0
    max_inflight: Annotated[int, Field(ge=1, le=100)] = 20
    max_payload_bytes: Annotated[int, Field(ge=1024, le=256 * 1024 * 1024)] = 128 * 1024
    health_interval: Annotated[Seconds, _duration(1, 3600)] = 30.0
    reconnect_min: Annotated[Seconds, _duration(0.1, 60)] = 1.0
    reconnect_max: Annotated[Seconds, _duration(1, 3600)] = 60.0

    @model_validator(mode="after")
    def _one_password_source(self) -> MqttSettings:
        if self.password_file is not None and self.password_env is not None:
            raise FieldError("password_env", "give password_file or password_env, not both")
        if (self.password_file or self.password_env) and not self.username:
            field = "password_file" if self.password_file else "password_env"
            raise FieldError(field, "a password needs a username: add mqtt.username")
        return self


class OutboxSettings(_Strict):
    """The SQLite store-and-forward buffer."""

    path: FilePath = Field(
        default=Path("outbox.db"), description="Relative to agent.data_dir unless absolute."
    )
    commit_interval: Annotated[Seconds, _duration(0.01, 10)] = 0.25
    commit_rows: Annotated[int, Field(ge=1, le=100_000)] = 1000
    # NORMAL never corrupts the file; on power loss it may roll back the last commits (at most
    # about one commit_interval of samples). FULL fsyncs every commit and costs SD-card wear.
    synchronous: Literal["normal", "full"] = "normal"


ModbusTable = Literal["coil", "discrete", "input", "holding"]
ModbusType = Literal["bool", "int16", "uint16", "int32", "uint32", "float32"]
WordOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]

REGISTER_COUNT: dict[str, int] = {
    "bool": 1,
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
}
_TABLES = ("coil", "discrete", "input", "holding")


def _check_modbus_address(value: str) -> str:
    table, sep, number = str(value).partition(":")
    if not sep or table not in _TABLES or not number.isdigit():
        raise ValueError(
            f"expected TABLE:ADDRESS with TABLE one of {', '.join(_TABLES)} and a 0-based "
            f"protocol address, e.g. holding:100; got {value!r}"
        )
    if int(number) > 65535:
        raise ValueError(f"address {number} is beyond the Modbus range 0-65535")
    return f"{table}:{int(number)}"


class ModbusPoint(_Strict):
    """One value read from a Modbus device."""

    id: Annotated[str, Field(max_length=200), AfterValidator(_check_name)]
    address: Annotated[str, AfterValidator(_check_modbus_address)]
    type: ModbusType | None = None
    order: WordOrder = "ABCD"
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None
    description: str | None = None
    deadband: Annotated[float, Field(ge=0)] | None = None
    deadband_percent: Annotated[float, Field(gt=0, le=100)] | None = None
    heartbeat: Annotated[Seconds, _duration(0.1, 86400)] | None = None

    @property
    def table(self) -> ModbusTable:
        """Which of the four Modbus tables the point lives in."""
        table = self.address.split(":", 1)[0]
        assert table in _TABLES
        return table  # type: ignore[return-value]

    @property
    def register(self) -> int:
        """The 0-based protocol address."""
        return int(self.address.split(":", 1)[1])

    @property
    def value_type(self) -> ModbusType:
        """The declared type, or bool for the bit tables."""
        return self.type or "bool"

    @property
    def width(self) -> int:
        """Registers (or bits) the point occupies."""
        return REGISTER_COUNT[self.value_type]

    @model_validator(mode="after")
    def _type_fits_table(self) -> ModbusPoint:
        bit_table = self.table in ("coil", "discrete")
        if bit_table and self.type not in (None, "bool"):
            raise FieldError(
                "type", f"a {self.table} holds a single bit: its type can only be bool"
            )
        if not bit_table and self.type is None:
            raise FieldError(
                "type",
                "a register point needs a type (int16, uint16, int32, uint32 or float32)",
            )
        if not bit_table and self.type == "bool":
            raise FieldError(
                "type", "bool is for coil and discrete points; read a register as uint16 instead"
            )
        if self.deadband is not None and self.deadband_percent is not None:
            raise FieldError("deadband_percent", "give deadband or deadband_percent, not both")
        if self.heartbeat is not None and self.deadband is None and self.deadband_percent is None:
            raise FieldError(
                "heartbeat",
                "heartbeat only matters with a deadband: without one every poll is published",
            )
        return self


class ModbusTcpDevice(_Strict):
    """A Modbus TCP server (a PLC, a meter, a gateway) and the points read from it."""

    name: Name
    driver: Literal["modbus_tcp"]
    host: Host
    port: Port = 502
    unit_id: Annotated[int, Field(ge=0, le=255)] = 1
    interval: Annotated[Seconds, _duration(0.01, 86400)] = 1.0
    timeout: Annotated[Seconds, _duration(0.05, 60)] = 1.0
    max_registers: Annotated[int, Field(ge=1, le=125)] = 125
    max_bits: Annotated[int, Field(ge=1, le=2000)] = 2000
    max_gap: Annotated[int, Field(ge=0, le=124)] = 16
    # Reconnect attempts back off exponentially with full jitter, up to this delay.
    reconnect_max: Annotated[Seconds, _duration(0.1, 600)] = 10.0
    points: Annotated[list[ModbusPoint], Field(min_length=1)]


DeviceSettings = Annotated[ModbusTcpDevice, Field(discriminator="driver")]


class Config(_Strict):
    """The whole agent configuration file."""

    agent: AgentSettings
    mqtt: MqttSettings
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    devices: Annotated[list[DeviceSettings], Field(min_length=1)]

    @classmethod
    def from_validated(cls, data: dict[str, Any]) -> Config:
        """Rebuild a Config from `model_dump(mode="json")` of one that passed validation,
        without validating again. Only for data this program validated itself."""
        agent, mqtt, outbox = data["agent"], data["mqtt"], data["outbox"]
        password_file = mqtt["password_file"]
        return cls.model_construct(
            agent=AgentSettings.model_construct(**{**agent, "data_dir": Path(agent["data_dir"])}),
            mqtt=MqttSettings.model_construct(
                **{**mqtt, "password_file": None if password_file is None else Path(password_file)}
            ),
            outbox=OutboxSettings.model_construct(**{**outbox, "path": Path(outbox["path"])}),
            devices=[
                ModbusTcpDevice.model_construct(
                    **{
                        **device,
                        "points": [ModbusPoint.model_construct(**p) for p in device["points"]],
                    }
                )
                for device in data["devices"]
            ],
        )

    @property
    def client_id(self) -> str:
        """The MQTT client id: configured, else the agent id."""
        return self.mqtt.client_id or self.agent.id

    @property
    def outbox_path(self) -> Path:
        """The outbox file, resolved against the data directory."""
        return self.agent.data_dir / self.outbox.path
