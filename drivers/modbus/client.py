"""The Modbus TCP driver: one connection per device, one request in flight, batched reads."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from agent.model import Quality, Sample, Value, now_ms
from agent.settings import ModbusPoint, ModbusTcpDevice
from drivers.base import Health, LinkState, NotConnected, Unsupported
from drivers.modbus.codec import Decoder, decoder_for, encode, registers_to_bytes
from drivers.modbus.planner import ReadBlock, plan_reads

__all__ = ["BlockResult", "ModbusTcpDriver"]

# pymodbus logs every failed connect and timeout itself (timeouts at ERROR, with a dump of the
# last frames); the device task logs each state change once and reports errors as BAD samples.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

_EXCEPTION_NAMES = {
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

GOOD, BAD = Quality.GOOD, Quality.BAD
isfinite = math.isfinite

# After this many consecutive polls in which every request timed out, the TCP link is treated as
# dead (half-open connections do not fail on their own) and reopened.
_TIMEOUTS_BEFORE_RECONNECT = 3


@dataclass(frozen=True, slots=True)
class BlockResult:
    """The raw answer to one read request, kept for `shopfloor read`."""

    block: ReadBlock
    registers: list[int] | None
    bits: list[bool] | None
    error: str | None
    ts: int


class ModbusTcpDriver:
    """Reads and writes one Modbus TCP unit. Construction does no I/O."""

    def __init__(self, device: ModbusTcpDevice) -> None:
        self.device = device
        self._client: AsyncModbusTcpClient | None = None
        self._lock = asyncio.Lock()
        self._health = Health(since_ms=now_ms())
        self._plans: dict[int, tuple[Sequence[ModbusPoint], list[ReadBlock]]] = {}
        self._layouts: dict[int, list[tuple[str, int, Decoder | None]]] = {}
        self._timeout_polls = 0

    @property
    def endpoint(self) -> str:
        """`host:port/unit` for messages."""
        return f"{self.device.host}:{self.device.port} unit {self.device.unit_id}"

    async def connect(self) -> None:
        """Open the TCP connection; raise `NotConnected` when the device does not accept it."""
        await self.close()
        self._set_state(LinkState.CONNECTING)
        client = AsyncModbusTcpClient(
            self.device.host,
            port=self.device.port,
            timeout=self.device.timeout,
            retries=0,
            reconnect_delay=0,  # reconnecting is the device task's job, with jitter
        )
        if not await client.connect():
            client.close()
            error = f"cannot open a TCP connection to {self.device.host}:{self.device.port}"
            self._set_state(LinkState.DISCONNECTED, error)
            raise NotConnected(error)
        self._client = client
        self._timeout_polls = 0
        self._set_state(LinkState.CONNECTED)

    async def close(self) -> None:
        """Close the connection if open."""
        if self._client is not None:
            self._client.close()
            self._client = None

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
            self._layouts[id(block)] = [
                (
                    point.id,
                    point.register - block.start,
                    None
                    if point.value_type == "bool"
                    else decoder_for(point.value_type, point.order),
                )
                for point in block.points
            ]
        return plan

    async def read(self, points: Sequence[ModbusPoint]) -> list[Sample]:
        """One request per planned block; failed blocks give BAD samples for their points."""
        results = await self.read_blocks(points)
        samples: list[Sample] = []
        for result in results:
            samples.extend(self.decode_block(result))
        return samples

    async def read_blocks(self, points: Sequence[ModbusPoint]) -> list[BlockResult]:
        """Raw answers per request, for callers that want the registers too."""
        plan = self.plan(points)
        results = [await self._read_block(block) for block in plan]
        self._health.reads += 1
        timed_out = sum(1 for result in results if result.error == "timeout")
        if results and timed_out == len(results):
            self._timeout_polls += 1
            if self._timeout_polls >= _TIMEOUTS_BEFORE_RECONNECT:
                await self._lost(f"no answer to {self._timeout_polls} polls in a row")
        else:
            self._timeout_polls = 0
        if any(result.error is None for result in results):
            self._health.last_good_read_ms = results[-1].ts
        return results

    async def _read_block(self, block: ReadBlock) -> BlockResult:
        client = self._client
        if client is None or not client.connected:
            await self._lost("connection closed by the device")
        call = {
            "coil": client.read_coils,
            "discrete": client.read_discrete_inputs,
            "input": client.read_input_registers,
            "holding": client.read_holding_registers,
        }[block.table]
        self._health.requests += 1
        try:
            async with self._lock:
                response: Any = await call(
                    block.start, count=block.count, device_id=self.device.unit_id
                )
        except ConnectionException as exc:
            await self._lost(f"connection lost: {exc}")
        except (TimeoutError, ModbusIOException):
            self._health.read_errors += 1
            return BlockResult(block, None, None, "timeout", now_ms())
        except ModbusException as exc:
            self._health.read_errors += 1
            return BlockResult(block, None, None, f"modbus error: {exc}", now_ms())
        ts = now_ms()
        if response.isError():
            self._health.read_errors += 1
            code = getattr(response, "exception_code", 0)
            name = _EXCEPTION_NAMES.get(code, "unknown exception")
            return BlockResult(block, None, None, f"exception {code} ({name})", ts)
        if block.table in ("coil", "discrete"):
            return BlockResult(block, None, list(response.bits[: block.count]), None, ts)
        registers = list(response.registers)
        if len(registers) < block.count:
            self._health.read_errors += 1
            return BlockResult(block, None, None, "short response", ts)
        return BlockResult(block, registers, None, None, ts)

    def decode_block(self, result: BlockResult) -> list[Sample]:
        """Samples for the points of one answered (or failed) request, before transforms."""
        block, ts = result.block, result.ts
        layout = self._layouts[id(block)]
        if result.error is not None:
            return [Sample(point_id, None, BAD, ts, result.error) for point_id, _, _ in layout]
        if result.bits is not None:
            bits = result.bits
            return [Sample(point_id, bits[offset], GOOD, ts) for point_id, offset, _ in layout]
        assert result.registers is not None
        data = registers_to_bytes(result.registers)
        samples = []
        for point_id, offset, decoder in layout:
            assert decoder is not None
            value = decoder(data, offset * 2)
            if not isfinite(value):
                samples.append(Sample(point_id, None, BAD, ts, f"float32 {value}"))
            else:
                samples.append(Sample(point_id, value, GOOD, ts))
        return samples

    def subscribe(self, points: Sequence[ModbusPoint]) -> AsyncIterator[Sample]:
        """Modbus has no subscriptions."""
        raise Unsupported("Modbus devices are polled; they cannot be subscribed to")

    async def write(self, point: ModbusPoint, value: Value) -> None:
        """Write a coil (FC 5) or registers (FC 6 / 16), encoded with the point's type and order."""
        client = self._client
        if client is None or not client.connected:
            raise NotConnected(f"not connected to {self.endpoint}")
        if point.table in ("discrete", "input"):
            raise Unsupported(f"{point.table} points are read-only")
        async with self._lock:
            try:
                if point.table == "coil":
                    response: Any = await client.write_coil(
                        point.register, bool(value), device_id=self.device.unit_id
                    )
                else:
                    if not isinstance(value, int | float) or isinstance(value, bool):
                        raise ValueError(f"{value!r} is not a number")
                    registers = encode(value, point.value_type, point.order)
                    if len(registers) == 1:
                        response = await client.write_register(
                            point.register, registers[0], device_id=self.device.unit_id
                        )
                    else:
                        response = await client.write_registers(
                            point.register, registers, device_id=self.device.unit_id
                        )
            except ConnectionException as exc:
                raise NotConnected(str(exc)) from exc
        if response.isError():
            code = getattr(response, "exception_code", 0)
            raise Unsupported(
                f"{self.endpoint} refused the write to {point.address}: exception {code} "
                f"({_EXCEPTION_NAMES.get(code, 'unknown exception')})"
            )

    def health(self) -> Health:
        """Link state and counters."""
        return self._health

    async def _lost(self, reason: str) -> NoReturn:
        await self.close()
        self._set_state(LinkState.DISCONNECTED, reason)
        raise NotConnected(reason)

    def _set_state(self, state: LinkState, error: str | None = None) -> None:
        if state != self._health.state:
            self._health.state = state
            self._health.since_ms = now_ms()
        if error is not None:
            self._health.last_error = error
