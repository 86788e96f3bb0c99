"""A vision inspection station: trigger -> frame -> models -> verdict -> PLC, then the rest.

The verdict is written to the PLC before anything else happens: saving the image, publishing
the result event and updating statistics come after, off the path the production line waits on.
One inspection runs at a time; a trigger that arrives while one runs is counted as missed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Literal, cast

import numpy as np

from agent.model import Event, Quality, Sample, Value, now_ms
from agent.settings import ModbusPoint, OpcUaPoint, StationModel, StationSettings
from drivers.base import LinkState, NotConnected, Unsupported, WriteRefused
from drivers.camera import CameraUnavailable, Frame
from inference.session import ModelError
from inference.vision.adapters import Box, ModelOutput, VisionModel
from inference.vision.evidence import EvidenceImage, ImageArchive

__all__ = [
    "COUNTER_MODULUS",
    "ErrorCode",
    "LoadedModel",
    "PlcPoint",
    "Station",
]

log = logging.getLogger(__name__)

# Counters written to the PLC wrap here, so that they fit an int16 register as well as uint16.
COUNTER_MODULUS = 32768
# Inspections whose latency and stage times the percentiles in health are computed from.
_LATENCY_WINDOW = 1000
# Results kept for the health report and the demo's live view.
_RECENT_RESULTS = 10

Verdict = Literal["ok", "ng", "error"]
TriggerSource = Literal["point", "interval", "command"]


class ErrorCode(IntEnum):
    """The `error_code` written to the PLC (0 when the inspection worked)."""

    NONE = 0
    NO_FRAME = 1  # the camera is lost, or gave no frame within frame_timeout of the trigger
    MODEL_FAILED = 2  # a model raised while running (see the log)
    ROI_OUTSIDE_FRAME = 3  # a region of interest does not fit the camera's frame


@dataclass(frozen=True, slots=True)
class PlcPoint:
    """A configured point and the driver of the device it lives on (for reads and writes)."""

    device: str
    point: ModbusPoint | OpcUaPoint
    driver: Any  # a device driver: async write(point, value) and read(points)


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A station's model: its settings and the loaded session."""

    settings: StationModel
    model: VisionModel

    @property
    def name(self) -> str:
        """The configured name, else the model's own."""
        return self.settings.name or self.model.name


@dataclass(frozen=True, slots=True)
class _Trigger:
    source: TriggerSource
    monotonic: float
    ts_ms: int
    part_id: Value


@dataclass(slots=True)
class _RoiResult:
    roi: str
    rect: tuple[int, int, int, int]
    output: ModelOutput


@dataclass(slots=True)
class _ModelResult:
    loaded: LoadedModel
    rois: list[_RoiResult]

    @property
    def ng(self) -> bool:
        return any(r.output.ng for r in self.rois)

    @property
    def score(self) -> float:
        return max((r.output.score for r in self.rois), default=0.0)

    def deciding(self) -> ModelOutput | None:
        """The ROI output behind the model's verdict: the highest-scoring NG one, if any."""
        ng = [r.output for r in self.rois if r.output.ng]
        return max(ng, key=lambda output: output.score) if ng else None


@dataclass(slots=True)
class _Outcome:
    models: list[_ModelResult] = field(default_factory=list)
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0


class _RoiOutsideFrame(Exception):
    pass


@dataclass(slots=True)
class _Inspection:
    """Everything one inspection produced, gathered for what comes after the verdict."""

    trigger: _Trigger
    frame: Frame | None = None
    frame_at: float = 0.0  # monotonic: the frame arrived (or the camera gave up)
    written_at: float = 0.0  # monotonic: the verdict is in the PLC
    outcome: _Outcome | None = None
    verdict: Verdict = "error"
    class_id: int = -1
    class_name: str | None = None
    error: ErrorCode = ErrorCode.NONE
    error_text: str | None = None
    plc_written: bool = False


@dataclass(slots=True)
class StationStats:
    """Counters since start, and recent latencies for percentiles."""

    inspections: int = 0
    ok: int = 0
    ng: int = 0
    errors: int = 0
    missed_triggers: int = 0
    write_errors: int = 0
    skipped_no_camera: int = 0
    internal_errors: int = 0
    ng_by_class: Counter[str] = field(default_factory=Counter)
    errors_by_code: Counter[str] = field(default_factory=Counter)
    latency_ms: deque[float] = field(default_factory=lambda: deque(maxlen=_LATENCY_WINDOW))
    inference_ms: deque[float] = field(default_factory=lambda: deque(maxlen=_LATENCY_WINDOW))
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=_RECENT_RESULTS))


class Station:
    """One inspection station, wired by the agent to its camera, models, PLC points and outbox.

    `observe()` is registered with the device tasks of the trigger, part id and acknowledge
    points; `run()` runs the inspections, the interval trigger and the PLC heartbeat until
    cancelled; `request()` starts an inspection on command.
    """

    def __init__(
        self,
        settings: StationSettings,
        camera: Any,
        models: Sequence[LoadedModel],
        plc: dict[str, PlcPoint],
        *,
        publish: Callable[[Event], None],
        archive: ImageArchive | None,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self.camera = camera
        self.models = list(models)
        self.publish = publish
        self.archive = archive
        self.stats = StationStats()
        outputs = settings.outputs
        self._outputs: dict[str, PlcPoint] = {
            name: plc[point_id]
            for name in type(outputs).model_fields
            if (point_id := getattr(outputs, name)) is not None
        }
        self._part_point = settings.part_id
        self._trigger_point = settings.trigger.point
        self._ack_point = settings.ack
        self._counter_point = outputs.counter
        self._plc = plc
        self._levels: dict[str, bool | None] = {}
        self._part_id: Value = None
        self._busy = False
        self._queue: asyncio.Queue[_Trigger] = asyncio.Queue(maxsize=1)
        self._counter: int | None = None
        self._heartbeat = 0
        self._ok_seen = 0
        self._missing = 0
        self._write_failing: str | None = None
        self._roi_warned = False
        self._model_failed = False
        self._background: set[asyncio.Task[bool]] = set()
        # The handshake's writes never interleave: a heartbeat's `ready` cannot land between
        # an inspection's writes.
        self._write_lock = asyncio.Lock()
        self._unwritable: set[str] = set()
        self._crashed = False
        # One thread per station: its models run one after another, and onnxruntime spreads
        # each run over its own intra-op threads.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"station-{settings.name}"
        )

    # -- triggers --------------------------------------------------------------------------

    def observe(self, samples: Sequence[Sample]) -> None:
        """Watch one poll's samples for the part id, the trigger's and the ack's rising edges.

        The part id is taken first, so that a part id read in the same poll as the trigger
        belongs to that trigger. A value that is not GOOD makes the level unknown: the next
        good value sets it without counting as an edge.
        """
        for sample in samples:
            if sample.point == self._part_point:
                # An unreadable part id must not label this part with the previous one's.
                self._part_id = sample.value if sample.quality is Quality.GOOD else None
            elif sample.point == self._counter_point and self._counter is None:
                # Continue from the PLC's value, so that a restarted agent still changes it.
                value = sample.value
                if sample.quality is Quality.GOOD and type(value) is int:
                    self._counter = value
        for sample in samples:
            if sample.point == self._trigger_point and self._rose(sample):
                self.request("point")
            elif sample.point == self._ack_point and self._rose(sample):
                self._acknowledged()

    def _rose(self, sample: Sample) -> bool:
        if sample.quality is not Quality.GOOD:
            self._levels[sample.point] = None
            return False
        level = bool(sample.value)
        before = self._levels.get(sample.point)
        self._levels[sample.point] = level
        return level and before is False

    def request(self, source: TriggerSource = "command") -> bool:
        """Start an inspection now; False (and counted as missed) while one is running."""
        if self._busy:
            self.stats.missed_triggers += 1
            if self._missing == 0:
                log.warning(
                    "Station %s missed a trigger: it came while the previous inspection was "
                    "still running. Triggers come faster than inspections take; missed "
                    "triggers are counted in health.",
                    self.name,
                )
            self._missing += 1
            return False
        if self._missing:
            log.info("Station %s takes triggers again after missing %d.", self.name, self._missing)
            self._missing = 0
        self._busy = True
        self._queue.put_nowait(_Trigger(source, time.monotonic(), now_ms(), self._part_id))
        return True

    def _acknowledged(self) -> None:
        if "result_ready" in self._outputs and not self._busy:
            task = asyncio.get_running_loop().create_task(
                self._write_all([("result_ready", False)])
            )
            # The loop keeps only a weak reference to a task.
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    # -- running ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Inspect on every trigger, tick the heartbeat, until cancelled."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._inspections(), name=f"station {self.name}")
                if self.settings.trigger.interval is not None:
                    group.create_task(self._interval(self.settings.trigger.interval))
                if "heartbeat" in self._outputs or "ready" in self._outputs:
                    group.create_task(self._heartbeats())
        finally:
            for background in self._background:
                background.cancel()
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _inspections(self) -> None:
        task = asyncio.current_task()
        while True:
            trigger = await self._queue.get()
            try:
                await self.inspect(trigger)
            except Exception:  # a bug must not stop the station, nor the agent with it
                self.stats.internal_errors += 1
                if not self._crashed:
                    self._crashed = True
                    log.exception(
                        "Station %s failed on an inspection; it takes the next trigger. "
                        "Please report this with the traceback below.",
                        self.name,
                    )
            finally:
                self._busy = False
            if task is not None and task.cancelling():
                raise asyncio.CancelledError

    async def _interval(self, interval: float) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
            next_tick += interval
            if self.camera.health().state == LinkState.CONNECTED:
                self.request("interval")
            else:
                # Without a camera an interval would publish an error every tick; the camera's
                # state in health says why nothing is inspected.
                self.stats.skipped_no_camera += 1

    async def _heartbeats(self) -> None:
        while True:
            self._heartbeat = (self._heartbeat + 1) % COUNTER_MODULUS
            async with self._write_lock:
                await self._write_locked([("heartbeat", self._heartbeat)])
                # Decided only now, under the lock: an inspection that began meanwhile has
                # already written ready=0, which this must not undo. Written again every tick:
                # a PLC that restarted has forgotten it.
                if not self._busy:
                    await self._write_locked([("ready", self.ready)])
            await asyncio.sleep(self.settings.heartbeat_interval)

    @property
    def ready(self) -> bool:
        """Whether a trigger now would be inspected: the camera delivers and nothing runs."""
        return not self._busy and self.camera.health().state == LinkState.CONNECTED

    # -- one inspection --------------------------------------------------------------------

    async def inspect(self, trigger: _Trigger) -> None:
        """Frame, models, verdict to the PLC; then event, image and statistics."""
        loop = asyncio.get_running_loop()
        # The PLC learns at once that a result is on its way, while the frame is awaited.
        # ok and ng go low too: a PLC that reads only them never takes the last part's verdict
        # for this one's.
        begin = loop.create_task(
            self._write_all(
                [("result_ready", False), ("ready", False), ("ok", False), ("ng", False)]
            )
        )
        self._background.add(begin)
        begin.add_done_callback(self._background.discard)
        done = _Inspection(trigger)
        try:
            done.frame = await self.camera.frame_after(
                trigger.monotonic, self.settings.frame_timeout
            )
        except CameraUnavailable as exc:
            done.error, done.error_text = ErrorCode.NO_FRAME, str(exc)
        done.frame_at = time.monotonic()
        if done.frame is not None:
            try:
                done.outcome = await loop.run_in_executor(
                    self._executor, self._run_models, done.frame
                )
            except _RoiOutsideFrame as exc:
                done.error, done.error_text = ErrorCode.ROI_OUTSIDE_FRAME, str(exc)
                if not self._roi_warned:
                    self._roi_warned = True
                    log.error("Station %s cannot inspect: %s.", self.name, exc)
            except Exception as exc:  # whatever a model or OpenCV raises: this part is an error
                done.error, done.error_text = ErrorCode.MODEL_FAILED, f"a model failed: {exc}"
                if not self._model_failed:
                    self._model_failed = True
                    if isinstance(exc, ModelError):
                        log.error("Station %s: %s; the part is reported NG.", self.name, exc)
                    else:
                        log.exception(
                            "Station %s: a model failed; the part is reported NG.", self.name
                        )
        await begin
        done.verdict, done.class_id, done.class_name = self._verdict(done.outcome, done.error)
        done.plc_written = await self._write_verdict(done.verdict, done.class_id, done.error)
        done.written_at = time.monotonic()
        # Everything below is off the critical path: the PLC already has its answer.
        self._account(done)
        self.publish(self._event(done))
        if done.frame is not None and self.archive is not None and self._keep_image(done.verdict):
            self.archive.offer(self._evidence(done, done.frame))

    def _run_models(self, frame: Frame) -> _Outcome:
        """Every model on each of its regions of interest (in the station's thread)."""
        image = frame.image
        height, width = image.shape[:2]
        outcome = _Outcome()
        for loaded in self.models:
            result = _ModelResult(loaded, [])
            for roi_name, (x, y, w, h) in self._regions(loaded, width, height):
                crop = image[y : y + h, x : x + w]
                output, timings = loaded.model.infer(crop, roi_origin=(x, y))
                outcome.preprocess_ms += timings.preprocess_ms
                outcome.inference_ms += timings.inference_ms
                outcome.postprocess_ms += timings.postprocess_ms
                result.rois.append(_RoiResult(roi_name, (x, y, w, h), output))
            outcome.models.append(result)
        return outcome

    def _regions(
        self, loaded: LoadedModel, width: int, height: int
    ) -> list[tuple[str, tuple[int, int, int, int]]]:
        wanted = loaded.settings.rois
        rois = [r for r in self.settings.rois if wanted is None or r.name in wanted]
        if not rois:
            return [("frame", (0, 0, width, height))]
        regions = []
        for roi in rois:
            if roi.x + roi.width > width or roi.y + roi.height > height:
                raise _RoiOutsideFrame(
                    f"ROI {roi.name} ({roi.x},{roi.y} {roi.width}x{roi.height}) does not fit "
                    f"the camera's {width}x{height} frame; correct rois: in the configuration"
                )
            regions.append((roi.name, (roi.x, roi.y, roi.width, roi.height)))
        return regions

    def _verdict(
        self, outcome: _Outcome | None, error: ErrorCode
    ) -> tuple[Verdict, int, str | None]:
        """(verdict, class id for the PLC, class name): NG if any model says NG; the class is
        that of the first model (in configuration order) that names one."""
        if outcome is None or error is not ErrorCode.NONE:
            return "error", -1, None
        ng_models = [m for m in outcome.models if m.ng]
        if not ng_models:
            return "ok", self.settings.ok_class_id, None
        for result in ng_models:
            deciding = result.deciding()
            if deciding is not None and deciding.class_id >= 0:
                return "ng", deciding.class_id, deciding.class_name
        return "ng", self.settings.anomaly_class_id, "anomaly"

    async def _write_verdict(self, verdict: Verdict, class_id: int, error: ErrorCode) -> bool:
        """Write the result in the order a PLC can rely on: the verdict, then the counter that
        tells the PLC a new result is there (last of the first phase), then result ready and
        ready."""
        self._counter = ((self._counter or 0) + 1) % COUNTER_MODULUS
        verdict_writes: list[tuple[str, Value]] = [
            ("ok", verdict == "ok"),
            # An error also asserts NG: a part that could not be inspected must not pass.
            ("ng", verdict != "ok"),
            ("class_id", class_id),
            ("error", verdict == "error"),
            ("error_code", int(error)),
            ("counter", self._counter),
        ]
        ready_writes: list[tuple[str, Value]] = [
            ("result_ready", True),
            ("ready", self.camera.health().state == LinkState.CONNECTED),
        ]
        async with self._write_lock:
            written = await self._write_locked(verdict_writes, last="counter")
            if written is None:
                return False
            return await self._write_locked(ready_writes) is True and written

    async def _write_all(self, writes: Sequence[tuple[str, Value]]) -> bool:
        """Write the configured ones of `writes`, as one uninterrupted sequence."""
        async with self._write_lock:
            return await self._write_locked(writes) is True

    async def _write_locked(
        self, writes: Sequence[tuple[str, Value]], *, last: str | None = None
    ) -> bool | None:
        """Write the configured ones of `writes` (the lock is held). Signals that follow each
        other in one table of one Modbus device go in one request, which the PLC takes at
        once; requests keep the order of `writes`, and the one holding `last` goes last.

        True when everything arrived; False when a signal was refused (logged once for that
        point: the others are still written); None when the link failed and writing stopped.
        """
        items = [(name, plc, value) for name, value in writes if (plc := self._outputs.get(name))]
        written = True
        for group in _request_groups(items, last):
            result = await self._write_group(group)
            if result is None:
                return None
            written = written and result
        return written

    async def _write_group(self, group: list[_Write]) -> bool | None:
        if len(group) > 1:
            first = group[0][1]
            points = [plc.point for _, plc, _ in group]
            values = [_plc_value(plc.point, value) for _, plc, value in group]
            try:
                if first.driver.health().state != LinkState.CONNECTED:
                    raise NotConnected(f"device {first.device} is not connected")
                await first.driver.write_block(points, values)
            except NotConnected:
                self.stats.write_errors += 1
                return None
            except (ValueError, WriteRefused, Unsupported):
                pass  # one of them cannot take its value: written one by one to find which
            except Exception as exc:  # noqa: BLE001 (a timeout, a lost link, what pymodbus raises)
                self._link_failed(group[0][0], first, exc)
                return None
            else:
                self._wrote(group)
                return True
        written = True
        for item in group:
            result = await self._write_one(*item)
            if result is None:
                return None
            written = written and result
        return written

    async def _write_one(self, name: str, plc: PlcPoint, value: Value) -> bool | None:
        try:
            if plc.driver.health().state != LinkState.CONNECTED:
                raise NotConnected(f"device {plc.device} is not connected")
            await plc.driver.write(plc.point, _plc_value(plc.point, value))
        except NotConnected:
            # The device task already says (once) that the PLC is unreachable.
            self.stats.write_errors += 1
            return None
        except (ValueError, WriteRefused, Unsupported) as exc:
            # This point cannot take this value (a node of too small a type, an address the
            # PLC does not have): the other signals must still reach the PLC.
            self.stats.write_errors += 1
            if plc.point.id not in self._unwritable:
                self._unwritable.add(plc.point.id)
                log.error(
                    "Station %s cannot write %s=%r to %s on device %s: %s. The other signals "
                    "are still written; correct that point in the configuration or the PLC.",
                    self.name,
                    name,
                    value,
                    plc.point.id,
                    plc.device,
                    exc,
                )
            return False
        except Exception as exc:  # noqa: BLE001 (a timeout, a lost link, what pymodbus raises)
            self._link_failed(name, plc, exc)
            return None
        self._wrote([(name, plc, value)])
        return True

    def _link_failed(self, name: str, plc: PlcPoint, exc: Exception) -> None:
        self.stats.write_errors += 1
        if self._write_failing is None:
            log.error(
                "Station %s cannot write %s to %s on device %s: %s. The PLC does not see "
                "results until this works; results are still published.",
                self.name,
                name,
                plc.point.id,
                plc.device,
                exc,
            )
        self._write_failing = str(exc)

    def _wrote(self, group: Sequence[_Write]) -> None:
        if self._write_failing is not None:
            self._write_failing = None
            log.info("Station %s writes to the PLC again.", self.name)
        for name, plc, _ in group:
            if plc.point.id in self._unwritable:
                self._unwritable.discard(plc.point.id)
                log.info("Station %s writes %s to %s again.", self.name, name, plc.point.id)

    # -- after the verdict -----------------------------------------------------------------

    def _account(self, done: _Inspection) -> None:
        stats = self.stats
        stats.inspections += 1
        if done.verdict == "ok":
            stats.ok += 1
        elif done.verdict == "ng":
            stats.ng += 1
            stats.ng_by_class[done.class_name or "unknown"] += 1
        else:
            stats.errors += 1
            stats.errors_by_code[done.error.name.lower()] += 1
        stats.latency_ms.append((done.written_at - done.trigger.monotonic) * 1000)
        if done.outcome is not None:
            stats.inference_ms.append(done.outcome.inference_ms)
        stats.recent.append(
            {
                "ts": done.trigger.ts_ms,
                "part_id": done.trigger.part_id,
                "verdict": done.verdict,
                "class": done.class_name,
                "counter": self._counter,
            }
        )

    def _event(self, done: _Inspection) -> Event:
        trigger, outcome = done.trigger, done.outcome
        total = _ms(done.written_at - trigger.monotonic)
        frame_ms = _ms(done.frame_at - trigger.monotonic)
        timings: dict[str, float] = {"frame": frame_ms}
        models_ms = 0.0
        if outcome is not None:
            timings["preprocess"] = round(outcome.preprocess_ms, 2)
            timings["inference"] = round(outcome.inference_ms, 2)
            timings["postprocess"] = round(outcome.postprocess_ms, 2)
            models_ms = outcome.preprocess_ms + outcome.inference_ms + outcome.postprocess_ms
        # What is left after the frame and the models: the executor hand-over and the writes.
        timings["write"] = round(max(0.0, total - frame_ms - models_ms), 2)
        timings["total"] = total
        data: dict[str, Any] = {
            "part_id": trigger.part_id,
            "verdict": done.verdict,
            "class_id": done.class_id,
            "class": done.class_name,
            "counter": self._counter,
            "trigger": trigger.source,
            "trigger_ts": trigger.ts_ms,
            "frame_ts": done.frame.ts_ms if done.frame is not None else None,
            "plc_written": done.plc_written,
            "models": [_model_wire(m) for m in outcome.models] if outcome else [],
            "timings_ms": timings,
        }
        if done.error is not ErrorCode.NONE:
            data["error_code"] = int(done.error)
            data["error"] = done.error_text
        part = f"Part {trigger.part_id}" if trigger.part_id is not None else "A part"
        shown = done.verdict.upper() + (f" ({done.class_name})" if done.class_name else "")
        if done.error_text:
            shown += f": {done.error_text}"
        return Event("inspection", self.name, f"{part} at {self.name}: {shown}.", data=data)

    def _keep_image(self, verdict: Verdict) -> bool:
        save = self.settings.images.save
        if save == "all" or (save == "ng" and verdict != "ok"):
            return True
        if save == "ng" and self.settings.images.ok_sample_every:
            self._ok_seen += 1
            return self._ok_seen % self.settings.images.ok_sample_every == 0
        return False

    def _evidence(self, done: _Inspection, frame: Frame) -> EvidenceImage:
        boxes: list[Box] = []
        maps: list[tuple[tuple[int, int, int, int], np.ndarray]] = []
        score = 0.0
        for result in done.outcome.models if done.outcome else []:
            score = max(score, result.score)
            for roi in result.rois:
                boxes.extend(roi.output.boxes)
                if roi.output.anomaly_map is not None:
                    maps.append((roi.rect, roi.output.anomaly_map))
        label = done.verdict.upper() + (f" {done.class_name}" if done.class_name else "")
        if done.outcome is not None:
            label += f" {score:.2f}"
        part_id = done.trigger.part_id
        return EvidenceImage(
            station=self.name,
            ts_ms=done.trigger.ts_ms,
            part_id=None if part_id is None else str(part_id),
            verdict=done.verdict,
            frame=frame.image,
            boxes=boxes,
            anomaly_maps=maps,
            rois=[(r.name, r.x, r.y, r.width, r.height) for r in self.settings.rois],
            label=label,
        )

    # -- health ----------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Counters, yield, NG by class, latency percentiles, camera and image archive."""
        stats = self.stats
        judged = stats.ok + stats.ng
        camera = self.camera.health()
        report: dict[str, Any] = {
            "inspections": stats.inspections,
            "ok": stats.ok,
            "ng": stats.ng,
            "errors": stats.errors,
            "yield": round(stats.ok / judged, 4) if judged else None,
            "ng_by_class": dict(stats.ng_by_class),
            "errors_by_code": dict(stats.errors_by_code),
            "missed_triggers": stats.missed_triggers,
            "plc_write_errors": stats.write_errors,
            "skipped_no_camera": stats.skipped_no_camera,
            "internal_errors": stats.internal_errors,
            "latency_ms": _percentiles(stats.latency_ms),
            "inference_ms": _percentiles(stats.inference_ms),
            "recent": list(stats.recent),
            "camera": {
                "state": str(camera.state),
                "frames": camera.frames,
                "reconnects": camera.reconnects,
                "fps": camera.fps,
                "last_error": camera.last_error,
            },
        }
        if self.archive is not None:
            report["images"] = _archive_health(self.archive)
        return report


_Write = tuple[str, PlcPoint, Value]


def _request_groups(items: Sequence[_Write], last: str | None) -> list[list[_Write]]:
    """`items` cut into write requests: Modbus points that directly follow each other in one
    table of one device share one (the driver says which may), others go alone. Requests are
    ordered by their first item in `items`, except that the one holding `last` goes last."""
    order = {id(item): index for index, item in enumerate(items)}
    groups: list[list[_Write]] = []
    blockable = sorted(
        (item for item in items if _blockable(item[1])),
        key=lambda item: (
            item[1].device,
            cast(ModbusPoint, item[1].point).table,
            cast(ModbusPoint, item[1].point).register,
        ),
    )
    for item in blockable:
        previous = groups[-1][-1] if groups else None
        if (
            previous is not None
            and previous[1].device == item[1].device
            and item[1].driver.can_write_together(previous[1].point, item[1].point)
        ):
            groups[-1].append(item)
        else:
            groups.append([item])
    groups.extend([item] for item in items if not _blockable(item[1]))

    def position(group: list[_Write]) -> tuple[bool, int]:
        holds_last = last is not None and any(name == last for name, _, _ in group)
        return holds_last, min(order[id(item)] for item in group)

    return sorted(groups, key=position)


def _blockable(plc: PlcPoint) -> bool:
    return isinstance(plc.point, ModbusPoint) and hasattr(plc.driver, "write_block")


def _plc_value(point: ModbusPoint | OpcUaPoint, value: Value) -> Value:
    """Flags go to a coil or OPC UA node as booleans, to a holding register as 0 or 1."""
    if isinstance(value, bool) and isinstance(point, ModbusPoint) and point.table == "holding":
        return int(value)
    return value


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _percentiles(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)

    def at(fraction: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 2)

    return {"p50": at(0.5), "p95": at(0.95), "max": round(ordered[-1], 2)}


def _archive_health(archive: ImageArchive) -> dict[str, Any]:
    stats = archive.stats()
    return {
        "saved": stats.saved,
        "dropped": stats.dropped,
        "bytes": stats.bytes,
        "files": stats.files,
        "deleted_for_size": stats.deleted_for_size,
        "deleted_for_age": stats.deleted_for_age,
        "errors": stats.errors,
        "failing": stats.failing,
        "last_error": stats.last_error,
    }


def _box_wire(box: Box) -> list[Any]:
    return [
        round(box.x1, 1),
        round(box.y1, 1),
        round(box.x2, 1),
        round(box.y2, 1),
        round(box.score, 4),
        box.class_name,
    ]


def _model_wire(result: _ModelResult) -> dict[str, Any]:
    model = result.loaded.model
    return {
        "name": result.loaded.name,
        "version": model.version,
        "family": model.family,
        "verdict": "ng" if result.ng else "ok",
        "score": round(result.score, 4),
        "rois": [
            {
                "roi": roi.roi,
                "verdict": "ng" if roi.output.ng else "ok",
                "score": round(roi.output.score, 4),
                "class": roi.output.class_name,
                **({"boxes": [_box_wire(b) for b in roi.output.boxes]} if roi.output.boxes else {}),
            }
            for roi in result.rois
        ],
    }
