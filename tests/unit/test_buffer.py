"""Playout re-framing with bounded capacity, and overlapping analysis windows."""

from __future__ import annotations

import numpy as np
import pytest

from avr_runtime.audio.buffer import AnalysisWindows, Overflow, PlayoutBuffer


def frame(i: int, n: int = 320) -> bytes:
    return bytes([i % 256]) * n


def drain(buf: PlayoutBuffer) -> list[bytes]:
    out = []
    while (item := buf.pop()) is not None:
        out.append(item[0])
    return out


@pytest.mark.parametrize("chunk", [1, 7, 100, 319, 320, 321, 640, 1000, 3333])
def test_reframes_arbitrary_chunk_sizes(chunk: int) -> None:
    data = bytes(range(256)) * 50  # 12800 bytes = 40 frames
    buf = PlayoutBuffer(320, capacity=1000)
    for pos in range(0, len(data), chunk):
        assert buf.push(data[pos : pos + chunk]) == 0
    frames = drain(buf)
    assert all(len(f) == 320 for f in frames)
    assert b"".join(frames) == data
    assert len(buf) == 0


def test_partial_frame_waits_for_the_rest() -> None:
    buf = PlayoutBuffer(320, capacity=10)
    buf.push(bytes(300))
    assert len(buf) == 0
    assert buf.pop() is None
    buf.push(bytes(20))
    assert len(buf) == 1


def test_frames_keep_their_arrival_time() -> None:
    buf = PlayoutBuffer(4, capacity=10)
    buf.push(b"abcdef", now=1.0)
    buf.push(b"gh", now=2.0)
    assert buf.pop() == (b"abcd", 1.0)
    assert buf.pop() == (b"efgh", 2.0)


def test_drop_oldest_keeps_the_newest() -> None:
    buf = PlayoutBuffer(320, capacity=5, policy=Overflow.DROP_OLDEST)
    dropped = buf.push(b"".join(frame(i) for i in range(8)))
    assert dropped == 3
    assert len(buf) == 5
    assert drain(buf) == [frame(i) for i in range(3, 8)]


def test_drop_newest_keeps_what_is_queued() -> None:
    buf = PlayoutBuffer(320, capacity=5, policy=Overflow.DROP_NEWEST)
    dropped = buf.push(b"".join(frame(i) for i in range(8)))
    assert dropped == 3
    assert buf.push(frame(9)) == 1
    assert drain(buf) == [frame(i) for i in range(5)]


@pytest.mark.parametrize("policy", list(Overflow))
def test_capacity_over_many_pushes(policy: Overflow) -> None:
    buf = PlayoutBuffer(160, capacity=3, policy=policy)
    total_dropped = sum(buf.push(frame(i, 160)) for i in range(10))
    assert total_dropped == 7
    assert len(buf) == 3
    expected = [7, 8, 9] if policy is Overflow.DROP_OLDEST else [0, 1, 2]
    assert drain(buf) == [frame(i, 160) for i in expected]


def test_clear_discards_frames_and_partial() -> None:
    buf = PlayoutBuffer(320, capacity=10)
    buf.push(bytes(320 * 4 + 100))
    assert buf.clear() == 4
    assert len(buf) == 0
    assert buf.clear() == 0
    buf.push(frame(1, 220))  # the cleared 100-byte partial must not be joined to new audio
    assert len(buf) == 0
    buf.push(frame(1, 100))
    assert drain(buf) == [frame(1)]


def test_flush_partial_pads_with_silence() -> None:
    buf = PlayoutBuffer(320, capacity=10)
    buf.push(b"\x01" * 330, now=5.0)
    assert buf.flush_partial(now=6.0) == 0
    assert buf.pop() == (b"\x01" * 320, 5.0)
    assert buf.pop() == (b"\x01" * 10 + bytes(310), 6.0)
    assert buf.flush_partial() == 0
    assert len(buf) == 0


def test_flush_partial_reports_overflow() -> None:
    buf = PlayoutBuffer(4, capacity=1, policy=Overflow.DROP_NEWEST)
    buf.push(b"abcdef")
    assert buf.flush_partial() == 1
    assert drain(buf) == [b"abcd"]


@pytest.mark.parametrize(("frame_bytes", "capacity"), [(0, 1), (320, 0), (-1, 5), (320, -3)])
def test_playout_invalid_args(frame_bytes: int, capacity: int) -> None:
    with pytest.raises(ValueError):
        PlayoutBuffer(frame_bytes, capacity)


# --- AnalysisWindows ---


def ramp(n: int, start: int = 0) -> bytes:
    return (np.arange(start, start + n) % 30000).astype("<i2").tobytes()


@pytest.mark.parametrize(("overlap", "hop"), [(0.0, 1024), (0.5, 512), (0.75, 256)])
def test_window_sizes_and_hop(overlap: float, hop: int) -> None:
    w = AnalysisWindows(1024, overlap)
    assert w.hop == hop
    total = 16000
    windows = w.feed(ramp(total))
    assert len(windows) == (total - 1024) // hop + 1
    for i, win in enumerate(windows):
        assert len(win) == 1024
        assert win.dtype == np.int16
        assert int(win[0]) == i * hop  # window i starts at sample i * hop


@pytest.mark.parametrize("overlap", [0.0, 0.5, 0.75])
@pytest.mark.parametrize("chunk", [160, 320, 777])
def test_windows_do_not_depend_on_chunking(overlap: float, chunk: int) -> None:
    data = ramp(16000)
    whole = AnalysisWindows(1024, overlap).feed(data)
    w = AnalysisWindows(1024, overlap)
    parts = []
    step = chunk * 2
    for pos in range(0, len(data), step):
        parts += w.feed(data[pos : pos + step])
    assert len(parts) == len(whole)
    assert all(np.array_equal(a, b) for a, b in zip(parts, whole, strict=True))


def test_window_memory_is_bounded() -> None:
    w = AnalysisWindows(1024, 0.75)
    for i in range(2000):  # 40 s of 20 ms chunks at 16 kHz
        w.feed(ramp(320, i * 320))
        assert len(w._buf) < 1024 + 320


def test_window_overlap_contents() -> None:
    w = AnalysisWindows(8, 0.5)
    windows = w.feed(np.arange(20, dtype="<i2").tobytes())
    assert [list(map(int, x)) for x in windows] == [
        list(range(0, 8)),
        list(range(4, 12)),
        list(range(8, 16)),
        list(range(12, 20)),
    ]


@pytest.mark.parametrize(("size", "overlap"), [(0, 0.5), (-8, 0.5), (1024, 1.0), (1024, -0.1), (1024, 1.5)])
def test_window_invalid_args(size: int, overlap: float) -> None:
    with pytest.raises(ValueError):
        AnalysisWindows(size, overlap)


def test_partial_since_is_the_arrival_of_its_oldest_audio() -> None:
    buf = PlayoutBuffer(4, capacity=10)
    buf.push(b"ab", now=1.0)
    assert buf.has_partial and buf.partial_since == 1.0
    buf.push(b"c", now=2.0)  # still the same partial frame: its oldest audio arrived at 1.0
    assert buf.partial_since == 1.0
    buf.push(b"defg", now=3.0)  # "abcd" completes, "efg" is a new partial
    assert buf.partial_since == 3.0 and len(buf) == 1
    buf.push(b"h", now=4.0)
    assert (len(buf), buf.has_partial) == (2, False)
