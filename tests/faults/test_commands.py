"""Remote commands against a real Mosquitto and the agent as a process: `ping` answered on the
MQTT 5 response topic with its correlation data and, for 3.1.1, on `.../cmd/ping/reply` with
the request's id; every kind of malformed command gets an error reply (logged once per kind)
while data keeps flowing; `inspect` names the stations it knows; retained commands are never
run from the broker's store; the subscription comes back after a broker restart.
The router's own rules (handler errors, async handlers, time-outs) are tested in-process.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent import __version__
from agent.commands import CommandError, CommandReply, CommandRequest, CommandRouter
from agent.publish.payload import Topics
from drivers.simulate.broker import LocalBroker
from drivers.simulate.modbus import SimulatedModbusServer
from tests.conftest import AgentProcess, modbus_device, write_config
from tests.faults.test_outages import ten_hz_points

ROOT = "test/gw-test"
REPLIES = "test/replies"  # where the MQTT 5 requests ask for their replies


@dataclass(frozen=True)
class Reply:
    topic: str
    body: dict[str, Any]
    correlation_data: bytes | None
    arrived: float


class Commander:
    """A client that sends commands (MQTT 5 or 3.1.1) and collects the replies, and the agent's
    health reports and metrics messages (not the command topics: those carry garbage)."""

    _ids = itertools.count()

    def __init__(self, port: int, *, version: str = "5") -> None:
        self.version = version
        self.replies: list[Reply] = []
        self.health: list[dict[str, Any]] = []
        self.metrics_arrived: list[float] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        protocol = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-commander-{next(self._ids)}",
            protocol=protocol,
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(1, 1)
        self._client.connect_async("127.0.0.1", port, keepalive=10)
        self._client.loop_start()
        assert self._subscribed.wait(10), "the test client could not subscribe"

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(
            [
                (f"{REPLIES}/#", 1),
                (f"{ROOT}/cmd/+/reply", 1),
                (f"{ROOT}/health", 0),
                (f"{ROOT}/metrics/#", 1),
            ]
        )

    def _on_message(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            if message.topic == f"{ROOT}/health":
                self.health.append(json.loads(message.payload))
            elif message.topic.startswith(f"{ROOT}/metrics/"):
                self.metrics_arrived.append(time.time())
            else:
                correlation = getattr(message.properties, "CorrelationData", None)
                body = json.loads(message.payload)
                self.replies.append(Reply(message.topic, body, correlation, time.time()))

    def send(
        self,
        command: str,
        payload: bytes | dict[str, Any],
        *,
        correlation_data: bytes | None = None,
        response_topic: str | None = None,
        retain: bool = False,
    ) -> None:
        body = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        properties = None
        if self.version == "5" and (correlation_data is not None or response_topic):
            properties = Properties(PacketTypes.PUBLISH)
            properties.ResponseTopic = response_topic or f"{REPLIES}/default"
            if correlation_data is not None:
                properties.CorrelationData = correlation_data
        info = self._client.publish(
            f"{ROOT}/cmd/{command}", body, qos=1, retain=retain, properties=properties
        )
        info.wait_for_publish(5)

    def clear_retained(self, command: str) -> None:
        self._client.publish(f"{ROOT}/cmd/{command}", b"", qos=1, retain=True).wait_for_publish(5)

    def snapshot(self) -> list[Reply]:
        with self._lock:
            return list(self.replies)

    def by_correlation_data(self, data: bytes) -> list[Reply]:
        return [r for r in self.snapshot() if r.correlation_data == data]

    def by_id(self, value: Any) -> list[Reply]:
        return [r for r in self.snapshot() if r.body.get("correlation") == value]

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Ping until the agent answers: its subscription is in place."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._client.is_connected():  # e.g. the broker is restarting
                time.sleep(0.1)
                continue
            marker = f"ready-{next(self._ids)}"
            self.send("ping", {"id": marker})
            until = time.monotonic() + 0.5
            while time.monotonic() < until:
                if self.by_id(marker):
                    return
                time.sleep(0.02)
        raise AssertionError(f"the agent did not answer a ping within {timeout}s")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def latest_health(commander: Commander) -> dict[str, Any] | None:
    with commander._lock:
        return commander.health[-1] if commander.health else None


def start_agent(
    directory: Path, broker: LocalBroker, modbus_port: int, version: str
) -> AgentProcess:
    directory.mkdir(parents=True, exist_ok=True)
    config = write_config(
        directory,
        broker_port=broker.port,
        devices=[modbus_device("plc", modbus_port, ten_hz_points(1))],
        mqtt={"version": version},
    )
    agent = AgentProcess(config)
    agent.start()
    return agent


@dataclass
class Running:
    """A broker, a Modbus device, an MQTT 5 agent reading it and a commander."""

    broker: LocalBroker
    agent: AgentProcess
    commander: Commander


@pytest.fixture(scope="module")
def mqtt5_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """Shared by the tests that neither restart the broker nor leave retained messages."""
    with LocalBroker() as broker, SimulatedModbusServer(0) as modbus:
        agent = start_agent(tmp_path_factory.mktemp("mqtt5"), broker, modbus.port, "5")
        commander = Commander(broker.port)
        try:
            commander.wait_ready()
            yield Running(broker, agent, commander)
            assert agent.stop() == 0
        except BaseException:
            print(f"--- agent log ---\n{agent.log()[-6000:]}")
            raise
        finally:
            commander.close()
            agent.cleanup()


def test_ping_is_answered_on_the_mqtt5_response_topic_with_its_correlation_data(mqtt5_agent):
    commander = mqtt5_agent.commander
    correlation = b"\x00\x01 request 1 \xff"  # binary: returned byte for byte
    commander.send("ping", {}, correlation_data=correlation, response_topic=f"{REPLIES}/operator-7")
    (reply,) = wait_for(lambda: commander.by_correlation_data(correlation), what="the reply")
    assert reply.topic == f"{REPLIES}/operator-7"
    assert reply.body == {
        "command": "ping",
        "ok": True,
        "result": {"pong": True, "agent": "gw-test", "version": __version__},
    }
    # An MQTT 5 request without a response topic: the 3.1.1-style reply topic, with its id.
    commander.send("ping", {"id": 42})
    (reply,) = wait_for(lambda: commander.by_id(42), what="the reply without response topic")
    assert reply.topic == f"{ROOT}/cmd/ping/reply"
    assert reply.body["result"]["pong"] is True
    # A response topic that is one of the agent's command topics: the reply is published
    # there, and the agent (subscribed with No Local) does not take its own reply as a command.
    commander.send("ping", {}, correlation_data=b"loop", response_topic=f"{ROOT}/cmd/ping")
    commander.send("ping", {"id": "after-loop"})
    wait_for(lambda: commander.by_id("after-loop"), what="the ping after the loop attempt")
    time.sleep(0.3)
    assert len(commander.by_correlation_data(correlation)) == 1, "one reply per command"
    answers = [r for r in commander.snapshot() if r.topic.startswith(f"{ROOT}/cmd/")]
    assert all(r.body["ok"] for r in answers), "no error reply to a reply taken as a command"


MALFORMED: list[tuple[str, str, bytes, str, str]] = [
    # (case, command, payload, code, part of the error message)
    ("empty", "ping", b"", "empty", "empty payload"),
    ("not UTF-8", "ping", b'{"id": "\xff\xfe"}', "not_utf8", "not UTF-8"),
    ("not JSON", "ping", b"{ping please", "not_json", "not JSON"),
    ("NaN", "ping", b'{"x": NaN}', "not_json", "NaN is not a JSON value"),
    ("nested 30,000 deep", "ping", b"[" * 30_000 + b"]" * 30_000, "not_json", "nested"),
    ("JSON array", "ping", b'["ping"]', "not_object", "not an array"),
    ("JSON string", "ping", b'"ping"', "not_object", "not a string"),
    ("huge", "ping", b'{"pad": "' + b"x" * 100_000 + b'"}', "too_large", "at most 65536"),
    ("unknown command", "reboot", b"{}", "unknown_command", "known commands: inspect, ping"),
    ("id an array", "ping", b'{"id": [1]}', "bad_id", "id must be a string or a number"),
    ("unknown field", "ping", b'{"force": true}', "refused", "unknown field 'force'"),
    ("station a number", "inspect", b'{"station": 5}', "refused", "station must be a string"),
    ("station missing", "inspect", b'{"camera": "c1"}', "refused", "station is missing"),
]


def test_malformed_commands_get_error_replies_and_data_keeps_flowing(mqtt5_agent):
    commander, agent = mqtt5_agent.commander, mqtt5_agent.agent
    health_before = wait_for(lambda: latest_health(commander), what="a health report")
    rejected_before = health_before["commands"]["rejected"]
    for round_ in range(2):  # each kind twice: logged once, counted twice
        for index, (_case, command, payload, _code, _text) in enumerate(MALFORMED):
            commander.send(
                command,
                payload,
                correlation_data=f"{round_}:{index}".encode(),
                response_topic=f"{REPLIES}/malformed",
            )
    sent_at = time.time()
    for round_ in range(2):
        for index, (case, command, _payload, code, text) in enumerate(MALFORMED):
            (reply,) = wait_for(
                lambda r=round_, i=index: commander.by_correlation_data(f"{r}:{i}".encode()),
                what=f"the reply to {case}",
            )
            assert reply.topic == f"{REPLIES}/malformed"
            assert reply.body["ok"] is False, case
            assert reply.body["command"] == command, case
            assert reply.body["code"] == code, case
            assert text in reply.body["error"], (case, reply.body["error"])
    # The agent keeps publishing data and answering.
    wait_for(
        lambda: any(arrived > sent_at + 0.5 for arrived in commander.metrics_arrived),
        what="metrics after the malformed commands",
    )
    commander.wait_ready()
    # Counted in health; each kind logged once, as a WARNING, never with a traceback.
    health = wait_for(
        lambda: (
            (h := latest_health(commander))
            and h["commands"]["rejected"] >= rejected_before + 2 * len(MALFORMED)
            and h
        ),
        what="health counting the rejections",
    )
    counts = health["commands"]
    assert counts["rejected"] == rejected_before + 2 * len(MALFORMED)
    expected_codes: dict[str, int] = {}
    for _case, _command, _payload, code, _text in MALFORMED:
        expected_codes[code] = expected_codes.get(code, 0) + 2
    assert counts["problems"] == expected_codes
    assert counts["by_name"]["inspect"] >= 4 and "reboot" not in counts["by_name"]
    assert counts["replies_dropped"] == 0
    log = agent.log()
    refused = [line for line in log.splitlines() if "Refused" in line]
    assert all(" WARNING " in line for line in refused)
    # One line per malformed kind, one per command refusing (ping, inspect).
    assert len(refused) == len({code for *_, code, _text in MALFORMED} - {"refused"}) + 2, refused
    assert "Traceback" not in log and " ERROR " not in log


def test_inspect_without_stations_names_no_station(mqtt5_agent):
    commander = mqtt5_agent.commander
    commander.send("inspect", {"station": "washers", "id": "insp-1"})
    (reply,) = wait_for(lambda: commander.by_id("insp-1"), what="the inspect reply")
    assert reply.topic == f"{ROOT}/cmd/inspect/reply"
    assert reply.body == {
        "command": "inspect",
        "ok": False,
        "code": "refused",
        "error": "unknown station 'washers'; this agent has no stations",
        "correlation": "insp-1",
    }


def test_mqtt311_ping_is_answered_on_the_reply_topic_and_a_retained_command_is_ignored(
    broker, modbus, tmp_path
):
    commander = Commander(broker.port, version="3.1.1")
    try:
        # Left behind on the broker before the agent starts: must never run.
        commander.send("ping", {"id": "stale"}, retain=True)
        agent = start_agent(tmp_path, broker, modbus.port, "3.1.1")
        try:
            commander.wait_ready()
            commander.send("ping", {"id": "abc-1"})
            (reply,) = wait_for(lambda: commander.by_id("abc-1"), what="the 3.1.1 reply")
            assert reply.topic == f"{ROOT}/cmd/ping/reply"
            assert reply.body == {
                "command": "ping",
                "ok": True,
                "result": {"pong": True, "agent": "gw-test", "version": __version__},
                "correlation": "abc-1",
            }
            health = wait_for(
                lambda: (
                    (h := latest_health(commander))
                    and h["commands"]["by_name"].get("ping", 0) >= 2
                    and h
                ),
                what="health after the pings",
            )
            assert health["commands"]["retained_ignored"] == 1
            assert not commander.by_id("stale")
            assert agent.log().count("Ignored a retained command") == 1
            assert agent.stop() == 0
        except BaseException:
            print(f"--- agent log ---\n{agent.log()[-6000:]}")
            raise
        finally:
            agent.cleanup()
        commander.clear_retained("ping")
    finally:
        commander.close()


@pytest.mark.slow
def test_commands_work_again_after_a_broker_restart_and_retained_ones_do_not_rerun(
    persistent_broker, modbus, tmp_path
):
    """A retained command sent while the agent listens runs once (it was sent now); after the
    broker restarts it comes back from the retained store and is ignored."""
    commander = Commander(persistent_broker.port)
    agent = start_agent(tmp_path, persistent_broker, modbus.port, "5")
    try:
        commander.wait_ready()
        commander.send("ping", {"id": "kept"}, retain=True)
        wait_for(lambda: commander.by_id("kept"), what="the reply to the live retained ping")
        persistent_broker.stop()
        persistent_broker.start()
        commander.wait_ready(timeout=20)  # the agent reconnected and subscribed again
        restarted_at = len(commander.health)
        health = wait_for(
            lambda: commander.health[restarted_at:] and commander.health[-1],
            what="health after the restart",
        )
        assert health["mqtt"]["connects"] == 2
        assert health["commands"]["retained_ignored"] == 1
        assert len(commander.by_id("kept")) == 1, "the retained ping ran once, not again"
        commander.clear_retained("ping")
        assert agent.stop() == 0
    except BaseException:
        print(f"--- agent log ---\n{agent.log()[-6000:]}")
        raise
    finally:
        agent.cleanup()
        commander.close()


# -- the router in this process ---------------------------------------------------------------


def request(command: str, payload: Any, **fields: Any) -> CommandRequest:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return CommandRequest(f"{ROOT}/cmd/{command}", body, retained=False, **fields)


def body_of(reply: CommandReply | None) -> dict[str, Any]:
    assert reply is not None
    return json.loads(reply.payload)  # type: ignore[no-any-return]


def test_router_handler_errors_async_handlers_and_timeouts(caplog):
    router = CommandRouter(Topics("test", "gw-test"), timeout=0.2)

    def broken(payload: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("planted bug")

    async def slow(payload: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(float(payload.get("wait", 0)))
        return {"waited": payload.get("wait", 0)}

    def refuses(payload: dict[str, Any]) -> dict[str, Any]:
        raise CommandError("the press is running: stop it first")

    def not_json(payload: dict[str, Any]) -> dict[str, Any]:
        return {"value": object()}

    router.register("broken", broken)
    router.register("slow", slow)
    router.register("refuses", refuses)
    router.register("odd", not_json)
    with pytest.raises(ValueError, match="registered already"):
        router.register("slow", slow)
    with pytest.raises(ValueError, match="one topic level"):
        router.register("a/b", slow)

    async def scenario() -> None:
        with caplog.at_level(logging.INFO, logger="agent.commands"):
            for _ in range(3):
                reply = await router.handle(request("broken", {"id": "b"}))
                assert body_of(reply) == {
                    "command": "broken",
                    "ok": False,
                    "code": "internal",
                    "error": "internal error: the agent could not carry out the command "
                    "(see its log)",
                    "correlation": "b",
                }
            assert body_of(await router.handle(request("odd", {})))["code"] == "internal"
            ok = body_of(await router.handle(request("slow", {"wait": 0.01})))
            assert ok == {"command": "slow", "ok": True, "result": {"waited": 0.01}}
            late = body_of(await router.handle(request("slow", {"wait": 5})))
            assert late["code"] == "timeout" and "0.2 s" in late["error"]
            refused = body_of(await router.handle(request("refuses", {})))
            assert refused["error"] == "the press is running: stop it first"
            # A reply to a response topic that cannot be published on goes to the default one.
            reply = await router.handle(request("slow", {}, response_topic="replies/#"))
            assert reply is not None and reply.topic == f"{ROOT}/cmd/slow/reply"
            retained = CommandRequest(f"{ROOT}/cmd/slow", b"{}", retained=True)
            assert await router.handle(retained) is None
            # dispatch(): the reply reaches the callback from a task of the loop.
            replies: list[CommandReply] = []
            router.dispatch(request("slow", {"id": 1}), replies.append)
            await asyncio.sleep(0.05)
            assert [body_of(r)["correlation"] for r in replies] == [1]

    asyncio.run(scenario())
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 2, "once per command name (broken, odd), with the traceback"
    assert {r.levelno for r in tracebacks} == {logging.ERROR}
    assert router.health() == {
        "received": 10,
        "rejected": 6,
        "retained_ignored": 1,
        "by_name": {"broken": 3, "odd": 1, "slow": 4, "refuses": 1},
        "problems": {"internal": 4, "timeout": 1, "refused": 1},
    }
