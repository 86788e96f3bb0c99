"""The OPC UA driver: polling (one Read request for all of a device's variables per interval)
or subscription (the server samples, filters and reports changes; the agent forwards them).

Every connect opens a new session and looks every point up again: namespace URIs and browse
paths are resolved to node ids, data types are read (for enumerations and writes). A point whose
node the server does not know is BAD on its own and looked up again every `resolve_retry`.

asyncua is imported by this module only, and this module only when a device uses OPC UA: it
costs about 30 MiB of memory that a Modbus-only gateway never pays.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.common.subscription import DataChangeEvent, StatusChangeEvent, Subscription
from asyncua.common.ua_utils import data_type_to_variant_type, get_base_data_type
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from agent.model import Quality, Sample, Value, now_ms
from agent.settings import OpcUaDevice, OpcUaPoint
from drivers.base import DriverError, Health, LinkState, NotConnected, Unsupported, WriteRefused
from drivers.opcua.security import Pki, SecuritySetupError, prepare_client

__all__ = ["OpcUaDriver", "WriteRefused", "status_name"]

log = logging.getLogger(__name__)

# asyncua logs every lost connection with a traceback; the device task logs it once.
logging.getLogger("asyncua").setLevel(logging.CRITICAL)

# A session the server keeps for a vanished client: short, so that a restarted agent does not
# leave sessions (and their subscriptions) behind for the default hour.
_SESSION_TIMEOUT_MS = 30_000
_SERVER_STATE = ua.NodeId.from_string("i=2259")  # Server.ServerStatus.State
_ENUMERATION = 29  # the Enumeration data type, base of every enumeration
# Changes kept between two reads at most; more means the device task stopped reading.
_MAX_PENDING_CHANGES = 200_000
_COMMUNICATION_ERRORS = (OSError, TimeoutError, UaError, ConnectionError)
_SESSION_GONE = (StatusCodes.BadSessionIdInvalid, StatusCodes.BadSessionClosed)
_FLOAT_MAX = 3.4028234663852886e38
# Login and certificate refusals: the user must change something, retrying does not help.
_ACCESS_DENIED = {
    StatusCodes.BadUserAccessDenied,
    StatusCodes.BadIdentityTokenInvalid,
    StatusCodes.BadIdentityTokenRejected,
}
_CERTIFICATE_REFUSED = {
    StatusCodes.BadSecurityChecksFailed,
    StatusCodes.BadCertificateUntrusted,
    StatusCodes.BadCertificateInvalid,
    StatusCodes.BadCertificateUriInvalid,
    StatusCodes.BadCertificateTimeInvalid,
    StatusCodes.BadCertificateRevoked,
}
_INTEGER_RANGES = {
    ua.VariantType.SByte: (-(2**7), 2**7 - 1),
    ua.VariantType.Byte: (0, 2**8 - 1),
    ua.VariantType.Int16: (-(2**15), 2**15 - 1),
    ua.VariantType.UInt16: (0, 2**16 - 1),
    ua.VariantType.Int32: (-(2**31), 2**31 - 1),
    ua.VariantType.UInt32: (0, 2**32 - 1),
    ua.VariantType.Int64: (-(2**63), 2**63 - 1),
    ua.VariantType.UInt64: (0, 2**64 - 1),
}


class NodeNotFound(DriverError):
    """A browse path or namespace URI does not lead to a node on this server."""


@dataclass(slots=True)
class _Variable:
    """A resolved point: its node, and what its data type says about its values."""

    node: Node
    data_type: ua.NodeId
    enum_names: dict[int, str] | None = None  # an enumeration's value names
    variant_type: ua.VariantType | None = None  # found at the first write


class OpcUaDriver:
    """Reads one OPC UA server's variables. Construction does no I/O."""

    def __init__(self, device: OpcUaDevice, pki: Pki | None = None) -> None:
        self.device = device
        self.pki = pki or Pki(Path("pki"))
        self._client: Client | None = None
        # point id -> its resolved variable, or why it cannot be read
        self._variables: dict[str, _Variable | str] = {}
        self._next_resolve = math.inf
        self._health = Health(since_ms=now_ms())
        self._refusals: dict[str, str] = {}  # point id -> refusal last logged
        # Subscription mode
        self._subscription: Subscription | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._points_by_handle: dict[int, OpcUaPoint] = {}
        self._monitored_item_ids: dict[str, int] = {}  # point id -> the server's item id
        self._next_handle = 1
        self._changes: deque[Sample] = deque()
        self._subscription_id: int | None = None
        self._subscribed_at = 0.0
        self._keepalive_s = math.inf  # the server publishes at least this often
        self._silence_limit = math.inf  # seconds without any publication: the link is dead
        self._last_probe = 0.0
        self._subscription_broken: str | None = None
        # Set when the server's notifications arrive: a read() that finds nothing waits for
        # them, so changes are forwarded as they come instead of up to an interval later.
        self._notified = asyncio.Event()
        self._last_change: dict[str, Sample] = {}
        self._last_sent_ms: dict[str, int] = {}
        # The server's operation limits (0: none): requests are split to fit them.
        self._max_nodes_per_read = 0
        self._max_monitored_items_per_call = 0

    @property
    def endpoint(self) -> str:
        """The server's URL, for messages."""
        return self.device.endpoint

    # -- session -------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open a (secure) session, resolve every point and, in subscription mode, subscribe."""
        await self.close()
        self._health.set_state(LinkState.CONNECTING)
        timeout = self.device.timeout
        # asyncua's own watchdog reads the server state every `watchdog_intervall` with that
        # as its timeout: never shorter than the device's timeout, or a slow link flaps.
        client = Client(self.device.endpoint, timeout=timeout, watchdog_intervall=max(1.0, timeout))
        client.session_timeout = _SESSION_TIMEOUT_MS
        session_open = False
        try:
            await prepare_client(client, self.device, self.pki)
            # Hello, secure channel, CreateSession, ActivateSession: each bounded by `timeout`.
            await asyncio.wait_for(client.connect(), timeout * 6)
            session_open = True
            self._variables = {}
            await self._read_limits(client)
            await self._resolve(client, self.device.points)
            if self.device.mode == "subscription":
                await self._subscribe(client)
        except BaseException as exc:
            self._stop_consumer()
            await _dispose(client, timeout)
            if isinstance(exc, SecuritySetupError):
                self._down(str(exc))
            if isinstance(exc, UaStatusCodeError) and not session_open:
                self._down(self._refusal(exc))
            if isinstance(exc, _COMMUNICATION_ERRORS):
                what = "lost while setting up" if session_open else "cannot open"
                self._down(f"{what} a session with {self.endpoint}: {_describe(exc)}")
            raise
        self._client = client
        self._health.set_state(LinkState.CONNECTED)

    async def _read_limits(self, client: Client) -> None:
        """The server's MaxNodesPerRead and MaxMonitoredItemsPerCall, where it says them."""
        nodes = [client.get_node(ua.NodeId(ua.Int32(i))) for i in (11705, 11714)]
        limits = []
        for data in await client.read_attributes(nodes):
            value = data.Value.Value if data.Value is not None else None
            good = data.StatusCode is None or data.StatusCode.is_good()
            limits.append(int(value) if good and isinstance(value, int) else 0)
        self._max_nodes_per_read, self._max_monitored_items_per_call = limits

    async def _read_values(
        self, client: Client, nodes: Sequence[Node], attribute: AttributeIds = AttributeIds.Value
    ) -> list[ua.DataValue]:
        """One Read request, or as many as the server's MaxNodesPerRead asks for; none for no
        nodes (servers answer an empty Read with Bad_NothingToDo)."""
        values: list[ua.DataValue] = []
        for chunk in _chunks(nodes, self._max_nodes_per_read):
            values += await client.read_attributes(chunk, attribute)
        return values

    def _refusal(self, exc: UaStatusCodeError) -> str:
        code = exc.code
        name = status_name(ua.StatusCode(code))
        if code in _ACCESS_DENIED:
            who = self.device.user.username if self.device.user else None
            login = f"user '{who}'" if who else "the agent's login"
            return (
                f"{self.endpoint} refused {login} ({name}): check the user name and password "
                "or user certificate"
            )
        if code in _CERTIFICATE_REFUSED:
            mine = self.device.security.certificate or self.pki.own_certificate
            return (
                f"{self.endpoint} did not accept the agent's certificate ({name}): trust {mine} "
                "on the server (servers usually list it under rejected certificates)"
            )
        return f"{self.endpoint} refused the session: {name}"

    async def close(self) -> None:
        """Close the session (the server deletes its subscriptions with it); never raises."""
        self._stop_consumer()
        self._subscription = None
        # A write racing a reconnect must not use a node of the old session.
        self._variables = {
            point_id: v for point_id, v in self._variables.items() if isinstance(v, str)
        }
        client, self._client = self._client, None
        if client is not None:
            await _dispose(client, self.device.timeout)

    def _stop_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.cancel()

    def health(self) -> Health:
        """State, since when, last error and counters."""
        return self._health

    def _down(self, reason: str) -> NoReturn:
        self._health.set_state(LinkState.DISCONNECTED, reason)
        raise NotConnected(reason)

    async def _lost(self, reason: str) -> NoReturn:
        await self.close()
        self._down(reason)

    # -- resolving nodes -----------------------------------------------------------------------

    async def _resolve(self, client: Client, points: Sequence[OpcUaPoint]) -> list[OpcUaPoint]:
        """Look the points' nodes up; returns those that resolved. One request for the
        namespace table, one Read of every node's data type, a few Browse requests per browse
        path level and per enumeration type."""
        namespaces: list[str] | None = None
        children: dict[ua.NodeId, list[ua.ReferenceDescription]] = {}
        found: dict[str, Node] = {}
        for point in points:
            try:
                if point.node.startswith("/"):
                    found[point.id] = await _browse_path(client, point.node, children)
                    continue
                text = point.node
                if text.startswith("nsu="):
                    if namespaces is None:
                        namespaces = await client.get_namespace_array()
                    uri, _, identifier = text[4:].partition(";")
                    if uri not in namespaces:
                        raise NodeNotFound(f"namespace {uri} is unknown to the server")
                    text = f"ns={namespaces.index(uri)};{identifier}"
                found[point.id] = client.get_node(_node_id(text))
            except NodeNotFound as exc:
                self._variables[point.id] = str(exc)
        ids = list(found)
        types = await self._read_values(client, [found[i] for i in ids], AttributeIds.DataType)
        enums: dict[ua.NodeId, dict[int, str] | None] = {}
        by_id = {point.id: point for point in points}
        resolved = []
        for point_id, data in zip(ids, types, strict=True):
            status = data.StatusCode
            if status is not None and status.is_bad():
                self._variables[point_id] = status_name(status)
                continue
            data_type = data.Value.Value if data.Value is not None else None
            if not isinstance(data_type, ua.NodeId):
                self._variables[point_id] = "the node is not a variable"
                continue
            if data_type not in enums:
                try:
                    enums[data_type] = await _enumeration_names(client, data_type)
                except UaStatusCodeError as exc:
                    if exc.code in _SESSION_GONE:
                        raise
                    enums[data_type] = None  # a type the server describes oddly: plain values
                except UaError:
                    enums[data_type] = None
            self._variables[point_id] = _Variable(found[point_id], data_type, enums[data_type])
            resolved.append(by_id[point_id])
        unknown = any(isinstance(v, str) for v in self._variables.values())
        self._next_resolve = time.monotonic() + self.device.resolve_retry if unknown else math.inf
        return resolved

    async def _resolve_again(self, client: Client) -> None:
        """Look up, again, the points whose node was unknown: a PLC program may be downloaded
        with the missing tags at any time."""
        if time.monotonic() < self._next_resolve:
            return
        missing = [p for p in self.device.points if isinstance(self._variables.get(p.id), str)]
        found = await self._resolve(client, missing)
        if found and self.device.mode == "subscription" and self._subscription is not None:
            await self._monitor(self._subscription, found)
        for point in found:
            if isinstance(self._variables.get(point.id), _Variable):
                log.info("Point %s was found on %s again.", point.id, self.endpoint)
                self._refusals.pop(point.id, None)

    def _reason(self, point: OpcUaPoint) -> str:
        """Why a point has no value; logged once per point and reason."""
        reason = str(self._variables.get(point.id, "not resolved"))
        if self._refusals.get(point.id) != reason:
            self._refusals[point.id] = reason
            log.warning(
                "Point %s (%s) cannot be read from %s: %s. It is reported BAD and looked up "
                "again every %gs.",
                point.id,
                point.node,
                self.endpoint,
                reason,
                self.device.resolve_retry,
            )
        return reason

    # -- reading -------------------------------------------------------------------------------

    async def read(self, points: Sequence[OpcUaPoint]) -> list[Sample]:
        """Polling: one Read request for all points, each value with its own status and
        timestamp. Subscription: the changes reported since the last call."""
        client = self._client
        if client is None:
            await self._lost("not connected")
        try:
            await self._resolve_again(client)
        except _COMMUNICATION_ERRORS as exc:
            await self._lost(f"connection lost: {_describe(exc)}")
        if self.device.mode == "subscription":
            return await self._drain(client, points)
        readable = [p for p in points if isinstance(self._variables.get(p.id), _Variable)]
        nodes = [self._variable(p).node for p in readable]
        self._health.requests += 1
        try:
            values = await self._read_values(client, nodes)
        except _COMMUNICATION_ERRORS as exc:
            await self._lost(f"connection lost: {_describe(exc)}")
        self._health.reads += 1
        received = now_ms()
        by_point = {p.id: data for p, data in zip(readable, values, strict=True)}
        samples = []
        for point in points:
            data = by_point.get(point.id)
            if data is None:
                samples.append(Sample(point.id, None, Quality.BAD, received, self._reason(point)))
                continue
            samples.append(self._sample(point, data, received))
        if any(sample.quality is Quality.GOOD for sample in samples):
            self._health.last_good_read_ms = received
        return samples

    def _variable(self, point: OpcUaPoint) -> _Variable:
        variable = self._variables[point.id]
        assert isinstance(variable, _Variable)
        return variable

    def _sample(self, point: OpcUaPoint, data: ua.DataValue, received: int) -> Sample:
        status = data.StatusCode if data.StatusCode is not None else ua.StatusCode()
        ts = received
        source_time = data.SourceTimestamp
        if source_time is not None:
            if source_time.tzinfo is None:  # asyncua gives UTC, aware or not
                source_time = source_time.replace(tzinfo=dt.UTC)
            source = int(source_time.timestamp() * 1000)
            if abs(source - received) <= self.device.max_clock_skew * 1000:
                ts = source
        if status.value == 0 and data.Value is not None:
            value = data.Value.Value
            if type(value) is float or type(value) is int or type(value) is bool:
                # The common case, kept short: thousands of values a second on a gateway.
                variable = self._variables.get(point.id)
                if not isinstance(variable, _Variable) or variable.enum_names is None:
                    return Sample(point.id, value, Quality.GOOD, ts)
        if status.is_bad():
            self._health.read_errors += 1
            if status.value & 0xFFFF0000 == StatusCodes.BadNodeIdUnknown:
                # Deleted on the server: looked up again later, like a node never found.
                self._variables[point.id] = status_name(status)
                self._next_resolve = min(
                    self._next_resolve, time.monotonic() + self.device.resolve_retry
                )
            return Sample(point.id, None, Quality.BAD, ts, status_name(status))
        value = _plain(data.Value.Value if data.Value is not None else None)
        quality, reason = Quality.GOOD, None
        if status.is_uncertain():
            quality, reason = Quality.UNCERTAIN, status_name(status)
        variable = self._variables.get(point.id)
        names = variable.enum_names if isinstance(variable, _Variable) else None
        if names is not None and point.enum_as == "name" and isinstance(value, int):
            if value in names:
                value = names[value]
            else:
                quality, reason = Quality.UNCERTAIN, f"{value} is not a value of the enumeration"
        return Sample(point.id, value, quality, ts, reason)

    # -- subscription mode ---------------------------------------------------------------------

    async def _subscribe(self, client: Client) -> None:
        """One subscription for all points, with the keep-alive the device asks for."""
        self._changes = deque()
        self._subscription_broken = None
        self._points_by_handle = {}
        self._monitored_item_ids = {}
        self._last_change = {}
        self._last_sent_ms = {}
        self._next_handle = 1
        interval_ms = self.device.interval * 1000
        keepalive_count = max(1, math.ceil(self.device.keepalive / self.device.interval))
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = interval_ms
        params.RequestedMaxKeepAliveCount = keepalive_count
        # The server keeps a subscription nobody asks for this many intervals: at least three
        # keep-alives (the standard's minimum) and the session's lifetime.
        params.RequestedLifetimeCount = max(
            3 * keepalive_count, math.ceil(_SESSION_TIMEOUT_MS / interval_ms)
        )
        params.PublishingEnabled = True
        # Iterator mode: notifications are queued, not dispatched as a task each.
        subscription = await client.create_subscription(params, None, queue_maxsize=0)
        self._subscription = subscription
        self._consumer = asyncio.create_task(self._consume(subscription))
        await self._keep_alive_as_configured(subscription)
        readable = [p for p in self.device.points if isinstance(self._variables[p.id], _Variable)]
        if readable:
            await self._monitor(subscription, readable)

    async def _keep_alive_as_configured(self, subscription: Subscription) -> None:
        """Set the keep-alive for the publishing interval the server granted (a server may
        revise it, and asyncua then picks a keep-alive of its own), and take the silence
        limit from what the server finally says."""
        interval_ms = float(subscription.parameters.RequestedPublishingInterval)
        keepalive_count = max(1, math.ceil(self.device.keepalive * 1000 / interval_ms))
        self._subscription_id = subscription.subscription_id
        self._subscribed_at = time.monotonic()
        if subscription.parameters.RequestedMaxKeepAliveCount == keepalive_count:
            # As asked: nothing to change (a change would delay the first publication).
            self._keepalive_s = keepalive_count * interval_ms / 1000
            self._silence_limit = 3 * self._keepalive_s + self.device.timeout
            return
        update = ua.ModifySubscriptionParameters()
        update.SubscriptionId = subscription.subscription_id
        update.RequestedPublishingInterval = interval_ms
        update.RequestedMaxKeepAliveCount = keepalive_count
        update.RequestedLifetimeCount = max(
            3 * keepalive_count, math.ceil(_SESSION_TIMEOUT_MS / interval_ms)
        )
        update.MaxNotificationsPerPublish = 0
        update.Priority = 0
        result = await subscription.update(update)
        self._keepalive_s = (
            result.RevisedPublishingInterval * result.RevisedMaxKeepAliveCount / 1000
        )
        self._silence_limit = 3 * self._keepalive_s + self.device.timeout

    async def _monitor(self, subscription: Subscription, points: Sequence[OpcUaPoint]) -> None:
        """Create the points' monitored items, each with its sampling, queue and deadband. An
        item left from an earlier try (its node deleted, then found again) is deleted first."""
        known = self._monitored_item_ids
        stale = [known.pop(p.id) for p in points if p.id in known]
        # Forgotten before the await: a late notification of the old item changes nothing.
        ids = {p.id for p in points}
        self._points_by_handle = {
            handle: point for handle, point in self._points_by_handle.items() if point.id not in ids
        }
        if stale:
            with contextlib.suppress(UaError):
                await subscription.unsubscribe(stale)
        requests = []
        handles = []
        for point in points:
            handle = self._next_handle
            self._next_handle += 1
            requests.append(self._monitored_item(point, handle))
            handles.append(handle)
            self._points_by_handle[handle] = point
        results: list[int | ua.StatusCode] = []
        for chunk in _chunks(requests, self._max_monitored_items_per_call):
            results += await subscription.create_monitored_items(chunk)
        for point, handle, result in zip(points, handles, results, strict=True):
            if isinstance(result, ua.StatusCode):
                # Refused (e.g. BadNodeIdUnknown, BadFilterNotAllowed): BAD at each read.
                del self._points_by_handle[handle]
                self._variables[point.id] = status_name(result) + _filter_hint(point, result)
            else:
                self._monitored_item_ids[point.id] = result

    def _monitored_item(self, point: OpcUaPoint, handle: int) -> ua.MonitoredItemCreateRequest:
        item = ua.ReadValueId()
        item.NodeId = self._variable(point).node.nodeid
        item.AttributeId = AttributeIds.Value
        parameters = ua.MonitoringParameters()
        parameters.ClientHandle = handle
        sampling = point.sampling_interval
        if sampling is None:
            sampling = self.device.interval
        parameters.SamplingInterval = sampling * 1000
        parameters.QueueSize = point.queue_size or 1
        parameters.DiscardOldest = True
        if point.server_deadband is not None or point.server_deadband_percent is not None:
            data_filter = ua.DataChangeFilter()
            data_filter.Trigger = ua.DataChangeTrigger.StatusValue
            if point.server_deadband is not None:
                data_filter.DeadbandType = ua.DeadbandType.Absolute
                data_filter.DeadbandValue = point.server_deadband
            else:
                data_filter.DeadbandType = ua.DeadbandType.Percent
                data_filter.DeadbandValue = point.server_deadband_percent or 0.0
            parameters.Filter = data_filter
        request = ua.MonitoredItemCreateRequest()
        request.ItemToMonitor = item
        request.MonitoringMode = ua.MonitoringMode.Reporting
        request.RequestedParameters = parameters
        return request

    async def _consume(self, subscription: Subscription) -> None:
        """Move the server's notifications to the list the next read() takes."""
        async for event in subscription:
            if isinstance(event, DataChangeEvent):
                point = self._points_by_handle.get(event.data.subscription_data.client_handle or 0)
                if point is None:
                    continue
                sample = self._sample(point, event.data.monitored_item.Value, now_ms())
                self._last_change[point.id] = sample
                if len(self._changes) >= _MAX_PENDING_CHANGES:
                    self._changes.popleft()
                    self._health.extra["dropped_changes"] = (
                        self._health.extra.get("dropped_changes", 0) + 1
                    )
                self._changes.append(sample)
                self._notified.set()
            elif isinstance(event, StatusChangeEvent):
                status = event.notification.Status
                self._subscription_broken = (
                    f"the server ended the subscription: {status_name(status)}"
                )
                self._notified.set()

    async def _drain(self, client: Client, points: Sequence[OpcUaPoint]) -> list[Sample]:
        if not self._changes and self._subscription is not None:
            # The device task calls every interval, the server publishes every interval: wait
            # for this interval's publication (the consumer hands over a whole publication
            # before this wakes up), which keeps the two in step.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._notified.wait(), self.device.interval * 0.9)
        self._notified.clear()
        await self._check_subscription()
        changes = list(self._changes)
        self._changes.clear()
        if not changes and time.monotonic() - self._last_probe >= 1.0:
            # Nothing changed, or the link is silently dead: one small read tells them apart
            # (at most once a second, whatever the interval).
            self._last_probe = time.monotonic()
            try:
                await client.read_attributes([client.get_node(_SERVER_STATE)])
            except _COMMUNICATION_ERRORS as exc:
                await self._lost(f"connection lost: {_describe(exc)}")
        received = now_ms()
        self._health.reads += 1
        if changes:
            self._health.last_good_read_ms = received
        for sample in changes:
            self._last_sent_ms[sample.point] = received
        # Heartbeat: the server reports changes only; an unchanged value is confirmed by a
        # live subscription (one that published or sent a keep-alive lately) and sent again
        # with this time.
        last_publication = (
            self._subscription.last_publish_at if self._subscription is not None else None
        )
        confirmed = last_publication is not None and (
            time.monotonic() - last_publication <= 1.5 * self._keepalive_s + self.device.interval
        )
        for point in points if confirmed else ():
            if point.heartbeat is None or point.id not in self._last_change:
                continue
            if not isinstance(self._variables.get(point.id), _Variable):
                continue
            if received - self._last_sent_ms.get(point.id, 0) >= point.heartbeat * 1000:
                changes.append(self._last_change[point.id]._replace(ts=received))
                self._last_sent_ms[point.id] = received
        refused = [
            Sample(p.id, None, Quality.BAD, received, self._reason(p))
            for p in points
            if isinstance(self._variables.get(p.id), str)
        ]
        return changes + refused

    async def _check_subscription(self) -> None:
        """Raise NotConnected when the subscription is no longer what it was: ended by the
        server, silent beyond three keep-alives, recreated by asyncua's watchdog (which does
        that to a silent one), or its notifications no longer read."""
        if self._subscription_broken is not None:
            await self._lost(self._subscription_broken)
        subscription = self._subscription
        if subscription is None:
            return
        if self._consumer is None or self._consumer.done():
            await self._lost("the subscription's notifications are no longer read")
        if subscription.subscription_id != self._subscription_id:
            await self._lost(f"the subscription on {self.endpoint} went silent and was recreated")
        last = subscription.last_publish_at or self._subscribed_at
        silent = time.monotonic() - last
        if silent > self._silence_limit:
            await self._lost(
                f"the subscription on {self.endpoint} has been silent for {silent:.0f}s "
                "(no data and no keep-alive)"
            )

    def subscribe(self, points: Sequence[OpcUaPoint]) -> AsyncIterator[Sample]:
        """Changes come through read() in subscription mode (the device task drains them)."""
        raise Unsupported("use mode: subscription; the device task reads the changes")

    # -- writing -------------------------------------------------------------------------------

    async def write(self, point: OpcUaPoint, value: Value) -> None:
        """Write an engineering value: scale and offset undone, converted to the node's data
        type (an enumeration takes a number or a value name). Raises `ValueError` for a value
        the type cannot hold and `WriteRefused` when the server says no."""
        client = self._client
        if client is None:
            raise NotConnected(f"not connected to {self.endpoint}")
        variable = self._variables.get(point.id)
        if not isinstance(variable, _Variable):
            raise WriteRefused(f"{point.id} cannot be written: {variable or 'not resolved'}")
        try:
            if variable.variant_type is None:
                try:
                    variable.variant_type = await data_type_to_variant_type(
                        client.get_node(variable.data_type)
                    )
                except UaError as exc:
                    if isinstance(exc, UaStatusCodeError) and exc.code in _SESSION_GONE:
                        raise
                    raise WriteRefused(
                        f"cannot tell how to encode a value of {point.id}'s data type "
                        f"{variable.data_type}: {_describe(exc)}"
                    ) from None
            variant = _variant(point, variable, value)
            await variable.node.write_attribute(AttributeIds.Value, ua.DataValue(variant))
        except UaStatusCodeError as exc:
            raise WriteRefused(
                f"{self.endpoint} refused the write to {point.id}: "
                f"{status_name(ua.StatusCode(exc.code))}"
            ) from None
        except _COMMUNICATION_ERRORS as exc:
            await self._lost(f"connection lost during a write: {_describe(exc)}")


async def _browse_path(
    client: Client, path: str, cache: dict[ua.NodeId, list[ua.ReferenceDescription]]
) -> Node:
    """The node at `/Objects/A/B/C`: each segment is a browse name, matched in any namespace
    unless written `2:C`. Children met on the way are kept in `cache` for the other points."""
    node = client.nodes.objects
    walked = "/Objects"
    for segment in path.split("/")[2:]:
        index_text, colon, name = segment.partition(":")
        wanted_index = int(index_text) if colon and index_text.isdigit() else None
        if wanted_index is None:
            name = segment
        if node.nodeid not in cache:
            cache[node.nodeid] = await node.get_references(
                ObjectIds.HierarchicalReferences, ua.BrowseDirection.Forward
            )
        matches = [
            ref
            for ref in cache[node.nodeid]
            if ref.BrowseName.Name == name
            and (wanted_index is None or ref.BrowseName.NamespaceIndex == wanted_index)
        ]
        if not matches:
            known = ", ".join(sorted({r.BrowseName.Name for r in cache[node.nodeid]})[:20])
            raise NodeNotFound(
                f"{walked} has no child named {segment!r} (it has: {known or 'no children'})"
            )
        if len({m.NodeId for m in matches}) > 1:
            indexes = ", ".join(f"{m.BrowseName.NamespaceIndex}:{name}" for m in matches)
            raise NodeNotFound(f"{walked}/{segment} is ambiguous: write one of {indexes}")
        node = client.get_node(matches[0].NodeId)
        walked += f"/{segment}"
    return node


async def _enumeration_names(client: Client, data_type: ua.NodeId) -> dict[int, str] | None:
    """The value names of an enumeration data type; None for any other type."""
    identifier = data_type.Identifier
    if data_type.NamespaceIndex == 0 and isinstance(identifier, int) and identifier <= 25:
        return None  # a built-in type: never an enumeration
    type_node = client.get_node(data_type)
    base = await get_base_data_type(type_node)
    if base.nodeid != ua.NodeId(ua.Int32(_ENUMERATION)):
        return None
    for prop in await type_node.get_properties():
        browse_name = await prop.read_browse_name()
        if browse_name.Name == "EnumStrings":
            texts = await prop.read_value()
            return {i: str(t.Text) for i, t in enumerate(texts or [])}
        if browse_name.Name == "EnumValues":
            values = await prop.read_value()
            return {int(v.Value): str(v.DisplayName.Text) for v in values or []}
    # OPC UA 1.04 servers may describe an enumeration only by its definition.
    definition = await type_node.read_attribute(AttributeIds.DataTypeDefinition)
    fields = getattr(definition.Value.Value if definition.Value else None, "Fields", None)
    return {int(f.Value): str(f.Name) for f in fields or []}


def _variant(point: OpcUaPoint, variable: _Variable, value: Value) -> ua.Variant:
    variant_type = variable.variant_type
    assert variant_type is not None
    if isinstance(value, list):
        return ua.Variant([_scalar(point, variable, v) for v in value], variant_type)
    return ua.Variant(_scalar(point, variable, value), variant_type)


def _scalar(point: OpcUaPoint, variable: _Variable, value: Any) -> Any:
    """One value converted for the node's type, or ValueError saying why it cannot be."""
    kind = variable.variant_type
    if variable.enum_names is not None and isinstance(value, str):
        by_name = {name: number for number, name in variable.enum_names.items()}
        if value not in by_name:
            raise ValueError(
                f"{value!r} is not a value of {point.id}'s enumeration: "
                f"{', '.join(variable.enum_names.values())}"
            )
        return by_name[value]
    scaled = point.scale != 1 or point.offset != 0
    if scaled and isinstance(value, int | float) and not isinstance(value, bool):
        value = (value - point.offset) / point.scale
    if kind == ua.VariantType.Boolean:
        if isinstance(value, bool) or value in (0, 1):
            return bool(value)
        raise ValueError(f"{value!r} is not a Boolean for {point.id}: use true or false")
    if kind in _INTEGER_RANGES:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{value!r} is not a number for {point.id}")
        if not math.isfinite(value) or value != int(value):
            raise ValueError(f"{point.id} holds whole numbers ({kind.name}); got {value!r}")
        low, high = _INTEGER_RANGES[kind]
        if not low <= int(value) <= high:
            raise ValueError(f"{value!r} is out of the range of {kind.name} ({low}..{high})")
        return int(value)
    if kind in (ua.VariantType.Float, ua.VariantType.Double):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{value!r} is not a number for {point.id}")
        if kind == ua.VariantType.Float and abs(value) > _FLOAT_MAX and math.isfinite(value):
            raise ValueError(f"{value!r} is out of the range of Float (about ±3.4e38)")
        return float(value)
    if kind == ua.VariantType.String:
        return str(value)
    if kind == ua.VariantType.DateTime:
        try:
            return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO 8601 time for {point.id}") from None
    if kind == ua.VariantType.ByteString:
        try:
            return base64.b64decode(str(value), validate=True)
        except ValueError:
            raise ValueError(f"{value!r} is not base64 for {point.id}") from None
    raise Unsupported(f"writing {point.id} (data type {variable.data_type}) is not supported")


async def _dispose(client: Client, wait_s: float) -> None:
    """Close a session and its socket, whatever state they are in; never raises. A socket
    left open holds one of the few connection slots a PLC has."""
    try:
        # The server may be gone already; there is nothing left to close then.
        await asyncio.wait_for(client.disconnect(), wait_s)
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError):
            _abort_socket(client)
            raise
    _abort_socket(client)


def _abort_socket(client: Client) -> None:
    protocol = client.uaclient.protocol
    transport = getattr(protocol, "transport", None)
    if transport is not None and not transport.is_closing():
        transport.abort()


def _node_id(text: str) -> ua.NodeId:
    try:
        return ua.NodeId.from_string(text)
    except (ValueError, UaError) as exc:
        raise NodeNotFound(f"{text} is not a node id this server can use: {exc}") from None


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """`items` in slices of at most `size` (0: all in one); none for no items."""
    if not items:
        return []
    if size <= 0:
        return [items]
    return [items[i : i + size] for i in range(0, len(items), size)]


def _filter_hint(point: OpcUaPoint, status: ua.StatusCode) -> str:
    if point.server_deadband_percent is not None and status.value & 0xFFFF0000 in (
        StatusCodes.BadDeadbandFilterInvalid,
        StatusCodes.BadFilterNotAllowed,
        StatusCodes.BadMonitoredItemFilterUnsupported,
    ):
        return " (server_deadband_percent needs an EURange on the variable; use server_deadband)"
    return ""


def status_name(status: ua.StatusCode) -> str:
    """A status code's name without its info bits."""
    # The low 16 bits carry info bits that hide the name (e.g. "Good" for GoodOverload).
    return str(ua.StatusCode(ua.UInt32(status.value & 0xFFFF0000)).name)


def _plain(value: Any) -> Any:
    """An OPC UA value as JSON can carry it: dates as ISO 8601 UTC, bytes as base64."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:  # OPC UA times are UTC
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
