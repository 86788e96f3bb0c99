"""`shopfloor browse`: show an OPC UA server's address space as a tree, and export its
variables as points of a ready-to-edit device configuration.

The tree is walked one level at a time: each level costs one Browse request (plus BrowseNext
for long reference lists) and one Read request for the attributes of all its variables, split
only where the server's operation limits demand it, so a few thousand nodes take a few round
trips rather than one per attribute.

asyncua is imported at the top of this module: only the browse command imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
import socket
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIdNames, ObjectIds
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from rich.console import Console
from rich.text import Text
from rich.tree import Tree
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from agent.settings import NODE_ID, OPCUA_ENDPOINT, OpcUaDevice
from drivers.opcua.client import status_name
from drivers.opcua.security import Pki, SecuritySetupError, prepare_client

__all__ = [
    "BrowseError",
    "BrowseResult",
    "BrowsedNode",
    "UsageError",
    "browse",
    "browse_command",
    "device_name",
    "export_yaml",
    "format_node_id",
    "parse_node_id",
    "point_ids",
    "print_tree",
    "render_tree",
    "short_value",
    "summary",
]

# asyncua logs every lost connection with a traceback; the command says it in one sentence.
logging.getLogger("asyncua").setLevel(logging.CRITICAL)


def _ns0(identifier: int) -> ua.NodeId:
    """A standard node id (namespace 0)."""
    return ua.NodeId(ua.Int32(identifier))


SERVER_OBJECT = _ns0(ObjectIds.Server)  # i=2253: diagnostics, left out under Objects

# Names the configuration accepts (agent/settings.py, _check_name).
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_NOT_IN_NAME = re.compile(r"[^a-z0-9_-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # kept off the one line a value gets
_MAX_POINT_ID = 200  # OpcUaPoint.id
_MAX_DEVICE_NAME = 64  # Name

# Requests are split to stay within the server's operation limits and a moderate message
# size; servers that state no limit get these.
_BROWSE_CHUNK = 500
_READ_CHUNK = 1000
_SESSION_TIMEOUT_MS = 30_000
_VALUE_WIDTH = 40
_ENUM_COMMENT = 80

_MAX_NODES_PER_READ = _ns0(ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead)
_MAX_NODES_PER_BROWSE = _ns0(ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerBrowse)
_HAS_PROPERTY = _ns0(ObjectIds.HasProperty)
# Hierarchical, but they point at event sources, not at parts of the plant.
_SKIPPED_REFERENCES = {
    _ns0(ObjectIds.HasEventSource),
    _ns0(ObjectIds.HasNotifier),
}
# Built-in types up to Enumeration (i=29) are named by asyncua; enumerations and structures
# are looked up on the server.
_BUILT_IN_TYPES = 29

# The attributes read for every variable, in one Read request per level.
_VARIABLE_ATTRIBUTES = (
    AttributeIds.Value,
    AttributeIds.DataType,
    AttributeIds.ValueRank,
    AttributeIds.AccessLevel,
    AttributeIds.UserAccessLevel,
    AttributeIds.Description,
)


class BrowseError(Exception):
    """Browsing failed (server unreachable, node unknown, connection lost); the message is one
    sentence for the user."""


class UsageError(Exception):
    """The command line is wrong (bad node id, bad endpoint); exit status 2."""


@dataclass(slots=True, eq=False)
class BrowsedNode:
    """One node of the tree, with what the browse learned about it."""

    node_id: ua.NodeId
    name: str  # the browse name, without its namespace index
    node_class: ua.NodeClass
    path: tuple[str, ...]  # browse names from the start node down to this one
    is_property: bool = False  # reached by HasProperty (metadata, not a point)
    repeated: bool = False  # shown already elsewhere in the tree: not expanded again
    children: list[BrowsedNode] = field(default_factory=list)
    hidden_children: int = 0  # children beyond --depth (properties not counted)
    # Variables only:
    data_type: str | None = None
    access: str | None = None  # "read", "read-write", "write-only", "no access"
    value: Any = None
    value_error: str | None = None  # the status name when the value could not be read
    enum_labels: dict[int, str] | None = None
    unit: str | None = None  # from an EngineeringUnits property
    description: str | None = None

    @property
    def is_variable(self) -> bool:
        """A variable (a data variable or a property)."""
        return self.node_class == ua.NodeClass.Variable

    @property
    def readable(self) -> bool:
        """Whether the session may read the variable's value."""
        return self.access in ("read", "read-write")

    def walk(self) -> Iterable[BrowsedNode]:
        """This node and every node below it, depth first, in browse order."""
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass(slots=True)
class BrowseResult:
    """The tree below the start node, and what is needed to print and export it."""

    endpoint: str
    root: BrowsedNode
    namespaces: list[str]
    depth: int
    server_left_out: bool = False  # the Server object was found and not shown
    server_name: str | None = None

    def variables(self) -> list[BrowsedNode]:
        """Every data variable in the tree (not properties), each once, in tree order."""
        return [
            node
            for node in self.root.walk()
            if node.is_variable and not node.is_property and not node.repeated
        ]


# -- node ids ------------------------------------------------------------------------------------


def parse_node_id(text: str) -> tuple[str | None, ua.NodeId]:
    """Check a node id as the configuration writes it (`ns=2;s=X`, `i=85`, `nsu=URI;s=X`).

    Returns the namespace URI (for `nsu=`, resolved at connect) and the node id, whose
    namespace index is then 0 until resolved. Raises UsageError if the text is no node id.
    """
    text = text.strip()
    if not NODE_ID.match(text):
        raise UsageError(
            f"{text!r} is not an OPC UA node id: write it as ns=2;s=Line1.Temp, i=85, "
            "ns=3;i=1001 or nsu=urn:vendor:plc;s=Line1.Temp."
        )
    uri = None
    if text.startswith("nsu="):
        uri, _, text = text[4:].partition(";")
    try:
        return uri, ua.NodeId.from_string(text)
    except (UaError, ValueError):
        raise UsageError(f"{text!r} is not a valid OPC UA node id.") from None


def format_node_id(node_id: ua.NodeId, namespaces: Sequence[str]) -> str:
    """The node id as the configuration should hold it: with the namespace URI (`nsu=`) for
    namespaces other than 0, since a server may renumber its namespaces after an update."""
    if node_id.NamespaceIndex == 0:
        return str(node_id.to_string())
    local = str(ua.NodeId(node_id.Identifier, ua.Int16(0), node_id.NodeIdType).to_string())
    index = node_id.NamespaceIndex
    uri = namespaces[index] if index < len(namespaces) else ""
    if not uri or ";" in uri:  # the configuration's nsu= cannot hold a ';' in the URI
        return str(node_id.to_string())
    return f"nsu={uri};{local}"


# -- browsing ------------------------------------------------------------------------------------


async def browse(client: Client, endpoint: str, start: str, depth: int) -> BrowseResult:
    """Walk the address space from the node `start` down to `depth` levels below it."""
    uri, start_id = parse_node_id(start)
    namespaces: list[str] = await client.get_namespace_array()
    if uri is not None:
        if uri not in namespaces:
            known = ", ".join(namespaces[1:]) or "none"
            raise BrowseError(
                f"The server at {endpoint} has no namespace {uri} (its namespaces: {known})."
            )
        start_id = ua.NodeId(
            start_id.Identifier, ua.Int16(namespaces.index(uri)), start_id.NodeIdType
        )
    walker = _Walker(client, endpoint, namespaces)
    await walker.read_limits()
    root = await walker.start_node(start_id, start)
    result = BrowseResult(endpoint, root, namespaces, depth)
    result.server_left_out = await walker.walk(root, depth)
    return result


class _Walker:
    """The requests of one browse, batched per tree level."""

    def __init__(self, client: Client, endpoint: str, namespaces: list[str]) -> None:
        self.client = client
        self.endpoint = endpoint
        self.namespaces = namespaces
        self.browse_chunk = _BROWSE_CHUNK
        self.read_chunk = _READ_CHUNK
        self._type_names: dict[ua.NodeId, str] = {}
        self._enums: dict[ua.NodeId, dict[int, str] | None] = {}

    async def read_limits(self) -> None:
        """The server's MaxNodesPerRead and MaxNodesPerBrowse, where it states them."""
        limits = await self._read(
            [(_MAX_NODES_PER_READ, AttributeIds.Value), (_MAX_NODES_PER_BROWSE, AttributeIds.Value)]
        )
        values = [_good_value(data) for data in limits]
        if isinstance(values[0], int) and values[0] > 0:
            self.read_chunk = min(self.read_chunk, values[0])
        if isinstance(values[1], int) and values[1] > 0:
            self.browse_chunk = min(self.browse_chunk, values[1])

    async def start_node(self, node_id: ua.NodeId, text: str) -> BrowsedNode:
        """The start node's name and class; BrowseError if the server does not know it."""
        node_class, name = await self._read(
            [(node_id, AttributeIds.NodeClass), (node_id, AttributeIds.BrowseName)]
        )
        shown = format_node_id(node_id, self.namespaces)
        if node_class.StatusCode is not None and node_class.StatusCode.is_bad():
            status = status_name(node_class.StatusCode)
            if status in ("BadNodeIdUnknown", "BadNodeIdInvalid"):
                raise BrowseError(f"The server at {self.endpoint} has no node {text}.")
            raise BrowseError(
                f"The server at {self.endpoint} refused to read node {text}: {status}."
            )
        browse_name = _good_value(name)
        root = BrowsedNode(
            node_id=node_id,
            name=browse_name.Name if isinstance(browse_name, ua.QualifiedName) else shown,
            node_class=ua.NodeClass(_good_value(node_class)),
            path=(),
        )
        # Paths (and point ids) start below a standard folder such as Objects, and with the
        # start node's own name for a node of the plant.
        if node_id.NamespaceIndex != 0:
            root.path = (root.name,)
        if root.is_variable:
            await self._read_variables([root])
        return root

    async def walk(self, root: BrowsedNode, depth: int) -> bool:
        """Browse level by level; returns whether the Server object was left out."""
        seen = {root.node_id}
        level = [root]
        server_left_out = False
        for current in range(depth + 1):
            references = await self._browse([node.node_id for node in level])
            below: list[BrowsedNode] = []
            unit_of: dict[ua.NodeId, list[BrowsedNode]] = {}
            for node, refs in zip(level, references, strict=True):
                for ref in refs:
                    child_id = _local_id(ref.NodeId, self.namespaces)
                    if child_id is None:
                        continue
                    is_property = ref.ReferenceTypeId == _HAS_PROPERTY
                    name = ref.BrowseName.Name or str(child_id.to_string())
                    if node.is_variable and is_property and name == "EngineeringUnits":
                        unit_of.setdefault(child_id, []).append(node)
                    if child_id == SERVER_OBJECT:
                        server_left_out = True
                        continue
                    if current == depth:
                        if not is_property:
                            node.hidden_children += 1
                        continue
                    child = BrowsedNode(
                        node_id=child_id,
                        name=name,
                        node_class=ua.NodeClass(ref.NodeClass),
                        path=(*node.path, name),
                        is_property=is_property,
                        repeated=child_id in seen,
                    )
                    seen.add(child_id)
                    node.children.append(child)
                    if not child.repeated:
                        below.append(child)
            await self._read_variables([node for node in below if node.is_variable])
            await self._read_units(unit_of)
            level = below
            if not level:
                break
        return server_left_out

    async def _browse(self, node_ids: Sequence[ua.NodeId]) -> list[list[ua.ReferenceDescription]]:
        """Forward hierarchical references of each node, continuation points followed;
        without duplicate targets (a node may be both organized and a component)."""
        found: list[list[ua.ReferenceDescription]] = []
        for start in range(0, len(node_ids), self.browse_chunk):
            chunk = node_ids[start : start + self.browse_chunk]
            parameters = ua.BrowseParameters()
            parameters.View = ua.ViewDescription()
            parameters.RequestedMaxReferencesPerNode = 0
            parameters.NodesToBrowse = [_browse_description(node_id) for node_id in chunk]
            results = await self._call(self.client.uaclient.browse(parameters))
            for result in results:
                references = list(result.References or [])
                continuation = result.ContinuationPoint
                while continuation:
                    more = ua.BrowseNextParameters()
                    more.ReleaseContinuationPoints = False
                    more.ContinuationPoints = [continuation]
                    [next_result] = await self._call(self.client.uaclient.browse_next(more))
                    references += next_result.References or []
                    continuation = next_result.ContinuationPoint
                found.append(_without_duplicates(references))
        return found

    async def _read(self, items: Sequence[tuple[ua.NodeId, int]]) -> list[ua.DataValue]:
        """One Read request per `read_chunk` (node, attribute) pairs."""
        values: list[ua.DataValue] = []
        for start in range(0, len(items), self.read_chunk):
            parameters = ua.ReadParameters()
            parameters.TimestampsToReturn = ua.TimestampsToReturn.Neither
            for node_id, attribute in items[start : start + self.read_chunk]:
                read = ua.ReadValueId()
                read.NodeId = node_id
                read.AttributeId = attribute
                parameters.NodesToRead.append(read)
            values += await self._call(self.client.uaclient.read(parameters))
        return values

    async def _call(self, request: Any) -> Any:
        try:
            return await request
        except (OSError, TimeoutError, ConnectionError) as exc:
            raise BrowseError(
                f"The connection to {self.endpoint} was lost while browsing: {_describe(exc)}."
            ) from None
        except UaError as exc:
            raise BrowseError(f"Browsing {self.endpoint} failed: {_describe(exc)}.") from None

    async def _read_variables(self, variables: Sequence[BrowsedNode]) -> None:
        """Value, data type, array rank, access and description of each variable."""
        if not variables:
            return
        items = [(node.node_id, attr) for node in variables for attr in _VARIABLE_ATTRIBUTES]
        values = await self._read(items)
        width = len(_VARIABLE_ATTRIBUTES)
        data_types: dict[BrowsedNode, ua.NodeId] = {}
        ranks: dict[BrowsedNode, int] = {}
        for index, node in enumerate(variables):
            value, data_type, rank, access, user_access, description = values[
                index * width : (index + 1) * width
            ]
            if value.StatusCode is not None and value.StatusCode.is_bad():
                node.value_error = status_name(value.StatusCode)
            else:
                node.value = value.Value.Value if value.Value is not None else None
            type_id = _good_value(data_type)
            if isinstance(type_id, ua.NodeId):
                data_types[node] = type_id
            rank_value = _good_value(rank)
            ranks[node] = rank_value if isinstance(rank_value, int) else -1
            node.access = _access(_good_value(user_access), _good_value(access))
            text = _good_value(description)
            if isinstance(text, ua.LocalizedText) and text.Text and text.Text != node.name:
                node.description = text.Text
        await self._name_types(set(data_types.values()))
        for node, type_id in data_types.items():
            name = self._type_names.get(type_id, str(type_id.to_string()))
            node.data_type = name + _array_suffix(ranks[node], node.value)
            node.enum_labels = self._enums.get(type_id)

    async def _name_types(self, type_ids: set[ua.NodeId]) -> None:
        """Names of data types not yet known, and the labels of those that are enumerations."""
        new = [type_id for type_id in type_ids if type_id not in self._type_names]
        if not new:
            return
        lookup = []
        for type_id in new:
            number = _standard_number(type_id)
            if number is not None and number in ObjectIdNames:
                self._type_names[type_id] = ObjectIdNames[number]
            else:
                lookup.append(type_id)
            if number is None or number > _BUILT_IN_TYPES:
                self._enums[type_id] = None
        if lookup:
            names = await self._read([(type_id, AttributeIds.BrowseName) for type_id in lookup])
            for type_id, data in zip(lookup, names, strict=True):
                name = _good_value(data)
                if isinstance(name, ua.QualifiedName) and name.Name:
                    self._type_names[type_id] = name.Name
        await self._enum_labels([t for t in new if t in self._enums])

    async def _enum_labels(self, type_ids: Sequence[ua.NodeId]) -> None:
        """Labels of enumerations: from their EnumStrings or EnumValues property, or else from
        the DataTypeDefinition attribute (which newer servers may give alone)."""
        if not type_ids:
            return
        properties: list[tuple[ua.NodeId, ua.NodeId, str]] = []
        for type_id, refs in zip(type_ids, await self._browse(type_ids), strict=True):
            for ref in refs:
                name = ref.BrowseName.Name
                node_id = _local_id(ref.NodeId, self.namespaces)
                if name in ("EnumStrings", "EnumValues") and node_id is not None:
                    properties.append((type_id, node_id, name))
        items = [(node_id, AttributeIds.Value) for _, node_id, _ in properties]
        items += [(type_id, AttributeIds.DataTypeDefinition) for type_id in type_ids]
        values = await self._read(items)
        for type_id, data in zip(type_ids, values[len(properties) :], strict=True):
            definition = _good_value(data)
            if isinstance(definition, ua.EnumDefinition) and definition.Fields:
                self._enums[type_id] = {
                    int(field.Value): str(field.Name) for field in definition.Fields if field.Name
                }
        for (type_id, _, name), data in zip(properties, values, strict=False):
            labels = _labels(name, _good_value(data))
            if labels:
                self._enums[type_id] = labels

    async def _read_units(self, unit_of: dict[ua.NodeId, list[BrowsedNode]]) -> None:
        """The display name of each EngineeringUnits property, on the variables it describes."""
        if not unit_of:
            return
        property_ids = list(unit_of)
        values = await self._read([(node_id, AttributeIds.Value) for node_id in property_ids])
        for node_id, data in zip(property_ids, values, strict=True):
            unit = _unit_text(_good_value(data))
            for variable in unit_of[node_id]:
                variable.unit = unit


def _array_suffix(rank: int, value: Any) -> str:
    """`[]` for an array, `[,]` for a matrix ...: from the ValueRank, or from the value where
    the rank leaves it open (-2 any, -3 scalar or one dimension)."""
    if rank > 1:
        return "[" + "," * (rank - 1) + "]"
    if rank in (0, 1) or (rank < -1 and isinstance(value, list)):
        return "[]"
    return ""


def _browse_description(node_id: ua.NodeId) -> ua.BrowseDescription:
    description = ua.BrowseDescription()
    description.NodeId = node_id
    description.BrowseDirection = ua.BrowseDirection.Forward
    description.ReferenceTypeId = _ns0(ObjectIds.HierarchicalReferences)
    description.IncludeSubtypes = True
    description.NodeClassMask = 0  # every class
    description.ResultMask = ua.BrowseResultMask.All
    return description


def _without_duplicates(
    references: Iterable[ua.ReferenceDescription],
) -> list[ua.ReferenceDescription]:
    kept: dict[Any, ua.ReferenceDescription] = {}
    for ref in references:
        if ref.ReferenceTypeId in _SKIPPED_REFERENCES:
            continue
        key = (ref.NodeId.Identifier, ref.NodeId.NamespaceIndex, _uri(ref.NodeId))
        kept.setdefault(key, ref)
    return list(kept.values())


def _uri(node_id: ua.NodeId) -> str | None:
    return getattr(node_id, "NamespaceUri", None)


def _local_id(node_id: ua.NodeId, namespaces: Sequence[str]) -> ua.NodeId | None:
    """A reference's target as a plain node id of this server; None for another server's."""
    if getattr(node_id, "ServerIndex", 0):
        return None
    index = int(node_id.NamespaceIndex)
    uri = _uri(node_id)
    if uri:
        if uri not in namespaces:
            return None
        index = namespaces.index(uri)
    if isinstance(node_id.Identifier, int):  # the encoding (two-byte ...) follows from the index
        return ua.NodeId(node_id.Identifier, ua.Int16(index))
    return ua.NodeId(node_id.Identifier, ua.Int16(index), node_id.NodeIdType)


def _standard_number(node_id: ua.NodeId) -> int | None:
    """The number of a namespace 0 node id (a standard node), else None."""
    identifier = node_id.Identifier
    if node_id.NamespaceIndex == 0 and isinstance(identifier, int):
        return int(identifier)
    return None


def _good_value(data: ua.DataValue) -> Any:
    if data.StatusCode is not None and data.StatusCode.is_bad():
        return None
    return data.Value.Value if data.Value is not None else None


def _access(user_level: Any, level: Any) -> str:
    bits = user_level if isinstance(user_level, int) else level
    if not isinstance(bits, int):
        return "no access"
    read = bool(bits & (1 << ua.AccessLevel.CurrentRead))
    write = bool(bits & (1 << ua.AccessLevel.CurrentWrite))
    return {(True, True): "read-write", (True, False): "read", (False, True): "write-only"}.get(
        (read, write), "no access"
    )


def _labels(name: str, value: Any) -> dict[int, str] | None:
    if not isinstance(value, list):
        return None
    if name == "EnumStrings":
        return {
            index: str(item.Text)
            for index, item in enumerate(value)
            if isinstance(item, ua.LocalizedText) and item.Text
        }
    labels: dict[int, str] = {}
    for item in value:  # EnumValueType: Value, DisplayName, Description
        display = getattr(item, "DisplayName", None)
        number = getattr(item, "Value", None)
        if isinstance(number, int) and isinstance(display, ua.LocalizedText) and display.Text:
            labels[number] = str(display.Text)
    return labels


def _unit_text(value: Any) -> str | None:
    display = getattr(value, "DisplayName", None)
    if isinstance(display, ua.LocalizedText) and display.Text:
        return str(display.Text)
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "the connection was refused (is the server running, and is the port right?)"
    if isinstance(exc, socket.gaierror):
        return "the host name is unknown"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, UaStatusCodeError) and isinstance(exc.code, int):
        name = status_name(ua.StatusCode(ua.UInt32(exc.code)))
        if name.startswith(("BadIdentityToken", "BadUserAccessDenied", "BadSecurity")):
            return (
                f"the server answered {name}: it may not allow anonymous sessions without security"
            )
        return f"the server answered {name}"
    return str(exc).rstrip(".") or type(exc).__name__


# -- the tree ------------------------------------------------------------------------------------


def short_value(node: BrowsedNode, width: int = _VALUE_WIDTH) -> str:
    """The variable's value as one short line: enumeration labels, dates in ISO 8601 UTC,
    bytes in hex, long texts and arrays cut with an ellipsis."""
    if node.value_error is not None:
        return f"({node.value_error})"
    value = node.value
    if node.enum_labels is not None and isinstance(value, int) and not isinstance(value, bool):
        label = node.enum_labels.get(value)
        text = f"{value} ({label})" if label else str(value)
    elif isinstance(value, list):
        items = [_one_value(item) for item in value]
        text = f"[{', '.join(items)}]"
        if len(text) > width:
            text = f"[{_count(len(value), 'item')}: {', '.join(items)}"
    else:
        text = _one_value(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _one_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + _CONTROL.sub(" ", value) + '"'
    if isinstance(value, bytes):
        return "0x" + value.hex().upper()
    if isinstance(value, dt.datetime):
        when: dt.datetime = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, ua.LocalizedText):
        return str(value.Text or "")
    if isinstance(value, ua.QualifiedName):
        return str(value.Name or "")
    if isinstance(value, ua.NodeId):
        return str(value.to_string())
    if isinstance(value, ua.EUInformation):
        return _unit_text(value) or str(value)
    return _CONTROL.sub(" ", str(value))


def _label(node: BrowsedNode, namespaces: Sequence[str]) -> Text:
    kind = "Property" if node.is_property else node.node_class.name
    parts: list[tuple[str, str] | str] = [(node.name, "bold"), "  ", (kind, "cyan")]
    if node.is_variable and not node.repeated:
        parts += ["  ", (node.data_type or "?", "green"), "  ", (node.access or "", "yellow")]
        unit = f" {node.unit}" if node.unit and node.value_error is None else ""
        parts += ["  = ", short_value(node) + unit]
    parts += ["  ", (format_node_id(node.node_id, namespaces), "blue")]
    if node.repeated:
        parts += ["  ", ("(shown above)", "dim")]
    elif node.hidden_children:
        parts += ["  ", (f"(+{node.hidden_children} below)", "dim")]
    return Text.assemble(*parts, no_wrap=True)


def render_tree(result: BrowseResult) -> Tree:
    """The rich tree of the browse."""
    tree = Tree(_label(result.root, result.namespaces))

    def add(branch: Tree, node: BrowsedNode) -> None:
        for child in node.children:
            add(branch.add(_label(child, result.namespaces)), child)

    add(tree, result.root)
    return tree


def print_tree(result: BrowseResult, console: Console) -> None:
    """Print the tree whole: long node ids are never cut, so that they can be copied."""
    widest = max(
        4 * len(node.path) + 8 + _label(node, result.namespaces).cell_len
        for node in result.root.walk()
    )
    console.width = max(console.width, widest)
    console.print(render_tree(result), soft_wrap=False)


def summary(result: BrowseResult) -> list[str]:
    """The lines printed after the tree."""
    nodes = list(result.root.walk())
    variables = result.variables()
    lines = [
        f"{_count(len(nodes), 'node')} shown, {_count(len(variables), 'variable')}, "
        f"down to depth {result.depth}."
    ]
    if any(node.hidden_children for node in nodes):
        lines.append("Nodes marked (+N below) have more: raise --depth to see them.")
    if result.server_left_out:
        lines.append("The Server object (diagnostics) is left out; --node i=2253 browses it.")
    return lines


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


# -- the export ----------------------------------------------------------------------------------


def _slug(text: str) -> str:
    slug = _NOT_IN_NAME.sub("_", text.lower()).strip("_-")
    return re.sub(r"_{2,}", "_", slug)


def point_ids(variables: Sequence[BrowsedNode]) -> list[str]:
    """A point id per variable from its browse path (`PackagingLine/Filler/Speed` →
    `packagingline.filler.speed`): lowercase, only characters the configuration accepts,
    unique (a suffix `_2`, `_3` ... where two paths give the same id)."""
    taken: set[str] = set()
    ids: list[str] = []
    for node in variables:
        base = ".".join(_slug(part) or "node" for part in (node.path or (node.name,)))
        base = base[-(_MAX_POINT_ID - 4) :].lstrip("._-") or "point"
        if not _NAME_OK.match(base):
            base = "point." + base
        candidate, number = base, 1
        while candidate in taken:
            number += 1
            candidate = f"{base}_{number}"
        taken.add(candidate)
        ids.append(candidate)
    return ids


def device_name(server_name: str | None) -> str:
    """A device name from the server's application name, or `opcua_device`."""
    slug = _slug(server_name or "")[:_MAX_DEVICE_NAME].strip("_-.")
    return slug if slug and _NAME_OK.match(slug) else "opcua_device"


def _type_comment(node: BrowsedNode) -> str:
    """`Double, read-write`; an enumeration with its values: `MachineState (0 Stopped,
    1 Running ...), read`, since the agent publishes the number."""
    kind = node.data_type or "unknown type"
    if node.enum_labels:
        values = ", ".join(f"{number} {label}" for number, label in node.enum_labels.items())
        if len(values) > _ENUM_COMMENT:
            values = values[: _ENUM_COMMENT - 1] + "…"
        kind += f" ({values})"
    return f"{kind}, {node.access}"


def export_yaml(result: BrowseResult, start: str) -> tuple[str, int, int]:
    """The `devices:` snippet for the readable variables of the browse, as YAML text with a
    header comment; also how many points it has and how many variables were not readable."""
    variables = result.variables()
    readable = [node for node in variables if node.readable]
    unreadable = len(variables) - len(readable)
    points = CommentedSeq()
    for point_id, node in zip(point_ids(readable), readable, strict=True):
        point = CommentedMap()
        point["id"] = point_id
        point["node"] = format_node_id(node.node_id, result.namespaces)
        if node.unit:
            point["unit"] = node.unit
        if node.description:
            point["description"] = node.description
        point.yaml_add_eol_comment(_type_comment(node), "id")
        points.append(point)
    device = CommentedMap()
    device["name"] = device_name(result.server_name)
    device["driver"] = "opcua"
    device["endpoint"] = result.endpoint
    device["mode"] = "subscription"
    device["interval"] = "1s"
    device["points"] = points
    document = CommentedMap()
    document["devices"] = CommentedSeq([device])
    when = dt.datetime.now().astimezone()
    header = [
        f"OPC UA points found by `shopfloor browse` on {result.endpoint}",
        f"on {when:%Y-%m-%d %H:%M %Z}, down to {result.depth} levels below node",
        f"{start}.",
        "",
        "Paste the device below into the `devices:` list of the agent's configuration, then",
        "run `shopfloor check` on it. Point ids come from browse paths: rename them freely",
        "(letters, digits, . _ -; unique in the whole file) and delete the points you do not",
        "need. Node ids carry the namespace URI (nsu=), which stays right when the server",
        "renumbers its namespaces. The comment after each id is the data type and access.",
    ]
    if unreadable:
        header.append(f"{_count(unreadable, 'variable')} the session may not read are left out.")
    document.yaml_set_start_comment("\n".join(header))
    yaml = YAML()
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096  # long node ids stay on one line
    stream = StringIO()
    yaml.dump(document, stream)
    return stream.getvalue(), len(readable), unreadable


# -- the command ---------------------------------------------------------------------------------


async def _browse_endpoint(
    endpoint: str,
    start: str,
    depth: int,
    answer_s: float,
    want_name: bool,
    *,
    secured_by: tuple[OpcUaDevice, Pki] | None = None,
) -> BrowseResult:
    client = Client(endpoint, timeout=answer_s)
    client.session_timeout = _SESSION_TIMEOUT_MS
    try:
        if secured_by is not None:
            device, pki = secured_by
            await prepare_client(client, device, pki)
        await asyncio.wait_for(client.connect(), answer_s * 2)
    except SecuritySetupError as exc:
        raise BrowseError(f"Cannot open a secure session with {endpoint}: {exc}.") from None
    except (OSError, TimeoutError, UaError, ConnectionError) as exc:
        with contextlib.suppress(Exception):  # a half-open connection: nothing left to close
            await asyncio.wait_for(client.disconnect(), answer_s)
        reason = _describe(exc)
        if isinstance(exc, TimeoutError):
            reason = f"no answer within {answer_s * 2:g} s"
        raise BrowseError(f"Cannot open a session with {endpoint}: {reason}.") from None
    try:
        result = await browse(client, endpoint, start, depth)
        if want_name:
            result.server_name = await _server_name(client)
        return result
    finally:
        with contextlib.suppress(Exception):  # the server may be gone already
            await asyncio.wait_for(client.disconnect(), answer_s)


async def _server_name(client: Client) -> str | None:
    with contextlib.suppress(OSError, TimeoutError, UaError, ConnectionError):
        for endpoint in await client.get_endpoints():
            text = endpoint.Server.ApplicationName.Text
            if text:
                return str(text)
    return None


def _error(message: str) -> None:
    # Plain print: a message wrapped at the terminal's width is harder to grep in a log.
    print(message, file=sys.stderr)


def browse_command(
    *,
    endpoint: str,
    node: str,
    depth: int,
    export: Path | None,
    timeout: float,
    secured_by: tuple[OpcUaDevice, Pki] | None = None,
) -> int:
    """`shopfloor browse`: print the tree, write the export; the exit status (2: usage).
    `secured_by`: a configured device whose security, login and trust list the session uses."""
    try:
        if not OPCUA_ENDPOINT.match(endpoint):
            raise UsageError(
                f"{endpoint!r} is not an OPC UA endpoint: write it as opc.tcp://HOST:PORT[/PATH]."
            )
        parse_node_id(node)
        if depth < 0:
            raise UsageError("--depth must be 0 or more.")
        if not timeout > 0:
            raise UsageError("--timeout must be more than 0 seconds.")
        if export is not None and export.exists():
            raise UsageError(f"{export} exists; give a new file name for --export.")
    except UsageError as exc:
        _error(str(exc))
        return 2
    try:
        result = asyncio.run(
            _browse_endpoint(
                endpoint, node.strip(), depth, timeout, export is not None, secured_by=secured_by
            )
        )
    except UsageError as exc:
        _error(str(exc))
        return 2
    except BrowseError as exc:
        _error(str(exc))
        return 1
    console = Console()
    print_tree(result, console)
    for line in summary(result):
        print(line)
    if export is None:
        return 0
    text, points, _ = export_yaml(result, node.strip())
    if not points:
        _error(f"No readable variables were found, so {export} was not written.")
        return 1
    try:
        with export.open("x", encoding="utf-8") as out:
            out.write(text)
    except OSError as exc:
        _error(f"Cannot write {export}: {exc.strerror or exc}.")
        return 1
    print(f"Wrote {_count(points, 'point')} to {export}: paste its device into the configuration.")
    return 0
