"""Simulated electricity meters: any device profile served by a `SimulatedModbusServer`.

`SimulatedMeter("eastron-sdm630", port)` starts a Modbus TCP server whose registers hold a
plausible, fixed engineering value for every quantity of the profile, encoded exactly as the
meter would: raw = value / scale, written with the quantity's type and word order into its table.
`expected_values(profile)` gives those engineering values, so a test can read the meter through
the agent and compare.

Values are steady (no model ticking), so a reading can be compared exactly; they depend only on
the quantity's name and unit, so the same quantity reads the same on every meter model.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from agent.config import load_profile
from agent.profiles import Profile, ProfileQuantity
from agent.settings import ModbusTable, parse_modbus_address
from drivers.modbus.codec import decode, encode
from drivers.simulate.modbus import SimulatedModbusServer

__all__ = [
    "MeterRegister",
    "SimulatedMeter",
    "expected_values",
    "meter_registers",
    "plausible_value",
]


# Engineering units as (dimension, size of the unit in the dimension's base unit), so that one
# plausible value serves `W` and `kW` alike.
_UNITS: dict[str, tuple[str, float]] = {
    "V": ("V", 1.0),
    "A": ("A", 1.0),
    "W": ("W", 1.0),
    "kW": ("W", 1e3),
    "var": ("var", 1.0),
    "kvar": ("var", 1e3),
    "VA": ("VA", 1.0),
    "kVA": ("VA", 1e3),
    "Wh": ("Wh", 1.0),
    "kWh": ("Wh", 1e3),
    "MWh": ("Wh", 1e6),
    "varh": ("varh", 1.0),
    "kvarh": ("varh", 1e3),
    "VAh": ("VAh", 1.0),
    "kVAh": ("VAh", 1e3),
}

# (pattern on the quantity name, value in the base unit of its dimension), first match wins.
# Energies are in Wh (12 345.6 kWh), powers in W: the usual figures of a small machine feeder.
_PLAUSIBLE: list[tuple[re.Pattern[str], float]] = [
    (re.compile(pattern), value)
    for pattern, value in [
        (r"^ct_ratio$", 1),
        (r"^pt_ratio$", 1),
        (r"^product_id$", 15270),
        (r"^phase_sequence$", 0),
        (r"^phase_angle", 18.2),
        (r"^frequency$", 49.98),
        (r"^(power_factor|cos_phi)", 0.951),
        (r"^voltage(_l[123]_l[123]|_ll)", 400.3),
        (r"^voltage", 230.4),
        (r"^current_n$", 0.85),
        (r"^(demand_)?current", 12.47),
        (r"^demand_power.*max", 9650.0),
        (r"^demand_power", 8120.0),
        (r"^apparent_power", 2905.0),
        (r"^reactive_power", 612.0),
        (r"^power", 2764.0),
        (r"^reactive_energy.*export", 56_780.0),
        (r"^reactive_energy", 2_345_600.0),
        (r"^apparent_energy.*export", 61_230.0),
        (r"^apparent_energy", 13_579_200.0),
        (r"^energy.*export", 234_500.0),
        (r"^energy", 12_345_600.0),
    ]
]
_OTHER = 100.0  # a quantity of a site's own profile that none of the patterns knows

# Phases differ a little, so that a reader mixing them up is caught; L2's reactive power is
# capacitive (negative), so that signed decoding is tested wherever the type is signed.
_PHASE = re.compile(r"_(l[123])$")
_PHASE_FACTOR = {"l1": 1.0, "l2": 0.983, "l3": 1.021}
_NEGATIVE = {"reactive_power_l2"}
# A three-phase power total is about three phases' worth; a phase's energy a third of the total.
_POWER_TOTAL = re.compile(r"^(power|reactive_power|apparent_power)_total$")

_RANGES: dict[str, tuple[int, int]] = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}


def plausible_value(name: str, quantity: ProfileQuantity) -> float:
    """A believable reading for a quantity, in the quantity's own unit, before rounding to what
    its type and scale can hold."""
    value = next((base for pattern, base in _PLAUSIBLE if pattern.search(name)), _OTHER)
    phase = _PHASE.search(name)
    if phase is not None:
        value *= _PHASE_FACTOR[phase.group(1)]
        if name.startswith("energy"):
            value /= 3
    if _POWER_TOTAL.match(name):
        value *= 3
    if name in _NEGATIVE:
        value = -value
    dimension = _UNITS.get(quantity.unit or "")
    if dimension is not None:
        value /= dimension[1]
    if quantity.type.startswith("uint"):
        value = abs(value)  # unsigned registers carry magnitudes only
    return value


@dataclass(frozen=True, slots=True)
class MeterRegister:
    """What the simulated meter holds for one quantity."""

    quantity: str
    table: ModbusTable
    address: int
    registers: list[int]
    value: float  # the engineering value a reader gets: decoded registers x scale


def _encode(name: str, quantity: ProfileQuantity) -> MeterRegister:
    target = plausible_value(name, quantity)
    table, address = parse_modbus_address(quantity.address, "protocol")
    raw: float = target / quantity.scale
    if quantity.type in _RANGES:
        raw = round(raw)
        low, high = _RANGES[quantity.type]
        if not low <= raw <= high:
            raise ValueError(
                f"{name}: {target:g} {quantity.unit or ''} does not fit a {quantity.type} "
                f"with scale {quantity.scale:g}"
            )
    registers = encode(raw, quantity.type, quantity.order)
    # What a reader decodes from these registers (a float32 keeps only 24 bits of the value).
    decoded = decode(registers, quantity.type, quantity.order)
    if not math.isfinite(decoded):
        raise ValueError(f"{name}: {target:g} is not finite as {quantity.type}")
    return MeterRegister(name, table, address, registers, decoded * quantity.scale)


def meter_registers(profile: Profile) -> list[MeterRegister]:
    """The registers of a simulated meter with this profile, one entry per quantity."""
    return [_encode(name, quantity) for name, quantity in profile.quantities.items()]


def expected_values(profile: Profile | str) -> dict[str, float]:
    """The engineering value (raw x scale, in the quantity's unit) the simulated meter serves
    for each quantity of the profile, given as a `Profile` or a shipped profile's name."""
    if isinstance(profile, str):
        profile = load_profile(profile)
    return {entry.quantity: entry.value for entry in meter_registers(profile)}


class SimulatedMeter:
    """A meter with a device profile, served over Modbus TCP on `host:port` as unit `unit_id`.

    `start()` listens and fills the registers; `stop()` closes the server (the register contents
    survive a restart, as a meter's would).
    """

    def __init__(
        self,
        profile: Profile | str,
        port: int,
        *,
        host: str = "127.0.0.1",
        unit_id: int = 1,
    ) -> None:
        self.profile = load_profile(profile) if isinstance(profile, str) else profile
        self.unit_id = unit_id
        self.registers = meter_registers(self.profile)
        # Exactly the profile's registers (beyond the simulator's usual 0-1999): a read that
        # strays outside the map is refused as by the meter itself.
        self.server = SimulatedModbusServer(
            port,
            host=host,
            unit_ids=(unit_id,),
            extra_ranges=[(e.table, e.address, len(e.registers)) for e in self.registers],
        )

    @property
    def expected(self) -> dict[str, float]:
        """Quantity -> the engineering value a reader should get."""
        return {entry.quantity: entry.value for entry in self.registers}

    def start(self) -> None:
        """Listen on the port and write every quantity's registers."""
        self.server.start()
        for entry in self.registers:
            self.server.set_registers(entry.table, entry.address, entry.registers, self.unit_id)

    def stop(self) -> None:
        """Close the server."""
        self.server.stop()

    def __enter__(self) -> SimulatedMeter:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
