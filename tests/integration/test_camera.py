"""Camera sources against real files and a real MJPEG server: order, loop, triggers, newest frame,
fresh frames after a trigger, loss and recovery logged once, threads that end on stop()."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

import drivers.camera.folder
from drivers.base import LinkState
from drivers.camera import CameraUnavailable, InvalidCameraSource, open_camera
from drivers.simulate.broker import free_port
from drivers.simulate.camera import SimulatedCamera

# Small frames keep the tests fast. The frame's number is its gray level (number % 32 in steps
# of 8, so JPEG's error of a level or two cannot confuse two numbers), and is also drawn.
WIDTH, HEIGHT = 64, 48
LEVELS = 32


def numbered(number: int) -> np.ndarray:
    image = np.full((HEIGHT, WIDTH, 3), (number % LEVELS) * 8 + 4, np.uint8)
    cv2.putText(image, str(number), (2, 12), cv2.FONT_HERSHEY_PLAIN, 0.8, (255, 255, 255), 1)
    return image


def number_of(image: np.ndarray) -> int:
    """The frame's number modulo LEVELS, read from the plain lower half."""
    return round((float(image[image.shape[0] // 2 :].mean()) - 4) / 8) % LEVELS


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def camera_threads() -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name.startswith("camera-")]


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)


async def reconnected(camera: Any, within: float) -> None:
    """Wait until a lost camera delivers again (frame_after refuses at once while it is lost)."""
    deadline = time.monotonic() + within
    while camera.health().state != LinkState.CONNECTED:
        assert time.monotonic() < deadline, f"not reconnected within {within} s"
        await asyncio.sleep(0.02)


def write_images(folder: Path, numbers: dict[str, int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, number in numbers.items():
        assert cv2.imwrite(str(folder / name), numbered(number))


def camera_records(caplog: pytest.LogCaptureFixture, level: int, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "drivers.camera" and r.levelno == level and text in r.getMessage()
    ]


class NumberedFrames:
    """A frame source for the simulated camera that remembers when it made each number."""

    def __init__(self) -> None:
        self.count = 0
        self.made_at: dict[int, float] = {}

    def __call__(self) -> np.ndarray:
        self.count += 1
        self.made_at[self.count] = time.monotonic()
        return numbered(self.count)

    def made(self, image: np.ndarray) -> float:
        """When the newest frame with this image's number was made."""
        residue = number_of(image)
        number = max(n for n in self.made_at if n % LEVELS == residue)
        return self.made_at[number]


@pytest.fixture
def stream() -> Iterator[tuple[SimulatedCamera, NumberedFrames]]:
    frames = NumberedFrames()
    server = SimulatedCamera(frames, fps=20)
    server.start()
    yield server, frames
    server.stop()


# -- folders --------------------------------------------------------------------------------


def test_triggered_folder_gives_one_image_per_call_in_name_order_and_loops(tmp_path):
    write_images(tmp_path, {"part_2.png": 2, "part_0.png": 0, "part_1.png": 1})
    (tmp_path / "notes.txt").write_text("not an image, ignored")
    camera = open_camera("replay", 0, folder=tmp_path)

    async def scenario() -> list[Any]:
        camera.start()
        return [await camera.frame_after(time.monotonic(), 1.0) for _ in range(5)]

    frames = run(scenario())
    assert [number_of(frame.image) for frame in frames] == [0, 1, 2, 0, 1]
    assert [frame.seq for frame in frames] == [1, 2, 3, 4, 5]
    assert all(frame.image.shape == (HEIGHT, WIDTH, 3) for frame in frames)
    assert all(a.monotonic <= b.monotonic for a, b in itertools.pairwise(frames))
    assert camera.latest() is frames[-1]
    health = camera.health()
    assert (health.state, health.frames, health.last_error) == (LinkState.CONNECTED, 5, None)
    camera.stop()
    with pytest.raises(CameraUnavailable, match="not started"):
        run(camera.frame_after(0.0, 1.0))


def test_triggered_folder_without_loop_stops_after_the_last_image(tmp_path, caplog):
    write_images(tmp_path, {"a.png": 1, "b.png": 2})
    camera = open_camera("once", 0, folder=tmp_path, loop=False, width=32)

    async def scenario() -> list[Any]:
        camera.start()
        return [await camera.frame_after(time.monotonic(), 1.0) for _ in range(2)]

    caplog.set_level(logging.INFO, logger="drivers.camera")
    frames = run(scenario())
    assert [number_of(frame.image) for frame in frames] == [1, 2]
    assert frames[0].image.shape == (24, 32, 3)  # width alone keeps the aspect ratio
    for _ in range(2):
        with pytest.raises(CameraUnavailable, match="were replayed"):
            run(camera.frame_after(time.monotonic(), 1.0))
    assert camera.health().state == LinkState.DISCONNECTED
    assert len(camera_records(caplog, logging.INFO, "stops")) == 1  # an end, not a fault
    assert not camera_records(caplog, logging.WARNING, "")
    camera.stop()
    assert camera_threads() == []  # its reader thread ends with it


def test_an_unreadable_image_is_skipped_with_one_warning(tmp_path, caplog):
    write_images(tmp_path, {"a.png": 1, "c.png": 3})
    (tmp_path / "b.png").write_bytes(b"\x89PNG but then the disk filled up")
    camera = open_camera("skips", 0, folder=tmp_path)

    async def scenario() -> list[int]:
        camera.start()
        return [number_of((await camera.frame_after(0.0, 1.0)).image) for _ in range(5)]

    assert run(scenario()) == [1, 3, 1, 3, 1]
    warnings = camera_records(caplog, logging.WARNING, "b.png")
    assert len(warnings) == 1, warnings
    assert "skips b.png" in warnings[0]
    assert camera.health().state == LinkState.CONNECTED
    camera.stop()


def test_a_folder_without_readable_images_makes_the_camera_unavailable(tmp_path, caplog):
    missing = open_camera("missing", 0, folder=tmp_path / "nowhere")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.jpg").write_bytes(b"not a jpeg")
    broken = open_camera("broken", 0, folder=tmp_path / "broken")

    async def scenario() -> None:
        for camera, reason in ((missing, "does not exist"), (broken, "can be read")):
            camera.start()
            for _ in range(3):
                with pytest.raises(CameraUnavailable, match=reason):
                    await camera.frame_after(0.0, 1.0)
            assert camera.health().state == LinkState.DISCONNECTED
            assert reason in (camera.health().last_error or "")

    run(scenario())
    missing.stop()
    broken.stop()
    assert len(camera_records(caplog, logging.WARNING, "'missing'")) == 1
    # One warning for the file, one for the camera; not one per call.
    assert len(camera_records(caplog, logging.WARNING, "'broken'")) == 2


async def read_ahead(camera: Any, within: float = 5.0) -> None:
    """Wait until a triggered folder camera holds its next image, read ahead (its private
    read-ahead is watched, so that no test has to guess how long a decode takes)."""
    deadline = time.monotonic() + within
    while not (camera._ahead is not None and camera._ahead.future.done()):
        assert time.monotonic() < deadline, f"no image read ahead within {within} s"
        await asyncio.sleep(0.002)


def reading_threads() -> list[int]:
    """The threads that are reading a folder camera's image now (any, not only the caller)."""
    folder_code = Path(drivers.camera.folder.__file__).resolve()
    reading = []
    for thread_id, top in sys._current_frames().items():
        frame = top
        while frame is not None:
            code = frame.f_code
            if code.co_name == "_read_next" and Path(code.co_filename).resolve() == folder_code:
                reading.append(thread_id)
                break
            frame = frame.f_back
    return reading


def large_noise_jpegs(folder: Path, count: int) -> list[np.ndarray]:
    """`count` 1920x1080 JPEGs of noise (slow to decode: about 2.4 MB each); their images."""
    rng = np.random.default_rng(7)
    images = []
    for index in range(count):
        path = folder / f"large_{index}.jpg"
        assert cv2.imwrite(str(path), rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8))
        images.append(cv2.imread(str(path)))
    return images


def test_the_next_image_is_read_ahead_so_a_trigger_does_not_wait_for_its_decode(tmp_path):
    expected = large_noise_jpegs(tmp_path, 3)
    data = np.frombuffer((tmp_path / "large_0.jpg").read_bytes(), np.uint8)
    decode_s = []
    for _ in range(3):
        started = time.perf_counter()
        cv2.imdecode(data, cv2.IMREAD_COLOR)
        decode_s.append(time.perf_counter() - started)
    camera = open_camera("ahead", 0, folder=tmp_path)

    async def scenario() -> tuple[Any, list[tuple[float, float, Any]]]:
        camera.start()
        first = await camera.frame_after(time.monotonic(), 5.0)
        triggers = []
        for _ in range(4):
            await read_ahead(camera)  # the model's time: the next image is decoded meanwhile
            trigger = time.monotonic()
            started = time.perf_counter()
            frame = await camera.frame_after(trigger, 5.0)
            triggers.append((time.perf_counter() - started, trigger, frame))
        return first, triggers

    try:
        first, triggers = run(scenario())
    finally:
        camera.stop()
    frames = [first] + [frame for _, _, frame in triggers]
    for frame, index in zip(frames, [0, 1, 2, 0, 1], strict=True):
        assert np.array_equal(frame.image, expected[index])
    # A trigger finds its image decoded: the best of four took a small part of the fastest
    # decode (slack for a busy machine; without the read-ahead each would take longer).
    fastest = min(took for took, _, _ in triggers)
    assert fastest < min(decode_s) / 4, (fastest, decode_s)
    # Stamped when handed out, not when decoded (before the trigger): it counts as taken after.
    assert all(frame.monotonic >= trigger for _, trigger, frame in triggers)
    assert [frame.seq for frame in frames] == [1, 2, 3, 4, 5]


def test_read_ahead_keeps_the_order_and_shows_a_change_to_the_folder_one_image_late(
    tmp_path, caplog
):
    write_images(tmp_path, {"a.png": 1, "b.png": 2, "c.png": 3})
    camera = open_camera("changes", 0, folder=tmp_path)

    async def next_number() -> int:
        await read_ahead(camera)
        return number_of((await camera.frame_after(time.monotonic(), 1.0)).image)

    async def scenario() -> list[int]:
        camera.start()
        numbers = [await next_number()]  # a; b is read ahead
        await read_ahead(camera)
        (tmp_path / "b.png").unlink()  # after it was read ahead: it still comes, once
        write_images(tmp_path, {"b2.png": 4})  # during the pass: it comes in the next one
        numbers += [await next_number() for _ in range(6)]
        return numbers

    try:
        assert run(scenario()) == [1, 2, 3, 1, 4, 3, 1]
    finally:
        camera.stop()
    assert not camera_records(caplog, logging.WARNING, "")


def test_a_read_ahead_that_found_no_image_is_not_kept_the_trigger_looks_again(tmp_path, caplog):
    write_images(tmp_path, {"a.png": 1})
    camera = open_camera("emptied", 0, folder=tmp_path)

    async def scenario() -> None:
        camera.start()
        assert number_of((await camera.frame_after(0.0, 1.0)).image) == 1
        await read_ahead(camera)  # a again (looping)
        (tmp_path / "a.png").unlink()
        assert number_of((await camera.frame_after(0.0, 1.0)).image) == 1  # one image late
        await read_ahead(camera)  # finds the folder empty
        write_images(tmp_path, {"b.png": 2})
        assert number_of((await camera.frame_after(0.0, 1.0)).image) == 2  # not that failure
        await read_ahead(camera)
        (tmp_path / "b.png").unlink()
        assert number_of((await camera.frame_after(0.0, 1.0)).image) == 2
        await read_ahead(camera)  # finds the folder empty again; so does the trigger
        with pytest.raises(CameraUnavailable, match="holds no images"):
            await camera.frame_after(0.0, 1.0)
        health = camera.health()
        assert health.state == LinkState.DISCONNECTED
        assert "holds no images" in (health.last_error or "")
        write_images(tmp_path, {"c.png": 3})
        assert number_of((await camera.frame_after(0.0, 1.0)).image) == 3
        assert camera.health().state == LinkState.CONNECTED

    caplog.set_level(logging.INFO, logger="drivers.camera")
    try:
        run(scenario())
    finally:
        camera.stop()
    assert len(camera_records(caplog, logging.WARNING, "is lost: the folder")) == 1
    assert len(camera_records(caplog, logging.INFO, "delivers")) == 1  # the recovery, once


def test_stop_during_a_read_ahead_waits_for_it_and_start_resumes_with_that_image(tmp_path):
    expected = large_noise_jpegs(tmp_path, 3)
    camera = open_camera("halt", 0, folder=tmp_path)

    async def scenario() -> list[Any]:
        camera.start()
        frames = [await camera.frame_after(time.monotonic(), 5.0)]
        # large_1 is being read ahead now (a decode of tens of milliseconds): catch it at it.
        deadline = time.monotonic() + 2.0
        while not reading_threads():
            assert time.monotonic() < deadline, "no read ahead seen in progress"
            await asyncio.sleep(0.0005)
        camera.stop()
        assert reading_threads() == []  # stop() waited for the read
        assert camera_threads() == []
        with pytest.raises(CameraUnavailable, match="not started"):
            await camera.frame_after(time.monotonic(), 1.0)
        camera.start()
        frames += [await camera.frame_after(time.monotonic(), 5.0) for _ in range(3)]
        camera.stop()
        assert reading_threads() == []
        return frames

    frames = run(scenario())
    # The image read ahead when stopped was put back in line, not skipped.
    for frame, index in zip(frames, [0, 1, 2, 0], strict=True):
        assert np.array_equal(frame.image, expected[index])
    assert camera_threads() == []


def test_a_folder_at_fps_plays_on_its_own_and_a_slow_reader_gets_the_newest(tmp_path):
    write_images(tmp_path, {f"{n:03d}.png": n for n in range(LEVELS)})
    camera = open_camera("free", 0, folder=tmp_path, fps=50)

    async def scenario() -> tuple[Any, Any]:
        camera.start()
        first = await camera.frame_after(time.monotonic(), 1.0)
        await asyncio.sleep(0.4)  # a slow model: about 20 frames go by
        skipped_to = await camera.frame_after(time.monotonic(), 1.0)
        return first, skipped_to

    try:
        first, later = run(scenario())
        assert later.seq - first.seq >= 10
        # The frame handed out is the one the grabber just made, not the next in line.
        assert number_of(later.image) == (number_of(first.image) + later.seq - first.seq) % LEVELS
        assert 30 <= camera.health().fps <= 70
        assert camera_threads() == ["camera-free"]
    finally:
        camera.stop()
    assert camera_threads() == []


# -- an MJPEG stream over HTTP ----------------------------------------------------------------


def test_stream_frames_arrive_and_frame_after_waits_for_a_fresh_one(stream):
    server, made = stream
    camera = open_camera("line", server.url)

    async def scenario() -> list[tuple[float, Any]]:
        camera.start()
        await camera.frame_after(time.monotonic(), 5.0)
        results = []
        for _ in range(5):
            await asyncio.sleep(0.03)  # triggers at arbitrary moments between frames
            trigger = time.monotonic()
            results.append((trigger, await camera.frame_after(trigger, 1.0)))
        return results

    try:
        results = run(scenario())
        for trigger, frame in results:
            assert frame.monotonic >= trigger
            # The image itself was made after the trigger (a little slack for the clock reads),
            # and reached the camera quickly.
            assert made.made(frame.image) >= trigger - 0.02
            assert frame.monotonic - made.made(frame.image) < 0.1
        seqs = [frame.seq for _, frame in results]
        assert seqs == sorted(set(seqs))
        health = camera.health()
        assert health.state == LinkState.CONNECTED
        assert health.frames >= 5
        assert 8 <= health.fps <= 30
        assert health.reconnects == 0
    finally:
        camera.stop()
    assert camera_threads() == []


def test_a_stream_with_latency_gives_only_frames_that_arrived_that_much_after_the_trigger(
    stream,
):
    # A camera whose frames arrive 0.25 s after they were taken: a frame that arrives 0.1 s
    # after the trigger was taken before it and must not be used for it.
    server, _made = stream
    camera = open_camera("slow", server.url, latency=0.25)

    async def scenario() -> list[tuple[float, Any, float]]:
        camera.start()
        await camera.frame_after(time.monotonic(), 5.0)
        results = []
        for _ in range(3):
            trigger = time.monotonic()
            frame = await camera.frame_after(trigger, 2.0)
            results.append((trigger, frame, time.monotonic()))
        return results

    try:
        for trigger, frame, returned in run(scenario()):
            assert frame.monotonic >= trigger
            assert returned - trigger >= 0.25
    finally:
        camera.stop()


def test_a_lost_stream_is_logged_once_and_recovers_with_a_reconnect(stream, caplog):
    server, _made = stream
    caplog.set_level(logging.INFO, logger="drivers.camera")
    camera = open_camera("line", server.url, reconnect_max=0.3, open_timeout=2.0)

    async def scenario() -> None:
        camera.start()
        await camera.frame_after(time.monotonic(), 5.0)
        waiting = asyncio.create_task(camera.frame_after(time.monotonic() + 10, 3.0))
        await asyncio.sleep(0.05)
        server.stop()
        started = time.monotonic()
        with pytest.raises(CameraUnavailable, match="is unavailable: the stream ended"):
            await waiting  # fails at the loss, not after its 3 s
        assert time.monotonic() - started < 1.0
        assert camera.health().state == LinkState.DISCONNECTED
        with pytest.raises(CameraUnavailable, match="disconnected"):
            await camera.frame_after(time.monotonic(), 3.0)
        await asyncio.sleep(1.5)  # several reconnect attempts fail meanwhile
        assert "refused" in (camera.health().last_error or "")
        server.start()  # same port
        await reconnected(camera, 5.0)
        frame = await camera.frame_after(time.monotonic(), 1.0)
        assert frame.image.shape == (HEIGHT, WIDTH, 3)
        health = camera.health()
        assert (health.state, health.reconnects) == (LinkState.CONNECTED, 1)

    try:
        run(scenario())
    finally:
        camera.stop()
    lost = camera_records(caplog, logging.WARNING, "")
    assert len(lost) == 1, lost
    assert "is lost: the stream ended" in lost[0]
    again = camera_records(caplog, logging.INFO, "again")
    assert len(again) == 1, again
    assert camera_threads() == []


def test_a_stream_that_stops_sending_counts_as_lost_after_open_timeout(stream, caplog):
    server, _made = stream
    camera = open_camera("hung", server.url, reconnect_max=0.2, open_timeout=0.5)

    async def scenario() -> None:
        camera.start()
        await camera.frame_after(time.monotonic(), 5.0)
        server.pause()  # connection open, nothing sent
        await asyncio.sleep(0.9)
        health = camera.health()
        assert health.state == LinkState.DISCONNECTED
        assert "no frame for" in (health.last_error or "")
        server.resume()
        await reconnected(camera, 5.0)
        await camera.frame_after(time.monotonic(), 1.0)
        assert camera.health().reconnects == 1

    try:
        run(scenario())
    finally:
        camera.stop()
    assert len(camera_records(caplog, logging.WARNING, "is lost: it sent no frame")) == 1


def test_an_unreachable_url_says_why_once_and_stop_ends_the_retries(caplog):
    url = f"http://127.0.0.1:{free_port()}/stream.mjpg"
    camera = open_camera("nobody", url, reconnect_max=0.1, open_timeout=1.0)
    camera.start()
    try:
        wait_until(
            lambda: camera.health().state == LinkState.DISCONNECTED, 5.0, "the failure noticed"
        )
        with pytest.raises(CameraUnavailable, match="refused the connection"):
            run(camera.frame_after(time.monotonic(), 1.0))
        time.sleep(0.5)  # retrying every 0.1 s or so
    finally:
        started = time.monotonic()
        camera.stop()
    assert time.monotonic() - started < 0.5
    assert camera_threads() == []
    failures = camera_records(caplog, logging.WARNING, "")
    assert len(failures) == 1, failures
    assert "cannot be opened" in failures[0]


def test_a_server_that_never_answers_times_out_after_open_timeout(caplog):
    with socket.socket() as silent:  # takes connections, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/stream.mjpg"
        camera = open_camera("mute", url, reconnect_max=0.1, open_timeout=0.3)
        camera.start()
        try:
            wait_until(
                lambda: camera.health().state == LinkState.DISCONNECTED, 3.0, "the timeout noticed"
            )
            assert camera.health().last_error == "it did not answer within 0.3 s"
        finally:
            camera.stop()
    assert camera_threads() == []
    assert len(camera_records(caplog, logging.WARNING, "cannot be opened")) == 1


def test_a_stopped_stream_camera_leaves_no_thread_and_can_start_again(stream):
    server, _made = stream
    camera = open_camera("restart", server.url)

    async def one_frame() -> Any:
        return await camera.frame_after(time.monotonic(), 5.0)

    camera.start()
    camera.start()  # idempotent
    first = run(one_frame())
    assert camera_threads() == ["camera-restart"]
    camera.stop()
    camera.stop()
    assert camera_threads() == []
    assert camera.health().state == LinkState.DISCONNECTED
    camera.start()
    try:
        assert run(one_frame()).seq > first.seq
        assert camera.health().reconnects == 0  # a restart is no reconnect
    finally:
        camera.stop()
    assert camera_threads() == []


def test_the_simulated_camera_serves_snapshots_and_keeps_its_port(stream):
    server, made = stream
    port = server.port
    with urllib.request.urlopen(server.snapshot_url, timeout=5) as response:
        assert response.headers["Content-Type"] == "image/jpeg"
        image = cv2.imdecode(np.frombuffer(response.read(), np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (HEIGHT, WIDTH, 3)
    assert number_of(image) in {n % LEVELS for n in made.made_at}
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(server.url.replace("stream.mjpg", "other"), timeout=5)
    server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.snapshot_url, timeout=5)
    server.start()
    assert server.port == port
    with urllib.request.urlopen(server.snapshot_url, timeout=5) as response:
        assert response.status == 200


# -- choosing a source ------------------------------------------------------------------------


def test_open_camera_picks_the_source_and_rejects_what_it_does_not_know(tmp_path):
    assert "video device 2" in open_camera("usb", "2").describe()
    secret = open_camera("ip", "rtsp://admin:hunter2@10.0.0.9:554/stream1")
    assert "hunter2" not in secret.describe()
    assert "admin:***@10.0.0.9:554" in secret.describe()
    assert "one image per trigger" in open_camera("f", 0, folder=tmp_path).describe()
    assert "at 5 fps" in open_camera("f", 0, folder=tmp_path, fps=5).describe()
    for source in ("ftp://camera/x", "/dev/video0", -1):
        with pytest.raises(InvalidCameraSource):
            open_camera("bad", source)
    with pytest.raises(InvalidCameraSource, match="fps"):
        open_camera("bad", 0, folder=tmp_path, fps=0)
