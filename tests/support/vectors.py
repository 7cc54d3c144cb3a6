"""The AudioSocket streams a real Asterisk was seen to send (tests/vectors/asterisk, see its README)."""

from __future__ import annotations

from pathlib import Path

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "asterisk"


def split_frames(stream: bytes) -> list[bytes]:
    """A recorded AudioSocket stream, message by message (header included)."""
    out, pos = [], 0
    while pos < len(stream):
        stop = pos + 3 + (stream[pos + 1] << 8 | stream[pos + 2])
        out.append(stream[pos:stop])
        pos = stop
    return out
