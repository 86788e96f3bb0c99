"""What the benchmarks record about the code and packages they measured."""

from __future__ import annotations

import os
import platform
import subprocess
from contextlib import suppress
from importlib import metadata
from typing import Any

from bench.bytecode import REPO
from bench.processes import loadavg

__all__ = ["code_version", "machine", "versions"]


def versions(*packages: str) -> dict[str, str]:
    """Python's version and those of the given installed packages."""
    found = {"python": platform.python_version()}
    for package in packages:
        with suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    return found


def code_version() -> dict[str, Any]:
    """The commit measured, and the files of the agent that differ from it (work in progress)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
            ).stdout.rstrip("\n")
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = git("status", "--porcelain", "--", "agent", "drivers", "pyproject.toml")
    return {
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "changed_files": [line[3:] for line in changed.splitlines()],
    }


def machine(loadavg_before: list[float]) -> dict[str, Any]:
    """The machine measured: its CPUs, its load before the benchmark (given) and now, its OS."""
    return {
        "cpus": os.cpu_count(),
        "loadavg_before": loadavg_before,
        "loadavg_after": loadavg(),
        "platform": platform.platform(),
    }
