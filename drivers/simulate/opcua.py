"""A simulated OPC UA server: a packaging line with nested objects and every basic data type.

It runs a real asyncua server in a thread of its own, so tests and the demo talk to it over
opc.tcp exactly as to a PLC, and can stop and restart it. Variables live in the namespace
`NAMESPACE_URI` under string node ids named by their path (`ns=N;s=Filler.Speed`), so a client
can address them by node id, by namespace URI (`nsu=...;s=Filler.Speed`) or by browse path
(`/Objects/PackagingLine/Filler/Speed`). `shift_namespace` registers dummy namespaces first, to
test clients against a server whose namespace indexes moved after an update.

Two enumerations: `Filler.State` (MachineState, described by an EnumStrings property, as most
servers do) and `Labeler.Mode` (LabelerMode, described only by its DataTypeDefinition, as newer
servers may). With `security=True` the server also offers Sign and SignAndEncrypt with the three
current policies, with a self-signed certificate of its own in `pki_dir`; `users` (names and
passwords) and `user_certificates` (DER) make it require a login. `delete_variable` and
`restore_variable` remove a variable and bring it back, to test clients against a PLC program
that changed.

asyncua is imported here only: the agent loads this module only when asked to simulate OPC UA.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from asyncua import ua
from asyncua.common.structures104 import new_enum
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.server import Server
from asyncua.server.user_managers import UserManager
from asyncua.ua.status_codes import StatusCodes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from drivers.simulate.threaded import ThreadedServer

__all__ = [
    "ENUMERATIONS",
    "NAMESPACE_URI",
    "OTHER_NODE_ID_FORMS",
    "PACKAGING_LINE",
    "SimulatedOpcUaServer",
    "SimulatedVariable",
]

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
    enumeration: str | None = None  # the name of one of ENUMERATIONS


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
    SimulatedVariable("Filler.State", ua.VariantType.Int32, 2, enumeration="MachineState"),
    SimulatedVariable("Labeler.Mode", ua.VariantType.Int32, 1, enumeration="LabelerMode"),
)

# Variables under PackagingLine/Ids whose node ids take the other standard forms:
# browse name -> (identifier, value).
OTHER_NODE_ID_FORMS: dict[str, tuple[str, float]] = {
    "Numeric": ("i=1001", 1.5),
    "Guid": ("g=09087e75-8e5e-499b-954f-f2a9603db28a", 2.5),
    "Opaque": ("b=AQJvcGFxdWU=", 3.5),
}

# Enumeration data types: name -> value names (value = position).
ENUMERATIONS: dict[str, tuple[str, ...]] = {
    "MachineState": ("Stopped", "Starting", "Running", "Fault"),
    "LabelerMode": ("Manual", "Automatic", "Maintenance"),
}
# The security modes and policies offered with security=True, besides None.
_SECURE_ENDPOINTS = [
    ua.SecurityPolicyType.NoSecurity,
    ua.SecurityPolicyType.Basic256Sha256_Sign,
    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
    ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
]


class _LoginCheck(UserManager):
    """Accepts the given users with their passwords and the given user certificates, and
    nobody else (anonymous included)."""

    def __init__(self, users: dict[str, str], certificates: Sequence[bytes]) -> None:
        self.users = users
        self.certificates = set(certificates)

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username is not None:
            if self.users.get(username) == password:
                return User(role=UserRole.User, name=username)
            return None
        if certificate is not None:
            der = (
                certificate.public_bytes(Encoding.DER)
                if hasattr(certificate, "public_bytes")
                else certificate
            )
            if der in self.certificates:
                return User(role=UserRole.User, name="certificate user")
        return None


class SimulatedOpcUaServer(ThreadedServer):
    """A packaging-line OPC UA server on `opc.tcp://127.0.0.1:port` (security None, anonymous,
    unless `security` and `users` say otherwise).

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
        security: bool = False,
        pki_dir: Path | None = None,
        users: dict[str, str] | None = None,
        user_certificates: Sequence[bytes] = (),
    ) -> None:
        super().__init__()
        if security and pki_dir is None:
            raise ValueError("a secure simulator needs a pki_dir for its certificate")
        self.security = security
        self.pki_dir = pki_dir
        self.users = users
        self.user_certificates = user_certificates
        self.host = host
        self.port = port
        self.changing = changing
        self.tick = tick
        self.shift_namespace = shift_namespace
        self.namespace_index: int | None = None
        self._values: dict[str, Any] = {v.path: v.initial for v in PACKAGING_LINE}
        self._nodes: dict[str, Any] = {}
        self._deleted: set[str] = set()
        self._server: Server | None = None
        self._enum_types: dict[str, ua.NodeId] = {}

    @property
    def endpoint(self) -> str:
        """The URL a client connects to."""
        return f"opc.tcp://{self.host}:{self.port}/shopfloor/packaging-line"

    def node_id(self, path: str) -> str:
        """The node id of a variable, e.g. `ns=2;s=Filler.Speed`."""
        if self.namespace_index is None:
            raise RuntimeError("the server has not been started")
        return f"ns={self.namespace_index};s={path}"

    def set_value(
        self,
        path: str,
        value: Any,
        *,
        source_time: dt.datetime | None = None,
        status: int = StatusCodes.Good,
    ) -> None:
        """Write a variable's value with a source timestamp (the server's time unless given)
        and a status code (to simulate a sensor the PLC knows to be faulty)."""
        self._values[path] = value
        self._call(self._write(path, value, source_time, status))

    def subscription_count(self) -> int:
        """Subscriptions the server holds now (to prove a client leaks none)."""

        async def count() -> int:
            assert self._server is not None
            return len(self._server.iserver.subscription_service.subscriptions)

        return self._call(count())

    def get_value(self, path: str) -> Any:
        """A variable's current value."""
        return self._call(self._nodes[path].read_value())

    @property
    def certificate(self) -> Path:
        """The server's certificate (DER), with security=True."""
        assert self.pki_dir is not None
        return self.pki_dir / "server-cert.der"

    def expire_sessions(self) -> int:
        """End every client session with its subscriptions, as a server does when a session
        times out; returns how many there were."""

        async def expire() -> int:
            assert self._server is not None
            # asyncua keeps no public list of client sessions.
            sessions = list(self._server.iserver._external_sessions.values())
            for session in sessions:
                await session.close_session(delete_subs=True)
            return len(sessions)

        return self._call(expire())

    def delete_variable(self, path: str) -> None:
        """Remove a variable from the address space (a PLC program without that tag)."""
        # A server tells the subscribers of a deleted node with a Bad_NodeIdUnknown value;
        # asyncua's server means to but never sends it, so the simulator does.
        self._call(self._write(path, self._values[path], status=StatusCodes.BadNodeIdUnknown))
        self._deleted.add(path)
        self._call(self._nodes[path].delete())

    def restore_variable(self, path: str) -> None:
        """Bring a deleted variable back, with the same node id."""
        self._deleted.discard(path)

        async def add() -> None:
            assert self._server is not None
            variable = next(v for v in PACKAGING_LINE if v.path == path)
            parent = self._server.get_node(
                _node_id(f"PackagingLine.{path.split('.', maxsplit=1)[0]}", self._namespace())
            )
            await self._add_variable(parent, variable, self._namespace())

        self._call(add())

    def _namespace(self) -> int:
        assert self.namespace_index is not None
        return self.namespace_index

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
        login = bool(self.users or self.user_certificates)
        server = Server(
            user_manager=_LoginCheck(self.users or {}, self.user_certificates) if login else None
        )
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("shopfloor-agent simulated packaging line")
        if self.security:
            await self._secure(server)
        if login:
            server.set_identity_tokens([ua.UserNameIdentityToken, ua.X509IdentityToken])
        for index in range(self.shift_namespace):
            await server.register_namespace(f"urn:shopfloor-agent:simulated:unused-{index}")
        namespace = await server.register_namespace(NAMESPACE_URI)
        self.namespace_index = namespace
        self._enum_types = {}
        for enum_name, value_names in ENUMERATIONS.items():
            data_type = await new_enum(server, namespace, enum_name, list(value_names))
            if enum_name == "MachineState":
                await data_type.add_property(
                    0,
                    "EnumStrings",
                    ua.Variant(
                        [ua.LocalizedText(n) for n in value_names], ua.VariantType.LocalizedText
                    ),
                )
            self._enum_types[enum_name] = data_type.nodeid
        line = await server.nodes.objects.add_object(
            _node_id("PackagingLine", namespace), ua.QualifiedName("PackagingLine", namespace)
        )
        parents: dict[str, Any] = {}
        self._nodes = {}
        for variable in PACKAGING_LINE:
            parent_name = variable.path.split(".")[0]
            if parent_name not in parents:
                parents[parent_name] = await line.add_object(
                    _node_id(f"PackagingLine.{parent_name}", namespace),
                    ua.QualifiedName(parent_name, namespace),
                )
            if variable.path not in self._deleted:
                await self._add_variable(parents[parent_name], variable, namespace)
        ids = await line.add_object(
            _node_id("PackagingLine.Ids", namespace), ua.QualifiedName("Ids", namespace)
        )
        for name, (identifier, value) in OTHER_NODE_ID_FORMS.items():
            await ids.add_variable(
                ua.NodeId.from_string(f"ns={namespace};{identifier}"),
                ua.QualifiedName(name, namespace),
                ua.Variant(value, ua.VariantType.Double),
            )
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

    async def _add_variable(self, parent: Any, variable: SimulatedVariable, namespace: int) -> None:
        name = variable.path.split(".")[1]
        data_type = (
            self._enum_types[variable.enumeration]
            if variable.enumeration
            else ua.NodeId(ua.Int32(variable.variant_type.value))
        )
        node = await parent.add_variable(
            _node_id(variable.path, namespace),
            ua.QualifiedName(name, namespace),
            ua.Variant(self._values[variable.path], variable.variant_type),
            datatype=data_type,
        )
        await node.set_writable()
        self._nodes[variable.path] = node

    async def _secure(self, server: Server) -> None:
        """A self-signed server certificate (kept across restarts) and every secure endpoint."""
        assert self.pki_dir is not None
        uri = "urn:shopfloor-agent:simulated:packaging-line-server"
        await server.set_application_uri(uri)
        key = self.pki_dir / "server-key.pem"
        self.pki_dir.mkdir(parents=True, exist_ok=True)
        await setup_self_signed_certificate(
            key,
            self.certificate,
            uri,
            self.host,
            [ExtendedKeyUsageOID.SERVER_AUTH],
            {"commonName": "simulated packaging line"},
        )
        await server.load_certificate(str(self.certificate))
        await server.load_private_key(str(key))
        server.set_security_policy(_SECURE_ENDPOINTS)

    async def _move(self, t: float) -> None:
        self._values["Filler.Speed"] = round(120.0 + 5.0 * math.sin(t / 7), 3)
        self._values["Filler.Level"] = round(75.0 + 2.0 * math.sin(t / 3), 2)
        self._values["Filler.Count"] = int(t * 2)
        self._values["Labeler.Temperature"] = round(42.0 + 0.5 * math.sin(t / 11), 2)
        for path in ("Filler.Speed", "Filler.Level", "Filler.Count", "Labeler.Temperature"):
            await self._write(path, self._values[path])

    async def _write(
        self,
        path: str,
        value: Any,
        source_time: dt.datetime | None = None,
        status: int = StatusCodes.Good,
    ) -> None:
        if path in self._deleted:
            return
        variable = next(v for v in PACKAGING_LINE if v.path == path)
        data = ua.DataValue(
            ua.Variant(value, variable.variant_type),
            StatusCode=ua.StatusCode(ua.UInt32(status)),
            SourceTimestamp=cast(ua.DateTime, source_time or dt.datetime.now(dt.UTC)),
            ServerTimestamp=cast(ua.DateTime, dt.datetime.now(dt.UTC)),
        )
        await self._nodes[path].write_value(data)


def _node_id(name: str, namespace: int) -> ua.NodeId:
    return ua.NodeId.from_string(f"ns={namespace};s={name}")
