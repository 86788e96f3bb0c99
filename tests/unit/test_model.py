"""A sample's hand-built JSON is exactly what json.dumps would write for its wire form."""

from __future__ import annotations

import json

import pytest

from agent.model import Quality, Sample

SAMPLES = [
    Sample("line1.press3.oil_temp", 35.45, Quality.GOOD, 1763786400123),
    Sample("a", 60.290000915527344, Quality.GOOD, 1),
    Sample("a", -0.0, Quality.GOOD, 1),
    Sample("a", 1e-300, Quality.UNCERTAIN, 1),
    Sample("counter", 2**64 - 1, Quality.GOOD, 1),
    Sample("counter", -(2**63), Quality.GOOD, 1),
    Sample("running", True, Quality.GOOD, 1),
    Sample("running", False, Quality.GOOD, 1),
    Sample("serial", 'AB"12\\\\x', Quality.GOOD, 1),
    Sample("model", "Grüße ✓", Quality.GOOD, 1),
    Sample("bad", None, Quality.BAD, 1, "exception 2 (illegal data address)"),
    Sample("bad", None, Quality.BAD, 1, 'odd "reason"'),
    Sample("point.with-dashes_and.dots", 7, Quality.UNCERTAIN, 9, "stale"),
]


@pytest.mark.parametrize("sample", SAMPLES, ids=[str(i) for i in range(len(SAMPLES))])
def test_to_json_equals_json_dumps_of_the_wire_form(sample: Sample):
    expected = json.dumps(sample.to_wire(), ensure_ascii=False, separators=(",", ":"))
    assert sample.to_json() == expected
    assert json.loads(sample.to_json()) == sample.to_wire()
