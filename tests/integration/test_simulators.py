"""The simulated devices speak Modbus TCP, RTU over TCP and RTU on a serial line.

Bare pymodbus clients read them, so these tests check the simulators, not the agent's driver:
values come back exactly, several units on one line keep their own registers, an absent unit
stays silent, and an RTU device stopped and started again on the same line answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException
from pymodbus.framer import FramerRTU, FramerType

from agent.settings import ModbusTable, ModbusType, WordOrder
from drivers.modbus.codec import decode
from drivers.simulate.modbus import SimulatedModbusServer, Transport
from drivers.simulate.serial_line import PtyPair
from tests.conftest import REPO

T = TypeVar("T")
Client = AsyncModbusTcpClient | AsyncModbusSerialClient
TIMEOUT = 0.3  # the client's wait for an answer: an absent unit costs this much

TRANSPORTS: list[Transport] = ["tcp", "rtu_tcp", "rtu"]


@dataclass
class Device:
    """A started simulator and a way to open a client that talks to it."""

    server: SimulatedModbusServer
    serial_end: str | None = None  # the client's end of the pseudo-terminal pair, for rtu

    def client(self) -> Client:
        """A pymodbus client for the device's transport; build it inside the event loop."""
        common: dict[str, Any] = {"timeout": TIMEOUT, "retries": 0, "reconnect_delay": 0}
        if self.server.transport == "rtu":
            assert self.serial_end is not None
            return AsyncModbusSerialClient(
                self.serial_end, framer=FramerType.RTU, baudrate=self.server.baudrate, **common
            )
        framer = FramerType.RTU if self.server.transport == "rtu_tcp" else FramerType.SOCKET
        return AsyncModbusTcpClient("127.0.0.1", port=self.server.port, framer=framer, **common)


@pytest.fixture(autouse=True)
def _nothing_left_running() -> Iterator[None]:
    """Every test stops its simulator threads and socat processes (checked after teardown)."""
    yield
    threads = [t.name for t in threading.enumerate() if t.name == "modbus-sim"]
    assert not threads, f"simulator threads still running: {threads}"
    assert not _socat_children(), "socat still running"


@pytest.fixture
def device(
    request: pytest.FixtureRequest, simulator_factory: Callable[..., SimulatedModbusServer]
) -> Callable[..., Device]:
    """Factory: `device("rtu", units=(1, 2))` starts a simulator on that transport."""

    def make(transport: Transport, units: Sequence[int] = (1,)) -> Device:
        if transport == "rtu":
            serial_pair: tuple[str, str] = request.getfixturevalue("serial_pair")
            rtu_simulator: Callable[..., SimulatedModbusServer] = request.getfixturevalue(
                "rtu_simulator"
            )
            return Device(rtu_simulator(units=units), serial_end=serial_pair[1])
        return Device(simulator_factory(transport, units=units))

    return make


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run one scenario in a fresh event loop, failing it if it takes more than 5 s."""
    return asyncio.run(asyncio.wait_for(coroutine, 5))


async def read_registers(
    client: Client, table: ModbusTable, address: int, count: int, unit: int
) -> list[int]:
    """Holding or input registers, raising on an exception response."""
    read = client.read_holding_registers if table == "holding" else client.read_input_registers
    response = await read(address, count=count, device_id=unit)
    assert not response.isError(), response
    return list(response.registers)


async def read_bit(client: Client, table: ModbusTable, address: int, unit: int) -> bool:
    """One coil or discrete input."""
    read = client.read_coils if table == "coil" else client.read_discrete_inputs
    response = await read(address, count=1, device_id=unit)
    assert not response.isError(), response
    return bool(response.bits[0])


async def read_float(client: Client, unit: int) -> float:
    """holding:0 as float32 ABCD, the value the multi-unit tests give each unit."""
    return float(decode(await read_registers(client, "holding", 0, 2, unit), "float32", "ABCD"))


def _socat_children() -> list[int]:
    """Pids of socat processes this test process started and has not reaped."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it exited while we looked
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        if name == "socat" and parent == os.getpid():
            found.append(int(entry.name))
    return found


TYPED_VALUES: list[tuple[ModbusTable, int, float, ModbusType, WordOrder]] = [
    ("holding", 0, 54_321, "uint16", "ABCD"),
    ("holding", 1, -1_234, "int16", "ABCD"),
    ("holding", 2, 0x01020304, "uint32", "ABCD"),
    ("holding", 4, 21.75, "float32", "CDAB"),
    ("holding", 6, -12_345.678, "float64", "DCBA"),
    ("input", 10, 230.125, "float32", "ABCD"),
    ("input", 12, -70_000, "int32", "BADC"),
]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_values_set_are_read_back_exactly(device: Callable[..., Device], transport: Transport):
    simulated = device(transport)
    for table, address, value, value_type, order in TYPED_VALUES:
        simulated.server.set_value(table, address, value, value_type, order=order)
    simulated.server.set_value("coil", 5, True, "bool")
    simulated.server.set_value("discrete", 7, True, "bool")

    async def scenario() -> None:
        client = simulated.client()
        assert await client.connect()
        try:
            for table, address, value, value_type, order in TYPED_VALUES:
                count = 4 if value_type == "float64" else 2 if value_type[-2:] == "32" else 1
                registers = await read_registers(client, table, address, count, unit=1)
                assert decode(registers, value_type, order) == value, (table, address)
            assert await read_bit(client, "coil", 5, unit=1)
            assert not await read_bit(client, "coil", 4, unit=1)
            assert await read_bit(client, "discrete", 7, unit=1)
        finally:
            client.close()

    run(scenario())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_three_units_answer_with_their_own_values(
    device: Callable[..., Device], transport: Transport
):
    simulated = device(transport, units=(1, 2, 3))
    for unit in (1, 2, 3):
        simulated.server.set_value("holding", 0, 10 * unit + 0.5, "float32", unit=unit)
        simulated.server.set_registers("input", 3, [unit * 111], unit=unit)

    async def scenario() -> None:
        client = simulated.client()
        assert await client.connect()
        try:
            # Interleaved, as a poller on a shared line asks them.
            for unit in (3, 1, 2, 1):
                assert await read_float(client, unit) == 10 * unit + 0.5
                assert await read_registers(client, "input", 3, 1, unit) == [unit * 111]
        finally:
            client.close()

    run(scenario())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_absent_unit_is_silent_and_the_others_still_answer(
    device: Callable[..., Device], transport: Transport
):
    simulated = device(transport, units=(1, 2, 3))
    for unit in (1, 2, 3):
        simulated.server.set_value("holding", 0, unit, "float32", unit=unit)
    with pytest.raises(ValueError, match="unit 4 is not simulated"):
        simulated.server.set_value("holding", 0, 4, "float32", unit=4)

    async def scenario() -> None:
        client = simulated.client()
        assert await client.connect()
        try:
            assert await read_float(client, 1) == 1
            began = time.monotonic()
            # No exception response either: pymodbus raises only when nothing came back.
            with pytest.raises(ModbusIOException, match="No response"):
                await client.read_holding_registers(0, count=2, device_id=4)
            assert time.monotonic() - began >= TIMEOUT * 0.9
            assert await read_float(client, 3) == 3
            assert await read_float(client, 2) == 2
        finally:
            client.close()

    run(scenario())


def test_rtu_device_restarted_on_the_same_line_answers_again(
    serial_pair: tuple[str, str], rtu_simulator: Callable[..., SimulatedModbusServer]
):
    server = rtu_simulator(units=(1, 2))
    server.set_value("holding", 0, 1.5, "float32", unit=1)
    server.set_value("holding", 0, 2.5, "float32", unit=2)
    simulated = Device(server, serial_end=serial_pair[1])

    async def scenario() -> None:
        # One client keeps its end open throughout, as the agent does while a device reboots.
        client = simulated.client()
        assert await client.connect()
        try:
            for _restart in range(2):
                assert await read_float(client, 1) == 1.5
                await asyncio.to_thread(server.stop)
                with pytest.raises(ModbusIOException):
                    await read_float(client, 2)  # sent while nothing listens: never answered
                await asyncio.to_thread(server.start)
                # Register contents survived the restart.
                assert await read_float(client, 2) == 2.5
                assert await read_float(client, 1) == 1.5
            await asyncio.to_thread(server.set_value, "holding", 0, 3.5, "float32", unit=1)
            assert await read_float(client, 1) == 3.5
        finally:
            client.close()

        fresh = simulated.client()
        assert await fresh.connect()
        try:
            assert await read_float(fresh, 2) == 2.5
        finally:
            fresh.close()

    run(scenario())


def test_rtu_device_does_not_answer_requests_sent_while_it_was_off(
    serial_pair: tuple[str, str], rtu_simulator: Callable[..., SimulatedModbusServer]
):
    # A late answer would be paired with the client's next request to another unit.
    server = rtu_simulator(units=(1,))
    server.stop()
    request = b"\x01\x03\x00\x00\x00\x01"
    request += FramerRTU.compute_CRC(request).to_bytes(2, "big")
    client_fd = os.open(serial_pair[1], os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        os.write(client_fd, request)
        time.sleep(0.05)  # socat moves it to the server end, where nothing reads
        server.start()
        time.sleep(0.2)
        with pytest.raises(BlockingIOError):
            os.read(client_fd, 64)
        os.write(client_fd, request)  # asked again, it answers
        deadline = time.monotonic() + 2
        answer = b""
        while len(answer) < 7 and time.monotonic() < deadline:
            with contextlib.suppress(BlockingIOError):
                answer += os.read(client_fd, 64)
            time.sleep(0.01)
        assert answer[:5] == b"\x01\x03\x02\x00\x00"
    finally:
        os.close(client_fd)


def test_pty_pair_passes_bytes_and_stops_cleanly(tmp_path: Path):
    with PtyPair(tmp_path) as line:
        assert line.running
        server_device, client_device = line.devices()
        assert server_device.startswith("/dev/pts/") and client_device.startswith("/dev/pts/")
        server_fd = os.open(line.server_end, os.O_RDWR | os.O_NOCTTY)
        client_fd = os.open(line.client_end, os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(client_fd, b"\x01\x03\x00\x00\x00\x01")
            assert os.read(server_fd, 16) == b"\x01\x03\x00\x00\x00\x01"  # raw: untouched
        finally:
            os.close(server_fd)
            os.close(client_fd)
    assert not line.running
    assert not Path(line.server_end).exists() and not Path(line.client_end).exists()


def test_rtu_needs_a_serial_port_and_bus_unit_ids():
    with pytest.raises(ValueError, match="needs serial_port"):
        SimulatedModbusServer(transport="rtu")
    with pytest.raises(ValueError, match="1-247"):
        SimulatedModbusServer(transport="rtu", serial_port="/dev/null", unit_ids=(0, 1))
    with pytest.raises(OSError, match="cannot serve Modbus RTU on /nonexistent"):
        SimulatedModbusServer(transport="rtu", serial_port="/nonexistent/tty").start()


def test_simulate_command_serves_several_units_over_rtu(serial_pair: tuple[str, str]):
    server_end, client_end = serial_pair
    command = [sys.executable, "-m", "agent", "simulate", "modbus", "--device", "meter"]
    options = ["--transport", "rtu", "--serial", server_end, "--baudrate", "19200"]
    process = subprocess.Popen(
        [*command, *options, "--units", "2,5"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},  # the banner arrives before it exits
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert f"serving Modbus RTU on {server_end} (19200 8N1), units 2, 5." in banner

        async def scenario() -> list[float]:
            client = AsyncModbusSerialClient(client_end, baudrate=19200, timeout=1, retries=0)
            assert await client.connect()
            try:
                voltages = []
                for unit in (2, 5):
                    registers = await read_registers(client, "input", 0, 2, unit)
                    voltages.append(float(decode(registers, "float32", "ABCD")))
                return voltages
            finally:
                client.close()

        assert all(220 < voltage < 240 for voltage in run(scenario()))
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(5) == 0


def test_simulate_help_explains_the_transports():
    result = subprocess.run(
        [sys.executable, "-m", "agent", "simulate", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    for option in ("--transport {tcp,rtu-tcp,rtu}", "--serial PATH", "--baudrate", "--units"):
        assert option in result.stdout
    assert "--transport rtu --serial /tmp/sim" in result.stdout


def test_simulate_rtu_without_a_serial_port_is_refused():
    result = subprocess.run(
        [sys.executable, "-m", "agent", "simulate", "modbus", "--transport", "rtu"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "--transport rtu needs --serial PATH" in result.stderr


SIMULATE = [sys.executable, "-m", "agent", "simulate", "modbus"]
READ = [sys.executable, "-m", "agent", "read"]


def test_simulate_a_profile_and_read_it_with_the_same_profile(tmp_path: Path):
    from drivers.simulate.broker import free_port
    from drivers.simulate.meters import expected_values
    from tests.conftest import modbus_device, write_config

    port = free_port()
    process = subprocess.Popen(
        [*SIMULATE, "--profile", "carlo-gavazzi-em340", "--port", str(port), "--units", "7"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert f"Simulated carlo-gavazzi-em340 serving Modbus TCP on 127.0.0.1:{port}" in banner
        config = write_config(
            tmp_path,
            broker_port=1883,
            devices=[
                modbus_device(
                    "em340",
                    port,
                    [],
                    profile="carlo-gavazzi-em340",
                    quantities=["voltage_l1", "power_total"],
                    unit_id=7,
                )
            ],
        )
        result = subprocess.run(
            [*READ, str(config), "em340.voltage_l1", "em340.power_total"],
            cwd=REPO,
            capture_output=True,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        expected = expected_values("carlo-gavazzi-em340")
        assert f"{expected['voltage_l1']} V" in result.stdout
        assert f"{expected['power_total']} W" in result.stdout
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(5) == 0


def test_simulate_an_unknown_profile_suggests_the_right_name():
    result = subprocess.run(
        [sys.executable, "-m", "agent", "simulate", "modbus", "--profile", "eastron-sdm63"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "did you mean 'eastron-sdm630'?" in result.stderr
    assert "Traceback" not in result.stderr
