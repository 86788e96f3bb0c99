"""How a station cuts its handshake writes into Modbus requests, and in which order."""

from __future__ import annotations

from agent.settings import ModbusTcpDevice
from drivers.modbus.client import ModbusDriver
from drivers.modbus.line import ModbusLines
from inference.vision.station import PlcPoint, _request_groups


def plc_points(write_functions: str = "multiple") -> dict[str, PlcPoint]:
    settings = ModbusTcpDevice.model_validate(
        {
            "name": "sorter",
            "driver": "modbus_tcp",
            "host": "127.0.0.1",
            "write_functions": write_functions,
            "points": [
                {"id": "counter", "address": "holding:0", "type": "uint16"},
                {"id": "class_id", "address": "holding:1", "type": "int16"},
                {"id": "error_code", "address": "holding:2", "type": "int16"},
                {"id": "ready", "address": "coil:2"},
                {"id": "result_ready", "address": "coil:3"},
                {"id": "ok", "address": "coil:4"},
                {"id": "ng", "address": "coil:5"},
                {"id": "error", "address": "coil:9"},
            ],
        }
    )
    driver = ModbusDriver(settings, ModbusLines().for_device(settings))
    return {point.id: PlcPoint("sorter", point, driver) for point in settings.points}


def names(groups: list[list[tuple[str, PlcPoint, object]]]) -> list[list[str]]:
    return [[name for name, _, _ in group] for group in groups]


def verdict_writes(plc: dict[str, PlcPoint]) -> list[tuple[str, PlcPoint, object]]:
    order = ["ok", "ng", "class_id", "error", "error_code", "counter"]
    return [(name, plc[name], 0) for name in order]


def test_adjacent_signals_share_a_request_and_the_counter_goes_last():
    groups = _request_groups(verdict_writes(plc_points()), last="counter")
    # counter (holding:0) sits before class_id and error_code: they go in one request, which
    # the PLC takes at once, and that request comes after every other verdict signal.
    assert names(groups) == [["ok", "ng"], ["error"], ["counter", "class_id", "error_code"]]


def test_coils_go_one_by_one_without_fc15():
    groups = _request_groups(verdict_writes(plc_points("single")), last="counter")
    assert names(groups) == [["ok"], ["ng"], ["error"], ["counter", "class_id", "error_code"]]


def test_without_a_last_signal_requests_keep_the_order_given():
    plc = plc_points()
    writes = [(name, plc[name], 1) for name in ("result_ready", "ready", "ok", "ng")]
    assert names(_request_groups(writes, last=None)) == [["ready", "result_ready", "ok", "ng"]]
