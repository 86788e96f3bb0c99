"""Machine state from a PLC state point and from power thresholds with hysteresis and dwell."""

from __future__ import annotations

import pytest

from agent.model import Quality, Sample
from inference.energy.counters import EnergyConfigError
from inference.energy.state import MachineState, StateFromPoint, StateFromPower

OFF, IDLE, PRODUCING, UNKNOWN = (
    MachineState.OFF,
    MachineState.IDLE,
    MachineState.PRODUCING,
    MachineState.UNKNOWN,
)
S = 1000


def states(tracker, readings):
    return [tracker.feed(ts, value, quality).state for ts, value, quality in readings]


# -- StateFromPoint ----------------------------------------------------------------------------


def test_point_maps_numbers_and_enum_names():
    tracker = StateFromPoint({0: OFF, 1: IDLE, 2: "producing", "Running": PRODUCING})
    fed = [(1, IDLE), (2.0, PRODUCING), (0, OFF), ("  RUNNING ", PRODUCING), (True, IDLE)]
    results = [tracker.feed(i * S, value) for i, (value, _) in enumerate(fed)]
    assert [r.state for r in results] == [state for _, state in fed]
    assert [r.changed for r in results] == [True, True, True, True, True]
    assert tracker.unknown_values == 0


def test_point_unknown_values_are_unknown_and_counted():
    tracker = StateFromPoint({0: OFF, 1: IDLE, 2: PRODUCING})
    assert tracker.feed(0, 1).state is IDLE
    result = tracker.feed(S, 7)
    assert result.state is UNKNOWN and result.changed and "not mapped" in (result.reason or "")
    assert tracker.feed(2 * S, "maintenance").state is UNKNOWN
    assert tracker.feed(3 * S, 1.5).state is UNKNOWN
    assert tracker.unknown_values == 3
    assert tracker.last_unknown == 1.5
    assert tracker.feed(4 * S, 2).state is PRODUCING


def test_point_holds_the_last_state_on_bad_input_then_unknown():
    tracker = StateFromPoint({1: IDLE, 2: PRODUCING}, hold_s=10)
    assert tracker.feed(0, 2).state is PRODUCING
    held = tracker.feed(5 * S, 2, Quality.BAD)
    assert held.state is PRODUCING and not held.changed and "held" in (held.reason or "")
    assert tracker.feed(10 * S, None).state is PRODUCING  # exactly the hold time: still held
    lost = tracker.feed(10 * S + 1, 2, Quality.UNCERTAIN)
    assert lost.state is UNKNOWN and lost.changed and lost.since_ts == 10 * S + 1
    back = tracker.feed(12 * S, 1)
    assert back.state is IDLE and back.changed and back.since_ts == 12 * S
    assert tracker.counts["held"] == 2 and tracker.counts["bad_input"] == 3


def test_point_bad_input_before_any_reading_is_unknown():
    tracker = StateFromPoint({1: IDLE})
    assert tracker.feed(0, 1, Quality.BAD).state is UNKNOWN


def test_point_ignores_older_readings_and_accepts_samples():
    tracker = StateFromPoint({1: IDLE, 2: PRODUCING})
    assert tracker.feed_sample(Sample("press.state", 2, Quality.GOOD, 10 * S)).state is PRODUCING
    stale = tracker.feed(5 * S, 1)
    assert stale.state is PRODUCING and tracker.counts["stale"] == 1


@pytest.mark.parametrize(
    "mapping",
    [{}, {1: "running"}, {float("nan"): IDLE}, {"run": IDLE, " RUN": PRODUCING}, {(1,): IDLE}],
)
def test_point_bad_mapping_raises(mapping):
    with pytest.raises(EnergyConfigError):
        StateFromPoint(mapping)


# -- StateFromPower ----------------------------------------------------------------------------


def test_power_thresholds_without_hysteresis():
    tracker = StateFromPower(off_below_kw=2, producing_above_kw=20)
    assert states(tracker, [(i * S, p, Quality.GOOD) for i, p in enumerate([0, 5, 25, 1.9])]) == [
        OFF,
        IDLE,
        PRODUCING,
        OFF,
    ]
    assert tracker.classify(2) is IDLE and tracker.classify(20) is IDLE


def test_power_hysteresis_does_not_flap_around_a_threshold():
    tracker = StateFromPower(off_below_kw=2, producing_above_kw=20, hysteresis_kw=1)
    noise = [10, 19.5, 20.5, 19.8, 20.9, 21.0]  # never above 21: stays IDLE
    then = [21.5, 19.5, 20.2, 19.1, 20.9, 19.05, 19.0]  # up above 21, down at 19 or less
    results = [tracker.feed(i * S, p) for i, p in enumerate(noise + then)]
    assert [r.state for r in results] == [IDLE] * 6 + [PRODUCING] * 6 + [IDLE]
    assert sum(r.changed for r in results) == 3  # UNKNOWN -> IDLE -> PRODUCING -> IDLE
    # Around the OFF threshold likewise: leave OFF only at >= 3 kW (not below 2 + 1).
    low = [0.5, 2.5, 1.5, 2.9, 3.0, 1.5, 1.0, 0.9]
    assert states(tracker, [(100 * S + i * S, p, Quality.GOOD) for i, p in enumerate(low)]) == [
        OFF,
        OFF,
        OFF,
        OFF,
        IDLE,
        IDLE,
        IDLE,  # 1.0 + 1 is not below 2
        OFF,
    ]


def test_power_min_dwell_filters_short_excursions():
    tracker = StateFromPower(off_below_kw=2, producing_above_kw=20, min_dwell_s=30)
    assert tracker.feed(0, 10).state is IDLE  # the first reading sets the state at once
    # A 20 s spike: never 30 s long, no change.
    spike = [tracker.feed(t * S, 40) for t in (10, 20, 30)]
    assert [r.state for r in spike] == [IDLE] * 3
    assert "pending" in (spike[0].reason or "")
    assert tracker.feed(31 * S, 10).state is IDLE
    # Sustained: asked for from 40 s, confirmed at 70 s.
    sustained = {t: tracker.feed(t * S, 40) for t in range(40, 80, 10)}
    assert [sustained[t].state for t in (40, 50, 60)] == [IDLE] * 3
    assert sustained[70].state is PRODUCING and sustained[70].changed
    assert sustained[70].since_ts == 70 * S


def test_power_dwell_restarts_when_the_candidate_changes():
    tracker = StateFromPower(off_below_kw=2, producing_above_kw=20, min_dwell_s=10)
    tracker.feed(0, 10)
    tracker.feed(1 * S, 40)  # PRODUCING pending from 1 s
    tracker.feed(5 * S, 0)  # OFF pending from 5 s
    assert tracker.feed(11 * S, 0).state is IDLE
    assert tracker.feed(15 * S, 0).state is OFF


def test_power_bad_input_holds_then_unknown_then_resets_at_once():
    tracker = StateFromPower(off_below_kw=2, producing_above_kw=20, min_dwell_s=60, hold_s=5)
    assert tracker.feed(0, 30).state is PRODUCING
    assert tracker.feed(3 * S, float("nan")).state is PRODUCING
    assert tracker.feed(4 * S, "x").state is PRODUCING
    assert tracker.feed(6 * S, 30, Quality.BAD).state is UNKNOWN
    assert tracker.feed(7 * S, 0).state is OFF  # from UNKNOWN: no dwell


@pytest.mark.parametrize(
    "kwargs",
    [
        {"off_below_kw": 5, "producing_above_kw": 5},
        {"off_below_kw": -1, "producing_above_kw": 5},
        {"off_below_kw": 1, "producing_above_kw": 5, "hysteresis_kw": float("inf")},
        {"off_below_kw": 1, "producing_above_kw": 5, "min_dwell_s": -1},
        {"off_below_kw": 1, "producing_above_kw": 5, "hold_s": "10"},
    ],
)
def test_power_bad_settings_raise(kwargs):
    with pytest.raises(EnergyConfigError):
        StateFromPower(**kwargs)
