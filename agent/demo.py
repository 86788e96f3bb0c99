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
    from drivers.simulate.sorting import SortingLine

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
        self.inspections: deque[dict[str, Any]] = deque(maxlen=8)
        self.inspections_seen = 0
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
            elif message.topic.endswith("/events/inspection"):
                events = document.get("events", [])
                self.inspections.extend(events)
                self.inspections_seen += len(events)
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


def _render(
    view: BrokerView, units: dict[str, str], started: float, sorting: SortingLine | None
) -> Group:
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
    if view.inspections or sorting is not None:
        parts.append(_station_view(view, sorting))
    if view.events:
        parts.append(Text("Recent events: " + " | ".join(view.events)))
    return Group(*parts)


def _station_view(view: BrokerView, sorting: SortingLine | None) -> Group:
    """The washer-check station: yield and latency from health, the last verdicts from the
    result events, and how the simulated PLC sorted the parts against their ground truth."""
    station = view.health.get("stations", {}).get("washer-check", {})
    latency = station.get("latency_ms") or {}
    yield_ = station.get("yield")
    lines = [
        Text.assemble(
            ("Station washer-check: ", "bold"),
            f"{station.get('inspections', 0)} inspections, yield "
            + (f"{yield_:.1%}" if yield_ is not None else "-")
            + f", NG by class {station.get('ng_by_class', {})}, "
            f"missed triggers {station.get('missed_triggers', 0)}, "
            f"trigger -> verdict in PLC p50 {latency.get('p50', '-')} ms, "
            f"p95 {latency.get('p95', '-')} ms",
        )
    ]
    if sorting is not None:
        tally = sorting.tally
        accuracy = tally.accuracy
        lines.append(
            Text(
                f"  The PLC sorted {tally.sorted_ok} OK and {tally.sorted_ng} NG "
                f"({tally.no_result} without result); ground truth {dict(tally.truth)}; "
                f"sorted right {'-' if accuracy is None else f'{accuracy:.1%}'}"
            )
        )
    for event in list(view.inspections)[-5:]:
        data = event.get("data", {})
        verdict = str(data.get("verdict", "?"))
        style = {"ok": "green", "ng": "red"}.get(verdict, "yellow")
        total = data.get("timings_ms", {}).get("total", "?")
        lines.append(
            Text.assemble(
                f"  part {data.get('part_id')}: ",
                (verdict.upper(), style),
                f" {data.get('class') or ''} ({total} ms)",
            )
        )
    return Group(*lines)


def _station_line(view: BrokerView, sorting: SortingLine | None) -> str:
    """One line about the station for a log (no terminal): inspections and sorting."""
    if sorting is None:
        return ""
    station = view.health.get("stations", {}).get("washer-check", {})
    tally = sorting.tally
    return (
        f", station: {station.get('inspections', 0)} inspections, "
        f"yield {station.get('yield')}, {view.inspections_seen} results at the broker; PLC "
        f"sorted "
        f"{tally.sorted_ok} OK / {tally.sorted_ng} NG of {tally.parts} parts, "
        f"{tally.correct} right"
    )


def _write_config(
    mqtt_port: int,
    press_port: int,
    meter_port: int,
    opcua_endpoint: str | None,
    sorting: SortingLine | None,
) -> Path:
    yaml = YAML(typ="rt")
    document = yaml.load(DEMO_CONFIG.read_text(encoding="utf-8"))
    document["mqtt"]["port"] = mqtt_port
    document["agent"]["data_dir"] = str(DEMO_DIR / "data")
    ports = {"press3": press_port, "meter1": meter_port}
    if sorting is not None:
        ports["sorter"] = sorting.plc.port
        document["cameras"][0]["source"] = sorting.camera_url
        for station in document["stations"]:
            for model in station["models"]:
                model["path"] = str((DEMO_CONFIG.parent / model["path"]).resolve())
    else:
        del document["cameras"], document["stations"]
    for device in list(document["devices"]):
        if device["name"] == "sorter" and sorting is None:
            document["devices"].remove(device)
        elif device["driver"] != "opcua":
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


def _sorting_line() -> SortingLine | None:
    """The washer sorting station, when numpy, OpenCV and onnxruntime (the vision extra) are
    installed."""
    try:
        import onnxruntime  # noqa: F401  (the agent needs it for the station)

        from drivers.simulate.sorting import SortingLine
    except ImportError:
        return None
    return SortingLine(plc_port=free_port(), camera_port=free_port())


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
    sorting = _sorting_line()
    config_path = _write_config(
        broker.port, press.port, meter.port, packaging.endpoint if packaging else None, sorting
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
        if sorting is not None:
            sorting.start()
        console.print(
            f"Broker on 127.0.0.1:{broker.port}, press-line PLC on :{press.port}, "
            f"meter on :{meter.port}, "
            + (
                f"packaging line on {packaging.endpoint}"
                if packaging
                else "no OPC UA packaging line (install the opcua extra for it)"
            )
            + (
                f", sorting station PLC on :{sorting.plc.port} with its camera at "
                f"{sorting.camera_url}"
                if sorting
                else ", no vision station (install the vision extra for it)"
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
            first = _render(view, units, started, sorting)
            with Live(first, console=console, refresh_per_second=2) as live:
                while not stop.wait(0.5) and (deadline is None or time.monotonic() < deadline):
                    live.update(_render(view, units, started, sorting))
        else:
            while not stop.wait(2) and (deadline is None or time.monotonic() < deadline):
                messages, samples = view.rates()
                print(
                    f"{time.monotonic() - started:5.1f} s: agent {view.status.get('state')}, "
                    f"{messages:.1f} msg/s, {samples:.0f} samples/s, "
                    f"{len(view.latest)} points seen" + _station_line(view, sorting),
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
        if sorting is not None:
            sorting.stop()
        broker.__exit__()
    seen = len(view.latest) if view else 0
    console.print(f"Demo stopped. {seen} of {len(units)} points reached the broker.")
    if view is not None and sorting is not None:
        line = _station_line(view, sorting).removeprefix(", ")
        console.print(line[:1].upper() + line[1:] + ".", soft_wrap=True)
    return 0 if seen else 1
