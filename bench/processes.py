"""Processes a benchmark starts and measures: their CPU time, the machine's load, stopping them."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from bench.bytecode import REPO

__all__ = [
    "cpu_seconds",
    "io_counters",
    "loadavg",
    "ready_server",
    "status_kib",
    "stop_process",
    "tail",
    "unwind_on_sigterm",
]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The agent may spend up to 5 s draining its outbox at SIGTERM.
STOP_TIMEOUT_S = 10.0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # After "pid (comm)": state is fields[0]; utime and stime are fields 14 and 15 of stat(5).
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def io_counters(pid: int) -> dict[str, int]:
    """/proc/PID/io of a process (all its threads): `wchar` (bytes passed to write(2) and the
    like, to files, pipes and terminals alike), `write_bytes` (bytes of page cache the process
    dirtied, i.e. that go to the block device), `cancelled_write_bytes` (dirty pages dropped
    before writeback, e.g. by a truncate), `syscw` and the read counters."""
    with open(f"/proc/{pid}/io", encoding="ascii") as io:
        return {key: int(value) for key, value in (line.split(": ") for line in io)}


def status_kib(pid: int, key: str) -> int:
    """A `kB` field of /proc/PID/status, e.g. VmHWM or VmRSS."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    with open("/proc/loadavg", encoding="ascii") as load:
        return [float(value) for value in load.read().split()[:3]]


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, then SIGKILL if it is still there after `timeout` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def unwind_on_sigterm() -> None:
    """SIGTERM to the benchmark unwinds like Ctrl-C, so every finally block stops its process."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def tail(path: Path, chars: int = 1500) -> str:
    """The end of a log file, for error messages ("" if it cannot be read)."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


@contextmanager
def ready_server(command: Sequence[str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A server process that prints `READY <port>` once it serves; stopped on exit."""
    with log.open("wb") as errors:
        process = subprocess.Popen(list(command), cwd=REPO, stdout=subprocess.PIPE, stderr=errors)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode(errors="replace").strip()
        if line != f"READY {port}":
            raise RuntimeError(f"the server did not start: {line!r} {tail(log)}")
        yield process
    finally:
        stop_process(process)
        if process.stdout is not None:
            process.stdout.close()
