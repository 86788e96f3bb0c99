"""Evidence images: named by station, day, time, part and verdict; written atomically in the
archive's own thread; kept within a byte cap and a maximum age (oldest first, also at start);
a full queue or a broken disk loses images, counted and logged once, and never blocks or raises."""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from inference.vision.adapters import Box
from inference.vision.evidence import (
    EvidenceImage,
    ImageArchive,
    Verdict,
    draw_overlay,
    safe_name,
)

DAY_S = 24 * 3600.0
LONG_AGO_S = 100 * 365 * DAY_S  # no age cap in the tests that are not about it


def noise(height: int = 48, width: int = 64, seed: int = 0) -> npt.NDArray[np.uint8]:
    """A frame that JPEG cannot compress much, so every image has about the same size."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def record(
    ts_ms: int,
    part_id: str | None = "P1",
    verdict: Verdict = "ng",
    *,
    station: str = "press1",
    frame: npt.NDArray[np.uint8] | None = None,
) -> EvidenceImage:
    return EvidenceImage(
        station=station,
        ts_ms=ts_ms,
        part_id=part_id,
        verdict=verdict,
        frame=noise(seed=ts_ms % 1000) if frame is None else frame,
        label=f"{verdict.upper()} 0.97",
    )


def ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


def day_of(ts_ms: int) -> str:
    return f"{dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC):%Y-%m-%d}"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def jpegs(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))


def everything(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.jpg"))


def jpeg_bytes(seed: int = 0) -> bytes:
    ok, data = cv2.imencode(".jpg", noise(seed=seed))
    assert ok
    return data.tobytes()


def saved_size(evidence: EvidenceImage) -> int:
    """About the size of one saved image (the tests' frames are noise: all alike)."""
    ok, data = cv2.imencode(".jpg", draw_overlay(evidence), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return len(data)


def put_file(path: Path, data: bytes, *, age_s: float | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if age_s is not None:
        moment = time.time() - age_s
        os.utime(path, (moment, moment))


def test_files_are_named_by_station_day_time_part_and_verdict(tmp_path: Path):
    root = tmp_path / "images"
    moment = ms(dt.datetime(2024, 3, 5, 14, 7, 9, 123_000, tzinfo=dt.UTC))
    archive = ImageArchive(root, max_bytes=10**9, max_age_s=LONG_AGO_S)
    assert archive.offer(record(moment, "A-17", "ng"))
    assert archive.offer(record(moment + 1, None, "ok"))
    assert archive.offer(record(moment + 2, "x", "error", station="line 2/left"))
    assert archive.offer(record(moment, "A-17", "ng"))  # the same millisecond again
    archive.close()

    assert everything(root) == [
        "line-2-left",
        "line-2-left/2024-03-05",
        "line-2-left/2024-03-05/140709.125_x_error.jpg",
        "press1",
        "press1/2024-03-05",
        "press1/2024-03-05/140709.123_A-17-2_ng.jpg",
        "press1/2024-03-05/140709.123_A-17_ng.jpg",
        "press1/2024-03-05/140709.124_nopart_ok.jpg",
    ], "no temporary file is left behind, and no image overwrites another"
    image = cv2.imread(str(root / "press1/2024-03-05/140709.123_A-17_ng.jpg"))
    assert image is not None and image.shape == (48, 64, 3)
    stats = archive.stats()
    assert (stats.saved, stats.files, stats.dropped, stats.errors) == (4, 4, 0, 0)
    assert stats.bytes == disk_bytes(root)
    assert not stats.failing and stats.last_error is None


def test_what_a_crash_or_power_cut_left_is_cleaned_up_at_start(tmp_path: Path):
    root = tmp_path / "images"
    day = root / "press1" / "2030-01-01"  # in the future: the age cap leaves it alone
    good = jpeg_bytes()
    put_file(day / "080000.000_P1_ng.jpg", good)
    put_file(day / ".080000.500_P2_ng.jpg.tmp", good[: len(good) // 2])  # agent killed
    put_file(day / "080001.000_P3_ng.jpg", good[: len(good) // 2])  # power cut: truncated
    put_file(day / "080002.000_P4_ng.jpg", b"")  # power cut: delayed allocation
    put_file(root / "press1" / "2030-01-02" / ".080003.000_P5_ng.jpg.tmp", b"")
    archive = ImageArchive(root, max_bytes=10**9, max_age_s=LONG_AGO_S)
    assert archive.wait_idle(5)
    assert everything(root) == [
        "press1",
        "press1/2030-01-01",
        "press1/2030-01-01/080000.000_P1_ng.jpg",
    ]
    stats = archive.stats()
    assert (stats.files, stats.bytes) == (1, len(good))
    archive.close()


def test_the_size_cap_removes_the_oldest_images_first(tmp_path: Path):
    root = tmp_path / "images"
    start = now_ms() - 60_000
    one = saved_size(record(start))
    cap = int(one * 5.5)
    archive = ImageArchive(root, max_bytes=cap, max_age_s=DAY_S)
    names = []
    for i in range(12):
        # A second apart, and the last two older than the rest: age decides, not arrival.
        ts = start + i * 1000 if i < 10 else start - (12 - i) * 1000
        assert archive.offer(record(ts, f"P{i}"))
        archive.wait_idle(5)
        names.append((ts, f"P{i}"))
    archive.close()

    kept = jpegs(root)
    newest = [part for _, part in sorted(names)][-len(kept) :]
    assert [name.split("_")[1] for name in kept] == sorted(newest, key=lambda p: int(p[1:]))
    assert 4 <= len(kept) <= 6
    assert disk_bytes(root) <= cap
    stats = archive.stats()
    assert stats.bytes == disk_bytes(root) and stats.files == len(kept)
    assert stats.deleted_for_size == 12 - len(kept) and stats.deleted_for_age == 0

    # A smaller cap applies at start to what is already there, still oldest first.
    smaller = ImageArchive(root, max_bytes=int(one * 2.5), max_age_s=DAY_S)
    assert smaller.wait_idle(5)
    left = jpegs(root)
    assert left == kept[-len(left) :] and 1 <= len(left) <= 3
    assert smaller.stats().bytes == disk_bytes(root) <= int(one * 2.5)
    assert smaller.stats().deleted_for_size == len(kept) - len(left)
    smaller.close()


def test_the_age_cap_applies_at_start_and_after_every_save(tmp_path: Path):
    root = tmp_path / "images"
    image = jpeg_bytes()
    today = dt.datetime.now(dt.UTC)
    recent_day = f"{today:%Y-%m-%d}"
    recent_name = f"{today - dt.timedelta(seconds=5):%H%M%S}.000_P1_ng.jpg"
    put_file(root / "press1" / "2020-01-01" / "120000.000_P0_ng.jpg", image)  # old by its name
    put_file(root / "press1" / recent_day / recent_name, image, age_s=20 * DAY_S)  # name wins
    put_file(root / "press1" / "manual" / "old.jpg", image, age_s=3 * DAY_S)  # by mtime
    put_file(root / "press1" / "manual" / "new.jpg", image)
    (root / "press1" / "2020-01-02").mkdir()  # an empty day folder

    archive = ImageArchive(root, max_bytes=10**9, max_age_s=DAY_S)
    assert archive.wait_idle(5)
    assert jpegs(root) == [f"press1/{recent_day}/{recent_name}", "press1/manual/new.jpg"]
    assert sorted(p.name for p in (root / "press1").iterdir()) == [recent_day, "manual"]
    assert archive.stats().deleted_for_age == 2

    # An image that is already too old when it is saved goes at once, with its day folder.
    assert archive.offer(record(now_ms() - int(2 * DAY_S * 1000), "late"))
    assert archive.wait_idle(5)
    assert jpegs(root) == [f"press1/{recent_day}/{recent_name}", "press1/manual/new.jpg"]
    assert sorted(p.name for p in (root / "press1").iterdir()) == [recent_day, "manual"]
    stats = archive.stats()
    assert (stats.saved, stats.deleted_for_age, stats.files) == (1, 3, 2)
    assert stats.bytes == disk_bytes(root)
    archive.close()


def test_archives_of_stations_sharing_a_directory_keep_to_their_own_folder(tmp_path: Path):
    root = tmp_path / "images"
    put_file(root / "press2" / "2020-01-01" / "120000.000_P0_ng.jpg", jpeg_bytes())  # too old
    start = now_ms()
    one = saved_size(record(start))
    archives = {
        station: ImageArchive(root, max_bytes=int(one * 3.5), max_age_s=DAY_S, station=station)
        for station in ("press1", "press2")
    }
    assert archives["press1"].scope == root / "press1"
    for i in range(8):
        for station, archive in archives.items():
            assert archive.offer(record(start + i * 1000, f"P{i}", station=station))
            assert archive.wait_idle(5)
    for archive in archives.values():
        archive.close()

    for station, archive in archives.items():
        kept = [name for name in jpegs(root) if name.startswith(f"{station}/{day_of(start)}/")]
        assert 2 <= len(kept) <= 4 and kept[-1].endswith("_P7_ng.jpg")
        stats = archive.stats()
        assert stats.files == len(kept) and stats.bytes == disk_bytes(root / station)
        assert stats.deleted_for_size == 8 - len(kept)
    assert archives["press2"].stats().deleted_for_age == 1
    assert archives["press1"].stats().deleted_for_age == 0
    assert not (root / "press2" / "2020-01-01").exists()


def test_a_full_queue_drops_images_without_blocking(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    big = noise(1080, 1920)  # 10 to 30 ms to draw, encode and write: the queue fills at once
    archive = ImageArchive(tmp_path, max_bytes=10**9, max_age_s=LONG_AGO_S, queue_size=4)
    assert archive.wait_idle(5)
    start = now_ms()
    durations = []
    accepted = []
    with caplog.at_level(logging.INFO, logger="inference.vision.evidence"):
        # A steady overload: an image every 2 ms for 0.4 s.
        for i in range(200):
            began = time.perf_counter()
            accepted.append(archive.offer(record(start + i, f"P{i}", frame=big)))
            durations.append(time.perf_counter() - began)
            time.sleep(0.002)
        assert archive.wait_idle(10)
        assert archive.offer(record(start + 1000, "after", frame=big))
        assert archive.wait_idle(10)

    assert sorted(durations)[100] < 0.005 and max(durations) < 0.25, "offer() only queues"
    assert accepted[:4] == [True] * 4 and sum(accepted) < 150
    stats = archive.stats()
    assert stats.dropped == 200 - sum(accepted) and stats.saved == sum(accepted) + 1
    assert len(jpegs(tmp_path)) == stats.saved
    # Logged once per episode, however many images it drops, and so is its end.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    ends = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert 1 <= len(warnings) == len(ends) <= 3
    assert all(message.startswith("Dropping evidence images: 4 are") for message in warnings)
    assert all(message.startswith("Evidence images are queued again; ") for message in ends)
    assert sum(int(message.split("; ")[1].split()[0]) for message in ends) == stats.dropped

    archive.close()
    archive.close()  # idempotent
    assert not archive.offer(record(start + 2000))
    assert archive.stats().dropped == stats.dropped + 1


@pytest.mark.parametrize("blocked", ["station folder", "archive folder"])
def test_disk_errors_are_counted_logged_once_and_recovered_from(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, blocked: str
):
    root = tmp_path / "images"
    # A file where a folder must be: what root can not write to is hard to make in a test
    # that may run as root, and mkdir/write fail the same way for a full or read-only disk.
    in_the_way = root / "press1" if blocked == "station folder" else root
    put_file(in_the_way, b"not a folder")
    start = now_ms()
    with caplog.at_level(logging.INFO, logger="inference.vision.evidence"):
        archive = ImageArchive(root, max_bytes=10**9, max_age_s=DAY_S)
        for i in range(4):
            assert archive.offer(record(start + i, f"P{i}"))  # never raises
        assert archive.wait_idle(5)
        failing = archive.stats()
        in_the_way.unlink()
        assert archive.offer(record(start + 10, "P10"))
        assert archive.wait_idle(5)

    assert failing.saved == 0 and failing.errors >= 4 and failing.failing
    assert failing.last_error is not None and str(root) in failing.last_error
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith("Evidence images are being lost: cannot")
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos == [
        f"Evidence images are being saved again, after {failing.errors} failed attempts."
    ]
    stats = archive.stats()
    assert (stats.saved, stats.files, stats.errors, stats.failing) == (1, 1, failing.errors, False)
    [saved] = jpegs(root)
    assert saved.startswith(f"press1/{day_of(start + 10)}/") and saved.endswith("_P10_ng.jpg")
    assert stats.bytes == disk_bytes(root)
    archive.close()


def test_odd_records_neither_stop_the_thread_nor_lose_the_frame(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    start = now_ms()
    broken_map = record(start, "P1")
    broken_map.anomaly_maps = [((0, 0, 10, 10), np.zeros((2, 3, 4), np.float32))]
    far_future = record(10**18, "P2")  # no calendar has that year
    with caplog.at_level(logging.INFO, logger="inference.vision.evidence"):
        archive = ImageArchive(tmp_path, max_bytes=10**9, max_age_s=DAY_S)
        for evidence in (broken_map, broken_map, far_future, far_future, record(start + 5, "P3")):
            assert archive.offer(evidence)
        archive.close()

    assert sorted(name.split("_")[1] for name in jpegs(tmp_path)) == ["P1", "P1-2", "P3"]
    stats = archive.stats()
    assert (stats.saved, stats.errors, stats.failing) == (3, 2, False)
    assert stats.last_error is not None and "unexpected" in stats.last_error
    by_level = [(r.levelno, r.exc_info is not None) for r in caplog.records]
    assert by_level == [(logging.WARNING, True), (logging.ERROR, True), (logging.INFO, False)]
    assert "This is a bug" in caplog.records[1].getMessage()


def overlay_record(frame: npt.NDArray[np.uint8]) -> EvidenceImage:
    # Left half of the map 0, right half 1, at a tenth of the ROI's size: resized to it.
    anomaly_map = np.zeros((8, 10), np.float32)
    anomaly_map[:, 5:] = 1.0
    return EvidenceImage(
        station="press1",
        ts_ms=now_ms(),
        part_id="P1",
        verdict="ng",
        frame=frame,
        boxes=[Box(200, 50, 280, 150, 0.97, 1, "scratch")],
        anomaly_maps=[((40, 60, 100, 80), anomaly_map)],
        rois=[("ring", 40, 60, 100, 80)],
        label="NG scratch 0.97",
    )


def blended(gray: int, map_value: int) -> npt.NDArray[np.int16]:
    heat = cv2.applyColorMap(np.full((1, 1), map_value, np.uint8), cv2.COLORMAP_JET)[0, 0]
    return np.round(0.6 * gray + 0.4 * heat.astype(np.float64)).astype(np.int16)


def test_the_overlay_draws_heat_maps_rois_boxes_and_the_label(tmp_path: Path):
    frame = np.full((240, 320, 3), 100, np.uint8)
    original = frame.copy()
    evidence = overlay_record(frame)
    image = draw_overlay(evidence)

    assert np.array_equal(frame, original) and not np.shares_memory(image, frame)
    assert image.shape == frame.shape and image.dtype == np.uint8
    px = image.astype(np.int16)  # image[y, x] in BGR
    # Heat map: blue where the map is 0, red where it is 1, inside the ROI only.
    assert np.abs(px[100, 50] - blended(100, 0)).max() <= 2
    assert np.abs(px[100, 130] - blended(100, 255)).max() <= 2
    assert px[100, 50, 0] > px[100, 50, 2] + 30 and px[100, 130, 2] > px[100, 130, 0] + 30
    assert (px[100, 39] == 100).all() and (px[141, 100] == 100).all(), "nothing spills out"
    # ROI border, box border (left and right edges), box inside untouched.
    assert tuple(image[100, 40]) == (255, 255, 0) and tuple(image[139, 100]) == (255, 255, 0)
    assert tuple(image[100, 200]) == (0, 0, 255) and tuple(image[100, 279]) == (0, 0, 255)
    assert (px[100, 280] == 100).all(), "x2 is an exclusive edge"
    assert (px[100, 240] == 100).all()
    # Captions above the ROI and the box, on filled backgrounds with text in them.
    caption = image[30:50, 200:280]
    assert (image[42:50, 200:260] == (0, 0, 255)).all(axis=2).mean() > 0.5
    assert ((caption == (255, 255, 255)).all(axis=2)).any()
    # The label in the top-left corner: NG red background, white text.
    corner = image[0:25, 0:120]
    assert tuple(image[1, 1]) == (0, 0, 255)
    assert ((corner == (255, 255, 255)).all(axis=2)).any()
    # Far from everything the frame is as it was.
    assert (px[200:, :] == 100).all() and (px[60:150, 150:190] == 100).all()


def test_the_overlay_handles_gray_frames_and_rois_at_the_edge(tmp_path: Path):
    gray = np.full((240, 320), 100, np.uint8)
    evidence = EvidenceImage(
        station="press1",
        ts_ms=now_ms(),
        part_id=None,
        verdict="ok",
        frame=gray,
        anomaly_maps=[((280, 200, 100, 100), np.ones((100, 100), np.float32))],
    )
    image = draw_overlay(evidence)
    assert image.shape == (240, 320, 3) and (gray == 100).all()
    assert np.abs(image[230, 310].astype(np.int16) - blended(100, 255)).max() <= 2
    assert (image[190, :] == 100).all() and (image[:, 270] == 100).all()


@pytest.mark.parametrize(
    ("part_id", "expected"),
    [
        ("../../etc/passwd", "etc-passwd"),
        ("..", ""),
        ("A-17\nB\r\nC", "A-17-B-C"),
        ("lot 5/part:7", "lot-5-part-7"),
        ("Werkstück_Ä-1", "Werkstück_Ä-1"),
        ("\uff30\uff21\uff32\uff34\uff11", "PART1"),  # full-width look-alikes become plain
        ("a\\b\x00c", "a-b-c"),
        ("x" * 1000, "x" * 64),
    ],
)
def test_part_ids_are_made_safe_for_file_names(part_id: str, expected: str):
    assert safe_name(part_id) == expected


def test_hostile_part_ids_stay_inside_their_day_folder(tmp_path: Path):
    root = tmp_path / "images"
    archive = ImageArchive(root, max_bytes=10**9, max_age_s=DAY_S)
    start = now_ms()
    hostile = ["../../etc/passwd", "/abs/path", "..", "漢" * 300, "a\nb", "x" * 10_000]
    for i, part_id in enumerate(hostile):
        assert archive.offer(record(start + i, part_id))
    archive.close()

    names = jpegs(root)
    assert len(names) == len(hostile) and archive.stats().errors == 0
    for name in names:
        station, day, file_name = name.split("/")
        assert station == "press1" and day == day_of(start)
        assert len(file_name.encode()) <= 160 and "\n" not in file_name
    assert [n.split("_", 1)[1] for n in names[:3]] == [
        "etc-passwd_ng.jpg",
        "abs-path_ng.jpg",
        "badpart_ng.jpg",
    ]
    assert len(names[3].split("_")[1]) == 128 // 3  # whole characters within 128 bytes
    assert list(tmp_path.iterdir()) == [root]
