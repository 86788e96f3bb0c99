"""`shopfloor demo`: a broker, a simulated press line and meter (Modbus) and packaging line
(OPC UA), the agent, and a live view of what arrives at the broker. Everything it starts, it
stops on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text
from ruamel.yaml import YAML

from agent.config import load_config
from drivers.simulate.broker import BrokerNotFound, LocalBroker, free_port
from drivers.simulate.modbus import build_simulator

if TYPE_CHECKING:
    from drivers.simulate.opcua import SimulatedOpcUaServer

__all__ = ["BrokerView", "run_demo"]

REPO = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO / "config" / "examples" / "demo.yaml"
DEMO_DIR = REPO / ".demo"


class BrokerView:
    """Subscribes to the agent's namespace and keeps the latest value of every point."""

    def __init__(self, host: str, port: int, root: str) -> None:
        self.root = root
        self.latest: dict[str, dict[str, Any]] = {}
        self.status: dict[str, Any] = {}
        self.health: dict[str, Any] = {}
        self.events: deque[str] = deque(maxlen=5)
        self.arrivals: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"demo-view-{os.getpid()}"
        )
        self._client.on_connect = lambda c, *_: c.subscribe(f"{root}/#", qos=1)
        self._client.on_message = self._on_message
        self._client.connect_async(host, port)
        self._client.loop_start()

    def close(self) -> None:
        """Disconnect."""
        self._client.disconnect()
        self._client.loop_stop()

    def _on_message(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            document = json.loads(message.payload)
        except ValueError:
            return
        with self._lock:
            if message.topic.endswith("/status"):
                self.status = document
            elif message.topic.endswith("/health"):
                self.health = document
            elif "/metrics/" in message.topic:
                samples = document.get("samples", [])
                self.arrivals.append((time.monotonic(), len(samples)))
                for sample in samples:
                    self.latest[sample["p"]] = sample
            elif "/events/" in message.topic:
                for event in document.get("events", []):
                    self.events.append(event.get("message", ""))

    def rates(self, window: float = 5.0) -> tuple[float, float]:
        """Messages and samples per second over the last `window` seconds."""
        now = time.monotonic()
        with self._lock:
            while self.arrivals and self.arrivals[0][0] < now - window:
                self.arrivals.popleft()
            messages = len(self.arrivals)
            samples = sum(count for _, count in self.arrivals)
        return messages / window, samples / window


def _render(view: BrokerView, units: dict[str, str], started: float) -> Group:
    messages, samples = view.rates()
    state = view.status.get("state", "waiting")
    outbox = view.health.get("outbox", {})
    header = Text.assemble(
        ("shopfloor demo ", "bold"),
        f"- agent {state}, {messages:.1f} msg/s, {samples:.0f} samples/s at the broker, "
        f"outbox {outbox.get('records', '?')} records waiting, "
        f"{time.monotonic() - started:.0f} s. Ctrl-C stops everything.",
    )
    table = Table(expand=False)
    for column in ("point", "value", "quality", "age"):
        table.add_column(column, justify="right" if column in ("value", "age") else "left")
    now_ms = time.time() * 1000
    for point in sorted(view.latest):
        sample = view.latest[point]
        value = sample.get("v")
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        quality = sample.get("q", "?") + (f" ({sample['r']})" if sample.get("r") else "")
        style = "green" if sample.get("q") == "good" else "red"
        table.add_row(
            point,
            f"{shown} {units.get(point, '')}".strip(),
            Text(quality, style=style),
            f"{(now_ms - sample['ts']) / 1000:.1f} s",
        )
    parts: list[Any] = [header, table]
    if view.events:
        parts.append(Text("Recent events: " + " | ".join(view.events)))
    return Group(*parts)


def _write_config(
    mqtt_port: int, press_port: int, meter_port: int, opcua_endpoint: str | None
) -> Path:
    yaml = YAML(typ="rt")
    document = yaml.load(DEMO_CONFIG.read_text(encoding="utf-8"))
    document["mqtt"]["port"] = mqtt_port
    document["agent"]["data_dir"] = str(DEMO_DIR / "data")
    ports = {"press3": press_port, "meter1": meter_port}
    for device in list(document["devices"]):
        if device["driver"] != "opcua":
            device["port"] = ports[device["name"]]
        elif opcua_endpoint is None:
            document["devices"].remove(device)
        else:
            device["endpoint"] = opcua_endpoint
    DEMO_DIR.mkdir(exist_ok=True)
    target = DEMO_DIR / "demo.yaml"
    with target.open("w", encoding="utf-8") as out:
        yaml.dump(document, out)
    return target


def _packaging_line() -> SimulatedOpcUaServer | None:
    """The OPC UA packaging line, when asyncua (the opcua extra) is installed."""
    try:
        from drivers.simulate.opcua import SimulatedOpcUaServer
    except ImportError:
        return None
    return SimulatedOpcUaServer(free_port(), changing=True, tick=0.5)


def run_demo(duration: float | None = None) -> int:
    """Run the demo until Ctrl-C (or for `duration` seconds); returns the exit status."""
    console = Console()
    try:
        broker = LocalBroker()
    except BrokerNotFound as exc:
        console.print(f"[red]{exc}[/red]")
        return 1
    press = build_simulator("press-line", free_port())
    meter = build_simulator("meter", free_port())
    packaging = _packaging_line()
    config_path = _write_config(
        broker.port, press.port, meter.port, packaging.endpoint if packaging else None
    )
    config = load_config(config_path)
    units = {p.id: p.unit or "" for d in config.devices for p in d.points}
    root = f"{config.mqtt.topic_prefix}/{config.agent.id}"
    agent: subprocess.Popen[bytes] | None = None
    view: BrokerView | None = None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    log_path = DEMO_DIR / "agent.log"
    try:
        broker.start()
        press.start()
        meter.start()
        if packaging is not None:
            packaging.start()
        console.print(
            f"Broker on 127.0.0.1:{broker.port}, press-line PLC on :{press.port}, "
            f"meter on :{meter.port}, "
            + (
                f"packaging line on {packaging.endpoint}"
                if packaging
                else "no OPC UA packaging line (install the opcua extra for it)"
            )
            + f". Agent log: {log_path}"
        )
        view = BrokerView(broker.host, broker.port, root)
        with log_path.open("ab") as log:
            agent = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        started = time.monotonic()
        deadline = None if duration is None else started + duration
        if console.is_terminal:
            with Live(_render(view, units, started), console=console, refresh_per_second=2) as live:
                while not stop.wait(0.5) and (deadline is None or time.monotonic() < deadline):
                    live.update(_render(view, units, started))
        else:
            while not stop.wait(2) and (deadline is None or time.monotonic() < deadline):
                messages, samples = view.rates()
                print(
                    f"{time.monotonic() - started:5.1f} s: agent {view.status.get('state')}, "
                    f"{messages:.1f} msg/s, {samples:.0f} samples/s, "
                    f"{len(view.latest)} points seen",
                    flush=True,
                )
    except KeyboardInterrupt:
        pass
    finally:
        if agent is not None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(15)
            except subprocess.TimeoutExpired:
                agent.kill()
        if view is not None:
            view.close()
        press.stop()
        meter.stop()
        if packaging is not None:
            packaging.stop()
        broker.__exit__()
    seen = len(view.latest) if view else 0
    console.print(f"Demo stopped. {seen} of {len(units)} points reached the broker.")
    return 0 if seen else 1
