"""The bare reference for `bench.drain`: the least code that sends an outbox's rows to a broker.

    python bench/bare_drain.py OUTBOX BROKER_PORT --agent-id ID [--topic-prefix bench]
        [--max-inflight 20] [--max-payload 131072]

Reads the rows of an agent's outbox file oldest first (one SELECT, streamed), joins the JSON
arrays of consecutive rows of one topic into messages whose records fit under the same payload
cap as the agent's (`--max-payload` less 256 bytes for the envelope), in the agent's payload
shape

    {"agent": ..., "session": 1, "seq": n, "samples": [...]}

on `{topic_prefix}/{agent_id}/metrics/{topic}`, and publishes them at QoS 1 with paho-mqtt (MQTT
5, like the agent), never more than `--max-inflight` unacknowledged at a time (the agent's
default window is 20). It deletes nothing from the file, keeps no state, handles no reconnect:
once every message is acknowledged it prints `DONE <messages>` and waits for SIGTERM or SIGINT,
so that its CPU time and memory can be read.

Only the standard library and paho are imported.
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import sys
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ENVELOPE_BYTES = 256  # as the agent's max_message_body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outbox")
    parser.add_argument("broker_port", type=int)
    parser.add_argument("--broker-host", default="127.0.0.1")
    parser.add_argument("--agent-id", required=True)
    parser.add_argument("--topic-prefix", default="bench")
    parser.add_argument("--max-inflight", type=int, default=20)
    parser.add_argument("--max-payload", type=int, default=128 * 1024)
    args = parser.parse_args(argv)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    window = threading.Semaphore(args.max_inflight)
    connected = threading.Event()

    def on_publish(*_: Any) -> None:
        window.release()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.agent_id, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(args.max_inflight)
    client.on_connect = lambda *_: connected.set()
    client.on_publish = on_publish
    client.connect(args.broker_host, args.broker_port)
    client.loop_start()
    if not connected.wait(10):
        raise SystemExit(f"cannot connect to the broker on port {args.broker_port}")

    head = json.dumps({"agent": args.agent_id, "session": 1}, separators=(",", ":"))[:-1]
    limit = args.max_payload - ENVELOPE_BYTES
    seq = 0

    def send(topic: str, bodies: list[str]) -> None:
        nonlocal seq
        seq += 1
        records = ",".join(body[1:-1] for body in bodies)
        payload = f'{head},"seq":{seq},"samples":[{records}]}}'.encode()
        window.acquire()
        client.publish(f"{args.topic_prefix}/{args.agent_id}/metrics/{topic}", payload, qos=1)

    database = sqlite3.connect(f"file:{args.outbox}?mode=ro", uri=True)
    rows = database.execute("SELECT topic, body FROM outbox WHERE kind = 'metrics' ORDER BY id")
    current: str | None = None
    bodies: list[str] = []
    size = 0
    for topic, body in rows:
        if bodies and (topic != current or size + len(body) > limit):
            send(current or "", bodies)
            bodies, size = [], 0
        current = topic
        bodies.append(body)
        size += len(body)
    if bodies:
        send(current or "", bodies)
    database.close()
    for _ in range(args.max_inflight):  # every message acknowledged
        window.acquire()
    print(f"DONE {seq}", flush=True)
    stop.wait()
    client.disconnect()
    client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
