"""Evidence images: inspected frames with the model's findings drawn on them, saved as JPEG files
in a size- and age-capped folder tree, off the inspection's critical path.

Layout: `<directory>/<station>/<YYYY-MM-DD>/<HHMMSS.mmm>_<part or 'nopart'>_<ok|ng|error>.jpg`.
Dates and times in the names are UTC, like every timestamp the agent publishes: names then sort
in time order and age correctly across daylight-saving changes and a later change of the
gateway's time zone.

Images are evidence, not data: the verdict has already gone to the PLC and the result event to
the outbox when an image is offered. So a full queue drops the image (counted, one WARNING per
episode), and a disk error loses it (counted, one ERROR per episode, because someone must look at
the disk), but neither ever blocks or fails the inspection.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import heapq
import logging
import os
import queue
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, Protocol

import cv2
import numpy as np
import numpy.typing as npt

__all__ = [
    "ArchiveStats",
    "BoxLike",
    "EvidenceImage",
    "ImageArchive",
    "Verdict",
    "draw_overlay",
    "evidence_path",
    "safe_name",
]

log = logging.getLogger(__name__)

Verdict = Literal["ok", "ng", "error"]
_VERDICTS: Final = ("ok", "ng", "error")

# A part id keeps at most this many characters and UTF-8 bytes in a file name: long enough for
# serial numbers and DMC contents, short enough that the whole name stays far below the 255-byte
# limit of ext4, FAT and exFAT whatever the script of the id.
_PART_MAX_CHARS: Final = 64
_PART_MAX_BYTES: Final = 128

# Without a save, the worker still wakes this often to delete images that have grown too old.
_IDLE_CHECK_S: Final = 60.0
# The running byte total is corrected by a fresh scan this often, in case files were removed or
# added by hand (the total would otherwise drift for months).
_RESCAN_S: Final = 24 * 3600.0
# At start, JPEGs modified this close to the newest one are checked for completeness: only those
# can still have been in the page cache when the power failed (Linux writes dirty pages back
# within about 30 s, ext4 commits its journal every 5 s).
_POWER_CUT_WINDOW_S: Final = 120.0

_DAY_RE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TIME_RE: Final = re.compile(r"^(\d{2})(\d{2})(\d{2})\.(\d{3})_")

_NG_COLOUR: Final = (0, 0, 255)
_OK_COLOUR: Final = (0, 160, 0)
_ERROR_COLOUR: Final = (0, 140, 255)
_BOX_COLOUR: Final = (0, 0, 255)
_ROI_COLOUR: Final = (255, 255, 0)
_TEXT_COLOUR: Final = (255, 255, 255)
_HEAT_ALPHA: Final = 0.4
_FONT: Final = cv2.FONT_HERSHEY_SIMPLEX


class BoxLike(Protocol):
    """What the overlay needs of a detection box (`inference.vision.adapters.Box` fits)."""

    @property
    def x1(self) -> float: ...
    @property
    def y1(self) -> float: ...
    @property
    def x2(self) -> float: ...
    @property
    def y2(self) -> float: ...
    @property
    def score(self) -> float: ...
    @property
    def class_name(self) -> str | None: ...


Roi = tuple[int, int, int, int]  # x, y, width, height in frame pixels


@dataclass(slots=True)
class EvidenceImage:
    """One inspected frame and what the models found in it.

    The archive keeps a reference to `frame` until the image is saved: the caller must not
    modify the array after offering it (camera frames are fresh arrays, so nothing is copied).
    """

    station: str
    ts_ms: int  # capture time, ms since the epoch (UTC)
    part_id: str | None
    verdict: Verdict
    frame: npt.NDArray[np.uint8]  # BGR (or gray) uint8
    boxes: Sequence[BoxLike] = ()  # in frame pixels
    anomaly_maps: Sequence[tuple[Roi, npt.NDArray[np.floating]]] = ()  # map 0..1 per ROI
    rois: Sequence[tuple[str, int, int, int, int]] = ()  # name, x, y, width, height
    label: str = ""  # short text for the corner, e.g. "NG scratch 0.97"

    def __post_init__(self) -> None:
        if self.verdict not in _VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(_VERDICTS)}, not {self.verdict!r}")


@dataclass(frozen=True, slots=True)
class ArchiveStats:
    """Counters since the archive started, and what is on disk now."""

    saved: int
    dropped: int  # offered while the queue was full (or after close)
    bytes: int  # JPEG bytes under the directory
    files: int
    deleted_for_size: int
    deleted_for_age: int
    errors: int  # images lost to disk errors, and failed deletions or scans
    failing: bool  # the last disk operation failed
    last_error: str | None


def safe_name(
    text: str, *, max_chars: int = _PART_MAX_CHARS, max_bytes: int = _PART_MAX_BYTES
) -> str:
    """`text` made safe as one component of a file name on any file system; '' if nothing is left.

    Letters and digits of any script are kept (normalised to NFKC, so look-alike full-width
    characters become plain ones); '-', '_' and single dots are kept; everything else (path
    separators, control characters, spaces, characters FAT forbids) becomes '-'. Runs of dots
    collapse, so '..' never survives, and leading or trailing dots and dashes are removed.
    """
    normalised = unicodedata.normalize("NFKC", text)
    kept = "".join(c if c.isalnum() or c in "-_." else "-" for c in normalised)
    kept = re.sub(r"\.{2,}", ".", kept)
    kept = re.sub(r"-{2,}", "-", kept).strip(".-")
    kept = kept[:max_chars]
    while len(kept.encode()) > max_bytes:
        kept = kept[:-1]
    return kept.strip(".-")


def evidence_path(directory: Path, record: EvidenceImage) -> Path:
    """Where `record` is saved (unless that name is taken: see `_unused`)."""
    moment = dt.datetime.fromtimestamp(record.ts_ms / 1000, dt.UTC)
    station = _station_folder(record.station)
    part = "nopart" if record.part_id is None else (safe_name(record.part_id) or "badpart")
    name = f"{moment:%H%M%S}.{moment.microsecond // 1000:03d}_{part}_{record.verdict}.jpg"
    return directory / station / f"{moment:%Y-%m-%d}" / name


def _station_folder(station: str) -> str:
    return safe_name(station) or "station"


def draw_overlay(record: EvidenceImage) -> npt.NDArray[np.uint8]:
    """A copy of the frame with anomaly heat maps, ROI rectangles, boxes and the label drawn on it.

    Heat maps (JET, blended at 40 %) are drawn inside their ROI only, resized to it when their size
    differs; boxes are labelled with class and score; the label sits in the top-left corner on a
    background in the verdict's colour. The record's frame is never modified.
    """
    frame = record.frame
    if frame.ndim == 2:
        image = np.asarray(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
    else:
        image = frame.copy()
    height, width = image.shape[:2]
    thickness = max(1, round(min(height, width) / 320))
    font_scale = max(0.4, min(height, width) / 800)

    for roi, anomaly_map in record.anomaly_maps:
        _blend_heat_map(image, roi, anomaly_map)
    for name, x, y, w, h in record.rois:
        cv2.rectangle(image, (x, y), (x + w - 1, y + h - 1), _ROI_COLOUR, thickness)
        if name:
            _text(image, name, (x, y), font_scale, _ROI_COLOUR, above=True, dark_text=True)
    for box in record.boxes:
        top_left = (round(box.x1), round(box.y1))
        # x2 and y2 are exclusive edges: the box's last pixels are one before them.
        bottom_right = (max(round(box.x2) - 1, top_left[0]), max(round(box.y2) - 1, top_left[1]))
        cv2.rectangle(image, top_left, bottom_right, _BOX_COLOUR, thickness)
        caption = f"{box.class_name or '?'} {box.score:.2f}"
        _text(image, caption, top_left, font_scale, _BOX_COLOUR, above=True)
    if record.label:
        colour = {"ok": _OK_COLOUR, "ng": _NG_COLOUR}.get(record.verdict, _ERROR_COLOUR)
        _text(image, record.label, (0, 0), font_scale * 1.3, colour, above=False)
    return image


def _blend_heat_map(
    image: npt.NDArray[np.uint8], roi: Roi, anomaly_map: npt.NDArray[np.floating]
) -> None:
    """Blend `anomaly_map` (0..1) as a JET heat map into the ROI, clipped to the image."""
    x, y, w, h = roi
    if w <= 0 or h <= 0:
        return
    values = np.nan_to_num(np.asarray(anomaly_map, dtype=np.float32).squeeze(), nan=0.0)
    if values.ndim != 2:
        raise ValueError(f"an anomaly map must be 2-D (h, w), not shaped {anomaly_map.shape}")
    if values.shape != (h, w):
        resized = cv2.resize(values, (w, h), interpolation=cv2.INTER_LINEAR)
        values = np.asarray(resized, dtype=np.float32)
    heat = cv2.applyColorMap((np.clip(values, 0.0, 1.0) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    # The part of the ROI that lies inside the image, in image and in map coordinates.
    left, top = max(x, 0), max(y, 0)
    right, bottom = min(x + w, image.shape[1]), min(y + h, image.shape[0])
    if right <= left or bottom <= top:
        return
    region = image[top:bottom, left:right]
    heat_part = heat[top - y : bottom - y, left - x : right - x]
    region[:] = cv2.addWeighted(region, 1.0 - _HEAT_ALPHA, heat_part, _HEAT_ALPHA, 0.0)


def _text(
    image: npt.NDArray[np.uint8],
    text: str,
    anchor: tuple[int, int],
    font_scale: float,
    background: tuple[int, int, int],
    *,
    above: bool,
    dark_text: bool = False,
) -> None:
    """Draw `text` on a filled background at `anchor`: just above it, or with its top-left there.

    Kept inside the image, so a box at the top edge still gets a readable caption.
    """
    # Hershey fonts draw ASCII only: anything else would come out as '?' boxes anyway.
    text = text.encode("ascii", "replace").decode()
    text_thickness = max(1, round(font_scale * 1.5))
    (text_w, text_h), baseline = cv2.getTextSize(text, _FONT, font_scale, text_thickness)
    pad = max(2, text_h // 4)
    box_w, box_h = text_w + 2 * pad, text_h + baseline + 2 * pad
    x, y = anchor
    top = y - box_h if above else y
    top = min(max(top, 0), max(image.shape[0] - box_h, 0))
    left = min(max(x, 0), max(image.shape[1] - box_w, 0))
    cv2.rectangle(image, (left, top), (left + box_w - 1, top + box_h - 1), background, cv2.FILLED)
    colour = (0, 0, 0) if dark_text else _TEXT_COLOUR
    origin = (left + pad, top + pad + text_h)
    cv2.putText(image, text, origin, _FONT, font_scale, colour, text_thickness, cv2.LINE_AA)


class _Stop:
    """Queued by close(): everything offered before it is saved first."""


_STOP: Final = _Stop()


@dataclass(order=True, slots=True)
class _Stored:
    """One JPEG in the archive, ordered oldest first."""

    ts_ms: int
    path: str
    size: int = field(compare=False)


class ImageArchive:
    """Saves evidence images in its own thread, within a byte cap and a maximum age.

    `offer()` only queues the image; the worker thread draws the overlay, encodes the JPEG and
    writes it. The caps are enforced after every save, every minute when idle, and at start,
    where the worker first scans what is already there (so construction itself does no I/O);
    the oldest images go first, and day folders left empty are removed.

    One archive can serve several stations, with caps over all of them; or each station gets its
    own archive (`station=` its name), with caps over that station's folder only. Two archives
    must never cover the same folder: each would think the other's images take no room.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        max_age_s: float,
        jpeg_quality: int = 90,
        queue_size: int = 16,
        station: str | None = None,
    ) -> None:
        if max_bytes <= 0 or max_age_s <= 0:
            raise ValueError("max_bytes and max_age_s must be positive")
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be within 1..100, not {jpeg_quality}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, not {queue_size}")
        self.directory = Path(directory)
        # The tree that the scan and the caps cover: one station's folder when several archives
        # (one per station) share a directory, so that they neither count nor delete each
        # other's images.
        self.scope = (
            self.directory if station is None else self.directory / _station_folder(station)
        )
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.jpeg_quality = jpeg_quality
        self._queue: queue.Queue[EvidenceImage | _Stop] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()  # counters, shared by offer() callers and the worker
        self._idle = threading.Condition(self._lock)
        self._pending = 1  # the start scan, then each image offered and not yet handled
        self._closed = False
        self._dropping = False
        self._dropped_in_episode = 0
        self._failing = False
        self._failed_in_episode = 0
        self._overlay_failed = False
        # A heap, oldest first; about 200 bytes per image (10 000 images: 2 MB), so that a
        # save never has to list the tree to find what to delete.
        self._stored: list[_Stored] = []
        self._bytes = 0
        self._scanned_at: float | None = None
        self._saved = self._dropped = self._errors = 0
        self._deleted_for_size = self._deleted_for_age = 0
        self._last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="evidence-images", daemon=True)
        self._thread.start()

    def offer(self, record: EvidenceImage) -> bool:
        """Queue `record` for saving; never blocks. False (and counted as dropped) if the queue is
        full or the archive is closed."""
        with self._lock:
            if self._closed:
                self._dropped += 1
                return False
            try:
                self._queue.put_nowait(record)
            except queue.Full:
                self._dropped += 1
                self._dropped_in_episode += 1
                if not self._dropping:
                    self._dropping = True
                    log.warning(
                        "Dropping evidence images: %d are already waiting to be saved, so the "
                        "disk is slower than the rate of images. Inspection results are not "
                        "affected; only their pictures are missing.",
                        self._queue.maxsize,
                    )
                return False
            self._pending += 1
            # The episode ends once the queue has drained to half: under a steady overload a
            # slot frees up after every save, which must not log a new episode every time.
            if self._dropping and self._queue.qsize() <= self._queue.maxsize // 2:
                self._dropping = False
                log.info(
                    "Evidence images are queued again; %d were dropped while the queue was full.",
                    self._dropped_in_episode,
                )
                self._dropped_in_episode = 0
            return True

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until the start scan is done and every image offered so far has been saved (or
        has failed); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Save what is queued, then stop the worker. Idempotent; later offers are dropped."""
        with self._lock:
            already = self._closed
            self._closed = True
        if not already:
            # Waits only while the worker makes room, which it does by saving.
            with contextlib.suppress(queue.Full):
                self._queue.put(_STOP, timeout=timeout)
        self._thread.join(timeout)

    def stats(self) -> ArchiveStats:
        """Counters since start and the archive's current size."""
        with self._lock:
            return ArchiveStats(
                saved=self._saved,
                dropped=self._dropped,
                bytes=self._bytes,
                files=len(self._stored),
                deleted_for_size=self._deleted_for_size,
                deleted_for_age=self._deleted_for_age,
                errors=self._errors,
                failing=self._failing,
                last_error=self._last_error,
            )

    # The worker thread ------------------------------------------------------------------------

    def _run(self) -> None:
        self._guarded(self._maintain)  # the start scan, then the caps
        self._handled()
        while True:
            try:
                item = self._queue.get(timeout=_IDLE_CHECK_S)
            except queue.Empty:
                self._guarded(self._maintain)
                continue
            if isinstance(item, _Stop):
                return
            try:
                self._guarded(self._save, item)
                self._guarded(self._maintain)
            finally:
                self._handled()

    def _guarded(self, action: Callable[..., None], *args: EvidenceImage) -> None:
        """Run `action`, turning any exception into a counted error: a bug (or an odd record)
        must not stop the thread, or every later image would be dropped."""
        try:
            action(*args)
        except Exception as error:  # noqa: BLE001 - logged with its traceback by _failed
            self._failed(f"unexpected {type(error).__name__}: {error}", exc_info=True)

    def _handled(self) -> None:
        with self._idle:
            self._pending -= 1
            self._idle.notify_all()

    def _maintain(self) -> None:
        """Rescan when due (or when the last scan failed), then enforce the caps."""
        scanned_at = self._scanned_at
        if scanned_at is None or time.monotonic() - scanned_at > _RESCAN_S:
            self._scan()
        self._enforce_caps()

    def _save(self, record: EvidenceImage) -> None:
        target = evidence_path(self.directory, record)
        try:
            image = draw_overlay(record)
        except Exception:
            # A malformed anomaly map or box must not cost the evidence: save the plain frame.
            if not self._overlay_failed:
                self._overlay_failed = True
                log.warning(
                    "Could not draw the findings on an evidence image of station %s; saving "
                    "the plain frame instead (reported once).",
                    record.station,
                    exc_info=True,
                )
            image = record.frame
        encoded, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not encoded:
            self._failed(f"OpenCV could not encode a {image.shape} image as JPEG")
            return
        data = jpeg.tobytes()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target = _unused(target)
            _write_atomically(target, data)
        except OSError as error:
            self._failed(f"cannot write {target}: {error}")
            return
        with self._lock:
            self._saved += 1
            self._bytes += len(data)
            heapq.heappush(self._stored, _Stored(record.ts_ms, str(target), len(data)))
        self._succeeded()

    def _scan(self) -> None:
        """Rebuild the index and byte total from the tree; remove what a crash left behind."""
        stored: list[_Stored] = []
        try:
            if self.scope.exists():
                stored = self._scan_tree()
        except OSError as error:
            self._failed(f"cannot scan {self.scope}: {error}")
            return
        heapq.heapify(stored)
        with self._lock:
            self._stored = stored
            self._bytes = sum(item.size for item in stored)
            self._scanned_at = time.monotonic()

    def _scan_tree(self) -> list[_Stored]:
        found: list[tuple[Path, os.stat_result]] = []
        day_folders: list[Path] = []

        def unreadable(error: OSError) -> None:
            if Path(error.filename or "") == self.scope:
                raise error
            self._failed(f"cannot list {error.filename}: {error.strerror}")

        for folder, _dirs, files in os.walk(self.scope, onerror=unreadable):
            base = Path(folder)
            if _is_day_folder(base) and base != self.scope:
                day_folders.append(base)
            for name in files:
                path = base / name
                if _is_temp_name(name):
                    # Half written when the agent or the power stopped: never a finished image.
                    _remove(path)
                elif name.lower().endswith((".jpg", ".jpeg")):
                    with contextlib.suppress(FileNotFoundError):
                        found.append((path, path.stat()))
        for day_folder in day_folders:
            _remove_folder(day_folder)  # only succeeds when it is empty
        if not found:
            return []
        newest = max(info.st_mtime for _, info in found)
        stored = []
        for path, info in found:
            if info.st_mtime > newest - _POWER_CUT_WINDOW_S and not _complete_jpeg(path):
                log.warning("Removing the evidence image %s: a power cut left it incomplete.", path)
                _remove(path)
                _remove_empty_day_folder(path.parent)
                continue
            ts_ms = _timestamp_from_path(path)
            if ts_ms is None:
                ts_ms = int(info.st_mtime * 1000)
            stored.append(_Stored(ts_ms, str(path), info.st_size))
        return stored

    def _enforce_caps(self) -> None:
        cutoff_ms = int((time.time() - self.max_age_s) * 1000)
        while True:
            with self._lock:
                if not self._stored:
                    return
                oldest = self._stored[0]
                if oldest.ts_ms < cutoff_ms:
                    reason = "age"
                elif self._bytes > self.max_bytes:
                    reason = "size"
                else:
                    return
                heapq.heappop(self._stored)
                # Forgotten even when the deletion fails: counting it would make every later
                # save delete the whole archive to get under a cap it can never reach.
                self._bytes -= oldest.size
                if reason == "age":
                    self._deleted_for_age += 1
                else:
                    self._deleted_for_size += 1
            path = Path(oldest.path)
            try:
                path.unlink(missing_ok=True)
            except OSError as error:
                self._failed(f"cannot delete {path}: {error}")
                continue
            _remove_empty_day_folder(path.parent)

    def _failed(self, reason: str, *, exc_info: bool = False) -> None:
        """Count a lost image (or a failed scan or deletion); log the first of an episode.

        `exc_info` marks an unexpected error: a bug, logged with its traceback.
        """
        with self._lock:
            self._errors += 1
            self._failed_in_episode += 1
            self._last_error = reason
            first = not self._failing
            self._failing = True
        if first:
            advice = (
                "This is a bug: please report it with the traceback below"
                if exc_info
                else "Check that the disk is mounted, writable and not full"
            )
            log.error(
                "Evidence images are being lost: %s. %s; saving is retried with every image "
                "(reported once until it works).",
                reason,
                advice,
                exc_info=exc_info,
            )

    def _succeeded(self) -> None:
        with self._lock:
            if not self._failing:
                return
            self._failing = False
            failures, self._failed_in_episode = self._failed_in_episode, 0
        log.info("Evidence images are being saved again, after %d failed attempts.", failures)


def _write_atomically(target: Path, data: bytes) -> None:
    """Write `data` to a temporary name beside `target`, then rename it into place.

    The rename means the final name never holds a half-written file when the agent stops or
    crashes. There is no fsync: evidence images are not the inspection's record (the verdict and
    the result event are), an fsync per image would cost tens of milliseconds and extra wear on
    an SD card, and a power cut can at worst lose the images of the last few seconds. Those can
    then be left empty or truncated under their final names (delayed allocation), so the scan at
    start checks the newest files and removes incomplete ones.
    """
    temp = target.with_name(f".{target.name}.tmp")
    try:
        with temp.open("wb") as file:
            file.write(data)
        os.replace(temp, target)
    except OSError:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def _is_temp_name(name: str) -> bool:
    """True for the temporary names `_write_atomically` uses (hidden, so viewers skip them)."""
    return name.startswith(".") and name.endswith(".jpg.tmp")


def _unused(target: Path) -> Path:
    """`target`, or with a counter added to the part id when that name is taken (two images of
    one part in the same millisecond): an image is never overwritten."""
    if not target.exists():
        return target
    stem, verdict = target.stem.rsplit("_", 1)
    for count in range(2, 1000):
        candidate = target.with_name(f"{stem}-{count}_{verdict}{target.suffix}")
        if not candidate.exists():
            return candidate
    raise FileExistsError(f"{target} and 998 variants of its name already exist")


def _timestamp_from_path(path: Path) -> int | None:
    """The capture time in the file's name and day folder (UTC), or None if they are not ours."""
    match = _TIME_RE.match(path.name)
    day = path.parent.name
    if match is None or not _DAY_RE.match(day):
        return None
    hours, minutes, seconds, millis = (int(part) for part in match.groups())
    try:
        moment = dt.datetime.fromisoformat(day).replace(
            hour=hours, minute=minutes, second=seconds, tzinfo=dt.UTC
        )
    except ValueError:
        return None
    return int(moment.timestamp()) * 1000 + millis


def _complete_jpeg(path: Path) -> bool:
    """True if the file starts with a JPEG's start marker and ends with its end marker."""
    try:
        with path.open("rb") as file:
            start = file.read(2)
            file.seek(0, os.SEEK_END)
            if file.tell() < 4:
                return False
            file.seek(-2, os.SEEK_END)
            end = file.read(2)
    except OSError:
        return False
    return start == b"\xff\xd8" and end == b"\xff\xd9"


def _is_day_folder(path: Path) -> bool:
    return _DAY_RE.match(path.name) is not None


def _remove_empty_day_folder(folder: Path) -> None:
    if _is_day_folder(folder):
        _remove_folder(folder)


def _remove_folder(folder: Path) -> None:
    # rmdir fails when the folder is not empty, which is exactly when it must stay.
    with contextlib.suppress(OSError):
        folder.rmdir()


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
