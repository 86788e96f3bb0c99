"""Benchmark: how fast the agent drains a backlog of 1,000,000 samples to the broker.

    python -m bench.drain [--samples 1000000] [--rounds 1] [--timeout 300] [--check]

Workload: an outbox file holding a backlog of `--samples` samples, as an outage of a few hours
leaves it: rows written with `agent.outbox.Outbox.append` from what `agent.pipeline.encode_rows`
makes of 50-sample polls of one device (`line1`, float32 values as the Modbus driver decodes
them, one poll a second, the oldest some 5.6 hours old), 20,000 rows of about 3.6 KB. The
file is built once per run, then copied for each subject. The agent (`shopfloor run`, default
MQTT settings: QoS 1, 20 messages in flight, 128 KiB payload cap) starts on its copy against
a fresh local Mosquitto with one device that produces little (`probe`: one point every second,
from `bench/modbus_server.py` in its own process). The reference is a bare paho script
(`bench/bare_drain.py`) that reads the same rows from its copy, joins consecutive rows into
messages under the same payload cap and publishes them at QoS 1 with the same window of 20
unacknowledged messages; it deletes nothing and has no live data to send first.

Method: a subscriber in this process (`bench.tally.Tally`) tallies every record that arrives,
per topic, dropping messages received twice (same session and seq) and noting messages that
arrive out of oldest-first order. The drain time runs from starting the process to the arrival
of the backlog's last sample; the rate is the backlog over that time (start-up included; the
rate from the first backlog message on is shown too). The process's CPU time (utime + stime)
is read when the first backlog message arrives and when the last sample has, its peak RSS
(VmHWM) at the end. For the agent, the time at which its outbox holds no backlog row any more
(deleted after the PUBACKs) is also noted, and so are the probe's samples that arrived during
the drain, with their latency (live data goes first). Subjects alternate over `--rounds`; the
table shows each subject's round with the median drain time.

Target: the agent drains at least 50,000 samples/s. The agent/bare ratio of the rate is
reported, not checked.

The table goes to stdout, the figures to bench/results/drain.json. The exit status is 0
whatever the figures; with `--check` it is 1 when the target fails or a run could not be made.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sqlite3
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.bytecode import REPO
from bench.measure import agent_command, agent_config_head
from bench.outbox_io import disk_tempdir, file_system_type
from bench.processes import cpu_seconds, ready_server, status_kib, stop_process, tail
from bench.report import TargetCheck, exit_status, print_targets, ratio, show
from bench.session import Session
from bench.subscriber import percentile
from bench.tally import Tally
from drivers.simulate.broker import BrokerNotFound, LocalBroker, free_port

RESULTS = REPO / "bench" / "results" / "drain.json"
BARE_SCRIPT = REPO / "bench" / "bare_drain.py"

TOPIC_PREFIX = "bench"
BACKLOG_DEVICE = "line1"
POINTS_PER_POLL = 50
POLL_EVERY_MS = 1000
PROBE = "probe"
MAX_INFLIGHT = 20  # the agent's default mqtt.max_inflight
MAX_PAYLOAD = 128 * 1024  # the agent's default mqtt.max_payload_bytes
EMPTY_TIMEOUT_S = 15.0

TARGET_SAMPLES_PER_S = 50_000.0


@dataclass
class DrainResult:
    """One subject's drain."""

    workload: str
    subject: str  # "agent" or "bare"
    interval_s: float = 0.0  # (for the shared report code)
    error: str | None = None
    backlog_samples: int = 0
    delivered: int = 0
    duplicate_samples: int = 0
    out_of_order_messages: int = 0
    messages: int = 0
    samples_per_message: float | None = None
    first_backlog_s: float | None = None
    drain_s: float | None = None
    samples_per_s: float | None = None
    samples_per_s_draining: float | None = None
    outbox_empty_s: float | None = None
    cpu_s: float = 0.0  # start-up included
    cpu_s_draining: float | None = None  # from the first backlog message to the last
    cpu_percent_draining: float | None = None
    cpu_s_per_1000_samples: float | None = None  # while draining
    peak_rss_mib: float = 0.0
    rss_mib: float = 0.0
    broker_cpu_percent: float = 0.0
    probe_samples: int | None = None
    probe_latency_p95_ms: float | None = None
    probe_latency_max_ms: float | None = None


# -- the backlog -------------------------------------------------------------------------------


def float32(value: float) -> float:
    """`value` as a float32 register pair decodes to (the Modbus driver's values look so)."""
    result: float = struct.unpack(">f", struct.pack(">f", value))[0]
    return result


def build_backlog(path: Path, samples: int) -> dict[str, float | int]:
    """An outbox file with `samples` samples of `BACKLOG_DEVICE` waiting, one row per poll as
    the agent's writer makes them; returns what it holds."""
    from agent.model import Quality, Sample
    from agent.outbox import Outbox
    from agent.pipeline import Batch, encode_rows
    from agent.publish.payload import max_message_body

    began = time.monotonic()
    polls = math.ceil(samples / POINTS_PER_POLL)
    first_ts = int(time.time() * 1000) - polls * POLL_EVERY_MS
    names = [f"{BACKLOG_DEVICE}.t{index:03d}" for index in range(POINTS_PER_POLL)]
    max_body = max_message_body(MAX_PAYLOAD)
    outbox = Outbox(path)
    try:
        left = samples
        pending = []
        for poll in range(polls):
            ts = first_ts + poll * POLL_EVERY_MS
            count = min(POINTS_PER_POLL, left)
            left -= count
            batch = [
                Sample(
                    names[index],
                    float32(20.0 + index * 0.37 + 0.5 * math.sin(poll / 7 + index)),
                    Quality.GOOD,
                    ts,
                )
                for index in range(count)
            ]
            pending += encode_rows(Batch("metrics", BACKLOG_DEVICE, batch), max_body)
            if len(pending) >= 1000 or left == 0:
                outbox.append(pending)
                pending = []
        stats = outbox.stats()
    finally:
        outbox.close()
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        body_bytes = connection.execute("SELECT sum(length(body)) FROM outbox").fetchone()[0]
    finally:
        connection.close()
    return {
        "rows": stats.rows,
        "samples": stats.records,
        "body_bytes": int(body_bytes),
        "file_bytes": path.stat().st_size,
        "build_s": round(time.monotonic() - began, 1),
    }


def backlog_left(database: Path) -> int:
    """Backlog rows still in an outbox file (read-only)."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
    try:
        row = connection.execute(
            "SELECT count(*) FROM outbox WHERE topic = ?", (BACKLOG_DEVICE,)
        ).fetchone()
    finally:
        connection.close()
    return int(row[0])


# -- one drain ---------------------------------------------------------------------------------


def agent_config(
    path: Path, *, ident: str, broker_port: int, modbus_port: int, data_dir: Path
) -> None:
    """Default outbox and MQTT settings; one device with one point polled every second."""
    lines = agent_config_head(
        agent_id=ident, data_dir=data_dir, broker_port=broker_port, topic_prefix=TOPIC_PREFIX
    )
    lines += [
        "devices:",
        f"  - name: {PROBE}",
        "    driver: modbus_tcp",
        "    host: 127.0.0.1",
        f"    port: {modbus_port}",
        "    unit_id: 1",
        "    interval: 1s",
        "    points:",
        '      - {id: probe.t000, address: "holding:0", type: float32}',
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_drain(
    subject: str,
    *,
    template: Path,
    backlog: int,
    server_port: int,
    workdir: Path,
    round_number: int,
    timeout: float,
) -> DrainResult:
    """Copy the backlog, start the subject on it with a fresh broker, wait for the last sample."""
    result = DrainResult("drain", subject, backlog_samples=backlog)
    ident = f"drain-{subject}-{round_number}"
    data_dir = workdir / f"{ident}-data"
    data_dir.mkdir()
    database = data_dir / "outbox.db"
    shutil.copyfile(template, database)
    log = workdir / f"{ident}.log"
    try:
        with LocalBroker() as broker:
            if subject == "agent":
                config = workdir / f"{ident}.yaml"
                agent_config(
                    config,
                    ident=ident,
                    broker_port=broker.port,
                    modbus_port=server_port,
                    data_dir=data_dir,
                )
                command = agent_command(config)
            else:
                command = [sys.executable, str(BARE_SCRIPT), str(database), str(broker.port)]
                command += ["--agent-id", ident, "--topic-prefix", TOPIC_PREFIX]
                command += ["--max-inflight", str(MAX_INFLIGHT)]
                command += ["--max-payload", str(MAX_PAYLOAD)]
            cpu_at_first: list[float] = []  # the process's CPU time at the first backlog message
            process: subprocess.Popen[bytes] | None = None

            def first_backlog_message() -> None:
                if process is not None:
                    cpu_at_first.append(cpu_seconds(process.pid))

            tally = Tally(
                broker.port,
                f"{TOPIC_PREFIX}/{ident}/#",
                latency_topic=f"/metrics/{PROBE}",
                done_topic=f"/metrics/{BACKLOG_DEVICE}",
                done_records=backlog,
                on_first=first_backlog_message,
            )
            broker_process = getattr(broker, "_process", None)
            broker_pid = broker_process.pid if broker_process is not None else None
            broker_cpu = cpu_seconds(broker_pid) if broker_pid else 0.0
            try:
                with log.open("wb") as output:
                    started = time.monotonic()
                    process = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=output)
                deadline = started + timeout
                while not tally.done.wait(0.2):
                    if process.poll() is not None:
                        raise RuntimeError(f"exited with status {process.returncode}: {tail(log)}")
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the backlog was not delivered within {timeout:g} s")
                pid = process.pid
                cpu = cpu_seconds(pid)
                broker_cpu = (cpu_seconds(broker_pid) - broker_cpu) if broker_pid else 0.0
                result.peak_rss_mib = round(status_kib(pid, "VmHWM") / 1024, 1)
                result.rss_mib = round(status_kib(pid, "VmRSS") / 1024, 1)
                done = tally.topic(f"/metrics/{BACKLOG_DEVICE}")
                assert done.first_arrival is not None and done.last_arrival is not None
                drain = done.last_arrival - started
                result.drain_s = round(drain, 2)
                result.first_backlog_s = round(done.first_arrival - started, 2)
                result.delivered = done.records
                result.duplicate_samples = done.duplicate_records
                result.out_of_order_messages = done.out_of_order
                result.messages = done.messages
                result.samples_per_message = round(done.records / done.messages, 1)
                result.samples_per_s = round(done.records / drain)
                draining = done.last_arrival - done.first_arrival
                if draining > 0:
                    result.samples_per_s_draining = round(done.records / draining)
                result.cpu_s = round(cpu, 2)
                if cpu_at_first and draining > 0:
                    cpu_draining = cpu - cpu_at_first[0]
                    result.cpu_s_draining = round(cpu_draining, 2)
                    result.cpu_percent_draining = round(100 * cpu_draining / draining, 1)
                    result.cpu_s_per_1000_samples = round(1000 * cpu_draining / done.records, 5)
                result.broker_cpu_percent = round(100 * broker_cpu / drain, 1)
                if subject == "agent":
                    probe = tally.topic(f"/metrics/{PROBE}")
                    result.probe_samples = probe.records
                    result.probe_latency_p95_ms = percentile(probe.latency, 0.95)
                    if probe.latency:
                        result.probe_latency_max_ms = max(probe.latency) / 10
                    result.outbox_empty_s = outbox_emptied(database, started)
            finally:
                if process is not None:
                    stop_process(process)
                tally.close()
    except Exception as exc:
        result.error = str(exc) or type(exc).__name__
    return result


def outbox_emptied(database: Path, started: float) -> float | None:
    """Seconds from `started` until the outbox holds no backlog row (None: not within
    EMPTY_TIMEOUT_S)."""
    deadline = time.monotonic() + EMPTY_TIMEOUT_S
    while time.monotonic() < deadline:
        if backlog_left(database) == 0:
            return round(time.monotonic() - started, 2)
        time.sleep(0.05)
    return None


# -- report ------------------------------------------------------------------------------------

ROWS: list[tuple[str, str, str]] = [
    # (label, DrainResult attribute, format)
    ("backlog samples delivered", "delivered", "{:,}"),
    ("samples received twice", "duplicate_samples", "{:,}"),
    ("messages out of oldest-first order", "out_of_order_messages", "{:,}"),
    ("messages", "messages", "{:,}"),
    ("samples per message", "samples_per_message", "{:,.1f}"),
    ("start -> first backlog message, s", "first_backlog_s", "{:.2f}"),
    ("start -> last backlog sample, s", "drain_s", "{:.2f}"),
    ("samples/s, from start", "samples_per_s", "{:,.0f}"),
    ("samples/s, first -> last message", "samples_per_s_draining", "{:,.0f}"),
    ("start -> outbox without backlog, s", "outbox_empty_s", "{:.2f}"),
    ("CPU s, start-up included", "cpu_s", "{:.2f}"),
    ("CPU s, first -> last message", "cpu_s_draining", "{:.2f}"),
    ("CPU % of one core, first -> last message", "cpu_percent_draining", "{:.0f}"),
    ("CPU s per 1,000 samples, first -> last message", "cpu_s_per_1000_samples", "{:.5f}"),
    ("peak RSS (VmHWM), MiB", "peak_rss_mib", "{:.1f}"),
    ("broker CPU %, start -> last sample", "broker_cpu_percent", "{:.0f}"),
    ("live probe samples during the drain", "probe_samples", "{:,}"),
    ("live probe latency p95, ms", "probe_latency_p95_ms", "{:.1f}"),
    ("live probe latency max, ms", "probe_latency_max_ms", "{:.1f}"),
]
NO_RATIO = frozenset(
    {
        "delivered",
        "duplicate_samples",
        "out_of_order_messages",
        "probe_samples",
        "probe_latency_p95_ms",
        "probe_latency_max_ms",
        "outbox_empty_s",
    }
)


def figure(run: DrainResult, attribute: str) -> float | int | None:
    """A figure of a run; None where the run failed."""
    value: float | int | None = None if run.error else getattr(run, attribute)
    return value


def print_comparison(console: Console, title: str, agent: DrainResult, bare: DrainResult) -> None:
    """The agent's and the bare script's figures, and their ratio where it means something."""
    table = Table(title=title)
    for name in ("metric", "agent", "bare", "agent/bare"):
        table.add_column(name, justify="left" if name == "metric" else "right")
    for label, attribute, fmt in ROWS:
        a, b = figure(agent, attribute), figure(bare, attribute)
        shown_ratio = None if attribute in NO_RATIO else ratio(a, b)
        table.add_row(label, show(a, fmt), show(b, fmt), show(shown_ratio, "{:.2f}"))
    console.print(table)


def runs_document(agent: DrainResult, bare: DrainResult) -> dict[str, object]:
    """The results file's `runs`: each subject's figures and agent/bare of each row's."""
    return {
        "agent": asdict(agent),
        "bare": asdict(bare),
        "ratio": {
            attribute: ratio(figure(agent, attribute), figure(bare, attribute))
            for _label, attribute, _fmt in ROWS
            if attribute not in NO_RATIO
        },
    }


def combine(runs: list[DrainResult]) -> DrainResult:
    """A subject's rounds: the one with the median drain time (the first error, if any)."""
    failed = [run for run in runs if run.error]
    if failed:
        return failed[0]
    ordered = sorted(runs, key=lambda run: run.drain_s or 0.0)
    return ordered[len(ordered) // 2]


def check(agent: DrainResult) -> TargetCheck:
    rate = None if agent.error else agent.samples_per_s
    complete = not agent.error and agent.delivered >= agent.backlog_samples
    return TargetCheck(
        f"agent drains >= {TARGET_SAMPLES_PER_S:,.0f} samples/s",
        "drain",
        "n/a" if rate is None else f"{rate:,.0f} samples/s",
        None if rate is None else complete and rate >= TARGET_SAMPLES_PER_S,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.drain", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--samples", type=int, default=1_000_000, help="backlog size")
    parser.add_argument(
        "--rounds", type=int, default=1, help="agent/bare turns, alternating (default 1)"
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds a drain may take at most"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when the target fails")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    session = Session()
    console = session.console

    runs: dict[str, list[DrainResult]] = {"agent": [], "bare": []}
    backlog: dict[str, float | int] = {}
    file_system = ""
    try:
        with disk_tempdir() as tmp:
            workdir = Path(tmp)
            template = workdir / "backlog.db"
            console.print(f"[dim]Building a backlog of {args.samples:,} samples in {workdir}...[/]")
            backlog = build_backlog(template, args.samples)
            file_system = file_system_type(workdir)
            console.print(
                f"[dim]{backlog['rows']:,} rows, {backlog['body_bytes'] / 1e6:.1f} MB of JSON, "
                f"a {backlog['file_bytes'] / 1e6:.1f} MB file, in {backlog['build_s']} s.[/]"
            )
            server_port = free_port()
            command = [sys.executable, "-m", "bench.modbus_server", str(server_port)]
            command += ["--points", "1"]
            with ready_server(command, server_port, workdir / "modbus-server.log"):
                for number in range(1, args.rounds + 1):
                    order = ("agent", "bare") if number % 2 else ("bare", "agent")
                    for subject in order:
                        console.print(f"[dim]round {number}/{args.rounds}: {subject}...[/]")
                        runs[subject].append(
                            run_drain(
                                subject,
                                template=template,
                                backlog=int(backlog["samples"]),
                                server_port=server_port,
                                workdir=workdir,
                                round_number=number,
                                timeout=args.timeout,
                            )
                        )
    except (BrokerNotFound, KeyboardInterrupt) as exc:
        return session.stopped(exc)

    agent, bare = combine(runs["agent"]), combine(runs["bare"])
    print_comparison(
        console,
        f"Draining {backlog.get('samples', 0):,} samples ({POINTS_PER_POLL}-sample rows): "
        "agent vs bare paho",
        agent,
        bare,
    )
    for subject, found in runs.items():
        for run in found:
            if run.error:
                console.print(f"[red]{subject} failed:[/] {run.error}")
        if len(found) > 1:
            shown = ", ".join(
                "-" if r.samples_per_s is None else f"{r.samples_per_s:,}" for r in found
            )
            console.print(f"{subject}: samples/s in each round: {shown}")
    checks = [check(agent)]
    print_targets(console, checks)

    document = {
        "benchmark": "drain",
        "workload": f"a backlog of {args.samples:,} samples in {POINTS_PER_POLL}-sample rows "
        "(encode_rows), drained by the agent (default MQTT settings, one 1-point device at "
        "1 s) and by a bare paho script (same payload cap, 20 in flight), QoS 1, local Mosquitto",
        "rounds": args.rounds,
        "backlog": backlog,
        **session.provenance("shopfloor-agent", "paho-mqtt"),
        "sqlite": sqlite3.sqlite_version,
        "file_system": file_system,
        "runs": runs_document(agent, bare),
        "rounds_detail": {
            subject: [asdict(run) for run in found] for subject, found in runs.items()
        },
        "targets": [asdict(item) for item in checks],
    }
    session.write(args.output, document)
    return exit_status(checks, args.check)


if __name__ == "__main__":
    sys.exit(main())
