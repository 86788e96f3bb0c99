"""Energy KPIs on scripted scenarios whose exact answers are known (simulated time only)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from fractions import Fraction

import pytest

from agent.model import Quality
from inference.energy.counters import EnergyConfigError, EnergyCounter, RegisterKind
from inference.energy.kpi import EnergyKpis, KpiRecord, Shift
from inference.energy.state import MachineState, StateFromPower

OFF, IDLE, PRODUCING, UNKNOWN = (
    MachineState.OFF,
    MachineState.IDLE,
    MachineState.PRODUCING,
    MachineState.UNKNOWN,
)
S = 1000
MIN = 60 * S


def ms(text: str) -> int:
    """'2026-11-24T06:05' (UTC) as epoch milliseconds."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def close(value, expected) -> bool:
    return value == pytest.approx(float(expected), abs=1e-9)


# -- the scripted scenario -----------------------------------------------------------------------
# 06:05-06:15 idle at 5 kW; 06:15-06:45 producing at 40 kW, one part every 30 s (60 parts), every
# tenth part rejected (6 rejects, 54 good); 06:45-07:05 off at 0.5 kW. Energy per 10 s from the
# power; the state from StateFromPower on the same power; totals: 5/6 + 20 + 1/6 = 21 kWh.

T0 = ms("2026-11-24T06:05")
T_PROD = ms("2026-11-24T06:15")
T_OFF = ms("2026-11-24T06:45")
T_END = ms("2026-11-24T07:05")
STEP = 10 * S


def power_at(ts: int) -> float:
    """The power from `ts` until the next step."""
    if ts < T_PROD:
        return 5.0
    if ts < T_OFF:
        return 40.0
    return 0.5


def parts_at(ts: int) -> int:
    return min(max((ts - T_PROD) // (30 * S), 0), 60)


def run_scenario(kpis: EnergyKpis) -> list[KpiRecord]:
    state = StateFromPower(off_below_kw=2, producing_above_kw=20, hysteresis_kw=1)
    records: list[KpiRecord] = []
    for ts in range(T0, T_END + 1, STEP):
        records += kpis.feed_state(ts, state.feed(ts, power_at(ts)).state)
        records += kpis.feed_parts(ts, 1000 + parts_at(ts))  # a counter not starting at 0
        records += kpis.feed_rejects(ts, parts_at(ts) // 10)
        kwh = 0.0 if ts == T0 else power_at(ts - STEP) * 10 / 3600
        records += kpis.feed_energy(ts, kwh)
    return records


@pytest.fixture(scope="module")
def scenario() -> list[KpiRecord]:
    return run_scenario(EnergyKpis())


def test_scenario_intervals_are_clock_aligned_and_complete(scenario):
    assert len(scenario) == 60
    starts = [r.interval.start_ts for r in scenario]
    assert starts == list(range(T0, T_END, MIN))
    assert all(r.interval.end_ts - r.interval.start_ts == MIN for r in scenario)
    assert all(r.interval.covered_ms == MIN for r in scenario)


def test_scenario_totals_shares_and_kwh_per_good_part(scenario):
    kwh = sum(Fraction(r.interval.kwh) for r in scenario)
    assert close(kwh, 21)
    by_state = {s: sum(r.interval.kwh_by_state[s] for r in scenario) for s in MachineState}
    assert close(by_state[IDLE], Fraction(5, 6))
    assert close(by_state[PRODUCING], 20)
    assert close(by_state[OFF], Fraction(1, 6))
    assert by_state[UNKNOWN] == 0
    parts = sum(r.interval.parts for r in scenario)
    rejects = sum(r.interval.rejects for r in scenario)
    assert (parts, rejects) == (60, 6)


def test_scenario_single_intervals(scenario):
    first = scenario[0].interval
    assert close(first.kwh, Fraction(1, 12)) and close(first.kwh_by_state[IDLE], Fraction(1, 12))
    assert first.good_parts == 0 and first.kwh_per_good_part is None
    # 06:15-06:16: parts at 06:15:30 and 06:16:00 (read before the energy that closes it).
    producing = scenario[10].interval
    assert producing.start_ts == T_PROD
    assert close(producing.kwh, Fraction(2, 3)) and producing.good_parts == 2
    assert close(producing.kwh_per_good_part, Fraction(1, 3))
    # 06:19-06:20 holds the 10th part, rejected: 2 parts, 1 reject.
    tenth = scenario[14].interval
    assert (tenth.parts, tenth.rejects, tenth.good_parts) == (2, 1, 1)
    assert close(tenth.kwh_per_good_part, Fraction(2, 3))
    assert close(scenario[40].interval.kwh_by_state[OFF], Fraction(1, 120))


def test_scenario_demand_windows_are_clock_aligned_first_partial(scenario):
    windows = [w for r in scenario for w in r.demand]
    assert [w.start_ts for w in windows] == [
        ms("2026-11-24T06:00"),
        ms("2026-11-24T06:15"),
        ms("2026-11-24T06:30"),
        ms("2026-11-24T06:45"),
    ]
    first, producing_1, producing_2, off = windows
    # The first window is reported at 06:15 over the whole 15 minutes, flagged partial.
    assert first.partial and first.covered_ms == 10 * MIN
    assert close(first.kwh, Fraction(5, 6)) and close(first.kw, Fraction(10, 3))
    assert not producing_1.partial and close(producing_1.kw, 40) and close(producing_2.kw, 40)
    assert not off.partial and close(off.kw, 0.5)
    assert scenario[9].demand == (first,)  # closed with the interval ending at 06:15
    assert scenario[9].day_peak == first
    # The peak keeps the first of equal windows.
    assert scenario[-1].day_peak == producing_1 and scenario[-1].month_peak == producing_1


def test_scenario_hours(scenario):
    hours = [h for r in scenario for h in r.hours]
    assert len(hours) == 1
    hour = hours[0]
    assert (hour.start_ts, hour.end_ts) == (ms("2026-11-24T06:00"), ms("2026-11-24T07:00"))
    assert close(hour.kwh, Fraction(5, 6) + 20 + Fraction(1, 8))
    assert (hour.parts, hour.rejects, hour.covered_ms) == (60, 6, 55 * MIN)
    shares = hour.state_shares
    assert close(shares[PRODUCING], 20 / (Fraction(5, 6) + 20 + Fraction(1, 8)))
    assert close(sum(shares.values()), 1) and shares[UNKNOWN] == 0
    assert close(hour.kwh_per_good_part, (Fraction(5, 6) + 20 + Fraction(1, 8)) / 54)


def test_scenario_shift_and_close_until():
    kpis = EnergyKpis(shifts=[("early", "06:00", "07:00"), ("late", "07:00", "06:00")])
    records = run_scenario(kpis)
    shifts = [s for r in records for s in r.shifts]
    assert [s.label for s in shifts] == ["early 2026-11-24"]
    early = shifts[0].totals
    assert close(early.kwh, Fraction(5, 6) + 20 + Fraction(1, 8)) and early.good_parts == 54
    assert close(early.kwh_per_good_part, (Fraction(5, 6) + 20 + Fraction(1, 8)) / 54)
    assert early.start_ts == T0  # the first interval seen
    # The meter goes quiet: close_until closes the rest with what arrived.
    more = kpis.close_until(ms("2026-11-24T07:15"))
    assert len(more) == 10 and all(r.interval.kwh == 0 for r in more)
    assert more[-1].demand[0].partial and close(more[-1].demand[0].kwh, Fraction(1, 24))


def test_same_kpis_however_the_energy_is_cut():
    """One delta per 10 s or one per 7 s (not aligned): identical exact totals per interval."""
    kpis = EnergyKpis()
    kpis.feed_state(0, PRODUCING)
    kpis.feed_energy(0, 0.0)
    records = []
    for ts in range(7 * S, 3 * MIN + 1, 7 * S):
        records += kpis.feed_energy(ts, 36 * 7 / 3600)  # 36 kW
    assert [r.interval.start_ts for r in records] == [0, MIN]
    assert all(close(r.interval.kwh, Fraction(6, 10)) for r in records)


# -- proportional attribution --------------------------------------------------------------------


def test_a_delta_is_split_over_states_and_intervals_by_time():
    kpis = EnergyKpis()
    kpis.feed_state(50 * S, IDLE)
    kpis.feed_energy(50 * S, 0.0)
    kpis.feed_state(54 * S, PRODUCING)
    kpis.feed_state(65 * S, OFF)
    (record,) = kpis.feed_energy(70 * S, 2.0)  # (50, 70]: 4 s idle, 11 s producing, 5 s off
    first = record.interval
    assert close(first.kwh, 1.0) and close(first.kwh_by_state[IDLE], 0.4)
    assert close(first.kwh_by_state[PRODUCING], 0.6)
    assert first.covered_ms == 10 * S
    second = kpis.feed_energy(2 * MIN, 0.0)[0].interval
    assert close(second.kwh, 1.0)
    assert close(second.kwh_by_state[PRODUCING], 0.5) and close(second.kwh_by_state[OFF], 0.5)


def test_energy_from_an_energy_counter():
    counter = EnergyCounter(kind=RegisterKind.INTEGER, unit_factor=0.001, max_power_kw=100)
    kpis = EnergyKpis()
    kpis.feed_state(0, IDLE)
    records = []
    for i in range(121):  # 6 kW as a Wh register read every 10 s: 50/3 Wh per read
        records += kpis.feed_result(counter.feed(i * 10 * S, 7_000 + (i * 50) // 3))
    records += kpis.feed_result(counter.feed(1_210 * S, 7_000, Quality.BAD))  # skipped
    assert len(records) == 20
    assert close(sum(Fraction(r.interval.kwh) for r in records), counter.total_kwh)
    assert close(counter.total_kwh, 2)  # 6 kW for 20 minutes


# -- parts counters ------------------------------------------------------------------------------


def test_parts_counter_reset_starts_a_new_segment():
    kpis = EnergyKpis()
    kpis.feed_energy(0, 0.0)
    for ts, total in [(1, 100), (10 * S, 105), (20 * S, 3), (30 * S, 5), (40 * S, 5)]:
        kpis.feed_parts(ts, total)
    for ts, rejected in [(1, 7), (15 * S, 8), (25 * S, 0), (35 * S, 1)]:
        kpis.feed_rejects(ts, rejected)
    kpis.feed_parts(45 * S, "garbage")
    kpis.feed_parts(46 * S, 6.5)
    interval = kpis.feed_energy(MIN, 1.2)[0].interval
    # 5 before the reset, 3 counted since it (reset to 0, read at 3), then 2; rejects 1 + 0 + 1.
    assert (interval.parts, interval.rejects, interval.good_parts) == (10, 2, 8)
    assert close(interval.kwh_per_good_part, 0.15)
    assert kpis.counts["parts_reset"] == 1 and kpis.counts["rejects_reset"] == 1
    assert kpis.counts["bad_parts"] == 2


def test_late_parts_are_counted_in_the_open_interval_not_lost():
    kpis = EnergyKpis()
    kpis.feed_parts(0, 0)
    kpis.feed_energy(0, 0.0)
    kpis.feed_energy(MIN, 0.1)
    kpis.feed_parts(30 * S, 4)  # read late: its interval is closed
    kpis.feed_parts(MIN + 30 * S, 5)
    record = kpis.feed_energy(2 * MIN, 0.1)[0].interval
    assert record.parts == 5 and kpis.counts["late_parts"] == 1


def test_zero_good_parts_gives_no_kwh_per_part():
    kpis = EnergyKpis()
    kpis.feed_energy(0, 0.0)
    kpis.feed_parts(0, 10)
    kpis.feed_rejects(0, 0)
    kpis.feed_parts(30 * S, 12)
    kpis.feed_rejects(30 * S, 2)
    interval = kpis.feed_energy(MIN, 1.0)[0].interval
    assert interval.good_parts == 0 and interval.kwh_per_good_part is None


# -- demand peaks of the day and month -----------------------------------------------------------


def feed_windows(
    kpis: EnergyKpis, start: int, kws: list[float], *, first: bool = True
) -> list[KpiRecord]:
    """Constant power per 15-minute window, fed per minute from `start`."""
    records: list[KpiRecord] = []
    if first:
        kpis.feed_energy(start, 0.0)
    for n, kw in enumerate(kws):
        for minute in range(1, 16):
            records += kpis.feed_energy(start + n * 15 * MIN + minute * MIN, kw / 60)
    return records


def test_day_and_month_peaks_reset_on_the_local_calendar():
    kpis = EnergyKpis()
    nov29 = feed_windows(kpis, ms("2026-11-29T23:00"), [10, 30, 20, 12])
    assert nov29[-5].day_peak.start_ts == ms("2026-11-29T23:15")
    assert close(nov29[-5].day_peak.kw, 30)
    # The window 23:45-00:00 still belongs to Nov 29: the day peak stays.
    assert nov29[-1].demand[0].start_ts == ms("2026-11-29T23:45")
    assert nov29[-1].day_peak.start_ts == ms("2026-11-29T23:15")
    nov30 = feed_windows(kpis, ms("2026-11-30T00:00"), [8, 9], first=False)
    assert close(nov30[-1].day_peak.kw, 9) and close(nov30[-1].month_peak.kw, 30)
    dec = kpis.feed_energy(ms("2026-12-01T00:15"), 5 / 4, start_ts=ms("2026-12-01T00:00"))
    assert dec[-1].month_peak.start_ts == ms("2026-12-01T00:00")
    assert close(dec[-1].month_peak.kw, 5) and close(dec[-1].day_peak.kw, 5)


def test_peaks_use_the_local_day_when_a_time_zone_is_given():
    kpis = EnergyKpis(tz="Europe/Berlin")  # CET: local midnight is 23:00 UTC
    records = feed_windows(kpis, ms("2026-11-29T22:30"), [30, 30, 10, 10])
    local_day_2 = [
        r for r in records if r.demand and r.demand[0].start_ts >= ms("2026-11-29T23:00")
    ]
    assert close(local_day_2[0].day_peak.kw, 10) and close(local_day_2[0].month_peak.kw, 30)


# -- shifts crossing midnight, with a DST change ---------------------------------------------------

SHIFTS = [("early", "06:00", "14:00"), ("late", "14:00", "22:00"), ("night", "22:00", "06:00")]


def run_constant(kpis: EnergyKpis, start: int, end: int) -> list[KpiRecord]:
    """10 kW, one part per minute, fed per minute."""
    kpis.feed_state(start, PRODUCING)
    kpis.feed_parts(start, 0)
    kpis.feed_energy(start, 0.0)
    records: list[KpiRecord] = []
    for n, ts in enumerate(range(start + MIN, end + 1, MIN), start=1):
        kpis.feed_parts(ts, n)
        records += kpis.feed_energy(ts, 10 / 60)
    return records


def test_night_shift_across_midnight_on_the_dst_change_day():
    kpis = EnergyKpis(tz="Europe/Berlin", shifts=SHIFTS)
    # 2026-10-24 20:00 UTC = 22:00 CEST; 2026-10-25 05:00 UTC = 06:00 CET: 9 hours of night.
    records = run_constant(kpis, ms("2026-10-24T19:00"), ms("2026-10-25T06:00"))
    shifts = {s.label: s for r in records for s in r.shifts}
    assert list(shifts) == ["late 2026-10-24", "night 2026-10-24"]
    night = shifts["night 2026-10-24"].totals
    assert (night.start_ts, night.end_ts) == (ms("2026-10-24T20:00"), ms("2026-10-25T05:00"))
    assert close(night.kwh, 90) and night.parts == 540
    assert close(night.kwh_per_good_part, Fraction(1, 6))
    assert shifts["late 2026-10-24"].totals.parts == 60  # 21:00-22:00 CEST only
    # Local clock hours: 02:00 happens twice, as two hours.
    hours = [h.start_ts for r in records for h in r.hours]
    assert len(hours) == 11 and len(set(hours)) == 11
    assert hours == list(range(ms("2026-10-24T19:00"), ms("2026-10-25T06:00"), 60 * MIN))


def test_night_shift_on_an_ordinary_day_is_eight_hours():
    kpis = EnergyKpis(tz="Europe/Berlin", shifts=SHIFTS)
    records = run_constant(kpis, ms("2026-11-24T21:00"), ms("2026-11-25T05:00"))
    (night,) = [s for r in records for s in r.shifts]
    assert night.label == "night 2026-11-24" and night.day == date(2026, 11, 24)
    assert close(night.totals.kwh, 80) and night.totals.parts == 480


def test_quarter_hour_time_zone_hours_follow_the_local_clock():
    kpis = EnergyKpis(tz="Asia/Kolkata")  # UTC+05:30
    records = run_constant(kpis, ms("2026-11-24T00:00"), ms("2026-11-24T02:00"))
    hours = [h.start_ts for r in records for h in r.hours]
    assert hours == [ms("2026-11-23T23:30"), ms("2026-11-24T00:30")]


# -- robustness and configuration ----------------------------------------------------------------


def test_odd_inputs_are_counted_not_raised():
    kpis = EnergyKpis()
    assert kpis.feed_energy(0, float("nan")) == []
    assert kpis.feed_energy(0, -1.0) == []
    assert kpis.feed_energy("0", 1.0) == []  # type: ignore[arg-type]
    assert kpis.feed_energy(10, 1.0, start_ts=20) == []
    assert kpis.feed_state(0, "idle") == []  # type: ignore[arg-type]
    assert kpis.close_until(MIN) == []  # nothing fed yet
    assert kpis.counts["bad_energy"] == 4 and kpis.counts["bad_state"] == 1


def test_late_energy_and_state_go_forward_not_back():
    kpis = EnergyKpis()
    kpis.feed_state(0, IDLE)
    kpis.feed_energy(0, 0.0)
    kpis.feed_energy(30 * S, 1.0)
    kpis.feed_state(10 * S, PRODUCING)  # older than the energy attributed: from 30 s on
    kpis.feed_energy(20 * S, 0.5)  # late: counted in the open interval
    record = kpis.feed_energy(MIN, 1.0)[0].interval
    assert close(record.kwh, 2.5)
    # The late delta is a point at its ts, in the state known there (IDLE).
    assert close(record.kwh_by_state[IDLE], 1.5) and close(record.kwh_by_state[PRODUCING], 1.0)
    assert kpis.counts["late_state"] == 1 and kpis.counts["late_energy"] == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"interval_s": 0},
        {"interval_s": 7},
        {"interval_s": 60.0},
        {"tz": "Mars/Olympus"},
        {"shifts": [("a", "06:00", "14:00"), ("b", "13:00", "22:00")]},
        {"shifts": [("a", "6", "14:00")]},
        {"shifts": [("a", "24:00", "14:00")]},
        {"shifts": [("a", "06:00")]},
        {"shifts": [("", "06:00", "14:00")]},
        {"interval_s": 300, "shifts": [Shift("a", "06:07", "14:00")]},
    ],
)
def test_bad_settings_raise(kwargs):
    with pytest.raises(EnergyConfigError):
        EnergyKpis(**kwargs)
