"""A simulated OPC UA server: a packaging line with nested objects and every basic data type.

It runs a real asyncua server in a thread of its own, so tests and the demo talk to it over
opc.tcp exactly as to a PLC, and can stop and restart it. Variables live in the namespace
`NAMESPACE_URI` under string node ids named by their path (`ns=N;s=Filler.Speed`), so a client
can address them by node id, by namespace URI (`nsu=...;s=Filler.Speed`) or by browse path
(`/Objects/PackagingLine/Filler/Speed`). `shift_namespace` registers dummy namespaces first, to
test clients against a server whose namespace indexes moved after an update.

asyncua is imported here only: the agent loads this module only when asked to simulate OPC UA.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from asyncua import ua
from asyncua.server.server import Server

from drivers.simulate.threaded import ThreadedServer

__all__ = ["NAMESPACE_URI", "PACKAGING_LINE", "SimulatedOpcUaServer", "SimulatedVariable"]

NAMESPACE_URI = "urn:shopfloor-agent:simulated:packaging-line"

# asyncua logs every client connect and disconnect at INFO and some at WARNING.
logging.getLogger("asyncua").setLevel(logging.ERROR)


@dataclass(frozen=True, slots=True)
class SimulatedVariable:
    """One variable: its path below the line object, OPC UA type and starting value."""

    path: str  # "Filler.Speed": object Filler, variable Speed
    variant_type: ua.VariantType
    initial: Any
    unit: str = ""


_T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

PACKAGING_LINE: tuple[SimulatedVariable, ...] = (
    SimulatedVariable("Filler.Speed", ua.VariantType.Double, 120.0, "bottles/min"),
    SimulatedVariable("Filler.Level", ua.VariantType.Float, 75.5, "%"),
    SimulatedVariable("Filler.Running", ua.VariantType.Boolean, True),
    SimulatedVariable("Filler.Count", ua.VariantType.UInt64, 0),
    SimulatedVariable("Filler.Recipe", ua.VariantType.String, "COLA-0.5L"),
    SimulatedVariable("Filler.Nozzles", ua.VariantType.Double, [1.0, 1.0, 0.98, 1.01]),
    SimulatedVariable("Labeler.Temperature", ua.VariantType.Float, 42.0, "degC"),
    SimulatedVariable("Labeler.Rejects", ua.VariantType.UInt32, 0),
    SimulatedVariable("Labeler.LastBatch", ua.VariantType.DateTime, _T0),
    SimulatedVariable("Labeler.Signature", ua.VariantType.ByteString, b"\x01\x02\xfe\xff"),
    SimulatedVariable("Types.SByte", ua.VariantType.SByte, -100),
    SimulatedVariable("Types.Byte", ua.VariantType.Byte, 200),
    SimulatedVariable("Types.Int16", ua.VariantType.Int16, -30000),
    SimulatedVariable("Types.UInt16", ua.VariantType.UInt16, 60000),
    SimulatedVariable("Types.Int32", ua.VariantType.Int32, -2_000_000_000),
    SimulatedVariable("Types.UInt32", ua.VariantType.UInt32, 4_000_000_000),
    SimulatedVariable("Types.Int64", ua.VariantType.Int64, -(2**63)),
    SimulatedVariable("Types.UInt64", ua.VariantType.UInt64, 2**64 - 1),
)


class SimulatedOpcUaServer(ThreadedServer):
    """A packaging-line OPC UA server on `opc.tcp://127.0.0.1:port` (security None, anonymous).

    `start()` and `stop()` may be called repeatedly to simulate a PLC going away; values survive
    a restart. With `changing=True` speed, level, counter and temperature move every `tick`.
    """

    thread_name = "opcua-sim"
    start_timeout_s = 30.0

    def __init__(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        changing: bool = False,
        tick: float = 0.1,
        shift_namespace: int = 0,
    ) -> None:
        super().__init__()
        self.host = host
        self.port = port
        self.changing = changing
        self.tick = tick
        self.shift_namespace = shift_namespace
        self.namespace_index: int | None = None
        self._values: dict[str, Any] = {v.path: v.initial for v in PACKAGING_LINE}
        self._nodes: dict[str, Any] = {}
        self._server: Server | None = None

    @property
    def endpoint(self) -> str:
        """The URL a client connects to."""
        return f"opc.tcp://{self.host}:{self.port}/shopfloor/packaging-line"

    def node_id(self, path: str) -> str:
        """The node id of a variable, e.g. `ns=2;s=Filler.Speed`."""
        if self.namespace_index is None:
            raise RuntimeError("the server has not been started")
        return f"ns={self.namespace_index};s={path}"

    def set_value(self, path: str, value: Any) -> None:
        """Write a variable's value (with the server's time as its source timestamp)."""
        self._values[path] = value
        self._call(self._write(path, value))

    def subscription_count(self) -> int:
        """Subscriptions the server holds now (to prove a client leaks none)."""

        async def count() -> int:
            assert self._server is not None
            return len(self._server.iserver.subscription_service.subscriptions)

        return self._call(count())

    def get_value(self, path: str) -> Any:
        """A variable's current value."""
        return self._call(self._nodes[path].read_value())

    # -- the server thread ---------------------------------------------------------------------

    def start(self) -> None:
        """Listen; returns once the server accepts connections. Raises OSError if it cannot."""
        try:
            super().start()
        except OSError:
            raise
        except Exception as exc:  # asyncua's own errors: one message for all
            raise OSError(f"cannot serve OPC UA on {self.endpoint}: {exc}") from exc

    async def _serve(self) -> None:
        assert self._stopping is not None
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("shopfloor-agent simulated packaging line")
        for index in range(self.shift_namespace):
            await server.register_namespace(f"urn:shopfloor-agent:simulated:unused-{index}")
        namespace = await server.register_namespace(NAMESPACE_URI)
        self.namespace_index = namespace
        line = await server.nodes.objects.add_object(
            _node_id("PackagingLine", namespace), ua.QualifiedName("PackagingLine", namespace)
        )
        parents: dict[str, Any] = {}
        self._nodes = {}
        for variable in PACKAGING_LINE:
            parent_name, name = variable.path.split(".")
            if parent_name not in parents:
                parents[parent_name] = await line.add_object(
                    _node_id(f"PackagingLine.{parent_name}", namespace),
                    ua.QualifiedName(parent_name, namespace),
                )
            node = await parents[parent_name].add_variable(
                _node_id(variable.path, namespace),
                ua.QualifiedName(name, namespace),
                ua.Variant(self._values[variable.path], variable.variant_type),
            )
            await node.set_writable()
            self._nodes[variable.path] = node
        await server.start()
        self._server = server
        self._ready()
        began = time.monotonic()
        try:
            while not self._stopping.is_set():
                if self.changing:
                    await self._move(time.monotonic() - began)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.tick)
        finally:
            self._server = None
            await server.stop()

    async def _move(self, t: float) -> None:
        self._values["Filler.Speed"] = round(120.0 + 5.0 * math.sin(t / 7), 3)
        self._values["Filler.Level"] = round(75.0 + 2.0 * math.sin(t / 3), 2)
        self._values["Filler.Count"] = int(t * 2)
        self._values["Labeler.Temperature"] = round(42.0 + 0.5 * math.sin(t / 11), 2)
        for path in ("Filler.Speed", "Filler.Level", "Filler.Count", "Labeler.Temperature"):
            await self._write(path, self._values[path])

    async def _write(self, path: str, value: Any) -> None:
        variable = next(v for v in PACKAGING_LINE if v.path == path)
        await self._nodes[path].write_value(ua.Variant(value, variable.variant_type))


def _node_id(name: str, namespace: int) -> ua.NodeId:
    return ua.NodeId.from_string(f"ns={namespace};s={name}")
