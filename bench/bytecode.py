"""Compile the agent's modules before a benchmark, as pip does when it installs a package.

A checkout run with PYTHONDONTWRITEBYTECODE=1 (set on some development machines) compiles every
module from source at each start: that costs start-up time and leaves about 1.5 MiB of compiler
allocations in the process, which an installed agent never pays, while the bare reference's
libraries in site-packages were compiled by pip. Python reads existing .pyc files even with that
variable set, so compiling once makes the comparison fair.
"""

from __future__ import annotations

import compileall
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def compile_agent() -> None:
    """Write __pycache__ for the agent's packages (ignored by git)."""
    for package in ("agent", "drivers", "inference"):
        compileall.compile_dir(REPO / package, quiet=1)
