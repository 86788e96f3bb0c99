"""A Modbus line: a TCP connection, a converter's socket or a serial port, shared by its units.

Modbus cannot tell two answers apart on a serial bus, and most TCP gateways serve one request at
a time, so a line carries one request at a time. Units take turns request by request (the lock
is fair: first come, first served), so a unit that does not answer delays the others by at most
its own timeout per request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException
from pymodbus.framer import FramerType

from agent.settings import ModbusDevice, ModbusRtuDevice, ModbusRtuOverTcpDevice
from drivers.base import NotConnected

__all__ = ["ModbusLine", "ModbusLines"]

# pymodbus logs every failed connect and timeout itself (timeouts at ERROR, with a dump of the
# last frames); the device task logs each state change once and reports errors as BAD samples.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

T = TypeVar("T")
Client = AsyncModbusTcpClient | AsyncModbusSerialClient

_PARITY = {"none": "N", "even": "E", "odd": "O"}
_LATE_ANSWER_GRACE_S = 0.05


class ModbusLine:
    """The shared link of the devices on one line; construction does no I/O."""

    def __init__(self, device: ModbusDevice) -> None:
        self.key = device.line
        self._template = device
        self._rtu_framing = isinstance(device, ModbusRtuDevice | ModbusRtuOverTcpDevice)
        self._client: Client | None = None
        self._request_lock = asyncio.Lock()
        self._connect_lock = asyncio.Lock()
        self._last_request_end = 0.0
        # The devices whose last request went unanswered since anything on the line last
        # answered (an exception response is an answer): the line is dead when that is all of
        # them, not when one dead unit has timed out a few times in a row.
        self.silent: set[str] = set()
        self.units = 0
        self.requests = 0
        self.opens = 0
        # Requests queued behind the one on the line.
        self.waiting = 0

    @property
    def dead(self) -> bool:
        """Whether the line looks dead: no device on it got an answer since the last answer."""
        return len(self.silent) >= max(1, self.units)

    @property
    def connected(self) -> bool:
        """Whether the link is open."""
        return self._client is not None and self._client.connected

    async def connect(self) -> None:
        """Open the link unless it is open; raise `NotConnected` if that fails."""
        async with self._connect_lock:
            if self.connected:
                return
            self.close()
            client = self._new_client()
            # Our own policy decides when a silent line is dead (see ModbusDriver): pymodbus
            # would otherwise drop a TCP connection shared with healthy units after a few
            # timeouts of one dead unit.
            client.set_max_no_responses(1_000_000)
            if not await client.connect():
                client.close()
                raise NotConnected(f"cannot open {self.describe()}")
            self._client = client
            self.opens += 1
            self.silent.clear()

    def close(self) -> None:
        """Close the link; the devices on it reconnect through `connect()`."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def describe(self) -> str:
        """The line in words, for messages."""
        device = self._template
        if isinstance(device, ModbusRtuDevice):
            return (
                f"serial port {device.serial_port} ({device.baudrate} baud, "
                f"{device.bytesize}{_PARITY[device.parity]}{device.stopbits})"
            )
        kind = (
            "RTU-over-TCP connection"
            if isinstance(device, ModbusRtuOverTcpDevice)
            else "TCP connection"
        )
        return f"a {kind} to {device.host}:{device.port}"

    async def request(
        self,
        call: Callable[[Client], Awaitable[T]],
        *,
        device: str,
        response_timeout: float,
        pause: float = 0.0,
    ) -> T:
        """Run one request alone on the line, after `pause` seconds of quiet since the last.

        `response_timeout` is handed to pymodbus, which waits that long for the answer; an
        outer asyncio timeout would cancel pymodbus mid-request and confuse the next one.

        `device` names the requester, to tell one silent unit from a dead line. Raises
        `NotConnected` when the link is closed; pymodbus' own exceptions pass through.
        """
        loop = asyncio.get_running_loop()
        self.waiting += 1
        try:
            await self._request_lock.acquire()
        finally:
            self.waiting -= 1
        try:
            client = self._client
            if client is None or not client.connected:
                raise NotConnected(f"{self.describe()} is closed")
            if pause > 0:
                quiet_for = loop.time() - self._last_request_end
                if quiet_for < pause:
                    await asyncio.sleep(pause - quiet_for)
            # pymodbus reads the timeout at every request; devices on one line may differ.
            client.ctx.comm_params.timeout_connect = response_timeout
            self.requests += 1
            try:
                response: Any = await call(client)
            except (TimeoutError, ModbusIOException):
                self.silent.add(device)
                if self._rtu_framing:
                    # RTU frames carry no transaction id: give a late answer time to arrive
                    # now, so that pymodbus discards it instead of taking it for the next one.
                    await asyncio.sleep(_LATE_ANSWER_GRACE_S)
                raise
            finally:
                self._last_request_end = loop.time()
            self.silent.clear()
            return response  # type: ignore[no-any-return]
        finally:
            self._request_lock.release()

    def _new_client(self) -> Client:
        device = self._template
        common: dict[str, Any] = {
            "timeout": device.timeout,
            "retries": 0,  # the driver retries, so that other units get their turn between
            "reconnect_delay": 0,  # reconnecting is the device task's job, with jitter
        }
        if isinstance(device, ModbusRtuDevice):
            return AsyncModbusSerialClient(
                str(device.serial_port),
                framer=FramerType.RTU,
                baudrate=device.baudrate,
                bytesize=device.bytesize,
                parity=_PARITY[device.parity],
                stopbits=device.stopbits,
                **common,
            )
        framer = FramerType.RTU if isinstance(device, ModbusRtuOverTcpDevice) else FramerType.SOCKET
        return AsyncModbusTcpClient(device.host, port=device.port, framer=framer, **common)


class ModbusLines:
    """The lines of one agent, one per TCP endpoint or serial port, made on first use."""

    def __init__(self) -> None:
        self._lines: dict[str, ModbusLine] = {}

    def for_device(self, device: ModbusDevice) -> ModbusLine:
        """The line this device's requests travel on. Devices sharing a serial port agree on
        its settings: the configuration refuses them otherwise (Config._serial_settings_agree)."""
        line = self._lines.get(device.line)
        if line is None:
            line = self._lines[device.line] = ModbusLine(device)
        line.units += 1
        return line

    def __iter__(self) -> Iterator[ModbusLine]:
        """The lines made so far."""
        return iter(list(self._lines.values()))

    def close(self) -> None:
        """Close every line."""
        for line in self._lines.values():
            line.close()
