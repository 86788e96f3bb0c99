"""`shopfloor status`: the running agent's latest health, read from its outbox file.

At every `mqtt.health_interval` the agent stores the health report it publishes in the outbox
file (`Outbox.save_status`), so an engineer on site sees it without the broker, whether or not
the broker is reachable. A report older than three intervals means the agent is probably not
running. Also the small helpers the outbox tools share (file checks, error sentences, times).
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from agent.model import now_ms
from agent.outbox import Outbox
from agent.settings import Config

__all__ = [
    "STALE_INTERVALS",
    "ToolError",
    "age_text",
    "existing_outbox",
    "explain",
    "size_text",
    "status_command",
    "time_text",
    "zone_name",
]

# A report older than this many health intervals: the agent is probably not running.
STALE_INTERVALS = 3

EXIT_OK = 0
EXIT_FAILED = 1


class ToolError(Exception):
    """What went wrong, as one sentence for the engineer (no traceback)."""


def existing_outbox(config: Config) -> Path:
    """The configured outbox file; a `ToolError` if there is none (never creates one)."""
    path = config.outbox_path
    if not path.is_file():
        raise ToolError(
            f"There is no outbox file at {path}: the agent has not run with this configuration "
            "yet, or agent.data_dir / outbox.path point elsewhere."
        )
    return path


def explain(path: Path, exc: sqlite3.Error, waited_s: float) -> ToolError:
    """An SQLite error on the outbox file as one sentence."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        return ToolError(
            f"The outbox {path} is locked by another process (waited {waited_s:g} s): try again "
            "in a moment, or stop whatever holds it."
        )
    if "not a database" in text or "malformed" in text:
        return ToolError(f"{path} is not a readable outbox file ({text}).")
    return ToolError(f"Cannot use the outbox {path}: {text}.")


def status_command(config: Config, *, as_json: bool) -> int:
    """Print the agent's latest health report; 0 if fresh with every device connected."""
    console = Console(highlight=False, soft_wrap=True)
    try:
        path = existing_outbox(config)
        try:
            outbox = Outbox(path, synchronous=config.outbox.synchronous)
        except sqlite3.Error as exc:
            raise explain(path, exc, 5) from None
        try:
            saved = outbox.latest_status()
            dead = sum(outbox.dead_letters().values())
        except sqlite3.Error as exc:
            raise explain(path, exc, 5) from None
        finally:
            outbox.close()
        if saved is None:
            raise ToolError(
                f"The outbox {path} holds no status report yet: the agent writes one every "
                f"mqtt.health_interval ({config.mqtt.health_interval:g} s) while it runs."
            )
    except ToolError as exc:
        Console(stderr=True, highlight=False, soft_wrap=True).print(str(exc), markup=False)
        return EXIT_FAILED
    report, updated = saved
    age_s = max(now_ms() - updated, 0) / 1000
    stale = age_s > STALE_INTERVALS * config.mqtt.health_interval
    devices: dict[str, dict[str, Any]] = report.get("devices") or {}
    all_connected = all(d.get("state") == "connected" for d in devices.values())
    status = EXIT_OK if not stale and all_connected else EXIT_FAILED
    if as_json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        if stale:
            Console(stderr=True, highlight=False, soft_wrap=True).print(
                f"Warning: the report is {age_text(age_s)} old, older than {STALE_INTERVALS} x "
                "mqtt.health_interval: the agent may not be running.",
                markup=False,
            )
        return status
    _print_report(
        console,
        config=config,
        report=report,
        updated=updated,
        age_s=age_s,
        stale=stale,
        dead_letters=dead,
    )
    return status


def _print_report(
    console: Console,
    *,
    config: Config,
    report: dict[str, Any],
    updated: int,
    age_s: float,
    stale: bool,
    dead_letters: int,
) -> None:
    now = now_ms()
    uptime = report.get("uptime_s")
    console.print(
        f"Agent {report.get('agent', '?')}, session {report.get('session', '?')}, "
        f"shopfloor-agent {report.get('version', '?')}, up "
        f"{'?' if uptime is None else age_text(float(uptime))} (at the report).",
        markup=False,
    )
    console.print(
        f"Report written {time_text(updated)}, {age_text(age_s)} ago (every "
        f"{config.mqtt.health_interval:g} s).",
        markup=False,
    )
    if stale:
        console.print(
            Text(
                f"Warning: the report is older than {STALE_INTERVALS} x mqtt.health_interval: "
                "the agent may not be running.",
                style="bold yellow",
            )
        )
    mqtt = report.get("mqtt") or {}
    failures = mqtt.get("failures") or {}
    console.print(
        f"MQTT: {'connected' if mqtt.get('connected') else 'NOT connected'}, "
        f"{mqtt.get('connects', 0)} connects, {mqtt.get('messages_sent', 0):,} messages sent, "
        f"{mqtt.get('messages_failed', 0):,} failed"
        + (
            " (" + ", ".join(f"{reason}: {count}" for reason, count in failures.items()) + ")"
            if failures
            else ""
        )
        + ".",
        markup=False,
    )
    box = report.get("outbox") or {}
    dropped = box.get("dropped") or {}
    oldest = box.get("oldest_age_s")
    cap = box.get("cap_bytes")
    console.print(
        f"Outbox: {box.get('rows', 0):,} rows, {box.get('records', 0):,} records waiting, "
        f"{size_text(box.get('bytes'))} of the {size_text(cap)} cap, oldest unsent "
        f"{'-' if oldest is None else age_text(float(oldest))}; dropped "
        + ", ".join(f"{count:,} {kind}" for kind, count in dropped.items())
        + f"; {dead_letters:,} dead letters.",
        markup=False,
    )
    process = report.get("process") or {}
    console.print(
        f"Process: RSS {process.get('rss_mib', '?')} MiB, CPU {process.get('cpu_s', '?')} s.",
        markup=False,
    )
    table = Table()
    for column in ("device", "link", "since", "last good read", "last error"):
        table.add_column(column)
    for name, device in (report.get("devices") or {}).items():
        state = str(device.get("state", "?"))
        good = device.get("last_good_read")
        since = device.get("since")
        table.add_row(
            name,
            Text(state, style="green" if state == "connected" else "bold red"),
            "-" if since is None else f"{age_text((now - since) / 1000)} ago",
            "never" if good is None else f"{age_text((now - good) / 1000)} ago",
            Text(str(device.get("last_error") or "-")),
        )
    console.print(table)
    stations: dict[str, dict[str, Any]] = report.get("stations") or {}
    if stations:
        console.print(_stations_table(stations))


def _stations_table(stations: dict[str, dict[str, Any]]) -> Table:
    """One row per vision station: camera, counts, yield, trigger -> verdict in the PLC
    latency (ms) and the last verdict."""
    table = Table()
    columns = ("station", "camera", "inspected", "yield", "NG/err/missed", "ms p50/p95", "last")
    for column in columns:
        table.add_column(column)
    for name, station in stations.items():
        camera = str((station.get("camera") or {}).get("state", "?"))
        yield_ = station.get("yield")
        latency = station.get("latency_ms") or {}
        recent = station.get("recent") or []
        last = recent[-1] if recent else None
        table.add_row(
            name,
            Text(camera, style="green" if camera == "connected" else "bold red"),
            f"{station.get('inspections', 0):,}",
            "-" if yield_ is None else f"{yield_:.1%}",
            f"{station.get('ng', 0):,}/{station.get('errors', 0):,}/"
            f"{station.get('missed_triggers', 0):,}",
            f"{latency.get('p50', '-')}/{latency.get('p95', '-')}",
            "-"
            if last is None
            else f"part {last.get('part_id')}: {str(last.get('verdict', '?')).upper()}"
            + (f" {last['class']}" if last.get("class") else ""),
        )
    return table


def time_text(ms: int, *, zone: bool = True) -> str:
    """Epoch milliseconds as local wall-clock time (with the zone's name unless `zone` is
    False: tables name it in their header, see `zone_name`)."""
    moment = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z" if zone else "%Y-%m-%d %H:%M:%S")


def zone_name() -> str:
    """The local time zone's abbreviation, e.g. CET."""
    return dt.datetime.now(dt.UTC).astimezone().strftime("%Z")


def age_text(seconds: float) -> str:
    """`45 s`, `12 min 5 s`, `3 h 12 min`, `2 d 4 h`."""
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def size_text(size: int | None) -> str:
    """Bytes as B, KiB, MiB or GiB."""
    if size is None:
        return "?"
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} B"
