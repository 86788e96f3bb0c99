"""Topic names and JSON payloads published by the agent."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Packable", "Topics", "dumps", "max_message_body", "message_payload", "utf8_size"]


class Packable(Protocol):
    """Anything holding a JSON array of records for one topic (an outbox row, a live entry)."""

    @property
    def kind(self) -> str:
        """`metrics` or `events`."""

    @property
    def topic(self) -> str:
        """Device name or event kind."""

    @property
    def body(self) -> str:
        """The records, a JSON array."""

    @property
    def n(self) -> int:
        """How many records."""


def utf8_size(text: str) -> int:
    """Bytes `text` takes on the wire (payloads keep non-ASCII characters unescaped)."""
    return len(text) if text.isascii() else len(text.encode())


def dumps(document: Any) -> str:
    """Compact JSON, the form of every payload."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Topics:
    """The agent's namespace `{prefix}/{agent_id}` and the topics below it."""

    prefix: str
    agent_id: str

    @property
    def root(self) -> str:
        """`{prefix}/{agent_id}`."""
        return f"{self.prefix}/{self.agent_id}"

    @property
    def status(self) -> str:
        """Retained online/offline, also the last will."""
        return f"{self.root}/status"

    @property
    def health(self) -> str:
        """Periodic health report."""
        return f"{self.root}/health"

    def for_item(self, item: Packable) -> str:
        """`.../metrics/{device}` or `.../events/{kind}`."""
        return f"{self.root}/{item.kind}/{item.topic}"


# Room for the envelope around the records: {"agent":..,"session":..,"seq":..,"samples":[...]}.
_ENVELOPE_BYTES = 256


def max_message_body(max_payload_bytes: int) -> int:
    """How many bytes of records fit in one message under the payload cap."""
    return max_payload_bytes - _ENVELOPE_BYTES


def message_payload(
    agent_id: str,
    session: int,
    seq: int,
    kind: str,
    rows: Sequence[Packable],
    *,
    historical: bool = False,
) -> bytes:
    """One message carrying the records of several outbox rows of one topic.

    Rows already hold JSON arrays, so their contents are joined as text, not re-encoded.
    The key is `samples` for metrics and `events` for events. `historical` marks records that
    waited in the outbox (an outage's backlog), so the platform can tell them from live data.
    """
    key = "samples" if kind == "metrics" else "events"
    records = ",".join(row.body[1:-1] for row in rows if len(row.body) > 2)
    envelope: dict[str, object] = {"agent": agent_id, "session": session, "seq": seq}
    if historical:
        envelope["historical"] = True
    head = dumps(envelope)
    return f'{head[:-1]},"{key}":[{records}]}}'.encode()
