"""The bare reference for `bench.opcua_subscribe`: the least code that does the agent's job.

    python bench/bare_opcua_reference.py ENDPOINT BROKER_PORT INTERVAL [--points 1000]

Opens a session with asyncua, looks up the namespace index of `--namespace` once, and creates
one subscription on the `--points` variables `s=V0000`, `s=V0001`, ... with INTERVAL (seconds)
as both the publishing and the sampling interval, as the agent's subscription mode does. Each
notification batch (one Publish response: every value that changed in that interval) becomes
one JSON message at QoS 1 with paho-mqtt, in the agent's payload shape:

    {"agent": ..., "session": 1, "seq": n, "samples": [{"p", "v", "q", "ts"}, ...]}

on `{topic_prefix}/{agent_id}/metrics/{device}`, so both subjects send about one message per
interval and the comparison is per value, not per message (one message per notification would
cost the bare script a publish per value, which the agent never pays). `ts` is the value's
source timestamp in ms; `q` is `good` unless the status code is not Good.

The notifications arrive through asyncua's iterator API (`handler=None`, an unbounded queue), as
in the agent; it is also the cheaper of asyncua's two ways (its callback handler runs every
notification in a task of its own, about 40 % more CPU here). A batch is recognised by
scheduling the publish with `loop.call_soon` at its first value: asyncua queues a whole Publish
response before the consumer runs, and the consumer takes all of it without yielding, so the
call runs once that response is consumed.

No store, no flow control, no reconnects: it runs until SIGTERM or SIGINT. Only the standard
library, asyncua and paho are imported, so its start-up time and memory are what those two
libraries cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from typing import Any

import paho.mqtt.client as mqtt
from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.subscription import DataChangeEvent
from paho.mqtt.enums import CallbackAPIVersion


class Forwarder:
    """Collects the values of one Publish response and publishes them as one message."""

    def __init__(self, args: argparse.Namespace, publisher: mqtt.Client) -> None:
        self.topic = f"{args.topic_prefix}/{args.agent_id}/metrics/{args.device}"
        self.agent_id = args.agent_id
        self.publisher = publisher
        self.names: dict[ua.NodeId, str] = {}
        self.samples: list[dict[str, Any]] = []
        self.seq = 0
        self.loop = asyncio.get_running_loop()

    def add(self, node: Any, value: Any, data: Any) -> None:
        if not self.samples:
            self.loop.call_soon(self.flush)
        item = data.monitored_item.Value
        source = item.SourceTimestamp
        self.samples.append(
            {
                "p": self.names[node.nodeid],
                "v": value,
                "q": "good" if item.StatusCode is None or item.StatusCode.is_good() else "bad",
                "ts": int(source.timestamp() * 1000) if source else time.time_ns() // 1_000_000,
            }
        )

    def flush(self) -> None:
        samples, self.samples = self.samples, []
        self.seq += 1
        payload = json.dumps(
            {"agent": self.agent_id, "session": 1, "seq": self.seq, "samples": samples},
            separators=(",", ":"),
        )
        self.publisher.publish(self.topic, payload, qos=1)


async def forward(args: argparse.Namespace, stop: asyncio.Event) -> None:
    publisher = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=args.agent_id, protocol=mqtt.MQTTv5
    )
    publisher.connect(args.broker_host, args.broker_port)
    publisher.loop_start()

    client = Client(args.endpoint, timeout=4)
    await client.connect()
    try:
        namespace = await client.get_namespace_index(args.namespace)
        forwarder = Forwarder(args, publisher)
        nodes = []
        for index in range(args.points):
            node = client.get_node(f"ns={namespace};s=V{index:04d}")
            forwarder.names[node.nodeid] = f"bench.v{index:04d}"
            nodes.append(node)
        period_ms = args.interval * 1000
        subscription = await client.create_subscription(period_ms, None, queue_maxsize=0)
        await subscription.subscribe_data_change(nodes, sampling_interval=period_ms)

        async def consume() -> None:
            async for event in subscription:
                if isinstance(event, DataChangeEvent):
                    forwarder.add(event.node, event.value, event.data)

        consumer = asyncio.create_task(consume())
        await stop.wait()
        consumer.cancel()
    finally:
        await client.disconnect()
        publisher.disconnect()
        publisher.loop_stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("endpoint", help="opc.tcp://host:port/path")
    parser.add_argument("broker_port", type=int, help="MQTT broker port")
    parser.add_argument("interval", type=float, help="publishing interval, seconds")
    parser.add_argument("--broker-host", default="127.0.0.1")
    parser.add_argument("--namespace", default="urn:shopfloor-agent:bench")
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--agent-id", default="bare")
    parser.add_argument("--topic-prefix", default="bench")
    parser.add_argument("--device", default="plc1")
    args = parser.parse_args(argv)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await forward(args, stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
