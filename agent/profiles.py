"""The schema of device profiles (`config/profiles/*.yaml`): a meter's register map as data.

`agent.config` expands the quantities a device asks for into ordinary ModbusPoints before the
configuration is validated. Kept apart from `agent.settings` so that the running agent, which
never reads a profile, does not build these models (they cost memory on a small gateway).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from agent.settings import (
    INTEGER_TYPES,
    FieldError,
    WordOrder,
    _check_scale,
    _Strict,
    parse_modbus_address,
)

__all__ = ["Profile", "ProfileDevice", "ProfileQuantity", "ProfileType"]


_QUANTITY_RE = re.compile(r"^[a-z][a-z0-9_]*$")
ProfileType = Literal["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]


def _check_quantity_name(name: str) -> str:
    if not _QUANTITY_RE.match(name):
        raise ValueError(
            f"{name!r} is not a valid quantity name: use lower-case letters, digits and '_', "
            "starting with a letter (it becomes the last part of point ids)"
        )
    return name


QuantityName = Annotated[str, Field(max_length=64), AfterValidator(_check_quantity_name)]


class ProfileQuantity(_Strict):
    """One quantity of a profile: a numeric register value, always at its protocol address."""

    address: Annotated[str, BeforeValidator(str)]
    type: ProfileType
    order: WordOrder = "ABCD"
    scale: Annotated[float, AfterValidator(_check_scale)] = 1.0
    # Raw values that mean "no value" on this meter (published as bad, "not available").
    unavailable: list[int] | None = None
    unit: str | None = None
    description: str | None = None

    @model_validator(mode="after")
    def _register_address(self) -> ProfileQuantity:
        try:
            table, _ = parse_modbus_address(self.address, "protocol")
        except ValueError as exc:
            raise FieldError("address", str(exc)) from None
        if table not in ("input", "holding"):
            raise FieldError(
                "address",
                f"a profile quantity is a register value: use input: or holding:, not {table}:",
            )
        if self.unavailable is not None and self.type not in INTEGER_TYPES:
            raise FieldError(
                "unavailable", "unavailable lists raw integers: it is for integer types only"
            )
        return self


class ProfileDevice(_Strict):
    """Limits the meter imposes on its device; a device's own setting applies only if lower."""

    max_registers: Annotated[int, Field(ge=1, le=125)] | None = None
    max_gap: Annotated[int, Field(ge=0, le=124)] | None = None


class Profile(_Strict):
    """A device profile file: what the meter is and the quantities it offers."""

    description: str
    device: ProfileDevice = Field(default_factory=ProfileDevice)
    quantities: Annotated[dict[QuantityName, ProfileQuantity], Field(min_length=1)]
