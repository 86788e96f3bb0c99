"""Remote commands: a message on `{prefix}/{agent_id}/cmd/{name}` in, one reply out.

The path of a command through the agent's threads:

1. paho's network thread: the publisher's `on_message` turns the message into a
   `CommandRequest` and hands it to the agent, which schedules `CommandRouter.dispatch` on the
   event loop (`loop.call_soon_threadsafe`); nothing else happens on paho's thread.
2. the event loop: the router checks the payload (a UTF-8 JSON object of at most 64 KiB), runs
   the handler registered for the name (stations live on the loop) and builds the reply;
3. the publisher thread: `MqttPublisher.offer_reply` queues the reply, which is published at
   once when connected and dropped otherwise (a reply is only useful now; replies are never
   stored in the outbox).

Replies go to the request's MQTT 5 Response Topic with its Correlation Data, or, without one
(MQTT 3.1.1), to `.../cmd/{name}/reply`; the request's `id` field comes back as `correlation`.
A reply is `{"command": NAME, "ok": true, "result": {...}}` or
`{"command": NAME, "ok": false, "code": CODE, "error": "a sentence"}`.

Retained command messages are ignored and counted: a stale retained `inspect` would otherwise
run again on every reconnect. Malformed commands are logged once per kind and counted in health.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from agent.publish.payload import Topics, dumps

if TYPE_CHECKING:
    from agent.settings import StationSettings

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "CommandError",
    "CommandReply",
    "CommandRequest",
    "CommandRouter",
    "CommandStats",
    "Handler",
    "InspectionStation",
    "check_fields",
    "inspect_handler",
    "ping_handler",
]

log = logging.getLogger(__name__)

# Commands are small JSON objects; anything bigger is refused before it is decoded.
MAX_PAYLOAD_BYTES = 64 * 1024
# An async handler that takes longer than this gets a "timeout" reply.
HANDLER_TIMEOUT_S = 10.0
# Async handlers running at once; beyond this a command is answered "busy".
MAX_RUNNING = 16
# The request's `id` is echoed as `correlation`; a longer text is refused.
_MAX_ID_CHARS = 200
# MQTT topics are UTF-8 strings of at most 65,535 bytes.
_MAX_TOPIC_BYTES = 65_535

Result = dict[str, Any]
Handler = Callable[[dict[str, Any]], Result | Awaitable[Result]]


class CommandError(Exception):
    """A command that cannot be carried out; its message is returned to the sender."""


class _Rejected(Exception):
    """A command refused before (or instead of) running its handler."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class CommandRequest:
    """A command message as it arrived (built on paho's thread, nothing decoded yet)."""

    topic: str
    payload: bytes
    retained: bool
    response_topic: str | None = None  # MQTT 5 Response Topic
    correlation_data: bytes | None = None  # MQTT 5 Correlation Data


@dataclass(frozen=True, slots=True)
class CommandReply:
    """What the publisher thread publishes in answer to one command."""

    topic: str
    payload: str
    correlation_data: bytes | None = None


@dataclass(slots=True)
class CommandStats:
    """Counters reported in health under `commands`."""

    received: int = 0
    rejected: int = 0
    retained_ignored: int = 0
    by_name: Counter[str] = field(default_factory=Counter)  # registered names only
    problems: Counter[str] = field(default_factory=Counter)  # rejections by code


class CommandRouter:
    """Checks command payloads and runs the handler registered for each command name.

    Runs on the agent's event loop; `dispatch` is what the paho callback schedules there.
    """

    def __init__(
        self,
        topics: Topics,
        *,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
        timeout: float = HANDLER_TIMEOUT_S,
        max_running: int = MAX_RUNNING,
    ) -> None:
        self.topics = topics
        self.stats = CommandStats()
        self._prefix = f"{topics.root}/cmd/"
        self._max_payload_bytes = max_payload_bytes
        self._timeout = timeout
        self._max_running = max_running
        self._running = 0
        self._handlers: dict[str, Handler] = {}
        self._logged: set[tuple[str, str]] = set()  # (code, command name) logged once each
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def topic_filter(self) -> str:
        """What the publisher subscribes to: `{prefix}/{agent_id}/cmd/+`."""
        return f"{self._prefix}+"

    @property
    def names(self) -> list[str]:
        """The registered command names, sorted."""
        return sorted(self._handlers)

    def reply_topic(self, name: str) -> str:
        """Where replies go without an MQTT 5 Response Topic: `.../cmd/{name}/reply`."""
        return f"{self._prefix}{name}/reply"

    def register(self, name: str, handler: Handler) -> None:
        """Run `handler` for `.../cmd/{name}`.

        The handler gets the payload object (without its `id`) and returns a JSON-serialisable
        dict, the reply's `result`; it may be a coroutine function. It raises `CommandError`
        for a command it cannot carry out.
        """
        if not name or any(char in name for char in "/+#\0"):
            raise ValueError(f"a command name is one topic level without wildcards: {name!r}")
        if name in self._handlers:
            raise ValueError(f"the command {name!r} is registered already")
        self._handlers[name] = handler

    def dispatch(self, request: CommandRequest, reply_to: Callable[[CommandReply], None]) -> None:
        """Handle `request` in a task of the running loop and pass its reply to `reply_to`."""
        task = asyncio.get_running_loop().create_task(self._answer(request, reply_to))
        # The loop keeps only a weak reference to a task.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(
        self, request: CommandRequest, reply_to: Callable[[CommandReply], None]
    ) -> None:
        reply = await self.handle(request)
        if reply is not None:
            reply_to(reply)

    async def handle(self, request: CommandRequest) -> CommandReply | None:
        """The reply to `request`, or None for a retained message (ignored). Never raises."""
        self.stats.received += 1
        name = request.topic.removeprefix(self._prefix)
        if request.retained:
            self.stats.retained_ignored += 1
            self._log_once(
                logging.WARNING,
                "retained",
                "",
                "Ignored a retained command on %s: commands run only when they are sent, "
                "never from the broker's retained store, or a stale one would run again on "
                "every reconnect. Clear it with `mosquitto_pub -r -n -t '%s'`; retained "
                "commands are counted in health (commands.retained_ignored), not logged again.",
                request.topic,
                request.topic,
            )
            return None
        correlation: str | int | float | None = None
        try:
            payload = self._parse(request.payload)
            correlation = self._correlation(payload)
            handler = self._handlers.get(name)
            if handler is None:
                raise _Rejected(
                    "unknown_command",
                    f"unknown command {name!r}; known commands: {', '.join(self.names)}",
                )
            self.stats.by_name[name] += 1
            result = await self._run(name, handler, payload)
            body: dict[str, Any] = {"command": name, "ok": True, "result": result}
            if correlation is not None:
                body["correlation"] = correlation
            text = dumps(body)
        except _Rejected as exc:
            text = self._refuse(request.topic, name, exc.code, str(exc), correlation)
        except CommandError as exc:
            self._log_once(
                logging.WARNING,
                "refused",
                name,
                "Refused the command %s on %s: %s. Further refusals of %s are counted in health "
                "(commands.rejected) and answered, not logged.",
                name,
                request.topic,
                exc,
                name,
            )
            text = self._refuse(request.topic, name, "refused", str(exc), correlation, log=False)
        except Exception:  # noqa: BLE001 (a bug in a handler is answered, never raised)
            self._log_once(
                logging.ERROR,
                "internal",
                name,
                "The command %s failed with an unexpected error (a bug: please report it with "
                "this traceback); the sender is told so, and further failures of %s are "
                "counted in health, not logged.",
                name,
                name,
                exc_info=True,
            )
            text = self._refuse(
                request.topic,
                name,
                "internal",
                "internal error: the agent could not carry out the command (see its log)",
                correlation,
                log=False,
            )
        topic = request.response_topic
        if topic is None or not _publishable(topic):
            topic = self.reply_topic(name)
        return CommandReply(topic, text, request.correlation_data)

    def health(self) -> dict[str, Any]:
        """The `commands` part of the health report."""
        return {
            "received": self.stats.received,
            "rejected": self.stats.rejected,
            "retained_ignored": self.stats.retained_ignored,
            "by_name": dict(self.stats.by_name),
            "problems": dict(self.stats.problems),
        }

    # -- inside handle() -----------------------------------------------------------------------

    def _parse(self, payload: bytes) -> dict[str, Any]:
        if not payload:
            raise _Rejected("empty", "empty payload: send a JSON object, e.g. {}")
        if len(payload) > self._max_payload_bytes:
            raise _Rejected(
                "too_large",
                f"payload too large: {len(payload)} bytes, at most {self._max_payload_bytes}",
            )
        try:
            text = payload.decode()
        except UnicodeDecodeError as exc:
            raise _Rejected(
                "not_utf8", f"the payload is not UTF-8 text ({exc.reason} at byte {exc.start})"
            ) from None
        try:
            document = json.loads(text, parse_constant=_no_constants)
        except ValueError as exc:
            raise _Rejected("not_json", f"the payload is not JSON: {exc}") from None
        except RecursionError:
            raise _Rejected("not_json", "the payload is not JSON: nested too deeply") from None
        if not isinstance(document, dict):
            raise _Rejected(
                "not_object", f"the payload must be a JSON object, not {_json_type(document)}"
            )
        return document

    @staticmethod
    def _correlation(payload: dict[str, Any]) -> str | int | float | None:
        """The request's `id`, taken out of the payload; it comes back as `correlation`."""
        if "id" not in payload:
            return None
        value = payload.pop("id")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise _Rejected("bad_id", f"id must be a string or a number, not {_json_type(value)}")
        if isinstance(value, str) and len(value) > _MAX_ID_CHARS:
            raise _Rejected("bad_id", f"id is longer than {_MAX_ID_CHARS} characters")
        return value

    async def _run(self, name: str, handler: Handler, payload: dict[str, Any]) -> Result:
        outcome = handler(payload)
        if inspect.isawaitable(outcome):
            if self._running >= self._max_running:
                # Never awaited: close it so Python does not warn about it.
                if inspect.iscoroutine(outcome):
                    outcome.close()
                raise _Rejected(
                    "busy", f"busy: {self._running} commands are still running; try again later"
                )
            self._running += 1
            try:
                async with asyncio.timeout(self._timeout):
                    outcome = await outcome
            except TimeoutError:
                raise _Rejected(
                    "timeout", f"the command did not finish within {self._timeout:g} s"
                ) from None
            finally:
                self._running -= 1
        if not isinstance(outcome, dict):
            raise TypeError(f"the handler of {name} returned {type(outcome).__name__}, not dict")
        return outcome

    def _refuse(
        self,
        topic: str,
        name: str,
        code: str,
        message: str,
        correlation: str | int | float | None,
        *,
        log: bool = True,
    ) -> str:
        self.stats.rejected += 1
        self.stats.problems[code] += 1
        if log:
            self._log_once(
                logging.WARNING,
                code,
                "",
                "Refused a command on %s: %s. Further commands refused for this reason (%s) are "
                "answered and counted in health (commands.problems), not logged.",
                topic,
                message,
                code,
            )
        body: dict[str, Any] = {"command": name, "ok": False, "code": code, "error": message}
        if correlation is not None:
            body["correlation"] = correlation
        return dumps(body)

    def _log_once(
        self, level: int, code: str, name: str, message: str, *args: object, exc_info: bool = False
    ) -> None:
        if (code, name) in self._logged:
            return
        self._logged.add((code, name))
        log.log(level, message, *args, exc_info=exc_info)


def _no_constants(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _publishable(topic: str) -> bool:
    """A topic a reply can be published on (no wildcards, not empty, not too long)."""
    return (
        bool(topic)
        and not any(char in topic for char in "+#\0")
        and len(topic.encode()) <= _MAX_TOPIC_BYTES
    )


_TYPE_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "an array",
    dict: "an object",
}


def _has_type(value: object, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False  # JSON true is not a number
    if kind is float:
        return isinstance(value, int | float) and math.isfinite(value)
    return isinstance(value, kind)


def check_fields(
    payload: Mapping[str, Any],
    required: Mapping[str, type] | None = None,
    optional: Mapping[str, type] | None = None,
) -> None:
    """Raise `CommandError` naming every missing, unknown or mistyped field of `payload`."""
    required = required or {}
    optional = optional or {}
    allowed = {**required, **optional}
    problems = [f"{key} is missing" for key in required if key not in payload]
    for key, value in payload.items():
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none besides id"
            problems.append(f"unknown field {key!r} (fields: {known})")
        elif not _has_type(value, allowed[key]):
            problems.append(
                f"{key} must be {_TYPE_NAMES.get(allowed[key], allowed[key].__name__)}, "
                f"not {_json_type(value)}"
            )
    if problems:
        raise CommandError("; ".join(problems))


# -- the agent's commands ----------------------------------------------------------------------


def ping_handler(agent_id: str, version: str) -> Handler:
    """`ping`: `{}` -> `{"pong": true, "agent": ID, "version": VERSION}`; tests the channel."""

    def ping(payload: dict[str, Any]) -> Result:
        check_fields(payload)
        return {"pong": True, "agent": agent_id, "version": version}

    return ping


class InspectionStation(Protocol):
    """What the `inspect` command needs of a vision station."""

    name: str
    settings: StationSettings

    def request(self, source: Literal["command"]) -> bool:
        """Start an inspection now; False while one is running."""
        ...


def inspect_handler(stations: Sequence[InspectionStation]) -> Handler:
    """`inspect`: `{"station": NAME}` starts an inspection at that station if its trigger allows
    commands; `{"accepted": true, "station": NAME}`, or `accepted: false` with a `reason`."""

    def inspect_station(payload: dict[str, Any]) -> Result:
        check_fields(payload, required={"station": str})
        name = payload["station"]
        station = next((station for station in stations if station.name == name), None)
        if station is None:
            known = ", ".join(sorted(station.name for station in stations))
            raise CommandError(
                f"unknown station {name!r}; "
                + (f"known stations: {known}" if known else "this agent has no stations")
            )
        if not station.settings.trigger.command:
            raise CommandError(
                f"station {name} does not take commands: add `command: true` to its trigger "
                "(trigger: {command: true}) in the configuration"
            )
        if station.request("command"):
            return {"accepted": True, "station": name}
        return {"accepted": False, "station": name, "reason": "busy: an inspection is running"}

    return inspect_station
