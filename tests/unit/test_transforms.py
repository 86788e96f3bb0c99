"""Scale/offset, deadband and heartbeat on scripted sample sequences."""

from __future__ import annotations

from agent.model import Quality, Sample
from agent.transforms import PointTransform, scaled


def sample(value, ts, quality=Quality.GOOD):
    return Sample("p", value, quality, ts)


def values(transform: PointTransform, sequence):
    out = []
    for ts, value, *quality in sequence:
        kept = transform.apply(sample(value, ts, *(quality or [Quality.GOOD])))
        out.append(None if kept is None else kept.value)
    return out


def test_scale_is_exact_for_decimal_steps():
    assert scaled(215, 0.1, 0) == 21.5
    assert scaled(3, 0.1, 0) == 0.3  # 3 * 0.1 would be 0.30000000000000004
    assert scaled(12345, 0.001, 0) == 12.345
    assert scaled(100, 2.5, -10) == 240.0
    assert scaled(7, 1, 0) == 7 and isinstance(scaled(7, 1, 0), int)
    assert scaled(True, 0.1, 0) is True


def test_no_deadband_passes_everything():
    transform = PointTransform()
    assert values(transform, [(0, 1.0), (100, 1.0), (200, 1.0)]) == [1.0, 1.0, 1.0]


def test_absolute_deadband():
    transform = PointTransform(deadband=0.5)
    sequence = [(0, 10.0), (100, 10.4), (200, 10.6), (300, 10.2), (400, 10.0)]
    assert values(transform, sequence) == [10.0, None, 10.6, None, 10.0]


def test_percent_deadband_is_relative_to_the_last_published_value():
    transform = PointTransform(deadband_percent=10)
    sequence = [(0, 100.0), (1, 109.0), (2, 111.0), (3, 120.0), (4, 123.0)]
    assert values(transform, sequence) == [100.0, None, 111.0, None, 123.0]


def test_heartbeat_republishes_an_unchanged_value():
    transform = PointTransform(deadband=1.0, heartbeat=1.0)
    sequence = [(0, 5.0), (500, 5.0), (999, 5.0), (1000, 5.0), (1500, 5.2), (2000, 5.2)]
    assert values(transform, sequence) == [5.0, None, None, 5.0, None, 5.2]


def test_quality_change_always_passes():
    transform = PointTransform(deadband=100.0)
    sequence = [(0, 1.0), (100, None, Quality.BAD), (200, None, Quality.BAD), (300, 1.0)]
    assert values(transform, sequence) == [1.0, None, None, 1.0]
    kept = PointTransform(deadband=100.0)
    kept.apply(sample(1.0, 0))
    bad = kept.apply(sample(None, 100, Quality.BAD))
    assert bad is not None and bad.quality is Quality.BAD


def test_booleans_and_strings_pass_on_change_only():
    transform = PointTransform(deadband=0.5)
    assert values(transform, [(0, True), (1, True), (2, False), (3, "a"), (4, "a")]) == [
        True,
        None,
        False,
        "a",
        None,
    ]
