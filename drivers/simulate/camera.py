"""A simulated IP camera: an HTTP server that serves an MJPEG stream and single JPEG snapshots.

`SimulatedCamera(frame_source, fps=10)` calls `frame_source()` `fps` times a second, encodes the
image as JPEG and serves it to every client of `/stream.mjpg` (multipart/x-mixed-replace, one part
per frame, each with its Content-Length so a reader never waits for the next boundary) and as
`/snapshot.jpg` (the newest frame). `stop()` closes every connection, as a camera that loses power
would; `start()` again serves on the same port, so a test can prove that a client reconnects.
`pause()` keeps connections open but sends nothing, as a camera whose encoder hangs would.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

import cv2
import numpy as np

__all__ = ["SimulatedCamera"]

log = logging.getLogger(__name__)

_BOUNDARY = "frame"
_JPEG_QUALITY = 90
# How long a stream handler waits for the next frame before it checks whether the server stops.
_HANDLER_POLL_S = 0.2


class _FrameBoard:
    """The newest encoded frame, shared by the producer thread and every client."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.jpeg: bytes | None = None
        self.seq = 0
        self.produced_at = 0.0  # time.monotonic() when the newest frame was encoded
        self.closing = False

    def put(self, jpeg: bytes) -> None:
        with self.changed:
            self.jpeg = jpeg
            self.seq += 1
            self.produced_at = time.monotonic()
            self.changed.notify_all()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], camera: SimulatedCamera) -> None:
        self.camera = camera
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        camera = self.server.camera
        path = self.path.split("?", 1)[0]
        if path == "/stream.mjpg":
            camera._serve_stream(self)
        elif path == "/snapshot.jpg":
            camera._serve_snapshot(self)
        else:
            self.send_error(HTTPStatus.NOT_FOUND, "only /stream.mjpg and /snapshot.jpg exist")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("Simulated camera: " + format, *args)  # noqa: G003 (http.server's format)


class SimulatedCamera:
    """An MJPEG-over-HTTP camera for tests and the demo; see the module docstring.

    `frame_source` returns a BGR (or gray) uint8 image; it is called once in `start()` and then
    `fps` times a second from the server's frame thread.
    """

    def __init__(
        self,
        frame_source: Callable[[], np.ndarray],
        fps: float = 10,
        port: int = 0,
        host: str = "127.0.0.1",
    ) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, not {fps}")
        self.frame_source = frame_source
        self.fps = fps
        self.host = host
        self._port = port
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._handlers: set[threading.Thread] = set()
        self._handlers_lock = threading.Lock()
        self._stopping = threading.Event()
        self._paused = threading.Event()
        self._board = _FrameBoard()

    @property
    def port(self) -> int:
        """The TCP port; chosen when first started if 0 was asked for, then kept."""
        return self._port

    @property
    def url(self) -> str:
        """The stream's URL, e.g. http://127.0.0.1:8081/stream.mjpg."""
        return f"http://{self.host}:{self._port}/stream.mjpg"

    @property
    def snapshot_url(self) -> str:
        """The URL of a single JPEG of the newest frame."""
        return f"http://{self.host}:{self._port}/snapshot.jpg"

    @property
    def running(self) -> bool:
        """Whether the server is started."""
        return self._server is not None

    @property
    def last_frame_at(self) -> float:
        """time.monotonic() when the newest frame was produced (0.0 before the first)."""
        return self._board.produced_at

    def start(self) -> None:
        """Serve (again, on the same port); returns once the port listens and a frame is ready."""
        if self._server is not None:
            return
        self._stopping.clear()
        self._paused.clear()
        self._board = _FrameBoard()
        self._board.put(self._encode())
        self._server = _Server((self.host, self._port), self)
        self._port = self._server.server_address[1]
        self._threads = [
            threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.1},
                name=f"simulated-camera-{self._port}",
                daemon=True,
            ),
            threading.Thread(
                target=self._produce, name=f"simulated-camera-{self._port}-frames", daemon=True
            ),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop serving and close every open connection; waits for the server's threads."""
        server = self._server
        if server is None:
            return
        self._stopping.set()
        with self._board.changed:
            self._board.closing = True
            self._board.changed.notify_all()
        server.shutdown()
        server.server_close()
        with self._handlers_lock:
            handlers = list(self._handlers)
        for thread in [*self._threads, *handlers]:
            thread.join(5)
        self._threads = []
        self._server = None

    def pause(self) -> None:
        """Keep connections open but send no more frames, as a hung encoder would."""
        self._paused.set()

    def resume(self) -> None:
        """Send frames again after `pause()`."""
        self._paused.clear()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _encode(self) -> bytes:
        image = self.frame_source()
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
        if not ok:
            raise ValueError("the frame source gave an image that cannot be encoded as JPEG")
        return encoded.tobytes()

    def _produce(self) -> None:
        period = 1.0 / self.fps
        next_at = time.monotonic() + period
        while not self._stopping.wait(max(0.0, next_at - time.monotonic())):
            next_at += period
            if next_at < time.monotonic():  # fell behind (slow frame source): do not burst
                next_at = time.monotonic() + period
            if self._paused.is_set():
                continue
            try:
                jpeg = self._encode()
            except Exception:  # a test's frame source failed: keep serving the last frame
                log.exception("The simulated camera's frame source failed.")
                continue
            self._board.put(jpeg)

    def _serve_snapshot(self, handler: _Handler) -> None:
        with self._board.changed:
            jpeg = self._board.jpeg
        if jpeg is None or self._paused.is_set():
            handler.send_error(HTTPStatus.SERVICE_UNAVAILABLE, "no frame yet")
            return
        handler.send_response(HTTPStatus.OK)
        handler.send_header("Content-Type", "image/jpeg")
        handler.send_header("Content-Length", str(len(jpeg)))
        handler.send_header("Cache-Control", "no-store")
        handler.end_headers()
        with contextlib.suppress(OSError):
            handler.wfile.write(jpeg)

    def _serve_stream(self, handler: _Handler) -> None:
        me = threading.current_thread()
        with self._handlers_lock:
            self._handlers.add(me)
        try:
            handler.send_response(HTTPStatus.OK)
            handler.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={_BOUNDARY}")
            handler.send_header("Cache-Control", "no-store")
            handler.send_header("Connection", "close")
            handler.end_headers()
            sent_seq = 0
            board = self._board
            while True:
                with board.changed:
                    while not board.closing and (board.seq == sent_seq or self._paused.is_set()):
                        board.changed.wait(_HANDLER_POLL_S)
                    if board.closing:
                        break
                    jpeg, sent_seq = board.jpeg, board.seq
                if jpeg is None:
                    continue
                part = (
                    f"--{_BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                    f"Content-Length: {len(jpeg)}\r\n\r\n"
                ).encode("ascii")
                handler.wfile.write(part + jpeg + b"\r\n")
                handler.wfile.flush()
        except OSError:
            pass  # the client went away
        finally:
            # Close the socket now (not when the handler returns) so the client sees the end.
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)
            with self._handlers_lock:
                self._handlers.discard(me)
