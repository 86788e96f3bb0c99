"""A simulated sorting station: a conveyor brings washers under a camera, a PLC raises the
inspection trigger for each one and sorts it by the verdict the agent writes back.

The PLC is a real Modbus TCP server and the camera a real MJPEG stream over HTTP, so the agent
talks to them exactly as to the real things. The ground truth of every part is known, so the
demo (and the tests) can tell how often the PLC sorted a part the right way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from drivers.simulate.camera import SimulatedCamera
from drivers.simulate.modbus import SimulatedModbusServer
from drivers.simulate.parts import PartStream

__all__ = ["SORTER_COILS", "SORTER_REGISTERS", "SortingLine", "SortingTally"]

log = logging.getLogger(__name__)

# The PLC's handshake with the inspection station (protocol addresses, unit 1).
SORTER_COILS = {
    "trigger": 0,  # PLC -> station: a part is under the camera (rising edge)
    "result_ack": 1,  # PLC -> station: result taken (rising edge)
    "ready": 2,  # station -> PLC
    "result_ready": 3,
    "ok": 4,
    "ng": 5,
    "error": 6,
}
SORTER_REGISTERS = {  # holding registers
    "class_id": 0,  # int16, -1 when the part could not be inspected
    "error_code": 1,  # int16
    "counter": 2,  # uint16, changes with every result
    "heartbeat": 3,  # uint16, changes every heartbeat interval
    "part_id": 10,  # uint32, written by the PLC before the trigger
}


@dataclass(slots=True)
class SortingTally:
    """What the PLC saw: parts, how it sorted them, and how that compares with the truth."""

    parts: int = 0
    sorted_ok: int = 0
    sorted_ng: int = 0
    no_result: int = 0
    correct: int = 0
    truth: Counter[str] = field(default_factory=Counter)
    last_result_ms: float | None = None

    @property
    def accuracy(self) -> float | None:
        """Share of answered parts sorted the way their ground truth says."""
        answered = self.sorted_ok + self.sorted_ng
        return self.correct / answered if answered else None


class SortingLine:
    """The conveyor, its PLC (Modbus TCP) and its camera (MJPEG over HTTP).

    Every `period` seconds a new part arrives: the camera shows it, the PLC writes its part id,
    raises the trigger and waits up to `result_timeout` for the station's counter to change,
    then lowers the trigger, sorts the part by the ok/ng coils and pulses result_ack.
    """

    def __init__(
        self,
        *,
        period: float = 1.5,
        defect_rate: float = 0.15,
        seed: int = 2026,
        plc_port: int = 0,
        camera_port: int = 0,
        result_timeout: float = 3.0,
        settle: float = 0.15,
    ) -> None:
        self.period = period
        self.result_timeout = result_timeout
        self.settle = settle
        self.parts = PartStream(seed, defect_rate)
        self.plc = SimulatedModbusServer(plc_port)
        self.camera = SimulatedCamera(self._current_image, fps=15, port=camera_port)
        self.tally = SortingTally()
        self._image, self._label = self.parts.next_part()
        self._image_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def camera_url(self) -> str:
        """The MJPEG stream the agent's camera source opens."""
        return self.camera.url

    def start(self) -> None:
        """Start the PLC, the camera and the conveyor."""
        self.plc.start()
        self.camera.start()
        self._stop.clear()
        self._thread = threading.Thread(target=self._convey, name="conveyor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the conveyor, the camera and the PLC."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self.camera.stop()
        self.plc.stop()

    def _current_image(self) -> np.ndarray:
        with self._image_lock:
            return self._image

    def _convey(self) -> None:
        part_id = 0
        while not self._stop.is_set():
            started = time.monotonic()
            part_id += 1
            image, label = self.parts.next_part()
            with self._image_lock:
                self._image, self._label = image, label
            try:
                self._inspect_part(part_id, label)
            except Exception:  # the demo's PLC must keep running whatever happens
                log.exception("The simulated sorting PLC failed on part %d.", part_id)
            self._stop.wait(max(0.0, self.period - (time.monotonic() - started)))

    def _inspect_part(self, part_id: int, label: str) -> None:
        plc = self.plc
        plc.set_registers("holding", SORTER_REGISTERS["part_id"], [part_id >> 16, part_id & 0xFFFF])
        # The part comes to rest under the camera before the PLC asks for an inspection.
        if self._stop.wait(self.settle):
            return
        counter = plc.get_registers("holding", SORTER_REGISTERS["counter"], 1)[0]
        plc.set_registers("coil", SORTER_COILS["trigger"], [True])
        deadline = time.monotonic() + self.result_timeout
        answered = False
        while time.monotonic() < deadline and not self._stop.is_set():
            if plc.get_registers("holding", SORTER_REGISTERS["counter"], 1)[0] != counter:
                answered = True
                break
            time.sleep(0.005)
        plc.set_registers("coil", SORTER_COILS["trigger"], [False])
        tally = self.tally
        tally.parts += 1
        tally.truth[label] += 1
        if not answered:
            tally.no_result += 1
            return
        coils = plc.get_registers("coil", SORTER_COILS["ok"], 2)
        ok, ng = bool(coils[0]), bool(coils[1])
        if ok and not ng:
            tally.sorted_ok += 1
            tally.correct += label == "ok"
        else:
            tally.sorted_ng += 1
            tally.correct += label != "ok"
        tally.last_result_ms = time.time() * 1000
        plc.set_registers("coil", SORTER_COILS["result_ack"], [True])
        self._stop.wait(0.1)
        plc.set_registers("coil", SORTER_COILS["result_ack"], [False])
