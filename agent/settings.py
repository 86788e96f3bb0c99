"""The configuration schema: pydantic models validated once, then passed around typed.

Loading (YAML with line numbers, error reporting, cross-field checks) lives in `agent.config`.
Nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
import math
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

__all__ = [
    "ENERGY_DERIVED_FEATURES",
    "AgentSettings",
    "CameraSettings",
    "Config",
    "DeviceSettings",
    "EnergyBaselineSettings",
    "EnergyCounterSettings",
    "EnergyPowerSettings",
    "EnergySettings",
    "EnergyShift",
    "FieldError",
    "ModbusDevice",
    "ModbusPoint",
    "ModbusRtuDevice",
    "ModbusRtuOverTcpDevice",
    "ModbusTcpDevice",
    "MqttSettings",
    "MqttTls",
    "OpcUaDevice",
    "OpcUaPoint",
    "OpcUaSecurity",
    "OpcUaUser",
    "OutboxSettings",
    "RegionOfInterest",
    "StationImages",
    "StationModel",
    "StationOutputs",
    "StationSettings",
    "StationTrigger",
    "parse_duration",
    "parse_modbus_address",
    "parse_size",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$")
_UNIT_BYTES = {
    None: 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}


class FieldError(ValueError):
    """A check across fields that is really about one of them: the error points at `field`
    (a name, or a path such as `("devices", 2, "baudrate")` below the model that raises it)."""

    def __init__(self, field: str | tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = (field,) if isinstance(field, str) else field


def parse_duration(value: object) -> float:
    """Turn `250ms`, `1s`, `5m`, `1h` or a plain number of seconds into seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 250ms, 1s, 5m, 1h or 7d, not a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        seconds = math.nan
    if math.isfinite(seconds):
        return seconds
    raise ValueError(f"expected a duration such as 250ms, 1s, 5m, 1h or 7d, got {value!r}")


def parse_size(value: object) -> int:
    """Turn `512MiB`, `2GB`, `64KiB` or a plain number of bytes into bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 64KiB, 512MiB or 2GB, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and (match := _SIZE.match(value)):
        return int(float(match.group(1)) * _UNIT_BYTES[match.group(2)])
    raise ValueError(f"expected a size such as 64KiB, 512MiB or 2GB, got {value!r}")


def _size(minimum: int, maximum: int) -> object:
    def check(size: int) -> int:
        if not minimum <= size <= maximum:
            raise ValueError(
                f"must be between {_format_bytes(minimum)} and {_format_bytes(maximum)}, "
                f"got {_format_bytes(size)}"
            )
        return size

    return AfterValidator(check)


def _format_bytes(size: int) -> str:
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor:
            return f"{size / factor:g}{unit}"
    return f"{size}B"


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
Bytes = Annotated[int, BeforeValidator(parse_size)]
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


# The IANA ports of MQTT and of MQTT over TLS.
MQTT_PORT = 1883
MQTT_TLS_PORT = 8883


class MqttTls(_Strict):
    """TLS to the broker. The broker's certificate and its host name are always checked; there
    is no switch to turn that off (see `server_name` for a broker reached by an IP address)."""

    # The CA certificate(s), PEM, that signed the broker's certificate; without it, the CAs the
    # operating system trusts.
    ca_file: FilePath | None = None
    # Mutual TLS: the agent's own certificate (PEM, may also hold the key) and its private key.
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    # Only for an encrypted private key: its password, from a file or an environment variable.
    key_password_file: FilePath | None = None
    key_password_env: str | None = None
    # The name the broker's certificate must carry, when it differs from `mqtt.host` (a broker
    # reached by IP address whose certificate names broker.example).
    server_name: Host | None = None
    min_version: Annotated[Literal["1.2", "1.3"], BeforeValidator(str)] = "1.2"

    @model_validator(mode="after")
    def _client_certificate(self) -> MqttTls:
        if self.key_file is not None and self.cert_file is None:
            raise FieldError("key_file", "a key_file needs its certificate: add cert_file")
        if self.key_password_file is not None and self.key_password_env is not None:
            raise FieldError(
                "key_password_env", "give key_password_file or key_password_env, not both"
            )
        if (self.key_password_file or self.key_password_env) and self.cert_file is None:
            field = "key_password_file" if self.key_password_file else "key_password_env"
            raise FieldError(field, "a key password needs the certificate and key: add cert_file")
        return self


class MqttSettings(_Strict):
    """The platform's broker and how to talk to it."""

    host: Host
    # 1883, or 8883 when `tls` is given (see _tls_port).
    port: Port = MQTT_PORT
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
    # The backlog (records that waited in the outbox) drains behind live data at most this
    # fast, so that it does not saturate the uplink; 0: no limit.
    backlog_messages_per_s: Annotated[float, Field(ge=0, le=100_000)] = 100.0
    backlog_bytes_per_s: Annotated[Bytes, _size(0, 2**40)] = 4 * 2**20
    tls: MqttTls | None = None

    @model_validator(mode="before")
    @classmethod
    def _tls_port(cls, data: Any) -> Any:
        """Without a port, TLS goes to 8883, the port brokers serve MQTT over TLS on."""
        if isinstance(data, dict) and data.get("tls") is not None and "port" not in data:
            return {**data, "port": MQTT_TLS_PORT}
        return data

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
    # Bounds. Beyond them the oldest metrics are dropped (events last), counted, logged once
    # per episode and reported as an event. Defaults for an 8-16 GB SD card.
    max_bytes: Annotated[Bytes, _size(64 * 2**10, 2**40)] = 2**30
    ttl: Annotated[Seconds, _duration(60, 366 * 86400)] = 7 * 86400.0
    min_free_disk: Annotated[Bytes, _size(0, 2**40)] = 256 * 2**20


ModbusTable = Literal["coil", "discrete", "input", "holding"]
ModbusType = Literal[
    "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]
WordOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]
# How the addresses of a device's points are written:
#   protocol   holding:99   the 0-based number sent in the request (what this agent prints)
#   one_based  holding:100  the 1-based register number many manuals print (protocol + 1)
#   modicon    40100        the 5- or 6-digit reference: table digit, then the 1-based number
Addressing = Literal["protocol", "one_based", "modicon"]

REGISTER_COUNT: dict[str, int] = {
    "bool": 1,
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "int64": 4,
    "uint64": 4,
    "float32": 2,
    "float64": 4,
}
_TABLES = ("coil", "discrete", "input", "holding")
INTEGER_TYPES = ("int16", "uint16", "int32", "uint32", "int64", "uint64")
_MODICON_TABLE = {"0": "coil", "1": "discrete", "3": "input", "4": "holding"}


def parse_modbus_address(
    value: object, addressing: Addressing = "protocol"
) -> tuple[ModbusTable, int]:
    """(table, 0-based protocol address) of an address written in the given notation."""
    text = str(value).strip()
    if addressing == "modicon":
        if text.isdigit() and len(text) < 5:
            raise ValueError(
                f"{text} is too short for a Modicon reference; coil references start with 0, "
                'so write them in quotes (address: "00001"), or YAML reads them as numbers'
            )
        if not text.isdigit() or len(text) not in (5, 6) or text[0] not in _MODICON_TABLE:
            raise ValueError(
                "with addressing: modicon an address is a 5- or 6-digit reference whose first "
                "digit names the table (0 coil, 1 discrete input, 3 input, 4 holding register), "
                f"e.g. 40001 or 400001; got {text!r}"
            )
        number = int(text[1:])
        if number < 1:
            raise ValueError(f"{text} is not a register: Modicon references count from 1")
        if number > 65536:
            raise ValueError(f"{text} is beyond the Modbus range (at most {text[0]}65536)")
        return _MODICON_TABLE[text[0]], number - 1  # type: ignore[return-value]
    table, sep, number_text = text.partition(":")
    if not sep or table not in _TABLES or not number_text.isdigit():
        hint = (
            "1-based register number" if addressing == "one_based" else "0-based protocol address"
        )
        example = "holding:101" if addressing == "one_based" else "holding:100"
        raise ValueError(
            f"expected TABLE:ADDRESS with TABLE one of {', '.join(_TABLES)} and a {hint}, "
            f"e.g. {example}; got {text!r}"
        )
    number = int(number_text)
    if addressing == "one_based":
        if number < 1:
            raise ValueError(
                "with addressing: one_based registers count from 1; use addressing: protocol "
                "for 0-based addresses"
            )
        number -= 1
    if number > 65535:
        limit = 65536 if addressing == "one_based" else 65535
        raise ValueError(f"address {number_text} is beyond the Modbus range (at most {limit})")
    return table, number  # type: ignore[return-value]


def _check_publishing(
    deadband: float | None, deadband_percent: float | None, heartbeat: float | None
) -> None:
    """A point's deadband and heartbeat settings agree with each other."""
    if deadband is not None and deadband_percent is not None:
        raise FieldError("deadband_percent", "give deadband or deadband_percent, not both")
    if heartbeat is not None and deadband is None and deadband_percent is None:
        raise FieldError(
            "heartbeat",
            "heartbeat only matters with a deadband: without one every poll is published",
        )


def _check_scale(scale: float) -> float:
    if scale == 0:
        raise ValueError("scale 0 would turn every value into 0 (and writes impossible)")
    return scale


class ModbusPoint(_Strict):
    """One value read from a Modbus device."""

    id: Annotated[str, Field(max_length=200), AfterValidator(_check_name)]
    address: Annotated[str, BeforeValidator(str)]
    type: ModbusType | None = None
    order: WordOrder = "ABCD"
    bit: Annotated[int, Field(ge=0, le=15)] | None = None
    length: Annotated[int, Field(ge=1, le=250)] | None = None
    byte_swap: bool = False
    scale: Annotated[float, AfterValidator(_check_scale)] = 1.0
    offset: float = 0.0
    # Raw values the device sends when it has no value (e.g. 0x7FFFFFFF for "not supported"):
    # published as bad with the reason "not available", never as a number.
    unavailable: list[int] | None = None
    unit: str | None = None
    description: str | None = None
    deadband: Annotated[float, Field(ge=0)] | None = None
    deadband_percent: Annotated[float, Field(gt=0, le=100)] | None = None
    heartbeat: Annotated[Seconds, _duration(0.1, 86400)] | None = None
    # Filled in from the device when not given; kept on the point so it stands on its own.
    addressing: Addressing = "protocol"

    @property
    def table(self) -> ModbusTable:
        """Which of the four Modbus tables the point lives in."""
        return parse_modbus_address(self.address, self.addressing)[0]

    @property
    def register(self) -> int:
        """The 0-based protocol address."""
        return parse_modbus_address(self.address, self.addressing)[1]

    @property
    def protocol_address(self) -> str:
        """`table:address` with the 0-based protocol address, as the agent prints it."""
        table, register = parse_modbus_address(self.address, self.addressing)
        return f"{table}:{register}" if self.bit is None else f"{table}:{register}.{self.bit}"

    @property
    def value_type(self) -> ModbusType:
        """The declared type, or bool for the bit tables."""
        return self.type or "bool"

    @property
    def width(self) -> int:
        """Registers (or bits) the point occupies."""
        if self.type == "string":
            return ((self.length or 0) + 1) // 2
        return REGISTER_COUNT[self.value_type]

    @model_validator(mode="after")
    def _type_fits_table(self) -> ModbusPoint:
        try:
            table, register = parse_modbus_address(self.address, self.addressing)
        except ValueError as exc:
            raise FieldError("address", str(exc)) from None
        bit_table = table in ("coil", "discrete")
        if bit_table and self.type not in (None, "bool"):
            raise FieldError("type", f"a {table} holds a single bit: its type can only be bool")
        if not bit_table and self.type is None:
            raise FieldError(
                "type",
                "a register point needs a type: bool (with bit), int16, uint16, int32, uint32, "
                "int64, uint64, float32, float64 or string (with length)",
            )
        if not bit_table and self.type == "bool" and self.bit is None:
            raise FieldError(
                "bit", "a bool read from a register needs the bit number: 0 (lowest) to 15"
            )
        if self.bit is not None and (bit_table or self.type != "bool"):
            raise FieldError("bit", "bit is only for a bool read from one bit of a register")
        if self.type == "string" and self.length is None:
            raise FieldError("length", "a string point needs its length in characters")
        if not bit_table and register + self.width - 1 > 65535:
            raise FieldError(
                "address",
                f"a {self.type} takes {self.width} registers: {table}:{register} runs past the "
                "last Modbus address, 65535",
            )
        if self.type != "string" and (self.length is not None or self.byte_swap):
            field = "length" if self.length is not None else "byte_swap"
            raise FieldError(field, f"{field} is only for string points")
        if self.unavailable is not None and self.type not in INTEGER_TYPES:
            raise FieldError(
                "unavailable", "unavailable lists raw integers: it is for integer types only"
            )
        if self.type in ("bool", "string") and (self.scale != 1.0 or self.offset != 0.0):
            field = "scale" if self.scale != 1.0 else "offset"
            raise FieldError(field, f"a {self.type} point cannot be scaled")
        _check_publishing(self.deadband, self.deadband_percent, self.heartbeat)
        return self


def _inherit_addressing(data: Any) -> Any:
    """Give each point the device's addressing unless it names its own."""
    if not isinstance(data, dict):
        return data
    addressing = data.get("addressing", "protocol")
    points = data.get("points")
    if not isinstance(points, list) or addressing not in typing.get_args(Addressing):
        return data  # an invalid addressing is reported once, on the device
    inherited = [
        {**point, "addressing": addressing}
        if isinstance(point, dict) and "addressing" not in point
        else point
        for point in points
    ]
    return {**data, "points": inherited}


class _ModbusDevice(_Strict):
    """What every Modbus device has, whatever carries its requests."""

    name: Name
    unit_id: Annotated[int, Field(ge=0, le=255)] = 1
    interval: Annotated[Seconds, _duration(0.01, 86400)] = 1.0
    timeout: Annotated[Seconds, _duration(0.05, 60)] = 1.0
    # Requests that time out are sent again this many times before the block is BAD.
    retries: Annotated[int, Field(ge=0, le=5)] = 0
    # Quiet time on the line before each request, for bridges and slow devices that need it.
    pause: Annotated[Seconds, _duration(0, 10)] = 0.0
    max_registers: Annotated[int, Field(ge=1, le=125)] = 125
    max_bits: Annotated[int, Field(ge=1, le=2000)] = 2000
    max_gap: Annotated[int, Field(ge=0, le=124)] = 16
    addressing: Addressing = "protocol"
    # Some devices implement only FC 15/16; "multiple" uses them for single values too.
    write_functions: Literal["single", "multiple"] = "single"
    # Reconnect attempts back off exponentially with full jitter, up to this delay.
    reconnect_max: Annotated[Seconds, _duration(0.1, 600)] = 10.0
    profile: str | None = None
    quantities: list[str] | None = None
    points: list[ModbusPoint] = Field(default_factory=list)

    _addressing_to_points = model_validator(mode="before")(_inherit_addressing)

    @model_validator(mode="after")
    def _has_points(self) -> _ModbusDevice:
        if not self.points:
            raise FieldError("points", "needs at least 1 entry (or a profile with quantities)")
        for index, point in enumerate(self.points):
            if point.table in ("input", "holding") and point.width > self.max_registers:
                field = "length" if point.type == "string" else "type"
                raise FieldError(
                    ("points", index, field),
                    f"a {point.type} takes {point.width} registers, more than this device's "
                    f"max_registers ({self.max_registers}) allows in one request; a value is "
                    "never split across requests",
                )
        return self

    @property
    def line(self) -> str:
        """What carries this device's requests: devices on the same line take turns."""
        raise NotImplementedError


class ModbusTcpDevice(_ModbusDevice):
    """A Modbus TCP server (a PLC, a meter, a gateway) and the points read from it."""

    driver: Literal["modbus_tcp"]
    host: Host
    port: Port = 502

    @property
    def line(self) -> str:
        """`tcp://host:port`: units behind one gateway share its connection."""
        return f"tcp://{self.host}:{self.port}"


class ModbusRtuOverTcpDevice(_ModbusDevice):
    """A serial Modbus device behind a serial-to-Ethernet converter that forwards RTU frames."""

    driver: Literal["modbus_rtu_tcp"]
    host: Host
    port: Port = 502

    @property
    def line(self) -> str:
        """`rtu+tcp://host:port`: the converter's serial bus."""
        return f"rtu+tcp://{self.host}:{self.port}"


BAUD_RATES = (1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200, 230400)


def _check_baudrate(value: int) -> int:
    if value not in BAUD_RATES:
        raise ValueError(
            f"{value} is not a serial speed: use one of {', '.join(map(str, BAUD_RATES))}"
        )
    return value


class ModbusRtuDevice(_ModbusDevice):
    """A Modbus RTU device on a serial port (RS-485 or RS-232)."""

    driver: Literal["modbus_rtu"]
    serial_port: Annotated[FilePath, Field(description="e.g. /dev/ttyUSB0")]
    baudrate: Annotated[int, AfterValidator(_check_baudrate)] = 9600
    parity: Literal["none", "even", "odd"] = "none"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8

    @property
    def line(self) -> str:
        """The serial port: devices on one port take turns."""
        return f"serial://{self.serial_port}"


ModbusDevice = ModbusTcpDevice | ModbusRtuOverTcpDevice | ModbusRtuDevice

# The node id forms the configuration accepts (also checked by `shopfloor browse --node`).
NODE_ID = re.compile(r"^(nsu=[^;]+;|ns=\d+;)?(i=\d+|s=.+|g=[0-9a-fA-F-]{36}|b=.+)$")
OPCUA_ENDPOINT = re.compile(r"^opc\.tcp://[^\s/:]+(:\d{1,5})?(/\S*)?$")
# A browse path from the Objects folder: /Objects/Line1/Press3/Temp. A segment may carry a
# namespace index (2:Temp) where two children share a name in different namespaces.
_BROWSE_PATH = re.compile(r"^/Objects(/[^/]+)+$")


def _check_node_id(text: str) -> str:
    if NODE_ID.match(text):
        index = re.match(r"^ns=(\d+);", text)
        if index and int(index.group(1)) > 65535:
            raise ValueError(f"namespace index {index.group(1)} is beyond 65535, in {text!r}")
        number = re.search(r"(?:^|;)i=(\d+)$", text)
        if number and int(number.group(1)) > 2**32 - 1:
            raise ValueError(f"numeric identifier {number.group(1)} is beyond 2^32-1, in {text!r}")
        return text
    if not _BROWSE_PATH.match(text):
        raise ValueError(
            "expected an OPC UA node id such as ns=2;s=Line1.Temp, ns=3;i=1001, "
            "nsu=urn:vendor:plc;s=Line1.Temp, g=<GUID> or b=<opaque>, or a browse path such "
            f"as /Objects/Line1/Press3/Temp; got {text!r}"
        )
    return text


class OpcUaPoint(_Strict):
    """One variable read from an OPC UA server."""

    id: Annotated[str, Field(max_length=200), AfterValidator(_check_name)]
    # A namespace URI (nsu=) or a browse path is resolved to a node id at every connect, so a
    # server whose namespace indexes move after an update still maps correctly.
    node: Annotated[str, AfterValidator(_check_node_id)]
    scale: Annotated[float, AfterValidator(_check_scale)] = 1.0
    offset: float = 0.0
    unit: str | None = None
    description: str | None = None
    deadband: Annotated[float, Field(ge=0)] | None = None
    deadband_percent: Annotated[float, Field(gt=0, le=100)] | None = None
    heartbeat: Annotated[Seconds, _duration(0.1, 86400)] | None = None
    # Subscription mode only: what the server samples and filters before it reports.
    sampling_interval: Annotated[Seconds, _duration(0, 86400)] | None = None
    queue_size: Annotated[int, Field(ge=1, le=10_000)] | None = None
    server_deadband: Annotated[float, Field(ge=0)] | None = None
    server_deadband_percent: Annotated[float, Field(gt=0, le=100)] | None = None
    # Enumerations are published by the name of their value ("Running"); `number` keeps 2.
    enum_as: Literal["name", "number"] = "name"

    @model_validator(mode="after")
    def _deadband_rules(self) -> OpcUaPoint:
        if self.deadband is not None and self.deadband_percent is not None:
            raise FieldError("deadband_percent", "give deadband or deadband_percent, not both")
        if self.server_deadband is not None and self.server_deadband_percent is not None:
            raise FieldError(
                "server_deadband_percent",
                "give server_deadband or server_deadband_percent, not both",
            )
        return self


def _check_endpoint(url: str) -> str:
    if not OPCUA_ENDPOINT.match(url):
        raise ValueError(f"expected an endpoint such as opc.tcp://10.0.0.5:4840, got {url!r}")
    return url


SECURITY_POLICIES = ("Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss")


class OpcUaSecurity(_Strict):
    """How the secure channel is protected, and with which application certificate."""

    mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    policy: Literal["Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"] = (
        "Basic256Sha256"
    )
    # The agent's own application certificate (DER or PEM) and key. Without them the agent
    # creates a self-signed pair in <data_dir>/pki/own/ on first use.
    certificate: FilePath | None = None
    private_key: FilePath | None = None

    @model_validator(mode="after")
    def _pair(self) -> OpcUaSecurity:
        if (self.certificate is None) != (self.private_key is None):
            missing = "private_key" if self.private_key is None else "certificate"
            raise FieldError(missing, "give the certificate and its private_key together")
        return self


class OpcUaUser(_Strict):
    """Who the agent logs in as: a user name and password, or a user certificate."""

    username: str | None = None
    password_file: FilePath | None = None
    password_env: str | None = None
    certificate: FilePath | None = None
    private_key: FilePath | None = None

    @model_validator(mode="after")
    def _one_identity(self) -> OpcUaUser:
        if self.username is not None and self.certificate is not None:
            raise FieldError("certificate", "log in with a username or a certificate, not both")
        if self.password_file is not None and self.password_env is not None:
            raise FieldError("password_env", "give password_file or password_env, not both")
        if (self.password_file or self.password_env) and not self.username:
            field = "password_file" if self.password_file else "password_env"
            raise FieldError(field, "a password needs a username: add username")
        if self.username is not None and not (self.password_file or self.password_env):
            raise FieldError(
                "username",
                "give the password with password_file or password_env (never in this file)",
            )
        if (self.certificate is None) != (self.private_key is None):
            missing = "private_key" if self.private_key is None else "certificate"
            raise FieldError(missing, "give the user certificate and its private_key together")
        if self.username is None and self.certificate is None:
            raise FieldError("username", "give a username or a certificate (or leave user out)")
        return self


class OpcUaDevice(_Strict):
    """An OPC UA server (a PLC or an edge server).

    polling: one Read request for all points per interval. subscription: the server samples
    and reports changes (published every interval), the agent forwards them each interval.
    """

    name: Name
    driver: Literal["opcua"]
    endpoint: Annotated[str, AfterValidator(_check_endpoint)]
    mode: Literal["polling", "subscription"] = "polling"
    interval: Annotated[Seconds, _duration(0.05, 86400)] = 1.0
    timeout: Annotated[Seconds, _duration(0.1, 60)] = 4.0
    # A source timestamp further than this from the agent's clock is not trusted: the sample
    # then carries the time the agent received it.
    max_clock_skew: Annotated[Seconds, _duration(0, 86400)] = 300.0
    reconnect_max: Annotated[Seconds, _duration(0.1, 600)] = 10.0
    # Subscription mode: the longest the server stays silent when nothing changes; a
    # subscription silent for three of these is taken as lost.
    keepalive: Annotated[Seconds, _duration(0.1, 600)] = 5.0
    # How often points whose node the server does not know are looked up again.
    resolve_retry: Annotated[Seconds, _duration(0.1, 86400)] = 30.0
    security: OpcUaSecurity = Field(default_factory=OpcUaSecurity)
    user: OpcUaUser | None = None
    points: Annotated[list[OpcUaPoint], Field(min_length=1)]

    @model_validator(mode="after")
    def _mode_rules(self) -> OpcUaDevice:
        for index, point in enumerate(self.points):
            if self.mode == "polling":
                for field in (
                    "sampling_interval",
                    "queue_size",
                    "server_deadband",
                    "server_deadband_percent",
                ):
                    if getattr(point, field) is not None:
                        raise FieldError(
                            ("points", index, field),
                            f"{field} applies to subscriptions: set mode: subscription on "
                            "the device, or remove it",
                        )
                no_deadband = point.deadband is None and point.deadband_percent is None
                if point.heartbeat is not None and no_deadband:
                    raise FieldError(
                        ("points", index, "heartbeat"),
                        "heartbeat only matters with a deadband or in subscription mode: "
                        "without them every poll is published",
                    )
        user_certificate = self.user is not None and self.user.certificate is not None
        if user_certificate and self.security.mode == "None":
            raise FieldError(
                ("user", "certificate"),
                "a user certificate needs a secure channel: set security.mode to Sign or "
                "SignAndEncrypt",
            )
        return self


AnyDevice = ModbusDevice | OpcUaDevice
DeviceSettings = Annotated[AnyDevice, Field(discriminator="driver")]
_DEVICE_CLASSES: dict[
    str,
    type[ModbusTcpDevice]
    | type[ModbusRtuOverTcpDevice]
    | type[ModbusRtuDevice]
    | type[OpcUaDevice],
] = {
    "modbus_tcp": ModbusTcpDevice,
    "modbus_rtu_tcp": ModbusRtuOverTcpDevice,
    "modbus_rtu": ModbusRtuDevice,
    "opcua": OpcUaDevice,
}


# -- vision inspection ----------------------------------------------------------------------

_CAMERA_URL = re.compile(r"^(rtsp|rtsps|http|https)://[^\s]+$")


class CameraSettings(_Strict):
    """A camera: an OpenCV device index (`source: 0`), an RTSP or HTTP(S) URL, or a folder of
    images (`folder:`, for replay, tests and the demo)."""

    name: Name
    source: Annotated[int, Field(ge=0, le=255)] | str | None = None
    folder: FilePath | None = None
    # A folder without fps is a triggered camera: one image per inspection, in name order.
    fps: Annotated[float, Field(gt=0, le=240)] | None = None
    loop: bool = True
    width: Annotated[int, Field(ge=16, le=16384)] | None = None
    height: Annotated[int, Field(ge=16, le=16384)] | None = None
    # Without a frame for this long the camera counts as lost and is opened again.
    timeout: Annotated[Seconds, _duration(0.1, 120)] = 5.0
    reconnect_max: Annotated[Seconds, _duration(0.1, 600)] = 10.0
    # How long after its capture a frame arrives (a stream's encoder and buffers, often
    # 100-500 ms for RTSP): an inspection then never takes a frame from before its trigger.
    latency: Annotated[Seconds, _duration(0, 10)] = 0.0

    @model_validator(mode="after")
    def _one_source(self) -> CameraSettings:
        if (self.source is None) == (self.folder is None):
            raise FieldError(
                "source",
                "give exactly one of source (a device index such as 0, or an rtsp:// or "
                "http:// URL) and folder (a directory of images)",
            )
        if isinstance(self.source, str) and not _CAMERA_URL.match(self.source):
            raise FieldError(
                "source",
                f"{self.source!r} is neither a device index nor an rtsp://, rtsps://, http:// "
                "or https:// URL",
            )
        return self


class RegionOfInterest(_Strict):
    """A rectangle of the camera frame, in pixels from the top-left corner."""

    name: Name
    x: Annotated[int, Field(ge=0, le=16384)]
    y: Annotated[int, Field(ge=0, le=16384)]
    width: Annotated[int, Field(ge=1, le=16384)]
    height: Annotated[int, Field(ge=1, le=16384)]


class StationModel(_Strict):
    """One model a station runs, on every region of interest it names (the whole frame when
    the station has none)."""

    path: FilePath
    name: Name | None = None
    threshold: Annotated[float, Field(ge=0, le=1)] | None = None
    ng_classes: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = None
    rois: list[Name] | None = None
    threads: Annotated[int, Field(ge=1, le=64)] | None = None


class StationTrigger(_Strict):
    """What starts an inspection: the rising edge of a PLC point, a fixed interval, and/or a
    command (`.../cmd/inspect`)."""

    point: Annotated[str, Field(max_length=200)] | None = None
    interval: Annotated[Seconds, _duration(0.05, 86400)] | None = None
    command: bool = False

    @model_validator(mode="after")
    def _one_trigger(self) -> StationTrigger:
        if self.point is not None and self.interval is not None:
            raise FieldError("interval", "give either point (a rising edge) or interval, not both")
        if self.point is None and self.interval is None and not self.command:
            raise FieldError(
                "point",
                "a station needs a trigger: point (rising edge of a PLC point), interval, or "
                "command: true",
            )
        return self


PointId = Annotated[str, Field(min_length=1, max_length=200)]


class StationOutputs(_Strict):
    """Points the verdict is written to, in this order: ok, ng, class_id, error, error_code,
    then counter, result_ready and ready. Each is optional."""

    ready: PointId | None = None
    result_ready: PointId | None = None
    ok: PointId | None = None
    ng: PointId | None = None
    class_id: PointId | None = None
    error: PointId | None = None
    error_code: PointId | None = None
    counter: PointId | None = None
    heartbeat: PointId | None = None


class StationImages(_Strict):
    """Which inspection images are kept on disk, with their overlays, and for how long."""

    save: Literal["ng", "all", "none"] = "ng"
    # With save: ng, also keep one OK image in this many (0: none).
    ok_sample_every: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    directory: FilePath = Path("images")
    max_bytes: Annotated[Bytes, _size(2**20, 2**40)] = 256 * 2**20
    max_age: Annotated[Seconds, _duration(60, 3650 * 86400)] = 30 * 86400.0
    jpeg_quality: Annotated[int, Field(ge=10, le=100)] = 90


class StationSettings(_Strict):
    """A vision inspection station: trigger -> frame -> models -> verdict -> PLC."""

    name: Name
    camera: Name
    trigger: StationTrigger
    part_id: PointId | None = None
    ack: PointId | None = None
    outputs: StationOutputs = Field(default_factory=StationOutputs)
    # How long an inspection waits for a frame taken after its trigger.
    frame_timeout: Annotated[Seconds, _duration(0.01, 60)] = 2.0
    heartbeat_interval: Annotated[Seconds, _duration(0.1, 3600)] = 1.0
    # The class id written for an OK part (a detector's class 0 is usually a defect: then
    # choose another), and for an NG found only by anomaly models, which have no classes.
    ok_class_id: Annotated[int, Field(ge=0, le=32767)] = 0
    anomaly_class_id: Annotated[int, Field(ge=0, le=32767)] = 100
    rois: list[RegionOfInterest] = Field(default_factory=list)
    models: Annotated[list[StationModel], Field(min_length=1)]
    images: StationImages = Field(default_factory=StationImages)

    @model_validator(mode="after")
    def _rois_known(self) -> StationSettings:
        names = [roi.name for roi in self.rois]
        for index, roi in enumerate(self.rois):
            if roi.name in names[:index]:
                raise FieldError(("rois", index, "name"), f"ROI name {roi.name!r} is used twice")
        for index, model in enumerate(self.models):
            for roi_name in model.rois or []:
                if roi_name not in names:
                    known = ", ".join(names) or "none"
                    raise FieldError(
                        ("models", index, "rois"),
                        f"no ROI named {roi_name!r} in this station (ROIs: {known})",
                    )
        return self


_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")


def _check_hhmm(text: str) -> str:
    if not _HHMM.match(text):
        raise ValueError(f"expected a local time as HH:MM from 00:00 to 23:59, got {text!r}")
    return text


ClockTime = Annotated[str, AfterValidator(_check_hhmm)]
MachineStateName = Literal["off", "idle", "producing"]
PositiveFinite = Annotated[float, Field(gt=0)]


class EnergyCounterSettings(_Strict):
    """A meter's import-energy counter point, read raw (before the point's scale)."""

    point: PointId
    # `register:` in the file (a field named so would shadow BaseModel.register).
    kind: Annotated[
        Literal["integer", "float32", "float64"], Field(validation_alias="register")
    ] = "integer"
    # The register's width (integer registers): it wraps at 2^bits.
    bits: Annotated[int, Field(ge=8, le=64)] = 32
    # Raw register units to kWh: 1 for kWh, 0.001 for Wh.
    unit_factor: PositiveFinite = 1.0
    # The most the metered load can draw: a faster rise is an implausible jump, not energy.
    max_power_kw: PositiveFinite


class EnergyPowerSettings(_Strict):
    """A meter's active power point, integrated to energy when no counter is available."""

    point: PointId
    # Raw units to kW: 1 for kW, 0.001 for W.
    unit_factor: PositiveFinite = 1.0
    # Two power samples further apart than this are not integrated across.
    max_gap: Annotated[Seconds, _duration(0.01, 86400)] = 60.0


class EnergyShift(_Strict):
    """One shift of the calendar, local clock times as HH:MM; end <= start crosses midnight."""

    name: Name
    start: ClockTime
    end: ClockTime


# Baseline inputs computed from the consumer itself rather than read from a point.
ENERGY_DERIVED_FEATURES = ("production_rate", "idle_share", "producing_share")


class EnergyBaselineSettings(_Strict):
    """An expected-power regression (ONNX) and where each of its input features comes from: a
    point id, or production_rate (parts per minute), idle_share or producing_share (the share
    of the interval's time in that state)."""

    model: FilePath
    features: dict[Annotated[str, Field(min_length=1, max_length=200)], PointId] = Field(
        default_factory=dict
    )
    threads: Annotated[int, Field(ge=1, le=64)] = 1
    # CUSUM allowance and decision limit, in residual standard deviations.
    cusum_k: Annotated[float, Field(ge=0)] = 0.5
    cusum_h: Annotated[float, Field(gt=0)] = 10.0


class EnergySettings(_Strict):
    """An energy consumer: a meter (counter or power), its machine's state, its parts, and the
    KPIs published per interval on the meter's device."""

    name: Name
    energy: EnergyCounterSettings | None = None
    power: EnergyPowerSettings | None = None
    # Machine state from a PLC point mapped value -> state ...
    state_point: PointId | None = None
    state_map: dict[int | str, MachineStateName] | None = None
    # ... or from power thresholds (needs power:) with hysteresis and a minimum dwell time.
    off_below_kw: Annotated[float, Field(ge=0)] | None = None
    producing_above_kw: Annotated[float, Field(ge=0)] | None = None
    hysteresis_kw: Annotated[float, Field(ge=0)] = 0.0
    min_dwell: Annotated[Seconds, _duration(0, 86400)] = 0.0
    parts: PointId | None = None
    rejects: PointId | None = None
    interval: Annotated[Seconds, _duration(1, 900)] = 60.0
    timezone: Annotated[str, Field(min_length=1, max_length=100)] = "UTC"
    shifts: list[EnergyShift] = Field(default_factory=list)
    baseline: EnergyBaselineSettings | None = None

    @model_validator(mode="after")
    def _consistent(self) -> EnergySettings:
        if self.energy is None and self.power is None:
            raise FieldError(
                "energy", "an energy consumer needs a meter: energy (a counter) or power"
            )
        if not self.interval.is_integer() or 900 % int(self.interval):
            raise FieldError(
                "interval",
                f"must be a whole number of seconds dividing 15 minutes (900 s), "
                f"got {self.interval:g}s",
            )
        if (self.state_point is None) != (self.state_map is None):
            missing = "state_map" if self.state_map is None else "state_point"
            raise FieldError(missing, "state_point and state_map go together")
        if self.state_map is not None and not self.state_map:
            raise FieldError("state_map", "must map at least one value to a state")
        thresholds = (self.off_below_kw, self.producing_above_kw)
        if any(value is not None for value in thresholds):
            if None in thresholds:
                missing = "off_below_kw" if self.off_below_kw is None else "producing_above_kw"
                raise FieldError(missing, "off_below_kw and producing_above_kw go together")
            if self.state_point is not None:
                raise FieldError(
                    "off_below_kw", "give either state_point or power thresholds, not both"
                )
            if self.power is None:
                raise FieldError("off_below_kw", "power thresholds need a power point (power:)")
            assert self.off_below_kw is not None and self.producing_above_kw is not None
            if self.producing_above_kw <= self.off_below_kw:
                raise FieldError("producing_above_kw", "must be above off_below_kw")
        try:
            from zoneinfo import ZoneInfo

            ZoneInfo(self.timezone)
        except (ValueError, OSError, KeyError):  # ZoneInfoNotFoundError is a KeyError
            raise FieldError(
                "timezone", f"{self.timezone!r} is not an IANA time zone such as Europe/Berlin"
            ) from None
        names: list[str] = []
        for index, shift in enumerate(self.shifts):
            if shift.name in names:
                raise FieldError(("shifts", index, "name"), f"shift {shift.name!r} is given twice")
            names.append(shift.name)
            for key in ("start", "end"):
                hours, minutes = map(int, getattr(shift, key).split(":"))
                if (hours * 3600 + minutes * 60) % int(self.interval):
                    raise FieldError(
                        ("shifts", index, key),
                        f"must fall on an interval boundary ({self.interval:g}s)",
                    )
        return self


class Config(_Strict):
    """The whole agent configuration file."""

    agent: AgentSettings
    mqtt: MqttSettings
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    devices: Annotated[list[DeviceSettings], Field(min_length=1)]
    cameras: list[CameraSettings] = Field(default_factory=list)
    stations: list[StationSettings] = Field(default_factory=list)
    energy: list[EnergySettings] = Field(default_factory=list)

    @classmethod
    def from_validated(cls, data: dict[str, Any]) -> Config:
        """Rebuild a Config from `model_dump(mode="json", exclude_defaults=True)` of one that
        passed validation, without validating again (missing fields take their defaults).
        Only for data this program validated itself."""

        def paths(fields: dict[str, Any], *names: str) -> dict[str, Any]:
            return {
                **fields,
                **{name: Path(fields[name]) for name in names if fields.get(name) is not None},
            }

        def nested_opcua_settings(device: dict[str, Any]) -> dict[str, Any]:
            nested: dict[str, Any] = {}
            if "security" in device:
                nested["security"] = OpcUaSecurity.model_construct(
                    **paths(device["security"], "certificate", "private_key")
                )
            if device.get("user") is not None:
                nested["user"] = OpcUaUser.model_construct(
                    **paths(device["user"], "password_file", "certificate", "private_key")
                )
            return nested

        mqtt = dict(data["mqtt"])
        if mqtt.get("tls") is not None:
            mqtt["tls"] = MqttTls.model_construct(
                **paths(mqtt["tls"], "ca_file", "cert_file", "key_file", "key_password_file")
            )
        return cls.model_construct(
            agent=AgentSettings.model_construct(**paths(data["agent"], "data_dir")),
            mqtt=MqttSettings.model_construct(**paths(mqtt, "password_file")),
            outbox=OutboxSettings.model_construct(**paths(data.get("outbox", {}), "path")),
            devices=[
                _DEVICE_CLASSES[device["driver"]].model_construct(
                    **{
                        **paths(device, "serial_port"),
                        **nested_opcua_settings(device),
                        "points": [
                            (
                                OpcUaPoint if device["driver"] == "opcua" else ModbusPoint
                            ).model_construct(**p)
                            for p in device["points"]
                        ],
                    }
                )
                for device in data["devices"]
            ],
            cameras=[
                CameraSettings.model_construct(**paths(camera, "folder"))
                for camera in data.get("cameras", [])
            ],
            stations=[_station_from_validated(station) for station in data.get("stations", [])],
            energy=[_energy_from_validated(consumer) for consumer in data.get("energy", [])],
        )

    @model_validator(mode="after")
    def _serial_settings_agree(self) -> Config:
        first_on_port: dict[str, ModbusRtuDevice] = {}
        for index, device in enumerate(self.devices):
            if not isinstance(device, ModbusRtuDevice):
                continue
            first = first_on_port.setdefault(str(device.serial_port), device)
            for setting in ("baudrate", "parity", "stopbits", "bytesize"):
                if getattr(device, setting) != getattr(first, setting):
                    raise FieldError(
                        ("devices", index, setting),
                        f"{device.serial_port} is shared with device {first.name}, whose "
                        f"{setting} is {getattr(first, setting)}: devices on one serial port "
                        "must use the same serial settings",
                    )
        return self

    @property
    def client_id(self) -> str:
        """The MQTT client id: configured, else the agent id."""
        return self.mqtt.client_id or self.agent.id

    @property
    def outbox_path(self) -> Path:
        """The outbox file, resolved against the data directory."""
        return self.agent.data_dir / self.outbox.path


def _station_from_validated(station: dict[str, Any]) -> StationSettings:
    """A StationSettings from its validated JSON, without building pydantic's validators
    (16 MiB for the station models alone); see `Config.from_validated`."""
    nested: dict[str, Any] = {
        "trigger": StationTrigger.model_construct(**station["trigger"]),
        "models": [
            StationModel.model_construct(**{**model, "path": Path(model["path"])})
            for model in station["models"]
        ],
    }
    if "outputs" in station:
        nested["outputs"] = StationOutputs.model_construct(**station["outputs"])
    if "rois" in station:
        nested["rois"] = [RegionOfInterest.model_construct(**roi) for roi in station["rois"]]
    if "images" in station:
        images = station["images"]
        if "directory" in images:
            images = {**images, "directory": Path(images["directory"])}
        nested["images"] = StationImages.model_construct(**images)
    return StationSettings.model_construct(**{**station, **nested})


def _energy_from_validated(consumer: dict[str, Any]) -> EnergySettings:
    """An EnergySettings from its validated JSON, without validators; see
    `Config.from_validated`. JSON turned the state map's integer keys into strings: they are
    turned back."""
    nested: dict[str, Any] = {}
    if consumer.get("energy") is not None:
        nested["energy"] = EnergyCounterSettings.model_construct(**consumer["energy"])
    if consumer.get("power") is not None:
        nested["power"] = EnergyPowerSettings.model_construct(**consumer["power"])
    if consumer.get("state_map") is not None:
        nested["state_map"] = {
            int(key) if re.fullmatch(r"-?[0-9]+", key) else key: state
            for key, state in consumer["state_map"].items()
        }
    if consumer.get("baseline") is not None:
        baseline = consumer["baseline"]
        nested["baseline"] = EnergyBaselineSettings.model_construct(
            **{**baseline, "model": Path(baseline["model"])}
        )
    if "shifts" in consumer:
        nested["shifts"] = [EnergyShift.model_construct(**shift) for shift in consumer["shifts"]]
    return EnergySettings.model_construct(**{**consumer, **nested})


# -- device profiles (config/profiles/*.yaml) -------------------------------------------------
