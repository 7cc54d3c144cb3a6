"""Types of the compiled call data plane (_relay.c)."""

from collections.abc import Sequence
from typing import Any, Final, NotRequired, TypedDict

from avr_runtime.services.providers.wsclient import WebSocketConnection

AS: Final[int]
WS: Final[int]

class CallerSide(TypedDict):
    """The caller's side: an AudioSocket connection (only ``fd`` and ``protocol``), or an Opus stream client."""

    fd: int  # the engine's own descriptor (a duplicate): closed by the engine once the relay has it
    protocol: Any  # the leg's protocol object: gets data_received / connection_lost for what the engine leaves
    opus: NotRequired[tuple[object, int, int, int, int] | None]  # (owner, encode, encoder, decode, decoder)
    silent_frames: NotRequired[int]  # the encoder's run of silent frames so far
    silence_packet: NotRequired[bytes]  # the packet it settled on for silence, b"" before
    out_cap: NotRequired[int]  # droppable audio is refused once this much waits unsent (default 64 KiB)
    max_message: NotRequired[int]  # the largest client message taken on the fast path (default 64 KiB)

class ProviderSide(TypedDict):
    """The provider's STS WebSocket."""

    fd: int
    protocol: WebSocketConnection

class PlayoutSettings(TypedDict):
    """The playout buffer (audio/buffer.py PlayoutBuffer)."""

    capacity: int  # frames
    drop_newest: NotRequired[bool]  # the overflow policy; default: drop the oldest

class PacerSettings(TypedDict):
    """The pacer (audio/pacer.py Pacer): its settings, then the state it carries on from (PacerState)."""

    period: float
    margin: float
    max_slew: float
    grace_window: NotRequired[float]  # < 0 or absent: the margin
    next_slot: float
    earliest: float
    talking: NotRequired[bool]
    grace: NotRequired[bool]
    draining: NotRequired[bool]
    backlog_ticks: NotRequired[int]
    backlog_min: NotRequired[int]
    backlog_max: NotRequired[int]
    hiccup: NotRequired[int]

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

class Pacer:
    """The relay's pacer and playout buffer stepped by hand, ``now`` given at each step (for the specification's
    tests). A step returns what it played: (frame, seconds it waited), (None, None) for silence, or None."""

    next: float  # when the next slot is due: call tick() then
    queued: int
    counts: dict[str, int]  # late, dropped_latency, dropped_overflow
    def __init__(
        self,
        capacity: int,
        period: float,
        margin: float,
        grace: float,
        max_slew: float,
        start: float,
        drop_newest: bool = False,
    ) -> None: ...
    def tick(self, now: float, /) -> tuple[bytes, float] | tuple[None, None] | None: ...
    def push(self, pcm: bytes, now: float, /) -> tuple[bytes, float] | tuple[None, None] | None: ...

class Engine:
    def __init__(self, latency_buckets: Sequence[float], max_message: int, poll_interval: float = 0.0) -> None: ...
    def run(self) -> None: ...
    def fileno(self) -> int: ...
    def take(self) -> dict[str, Any]: ...
    def add(
        self, caller: CallerSide, provider: ProviderSide, playout: PlayoutSettings, pacer: PacerSettings, /
    ) -> Relay: ...
    def close(self) -> None: ...
    def active(self) -> int: ...
