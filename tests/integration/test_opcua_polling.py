"""The agent polls a real OPC UA server (the simulated packaging line): values with their
types, status and source timestamp reach the broker; a node the server does not have is BAD on
its own; a namespace URI is resolved at connect; a restarted server is read again."""

from __future__ import annotations

import time
from pathlib import Path

from drivers.simulate.broker import free_port
from drivers.simulate.opcua import NAMESPACE_URI, SimulatedOpcUaServer
from tests.conftest import write_config


def opcua_device(server: SimulatedOpcUaServer) -> dict[str, object]:
    index = server.namespace_index
    return {
        "name": "filler",
        "driver": "opcua",
        "endpoint": server.endpoint,
        "interval": "200ms",
        "timeout": "1s",
        "reconnect_max": "1s",
        "points": [
            {"id": "filler.speed", "node": f"ns={index};s=Filler.Speed", "unit": "bottles/min"},
            {"id": "filler.count", "node": f"nsu={NAMESPACE_URI};s=Types.UInt64"},
            {"id": "filler.recipe", "node": f"ns={index};s=Filler.Recipe"},
            {"id": "filler.running", "node": f"ns={index};s=Filler.Running"},
            {"id": "filler.nozzles", "node": f"ns={index};s=Filler.Nozzles"},
            {"id": "filler.batch", "node": f"ns={index};s=Labeler.LastBatch"},
            {"id": "filler.ghost", "node": f"ns={index};s=Filler.DoesNotExist"},
        ],
    }


def test_the_agent_publishes_opcua_values_with_status_and_recovers(
    broker, subscriber_factory, agent_factory, tmp_path: Path
):
    server = SimulatedOpcUaServer(free_port(), shift_namespace=1)
    server.start()
    try:
        config = write_config(tmp_path, broker_port=broker.port, devices=[opcua_device(server)])
        subscriber = subscriber_factory(broker.port)
        agent = agent_factory(config)
        agent.start()
        subscriber.wait_for(lambda: subscriber.samples_of("filler.batch"), what="OPC UA samples")
        latest = {
            p: subscriber.samples_of(p)[-1]
            for p in (
                "filler.speed",
                "filler.count",
                "filler.recipe",
                "filler.running",
                "filler.nozzles",
                "filler.batch",
                "filler.ghost",
            )
        }
        assert latest["filler.speed"]["v"] == 120.0 and latest["filler.speed"]["q"] == "good"
        assert latest["filler.count"]["v"] == 2**64 - 1  # found through its namespace URI
        assert latest["filler.recipe"]["v"] == "COLA-0.5L"
        assert latest["filler.running"]["v"] is True
        assert latest["filler.nozzles"]["v"] == [1.0, 1.0, 0.98, 1.01]
        assert latest["filler.batch"]["v"] == "2026-01-01T00:00:00Z"
        assert latest["filler.ghost"]["q"] == "bad"
        assert latest["filler.ghost"]["r"] == "BadNodeIdUnknown"
        # The server's source timestamp is carried (it is within the allowed clock skew).
        assert abs(latest["filler.speed"]["ts"] - time.time() * 1000) < 60_000

        server.stop()
        subscriber.wait_for(
            lambda: subscriber.samples_of("filler.speed")[-1]["q"] == "bad",
            what="BAD samples while the server is gone",
        )
        server.start()
        seen = len(subscriber.samples_of("filler.speed"))
        subscriber.wait_for(
            lambda: (
                len(subscriber.samples_of("filler.speed")) > seen
                and subscriber.samples_of("filler.speed")[-1]["q"] == "good"
            ),
            what="GOOD samples after the server is back",
            timeout=20,
        )
    finally:
        server.stop()


def test_read_command_prints_opcua_values_status_and_source_time(tmp_path: Path):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    with SimulatedOpcUaServer(free_port()) as server:
        config = write_config(tmp_path, broker_port=1883, devices=[opcua_device(server)])
        result = subprocess.run(
            [sys.executable, "-m", "agent", "read", str(config), "filler.speed", "filler.ghost"],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "COLUMNS": "200"},
            timeout=60,
            check=False,
        )
    assert result.returncode == 1, result.stdout + result.stderr  # the ghost node is BAD
    assert "120.0 bottles/min" in result.stdout
    assert "bad (BadNodeIdUnknown)" in result.stdout
    assert "Traceback" not in result.stderr


def test_subscription_mode_streams_changes_and_resubscribes_after_a_restart_with_moved_namespaces(
    broker, subscriber_factory, agent_factory, tmp_path: Path
):
    server = SimulatedOpcUaServer(free_port(), changing=True, tick=0.05)
    server.start()
    try:
        device = {**opcua_device(server), "mode": "subscription", "interval": "100ms"}
        # By browse path: still right after the restart below moves the namespace indexes.
        device["points"][0]["node"] = "/Objects/PackagingLine/Filler/Speed"
        config = write_config(tmp_path, broker_port=broker.port, devices=[device])
        subscriber = subscriber_factory(broker.port)
        agent = agent_factory(config)
        agent.start()
        subscriber.wait_for(
            lambda: len({s["v"] for s in subscriber.samples_of("filler.speed")}) >= 3,
            what="changing values pushed by the server",
        )
        ghost = subscriber.samples_of("filler.ghost")
        assert ghost and ghost[-1]["q"] == "bad" and ghost[-1]["r"] == "BadNodeIdUnknown"
        assert subscriber.samples_of("filler.recipe")[0]["v"] == "COLA-0.5L"  # initial value
        assert server.subscription_count() == 1

        server.stop()
        subscriber.wait_for(
            lambda: subscriber.samples_of("filler.speed")[-1]["q"] == "bad",
            what="BAD samples while the server is gone",
        )
        server.shift_namespace = 2  # the server comes back after an update
        server.start()
        seen = len(subscriber.samples_of("filler.speed"))
        subscriber.wait_for(
            lambda: (
                len(subscriber.samples_of("filler.speed")) > seen + 2
                and subscriber.samples_of("filler.speed")[-1]["q"] == "good"
            ),
            what="changes again after the server is back",
            timeout=20,
        )
        assert server.subscription_count() == 1, "the agent subscribed again, once"
    finally:
        server.stop()
