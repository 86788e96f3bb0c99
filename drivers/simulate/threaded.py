"""A server that runs its own asyncio loop in a thread, so that tests and the demo can start,
stop and restart it from ordinary code while clients talk to it over the network."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, Self, TypeVar

__all__ = ["ThreadedServer"]

T = TypeVar("T")


class ThreadedServer:
    """Subclasses implement `_serve()`: set up, call `self._ready()`, then return once
    `self._stopping` is set (cleaning up on the way out)."""

    thread_name = "simulator"
    start_timeout_s = 10.0

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    def start(self) -> None:
        """Serve; returns once `_serve()` says it is ready, raising what kept it from that."""
        if self._thread is not None:
            return
        self._started.clear()
        self._start_error = None
        self._thread = threading.Thread(
            target=self._thread_main, name=self.thread_name, daemon=True
        )
        self._thread.start()
        self._started.wait(self.start_timeout_s)
        if self._start_error is not None:
            self._thread.join(5)
            self._thread = None
            raise self._start_error

    def stop(self) -> None:
        """Ask `_serve()` to finish and wait for it."""
        if self._thread is None or self._loop is None or self._stopping is None:
            return
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(15)
        self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    async def _serve(self) -> None:
        raise NotImplementedError

    def _ready(self) -> None:
        self._started.set()

    def _call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run a coroutine on the server's loop and return its result."""
        if self._loop is None:
            coroutine.close()  # never awaited: close it to avoid a RuntimeWarning
            raise RuntimeError("the simulated server is not running")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._run())
        except Exception as exc:  # noqa: BLE001 (handed to start(), which raises it)
            self._start_error = exc
            self._started.set()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        await self._serve()
