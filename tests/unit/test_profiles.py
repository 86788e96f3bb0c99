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


# -- every quantity of every shipped profile, pinned by hand from meters.md --------------------
#
# One table per profile: quantity -> (0-based protocol address, type, word order, scale, unit).
# Transcribed from /work/shared/reference/meters.md (the section is named above each table), NOT
# generated from the profile files: a profile edit that moves, retypes, rescales or drops a
# quantity, or adds one that meters.md does not document, fails here. Hex addresses of meters.md
# are converted in the comments; Schneider's 1-based register numbers appear as register - 1.
# 16-bit values are pinned as ABCD: one word, MSB first, as meters.md gives them.

Fact = tuple[str, str, str, float, str | None]

# meters.md section 3. FC 4 (input registers), every value float32 ABCD.
EASTRON_SDM630: dict[str, Fact] = {
    "voltage_l1": ("input:0", "float32", "ABCD", 1.0, "V"),  # 0x0000
    "voltage_l2": ("input:2", "float32", "ABCD", 1.0, "V"),  # 0x0002
    "voltage_l3": ("input:4", "float32", "ABCD", 1.0, "V"),  # 0x0004
    "current_l1": ("input:6", "float32", "ABCD", 1.0, "A"),  # 0x0006
    "current_l2": ("input:8", "float32", "ABCD", 1.0, "A"),  # 0x0008
    "current_l3": ("input:10", "float32", "ABCD", 1.0, "A"),  # 0x000A
    "power_l1": ("input:12", "float32", "ABCD", 1.0, "W"),  # 0x000C
    "power_l2": ("input:14", "float32", "ABCD", 1.0, "W"),  # 0x000E
    "power_l3": ("input:16", "float32", "ABCD", 1.0, "W"),  # 0x0010
    "reactive_power_l1": ("input:24", "float32", "ABCD", 1.0, "var"),  # 0x0018
    "reactive_power_l2": ("input:26", "float32", "ABCD", 1.0, "var"),  # 0x001A
    "reactive_power_l3": ("input:28", "float32", "ABCD", 1.0, "var"),  # 0x001C
    "power_factor_l1": ("input:30", "float32", "ABCD", 1.0, None),  # 0x001E
    "power_factor_l2": ("input:32", "float32", "ABCD", 1.0, None),  # 0x0020
    "power_factor_l3": ("input:34", "float32", "ABCD", 1.0, None),  # 0x0022
    "power_total": ("input:52", "float32", "ABCD", 1.0, "W"),  # 0x0034
    "apparent_power_total": ("input:56", "float32", "ABCD", 1.0, "VA"),  # 0x0038
    "reactive_power_total": ("input:60", "float32", "ABCD", 1.0, "var"),  # 0x003C
    "power_factor_total": ("input:62", "float32", "ABCD", 1.0, None),  # 0x003E
    "frequency": ("input:70", "float32", "ABCD", 1.0, "Hz"),  # 0x0046
    "energy_import": ("input:72", "float32", "ABCD", 1.0, "kWh"),  # 0x0048
    "energy_export": ("input:74", "float32", "ABCD", 1.0, "kWh"),  # 0x004A
    "reactive_energy_import": ("input:76", "float32", "ABCD", 1.0, "kvarh"),  # 0x004C
    "reactive_energy_export": ("input:78", "float32", "ABCD", 1.0, "kvarh"),  # 0x004E
    "demand_power": ("input:84", "float32", "ABCD", 1.0, "W"),  # 0x0054
    "demand_power_max": ("input:86", "float32", "ABCD", 1.0, "W"),  # 0x0056
    "voltage_l1_l2": ("input:200", "float32", "ABCD", 1.0, "V"),  # 0x00C8
    "voltage_l2_l3": ("input:202", "float32", "ABCD", 1.0, "V"),  # 0x00CA
    "voltage_l3_l1": ("input:204", "float32", "ABCD", 1.0, "V"),  # 0x00CC
    "current_n": ("input:224", "float32", "ABCD", 1.0, "A"),  # 0x00E0
    "demand_current_l1": ("input:258", "float32", "ABCD", 1.0, "A"),  # 0x0102
    "demand_current_l2": ("input:260", "float32", "ABCD", 1.0, "A"),  # 0x0104
    "demand_current_l3": ("input:262", "float32", "ABCD", 1.0, "A"),  # 0x0106
    "demand_current_max_l1": ("input:264", "float32", "ABCD", 1.0, "A"),  # 0x0108
    "demand_current_max_l2": ("input:266", "float32", "ABCD", 1.0, "A"),  # 0x010A
    "demand_current_max_l3": ("input:268", "float32", "ABCD", 1.0, "A"),  # 0x010C
    "energy_import_l1": ("input:346", "float32", "ABCD", 1.0, "kWh"),  # 0x015A
    "energy_import_l2": ("input:348", "float32", "ABCD", 1.0, "kWh"),  # 0x015C
    "energy_import_l3": ("input:350", "float32", "ABCD", 1.0, "kWh"),  # 0x015E
    "energy_export_l1": ("input:352", "float32", "ABCD", 1.0, "kWh"),  # 0x0160
    "energy_export_l2": ("input:354", "float32", "ABCD", 1.0, "kWh"),  # 0x0162
    "energy_export_l3": ("input:356", "float32", "ABCD", 1.0, "kWh"),  # 0x0164
}

# meters.md section 4. FC 4 (input registers), every value float32 ABCD.
EASTRON_SDM120: dict[str, Fact] = {
    "voltage": ("input:0", "float32", "ABCD", 1.0, "V"),  # 0x0000
    "current": ("input:6", "float32", "ABCD", 1.0, "A"),  # 0x0006
    "power": ("input:12", "float32", "ABCD", 1.0, "W"),  # 0x000C
    "apparent_power": ("input:18", "float32", "ABCD", 1.0, "VA"),  # 0x0012
    "reactive_power": ("input:24", "float32", "ABCD", 1.0, "var"),  # 0x0018
    "power_factor": ("input:30", "float32", "ABCD", 1.0, None),  # 0x001E
    "frequency": ("input:70", "float32", "ABCD", 1.0, "Hz"),  # 0x0046
    "energy_import": ("input:72", "float32", "ABCD", 1.0, "kWh"),  # 0x0048
    "energy_export": ("input:74", "float32", "ABCD", 1.0, "kWh"),  # 0x004A
    "reactive_energy_import": ("input:76", "float32", "ABCD", 1.0, "kvarh"),  # 0x004C
    "reactive_energy_export": ("input:78", "float32", "ABCD", 1.0, "kvarh"),  # 0x004E
    "demand_power": ("input:84", "float32", "ABCD", 1.0, "W"),  # 0x0054
    "demand_power_max": ("input:86", "float32", "ABCD", 1.0, "W"),  # 0x0056
    "demand_power_import": ("input:88", "float32", "ABCD", 1.0, "W"),  # 0x0058
    "demand_power_import_max": ("input:90", "float32", "ABCD", 1.0, "W"),  # 0x005A
    "demand_power_export": ("input:92", "float32", "ABCD", 1.0, "W"),  # 0x005C
    "demand_power_export_max": ("input:94", "float32", "ABCD", 1.0, "W"),  # 0x005E
    "demand_current": ("input:258", "float32", "ABCD", 1.0, "A"),  # 0x0102
    "demand_current_max": ("input:264", "float32", "ABCD", 1.0, "A"),  # 0x0108
    "energy_total": ("input:342", "float32", "ABCD", 1.0, "kWh"),  # 0x0156
    "reactive_energy_total": ("input:344", "float32", "ABCD", 1.0, "kvarh"),  # 0x0158
}

# meters.md section 4: the SDM120 layout plus the phase angle (in degrees).
EASTRON_SDM230: dict[str, Fact] = {
    "voltage": ("input:0", "float32", "ABCD", 1.0, "V"),  # 0x0000
    "current": ("input:6", "float32", "ABCD", 1.0, "A"),  # 0x0006
    "power": ("input:12", "float32", "ABCD", 1.0, "W"),  # 0x000C
    "apparent_power": ("input:18", "float32", "ABCD", 1.0, "VA"),  # 0x0012
    "reactive_power": ("input:24", "float32", "ABCD", 1.0, "var"),  # 0x0018
    "power_factor": ("input:30", "float32", "ABCD", 1.0, None),  # 0x001E
    "phase_angle": ("input:36", "float32", "ABCD", 1.0, "deg"),  # 0x0024
    "frequency": ("input:70", "float32", "ABCD", 1.0, "Hz"),  # 0x0046
    "energy_import": ("input:72", "float32", "ABCD", 1.0, "kWh"),  # 0x0048
    "energy_export": ("input:74", "float32", "ABCD", 1.0, "kWh"),  # 0x004A
    "reactive_energy_import": ("input:76", "float32", "ABCD", 1.0, "kvarh"),  # 0x004C
    "reactive_energy_export": ("input:78", "float32", "ABCD", 1.0, "kvarh"),  # 0x004E
    "demand_power": ("input:84", "float32", "ABCD", 1.0, "W"),  # 0x0054
    "demand_power_max": ("input:86", "float32", "ABCD", 1.0, "W"),  # 0x0056
    "demand_power_import": ("input:88", "float32", "ABCD", 1.0, "W"),  # 0x0058
    "demand_power_import_max": ("input:90", "float32", "ABCD", 1.0, "W"),  # 0x005A
    "demand_power_export": ("input:92", "float32", "ABCD", 1.0, "W"),  # 0x005C
    "demand_power_export_max": ("input:94", "float32", "ABCD", 1.0, "W"),  # 0x005E
    "demand_current": ("input:258", "float32", "ABCD", 1.0, "A"),  # 0x0102
    "demand_current_max": ("input:264", "float32", "ABCD", 1.0, "A"),  # 0x0108
    "energy_total": ("input:342", "float32", "ABCD", 1.0, "kWh"),  # 0x0156
    "reactive_energy_total": ("input:344", "float32", "ABCD", 1.0, "kvarh"),  # 0x0158
}

# meters.md section 5. FC 3 (holding registers), float32 ABCD carrying scaled numbers. Energy:
# the first candidate of meters.md (0x101E / 0x1028, manuals 1002 and 1267, mbmd) is shipped.
CHINT_DTSU666: dict[str, Fact] = {
    "ct_ratio": ("holding:6", "int16", "ABCD", 1.0, None),  # 0x0006, IrAt
    "pt_ratio": ("holding:7", "int16", "ABCD", 0.1, None),  # 0x0007, UrAt x 0.1
    "energy_import": ("holding:4126", "float32", "ABCD", 1.0, "kWh"),  # 0x101E
    "energy_export": ("holding:4136", "float32", "ABCD", 1.0, "kWh"),  # 0x1028
    "voltage_l1_l2": ("holding:8192", "float32", "ABCD", 0.1, "V"),  # 0x2000
    "voltage_l2_l3": ("holding:8194", "float32", "ABCD", 0.1, "V"),  # 0x2002
    "voltage_l3_l1": ("holding:8196", "float32", "ABCD", 0.1, "V"),  # 0x2004
    "voltage_l1": ("holding:8198", "float32", "ABCD", 0.1, "V"),  # 0x2006
    "voltage_l2": ("holding:8200", "float32", "ABCD", 0.1, "V"),  # 0x2008
    "voltage_l3": ("holding:8202", "float32", "ABCD", 0.1, "V"),  # 0x200A
    "current_l1": ("holding:8204", "float32", "ABCD", 0.001, "A"),  # 0x200C
    "current_l2": ("holding:8206", "float32", "ABCD", 0.001, "A"),  # 0x200E
    "current_l3": ("holding:8208", "float32", "ABCD", 0.001, "A"),  # 0x2010
    "power_total": ("holding:8210", "float32", "ABCD", 0.1, "W"),  # 0x2012
    "power_l1": ("holding:8212", "float32", "ABCD", 0.1, "W"),  # 0x2014
    "power_l2": ("holding:8214", "float32", "ABCD", 0.1, "W"),  # 0x2016
    "power_l3": ("holding:8216", "float32", "ABCD", 0.1, "W"),  # 0x2018
    "reactive_power_total": ("holding:8218", "float32", "ABCD", 0.1, "var"),  # 0x201A
    "reactive_power_l1": ("holding:8220", "float32", "ABCD", 0.1, "var"),  # 0x201C
    "reactive_power_l2": ("holding:8222", "float32", "ABCD", 0.1, "var"),  # 0x201E
    "reactive_power_l3": ("holding:8224", "float32", "ABCD", 0.1, "var"),  # 0x2020
    "power_factor_total": ("holding:8234", "float32", "ABCD", 0.001, None),  # 0x202A
    "power_factor_l1": ("holding:8236", "float32", "ABCD", 0.001, None),  # 0x202C
    "power_factor_l2": ("holding:8238", "float32", "ABCD", 0.001, None),  # 0x202E
    "power_factor_l3": ("holding:8240", "float32", "ABCD", 0.001, None),  # 0x2030
    "frequency": ("holding:8260", "float32", "ABCD", 0.01, "Hz"),  # 0x2044
}

# meters.md section 6. FC 3 (holding registers), scaled integers; 32-bit order not documented,
# ABCD as evcc decodes it.
ACREL_ADW300: dict[str, Fact] = {
    "voltage_l1": ("holding:20", "uint16", "ABCD", 0.1, "V"),  # 0x0014
    "voltage_l2": ("holding:21", "uint16", "ABCD", 0.1, "V"),  # 0x0015
    "voltage_l3": ("holding:22", "uint16", "ABCD", 0.1, "V"),  # 0x0016
    "voltage_l1_l2": ("holding:23", "uint16", "ABCD", 0.1, "V"),  # 0x0017
    "voltage_l2_l3": ("holding:24", "uint16", "ABCD", 0.1, "V"),  # 0x0018
    "voltage_l3_l1": ("holding:25", "uint16", "ABCD", 0.1, "V"),  # 0x0019
    "current_l1": ("holding:26", "uint16", "ABCD", 0.01, "A"),  # 0x001A
    "current_l2": ("holding:27", "uint16", "ABCD", 0.01, "A"),  # 0x001B
    "current_l3": ("holding:28", "uint16", "ABCD", 0.01, "A"),  # 0x001C
    "power_l1": ("holding:30", "int32", "ABCD", 0.001, "kW"),  # 0x001E
    "power_l2": ("holding:32", "int32", "ABCD", 0.001, "kW"),  # 0x0020
    "power_l3": ("holding:34", "int32", "ABCD", 0.001, "kW"),  # 0x0022
    "power_total": ("holding:36", "int32", "ABCD", 0.001, "kW"),  # 0x0024
    "reactive_power_l1": ("holding:38", "int32", "ABCD", 0.001, "kvar"),  # 0x0026
    "reactive_power_l2": ("holding:40", "int32", "ABCD", 0.001, "kvar"),  # 0x0028
    "reactive_power_l3": ("holding:42", "int32", "ABCD", 0.001, "kvar"),  # 0x002A
    "reactive_power_total": ("holding:44", "int32", "ABCD", 0.001, "kvar"),  # 0x002C
    "apparent_power_l1": ("holding:46", "uint32", "ABCD", 0.001, "kVA"),  # 0x002E
    "apparent_power_l2": ("holding:48", "uint32", "ABCD", 0.001, "kVA"),  # 0x0030
    "apparent_power_l3": ("holding:50", "uint32", "ABCD", 0.001, "kVA"),  # 0x0032
    "apparent_power_total": ("holding:52", "uint32", "ABCD", 0.001, "kVA"),  # 0x0034
    "power_factor_l1": ("holding:54", "uint16", "ABCD", 0.001, None),  # 0x0036
    "power_factor_l2": ("holding:55", "uint16", "ABCD", 0.001, None),  # 0x0037
    "power_factor_l3": ("holding:56", "uint16", "ABCD", 0.001, None),  # 0x0038
    "power_factor_total": ("holding:57", "uint16", "ABCD", 0.001, None),  # 0x0039
    "frequency": ("holding:59", "uint16", "ABCD", 0.01, "Hz"),  # 0x003B
    "energy_total": ("holding:60", "uint32", "ABCD", 0.01, "kWh"),  # 0x003C
    "energy_import": ("holding:62", "uint32", "ABCD", 0.01, "kWh"),  # 0x003E
    "energy_export": ("holding:64", "uint32", "ABCD", 0.01, "kWh"),  # 0x0040
    "reactive_energy_import": ("holding:66", "uint32", "ABCD", 0.01, "kvarh"),  # 0x0042
    "reactive_energy_export": ("holding:68", "uint32", "ABCD", 0.01, "kvarh"),  # 0x0044
    "demand_power_max_month": ("holding:100", "uint32", "ABCD", 0.001, "kW"),  # 0x0064
}

# meters.md section 7. FC 3 (holding registers), float32 / int64 ABCD. Address = Schneider
# register - 1 (register in the comment).
SCHNEIDER_PM5100: dict[str, Fact] = {
    "product_id": ("holding:89", "uint16", "ABCD", 1.0, None),  # register 90
    "current_l1": ("holding:2999", "float32", "ABCD", 1.0, "A"),  # register 3000
    "current_l2": ("holding:3001", "float32", "ABCD", 1.0, "A"),  # register 3002
    "current_l3": ("holding:3003", "float32", "ABCD", 1.0, "A"),  # register 3004
    "current_n": ("holding:3005", "float32", "ABCD", 1.0, "A"),  # register 3006
    "current_avg": ("holding:3009", "float32", "ABCD", 1.0, "A"),  # register 3010
    "voltage_l1_l2": ("holding:3019", "float32", "ABCD", 1.0, "V"),  # register 3020
    "voltage_l2_l3": ("holding:3021", "float32", "ABCD", 1.0, "V"),  # register 3022
    "voltage_l3_l1": ("holding:3023", "float32", "ABCD", 1.0, "V"),  # register 3024
    "voltage_ll_avg": ("holding:3025", "float32", "ABCD", 1.0, "V"),  # register 3026
    "voltage_l1": ("holding:3027", "float32", "ABCD", 1.0, "V"),  # register 3028
    "voltage_l2": ("holding:3029", "float32", "ABCD", 1.0, "V"),  # register 3030
    "voltage_l3": ("holding:3031", "float32", "ABCD", 1.0, "V"),  # register 3032
    "voltage_ln_avg": ("holding:3035", "float32", "ABCD", 1.0, "V"),  # register 3036
    "power_l1": ("holding:3053", "float32", "ABCD", 1.0, "kW"),  # register 3054
    "power_l2": ("holding:3055", "float32", "ABCD", 1.0, "kW"),  # register 3056
    "power_l3": ("holding:3057", "float32", "ABCD", 1.0, "kW"),  # register 3058
    "power_total": ("holding:3059", "float32", "ABCD", 1.0, "kW"),  # register 3060
    "reactive_power_total": ("holding:3067", "float32", "ABCD", 1.0, "kvar"),  # register 3068
    "apparent_power_total": ("holding:3075", "float32", "ABCD", 1.0, "kVA"),  # register 3076
    "power_factor_total_4q": ("holding:3083", "float32", "ABCD", 1.0, None),  # register 3084
    "frequency": ("holding:3109", "float32", "ABCD", 1.0, "Hz"),  # register 3110
    "energy_import": ("holding:3203", "int64", "ABCD", 1.0, "Wh"),  # register 3204
    "energy_export": ("holding:3207", "int64", "ABCD", 1.0, "Wh"),  # register 3208
    "reactive_energy_import": ("holding:3219", "int64", "ABCD", 1.0, "varh"),  # register 3220
    "reactive_energy_export": ("holding:3223", "int64", "ABCD", 1.0, "varh"),  # register 3224
    "apparent_energy_import": ("holding:3235", "int64", "ABCD", 1.0, "VAh"),  # register 3236
    "apparent_energy_export": ("holding:3239", "int64", "ABCD", 1.0, "VAh"),  # register 3240
}

# meters.md section 8. FC 3 (holding registers), float32 / int64 ABCD. Address = Schneider
# register - 1 (hex of the address, as meters.md prints it, in the comment).
SCHNEIDER_IEM3000: dict[str, Fact] = {
    "current_l1": ("holding:2999", "float32", "ABCD", 1.0, "A"),  # 0x0BB7
    "current_l2": ("holding:3001", "float32", "ABCD", 1.0, "A"),  # 0x0BB9
    "current_l3": ("holding:3003", "float32", "ABCD", 1.0, "A"),  # 0x0BBB
    "current_avg": ("holding:3009", "float32", "ABCD", 1.0, "A"),  # 0x0BC1
    "voltage_l1_l2": ("holding:3019", "float32", "ABCD", 1.0, "V"),  # 0x0BCB
    "voltage_l2_l3": ("holding:3021", "float32", "ABCD", 1.0, "V"),  # 0x0BCD
    "voltage_l3_l1": ("holding:3023", "float32", "ABCD", 1.0, "V"),  # 0x0BCF
    "voltage_l1": ("holding:3027", "float32", "ABCD", 1.0, "V"),  # 0x0BD3
    "voltage_l2": ("holding:3029", "float32", "ABCD", 1.0, "V"),  # 0x0BD5
    "voltage_l3": ("holding:3031", "float32", "ABCD", 1.0, "V"),  # 0x0BD7
    "voltage_ln_avg": ("holding:3035", "float32", "ABCD", 1.0, "V"),  # 0x0BDB
    "power_l1": ("holding:3053", "float32", "ABCD", 1.0, "kW"),  # 0x0BED
    "power_l2": ("holding:3055", "float32", "ABCD", 1.0, "kW"),  # 0x0BEF
    "power_l3": ("holding:3057", "float32", "ABCD", 1.0, "kW"),  # 0x0BF1
    "power_total": ("holding:3059", "float32", "ABCD", 1.0, "kW"),  # 0x0BF3
    "reactive_power_total": ("holding:3067", "float32", "ABCD", 1.0, "kvar"),  # 0x0BFB
    "apparent_power_total": ("holding:3075", "float32", "ABCD", 1.0, "kVA"),  # 0x0C03
    "power_factor_total_4q": ("holding:3083", "float32", "ABCD", 1.0, None),  # 0x0C0B
    "frequency": ("holding:3109", "float32", "ABCD", 1.0, "Hz"),  # 0x0C25
    "energy_import": ("holding:3203", "int64", "ABCD", 1.0, "Wh"),  # 0x0C83
    "energy_export": ("holding:3207", "int64", "ABCD", 1.0, "Wh"),  # 0x0C87
    "reactive_energy_import": ("holding:3219", "int64", "ABCD", 1.0, "varh"),  # 0x0C93
    "reactive_energy_export": ("holding:3223", "int64", "ABCD", 1.0, "varh"),  # 0x0C97
    "energy_import_l1": ("holding:3517", "int64", "ABCD", 1.0, "Wh"),  # 0x0DBD
    "energy_import_l2": ("holding:3521", "int64", "ABCD", 1.0, "Wh"),  # 0x0DC1
    "energy_import_l3": ("holding:3525", "int64", "ABCD", 1.0, "Wh"),  # 0x0DC5
}

# meters.md section 9. FC 3 (holding registers), float32 ABCD, addresses as Janitza prints them.
JANITZA_UMG96RM: dict[str, Fact] = {
    "voltage_l1": ("holding:19000", "float32", "ABCD", 1.0, "V"),
    "voltage_l2": ("holding:19002", "float32", "ABCD", 1.0, "V"),
    "voltage_l3": ("holding:19004", "float32", "ABCD", 1.0, "V"),
    "voltage_l1_l2": ("holding:19006", "float32", "ABCD", 1.0, "V"),
    "voltage_l2_l3": ("holding:19008", "float32", "ABCD", 1.0, "V"),
    "voltage_l3_l1": ("holding:19010", "float32", "ABCD", 1.0, "V"),
    "current_l1": ("holding:19012", "float32", "ABCD", 1.0, "A"),
    "current_l2": ("holding:19014", "float32", "ABCD", 1.0, "A"),
    "current_l3": ("holding:19016", "float32", "ABCD", 1.0, "A"),
    "current_n": ("holding:19018", "float32", "ABCD", 1.0, "A"),
    "power_l1": ("holding:19020", "float32", "ABCD", 1.0, "W"),
    "power_l2": ("holding:19022", "float32", "ABCD", 1.0, "W"),
    "power_l3": ("holding:19024", "float32", "ABCD", 1.0, "W"),
    "power_total": ("holding:19026", "float32", "ABCD", 1.0, "W"),
    "apparent_power_l1": ("holding:19028", "float32", "ABCD", 1.0, "VA"),
    "apparent_power_l2": ("holding:19030", "float32", "ABCD", 1.0, "VA"),
    "apparent_power_l3": ("holding:19032", "float32", "ABCD", 1.0, "VA"),
    "apparent_power_total": ("holding:19034", "float32", "ABCD", 1.0, "VA"),
    "reactive_power_l1": ("holding:19036", "float32", "ABCD", 1.0, "var"),
    "reactive_power_l2": ("holding:19038", "float32", "ABCD", 1.0, "var"),
    "reactive_power_l3": ("holding:19040", "float32", "ABCD", 1.0, "var"),
    "reactive_power_total": ("holding:19042", "float32", "ABCD", 1.0, "var"),
    "cos_phi_l1": ("holding:19044", "float32", "ABCD", 1.0, None),
    "cos_phi_l2": ("holding:19046", "float32", "ABCD", 1.0, None),
    "cos_phi_l3": ("holding:19048", "float32", "ABCD", 1.0, None),
    "frequency": ("holding:19050", "float32", "ABCD", 1.0, "Hz"),
    "energy_total": ("holding:19060", "float32", "ABCD", 1.0, "Wh"),
    "energy_import": ("holding:19068", "float32", "ABCD", 1.0, "Wh"),
    "energy_export": ("holding:19076", "float32", "ABCD", 1.0, "Wh"),
    "power_factor_l1": ("holding:828", "float32", "ABCD", 1.0, None),
    "power_factor_l2": ("holding:830", "float32", "ABCD", 1.0, None),
    "power_factor_l3": ("holding:832", "float32", "ABCD", 1.0, None),
    "power_factor_total": ("holding:834", "float32", "ABCD", 1.0, None),
    "demand_power": ("holding:2514", "float32", "ABCD", 1.0, "W"),
    "demand_power_max": ("holding:3510", "float32", "ABCD", 1.0, "W"),
}

# meters.md section 10. FC 4 (input registers; FC 3 returns the same), int16, and int32 low word
# first (CDAB).
CARLO_GAVAZZI_EM340: dict[str, Fact] = {
    "voltage_l1": ("input:0", "int32", "CDAB", 0.1, "V"),  # 0x0000
    "voltage_l2": ("input:2", "int32", "CDAB", 0.1, "V"),  # 0x0002
    "voltage_l3": ("input:4", "int32", "CDAB", 0.1, "V"),  # 0x0004
    "voltage_l1_l2": ("input:6", "int32", "CDAB", 0.1, "V"),  # 0x0006
    "voltage_l2_l3": ("input:8", "int32", "CDAB", 0.1, "V"),  # 0x0008
    "voltage_l3_l1": ("input:10", "int32", "CDAB", 0.1, "V"),  # 0x000A
    "current_l1": ("input:12", "int32", "CDAB", 0.001, "A"),  # 0x000C
    "current_l2": ("input:14", "int32", "CDAB", 0.001, "A"),  # 0x000E
    "current_l3": ("input:16", "int32", "CDAB", 0.001, "A"),  # 0x0010
    "power_l1": ("input:18", "int32", "CDAB", 0.1, "W"),  # 0x0012
    "power_l2": ("input:20", "int32", "CDAB", 0.1, "W"),  # 0x0014
    "power_l3": ("input:22", "int32", "CDAB", 0.1, "W"),  # 0x0016
    "reactive_power_l1": ("input:30", "int32", "CDAB", 0.1, "var"),  # 0x001E
    "reactive_power_l2": ("input:32", "int32", "CDAB", 0.1, "var"),  # 0x0020
    "reactive_power_l3": ("input:34", "int32", "CDAB", 0.1, "var"),  # 0x0022
    "power_total": ("input:40", "int32", "CDAB", 0.1, "W"),  # 0x0028
    "apparent_power_total": ("input:42", "int32", "CDAB", 0.1, "VA"),  # 0x002A
    "reactive_power_total": ("input:44", "int32", "CDAB", 0.1, "var"),  # 0x002C
    "power_factor_l1": ("input:46", "int16", "ABCD", 0.001, None),  # 0x002E
    "power_factor_l2": ("input:47", "int16", "ABCD", 0.001, None),  # 0x002F
    "power_factor_l3": ("input:48", "int16", "ABCD", 0.001, None),  # 0x0030
    "power_factor_total": ("input:49", "int16", "ABCD", 0.001, None),  # 0x0031
    "phase_sequence": ("input:50", "int16", "ABCD", 1.0, None),  # 0x0032
    "frequency": ("input:51", "int16", "ABCD", 0.1, "Hz"),  # 0x0033
    "energy_import": ("input:52", "int32", "CDAB", 0.1, "kWh"),  # 0x0034
    "reactive_energy_import": ("input:54", "int32", "CDAB", 0.1, "kvarh"),  # 0x0036
    "demand_power": ("input:56", "int32", "CDAB", 0.1, "W"),  # 0x0038
    "demand_power_max": ("input:58", "int32", "CDAB", 0.1, "W"),  # 0x003A
    "energy_import_l1": ("input:64", "int32", "CDAB", 0.1, "kWh"),  # 0x0040
    "energy_import_l2": ("input:66", "int32", "CDAB", 0.1, "kWh"),  # 0x0042
    "energy_import_l3": ("input:68", "int32", "CDAB", 0.1, "kWh"),  # 0x0044
    "energy_export": ("input:78", "int32", "CDAB", 0.1, "kWh"),  # 0x004E
    "reactive_energy_export": ("input:80", "int32", "CDAB", 0.1, "kvarh"),  # 0x0050
}

# meters.md section 10, EM24 Ethernet: the EM340 layout, FC 3 (holding registers), without phase
# sequence and reactive energies; demand per sdm_modbus.
CARLO_GAVAZZI_EM24_E1: dict[str, Fact] = {
    "voltage_l1": ("holding:0", "int32", "CDAB", 0.1, "V"),  # 0x0000
    "voltage_l2": ("holding:2", "int32", "CDAB", 0.1, "V"),  # 0x0002
    "voltage_l3": ("holding:4", "int32", "CDAB", 0.1, "V"),  # 0x0004
    "voltage_l1_l2": ("holding:6", "int32", "CDAB", 0.1, "V"),  # 0x0006
    "voltage_l2_l3": ("holding:8", "int32", "CDAB", 0.1, "V"),  # 0x0008
    "voltage_l3_l1": ("holding:10", "int32", "CDAB", 0.1, "V"),  # 0x000A
    "current_l1": ("holding:12", "int32", "CDAB", 0.001, "A"),  # 0x000C
    "current_l2": ("holding:14", "int32", "CDAB", 0.001, "A"),  # 0x000E
    "current_l3": ("holding:16", "int32", "CDAB", 0.001, "A"),  # 0x0010
    "power_l1": ("holding:18", "int32", "CDAB", 0.1, "W"),  # 0x0012
    "power_l2": ("holding:20", "int32", "CDAB", 0.1, "W"),  # 0x0014
    "power_l3": ("holding:22", "int32", "CDAB", 0.1, "W"),  # 0x0016
    "reactive_power_l1": ("holding:30", "int32", "CDAB", 0.1, "var"),  # 0x001E
    "reactive_power_l2": ("holding:32", "int32", "CDAB", 0.1, "var"),  # 0x0020
    "reactive_power_l3": ("holding:34", "int32", "CDAB", 0.1, "var"),  # 0x0022
    "power_total": ("holding:40", "int32", "CDAB", 0.1, "W"),  # 0x0028
    "apparent_power_total": ("holding:42", "int32", "CDAB", 0.1, "VA"),  # 0x002A
    "reactive_power_total": ("holding:44", "int32", "CDAB", 0.1, "var"),  # 0x002C
    "power_factor_l1": ("holding:46", "int16", "ABCD", 0.001, None),  # 0x002E
    "power_factor_l2": ("holding:47", "int16", "ABCD", 0.001, None),  # 0x002F
    "power_factor_l3": ("holding:48", "int16", "ABCD", 0.001, None),  # 0x0030
    "power_factor_total": ("holding:49", "int16", "ABCD", 0.001, None),  # 0x0031
    "frequency": ("holding:51", "int16", "ABCD", 0.1, "Hz"),  # 0x0033
    "energy_import": ("holding:52", "int32", "CDAB", 0.1, "kWh"),  # 0x0034
    "demand_power": ("holding:56", "int32", "CDAB", 0.1, "W"),  # 0x0038
    "demand_power_max": ("holding:58", "int32", "CDAB", 0.1, "W"),  # 0x003A
    "energy_import_l1": ("holding:64", "int32", "CDAB", 0.1, "kWh"),  # 0x0040
    "energy_import_l2": ("holding:66", "int32", "CDAB", 0.1, "kWh"),  # 0x0042
    "energy_import_l3": ("holding:68", "int32", "CDAB", 0.1, "kWh"),  # 0x0044
    "energy_export": ("holding:78", "int32", "CDAB", 0.1, "kWh"),  # 0x004E
}

# meters.md section 11. FC 3 (holding registers), integers high word first (ABCD), addresses
# exactly as ABB prints them.
ABB_B23: dict[str, Fact] = {
    "energy_import": ("holding:20480", "uint64", "ABCD", 0.01, "kWh"),  # 0x5000
    "energy_export": ("holding:20484", "uint64", "ABCD", 0.01, "kWh"),  # 0x5004
    "energy_import_l1": ("holding:21600", "uint64", "ABCD", 0.01, "kWh"),  # 0x5460
    "energy_import_l2": ("holding:21604", "uint64", "ABCD", 0.01, "kWh"),  # 0x5464
    "energy_import_l3": ("holding:21608", "uint64", "ABCD", 0.01, "kWh"),  # 0x5468
    "energy_export_l1": ("holding:21612", "uint64", "ABCD", 0.01, "kWh"),  # 0x546C
    "energy_export_l2": ("holding:21616", "uint64", "ABCD", 0.01, "kWh"),  # 0x5470
    "energy_export_l3": ("holding:21620", "uint64", "ABCD", 0.01, "kWh"),  # 0x5474
    "voltage_l1": ("holding:23296", "uint32", "ABCD", 0.1, "V"),  # 0x5B00
    "voltage_l2": ("holding:23298", "uint32", "ABCD", 0.1, "V"),  # 0x5B02
    "voltage_l3": ("holding:23300", "uint32", "ABCD", 0.1, "V"),  # 0x5B04
    "current_l1": ("holding:23308", "uint32", "ABCD", 0.01, "A"),  # 0x5B0C
    "current_l2": ("holding:23310", "uint32", "ABCD", 0.01, "A"),  # 0x5B0E
    "current_l3": ("holding:23312", "uint32", "ABCD", 0.01, "A"),  # 0x5B10
    "power_total": ("holding:23316", "int32", "ABCD", 0.01, "W"),  # 0x5B14
    "power_l1": ("holding:23318", "int32", "ABCD", 0.01, "W"),  # 0x5B16
    "power_l2": ("holding:23320", "int32", "ABCD", 0.01, "W"),  # 0x5B18
    "power_l3": ("holding:23322", "int32", "ABCD", 0.01, "W"),  # 0x5B1A
    "frequency": ("holding:23340", "uint16", "ABCD", 0.01, "Hz"),  # 0x5B2C
    "power_factor_total": ("holding:23354", "int16", "ABCD", 0.001, None),  # 0x5B3A
    "power_factor_l1": ("holding:23355", "int16", "ABCD", 0.001, None),  # 0x5B3B
    "power_factor_l2": ("holding:23356", "int16", "ABCD", 0.001, None),  # 0x5B3C
    "power_factor_l3": ("holding:23357", "int16", "ABCD", 0.001, None),  # 0x5B3D
}

PINNED: dict[str, dict[str, Fact]] = {
    "abb-b23": ABB_B23,
    "acrel-adw300": ACREL_ADW300,
    "carlo-gavazzi-em24-e1": CARLO_GAVAZZI_EM24_E1,
    "carlo-gavazzi-em340": CARLO_GAVAZZI_EM340,
    "chint-dtsu666": CHINT_DTSU666,
    "eastron-sdm120": EASTRON_SDM120,
    "eastron-sdm230": EASTRON_SDM230,
    "eastron-sdm630": EASTRON_SDM630,
    "janitza-umg96rm": JANITZA_UMG96RM,
    "schneider-iem3000": SCHNEIDER_IEM3000,
    "schneider-pm5100": SCHNEIDER_PM5100,
}


def test_every_shipped_profile_has_a_pinned_table() -> None:
    assert sorted(PINNED) == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_profile_matches_meters_md_exactly(name: str) -> None:
    pinned = PINNED[name]
    shipped = {
        quantity: (spec.address, spec.type, spec.order, spec.scale, spec.unit)
        for quantity, spec in load_profile(name).quantities.items()
    }
    missing = sorted(pinned.keys() - shipped.keys())
    extra = sorted(shipped.keys() - pinned.keys())
    assert not missing, f"{name}: quantities of meters.md missing from the profile: {missing}"
    assert not extra, f"{name}: quantities not pinned from meters.md: {extra}"
    wrong = {
        quantity: f"profile {shipped[quantity]} != meters.md {fact}"
        for quantity, fact in pinned.items()
        if shipped[quantity] != fact
    }
    assert not wrong, f"{name}: {wrong}"


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
        "(allowed here: address, type, order, scale, unavailable, unit, description)",
    ]


def test_shipped_profiles_live_in_config_profiles() -> None:
    assert PROFILES_DIR.parts[-2:] == ("config", "profiles")
    assert (PROFILES_DIR / "README.md").is_file()
