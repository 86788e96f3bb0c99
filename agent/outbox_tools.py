"""`shopfloor outbox CONFIG stats|export|replay-dead|purge`: the outbox file, for engineers on site.

They use sqlite-utils, which the agent itself never imports (see agent/outbox.py), and are safe
while the agent runs: the file is in WAL mode, so readers never wait, and the two writers
(replay-dead and purge) wait up to `BUSY_TIMEOUT_S` for the agent's short transactions. None of
them ever creates an outbox file.

Accounting: `accepted_records` in the meta table counts every record the agent took in. Each
one is delivered, dropped to keep the outbox in bounds (`dropped_<kind>`), purged here on purpose
(`purged_<kind>`), still waiting in the outbox, or a dead letter; `stats` shows the sum.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import sqlite_utils
from rich.console import Console
from rich.table import Table

from agent.model import now_ms
from agent.outbox import Outbox
from agent.settings import Config
from agent.status import (
    STALE_INTERVALS,
    ToolError,
    age_text,
    existing_outbox,
    explain,
    size_text,
    time_text,
    zone_name,
)

__all__ = [
    "BUSY_TIMEOUT_S",
    "CSV_COLUMNS",
    "export_command",
    "purge_command",
    "replay_dead_command",
    "stats_command",
]

# How long a writer waits for the agent's own transaction before giving up.
BUSY_TIMEOUT_S = 5.0

KINDS = ("metrics", "events")

# One column per record field (metrics: p v q r ts; events: kind source message ts data),
# after the row's own columns; a field a record does not have stays empty.
CSV_COLUMNS = ("row_id", "row_kind", "topic", "ts", "p", "v", "q", "r", "kind", "source", "message")
_DEAD_COLUMNS = ("reason", "failed_at")

EXIT_OK = 0
EXIT_FAILED = 1


def stats_command(config: Config, *, as_json: bool) -> int:
    """Print what waits in the outbox and what happened to everything else."""
    return _guarded(lambda: _stats(config, as_json))


def export_command(
    config: Config, *, dead_letters: bool, output_format: str, output: Path | None
) -> int:
    """Write every record (one line each) as JSON lines or CSV to `output` or stdout."""
    return _guarded(lambda: _export(config, dead_letters, output_format, output))


def replay_dead_command(config: Config) -> int:
    """Move every dead letter back into the outbox."""
    return _guarded(lambda: _replay_dead(config))


def purge_command(
    config: Config,
    *,
    dead_letters: bool,
    kind: str | None,
    older_than_s: float | None,
    topics: Sequence[str],
    yes: bool,
) -> int:
    """Delete waiting records on purpose, after showing them and asking (unless `yes`)."""
    return _guarded(
        lambda: _purge(config, _Selection(dead_letters, kind, older_than_s, tuple(topics)), yes=yes)
    )


def _guarded(action: Callable[[], int]) -> int:
    try:
        return action()
    except ToolError as exc:
        Console(stderr=True, highlight=False, soft_wrap=True).print(str(exc), markup=False)
        return EXIT_FAILED


def _open(config: Config, *, write: bool) -> tuple[Path, sqlite_utils.Database]:
    """The outbox file through sqlite-utils, opened read-only unless `write`; never created."""
    path = existing_outbox(config)
    uri = f"{path.resolve().as_uri()}?mode={'rw' if write else 'ro'}"
    try:
        connection = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as exc:
        raise explain(path, exc, BUSY_TIMEOUT_S) from None
    try:
        db = sqlite_utils.Database(connection)
        tables = set(db.table_names())
    except sqlite3.Error as exc:
        connection.close()
        raise explain(path, exc, BUSY_TIMEOUT_S) from None
    if not {"outbox", "meta"} <= tables:
        connection.close()
        raise ToolError(f"{path} is an SQLite file but not an outbox (no outbox table).")
    return path, db


def _meta(db: sqlite_utils.Database) -> dict[str, int]:
    return {row["key"]: int(row["value"]) for row in db.query("SELECT key, value FROM meta")}


# -- stats --------------------------------------------------------------------------------------


def _stats(config: Config, as_json: bool) -> int:
    path, db = _open(config, write=False)
    try:
        report = _collect_stats(db, config, path)
    except sqlite3.Error as exc:
        raise explain(path, exc, BUSY_TIMEOUT_S) from None
    finally:
        db.conn.close()
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _print_stats(report)
    return EXIT_OK


def _collect_stats(db: sqlite_utils.Database, config: Config, path: Path) -> dict[str, Any]:
    now = now_ms()
    # One read transaction: every figure below comes from the same moment.
    db.execute("BEGIN")
    try:
        groups = list(
            db.query(
                "SELECT kind, topic, count(*) AS rows, coalesce(sum(n), 0) AS records, "
                "min(first_ts) AS oldest_ts, max(first_ts) AS newest_ts "
                "FROM outbox GROUP BY kind, topic ORDER BY kind, topic"
            )
        )
        dead = list(
            db.query(
                "SELECT reason, count(*) AS rows, coalesce(sum(n), 0) AS records "
                "FROM dead_letter GROUP BY reason ORDER BY reason"
            )
            if "dead_letter" in db.table_names()
            else []
        )
        meta = _meta(db)
        page_count = db.execute("PRAGMA page_count").fetchone()[0]
        free_pages = db.execute("PRAGMA freelist_count").fetchone()[0]
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
    finally:
        db.execute("COMMIT")
    oldest = min((g["oldest_ts"] for g in groups), default=None)
    newest = max((g["newest_ts"] for g in groups), default=None)
    waiting = sum(g["records"] for g in groups)
    dead_records = sum(d["records"] for d in dead)
    dropped = {kind: meta.get(f"dropped_{kind}", 0) for kind in KINDS}
    purged = {kind: meta.get(f"purged_{kind}", 0) for kind in KINDS}
    accepted = meta.get("accepted_records", 0)

    def age(ts: int | None) -> float | None:
        return None if ts is None else round((now - ts) / 1000, 1)

    return {
        "path": str(path),
        "session": meta.get("session", 0),
        "waiting": {
            "rows": sum(g["rows"] for g in groups),
            "records": waiting,
            "by_topic": groups,
        },
        "bytes": {
            "used": (page_count - free_pages) * page_size,
            "cap": config.outbox.max_bytes,
            "file": path.stat().st_size,
        },
        "oldest_ts": oldest,
        "oldest_age_s": age(oldest),
        "newest_ts": newest,
        "newest_age_s": age(newest),
        "dead_letters": {
            "rows": sum(d["rows"] for d in dead),
            "records": dead_records,
            "by_reason": {d["reason"]: d["records"] for d in dead},
            "buried_since_created": meta.get("dead_letter_records", 0),
        },
        "dropped": dropped,
        "purged": purged,
        "accepted_records": accepted,
        # Not counted anywhere: what is left once everything else is accounted for.
        "delivered_records": accepted
        - sum(dropped.values())
        - sum(purged.values())
        - waiting
        - dead_records,
    }


def _print_stats(report: dict[str, Any]) -> None:
    console = Console(highlight=False, soft_wrap=True)
    waiting = report["waiting"]
    table = Table(title=f"Waiting in {report['path']} (session {report['session']})")
    for column, justify in (
        ("kind", "left"),
        ("topic", "left"),
        ("rows", "right"),
        ("records", "right"),
        (f"oldest sample ({zone_name()})", "left"),
        (f"newest ({zone_name()})", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for group in waiting["by_topic"]:
        table.add_row(
            group["kind"],
            group["topic"],
            f"{group['rows']:,}",
            f"{group['records']:,}",
            time_text(group["oldest_ts"], zone=False),
            time_text(group["newest_ts"], zone=False),
        )
    table.add_section()
    table.add_row("total", "", f"{waiting['rows']:,}", f"{waiting['records']:,}", "", "")
    console.print(table)
    size = report["bytes"]
    console.print(
        f"Used: {size_text(size['used'])} of the {size_text(size['cap'])} cap "
        f"({100 * size['used'] / size['cap']:.1f} %); the file takes {size_text(size['file'])}.",
        markup=False,
    )
    if report["oldest_ts"] is not None:
        console.print(
            f"Oldest sample {time_text(report['oldest_ts'])} ({age_text(report['oldest_age_s'])} "
            f"ago), newest {time_text(report['newest_ts'])} ({age_text(report['newest_age_s'])} "
            "ago; times are each batch's first sample).",
            markup=False,
        )
    dead = report["dead_letters"]
    reasons = ", ".join(f"{reason}: {n:,}" for reason, n in dead["by_reason"].items())
    console.print(
        f"Dead letters: {dead['rows']:,} rows, {dead['records']:,} records"
        + (f" ({reasons})" if reasons else "")
        + f"; {dead['buried_since_created']:,} records buried since the file was made.",
        markup=False,
    )
    dropped, purged = report["dropped"], report["purged"]
    console.print(
        f"Dropped to stay in bounds: {dropped['metrics']:,} metrics, {dropped['events']:,} "
        f"events. Purged on purpose: {purged['metrics']:,} metrics, {purged['events']:,} events.",
        markup=False,
    )
    console.print(
        f"Accepted since the file was made: {report['accepted_records']:,} records = "
        f"{report['delivered_records']:,} delivered + {sum(dropped.values()):,} dropped + "
        f"{sum(purged.values()):,} purged + {waiting['records']:,} waiting + "
        f"{dead['records']:,} dead letters.",
        markup=False,
    )


# -- export -------------------------------------------------------------------------------------


def _export(config: Config, dead_letters: bool, output_format: str, output: Path | None) -> int:
    path, db = _open(config, write=False)
    try:
        if output is None:
            rows, records = _export_to(db, path, dead_letters, output_format, sys.stdout)
        else:
            try:
                stream = output.open("x", encoding="utf-8", newline="")
            except FileExistsError:
                raise ToolError(f"{output} exists: choose another name or remove it.") from None
            except OSError as exc:
                raise ToolError(f"Cannot write {output}: {exc.strerror}.") from None
            try:
                with stream:
                    rows, records = _export_to(db, path, dead_letters, output_format, stream)
            except BaseException:
                output.unlink(missing_ok=True)  # no half-written export left behind
                raise
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        # Python would complain when it flushes stdout at exit: point it at /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_OK
    finally:
        db.conn.close()
    what = "dead letters" if dead_letters else "waiting records"
    where = "stdout" if output is None else str(output)
    print(
        f"Exported {records:,} {what} "
        f"({_plural(rows, 'row')}) from {path} to {where} as {output_format}.",
        file=sys.stderr if output is None else sys.stdout,
    )
    return EXIT_OK


def _export_to(
    db: sqlite_utils.Database, path: Path, dead: bool, output_format: str, stream: IO[str]
) -> tuple[int, int]:
    try:
        return _write_records(db, "dead_letter" if dead else "outbox", dead, output_format, stream)
    except sqlite3.Error as exc:
        raise explain(path, exc, BUSY_TIMEOUT_S) from None
    except ValueError as exc:  # csv: a record field this version does not know
        raise ToolError(f"Cannot write CSV ({exc}): export with --format jsonl.") from None
    except BrokenPipeError:
        raise
    except OSError as exc:
        name = "stdout" if stream is sys.stdout else getattr(stream, "name", "the output")
        raise ToolError(f"Cannot write {name}: {exc.strerror}.") from None


def _write_records(
    db: sqlite_utils.Database, table: str, dead: bool, output_format: str, stream: IO[str]
) -> tuple[int, int]:
    if dead and table not in db.table_names():
        return 0, 0
    extra = ", reason, failed_at" if dead else ""
    query = f"SELECT id, kind, topic, body{extra} FROM {table} ORDER BY id"  # noqa: S608
    columns = (*CSV_COLUMNS[:3], *(_DEAD_COLUMNS if dead else ()), *CSV_COLUMNS[3:], "data")
    writer = csv.DictWriter(stream, fieldnames=columns) if output_format == "csv" else None
    if writer is not None:
        writer.writeheader()
    rows = records = 0
    for row in db.query(query):  # one SELECT: a consistent snapshot even while the agent runs
        rows += 1
        for line in _records(row, dead):
            records += 1
            if writer is None:
                stream.write(json.dumps(line, ensure_ascii=False) + "\n")
            else:
                writer.writerow({key: _csv_value(key, value) for key, value in line.items()})
    stream.flush()
    return rows, records


def _records(row: dict[str, Any], dead: bool) -> Iterator[dict[str, Any]]:
    try:
        body = json.loads(row["body"])
    except ValueError:
        raise ToolError(f"Row {row['id']} of the outbox holds no valid JSON.") from None
    for record in body:
        line = {"row_id": row["id"], "row_kind": row["kind"], "topic": row["topic"]}
        if dead:
            line.update(reason=row["reason"], failed_at=row["failed_at"])
        line.update(record)
        yield line


def _csv_value(key: str, value: Any) -> Any:
    if key == "data":
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # the shortest form that reads back as the same float
    return value


# -- replay-dead --------------------------------------------------------------------------------


def _replay_dead(config: Config) -> int:
    path = existing_outbox(config)
    try:
        outbox = Outbox(path, synchronous=config.outbox.synchronous)
    except sqlite3.Error as exc:
        raise explain(path, exc, 5) from None
    try:
        records = outbox.replay_dead()
    except sqlite3.Error as exc:
        raise explain(path, exc, 5) from None
    finally:
        outbox.close()
    if not records:
        print(f"There are no dead letters in {path}.")
        return EXIT_OK
    print(
        f"Moved {records:,} records from the dead-letter table back into the outbox; the agent "
        "sends them next, oldest first. If the cause (e.g. the broker's ACL) is not fixed, the "
        "broker refuses them again and they return to the dead-letter table."
    )
    return EXIT_OK


# -- purge --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Selection:
    dead_letters: bool
    kind: str | None
    older_than_s: float | None
    topics: tuple[str, ...]

    @property
    def table(self) -> str:
        return "dead_letter" if self.dead_letters else "outbox"

    def where(self, now: int) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if self.kind is not None:
            clauses.append("kind = ?")
            params.append(self.kind)
        if self.older_than_s is not None:
            clauses.append("first_ts < ?")
            params.append(now - round(self.older_than_s * 1000))
        if self.topics:
            clauses.append(f"topic IN ({', '.join('?' * len(self.topics))})")
            params.extend(self.topics)
        return " AND ".join(clauses) or "1", params

    def describe(self) -> str:
        parts = ["dead letters" if self.dead_letters else "waiting records"]
        if self.kind is not None:
            parts.append(f"of kind {self.kind}")
        if self.topics:
            parts.append(f"of topic {', '.join(self.topics)}")
        if self.older_than_s is not None:
            parts.append(f"sampled more than {age_text(self.older_than_s)} ago")
        return " ".join(parts)


def _purge(config: Config, selection: _Selection, *, yes: bool) -> int:
    if not (selection.dead_letters or selection.kind or selection.topics) and (
        selection.older_than_s is None
    ):
        raise ToolError(
            "Say what to purge: --dead-letters, or --kind, --older-than and/or --topic "
            "(--older-than 0s selects every waiting record)."
        )
    path, db = _open(config, write=True)
    console = Console(highlight=False, soft_wrap=True)
    try:
        now = now_ms()
        groups = _purge_groups(db, selection, now)
        if not groups:
            console.print(f"Nothing to purge: no {selection.describe()} in {path}.", markup=False)
            return EXIT_OK
        _print_purge_preview(console, selection, groups, path)
        if not selection.dead_letters:
            _warn_if_agent_runs(console, db, config)
        if not yes:
            if not sys.stdin.isatty():
                raise ToolError(
                    "Nothing purged: there is no terminal to confirm on; run again with --yes "
                    "to purge without asking."
                )
            answer = input("Purge them? This cannot be undone. [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                console.print("Nothing purged.")
                return EXIT_FAILED
        purged = _delete(db, selection, now)
    except sqlite3.Error as exc:
        raise explain(path, exc, BUSY_TIMEOUT_S) from None
    finally:
        db.conn.close()
    total = sum(records for _, records in purged.values())
    rows = sum(count for count, _ in purged.values())
    by_kind = ", ".join(f"{purged[kind][1]:,} {kind}" for kind in KINDS if kind in purged)
    expected = sum(g["records"] for g in groups)
    console.print(
        f"Purged {_plural(total, 'record')} ({_plural(rows, 'row')}: {by_kind or 'none'}) "
        f"from {path}"
        + (
            f" ({expected - total:+,} against the list above: the agent sent or dropped some "
            "meanwhile)."
            if total != expected
            else "."
        ),
        markup=False,
    )
    console.print(
        "They are counted as "
        + " and ".join(f"purged_{kind}" for kind in KINDS if kind in purged)
        + " in the outbox's meta table, so accepted = delivered + dropped + purged + waiting "
        "(+ dead letters) still holds; `shopfloor outbox CONFIG stats` shows the sum.",
        markup=False,
    )
    return EXIT_OK


def _purge_groups(
    db: sqlite_utils.Database, selection: _Selection, now: int
) -> list[dict[str, Any]]:
    if selection.table not in db.table_names():
        return []
    where, params = selection.where(now)
    return list(
        db.query(
            "SELECT kind, topic, count(*) AS rows, coalesce(sum(n), 0) AS records, "  # noqa: S608
            f"min(first_ts) AS oldest_ts, max(first_ts) AS newest_ts FROM {selection.table} "
            f"WHERE {where} GROUP BY kind, topic ORDER BY kind, topic",
            params,
        )
    )


def _print_purge_preview(
    console: Console, selection: _Selection, groups: list[dict[str, Any]], path: Path
) -> None:
    table = Table(title=f"To purge from {path}: {selection.describe()}")
    zone = zone_name()
    for column in (
        "kind",
        "topic",
        "rows",
        "records",
        f"oldest sample ({zone})",
        f"newest ({zone})",
    ):
        table.add_column(column, justify="right" if column in ("rows", "records") else "left")
    for group in groups:
        table.add_row(
            group["kind"],
            group["topic"],
            f"{group['rows']:,}",
            f"{group['records']:,}",
            time_text(group["oldest_ts"], zone=False),
            time_text(group["newest_ts"], zone=False),
        )
    table.add_section()
    table.add_row(
        "total",
        "",
        f"{sum(g['rows'] for g in groups):,}",
        f"{sum(g['records'] for g in groups):,}",
        "",
        "",
    )
    console.print(table)


def _warn_if_agent_runs(console: Console, db: sqlite_utils.Database, config: Config) -> None:
    if "agent_status" not in db.table_names():
        return
    rows = list(db.query("SELECT updated FROM agent_status WHERE key = 'health'"))
    if not rows:
        return
    age_s = (now_ms() - int(rows[0]["updated"])) / 1000
    if age_s <= STALE_INTERVALS * config.mqtt.health_interval:
        console.print(
            f"Note: the agent seems to be running (its status is {age_text(age_s)} old). Rows "
            "it is sending at this moment may still arrive and then count as delivered and "
            "purged; stop the agent first for exact counts.",
            markup=False,
        )


def _delete(
    db: sqlite_utils.Database, selection: _Selection, now: int
) -> dict[str, tuple[int, int]]:
    """Delete the selected rows and count their records as purged, in one transaction;
    returns (rows, records) by kind."""
    where, params = selection.where(now)
    db.execute("BEGIN IMMEDIATE")  # waits up to BUSY_TIMEOUT_S for the agent's transaction
    try:
        purged = {
            row["kind"]: (int(row["rows"]), int(row["records"]))
            for row in db.query(
                "SELECT kind, count(*) AS rows, coalesce(sum(n), 0) AS records "  # noqa: S608
                f"FROM {selection.table} WHERE {where} GROUP BY kind",
                params,
            )
        }
        db.execute(f"DELETE FROM {selection.table} WHERE {where}", params)  # noqa: S608
        for kind, (_, records) in purged.items():
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
                (f"purged_{kind}", records),
            )
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return purged


def _plural(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"
