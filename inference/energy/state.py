"""Machine state per energy consumer (OFF / IDLE / PRODUCING) from a PLC point or from power.

Both classes are pure state machines fed one reading at a time, like `counters`: no I/O, no
clock, no exceptions for odd values. Only configuration errors raise (`EnergyConfigError`), when
the object is built.

`StateFromPoint` maps a PLC state point's value (a number or an enum name) through a configured
mapping; values the mapping does not know give UNKNOWN and are counted. `StateFromPower` derives
the state from power thresholds with hysteresis and a minimum dwell time, so power hovering
around a threshold does not make the state flap.

Readings that are not GOOD (or not usable) hold the last state for up to `hold_s` after the last
usable reading; after that the state is UNKNOWN until a usable reading arrives.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from agent.model import Quality, Sample, Value
from inference.energy.counters import EnergyConfigError

__all__ = [
    "MachineState",
    "StateFromPoint",
    "StateFromPower",
    "StateResult",
]


class MachineState(StrEnum):
    """What an energy consumer is doing; the wire form is the lower-case name."""

    OFF = "off"
    IDLE = "idle"
    PRODUCING = "producing"
    UNKNOWN = "unknown"  # no usable input for longer than the hold time, or an unmapped value


@dataclass(frozen=True, slots=True)
class StateResult:
    """The state after one reading.

    `since_ts` is when the current state began (the ts of the reading that confirmed it);
    `changed` is True when this reading changed the state. `reason` explains a held, UNKNOWN
    or ignored reading in a sentence.
    """

    ts: int
    state: MachineState
    since_ts: int
    changed: bool
    reason: str | None = None


def _non_negative(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EnergyConfigError(f"{name} must be a number, not {value!r}.")
    if not math.isfinite(value) or value < 0:
        raise EnergyConfigError(f"{name} must be a finite number >= 0, not {value!r}.")
    return float(value)


class _Tracker:
    """Timestamp, quality and hold handling shared by both state sources."""

    def __init__(self, hold_s: float) -> None:
        self.hold_ms = _non_negative("hold_s", hold_s) * 1000
        self.state = MachineState.UNKNOWN
        self.since_ts: int | None = None
        self.counts: Counter[str] = Counter()  # "usable", "bad_input", "stale", "held", ...
        self._last_ts: int | None = None  # the last reading's ts (usable or not)
        self._good_ts: int | None = None  # the last usable reading's ts

    def feed_sample(self, sample: Sample) -> StateResult:
        """`feed()` with a pipeline `Sample` of the input point."""
        return self.feed(sample.ts, sample.value, sample.quality)

    def feed(self, ts: int, value: Value, quality: Quality = Quality.GOOD) -> StateResult:
        """Account for one reading taken at `ts` (ms); never raises."""
        if isinstance(ts, bool) or not isinstance(ts, int):
            self.counts["bad_input"] += 1
            return self._result(0, changed=False, reason=f"the timestamp {ts!r} is unusable")
        if self._last_ts is not None and ts < self._last_ts:
            self.counts["stale"] += 1
            return self._result(
                ts, changed=False, reason=f"the reading is older than {self._last_ts} ms"
            )
        self._last_ts = ts
        problem = f"the reading is {quality}" if quality is not Quality.GOOD else None
        if problem is None:
            problem = self._usable(ts, value)
        if problem is None:
            self._good_ts = ts
            self.counts["usable"] += 1
            return self._decide(ts, value)
        self.counts["bad_input"] += 1
        self._reset_pending()
        if self._good_ts is not None and ts - self._good_ts <= self.hold_ms:
            self.counts["held"] += 1
            return self._result(ts, changed=False, reason=f"{problem}: the last state is held")
        changed = self._set(ts, MachineState.UNKNOWN)
        return self._result(ts, changed=changed, reason=f"{problem}: no usable reading in time")

    # -- for subclasses ----------------------------------------------------------------------

    def _usable(self, ts: int, value: Value) -> str | None:
        """None when `value` can be decided on, else a sentence saying why not."""
        return None

    def _decide(self, ts: int, value: Value) -> StateResult:
        raise NotImplementedError

    def _reset_pending(self) -> None:
        """Forget a state change waiting for its dwell time."""

    def _set(self, ts: int, state: MachineState) -> bool:
        if state is self.state and self.since_ts is not None:
            return False
        self.state = state
        self.since_ts = ts
        return True

    def _result(self, ts: int, *, changed: bool, reason: str | None = None) -> StateResult:
        since = self.since_ts if self.since_ts is not None else ts
        return StateResult(ts=ts, state=self.state, since_ts=since, changed=changed, reason=reason)


def _key(value: object) -> object:
    """Lookup key: integral numbers as int (True as 1), strings stripped and case-folded."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        return value.strip().casefold()
    return value


class StateFromPoint(_Tracker):
    """The state from a PLC state point, through a mapping of its values.

    `mapping` maps point values to states: numbers (an integral float matches the int key,
    True/False match 1/0) or enum names (matched case-insensitively, surrounding spaces ignored),
    e.g. `{0: OFF, 1: IDLE, 2: PRODUCING, "Running": PRODUCING}`. A value not in the mapping
    gives UNKNOWN; such readings are counted in `unknown_values` and the last one is kept in
    `last_unknown`.
    """

    def __init__(
        self, mapping: Mapping[int | float | str, MachineState | str], *, hold_s: float = 60.0
    ) -> None:
        """Validate the mapping; raises `EnergyConfigError` for an unusable one."""
        super().__init__(hold_s)
        if not mapping:
            raise EnergyConfigError("the state mapping is empty.")
        self.mapping: dict[object, MachineState] = {}
        for raw, state in mapping.items():
            if isinstance(raw, float) and not math.isfinite(raw):
                raise EnergyConfigError(f"the state mapping key {raw!r} is not finite.")
            if not isinstance(raw, int | float | str):
                raise EnergyConfigError(f"the state mapping key {raw!r} is not a number or name.")
            try:
                target = MachineState(state)
            except ValueError:
                raise EnergyConfigError(
                    f"the state mapping value {state!r} is not one of "
                    f"{', '.join(s.value for s in MachineState)}."
                ) from None
            key = _key(raw)
            if key in self.mapping and self.mapping[key] is not target:
                raise EnergyConfigError(f"the state mapping key {raw!r} is given twice.")
            self.mapping[key] = target
        self.unknown_values = 0
        self.last_unknown: Value = None

    def _usable(self, ts: int, value: Value) -> str | None:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return f"the value {value!r} is unusable"
        return None

    def _decide(self, ts: int, value: Value) -> StateResult:
        state = self.mapping.get(_key(value))
        if state is None:
            self.unknown_values += 1
            self.last_unknown = value
            changed = self._set(ts, MachineState.UNKNOWN)
            return self._result(ts, changed=changed, reason=f"the value {value!r} is not mapped")
        return self._result(ts, changed=self._set(ts, state))


_RANK = (MachineState.OFF, MachineState.IDLE, MachineState.PRODUCING)


class StateFromPower(_Tracker):
    """The state from power (kW) with thresholds, hysteresis and a minimum dwell time.

    Without hysteresis, power below `off_below_kw` is OFF, above `producing_above_kw` is
    PRODUCING, and IDLE in between. To move up, `power - hysteresis_kw` must classify higher;
    to move down, `power + hysteresis_kw` must classify lower: with thresholds 2 and 20 kW and
    1 kW of hysteresis, IDLE turns PRODUCING above 21 kW and back at 19 kW or less, and OFF
    turns IDLE at 3 kW or more and back below 1 kW. A new state is
    taken only when every usable reading for `min_dwell_s` (measured from the first reading that
    asked for it) asked for it: the change is reported at the reading that completes the dwell,
    with that reading's ts as `since_ts` (energy during the dwell stays with the old state). The
    first usable reading sets the state at once. From UNKNOWN (after a hold ran out) the state
    is taken at once, too.
    """

    def __init__(
        self,
        off_below_kw: float,
        producing_above_kw: float,
        hysteresis_kw: float = 0.0,
        min_dwell_s: float = 0.0,
        *,
        hold_s: float = 60.0,
    ) -> None:
        """Validate the settings; raises `EnergyConfigError` for an unusable one."""
        super().__init__(hold_s)
        self.off_below_kw = _non_negative("off_below_kw", off_below_kw)
        self.producing_above_kw = _non_negative("producing_above_kw", producing_above_kw)
        self.hysteresis_kw = _non_negative("hysteresis_kw", hysteresis_kw)
        self.min_dwell_ms = _non_negative("min_dwell_s", min_dwell_s) * 1000
        if self.producing_above_kw <= self.off_below_kw:
            raise EnergyConfigError(
                f"producing_above_kw ({producing_above_kw!r}) must be above "
                f"off_below_kw ({off_below_kw!r})."
            )
        self._pending: MachineState | None = None
        self._pending_ts = 0

    def classify(self, power_kw: float) -> MachineState:
        """The state for `power_kw` by the thresholds alone, without hysteresis or dwell."""
        if power_kw < self.off_below_kw:
            return MachineState.OFF
        if power_kw > self.producing_above_kw:
            return MachineState.PRODUCING
        return MachineState.IDLE

    def _usable(self, ts: int, value: Value) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"the value {value!r} is not a number"
        if not math.isfinite(value):
            return f"the value {value!r} is not finite"
        return None

    def _reset_pending(self) -> None:
        self._pending = None

    def _target(self, power: float) -> MachineState:
        if self.state is MachineState.UNKNOWN:
            return self.classify(power)
        current = _RANK.index(self.state)
        up = _RANK.index(self.classify(power - self.hysteresis_kw))
        down = _RANK.index(self.classify(power + self.hysteresis_kw))
        if up > current:
            return _RANK[up]
        if down < current:
            return _RANK[down]
        return self.state

    def _decide(self, ts: int, value: Value) -> StateResult:
        assert isinstance(value, int | float)  # checked by _usable
        target = self._target(float(value))
        if target is self.state:
            self._pending = None
            return self._result(ts, changed=False)
        if self.state is MachineState.UNKNOWN or self.min_dwell_ms == 0:
            self._pending = None
            return self._result(ts, changed=self._set(ts, target))
        if self._pending is not target:
            self._pending, self._pending_ts = target, ts
        if ts - self._pending_ts >= self.min_dwell_ms:
            self._pending = None
            return self._result(ts, changed=self._set(ts, target))
        return self._result(ts, changed=False, reason=f"{target} pending its dwell time")
