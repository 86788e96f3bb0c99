"""Real peers for the tests: a Mosquitto broker, pymodbus servers, the agent as a process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.model import Sample
from agent.settings import ModbusDevice
from drivers.modbus.line import ModbusLines
from drivers.simulate.broker import LocalBroker, free_port
from drivers.simulate.modbus import SimulatedModbusServer, Transport
from drivers.simulate.serial_line import PtyPair

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Received:
    """One message as the subscriber saw it."""

    topic: str
    payload: Any
    arrived: float  # time.time()
    retain: bool


class Subscriber:
    """A paho client subscribed to `#` that records every message.

    With `persistent=True` it keeps a broker-side session (clean session off, QoS 1), so
    messages published while it is reconnecting after a broker restart are still delivered;
    the broker must then run with persistence.
    """

    def __init__(self, port: int, *, persistent: bool = False, topic: str = "#") -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-sub-{os.getpid()}-{port}",
            protocol=mqtt.MQTTv311,
            clean_session=not persistent,
        )
        self._client.reconnect_delay_set(1, 1)
        self._client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self._client.on_message = self._on_message
        self._client.connect_async("127.0.0.1", port, keepalive=10)
        self._client.loop_start()

    def _on_message(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            payload = json.loads(message.payload)
        except ValueError:
            payload = message.payload
        with self._lock:
            self.messages.append(Received(message.topic, payload, time.time(), message.retain))

    def connected(self) -> bool:
        return self._client.is_connected()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.messages)

    def metrics(self) -> list[Received]:
        return [m for m in self.snapshot() if "/metrics/" in m.topic]

    def samples(self) -> list[dict[str, Any]]:
        """Every sample of every metrics message, duplicates included, in arrival order."""
        return [sample for m in self.metrics() for sample in m.payload["samples"]]

    def samples_of(self, point: str) -> list[dict[str, Any]]:
        return [s for s in self.samples() if s["p"] == point]

    def statuses(self) -> list[dict[str, Any]]:
        return [m.payload for m in self.snapshot() if m.topic.endswith("/status")]

    def wait_for(
        self, condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class AgentProcess:
    """`python -m agent run CONFIG` as a child process, with its log kept for failures."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.log_path = config_path.with_suffix(".log")
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        self.started_at = time.time()

    def stop(self, timeout: float = 20.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self.process = None
        return code

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cleanup(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


def write_config(
    directory: Path,
    *,
    broker_port: int,
    devices: list[dict[str, Any]],
    agent_id: str = "gw-test",
    mqtt: dict[str, Any] | None = None,
    outbox: dict[str, Any] | None = None,
) -> Path:
    """An agent config (JSON is YAML) with data in `directory`."""
    config = {
        "agent": {"id": agent_id, "data_dir": str(directory / "data")},
        "mqtt": {
            "host": "127.0.0.1",
            "port": broker_port,
            "topic_prefix": "test",
            "health_interval": "1s",
            "reconnect_min": "1s",
            "reconnect_max": "1s",
            **(mqtt or {}),
        },
        "outbox": {"commit_interval": "100ms", **(outbox or {})},
        "devices": devices,
    }
    path = directory / "agent.yaml"
    path.write_text(json.dumps(config, indent=2))
    return path


def modbus_device(
    name: str, port: int, points: list[dict[str, Any]], **settings: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "driver": "modbus_tcp",
        "host": "127.0.0.1",
        "port": port,
        "interval": "100ms",
        "timeout": "500ms",
        "reconnect_max": "1s",
        "points": points,
        **settings,
    }


@pytest.fixture
def broker() -> Iterator[LocalBroker]:
    with LocalBroker() as running:
        yield running


@pytest.fixture
def persistent_broker() -> Iterator[LocalBroker]:
    """A broker that keeps sessions and queued messages across a restart."""
    with LocalBroker(persistent=True) as broker:
        yield broker


@pytest.fixture
def modbus() -> Iterator[SimulatedModbusServer]:
    with SimulatedModbusServer(free_port()) as server:
        yield server


@pytest.fixture
def serial_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two linked pseudo-terminals from socat: (server end, client end), as paths to open.

    A simulated RTU device listens on the server end, the client opens the other; socat stops
    after the test.
    """
    if shutil.which("socat") is None:
        # `make test` installs socat; a missing one must fail, not quietly skip RTU tests.
        pytest.fail(
            "socat is not installed: run `make test` (it installs it) or apt-get install socat"
        )
    with PtyPair(tmp_path / "pty") as line:
        yield line.server_end, line.client_end


@pytest.fixture
def rtu_simulator(
    serial_pair: tuple[str, str],
) -> Iterator[Callable[..., SimulatedModbusServer]]:
    """Factory: `rtu_simulator(units=(1, 2, 3))` starts a Modbus RTU device answering as those
    units on the server end of `serial_pair` (other `SimulatedModbusServer` options pass
    through). Open `serial_pair[1]` to talk to it; it is stopped after the test, before socat.
    """
    with contextlib.ExitStack() as running:

        def make(units: Sequence[int] = (1,), **options: Any) -> SimulatedModbusServer:
            server = SimulatedModbusServer(
                transport="rtu", serial_port=serial_pair[0], unit_ids=units, **options
            )
            return running.enter_context(server)

        yield make


@pytest.fixture
def simulator_factory() -> Iterator[Callable[..., SimulatedModbusServer]]:
    """Factory: `simulator_factory("rtu_tcp", units=(1, 2))` starts a simulated device on a free
    TCP port of 127.0.0.1 (`server.port`), serving Modbus TCP ("tcp") or RTU frames over TCP
    ("rtu_tcp"). Every device it started is stopped after the test.
    """
    with contextlib.ExitStack() as running:

        def make(
            transport: Transport = "tcp", units: Sequence[int] = (1,), **options: Any
        ) -> SimulatedModbusServer:
            server = SimulatedModbusServer(
                free_port(), transport=transport, unit_ids=units, **options
            )
            return running.enter_context(server)

        yield make


@pytest.fixture
def subscriber_factory() -> Iterator[Callable[..., Subscriber]]:
    made: list[Subscriber] = []

    def make(port: int, **kwargs: Any) -> Subscriber:
        subscriber = Subscriber(port, **kwargs)
        made.append(subscriber)
        return subscriber

    yield make
    for subscriber in made:
        subscriber.close()


@pytest.fixture
def agent_factory(request: pytest.FixtureRequest) -> Iterator[Callable[[Path], AgentProcess]]:
    made: list[AgentProcess] = []

    def make(config_path: Path) -> AgentProcess:
        agent = AgentProcess(config_path)
        made.append(agent)
        return agent

    yield make
    failed = getattr(request.node, "rep_call", None)
    for agent in made:
        if failed is not None and failed.failed:
            print(f"--- agent log {agent.log_path} ---\n{agent.log()[-6000:]}")
        agent.cleanup()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)


async def run_devices(
    devices: Sequence[ModbusDevice], seconds: float, lines: ModbusLines | None = None
) -> list[Sample]:
    """Poll the devices as the agent does, one task each on shared lines, for `seconds`;
    return every sample they produced. The lines are closed afterwards."""
    from agent.pipeline import DeviceRunner, Handoff, PipelineStats
    from drivers.modbus.client import ModbusDriver

    lines = lines if lines is not None else ModbusLines()
    handoff = Handoff(100_000, PipelineStats())
    runners = [DeviceRunner(d, ModbusDriver(d, lines.for_device(d)), handoff) for d in devices]
    tasks = [asyncio.create_task(runner.run()) for runner in runners]
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    lines.close()
    samples: list[Sample] = []
    while not handoff.queue.empty():
        batch = handoff.queue.get_nowait()
        if batch.kind == "metrics":
            samples.extend(batch.records)  # type: ignore[arg-type]
    return samples
