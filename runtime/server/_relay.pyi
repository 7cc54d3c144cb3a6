"""Types of the compiled call data plane (_relay.c)."""

from collections.abc import Sequence
from typing import Any, Final

from avr_runtime.services.providers.wsclient import WebSocketConnection

AS: Final[int]
WS: Final[int]

class Relay:
    frames_in: int
    queued: int
    pacing: bool
    first_audio: float
    def write(self, side: int, data: bytes, /) -> None: ...
    def close(self, side: int, /) -> bool: ...
    def is_open(self, side: int, /) -> bool: ...
    def buffered(self, side: int, /) -> int: ...
    def pause(self, side: int, /) -> None: ...
    def resume(self, side: int, /) -> None: ...
    def push(self, pcm: bytes, /) -> None: ...
    def restore(self, frames: Sequence[tuple[bytes, float]], partial: bytes, partial_since: float, /) -> int: ...
    def clear(self) -> int: ...
    def stop(self) -> None: ...

class Engine:
    def __init__(self, latency_buckets: Sequence[float], max_message: int, poll_interval: float = 0.0) -> None: ...
    def run(self) -> None: ...
    def fileno(self) -> int: ...
    def take(self) -> dict[str, Any]: ...
    def add(
        self,
        as_fd: int,
        ws_fd: int,
        as_protocol: Any,
        ws_protocol: WebSocketConnection,
        *,
        next_slot: float,
        earliest: float,
        capacity: int,
        drop_newest: bool,
        period: float,
        margin: float,
        max_slew: float,
        talking: bool = False,
        grace: bool = False,
        draining: bool = False,
        backlog_ticks: int = 0,
        backlog_min: int = 0,
        backlog_max: int = 0,
        hiccup: int = 0,
        grace_window: float = -1.0,
        opus: tuple[object, int, int, int, int] | None = None,
        silent_frames: int = 0,
        silence_packet: bytes = b"",
        out_cap: int = 65536,
        max_message: int = 65536,
    ) -> Relay: ...
    def close(self) -> None: ...
    def active(self) -> int: ...
