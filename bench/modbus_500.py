"""Benchmark: 500 float32 tags on one Modbus unit, the agent against a bare reference script.

    python -m bench.modbus_500 [--duration 20] [--warmup 2] [--check]

Workload: one Modbus TCP unit with 500 float32 values (holding registers 0..999, ABCD), polled

- fast: as fast as possible (the agent at its minimum interval, 10 ms; the bare script
  looping without a pause), and
- 100ms: every 100 ms (both),

and published to a local Mosquitto at QoS 1. The bare reference (`bench/bare_reference.py`)
does the same reads with pymodbus and one JSON publish per poll with paho, nothing else. Both
run in the same benchmark run, one after the other, so that the ratios hold even on a busy
machine. The Modbus server (`bench/modbus_server.py`) and the broker are processes of their
own; only the agent's or the bare script's own process is measured.

For each run a fresh broker is started and a subscriber in this process counts what arrives.
After the first metric message and a warm-up, a window of `--duration` seconds measures:

- points/s received at the broker,
- CPU seconds (utime + stime from /proc/PID/stat) per 1,000 points received,
- peak RSS (VmHWM from /proc/PID/status, read just before stopping the process),
- read -> broker latency: the subscriber's arrival wall time minus each sample's `ts`,
- and, outside the window, the time from starting the process to the first metric message.

The table goes to stdout, the figures to bench/results/modbus_500.json. The exit status is 0
whatever the figures; with `--check` it is 1 when a target fails or a run could not be made.
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
from bench.processes import cpu_seconds, loadavg, ready_server, stop_process, tail
from bench.provenance import code_version, versions
from drivers.simulate.broker import BrokerNotFound, LocalBroker, free_port

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "modbus_500.json"
BARE_SCRIPT = REPO / "bench" / "bare_reference.py"

POINTS = 500
TOPIC_PREFIX = "bench"
DEVICE = "unit1"
AGENT_MIN_INTERVAL = 0.01  # the agent's minimum device interval
FIRST_MESSAGE_TIMEOUT_S = 15.0

# Targets: (key, description, check(agent, bare) -> (value shown, passed)).
RSS_TARGET_MIB = 40.0
P95_TARGET_MS = 10.0
FIRST_TARGET_S = 1.0
CPU_RATIO_TARGET = 1.5


@dataclass(frozen=True)
class Workload:
    name: str
    agent_interval: float
    bare_interval: float


WORKLOADS = (
    Workload("fast", AGENT_MIN_INTERVAL, 0.0),
    Workload("100ms", 0.1, 0.1),
)


@dataclass
class RunResult:
    """What one process did in one workload."""

    workload: str
    subject: str  # "agent" or "bare"
    interval_s: float
    error: str | None = None
    window_s: float = 0.0
    points: int = 0
    bad_points: int = 0
    messages: int = 0
    unreadable_messages: int = 0  # not JSON in the expected shape
    points_per_s: float = 0.0
    messages_per_s: float = 0.0
    cpu_s: float = 0.0
    cpu_s_per_1000_points: float | None = None
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


def status_kib(pid: int, key: str) -> int:
    """A `kB` field of /proc/PID/status, e.g. VmHWM or VmRSS."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


# -- the subscriber ----------------------------------------------------------------------------


@dataclass
class Window:
    points: int = 0
    bad: int = 0
    messages: int = 0
    # Latency in tenths of a millisecond -> number of samples with it.
    latency: Counter[int] = field(default_factory=Counter)


class Subscriber:
    """Counts the metric messages of one publisher as they arrive at the broker."""

    def __init__(self, port: int, topic: str) -> None:
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._first = threading.Event()
        self.first_arrival: float | None = None  # time.monotonic()
        self._window: Window | None = None
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

    def _on_message(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        arrival_ms = time.time_ns() / 1e6
        if self.first_arrival is None:
            self.first_arrival = time.monotonic()
            self._first.set()
        try:
            samples = json.loads(message.payload)["samples"]
            stamps = Counter(sample["ts"] for sample in samples)
            bad = sum(1 for sample in samples if sample["q"] != "good")
        except (ValueError, KeyError, TypeError):
            self.errors += 1
            return
        with self._lock:
            window = self._window
            if window is None:
                return
            window.messages += 1
            window.points += len(samples)
            window.bad += bad
            for ts, count in stamps.items():
                window.latency[round((arrival_ms - ts) * 10)] += count


def percentile(histogram: Counter[int], fraction: float) -> float | None:
    """The `fraction` quantile (nearest rank) of a histogram in tenths of a millisecond, in ms."""
    total = sum(histogram.values())
    if not total:
        return None
    rank = max(1, int(fraction * total + 0.999999))
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return value / 10
    return max(histogram) / 10


# -- processes ---------------------------------------------------------------------------------


def modbus_server(port: int, log: Path) -> AbstractContextManager[subprocess.Popen[bytes]]:
    """The benchmark's Modbus device in its own process, ready when this yields."""
    return ready_server(
        [sys.executable, "-m", "bench.modbus_server", str(port), "--points", str(POINTS)], port, log
    )


def agent_config(
    path: Path,
    *,
    agent_id: str,
    broker_port: int,
    modbus_port: int,
    interval: float,
    data_dir: Path,
    commit_interval: float | None,
) -> None:
    """An agent configuration: one device with the 500 points, no deadband, outbox defaults."""
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
    ]
    if commit_interval is not None:
        lines += ["outbox:", f"  commit_interval: {commit_interval * 1000:g}ms"]
    lines += [
        "devices:",
        f"  - name: {DEVICE}",
        "    driver: modbus_tcp",
        "    host: 127.0.0.1",
        f"    port: {modbus_port}",
        "    unit_id: 1",
        f"    interval: {interval * 1000:g}ms",
        "    points:",
    ]
    lines += [
        f'      - {{id: bench.t{index:03d}, address: "holding:{2 * index}", type: float32}}'
        for index in range(POINTS)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def measure(
    result: RunResult,
    command: list[str],
    *,
    broker: LocalBroker,
    topic: str,
    server_pid: int,
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
        cpu_begin = cpu_seconds(process.pid)
        subscriber.begin()
        window_begin = time.monotonic()
        time.sleep(duration)
        cpu_end = cpu_seconds(process.pid)
        window = subscriber.end()
        window_end = time.monotonic()
        others = {pid: cpu_seconds(pid) - cpu for pid, cpu in others.items()}
        result.peak_rss_mib = round(status_kib(process.pid, "VmHWM") / 1024, 1)
        result.rss_mib = round(status_kib(process.pid, "VmRSS") / 1024, 1)
        result.loadavg = loadavg()

        elapsed = window_end - window_begin
        result.window_s = round(elapsed, 3)
        result.points = window.points
        result.bad_points = window.bad
        result.messages = window.messages
        result.unreadable_messages = subscriber.errors
        result.points_per_s = round(window.points / elapsed, 1)
        result.messages_per_s = round(window.messages / elapsed, 1)
        result.cpu_s = round(cpu_end - cpu_begin, 2)
        result.cpu_percent = round(100 * (cpu_end - cpu_begin) / elapsed, 1)
        if window.points:
            result.cpu_s_per_1000_points = round(1000 * (cpu_end - cpu_begin) / window.points, 5)
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
    server_port: int,
    server_pid: int,
    workdir: Path,
    args: argparse.Namespace,
    duration: float,
    round_number: int = 1,
) -> RunResult:
    interval = workload.agent_interval if subject == "agent" else workload.bare_interval
    result = RunResult(workload.name, subject, interval)
    ident = f"{subject}-{workload.name}-{round_number}"
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
                    modbus_port=server_port,
                    interval=interval,
                    data_dir=workdir / f"{ident}-data",
                    commit_interval=args.commit_interval,
                )
                command = [sys.executable, "-m", "agent", "run", str(config)]
            else:
                command = [
                    sys.executable,
                    str(BARE_SCRIPT),
                    "127.0.0.1",
                    str(server_port),
                    str(broker.port),
                    f"{interval:g}",
                    "--agent-id",
                    ident,
                    "--topic-prefix",
                    TOPIC_PREFIX,
                    "--device",
                    DEVICE,
                    "--points",
                    str(POINTS),
                ]
            measure(
                result,
                command,
                broker=broker,
                topic=topic,
                server_pid=server_pid,
                log=log,
                warmup=args.warmup,
                duration=duration,
            )
    except Exception as exc:
        result.error = str(exc) or type(exc).__name__
    return result


def combine(runs: list[RunResult]) -> RunResult:
    """One result from a subject's rounds: totals over all windows (CPU per point is total CPU
    over total points), the largest RSS, the median round's latencies and start time."""
    first = runs[0]
    failed = [run.error for run in runs if run.error]
    window = sum(run.window_s for run in runs)
    points = sum(run.points for run in runs)
    messages = sum(run.messages for run in runs)
    cpu = sum(run.cpu_s for run in runs)

    def median_of(name: str) -> float | None:
        values = [getattr(run, name) for run in runs if getattr(run, name) is not None]
        return statistics.median(values) if values else None

    maxima = [run.latency_max_ms for run in runs if run.latency_max_ms is not None]
    return RunResult(
        workload=first.workload,
        subject=first.subject,
        interval_s=first.interval_s,
        error=failed[0] if failed else None,
        window_s=round(window, 1),
        points=points,
        bad_points=sum(run.bad_points for run in runs),
        messages=messages,
        unreadable_messages=sum(run.unreadable_messages for run in runs),
        points_per_s=round(points / window, 1) if window else 0.0,
        messages_per_s=round(messages / window, 1) if window else 0.0,
        cpu_s=round(cpu, 2),
        cpu_s_per_1000_points=round(cpu / points * 1000, 5) if points else None,
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


def ratio(agent: float | None, bare: float | None) -> float | None:
    if agent is None or bare is None or bare == 0:
        return None
    return round(agent / bare, 2)


@dataclass
class TargetCheck:
    target: str
    workload: str
    value: str
    passed: bool | None  # None: could not be measured


def check_targets(agent: RunResult, bare: RunResult) -> list[TargetCheck]:
    checks: list[TargetCheck] = []

    def add(name: str, value: float | None, fmt: Callable[[float], str], ok: bool) -> None:
        if agent.error or value is None:
            checks.append(TargetCheck(name, agent.workload, "n/a", None))
        else:
            checks.append(TargetCheck(name, agent.workload, fmt(value), ok))

    cpu_ratio = (
        None if bare.error else ratio(agent.cpu_s_per_1000_points, bare.cpu_s_per_1000_points)
    )
    add(
        f"CPU per 1,000 values <= {CPU_RATIO_TARGET:g} x bare",
        cpu_ratio,
        lambda v: f"{v:.2f} x",
        cpu_ratio is not None and cpu_ratio <= CPU_RATIO_TARGET,
    )
    add(
        f"agent peak RSS <= {RSS_TARGET_MIB:g} MiB",
        agent.peak_rss_mib,
        lambda v: f"{v:.1f} MiB",
        agent.peak_rss_mib <= RSS_TARGET_MIB,
    )
    p95 = agent.latency_p95_ms
    add(
        f"read -> broker p95 <= {P95_TARGET_MS:g} ms",
        p95,
        lambda v: f"{v:.1f} ms",
        p95 is not None and p95 <= P95_TARGET_MS,
    )
    first = agent.first_message_s
    add(
        f"first publish <= {FIRST_TARGET_S:g} s after start",
        first,
        lambda v: f"{v:.2f} s",
        first is not None and first <= FIRST_TARGET_S,
    )
    return checks


ROWS: list[tuple[str, str, str]] = [
    # (label, RunResult attribute, format)
    ("points/s at the broker", "points_per_s", "{:,.0f}"),
    ("messages/s at the broker", "messages_per_s", "{:,.1f}"),
    ("CPU s per 1,000 points", "cpu_s_per_1000_points", "{:.4f}"),
    ("CPU % of one core", "cpu_percent", "{:.1f}"),
    ("peak RSS (VmHWM), MiB", "peak_rss_mib", "{:.1f}"),
    ("latency p50, ms", "latency_p50_ms", "{:.1f}"),
    ("latency p95, ms", "latency_p95_ms", "{:.1f}"),
    ("latency max, ms", "latency_max_ms", "{:.1f}"),
    ("start -> first message, s", "first_message_s", "{:.2f}"),
    ("Modbus server CPU %", "server_cpu_percent", "{:.0f}"),
    ("broker CPU %", "broker_cpu_percent", "{:.0f}"),
]


def show(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def report(
    results: dict[str, dict[str, RunResult]], checks: list[TargetCheck], console: Console
) -> None:
    table = Table(title=f"Modbus, {POINTS} float32 tags, one unit: agent vs bare pymodbus + paho")
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
            cells += [show(a, fmt), show(b, fmt), show(ratio(a, b), "{:.2f}")]
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
            if run.bad_points or run.unreadable_messages:
                console.print(
                    f"[yellow]{run.subject} {run.workload}: {run.bad_points} BAD points, "
                    f"{run.unreadable_messages} unreadable messages[/]"
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.modbus_500", description=__doc__.split("\n\n")[0]
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
        default=3,
        help="agent/bare turns per workload, alternating which goes first (default 3)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="seconds after the first message that are not measured",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target fails")
    parser.add_argument(
        "--commit-interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="override the agent's outbox.commit_interval (default: the agent's default, 250 ms)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    compile_agent()  # measure the agent as installed: bytecode compiled, as pip does
    # Piped output (CI, `tee`) would otherwise be wrapped at 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=120)

    # SIGTERM to the benchmark unwinds like Ctrl-C, so every finally block stops its process.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

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
            server_port = free_port()
            with modbus_server(server_port, workdir / "modbus-server.log") as server:
                for workload in WORKLOADS:
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
                                    server_port=server_port,
                                    server_pid=server.pid,
                                    workdir=workdir,
                                    args=args,
                                    duration=share,
                                    round_number=number,
                                )
                            )
                    results[workload.name] = {s: combine(r) for s, r in runs.items()}
                    round_ratios[workload.name] = [
                        ratio(agent.cpu_s_per_1000_points, bare.cpu_s_per_1000_points)
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
        console.print(f"{name}: agent/bare CPU per 1,000 points in each round: {shown}")

    document = {
        "benchmark": "modbus_500",
        "workload": f"{POINTS} float32 tags on one Modbus unit (holding 0..{2 * POINTS - 1}, "
        "ABCD); agent vs bare pymodbus + paho, QoS 1",
        "duration_s": args.duration,
        "rounds": args.rounds,
        "round_cpu_ratios": round_ratios,
        "warmup_s": args.warmup,
        "commit_interval_s": args.commit_interval,
        "wall_s": round(time.monotonic() - began, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
            "platform": platform.platform(),
        },
        "versions": versions("shopfloor-agent", "pymodbus", "paho-mqtt"),
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
