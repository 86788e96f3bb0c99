"""Energy KPIs per interval, hour, shift and 15-minute demand window, from simulated time.

`EnergyKpis` is a pure state machine like the rest of `inference.energy`: it is fed energy
deltas (e.g. from `EnergyCounter` or `PowerIntegrator` results), machine state changes and the
readings of a parts counter and a reject counter, each with its timestamp, and it returns a
`KpiRecord` for every interval that closes. Only the timestamps fed drive it, never wall time.

How it is computed:

- Intervals (default 60 s) are aligned to the UTC epoch and must divide 15 minutes. An interval
  closes when the energy fed reaches its end (or when `close_until()` is called, e.g. when the
  meter went quiet). An energy delta covers the span from the previous delta's ts (or an explicit
  `start_ts`) to its own ts; it is split across intervals and machine states in proportion to
  time. A delta without a span (the first one, or one after a gap) is a point at its ts and
  belongs to the interval that ends at or after it.
- Parts: each counter reading's increase over the previous reading is counted in the interval
  that ends at or after the reading's ts. A decrease means the PLC reset the counter: a new
  segment starts and the new value counts as the parts made since the reset (a counter reset to
  0 and read at 3 has made 3 parts). Good parts = parts - rejects in the same interval (it can
  be negative for an interval when a reject is counted after its part's interval closed).
- Energy is accumulated exactly (`fractions.Fraction` of the floats fed) and rounded once to a
  float in each record, so the totals do not depend on how the deltas were cut.
- Demand: the energy of each 15-minute window aligned to :00/:15/:30/:45 on the local clock,
  as average power (kWh * 4). A window whose energy does not cover all 15 minutes (the first one,
  or a meter gap) is flagged `partial` and its kW is still the window's energy / 0.25 h (a lower
  bound of the true demand); it takes part in the peaks. The day and month peaks are the highest
  windows so far of the local day / month of the latest closed window.
- Hours are local clock hours; shifts come from a calendar of (name, "HH:MM", "HH:MM") in the
  local time zone (a shift whose end is not after its start crosses midnight and belongs to the
  date it starts on). Shift boundaries must fall on interval boundaries. Hours and shift
  instances are closed with the interval after which the next interval belongs elsewhere.

Inputs out of time order are never dropped: anything older than the first open interval is
counted in the first open interval (and in `counts["late_..."]`); an energy delta that ends
before the energy already attributed is a point at its ts, in the state known there; a state
change older than the energy already attributed takes effect from there on.

Limits: local clocks must be offset from UTC by a multiple of 15 minutes (every zone in use
today is), so that UTC-aligned intervals nest in local quarter-hours and hours. Every interval
between the first input and the latest energy is closed and reported, so a timestamp far in the
future (a broken clock) produces one empty record per interval up to it: feed timestamps the
pipeline has checked.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent.model import Quality, Value
from inference.energy.counters import (
    CounterEvent,
    CounterResult,
    EnergyConfigError,
    PowerEvent,
    PowerResult,
)
from inference.energy.state import MachineState

__all__ = [
    "DemandWindow",
    "EnergyKpis",
    "KpiRecord",
    "Shift",
    "ShiftTotals",
    "Totals",
]

_WINDOW_MS = 15 * 60_000
_HOUR_MS = 60 * 60_000
_DAY_MINUTES = 24 * 60
_IGNORED = frozenset(
    {CounterEvent.BAD_INPUT.value, PowerEvent.BAD_INPUT.value, PowerEvent.STALE.value}
)
# Readings that start a new baseline: the time since the previous reading is not covered.
_POINTS = frozenset(
    {
        CounterEvent.FIRST.value,
        CounterEvent.REPLACED.value,
        CounterEvent.IMPLAUSIBLE_JUMP.value,
        PowerEvent.FIRST.value,
        PowerEvent.GAP.value,
    }
)


@dataclass(frozen=True, slots=True)
class Totals:
    """Energy and parts over one span: an interval, a clock hour or a shift instance.

    `kwh_by_state` has an entry for every `MachineState` (0.0 when none). `covered_ms` is how
    much of the span the energy fed covered. `start_ts`/`end_ts` (ms, UTC) bound the span:
    nominal for intervals and hours, the first and last interval seen for shifts.
    """

    start_ts: int
    end_ts: int
    kwh: float
    kwh_by_state: dict[MachineState, float]
    parts: int
    rejects: int
    covered_ms: int

    @property
    def good_parts(self) -> int:
        """Parts minus rejects."""
        return self.parts - self.rejects

    @property
    def kwh_per_good_part(self) -> float | None:
        """kWh per good part; None without good parts."""
        return self.kwh / self.good_parts if self.good_parts > 0 else None

    @property
    def state_shares(self) -> dict[MachineState, float]:
        """Each state's fraction of `kwh` (all 0.0 when no energy)."""
        total = self.kwh
        return {s: (kwh / total if total > 0 else 0.0) for s, kwh in self.kwh_by_state.items()}


@dataclass(frozen=True, slots=True)
class ShiftTotals:
    """The totals of one shift instance, e.g. `night` starting on 2026-11-24 (local date)."""

    name: str
    day: date
    totals: Totals

    @property
    def label(self) -> str:
        """`"night 2026-11-24"`."""
        return f"{self.name} {self.day.isoformat()}"


@dataclass(frozen=True, slots=True)
class DemandWindow:
    """One 15-minute demand window: its energy and average power (kWh / 0.25 h)."""

    start_ts: int
    end_ts: int
    kwh: float
    kw: float
    covered_ms: int

    @property
    def partial(self) -> bool:
        """True when the energy fed did not cover the whole window (kW is then a lower bound)."""
        return self.covered_ms < self.end_ts - self.start_ts


@dataclass(frozen=True, slots=True)
class KpiRecord:
    """What one closed interval produced.

    `interval` holds its totals; `demand`, `hours` and `shifts` the windows, clock hours and
    shift instances that closed with it (usually none); `day_peak` and `month_peak` the highest
    demand windows so far of the local day and month of the latest closed window (None before
    the first window closes).
    """

    interval: Totals
    demand: tuple[DemandWindow, ...] = ()
    day_peak: DemandWindow | None = None
    month_peak: DemandWindow | None = None
    hours: tuple[Totals, ...] = ()
    shifts: tuple[ShiftTotals, ...] = ()


@dataclass(frozen=True, slots=True)
class Shift:
    """One shift of the calendar: local clock times; `end <= start` crosses midnight."""

    name: str
    start: str  # "HH:MM"
    end: str  # "HH:MM"


def _minutes(text: str, what: str) -> int:
    hours, sep, minutes = text.partition(":") if isinstance(text, str) else ("", "", "")
    if not (sep and hours.isdigit() and minutes.isdigit() and len(minutes) == 2):
        raise EnergyConfigError(f"{what} must be a time as HH:MM, not {text!r}.")
    value = int(hours) * 60 + int(minutes)
    if int(hours) > 23 or int(minutes) > 59:
        raise EnergyConfigError(f"{what} must be a time from 00:00 to 23:59, not {text!r}.")
    return value


@dataclass(slots=True)
class _Acc:
    """Exact running totals of one span."""

    kwh: Fraction = Fraction(0)
    by_state: dict[MachineState, Fraction] = field(default_factory=dict)
    parts: int = 0
    rejects: int = 0
    covered_ms: int = 0

    def add(self, other: _Acc) -> None:
        self.kwh += other.kwh
        for state, kwh in other.by_state.items():
            self.by_state[state] = self.by_state.get(state, Fraction(0)) + kwh
        self.parts += other.parts
        self.rejects += other.rejects
        self.covered_ms += other.covered_ms

    def totals(self, start_ts: int, end_ts: int) -> Totals:
        return Totals(
            start_ts=start_ts,
            end_ts=end_ts,
            kwh=float(self.kwh),
            kwh_by_state={s: float(self.by_state.get(s, Fraction(0))) for s in MachineState},
            parts=self.parts,
            rejects=self.rejects,
            covered_ms=self.covered_ms,
        )


class _PartCounter:
    """Increments of a monotone PLC counter; a decrease is a reset (new value = parts since)."""

    __slots__ = ("last", "resets")

    def __init__(self) -> None:
        self.last: int | None = None
        self.resets = 0

    def feed(self, value: Value) -> int | None:
        """The increase since the last reading (0 for the first); None for an unusable value."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if isinstance(value, float):
            if not value.is_integer():
                return None
            value = int(value)
        if value < 0:
            return None
        last, self.last = self.last, value
        if last is None:
            return 0
        if value < last:
            self.resets += 1
            return value
        return value - last


@dataclass(slots=True)
class _Rolling:
    """The open hour, window or shift instance: its key, first interval start and totals."""

    key: int | tuple[str, date]
    start_ts: int
    acc: _Acc = field(default_factory=_Acc)


class EnergyKpis:
    """Interval, hour, shift and demand KPIs of one energy consumer, from timestamps fed.

    Feed in roughly increasing time; at equal timestamps feed the state and the parts before the
    energy (the energy reaching an interval's end closes it). Every `feed_*` and `close_until`
    returns the records of the intervals it closed, oldest first; it never raises for odd input
    (counted in `counts`), only the constructor raises `EnergyConfigError`.
    """

    def __init__(
        self,
        *,
        interval_s: int = 60,
        tz: str = "UTC",
        shifts: Iterable[Shift | tuple[str, str, str]] = (),
        initial_state: MachineState = MachineState.UNKNOWN,
    ) -> None:
        """Validate the settings; raises `EnergyConfigError` for an unusable one."""
        if isinstance(interval_s, bool) or not isinstance(interval_s, int) or interval_s <= 0:
            raise EnergyConfigError(f"interval_s must be a positive integer, not {interval_s!r}.")
        if 900 % interval_s:
            raise EnergyConfigError(
                f"interval_s must divide 15 minutes (900 s) exactly, not {interval_s!r}."
            )
        self.interval_ms = interval_s * 1000
        try:
            self.tz = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise EnergyConfigError(f"tz must be an IANA time zone name, not {tz!r}.") from None
        self.shifts = self._shift_calendar(shifts, interval_s)
        self.counts: Counter[str] = Counter()  # bad and late inputs, counter resets, by kind
        self._parts = _PartCounter()
        self._rejects = _PartCounter()
        self._open: dict[int, _Acc] = {}  # intervals not closed yet, by start ts
        self._next_close: int | None = None  # the first interval not closed yet
        self._energy_ts: int | None = None  # energy is attributed up to here
        self._changes: list[tuple[int, MachineState]] = [(-(2**63), initial_state)]
        self._hour: _Rolling | None = None
        self._window: _Rolling | None = None
        self._shift: _Rolling | None = None
        self._day_peak: tuple[date, DemandWindow] | None = None
        self._month_peak: tuple[tuple[int, int], DemandWindow] | None = None

    @staticmethod
    def _shift_calendar(
        shifts: Iterable[Shift | tuple[str, str, str]], interval_s: int
    ) -> tuple[tuple[str, int, int], ...]:
        calendar: list[tuple[str, int, int]] = []
        owner: list[str | None] = [None] * _DAY_MINUTES
        for entry in shifts:
            if isinstance(entry, Shift):
                item = entry
            elif isinstance(entry, tuple | list) and len(entry) == 3:
                item = Shift(*entry)
            else:
                raise EnergyConfigError(f"a shift must be (name, start, end), not {entry!r}.")
            if not isinstance(item.name, str) or not item.name.strip():
                raise EnergyConfigError(f"a shift needs a name, not {item.name!r}.")
            start = _minutes(item.start, f"shift {item.name!r} start")
            end = _minutes(item.end, f"shift {item.name!r} end")
            for minute in (start, end):
                if minute * 60 % interval_s:
                    raise EnergyConfigError(
                        f"shift {item.name!r}: {item.start}-{item.end} must fall on "
                        f"{interval_s} s interval boundaries."
                    )
            length = (end - start) % _DAY_MINUTES or _DAY_MINUTES
            for offset in range(length):
                minute = (start + offset) % _DAY_MINUTES
                if owner[minute] is not None:
                    raise EnergyConfigError(
                        f"shift {item.name!r} overlaps shift {owner[minute]!r}."
                    )
                owner[minute] = item.name
            calendar.append((item.name, start, length))
        return tuple(calendar)

    # -- feeding -----------------------------------------------------------------------------

    def feed_result(self, result: CounterResult | PowerResult) -> list[KpiRecord]:
        """Feed an `EnergyCounter` or `PowerIntegrator` result.

        Ignored readings (BAD_INPUT, STALE) are skipped; readings that start a new baseline
        (FIRST, GAP, and the counter's new segments) are points, so the time since the previous
        reading is not counted as covered.
        """
        if result.event.value in _IGNORED:
            return []
        point = result.event.value in _POINTS
        kwh = result.delta_kwh if isinstance(result, CounterResult) else result.energy_kwh
        return self.feed_energy(result.ts, kwh, start_ts=result.ts if point else None)

    def feed_energy(self, ts: int, kwh: float, *, start_ts: int | None = None) -> list[KpiRecord]:
        """Energy `kwh` consumed over (`start_ts`, `ts`]; `start_ts` defaults to the previous
        energy's ts (a point at `ts` for the first). `start_ts == ts` makes it a point."""
        if _bad_ts(ts) or (start_ts is not None and (_bad_ts(start_ts) or start_ts > ts)):
            self.counts["bad_energy"] += 1
            return []
        if isinstance(kwh, bool) or not isinstance(kwh, int | float):
            self.counts["bad_energy"] += 1
            return []
        if not math.isfinite(kwh) or kwh < 0:
            self.counts["bad_energy"] += 1
            return []
        self._start(ts)
        energy = Fraction(kwh)
        begin = self._energy_ts if start_ts is None else start_ts
        if begin is None or begin >= ts or (self._energy_ts is not None and ts <= self._energy_ts):
            if self._energy_ts is not None and ts < self._energy_ts:
                self.counts["late_energy"] += 1
            self._add_point(ts, energy)
        else:
            if self._energy_ts is not None and begin < self._energy_ts:
                self.counts["late_energy"] += 1
                begin = self._energy_ts  # the part already attributed cannot be revisited
            self._add_span(begin, ts, energy)
        if self._energy_ts is None or ts > self._energy_ts:
            self._energy_ts = ts
            self._prune_changes(ts)
        return self._close_through(self._energy_ts)

    def feed_state(self, ts: int, state: MachineState) -> list[KpiRecord]:
        """The machine is in `state` from `ts` on (feed every change; repeats are harmless)."""
        if _bad_ts(ts) or not isinstance(state, MachineState):
            self.counts["bad_state"] += 1
            return []
        self._start(ts)
        last_ts, last_state = self._changes[-1]
        if state is last_state:
            return []
        effective = max(ts, last_ts, self._energy_ts if self._energy_ts is not None else ts)
        if effective != ts:
            self.counts["late_state"] += 1
        if effective == last_ts and len(self._changes) > 1:
            self._changes[-1] = (effective, state)
        else:
            self._changes.append((effective, state))
        return []

    def feed_parts(self, ts: int, value: Value, quality: Quality = Quality.GOOD) -> list[KpiRecord]:
        """A reading of the total parts counter."""
        return self._feed_counter(ts, value, quality, self._parts, "parts")

    def feed_rejects(
        self, ts: int, value: Value, quality: Quality = Quality.GOOD
    ) -> list[KpiRecord]:
        """A reading of the rejected parts counter."""
        return self._feed_counter(ts, value, quality, self._rejects, "rejects")

    def close_until(self, ts: int) -> list[KpiRecord]:
        """Close every interval that ends at or before `ts`, whatever energy arrived."""
        if _bad_ts(ts) or self._next_close is None:
            return []
        return self._close_through(ts)

    # -- internals ---------------------------------------------------------------------------

    def _start(self, ts: int) -> None:
        if self._next_close is None:
            self._next_close = ts // self.interval_ms * self.interval_ms

    def _acc_for(self, key: int) -> _Acc:
        assert self._next_close is not None
        key = max(key, self._next_close)
        acc = self._open.get(key)
        if acc is None:
            acc = self._open[key] = _Acc()
        return acc

    def _feed_counter(
        self, ts: int, value: Value, quality: Quality, counter: _PartCounter, kind: str
    ) -> list[KpiRecord]:
        if _bad_ts(ts) or quality is not Quality.GOOD:
            self.counts[f"bad_{kind}"] += 1
            return []
        resets = counter.resets
        increment = counter.feed(value)
        if increment is None:
            self.counts[f"bad_{kind}"] += 1
            return []
        if counter.resets != resets:
            self.counts[f"{kind}_reset"] += 1
        self._start(ts)
        key = (ts - 1) // self.interval_ms * self.interval_ms
        assert self._next_close is not None
        if key < self._next_close and increment:
            self.counts[f"late_{kind}"] += 1
        acc = self._acc_for(key)
        if kind == "parts":
            acc.parts += increment
        else:
            acc.rejects += increment
        return []

    def _state_at(self, ts: int) -> MachineState:
        """The state in force just before `ts` (a point) ."""
        state = self._changes[0][1]
        for change_ts, change in self._changes:
            if change_ts >= ts:
                break
            state = change
        return state

    def _add_point(self, ts: int, energy: Fraction) -> None:
        acc = self._acc_for((ts - 1) // self.interval_ms * self.interval_ms)
        state = self._state_at(ts)
        acc.kwh += energy
        acc.by_state[state] = acc.by_state.get(state, Fraction(0)) + energy

    def _add_span(self, begin: int, end: int, energy: Fraction) -> None:
        length = end - begin
        cuts = {begin, end}
        first = begin // self.interval_ms * self.interval_ms + self.interval_ms
        cuts.update(range(first, end, self.interval_ms))
        cuts.update(ts for ts, _ in self._changes if begin < ts < end)
        edges = sorted(cuts)
        index = 0
        for a, b in itertools.pairwise(edges):
            while index + 1 < len(self._changes) and self._changes[index + 1][0] <= a:
                index += 1
            state = self._changes[index][1]
            share = energy * (b - a) / length
            key = a // self.interval_ms * self.interval_ms
            assert self._next_close is not None
            acc = self._acc_for(key)
            acc.kwh += share
            acc.by_state[state] = acc.by_state.get(state, Fraction(0)) + share
            if key >= self._next_close:
                acc.covered_ms += b - a

    def _prune_changes(self, ts: int) -> None:
        """Keep only the change in force at `ts` and the later ones."""
        index = 0
        while index + 1 < len(self._changes) and self._changes[index + 1][0] <= ts:
            index += 1
        if index:
            del self._changes[:index]

    def _close_through(self, limit: int) -> list[KpiRecord]:
        records: list[KpiRecord] = []
        assert self._next_close is not None
        while self._next_close + self.interval_ms <= limit:
            records.append(self._close(self._next_close))
            self._next_close += self.interval_ms
        return records

    def _local(self, ts: int) -> datetime:
        return datetime.fromtimestamp(ts / 1000, UTC).astimezone(self.tz)

    def _keys(self, ts: int) -> tuple[int, int, tuple[str, date] | None]:
        """The local hour start, quarter-hour start (ms) and shift instance of `ts`."""
        local = self._local(ts)
        hour = local.replace(minute=0, second=0, microsecond=0)
        quarter = local.replace(minute=local.minute // 15 * 15, second=0, microsecond=0)
        shift: tuple[str, date] | None = None
        minute = local.hour * 60 + local.minute
        for name, start, length in self.shifts:
            into = (minute - start) % _DAY_MINUTES
            if into < length:
                day = local.date() - timedelta(days=1 if minute < start else 0)
                shift = (name, day)
                break
        return _ms(hour), _ms(quarter), shift

    def _close(self, start: int) -> KpiRecord:
        end = start + self.interval_ms
        acc = self._open.pop(start, None) or _Acc()
        hour_key, window_key, shift_key = self._keys(start)
        next_hour, next_window, next_shift = self._keys(end)
        self._hour = _roll(self._hour, hour_key, start, acc)
        self._window = _roll(self._window, window_key, start, acc)
        if shift_key is not None:
            self._shift = _roll(self._shift, shift_key, start, acc)
        hours: tuple[Totals, ...] = ()
        demand: tuple[DemandWindow, ...] = ()
        shifts: tuple[ShiftTotals, ...] = ()
        if next_hour != hour_key and self._hour is not None:
            hours = (self._hour.acc.totals(hour_key, hour_key + _HOUR_MS),)
            self._hour = None
        if next_window != window_key and self._window is not None:
            window = self._window.acc
            kwh = float(window.kwh)
            closed = DemandWindow(
                start_ts=window_key,
                end_ts=window_key + _WINDOW_MS,
                kwh=kwh,
                kw=float(window.kwh * 4),
                covered_ms=window.covered_ms,
            )
            demand = (closed,)
            self._window = None
            self._update_peaks(closed)
        if self._shift is not None and next_shift != self._shift.key:
            key = self._shift.key
            assert isinstance(key, tuple)
            name, day = key
            shifts = (ShiftTotals(name, day, self._shift.acc.totals(self._shift.start_ts, end)),)
            self._shift = None
        return KpiRecord(
            interval=acc.totals(start, end),
            demand=demand,
            day_peak=self._day_peak[1] if self._day_peak else None,
            month_peak=self._month_peak[1] if self._month_peak else None,
            hours=hours,
            shifts=shifts,
        )

    def _update_peaks(self, window: DemandWindow) -> None:
        local = self._local(window.start_ts)
        day, month = local.date(), (local.year, local.month)
        if self._day_peak is None or self._day_peak[0] != day or window.kw > self._day_peak[1].kw:
            self._day_peak = (day, window)
        if (
            self._month_peak is None
            or self._month_peak[0] != month
            or window.kw > self._month_peak[1].kw
        ):
            self._month_peak = (month, window)


def _roll(rolling: _Rolling | None, key: int | tuple[str, date], start: int, acc: _Acc) -> _Rolling:
    if rolling is None or rolling.key != key:
        rolling = _Rolling(key, start)
    rolling.acc.add(acc)
    return rolling


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _bad_ts(ts: object) -> bool:
    return isinstance(ts, bool) or not isinstance(ts, int)
