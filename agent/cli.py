"""The `shopfloor` command. Each subcommand imports only what it needs, so `shopfloor check`
and `shopfloor run` on a Modbus-only configuration never load the heavy optional packages."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from agent import __version__

if TYPE_CHECKING:
    from agent.settings import Config

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2

_LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `shopfloor` console command; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return EXIT_FAILED
    try:
        status: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shopfloor",
        description="Edge agent: reads PLCs and meters, stores every sample until the MQTT "
        "broker has it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:\n"
        "  shopfloor check /etc/shopfloor/agent.yaml\n"
        "  shopfloor run /etc/shopfloor/agent.yaml\n"
        "  shopfloor read /etc/shopfloor/agent.yaml line1.press3.oil_temp\n"
        "  shopfloor demo",
    )
    parser.add_argument("--version", action="version", version=f"shopfloor-agent {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(name: str, summary: str, example: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=f"Example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        return sub

    run = command(
        "run",
        "Run the agent with a configuration file until SIGTERM or Ctrl-C.",
        "shopfloor run /etc/shopfloor/agent.yaml",
    )
    run.add_argument("config", type=Path, help="the agent's YAML configuration")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.set_defaults(handler=_run)

    check = command(
        "check",
        "Validate configuration files without touching the network. Prints every problem as "
        "FILE:LINE:COL: field: message and exits 2 if there is any.",
        "shopfloor check config/examples/demo.yaml",
    )
    check.add_argument("config", type=Path, nargs="+", help="YAML configuration files")
    check.add_argument(
        "--print-validated",
        action="store_true",
        help="print the validated configuration as JSON instead of OK (used by `run`)",
    )
    check.set_defaults(handler=_check)

    read = command(
        "read",
        "Read points once from their devices and print value, quality and raw registers.",
        "shopfloor read agent.yaml line1.press3.oil_temp line1.press3.die_temp",
    )
    read.add_argument("config", type=Path, help="the agent's YAML configuration")
    read.add_argument("points", nargs="+", metavar="POINT", help="point ids from the config")
    read.set_defaults(handler=_read)

    simulate = command(
        "simulate",
        "Serve a simulated device (press-line PLC or power meter) over Modbus TCP.",
        "shopfloor simulate modbus --device meter --port 5021",
    )
    simulate.add_argument("protocol", choices=["modbus"], help="the protocol to serve")
    simulate.add_argument("--device", choices=["press-line", "meter"], default="press-line")
    simulate.add_argument("--host", default="127.0.0.1", help="address to listen on")
    simulate.add_argument("--port", type=int, default=5020, help="TCP port (default 5020)")
    simulate.set_defaults(handler=_simulate)

    demo = command(
        "demo",
        "Start a local broker, a simulated press line and meter, and the agent, and show the "
        "data arriving at the broker live. Ctrl-C stops everything it started.",
        "shopfloor demo",
    )
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.set_defaults(handler=_demo)
    return parser


def _load(path: Path) -> Config | None:
    from agent.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{_count(len(exc.problems), 'problem')} found in {path}.", file=sys.stderr)
        return None


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _check(args: argparse.Namespace) -> int:
    status = EXIT_OK
    for path in args.config:
        config = _load(path)
        if config is None:
            status = EXIT_CONFIG
            continue
        if args.print_validated:
            print(config.model_dump_json())
            continue
        points = sum(len(device.points) for device in config.devices)
        print(f"{path}: OK ({_count(len(config.devices), 'device')}, {_count(points, 'point')}).")
    return status


def _run(args: argparse.Namespace) -> int:
    # The configuration is read and validated by `shopfloor check` in a child process, and
    # this long-running process rebuilds it from the child's JSON. The YAML parser and
    # pydantic's validators (together about 10 MiB, more for large configurations) are then
    # never loaded here, and the agent's own imports overlap with the validation.
    checker = subprocess.Popen(
        [sys.executable, "-m", "agent", "check", "--print-validated", str(args.config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    from agent.app import Agent, AgentFailed, StartupError
    from agent.settings import Config

    validated, problems = checker.communicate()
    if checker.returncode != 0:
        sys.stderr.write(problems)
        return EXIT_CONFIG if checker.returncode == EXIT_CONFIG else EXIT_FAILED
    config = Config.from_validated(json.loads(validated))
    level = (args.log_level or config.agent.log_level).upper()
    logging.basicConfig(level=level, format=_LOG_FORMAT)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await Agent(config).run(stop)

    log = logging.getLogger("agent")
    try:
        asyncio.run(run())
    except StartupError as exc:
        log.error("The agent cannot start: %s.", exc)
        return EXIT_FAILED
    except AgentFailed as exc:
        log.error("The agent stopped because %s; see the error above.", exc)
        return EXIT_FAILED
    return EXIT_OK


def _read(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    from agent.readout import read_points

    return asyncio.run(read_points(config, args.points))


def _simulate(args: argparse.Namespace) -> int:
    import threading

    from drivers.simulate.modbus import METER_MAP, PRESS_LINE_MAP, build_simulator

    server = build_simulator(args.device, args.port, args.host)
    try:
        server.start()
    except OSError as exc:
        print(f"Cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    register_map = PRESS_LINE_MAP if args.device == "press-line" else METER_MAP
    print(f"Simulated {args.device} serving Modbus TCP on {args.host}:{args.port}, unit 1.")
    for name, table, address, value_type, order, unit in register_map:
        print(f"  {table + ':' + str(address):<14} {value_type:<8} {order}  {name} ({unit})")
    print("Ctrl-C stops it.")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from agent.demo import run_demo

    return run_demo(duration=args.duration)
