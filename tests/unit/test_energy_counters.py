"""Energy counters and power integration against simulated meters whose ground truth is known."""

from __future__ import annotations

import itertools
import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.model import Quality, Sample
from inference.energy.counters import (
    CounterEvent,
    EnergyConfigError,
    EnergyCounter,
    PowerEvent,
    PowerIntegrator,
    RegisterKind,
    float32_step,
)

U32 = 1 << 32
MINUTE_MS = 60_000


def f32(value: float) -> float:
    """`value` as a float32 register holds it."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def simulate(energy, changes, *, start, register):
    """Register readings of a meter whose true cumulative energy at reading i is `energy[i]`.

    `changes[i] = (new_start, at_energy)`: between readings i-1 and i, when the true energy was
    `at_energy`, the meter's counter was set to `new_start` (0: a reset; otherwise a replacement
    meter). `register` turns the meter's internal counter into what the register shows.
    Returns the readings and the energy a correct counter can count: everything except the
    interval before a replacement and the part of the interval before a reset.
    """
    readings, countable = [], 0
    seg_start, seg_energy = start, energy[0]
    for i, e in enumerate(energy):
        if i in changes:
            seg_start, seg_energy = changes[i]
            countable += e - seg_energy if seg_start == 0 else 0
        elif i:
            countable += e - energy[i - 1]
        readings.append(register(seg_start + e - seg_energy))
    return readings, countable


def u32_wh(counter):
    return counter % U32


def feed_all(counter, readings, step_ms=MINUTE_MS):
    return [counter.feed(i * step_ms, value) for i, value in enumerate(readings)]


def events(results):
    return {i: r.event for i, r in enumerate(results) if r.event is not CounterEvent.NORMAL}


def assert_never_negative(results):
    assert all(r.delta_kwh >= 0 for r in results)
    assert all(b.total_kwh >= a.total_kwh for a, b in itertools.pairwise(results))


def u32_counter(**kwargs):
    kwargs.setdefault("max_power_kw", 100)
    return EnergyCounter(kind=RegisterKind.INTEGER, unit_factor=0.001, **kwargs)


# -- integer Wh register (uint32) ------------------------------------------------------------


def wh_curve(n, start=0):
    """True cumulative Wh at one-minute readings: 30 kW, 45 kW and idle in turn (500/750/0 Wh)."""
    energy = [start]
    for i in range(1, n):
        energy.append(energy[-1] + (500, 750, 0)[i // 10 % 3])
    return energy


def test_uint32_wrap_is_counted_across_the_wrap_exactly():
    energy = wh_curve(100)
    readings, countable = simulate(energy, {}, start=U32 - 7_000, register=u32_wh)
    counter = u32_counter()
    results = feed_all(counter, readings)
    wrap_at = next(i for i in range(1, 100) if readings[i] < readings[i - 1])
    assert events(results) == {0: CounterEvent.FIRST, wrap_at: CounterEvent.WRAPPED}
    assert results[wrap_at].delta_kwh == (energy[wrap_at] - energy[wrap_at - 1]) / 1000
    assert counter.total_raw == countable == energy[-1]
    assert counter.total_kwh == energy[-1] / 1000
    assert counter.segment == 1
    assert_never_negative(results)


def test_reset_to_zero_mid_run_counts_the_energy_since_the_reset():
    energy = wh_curve(60)
    # Reset between readings 29 and 30, 200 Wh into that interval.
    readings, countable = simulate(
        energy, {30: (0, energy[29] + 200)}, start=8_000_000, register=u32_wh
    )
    counter = u32_counter()
    results = feed_all(counter, readings)
    assert events(results) == {0: CounterEvent.FIRST, 30: CounterEvent.RESET}
    assert results[30].delta_kwh == readings[30] / 1000 == (energy[30] - energy[29] - 200) / 1000
    assert results[30].segment == 2
    assert counter.total_raw == countable == energy[-1] - 200
    assert counter.total_kwh == countable / 1000
    assert_never_negative(results)


def test_replacement_meter_starts_a_new_segment_without_energy():
    energy = wh_curve(60)
    readings, countable = simulate(
        energy, {25: (12_345_600, energy[25])}, start=30_000_000, register=u32_wh
    )
    counter = u32_counter()
    results = feed_all(counter, readings)
    assert events(results) == {0: CounterEvent.FIRST, 25: CounterEvent.REPLACED}
    assert results[25].delta_kwh == 0 and results[25].segment == 2
    assert counter.total_raw == countable == energy[-1] - (energy[25] - energy[24])
    assert_never_negative(results)


def test_implausible_jump_up_starts_a_new_segment():
    counter = u32_counter(max_power_kw=100, margin=2)  # at most 3334 Wh per minute (+1 Wh step)
    assert counter.feed(0, 1_000_000).event is CounterEvent.FIRST
    assert counter.feed(MINUTE_MS, 1_003_334).event is CounterEvent.NORMAL
    jump = counter.feed(2 * MINUTE_MS, 1_003_334 + 3_336)
    assert jump.event is CounterEvent.IMPLAUSIBLE_JUMP and jump.delta_kwh == 0
    assert jump.segment == 2 and jump.reason and jump.event.new_segment
    assert not CounterEvent.WRAPPED.new_segment
    after = counter.feed(3 * MINUTE_MS, 1_003_334 + 3_336 + 100)
    assert after.event is CounterEvent.NORMAL and after.delta_kwh == 0.1
    assert counter.total_raw == 3_334 + 100


def test_long_gap_allows_proportionally_more_energy():
    counter = u32_counter(max_power_kw=100, margin=1)
    counter.feed(0, 0)
    result = counter.feed(10 * 3_600_000, 900_000)  # ten hours at 90 kW
    assert result.event is CounterEvent.NORMAL and result.delta_kwh == 900


def test_bad_and_odd_inputs_do_not_move_the_baseline():
    counter = u32_counter()
    counter.feed(0, 1_000)
    odd = [
        (1, 999_999, Quality.BAD),
        (2, 5, Quality.UNCERTAIN),
        (3, math.nan, Quality.GOOD),
        (4, math.inf, Quality.GOOD),
        (5, "1200", Quality.GOOD),
        (6, None, Quality.GOOD),
        (7, True, Quality.GOOD),
        (8, -1, Quality.GOOD),
        (9, 12.5, Quality.GOOD),
        (10, U32, Quality.GOOD),
    ]
    for ts, value, quality in odd:
        result = counter.feed(ts, value, quality)
        assert result.event is CounterEvent.BAD_INPUT and result.delta_kwh == 0 and result.reason
    stale = counter.feed(0, 1_050)
    assert stale.event is CounterEvent.STALE and stale.delta_kwh == 0
    result = counter.feed(MINUTE_MS, 1_100.0)  # an integral float is fine
    assert result.event is CounterEvent.NORMAL and result.delta_kwh == 0.1
    assert counter.counts[CounterEvent.BAD_INPUT] == len(odd)
    assert counter.counts[CounterEvent.STALE] == 1


def test_bad_input_before_the_first_reading():
    counter = u32_counter()
    result = counter.feed(0, None, Quality.BAD)
    assert result.event is CounterEvent.BAD_INPUT and result.segment == 0
    assert result.resolution_kwh == 0.0 and result.total_kwh == 0.0
    assert counter.feed(1, 10).event is CounterEvent.FIRST


def test_signed_register_continues_through_its_negative_half():
    counter = EnergyCounter(
        kind=RegisterKind.INTEGER, unit_factor=0.1, max_power_kw=100, bits=32, signed=True
    )
    counter.feed(0, 2**31 - 10)
    result = counter.feed(MINUTE_MS, -(2**31) + 5)  # the i32 decoding of 2^31 + 5
    assert result.event is CounterEvent.NORMAL and result.delta_kwh == 1.5
    counter.feed(2 * MINUTE_MS, -5)  # ... counts up through the negative half ...
    wrapped = counter.feed(3 * MINUTE_MS, 3)  # ... and past -1 to 0: the 32-bit wrap
    assert wrapped.event is CounterEvent.WRAPPED and wrapped.delta_kwh == 0.8
    assert counter.feed(3 * MINUTE_MS, 2**31).event is CounterEvent.BAD_INPUT


def test_feed_sample_uses_the_sample_fields():
    counter = u32_counter()
    counter.feed_sample(Sample("energy", 100, Quality.GOOD, 0))
    result = counter.feed_sample(Sample("energy", 600, Quality.GOOD, MINUTE_MS))
    assert result.ts == MINUTE_MS and result.delta_kwh == 0.5


# -- float32 registers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "step"),
    [
        (1e6, 0.0625),
        (524_288.0, 0.0625),
        (524_287.9, 0.03125),
        (1_048_575.99, 0.125),  # rounds up to 2^20 as float32
        (65_536.0, 2**-7),
        (1e7, 1.0),
        (1.07e8, 8.0),
        (1.5e9, 128.0),
        (12_345.6, 2**-10),
        (0.0, 2**-149),
        (math.nan, math.inf),
        (math.inf, math.inf),
        (1e39, math.inf),
    ],
)
def test_float32_step(value, step):
    assert float32_step(value) == step


def test_float32_step_is_the_spacing_of_float32_values():
    for value in (1.0, 3.7, 1e6, 12_345.6, 9.9e7):
        v = f32(value)
        above = struct.unpack("<I", struct.pack("<f", v))[0] + 1
        assert struct.unpack("<f", struct.pack("<I", above))[0] - v == float32_step(v)


def f32_counter(unit_factor=1.0, max_power_kw=100.0):
    return EnergyCounter(
        kind=RegisterKind.FLOAT32, unit_factor=unit_factor, max_power_kw=max_power_kw
    )


def test_below_resolution_is_flagged_and_carried():
    counter = f32_counter()
    counter.feed(0, 1e6)
    unchanged = counter.feed(10_000, 1e6)
    assert unchanged.event is CounterEvent.BELOW_RESOLUTION and unchanged.below_resolution
    assert unchanged.delta_kwh == 0 and unchanged.resolution_kwh == 0.0625
    ticked = counter.feed(20_000, 1e6 + 0.0625)
    assert ticked.event is CounterEvent.NORMAL and ticked.delta_kwh == 0.0625
    # Across 2^20 the step doubles: a one-old-step move is below the new step, and carried.
    counter = f32_counter()
    counter.feed(0, 1_048_575.9375)
    crossing = counter.feed(10_000, 1_048_576.0)
    assert crossing.event is CounterEvent.BELOW_RESOLUTION and crossing.resolution_kwh == 0.125
    later = counter.feed(20_000, 1_048_576.125)
    assert later.event is CounterEvent.NORMAL and later.delta_kwh == 0.1875
    assert counter.total_kwh == 0.1875


def test_float32_counter_rejects_values_a_float32_cannot_hold():
    counter = f32_counter()
    assert counter.feed(0, 1e39).event is CounterEvent.BAD_INPUT
    assert counter.feed(0, 1e38).event is CounterEvent.FIRST


def test_float32_wh_register_resolution_in_kwh():
    counter = f32_counter(unit_factor=0.001)
    result = counter.feed(0, f32(70e6))  # Janitza at 70 MWh: 8 Wh steps
    assert result.resolution_kwh == 0.008


def test_float32_kwh_at_a_million_then_a_replacement_meter():
    # 3 kW read every 10 s: 1/120 kWh per reading, well under the 0.0625 kWh step at 10^6 kWh.
    n, replace_at = 400, 250
    energy = [i / 120 for i in range(n)]
    readings, countable = simulate(
        energy, {replace_at: (12_345.6, energy[replace_at])}, start=1e6, register=f32
    )
    counter = f32_counter()
    results = feed_all(counter, readings, step_ms=10_000)
    assert results[0].event is CounterEvent.FIRST
    assert results[replace_at].event is CounterEvent.REPLACED
    first_segment = [r.event for r in results[1:replace_at]]
    assert CounterEvent.BELOW_RESOLUTION in first_segment
    assert set(first_segment) <= {CounterEvent.NORMAL, CounterEvent.BELOW_RESOLUTION}
    # Every move of the counter is at least one step: no fraction of a step is ever invented.
    assert all(r.delta_kwh >= 0.0625 for r in results[1:replace_at] if r.delta_kwh)
    # After the replacement the step is 2^-10 kWh, finer than a reading's energy.
    assert {r.event for r in results[replace_at + 1 :]} == {CounterEvent.NORMAL}
    tolerance = float32_step(1e6) + float32_step(12_345.6)
    assert counter.total_kwh == pytest.approx(countable, abs=tolerance)
    assert math.fsum(r.delta_kwh for r in results) == counter.total_kwh
    assert_never_negative(results)


def test_float32_reset_to_zero():
    counter = f32_counter()
    counter.feed(0, 1e6)
    counter.feed(60_000, 1e6 + 1.0)
    reset = counter.feed(120_000, 0.25)
    assert reset.event is CounterEvent.RESET and reset.delta_kwh == 0.25
    assert counter.total_kwh == 1.25


def test_float_counter_odd_values():
    counter = EnergyCounter(kind=RegisterKind.FLOAT64, unit_factor=1, max_power_kw=10)
    for value in (math.nan, -math.inf, -0.5, "x"):
        assert counter.feed(0, value).event is CounterEvent.BAD_INPUT
    assert counter.feed(0, 5).event is CounterEvent.FIRST
    assert counter.feed(3_600_000, 10.5).delta_kwh == 5.5
    assert counter.resolution_kwh(10.5) == math.ulp(10.5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"unit_factor": 0},
        {"unit_factor": math.nan},
        {"unit_factor": "1"},
        {"max_power_kw": -1},
        {"max_power_kw": math.inf},
        {"margin": 0.5},
        {"bits": 7},
        {"bits": 65},
        {"kind": "integer"},
    ],
)
def test_unusable_settings_raise(kwargs):
    settings_ = {"kind": RegisterKind.INTEGER, "unit_factor": 1, "max_power_kw": 1, **kwargs}
    with pytest.raises(EnergyConfigError):
        EnergyCounter(**settings_)


# -- property: any monotone true energy with resets, wraps and replacements ------------------

BITS = 16
MOD = 1 << BITS
MAX_STEP_WH = 2_000  # per one-minute reading: 120 kW
LIMIT_WH = 2 * MAX_STEP_WH + 1  # max_power_kw=120, margin=2, plus one raw step


@st.composite
def meter_runs(draw):
    """A true energy curve (Wh per reading) and meter changes that a counter can tell apart."""
    steps = draw(st.lists(st.integers(0, MAX_STEP_WH), min_size=1, max_size=120))
    start = draw(st.integers(MOD - 30 * MAX_STEP_WH, MOD - 1) | st.integers(0, MOD - 1))
    energy = [0]
    for s in steps:
        energy.append(energy[-1] + s)
    changes, counter_value = {}, start
    for i in range(1, len(energy)):
        counter_value += energy[i] - energy[i - 1]
        kind = draw(st.sampled_from(["none"] * 6 + ["reset", "replace"]))
        before = counter_value - (energy[i] - energy[i - 1])  # the register at reading i-1
        at = draw(st.integers(energy[i - 1], energy[i]))
        # A reset is seen only when the register falls, and away from the top of its range
        # (a fall from near 2^bits to near 0 is read as a wrap).
        if kind == "reset" and energy[i] - at < before % MOD < MOD - LIMIT_WH:
            changes[i] = (0, at)
            counter_value = energy[i] - at
        elif kind == "replace":
            # A new meter well away from the old one's reading, and not near zero (a jump
            # up is an implausible jump; one within the plausible range cannot be told apart).
            new = draw(st.integers(LIMIT_WH + 1, MOD - LIMIT_WH - 1))
            old = before % MOD
            if abs(new - old) > LIMIT_WH and (new - old) % MOD > LIMIT_WH:
                changes[i] = (new, energy[i])
                counter_value = new
    return energy, changes, start


@settings(max_examples=300, deadline=None)
@given(meter_runs(), st.lists(st.integers(0, 119), max_size=10))
def test_property_counted_energy_equals_true_countable_energy(run, bad_at):
    energy, changes, start = run
    readings, countable = simulate(energy, changes, start=start, register=lambda c: c % MOD)
    counter = EnergyCounter(
        kind=RegisterKind.INTEGER, unit_factor=0.001, max_power_kw=120, bits=BITS, margin=2
    )
    results = []
    for i, value in enumerate(readings):
        if i in bad_at:  # a failed read just before this one: ignored, changes nothing
            bad = counter.feed(i * MINUTE_MS - 1, value + 7_777, Quality.BAD)
            assert bad.event in (CounterEvent.BAD_INPUT,)
        results.append(counter.feed(i * MINUTE_MS, value))
    assert counter.total_raw == countable
    assert counter.total_kwh == countable / 1000
    assert_never_negative(results)
    for i, result in enumerate(results[1:], start=1):
        if i in changes:
            if changes[i][0] == 0:
                assert result.event is CounterEvent.RESET
            elif readings[i] < readings[i - 1]:
                assert result.event is CounterEvent.REPLACED
            else:
                assert result.event is CounterEvent.IMPLAUSIBLE_JUMP
        else:
            wrapped = readings[i] < readings[i - 1]
            assert result.event is (CounterEvent.WRAPPED if wrapped else CounterEvent.NORMAL)


@settings(max_examples=200, deadline=None)
@given(
    st.floats(1.0, 5e6),
    st.lists(
        st.tuples(st.floats(0, 0.5), st.booleans(), st.floats(0, 1)), min_size=1, max_size=100
    ),
)
def test_property_float32_counter_is_within_its_steps(start, steps):
    """A float32 kWh register read every 10 s (at most 180 kW), with resets: per segment the
    count is off by less than two steps (each end's float32 rounding, plus the carry below one
    step), and no energy is invented."""
    energy = [0.0]
    for kwh, _, _ in steps:
        energy.append(energy[-1] + kwh)
    changes, counter_value = {}, start
    for i, (kwh, reset, fraction) in enumerate(steps, start=1):
        if reset and f32(counter_value) > 0.6:  # the register visibly falls to (near) zero
            at = energy[i - 1] + fraction * kwh
            changes[i] = (0, at)
            counter_value = energy[i] - at
        else:
            counter_value += kwh
    readings, countable = simulate(energy, changes, start=start, register=f32)
    counter = f32_counter(max_power_kw=180)
    results = feed_all(counter, readings, step_ms=10_000)
    assert {i for i, r in enumerate(results) if r.event is CounterEvent.RESET} == set(changes)
    assert {r.event for r in results[1:]} <= {
        CounterEvent.NORMAL,
        CounterEvent.BELOW_RESOLUTION,
        CounterEvent.RESET,
    }
    assert_never_negative(results)
    boundaries = [0, *sorted(changes), len(readings)]
    tolerance = sum(2 * float32_step(max(readings[a:b])) for a, b in itertools.pairwise(boundaries))
    assert abs(counter.total_kwh - countable) <= tolerance
    assert math.fsum(r.delta_kwh for r in results) == pytest.approx(counter.total_kwh, abs=1e-9)


ODD_VALUES = st.one_of(
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.none(),
    st.booleans(),
    st.text(max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(list(RegisterKind)),
    st.lists(
        st.tuples(
            st.one_of(st.integers(-(2**70), 2**70), st.integers(0, 10**7)),
            ODD_VALUES,
            st.sampled_from(list(Quality)),
        ),
        max_size=40,
    ),
)
def test_property_odd_input_never_raises_nor_goes_negative(kind, feeds):
    counter = EnergyCounter(kind=kind, unit_factor=0.001, max_power_kw=50, bits=16)
    integrator = PowerIntegrator(unit_factor=0.001, max_gap_s=60)
    before_counter = before_power = 0.0
    for ts, value, quality in feeds:
        result = counter.feed(ts, value, quality)
        power = integrator.feed(ts, value, quality)
        assert result.delta_kwh >= 0 and power.energy_kwh >= 0
        assert before_counter <= result.total_kwh < math.inf
        assert before_power <= power.total_kwh < math.inf
        before_counter, before_power = result.total_kwh, power.total_kwh
    assert sum(counter.counts.values()) == sum(integrator.counts.values()) == len(feeds)


# -- power integration ---------------------------------------------------------------------


def ramp_hold_ramp(t_s):
    """Piecewise-linear power in W: 0 → 60 kW in 60 s, 60 kW for 120 s, back to 0 in 60 s."""
    if t_s <= 60:
        return 1_000 * t_s
    if t_s <= 180:
        return 60_000
    return max(0, 60_000 - 1_000 * (t_s - 180))


def test_trapezoid_is_exact_on_piecewise_linear_power():
    integrator = PowerIntegrator(unit_factor=0.001, max_gap_s=60)
    # Samples at the breakpoints and at irregular times in between.
    times = [0, 7, 13, 60, 61, 100, 140, 180, 181, 199, 240, 250]
    results = [integrator.feed(t * 1000, ramp_hold_ramp(t)) for t in times]
    assert [r.event for r in results] == [PowerEvent.FIRST] + [PowerEvent.NORMAL] * 11
    assert integrator.total_kwh == 3.0  # (30 + 120 + 30) kW·min
    assert math.fsum(r.energy_kwh for r in results) == pytest.approx(3.0, rel=1e-15)


def test_gap_is_not_integrated_and_reported():
    integrator = PowerIntegrator(unit_factor=1, max_gap_s=10)
    integrator.feed(0, 36)
    assert integrator.feed(10_000, 36).energy_kwh == 0.1  # exactly max_gap_s: integrated
    gap = integrator.feed(40_000, 72)
    assert gap.event is PowerEvent.GAP and gap.gap_ms == 30_000 and gap.energy_kwh == 0
    after = integrator.feed(45_000, 72)
    assert after.event is PowerEvent.NORMAL and after.energy_kwh == 0.1
    assert integrator.total_kwh == 0.2
    assert integrator.counts[PowerEvent.GAP] == 1


def test_bad_samples_are_skipped_and_bridged_within_the_gap():
    integrator = PowerIntegrator(unit_factor=1, max_gap_s=60)
    integrator.feed(0, 0)
    for ts, value, quality in [
        (10_000, 999, Quality.BAD),
        (20_000, math.nan, Quality.GOOD),
        (25_000, math.inf, Quality.GOOD),
        (30_000, "fast", Quality.GOOD),
        (35_000, None, Quality.UNCERTAIN),
    ]:
        result = integrator.feed(ts, value, quality)
        assert result.event is PowerEvent.BAD_INPUT and result.energy_kwh == 0 and result.reason
    bridged = integrator.feed(36_000, 200)  # linear 0 → 200 kW over 36 s
    assert bridged.event is PowerEvent.NORMAL and bridged.energy_kwh == 1.0
    assert integrator.feed(36_000, 5).event is PowerEvent.STALE
    assert integrator.counts[PowerEvent.BAD_INPUT] == 5
    assert integrator.total_kwh == 1.0


def test_negative_power_is_integrated_as_zero_and_counted():
    integrator = PowerIntegrator(unit_factor=1, max_gap_s=60)
    first = integrator.feed(0, -3)
    assert first.event is PowerEvent.FIRST and first.clamped
    result = integrator.feed(36_000, 200)
    assert result.energy_kwh == 1.0
    negative = integrator.feed(72_000, -50)
    assert negative.event is PowerEvent.NEGATIVE and negative.energy_kwh == 1.0
    assert integrator.total_kwh == 2.0
    assert integrator.counts[PowerEvent.NEGATIVE] == 1 and integrator.negative_samples == 2
    assert integrator.feed_sample(Sample("p", 0, Quality.GOOD, 108_000)).energy_kwh == 0


@pytest.mark.parametrize("kwargs", [{"unit_factor": 0}, {"max_gap_s": -1}, {"max_gap_s": "5"}])
def test_power_unusable_settings_raise(kwargs):
    with pytest.raises(EnergyConfigError):
        PowerIntegrator(**{"unit_factor": 1, "max_gap_s": 60, **kwargs})


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 20_000), st.integers(-1_000, 500_000)), min_size=1, max_size=80
    )
)
def test_property_power_energy_is_never_negative_and_matches_the_sum(samples):
    integrator = PowerIntegrator(unit_factor=0.001, max_gap_s=10)
    ts, results = 0, []
    for dt, watts in samples:
        ts += dt
        results.append(integrator.feed(ts, watts))
    assert all(r.energy_kwh >= 0 for r in results)
    assert integrator.total_kwh == pytest.approx(math.fsum(r.energy_kwh for r in results))
