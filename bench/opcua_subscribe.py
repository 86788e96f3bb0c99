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
import subprocess
import sys
import tempfile
import time
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

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
from bench.opcua_server import NAMESPACE_URI, PATH, node_name
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
    lines = agent_config_head(
        agent_id=agent_id, data_dir=data_dir, broker_port=broker_port, topic_prefix=TOPIC_PREFIX
    )
    lines += [
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
    """Start the subject, wait for its first message and the warm-up, measure, stop it."""
    result = RunResult(workload.name, subject, workload.period)
    ident = f"{subject}-{workload.name.replace('@', '-')}-{round_number}"

    def command(broker: LocalBroker) -> list[str]:
        if subject != "agent":
            return bare_command(
                BARE_SCRIPT,
                endpoint,
                str(broker.port),
                f"{workload.period:g}",
                "--namespace",
                NAMESPACE_URI,
                agent_id=ident,
                topic_prefix=TOPIC_PREFIX,
                device=DEVICE,
                points=workload.points,
            )
        config = workdir / f"{ident}.yaml"
        agent_config(
            config,
            agent_id=ident,
            broker_port=broker.port,
            endpoint=endpoint,
            workload=workload,
            data_dir=workdir / f"{ident}-data",
        )
        return agent_command(config)

    def window(process: MeasuredProcess) -> None:
        server_begin = server_stats(stats_file)
        process.begin()
        time.sleep(duration)
        arrived = process.end(result)
        server_end = server_stats(stats_file)
        # The last values the server wrote in the window may still be on their way.
        time.sleep(2 * workload.period + 1.0)
        result.delivered_values = process.subscriber.delivered(
            server_begin["last_ts_ms"], server_end["last_ts_ms"]
        )

        result.values = arrived.samples
        result.bad_values = arrived.bad
        result.duplicate_values = arrived.duplicates
        result.values_per_s = process.per_second(arrived.samples)
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
        result.cpu_s_per_1000_values = process.cpu_per_1000(arrived.samples)

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
        track_values=True,
    )
    return result


def combine(runs: list[RunResult], workload: Workload) -> RunResult:
    """One result from a subject's rounds: totals over all windows (CPU per value is total CPU
    over total values, delivered is total delivered over total written), the largest RSS, the
    lowest server rate, the median round's latencies and start time."""
    pooled = pool(runs)
    values = sum(run.values for run in runs)
    server_values = sum(run.server_values for run in runs)
    delivered = sum(run.delivered_values for run in runs)
    server_rates = [r.server_values_per_s for r in runs if r.server_rate_fraction is not None]
    slowest = min(server_rates) if server_rates else 0.0
    return RunResult(
        **pooled.fields,
        values=values,
        bad_values=sum(run.bad_values for run in runs),
        duplicate_values=sum(run.duplicate_values for run in runs),
        values_per_s=pooled.per_second(values),
        server_values=server_values,
        server_values_per_s=slowest,
        server_rate_fraction=round(slowest / workload.nominal_per_s, 4) if server_rates else None,
        server_late_ticks=sum(run.server_late_ticks for run in runs),
        delivered_values=delivered,
        delivered_fraction=round(delivered / server_values, 4) if server_values else None,
        cpu_s_per_1000_values=pooled.cpu_per_1000(values),
    )


# -- report ------------------------------------------------------------------------------------


def check_targets(agent: RunResult, bare: RunResult) -> list[TargetCheck]:
    rates = [
        run.server_rate_fraction
        for run in (agent, bare)
        if not run.error and run.server_rate_fraction is not None
    ]
    server_rate = min(rates) if len(rates) == 2 else None
    delivered = agent.delivered_fraction
    cpu_ratio = ratio(agent.cpu_s_per_1000_values, bare.cpu_s_per_1000_values)
    rss_ratio = ratio(agent.peak_rss_mib, bare.peak_rss_mib)
    return [
        target_check(
            f"server writes >= {SERVER_RATE_TARGET:.0%} of its nominal rate",
            agent,
            bare,
            server_rate,
            lambda v: f"{v:.1%}",
            server_rate is not None and server_rate >= SERVER_RATE_TARGET,
            needs_bare=True,
        ),
        target_check(
            f"agent delivers >= {DELIVERED_TARGET:.0%} of the values written",
            agent,
            bare,
            delivered,
            lambda v: f"{v:.1%}",
            delivered is not None and delivered >= DELIVERED_TARGET,
        ),
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
            f"peak RSS <= {RSS_RATIO_TARGET:g} x bare",
            agent,
            bare,
            rss_ratio,
            lambda v: f"{v:.2f} x",
            rss_ratio is not None and rss_ratio <= RSS_RATIO_TARGET,
            needs_bare=True,
        ),
    ]


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
NO_RATIO = frozenset(
    {
        "server_values_per_s",
        "delivered_fraction",
        "duplicate_values",
        "server_cpu_percent",
        "broker_cpu_percent",
    }
)


def report(
    results: dict[str, dict[str, RunResult]], checks: list[TargetCheck], console: Console
) -> None:
    title = "OPC UA subscription: agent vs bare asyncua + paho"
    print_comparison(console, title, results, ROWS, NO_RATIO)
    print_targets(console, checks)

    for pair in results.values():
        for run in pair.values():
            if run.error:
                console.print(f"[red]{run.subject} {run.workload} failed:[/] {run.error}")
            warnings = []
            if run.duplicate_values:
                warnings.append(
                    f"{run.duplicate_values:,} values received twice "
                    f"({run.duplicate_values / max(run.values, 1):.1%} of those received)"
                )
            if run.bad_values or run.unreadable_messages:
                warnings.append(
                    f"{run.bad_values} BAD values, {run.unreadable_messages} unreadable messages"
                )
            if run.server_late_ticks:
                warnings.append(f"the server skipped {run.server_late_ticks} late ticks")
            for warning in warnings:
                console.print(f"[yellow]{run.subject} {run.workload}: {warning}[/]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.opcua_subscribe", description=__doc__.split("\n\n")[0]
    )
    add_window_options(parser, rounds=2, warmup=3.0)
    parser.add_argument(
        "--workload",
        action="append",
        choices=[workload.name for workload in WORKLOADS],
        help="run only this workload (repeatable; default: all)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    session = Session()
    console = session.console

    workloads = [w for w in WORKLOADS if not args.workload or w.name in args.workload]
    results: dict[str, dict[str, RunResult]] = {}
    round_ratios: dict[str, list[float | None]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="shopfloor-bench-") as tmp:
            workdir = Path(tmp)
            for workload in workloads:
                port = free_port()
                endpoint = f"opc.tcp://127.0.0.1:{port}{PATH}"
                stats_file = workdir / f"server-{workload.points}.json"
                server_log = workdir / f"opcua-server-{workload.points}.log"
                with opcua_server(port, workload, stats_file, server_log) as server:
                    run = partial(
                        run_one,
                        workload,
                        endpoint=endpoint,
                        server_pid=server.pid,
                        stats_file=stats_file,
                        workdir=workdir,
                        args=args,
                    )
                    runs = agent_and_bare(console, args, workload.name, run)
                results[workload.name] = {s: combine(r, workload) for s, r in runs.items()}
                round_ratios[workload.name] = [
                    None
                    if agent.error or bare.error
                    else ratio(agent.cpu_s_per_1000_values, bare.cpu_s_per_1000_values)
                    for agent, bare in zip(runs["agent"], runs["bare"], strict=True)
                ]
    except (BrokerNotFound, KeyboardInterrupt) as exc:
        return session.stopped(exc)

    checks = [check for pair in results.values() for check in check_targets(**pair)]
    report(results, checks, console)
    print_round_ratios(console, round_ratios, "values")

    document = {
        "benchmark": "opcua_subscribe",
        "workload": "one OPC UA server, N Double variables all changing every period, one "
        "subscription (publishing interval = period); agent vs bare asyncua + paho, QoS 1",
        "workloads": {w.name: {"points": w.points, "period_s": w.period} for w in workloads},
        "duration_s": args.duration,
        "rounds": args.rounds,
        "round_cpu_ratios": round_ratios,
        "warmup_s": args.warmup,
        **session.provenance("shopfloor-agent", "asyncua", "paho-mqtt"),
        "runs": runs_document(results, ROWS, NO_RATIO),
        "targets": [asdict(check) for check in checks],
    }
    session.write(args.output, document)
    return exit_status(checks, args.check)


if __name__ == "__main__":
    sys.exit(main())
