"""Measuring a subject, the agent or a bare reference script, in a process of its own.

The harness that `bench.modbus_500` and `bench.opcua_subscribe` share: their command-line
options, the rounds in which agent and bare take turns (`agent_and_bare`), the two subjects'
commands, and one measured run (`run_subject`): a fresh broker and a subscriber listening at
it, the process started, its first metric message and a warm-up awaited, a window in which its
CPU time (and the server's and the broker's) and what reaches the broker are counted, its memory
read, and the process stopped. The figures every such run records are `SubjectRun`'s; `pool`
takes a subject's rounds together.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from rich.console import Console

from bench.bytecode import REPO
from bench.processes import cpu_seconds, loadavg, status_kib, stop_process, tail
from bench.subscriber import Subscriber, Window, percentile
from drivers.simulate.broker import LocalBroker

__all__ = [
    "MeasuredProcess",
    "Pooled",
    "RunOne",
    "SubjectRun",
    "add_window_options",
    "agent_and_bare",
    "agent_command",
    "agent_config_head",
    "alternating_rounds",
    "bare_command",
    "measured_process",
    "pool",
    "run_subject",
]

RunT_co = TypeVar("RunT_co", covariant=True)
RunT = TypeVar("RunT")


class SubjectRun(Protocol):
    """The figures each subscription benchmark records about one run (its `RunResult`, which
    adds those counted in its own unit: points, values)."""

    __dataclass_fields__: ClassVar[dict[str, Any]]
    workload: str
    subject: str  # "agent" or "bare"
    interval_s: float
    error: str | None
    window_s: float
    messages: int
    unreadable_messages: int  # not JSON in the expected shape
    messages_per_s: float
    cpu_s: float
    cpu_percent: float
    peak_rss_mib: float
    rss_mib: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_max_ms: float | None
    first_message_s: float | None
    server_cpu_percent: float
    broker_cpu_percent: float
    loadavg: list[float]


# -- options and rounds ------------------------------------------------------------------------


def add_window_options(parser: argparse.ArgumentParser, *, rounds: int, warmup: float) -> None:
    """--duration, --rounds, --warmup and --check, with these defaults for the last two."""
    parser.add_argument(
        "--duration",
        type=float,
        default=20.0,
        help="seconds measured per subject and workload, split over the rounds",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=rounds,
        help=f"agent/bare turns per workload, alternating which goes first (default {rounds})",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=warmup,
        help="seconds after the first message that are not measured",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target fails")


def alternating_rounds(
    console: Console, *, rounds: int, warmup: float, duration: float, name: str | None = None
) -> Iterator[tuple[int, str, float]]:
    """(round number, subject, seconds to measure) for `rounds` turns of agent and bare, each
    measured for `duration / rounds` seconds; every run is announced on the console, after
    `name` (a workload) where given."""
    share = duration / rounds
    prefix = f"{name} " if name else ""
    for number in range(1, rounds + 1):
        # Alternating order, so that a machine that slows down or speeds up during the
        # benchmark favours neither subject.
        order = ("agent", "bare") if number % 2 else ("bare", "agent")
        for subject in order:
            console.print(
                f"[dim]{prefix}round {number}/{rounds}: {subject} "
                f"({warmup:g} s warm-up + {share:g} s)...[/]"
            )
            yield number, subject, share


class RunOne(Protocol[RunT_co]):
    """A benchmark's `run_one`, all its other arguments given (a `functools.partial`)."""

    def __call__(self, subject: str, *, duration: float, round_number: int) -> RunT_co: ...


def agent_and_bare(
    console: Console, args: argparse.Namespace, workload: str, run_one: RunOne[RunT]
) -> dict[str, list[RunT]]:
    """Each subject's runs in one workload, in the alternating rounds that `--rounds`,
    `--warmup` and `--duration` ask for: `run_one(subject, duration=seconds to measure,
    round_number=...)`."""
    runs: dict[str, list[RunT]] = {"agent": [], "bare": []}
    for number, subject, share in alternating_rounds(
        console, rounds=args.rounds, warmup=args.warmup, duration=args.duration, name=workload
    ):
        runs[subject].append(run_one(subject, duration=share, round_number=number))
    return runs


# -- the subjects ------------------------------------------------------------------------------


def agent_config_head(
    *, agent_id: str, data_dir: Path, broker_port: int, topic_prefix: str
) -> list[str]:
    """The `agent` and `mqtt` sections of a benchmarked agent's configuration: the local broker,
    QoS 1, health messages once a minute."""
    return [
        "agent:",
        f"  id: {agent_id}",
        f"  data_dir: {data_dir}",
        "  log_level: info",
        "mqtt:",
        "  host: 127.0.0.1",
        f"  port: {broker_port}",
        f"  topic_prefix: {topic_prefix}",
        "  qos: 1",
        "  health_interval: 60s",
    ]


def agent_command(config: Path) -> list[str]:
    """`shopfloor run CONFIG`, from this checkout."""
    return [sys.executable, "-m", "agent", "run", str(config)]


def bare_command(
    script: Path, *arguments: str, agent_id: str, topic_prefix: str, device: str, points: int
) -> list[str]:
    """A bare reference script with its own `arguments` and the options both scripts take."""
    return [
        sys.executable,
        str(script),
        *arguments,
        "--agent-id",
        agent_id,
        "--topic-prefix",
        topic_prefix,
        "--device",
        device,
        "--points",
        str(points),
    ]


# -- one run -----------------------------------------------------------------------------------


def run_subject(
    result: SubjectRun,
    *,
    ident: str,
    topic_prefix: str,
    workdir: Path,
    command: Callable[[LocalBroker], list[str]],
    window: Callable[[MeasuredProcess], None],
    server_pid: int,
    warmup: float,
    first_timeout: float,
    track_values: bool = False,
) -> None:
    """One run, `ident` (the agent id): a fresh broker, `command(broker)` started with a
    subscriber to its metric messages, the time to its first one recorded in `result`, the
    warm-up, then `window(process)`, which measures; the process must still be running after
    it. What goes wrong is recorded in `result.error`."""
    try:
        with (
            LocalBroker() as broker,
            measured_process(
                command(broker),
                broker=broker,
                topic=f"{topic_prefix}/{ident}/metrics/#",
                server_pid=server_pid,
                log=workdir / f"{ident}.log",
                track_values=track_values,
            ) as process,
        ):
            result.first_message_s = process.first_message(first_timeout)
            process.warm_up(warmup)
            window(process)
            process.check_running()
    except Exception as exc:
        result.error = str(exc) or type(exc).__name__


@contextmanager
def measured_process(
    command: list[str],
    *,
    broker: LocalBroker,
    topic: str,
    server_pid: int,
    log: Path,
    track_values: bool = False,
) -> Iterator[MeasuredProcess]:
    """Subscribe to `topic` at the broker, then start `command` (its output to `log`); the
    process is stopped and the subscriber closed on exit."""
    subscriber = Subscriber(broker.port, topic, track_values=track_values)
    process: subprocess.Popen[bytes] | None = None
    try:
        with log.open("wb") as output:
            started = time.monotonic()
            process = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=output)
        yield MeasuredProcess(process, subscriber, started, log, server_pid, broker)
    finally:
        if process is not None:
            stop_process(process)
        subscriber.close()


class MeasuredProcess:
    """A subject's process and the subscriber to its metric messages, in the order of a run:
    `first_message`, `warm_up`, `begin`, the window, `end`, `check_running`."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        subscriber: Subscriber,
        started: float,
        log: Path,
        server_pid: int,
        broker: LocalBroker,
    ) -> None:
        self.process = process
        self.subscriber = subscriber
        self._started = started
        self._log = log
        self._server_pid = server_pid
        broker_process = getattr(broker, "_process", None)
        self._broker_pid: int | None = broker_process.pid if broker_process is not None else None
        self._others: dict[int, float] = {}
        self._cpu_begin = 0.0
        self._window_begin = 0.0
        self.elapsed = 0.0  # the window, seconds
        self.cpu_s = 0.0  # the process's CPU time in the window

    def first_message(self, timeout: float) -> float:
        """Seconds from starting the process to its first metric message at the broker."""
        first = self.subscriber.wait_first(timeout)
        if first is None:
            raise RuntimeError(
                f"no metric message within {timeout:g} s "
                f"(exit status {self.process.poll()}): {tail(self._log)}"
            )
        return round(first - self._started, 3)

    def warm_up(self, seconds: float) -> None:
        """Let the process run `seconds` unmeasured."""
        time.sleep(seconds)
        self.check_running()

    def check_running(self) -> None:
        """RuntimeError, with the end of its log, if the process has exited."""
        if self.process.poll() is not None:
            raise RuntimeError(f"exited with status {self.process.returncode}: {tail(self._log)}")

    def begin(self) -> None:
        """Open the window: the CPU time of the process, the server and the broker so far."""
        pids = (self._server_pid, self._broker_pid)
        self._others = {pid: cpu_seconds(pid) for pid in pids if pid}
        self._cpu_begin = cpu_seconds(self.process.pid)
        self.subscriber.begin()
        self._window_begin = time.monotonic()

    def end(self, result: SubjectRun) -> Window:
        """Close the window and record in `result` what every run records: the window, the
        messages, CPU time and share, peak and current RSS, the load, the latencies and the
        server's and the broker's CPU share. Returns what arrived, for the benchmark's own
        figures (see `per_second` and `cpu_per_1000`)."""
        cpu_end = cpu_seconds(self.process.pid)
        window = self.subscriber.end()
        window_end = time.monotonic()
        others = {pid: cpu_seconds(pid) - cpu for pid, cpu in self._others.items()}
        result.peak_rss_mib = round(status_kib(self.process.pid, "VmHWM") / 1024, 1)
        result.rss_mib = round(status_kib(self.process.pid, "VmRSS") / 1024, 1)
        result.loadavg = loadavg()

        elapsed = self.elapsed = window_end - self._window_begin
        cpu = self.cpu_s = cpu_end - self._cpu_begin
        result.window_s = round(elapsed, 3)
        result.messages = window.messages
        result.unreadable_messages = self.subscriber.errors
        result.messages_per_s = round(window.messages / elapsed, 1)
        result.cpu_s = round(cpu, 2)
        result.cpu_percent = round(100 * cpu / elapsed, 1)
        result.latency_p50_ms = percentile(window.latency, 0.50)
        result.latency_p95_ms = percentile(window.latency, 0.95)
        result.latency_max_ms = max(window.latency) / 10 if window.latency else None
        result.server_cpu_percent = round(100 * others.get(self._server_pid, 0.0) / elapsed, 1)
        if self._broker_pid:
            result.broker_cpu_percent = round(100 * others.get(self._broker_pid, 0.0) / elapsed, 1)
        return window

    def per_second(self, count: int) -> float:
        """`count` (points, values) per second of the window."""
        return round(count / self.elapsed, 1)

    def cpu_per_1000(self, count: int) -> float | None:
        """The process's CPU seconds per 1,000 of `count` in the window (None for none)."""
        return round(1000 * self.cpu_s / count, 5) if count else None


# -- rounds taken together ---------------------------------------------------------------------


@dataclass
class Pooled:
    """A subject's rounds taken together: `fields`, the `SubjectRun` figures (keyword arguments
    for the benchmark's RunResult), and the totals for those counted in its own unit."""

    fields: dict[str, Any]
    window_s: float
    cpu_s: float

    def per_second(self, count: int) -> float:
        """`count` (points, values) per second over all windows."""
        return round(count / self.window_s, 1) if self.window_s else 0.0

    def cpu_per_1000(self, count: int) -> float | None:
        """Total CPU seconds over all windows per 1,000 of `count` (None for none)."""
        return round(self.cpu_s / count * 1000, 5) if count else None


def pool(runs: Sequence[SubjectRun]) -> Pooled:
    """One result from a subject's rounds: totals over all windows (CPU per value is total CPU
    over total values), the largest RSS, the median round's latencies and start time, the mean
    CPU share of the server and the broker, the last round's load; the first error, if any."""
    first = runs[0]
    failed = [run.error for run in runs if run.error]
    window = sum(run.window_s for run in runs)
    messages = sum(run.messages for run in runs)
    cpu = sum(run.cpu_s for run in runs)

    def median_of(name: str) -> float | None:
        found = [getattr(run, name) for run in runs if getattr(run, name) is not None]
        return statistics.median(found) if found else None

    maxima = [run.latency_max_ms for run in runs if run.latency_max_ms is not None]
    fields = {
        "workload": first.workload,
        "subject": first.subject,
        "interval_s": first.interval_s,
        "error": failed[0] if failed else None,
        "window_s": round(window, 1),
        "messages": messages,
        "unreadable_messages": sum(run.unreadable_messages for run in runs),
        "messages_per_s": round(messages / window, 1) if window else 0.0,
        "cpu_s": round(cpu, 2),
        "cpu_percent": round(cpu / window * 100, 1) if window else 0.0,
        "peak_rss_mib": max(run.peak_rss_mib for run in runs),
        "rss_mib": max(run.rss_mib for run in runs),
        "latency_p50_ms": median_of("latency_p50_ms"),
        "latency_p95_ms": median_of("latency_p95_ms"),
        "latency_max_ms": max(maxima) if maxima else None,
        "first_message_s": median_of("first_message_s"),
        "server_cpu_percent": round(statistics.fmean(r.server_cpu_percent for r in runs), 1),
        "broker_cpu_percent": round(statistics.fmean(r.broker_cpu_percent for r in runs), 1),
        "loadavg": runs[-1].loadavg,
    }
    return Pooled(fields, window, cpu)
