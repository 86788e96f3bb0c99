"""The `shopfloor` command. Each subcommand imports only what it needs, so `shopfloor check`
and `shopfloor run` on a Modbus-only configuration never load the heavy optional packages."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from agent import __version__

if TYPE_CHECKING:
    from agent.settings import Config
    from drivers.simulate.modbus import SimulatedModbusServer
    from drivers.simulate.opcua import SimulatedOpcUaServer

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
        "  shopfloor status /etc/shopfloor/agent.yaml\n"
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
    read.add_argument(
        "--all-orders",
        action="store_true",
        help="decode each register point in all four orders (ABCD CDAB BADC DCBA) side by "
        "side, the configured one marked *, to compare with the device's display",
    )
    read.set_defaults(handler=_read)

    scan = command(
        "scan",
        "Find which Modbus unit ids answer on a line and which addresses of each table they "
        "let be read, and optionally write a starter configuration. Only reads, never writes.",
        "shopfloor scan 10.0.0.21 --write-config new.yaml",
    )
    scan.epilog = (
        "Examples:\n"
        "  shopfloor scan 10.0.0.21                      units 1-10 and 255 over Modbus TCP\n"
        "  shopfloor scan 10.0.0.30:4001 --rtu-over-tcp  a serial-to-Ethernet converter\n"
        "  shopfloor scan --serial /dev/ttyUSB0 --baudrate 19200 --parity even --units 1-32\n"
        "  shopfloor scan 10.0.0.21 --units 1 --write-config new.yaml\n"
        "Ctrl-C stops the scan and prints what it found so far."
    )
    scan.add_argument(
        "target", nargs="?", metavar="HOST[:PORT]", help="Modbus TCP device or gateway (port 502)"
    )
    scan.add_argument(
        "--rtu-over-tcp", action="store_true", help="HOST forwards RTU frames (a converter)"
    )
    scan.add_argument("--serial", metavar="PORT", help="scan a serial line, e.g. /dev/ttyUSB0")
    scan.add_argument("--baudrate", type=int, default=9600, help="serial speed (default 9600)")
    scan.add_argument(
        "--parity", choices=["none", "even", "odd"], default="none", help="(default none)"
    )
    scan.add_argument("--stopbits", type=int, choices=[1, 2], default=1, help="(default 1)")
    scan.add_argument(
        "--units",
        metavar="LIST",
        help="unit ids to try, e.g. 1-10,255 (default: 1-10,255 over TCP, where devices "
        "answer on 1 or 255 and gateways number theirs from 1; 1-247 on a serial line or "
        "behind --rtu-over-tcp, where any address may be set)",
    )
    scan.add_argument(
        "--timeout",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="wait this long for each answer (default 0.5), plus the transmission time on "
        "--serial; every absent unit costs it once",
    )
    scan.add_argument(
        "--max-address",
        type=int,
        default=9999,
        metavar="N",
        help="highest 0-based address probed in each table (default 9999)",
    )
    scan.add_argument(
        "--resolution",
        type=int,
        default=32,
        metavar="N",
        help="refused blocks are halved down to N registers (16N bits); smaller runs inside "
        "unreadable space can be missed; --resolution 1 with a small --max-address finds every "
        "register (default 32)",
    )
    scan.add_argument(
        "--max-requests",
        type=int,
        default=2000,
        metavar="N",
        help="at most N requests per unit for its tables (default 2000)",
    )
    scan.add_argument(
        "--write-config",
        type=Path,
        metavar="FILE",
        help="write a starter configuration (one device per unit, uint16 placeholder points); "
        "an existing file is never overwritten",
    )
    scan.set_defaults(handler=_scan)

    simulate = command(
        "simulate",
        "Serve a simulated device: a press-line PLC or power meter over Modbus TCP, RTU over "
        "TCP or RTU on a serial port, or a packaging line over OPC UA.",
        "shopfloor simulate modbus --device meter --port 5021",
    )
    simulate.epilog = (
        "Examples:\n"
        "  shopfloor simulate modbus --device meter --port 5021\n"
        "  shopfloor simulate modbus --profile carlo-gavazzi-em340 --port 5023\n"
        "  shopfloor simulate modbus --transport rtu-tcp --port 5022 --units 1,2,3\n"
        "  socat pty,raw,echo=0,link=/tmp/sim pty,raw,echo=0,link=/tmp/agent &\n"
        "  shopfloor simulate modbus --transport rtu --serial /tmp/sim --baudrate 19200\n"
        "    (the agent then reads serial_port: /tmp/agent, baudrate: 19200)\n"
        "  shopfloor simulate opcua --port 4840\n"
        "  shopfloor simulate opcua --port 4840 --secure --login operator:secret"
    )
    simulate.add_argument(
        "protocol",
        choices=["modbus", "opcua"],
        help="modbus: a press line, a meter or a meter profile; opcua: a packaging line "
        "(OPC UA, security None, needs the opcua extra)",
    )
    simulate.add_argument(
        "--device",
        choices=["press-line", "meter"],
        default="press-line",
        help="press-line: a PLC with changing temperatures, pressure, counter and state; meter: "
        "a three-phase meter with an Eastron SDM630 layout and live values (default press-line)",
    )
    simulate.add_argument(
        "--profile",
        metavar="NAME",
        help="serve a meter with this device profile's register map (fixed plausible values) "
        "instead of --device, e.g. --profile eastron-sdm630; see config/profiles/",
    )
    simulate.add_argument(
        "--transport",
        choices=["tcp", "rtu-tcp", "rtu"],
        default="tcp",
        help="tcp: Modbus TCP on --host:--port; rtu-tcp: RTU frames over TCP on --host:--port, "
        "as a serial-to-Ethernet converter forwards them; rtu: RTU on the serial device "
        "--serial (default tcp), e.g. --transport rtu-tcp",
    )
    simulate.add_argument("--host", default="127.0.0.1", help="address to listen on")
    simulate.add_argument("--port", type=int, default=5020, help="TCP port (default 5020)")
    simulate.add_argument(
        "--serial",
        metavar="PATH",
        help="serial device for --transport rtu, e.g. --serial /dev/ttyUSB0, or one end of a "
        "socat pseudo-terminal pair (see the examples)",
    )
    simulate.add_argument(
        "--baudrate",
        type=int,
        default=9600,
        help="serial speed for --transport rtu, 8 data bits, no parity, 1 stop bit "
        "(default 9600), e.g. --baudrate 19200",
    )
    simulate.add_argument(
        "--units",
        type=_unit_ids,
        default=[1],
        metavar="1,2,3",
        help="unit ids (slave addresses) the device answers as, each with its own registers "
        "following the same model; requests for other units get no answer, like an absent "
        "device (default 1), e.g. --units 1,2,3",
    )
    simulate.add_argument(
        "--secure",
        action="store_true",
        help="opcua: also offer Sign and SignAndEncrypt (Basic256Sha256, Aes128_Sha256_RsaOaep, "
        "Aes256_Sha256_RsaPss) with a self-signed certificate kept in --pki",
    )
    simulate.add_argument(
        "--pki",
        type=Path,
        default=Path("simulator-pki"),
        metavar="DIR",
        help="opcua --secure: where the server keeps its certificate (default ./simulator-pki)",
    )
    simulate.add_argument(
        "--login",
        metavar="USER:PASSWORD",
        help="opcua: require this user name and password (no anonymous sessions)",
    )
    simulate.set_defaults(handler=_simulate)

    browse = command(
        "browse",
        "Show an OPC UA server's address space as a tree (name, class, node id; type, access "
        "and value of variables) and optionally export its variables as points. Only reads.",
        "shopfloor browse opc.tcp://10.0.0.5:4840 --node 'ns=3;s=Line1' --depth 4",
    )
    browse.epilog = (
        "Examples:\n"
        "  shopfloor browse opc.tcp://10.0.0.5:4840                   Objects, 3 levels deep\n"
        "  shopfloor browse opc.tcp://10.0.0.5:4840 --node 'ns=3;s=Line1' --depth 5\n"
        "  shopfloor browse opc.tcp://10.0.0.5:4840 --node 'nsu=urn:vendor:plc;s=Line1'\n"
        "  shopfloor browse opc.tcp://10.0.0.5:4840 --depth 6 --export line1.yaml\n"
        "  shopfloor browse --config /etc/shopfloor/agent.yaml --device filler\n"
        "Quote node ids in the shell: they contain ';'. Without --config: security None, "
        "anonymous; with it, the device's endpoint, security, login and trust list."
    )
    browse.add_argument(
        "endpoint", metavar="ENDPOINT", nargs="?", help="e.g. opc.tcp://10.0.0.5:4840"
    )
    browse.add_argument(
        "--config", type=Path, metavar="CONFIG", help="take the session settings from this file"
    )
    browse.add_argument(
        "--device", metavar="NAME", help="with --config: the OPC UA device to browse"
    )
    browse.add_argument(
        "--node",
        default="i=85",
        metavar="NODE_ID",
        help="start here: ns=2;s=..., ns=3;i=1001, nsu=URI;s=... or i=85 (default i=85, the "
        "Objects folder)",
    )
    browse.add_argument(
        "--depth", type=int, default=3, metavar="N", help="levels below the start (default 3)"
    )
    browse.add_argument(
        "--export",
        type=Path,
        metavar="FILE",
        help="write a devices: snippet with a point for every readable variable found; an "
        "existing file is never overwritten",
    )
    browse.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="wait this long for each answer (default 4, or the device's timeout)",
    )
    browse.set_defaults(handler=_browse)

    trust = command(
        "trust",
        "Add OPC UA server certificates to the agent's trust list (<data_dir>/pki/trusted): "
        "fetched from the servers of the named devices and confirmed by their thumbprint, or "
        "from a certificate file copied from the server.",
        "shopfloor trust /etc/shopfloor/agent.yaml filler",
    )
    trust.epilog = (
        "Examples:\n"
        "  shopfloor trust /etc/shopfloor/agent.yaml filler          fetch, show, ask\n"
        "  shopfloor trust /etc/shopfloor/agent.yaml --yes           every secured device\n"
        "  shopfloor trust /etc/shopfloor/agent.yaml --certificate /var/lib/shopfloor/pki/"
        "rejected/filler-1a2b.der"
    )
    trust.add_argument("config", type=Path, help="the agent's YAML configuration")
    trust.add_argument(
        "devices", nargs="*", metavar="DEVICE", help="OPC UA devices (default: all secured ones)"
    )
    trust.add_argument(
        "--certificate", type=Path, metavar="FILE", help="trust this certificate file (DER or PEM)"
    )
    trust.add_argument("--yes", action="store_true", help="trust without asking")
    trust.set_defaults(handler=_trust)

    status = command(
        "status",
        "Show the running agent's latest health (MQTT link, outbox, devices, process), read from "
        "its outbox file: no broker needed. Exit 0 when the report is fresh and every device is "
        "connected, 1 otherwise (no report, older than 3 x mqtt.health_interval: the agent may "
        "not be running, or a device not connected), 2 when the configuration is invalid.",
        "shopfloor status /etc/shopfloor/agent.yaml",
    )
    status.add_argument("config", type=Path, help="the agent's YAML configuration")
    status.add_argument("--json", action="store_true", help="print the raw health report")
    status.set_defaults(handler=_status)

    outbox = command(
        "outbox",
        "Look into the outbox file on site: what waits and what was dropped, export records, "
        "replay dead letters, purge records on purpose. Safe while the agent runs; never "
        "creates an outbox file.",
        "shopfloor outbox /etc/shopfloor/agent.yaml stats",
    )
    outbox.epilog = (
        "Examples:\n"
        "  shopfloor outbox agent.yaml stats                      what waits, by kind and topic\n"
        "  shopfloor outbox agent.yaml export --output backlog.jsonl\n"
        "  shopfloor outbox agent.yaml export --dead-letters --format csv > dead.csv\n"
        "  shopfloor outbox agent.yaml replay-dead                after fixing the broker's ACL\n"
        "  shopfloor outbox agent.yaml purge --kind metrics --older-than 2d\n"
        "  shopfloor outbox agent.yaml purge --dead-letters --yes\n"
        "Exit status: 0 done, 1 failed or declined (one sentence on stderr), 2 invalid "
        "configuration or arguments."
    )
    outbox.add_argument(
        "config", type=Path, metavar="CONFIG", help="the agent's YAML configuration"
    )
    actions = outbox.add_subparsers(title="actions", metavar="ACTION", dest="action", required=True)

    def outbox_action(name: str, summary: str, example: str) -> argparse.ArgumentParser:
        return actions.add_parser(
            name,
            help=summary,
            description=summary[0].upper() + summary[1:] + ".",
            epilog=f"Example:\n  shopfloor outbox /etc/shopfloor/agent.yaml {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    outbox_stats = outbox_action(
        "stats",
        "rows and records waiting by kind and topic, bytes against the cap, ages, dead "
        "letters, dropped and purged records, accepted records, session",
        "stats --json",
    )
    outbox_stats.add_argument("--json", action="store_true", help="print JSON for scripts")
    outbox_export = outbox_action(
        "export",
        "write every waiting record (or dead letter), one line each, with its row id, kind "
        "and topic",
        "export --format csv --output backlog.csv",
    )
    outbox_export.add_argument(
        "--dead-letters", action="store_true", help="export the dead-letter table instead"
    )
    outbox_export.add_argument(
        "--format",
        choices=["jsonl", "csv"],
        default="jsonl",
        help="JSON lines (default) or CSV (event data as JSON text)",
    )
    outbox_export.add_argument(
        "--output",
        "-o",
        type=Path,
        metavar="FILE",
        help="write here (never overwritten) instead of stdout",
    )
    outbox_action(
        "replay-dead",
        "move every dead letter back into the outbox, to be sent again",
        "replay-dead",
    )
    outbox_purge = outbox_action(
        "purge",
        "delete waiting records on purpose (shown first, then asked), counted as purged_<kind> "
        "in the outbox's meta table",
        "purge --kind metrics --older-than 2d",
    )
    outbox_purge.add_argument(
        "--dead-letters", action="store_true", help="purge from the dead-letter table"
    )
    outbox_purge.add_argument("--kind", choices=["metrics", "events"], help="only this kind")
    outbox_purge.add_argument(
        "--older-than",
        type=_duration,
        metavar="DURATION",
        help="only batches sampled longer ago than this, e.g. 2d, 12h (0s: all)",
    )
    outbox_purge.add_argument(
        "--topic",
        action="append",
        default=[],
        metavar="DEVICE",
        help="only this device (or event kind); may be repeated",
    )
    outbox_purge.add_argument("--yes", action="store_true", help="purge without asking")
    outbox.set_defaults(handler=_outbox)

    model = command(
        "model",
        "Look into a vision model file: what the agent makes of it before a station uses it.",
        "shopfloor model info inference/models/washer_classifier.onnx",
    )
    model.epilog = (
        "Examples:\n"
        "  shopfloor model info washer.onnx          inputs, outputs, family, classes, "
        "pre-processing\n"
        "  shopfloor model info yolo11n.onnx --json  the same as JSON for scripts\n"
        "Values come from the model's metadata, overridden key by key by a sidecar YAML beside "
        "it (washer.onnx -> washer.yaml). Exit status: 0 usable, 1 the vision extra is not "
        "installed, 2 the file is missing, invalid or of an unknown layout."
    )
    model_actions = model.add_subparsers(
        title="actions", metavar="ACTION", dest="action", required=True
    )
    model_info = model_actions.add_parser(
        "info",
        help="inputs, outputs, recognised family, classes, pre-processing, threshold and NG "
        "classes, each with where it came from",
        description="Show the inputs and outputs of an ONNX vision model, the family the agent "
        "recognises, its classes, pre-processing (colour order, size, resize mode, scale, "
        "mean, std), threshold and NG classes, each with where it came from (model metadata, "
        "sidecar, metadata.json, family default, inferred from the graph), and the time of "
        "one run on a blank image.",
        epilog="Example:\n  shopfloor model info inference/models/washer_classifier.onnx --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model_info.add_argument("file", type=Path, metavar="FILE", help="an ONNX model file")
    model_info.add_argument("--json", action="store_true", help="print JSON for scripts")
    model.set_defaults(handler=_model)

    demo = command(
        "demo",
        "Start a local broker, a simulated press line and meter, and the agent, and show the "
        "data arriving at the broker live. Ctrl-C stops everything it started.",
        "shopfloor demo",
    )
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.set_defaults(handler=_demo)
    return parser


def _trust(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    try:
        from agent.trust import trust_command  # asyncua: only when asked
    except ImportError:
        print("OPC UA needs the opcua extra: pip install 'shopfloor-agent[opcua]'", file=sys.stderr)
        return EXIT_FAILED

    return trust_command(config, args.devices, certificate=args.certificate, yes=args.yes)


def _load(path: Path, *, check_models: bool = False) -> Config | None:
    from agent.config import ConfigError, load_config

    try:
        return load_config(path, check_models=check_models)
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
        config = _load(path, check_models=True)
        if config is None:
            status = EXIT_CONFIG
            continue
        if args.print_validated:
            # Defaults left out: a smaller message, and less for `shopfloor run` to parse.
            print(config.model_dump_json(exclude_defaults=True))
            continue
        points = sum(len(device.points) for device in config.devices)
        stations = f", {_count(len(config.stations), 'station')}" if config.stations else ""
        print(
            f"{path}: OK ({_count(len(config.devices), 'device')}, "
            f"{_count(points, 'point')}{stations})."
        )
    return status


def _may_use_a_serial_port(config: Path) -> bool:
    """Whether the configuration file may have a `modbus_rtu` device (True when unreadable)."""
    try:
        text = config.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return True
    return re.search(r"modbus_rtu(?!_tcp)", text) is not None


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
    if not _may_use_a_serial_port(args.config):
        # pymodbus imports pyserial (0.3 MiB) whether or not a serial line is used. A file
        # without the word modbus_rtu cannot configure one: keep pyserial out of memory (a
        # None entry in sys.modules makes `import serial` fail, which pymodbus tolerates).
        sys.modules.setdefault("serial", None)  # type: ignore[arg-type]
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

    return asyncio.run(read_points(config, args.points, all_orders=args.all_orders))


def _scan(args: argparse.Namespace) -> int:
    from agent.scan import scan_command

    return scan_command(
        target=args.target,
        serial_port=args.serial,
        rtu_over_tcp=args.rtu_over_tcp,
        baudrate=args.baudrate,
        parity=args.parity,
        stopbits=args.stopbits,
        units=args.units,
        timeout=args.timeout,
        max_address=args.max_address,
        resolution=args.resolution,
        max_requests=args.max_requests,
        write_config=args.write_config,
    )


def _unit_ids(text: str) -> list[int]:
    """`--units 1,2,3` (or `1-3`) as a list of ids (argparse shows the error with the usage)."""
    from agent.scan import parse_units  # the one parser of unit lists, shared with `scan`

    try:
        return list(parse_units(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _simulate(args: argparse.Namespace) -> int:
    from drivers.simulate.modbus import METER_MAP, PRESS_LINE_MAP, build_simulator

    if args.protocol == "opcua":
        return _simulate_opcua(args)
    if args.transport == "rtu" and not args.serial:
        print("--transport rtu needs --serial PATH, e.g. --serial /dev/ttyUSB0", file=sys.stderr)
        return EXIT_CONFIG
    if args.profile:
        return _simulate_profile(args)
    try:
        server = build_simulator(
            args.device,
            args.port,
            args.host,
            transport=args.transport.replace("-", "_"),
            serial_port=args.serial,
            baudrate=args.baudrate,
            unit_ids=args.units,
        )
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    try:
        server.start()
    except OSError as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAILED
    register_map = PRESS_LINE_MAP if args.device == "press-line" else METER_MAP
    print(f"Simulated {args.device} serving {server.describe()}, {_units_text(server.unit_ids)}.")
    for name, table, address, value_type, order, unit in register_map:
        print(f"  {table + ':' + str(address):<14} {value_type:<8} {order}  {name} ({unit})")
    return _serve_until_stopped(server)


def _simulate_opcua(args: argparse.Namespace) -> int:
    try:
        from drivers.simulate.opcua import NAMESPACE_URI, PACKAGING_LINE, SimulatedOpcUaServer
    except ImportError:
        print("OPC UA needs the opcua extra: pip install 'shopfloor-agent[opcua]'", file=sys.stderr)
        return EXIT_FAILED
    users = None
    if args.login:
        user, colon, password = args.login.partition(":")
        if not (user and colon and password):
            print("--login takes USER:PASSWORD, e.g. --login operator:secret", file=sys.stderr)
            return EXIT_CONFIG
        users = {user: password}
    server = SimulatedOpcUaServer(
        args.port,
        host=args.host,
        changing=True,
        security=args.secure,
        pki_dir=args.pki.resolve() if args.secure else None,
        users=users,
    )
    try:
        server.start()
    except OSError as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAILED
    print(f"Simulated packaging line serving OPC UA on {server.endpoint}.")
    if args.secure:
        from drivers.opcua.security import certificate_summary

        print("  security: None, Sign and SignAndEncrypt with the three current policies")
        print(f"  certificate {server.certificate}")
        print(f"    {certificate_summary(server.certificate.read_bytes())}")
    if users:
        print(f"  login required: user {next(iter(users))}")
    print(f"  namespace {NAMESPACE_URI} (index {server.namespace_index})")
    for variable in PACKAGING_LINE:
        unit = f" ({variable.unit})" if variable.unit else ""
        print(f"  {server.node_id(variable.path):<28} {variable.variant_type.name}{unit}")
    return _serve_until_stopped(server)


def _units_text(unit_ids: Sequence[int]) -> str:
    return ("unit " if len(unit_ids) == 1 else "units ") + ", ".join(map(str, unit_ids))


def _simulate_profile(args: argparse.Namespace) -> int:
    """Serve a shipped (or own) profile's register map with fixed, plausible values."""
    from agent.config import ConfigError, UnknownProfile, load_profile
    from drivers.simulate.meters import meter_registers
    from drivers.simulate.modbus import SimulatedModbusServer

    try:
        profile = load_profile(args.profile, Path.cwd())
    except UnknownProfile as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    registers = meter_registers(profile)
    try:
        server = SimulatedModbusServer(
            args.port,
            host=args.host,
            unit_ids=args.units,
            transport=args.transport.replace("-", "_"),
            serial_port=args.serial,
            baudrate=args.baudrate,
            extra_ranges=[(r.table, r.address, len(r.registers)) for r in registers],
        )
        server.start()
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAILED
    for unit in server.unit_ids:
        for register in registers:
            server.set_registers(register.table, register.address, register.registers, unit)
    print(f"Simulated {args.profile} serving {server.describe()}, {_units_text(server.unit_ids)}.")
    for register in registers:
        quantity = profile.quantities[register.quantity]
        print(
            f"  {register.table + ':' + str(register.address):<14} {quantity.type:<8} "
            f"{quantity.order}  {register.quantity} = {register.value:g} {quantity.unit or ''}"
        )
    return _serve_until_stopped(server)


def _serve_until_stopped(server: SimulatedModbusServer | SimulatedOpcUaServer) -> int:
    import threading

    print("Ctrl-C stops it.", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return EXIT_OK


def _browse(args: argparse.Namespace) -> int:
    try:
        from agent.browse import browse_command
    except ImportError:
        print("OPC UA needs the opcua extra: pip install 'shopfloor-agent[opcua]'", file=sys.stderr)
        return EXIT_FAILED
    secured_by = None
    endpoint = args.endpoint
    timeout = args.timeout
    if (args.config is None) != (args.device is None):
        print("--config and --device go together.", file=sys.stderr)
        return EXIT_CONFIG
    if args.config is not None:
        from agent.settings import OpcUaDevice
        from drivers.opcua.security import Pki

        config = _load(args.config)
        if config is None:
            return EXIT_CONFIG
        devices = {d.name: d for d in config.devices if isinstance(d, OpcUaDevice)}
        if args.device not in devices:
            print(
                f"No OPC UA device named {args.device} in {args.config} (OPC UA devices: "
                f"{', '.join(devices) or 'none'}).",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        device = devices[args.device]
        secured_by = (device, Pki(config.agent.data_dir / "pki"))
        endpoint = endpoint or device.endpoint
        timeout = device.timeout if timeout is None else timeout
    if endpoint is None:
        print("Give an ENDPOINT, or --config and --device.", file=sys.stderr)
        return EXIT_CONFIG
    return browse_command(
        endpoint=endpoint,
        node=args.node,
        depth=args.depth,
        export=args.export,
        timeout=4.0 if timeout is None else timeout,
        secured_by=secured_by,
    )


def _duration(text: str) -> float:
    """`--older-than 2d` in seconds (argparse shows the error with the usage)."""
    from agent.settings import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _status(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    from agent.status import status_command

    return status_command(config, as_json=args.json)


def _outbox(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    from agent import outbox_tools  # sqlite-utils: only here, never in the running agent

    if args.action == "stats":
        return outbox_tools.stats_command(config, as_json=args.json)
    if args.action == "export":
        return outbox_tools.export_command(
            config, dead_letters=args.dead_letters, output_format=args.format, output=args.output
        )
    if args.action == "replay-dead":
        return outbox_tools.replay_dead_command(config)
    return outbox_tools.purge_command(
        config,
        dead_letters=args.dead_letters,
        kind=args.kind,
        older_than_s=args.older_than,
        topics=args.topic,
        yes=args.yes,
    )


def _model(args: argparse.Namespace) -> int:
    try:
        # numpy, OpenCV and onnxruntime: loaded only for this command.
        from inference.vision.info import model_info_command
    except ImportError as exc:
        print(
            f"Vision models need the vision extra ({exc.name or exc} is missing): "
            "pip install 'shopfloor-agent[vision]'",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return model_info_command(args.file, as_json=args.json)


def _demo(args: argparse.Namespace) -> int:
    from agent.demo import run_demo

    return run_demo(duration=args.duration)
