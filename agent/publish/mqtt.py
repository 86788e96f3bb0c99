"""The MQTT publisher: one thread that moves outbox rows to the broker and deletes them only
after the broker's PUBACK for the message that carried them.

paho's callbacks run on paho's network thread; they only put what happened on a queue and wake
the publisher thread, and they never raise (each is wrapped by `guarded()`: an exception there
would silently kill paho's thread). The publisher thread also opens, watches and reopens the
connection (`agent.publish.link.Link`: full-jitter backoff, keep-alive watchdog, TLS failures
and client-id takeovers explained once).
Everything else, publishing included, happens on the publisher thread, so the mid -> rows map
is only touched there: an acknowledgement that arrives before `publish()` returns its mid just
waits in the queue until the map has it.

Remote commands (`agent.commands`): with `on_command` given, the publisher subscribes to
`.../cmd/+` on every connection; `on_message` only wraps each message into a `CommandRequest`
and hands it to `on_command` (which must not block: the agent schedules it on its event loop).
Replies come back through `offer_reply()` and are published from the publisher thread, ahead
of data, when connected; a reply that finds no connection is dropped and counted (it is only
useful now, so it is never kept in the outbox).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.buffer import LiveBuffer, LiveEntry
from agent.commands import CommandReply, CommandRequest
from agent.model import now_ms
from agent.outbox import Outbox, StoredRow
from agent.publish.link import Link, guarded
from agent.publish.payload import (
    Packable,
    Topics,
    dumps,
    max_message_body,
    message_payload,
    utf8_size,
)
from agent.settings import MqttSettings

__all__ = ["MqttPublisher", "PublisherStats"]

log = logging.getLogger(__name__)

PackableT = TypeVar("PackableT", bound=Packable)

# Backlog rows leased per round, per message of in-flight window: bounds memory after a long
# outage (a row holds up to one message's worth of records).
_LEASE_ROWS_PER_SLOT = 2
# After the broker rejects a message, wait this long before offering its rows again.
_REJECT_BACKOFF_S = 5.0
# PUBACK reasons that sending again cannot fix: the records go to the dead-letter table.
_NEVER_ACCEPTED = {
    0x87: "not authorized",
    0x90: "topic name invalid",
    0x99: "payload format invalid",
}
# While the outbox file cannot be read or updated, try again this often.
_DISK_RETRY_S = 2.0


@dataclass(slots=True)
class PublisherStats:
    """Counters reported in health."""

    connected: bool = False
    messages_sent: int = 0
    records_sent: int = 0
    messages_failed: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    connects: int = 0
    in_flight: int = 0
    dead_letter_records: int = 0
    replies_sent: int = 0
    replies_dropped: int = 0  # no connection, or paho refused the reply


@dataclass(frozen=True, slots=True)
class _InFlight:
    row_ids: tuple[int, ...]  # backlog rows in the outbox file
    entries: tuple[LiveEntry, ...]  # records sent straight from the live buffer
    records: int


class MqttPublisher:
    """Publishes outbox rows, status and health; runs its own thread once `start()`ed."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        client_id: str,
        topics: Topics,
        outbox: Outbox,
        buffer: LiveBuffer,
        session: int,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
        on_command: Callable[[CommandRequest], None] | None = None,
        command_topics: str | None = None,
    ) -> None:
        """`on_command` receives each message on `command_topics` (a filter such as
        `.../cmd/+`), on paho's thread: it must hand the message over and return at once."""
        self.settings = settings
        self.topics = topics
        self.outbox = outbox
        self.buffer = buffer
        self.session = session
        self.stats = PublisherStats()
        self._client_id = client_id
        self._password = password
        self._tls = tls
        self._on_fatal = on_fatal
        self._on_command = on_command
        self._command_topics = command_topics if on_command is not None else None
        self._replies: queue.SimpleQueue[CommandReply] = queue.SimpleQueue()
        self._reply_failures: set[str] = set()  # logged once each
        self._subscribe_refused = False
        self._events: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._in_flight: dict[int, _InFlight] = {}
        self._in_flight_rows: set[int] = set()
        self._cursor = 0
        self._seq = 0
        self._connected = False
        self._hold_until = 0.0
        self._bucket_at = time.monotonic()
        self._buried_reasons: set[str] = set()  # logged once each
        self._message_tokens = settings.backlog_messages_per_s
        self._byte_tokens = float(settings.backlog_bytes_per_s)
        self._health: dict[str, Any] | None = None
        self._stop_deadline: float | None = None
        self._thread = threading.Thread(target=self._run, name="mqtt-publisher", daemon=True)
        self._client = self._make_client()
        # Opens the connection (from this publisher's thread), watches it, reopens it.
        self.link = Link(
            self._client,
            settings,
            client_id=client_id,
            on_lost=self._handle_disconnect,
            on_fatal=on_fatal,
        )

    # -- called from other threads -------------------------------------------------------------

    def start(self) -> None:
        """Start connecting (in the background, retried until it succeeds) and publishing."""
        # Only stores where to connect: the publisher thread opens the connection (Link).
        self._client.connect_async(
            self.settings.host, self.settings.port, keepalive=int(self.settings.keepalive)
        )
        self._wake.set()
        self._thread.start()

    def notify(self) -> None:
        """New rows were committed."""
        self._wake.set()

    def rows_in_flight(self) -> set[int]:
        """Outbox rows sent and not yet acknowledged (a copy, safe from any thread)."""
        return set(self._in_flight_rows)  # one C-level copy under the GIL

    def offer_health(self, report: dict[str, Any]) -> None:
        """Publish this health report when connected (the newest one wins)."""
        self._health = report
        self._wake.set()

    def offer_reply(self, reply: CommandReply) -> None:
        """Publish this reply to a command now if connected, else drop it (from any thread)."""
        self._replies.put(reply)
        self._wake.set()

    def stop(self, timeout: float) -> None:
        """Deliver what the outbox holds for up to `timeout` seconds, then say offline and close.

        Rows not acknowledged by then stay in the outbox for the next start.
        """
        self._stop_deadline = time.monotonic() + timeout
        self._wake.set()
        self._thread.join(timeout + 5)
        self._client.loop_stop()

    # -- paho callbacks (paho's thread): record and wake, nothing else ------------------------

    def _make_client(self) -> mqtt.Client:
        version = mqtt.MQTTv5 if self.settings.version == "5" else mqtt.MQTTv311
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=version,
            # Link reconnects, with jitter, and sees why a connection attempt failed.
            reconnect_on_failure=False,
        )
        # Second line of defence behind guarded(): paho logs a callback's exception instead
        # of letting it end its network thread.
        client.suppress_exceptions = True
        client.max_inflight_messages_set(self.settings.max_inflight)
        if self._tls is not None:
            client.tls_set_context(self._tls)
        if self.settings.username:
            client.username_pw_set(self.settings.username, self._password)
        client.will_set(
            self.topics.status,
            self._status_payload("offline", "connection lost"),
            qos=1,
            retain=True,
        )
        client.on_connect = guarded("on_connect", self._on_connect)
        client.on_disconnect = guarded("on_disconnect", self._on_disconnect)
        client.on_publish = guarded("on_publish", self._on_publish)
        client.on_log = guarded("on_log", self._on_log)
        if self._command_topics is not None:
            client.on_message = guarded("on_message", self._on_message)
            client.on_subscribe = guarded("on_subscribe", self._on_subscribe)
        return client

    def _on_connect(
        self, _client: Any, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        self._events.put(lambda: self._handle_connect(reason))
        self._wake.set()

    def _on_disconnect(
        self, _client: Any, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        self.link.note_disconnect()
        self._events.put(lambda: self._handle_disconnect(reason))
        self._wake.set()

    def _on_log(self, _client: Any, _userdata: Any, level: int, text: str) -> None:
        self.link.note_log(level, text)

    def _on_publish(
        self, _client: Any, _userdata: Any, mid: int, reason: ReasonCode, _props: Any
    ) -> None:
        self._events.put(lambda: self._handle_ack(mid, reason))
        self._wake.set()

    def _on_message(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        assert self._on_command is not None
        properties = message.properties
        response_topic = getattr(properties, "ResponseTopic", None)
        correlation = getattr(properties, "CorrelationData", None)
        self._on_command(
            CommandRequest(
                topic=message.topic,
                payload=bytes(message.payload),
                retained=bool(message.retain),
                response_topic=response_topic if isinstance(response_topic, str) else None,
                correlation_data=bytes(correlation) if correlation is not None else None,
            )
        )

    def _on_subscribe(
        self, _client: Any, _userdata: Any, _mid: int, reasons: list[ReasonCode], _props: Any
    ) -> None:
        refused = [reason for reason in reasons if reason.is_failure]
        if refused:
            self._events.put(lambda: self._handle_subscribe_refused(refused[0]))
            self._wake.set()

    # -- the publisher thread ------------------------------------------------------------------

    def _run(self) -> None:
        disk_failing = False
        offline_reason = "shutdown"
        try:
            while True:
                self._wake.wait(self.link.due_in(0.5))
                self._wake.clear()
                try:
                    self._drain_events()
                    self.link.tend(stopping=self._stop_deadline is not None)
                    self._send_replies()
                    if self._stop_deadline is not None and self._finished():
                        break
                    if self._connected:
                        self._publish_health()
                        self._fill_window()
                except sqlite3.Error as exc:
                    if self._stop_deadline is not None and time.monotonic() >= self._stop_deadline:
                        break
                    # Nothing is lost: unacknowledged rows stay in the file, and rows whose
                    # deletion failed are sent again after the next start.
                    if not disk_failing:
                        log.error(
                            "Cannot read or update the outbox (%s); publishing pauses and is "
                            "retried every %.0f s.",
                            exc,
                            _DISK_RETRY_S,
                        )
                    disk_failing = True
                    time.sleep(_DISK_RETRY_S)
                    continue
                if disk_failing:
                    disk_failing = False
                    log.warning("The outbox is readable again; publishing resumes.")
        except Exception as exc:
            log.exception("The MQTT publisher failed; the agent stops so that it can be restarted.")
            offline_reason = f"publisher failed: {exc!r}"
            if self._on_fatal is not None:
                self._on_fatal(exc)
        finally:
            self._say_offline(offline_reason)

    def _finished(self) -> bool:
        assert self._stop_deadline is not None
        if time.monotonic() >= self._stop_deadline or not self._connected:
            return True
        return not self._in_flight and not self.buffer.unsent_records() and not self._leasable(1)

    def _drain_events(self) -> None:
        while True:
            try:
                self._events.get_nowait()()
            except queue.Empty:
                return

    def _handle_connect(self, reason: ReasonCode) -> None:
        if reason.is_failure:
            self.stats.failures[f"connect: {reason}"] += 1
            if self.stats.failures[f"connect: {reason}"] == 1:
                log.error(
                    "The broker %s:%d refused the connection: %s. Samples are kept in the outbox; "
                    "check the MQTT credentials and the client id.",
                    self.settings.host,
                    self.settings.port,
                    reason,
                )
            return
        self._connected = True
        self.stats.connected = True
        self.stats.connects += 1
        self.link.up()
        log.log(
            logging.DEBUG if self.link.quiet else logging.INFO,
            "Connected to the MQTT broker %s:%d as %s (%s).",
            self.settings.host,
            self.settings.port,
            self._client_id,
            "first connection" if self.stats.connects == 1 else f"reconnect {self.stats.connects}",
        )
        self._client.publish(
            self.topics.status, self._status_payload("online", None), qos=1, retain=True
        )
        self._subscribe_commands()

    def _subscribe_commands(self) -> None:
        """On every connection: the agent's sessions end with the connection (MQTT 5 session
        expiry 0, 3.1.1 clean session), so the subscription does too."""
        if self._command_topics is None:
            return
        if self.settings.version == "5":
            # No Local: the agent never receives its own replies, even when a request names
            # one of its command topics as the response topic.
            self._client.subscribe(
                self._command_topics, options=SubscribeOptions(qos=1, noLocal=True)
            )
        else:
            self._client.subscribe(self._command_topics, qos=1)

    def _handle_subscribe_refused(self, reason: ReasonCode) -> None:
        if not self._subscribe_refused:
            log.warning(
                "The broker refused the subscription to %s (%s): remote commands do not reach "
                "this agent; check the broker's ACL for the agent's user.",
                self._command_topics,
                reason,
            )
        self._subscribe_refused = True

    def _send_replies(self) -> None:
        """Publish the replies to commands that are waiting, ahead of data; without a
        connection they are dropped (a late reply is of no use to the sender)."""
        while True:
            try:
                reply = self._replies.get_nowait()
            except queue.Empty:
                return
            if not self._connected:
                self.stats.replies_dropped += 1
                continue
            properties = None
            if reply.correlation_data is not None and self.settings.version == "5":
                properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                properties.CorrelationData = reply.correlation_data
            try:
                info = self._client.publish(
                    reply.topic, reply.payload, qos=1, retain=False, properties=properties
                )
                rc = info.rc
            except ValueError as exc:  # paho refuses the topic or the payload
                rc, problem = MQTTErrorCode.MQTT_ERR_INVAL, str(exc)
            else:
                problem = mqtt.error_string(rc)
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self.stats.replies_sent += 1
                continue
            self.stats.replies_dropped += 1
            if problem not in self._reply_failures:
                self._reply_failures.add(problem)
                log.warning(
                    "Could not publish the reply to a command on %s (%s); the reply is dropped "
                    "and counted in health (commands.replies_dropped).",
                    reply.topic,
                    problem,
                )

    def _handle_disconnect(self, reason: ReasonCode | str) -> None:
        log_it = self.link.down(reason, was_up=self._connected)
        if not self._connected:
            return
        self._connected = False
        self.stats.connected = False
        log.log(
            logging.WARNING if log_it else logging.DEBUG,
            "Lost the connection to the MQTT broker %s:%d (%s); %d messages in flight will be "
            "sent again and new samples wait in the outbox.",
            self.settings.host,
            self.settings.port,
            reason,
            len(self._in_flight),
        )

    def _handle_ack(self, mid: int, reason: ReasonCode) -> None:
        flight = self._in_flight.pop(mid, None)
        if flight is None:
            return  # status or health
        self._in_flight_rows.difference_update(flight.row_ids)
        self.stats.in_flight = len(self._in_flight)
        if reason.is_failure:
            self.stats.messages_failed += 1
            self.stats.failures[str(reason)] += 1
            if reason.value in _NEVER_ACCEPTED:
                self._bury(flight, _NEVER_ACCEPTED[reason.value])
                return
            if self.stats.failures[str(reason)] == 1:
                log.error(
                    "The broker rejected a message (%s); its %d records stay in the outbox and "
                    "are offered again every %.0f s.",
                    reason,
                    flight.records,
                    _REJECT_BACKOFF_S,
                )
            self._lease_again([*flight.row_ids, *self.buffer.rejected(flight.entries)])
            self._hold_until = time.monotonic() + _REJECT_BACKOFF_S
            return
        self.stats.messages_sent += 1
        self.stats.records_sent += flight.records
        if flight.entries:
            self.buffer.acknowledged(flight.entries)
        if flight.row_ids:
            self.outbox.delete(flight.row_ids)

    def _bury(self, flight: _InFlight, reason: str) -> None:
        """Move a message's records to the dead-letter table; the rest keeps flowing."""
        committed, uncommitted = self.buffer.forget(flight.entries)
        if uncommitted:
            try:
                committed += self.outbox.append(uncommitted)
            except sqlite3.Error:
                self.buffer.add(uncommitted)  # offered again, buried when the disk works
                raise
        buried = self.outbox.bury([*flight.row_ids, *committed], reason, now_ms())
        first = reason not in self._buried_reasons
        self._buried_reasons.add(reason)
        self.stats.dead_letter_records += buried
        if first:
            log.error(
                "The broker refuses messages on %s (%s): their records go to the dead-letter "
                "table of the outbox (`shopfloor outbox CONFIG stats` shows them; fix the "
                "broker's ACL or the topic, then `shopfloor outbox CONFIG replay-dead`).",
                self.topics.root,
                reason,
            )

    def _backlog_allows(self, size: int) -> bool:
        """The drain-rate limit: a token bucket of one second's worth of messages and bytes."""
        messages_rate = self.settings.backlog_messages_per_s
        bytes_rate = self.settings.backlog_bytes_per_s
        if not messages_rate and not bytes_rate:
            return True
        now = time.monotonic()
        elapsed, self._bucket_at = now - self._bucket_at, now
        if messages_rate:
            # At least one message's worth, or a rate below 1/s would never send.
            self._message_tokens = min(
                max(messages_rate, 1.0), self._message_tokens + elapsed * messages_rate
            )
        if bytes_rate:
            self._byte_tokens = min(bytes_rate, self._byte_tokens + elapsed * bytes_rate)
        if (messages_rate and self._message_tokens < 1) or (
            bytes_rate and self._byte_tokens < min(size, bytes_rate)
        ):
            return False
        self._message_tokens -= 1
        self._byte_tokens -= size
        return True

    def _lease_again(self, row_ids: Sequence[int]) -> None:
        """Move the backlog cursor back so these rows are leased and sent again."""
        if row_ids:
            self._cursor = min(self._cursor, min(row_ids) - 1)

    def _leasable(self, limit: int) -> list[StoredRow]:
        rows = self.outbox.lease(self._cursor, limit + len(self._in_flight_rows))
        return [
            row
            for row in rows
            if row.id not in self._in_flight_rows and not self.buffer.is_live(row.id)
        ][:limit]

    def _fill_window(self) -> None:
        """Live records first, then the backlog from the outbox file, oldest first."""
        while len(self._in_flight) < self.settings.max_inflight:
            if time.monotonic() < self._hold_until:
                return
            live = self.buffer.take_pending()
            if live:
                messages = self._pack(live)
                for index, (kind, entries) in enumerate(messages):
                    if not self._publish(kind, entries):
                        unsent = [e for _, rest in messages[index:] for e in rest]
                        self._lease_again(self.buffer.rejected(unsent))
                        return
                continue
            rows = self._leasable(_LEASE_ROWS_PER_SLOT * self.settings.max_inflight)
            if not rows:
                return
            backlog = self._pack(rows)
            # A quarter of the window stays free for live data while a backlog drains, so
            # new samples never wait behind an outage's worth of old ones.
            backlog_window = self.settings.max_inflight - max(1, self.settings.max_inflight // 4)
            for index, (kind, group) in enumerate(backlog):
                full = len(self._in_flight) >= max(backlog_window, 1)
                if full or not self._backlog_allows(sum(utf8_size(r.body) for r in group)):
                    # Window full or the drain rate reached: lease the rest again later
                    # (published rows are skipped then).
                    first_unsent = min(row.id for _, rest in backlog[index:] for row in rest)
                    self._cursor = max(self._cursor, first_unsent - 1)
                    return
                if not self._publish(kind, group):
                    return
            self._cursor = max(self._cursor, rows[-1].id)

    def _pack(self, items: Sequence[PackableT]) -> list[tuple[str, list[PackableT]]]:
        """Group items by topic into messages no larger than the payload cap, oldest first."""
        limit = max_message_body(self.settings.max_payload_bytes)
        open_messages: dict[tuple[str, str], tuple[int, list[PackableT], int]] = {}
        done: list[tuple[int, str, list[PackableT]]] = []
        for index, item in enumerate(items):
            key = (item.kind, item.topic)
            first, group, size = open_messages.get(key, (index, [], 0))
            item_size = utf8_size(item.body)
            if group and size + item_size > limit:
                done.append((first, item.kind, group))
                first, group, size = index, [], 0
            group.append(item)
            open_messages[key] = (first, group, size + item_size)
        done.extend((first, kind, group) for (kind, _), (first, group, _) in open_messages.items())
        done.sort(key=lambda message: message[0])
        return [(kind, group) for _, kind, group in done]

    def _publish(self, kind: str, items: Sequence[Packable]) -> bool:
        self._seq += 1
        historical = all(isinstance(item, StoredRow) for item in items)
        payload = message_payload(
            self.topics.agent_id, self.session, self._seq, kind, items, historical=historical
        )
        info = self._client.publish(
            self.topics.for_item(items[0]), payload, qos=self.settings.qos, retain=False
        )
        row_ids = tuple(item.id for item in items if isinstance(item, StoredRow))
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            # paho did not take the message at all (queue full, payload too large): retry later.
            self._seq -= 1
            self.stats.failures[f"publish: {mqtt.error_string(info.rc)}"] += 1
            self._lease_again(row_ids)
            self._hold_until = time.monotonic() + _REJECT_BACKOFF_S
            return False
        entries = tuple(item for item in items if isinstance(item, LiveEntry))
        self._in_flight[info.mid] = _InFlight(row_ids, entries, sum(item.n for item in items))
        self._in_flight_rows.update(row_ids)
        self.stats.in_flight = len(self._in_flight)
        return True

    def _publish_health(self) -> None:
        report, self._health = self._health, None
        if report is not None:
            self._client.publish(self.topics.health, dumps(report), qos=0, retain=False)

    def _say_offline(self, reason: str) -> None:
        if self._connected:
            info = self._client.publish(
                self.topics.status, self._status_payload("offline", reason), qos=1, retain=True
            )
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=2)
        self._client.disconnect()

    def _status_payload(self, state: str, reason: str | None) -> str:
        status: dict[str, Any] = {"state": state, "session": self.session, "ts": now_ms()}
        if reason:
            status["reason"] = reason
        return dumps(status)
