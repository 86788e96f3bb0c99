"""The Modbus driver: one unit on a line (TCP, RTU over TCP or serial), batched reads, writes.

Reads follow the planner's blocks, one request each. A block the unit rejects with "illegal data
address" is split into smaller requests, and the split is kept for later polls. A unit that stops
answering is told apart from a dead line: other units on the same line keep their turn.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
import operator
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from itertools import repeat
from typing import Any, NamedTuple, NoReturn

from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from agent.model import Quality, Sample, Value, now_ms
from agent.settings import ModbusDevice, ModbusPoint
from drivers.base import DriverError, Health, LinkState, NotConnected, Unsupported, WriteRefused
from drivers.modbus.codec import (
    byte_permutation,
    decode_string,
    decoder_for,
    encode,
    encode_string,
    registers_to_bytes,
)
from drivers.modbus.line import ModbusLine
from drivers.modbus.planner import ReadBlock, plan_reads, split_block

__all__ = ["BlockResult", "ModbusDriver", "WriteNotVerified"]

log = logging.getLogger(__name__)

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target did not respond",
}
_ILLEGAL_ADDRESS = 2
_READ_METHOD = {
    "coil": "read_coils",
    "discrete": "read_discrete_inputs",
    "input": "read_input_registers",
    "holding": "read_holding_registers",
}
# Formats of the types a block can decode in one struct call (big-endian, word order ABCD).
_STRUCT_CODE = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "int64": "q",
    "uint64": "Q",
    "float32": "f",
    "float64": "d",
}

GOOD, BAD = Quality.GOOD, Quality.BAD
isfinite = math.isfinite

# After this many consecutive polls in which the unit answered nothing, it is declared silent:
# the device task backs off, and if no unit on the line answered either, the link is reopened
# (half-open TCP connections do not fail on their own).
_SILENT_POLLS = 3
_TIMEOUT = "timeout"
_SKIPPED = "not asked: the unit did not answer the previous request of this poll"

# How a point's value comes out of its block's bytes: (point id, byte offset, decode, finite?).
Layout = list[tuple[str, int, Callable[[bytes, int], Value], bool]]


class WriteNotVerified(DriverError):
    """A write was acknowledged but reading it back gave something else."""


class BlockResult(NamedTuple):
    """The raw answer to one read request, kept for `shopfloor read`.

    A NamedTuple: one is made per request, several thousand per second on a busy line."""

    block: ReadBlock
    registers: list[int] | None
    bits: list[bool] | None
    error: str | None
    ts: int


def _bit_decoder(bit: int) -> Callable[[bytes, int], Value]:
    mask = 1 << bit
    return lambda data, at: bool(((data[at] << 8) | data[at + 1]) & mask)


def _string_decoder(length: int, byte_swap: bool) -> Callable[[bytes, int], Value]:
    size = length + length % 2
    return lambda data, at: decode_string(data[at : at + size], byte_swap=byte_swap)[:length]


class ModbusDriver:
    """Reads and writes one Modbus unit. Construction does no I/O."""

    def __init__(self, device: ModbusDevice, line: ModbusLine | None = None) -> None:
        self.device = device
        # Without a shared line (tests, `shopfloor read`) the driver has a line of its own.
        self._owns_line = line is None
        if line is None:
            line = ModbusLine(device)
            line.units = 1
        self.line = line
        self._health = Health(since_ms=now_ms())
        self._plans: dict[int, tuple[Sequence[ModbusPoint], list[ReadBlock]]] = {}
        # How to decode each block's answer, by id(block). The entry keeps the block alive, so
        # its id cannot be reused by another block while the entry exists. Blocks whose points
        # are all numbers, without overlaps, also decode in one struct call (`_WholeBlock`).
        self._decoding: dict[int, tuple[ReadBlock, Layout, _WholeBlock | None]] = {}
        self.unit = device.unit_id
        self._silent_polls = 0

    @property
    def endpoint(self) -> str:
        """Where the unit is, for messages: `host:port unit N` or `/dev/ttyUSB0 unit N`."""
        where = self.device.line.split("://", 1)[1]
        return f"{where} unit {self.device.unit_id}"

    async def connect(self) -> None:
        """Open the line (unless another unit did) and check that this unit answers.

        Raises `NotConnected` when the line cannot be opened or the unit does not answer.
        """
        self._health.set_state(LinkState.CONNECTING)
        try:
            await self.line.connect()
        except NotConnected as exc:
            self._health.set_state(LinkState.DISCONNECTED, str(exc))
            raise
        probe = self.plan(self.device.points)[:1]
        if probe:
            result = await self._read_block(probe[0])
            if result.error in _NO_ANSWER:
                await self._silent()
        self._silent_polls = 0
        self._health.set_state(LinkState.CONNECTED)

    async def close(self) -> None:
        """Close the line if it is this driver's own; a shared line stays open for the others."""
        if self._owns_line:
            self.line.close()

    def plan(self, points: Sequence[ModbusPoint]) -> list[ReadBlock]:
        """The read requests for these points (cached for the same sequence object)."""
        cached = self._plans.get(id(points))
        if cached is not None and cached[0] is points:
            return cached[1]
        plan = plan_reads(
            points,
            max_registers=self.device.max_registers,
            max_bits=self.device.max_bits,
            max_gap=self.device.max_gap,
        )
        self._plans[id(points)] = (points, plan)
        for block in plan:
            self._remember_layout(block)
        return plan

    def _remember_layout(self, block: ReadBlock) -> None:
        layout: Layout = []
        for point in block.points:
            at = (point.register - block.start) * 2
            if point.table in ("coil", "discrete"):
                layout.append((point.id, point.register - block.start, _no_decode, False))
            elif point.value_type == "bool":
                layout.append((point.id, at, _bit_decoder(point.bit or 0), False))
            elif point.value_type == "string":
                decoder = _string_decoder(point.length or 0, point.byte_swap)
                layout.append((point.id, at, decoder, False))
            else:
                is_float = point.value_type.startswith("float")
                decoder = decoder_for(point.value_type, point.order)
                if point.unavailable:
                    decoder = _unless_unavailable(decoder, _as_decoded(point))
                layout.append((point.id, at, decoder, is_float))
        self._decoding[id(block)] = (block, layout, _whole_block_format(block))

    async def read(self, points: Sequence[ModbusPoint]) -> list[Sample]:
        """One request per planned block; failed blocks give BAD samples for their points."""
        samples: list[Sample] = []
        await self.read_blocks(
            points, on_result=lambda result: samples.extend(self.decode_block(result))
        )
        return samples

    async def read_blocks(
        self,
        points: Sequence[ModbusPoint],
        on_result: Callable[[BlockResult], object] | None = None,
    ) -> list[BlockResult]:
        """Raw answers per request, for callers that want the registers too.

        `on_result` is called with each answer as it comes; when other units wait for the
        line, it runs only after the next of them has sent its request, so that decoding here
        overlaps their round trip instead of holding up the line.
        """
        plan = self.plan(points)
        results: list[BlockResult] = []
        answered = False
        refined: list[tuple[ReadBlock, list[ReadBlock]]] = []
        line = self.line
        silent = False
        for block in plan:
            if silent:
                # One silent request is enough to know; asking the rest would hold the line
                # for every block's timeout while other units wait.
                results.append(BlockResult(block, None, None, _SKIPPED, now_ms()))
                if on_result is not None:
                    on_result(results[-1])
                continue
            result = await self._read_block(block)
            if result.error == _ILLEGAL_ADDRESS_ERROR and len(block.points) > 1:
                parts = await self._read_split(block)
                refined.append((block, [part.block for part in parts]))
                results.extend(parts)
                answered = True
                if on_result is not None:
                    for part in parts:
                        on_result(part)
                continue
            answered = answered or result.error not in _NO_ANSWER
            silent = not answered
            results.append(result)
            if on_result is not None:
                if line.waiting:
                    await asyncio.sleep(0)
                on_result(result)
        if refined:
            self._replace_blocks(points, refined)
        self._health.reads += 1
        if answered:
            self._silent_polls = 0
            self._health.last_good_read_ms = results[-1].ts
        elif results:
            self._silent_polls += 1
            if self._silent_polls >= _SILENT_POLLS:
                await self._silent()
        return results

    async def _read_split(self, block: ReadBlock) -> list[BlockResult]:
        """Read a rejected block as smaller requests, splitting again where they are rejected."""
        parts = split_block(block)
        log.info(
            "Device %s rejected %s %d-%d (illegal data address); reading those %d points "
            "in %d requests from now on.",
            self.device.name,
            block.table,
            block.start,
            block.start + block.count - 1,
            len(block.points),
            len(parts),
        )
        results: list[BlockResult] = []
        for part in parts:
            self._remember_layout(part)
            result = await self._read_block(part)
            if result.error == _ILLEGAL_ADDRESS_ERROR and len(part.points) > 1:
                results.extend(await self._read_split(part))
            else:
                results.append(result)
        return results

    def _replace_blocks(
        self, points: Sequence[ModbusPoint], refined: list[tuple[ReadBlock, list[ReadBlock]]]
    ) -> None:
        _, plan = self._plans[id(points)]
        replacements = {id(old): new for old, new in refined}
        new_plan: list[ReadBlock] = []
        for block in plan:
            new_plan.extend(replacements.get(id(block), [block]))
        self._plans[id(points)] = (points, new_plan)
        kept = {id(block) for block in new_plan}
        for block_id in [block_id for block_id in self._decoding if block_id not in kept]:
            del self._decoding[block_id]

    async def _read_block(self, block: ReadBlock) -> BlockResult:
        method, start, count, unit = _READ_METHOD[block.table], block.start, block.count, self.unit

        async def send(client: Any) -> Any:
            return await getattr(client, method)(start, count=count, device_id=unit)

        response: Any = None
        for _attempt in range(self.device.retries + 1):
            self._health.requests += 1
            try:
                response = await self.line.request(
                    send,
                    device=self.device.name,
                    response_timeout=self.device.timeout,
                    pause=self.device.pause,
                )
                break
            except NotConnected as exc:
                await self._lost(str(exc))
            except ConnectionException as exc:
                await self._lost(f"connection lost: {exc}")
            except (TimeoutError, ModbusIOException):
                continue
            except ModbusException as exc:
                self._health.read_errors += 1
                return BlockResult(block, None, None, f"modbus error: {exc}", now_ms())
        ts = now_ms()
        if response is None:
            self._health.read_errors += 1
            return BlockResult(block, None, None, _TIMEOUT, ts)
        if response.isError():
            self._health.read_errors += 1
            return BlockResult(block, None, None, _exception_text(response), ts)
        if block.table in ("coil", "discrete"):
            return BlockResult(block, None, list(response.bits[: block.count]), None, ts)
        registers = list(response.registers)
        if len(registers) != block.count:
            # Not the answer to this request (on RTU, possibly a late answer to an earlier one).
            self._health.read_errors += 1
            error = f"answer of {len(registers)} registers to a request for {block.count}"
            return BlockResult(block, None, None, error, ts)
        return BlockResult(block, registers, None, None, ts)

    def decode_block(self, result: BlockResult) -> list[Sample]:
        """Samples for the points of one answered (or failed) request, before transforms."""
        block, ts = result.block, result.ts
        entry = self._decoding.get(id(block))
        if entry is None or entry[0] is not block:
            self._remember_layout(block)
            entry = self._decoding[id(block)]
        _, layout, whole = entry
        if result.error is not None:
            return [Sample(point_id, None, BAD, ts, result.error) for point_id, *_ in layout]
        if result.bits is not None:
            bits = result.bits
            return [Sample(point_id, bits[offset], GOOD, ts) for point_id, offset, *_ in layout]
        assert result.registers is not None
        data = registers_to_bytes(result.registers)
        if whole is not None:
            unpack, point_ids, any_float, reorder = whole
            values = unpack(data if reorder is None else bytes(reorder(data)))
            if not any_float or all(map(isfinite, values)):
                return list(
                    map(_new_sample, zip(point_ids, values, repeat(GOOD), repeat(ts), repeat(None)))
                )
        samples = []
        for point_id, offset, decoder, is_float in layout:
            value = decoder(data, offset)
            if isinstance(value, _NotAvailable):
                samples.append(Sample(point_id, None, BAD, ts, str(value)))
                continue
            if is_float and not isfinite(value):  # type: ignore[arg-type]
                samples.append(Sample(point_id, None, BAD, ts, f"not a number: {value}"))
            else:
                samples.append(Sample(point_id, value, GOOD, ts))
        return samples

    def subscribe(self, points: Sequence[ModbusPoint]) -> AsyncIterator[Sample]:
        """Modbus has no subscriptions."""
        raise Unsupported("Modbus devices are polled; they cannot be subscribed to")

    async def write(self, point: ModbusPoint, value: Value, *, verify: bool = False) -> None:
        """Write an engineering value, encoded with the point's own type, order and scale.

        Coils use FC 5, one register FC 6, several FC 16 (FC 15 / 16 for everything when the
        device sets `write_functions: multiple`). With `verify`, the registers or coil are read
        back and compared; a difference raises `WriteNotVerified`.
        """
        if point.table in ("discrete", "input"):
            raise Unsupported(f"{point.id} is in the read-only {point.table} table")
        if point.table == "holding" and point.value_type == "bool":
            raise Unsupported(
                f"{point.id} is one bit of holding register {point.register}; writing it would "
                "need a read-modify-write that can undo a change the device makes meanwhile. "
                "Write the whole register as a uint16 point instead."
            )
        multiple = self.device.write_functions == "multiple"
        unit = self.device.unit_id
        if point.table == "coil":
            if not isinstance(value, bool) and value not in (0, 1):
                raise ValueError(f"{value!r} is not a coil state: use true or false")
            state = bool(value)

            async def send(client: Any) -> Any:
                if multiple:
                    return await client.write_coils(point.register, [state], device_id=unit)
                return await client.write_coil(point.register, state, device_id=unit)

            expected: list[int] | list[bool] = [state]
        else:
            registers = self._encode(point, value)

            async def send(client: Any) -> Any:
                if len(registers) == 1 and not multiple:
                    return await client.write_register(point.register, registers[0], device_id=unit)
                return await client.write_registers(point.register, registers, device_id=unit)

            expected = registers
        response = await self._request(send, f"write to {point.id}")
        if response.isError():
            raise WriteRefused(
                f"{self.endpoint} refused the write to {point.id} ({point.protocol_address}): "
                f"{_exception_text(response)}"
            )
        if verify:
            await self._verify(point, expected)

    def can_write_together(self, first: ModbusPoint, second: ModbusPoint) -> bool:
        """Whether `second` directly follows `first` in a table that one request can write:
        holding registers (FC 16, which multi-register values use anyway), or coils when the
        device allows FC 15 (`write_functions: multiple`)."""
        if first.table != second.table or first.register + first.width != second.register:
            return False
        if first.table == "holding":
            return "bool" not in (first.value_type, second.value_type)
        return first.table == "coil" and self.device.write_functions == "multiple"

    async def write_block(self, points: Sequence[ModbusPoint], values: Sequence[Value]) -> None:
        """Write adjacent points (see `can_write_together`) in one request, so that the device
        takes them at once: FC 16 for registers, FC 15 for coils."""
        if len(points) != len(values) or not points:
            raise ValueError("write_block needs one value per point")
        for first, second in itertools.pairwise(points):
            if not self.can_write_together(first, second):
                raise ValueError(f"{second.id} does not directly follow {first.id}")
        start, unit = points[0].register, self.device.unit_id
        if points[0].table == "coil":
            states = []
            for value in values:
                if not isinstance(value, bool) and value not in (0, 1):
                    raise ValueError(f"{value!r} is not a coil state: use true or false")
                states.append(bool(value))

            async def send(client: Any) -> Any:
                return await client.write_coils(start, states, device_id=unit)
        else:
            registers = [
                word
                for point, value in zip(points, values, strict=True)
                for word in self._encode(point, value)
            ]

            async def send(client: Any) -> Any:
                return await client.write_registers(start, registers, device_id=unit)

        names = ", ".join(point.id for point in points)
        response = await self._request(send, f"write to {names}")
        if response.isError():
            raise WriteRefused(
                f"{self.endpoint} refused the write to {names} "
                f"({points[0].protocol_address} and on): {_exception_text(response)}"
            )

    def _encode(self, point: ModbusPoint, value: Value) -> list[int]:
        if point.value_type == "string":
            if not isinstance(value, str):
                raise ValueError(f"{value!r} is not text, {point.id} is a string point")
            return encode_string(value, point.length or 0, byte_swap=point.byte_swap)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"{value!r} is not a number, {point.id} is {point.value_type}")
        raw: float = value
        if point.scale != 1.0 or point.offset != 0.0:
            raw = (value - point.offset) / point.scale
            if not point.value_type.startswith("float"):
                nearest = round(raw)
                if abs(raw - nearest) > 1e-6 * max(1.0, abs(raw)):
                    raise ValueError(
                        f"{value} is not a multiple of {point.id}'s scale {point.scale:g}"
                    )
                raw = nearest
        return encode(raw, point.value_type, point.order)

    async def _verify(self, point: ModbusPoint, expected: list[int] | list[bool]) -> None:
        block = ReadBlock(point.table, point.register, len(expected), (point,))
        result = await self._read_block(block)
        got = result.bits if result.bits is not None else result.registers
        if result.error is not None:
            raise WriteNotVerified(f"cannot read back {point.id} after writing it: {result.error}")
        if got != list(expected):
            raise WriteNotVerified(
                f"{point.id} reads back as {_raw(got)} after writing {_raw(expected)}"
            )

    async def _request(self, send: Callable[[Any], Any], what: str) -> Any:
        self._health.requests += 1
        try:
            return await self.line.request(
                send,
                device=self.device.name,
                response_timeout=self.device.timeout,
                pause=self.device.pause,
            )
        except NotConnected as exc:
            raise NotConnected(f"cannot {what}: {exc}") from exc
        except ConnectionException as exc:
            await self._lost(f"connection lost: {exc}")
        except (TimeoutError, ModbusIOException):
            raise DriverError(f"{self.endpoint} did not answer the {what}") from None

    def health(self) -> Health:
        """Link state and counters."""
        return self._health

    async def _silent(self) -> NoReturn:
        """The unit does not answer: the device task backs off; a dead line is reopened."""
        self._silent_polls = 0
        if self.line.dead:
            await self._lost(f"no answer from {self.endpoint}")
        reason = f"unit {self.device.unit_id} does not answer"
        if self.line.units > 1:
            reason += " (other units on the line do)"
        self._health.set_state(LinkState.DISCONNECTED, reason)
        raise NotConnected(reason)

    async def _lost(self, reason: str) -> NoReturn:
        self.line.close()
        self._health.set_state(LinkState.DISCONNECTED, reason)
        raise NotConnected(reason)


# Builds a Sample from a complete 5-tuple in C: 40 % faster than calling Sample(...), which
# matters at several hundred thousand samples per second.
_new_sample = functools.partial(tuple.__new__, Sample)


class _WholeBlock(NamedTuple):
    unpack: Callable[[bytes], tuple[Any, ...]]
    point_ids: tuple[str, ...]
    any_float: bool
    # Puts every value's bytes in big-endian order (None when all are ABCD already).
    reorder: Callable[[bytes], tuple[int, ...]] | None


def _whole_block_format(block: ReadBlock) -> _WholeBlock | None:
    """One struct format for a block of numbers, with pad bytes for the gaps, and the byte
    permutation that undoes the points' orders: decoding then takes two C calls per block."""
    if block.table in ("coil", "discrete"):
        return None
    members = sorted(block.points, key=lambda p: p.register)
    if list(block.points) != members:
        return None  # ids must come out in the order of the block's points
    fmt, at = [">"], block.start
    permutation = list(range(block.count * 2))
    for point in members:
        code = _STRUCT_CODE.get(point.value_type)
        if code is None or point.register < at or point.unavailable:
            return None
        if point.register > at:
            fmt.append(f"{(point.register - at) * 2}x")
        fmt.append(code)
        first = (point.register - block.start) * 2
        for index, wire_index in enumerate(byte_permutation(point.width * 2, point.order)):
            permutation[first + index] = first + wire_index
        at = point.register + point.width
    identity = permutation == list(range(block.count * 2))
    reorder = None if identity else operator.itemgetter(*permutation)
    any_float = any(point.value_type.startswith("float") for point in members)
    return _WholeBlock(
        struct.Struct("".join(fmt)).unpack_from, tuple(p.id for p in members), any_float, reorder
    )


class _NotAvailable(str):
    """What a decoder gives for a raw value the device uses to say "no value"."""


def _unless_unavailable(
    decoder: Callable[[bytes, int], int | float], unavailable: frozenset[int]
) -> Callable[[bytes, int], Value]:
    def decode(data: bytes, at: int) -> Value:
        value = decoder(data, at)
        if value in unavailable:
            return _NotAvailable(f"not available (raw {value:#x})")
        return value

    return decode


def _as_decoded(point: ModbusPoint) -> frozenset[int]:
    """The point's `unavailable` raw values as its type decodes them: a bit pattern such as
    0xFFFF written for a signed type means -1."""
    bits = point.width * 16
    signed = point.value_type.startswith("int")
    return frozenset(
        value - (1 << bits) if signed and value >= 1 << (bits - 1) else value
        for value in point.unavailable or ()
    )


def _no_decode(_data: bytes, _at: int) -> Value:  # bit tables are not decoded from bytes
    raise AssertionError("bits are taken from the response's bit list")


def _exception_text(response: Any) -> str:
    code = getattr(response, "exception_code", 0)
    return f"exception {code} ({EXCEPTION_NAMES.get(code, 'unknown exception')})"


_ILLEGAL_ADDRESS_ERROR = f"exception {_ILLEGAL_ADDRESS} ({EXCEPTION_NAMES[_ILLEGAL_ADDRESS]})"
# Errors that mean the unit itself did not answer: a timeout, or a gateway saying so.
_NO_ANSWER = frozenset(
    [_TIMEOUT, *(f"exception {code} ({EXCEPTION_NAMES[code]})" for code in (10, 11))]
)


def _raw(values: Sequence[int] | Sequence[bool] | None) -> str:
    if values is None:
        return "nothing"
    if values and isinstance(values[0], bool):
        return str([int(v) for v in values])
    return " ".join(f"{v:04X}" for v in values)
