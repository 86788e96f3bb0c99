"""Benchmark: OPC UA subscriptions, the agent against a bare asyncua subscriber.

    python -m bench.opcua_subscribe [--duration 20] [--rounds 2] [--warmup 3] [--check]

Workloads (issue 4): one OPC UA server with

- 1000@1Hz: 1,000 Double variables, every one changing once a second, and
- 200@10Hz: 200 Double variables, every one changing every 100 ms,

watched through one subscription whose publishing and sampling interval is the change period,
and every value published to a local Mosquitto at QoS 1. The agent runs `shopfloor run` with one
`opcua` device in `mode: subscription` (`interval` = the period, the points addressed as
`nsu=<namespace URI>;s=V0000`, ...). The bare reference (`bench/bare_opcua_reference.py`)
creates the same subscription with asyncua's iterator API and publishes each notification batch
(one Publish response) as one JSON message with paho, nothing else. Both run in the same
benchmark run, in alternating rounds, so that the ratios hold even on a busy machine. The OPC UA
server (`bench/opcua_server.py`, one per workload) and the broker are processes of their own;
only the agent's or the bare script's own process is measured.

For each run a fresh broker is started and a subscriber in this process counts what arrives.
After the first metric message and a warm-up, a window of `--duration / --rounds` seconds
measures:

- values/s received at the broker, and values/s the server produced (its own counters),
- delivered: of the values the server wrote in the window, the share that reached the broker
  (matched by point and source timestamp, after a grace of two periods plus a second for the
  last ones to arrive; exact, where counting arrivals would be off by a whole 1,000-value
  batch), and the values received twice (QoS 1 allows it; the agent should not do it),
- CPU seconds (utime + stime from /proc/PID/stat) per 1,000 values received,
- peak RSS (VmHWM from /proc/PID/status, read just before stopping the process),
- source -> broker latency: arrival wall time minus each value's source timestamp (for the
  agent up to one publishing interval at the server plus one device interval, by design),
- and, outside the window, the time from starting the process to the first metric message.

Targets (`--check`), per workload:

- the server produced at least 95 % of its nominal rate in every window (else the run measured
  a server that could not keep up, not the agent),
- the agent delivered at least 95 % of the values the server produced,
- the agent's CPU per 1,000 values at most 1.75 x the bare script's,
- the agent's peak RSS at most 1.35 x the bare script's.

The CPU and RSS limits were set after measuring, on a busy 2-core machine: CPU 1.36 to 1.60 x
pooled (single rounds 1.26 to 1.73), RSS 1.25 to 1.27 x (about 14 MiB more than asyncua + paho
alone: the agent's own modules, pydantic, SQLite). They leave room for the noise of a shared
machine, where the agent uses 2 to 4 % of one core and a tenth of a CPU-second decides a round,
but not for a real regression: what the agent adds per value to the bare script's work (its
sample, the outbox, the device task) has to stay below three quarters of that work, and its
memory within about 5 MiB of today's.

The table goes to stdout, the figures to bench/results/opcua_subscribe.json. The exit status is
0 whatever the figures; with `--check` it is 1 when a target fails or a run could not be made.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console
from rich.table import Table

from bench.bytecode import compile_agent
from bench.modbus_500 import TargetCheck, percentile, ratio, show, status_kib
from bench.opcua_server import NAMESPACE_URI, PATH, node_name
from bench.processes import cpu_seconds, loadavg, ready_server, stop_process, tail
from bench.provenance import code_version, versions
from drivers.simulate.broker import BrokerNotFound, LocalBroker, free_port

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "opcua_subscribe.json"
BARE_SCRIPT = REPO / "bench" / "bare_opcua_reference.py"

TOPIC_PREFIX = "bench"
DEVICE = "plc1"
# The agent resolves every `nsu=` node id at connect; 1,000 of them take a few seconds.
FIRST_MESSAGE_TIMEOUT_S = 30.0

DELIVERED_TARGET = 0.95
SERVER_RATE_TARGET = 0.95
CPU_RATIO_TARGET = 1.75
RSS_RATIO_TARGET = 1.35


@dataclass(frozen=True)
class Workload:
    name: str
    points: int
    period: float  # seconds between changes = publishing interval = the agent's interval

    @property
    def nominal_per_s(self) -> float:
        return self.points / self.period


WORKLOADS = (
    Workload("1000@1Hz", 1000, 1.0),
    Workload("200@10Hz", 200, 0.1),
)


def point_id(index: int) -> str:
    return f"bench.v{index:04d}"


@dataclass
class RunResult:
    """What one process did in one workload."""

    workload: str
    subject: str  # "agent" or "bare"
    interval_s: float
    error: str | None = None
    window_s: float = 0.0
    values: int = 0
    bad_values: int = 0
    duplicate_values: int = 0  # received again (same point and source timestamp)
    messages: int = 0
    unreadable_messages: int = 0  # not JSON in the expected shape
    values_per_s: float = 0.0
    messages_per_s: float = 0.0
    server_values: int = 0  # written by the server in the window
    server_values_per_s: float = 0.0
    server_rate_fraction: float | None = None  # of the nominal rate
    server_late_ticks: int = 0
    delivered_values: int = 0  # of server_values, arrived at the broker
    delivered_fraction: float | None = None
    cpu_s: float = 0.0
    cpu_s_per_1000_values: float | None = None
    cpu_percent: float = 0.0
    peak_rss_mib: float = 0.0
    rss_mib: float = 0.0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_max_ms: float | None = None
    first_message_s: float | None = None
    server_cpu_percent: float = 0.0
    broker_cpu_percent: float = 0.0
    loadavg: list[float] = field(default_factory=list)


# -- the subscriber ----------------------------------------------------------------------------


@dataclass
class Window:
    values: int = 0
    bad: int = 0
    duplicates: int = 0  # a point's value with a source timestamp already received
    messages: int = 0
    # Latency in tenths of a millisecond -> number of values with it.
    latency: Counter[int] = field(default_factory=Counter)


class Subscriber:
    """Counts the metric messages of one publisher as they arrive at the broker, in a window,
    and over the whole run which points arrived with which source timestamp (the server writes
    all values of a tick with the same one)."""

    def __init__(self, port: int, topic: str) -> None:
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._first = threading.Event()
        self.first_arrival: float | None = None  # time.monotonic()
        self._window: Window | None = None
        self._points_by_ts: dict[int, set[str]] = {}
        self.errors = 0
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{os.getpid()}"
        )
        self._client.on_connect = lambda client, *_: client.subscribe(topic, qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            self.close()
            raise RuntimeError(f"the subscriber could not subscribe on port {port}")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def wait_first(self, timeout: float) -> float | None:
        """time.monotonic() at which the first metric message arrived, or None."""
        self._first.wait(timeout)
        return self.first_arrival

    def begin(self) -> None:
        with self._lock:
            self._window = Window()

    def end(self) -> Window:
        with self._lock:
            window, self._window = self._window, None
        assert window is not None
        return window

    def delivered(self, after_ts: int, until_ts: int) -> int:
        """Distinct values (point, source timestamp) received with a timestamp in
        (after_ts, until_ts]: a value received twice counts once."""
        with self._lock:
            return sum(
                len(points)
                for ts, points in self._points_by_ts.items()
                if after_ts < ts <= until_ts
            )

    def _on_message(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        arrival_ms = time.time_ns() / 1e6
        if self.first_arrival is None:
            self.first_arrival = time.monotonic()
            self._first.set()
        try:
            samples = json.loads(message.payload)["samples"]
            values = [(sample["p"], sample["ts"]) for sample in samples]
            stamps = Counter(ts for _point, ts in values)
            bad = sum(1 for sample in samples if sample["q"] != "good")
        except (ValueError, KeyError, TypeError):
            self.errors += 1
            return
        with self._lock:
            duplicates = 0
            for point, ts in values:
                points = self._points_by_ts.setdefault(ts, set())
                if point in points:
                    duplicates += 1
                else:
                    points.add(point)
            window = self._window
            if window is None:
                return
            window.messages += 1
            window.values += len(samples)
            window.bad += bad
            window.duplicates += duplicates
            for ts, count in stamps.items():
                window.latency[round((arrival_ms - ts) * 10)] += count


# -- processes ---------------------------------------------------------------------------------


def opcua_server(
    port: int, workload: Workload, stats: Path, log: Path
) -> AbstractContextManager[subprocess.Popen[bytes]]:
    """The workload's OPC UA server in its own process, ready when this yields."""
    command = [
        sys.executable,
        "-m",
        "bench.opcua_server",
        str(port),
        "--points",
        str(workload.points),
        "--period",
        f"{workload.period:g}",
        "--stats",
        str(stats),
    ]
    return ready_server(command, port, log)


def server_stats(path: Path) -> dict[str, Any]:
    """The server's counters after its last tick (see bench/opcua_server.py)."""
    for _attempt in range(50):
        try:
            stats: dict[str, Any] = json.loads(path.read_text(encoding="ascii"))
            return stats
        except (OSError, ValueError):
            time.sleep(0.05)  # not written yet
    raise RuntimeError(f"the server writes no counters to {path}")


def agent_config(
    path: Path,
    *,
    agent_id: str,
    broker_port: int,
    endpoint: str,
    workload: Workload,
    data_dir: Path,
) -> None:
    """An agent configuration: one OPC UA device in subscription mode, outbox defaults."""
    lines = [
        "agent:",
        f"  id: {agent_id}",
        f"  data_dir: {data_dir}",
        "  log_level: info",
        "mqtt:",
        "  host: 127.0.0.1",
        f"  port: {broker_port}",
        f"  topic_prefix: {TOPIC_PREFIX}",
        "  qos: 1",
        "  health_interval: 60s",
        "devices:",
        f"  - name: {DEVICE}",
        "    driver: opcua",
        f"    endpoint: {endpoint}",
        "    mode: subscription",
        f"    interval: {workload.period * 1000:g}ms",
        "    points:",
    ]
    lines += [
        f'      - {{id: {point_id(index)}, node: "nsu={NAMESPACE_URI};s={node_name(index)}"}}'
        for index in range(workload.points)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def measure(
    result: RunResult,
    command: list[str],
    *,
    workload: Workload,
    broker: LocalBroker,
    topic: str,
    server_pid: int,
    stats_file: Path,
    log: Path,
    warmup: float,
    duration: float,
) -> None:
    """Start `command`, wait for its first message and the warm-up, measure, stop it."""
    subscriber = Subscriber(broker.port, topic)
    process: subprocess.Popen[bytes] | None = None
    broker_process = getattr(broker, "_process", None)
    broker_pid = broker_process.pid if broker_process is not None else None
    try:
        with log.open("wb") as output:
            started = time.monotonic()
            process = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=output)
        first = subscriber.wait_first(FIRST_MESSAGE_TIMEOUT_S)
        if first is None:
            raise RuntimeError(
                f"no metric message within {FIRST_MESSAGE_TIMEOUT_S:g} s "
                f"(exit status {process.poll()}): {tail(log)}"
            )
        result.first_message_s = round(first - started, 3)
        time.sleep(warmup)
        if process.poll() is not None:
            raise RuntimeError(f"exited with status {process.returncode}: {tail(log)}")

        others = {pid: cpu_seconds(pid) for pid in (server_pid, broker_pid) if pid}
        server_begin = server_stats(stats_file)
        cpu_begin = cpu_seconds(process.pid)
        subscriber.begin()
        window_begin = time.monotonic()
        time.sleep(duration)
        cpu_end = cpu_seconds(process.pid)
        window = subscriber.end()
        window_end = time.monotonic()
        server_end = server_stats(stats_file)
        others = {pid: cpu_seconds(pid) - cpu for pid, cpu in others.items()}
        result.peak_rss_mib = round(status_kib(process.pid, "VmHWM") / 1024, 1)
        result.rss_mib = round(status_kib(process.pid, "VmRSS") / 1024, 1)
        result.loadavg = loadavg()
        # The last values the server wrote in the window may still be on their way.
        time.sleep(2 * workload.period + 1.0)
        result.delivered_values = subscriber.delivered(
            server_begin["last_ts_ms"], server_end["last_ts_ms"]
        )

        elapsed = window_end - window_begin
        result.window_s = round(elapsed, 3)
        result.values = window.values
        result.bad_values = window.bad
        result.duplicate_values = window.duplicates
        result.messages = window.messages
        result.unreadable_messages = subscriber.errors
        result.values_per_s = round(window.values / elapsed, 1)
        result.messages_per_s = round(window.messages / elapsed, 1)
        result.server_values = server_end["values"] - server_begin["values"]
        server_elapsed = server_end["monotonic"] - server_begin["monotonic"]
        if server_elapsed > 0:
            result.server_values_per_s = round(result.server_values / server_elapsed, 1)
            result.server_rate_fraction = round(
                result.server_values_per_s / workload.nominal_per_s, 4
            )
        result.server_late_ticks = server_end["late"] - server_begin["late"]
        if result.server_values:
            result.delivered_fraction = round(result.delivered_values / result.server_values, 4)
        result.cpu_s = round(cpu_end - cpu_begin, 2)
        result.cpu_percent = round(100 * (cpu_end - cpu_begin) / elapsed, 1)
        if window.values:
            result.cpu_s_per_1000_values = round(1000 * (cpu_end - cpu_begin) / window.values, 5)
        result.latency_p50_ms = percentile(window.latency, 0.50)
        result.latency_p95_ms = percentile(window.latency, 0.95)
        result.latency_max_ms = max(window.latency) / 10 if window.latency else None
        result.server_cpu_percent = round(100 * others.get(server_pid, 0.0) / elapsed, 1)
        if broker_pid:
            result.broker_cpu_percent = round(100 * others.get(broker_pid, 0.0) / elapsed, 1)
        if process.poll() is not None:
            raise RuntimeError(f"exited with status {process.returncode}: {tail(log)}")
    finally:
        if process is not None:
            stop_process(process)
        subscriber.close()


def run_one(
    workload: Workload,
    subject: str,
    *,
    endpoint: str,
    server_pid: int,
    stats_file: Path,
    workdir: Path,
    args: argparse.Namespace,
    duration: float,
    round_number: int = 1,
) -> RunResult:
    result = RunResult(workload.name, subject, workload.period)
    ident = f"{subject}-{workload.name.replace('@', '-')}-{round_number}"
    topic = f"{TOPIC_PREFIX}/{ident}/metrics/#"
    log = workdir / f"{ident}.log"
    try:
        with LocalBroker() as broker:
            if subject == "agent":
                config = workdir / f"{ident}.yaml"
                agent_config(
                    config,
                    agent_id=ident,
                    broker_port=broker.port,
                    endpoint=endpoint,
                    workload=workload,
                    data_dir=workdir / f"{ident}-data",
                )
                command = [sys.executable, "-m", "agent", "run", str(config)]
            else:
                command = [
                    sys.executable,
                    str(BARE_SCRIPT),
                    endpoint,
                    str(broker.port),
                    f"{workload.period:g}",
                    "--namespace",
                    NAMESPACE_URI,
                    "--agent-id",
                    ident,
                    "--topic-prefix",
                    TOPIC_PREFIX,
                    "--device",
                    DEVICE,
                    "--points",
                    str(workload.points),
                ]
            measure(
                result,
                command,
                workload=workload,
                broker=broker,
                topic=topic,
                server_pid=server_pid,
                stats_file=stats_file,
                log=log,
                warmup=args.warmup,
                duration=duration,
            )
    except Exception as exc:
        result.error = str(exc) or type(exc).__name__
    return result


def combine(runs: list[RunResult], workload: Workload) -> RunResult:
    """One result from a subject's rounds: totals over all windows (CPU per value is total CPU
    over total values, delivered is total delivered over total written), the largest RSS, the
    lowest server rate, the median round's latencies and start time."""
    first = runs[0]
    failed = [run.error for run in runs if run.error]
    window = sum(run.window_s for run in runs)
    values = sum(run.values for run in runs)
    messages = sum(run.messages for run in runs)
    cpu = sum(run.cpu_s for run in runs)
    server_values = sum(run.server_values for run in runs)
    delivered = sum(run.delivered_values for run in runs)
    server_rates = [r.server_values_per_s for r in runs if r.server_rate_fraction is not None]

    def median_of(name: str) -> float | None:
        found = [getattr(run, name) for run in runs if getattr(run, name) is not None]
        return statistics.median(found) if found else None

    maxima = [run.latency_max_ms for run in runs if run.latency_max_ms is not None]
    slowest = min(server_rates) if server_rates else 0.0
    return RunResult(
        workload=first.workload,
        subject=first.subject,
        interval_s=first.interval_s,
        error=failed[0] if failed else None,
        window_s=round(window, 1),
        values=values,
        bad_values=sum(run.bad_values for run in runs),
        duplicate_values=sum(run.duplicate_values for run in runs),
        messages=messages,
        unreadable_messages=sum(run.unreadable_messages for run in runs),
        values_per_s=round(values / window, 1) if window else 0.0,
        messages_per_s=round(messages / window, 1) if window else 0.0,
        server_values=server_values,
        server_values_per_s=slowest,
        server_rate_fraction=round(slowest / workload.nominal_per_s, 4) if server_rates else None,
        server_late_ticks=sum(run.server_late_ticks for run in runs),
        delivered_values=delivered,
        delivered_fraction=round(delivered / server_values, 4) if server_values else None,
        cpu_s=round(cpu, 2),
        cpu_s_per_1000_values=round(cpu / values * 1000, 5) if values else None,
        cpu_percent=round(cpu / window * 100, 1) if window else 0.0,
        peak_rss_mib=max(run.peak_rss_mib for run in runs),
        rss_mib=max(run.rss_mib for run in runs),
        latency_p50_ms=median_of("latency_p50_ms"),
        latency_p95_ms=median_of("latency_p95_ms"),
        latency_max_ms=max(maxima) if maxima else None,
        first_message_s=median_of("first_message_s"),
        server_cpu_percent=round(statistics.fmean(r.server_cpu_percent for r in runs), 1),
        broker_cpu_percent=round(statistics.fmean(r.broker_cpu_percent for r in runs), 1),
        loadavg=runs[-1].loadavg,
    )


# -- report ------------------------------------------------------------------------------------


def check_targets(agent: RunResult, bare: RunResult) -> list[TargetCheck]:
    checks: list[TargetCheck] = []

    def add(
        name: str,
        value: float | None,
        fmt: Callable[[float], str],
        ok: bool,
        *,
        needs_bare: bool = False,
    ) -> None:
        if agent.error or value is None or (needs_bare and bare.error):
            checks.append(TargetCheck(name, agent.workload, "n/a", None))
        else:
            checks.append(TargetCheck(name, agent.workload, fmt(value), ok))

    rates = [
        run.server_rate_fraction
        for run in (agent, bare)
        if not run.error and run.server_rate_fraction is not None
    ]
    server_rate = min(rates) if len(rates) == 2 else None
    add(
        f"server writes >= {SERVER_RATE_TARGET:.0%} of its nominal rate",
        server_rate,
        lambda v: f"{v:.1%}",
        server_rate is not None and server_rate >= SERVER_RATE_TARGET,
        needs_bare=True,
    )
    delivered = agent.delivered_fraction
    add(
        f"agent delivers >= {DELIVERED_TARGET:.0%} of the values written",
        delivered,
        lambda v: f"{v:.1%}",
        delivered is not None and delivered >= DELIVERED_TARGET,
    )
    cpu_ratio = ratio(agent.cpu_s_per_1000_values, bare.cpu_s_per_1000_values)
    add(
        f"CPU per 1,000 values <= {CPU_RATIO_TARGET:g} x bare",
        cpu_ratio,
        lambda v: f"{v:.2f} x",
        cpu_ratio is not None and cpu_ratio <= CPU_RATIO_TARGET,
        needs_bare=True,
    )
    rss_ratio = ratio(agent.peak_rss_mib, bare.peak_rss_mib)
    add(
        f"peak RSS <= {RSS_RATIO_TARGET:g} x bare",
        rss_ratio,
        lambda v: f"{v:.2f} x",
        rss_ratio is not None and rss_ratio <= RSS_RATIO_TARGET,
        needs_bare=True,
    )
    return checks


ROWS: list[tuple[str, str, str]] = [
    # (label, RunResult attribute, format)
    ("values/s at the broker", "values_per_s", "{:,.0f}"),
    ("values/s written by the server", "server_values_per_s", "{:,.0f}"),
    ("delivered, % of written", "delivered_fraction", "{:.1%}"),
    ("values received twice", "duplicate_values", "{:,}"),
    ("messages/s at the broker", "messages_per_s", "{:,.1f}"),
    ("CPU s per 1,000 values", "cpu_s_per_1000_values", "{:.4f}"),
    ("CPU % of one core", "cpu_percent", "{:.1f}"),
    ("peak RSS (VmHWM), MiB", "peak_rss_mib", "{:.1f}"),
    ("source -> broker p50, ms", "latency_p50_ms", "{:.0f}"),
    ("source -> broker p95, ms", "latency_p95_ms", "{:.0f}"),
    ("source -> broker max, ms", "latency_max_ms", "{:.0f}"),
    ("start -> first message, s", "first_message_s", "{:.2f}"),
    ("OPC UA server CPU %", "server_cpu_percent", "{:.0f}"),
    ("broker CPU %", "broker_cpu_percent", "{:.0f}"),
]
# Rows whose agent/bare ratio means nothing (the server's figures, a share, a latency).
NO_RATIO = {
    "server_values_per_s",
    "delivered_fraction",
    "duplicate_values",
    "server_cpu_percent",
    "broker_cpu_percent",
}


def report(
    results: dict[str, dict[str, RunResult]], checks: list[TargetCheck], console: Console
) -> None:
    table = Table(title="OPC UA subscription: agent vs bare asyncua + paho")
    table.add_column("metric")
    for workload in results:
        table.add_column(f"{workload}\nagent", justify="right")
        table.add_column(f"{workload}\nbare", justify="right")
        table.add_column(f"{workload}\nagent/bare", justify="right")
    for label, attribute, fmt in ROWS:
        cells = [label]
        for pair in results.values():
            agent, bare = pair["agent"], pair["bare"]
            a = None if agent.error else getattr(agent, attribute)
            b = None if bare.error else getattr(bare, attribute)
            shown_ratio = None if attribute in NO_RATIO else ratio(a, b)
            cells += [show(a, fmt), show(b, fmt), show(shown_ratio, "{:.2f}")]
        table.add_row(*cells)
    console.print(table)

    targets = Table(title="Targets")
    targets.add_column("target")
    targets.add_column("workload")
    targets.add_column("agent", justify="right")
    targets.add_column("result")
    for check in checks:
        verdict = {True: "[green]PASS[/]", False: "[red]FAIL[/]", None: "[yellow]n/a[/]"}
        targets.add_row(check.target, check.workload, check.value, verdict[check.passed])
    console.print(targets)

    for pair in results.values():
        for run in pair.values():
            if run.error:
                console.print(f"[red]{run.subject} {run.workload} failed:[/] {run.error}")
            if run.duplicate_values:
                console.print(
                    f"[yellow]{run.subject} {run.workload}: {run.duplicate_values:,} values "
                    f"received twice ({run.duplicate_values / max(run.values, 1):.1%} of "
                    "those received)[/]"
                )
            if run.bad_values or run.unreadable_messages:
                console.print(
                    f"[yellow]{run.subject} {run.workload}: {run.bad_values} BAD values, "
                    f"{run.unreadable_messages} unreadable messages[/]"
                )
            if run.server_late_ticks:
                console.print(
                    f"[yellow]{run.subject} {run.workload}: the server skipped "
                    f"{run.server_late_ticks} late ticks[/]"
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.opcua_subscribe", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=20.0,
        help="seconds measured per subject and workload, split over the rounds",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="agent/bare turns per workload, alternating which goes first (default 2)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=3.0,
        help="seconds after the first message that are not measured",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target fails")
    parser.add_argument(
        "--workload",
        action="append",
        choices=[workload.name for workload in WORKLOADS],
        help="run only this workload (repeatable; default: all)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    compile_agent()  # measure the agent as installed: bytecode compiled, as pip does
    # Piped output (CI, `tee`) would otherwise be wrapped at 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=120)

    # SIGTERM to the benchmark unwinds like Ctrl-C, so every finally block stops its process.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    workloads = [w for w in WORKLOADS if not args.workload or w.name in args.workload]
    results: dict[str, dict[str, RunResult]] = {}
    round_ratios: dict[str, list[float | None]] = {}
    code = code_version()
    dirty = f", {len(code['changed_files'])} agent files changed" if code["changed_files"] else ""
    console.print(f"[dim]Agent code: commit {code['commit']}{dirty}.[/]")
    began = time.monotonic()
    load_before = loadavg()
    try:
        with tempfile.TemporaryDirectory(prefix="shopfloor-bench-") as tmp:
            workdir = Path(tmp)
            for workload in workloads:
                port = free_port()
                endpoint = f"opc.tcp://127.0.0.1:{port}{PATH}"
                stats_file = workdir / f"server-{workload.points}.json"
                server_log = workdir / f"opcua-server-{workload.points}.log"
                with opcua_server(port, workload, stats_file, server_log) as server:
                    runs: dict[str, list[RunResult]] = {"agent": [], "bare": []}
                    share = args.duration / args.rounds
                    for number in range(1, args.rounds + 1):
                        # Alternating order, so that a machine that slows down or speeds up
                        # during the benchmark favours neither subject.
                        order = ("agent", "bare") if number % 2 else ("bare", "agent")
                        for subject in order:
                            console.print(
                                f"[dim]{workload.name} round {number}/{args.rounds}: {subject} "
                                f"({args.warmup:g} s warm-up + {share:g} s)...[/]"
                            )
                            runs[subject].append(
                                run_one(
                                    workload,
                                    subject,
                                    endpoint=endpoint,
                                    server_pid=server.pid,
                                    stats_file=stats_file,
                                    workdir=workdir,
                                    args=args,
                                    duration=share,
                                    round_number=number,
                                )
                            )
                results[workload.name] = {s: combine(r, workload) for s, r in runs.items()}
                round_ratios[workload.name] = [
                    None
                    if agent.error or bare.error
                    else ratio(agent.cpu_s_per_1000_values, bare.cpu_s_per_1000_values)
                    for agent, bare in zip(runs["agent"], runs["bare"], strict=True)
                ]
    except BrokerNotFound as exc:
        console.print(f"[red]{exc}[/]")
        return 2
    except KeyboardInterrupt:
        console.print("[red]Interrupted; every process this benchmark started is stopped.[/]")
        return 130

    checks = [check for pair in results.values() for check in check_targets(**pair)]
    report(results, checks, console)
    for name, ratios in round_ratios.items():
        shown = ", ".join("-" if value is None else f"{value:.2f}" for value in ratios)
        console.print(f"{name}: agent/bare CPU per 1,000 values in each round: {shown}")

    document = {
        "benchmark": "opcua_subscribe",
        "workload": "one OPC UA server, N Double variables all changing every period, one "
        "subscription (publishing interval = period); agent vs bare asyncua + paho, QoS 1",
        "workloads": {w.name: {"points": w.points, "period_s": w.period} for w in workloads},
        "duration_s": args.duration,
        "rounds": args.rounds,
        "round_cpu_ratios": round_ratios,
        "warmup_s": args.warmup,
        "wall_s": round(time.monotonic() - began, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
            "platform": platform.platform(),
        },
        "versions": versions("shopfloor-agent", "asyncua", "paho-mqtt"),
        "code": code,
        "runs": {
            name: {
                **{subject: asdict(run) for subject, run in pair.items()},
                "ratio": {
                    attribute: ratio(
                        None if pair["agent"].error else getattr(pair["agent"], attribute),
                        None if pair["bare"].error else getattr(pair["bare"], attribute),
                    )
                    for _label, attribute, _fmt in ROWS
                    if attribute not in NO_RATIO
                },
            }
            for name, pair in results.items()
        },
        "targets": [asdict(check) for check in checks],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    console.print(f"[dim]Wrote {args.output} ({document['wall_s']} s).[/]")

    failed = any(check.passed is not True for check in checks)
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
