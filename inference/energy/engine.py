"""One energy consumer at run time: the pure energy modules wired to the pipeline.

An `EnergyConsumer` is registered by `agent.app` as an observer of the devices that own its
points and sees every poll's raw samples (before scale, deadband and heartbeat). It feeds the
meter's counter (or power) to `EnergyCounter` (or `PowerIntegrator`), the state point (or the
power) to `StateFromPoint` (or `StateFromPower`), and the parts and rejects counters, into one
`EnergyKpis`. For every interval that closes it publishes samples on the meter's device, with
the interval's start as their timestamp:

- `<name>.energy_kwh`: the interval's energy; `<name>.off_kwh`, `.idle_kwh`, `.producing_kwh`
  (and `.unknown_kwh` when some energy fell in an unknown state) its split by machine state;
- `<name>.kwh_per_good_part`: only for intervals with good parts;
- `<name>.demand_kw`: at the end of each 15-minute window (timestamp: the window's start),
  with `<name>.demand_peak_day_kw` and `<name>.demand_peak_month_kw`.

Quality is GOOD when the meter's readings covered the whole interval (window), UNCERTAIN
otherwise (the first interval, a meter gap, a new counter segment). Counter readings that are
resets, wraps, replacements or implausible jumps are published once each as `energy_counter`
events.

With a baseline (`baseline:`), each closed interval's features are put together (a point's
last usable value, scaled as published, or production_rate = parts per minute, idle_share /
producing_share = the share of the interval's time in that state), the model gives the
expected power, and `<name>.expected_kw` and `<name>.residual_kw` (actual mean power minus
expected) are published with the expectation's quality (UNCERTAIN when an input is outside the
training range, or the interval was not covered whole). A CUSUM on the GOOD residuals raises
and clears `energy_anomaly` events. numpy and onnxruntime are imported only then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from agent.model import Event, Quality, Sample
from agent.settings import EnergySettings
from inference.energy.counters import (
    CounterEvent,
    CounterResult,
    EnergyConfigError,
    EnergyCounter,
    PowerIntegrator,
    PowerResult,
    RegisterKind,
)
from inference.energy.kpi import EnergyKpis, KpiRecord, Shift
from inference.energy.state import MachineState, StateFromPoint, StateFromPower

if TYPE_CHECKING:
    from inference.energy.baseline import BaselineModel, Cusum

__all__ = ["EnergyConsumer"]

log = logging.getLogger(__name__)

_REPORTED = frozenset(
    {
        CounterEvent.RESET,
        CounterEvent.WRAPPED,
        CounterEvent.REPLACED,
        CounterEvent.IMPLAUSIBLE_JUMP,
    }
)
_STATES = (MachineState.OFF, MachineState.IDLE, MachineState.PRODUCING)


class EnergyConsumer:
    """Counter/power, state and parts of one consumer -> KPI samples and counter events.

    `publish_metrics(device, samples)` and `publish_event(event)` hand records to the pipeline;
    `device` is the meter's device, whose metrics topic carries the KPI samples. Raises
    `inference.energy.counters.EnergyConfigError` for settings the energy modules refuse.
    """

    def __init__(
        self,
        settings: EnergySettings,
        *,
        device: str,
        publish_metrics: Callable[[str, list[Sample]], None],
        publish_event: Callable[[Event], None],
        scales: dict[str, tuple[float, float]] | None = None,
    ) -> None:
        self.settings = settings
        # Point id -> (scale, offset) of the points read as baseline features.
        self._scales = scales or {}
        self.name = settings.name
        self.device = device
        self._publish_metrics = publish_metrics
        self._publish_event = publish_event
        self.counter: EnergyCounter | None = None
        self.integrator: PowerIntegrator | None = None
        if settings.energy is not None:
            self.counter = EnergyCounter(
                kind=RegisterKind(settings.energy.kind),
                unit_factor=settings.energy.unit_factor,
                max_power_kw=settings.energy.max_power_kw,
                bits=settings.energy.bits,
            )
            self.energy_point: str | None = settings.energy.point
        else:
            self.energy_point = None
        self.power_point: str | None = None
        if settings.power is not None:
            self.power_point = settings.power.point
            if self.counter is None:  # a counter, when there is one, is the energy source
                self.integrator = PowerIntegrator(
                    unit_factor=settings.power.unit_factor, max_gap_s=settings.power.max_gap
                )
        self.state: StateFromPoint | StateFromPower | None = None
        if settings.state_point is not None and settings.state_map:
            mapping: dict[int | float | str, str] = dict(settings.state_map.items())
            self.state = StateFromPoint(mapping)
        elif settings.off_below_kw is not None and settings.producing_above_kw is not None:
            self.state = StateFromPower(
                settings.off_below_kw,
                settings.producing_above_kw,
                settings.hysteresis_kw,
                settings.min_dwell,
            )
        self.kpis = EnergyKpis(
            interval_s=int(settings.interval),
            tz=settings.timezone,
            shifts=[Shift(s.name, s.start, s.end) for s in settings.shifts],
        )
        self.points = {
            point
            for point in (
                self.energy_point,
                self.power_point,
                settings.state_point,
                settings.parts,
                settings.rejects,
            )
            if point is not None
        }
        self.baseline: BaselineModel | None = None
        self.cusum: Cusum | None = None
        self._feature_points: dict[str, str] = {}  # feature name -> point id
        self._last_values: dict[str, float] = {}  # point id -> last usable value, scaled
        self._state_log: list[tuple[int, MachineState]] = []  # changes, for time shares
        self.anomalies = 0
        if settings.baseline is not None:
            self._load_baseline()
        self.intervals = 0
        self.events = 0
        self.last_interval_kwh: float | None = None
        self.last_interval_ts: int | None = None

    def _load_baseline(self) -> None:
        """Load the model and check its features; raises EnergyConfigError for a model that
        cannot be used (ImportError without onnxruntime)."""
        from inference.energy.baseline import BaselineModel, Cusum
        from inference.session import ModelError

        settings = self.settings.baseline
        assert settings is not None
        try:
            model = BaselineModel.load(settings.model, threads=settings.threads)
        except ModelError as exc:
            raise EnergyConfigError(str(exc)) from exc
        names = [feature.name for feature in model.features]
        missing = [name for name in names if name not in settings.features]
        unknown = [name for name in settings.features if name not in names]
        if missing or unknown:
            raise EnergyConfigError(
                f"{settings.model}: the model's features are {', '.join(names)}; "
                + (f"not bound under baseline.features: {', '.join(missing)}" if missing else "")
                + ("; " if missing and unknown else "")
                + (f"not model features: {', '.join(unknown)}" if unknown else "")
            )
        self.baseline = model
        self.cusum = Cusum(model.residual_std_kw, k=settings.cusum_k, h=settings.cusum_h)
        derived = {"production_rate", "idle_share", "producing_share"}
        self._feature_points = {
            name: source for name, source in settings.features.items() if source not in derived
        }
        self.points.update(self._feature_points.values())

    # -- the observer ------------------------------------------------------------------------

    def observe(self, samples: Sequence[Sample]) -> None:
        """One poll's raw samples of a device that owns some of this consumer's points.

        State and parts first, energy last: at equal timestamps the energy closes intervals.
        """
        records: list[KpiRecord] = []
        energy: list[Sample] = []
        settings = self.settings
        for sample in samples:
            point = sample.point
            if point not in self.points:
                continue
            if point in self._scales and sample.quality is Quality.GOOD:
                value = sample.value
                if isinstance(value, int | float) and not isinstance(value, bool):
                    scale, offset = self._scales[point]
                    self._last_values[point] = value * scale + offset
            if point == settings.state_point and isinstance(self.state, StateFromPoint):
                self._state(sample)
            if point == self.power_point:
                if isinstance(self.state, StateFromPower):
                    assert settings.power is not None
                    value = sample.value
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        value = value * settings.power.unit_factor
                    self._state(Sample(point, value, sample.quality, sample.ts))
                if self.integrator is not None:
                    energy.append(sample)
            if point == self.energy_point:
                energy.append(sample)
            if point == settings.parts:
                records += self.kpis.feed_parts(sample.ts, sample.value, sample.quality)
            if point == settings.rejects:
                records += self.kpis.feed_rejects(sample.ts, sample.value, sample.quality)
        for sample in energy:
            result: CounterResult | PowerResult
            if self.counter is not None:
                result = self.counter.feed_sample(sample)
                if result.event in _REPORTED:
                    self._counter_event(sample, result)
            else:
                assert self.integrator is not None
                result = self.integrator.feed_sample(sample)
            records += self.kpis.feed_result(result)
        if records:
            self._publish(records)

    def _state(self, sample: Sample) -> None:
        assert self.state is not None
        result = self.state.feed_sample(sample)
        if result.changed:
            self.kpis.feed_state(result.since_ts, result.state)
            if self.baseline is not None:
                self._state_log.append((result.since_ts, result.state))

    def _counter_event(self, sample: Sample, result: CounterResult) -> None:
        self.events += 1
        message = f"energy {self.name}: meter counter {result.event.value}: {result.reason}"
        log.warning("%s.", message)
        self._publish_event(
            Event(
                "energy_counter",
                self.name,
                message,
                ts=result.ts,
                data={
                    "event": result.event.value,
                    "point": sample.point,
                    "value": sample.value,
                    "delta_kwh": result.delta_kwh,
                    "total_kwh": result.total_kwh,
                    "segment": result.segment,
                },
            )
        )

    # -- publishing --------------------------------------------------------------------------

    def _publish(self, records: list[KpiRecord]) -> None:
        samples: list[Sample] = []
        name = self.name
        for record in records:
            interval = record.interval
            ts = interval.start_ts
            full = interval.covered_ms >= interval.end_ts - interval.start_ts
            quality = Quality.GOOD if full else Quality.UNCERTAIN
            samples.append(Sample(f"{name}.energy_kwh", interval.kwh, quality, ts))
            if self.state is not None:
                for state in _STATES:
                    kwh = interval.kwh_by_state[state]
                    samples.append(Sample(f"{name}.{state.value}_kwh", kwh, quality, ts))
                unknown = interval.kwh_by_state[MachineState.UNKNOWN]
                if unknown:
                    samples.append(Sample(f"{name}.unknown_kwh", unknown, quality, ts))
            per_part = interval.kwh_per_good_part
            if per_part is not None:
                samples.append(Sample(f"{name}.kwh_per_good_part", per_part, quality, ts))
            for window in record.demand:
                window_quality = Quality.UNCERTAIN if window.partial else Quality.GOOD
                samples.append(
                    Sample(f"{name}.demand_kw", window.kw, window_quality, window.start_ts)
                )
                if record.day_peak is not None:
                    samples.append(
                        Sample(
                            f"{name}.demand_peak_day_kw",
                            record.day_peak.kw,
                            Quality.UNCERTAIN if record.day_peak.partial else Quality.GOOD,
                            window.start_ts,
                        )
                    )
                if record.month_peak is not None:
                    samples.append(
                        Sample(
                            f"{name}.demand_peak_month_kw",
                            record.month_peak.kw,
                            Quality.UNCERTAIN if record.month_peak.partial else Quality.GOOD,
                            window.start_ts,
                        )
                    )
            if self.baseline is not None:
                samples += self._expectation(interval, quality)
            self.intervals += 1
            self.last_interval_kwh = interval.kwh
            self.last_interval_ts = ts
        self._publish_metrics(self.device, samples)

    def _state_shares(self, start: int, end: int) -> dict[MachineState, float]:
        """The share of [start, end) spent in each state, from the changes logged."""
        shares: dict[MachineState, float] = dict.fromkeys(MachineState, 0.0)
        log_ = self._state_log
        state = MachineState.UNKNOWN
        keep = 0
        for index, (ts, change) in enumerate(log_):
            if ts <= start:
                state, keep = change, index
        cursor = start
        for ts, change in log_:
            if ts <= start:
                continue
            if ts >= end:
                break
            shares[state] += (ts - cursor) / (end - start)
            state, cursor = change, ts
        shares[state] += (end - cursor) / (end - start)
        del log_[:keep]  # the change in force at `start` stays: the next interval needs it
        return shares

    def _expectation(self, interval: Any, quality: Quality) -> list[Sample]:
        assert self.baseline is not None and self.cusum is not None
        settings = self.settings.baseline
        assert settings is not None
        start, end = interval.start_ts, interval.end_ts
        shares = self._state_shares(start, end)
        derived = {
            "production_rate": interval.good_parts * 60_000 / (end - start),
            "idle_share": shares[MachineState.IDLE],
            "producing_share": shares[MachineState.PRODUCING],
        }
        features: dict[str, float] = {}
        for name, source in settings.features.items():
            if source in derived:
                features[name] = derived[source]
            elif source in self._last_values:
                features[name] = self._last_values[source]
        expectation = self.baseline.expected(features)
        if expectation.expected_kw is None:
            return []
        actual_kw = interval.kwh * 3_600_000 / (end - start)
        residual = actual_kw - expectation.expected_kw
        worst = expectation.quality
        if quality is not Quality.GOOD and worst is Quality.GOOD:
            worst = quality
        name = self.name
        samples = [
            Sample(
                f"{name}.expected_kw",
                expectation.expected_kw,
                expectation.quality,
                start,
                expectation.reason,
            ),
            Sample(f"{name}.residual_kw", residual, worst, start, expectation.reason),
        ]
        change = self.cusum.update(start, residual, worst)
        if change is not None:
            self.anomalies += change.kind == "raised"
            message = (
                f"energy {name}: {change.magnitude_kw:.3g} kW above the baseline since "
                f"{change.start_ms} ms"
                if change.kind == "raised"
                else f"energy {name}: back to the baseline"
            )
            log.warning("%s.", message)
            self._publish_event(
                Event(
                    "energy_anomaly",
                    name,
                    message,
                    ts=end,
                    data={
                        "state": change.kind,
                        "start_ts": change.start_ms,
                        "magnitude_kw": change.magnitude_kw,
                        "statistic": change.statistic,
                    },
                )
            )
        return samples

    def health(self) -> dict[str, Any]:
        """Counts for the health report."""
        readings: dict[str, int] = {}
        if self.counter is not None:
            readings = {event.value: n for event, n in self.counter.counts.items()}
        elif self.integrator is not None:
            readings = {event.value: n for event, n in self.integrator.counts.items()}
        return {
            "meter_readings": readings,
            "counter_events": self.events,
            "intervals": self.intervals,
            "last_interval_kwh": self.last_interval_kwh,
            "last_interval_ts": self.last_interval_ts,
            "state": self.state.state.value if self.state is not None else None,
            "kpi_counts": dict(self.kpis.counts),
            **(
                {
                    "anomalies_raised": self.anomalies,
                    "anomaly_active": self.cusum.active is not None,
                }
                if self.cusum is not None
                else {}
            ),
        }
