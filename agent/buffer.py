"""The live buffer: new records wait here, in memory, for a short grace period before they are
committed to the outbox file.

The publisher sends them straight from memory, so a value reaches the broker milliseconds after
it was read. If the broker acknowledges a batch within the grace period (the normal case), it is
never written to disk at all: no latency from batched commits and no SD-card wear for data that
has already arrived. Whatever is not acknowledged by then is committed like any other row and
its acknowledgement later deletes it. A SIGKILL or power cut therefore loses at most the
unacknowledged records of the last grace period, the same exposure as a batched-commit outbox.

Every entry goes through:

    pending --publisher takes it--> published --PUBACK--> gone (deleted from disk if committed)
       \\--grace period over, writer commits it--> backlog row (the publisher leases it later)

A published entry that the writer commits stays here (with its row id) until its PUBACK, so the
backlog never sends it a second time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from agent.outbox import Outbox, PendingRow

__all__ = ["LiveBuffer", "LiveEntry"]

EntryState = Literal["pending", "published", "acked"]


@dataclass(slots=True, eq=False)
class LiveEntry:
    """One outbox row's worth of records, still in memory."""

    key: int
    row: PendingRow
    added: float  # time.monotonic()
    state: EntryState = "pending"
    row_id: int | None = None
    committing: bool = False

    @property
    def kind(self) -> str:
        """`metrics` or `events`."""
        return self.row.kind

    @property
    def topic(self) -> str:
        """The device name or event kind."""
        return self.row.topic

    @property
    def body(self) -> str:
        """The records as a JSON array."""
        return self.row.body

    @property
    def n(self) -> int:
        """How many records."""
        return self.row.n


class LiveBuffer:
    """Shared by the outbox writer (asyncio side) and the publisher thread."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self._lock = threading.Lock()
        self._entries: dict[int, LiveEntry] = {}  # insertion-ordered: oldest first
        self._next_key = 0
        self._committed_live_ids: set[int] = set()
        self._committing_ids: set[int] = set()
        self._delivered_uncounted = 0
        self._commit_lock = threading.Lock()

    # -- writer side --------------------------------------------------------------------------

    def add(self, rows: Sequence[PendingRow]) -> None:
        """Take in new rows as pending."""
        now = time.monotonic()
        with self._lock:
            for row in rows:
                self._entries[self._next_key] = LiveEntry(self._next_key, row, now)
                self._next_key += 1

    def unsent_records(self, added_before: float = float("inf")) -> int:
        """Records not yet handed to the broker (of those added before `added_before`,
        monotonic: the publisher has had its chance at them)."""
        with self._lock:
            return sum(
                e.n
                for e in self._entries.values()
                if e.state == "pending" and e.added < added_before
            )

    def commit(self, older_than: float, *, count_delivered: bool = False) -> int:
        """Commit entries added before `older_than` (monotonic) that the broker has not
        acknowledged; return how many records were written to disk.

        The count of records delivered straight from memory is written with the next real
        commit, or now if `count_delivered`: when the broker keeps up, nothing at all is written
        between those calls, sparing the SD card. Commits run one at a time (the writer's
        thread and the shutdown flush may overlap).
        """
        with self._commit_lock:
            return self._commit(older_than, count_delivered)

    def _commit(self, older_than: float, count_delivered: bool) -> int:
        with self._lock:
            due = [
                (key, entry)
                for key, entry in self._entries.items()
                if entry.added <= older_than
                and entry.row_id is None
                and entry.state != "acked"
                and not entry.committing
            ]
            if not due and not count_delivered:
                return 0
            for _key, entry in due:
                entry.committing = True
            delivered, self._delivered_uncounted = self._delivered_uncounted, 0
        try:
            ids = self.outbox.append(
                [entry.row for _, entry in due],
                delivered_records=delivered,
                before_commit=self._hide_from_backlog,
            )
        except BaseException:
            with self._lock:
                self._committing_ids.clear()
                self._delivered_uncounted += delivered
                for key, entry in due:
                    entry.committing = False
                    if entry.state == "acked":  # delivered while the commit failed
                        del self._entries[key]
                        self._delivered_uncounted += entry.n
            raise
        acked_meanwhile = []
        with self._lock:
            for (key, entry), row_id in zip(due, ids, strict=True):
                entry.committing = False
                entry.row_id = row_id
                if entry.state == "acked":
                    acked_meanwhile.append(row_id)
                    del self._entries[key]
                elif entry.state == "pending":
                    del self._entries[key]  # now an ordinary backlog row
                else:
                    self._committed_live_ids.add(row_id)
            # Rows the broker acknowledged during the commit stay hidden from the backlog
            # until they are deleted, or the publisher could lease and send them again.
            self._committing_ids.intersection_update(acked_meanwhile)
        if acked_meanwhile:
            try:
                self.outbox.delete(acked_meanwhile)
            finally:
                with self._lock:
                    self._committing_ids.clear()
        return sum(entry.n for _, entry in due)

    def _hide_from_backlog(self, ids: Sequence[int]) -> None:
        """Called inside the outbox transaction: until `_commit` has sorted the new rows into
        live and backlog, the publisher must not lease them, or a row being sent from memory
        could be sent a second time from the file."""
        with self._lock:
            self._committing_ids.update(ids)

    def commit_all(self) -> int:
        """Commit everything not acknowledged, and the delivered count (at shutdown)."""
        return self.commit(older_than=float("inf"), count_delivered=True)

    # -- publisher side -----------------------------------------------------------------------

    def take_pending(self) -> list[LiveEntry]:
        """The pending entries, oldest first, now marked published."""
        with self._lock:
            taken = [entry for entry in self._entries.values() if entry.state == "pending"]
            for entry in taken:
                entry.state = "published"
            return taken

    def acknowledged(self, entries: Sequence[LiveEntry]) -> None:
        """The broker has these: forget them, on disk too if they were committed."""
        to_delete = []
        with self._lock:
            for entry in entries:
                key = self._key_of(entry)
                if key is None:
                    continue
                if entry.committing:
                    entry.state = "acked"  # commit() deletes the row when it finishes
                    continue
                del self._entries[key]
                if entry.row_id is not None:
                    to_delete.append(entry.row_id)
                    self._committed_live_ids.discard(entry.row_id)
                else:
                    self._delivered_uncounted += entry.n
        if to_delete:
            self.outbox.delete(to_delete)

    def forget(self, entries: Sequence[LiveEntry]) -> tuple[list[int], list[PendingRow]]:
        """The broker will never take these (they go to the dead-letter table): forget them
        without counting them delivered. Returns the ids of those already committed and the
        rows of those that are not; entries being committed right now are offered again
        instead (`rejected`), to be forgotten once committed."""
        committed: list[int] = []
        uncommitted: list[PendingRow] = []
        busy = []
        with self._lock:
            for entry in entries:
                key = self._key_of(entry)
                if key is None:
                    continue
                if entry.committing:
                    busy.append(entry)
                    continue
                del self._entries[key]
                if entry.row_id is not None:
                    self._committed_live_ids.discard(entry.row_id)
                    committed.append(entry.row_id)
                else:
                    uncommitted.append(entry.row)
        if busy:
            committed += self.rejected(busy)
        return committed, uncommitted

    def rejected(self, entries: Sequence[LiveEntry]) -> list[int]:
        """The broker refused these: back to pending, or to the backlog if already committed.

        Returns the ids of the rows that became backlog, so the publisher can lease them again.
        """
        to_backlog = []
        with self._lock:
            for entry in entries:
                key = self._key_of(entry)
                if key is None:
                    continue
                if entry.row_id is not None and not entry.committing:
                    del self._entries[key]
                    self._committed_live_ids.discard(entry.row_id)
                    to_backlog.append(entry.row_id)
                else:
                    entry.state = "pending"
        return to_backlog

    def protected_ids(self) -> set[int]:
        """Committed rows still being delivered from memory: not to be dropped."""
        with self._lock:
            return self._committed_live_ids | self._committing_ids

    def is_live(self, row_id: int) -> bool:
        """True while a committed row is still being delivered from memory."""
        with self._lock:
            return row_id in self._committed_live_ids or row_id in self._committing_ids

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _key_of(self, entry: LiveEntry) -> int | None:
        return entry.key if self._entries.get(entry.key) is entry else None
