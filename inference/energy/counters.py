"""Energy from a meter: counter registers (resets, wraps, replacements) and power integration.

Both classes are pure state machines fed one reading at a time: no I/O, no clock, no exceptions
for odd values (a NaN, an infinity, a string, a negative value or a timestamp that goes backwards
is classified and counted, never raised). Only configuration errors raise, when the object is built.

`EnergyCounter` turns successive readings of an import-energy register into per-reading energy
deltas and a running total; the total is kept in register units and converted once, so integer
registers give exact totals however many readings were fed. `PowerIntegrator` integrates power
samples with the trapezoidal rule and refuses to bridge gaps longer than `max_gap_s`.
"""

from __future__ import annotations

import math
import struct
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum

from agent.model import Quality, Sample, Value

__all__ = [
    "CounterEvent",
    "CounterResult",
    "EnergyConfigError",
    "EnergyCounter",
    "PowerEvent",
    "PowerIntegrator",
    "PowerResult",
    "RegisterKind",
    "float32_step",
]

_MS_PER_HOUR = 3_600_000
_FLOAT32_MAX = 3.4028234663852886e38
_FLOAT32_MIN_STEP = math.ldexp(1.0, -149)  # the spacing of float32 subnormals (and at zero)


class EnergyConfigError(ValueError):
    """An `EnergyCounter` or `PowerIntegrator` was built with an unusable setting."""


class RegisterKind(StrEnum):
    """How the meter stores its energy counter."""

    INTEGER = "integer"  # u16/u32/u64 (or signed) register counting raw units; wraps at 2^bits
    FLOAT32 = "float32"  # IEEE-754 single: its step grows with the value (0.0625 at 10^6)
    FLOAT64 = "float64"  # IEEE-754 double (OPC UA Double counters)


class CounterEvent(StrEnum):
    """What one reading of an energy counter meant; the wire form is the lower-case name."""

    FIRST = "first"  # the first usable reading: it sets the baseline, no energy yet
    NORMAL = "normal"  # the counter advanced by a plausible amount (or, integer registers, by 0)
    BELOW_RESOLUTION = "below_resolution"  # float counter moved less than one step: 0, carried
    WRAPPED = "wrapped"  # an integer register rolled over 2^bits; the delta spans the wrap
    RESET = "reset"  # the counter fell to (near) zero: new segment, energy since the reset counted
    REPLACED = "replaced"  # the counter fell to an unrelated non-zero value: new segment, no energy
    IMPLAUSIBLE_JUMP = "implausible_jump"  # rose faster than max power allows: new segment, 0
    BAD_INPUT = "bad_input"  # not GOOD, or not a usable number: ignored, baseline kept
    STALE = "stale"  # timestamp not after the last usable reading: ignored, baseline kept

    @property
    def new_segment(self) -> bool:
        """True for the events after which the counter is read as a different counter."""
        return self in _NEW_SEGMENT


_NEW_SEGMENT = frozenset({CounterEvent.RESET, CounterEvent.REPLACED, CounterEvent.IMPLAUSIBLE_JUMP})


@dataclass(frozen=True, slots=True)
class CounterResult:
    """The outcome of one reading fed to an `EnergyCounter`.

    `delta_kwh` is the energy attributed to this reading (never negative, 0 unless `event` is
    NORMAL, WRAPPED or RESET). `total_kwh` is the energy counted since the first reading, over
    all segments. `resolution_kwh` is the counter's step at the value just read (the last usable
    value for ignored readings; 0.0 before any). `segment` counts the counters seen: 1 after
    FIRST, one more after each RESET, REPLACED or IMPLAUSIBLE_JUMP. `reason` explains any event
    other than NORMAL in a sentence.
    """

    ts: int
    event: CounterEvent
    delta_kwh: float
    total_kwh: float
    resolution_kwh: float
    segment: int
    reason: str | None = None

    @property
    def below_resolution(self) -> bool:
        """True when the counter moved less than its step and the energy was carried forward."""
        return self.event is CounterEvent.BELOW_RESOLUTION


class PowerEvent(StrEnum):
    """What one power sample meant to a `PowerIntegrator`; the wire form is the lower-case name."""

    FIRST = "first"  # the first usable sample: no energy yet
    NORMAL = "normal"  # integrated from the previous usable sample
    NEGATIVE = "negative"  # below zero: integrated as 0 kW (import energy never decreases)
    GAP = "gap"  # too far from the previous usable sample: the gap is not integrated
    # Not GOOD, or not a finite number: ignored, baseline kept. Also an interval whose energy
    # overflows a float (absurd powers): not integrated, integration restarts at this sample.
    BAD_INPUT = "bad_input"
    STALE = "stale"  # timestamp not after the last usable sample: ignored, baseline kept


@dataclass(frozen=True, slots=True)
class PowerResult:
    """The outcome of one sample fed to a `PowerIntegrator`.

    `energy_kwh` is the energy of the interval ending at this sample (0.0 unless NORMAL or
    NEGATIVE); `gap_ms` is the length of the interval left out (GAP only, else 0); `clamped` is
    True whenever this sample was negative and taken as 0 kW, whatever `event` says.
    """

    ts: int
    event: PowerEvent
    energy_kwh: float
    total_kwh: float
    gap_ms: int = 0
    clamped: bool = False
    reason: str | None = None


def float32_step(value: float) -> float:
    """The spacing of float32 numbers at `value`: 0.0625 at 10^6, 1.0 at 10^7.

    Uses the float32 rounding of `value` (as a meter would store it), so a value just below a
    power of two that rounds up to it gets the coarser step. Infinite or NaN values, and values
    beyond the float32 range, have no step: the result is `math.inf`.
    """
    if not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
        return math.inf
    try:
        rounded: float = struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:  # rounds to above the largest float32
        return math.inf
    if rounded == 0.0:
        return _FLOAT32_MIN_STEP
    _, exponent = math.frexp(rounded)  # rounded = m * 2**exponent, 0.5 <= |m| < 1
    return max(math.ldexp(1.0, exponent - 24), _FLOAT32_MIN_STEP)


def _divisor(factor: float) -> int | None:
    """1000 for 0.001: dividing by it is correctly rounded where multiplying by 0.001 is not."""
    if factor >= 1:
        return None
    divisor = round(1 / factor)
    return divisor if divisor > 0 and math.isclose(1 / divisor, factor, rel_tol=1e-15) else None


def _unusable_ts(ts: object) -> bool:
    return isinstance(ts, bool) or not isinstance(ts, int) or not -(2**63) <= ts < 2**63


def _as_float(value: int | float) -> float | None:
    """`float(value)`, or None for an integer too large for a float."""
    try:
        return float(value)
    except OverflowError:
        return None


def _positive_finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EnergyConfigError(f"{name} must be a number, not {value!r}.")
    if not math.isfinite(value) or value <= 0:
        raise EnergyConfigError(f"{name} must be a positive finite number, not {value!r}.")
    return float(value)


class EnergyCounter:
    """Energy from successive readings of one meter's import-energy counter register.

    Feed the raw register value (before any scale) with its timestamp and quality; `unit_factor`
    converts raw units to kWh (1 for kWh, 0.001 for Wh, 0.01 for a 0.01 kWh register).
    `max_power_kw` is the most the metered load can draw: a rise of more than
    `max_power_kw * elapsed_hours * margin` (plus one counter step) between usable readings is
    an implausible jump. A fall is a wrap when the integer register's wrapped delta would be
    plausible, a reset when the new value itself is plausible as energy since a reset to zero,
    and a meter replacement otherwise.
    """

    __slots__ = (
        "_base",
        "_base_ts",
        "_closed_raw",
        "_divisor",
        "_last_ts",
        "_segment_start",
        "_wrap_raw",
        "bits",
        "counts",
        "kind",
        "margin",
        "max_power_kw",
        "modulus",
        "segment",
        "signed",
        "unit_factor",
    )

    def __init__(
        self,
        *,
        kind: RegisterKind,
        unit_factor: float,
        max_power_kw: float,
        bits: int = 32,
        signed: bool = False,
        margin: float = 2.0,
    ) -> None:
        """Validate the settings; raises `EnergyConfigError` for an unusable one."""
        if not isinstance(kind, RegisterKind):
            raise EnergyConfigError(f"kind must be a RegisterKind, not {kind!r}.")
        if kind is RegisterKind.INTEGER and (
            isinstance(bits, bool) or not isinstance(bits, int) or not 8 <= bits <= 64
        ):
            raise EnergyConfigError(f"bits must be an integer from 8 to 64, not {bits!r}.")
        self.kind = kind
        self.unit_factor = _positive_finite("unit_factor", unit_factor)
        self.max_power_kw = _positive_finite("max_power_kw", max_power_kw)
        self.margin = _positive_finite("margin", margin)
        if self.margin < 1:
            raise EnergyConfigError(f"margin must be at least 1, not {margin!r}.")
        self.bits = bits
        self.signed = signed
        self.modulus = 1 << bits if kind is RegisterKind.INTEGER else 0
        self._divisor = _divisor(self.unit_factor)
        self.segment = 0
        self.counts: Counter[CounterEvent] = Counter()  # one per reading fed, by event
        # Raw-unit bookkeeping: the total is (closed segments) + (base + wraps - segment start),
        # so it telescopes and stays exact for integer registers whatever the number of readings.
        self._base: int | float = 0  # the last value energy was counted up to (carried below step)
        self._base_ts = 0
        self._last_ts: int | None = None  # the last usable reading's timestamp
        self._segment_start: int | float = 0
        self._wrap_raw = 0  # multiples of the modulus added by wraps in this segment
        self._closed_raw: int | float = 0

    # -- public ------------------------------------------------------------------------------

    @property
    def total_raw(self) -> int | float:
        """The energy counted so far in register units: an exact int for integer registers."""
        return self._closed_raw + (self._base + self._wrap_raw - self._segment_start)

    @property
    def total_kwh(self) -> float:
        """The energy counted so far, all segments, in kWh (one rounding from `total_raw`)."""
        return self._to_kwh(self.total_raw)

    def resolution_kwh(self, raw: float) -> float:
        """The counter's step in kWh at raw value `raw`: one raw unit for integer registers."""
        if self.kind is RegisterKind.INTEGER:
            return self.unit_factor
        if self.kind is RegisterKind.FLOAT32:
            return self._to_kwh(float32_step(raw))
        return self._to_kwh(math.ulp(raw)) if math.isfinite(raw) else math.inf

    def feed_sample(self, sample: Sample) -> CounterResult:
        """`feed()` with a pipeline `Sample` of the counter point."""
        return self.feed(sample.ts, sample.value, sample.quality)

    def feed(self, ts: int, value: Value, quality: Quality = Quality.GOOD) -> CounterResult:
        """Account for one reading taken at `ts` (ms); never raises."""
        result = self._feed(ts, value, quality)
        self.counts[result.event] += 1
        return result

    # -- internals ---------------------------------------------------------------------------

    def _to_kwh(self, raw: float) -> float:
        return raw / self._divisor if self._divisor else raw * self.unit_factor

    def _result(
        self, ts: int, event: CounterEvent, delta_raw: float, raw: float, reason: str | None
    ) -> CounterResult:
        return CounterResult(
            ts=ts,
            event=event,
            delta_kwh=self._to_kwh(delta_raw),
            total_kwh=self.total_kwh,
            resolution_kwh=self.resolution_kwh(raw) if self.segment else 0.0,
            segment=self.segment,
            reason=reason,
        )

    def _ignored(self, ts: int, event: CounterEvent, reason: str) -> CounterResult:
        return self._result(ts, event, 0, self._base, reason)

    def _normalise(self, value: Value) -> int | float | str:
        """The reading as a non-negative raw number, or a sentence saying why it is unusable."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"the value {value!r} is not a number"
        if isinstance(value, float) and not math.isfinite(value):
            return f"the value {value!r} is not finite"
        if self.kind is not RegisterKind.INTEGER:
            number = _as_float(value)
            if number is None or number < 0:
                return f"the value {value!r} is negative or too large"
            if self.kind is RegisterKind.FLOAT32 and number > _FLOAT32_MAX:
                return f"the value {value!r} is beyond the float32 range"
            return number
        if isinstance(value, float):
            if not value.is_integer():
                return f"the value {value!r} is not an integer"
            value = int(value)
        low = -(self.modulus >> 1) if self.signed else 0
        if not low <= value < (self.modulus >> 1 if self.signed else self.modulus):
            return f"the value {value!r} is outside a {self.bits}-bit register"
        return value % self.modulus  # a signed register's negative half continues its count

    def _start_segment(self, start: float, value: float, ts: int) -> None:
        if self.segment:
            self._closed_raw = self.total_raw
        self.segment += 1
        self._segment_start = start
        self._wrap_raw = 0
        self._base = value
        self._base_ts = ts

    def _feed(self, ts: int, value: Value, quality: Quality) -> CounterResult:
        if _unusable_ts(ts):
            return self._ignored(0, CounterEvent.BAD_INPUT, f"the timestamp {ts!r} is unusable")
        if quality is not Quality.GOOD:
            return self._ignored(ts, CounterEvent.BAD_INPUT, f"the reading is {quality}")
        raw = self._normalise(value)
        if isinstance(raw, str):
            return self._ignored(ts, CounterEvent.BAD_INPUT, raw)
        if self._last_ts is None:
            self._last_ts = ts
            self._start_segment(raw, raw, ts)
            return self._result(ts, CounterEvent.FIRST, 0, raw, "the first reading")
        if ts <= self._last_ts:
            return self._ignored(
                ts, CounterEvent.STALE, f"the reading is not newer than {self._last_ts} ms"
            )
        self._last_ts = ts
        step_kwh = self.resolution_kwh(raw)
        limit_kwh = self.max_power_kw * (ts - self._base_ts) / _MS_PER_HOUR * self.margin + step_kwh
        base = self._base
        if raw >= base:
            delta = raw - base
            if self._to_kwh(delta) > limit_kwh:
                self._start_segment(raw, raw, ts)
                return self._result(
                    ts,
                    CounterEvent.IMPLAUSIBLE_JUMP,
                    0,
                    raw,
                    f"the counter rose from {base!r} to {raw!r}, more than {limit_kwh:.6g} kWh",
                )
            if self.kind is not RegisterKind.INTEGER and self._to_kwh(delta) < step_kwh:
                # Carried: the baseline stays, so the next reading that moves counts this too.
                return self._result(
                    ts,
                    CounterEvent.BELOW_RESOLUTION,
                    0,
                    raw,
                    f"the counter moved {delta!r}, less than its step of {step_kwh:.6g} kWh",
                )
            self._base = raw
            self._base_ts = ts
            return self._result(ts, CounterEvent.NORMAL, delta, raw, None)
        if self.kind is RegisterKind.INTEGER:
            wrapped = raw + self.modulus - int(base)
            if self._to_kwh(wrapped) <= limit_kwh:
                self._wrap_raw += self.modulus
                self._base = raw
                self._base_ts = ts
                return self._result(
                    ts, CounterEvent.WRAPPED, wrapped, raw, f"the register wrapped to {raw!r}"
                )
        if self._to_kwh(raw) <= limit_kwh:
            self._start_segment(0, raw, ts)
            return self._result(
                ts, CounterEvent.RESET, raw, raw, f"the counter fell from {base!r} to {raw!r}"
            )
        self._start_segment(raw, raw, ts)
        return self._result(
            ts,
            CounterEvent.REPLACED,
            0,
            raw,
            f"the counter fell from {base!r} to {raw!r}: a different meter",
        )


class PowerIntegrator:
    """Energy from successive power samples by the trapezoidal rule.

    `unit_factor` converts sample units to kW (1 for kW, 0.001 for W). Two usable samples more
    than `max_gap_s` apart are not integrated: the later one restarts the integration and
    reports the gap. Negative power is integrated as 0 kW and flagged (import energy only).
    """

    __slots__ = (
        "_comp",
        "_divisor",
        "_last",
        "_last_ts",
        "_sum",
        "counts",
        "max_gap_ms",
        "negative_samples",
        "unit_factor",
    )

    def __init__(self, *, unit_factor: float, max_gap_s: float) -> None:
        """Validate the settings; raises `EnergyConfigError` for an unusable one."""
        self.unit_factor = _positive_finite("unit_factor", unit_factor)
        self.max_gap_ms = _positive_finite("max_gap_s", max_gap_s) * 1000
        self._divisor = _divisor(self.unit_factor)
        self.counts: Counter[PowerEvent] = Counter()  # one per sample fed, by event
        self.negative_samples = 0  # samples taken as 0 kW, whatever their event
        self._last: float = 0.0
        self._last_ts: int | None = None
        # Sum of (p0 + p1) * dt_ms in sample units, Neumaier-compensated: exact for integer
        # powers and timestamps, and order-independent to within one rounding otherwise.
        self._sum = 0.0
        self._comp = 0.0

    @property
    def total_kwh(self) -> float:
        """The energy integrated so far in kWh."""
        return self._to_kwh(self._sum + self._comp)

    def feed_sample(self, sample: Sample) -> PowerResult:
        """`feed()` with a pipeline `Sample` of the power point."""
        return self.feed(sample.ts, sample.value, sample.quality)

    def feed(self, ts: int, value: Value, quality: Quality = Quality.GOOD) -> PowerResult:
        """Integrate up to one sample taken at `ts` (ms); never raises."""
        result = self._feed(ts, value, quality)
        self.counts[result.event] += 1
        if result.clamped:
            self.negative_samples += 1
        return result

    def _to_kwh(self, raw_ms2: float) -> float:
        """(p0 + p1) * dt_ms in sample units → kWh."""
        kw_ms2 = raw_ms2 / self._divisor if self._divisor else raw_ms2 * self.unit_factor
        return kw_ms2 / (2 * _MS_PER_HOUR)

    def _add(self, x: float) -> None:
        total = self._sum + x
        if abs(self._sum) >= abs(x):
            self._comp += (self._sum - total) + x
        else:
            self._comp += (x - total) + self._sum
        self._sum = total

    def _ignored(self, ts: int, event: PowerEvent, reason: str) -> PowerResult:
        return PowerResult(
            ts=ts, event=event, energy_kwh=0.0, total_kwh=self.total_kwh, reason=reason
        )

    def _feed(self, ts: int, value: Value, quality: Quality) -> PowerResult:
        if _unusable_ts(ts):
            return self._ignored(0, PowerEvent.BAD_INPUT, f"the timestamp {ts!r} is unusable")
        if quality is not Quality.GOOD:
            return self._ignored(ts, PowerEvent.BAD_INPUT, f"the sample is {quality}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            return self._ignored(ts, PowerEvent.BAD_INPUT, f"the value {value!r} is not a number")
        number = _as_float(value)
        if number is None or not math.isfinite(number):
            return self._ignored(ts, PowerEvent.BAD_INPUT, f"the value {value!r} is not finite")
        if self._last_ts is not None and ts <= self._last_ts:
            return self._ignored(
                ts, PowerEvent.STALE, f"the sample is not newer than {self._last_ts} ms"
            )
        clamped = number < 0
        power = 0.0 if clamped else number
        previous, previous_ts = self._last, self._last_ts
        self._last, self._last_ts = power, ts
        if previous_ts is None:
            return PowerResult(
                ts=ts,
                event=PowerEvent.FIRST,
                energy_kwh=0.0,
                total_kwh=self.total_kwh,
                clamped=clamped,
                reason="the first sample",
            )
        dt = ts - previous_ts
        if dt > self.max_gap_ms:
            return PowerResult(
                ts=ts,
                event=PowerEvent.GAP,
                energy_kwh=0.0,
                total_kwh=self.total_kwh,
                gap_ms=dt,
                clamped=clamped,
                reason=f"{dt} ms since the previous sample, not integrated",
            )
        area = (previous + power) * dt
        if not math.isfinite(self._sum + area):  # absurd powers: restart here, like a gap
            return self._ignored(
                ts, PowerEvent.BAD_INPUT, "the interval overflows a float, not integrated"
            )
        self._add(area)
        return PowerResult(
            ts=ts,
            event=PowerEvent.NEGATIVE if clamped else PowerEvent.NORMAL,
            energy_kwh=self._to_kwh(area),
            total_kwh=self.total_kwh,
            clamped=clamped,
            reason=f"the power {value!r} is negative, taken as 0" if clamped else None,
        )
