"""`shopfloor outbox ...` and `shopfloor status` against real outbox files, and against the file
of a running agent whose broker is down.

Files are built with `agent.outbox.Outbox`, as the agent builds them. Counting: every record is
accepted once and then delivered, dropped, purged, still waiting or a dead letter.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent import outbox_tools
from agent.cli import main
from agent.model import now_ms
from agent.outbox import Outbox, PendingRow
from tests.conftest import REPO, Subscriber, modbus_device, write_config

# The metrics and events a built file holds; `ts` values are hours in the past, by row.
HOUR_MS = 3_600_000


def without_ages(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stats.items() if k not in ("oldest_age_s", "newest_age_s")}


def config_for(tmp_path: Path, **mqtt: Any) -> Path:
    return write_config(
        tmp_path,
        broker_port=1883,
        devices=[
            modbus_device("plc", 5020, [{"id": "a", "address": "holding:0", "type": "float32"}])
        ],
        mqtt={"health_interval": "2s", **mqtt},
        outbox={"max_bytes": "1MiB"},
    )


def outbox_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "outbox.db"


def metrics_row(topic: str, ts: int, count: int) -> PendingRow:
    records = []
    for index in range(count):
        record: dict[str, Any] = {"p": f"{topic}.p{index}", "v": index + 0.1, "q": "good"}
        if index == 1:  # a bad value and its reason
            record.update(v=None, q="bad", r='timeout, then "no answer"')
        if index == 2:
            record["v"] = True
        if index == 3:
            record["v"] = "text, with a comma"
        record["ts"] = ts + index
        records.append(record)
    return PendingRow("metrics", topic, count, ts, json.dumps(records))


def events_row(ts: int) -> PendingRow:
    records = [
        {
            "kind": "link",
            "source": "plc",
            "message": 'Device plc is disconnected: "timeout", retrying.',
            "ts": ts,
            "data": {"state": "disconnected", "error": "timeout"},
        },
        {"kind": "link", "source": "plc", "message": "Device plc is connected.", "ts": ts + 5},
    ]
    return PendingRow("events", "link", len(records), ts, json.dumps(records))


def build_outbox(tmp_path: Path) -> dict[str, Any]:
    """A file with history: 2 sessions, 5 delivered + 8 dropped + 6 dead + 26 waiting records."""
    now = now_ms()
    outbox = Outbox(outbox_path(tmp_path))
    outbox.next_session()
    outbox.next_session()
    ids = outbox.append(
        [
            metrics_row("plc", now - 50 * HOUR_MS, 4),  # dropped (ttl) below
            metrics_row("plc", now - 49 * HOUR_MS, 4),  # dropped
            metrics_row("plc", now - 30 * HOUR_MS, 5),  # delivered below
            metrics_row("plc", now - 20 * HOUR_MS, 4),  # dead letter
            metrics_row("meter", now - 19 * HOUR_MS, 2),  # dead letter
            metrics_row("plc", now - 10 * HOUR_MS, 4),
            metrics_row("meter", now - 9 * HOUR_MS, 6),
            events_row(now - 8 * HOUR_MS),
            metrics_row("plc", now - 2 * HOUR_MS, 4),
            metrics_row("meter", now - 1 * HOUR_MS, 6),
            events_row(now - 1000),
        ],
        delivered_records=0,
    )
    dropped = outbox.drop_expired(now - 40 * HOUR_MS, keep=set)
    assert [d.records for d in dropped] == [8]
    outbox.delete([ids[2]])
    outbox.bury([ids[3]], "not authorized", now - 15 * HOUR_MS)
    outbox.bury([ids[4]], "payload format invalid", now - 15 * HOUR_MS)
    outbox.close()
    return {"now": now, "ids": ids}


def waiting_records(path: Path, table: str = "outbox") -> list[dict[str, Any]]:
    """Every record of a table with its row's fields, read without the tools."""
    db = sqlite3.connect(path)
    records = []
    for row_id, kind, topic, body in db.execute(
        f"SELECT id, kind, topic, body FROM {table} ORDER BY id"
    ):
        for record in json.loads(body):
            records.append({"row_id": row_id, "row_kind": kind, "topic": topic, **record})
    db.close()
    return records


def record_key(record: dict[str, Any]) -> tuple[Any, ...]:
    """A record's identity, from a JSON line or a CSV row (where absent fields are empty)."""
    if record.get("p"):
        return ("sample", record["p"], int(record["ts"]))
    return ("event", record["source"], record["kind"], int(record["ts"]), record["message"])


class Cli:
    """`shopfloor ...` run in this process: (exit status, stdout, stderr)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        try:
            status = main(list(args))
        except SystemExit as exc:  # argparse errors
            status = int(exc.code or 0)
        out, err = self.capsys.readouterr()
        return status, out, err

    def stats(self, config: Path) -> dict[str, Any]:
        status, out, err = self("outbox", str(config), "stats", "--json")
        assert status == 0, err
        return json.loads(out)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys)


class Terminal(io.StringIO):
    """stdin as a terminal on which the engineer types `answer`."""

    def isatty(self) -> bool:
        return True


def test_stats_counts_by_kind_topic_and_class(tmp_path, cli):
    config = config_for(tmp_path)
    built = build_outbox(tmp_path)
    stats = cli.stats(config)
    groups = {
        (g["kind"], g["topic"]): (g["rows"], g["records"]) for g in stats["waiting"]["by_topic"]
    }
    assert groups == {
        ("events", "link"): (2, 4),
        ("metrics", "meter"): (2, 12),
        ("metrics", "plc"): (2, 8),
    }
    assert (stats["waiting"]["rows"], stats["waiting"]["records"]) == (6, 24)
    assert stats["session"] == 2
    assert stats["accepted_records"] == 4 + 4 + 5 + 4 + 2 + 4 + 6 + 2 + 4 + 6 + 2
    assert stats["dropped"] == {"metrics": 8, "events": 0}
    assert stats["purged"] == {"metrics": 0, "events": 0}
    assert stats["dead_letters"]["by_reason"] == {"not authorized": 4, "payload format invalid": 2}
    assert stats["dead_letters"]["rows"] == 2
    assert stats["delivered_records"] == 5, "accepted - dropped - purged - waiting - dead letters"
    assert stats["bytes"]["cap"] == 2**20
    assert 0 < stats["bytes"]["used"] <= stats["bytes"]["file"]
    assert stats["oldest_ts"] == built["now"] - 10 * HOUR_MS
    assert stats["newest_ts"] == built["now"] - 1000
    assert 10 * 3600 - 5 < stats["oldest_age_s"] < 10 * 3600 + 60

    status, out, _ = cli("outbox", str(config), "stats")
    assert status == 0
    assert re.search(r"metrics\s*│\s*meter\s*│\s*2\s*│\s*12\s*│", out), out
    assert "not authorized: 4" in out
    assert "Dropped to stay in bounds: 8 metrics, 0 events." in out
    assert "Accepted since the file was made: 43 records = 5 delivered + 8 dropped" in out
    assert "24 waiting + 6 dead letters" in out


@pytest.mark.parametrize("dead_letters", [False, True], ids=["outbox", "dead-letters"])
def test_export_jsonl_and_csv_hold_every_record_exactly_once(tmp_path, cli, dead_letters):
    config = config_for(tmp_path)
    build_outbox(tmp_path)
    table = "dead_letter" if dead_letters else "outbox"
    expected = waiting_records(outbox_path(tmp_path), table)
    assert len(expected) == (6 if dead_letters else 24)
    flag = ["--dead-letters"] if dead_letters else []

    status, out, err = cli("outbox", str(config), "export", *flag)
    assert status == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert f"Exported {len(expected)} " in err
    if dead_letters:
        assert {line.pop("reason") for line in lines} == {
            "not authorized",
            "payload format invalid",
        }
        assert all(isinstance(line.pop("failed_at"), int) for line in lines)
    assert lines == expected, "one line per record, in row order, fields and types as stored"

    target = tmp_path / "export.csv"
    status, out, err = cli(
        "outbox", str(config), "export", *flag, "--format", "csv", "-o", str(target)
    )
    assert status == 0, err
    assert f"Exported {len(expected)} " in out
    with target.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert Counter(record_key(row) for row in rows) == Counter(
        record_key(record) for record in expected
    ), "every record exactly once"
    by_key = {record_key(row): row for row in rows}
    for record in expected:
        row = by_key[record_key(record)]
        assert int(row["row_id"]) == record["row_id"]
        assert (row["row_kind"], row["topic"]) == (record["row_kind"], record["topic"])
        if "p" in record:
            value = record["v"]
            text = {None: "", True: "true"}.get(value, str(value))
            assert row["v"] == (repr(value) if isinstance(value, float) else text)
            assert (row["q"], row["r"]) == (record["q"], record.get("r", ""))
        else:
            assert (json.loads(row["data"]) if row["data"] else None) == record.get("data")
            assert row["message"] == record["message"]

    status, _, err = cli("outbox", str(config), "export", "--output", str(target))
    assert status == 1
    assert "exists" in err, "an existing file is never overwritten"


def test_replay_dead_moves_every_dead_letter_back(tmp_path, cli):
    config = config_for(tmp_path)
    build_outbox(tmp_path)
    dead = waiting_records(outbox_path(tmp_path), "dead_letter")
    before = cli.stats(config)

    status, out, _ = cli("outbox", str(config), "replay-dead")
    assert status == 0
    assert "Moved 6 records from the dead-letter table back into the outbox" in out
    after = cli.stats(config)
    assert after["dead_letters"]["records"] == 0
    assert after["waiting"]["records"] == before["waiting"]["records"] + 6
    assert after["delivered_records"] == before["delivered_records"], "accounting unchanged"
    waiting = {record_key(r) for r in waiting_records(outbox_path(tmp_path))}
    assert {record_key(r) for r in dead} <= waiting

    status, out, _ = cli("outbox", str(config), "replay-dead")
    assert (status, out.strip()) == (0, f"There are no dead letters in {outbox_path(tmp_path)}.")


def test_purge_asks_first_and_keeps_the_accounting(tmp_path, cli, monkeypatch):
    config = config_for(tmp_path)
    build_outbox(tmp_path)
    before = cli.stats(config)
    purge = ("outbox", str(config), "purge", "--kind", "metrics", "--older-than", "5h")

    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # no terminal, as under systemd or cron
    status, out, err = cli(*purge)
    assert status == 1
    assert "plc" in out and "meter" in out, "what would go is shown"
    assert "no terminal to confirm on" in err and "--yes" in err
    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    status, out, _ = cli(*purge)
    assert status == 1
    assert "Nothing purged." in out
    assert without_ages(cli.stats(config)) == without_ages(before), "nothing purged"

    monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
    status, out, _ = cli(*purge)
    assert status == 0
    assert "Purged 10 records (2 rows: 10 metrics)" in out
    assert "purged_metrics" in out and "still holds" in out
    after = cli.stats(config)
    assert after["purged"] == {"metrics": 10, "events": 0}
    assert after["waiting"]["records"] == before["waiting"]["records"] - 10
    assert after["delivered_records"] == before["delivered_records"] == 5
    remaining = waiting_records(outbox_path(tmp_path))
    assert all(r["row_kind"] == "events" or r["ts"] > now_ms() - 5 * 3_600_000 for r in remaining)

    # --topic, and --yes without a terminal
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    status, out, _ = cli("outbox", str(config), "purge", "--topic", "meter", "--yes")
    assert status == 0
    assert "Purged 6 records (1 row: 6 metrics)" in out
    assert {r["topic"] for r in waiting_records(outbox_path(tmp_path))} == {"plc", "link"}
    status, out, _ = cli("outbox", str(config), "purge", "--dead-letters", "--yes")
    assert status == 0
    assert "Purged 6 records (2 rows: 6 metrics)" in out
    status, out, _ = cli(
        "outbox", str(config), "purge", "--kind", "events", "--older-than", "0s", "--yes"
    )
    assert "Purged 4 records (2 rows: 4 events)" in out
    final = cli.stats(config)
    assert final["purged"] == {"metrics": 22, "events": 4}
    assert final["dead_letters"]["records"] == 0
    assert final["waiting"]["records"] == 4
    assert final["delivered_records"] == 5, "accepted = delivered + dropped + purged + waiting"
    status, out, _ = cli("outbox", str(config), "purge", "--topic", "nothing-here", "--yes")
    assert (status, "Nothing to purge" in out) == (0, True)


def health_report(now: int, **device: Any) -> dict[str, Any]:
    return {
        "ts": now,
        "agent": "gw-test",
        "session": 7,
        "version": "0.1.0",
        "uptime_s": 3725.4,
        "outbox": {
            "rows": 3,
            "records": 42,
            "bytes": 65536,
            "cap_bytes": 2**20,
            "oldest_age_s": 12.5,
            "dropped": {"metrics": 0, "events": 0},
        },
        "mqtt": {
            "connected": False,
            "connects": 2,
            "messages_sent": 120,
            "messages_failed": 1,
            "failures": {"not authorized": 1},
        },
        "devices": {
            "plc": {
                "state": "connected",
                "since": now - 60_000,
                "last_error": None,
                "last_good_read": now - 400,
                **device,
            }
        },
        "process": {"rss_mib": 36.1, "cpu_s": 12.3},
    }


def test_status_fresh_stale_and_disconnected(tmp_path, cli):
    config = config_for(tmp_path)  # health_interval 2 s: stale after 6 s
    build_outbox(tmp_path)
    status, _, err = cli("status", str(config))
    assert status == 1
    assert "holds no status report yet" in err

    now = now_ms()
    outbox = Outbox(outbox_path(tmp_path))
    outbox.save_status(health_report(now), now - 1000)
    status, out, err = cli("status", str(config))
    assert (status, err) == (0, "")
    assert "Agent gw-test, session 7, shopfloor-agent 0.1.0, up 1 h 2 min" in out
    assert (
        "MQTT: NOT connected, 2 connects, 120 messages sent, 1 failed (not authorized: 1)." in out
    )
    assert (
        "Outbox: 3 rows, 42 records waiting, 64.0 KiB of the 1.0 MiB cap, oldest unsent 12 s" in out
    )
    assert "6 dead letters" in out, "counted in the file"
    assert "RSS 36.1 MiB, CPU 12.3 s" in out
    assert re.search(r"plc\s*│\s*connected\s*│\s*1 min 0 s ago\s*│\s*0\.\d s ago\s*│\s*-", out)
    assert "may not be running" not in out
    status, out, _ = cli("status", str(config), "--json")
    assert status == 0
    assert json.loads(out) == health_report(now)

    outbox.save_status(health_report(now, state="disconnected", last_error="timeout"), now)
    status, out, _ = cli("status", str(config))
    assert status == 1, "a device is not connected"
    assert "disconnected" in out and "timeout" in out

    outbox.save_status(health_report(now - 7000), now - 7000)
    status, out, _ = cli("status", str(config))
    assert status == 1
    assert "the agent may not be running" in out
    status, out, err = cli("status", str(config), "--json")
    assert status == 1
    assert json.loads(out)["ts"] == now - 7000
    assert "may not be running" in err
    outbox.close()


def test_errors_are_one_sentence_and_no_file_is_created(tmp_path, cli):
    config = config_for(tmp_path)
    path = outbox_path(tmp_path)
    for args in (
        ("outbox", str(config), "stats"),
        ("outbox", str(config), "export"),
        ("outbox", str(config), "replay-dead"),
        ("outbox", str(config), "purge", "--dead-letters", "--yes"),
        ("status", str(config)),
    ):
        status, _, err = cli(*args)
        assert status == 1, args
        assert err.strip() == (
            f"There is no outbox file at {path}: the agent has not run with this configuration "
            "yet, or agent.data_dir / outbox.path point elsewhere."
        )
        assert not path.exists() and not path.parent.exists(), "nothing is created"

    status, _, err = cli("outbox", str(config), "purge")
    assert status == 1
    assert "Say what to purge" in err
    status, _, err = cli("outbox", str(config), "purge", "--older-than", "soon")
    assert status == 2
    assert "expected a duration" in err
    status, _, err = cli("outbox", str(config), "purge", "--kind", "samples")
    assert status == 2
    status, _, err = cli("outbox", str(config))
    assert status == 2
    status, _, err = cli("outbox", str(tmp_path / "missing.yaml"), "stats")
    assert status == 2

    path.parent.mkdir()
    path.write_bytes(b"this is no database" * 100)
    status, _, err = cli("outbox", str(config), "stats")
    assert status == 1
    assert err.strip() == f"{path} is not a readable outbox file (file is not a database)."
    status, _, err = cli("status", str(config))
    assert (status, "is not a readable outbox file" in err) == (1, True)

    path.unlink()
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE notes (x)")
    other.close()
    status, _, err = cli("outbox", str(config), "export")
    assert (status, err.strip()) == (
        1,
        f"{path} is an SQLite file but not an outbox (no outbox table).",
    )


def test_a_locked_outbox_is_reported_after_the_busy_timeout(tmp_path, cli, monkeypatch):
    config = config_for(tmp_path)
    build_outbox(tmp_path)
    monkeypatch.setattr(outbox_tools, "BUSY_TIMEOUT_S", 0.2)
    holder = sqlite3.connect(outbox_path(tmp_path), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the file
    try:
        status, _, err = cli("outbox", str(config), "stats")
        assert status == 0, "readers never wait in WAL mode"
        status, _, err = cli("outbox", str(config), "purge", "--dead-letters", "--yes")
        assert status == 1
        assert err.strip() == (
            f"The outbox {outbox_path(tmp_path)} is locked by another process (waited 0.2 s): "
            "try again in a moment, or stop whatever holds it."
        )
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert cli.stats(config)["dead_letters"]["records"] == 6, "nothing was purged"


def test_errors_print_no_traceback_from_the_command_line(tmp_path):
    config = config_for(tmp_path)
    outbox_path(tmp_path).parent.mkdir()
    outbox_path(tmp_path).write_text("not a database\n" * 100)
    for args in (["outbox", str(config), "stats"], ["status", str(config)]):
        done = subprocess.run(
            [sys.executable, "-m", "agent", *args],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_the_agent_and_status_never_import_sqlite_utils():
    code = (
        "import sys, agent.app, agent.status, agent.cli; "
        "print(sorted(m for m in ('sqlite_utils', 'agent.outbox_tools') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert done.stdout.strip() == "[]"


# -- against a running agent -------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def received_keys(subscriber: Subscriber) -> Counter[tuple[Any, ...]]:
    keys: Counter[tuple[Any, ...]] = Counter()
    for message in subscriber.snapshot():
        for field in ("samples", "events"):
            if (
                isinstance(message.payload, dict)
                and field in message.payload
                and ("/metrics/" in message.topic or "/events/" in message.topic)
            ):
                keys.update(record_key(record) for record in message.payload[field])
    return keys


@pytest.mark.slow
def test_tools_on_the_file_of_a_running_agent_with_a_backlog(
    broker, modbus, subscriber_factory, agent_factory, tmp_path, cli, monkeypatch
):
    config = write_config(
        tmp_path,
        broker_port=broker.port,
        devices=[
            modbus_device(
                "plc",
                modbus.port,
                [
                    {"id": f"p{index}", "address": f"holding:{index * 2}", "type": "float32"}
                    for index in range(3)
                ],
            )
        ],
    )  # health every 1 s: a report is stale after 3 s
    path = outbox_path(tmp_path)
    broker.stop()  # a backlog builds from the start
    agent = agent_factory(config)
    agent.start()

    def backlog() -> bool:
        status, out, _ = cli("outbox", str(config), "stats", "--json")
        return status == 0 and json.loads(out)["waiting"]["records"] >= 30

    wait_until(backlog, 15, "a backlog of 30 records")
    wait_until(lambda: cli("status", str(config))[0] == 0, 10, "a fresh status report")
    status, out, _ = cli("status", str(config), "--json")
    report = json.loads(out)
    assert report["mqtt"]["connected"] is False
    assert report["devices"]["plc"]["state"] == "connected"
    assert report["outbox"]["records"] > 0
    status, out, _ = cli("status", str(config))
    assert "MQTT: NOT connected" in out

    # Dead letters appear while the agent runs, and are replayed while it runs.
    now = now_ms()
    other = Outbox(path)
    buried = other.append([metrics_row("plc", now - 60_000, 3)])
    assert other.bury(buried, "not authorized", now) == 3
    other.close()
    status, out, err = cli("outbox", str(config), "replay-dead")
    assert status == 0, err
    assert "Moved 3 records" in out
    status, out, err = cli("outbox", str(config), "export")
    assert status == 0, err
    exported = Counter(record_key(json.loads(line)) for line in out.splitlines())
    assert all(
        exported[record_key(r)] == 1 for r in json.loads(metrics_row("plc", now - 60_000, 3).body)
    )
    assert agent.process is not None and agent.process.poll() is None, "the agent kept running"

    assert agent.stop() == 0
    stopped = time.monotonic()
    stored = waiting_records(path)
    for output_format in ("jsonl", "csv"):
        target = tmp_path / f"backlog.{output_format}"
        status, _, err = cli(
            "outbox", str(config), "export", "--format", output_format, "-o", str(target)
        )
        assert status == 0, err
        if output_format == "jsonl":
            lines = [json.loads(line) for line in target.read_text().splitlines()]
        else:
            with target.open(newline="") as file:
                lines = list(csv.DictReader(file))
        assert Counter(record_key(line) for line in lines) == Counter(
            record_key(record) for record in stored
        )
        assert len(lines) == len(stored) == len(set(map(record_key, stored)))

    wait_until(lambda: time.monotonic() - stopped > 3.2, 5, "three health intervals")
    status, out, _ = cli("status", str(config))
    assert status == 1
    assert "the agent may not be running" in out

    before = cli.stats(config)
    assert before["delivered_records"] == 0, "the broker was down the whole time"
    metrics = [r for r in stored if r["row_kind"] == "metrics"]
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    status, _, err = cli("outbox", str(config), "purge", "--kind", "metrics")
    assert status == 1 and "--yes" in err
    status, out, _ = cli("outbox", str(config), "purge", "--kind", "metrics", "--yes")
    assert status == 0
    assert f"Purged {len(metrics)} records" in out
    after = cli.stats(config)
    assert after["purged"]["metrics"] == len(metrics)
    assert after["delivered_records"] == 0
    assert after["accepted_records"] == (
        sum(after["dropped"].values())
        + sum(after["purged"].values())
        + after["waiting"]["records"]
        + after["dead_letters"]["records"]
    )

    # The broker returns: what was not purged arrives, what was purged never does.
    broker.start()
    subscriber = subscriber_factory(broker.port)
    wait_until(subscriber.connected, 10, "the subscriber")
    restarted = agent_factory(config)
    restarted.start()
    events = [record_key(r) for r in stored if r["row_kind"] == "events"]
    assert events, "the device's link events waited in the outbox"
    wait_until(lambda: set(events) <= set(received_keys(subscriber)), 15, "the waiting events")
    assert restarted.stop() == 0
    received = received_keys(subscriber)
    assert not set(map(record_key, metrics)) & set(received), "purged records never arrive"
    final = cli.stats(config)
    assert final["waiting"]["records"] == 0
    assert final["delivered_records"] == len(received), "accepted = delivered + purged"
