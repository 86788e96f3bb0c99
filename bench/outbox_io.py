"""Benchmark: outbox write amplification, the bytes the agent writes to disk per sample taken in.

    python -m bench.outbox_io [--duration 30] [--warmup 5] [--settle 3] [--check]

Workload: the agent (`shopfloor run`) polls one simulated Modbus unit (`bench/modbus_server.py`,
a process of its own) with 500 float32 points every 100 ms, 5,000 samples/s, and publishes to a
local Mosquitto at QoS 1, at the default outbox settings (`commit_interval` 250 ms, i.e. a grace
period of 125 ms in memory, `commit_rows` 1,000) with `synchronous: normal`, the default, then
in a second run with `synchronous: full`. Each run measures two phases of `--duration` seconds:

- broker up: the broker acknowledges each message within milliseconds, inside the grace period,
  so the records should never reach the disk;
- broker down: the broker is stopped and, after `--settle` seconds that are not measured (the
  outage itself, the messages in flight committed), everything taken in is committed.

Method: the agent process's /proc/PID/io (all its threads) at both ends of each window:
`write_bytes`, the page cache the process dirtied, i.e. what goes to the block device on its
behalf (counted in 4 KiB pages when they are dirtied; the file system's journal is not
included), and `wchar`, the bytes passed to write calls (SQLite's WAL frames and checkpoint
pages, and the agent's log, a file here). Each is divided by the samples taken in during the
window: with the broker up, the samples that arrived at a subscriber (the agent forwards each
poll within milliseconds); with the broker down, the growth of `accepted_records` in the outbox
file's meta table, which counts every record committed (read by this process, read-only). Also
shown: the growth of the outbox file and its WAL per sample (what the backlog costs on disk)
and the sectors written to the disk that holds the outbox, from /proc/diskstats: the whole
machine, other processes included, so at most an upper bound of what the agent caused, with the
journal's and the fsyncs' share that `write_bytes` leaves out.

Target: at most 300 B written (`write_bytes`) per sample with the broker down at the default
settings. `synchronous: full` and the broker-up phase are reported without a target.

The table goes to stdout, the figures to bench/results/outbox_io.json. The exit status is 0
whatever the figures; with `--check` it is 1 when the target fails or a run could not be made.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.bytecode import REPO
from bench.measure import MeasuredProcess, agent_command, agent_config_head, measured_process
from bench.processes import cpu_seconds, io_counters, ready_server, status_kib
from bench.report import TargetCheck, exit_status, print_targets, show
from bench.session import Session
from drivers.simulate.broker import BrokerNotFound, LocalBroker, free_port

RESULTS = REPO / "bench" / "results" / "outbox_io.json"

POINTS = 500
INTERVAL_S = 0.1
TOPIC_PREFIX = "bench"
DEVICE = "unit1"
FIRST_MESSAGE_TIMEOUT_S = 15.0
SETTINGS = ("normal", "full")
PHASES = ("broker up", "broker down")

TARGET_BYTES_PER_SAMPLE = 300.0
TARGET_SETTING, TARGET_PHASE = "normal", "broker down"


@dataclass
class PhaseResult:
    """One phase of one run (one `synchronous` setting)."""

    synchronous: str
    phase: str
    error: str | None = None
    window_s: float = 0.0
    samples: int = 0
    counted_by: str = ""  # "subscriber" or "accepted_records"
    expected_samples: int = 0  # points x polls due in the window
    samples_per_s: float = 0.0
    write_bytes: int = 0
    cancelled_write_bytes: int = 0
    wchar: int = 0
    syscw: int = 0
    write_bytes_per_sample: float | None = None
    cancelled_bytes_per_sample: float | None = None
    wchar_per_sample: float | None = None
    write_calls_per_s: float = 0.0
    outbox_growth_per_sample: float | None = None
    machine_disk_bytes_per_sample: float | None = None
    cpu_percent: float = 0.0
    rss_mib: float = 0.0


# -- what is read from outside the agent -------------------------------------------------------


def accepted_records(database: Path) -> int:
    """`accepted_records` from the outbox's meta table, read-only (no checkpoint on close)."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
    try:
        row = connection.execute("SELECT value FROM meta WHERE key = 'accepted_records'").fetchone()
    finally:
        connection.close()
    return int(row[0]) if row else 0


def outbox_size(database: Path) -> int:
    """Bytes of the outbox file and its WAL."""
    total = 0
    for path in (database, database.with_name(database.name + "-wal")):
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size
    return total


def disk_written(path: Path) -> int | None:
    """Bytes written so far to the block device holding `path` (/proc/diskstats, whole
    machine), or None where it cannot be told (a partition's own line is used if it has one)."""
    device = os.stat(path).st_dev
    major, minor = os.major(device), os.minor(device)
    try:
        with open("/proc/diskstats", encoding="ascii") as stats:
            for line in stats:
                fields = line.split()
                if int(fields[0]) == major and int(fields[1]) == minor:
                    return int(fields[9]) * 512  # sectors written, always 512 bytes
    except OSError:
        return None
    return None


def file_system_type(path: Path) -> str:
    """The type of the file system that holds `path` (from /proc/mounts; "" if unknown)."""
    found, found_type = "", ""
    resolved = str(path.resolve())
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                fields = line.split()
                point = fields[1].replace("\\040", " ")
                inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(found):
                    found, found_type = point, fields[2]
    except OSError:
        return ""
    return found_type


def disk_tempdir() -> tempfile.TemporaryDirectory[str]:
    """A temporary directory on a disk: the system's, unless that is in memory (tmpfs), where
    nothing would be written to a disk at all; then one under bench/results (ignored by git)."""
    parent = Path(tempfile.gettempdir())
    if file_system_type(parent) in ("tmpfs", "ramfs"):
        parent = RESULTS.parent
        parent.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix="shopfloor-bench-", dir=parent)


def per_sample(amount: int | None, samples: int) -> float | None:
    return round(amount / samples, 1) if amount is not None and samples else None


# -- one run -----------------------------------------------------------------------------------


def agent_config(
    path: Path, *, ident: str, broker_port: int, modbus_port: int, data_dir: Path, synchronous: str
) -> None:
    """One device with the 500 points every 100 ms; the outbox's defaults but `synchronous`."""
    lines = agent_config_head(
        agent_id=ident, data_dir=data_dir, broker_port=broker_port, topic_prefix=TOPIC_PREFIX
    )
    if synchronous != "normal":
        lines += ["outbox:", f"  synchronous: {synchronous}"]
    lines += [
        "devices:",
        f"  - name: {DEVICE}",
        "    driver: modbus_tcp",
        "    host: 127.0.0.1",
        f"    port: {modbus_port}",
        "    unit_id: 1",
        f"    interval: {INTERVAL_S * 1000:g}ms",
        "    points:",
    ]
    lines += [
        f'      - {{id: bench.t{index:03d}, address: "holding:{2 * index}", type: float32}}'
        for index in range(POINTS)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def measure_phase(
    process: MeasuredProcess, result: PhaseResult, *, database: Path, duration: float
) -> None:
    """One window: the agent's I/O counters, CPU and the samples taken in."""
    pid = process.process.pid
    broker_up = result.phase == "broker up"
    accepted_before = 0 if broker_up else accepted_records(database)
    size_before = outbox_size(database)
    disk_before = disk_written(database.parent)
    cpu_before = cpu_seconds(pid)
    io_before = io_counters(pid)
    process.subscriber.begin()
    began = time.monotonic()
    time.sleep(duration)
    io_after = io_counters(pid)
    elapsed = time.monotonic() - began
    cpu_after = cpu_seconds(pid)
    arrived = process.subscriber.end()
    disk_after = disk_written(database.parent)
    size_after = outbox_size(database)
    process.check_running()

    if broker_up:
        result.samples, result.counted_by = arrived.samples, "subscriber"
    else:
        result.samples = accepted_records(database) - accepted_before
        result.counted_by = "accepted_records"
    samples = result.samples
    result.window_s = round(elapsed, 2)
    result.expected_samples = POINTS * round(elapsed / INTERVAL_S)
    result.samples_per_s = round(samples / elapsed, 1)
    for key in ("write_bytes", "cancelled_write_bytes", "wchar", "syscw"):
        setattr(result, key, io_after[key] - io_before[key])
    result.write_bytes_per_sample = per_sample(result.write_bytes, samples)
    result.cancelled_bytes_per_sample = per_sample(result.cancelled_write_bytes, samples)
    result.wchar_per_sample = per_sample(result.wchar, samples)
    result.write_calls_per_s = round(result.syscw / elapsed, 1)
    result.outbox_growth_per_sample = per_sample(size_after - size_before, samples)
    if disk_before is not None and disk_after is not None:
        result.machine_disk_bytes_per_sample = per_sample(disk_after - disk_before, samples)
    result.cpu_percent = round(100 * (cpu_after - cpu_before) / elapsed, 1)
    result.rss_mib = round(status_kib(pid, "VmRSS") / 1024, 1)


def run_setting(
    synchronous: str, *, server_port: int, server_pid: int, workdir: Path, args: argparse.Namespace
) -> list[PhaseResult]:
    """A fresh broker and agent; the broker-up phase, then the broker stopped and the other."""
    results = [PhaseResult(synchronous, phase) for phase in PHASES]
    ident = f"io-{synchronous}"
    data_dir = workdir / f"{ident}-data"
    current = results[0]
    try:
        with LocalBroker() as broker:
            config = workdir / f"{ident}.yaml"
            agent_config(
                config,
                ident=ident,
                broker_port=broker.port,
                modbus_port=server_port,
                data_dir=data_dir,
                synchronous=synchronous,
            )
            with measured_process(
                agent_command(config),
                broker=broker,
                topic=f"{TOPIC_PREFIX}/{ident}/metrics/#",
                server_pid=server_pid,
                log=workdir / f"{ident}.log",
            ) as process:
                process.first_message(FIRST_MESSAGE_TIMEOUT_S)
                process.warm_up(args.warmup)
                database = data_dir / "outbox.db"
                measure_phase(process, current, database=database, duration=args.duration)
                current = results[1]
                broker.stop()
                process.warm_up(args.settle)
                measure_phase(process, current, database=database, duration=args.duration)
    except Exception as exc:
        current.error = str(exc) or type(exc).__name__
    return results


# -- report ------------------------------------------------------------------------------------

ROWS: list[tuple[str, str, str]] = [
    # (label, PhaseResult attribute, format)
    ("samples taken in", "samples", "{:,}"),
    ("  counted by", "counted_by", "{}"),
    ("  due from the poll schedule", "expected_samples", "{:,}"),
    ("samples/s", "samples_per_s", "{:,.0f}"),
    ("write_bytes per sample, B", "write_bytes_per_sample", "{:,.1f}"),
    ("cancelled_write_bytes per sample, B", "cancelled_bytes_per_sample", "{:,.1f}"),
    ("wchar per sample, B", "wchar_per_sample", "{:,.1f}"),
    ("write calls/s", "write_calls_per_s", "{:,.1f}"),
    ("outbox file + WAL growth per sample, B", "outbox_growth_per_sample", "{:,.1f}"),
    ("disk written per sample (whole machine), B", "machine_disk_bytes_per_sample", "{:,.1f}"),
    ("agent CPU % of one core", "cpu_percent", "{:.1f}"),
    ("agent RSS, MiB", "rss_mib", "{:.1f}"),
]


def report(results: list[PhaseResult], console: Console) -> list[TargetCheck]:
    table = Table(
        title=f"Outbox writes: {POINTS} float32 points every {INTERVAL_S * 1000:g} ms, "
        "default commit interval (250 ms)"
    )
    table.add_column("metric")
    for result in results:
        table.add_column(f"{result.synchronous}\n{result.phase}", justify="right")
    for label, attribute, fmt in ROWS:
        table.add_row(
            label,
            *("-" if result.error else show(getattr(result, attribute), fmt) for result in results),
        )
    console.print(table)
    for result in results:
        if result.error:
            console.print(f"[red]{result.synchronous}, {result.phase} failed:[/] {result.error}")

    checks = []
    for result in results:
        if (result.synchronous, result.phase) != (TARGET_SETTING, TARGET_PHASE):
            continue
        value = None if result.error else result.write_bytes_per_sample
        checks.append(
            TargetCheck(
                f"write_bytes per sample <= {TARGET_BYTES_PER_SAMPLE:g} B",
                f"{result.synchronous}, {result.phase}",
                "n/a" if value is None else f"{value:,.1f} B",
                None if value is None else value <= TARGET_BYTES_PER_SAMPLE,
            )
        )
    print_targets(console, checks)
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.outbox_io", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--duration", type=float, default=30.0, help="seconds measured per phase (default 30)"
    )
    parser.add_argument(
        "--warmup", type=float, default=5.0, help="seconds after the first message not measured"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=3.0,
        help="seconds after stopping the broker before the broker-down window (default 3)",
    )
    parser.add_argument(
        "--synchronous",
        choices=SETTINGS,
        action="append",
        help="measure only this setting (repeatable; default both)",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when the target fails")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    session = Session()
    console = session.console

    results: list[PhaseResult] = []
    file_system = ""
    try:
        with disk_tempdir() as tmp:
            workdir = Path(tmp)
            file_system = file_system_type(workdir)
            console.print(f"[dim]Outbox files in {workdir} ({file_system or 'unknown'}).[/]")
            server_port = free_port()
            command = [sys.executable, "-m", "bench.modbus_server", str(server_port)]
            command += ["--points", str(POINTS)]
            with ready_server(command, server_port, workdir / "modbus-server.log") as server:
                for synchronous in args.synchronous or SETTINGS:
                    console.print(
                        f"[dim]synchronous: {synchronous}: {args.warmup:g} s warm-up, "
                        f"{args.duration:g} s broker up, {args.settle:g} s outage, "
                        f"{args.duration:g} s broker down...[/]"
                    )
                    results += run_setting(
                        synchronous,
                        server_port=server_port,
                        server_pid=server.pid,
                        workdir=workdir,
                        args=args,
                    )
    except (BrokerNotFound, KeyboardInterrupt) as exc:
        return session.stopped(exc)

    checks = report(results, console)
    document = {
        "benchmark": "outbox_io",
        "workload": f"{POINTS} float32 points on one Modbus unit every {INTERVAL_S * 1000:g} ms "
        "to a local Mosquitto at QoS 1; outbox defaults (commit_interval 250 ms, commit_rows "
        "1000); broker up, then stopped",
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "settle_s": args.settle,
        **session.provenance("shopfloor-agent", "paho-mqtt"),
        "sqlite": sqlite3.sqlite_version,
        "file_system": file_system,
        "runs": [asdict(result) for result in results],
        "targets": [asdict(check) for check in checks],
    }
    session.write(args.output, document)
    return exit_status(checks, args.check)


if __name__ == "__main__":
    sys.exit(main())
