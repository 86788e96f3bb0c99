"""Benchmark: a vision inspection station (issue 6) against onnxruntime alone, and as a PLC sees it.

    python -m bench.station [--duration 6] [--rounds 2] [--warmup 0.5] [--parts 200]
                            [--period 0.15] [--part throughput|latency]
                            [--reference run|pipeline] [--check]

Models: a ResNet-18-architecture classifier at 224x224 built here with onnx.helper (random,
seeded weights: none can be downloaded, and latency depends on the architecture, not on the
weights; see bench/vision_inputs.py), and the shipped demo model
inference/models/washer_classifier.onnx when it is there. Frames: 1280x960 BGR JPEG images of
synthetic washers (drivers/simulate/parts.py), one image per trigger from a triggered folder
camera, so every inspection reads and decodes a camera-sized frame.

1. Throughput (per model, for threads=1 and the default, one per core). The station: the
   agent's real `Station`, its camera opened with `open_camera` and its model with
   `load_vision_model` as `Agent._build_stations` does, with all nine PLC outputs (ready,
   result ready, ok, ng, class id, error, error code, counter, heartbeat) written through the
   real `ModbusDriver` to a simulated PLC in a process of its own (`bench/modbus_server.py`),
   images not saved. Inspections are started back to back with `Station.request("command")`;
   the next one is requested when the previous one has published its result event (the
   station's `publish` callback, called after the verdict is in the PLC). No device task polls
   the PLC here, so the line carries only the station's writes. The reference: `session.run`
   in a loop on input tensors prepared before timing from the same frames, on a session made
   by `inference.session.make_session` with the same threads (no spinning, like the station's);
   with `--reference pipeline`, a bare OpenCV + numpy loop that also reads, decodes and
   prepares every frame (what a hand-written script would do for the same work).
   Station and reference take turns in `--rounds` alternating rounds; each subject is measured
   for `--duration` seconds per model and thread count, split over the rounds, after
   `--warmup` seconds of unmeasured runs per round. Reported: inspections/s against runs/s
   (the target: at least 0.9 for ResNet-18, none for the demo model), per-inspection and
   per-run latency, CPU per inspection (this whole process), and the station's own stage
   timings from its result events (`timings_ms`: frame, preprocess, inference, postprocess,
   write = the rest, total).
2. Latency, trigger -> verdict in the PLC: the agent as a real process (`python -m agent run`)
   with a local broker and a simulated Modbus PLC in this process, polled by the agent every
   20 ms (the device interval; the poll dominates what a PLC waits). For each of `--parts`
   parts, one every `--period` seconds: the part id is written, then the trigger coil raised;
   the time until the counter register changes is measured by reading the simulator's memory
   about every millisecond; then the trigger is lowered. Reported: p50/p99/max over all
   parts, the first part on its own (the station's first inspection: counter read from the
   PLC, first frame, worker threads started), the agent's CPU per part, and for comparison
   what the agent's own result events say (timings_ms, which start when the agent saw the
   trigger, and end after all eight verdict writes, of which the counter is the sixth).

The tables go to stdout, the figures to bench/results/station.json. The exit status is 0
whatever the figures; with `--check` it is 1 when a target fails or could not be measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rich.console import Console
from rich.table import Table

from agent.config import load_config
from agent.model import Event
from agent.settings import ModbusTcpDevice
from bench.bytecode import REPO
from bench.measure import add_window_options, agent_command, agent_config_head, alternating_rounds
from bench.processes import cpu_seconds, ready_server, stop_process, tail
from bench.report import TargetCheck, exit_status, print_targets, ratio, show
from bench.session import Session
from bench.subscriber import percentile
from bench.vision_inputs import FRAME_SIZE, EventCollector, resnet18_classifier, washer_frames
from drivers.simulate.broker import BrokerNotFound, LocalBroker, free_port
from drivers.simulate.modbus import SimulatedModbusServer

RESULTS = REPO / "bench" / "results" / "station.json"
DEMO_MODEL = REPO / "inference" / "models" / "washer_classifier.onnx"

TOPIC_PREFIX = "bench"
FRAMES = 24
THROUGHPUT_TARGET = 0.9  # station inspections/s over raw session.run/s, ResNet-18
POLL_INTERVAL = "20ms"
# The PLC's memory map: coils, and holding registers from 100 (bench/modbus_server.py keeps a
# float at holding 0-1).
COILS = {"trigger": 0, "ack": 1, "ready": 2, "result_ready": 3, "ok": 4, "ng": 5, "error": 6}
REGISTERS = {"class_id": 100, "error_code": 101, "counter": 102, "heartbeat": 103}
PART_ID_REGISTER = 110  # uint32, two registers
OUTPUTS = (*list(COILS)[2:], *REGISTERS)
# Latency part: the part id is in the PLC this long before the trigger rises (one poll reads
# it first), and the trigger stays low this long after a result (two polls see it low).
PART_ID_LEAD_S = 0.03
TRIGGER_LOW_S = 0.045
RESULT_TIMEOUT_S = 5.0
READY_TIMEOUT_S = 60.0
STAGES = ("frame", "preprocess", "inference", "postprocess", "write", "total")


@dataclass(frozen=True)
class ModelUnderTest:
    """A model measured: its short name, its file, and what it is (printed with the tables)."""

    label: str
    path: Path
    note: str


def cores() -> int:
    """The cores this process may use: make_session's default thread count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# -- configuration -----------------------------------------------------------------------------


def plc_points() -> list[dict[str, Any]]:
    """The PLC's points in the agent's configuration (see COILS and REGISTERS)."""
    points: list[dict[str, Any]] = [
        {"id": f"plc.{name}", "address": f"coil:{address}"} for name, address in COILS.items()
    ]
    points += [
        {"id": "plc.class_id", "address": f"holding:{REGISTERS['class_id']}", "type": "int16"},
        {"id": "plc.error_code", "address": f"holding:{REGISTERS['error_code']}", "type": "int16"},
        {"id": "plc.counter", "address": f"holding:{REGISTERS['counter']}", "type": "uint16"},
        {"id": "plc.heartbeat", "address": f"holding:{REGISTERS['heartbeat']}", "type": "uint16"},
        {"id": "plc.part_id", "address": f"holding:{PART_ID_REGISTER}", "type": "uint32"},
    ]
    return points


def write_config(
    path: Path,
    *,
    agent_id: str,
    broker_port: int,
    plc_port: int,
    frames: Path,
    model: Path,
    threads: int | None,
    trigger: dict[str, Any],
) -> Path:
    """An agent configuration: one Modbus TCP PLC polled every 20 ms, a triggered folder
    camera, one station with every PLC output and no saved images."""
    lines = agent_config_head(
        agent_id=agent_id,
        data_dir=path.parent / f"{agent_id}-data",
        broker_port=broker_port,
        topic_prefix=TOPIC_PREFIX,
    )
    device = {
        "name": "plc",
        "driver": "modbus_tcp",
        "host": "127.0.0.1",
        "port": plc_port,
        "interval": POLL_INTERVAL,
        "timeout": "500ms",
        "reconnect_max": "1s",
        # As in the demo: adjacent coils in one FC 15 request (the verdict is 3 requests).
        "write_functions": "multiple",
        "points": plc_points(),
    }
    station = {
        "name": "check",
        "camera": "cam",
        "trigger": trigger,
        "part_id": "plc.part_id",
        "ack": "plc.ack",
        "outputs": {name: f"plc.{name}" for name in OUTPUTS},
        "images": {"save": "none"},
        "models": [{"path": str(model), **({"threads": threads} if threads else {})}],
    }
    # YAML reads JSON: the sections are written as one JSON line each.
    lines += [
        f"devices: {json.dumps([device])}",
        f"cameras: {json.dumps([{'name': 'cam', 'folder': str(frames)}])}",
        f"stations: {json.dumps([station])}",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# -- 1. throughput -----------------------------------------------------------------------------


@dataclass
class ThroughputRun:
    """One subject's rounds (or one round) for one model and thread count."""

    model: str
    threads: int
    subject: str  # "station" or "raw"
    error: str | None = None
    window_s: float = 0.0
    count: int = 0  # inspections or session.run calls
    per_s: float = 0.0
    cpu_s: float = 0.0
    cpu_ms_each: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    # The station's own figures, from its result events: medians per stage.
    stages_p50_ms: dict[str, float] = field(default_factory=dict)
    errors: int = 0  # inspections that answered "error"
    refused: int = 0  # requests the station refused (still busy): should be 0
    latencies: list[float] = field(default_factory=list, repr=False)  # ms
    events: list[dict[str, Any]] = field(default_factory=list, repr=False)


class StationUnderTest:
    """The agent's Station, wired as `Agent._build_stations` wires it, driven by command."""

    def __init__(self, config_path: Path) -> None:
        self.config = load_config(config_path)
        self.events: list[dict[str, Any]] = []
        self.refused = 0
        self._result: asyncio.Future[dict[str, Any]] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect to the PLC, open the camera, load the model, start the station's tasks."""
        from drivers.camera import open_camera
        from drivers.modbus.client import ModbusDriver
        from inference.vision.adapters import load_vision_model
        from inference.vision.station import LoadedModel, PlcPoint, Station

        device = self.config.devices[0]
        assert isinstance(device, ModbusTcpDevice)
        self.driver = ModbusDriver(device)
        await self.driver.connect()
        plc = {p.id: PlcPoint(device.name, p, self.driver) for p in device.points}
        camera_settings = self.config.cameras[0]
        self.camera = open_camera(camera_settings.name, 0, folder=camera_settings.folder)
        settings = self.config.stations[0]
        model_settings = settings.models[0]
        self.model = load_vision_model(model_settings.path, threads=model_settings.threads)
        self.station = Station(
            settings,
            self.camera,
            [LoadedModel(model_settings, self.model)],
            plc,
            publish=self._published,
            archive=None,
        )
        self.camera.start()
        self._task = asyncio.create_task(self.station.run())

    async def stop(self) -> None:
        """Cancel the station's tasks, stop the camera, close the PLC's line."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.camera.stop()
        await self.driver.close()

    def _published(self, event: Event) -> None:
        # Called by the station after the verdict is in the PLC and the statistics are kept.
        self.events.append(event.data)
        if self._result is not None and not self._result.done():
            self._result.set_result(event.data)

    async def inspect(self) -> dict[str, Any]:
        """One inspection on command; returns its result event's data once published."""
        self._result = asyncio.get_running_loop().create_future()
        while not self.station.request("command"):
            # Not expected: the station clears its busy flag right after publishing, before
            # this coroutine resumes.
            self.refused += 1
            await asyncio.sleep(0)
        return await self._result

    async def measure(self, run: ThroughputRun, seconds: float, warmup: float) -> None:
        """Inspections back to back: `warmup` seconds unmeasured, then `seconds` measured."""
        warm_until = time.perf_counter() + warmup
        while time.perf_counter() < warm_until:
            await self.inspect()
        refused, first_event = self.refused, len(self.events)
        cpu_begin = time.process_time()
        began = ended = time.perf_counter()
        while ended - began < seconds:
            before = time.perf_counter()
            await self.inspect()
            ended = time.perf_counter()
            run.latencies.append((ended - before) * 1000)
        run.cpu_s = time.process_time() - cpu_begin
        run.window_s = ended - began
        run.count = len(run.latencies)
        run.events = self.events[first_event:]
        run.refused = self.refused - refused


def bare_tensor(path: Path, description: Any) -> Any:
    """What a hand-written script does with a frame file, with OpenCV and numpy alone (not
    the agent's code): read and decode it, resize, colour order, scale and normalise."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    height, width = description.imgsz
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    if description.color == "RGB":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif description.color == "GRAY":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[:, :, np.newaxis]
    planes = image.transpose(2, 0, 1).astype(np.float32) * np.float32(description.scale)
    mean = np.asarray(description.mean, dtype=np.float32)[:, np.newaxis, np.newaxis]
    std = np.asarray(description.std, dtype=np.float32)[:, np.newaxis, np.newaxis]
    return np.ascontiguousarray(((planes - mean) / std)[np.newaxis], dtype=np.float32)


def measure_raw(
    session: Any,
    input_name: str,
    feed_for: Any,
    run: ThroughputRun,
    seconds: float,
    warmup: float,
) -> None:
    """`session.run` in a loop (in a worker thread) on `feed_for(index)`: a tensor prepared
    before timing (`--reference run`), or a frame file read and prepared in the loop
    (`--reference pipeline`)."""
    index = 0
    warm_until = time.perf_counter() + warmup
    while time.perf_counter() < warm_until:
        session.run(None, {input_name: feed_for(index)})
        index += 1
    cpu_begin = time.process_time()
    began = ended = time.perf_counter()
    while ended - began < seconds:
        before = time.perf_counter()
        session.run(None, {input_name: feed_for(index)})
        ended = time.perf_counter()
        run.latencies.append((ended - before) * 1000)
        index += 1
    run.cpu_s = time.process_time() - cpu_begin
    run.window_s = ended - began
    run.count = len(run.latencies)


def quantile(values: Sequence[float], fraction: float) -> float | None:
    """The `fraction` quantile (nearest rank) of values in ms, to the microsecond: a tiny
    model runs in tens of them. (bench.subscriber's `percentile` counts in tenths of a unit.)"""
    found = percentile(Counter(round(value * 1000) for value in values), fraction)
    return None if found is None else round(found / 100, 3)


def stage_medians(events: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The median of each stage of the events' timings_ms."""
    medians = {}
    for stage in STAGES:
        found = [e["timings_ms"][stage] for e in events if stage in e.get("timings_ms", {})]
        if found:
            medians[stage] = round(statistics.median(found), 2)
    return medians


def finish(run: ThroughputRun) -> ThroughputRun:
    """Per-second, CPU and percentile figures from the counts."""
    if run.window_s:
        run.per_s = round(run.count / run.window_s, 1)
    run.cpu_ms_each = round(1000 * run.cpu_s / run.count, 4) if run.count else None
    run.cpu_s = round(run.cpu_s, 2)
    run.window_s = round(run.window_s, 2)
    run.latency_p50_ms = quantile(run.latencies, 0.50)
    run.latency_p99_ms = quantile(run.latencies, 0.99)
    run.stages_p50_ms = stage_medians(run.events)
    run.errors = sum(1 for event in run.events if event.get("verdict") == "error")
    return run


def pooled(runs: Sequence[ThroughputRun]) -> ThroughputRun:
    """A subject's rounds together: totals over all windows, percentiles over all runs."""
    first = runs[0]
    failed = [run.error for run in runs if run.error]
    together = ThroughputRun(
        first.model, first.threads, first.subject, failed[0] if failed else None
    )
    together.window_s = sum(run.window_s for run in runs)
    together.count = sum(run.count for run in runs)
    together.cpu_s = sum(run.cpu_s for run in runs)
    together.refused = sum(run.refused for run in runs)
    together.latencies = [value for run in runs for value in run.latencies]
    together.events = [event for run in runs for event in run.events]
    return finish(together)


async def throughput_one(
    model: ModelUnderTest,
    threads: int | None,
    *,
    frames: Path,
    frame_files: Sequence[Path],
    plc_port: int,
    workdir: Path,
    args: argparse.Namespace,
    console: Console,
) -> tuple[dict[str, ThroughputRun], list[float | None]]:
    """Station and raw session.run in alternating rounds for one model and thread count."""
    from inference.session import make_session

    shown_threads = threads or cores()
    name = f"{model.label} threads={shown_threads}"
    config = write_config(
        workdir / f"throughput-{model.label}-{shown_threads}.yaml",
        agent_id=f"throughput-{model.label}-{shown_threads}",
        broker_port=free_port(),  # not used: no agent, no publisher
        plc_port=plc_port,
        frames=frames,
        model=model.path,
        threads=threads,
        trigger={"command": True},
    )
    station = StationUnderTest(config)
    await station.start()
    runs: dict[str, list[ThroughputRun]] = {"station": [], "raw": []}
    try:
        session = make_session(model.path, threads)
        tensors = [
            station.model.prepare(cv2.imread(str(path), cv2.IMREAD_COLOR))[0]
            for path in frame_files
        ]
        input_name = station.model.description.input_name
        description = station.model.description
        if args.reference == "pipeline":

            def feed_for(index: int) -> Any:
                return bare_tensor(frame_files[index % len(frame_files)], description)
        else:

            def feed_for(index: int) -> Any:
                return tensors[index % len(tensors)]

        for _number, subject, share in alternating_rounds(
            console, rounds=args.rounds, warmup=args.warmup, duration=args.duration, name=name
        ):
            label = "station" if subject == "agent" else "raw"
            run = ThroughputRun(model.label, shown_threads, label)
            try:
                if label == "station":
                    await station.measure(run, share, args.warmup)
                else:
                    # In a worker thread, so the station's heartbeat keeps ticking meanwhile.
                    await asyncio.to_thread(
                        measure_raw, session, input_name, feed_for, run, share, args.warmup
                    )
            except Exception as exc:
                run.error = f"{type(exc).__name__}: {exc}"
            runs[label].append(finish(run))
    finally:
        await station.stop()
    round_ratios = [
        None if s.error or r.error else ratio(s.per_s, r.per_s, 4)
        for s, r in zip(runs["station"], runs["raw"], strict=True)
    ]
    return {label: pooled(subject_runs) for label, subject_runs in runs.items()}, round_ratios


def report_throughput(
    console: Console, results: dict[str, dict[str, ThroughputRun]], notes: dict[str, str]
) -> None:
    """The throughput tables: station against raw, and the station's stages."""
    table = Table(title="Station throughput against raw session.run (same frames, same threads)")
    for column in (
        "model, threads",
        "station\ninspections/s",
        "raw\nruns/s",
        "station/raw",
        "station\np50 / p99 ms",
        "raw\np50 / p99 ms",
        "CPU ms each\nstation / raw",
    ):
        table.add_column(column, justify="left" if column.startswith("model") else "right")
    for name, pair in results.items():
        station, raw = pair["station"], pair["raw"]
        table.add_row(
            name,
            show(station.per_s if not station.error else None, "{:.1f}"),
            show(raw.per_s if not raw.error else None, "{:.1f}"),
            show(throughput_ratio(pair), "{:.3g}"),
            f"{show(station.latency_p50_ms, '{:.3g}')} / {show(station.latency_p99_ms, '{:.3g}')}",
            f"{show(raw.latency_p50_ms, '{:.3g}')} / {show(raw.latency_p99_ms, '{:.3g}')}",
            f"{show(station.cpu_ms_each, '{:.3g}')} / {show(raw.cpu_ms_each, '{:.3g}')}",
        )
    console.print(table)

    stages = Table(title="Station stage timings, median of its result events (timings_ms)")
    stages.add_column("model, threads")
    for stage in STAGES:
        stages.add_column(f"{stage}\nms", justify="right")
    stages.add_column("raw run\np50 ms", justify="right")
    stages.add_column("station - raw\np50 ms", justify="right")
    for name, pair in results.items():
        medians = pair["station"].stages_p50_ms
        station_p50, raw_p50 = pair["station"].latency_p50_ms, pair["raw"].latency_p50_ms
        overhead = None if station_p50 is None or raw_p50 is None else station_p50 - raw_p50
        stages.add_row(
            name,
            *(show(medians.get(stage), "{:.2f}") for stage in STAGES),
            show(raw_p50, "{:.3g}"),
            show(overhead, "{:.2f}"),
        )
    console.print(stages)
    for name, pair in results.items():
        for run in pair.values():
            if run.error:
                console.print(f"[red]{name} {run.subject} failed:[/] {run.error}")
            if run.errors or run.refused:
                console.print(
                    f"[yellow]{name} {run.subject}: {run.errors} inspections answered error, "
                    f"{run.refused} requests refused[/]"
                )
    for label, note in notes.items():
        console.print(f"[dim]{label}: {note}[/]")


def throughput_ratio(pair: dict[str, ThroughputRun]) -> float | None:
    """Station inspections/s over raw runs/s (None where either failed)."""
    station, raw = pair["station"], pair["raw"]
    if station.error or raw.error:
        return None
    return ratio(station.per_s, raw.per_s, 4)


# -- 2. latency, trigger -> verdict in the PLC -------------------------------------------------


@dataclass
class LatencyResult:
    """Trigger -> counter latencies of one model in the agent process, and its events."""

    model: str
    parts: int
    period_s: float
    poll_interval: str = POLL_INTERVAL
    error: str | None = None
    measured: int = 0  # parts whose counter changed in time
    timeouts: int = 0
    rate_per_s: float = 0.0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_max_ms: float | None = None
    latency_min_ms: float | None = None
    first_part_ms: float | None = None
    agent_cpu_ms_per_part: float | None = None
    agent_cpu_percent: float | None = None
    event_count: int = 0
    verdicts: dict[str, int] = field(default_factory=dict)
    # From the agent's result events: p50 and p99 of each timings_ms stage.
    event_p50_ms: dict[str, float] = field(default_factory=dict)
    event_p99_ms: dict[str, float] = field(default_factory=dict)
    # Measured at the PLC minus the event's total, per part: the poll's share (and the
    # granularity of this benchmark's 1 ms reads), less the two writes after the counter.
    plc_minus_event_p50_ms: float | None = None
    parts_without_event: int = 0  # measured parts no event names (lost, or a wrong part id)
    latencies: dict[int, float] = field(default_factory=dict, repr=False)  # part id -> ms


def latency_run(
    model: ModelUnderTest, *, frames: Path, workdir: Path, args: argparse.Namespace
) -> LatencyResult:
    """A broker, a simulated PLC and the agent; `--parts` parts through it."""
    result = LatencyResult(model.label, args.parts, args.period)
    ident = f"latency-{model.label}"
    try:
        with (
            SimulatedModbusServer(free_port()) as plc,
            LocalBroker() as broker,
        ):
            collector = EventCollector(broker.port, f"{TOPIC_PREFIX}/{ident}/events/inspection")
            config = write_config(
                workdir / f"{ident}.yaml",
                agent_id=ident,
                broker_port=broker.port,
                plc_port=plc.port,
                frames=frames,
                model=model.path,
                threads=None,
                trigger={"point": "plc.trigger"},
            )
            log = workdir / f"{ident}.log"
            with log.open("wb") as output:
                process = subprocess.Popen(
                    agent_command(config), cwd=REPO, stdout=output, stderr=output
                )
            try:
                drive_parts(plc, process, log, result, args)
                deadline = time.monotonic() + 10
                while len(collector.events()) < result.measured and time.monotonic() < deadline:
                    time.sleep(0.05)
            finally:
                stop_process(process)
                collector.close()
            summarise_events(result, collector.events())
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


def drive_parts(
    plc: SimulatedModbusServer,
    process: subprocess.Popen[bytes],
    log: Path,
    result: LatencyResult,
    args: argparse.Namespace,
) -> None:
    """Act as the PLC: a part id, a rising trigger, wait for the counter, the trigger down."""

    def counter() -> int:
        return int(plc.get_registers("holding", REGISTERS["counter"], 1)[0])

    deadline = time.monotonic() + READY_TIMEOUT_S
    while not plc.get_registers("coil", COILS["ready"], 1)[0]:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"the agent did not get ready (status {process.poll()}): {tail(log)}"
            )
        time.sleep(0.05)
    plc.set_registers("coil", COILS["trigger"], [False])
    time.sleep(TRIGGER_LOW_S)
    cpu_begin = cpu_seconds(process.pid)
    began = time.monotonic()
    for index in range(args.parts):
        pause = began + index * args.period - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        part_id = index + 1
        plc.set_registers("holding", PART_ID_REGISTER, [part_id >> 16, part_id & 0xFFFF])
        time.sleep(PART_ID_LEAD_S)
        before = counter()
        plc.set_registers("coil", COILS["trigger"], [True])
        raised = time.perf_counter()
        while counter() == before:
            if time.perf_counter() - raised > RESULT_TIMEOUT_S:
                result.timeouts += 1
                break
            time.sleep(0.001)
        else:
            result.latencies[part_id] = (time.perf_counter() - raised) * 1000
        plc.set_registers("coil", COILS["trigger"], [False])
        time.sleep(TRIGGER_LOW_S)
        if process.poll() is not None:
            raise RuntimeError(f"the agent exited with status {process.returncode}: {tail(log)}")
    elapsed = time.monotonic() - began
    cpu = cpu_seconds(process.pid) - cpu_begin
    result.measured = len(result.latencies)
    result.rate_per_s = round(args.parts / elapsed, 2)
    result.agent_cpu_ms_per_part = round(1000 * cpu / args.parts, 1)
    result.agent_cpu_percent = round(100 * cpu / elapsed, 1)
    latencies = list(result.latencies.values())
    if latencies:
        result.first_part_ms = round(result.latencies[1], 1) if 1 in result.latencies else None
        result.latency_p50_ms = quantile(latencies, 0.50)
        result.latency_p99_ms = quantile(latencies, 0.99)
        result.latency_max_ms = round(max(latencies), 1)
        result.latency_min_ms = round(min(latencies), 1)


def summarise_events(result: LatencyResult, events: list[dict[str, Any]]) -> None:
    """The events' stage percentiles, and how much later the PLC saw each part's counter."""
    result.event_count = len(events)
    result.verdicts = dict(Counter(str(event.get("verdict")) for event in events))
    for stage in STAGES:
        found = [e["timings_ms"][stage] for e in events if stage in e.get("timings_ms", {})]
        if found:
            result.event_p50_ms[stage] = quantile(found, 0.50) or 0.0
            result.event_p99_ms[stage] = quantile(found, 0.99) or 0.0
    # Each event carries the part id the station read before the trigger: the match.
    totals = {
        event["part_id"]: event["timings_ms"]["total"]
        for event in events
        if isinstance(event.get("part_id"), int) and "total" in event.get("timings_ms", {})
    }
    differences = [
        latency - totals[part] for part, latency in result.latencies.items() if part in totals
    ]
    result.parts_without_event = sum(1 for part in result.latencies if part not in totals)
    if differences:
        result.plc_minus_event_p50_ms = round(statistics.median(differences), 1)


def report_latency(console: Console, results: list[LatencyResult]) -> None:
    """The latency tables: as the PLC saw it, and as the agent's events say."""
    table = Table(
        title=f"Trigger -> counter in the PLC, agent process, device interval {POLL_INTERVAL}"
    )
    for column in (
        "model",
        "parts\n(timeouts)",
        "parts/s",
        "p50 ms",
        "p99 ms",
        "min / max ms",
        "first part ms",
        "agent CPU\nms/part (%)",
        "PLC - event\ntotal p50 ms",
    ):
        table.add_column(column, justify="left" if column == "model" else "right")
    for run in results:
        table.add_row(
            run.model,
            f"{run.measured} ({run.timeouts})",
            f"{run.rate_per_s:.1f}",
            show(run.latency_p50_ms, "{:.1f}"),
            show(run.latency_p99_ms, "{:.1f}"),
            f"{show(run.latency_min_ms, '{:.1f}')} / {show(run.latency_max_ms, '{:.1f}')}",
            show(run.first_part_ms, "{:.1f}"),
            f"{show(run.agent_cpu_ms_per_part, '{:.1f}')} "
            f"({show(run.agent_cpu_percent, '{:.0f}')})",
            show(run.plc_minus_event_p50_ms, "{:.1f}"),
        )
    console.print(table)
    events = Table(title="The agent's result events (timings_ms), p50 / p99")
    events.add_column("model")
    for stage in STAGES:
        events.add_column(f"{stage}\nms", justify="right")
    events.add_column("events, verdicts")
    for run in results:
        events.add_row(
            run.model,
            *(
                f"{show(run.event_p50_ms.get(stage), '{:.1f}')} / "
                f"{show(run.event_p99_ms.get(stage), '{:.1f}')}"
                for stage in STAGES
            ),
            f"{run.event_count} {run.verdicts}",
        )
    console.print(events)
    for run in results:
        if run.error:
            console.print(f"[red]latency {run.model} failed:[/] {run.error}")
        if run.parts_without_event:
            console.print(
                f"[yellow]latency {run.model}: {run.parts_without_event} parts have no result "
                "event with their part id[/]"
            )


# -- main --------------------------------------------------------------------------------------


def models_under_test(workdir: Path, demo: Path, console: Console) -> list[ModelUnderTest]:
    """ResNet-18 (built in `workdir`), and the demo model where it exists."""
    built = resnet18_classifier(workdir / "resnet18_random.onnx")
    models = [
        ModelUnderTest(
            "resnet18",
            built,
            "ResNet-18 architecture at 224x224, 2 classes, RANDOM weights (seeded): "
            "latency is what is measured, its verdicts mean nothing",
        )
    ]
    if demo.is_file():
        models.append(ModelUnderTest("demo", demo, f"the demo model {demo}"))
    else:
        console.print(f"[yellow]{demo} is not there: the demo model is not measured.[/]")
    return models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.station", description=__doc__.split("\n\n")[0]
    )
    add_window_options(parser, rounds=2, warmup=0.5)
    parser.set_defaults(duration=6.0)
    parser.add_argument("--parts", type=int, default=200, help="parts in the latency part")
    parser.add_argument(
        "--period", type=float, default=0.15, help="seconds between parts in the latency part"
    )
    parser.add_argument(
        "--part",
        action="append",
        choices=["throughput", "latency"],
        help="run only this part (repeatable; default: both)",
    )
    parser.add_argument(
        "--demo-model",
        type=Path,
        default=DEMO_MODEL,
        help="the small model measured beside ResNet-18 (default: the shipped demo model)",
    )
    parser.add_argument(
        "--reference",
        choices=["run", "pipeline"],
        default="run",
        help="run: session.run alone on tensors prepared before timing (the issue's target); "
        "pipeline: a bare OpenCV + numpy loop that also reads, decodes and prepares each frame",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    parts = args.part or ["throughput", "latency"]
    session = Session()
    console = session.console

    throughput: dict[str, dict[str, ThroughputRun]] = {}
    round_ratios: dict[str, list[float | None]] = {}
    latency: list[LatencyResult] = []
    try:
        with tempfile.TemporaryDirectory(prefix="shopfloor-bench-") as tmp:
            workdir = Path(tmp)
            models = models_under_test(workdir, args.demo_model, console)
            frames = workdir / "frames"
            frame_files = washer_frames(frames, FRAMES)
            if "throughput" in parts:
                plc_port = free_port()
                command = [
                    sys.executable, "-m", "bench.modbus_server", str(plc_port),
                    "--points", "1", "--change-every", "0",
                ]  # fmt: skip
                with ready_server(command, plc_port, workdir / "modbus-server.log"):
                    for model in models:
                        for threads in (1, None):
                            pair, ratios = asyncio.run(
                                throughput_one(
                                    model,
                                    threads,
                                    frames=frames,
                                    frame_files=frame_files,
                                    plc_port=plc_port,
                                    workdir=workdir,
                                    args=args,
                                    console=console,
                                )
                            )
                            name = f"{model.label} threads={threads or cores()}"
                            throughput[name] = pair
                            round_ratios[name] = ratios
            if "latency" in parts:
                for model in models:
                    console.print(
                        f"[dim]latency {model.label}: {args.parts} parts every "
                        f"{args.period:g} s...[/]"
                    )
                    latency.append(latency_run(model, frames=frames, workdir=workdir, args=args))
    except (BrokerNotFound, KeyboardInterrupt) as exc:
        return session.stopped(exc)

    notes = {model.label: model.note for model in models}
    if throughput:
        report_throughput(console, throughput, notes)
        for name, ratios in round_ratios.items():
            shown = ", ".join(show(value, "{:.3g}") for value in ratios)
            console.print(f"{name}: station/raw in each round: {shown}")
    if latency:
        report_latency(console, latency)

    checks = []
    for name, pair in throughput.items():
        if name.startswith("resnet18"):
            value = throughput_ratio(pair)
            checks.append(
                TargetCheck(
                    f"station/{args.reference} throughput >= {THROUGHPUT_TARGET:g}",
                    name,
                    "n/a" if value is None else f"{value:.3g}",
                    None if value is None else value >= THROUGHPUT_TARGET,
                )
            )
    if checks:
        print_targets(console, checks)
    command = "python -m bench.station " + " ".join(argv if argv is not None else sys.argv[1:])
    console.print(f"[dim]Reproduce: {command.strip()}[/]")

    document = {
        "reference": args.reference,
        "benchmark": "station",
        "command": command.strip(),
        "models": {model.label: {"path": str(model.path), "note": model.note} for model in models},
        "frames": {"count": FRAMES, "size": list(FRAME_SIZE), "format": "JPEG, BGR"},
        "demo_model_present": args.demo_model.is_file(),
        "setup": {
            "plc_outputs": list(OUTPUTS),
            "throughput_plc": "bench/modbus_server.py, a process of its own; no device polling",
            "latency_plc": "SimulatedModbusServer in the benchmark process, polled by the agent "
            f"every {POLL_INTERVAL}; its counter register read about every 1 ms",
            "images": "save: none",
            "camera": "triggered folder camera, one JPEG decoded per inspection",
        },
        "duration_s": args.duration,
        "rounds": args.rounds,
        "warmup_s": args.warmup,
        "throughput": {
            name: {
                **{label: without_samples(run) for label, run in pair.items()},
                "ratio": throughput_ratio(pair),
                "round_ratios": round_ratios[name],
            }
            for name, pair in throughput.items()
        },
        "latency": [without_samples(run) for run in latency],
        **session.provenance(
            "shopfloor-agent", "onnxruntime", "opencv-python-headless", "pymodbus"
        ),
        "targets": [asdict(check) for check in checks],
    }
    session.write(args.output, document)
    return exit_status(checks, args.check)


def without_samples(run: ThroughputRun | LatencyResult) -> dict[str, Any]:
    """A result for the JSON file, without its per-inspection samples."""
    document = asdict(run)
    document.pop("latencies", None)
    document.pop("events", None)
    return document


if __name__ == "__main__":
    sys.exit(main())
