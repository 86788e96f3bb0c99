"""The contract every driver keeps, and the errors it raises."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, Protocol, TypeVar

from agent.model import Sample, Value, now_ms

__all__ = [
    "Driver",
    "DriverError",
    "Health",
    "LinkState",
    "NotConnected",
    "PolledDriver",
    "Unsupported",
    "WriteRefused",
    "backoff_delay",
]

_BACKOFF_BASE_S = 0.25

PointT_contra = TypeVar("PointT_contra", contravariant=True)


def backoff_delay(attempt: int, cap: float, base: float = _BACKOFF_BASE_S) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)].
    Device tasks and cameras wait this long before trying a lost connection again."""
    return random.uniform(0, min(cap, base * 2 ** min(attempt, 30)))  # noqa: S311


class DriverError(Exception):
    """A device could not do what was asked."""


class NotConnected(DriverError):
    """The link to the device is down; the device task goes back to connecting."""


class WriteRefused(DriverError):
    """The device refused a write to one point (address, node, access or type); writes to
    other points may still work."""


class Unsupported(DriverError):
    """The driver cannot do this (for example subscribe on a poll-only protocol)."""


class LinkState(StrEnum):
    """Where a device's connection stands."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


@dataclass(slots=True)
class Health:
    """What a driver reports about its device: link state and counters since start."""

    state: LinkState = LinkState.CONNECTING
    since_ms: int = 0
    last_error: str | None = None
    last_good_read_ms: int | None = None
    reads: int = 0
    read_errors: int = 0
    requests: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def set_state(self, state: LinkState, error: str | None = None) -> None:
        """Record a state change (with its time) and the latest error, if any."""
        if state != self.state:
            self.state = state
            self.since_ms = now_ms()
        if error is not None:
            self.last_error = error


class PolledDriver(Protocol):
    """What the device task needs of a driver: connect, read its points, close, report."""

    @property
    def endpoint(self) -> str:
        """Where the device is, for messages."""

    async def connect(self) -> None:
        """Open the link; raise `NotConnected` if the device cannot be reached."""

    async def close(self) -> None:
        """Close the link; never raises."""

    async def read(self, points: Sequence[Any]) -> list[Sample]:
        """Read points; failures are BAD samples, a lost link raises `NotConnected`."""

    def health(self) -> Health:
        """State, since when, last error and counters."""


class Driver(Protocol, Generic[PointT_contra]):
    """A connection to one device. Constructors and validation do no I/O."""

    async def connect(self) -> None:
        """Open the link; raise `NotConnected` if the device cannot be reached."""

    async def close(self) -> None:
        """Close the link; never raises."""

    async def read(self, points: Sequence[PointT_contra]) -> list[Sample]:
        """Read points in as few round trips as possible.

        A point that fails gives a BAD sample with a reason; only a lost link raises
        `NotConnected`.
        """

    def subscribe(self, points: Sequence[PointT_contra]) -> AsyncIterator[Sample]:
        """Stream changes; raises `Unsupported` on poll-only protocols."""

    async def write(self, point: PointT_contra, value: Value) -> None:
        """Write one value, encoded with the point's own type."""

    def health(self) -> Health:
        """State, since when, last error and counters."""
