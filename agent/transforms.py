"""Per-point transforms between a driver and the outbox: scale/offset, deadband, heartbeat."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from agent.model import Quality, Sample, Value
from agent.settings import ModbusPoint, OpcUaPoint

__all__ = ["PointTransform", "TransformChain", "scaled"]


def _exact_divisor(scale: float) -> int | None:
    """10 for 0.1, 1000 for 0.001: dividing by it rounds correctly where multiplying does not."""
    if scale <= 0 or scale >= 1:
        return None
    divisor = round(1 / scale)
    return divisor if math.isclose(1 / divisor, scale, rel_tol=1e-15) else None


def scaled(value: Value, scale: float, offset: float) -> Value:
    """`value * scale + offset` for numbers, with 21.5 rather than 21.500000000000004."""
    if scale == 1 and offset == 0:
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    divisor = _exact_divisor(scale)
    result = value / divisor if divisor else value * scale
    return result + offset if offset else result


class PointTransform:
    """The state and settings of one point's transforms."""

    __slots__ = (
        "_divisor",
        "deadband",
        "deadband_percent",
        "heartbeat_ms",
        "last_quality",
        "last_sent_ms",
        "last_value",
        "offset",
        "scale",
    )

    def __init__(
        self,
        *,
        scale: float = 1.0,
        offset: float = 0.0,
        deadband: float | None = None,
        deadband_percent: float | None = None,
        heartbeat: float | None = None,
    ) -> None:
        self.scale = scale
        self.offset = offset
        self._divisor = _exact_divisor(scale)
        self.deadband = deadband
        self.deadband_percent = deadband_percent
        self.heartbeat_ms = None if heartbeat is None else int(heartbeat * 1000)
        self.last_value: Value = None
        self.last_quality: Quality | None = None
        self.last_sent_ms = 0

    @classmethod
    def for_point(cls, point: ModbusPoint | OpcUaPoint) -> PointTransform:
        """Build from a point's configuration."""
        return cls(
            scale=point.scale,
            offset=point.offset,
            deadband=point.deadband,
            deadband_percent=point.deadband_percent,
            heartbeat=point.heartbeat,
        )

    def apply(self, sample: Sample) -> Sample | None:
        """The sample to publish, or None when the deadband holds it back."""
        value = sample.value
        if (self.scale != 1 or self.offset != 0) and value is not None:
            value = scaled(value, self.scale, self.offset)
            sample = sample._replace(value=value)
        if self.deadband is None and self.deadband_percent is None:
            return sample
        if self._should_send(value, sample.quality, sample.ts):
            self.last_value = value
            self.last_quality = sample.quality
            self.last_sent_ms = sample.ts
            return sample
        return None

    def _should_send(self, value: Value, quality: Quality, ts: int) -> bool:
        if quality != self.last_quality:
            return True
        if self.heartbeat_ms is not None and ts - self.last_sent_ms >= self.heartbeat_ms:
            return True
        last = self.last_value
        if (
            isinstance(value, bool)
            or isinstance(last, bool)
            or not isinstance(value, int | float)
            or not isinstance(last, int | float)
        ):
            return value != last
        change = abs(value - last)
        if self.deadband is not None:
            return change > self.deadband
        assert self.deadband_percent is not None
        return change > abs(last) * self.deadband_percent / 100


class TransformChain:
    """Applies each point's transforms to a batch of samples from one device."""

    def __init__(self, points: Iterable[ModbusPoint | OpcUaPoint]) -> None:
        self._by_point = {
            point.id: PointTransform.for_point(point)
            for point in points
            if point.scale != 1
            or point.offset != 0
            or point.deadband is not None
            or point.deadband_percent is not None
        }

    def apply(self, samples: Sequence[Sample]) -> Sequence[Sample]:
        """The samples that pass, transformed, in their original order."""
        if not self._by_point:
            return samples
        out = []
        for sample in samples:
            transform = self._by_point.get(sample.point)
            kept = transform.apply(sample) if transform else sample
            if kept is not None:
                out.append(kept)
        return out
