"""Device profiles: the shipped register maps, and how a device's `profile:` becomes points."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from agent.config import (
    PROFILES_DIR,
    ConfigError,
    UnknownProfile,
    load_config,
    load_profile,
    profile_names,
)
from agent.settings import Config, ModbusPoint
from drivers.simulate.meters import expected_values, meter_registers

SHIPPED = [
    "abb-b23",
    "acrel-adw300",
    "carlo-gavazzi-em24-e1",
    "carlo-gavazzi-em340",
    "chint-dtsu666",
    "eastron-sdm120",
    "eastron-sdm230",
    "eastron-sdm630",
    "janitza-umg96rm",
    "schneider-iem3000",
    "schneider-pm5100",
]
# Quantities that are plain numbers: power factors, ratios, codes.
UNITLESS = re.compile(r"^(power_factor|cos_phi|ct_ratio|pt_ratio|product_id|phase_sequence)")

HEADER = """\
agent:
  id: gw-test
mqtt:
  host: broker.local
devices:
"""


def write_config(directory: Path, devices: str) -> Path:
    path = directory / "agent.yaml"
    path.write_text(HEADER + textwrap.indent(textwrap.dedent(devices), "  "), encoding="utf-8")
    return path


def load(directory: Path, devices: str) -> Config:
    return load_config(write_config(directory, devices))


def problems(directory: Path, devices: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(directory, devices)
    return [str(problem) for problem in caught.value.problems]


def point(config: Config, point_id: str) -> ModbusPoint:
    return next(p for device in config.devices for p in device.points if p.id == point_id)


# -- the shipped profiles ----------------------------------------------------------------------


def test_exactly_the_verified_meters_ship() -> None:
    # meters.md section 12: the Acrel ADL400 and the RS485 EM24-DIN are not verified.
    assert profile_names() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_profile_loads_and_every_quantity_has_a_unit(name: str) -> None:
    profile = load_profile(name)
    assert profile.description
    assert profile.quantities
    for quantity, spec in profile.quantities.items():
        assert spec.unit is not None or UNITLESS.match(quantity), f"{name}: {quantity} has no unit"
        assert spec.description, f"{name}: {quantity} has no description"


@pytest.mark.parametrize("name", SHIPPED)
def test_every_quantity_of_a_profile_expands_into_a_valid_device(tmp_path: Path, name: str) -> None:
    config = load(
        tmp_path,
        f"""\
        - name: m1
          driver: modbus_tcp
          host: 10.0.0.7
          profile: {name}
        """,
    )
    device = config.devices[0]
    quantities = list(load_profile(name).quantities)
    assert [p.id for p in device.points] == [f"m1.{q}" for q in quantities]
    # Every value fits in one request, and the overlap check (run by load_config) passed.
    assert all(p.width <= device.max_registers for p in device.points)


@pytest.mark.parametrize("name", SHIPPED)
def test_the_simulated_meter_can_encode_every_quantity(name: str) -> None:
    values = expected_values(name)
    assert list(values) == list(load_profile(name).quantities)
    assert all(entry.registers for entry in meter_registers(load_profile(name)))


# Facts pinned by hand from meters.md, so that an edit of a profile cannot move them silently.
@pytest.mark.parametrize(
    ("profile", "quantity", "address", "type_", "order", "scale", "unit"),
    [
        ("eastron-sdm630", "voltage_l1", "input:0", "float32", "ABCD", 1.0, "V"),
        ("eastron-sdm630", "energy_import", "input:72", "float32", "ABCD", 1.0, "kWh"),
        ("eastron-sdm120", "voltage", "input:0", "float32", "ABCD", 1.0, "V"),
        ("eastron-sdm230", "phase_angle", "input:36", "float32", "ABCD", 1.0, "deg"),
        ("carlo-gavazzi-em340", "voltage_l1", "input:0", "int32", "CDAB", 0.1, "V"),
        ("carlo-gavazzi-em340", "current_l1", "input:12", "int32", "CDAB", 0.001, "A"),
        ("carlo-gavazzi-em340", "frequency", "input:51", "int16", "ABCD", 0.1, "Hz"),
        ("carlo-gavazzi-em340", "energy_export", "input:78", "int32", "CDAB", 0.1, "kWh"),
        ("carlo-gavazzi-em24-e1", "energy_import", "holding:52", "int32", "CDAB", 0.1, "kWh"),
        ("abb-b23", "energy_import", "holding:20480", "uint64", "ABCD", 0.01, "kWh"),
        ("abb-b23", "voltage_l1", "holding:23296", "uint32", "ABCD", 0.1, "V"),
        ("schneider-iem3000", "current_l1", "holding:2999", "float32", "ABCD", 1.0, "A"),
        ("schneider-iem3000", "energy_import", "holding:3203", "int64", "ABCD", 1.0, "Wh"),
        ("schneider-pm5100", "voltage_l1", "holding:3027", "float32", "ABCD", 1.0, "V"),
        ("schneider-pm5100", "power_total", "holding:3059", "float32", "ABCD", 1.0, "kW"),
        ("chint-dtsu666", "energy_import", "holding:4126", "float32", "ABCD", 1.0, "kWh"),
        ("chint-dtsu666", "voltage_l1", "holding:8198", "float32", "ABCD", 0.1, "V"),
        ("chint-dtsu666", "current_l1", "holding:8204", "float32", "ABCD", 0.001, "A"),
        ("acrel-adw300", "current_l1", "holding:26", "uint16", "ABCD", 0.01, "A"),
        ("acrel-adw300", "energy_import", "holding:62", "uint32", "ABCD", 0.01, "kWh"),
        ("janitza-umg96rm", "voltage_l1", "holding:19000", "float32", "ABCD", 1.0, "V"),
        ("janitza-umg96rm", "energy_import", "holding:19068", "float32", "ABCD", 1.0, "Wh"),
    ],
)
def test_pinned_register_facts(
    profile: str,
    quantity: str,
    address: str,
    type_: str,
    order: str,
    scale: float,
    unit: str,
) -> None:
    spec = load_profile(profile).quantities[quantity]
    assert (spec.address, spec.type, spec.order, spec.scale, spec.unit) == (
        address,
        type_,
        order,
        scale,
        unit,
    )


@pytest.mark.parametrize(
    ("profile", "max_registers"),
    [
        ("eastron-sdm630", 80),
        ("eastron-sdm230", 60),
        ("carlo-gavazzi-em340", 50),
        ("schneider-pm5100", 64),
        ("abb-b23", None),
    ],
)
def test_meter_request_limits(profile: str, max_registers: int | None) -> None:
    assert load_profile(profile).device.max_registers == max_registers


def test_schneider_power_factor_is_shipped_raw_under_a_name_that_says_so() -> None:
    for name in ("schneider-pm5100", "schneider-iem3000"):
        quantities = load_profile(name).quantities
        assert "power_factor_total" not in quantities
        assert "NOT decoded" in (quantities["power_factor_total_4q"].description or "")


# -- expansion into points ---------------------------------------------------------------------


def test_quantities_become_points_named_after_the_device(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        - name: line1-meter
          driver: modbus_tcp
          host: 10.0.0.7
          addressing: one_based
          profile: eastron-sdm630
          quantities: [power_total, voltage_l1]
          points:
            - {id: line1-meter.demand_period, address: "holding:3", type: float32}
        - name: line2-meter
          driver: modbus_tcp
          host: 10.0.0.8
          profile: eastron-sdm630
          quantities: [voltage_l1]
        """,
    )
    first, second = config.devices
    assert [p.id for p in first.points] == [
        "line1-meter.demand_period",
        "line1-meter.power_total",
        "line1-meter.voltage_l1",
    ]
    voltage = point(config, "line1-meter.voltage_l1")
    # The device's one_based notation is for its own points; profiles give protocol addresses.
    assert point(config, "line1-meter.demand_period").register == 2
    assert (voltage.addressing, voltage.register, voltage.table) == ("protocol", 0, "input")
    assert (voltage.type, voltage.order, voltage.unit) == ("float32", "ABCD", "V")
    assert voltage.description == "Voltage L1-N"
    # Two meters of the same model do not collide.
    assert [p.id for p in second.points] == ["line2-meter.voltage_l1"]


def test_scale_comes_with_the_point(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        - {name: em, driver: modbus_tcp, host: 10.0.0.7, profile: carlo-gavazzi-em340,
           quantities: [voltage_l1]}
        """,
    )
    voltage = point(config, "em.voltage_l1")
    assert (voltage.type, voltage.order, voltage.scale) == ("int32", "CDAB", 0.1)


@pytest.mark.parametrize(("own", "effective"), [(None, 80), (40, 40), (100, 80), (125, 80)])
def test_profile_limit_applies_unless_the_device_sets_a_lower_one(
    tmp_path: Path, own: int | None, effective: int
) -> None:
    setting = "" if own is None else f"max_registers: {own}"
    config = load(
        tmp_path,
        f"""\
        - name: m1
          driver: modbus_tcp
          host: 10.0.0.7
          profile: eastron-sdm630
          {setting}
        """,
    )
    assert config.devices[0].max_registers == effective


def test_a_profile_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "pump.yaml").write_text(
        textwrap.dedent(
            """\
            description: Pump house meter
            device: {max_registers: 20, max_gap: 0}
            quantities:
              flow: {address: "holding:10", type: uint16, scale: 0.1, unit: m3/h}
            """
        ),
        encoding="utf-8",
    )
    config = load(
        tmp_path,
        """\
        - {name: pump, driver: modbus_tcp, host: 10.0.0.7, profile: ./profiles/pump.yaml}
        """,
    )
    device = config.devices[0]
    assert (device.max_registers, device.max_gap) == (20, 0)
    assert point(config, "pump.flow").unit == "m3/h"


# -- mistakes ----------------------------------------------------------------------------------


def test_unknown_profile_suggests_the_closest_name(tmp_path: Path) -> None:
    (found,) = problems(
        tmp_path,
        """\
        - name: m1
          driver: modbus_tcp
          host: 10.0.0.7
          profile: eastron-sdm360
        """,
    )
    assert found.startswith(f"{tmp_path / 'agent.yaml'}:9:14: devices[0].profile: ")
    assert "unknown profile 'eastron-sdm360'; did you mean 'eastron-sdm630'?" in found
    assert "schneider-pm5100" in found  # the list of shipped profiles


def test_unknown_quantity_is_reported_at_its_list_item(tmp_path: Path) -> None:
    (found,) = problems(
        tmp_path,
        """\
        - name: m1
          driver: modbus_tcp
          host: 10.0.0.7
          profile: eastron-sdm630
          quantities: [voltage_l1, powr_total]
        """,
    )
    assert ":10:30: devices[0].quantities[1]: unknown quantity 'powr_total'" in found
    assert "did you mean 'power_total'?" in found
    assert "(available: voltage_l1, voltage_l2," in found


def test_quantity_mistakes(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        - {name: a, driver: modbus_tcp, host: 10.0.0.7, quantities: [voltage_l1]}
        - {name: b, driver: modbus_tcp, host: 10.0.0.8, profile: eastron-sdm120, quantities: []}
        - name: c
          driver: modbus_tcp
          host: 10.0.0.9
          profile: eastron-sdm120
          quantities: [voltage, voltage]
        """,
    )
    assert len(found) == 3, found
    assert (
        "devices[0].quantities: quantities are read from a profile: add profile: NAME" in found[0]
    )
    assert "devices[1].quantities: lists no quantity: leave quantities out" in found[1]
    assert "devices[2].quantities[1]: quantity 'voltage' is listed twice" in found[2]


def test_a_point_that_collides_with_a_quantity_is_reported_at_the_quantity(
    tmp_path: Path,
) -> None:
    found = problems(
        tmp_path,
        """\
        - name: m1
          driver: modbus_tcp
          host: 10.0.0.7
          profile: eastron-sdm630
          quantities: [voltage_l1]
          points:
            - {id: m1.voltage_l1, address: "input:100", type: float32}
        """,
    )
    assert found == [
        f"{tmp_path / 'agent.yaml'}:10:18: devices[0].quantities[0]: point id 'm1.voltage_l1' "
        "is already used by devices[0].points[0] (line 12)"
    ]


def test_missing_profile_file(tmp_path: Path) -> None:
    (found,) = problems(
        tmp_path,
        """\
        - {name: m1, driver: modbus_tcp, host: 10.0.0.7, profile: ./profiles/none.yaml}
        """,
    )
    assert "devices[0].profile: profile file './profiles/none.yaml'" in found
    assert "does not exist" in found
    with pytest.raises(UnknownProfile, match="does not exist"):
        load_profile("./profiles/none.yaml", tmp_path)


def test_a_broken_profile_file_is_reported_with_its_own_name_line_and_column(
    tmp_path: Path,
) -> None:
    (tmp_path / "bad.yaml").write_text(
        textwrap.dedent(
            """\
            description: Broken
            quantities:
              Voltage: {address: "input:0", type: float32}
              current: {address: "coil:2", type: float32}
              power: {address: "input:4", type: float, scale: 1}
              energy:
                address: input:6
                type: uint32
                units: kWh
            """
        ),
        encoding="utf-8",
    )
    found = problems(
        tmp_path,
        """\
        - {name: m1, driver: modbus_tcp, host: 10.0.0.7, profile: bad.yaml}
        - {name: m2, driver: modbus_tcp, host: 10.0.0.8, profile: ./bad.yaml}
        """,
    )
    bad = tmp_path / "bad.yaml"
    # Reported once although two devices use it; no "no points" noise for those devices.
    assert found == [
        f"{bad}:3:3: quantities.Voltage: 'Voltage' is not a valid quantity name: use lower-case "
        "letters, digits and '_', starting with a letter (it becomes the last part of point ids)",
        f"{bad}:4:22: quantities.current.address: a profile quantity is a register value: use "
        "input: or holding:, not coil:",
        f"{bad}:5:37: quantities.power.type: Input should be 'int16', 'uint16', 'int32', "
        "'uint32', 'int64', 'uint64', 'float32' or 'float64', got 'float'",
        f"{bad}:9:5: quantities.energy.units: unknown field 'units'; did you mean 'unit'? "
        "(allowed here: address, type, order, scale, unit, description)",
    ]


def test_shipped_profiles_live_in_config_profiles() -> None:
    assert PROFILES_DIR.parts[-2:] == ("config", "profiles")
    assert (PROFILES_DIR / "README.md").is_file()
