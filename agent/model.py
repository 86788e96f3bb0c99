"""The records that flow through the pipeline: `Sample` for values, `Event` for everything else."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = ["Event", "Quality", "Sample", "Value", "now_ms"]

Value = float | int | bool | str | None


def now_ms() -> int:
    """Wall-clock time in milliseconds since the epoch, UTC."""
    return time.time_ns() // 1_000_000


class Quality(StrEnum):
    """How far a value can be trusted; the wire form is the lower-case name."""

    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


@dataclass(frozen=True, slots=True)
class Sample:
    """One value of one configured point.

    `ts` is milliseconds since the epoch (UTC): the source's time when it is trusted, otherwise
    the moment the agent received the value. `reason` says why a value is not GOOD.
    """

    point: str
    value: Value
    quality: Quality
    ts: int
    reason: str | None = None

    def to_wire(self) -> dict[str, Any]:
        """The compact JSON form published in metric messages."""
        wire: dict[str, Any] = {"p": self.point, "v": self.value, "q": self.quality.value}
        if self.reason:
            wire["r"] = self.reason
        wire["ts"] = self.ts
        return wire


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened, as opposed to a measured value.

    `kind` selects the topic (`.../events/{kind}`); `source` names the device, station or
    component it concerns; `data` holds kind-specific JSON-serialisable details.
    """

    kind: str
    source: str
    message: str
    ts: int = field(default_factory=now_ms)
    data: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        """The JSON form published in event messages."""
        return {
            "kind": self.kind,
            "source": self.source,
            "message": self.message,
            "ts": self.ts,
            **({"data": self.data} if self.data else {}),
        }
