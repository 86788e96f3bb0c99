"""A null-modem cable in software: two linked pseudo-terminals made by socat.

Bytes written to one end come out of the other, so a simulated RTU device listens on one end
and a Modbus RTU client (the agent, a test) opens the other as if it were /dev/ttyUSB0.

    with PtyPair() as line:
        server = SimulatedModbusServer(transport="rtu", serial_port=line.server_end)
        client = AsyncModbusSerialClient(line.client_end)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["PtyPair", "SocatError"]

SOCAT = "socat"


class SocatError(RuntimeError):
    """socat is missing, or exited before both pseudo-terminals were ready."""


class PtyPair:
    """Two linked pseudo-terminals, reachable through the symlinks `server_end` and `client_end`.

    The links live in `directory` (a fresh temporary directory when None, removed on stop).
    socat keeps the pair alive while either end is closed and reopened, so a device on the
    server end can be stopped and restarted while the client keeps its end open.
    """

    def __init__(self, directory: Path | None = None, *, start_timeout: float = 5.0) -> None:
        self._own_directory = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix="pty-")) if directory is None else directory
        self.server_end = str(self.directory / "server")
        self.client_end = str(self.directory / "client")
        self.start_timeout = start_timeout
        self._log_path = self.directory / "socat.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start socat and return once both links point at their pseudo-terminals."""
        if self._process is not None:
            return
        executable = shutil.which(SOCAT)
        if executable is None:
            raise SocatError("socat is not installed (apt-get install socat)")
        self.directory.mkdir(parents=True, exist_ok=True)
        for link in (self.server_end, self.client_end):
            Path(link).unlink(missing_ok=True)  # a link left by a killed socat
        # raw,echo=0: no line editing or echo, bytes pass through untouched as on a real port.
        ends = [f"pty,raw,echo=0,link={link}" for link in (self.server_end, self.client_end)]
        with self._log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [executable, "-d", "-d", *ends],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self._wait_until_ready()

    def stop(self) -> None:
        """Stop socat (both pseudo-terminals disappear) and remove a directory made for it."""
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(2)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(2)
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)
        else:
            for link in (self.server_end, self.client_end):
                Path(link).unlink(missing_ok=True)

    @property
    def running(self) -> bool:
        """Whether socat is still running."""
        return self._process is not None and self._process.poll() is None

    def devices(self) -> tuple[str, str]:
        """The /dev/pts/N behind (server end, client end)."""
        return os.path.realpath(self.server_end), os.path.realpath(self.client_end)

    def __enter__(self) -> PtyPair:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout
        while not (os.path.exists(self.server_end) and os.path.exists(self.client_end)):
            if self._process.poll() is not None:
                log = self._log_path.read_text(errors="replace").strip()
                self.stop()
                raise SocatError(f"socat exited before the pseudo-terminals were ready: {log}")
            if time.monotonic() > deadline:
                self.stop()
                raise SocatError(f"socat made no pseudo-terminals in {self.start_timeout} s")
            time.sleep(0.01)
