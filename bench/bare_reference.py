"""The bare reference for `bench.modbus_500`: the least code that does the agent's job.

    python bench/bare_reference.py HOST PORT BROKER_PORT INTERVAL [--points 500]

Reads `--points` float32 values (ABCD, holding registers 0, 2, 4, ...) from unit 1 with
pymodbus' AsyncModbusTcpClient, in the same requests the agent plans (blocks of at most 124
registers, so a float is never split), decodes them with struct and publishes one JSON message
per poll at QoS 1 with paho-mqtt, in the agent's payload shape:

    {"agent": ..., "session": 1, "seq": n, "samples": [{"p", "v", "q", "ts"}, ...]}

on `{topic_prefix}/{agent_id}/metrics/{device}`. `ts` is the wall-clock time (ms) at which the
request carrying the value was answered, as in the agent. INTERVAL is in seconds; 0 polls as
fast as possible, otherwise polls are scheduled on a fixed grid like the agent's. No store, no
flow control, no reconnects: it runs until SIGTERM or SIGINT.

Only the standard library, pymodbus and paho are imported, so its start-up time and memory
are what those two libraries cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import struct
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pymodbus.client import AsyncModbusTcpClient

MAX_BLOCK_REGISTERS = 124  # 125 is the protocol limit; even, so that no float is split


def plan(points: int) -> list[tuple[int, int]]:
    """(start register, register count) of each request."""
    total = 2 * points
    return [
        (start, min(MAX_BLOCK_REGISTERS, total - start))
        for start in range(0, total, MAX_BLOCK_REGISTERS)
    ]


async def poll_forever(args: argparse.Namespace, stop: asyncio.Event) -> None:
    topic = f"{args.topic_prefix}/{args.agent_id}/metrics/{args.device}"
    names = [f"bench.t{index:03d}" for index in range(args.points)]
    blocks = plan(args.points)

    publisher = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=args.agent_id, protocol=mqtt.MQTTv5
    )
    publisher.connect(args.broker_host, args.broker_port)
    publisher.loop_start()

    modbus = AsyncModbusTcpClient(args.host, port=args.port, timeout=1, retries=0)
    if not await modbus.connect():
        raise SystemExit(f"cannot connect to the Modbus server {args.host}:{args.port}")

    loop = asyncio.get_running_loop()
    seq = 0
    next_tick = loop.time()
    try:
        while not stop.is_set():
            samples = []
            for start, count in blocks:
                response = await modbus.read_holding_registers(
                    start, count=count, device_id=args.unit
                )
                ts = time.time_ns() // 1_000_000
                if response.isError():
                    raise SystemExit(f"Modbus error reading {start}+{count}: {response}")
                raw = struct.pack(f">{count}H", *response.registers)
                first = start // 2
                for offset, value in enumerate(struct.unpack(f">{count // 2}f", raw)):
                    samples.append({"p": names[first + offset], "v": value, "q": "good", "ts": ts})
            seq += 1
            payload = json.dumps(
                {"agent": args.agent_id, "session": 1, "seq": seq, "samples": samples},
                separators=(",", ":"),
            )
            publisher.publish(topic, payload, qos=1)
            if args.interval > 0:
                next_tick += args.interval
                now = loop.time()
                if next_tick < now:  # late: skip the missed ticks, as the agent does
                    next_tick += ((now - next_tick) // args.interval + 1) * args.interval
                await asyncio.sleep(next_tick - now)
    finally:
        modbus.close()
        publisher.disconnect()
        publisher.loop_stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("host", help="Modbus server")
    parser.add_argument("port", type=int, help="Modbus server port")
    parser.add_argument("broker_port", type=int, help="MQTT broker port")
    parser.add_argument("interval", type=float, help="seconds between polls; 0: no pause")
    parser.add_argument("--broker-host", default="127.0.0.1")
    parser.add_argument("--unit", type=int, default=1)
    parser.add_argument("--points", type=int, default=500)
    parser.add_argument("--agent-id", default="bare")
    parser.add_argument("--topic-prefix", default="bench")
    parser.add_argument("--device", default="unit1")
    args = parser.parse_args(argv)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await poll_forever(args, stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
