"""Bounded audio buffers: the playout queue in front of the pacer, and overlapping analysis windows."""

from __future__ import annotations

from collections import deque
from enum import StrEnum

import numpy as np
import numpy.typing as npt


class Overflow(StrEnum):
    """What a full playout buffer does with new audio."""

    DROP_OLDEST = "drop_oldest"  # keep latency bounded: the caller hears the newest audio
    DROP_NEWEST = "drop_newest"  # keep what is queued: the end of an over-long reply is cut


class PlayoutBuffer:
    """Re-frames arbitrary provider chunks into fixed frames and holds at most ``capacity`` of them.

    Each frame keeps the time it arrived, so the pacer can measure how long audio waited in the worker.
    ``push`` returns how many frames the overflow policy discarded, so the caller can count them.
    """

    __slots__ = ("_frames", "_partial", "capacity", "frame_bytes", "partial_since", "policy")

    def __init__(self, frame_bytes: int, capacity: int, policy: Overflow = Overflow.DROP_OLDEST) -> None:
        if frame_bytes <= 0 or capacity <= 0:
            raise ValueError("frame_bytes and capacity must be positive")
        self.frame_bytes = frame_bytes
        self.capacity = capacity
        self.policy = policy
        self._frames: deque[tuple[bytes, float]] = deque()
        self._partial = b""
        self.partial_since = 0.0  # arrival of the oldest audio in the partial frame (meaningful while there is one)

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def has_partial(self) -> bool:
        return bool(self._partial)

    def push(self, data: bytes, now: float = 0.0) -> int:
        if self._partial:
            data = self._partial + data
        n = self.frame_bytes
        whole = len(data) - len(data) % n
        if whole < len(data) and (whole or not self._partial):
            self.partial_since = now
        self._partial = data[whole:]
        dropped = 0
        frames = self._frames
        for pos in range(0, whole, n):
            if len(frames) >= self.capacity:
                dropped += 1
                if self.policy is Overflow.DROP_NEWEST:
                    continue
                frames.popleft()
            frames.append((data[pos : pos + n], now))
        return dropped

    def flush_partial(self, now: float = 0.0) -> int:
        """Pad a trailing partial frame with silence so the end of an utterance is played."""
        if not self._partial:
            return 0
        data, self._partial = self._partial, b""
        return self.push(data + bytes(self.frame_bytes - len(data)), now)

    def snapshot(self) -> tuple[list[tuple[bytes, float]], bytes, float]:
        """Queued frames with their arrival times, the partial frame and its arrival (to hand the queue over)."""
        return list(self._frames), self._partial, self.partial_since

    def pop(self) -> tuple[bytes, float] | None:
        """The oldest frame and its arrival time."""
        return self._frames.popleft() if self._frames else None

    def clear(self) -> int:
        """Barge-in: forget everything queued; returns the number of frames discarded."""
        n = len(self._frames)
        self._frames.clear()
        self._partial = b""
        return n


class AnalysisWindows:
    """Cuts a sample stream into windows of ``size`` samples that overlap by ``overlap`` (0 ≤ overlap < 1).

    Memory is bounded by one window plus one input chunk whatever the input rate.
    """

    __slots__ = ("_buf", "hop", "size")

    def __init__(self, size: int = 1024, overlap: float = 0.5) -> None:
        if size <= 0:
            raise ValueError("window size must be positive")
        if not 0.0 <= overlap < 1.0:
            raise ValueError("overlap must be in [0, 1)")
        self.size = size
        self.hop = max(1, round(size * (1.0 - overlap)))
        self._buf: npt.NDArray[np.int16] = np.zeros(0, dtype=np.int16)

    def feed(self, pcm: bytes) -> list[npt.NDArray[np.int16]]:
        buf = np.concatenate((self._buf, np.frombuffer(pcm, dtype="<i2")))
        out = []
        start = 0
        while len(buf) - start >= self.size:
            out.append(buf[start : start + self.size])
            start += self.hop
        self._buf = buf[start:] if start < len(buf) else buf[:0]
        return out
