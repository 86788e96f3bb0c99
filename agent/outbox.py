"""The store-and-forward outbox: a SQLite file in WAL mode that holds every record until the
broker has acknowledged the message that carried it.

One row holds one batch of records for one topic (a device's samples from one poll, or events
of one kind), already encoded as a JSON array, so that publishing concatenates strings instead
of re-encoding and deleting after an acknowledgement touches few rows. Row ids only grow
(AUTOINCREMENT), so "oldest first" is "lowest id first" and an id is never reused after a
restart.

The file is plain SQLite that the `sqlite-utils` CLI can inspect. The runtime uses the standard
library's sqlite3 directly: importing sqlite_utils would add 4 MiB (25 MiB with numpy installed)
to every agent.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["Dropped", "Outbox", "OutboxStats", "PendingRow", "StoredRow"]

RowKind = Literal["metrics", "events"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    n INTEGER NOT NULL,
    first_ts INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letter (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    n INTEGER NOT NULL,
    first_ts INTEGER NOT NULL,
    body TEXT NOT NULL,
    reason TEXT NOT NULL,
    failed_at INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class PendingRow:
    """A batch about to be committed: `body` is a JSON array of `n` wire records."""

    kind: RowKind
    topic: str
    n: int
    first_ts: int
    body: str


@dataclass(frozen=True, slots=True)
class StoredRow:
    """A committed batch, as leased by the publisher."""

    id: int
    kind: RowKind
    topic: str
    n: int
    first_ts: int
    body: str


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """How much is waiting, and for how long."""

    rows: int
    records: int
    oldest_ts: int | None
    accepted_records: int


DropClass = Literal["metrics", "events", "dead_letters"]
_DROP_CLASSES: tuple[DropClass, ...] = ("metrics", "events", "dead_letters")
# The queries per class, written out: table names cannot be query parameters.
_OLDEST = {
    "metrics": "SELECT id, n, first_ts, length(body) FROM outbox WHERE kind = ? AND id > ? "
    "ORDER BY id LIMIT 500",
    "events": "SELECT id, n, first_ts, length(body) FROM outbox WHERE kind = ? AND id > ? "
    "ORDER BY id LIMIT 500",
    "dead_letters": "SELECT id, n, first_ts, length(body) FROM dead_letter WHERE id > ? "
    "ORDER BY id LIMIT 500",
}
_EXPIRED = {
    "metrics": "SELECT id, n, first_ts FROM outbox WHERE kind = ? AND first_ts < ? ORDER BY id",
    "events": "SELECT id, n, first_ts FROM outbox WHERE kind = ? AND first_ts < ? ORDER BY id",
    "dead_letters": "SELECT id, n, first_ts FROM dead_letter WHERE first_ts < ? ORDER BY id",
}
_DELETE = {
    "metrics": "DELETE FROM outbox WHERE id = ?",
    "events": "DELETE FROM outbox WHERE id = ?",
    "dead_letters": "DELETE FROM dead_letter WHERE id = ?",
}
_KIND_ARG: dict[DropClass, tuple[str, ...]] = {
    "metrics": ("metrics",),
    "events": ("events",),
    "dead_letters": (),
}


@dataclass(frozen=True, slots=True)
class Dropped:
    """Rows of one class deleted unsent to keep the outbox within its bounds."""

    kind: DropClass
    rows: int
    records: int
    first_ts: int  # the first sample time of the oldest row dropped
    last_ts: int  # the first sample time of the newest row dropped


class Outbox:
    """Thread-safe access to the outbox file (the writer task and the publisher share it)."""

    def __init__(self, path: Path, *, synchronous: Literal["normal", "full"] = "normal") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._leased: set[int] = set()  # the publisher's last lease
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._db.execute("PRAGMA busy_timeout=5000")
        # Appends at the end and reads from the start: a small page cache does (default 2 MiB).
        self._db.execute("PRAGMA cache_size=-512")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the file; committed rows stay for the next start."""
        with self._lock:
            self._db.close()

    def next_session(self) -> int:
        """Count this start: the session number published in status and every message."""
        with self._transaction():
            session = self._meta("session") + 1
            self._set_meta("session", session)
        return session

    def append(
        self,
        rows: Sequence[PendingRow],
        *,
        delivered_records: int = 0,
        before_commit: Callable[[Sequence[int]], None] | None = None,
    ) -> list[int]:
        """Commit rows in one transaction and return their ids, in order.

        `before_commit`, if given, gets the new ids just before the transaction commits, while
        no other thread can read the outbox yet.

        `accepted_records` in the meta table counts every record the agent ever took in: those
        committed here plus `delivered_records`, the ones the broker acknowledged before they
        needed committing. Tests and `shopfloor` tools compare it with what arrived.
        """
        if not rows and not delivered_records:
            return []
        ids = []
        with self._transaction():
            for row in rows:
                cursor = self._db.execute(
                    "INSERT INTO outbox (kind, topic, n, first_ts, body) VALUES (?, ?, ?, ?, ?)",
                    (row.kind, row.topic, row.n, row.first_ts, row.body),
                )
                assert cursor.lastrowid is not None
                ids.append(cursor.lastrowid)
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('accepted_records', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
                (sum(row.n for row in rows) + delivered_records,),
            )
            if before_commit is not None:
                before_commit(ids)
        return ids

    def lease(self, after_id: int, limit: int) -> list[StoredRow]:
        """The oldest rows with an id above `after_id`. They are not dropped (to keep the
        outbox in bounds) until the next lease: by then the publisher has sent them, and they
        are in flight, or has not, and will lease them again."""
        with self._lock:
            cursor = self._db.execute(
                "SELECT id, kind, topic, n, first_ts, body FROM outbox "
                "WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            )
            rows = [StoredRow(*row) for row in cursor.fetchall()]
            self._leased = {row.id for row in rows}
            return rows

    def delete(self, ids: Iterable[int]) -> None:
        """Forget rows whose messages the broker acknowledged."""
        id_list = sorted(ids)
        if not id_list:
            return
        with self._transaction():
            self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in id_list])

    def stats(self) -> OutboxStats:
        """Rows and records waiting and the timestamp of the oldest."""
        with self._lock:
            rows, records, oldest = self._db.execute(
                "SELECT count(*), coalesce(sum(n), 0), min(first_ts) FROM outbox"
            ).fetchone()
            accepted = self._meta("accepted_records")
        return OutboxStats(rows, records, oldest, accepted)

    def used_bytes(self) -> int:
        """Bytes the file's used pages take (free pages, left by deleted rows, not counted:
        SQLite reuses them before it grows the file)."""
        with self._lock:
            pages = self._db.execute("PRAGMA page_count").fetchone()[0]
            free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
            size = self._db.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def file_bytes(self) -> int:
        """The file's size in pages, free ones included (deleting rows does not change it)."""
        with self._lock:
            pages = self._db.execute("PRAGMA page_count").fetchone()[0]
            size = self._db.execute("PRAGMA page_size").fetchone()[0]
        return int(pages * size)

    def drop_oldest(
        self, kind: DropClass, target_bytes: int, keep: Callable[[], set[int]]
    ) -> Dropped | None:
        """Delete the oldest rows of a class (metrics, events, or dead letters) until the used
        pages fit in `target_bytes` or none of that class is left. Rows being sent right now
        (`keep()`, asked inside each transaction, and the rows of the last lease) are left
        alone. Counted in the meta table as `dropped_<class>`."""
        deleted: list[tuple[int, int, int]] = []  # (id, records, first_ts), oldest first
        after = 0
        for _ in range(100_000):  # a bound, should pages refuse to free
            excess = self.used_bytes() - target_bytes
            if excess <= 0:
                break
            with self._transaction():
                kept = keep() | self._leased
                candidates = self._db.execute(_OLDEST[kind], (*_KIND_ARG[kind], after)).fetchall()
                chosen = []
                freed = 0
                for row_id, n, ts, size in candidates:
                    after = row_id
                    if row_id in kept:
                        continue
                    chosen.append((row_id, n, ts))
                    freed += size + 40  # and the row's own overhead in its page
                    if freed >= excess:
                        break
                self._delete_dropped(kind, chosen)
            if not candidates:
                break
            deleted += chosen
        return _dropped(kind, deleted)

    def drop_expired(self, older_than_ts: int, keep: Callable[[], set[int]]) -> list[Dropped]:
        """Delete the rows (and dead letters) whose first sample is older than
        `older_than_ts` (epoch ms)."""
        drops = []
        with self._transaction():
            kept = keep() | self._leased
            for kind in _DROP_CLASSES:
                rows = [
                    (row_id, n, ts)
                    for row_id, n, ts in self._db.execute(
                        _EXPIRED[kind], (*_KIND_ARG[kind], older_than_ts)
                    ).fetchall()
                    if row_id not in kept
                ]
                self._delete_dropped(kind, rows)
                dropped = _dropped(kind, rows)
                if dropped is not None:
                    drops.append(dropped)
        return drops

    def _delete_dropped(self, kind: DropClass, rows: Sequence[tuple[int, int, int]]) -> None:
        """Inside a transaction: delete rows (id, records, ts) and count their records."""
        if rows:
            self._db.executemany(_DELETE[kind], [(r[0],) for r in rows])
            self._add_meta(f"dropped_{kind}", sum(r[1] for r in rows))

    def bury(self, ids: Sequence[int], reason: str, failed_at: int) -> int:
        """Move rows the broker will never accept (not authorized, payload format invalid) to
        the dead-letter table, where they wait to be inspected and replayed; returns the
        records moved."""
        records = 0
        with self._transaction():
            for row_id in ids:
                row = self._db.execute("SELECT n FROM outbox WHERE id = ?", (row_id,)).fetchone()
                if row is None:
                    continue  # dropped or delivered meanwhile
                self._db.execute(
                    "INSERT OR REPLACE INTO dead_letter "
                    "(id, kind, topic, n, first_ts, body, reason, failed_at) "
                    "SELECT id, kind, topic, n, first_ts, body, ?, ? FROM outbox WHERE id = ?",
                    (reason, failed_at, row_id),
                )
                self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
                records += int(row[0])
            self._add_meta("dead_letter_records", records)
        return records

    def dead_letters(self) -> dict[str, int]:
        """Records waiting in the dead-letter table, by reason."""
        with self._lock:
            return {
                reason: int(records)
                for reason, records in self._db.execute(
                    "SELECT reason, sum(n) FROM dead_letter GROUP BY reason ORDER BY reason"
                )
            }

    def replay_dead(self) -> int:
        """Move every dead letter back into the outbox (after the cause was fixed, e.g. the
        broker's ACL); they are sent again, oldest first. Returns the records moved."""
        with self._transaction():
            records = self._db.execute("SELECT coalesce(sum(n), 0) FROM dead_letter").fetchone()[0]
            self._db.execute(
                "INSERT INTO outbox (kind, topic, n, first_ts, body) "
                "SELECT kind, topic, n, first_ts, body FROM dead_letter ORDER BY id"
            )
            self._db.execute("DELETE FROM dead_letter")
        return int(records)

    def dropped_records(self) -> dict[str, int]:
        """Records deleted unsent to keep the outbox in bounds, by kind, since it was made."""
        with self._lock:
            return {kind: self._meta(f"dropped_{kind}") for kind in _DROP_CLASSES}

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _add_meta(self, key: str, amount: int) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
            (key, amount),
        )

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -- the agent's latest health report, read by `shopfloor status` --------------------------

    def save_status(self, report: Mapping[str, Any], updated_ms: int) -> None:
        """Keep the latest health report in the file (one small row, replaced each time), so
        that `shopfloor status` shows it without the broker."""
        text = json.dumps(report, separators=(",", ":"), ensure_ascii=False, default=str)
        with self._transaction():
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS agent_status "
                "(key TEXT PRIMARY KEY, value TEXT NOT NULL, updated INTEGER NOT NULL)"
            )
            self._db.execute(
                "INSERT INTO agent_status (key, value, updated) VALUES ('health', ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated = excluded.updated",
                (text, updated_ms),
            )

    def latest_status(self) -> tuple[dict[str, Any], int] | None:
        """The health report saved last and when (epoch ms), or None if none was saved."""
        with self._lock:
            if not self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'agent_status'"
            ).fetchone():
                return None
            row = self._db.execute(
                "SELECT value, updated FROM agent_status WHERE key = 'health'"
            ).fetchone()
        if row is None:
            return None
        report = json.loads(row[0])
        return (report, int(row[1])) if isinstance(report, dict) else None


def _dropped(kind: DropClass, rows: Sequence[tuple[int, int, int]]) -> Dropped | None:
    if not rows:
        return None
    times = [r[2] for r in rows]
    return Dropped(kind, len(rows), sum(r[1] for r in rows), min(times), max(times))
