"""A throwaway local Mosquitto broker for the demo, the benchmark and the tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BrokerNotFound", "LocalBroker", "TlsListener", "free_port", "write_password_file"]


class BrokerNotFound(RuntimeError):
    """Mosquitto is not installed."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _mosquitto(program: str = "mosquitto") -> str:
    found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    if not found:
        raise BrokerNotFound(
            f"{program} is not installed; on Debian or Ubuntu: sudo apt-get install mosquitto"
        )
    return found


def write_password_file(path: Path, users: Mapping[str, str]) -> Path:
    """A Mosquitto password file (hashed by `mosquitto_passwd`) for these users."""
    path.unlink(missing_ok=True)
    for index, (user, password) in enumerate(users.items()):
        create = ["-c"] if index == 0 else []
        subprocess.run(
            [_mosquitto("mosquitto_passwd"), *create, "-b", str(path), user, password],
            check=True,
            capture_output=True,
        )
    return path


@dataclass(frozen=True)
class TlsListener:
    """A second listener of `LocalBroker` that speaks MQTT over TLS (PEM files)."""

    certfile: Path  # the broker's certificate
    keyfile: Path
    cafile: Path  # the CA that client certificates must be signed by
    require_certificate: bool = False  # mutual TLS
    use_identity_as_username: bool = False  # the client certificate's CN is the user name
    password_file: Path | None = None  # clients must log in (see write_password_file)

    def config_lines(self, port: int) -> list[str]:
        lines = [
            f"listener {port} 127.0.0.1",
            f"certfile {self.certfile}",
            f"keyfile {self.keyfile}",
            f"cafile {self.cafile}",
            f"require_certificate {str(self.require_certificate).lower()}",
        ]
        if self.use_identity_as_username:
            lines.append("use_identity_as_username true")
        if self.password_file is not None:
            lines += ["allow_anonymous false", f"password_file {self.password_file}"]
        else:
            lines.append("allow_anonymous true")
        return lines


class LocalBroker:
    """Mosquitto on 127.0.0.1 with its own config in a temporary directory.

    `stop()`/`start()` restart it on the same port (with `persistent=True` it keeps sessions
    and queued messages); `pause()`/`resume()` freeze it with SIGSTOP/SIGCONT to make a
    half-open connection. With `tls`, it also serves MQTT over TLS on `tls_port` (the plain
    listener on `port` stays open to anyone, for test subscribers); `log_connections` logs
    every connection attempt (see `log()`).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        persistent: bool = False,
        extra_config: str = "",
        tls: TlsListener | None = None,
        log_connections: bool = False,
    ) -> None:
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.tls_port = free_port() if tls is not None else None
        self._dir = Path(tempfile.mkdtemp(prefix="shopfloor-broker-"))
        self._config = self._dir / "mosquitto.conf"
        self._log = self._dir / "mosquitto.log"
        lines = [
            # Each listener has its own login settings (the TLS one may require a password).
            *(["per_listener_settings true"] if tls is not None else []),
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            # With persistence, sessions and queued QoS 1 messages survive a restart.
            "persistence true" if persistent else "persistence false",
            f"persistence_location {self._dir}/",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "max_inflight_messages 100",
            *(["log_type notice", "log_type information"] if log_connections else []),
        ]
        if tls is not None and self.tls_port is not None:
            lines += tls.config_lines(self.tls_port)
        if os.geteuid() == 0:
            lines.append("user root")  # otherwise it drops to 'mosquitto' and cannot read _dir
        self._config.write_text("\n".join(lines) + "\n" + extra_config)
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start and wait until it accepts connections."""
        if self._process is not None:
            return
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                [_mosquitto(), "-c", str(self._config)], stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"mosquitto exited at start: {self._log.read_text()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout}s")

    def stop(self) -> None:
        """Terminate it (clients see the connection close)."""
        if self._process is None:
            return
        self._process.send_signal(signal.SIGCONT)
        self._process.terminate()
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def log(self) -> str:
        """What the broker logged so far (errors and warnings; connections with
        `log_connections`)."""
        return self._log.read_text(errors="replace") if self._log.exists() else ""

    def pause(self) -> None:
        """Freeze the broker: connections stay open but nothing is answered."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Unfreeze after `pause()`."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
