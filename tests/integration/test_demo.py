"""`make demo` runs `shopfloor demo`: data from every simulated point reaches the broker."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_demo_shows_every_point_arriving():
    result = subprocess.run(
        [sys.executable, "-m", "agent", "demo", "--duration", "8"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "23 of 23 points reached the broker" in result.stdout
    assert "agent online" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
