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
import subprocess
import sys
import tempfile
import time
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

from rich.console import Console

from bench.bytecode import REPO
from bench.measure import (
    MeasuredProcess,
    add_window_options,
    agent_and_bare,
    agent_command,
    agent_config_head,
    bare_command,
    pool,
    run_subject,
)
from bench.processes import ready_server
from bench.report import (
    TargetCheck,
    exit_status,
    print_comparison,
    print_round_ratios,
    print_targets,
    ratio,
    runs_document,
    target_check,
)
from bench.session import Session
from drivers.simulate.broker import BrokerNotFound, LocalBroker, free_port

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
    lines = agent_config_head(
        agent_id=agent_id, data_dir=data_dir, broker_port=broker_port, topic_prefix=TOPIC_PREFIX
    )
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
    """Start the subject, wait for its first message and the warm-up, measure, stop it."""
    interval = workload.agent_interval if subject == "agent" else workload.bare_interval
    result = RunResult(workload.name, subject, interval)
    ident = f"{subject}-{workload.name}-{round_number}"

    def command(broker: LocalBroker) -> list[str]:
        if subject != "agent":
            return bare_command(
                BARE_SCRIPT,
                "127.0.0.1",
                str(server_port),
                str(broker.port),
                f"{interval:g}",
                agent_id=ident,
                topic_prefix=TOPIC_PREFIX,
                device=DEVICE,
                points=POINTS,
            )
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
        return agent_command(config)

    def window(process: MeasuredProcess) -> None:
        process.begin()
        time.sleep(duration)
        arrived = process.end(result)
        result.points = arrived.samples
        result.bad_points = arrived.bad
        result.points_per_s = process.per_second(arrived.samples)
        result.cpu_s_per_1000_points = process.cpu_per_1000(arrived.samples)

    run_subject(
        result,
        ident=ident,
        topic_prefix=TOPIC_PREFIX,
        workdir=workdir,
        command=command,
        window=window,
        server_pid=server_pid,
        warmup=args.warmup,
        first_timeout=FIRST_MESSAGE_TIMEOUT_S,
    )
    return result


def combine(runs: list[RunResult]) -> RunResult:
    """One result from a subject's rounds: totals over all windows (CPU per point is total CPU
    over total points), the largest RSS, the median round's latencies and start time."""
    pooled = pool(runs)
    points = sum(run.points for run in runs)
    return RunResult(
        **pooled.fields,
        points=points,
        bad_points=sum(run.bad_points for run in runs),
        points_per_s=pooled.per_second(points),
        cpu_s_per_1000_points=pooled.cpu_per_1000(points),
    )


# -- report ------------------------------------------------------------------------------------


def check_targets(agent: RunResult, bare: RunResult) -> list[TargetCheck]:
    cpu_ratio = ratio(agent.cpu_s_per_1000_points, bare.cpu_s_per_1000_points)
    p95 = agent.latency_p95_ms
    first = agent.first_message_s
    return [
        target_check(
            f"CPU per 1,000 values <= {CPU_RATIO_TARGET:g} x bare",
            agent,
            bare,
            cpu_ratio,
            lambda v: f"{v:.2f} x",
            cpu_ratio is not None and cpu_ratio <= CPU_RATIO_TARGET,
            needs_bare=True,
        ),
        target_check(
            f"agent peak RSS <= {RSS_TARGET_MIB:g} MiB",
            agent,
            bare,
            agent.peak_rss_mib,
            lambda v: f"{v:.1f} MiB",
            agent.peak_rss_mib <= RSS_TARGET_MIB,
        ),
        target_check(
            f"read -> broker p95 <= {P95_TARGET_MS:g} ms",
            agent,
            bare,
            p95,
            lambda v: f"{v:.1f} ms",
            p95 is not None and p95 <= P95_TARGET_MS,
        ),
        target_check(
            f"first publish <= {FIRST_TARGET_S:g} s after start",
            agent,
            bare,
            first,
            lambda v: f"{v:.2f} s",
            first is not None and first <= FIRST_TARGET_S,
        ),
    ]


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


def report(
    results: dict[str, dict[str, RunResult]], checks: list[TargetCheck], console: Console
) -> None:
    title = f"Modbus, {POINTS} float32 tags, one unit: agent vs bare pymodbus + paho"
    print_comparison(console, title, results, ROWS)
    print_targets(console, checks)

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
    add_window_options(parser, rounds=3, warmup=2.0)
    parser.add_argument(
        "--commit-interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="override the agent's outbox.commit_interval (default: the agent's default, 250 ms)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    session = Session()
    console = session.console

    results: dict[str, dict[str, RunResult]] = {}
    round_ratios: dict[str, list[float | None]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="shopfloor-bench-") as tmp:
            workdir = Path(tmp)
            server_port = free_port()
            with modbus_server(server_port, workdir / "modbus-server.log") as server:
                for workload in WORKLOADS:
                    run = partial(
                        run_one,
                        workload,
                        server_port=server_port,
                        server_pid=server.pid,
                        workdir=workdir,
                        args=args,
                    )
                    runs = agent_and_bare(console, args, workload.name, run)
                    results[workload.name] = {s: combine(r) for s, r in runs.items()}
                    round_ratios[workload.name] = [
                        ratio(agent.cpu_s_per_1000_points, bare.cpu_s_per_1000_points)
                        for agent, bare in zip(runs["agent"], runs["bare"], strict=True)
                    ]
    except (BrokerNotFound, KeyboardInterrupt) as exc:
        return session.stopped(exc)

    checks = [check for pair in results.values() for check in check_targets(**pair)]
    report(results, checks, console)
    print_round_ratios(console, round_ratios, "points")

    document = {
        "benchmark": "modbus_500",
        "workload": f"{POINTS} float32 tags on one Modbus unit (holding 0..{2 * POINTS - 1}, "
        "ABCD); agent vs bare pymodbus + paho, QoS 1",
        "duration_s": args.duration,
        "rounds": args.rounds,
        "round_cpu_ratios": round_ratios,
        "warmup_s": args.warmup,
        "commit_interval_s": args.commit_interval,
        **session.provenance("shopfloor-agent", "pymodbus", "paho-mqtt"),
        "runs": runs_document(results, ROWS),
        "targets": [asdict(check) for check in checks],
    }
    session.write(args.output, document)
    return exit_status(checks, args.check)


if __name__ == "__main__":
    sys.exit(main())
