"""Benchmark: a soak, the agent at 1,000 samples/s for 30 minutes; its memory must not grow.

    python -m bench.soak [--duration 1800] [--warmup 60] [--devices 10] [--points 10]
        [--interval 0.1] [--sample-every 10] [--check]

Workload: the agent (`shopfloor run`) with `--devices` Modbus TCP devices of `--points` float32
points each, every `--interval` seconds: by default 10 devices of 10 points every 100 ms,
1,000 samples/s in 100 polls, rows and messages a second (`--devices 1 --points 1000
--interval 1` is the same rate in one poll a second). The devices share one simulated unit
(`bench/modbus_server.py`, a process of its own) and so one line, as the devices behind one
gateway do. It publishes at QoS 1 to a local Mosquitto, outbox and MQTT at their defaults,
health every 60 s.

Method: the agent's RSS (VmRSS) and CPU time are read every `--sample-every` seconds from its
start. The RSS at the start is the one read when the warm-up (`--warmup` seconds after the
first message) ends, the RSS at the end the one read last before the agent is stopped,
`--duration` seconds later; the growth is their difference. The slope of a least-squares line
through the readings after the warm-up is shown too (MiB per hour), and so is the peak
(VmHWM). A subscriber in this process (`bench.tally.Tally`) tallies every record that arrives
from the agent's start, dropping messages received twice (same session and seq). After the
agent is stopped (SIGTERM: it commits what is left, delivers for up to 5 s and exits), its
outbox file says how many records it took in (`accepted_records`: committed or acknowledged
straight from memory) and how many rows are still waiting; every record taken in must have
arrived.

Targets: RSS growth from the end of the warm-up to the end under 5 MiB; every record taken in
delivered (none missing). The issue's soak is 30 minutes, the default `--duration`; shorter
runs say less about a slow leak.

The tables go to stdout, the figures (the whole RSS series included) to bench/results/soak.json.
The exit status is 0 whatever the figures; with `--check` it is 1 when a target fails or the
run could not be made.
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.bytecode import REPO
from bench.measure import agent_command, agent_config_head
from bench.outbox_io import disk_tempdir
from bench.processes import cpu_seconds, ready_server, status_kib, stop_process, tail
from bench.report import Verdict, exit_status, print_targets
from bench.session import Session
from bench.subscriber import percentile
from bench.tally import Tally
from drivers.simulate.broker import BrokerNotFound, LocalBroker, free_port

RESULTS = REPO / "bench" / "results" / "soak.json"

TOPIC_PREFIX = "bench"
IDENT = "soak"
FIRST_MESSAGE_TIMEOUT_S = 15.0
AFTER_STOP_S = 1.0  # for the last messages to reach the subscriber

TARGET_GROWTH_MIB = 5.0


@dataclass
class Reading:
    """One reading of the agent's memory and CPU time."""

    t_s: float  # since the agent started
    rss_mib: float
    cpu_s: float


@dataclass
class SoakResult:
    devices: int
    points: int
    interval_s: float
    error: str | None = None
    samples_per_s_configured: float = 0.0
    warmup_s: float = 0.0
    measured_s: float = 0.0
    first_message_s: float | None = None
    rss_start_mib: float | None = None
    rss_end_mib: float | None = None
    rss_growth_mib: float | None = None
    rss_min_mib: float | None = None
    rss_max_mib: float | None = None
    rss_slope_mib_per_h: float | None = None
    peak_rss_mib: float | None = None
    cpu_percent: float | None = None
    accepted_records: int | None = None
    rows_left: int | None = None
    records_left: int | None = None
    dropped: dict[str, int] = field(default_factory=dict)
    metric_samples: int = 0
    events: int = 0
    missing: int | None = None
    duplicate_records: int = 0
    bad_samples: int = 0
    messages: int = 0
    samples_per_s_received: float | None = None
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_max_ms: float | None = None
    exit_status: int | None = None
    readings: list[Reading] = field(default_factory=list)


@dataclass
class SoakCheck:
    target: str
    value: str
    passed: bool | None


def agent_config(
    path: Path,
    *,
    devices: int,
    points: int,
    interval: float,
    broker_port: int,
    modbus_port: int,
    data_dir: Path,
) -> None:
    """`devices` devices of `points` float32 points on one Modbus unit; defaults otherwise."""
    lines = agent_config_head(
        agent_id=IDENT, data_dir=data_dir, broker_port=broker_port, topic_prefix=TOPIC_PREFIX
    )
    lines.append("devices:")
    for device in range(devices):
        lines += [
            f"  - name: d{device:02d}",
            "    driver: modbus_tcp",
            "    host: 127.0.0.1",
            f"    port: {modbus_port}",
            "    unit_id: 1",
            f"    interval: {interval * 1000:g}ms",
            "    points:",
        ]
        lines += [
            f'      - {{id: d{device:02d}.t{index:04d}, address: "holding:{2 * index}", '
            "type: float32}"
            for index in range(points)
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def slope_per_hour(readings: list[Reading]) -> float | None:
    """The least-squares slope of RSS over time, MiB per hour (None for fewer than 3)."""
    if len(readings) < 3:
        return None
    n = len(readings)
    mean_t = sum(r.t_s for r in readings) / n
    mean_m = sum(r.rss_mib for r in readings) / n
    variance = sum((r.t_s - mean_t) ** 2 for r in readings)
    if not variance:
        return None
    covariance = sum((r.t_s - mean_t) * (r.rss_mib - mean_m) for r in readings)
    return round(covariance / variance * 3600, 2)


def outbox_after(database: Path) -> tuple[dict[str, int], int, int]:
    """The outbox's meta counters, and the rows and records still waiting in it."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
    try:
        meta = {key: int(value) for key, value in connection.execute("SELECT key, value FROM meta")}
        rows, records = connection.execute(
            "SELECT count(*), coalesce(sum(n), 0) FROM outbox"
        ).fetchone()
    finally:
        connection.close()
    return meta, int(rows), int(records)


def run_soak(args: argparse.Namespace, workdir: Path, console: Console) -> SoakResult:
    result = SoakResult(args.devices, args.points, args.interval)
    result.samples_per_s_configured = round(args.devices * args.points / args.interval, 1)
    data_dir = workdir / "soak-data"
    log = workdir / "soak.log"
    server_port = free_port()
    command = [sys.executable, "-m", "bench.modbus_server", str(server_port)]
    command += ["--points", str(args.points)]
    try:
        with (
            ready_server(command, server_port, workdir / "modbus-server.log"),
            LocalBroker() as broker,
        ):
            config = workdir / "soak.yaml"
            agent_config(
                config,
                devices=args.devices,
                points=args.points,
                interval=args.interval,
                broker_port=broker.port,
                modbus_port=server_port,
                data_dir=data_dir,
            )
            tally = Tally(broker.port, f"{TOPIC_PREFIX}/{IDENT}/#", latency_topic="/metrics/")
            process: subprocess.Popen[bytes] | None = None
            try:
                with log.open("wb") as output:
                    started = time.monotonic()
                    process = subprocess.Popen(
                        agent_command(config), cwd=REPO, stdout=output, stderr=output
                    )
                soak(process, tally, result, args, started, log, console)
                stop_process(process)
                result.exit_status = process.returncode
                time.sleep(AFTER_STOP_S)
            finally:
                if process is not None:
                    stop_process(process)
                tally.close()
            account(result, tally, data_dir / "outbox.db")
    except Exception as exc:
        result.error = str(exc) or type(exc).__name__
    return result


def soak(
    process: subprocess.Popen[bytes],
    tally: Tally,
    result: SoakResult,
    args: argparse.Namespace,
    started: float,
    log: Path,
    console: Console,
) -> None:
    """Read the agent's RSS and CPU time every `--sample-every` s until the end of the run."""
    pid = process.pid

    def check_running() -> None:
        if process.poll() is not None:
            raise RuntimeError(f"the agent exited with status {process.returncode}: {tail(log)}")

    while not tally.total("metrics").records:
        check_running()
        if time.monotonic() - started > FIRST_MESSAGE_TIMEOUT_S:
            raise RuntimeError(f"no metric message within {FIRST_MESSAGE_TIMEOUT_S:g} s")
        time.sleep(0.05)
    result.first_message_s = round(time.monotonic() - started, 2)
    warm_until = time.monotonic() + args.warmup
    end = warm_until + args.duration
    next_reading = time.monotonic()
    next_note = time.monotonic() + 60
    measured_from: Reading | None = None
    while True:
        check_running()
        now = time.monotonic()
        reading = Reading(
            round(now - started, 1), round(status_kib(pid, "VmRSS") / 1024, 2), cpu_seconds(pid)
        )
        result.readings.append(reading)
        if measured_from is None and now >= warm_until:
            measured_from = reading
        if now >= next_note:
            console.print(
                f"[dim]{reading.t_s:,.0f} s: RSS {reading.rss_mib:.1f} MiB, "
                f"{tally.total('metrics').records:,} samples received[/]"
            )
            next_note += 60
        if now >= end:
            break
        next_reading += args.sample_every
        time.sleep(max(0.0, min(next_reading, end) - time.monotonic()))
    result.peak_rss_mib = round(status_kib(pid, "VmHWM") / 1024, 2)
    assert measured_from is not None
    last = result.readings[-1]
    measured = [r for r in result.readings if r.t_s >= measured_from.t_s]
    result.warmup_s = round(measured_from.t_s - result.first_message_s, 1)
    result.measured_s = round(last.t_s - measured_from.t_s, 1)
    result.rss_start_mib = measured_from.rss_mib
    result.rss_end_mib = last.rss_mib
    result.rss_growth_mib = round(last.rss_mib - measured_from.rss_mib, 2)
    result.rss_min_mib = min(r.rss_mib for r in measured)
    result.rss_max_mib = max(r.rss_mib for r in measured)
    result.rss_slope_mib_per_h = slope_per_hour(measured)
    if result.measured_s:
        result.cpu_percent = round(100 * (last.cpu_s - measured_from.cpu_s) / result.measured_s, 1)


def account(result: SoakResult, tally: Tally, database: Path) -> None:
    """What the agent took in (its outbox file, after it stopped) against what arrived."""
    metrics, events = tally.total("metrics"), tally.total("events")
    result.metric_samples = metrics.records
    result.events = events.records
    result.duplicate_records = metrics.duplicate_records + events.duplicate_records
    result.bad_samples = metrics.bad
    result.messages = metrics.messages
    result.latency_p50_ms = percentile(metrics.latency, 0.50)
    result.latency_p95_ms = percentile(metrics.latency, 0.95)
    result.latency_max_ms = max(metrics.latency) / 10 if metrics.latency else None
    last = result.readings[-1] if result.readings else None
    if last is not None and last.t_s:
        result.samples_per_s_received = round(metrics.records / last.t_s, 1)
    meta, result.rows_left, result.records_left = outbox_after(database)
    result.accepted_records = meta.get("accepted_records", 0)
    result.dropped = {
        key: value for key, value in meta.items() if key.startswith(("dropped_", "dead_"))
    }
    result.missing = result.accepted_records - metrics.records - events.records


# -- report ------------------------------------------------------------------------------------

ROWS: list[tuple[str, str, str]] = [
    ("configured samples/s", "samples_per_s_configured", "{:,.0f}"),
    ("start -> first message, s", "first_message_s", "{:.2f}"),
    ("warm-up, s", "warmup_s", "{:,.0f}"),
    ("measured, s", "measured_s", "{:,.0f}"),
    ("RSS at the start (after warm-up), MiB", "rss_start_mib", "{:.2f}"),
    ("RSS at the end, MiB", "rss_end_mib", "{:.2f}"),
    ("RSS growth, MiB", "rss_growth_mib", "{:+.2f}"),
    ("RSS min / max after warm-up, MiB", "rss_range", "{}"),
    ("RSS slope after warm-up, MiB/h", "rss_slope_mib_per_h", "{:+.2f}"),
    ("peak RSS (VmHWM), MiB", "peak_rss_mib", "{:.2f}"),
    ("agent CPU % of one core", "cpu_percent", "{:.1f}"),
    ("records taken in (accepted_records)", "accepted_records", "{:,}"),
    ("metric samples received", "metric_samples", "{:,}"),
    ("events received", "events", "{:,}"),
    ("records missing", "missing", "{:,}"),
    ("rows left in the outbox after stop", "rows_left", "{:,}"),
    ("records received twice", "duplicate_records", "{:,}"),
    ("BAD samples", "bad_samples", "{:,}"),
    ("metric messages", "messages", "{:,}"),
    ("read -> broker p50 / p95 / max, ms", "latency", "{}"),
    ("agent exit status", "exit_status", "{}"),
]


def cell(result: SoakResult, attribute: str, fmt: str) -> str:
    if attribute == "rss_range":
        if result.rss_min_mib is None:
            return "-"
        return f"{result.rss_min_mib:.2f} / {result.rss_max_mib:.2f}"
    if attribute == "latency":
        values = (result.latency_p50_ms, result.latency_p95_ms, result.latency_max_ms)
        return " / ".join("-" if v is None else f"{v:.1f}" for v in values)
    value = getattr(result, attribute)
    return "-" if value is None else fmt.format(value)


def report(result: SoakResult, console: Console) -> list[SoakCheck]:
    table = Table(
        title=f"Soak: {result.devices} devices x {result.points} float32 points every "
        f"{result.interval_s * 1000:g} ms"
    )
    table.add_column("metric")
    table.add_column("agent", justify="right")
    for label, attribute, fmt in ROWS:
        table.add_row(label, cell(result, attribute, fmt))
    console.print(table)

    series = Table(title="RSS over time")
    series.add_column("t, s", justify="right")
    series.add_column("RSS, MiB", justify="right")
    series.add_column("CPU s", justify="right")
    readings = result.readings
    step = max(1, len(readings) // 12)
    shown = readings[::step] + ([readings[-1]] if readings and (len(readings) - 1) % step else [])
    for reading in shown:
        series.add_row(f"{reading.t_s:,.0f}", f"{reading.rss_mib:.2f}", f"{reading.cpu_s:.1f}")
    console.print(series)
    if result.error:
        console.print(f"[red]The soak failed:[/] {result.error}")

    growth = None if result.error else result.rss_growth_mib
    missing = None if result.error else result.missing
    return [
        SoakCheck(
            f"RSS growth < {TARGET_GROWTH_MIB:g} MiB",
            "n/a" if growth is None else f"{growth:+.2f} MiB",
            None if growth is None else growth < TARGET_GROWTH_MIB,
        ),
        SoakCheck(
            "every record taken in arrived",
            "n/a" if missing is None else f"{missing:,} missing",
            None if missing is None else missing <= 0 and not result.rows_left,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--duration", type=float, default=1800.0, help="seconds measured after the warm-up"
    )
    parser.add_argument(
        "--warmup", type=float, default=60.0, help="seconds after the first message not measured"
    )
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--points", type=int, default=10, help="points per device")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between polls")
    parser.add_argument(
        "--sample-every", type=float, default=10.0, help="seconds between RSS readings"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target fails")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    session = Session()
    console = session.console
    console.print(
        f"[dim]{args.devices} devices x {args.points} points every {args.interval:g} s: "
        f"{args.warmup:g} s warm-up, then {args.duration:g} s, RSS every "
        f"{args.sample_every:g} s...[/]"
    )
    try:
        with disk_tempdir() as tmp:
            result = run_soak(args, Path(tmp), console)
    except (BrokerNotFound, KeyboardInterrupt) as exc:
        return session.stopped(exc)

    checks = report(result, console)
    verdicts: list[Verdict] = list(checks)
    print_targets(console, verdicts)
    document = {
        "benchmark": "soak",
        "workload": f"{args.devices} Modbus devices x {args.points} float32 points every "
        f"{args.interval:g} s ({result.samples_per_s_configured:,.0f} samples/s) on one "
        "simulated unit, QoS 1 to a local Mosquitto, defaults",
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "sample_every_s": args.sample_every,
        **session.provenance("shopfloor-agent", "pymodbus", "paho-mqtt"),
        "result": asdict(result),
        "targets": [asdict(check) for check in checks],
    }
    session.write(args.output, document)
    return exit_status(verdicts, args.check)


if __name__ == "__main__":
    sys.exit(main())
