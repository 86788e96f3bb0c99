"""The connection to the broker: opened by the publisher thread, watched, reopened with backoff.

paho runs one network thread per connection (`loop_start()` after a successful `reconnect()`,
with paho's own reconnecting turned off). The publisher thread calls `Link.tend()` at least
twice a second; it

* opens the connection itself, so that a failure comes with its exception (which TLS check
  failed, on which file) and is logged once per cause, not on every retry;
* waits between attempts with full jitter (a random delay between `reconnect_min` and a cap
  that doubles up to `reconnect_max`), so that a fleet of gateways does not reconnect in step
  after a broker restart;
* is the watchdog: when the broker has sent nothing for 1.5 keep-alive intervals (paho sends a
  PINGREQ after one, which a live broker answers at once) the socket is shut down and the
  connection reopened; when paho's thread died without reporting a disconnect it is replaced;
* recognises a client-id takeover (MQTT 5 reason 0x8E "Session taken over"; without a reason,
  as with 3.1.1 or Mosquitto 2.0, connections the broker accepts and closes again soon, three
  times in a row) and says so once per episode.

Every paho callback is wrapped by `guarded()`: an exception is logged once and never reaches
paho, whose network thread it would otherwise end.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import ParamSpec

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from agent.publish.tls import describe_tls_failure
from agent.settings import MqttSettings

__all__ = ["Backoff", "Link", "guarded"]

log = logging.getLogger("agent.publish.mqtt")

P = ParamSpec("P")

# The broker must have sent something (a PINGRESP at least) within this many keep-alives.
WATCHDOG_KEEPALIVES = 1.5
# With MQTT 3.1.1, this many connections in a row that the broker closed soon after accepting
# them are taken as a client-id takeover (3.1.1 gives no reason).
_TAKEOVER_SHORT_CONNECTIONS = 3
# After a TLS 1.3 handshake, how long to wait for the broker's verdict on the client certificate
# (session tickets: accepted; an alert: refused) before sending CONNECT.
_TLS_VERDICT_WAIT_S = 0.25
# MQTT 5 DISCONNECT reason codes.
_SESSION_TAKEN_OVER = 0x8E
_KEEPALIVE_TIMEOUT = 0x8D
_UNSPECIFIED = 0x80  # what paho reports for a connection closed under it


def guarded(name: str, callback: Callable[P, None]) -> Callable[P, None]:
    """`callback`, made safe to hand to paho: an exception is logged (the first time, with its
    traceback) and swallowed, because one escaping into paho ends its network thread."""
    failures = 0

    @functools.wraps(callback)
    def call(*args: P.args, **kwargs: P.kwargs) -> None:
        nonlocal failures
        try:
            callback(*args, **kwargs)
        except Exception:
            failures += 1
            if failures == 1:
                log.exception(
                    "The MQTT callback %s failed; the error is ignored so that paho's network "
                    "thread keeps running (further failures of it are not logged).",
                    name,
                )

    return call


class Backoff:
    """Reconnect delays with full jitter: uniform between `minimum` and a cap that starts at
    twice the minimum and doubles with every attempt, up to `maximum`."""

    def __init__(self, minimum: float, maximum: float, rng: random.Random | None = None) -> None:
        self.minimum = minimum
        self.maximum = max(minimum, maximum)
        self.attempt = 0
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not a secret)

    def next_delay(self) -> float:
        """The delay before the next attempt (and count the attempt)."""
        self.attempt = min(self.attempt + 1, 64)
        cap = min(self.maximum, self.minimum * 2.0**self.attempt)
        return self._rng.uniform(self.minimum, cap)

    def reset(self) -> None:
        """The connection has proved stable: start again from the shortest delays."""
        self.attempt = 0


class Link:
    """Opens, watches and reopens the paho client's connection; see the module docstring.

    `tend()`, `up()` and `down()` run on the publisher thread; `note_log()` and
    `note_disconnect()` on paho's thread (they only store a time, a flag or a text).
    """

    def __init__(
        self,
        client: mqtt.Client,
        settings: MqttSettings,
        *,
        client_id: str,
        on_lost: Callable[[str], None],
        on_fatal: Callable[[BaseException], None] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self._client = client
        self._settings = settings
        self._client_id = client_id
        self._on_lost = on_lost
        self._on_fatal = on_fatal
        self.backoff = backoff or Backoff(settings.reconnect_min, settings.reconnect_max)
        self.endpoint = f"{settings.host}:{settings.port}"
        # A connection that lasts this long is taken as stable: the backoff starts again from
        # its shortest delays and a takeover episode is over.
        self.stable_s = max(settings.keepalive, 2 * settings.reconnect_max)
        self.attempts = 0
        self.half_open_detected = 0
        self.takeovers = 0
        self._thread: threading.Thread | None = None
        self._next_attempt = 0.0
        self._last_inbound = 0.0
        self._forced_at: float | None = None
        self._fatal = False
        self._disconnect_seen = False
        self._socket_error: str | None = None
        self._handshake_error: OSError | None = None
        self._connected_at: float | None = None
        self._stable = False
        self._problems: set[str] = set()  # logged since the last successful connection
        self._short_lived = 0
        self._takeover = False
        client.on_socket_open = guarded("on_socket_open", self._tls_verdict)

    # -- paho's thread ---------------------------------------------------------------------

    def note_log(self, level: int, text: str) -> None:
        """paho's log line: every packet from the broker shows as "Received ..."."""
        if text.startswith("Received "):
            self._last_inbound = time.monotonic()
        elif level == mqtt.MQTT_LOG_ERR and "socket" in text:
            self._socket_error = text

    def note_disconnect(self) -> None:
        """paho reported the end of the connection (before its thread ends)."""
        self._disconnect_seen = True

    # -- the publisher thread --------------------------------------------------------------

    @property
    def quiet(self) -> bool:
        """During a takeover episode connects and disconnects are not logged one by one."""
        return self._takeover

    def due_in(self, longest: float) -> float:
        """How long the publisher thread may wait before `tend()` has something to do (the
        jittered delay is kept to the hundredth of a second, not to the thread's tick)."""
        if self._thread is not None:
            return longest
        return min(longest, max(0.01, self._next_attempt - time.monotonic()))

    def tend(self, *, stopping: bool = False) -> None:
        """Open the connection when it is due, watch it while it is open."""
        now = time.monotonic()
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._watch(now)
            return
        if thread is not None:
            self._thread = None
            if not self._disconnect_seen:
                self._report(
                    "thread-died",
                    "paho's network thread ended without reporting a disconnect (a bug in paho "
                    "or in a callback); the connection is reopened.",
                    error=True,
                )
                self._on_lost("paho's network thread ended")
            self._next_attempt = now + self.backoff.next_delay()
            return  # events of the ended connection are handled before the next attempt
        if not stopping and now >= self._next_attempt:
            self._open(now)

    def up(self) -> None:
        """The broker accepted the connection (CONNACK success)."""
        self._connected_at = time.monotonic()
        self._stable = False
        self._problems.clear()

    def down(self, reason: object, *, was_up: bool) -> bool:
        """The connection ended (`reason` as paho gave it); True when the caller should log
        the loss (not during a takeover episode)."""
        now = time.monotonic()
        lived = 0.0 if self._connected_at is None else now - self._connected_at
        self._connected_at = None
        if isinstance(reason, str):  # ended by the agent itself (its network thread died)
            self._short_lived = 0
            return not self._takeover
        code = getattr(reason, "value", None)
        forced = self._forced_at is not None
        if not was_up:
            self._explain_unanswered(code, forced)
            return False
        if code == _SESSION_TAKEN_OVER:
            self._short_lived = 0
            self._start_takeover(
                f"Another client connected to the MQTT broker {self.endpoint} with this agent's "
                f"client id {self._client_id}, and the broker disconnected the agent (MQTT "
                "reason 0x8E, session taken over). Two agents (or a test tool) share the id: "
                "give each its own agent.id or mqtt.client_id. The agent reconnects with backoff; "
                "samples wait in the outbox."
            )
        elif code in (None, _UNSPECIFIED) and not forced and lived < self.stable_s:
            # Closed without a reason (MQTT 3.1.1 has none; Mosquitto 2.0 gives none to MQTT 5
            # clients either) soon after the broker accepted the connection.
            self._short_lived += 1
            if self._short_lived >= _TAKEOVER_SHORT_CONNECTIONS:
                self._start_takeover(
                    f"The MQTT broker {self.endpoint} closed the connection {self._short_lived} "
                    f"times in a row within {self.stable_s:.0f} s of accepting it, without a "
                    f"reason: another client probably uses this agent's client id "
                    f"{self._client_id} (the broker's log says so), or the broker refuses what "
                    "the agent sends or keeps restarting. Give each agent its own agent.id or "
                    "mqtt.client_id. The agent reconnects with backoff; samples wait in the "
                    "outbox."
                )
        else:
            self._short_lived = 0
        return not self._takeover

    # -- internals -------------------------------------------------------------------------

    def _open(self, now: float) -> None:
        self.attempts += 1
        self._disconnect_seen = False
        self._socket_error = None
        self._handshake_error = None
        self._forced_at = None
        self._last_inbound = now
        try:
            # Blocks for at most paho's connect_timeout (TCP connect, then the TLS handshake).
            rc = self._client.reconnect()
        except (OSError, ValueError) as exc:  # ssl errors are OSErrors, name checks ValueErrors
            self._connect_failed(exc)
            return
        if self._handshake_error is not None:
            self._shut_down_socket()
            self._connect_failed(self._handshake_error)
            return
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            text = self._socket_error or mqtt.error_string(rc)
            self._connect_failed(OSError(text.removeprefix("failed to receive on socket: ")))
            return
        self._last_inbound = time.monotonic()
        self._client.loop_start()
        # paho keeps the thread of loop_start() in `_thread` (no public accessor) and clears it
        # when the thread ends; the watchdog needs the thread itself.
        self._thread = self._client._thread

    def _tls_verdict(self, _client: object, _userdata: object, sock: object) -> None:
        """paho's on_socket_open, called inside `reconnect()` (this thread) after the TLS
        handshake. With TLS 1.3 a broker refuses a client certificate (or its absence) only
        after the handshake, with an alert that can race the CONNECT being written: read the
        broker's first words here, so that the failure comes with its real cause."""
        if not isinstance(sock, ssl.SSLSocket) or sock.version() != "TLSv1.3":
            return
        readable, _, _ = select.select([sock], [], [], _TLS_VERDICT_WAIT_S)
        if not readable:
            return
        try:
            data = sock.recv(1)  # non-blocking; the broker says nothing before CONNECT
        except ssl.SSLWantReadError:
            return  # session tickets only: the broker accepted the handshake
        except OSError as exc:
            self._handshake_error = exc
            return
        if not data:
            self._handshake_error = ConnectionResetError(
                "the broker closed the connection right after the TLS handshake"
            )

    def _connect_failed(self, exc: BaseException) -> None:
        tls = self._settings.tls
        described = None
        if tls is not None:
            described = describe_tls_failure(
                exc, tls, endpoint=self.endpoint, name=self._checked_name
            )
        if described is not None:
            self._report(described[0], described[1], error=True)
        else:
            reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
            self._report(
                f"connect-{type(exc).__name__}",
                f"Cannot connect to the MQTT broker {self.endpoint}: {reason}.",
                error=False,
            )
        self._next_attempt = time.monotonic() + self.backoff.next_delay()

    @property
    def _checked_name(self) -> str:
        tls = self._settings.tls
        return (tls.server_name if tls is not None else None) or self._settings.host

    def _explain_unanswered(self, code: object, forced: bool) -> None:
        """A connection that ended before the broker accepted it."""
        tls = self._settings.tls
        if self._socket_error is not None and tls is not None and not forced:
            described = describe_tls_failure(
                self._socket_error, tls, endpoint=self.endpoint, name=self._checked_name
            )
            if described is not None:
                self._report(described[0], described[1], error=True)
                return
        if code == _KEEPALIVE_TIMEOUT or forced:
            self._report(
                "no-connack",
                f"The MQTT broker {self.endpoint} accepted the TCP connection but did not answer "
                "the agent's CONNECT (is it hanging?).",
                error=False,
            )

    def _report(self, kind: str, message: str, *, error: bool) -> None:
        """Log a connection problem once per cause until a connection succeeds."""
        if kind in self._problems:
            return
        self._problems.add(kind)
        log.log(
            logging.ERROR if error else logging.WARNING,
            "%s Samples wait in the outbox; the agent retries every %g to %g s and logs this once.",
            message,
            self.backoff.minimum,
            self.backoff.maximum,
        )

    def _start_takeover(self, message: str) -> None:
        self.takeovers += 1
        if not self._takeover:
            self._takeover = True
            log.error("%s", message)

    def _watch(self, now: float) -> None:
        lasted = None if self._connected_at is None else now - self._connected_at
        if lasted is not None and lasted >= self.stable_s and not self._stable:
            self._stable = True
            self.backoff.reset()
            self._short_lived = 0
            if self._takeover:
                self._takeover = False
                log.info(
                    "The MQTT client id %s has been the agent's for %.0f s: the other client "
                    "is gone.",
                    self._client_id,
                    self.stable_s,
                )
        keepalive = self._client.keepalive
        if keepalive <= 0:
            return
        if self._forced_at is None:
            silent = now - self._last_inbound
            if silent > WATCHDOG_KEEPALIVES * keepalive:
                self.half_open_detected += 1
                self._forced_at = now
                log.warning(
                    "The MQTT broker %s has sent nothing for %.1f s (keep-alive %d s): the "
                    "connection is taken as dead (half-open, or the broker hangs) and reopened.",
                    self.endpoint,
                    silent,
                    keepalive,
                )
                self._shut_down_socket()
        elif now - self._forced_at > max(10.0, keepalive) and not self._fatal:
            self._fatal = True
            log.error(
                "paho's network thread did not notice within %.0f s that its socket was shut "
                "down; the agent stops so that it can be restarted.",
                now - self._forced_at,
            )
            if self._on_fatal is not None:
                self._on_fatal(RuntimeError("paho's network thread hangs"))

    def _shut_down_socket(self) -> None:
        """End the connection under paho's feet: its next read sees the end and it reports
        the connection as lost (the TCP-level shutdown, also under TLS, from any thread)."""
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
