"""The OPC UA benchmark's server, in a process of its own so its CPU is never counted.

    python -m bench.opcua_server PORT [--points 1000] [--period 1.0] [--stats FILE]

Serves `--points` Double variables `ns=<NAMESPACE_URI>;s=V0000`, `V0001`, ... under
Objects/Bench on `opc.tcp://127.0.0.1:PORT/shopfloor/bench` (security None, anonymous) and gives
every one of them a new value every `--period` seconds, on a fixed grid (a late tick is counted,
then skipped). Each value is written with `Server.write_attribute_value`, the fastest way into
asyncua's address space that still notifies the monitored items, with the write time as its
source timestamp.

With `--stats FILE` it rewrites FILE after every tick with its counters, as JSON:
`{"ticks", "late", "values", "monotonic", "last_ts_ms", "write_s"}` (`monotonic` is
`time.monotonic()` at the end of the tick, comparable across processes on Linux; `last_ts_ms` the
source timestamp, in ms, of the tick's values; `write_s` the time spent writing), so the
benchmark can tell how many values the server really produced in its window, and which. Prints
`READY <port>` on stdout once it accepts connections and runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import cast

from asyncua import ua
from asyncua.server.server import Server

NAMESPACE_URI = "urn:shopfloor-agent:bench"
PATH = "/shopfloor/bench"

logging.getLogger("asyncua").setLevel(logging.ERROR)


def node_name(index: int) -> str:
    """The string identifier of variable `index`: V0000, V0001, ..."""
    return f"V{index:04d}"


def value_of(index: int, step: int) -> float:
    """A value that differs from the previous step's, so every write is a data change."""
    return 20.0 + index * 0.37 + (step % 1000) * 0.001


def write_stats(path: Path, stats: dict[str, float]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(stats), encoding="ascii")
    os.replace(temporary, path)


async def serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://{args.host}:{args.port}{PATH}")
    server.set_server_name("shopfloor-agent benchmark server")
    namespace = await server.register_namespace(NAMESPACE_URI)
    folder = await server.nodes.objects.add_object(
        ua.NodeId.from_string(f"ns={namespace};s=Bench"), ua.QualifiedName("Bench", namespace)
    )
    node_ids = []
    for index in range(args.points):
        name = node_name(index)
        node = await folder.add_variable(
            ua.NodeId.from_string(f"ns={namespace};s={name}"),
            ua.QualifiedName(name, namespace),
            ua.Variant(value_of(index, 0), ua.VariantType.Double),
        )
        node_ids.append(node.nodeid)
    await server.start()
    print(f"READY {args.port}", flush=True)

    stats = {
        "ticks": 0,
        "late": 0,
        "values": 0,
        "monotonic": time.monotonic(),
        "last_ts_ms": time.time_ns() // 1_000_000,
        "write_s": 0.0,
    }
    if args.stats is not None:
        write_stats(args.stats, stats)
    write = server.write_attribute_value
    double = ua.VariantType.Double
    period = args.period
    next_tick = loop.time() + period
    step = 0
    try:
        while not stop.is_set():
            delay = next_tick - loop.time()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    break
                except TimeoutError:
                    pass
            step += 1
            began = time.monotonic()
            now = cast(ua.DateTime, dt.datetime.now(dt.UTC))  # asyncua's own datetime type
            for index, node_id in enumerate(node_ids):
                await write(
                    node_id,
                    ua.DataValue(
                        ua.Variant(value_of(index, step), double),
                        SourceTimestamp=now,
                        ServerTimestamp=now,
                    ),
                )
            ended = time.monotonic()
            stats["ticks"] += 1
            stats["values"] += len(node_ids)
            stats["write_s"] = round(stats["write_s"] + ended - began, 6)
            stats["monotonic"] = ended
            stats["last_ts_ms"] = int(now.timestamp() * 1000)
            next_tick += period
            if next_tick < loop.time():  # late: skip the missed ticks, and count them
                missed = int((loop.time() - next_tick) // period) + 1
                stats["late"] += missed
                next_tick += missed * period
            if args.stats is not None:
                write_stats(args.stats, stats)
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--period", type=float, default=1.0, help="seconds between changes")
    parser.add_argument("--stats", type=Path, default=None, help="JSON counters, every tick")
    args = parser.parse_args(argv)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
