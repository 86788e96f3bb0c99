"""The OPC UA driver, polling mode: all of a device's variables in one Read request per interval.

asyncua is imported by this module only, and this module only when a device uses OPC UA: it
costs about 30 MiB of memory that a Modbus-only gateway never pays.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, NoReturn

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.ua.uaerrors import UaError

from agent.model import Quality, Sample, Value, now_ms
from agent.settings import OpcUaDevice, OpcUaPoint
from drivers.base import Health, LinkState, NotConnected, Unsupported

__all__ = ["OpcUaDriver"]

# asyncua logs every lost connection with a traceback; the device task logs it once.
logging.getLogger("asyncua").setLevel(logging.CRITICAL)

# A session the server keeps for a vanished client: short, so that a restarted agent does not
# leave sessions (and later subscriptions) behind for the default hour.
_SESSION_TIMEOUT_MS = 30_000
_SERVER_STATE = ua.NodeId.from_string("i=2259")  # Server.ServerStatus.State


class OpcUaDriver:
    """Reads one OPC UA server's variables. Construction does no I/O."""

    def __init__(self, device: OpcUaDevice) -> None:
        self.device = device
        self._client: Client | None = None
        self._nodes: dict[str, Node | str] = {}  # point id -> node, or why it cannot be read
        self._health = Health(since_ms=now_ms())
        # Subscription mode: changes the server reported since the last read(), and why the
        # subscription stopped if it did.
        self._changes: list[Sample] = []
        self._points_by_node: dict[Any, OpcUaPoint] = {}
        self._subscription_broken: str | None = None

    @property
    def endpoint(self) -> str:
        """The server's URL, for messages."""
        return self.device.endpoint

    async def connect(self) -> None:
        """Open a session and resolve every point's node id (namespace URIs included)."""
        await self.close()
        self._health.set_state(LinkState.CONNECTING)
        client = Client(self.device.endpoint, timeout=self.device.timeout)
        client.session_timeout = _SESSION_TIMEOUT_MS
        try:
            await asyncio.wait_for(client.connect(), self.device.timeout * 2)
        except (OSError, TimeoutError, UaError) as exc:
            error = f"cannot open a session with {self.endpoint}: {_describe(exc)}"
            self._health.set_state(LinkState.DISCONNECTED, error)
            raise NotConnected(error) from None
        self._client = client
        self._nodes = {}
        for point in self.device.points:
            self._nodes[point.id] = await self._resolve(client, point)
        if self.device.mode == "subscription":
            try:
                await self._subscribe(client)
            except (OSError, TimeoutError, UaError, ConnectionError) as exc:
                await self._lost(f"cannot subscribe on {self.endpoint}: {_describe(exc)}")
        self._health.set_state(LinkState.CONNECTED)

    async def _subscribe(self, client: Client) -> None:
        """One subscription for all points; the server reports changes, the agent keeps them
        until the device task's next read()."""
        self._changes = []
        self._subscription_broken = None
        self._points_by_node = {}
        nodes: list[Node] = []
        for point in self.device.points:
            node = self._nodes[point.id]
            if isinstance(node, Node):
                nodes.append(node)
                self._points_by_node[node.nodeid] = point
        if not nodes:
            return
        subscription = await client.create_subscription(self.device.interval * 1000, self)
        handles = await subscription.subscribe_data_change(
            nodes, sampling_interval=ua.Double(self.device.interval * 1000)
        )
        results = handles if isinstance(handles, list) else [handles]
        for node, result in zip(nodes, results, strict=True):
            if isinstance(result, ua.StatusCode):
                # Refused (e.g. BadNodeIdUnknown): reported BAD at each read, not streamed.
                point = self._points_by_node.pop(node.nodeid)
                self._nodes[point.id] = _status_name(result)

    def datachange_notification(self, node: Node, _value: Any, data: Any) -> None:
        """asyncua's callback for a changed value: kept for the next read()."""
        point = self._points_by_node.get(node.nodeid)
        if point is not None:
            self._changes.append(self._sample(point, data.monitored_item.Value, now_ms()))

    def status_change_notification(self, status: Any) -> None:
        """asyncua's callback when the server ends the subscription (e.g. it shuts down)."""
        code = getattr(status, "Status", status)
        self._subscription_broken = f"the server ended the subscription: {_status_name(code)}"

    async def _resolve(self, client: Client, point: OpcUaPoint) -> Node | str:
        text = point.node
        if text.startswith("nsu="):
            uri, _, identifier = text[4:].partition(";")
            try:
                index = await client.get_namespace_index(uri)
            except ValueError:
                return f"namespace {uri} is unknown to the server"
            text = f"ns={index};{identifier}"
        return client.get_node(ua.NodeId.from_string(text))

    async def close(self) -> None:
        """Close the session; never raises."""
        client, self._client = self._client, None
        if client is not None:
            # The server may be gone already; there is nothing left to close then.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), self.device.timeout)

    async def read(self, points: Sequence[OpcUaPoint]) -> list[Sample]:
        """Polling: one Read request for all points, each value with its own status and
        timestamp. Subscription: the changes reported since the last call."""
        client = self._client
        if client is None:
            await self._lost("not connected")
        if self.device.mode == "subscription":
            return await self._drain(client, points)
        nodes: list[Node] = []
        readable: list[str] = []
        for point in points:
            node = self._nodes.get(point.id)
            if isinstance(node, Node):
                nodes.append(node)
                readable.append(point.id)
        self._health.requests += 1
        try:
            values = await client.read_attributes(nodes)
        except (OSError, TimeoutError, UaError, ConnectionError) as exc:
            await self._lost(f"connection lost: {_describe(exc)}")
        self._health.reads += 1
        received = now_ms()
        by_point = dict(zip(readable, values, strict=True))
        samples = []
        for point in points:
            data = by_point.get(point.id)
            if data is None:
                reason = str(self._nodes.get(point.id, "not resolved"))
                samples.append(Sample(point.id, None, Quality.BAD, received, reason))
                continue
            samples.append(self._sample(point, data, received))
        if any(sample.quality is Quality.GOOD for sample in samples):
            self._health.last_good_read_ms = received
        return samples

    async def _drain(self, client: Client, points: Sequence[OpcUaPoint]) -> list[Sample]:
        if self._subscription_broken is not None:
            await self._lost(self._subscription_broken)
        changes, self._changes = self._changes, []
        if not changes:
            # Nothing changed, or the link is silently dead: one small read tells them apart.
            try:
                await client.read_attributes([client.get_node(_SERVER_STATE)])
            except (OSError, TimeoutError, UaError, ConnectionError) as exc:
                await self._lost(f"connection lost: {_describe(exc)}")
        received = now_ms()
        self._health.reads += 1
        if changes:
            self._health.last_good_read_ms = received
        refused = [
            Sample(p.id, None, Quality.BAD, received, node)
            for p in points
            if isinstance(node := self._nodes.get(p.id), str)
        ]
        return changes + refused

    def _sample(self, point: OpcUaPoint, data: ua.DataValue, received: int) -> Sample:
        status = data.StatusCode if data.StatusCode is not None else ua.StatusCode()
        ts = received
        if data.SourceTimestamp is not None:
            source = int(data.SourceTimestamp.replace(tzinfo=dt.UTC).timestamp() * 1000)
            if abs(source - received) <= self.device.max_clock_skew * 1000:
                ts = source
        if status.is_bad():
            self._health.read_errors += 1
            return Sample(point.id, None, Quality.BAD, ts, _status_name(status))
        value = _plain(data.Value.Value if data.Value is not None else None)
        if status.is_uncertain():
            return Sample(point.id, value, Quality.UNCERTAIN, ts, _status_name(status))
        return Sample(point.id, value, Quality.GOOD, ts)

    def subscribe(self, points: Sequence[OpcUaPoint]) -> AsyncIterator[Sample]:
        """Changes come through read() in subscription mode (the device task drains them)."""
        raise Unsupported("use mode: subscription; the device task reads the changes")

    async def write(self, point: OpcUaPoint, value: Value) -> None:
        """Writes come with the rest of the OPC UA work (issue 4)."""
        raise Unsupported("writing to OPC UA variables is not supported yet")

    def health(self) -> Health:
        """State, since when, last error and counters."""
        return self._health

    async def _lost(self, reason: str) -> NoReturn:
        await self.close()
        self._health.set_state(LinkState.DISCONNECTED, reason)
        raise NotConnected(reason)


def _status_name(status: ua.StatusCode) -> str:
    # The low 16 bits carry info bits that hide the name (e.g. "Good" for GoodOverload).
    return str(ua.StatusCode(ua.UInt32(status.value & 0xFFFF0000)).name)


def _plain(value: Any) -> Any:
    """An OPC UA value as JSON can carry it: dates as ISO 8601 UTC, bytes as base64."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
