"""Benchmark: the Modbus read planner, 2,000 points on 4 units, agent driver against bare pymodbus.

    python -m bench.modbus_planner [--duration 20] [--warmup 1] [--rounds 4] [--check]

Workload (`bench/planner_subjects.py`): 2,000 points on 4 units (ids 1-4) of one simulated
Modbus TCP server, 500 per unit in 3 tables: holding registers (float32, uint16, int32,
float64), input registers (float32, uint16, int32; CDAB on unit 4) and coils, with small gaps
and a few jumps to a new section of the register map. The server runs in a process of its own,
so its CPU never counts against a client. Polled as fast as possible by

- agent: the agent's driver, `ModbusDriver(device, line)` for each unit on one shared line
  (`ModbusLines().for_device`, the units sit behind one TCP endpoint), one asyncio task per
  unit calling `await driver.read(device.points)` in a loop: planned reads, decoded samples;
- bare: one loop on one pymodbus `AsyncModbusTcpClient` issuing exactly the agent's requests
  (the same table, start and count per unit, taken from the agent's plan) and decoding each
  answer with one precompiled struct (word order ignored): the fastest a hand-written loop gets
  the values;
- one-per-point: the same bare loop with one request per point, the reference a planner saves
  us from (a short run: `--per-point-duration` seconds).

Agent and bare take turns over `--rounds` rounds (agent, bare, then bare, agent, ...), each
round `duration / rounds` seconds per subject after a warm-up, each run a fresh process, so
their ratio holds on a busy machine. A subject counts, in its window: requests, points decoded
(agent: samples returned) or covered (bare), and its own CPU time; the benchmark reads the
server's CPU from /proc. The agent's last poll of every unit is checked against the values the
server holds (outside the window), and BAD samples are counted.

The table goes to stdout, the figures to bench/results/modbus_planner.json. The exit status is
0 whatever the figures; with `--check` it is 1 when the agent's points/s is below 0.9 x bare,
when the agent returns a BAD sample or a wrong value, or when a run could not be made.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.bytecode import REPO
from bench.measure import alternating_rounds
from bench.planner_subjects import (
    POINTS_PER_UNIT,
    UNITS,
    device_config,
    one_per_point_plan,
    workload,
)
from bench.processes import cpu_seconds, loadavg, ready_server, stop_process, tail
from bench.report import exit_status, print_targets, ratio, show
from bench.session import Session
from drivers.simulate.broker import free_port

RESULTS = REPO / "bench" / "results" / "modbus_planner.json"
SUBJECTS_MODULE = "bench.planner_subjects"

THROUGHPUT_TARGET = 0.9  # agent points/s >= this x bare points/s at the same requests
START_TIMEOUT_S = 30.0


@dataclass
class RunResult:
    """What one subject process did in one window."""

    subject: str  # "agent", "bare" or "one-per-point"
    round: int
    error: str | None = None
    window_s: float = 0.0
    requests_per_poll: int = 0  # the plan, all 4 units
    requests: int = 0
    points: int = 0
    polls: int = 0
    bad_points: int = 0
    cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    # Agent only: its last poll of every unit compared with the served values.
    checked_points: int = 0
    wrong_values: int = 0
    wrong_examples: list[str] = field(default_factory=list)
    plan_changed: bool = False  # the driver split a block the server rejected
    loadavg: list[float] = field(default_factory=list)


@dataclass
class Summary:
    """One subject over all its rounds."""

    subject: str
    runs: int = 0
    failed: int = 0
    window_s: float = 0.0
    requests_per_poll: int | None = None
    requests: int = 0
    points: int = 0
    bad_points: int = 0
    wrong_values: int = 0
    cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    requests_per_s: float | None = None
    points_per_s: float | None = None
    cpu_s_per_1000_points: float | None = None
    cpu_us_per_request: float | None = None
    cpu_percent: float | None = None
    server_cpu_percent: float | None = None


def summarize(subject: str, runs: list[RunResult]) -> Summary:
    summary = Summary(subject)
    for run in runs:
        summary.runs += 1
        if run.error:
            summary.failed += 1
            continue
        summary.requests_per_poll = run.requests_per_poll
        summary.window_s += run.window_s
        summary.requests += run.requests
        summary.points += run.points
        summary.bad_points += run.bad_points
        summary.wrong_values += run.wrong_values
        summary.cpu_s += run.cpu_s
        summary.server_cpu_s += run.server_cpu_s
    if summary.window_s > 0:
        elapsed = summary.window_s
        summary.requests_per_s = round(summary.requests / elapsed, 1)
        summary.points_per_s = round(summary.points / elapsed, 1)
        summary.cpu_percent = round(100 * summary.cpu_s / elapsed, 1)
        summary.server_cpu_percent = round(100 * summary.server_cpu_s / elapsed, 1)
    if summary.points:
        summary.cpu_s_per_1000_points = round(1000 * summary.cpu_s / summary.points, 5)
    if summary.requests:
        summary.cpu_us_per_request = round(1e6 * summary.cpu_s / summary.requests, 1)
    summary.window_s = round(summary.window_s, 3)
    summary.cpu_s = round(summary.cpu_s, 3)
    summary.server_cpu_s = round(summary.server_cpu_s, 3)
    return summary


# -- processes ---------------------------------------------------------------------------------


def modbus_server(port: int, log: Path) -> AbstractContextManager[subprocess.Popen[bytes]]:
    """The 4-unit Modbus server in its own process, ready when this yields."""
    return ready_server([sys.executable, "-m", SUBJECTS_MODULE, "serve", str(port)], port, log)


def agent_plan(port: int) -> list[list[Any]]:
    """The agent's requests for the 4 units: `[unit, table, start, count, points, format]`
    each, `format` being the struct format that decodes the answer's registers in one call
    ("" for bits)."""
    from agent.settings import ModbusTcpDevice
    from drivers.modbus.client import ModbusDriver
    from drivers.modbus.line import ModbusLines

    points = workload()
    lines = ModbusLines()
    plan: list[list[Any]] = []
    for unit in UNITS:
        device = ModbusTcpDevice.model_validate(device_config(unit, port, points))
        driver = ModbusDriver(device, lines.for_device(device))
        plan += [
            [unit, block.table, block.start, block.count, len(block.points), struct_format(block)]
            for block in driver.plan(device.points)
        ]
    return plan


_STRUCT_CODE = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f"}
_STRUCT_CODE.update({"int64": "q", "uint64": "Q", "float64": "d"})


def struct_format(block: Any) -> str:
    """One struct format for the whole answer, gaps skipped as pad bytes. Word order is
    ignored (a CDAB value decodes to another number at the same cost): the cheapest decoding
    there is, so the bare reference is as fast as a hand-written loop can be."""
    if block.table in ("coil", "discrete"):
        return ""
    fmt, at = ">", block.start
    for point in sorted(block.points, key=lambda p: p.register):
        if point.register > at:
            fmt += f"{(point.register - at) * 2}x"
        fmt += _STRUCT_CODE[point.value_type]
        at = point.register + point.width
    return fmt


def run_subject(
    result: RunResult,
    command: list[str],
    *,
    server_pid: int,
    log: Path,
) -> None:
    """Run one measured process; its `BEGIN` and `RESULT` lines bracket the server's CPU."""
    with log.open("wb") as errors:
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=errors)
    try:
        assert process.stdout is not None
        server_begin: float | None = None
        for raw in process.stdout:
            line = raw.decode(errors="replace").strip()
            if line == "BEGIN":
                server_begin = cpu_seconds(server_pid)
            elif line.startswith("RESULT "):
                if server_begin is None:
                    raise RuntimeError("RESULT before BEGIN")
                result.server_cpu_s = round(cpu_seconds(server_pid) - server_begin, 3)
                result.loadavg = loadavg()
                found = json.loads(line.removeprefix("RESULT "))
                break
        else:
            process.wait(10)
            raise RuntimeError(f"exited with status {process.returncode}: {tail(log)}")
        process.wait(10)
    finally:
        stop_process(process)
        if process.stdout is not None:
            process.stdout.close()
    result.window_s = round(found["window_s"], 3)
    result.cpu_s = round(found["cpu_s"], 3)
    result.requests = found["requests"]
    result.points = found["points"]
    result.polls = found["polls"]
    result.bad_points = found["bad"]
    result.requests_per_poll = found["plan_requests"]
    if result.subject == "agent":
        result.checked_points = found["checked"]
        result.wrong_values = found["mismatches"]
        result.wrong_examples = found["mismatch_examples"]
        result.plan_changed = found["plan_requests_after"] != found["plan_requests"]


def run_one(
    subject: str,
    round_number: int,
    *,
    port: int,
    server_pid: int,
    plan_file: Path,
    duration: float,
    warmup: float,
    workdir: Path,
) -> RunResult:
    result = RunResult(subject, round_number)
    command = [sys.executable, "-m", SUBJECTS_MODULE]
    if subject == "agent":
        command += ["agent", str(port)]
    else:
        command += ["bare", str(port), str(plan_file)]
    command += ["--duration", f"{duration:g}", "--warmup", f"{warmup:g}"]
    try:
        run_subject(
            result,
            command,
            server_pid=server_pid,
            log=workdir / f"{subject}-{round_number}.log",
        )
    except Exception as exc:
        result.error = str(exc) or type(exc).__name__
    return result


# -- report ------------------------------------------------------------------------------------


def round_ratios(runs: list[RunResult]) -> dict[int, float | None]:
    """Agent points/s over bare points/s in each round."""
    ratios: dict[int, float | None] = {}
    for number in sorted({run.round for run in runs if run.subject == "agent"}):
        rate = {
            run.subject: None if run.error or not run.window_s else run.points / run.window_s
            for run in runs
            if run.round == number and run.subject in ("agent", "bare")
        }
        ratios[number] = ratio(rate.get("agent"), rate.get("bare"))
    return ratios


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


@dataclass
class TargetCheck:
    target: str
    value: str
    passed: bool | None  # None: could not be measured


def check_targets(agent: Summary, bare: Summary, runs: list[RunResult]) -> list[TargetCheck]:
    agent_runs = [run for run in runs if run.subject == "agent"]
    failed = [f"{run.subject} {run.round}" for run in runs if run.error]
    throughput = ratio(agent.points_per_s, bare.points_per_s)
    checks = [
        TargetCheck(
            f"agent points/s >= {THROUGHPUT_TARGET:g} x bare (same requests)",
            "n/a" if throughput is None else f"{throughput:.2f} x",
            None if throughput is None else throughput >= THROUGHPUT_TARGET,
        )
    ]
    measured = [run for run in agent_runs if not run.error]
    checked = sum(run.checked_points for run in measured)
    checks.append(
        TargetCheck(
            "agent: no BAD sample, every value as served",
            f"{agent.bad_points} BAD, {agent.wrong_values} wrong of {checked} checked"
            if measured
            else "n/a",
            None if not measured else agent.bad_points == 0 and agent.wrong_values == 0,
        )
    )
    checks.append(
        TargetCheck(
            "every run completed",
            f"{len(runs) - len(failed)} of {len(runs)}",
            not failed,
        )
    )
    return checks


ROWS: list[tuple[str, str, str, bool]] = [
    # (label, Summary attribute, format, agent/bare ratio shown)
    ("requests per poll (4 units)", "requests_per_poll", "{:,}", True),
    ("requests/s", "requests_per_s", "{:,.0f}", True),
    ("points/s", "points_per_s", "{:,.0f}", True),
    ("CPU s per 1,000 points", "cpu_s_per_1000_points", "{:.4f}", True),
    ("CPU us per request", "cpu_us_per_request", "{:.1f}", True),
    ("client CPU % of one core", "cpu_percent", "{:.1f}", True),
    ("Modbus server CPU %", "server_cpu_percent", "{:.0f}", True),
    ("BAD points", "bad_points", "{:,}", False),
    ("seconds measured", "window_s", "{:.1f}", False),
]


def report(
    summaries: dict[str, Summary],
    runs: list[RunResult],
    checks: list[TargetCheck],
    points: int,
    console: Console,
) -> None:
    agent, bare, single = summaries["agent"], summaries["bare"], summaries["one-per-point"]
    table = Table(
        title=f"Modbus planner, {points:,} points on {len(UNITS)} units, 3 tables: "
        "agent driver vs bare pymodbus"
    )
    table.add_column("metric")
    table.add_column("agent", justify="right")
    table.add_column("bare\n(same requests)", justify="right")
    table.add_column("agent/bare", justify="right")
    table.add_column("one request\nper point", justify="right")
    for label, attribute, fmt, with_ratio in ROWS:
        a, b, s = (getattr(summary, attribute) for summary in (agent, bare, single))
        shown = show(ratio(a, b), "{:.2f}") if with_ratio else ""
        table.add_row(label, show(a, fmt), show(b, fmt), shown, show(s, fmt))
    console.print(table)
    fewer = ratio(single.requests_per_poll, agent.requests_per_poll, 1)
    faster = ratio(agent.points_per_s, single.points_per_s, 1)
    console.print(
        f"Planner: {show(agent.requests_per_poll, '{:,}')} requests per poll instead of "
        f"{show(single.requests_per_poll, '{:,}')} one per point ({show(fewer, '{:g}')} x fewer); "
        f"agent points/s {show(faster, '{:g}')} x the one-per-point loop's."
    )

    pairs = Table(title="Rounds (fresh processes, alternating order)")
    pairs.add_column("round")
    pairs.add_column("agent points/s", justify="right")
    pairs.add_column("bare points/s", justify="right")
    pairs.add_column("agent/bare", justify="right")
    pairs.add_column("load avg", justify="right")
    for number in sorted({run.round for run in runs if run.subject != "one-per-point"}):
        by_subject = {run.subject: run for run in runs if run.round == number}
        rates = {
            subject: None if run.error or not run.window_s else run.points / run.window_s
            for subject, run in by_subject.items()
        }
        load = by_subject["bare"].loadavg or by_subject["agent"].loadavg
        pairs.add_row(
            str(number),
            show(rates.get("agent"), "{:,.0f}"),
            show(rates.get("bare"), "{:,.0f}"),
            show(ratio(rates.get("agent"), rates.get("bare")), "{:.2f}"),
            show(load[0] if load else None, "{:.2f}"),
        )
    console.print(pairs)
    ratios = [value for value in round_ratios(runs).values() if value is not None]
    console.print(
        f"agent/bare points/s per round: median {show(median(ratios), '{:.2f}')}, "
        f"range {show(min(ratios, default=None), '{:.2f}')}-"
        f"{show(max(ratios, default=None), '{:.2f}')}"
    )

    print_targets(console, checks)

    for run in runs:
        if run.error:
            console.print(f"[red]{run.subject} round {run.round} failed:[/] {run.error}")
        if run.plan_changed:
            console.print(f"[yellow]agent round {run.round}: the driver changed its plan[/]")
        for example in run.wrong_examples:
            console.print(f"[yellow]agent round {run.round}: {example}[/]")


def plan_summary(plan: list[list[Any]]) -> dict[str, Any]:
    """Requests per unit and table, and how many registers or bits they span."""
    requests: Counter[str] = Counter()
    span: Counter[str] = Counter()
    for unit, table, _start, count, *_rest in plan:
        requests[f"unit{unit}.{table}"] += 1
        span[f"unit{unit}.{table}"] += count
    return {"requests": dict(requests), "addresses_read": dict(span)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.modbus_planner", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=20.0,
        help="seconds measured per subject, split over the rounds",
    )
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="seconds polled before each window"
    )
    parser.add_argument(
        "--rounds", type=int, default=4, help="agent/bare turns (alternating order)"
    )
    parser.add_argument(
        "--per-point-duration",
        type=float,
        default=3.0,
        help="seconds measured for the one-request-per-point reference (0: skip it)",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target fails")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.rounds < 1:
        parser.error("--duration must be positive and --rounds at least 1")
    session = Session()
    console = session.console

    points = workload()
    runs: list[RunResult] = []
    try:
        with tempfile.TemporaryDirectory(prefix="shopfloor-bench-") as tmp:
            workdir = Path(tmp)
            port = free_port()
            plan = agent_plan(port)
            single_plan = one_per_point_plan(points)
            plan_file, single_file = workdir / "plan.json", workdir / "one-per-point.json"
            plan_file.write_text(json.dumps(plan), encoding="utf-8")
            single_file.write_text(json.dumps(single_plan), encoding="utf-8")
            with modbus_server(port, workdir / "modbus-server.log") as server:
                for number, subject, slice_s in alternating_rounds(
                    console, rounds=args.rounds, warmup=args.warmup, duration=args.duration
                ):
                    runs.append(
                        run_one(
                            subject,
                            number,
                            port=port,
                            server_pid=server.pid,
                            plan_file=plan_file,
                            duration=slice_s,
                            warmup=args.warmup,
                            workdir=workdir,
                        )
                    )
                if args.per_point_duration > 0:
                    console.print(
                        f"[dim]one request per point ({args.warmup:g} s warm-up + "
                        f"{args.per_point_duration:g} s)...[/]"
                    )
                    reference = run_one(
                        "one-per-point",
                        0,
                        port=port,
                        server_pid=server.pid,
                        plan_file=single_file,
                        duration=args.per_point_duration,
                        warmup=args.warmup,
                        workdir=workdir,
                    )
                    runs.append(reference)
    except KeyboardInterrupt as exc:
        return session.stopped(exc)

    summaries = {
        subject: summarize(subject, [run for run in runs if run.subject == subject])
        for subject in ("agent", "bare", "one-per-point")
    }
    # Counted, not measured: known even when the short run is skipped.
    summaries["one-per-point"].requests_per_poll = len(single_plan)
    checks = check_targets(summaries["agent"], summaries["bare"], runs)
    report(summaries, runs, checks, len(points), console)

    agent, bare, single = summaries["agent"], summaries["bare"], summaries["one-per-point"]
    types = Counter(f"{point.table} {point.type}" for point in points)
    document = {
        "benchmark": "modbus_planner",
        "workload": f"{len(points)} points on {len(UNITS)} units of one simulated Modbus TCP "
        f"server, per unit {POINTS_PER_UNIT}; agent ModbusDriver (4 tasks, one shared line) vs "
        "bare pymodbus loop with the same requests vs one request per point",
        "point_types": dict(sorted(types.items())),
        "plan": {
            "requests_per_poll": len(plan),
            "one_per_point_requests_per_poll": len(single_plan),
            **plan_summary(plan),
        },
        "duration_s": args.duration,
        "rounds": args.rounds,
        "warmup_s": args.warmup,
        "per_point_duration_s": args.per_point_duration,
        **session.provenance("shopfloor-agent", "pymodbus", "pydantic"),
        "summary": {subject: asdict(summary) for subject, summary in summaries.items()},
        "ratios": {
            "requests_per_poll_one_per_point_over_agent": ratio(
                single.requests_per_poll, agent.requests_per_poll, 1
            ),
            "points_per_s_agent_over_bare": ratio(agent.points_per_s, bare.points_per_s),
            "points_per_s_agent_over_bare_by_round": round_ratios(runs),
            "points_per_s_agent_over_bare_median_round": median(
                [value for value in round_ratios(runs).values() if value is not None]
            ),
            "requests_per_s_agent_over_bare": ratio(agent.requests_per_s, bare.requests_per_s),
            "cpu_per_1000_points_agent_over_bare": ratio(
                agent.cpu_s_per_1000_points, bare.cpu_s_per_1000_points
            ),
            "points_per_s_agent_over_one_per_point": ratio(
                agent.points_per_s, single.points_per_s, 1
            ),
        },
        "runs": [asdict(run) for run in runs],
        "targets": [asdict(check) for check in checks],
    }
    session.write(args.output, document)
    return exit_status(checks, args.check)


if __name__ == "__main__":
    sys.exit(main())
