"""Publishing into a namespace the broker's ACL forbids: the refused records go to the
dead-letter table, everything else keeps flowing, health shows it, and once the ACL is fixed
`shopfloor outbox replay-dead` delivers them."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from drivers.simulate.broker import LocalBroker
from tests.conftest import REPO, modbus_device, write_config
from tests.faults.test_outages import (
    accepted_records,
    outbox_db,
    received_records,
    ten_hz_points,
)

FORBIDDING = """\
topic readwrite test/gw-test/status
topic readwrite test/gw-test/health
topic readwrite test/gw-test/events/#
topic read #
"""
ALLOWING = "topic readwrite #\n"


def dead_letters(tmp_path: Path) -> int:
    if not (tmp_path / "data" / "outbox.db").exists():
        return 0
    db = outbox_db(tmp_path)
    if "dead_letter" not in db.table_names():
        return 0
    return sum(row["n"] for row in db["dead_letter"].rows)


@pytest.mark.slow
def test_refused_records_go_to_dead_letters_and_can_be_replayed(
    modbus, subscriber_factory, agent_factory, tmp_path
):
    acl = tmp_path / "acl"
    acl.write_text(FORBIDDING)
    broker = LocalBroker(extra_config=f"acl_file {acl}\n")
    broker.start()
    try:
        config = write_config(
            tmp_path,
            broker_port=broker.port,
            devices=[modbus_device("plc", modbus.port, ten_hz_points(5))],
        )
        subscriber = subscriber_factory(broker.port)
        subscriber.wait_for(subscriber.connected, what="the subscriber")
        agent = agent_factory(config)
        agent.start()
        subscriber.wait_for(lambda: dead_letters(tmp_path) >= 5 * 10, what="dead letters")
        time.sleep(2)
        healths = [m.payload for m in subscriber.snapshot() if m.topic.endswith("/health")]
        assert healths and healths[-1]["mqtt"]["dead_letter_records"] > 0
        assert healths[-1]["outbox"]["dead_letters"] > 0
        assert not subscriber.metrics(), "the ACL kept every sample out"
        assert any(m.topic.endswith("/events/link") for m in subscriber.snapshot())
        assert subscriber.statuses()[-1]["state"] == "online", "nothing else stopped"
        log = agent.log()
        assert log.count("The broker refuses messages") == 1, "logged once"

        # The engineer fixes the ACL; new samples flow, the dead letters are replayed.
        acl.write_text(ALLOWING)
        assert broker._process is not None
        broker._process.send_signal(signal.SIGHUP)  # mosquitto reloads its ACL
        subscriber.wait_for(subscriber.metrics, timeout=15, what="samples again")
        assert agent.stop() == 0
        replay = subprocess.run(
            [sys.executable, "-m", "agent", "outbox", str(config), "replay-dead"],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
            check=False,
        )
        assert replay.returncode == 0, replay.stdout + replay.stderr
        restarted = agent_factory(config)
        restarted.start()
        subscriber.wait_for(
            lambda: len(received_records(subscriber)) >= accepted_records(tmp_path),
            timeout=20,
            what="every record, the replayed ones included",
        )
        assert restarted.stop() == 0
        assert dead_letters(tmp_path) == 0
        assert len(received_records(subscriber)) == accepted_records(tmp_path)
    finally:
        broker.__exit__()
