"""`make demo` runs `shopfloor demo`: data from every simulated point reaches the broker, and
the washer sorting station inspects parts and the simulated PLC sorts them by its verdicts."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO


def test_demo_shows_every_point_arriving():
    result = subprocess.run(
        [sys.executable, "-m", "agent", "demo", "--duration", "10"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "35 of 35 points reached the broker" in result.stdout
    station = re.search(
        r"Station: (\d+) inspections.*?(\d+) results at the broker; PLC\s+sorted\s+(\d+)\s+OK"
        r"\s+/\s+(\d+)\s+NG\s+of\s+(\d+)\s+parts,\s+(\d+)\s+right",
        result.stdout,
        re.DOTALL,
    )
    assert station, result.stdout
    _inspections, results, sorted_ok, sorted_ng, _parts, right = map(int, station.groups())
    assert results >= 3  # (health, which counts inspections, comes every 5 s: it lags)
    assert sorted_ok + sorted_ng >= 3
    # The shipped model sorts nearly every part right (at most one miss in a few parts).
    assert right >= sorted_ok + sorted_ng - 1
    assert "agent online" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
