"""The benchmark's Modbus device, in a process of its own so its CPU is never counted.

    python -m bench.modbus_server PORT [--points 500] [--change-every 0.5]

Serves unit 1 with `--points` float32 values (ABCD) at holding registers 0, 2, 4, ... and
rewrites all of them every `--change-every` seconds, so each poll may read new numbers. Prints
`READY <port>` on stdout once it accepts connections and runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import math
import signal
import struct
import sys
import threading

from drivers.simulate.modbus import SimulatedModbusServer


def registers_for(points: int, step: int) -> list[int]:
    """Distinct, realistic (not float32-exact) values for every point, as ABCD registers."""
    values = [20.0 + index * 0.37 + 0.5 * math.sin(step / 7 + index) for index in range(points)]
    return list(struct.unpack(f">{2 * points}H", struct.pack(f">{points}f", *values)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--points", type=int, default=500)
    parser.add_argument("--change-every", type=float, default=0.5, help="seconds; 0: never")
    args = parser.parse_args(argv)

    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    server = SimulatedModbusServer(args.port, host=args.host)
    server.start()
    try:
        server.set_registers("holding", 0, registers_for(args.points, 0))
        print(f"READY {args.port}", flush=True)
        step = 0
        while not stopped.wait(args.change_every or None):
            step += 1
            server.set_registers("holding", 0, registers_for(args.points, step))
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
