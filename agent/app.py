"""The one place that builds and wires the agent's components, and runs them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import sqlite3
import ssl
import time
from typing import Any

from agent import __version__
from agent.buffer import LiveBuffer
from agent.commands import CommandRequest, CommandRouter, inspect_handler, ping_handler
from agent.credentials import SecretUnavailable, read_secret
from agent.model import Event, Sample, now_ms
from agent.outbox import Outbox
from agent.pipeline import Batch, DeviceRunner, Handoff, OutboxWriter, PipelineStats
from agent.publish.mqtt import MqttPublisher
from agent.publish.payload import Topics, max_message_body
from agent.publish.tls import TlsSetupError, tls_context
from agent.retention import Retention
from agent.settings import AnyDevice, Config, OpcUaDevice
from drivers.base import PolledDriver
from drivers.modbus.client import ModbusDriver
from drivers.modbus.line import ModbusLines

__all__ = [
    "Agent",
    "AgentFailed",
    "StartupError",
    "mqtt_tls_context",
    "open_outbox",
    "read_password",
]

log = logging.getLogger(__name__)

# Batches the device tasks may queue ahead of the outbox writer before samples are dropped.
_HANDOFF_BATCHES = 10_000
# How long SIGTERM waits for the broker to acknowledge what the outbox still holds.
SHUTDOWN_DRAIN_S = 5.0


class AgentFailed(RuntimeError):
    """A component failed in a way the agent cannot recover from; a restart is needed."""


class StartupError(Exception):
    """The agent cannot start: the outbox file, the MQTT password or a TLS file cannot be used."""


def read_password(config: Config) -> str | None:
    """The MQTT password from its file or environment variable; never logged."""
    try:
        return read_secret(
            config.mqtt.password_file,
            config.mqtt.password_env,
            file_label="MQTT password file",
            env_label="mqtt.password_env",
        )
    except SecretUnavailable as exc:
        raise StartupError(str(exc)) from exc


def mqtt_tls_context(config: Config) -> ssl.SSLContext | None:
    """The TLS context of `mqtt.tls` (None without TLS): its files are read and checked here,
    before any network I/O, so that a wrong path or key stops the start with a clear error."""
    tls = config.mqtt.tls
    if tls is None:
        return None
    try:
        key_password = read_secret(
            tls.key_password_file,
            tls.key_password_env,
            file_label="MQTT TLS key password file",
            env_label="mqtt.tls.key_password_env",
        )
        return tls_context(tls, key_password)
    except (SecretUnavailable, TlsSetupError) as exc:
        raise StartupError(str(exc)) from exc


def open_outbox(config: Config) -> tuple[Outbox, int]:
    """Open (or create) the outbox file and count this start as a new session."""
    path = config.outbox_path
    try:
        outbox = Outbox(path, synchronous=config.outbox.synchronous)
        return outbox, outbox.next_session()
    except (OSError, sqlite3.Error) as exc:
        raise StartupError(
            f"cannot open the outbox {path}: {exc}. If the file is damaged, move it aside; the "
            "agent then starts with an empty one."
        ) from exc


class Agent:
    """Device tasks -> outbox writer -> outbox -> MQTT publisher, plus periodic health."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.topics = Topics(config.mqtt.topic_prefix, config.agent.id)
        self.stats = PipelineStats()
        self.failure: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started = time.monotonic()
        password = read_password(config)
        tls = mqtt_tls_context(config)
        self.outbox, self.session = open_outbox(config)
        self.buffer = LiveBuffer(self.outbox)
        # Remote commands (`.../cmd/{name}`); the handlers are registered in _commands().
        self.commands = CommandRouter(self.topics)
        self.publisher = MqttPublisher(
            config.mqtt,
            client_id=config.client_id,
            topics=self.topics,
            outbox=self.outbox,
            buffer=self.buffer,
            session=self.session,
            password=password,
            tls=tls,
            on_fatal=self._component_failed,
            on_command=self._command_arrived,
            command_topics=self.commands.topic_filter,
        )
        self.handoff = Handoff(_HANDOFF_BATCHES, self.stats)
        # Rows being sent (from memory, or in flight from the file) are never dropped: they
        # may still arrive, and a record must be counted either delivered or dropped.
        self.retention = Retention(
            self.outbox,
            config.outbox,
            keep=lambda: self.buffer.protected_ids() | self.publisher.rows_in_flight(),
        )
        # Devices on one TCP endpoint or serial port share its line and take turns on it.
        self.lines = ModbusLines()
        self.runners = [
            DeviceRunner(device, self._driver_for(device), self.handoff)
            for device in config.devices
        ]
        self.stations: list[Any] = []
        self.cameras: dict[str, Any] = {}
        if config.stations:
            self._build_stations()
        self.energy: list[Any] = []
        if config.energy:
            self._build_energy()
        self._commands()
        self.writer = OutboxWriter(
            self.buffer,
            self.handoff,
            config.outbox,
            on_new=self.publisher.notify,
            max_body=max_message_body(config.mqtt.max_payload_bytes),
            retention=self.retention,
        )

    def _driver_for(self, device: AnyDevice) -> PolledDriver:
        if isinstance(device, OpcUaDevice):
            # asyncua costs about 30 MiB: loaded only when a device needs it.
            from drivers.opcua.client import OpcUaDriver
            from drivers.opcua.security import Pki

            return OpcUaDriver(device, Pki(self.config.agent.data_dir / "pki"))
        return ModbusDriver(device, self.lines.for_device(device))

    def _build_stations(self) -> None:
        """Cameras, models and image archives of the vision stations, wired to the devices
        whose points they watch and write. numpy, OpenCV and onnxruntime (together 56 MiB)
        are loaded only here, when the configuration has stations."""
        try:
            from drivers.camera import open_camera
            from inference.session import ModelError
            from inference.vision.adapters import load_vision_model
            from inference.vision.evidence import ImageArchive
            from inference.vision.station import LoadedModel, PlcPoint, Station
        except ImportError as exc:
            raise StartupError(
                f"the configuration has stations, which need the vision extra ({exc}): "
                "install it with pip install 'shopfloor-agent[vision]'"
            ) from exc
        config = self.config
        owners = {
            point.id: (runner, point) for runner in self.runners for point in runner.device.points
        }
        plc = {
            point_id: PlcPoint(runner.device.name, point, runner.driver)
            for point_id, (runner, point) in owners.items()
        }
        used = {station.camera for station in config.stations}
        for camera in config.cameras:
            if camera.name in used:
                self.cameras[camera.name] = open_camera(
                    camera.name,
                    camera.source if camera.source is not None else 0,
                    folder=camera.folder,
                    fps=camera.fps,
                    loop=camera.loop,
                    width=camera.width,
                    height=camera.height,
                    reconnect_max=camera.reconnect_max,
                    open_timeout=camera.timeout,
                    latency=camera.latency,
                )
        for settings in config.stations:
            models = []
            for model in settings.models:
                try:
                    loaded = load_vision_model(
                        model.path,
                        threads=model.threads,
                        threshold=model.threshold,
                        ng_classes=model.ng_classes,
                    )
                    # The first run allocates: it should not be a part's, and a model that
                    # loads but cannot run should stop the start, not fail the first part.
                    loaded.warm_up()
                except ModelError as exc:
                    raise StartupError(f"station {settings.name}: {exc}") from exc
                models.append(LoadedModel(model, loaded))
            images = settings.images
            archive = None
            if images.save != "none" or images.ok_sample_every:
                archive = ImageArchive(
                    config.agent.data_dir / images.directory,
                    max_bytes=images.max_bytes,
                    max_age_s=images.max_age,
                    jpeg_quality=images.jpeg_quality,
                    station=settings.name,
                )
            station = Station(
                settings,
                self.cameras[settings.camera],
                models,
                plc,
                publish=self._publish_event,
                archive=archive,
            )
            watched = {
                settings.trigger.point,
                settings.part_id,
                settings.ack,
                settings.outputs.counter,
            } - {None}
            for runner in {owners[point_id][0] for point_id in watched if point_id}:
                runner.observers.append(station.observe)
            self.stations.append(station)

    def _build_energy(self) -> None:
        """The energy consumers, each an observer of the devices that own its points; its KPI
        samples go out on the meter's device. inference.energy is imported only here."""
        from inference.energy.counters import EnergyConfigError
        from inference.energy.engine import EnergyConsumer

        owners = {point.id: runner for runner in self.runners for point in runner.device.points}
        scales = {
            point.id: (float(getattr(point, "scale", 1.0)), float(getattr(point, "offset", 0.0)))
            for runner in self.runners
            for point in runner.device.points
        }
        for settings in self.config.energy:
            meter = settings.energy.point if settings.energy is not None else None
            if meter is None:
                assert settings.power is not None
                meter = settings.power.point
            try:
                consumer = EnergyConsumer(
                    settings,
                    device=owners[meter].device.name,
                    publish_metrics=self._publish_metrics,
                    publish_event=self._publish_event,
                    scales=scales,
                )
            except EnergyConfigError as exc:
                raise StartupError(f"energy {settings.name}: {exc}") from exc
            except ImportError as exc:  # a baseline needs onnxruntime and numpy
                raise StartupError(
                    f"energy {settings.name}: its baseline needs onnxruntime ({exc}): install "
                    "it with pip install 'shopfloor-agent[vision]'"
                ) from exc
            for runner in {owners[point] for point in consumer.points}:
                runner.observers.append(consumer.observe)
            self.energy.append(consumer)

    def _publish_metrics(self, device: str, samples: list[Sample]) -> None:
        if samples:
            self.handoff.put(Batch("metrics", device, samples))

    # -- remote commands ---------------------------------------------------------------------

    def _commands(self) -> None:
        """The commands this agent takes on `.../cmd/{name}` (see agent/commands.py)."""
        self.commands.register("ping", ping_handler(self.config.agent.id, __version__))
        self.commands.register("inspect", inspect_handler(self.stations))

    def _command_arrived(self, request: CommandRequest) -> None:
        """On paho's network thread: hand the command to the event loop; never blocks."""
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: shutting down
            self._loop.call_soon_threadsafe(
                self.commands.dispatch, request, self.publisher.offer_reply
            )

    def _commands_health(self) -> dict[str, Any]:
        return {
            **self.commands.health(),
            "replies_sent": self.publisher.stats.replies_sent,
            "replies_dropped": self.publisher.stats.replies_dropped,
        }

    def _stop_stations(self) -> None:
        for camera in self.cameras.values():
            camera.stop()
        for station in self.stations:
            if station.archive is not None:
                station.archive.close(timeout=10.0)

    def _publish_event(self, event: Event) -> None:
        self.handoff.put(Batch("events", event.kind, [event]))

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then flush the outbox, say offline and close.

        Raises `AgentFailed` after that if a component failed and stopped the agent.
        """
        self._stop = stop
        self._loop = asyncio.get_running_loop()
        log.info(
            "shopfloor-agent %s starting as %s (session %d): %d devices, outbox %s.",
            __version__,
            self.config.agent.id,
            self.session,
            len(self.runners),
            self.config.outbox_path,
        )
        self.publisher.start()
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(runner.run(), name=f"device {runner.device.name}")
                    for runner in self.runners
                ]
                tasks.append(group.create_task(self.writer.run(), name="outbox writer"))
                tasks.append(group.create_task(self._health_loop(), name="health"))
                for camera in self.cameras.values():
                    camera.start()
                tasks.extend(
                    group.create_task(station.run(), name=f"station {station.name}")
                    for station in self.stations
                )
                await stop.wait()
                log.info("Stopping: flushing the outbox and telling the broker we go offline.")
                for task in tasks:
                    task.cancel()
        finally:
            await asyncio.to_thread(self._stop_stations)
            self.lines.close()
            self.writer.flush()
            await asyncio.to_thread(self.publisher.stop, SHUTDOWN_DRAIN_S)
            left = self.outbox.stats()
            if left.records:
                log.warning(
                    "%d records were not acknowledged before shutdown; they stay in the outbox "
                    "and are sent after the next start.",
                    left.records,
                )
            self.outbox.close()
            log.info("Stopped.")
        if self.failure is not None:
            raise AgentFailed(f"a component failed: {self.failure!r}") from self.failure

    def _component_failed(self, exc: BaseException) -> None:
        """Called from any thread: stop the agent, which then exits with a failure status."""
        self.failure = exc
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: already stopping
                self._loop.call_soon_threadsafe(self._stop.set)

    async def _health_loop(self) -> None:
        failed = False
        while True:
            try:
                report = await asyncio.to_thread(self.health)
                self.publisher.offer_health(report)
                # Also kept in the outbox file: `shopfloor status` reads it without the broker.
                await asyncio.to_thread(self.outbox.save_status, report, report["ts"])
                failed = False
            except Exception:  # health must never take the data path down with it
                if not failed:
                    log.exception("Could not build or store the health report; data keeps flowing.")
                failed = True
            await asyncio.sleep(self.config.mqtt.health_interval)

    def health(self) -> dict[str, Any]:
        """The health report published on `.../health`."""
        outbox = self.outbox.stats()
        bounds = self.retention.report
        now = now_ms()
        publisher = self.publisher.stats
        usage = resource.getrusage(resource.RUSAGE_SELF)
        devices = {}
        for runner in self.runners:
            health = runner.driver.health()
            devices[runner.device.name] = {
                "state": health.state.value,
                "since": health.since_ms,
                "last_error": health.last_error,
                "last_good_read": health.last_good_read_ms,
                "reads": health.reads,
                "read_errors": health.read_errors,
                "requests": health.requests,
                "polls_late": self.stats.polls_late.get(runner.device.name, 0),
            }
        return {
            "ts": now,
            "agent": self.config.agent.id,
            "session": self.session,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "outbox": {
                "rows": outbox.rows,
                "records": outbox.records,
                "bytes": bounds.used_bytes,
                "cap_bytes": bounds.cap_bytes,
                "free_disk_bytes": bounds.free_disk_bytes,
                "dropping": bounds.dropping,
                "dropped": dict(bounds.dropped),
                "drop_episodes": bounds.episodes,
                "dead_letters": sum(self.outbox.dead_letters().values()),
                "in_memory_rows": len(self.buffer),
                "oldest_age_s": None
                if outbox.oldest_ts is None
                else round((now - outbox.oldest_ts) / 1000, 1),
            },
            "pipeline": {
                "samples_in": self.stats.samples_in,
                "records_committed": self.stats.records_committed,
                "records_dropped": self.stats.records_dropped,
            },
            "mqtt": {
                "connected": publisher.connected,
                "connects": publisher.connects,
                "messages_sent": publisher.messages_sent,
                "records_sent": publisher.records_sent,
                "messages_failed": publisher.messages_failed,
                "failures": dict(publisher.failures),
                "in_flight": publisher.in_flight,
                "dead_letter_records": publisher.dead_letter_records,
                "connect_attempts": self.publisher.link.attempts,
                "half_open_detected": self.publisher.link.half_open_detected,
                "takeovers": self.publisher.link.takeovers,
            },
            "devices": devices,
            "commands": self._commands_health(),
            **(
                {"stations": {station.name: station.health() for station in self.stations}}
                if self.stations
                else {}
            ),
            **(
                {"energy": {consumer.name: consumer.health() for consumer in self.energy}}
                if self.energy
                else {}
            ),
            "process": {
                "rss_mib": round(_rss_bytes() / 2**20, 1),
                "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            },
        }


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
