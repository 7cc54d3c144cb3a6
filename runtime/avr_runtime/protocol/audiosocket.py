"""Asterisk AudioSocket framing: 1 byte type, 2 bytes big-endian length, payload.

The parser is incremental (TCP delivers arbitrary slices) and strict: anything it cannot read with certainty
raises :class:`ProtocolError`, which ends that one call.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from enum import IntEnum
from typing import Final, NamedTuple


class Kind(IntEnum):
    HANGUP = 0x00
    UUID = 0x01
    DTMF = 0x03
    AUDIO = 0x10
    ERROR = 0xFF


#: Signed-linear audio by message type: 0x10 is 8 kHz; newer Asterisk (20.17, 21.12, 22.7, 23.1 and later) sends
#: the other rates with their own types when the channel's format is one of them (e.g. ``c(slin16)``).
SLIN_RATES: Final[dict[int, int]] = {
    0x10: 8000,
    0x11: 12000,
    0x12: 16000,
    0x13: 24000,
    0x14: 32000,
    0x15: 44100,
    0x16: 48000,
    0x17: 96000,
    0x18: 192000,
}
#: Kept for callers that only need the types above 8 kHz.
HIGH_RATE_SLIN: Final[dict[int, int]] = {k: v for k, v in SLIN_RATES.items() if k != 0x10}

HEADER_SIZE: Final = 3
MAX_AUDIO_MS: Final = 120
#: The largest audio payload accepted at 8 kHz: 120 ms of slin. Asterisk sends 20 ms (320 bytes).
MAX_AUDIO_PAYLOAD: Final = 8000 * MAX_AUDIO_MS // 1000 * 2
#: The same 120 ms at each type's rate (bounded by what a 16-bit length can say).
MAX_AUDIO_BY_TYPE: Final[dict[int, int]] = {k: min(0xFFFF, r * MAX_AUDIO_MS // 1000 * 2) for k, r in SLIN_RATES.items()}
MAX_ERROR_PAYLOAD: Final = 256

HANGUP_FRAME: Final = b"\x00\x00\x00"


class ProtocolError(ValueError):
    """Input that is not valid AudioSocket; ``reason`` is a short machine-friendly label for metrics.

    ``frames`` holds the valid frames that preceded the bad one in the same read, so the caller can still act on
    them (a call identifier followed by garbage is still that call, and ends with a reason).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.frames: list[Frame] = []


class Frame(NamedTuple):
    """A tuple, not a frozen dataclass: built 50 times a second per call, and a frozen dataclass sets every field
    through ``object.__setattr__``.

    ``rate`` is the sample rate an audio frame's type says (0x10: 8000, 0x12: 16000, ...); 0 for other kinds.
    """

    kind: Kind
    payload: bytes
    rate: int = 0


def _check(kind_byte: int, length: int) -> Kind:
    """Validate a non-audio header before its payload is buffered, so an absurd length is refused at once."""
    try:
        kind = Kind(kind_byte)
    except ValueError:
        raise ProtocolError("unknown_type", f"unknown message type 0x{kind_byte:02x}") from None
    if kind is Kind.HANGUP and length != 0:
        raise ProtocolError("bad_length", f"hangup with a {length}-byte payload")
    if kind is Kind.UUID and length != 16:
        raise ProtocolError("bad_length", f"call identifier of {length} bytes, expected 16")
    if kind is Kind.DTMF and length != 1:
        raise ProtocolError("bad_length", f"DTMF payload of {length} bytes, expected 1")
    if kind is Kind.ERROR and length > MAX_ERROR_PAYLOAD:
        raise ProtocolError("bad_length", f"error payload of {length} bytes (max {MAX_ERROR_PAYLOAD})")
    return kind


class FrameParser:
    """Turns a byte stream into frames. Hot path: one 323-byte read is one frame, parsed without copying twice.

    A call's audio type is fixed by its first audio frame: audio of another type later in the stream is refused
    from its header (``rate_changed``), as is a type whose rate is not in ``rates`` (``unsupported_rate``), so
    audio is never read at the wrong rate. The expected type is compared first, so the common frame costs one
    comparison whatever the call's rate.
    """

    __slots__ = ("_audio_type", "_buf", "_max_audio", "_one_type", "_rate", "rates")

    def __init__(self, rates: Collection[int] | None = None, *, one_type: bool = True) -> None:
        """``rates``: the sample rates accepted (default: every rate AudioSocket defines). ``one_type=False``
        reads every audio frame by its own type, as Asterisk reads what it receives (for clients)."""
        self._buf = b""
        self._one_type = one_type
        self.rates = frozenset(SLIN_RATES.values() if rates is None else rates)
        self._audio_type = -1  # no audio yet: the first audio frame's type becomes the call's
        self._max_audio = 0
        self._rate = 0

    @property
    def rate(self) -> int:
        """The call's sample rate by its audio type; 0 before the first audio frame."""
        return self._rate

    def _audio_header(self, kind_byte: int, length: int) -> None:
        """An audio header that is not the call's steady type: the first one, a change, or a bad length."""
        rate = SLIN_RATES[kind_byte]
        if self._audio_type < 0 or not self._one_type:
            if rate not in self.rates:
                raise ProtocolError(
                    "unsupported_rate",
                    f"slin at {rate} Hz (type 0x{kind_byte:02x}) is not supported; "
                    f"supported: {', '.join(str(r) for r in sorted(self.rates))} Hz",
                )
            self._audio_type, self._max_audio, self._rate = kind_byte, MAX_AUDIO_BY_TYPE[kind_byte], rate
        elif kind_byte != self._audio_type:
            raise ProtocolError(
                "rate_changed",
                f"audio type 0x{kind_byte:02x} ({rate} Hz) in a call whose audio is "
                f"0x{self._audio_type:02x} ({self._rate} Hz)",
            )
        if not 0 < length <= self._max_audio:
            raise ProtocolError("bad_length", f"audio payload of {length} bytes (allowed 1..{self._max_audio})")

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf + data if self._buf else data
        frames: list[Frame] = []
        pos = 0
        end = len(buf)
        audio_type, max_audio, rate = self._audio_type, self._max_audio, self._rate
        while end - pos >= HEADER_SIZE:
            kind_byte = buf[pos]
            length = (buf[pos + 1] << 8) | buf[pos + 2]
            if kind_byte == audio_type and 0 < length <= max_audio:  # nearly every frame
                kind, frame_rate = _AUDIO, rate
            else:
                try:
                    if kind_byte in SLIN_RATES:
                        self._audio_header(kind_byte, length)
                        audio_type, max_audio, rate = self._audio_type, self._max_audio, self._rate
                        kind, frame_rate = _AUDIO, rate
                    else:
                        kind, frame_rate = _check(kind_byte, length), 0
                except ProtocolError as exc:
                    exc.frames = frames
                    self._buf = b""
                    raise
            stop = pos + HEADER_SIZE + length
            if stop > end:
                break
            frames.append(Frame(kind, buf[pos + HEADER_SIZE : stop], frame_rate))
            pos = stop
        self._buf = buf[pos:] if pos < end else b""
        return frames

    @property
    def pending(self) -> int:
        return len(self._buf)

    def close(self) -> None:
        """Called at end of stream: a partial frame left over means the peer cut a frame short."""
        if self._buf:
            raise ProtocolError("truncated", f"connection closed inside a frame ({len(self._buf)} bytes pending)")


_AUDIO: Final = Kind.AUDIO


def encode(kind: Kind, payload: bytes = b"") -> bytes:
    return bytes((kind, len(payload) >> 8, len(payload) & 0xFF)) + payload


def audio_frame(payload: bytes, kind_byte: int = 0x10) -> bytes:
    """An audio message; ``kind_byte`` 0x11-0x18 for slin at the other rates (see ``SLIN_RATES``)."""
    n = len(payload)
    return bytes((kind_byte, n >> 8, n & 0xFF)) + payload


def audio_header(kind_byte: int, length: int) -> bytes:
    return bytes((kind_byte, length >> 8, length & 0xFF))


def error_frame(code: int) -> bytes:
    return bytes((0xFF, 0x00, 0x01, code & 0xFF))


def uuid_frame(call_id: uuid.UUID) -> bytes:
    return encode(Kind.UUID, call_id.bytes)


def parse_uuid(payload: bytes) -> str:
    return str(uuid.UUID(bytes=payload))


def parse_dtmf(payload: bytes) -> str:
    digit = payload.decode("ascii", errors="replace")
    if digit not in "0123456789*#ABCDabcd":
        raise ProtocolError("bad_dtmf", f"not a DTMF digit: {payload!r}")
    return digit.upper()


class ErrorCode(IntEnum):
    """Codes we put in 0xff frames to tell Asterisk why we refused or ended a call."""

    RATE_LIMITED = 0x01
    AT_CAPACITY = 0x02
    DRAINING = 0x03
    PROVIDER_UNAVAILABLE = 0x04
    PROTOCOL = 0x05


def goodbye(code: int | None, error_frames: bool) -> bytes:
    """The bytes that end a call: a hangup, preceded by an error frame only when ``error_frames`` is on and the
    call ended for a reason that has a code.

    Asterisk reads nothing but audio and a hangup from the server (``ast_audiosocket_receive_frame_with_hangup`` in
    res/res_audiosocket.c): an error frame makes it log "Received AudioSocket message other than hangup or audio"
    and fail the read, so the AudioSocket() application returns -1 and the dialplan after it does not run; a
    hangup (or the socket's close) makes it return 0. A ``Dial(AudioSocket/...)`` channel hangs up either way.
    """
    if code is not None and error_frames:
        return error_frame(code) + HANGUP_FRAME
    return HANGUP_FRAME
