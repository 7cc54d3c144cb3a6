"""What an echoed call must hear back: the audio it sent, in order, nothing invented, and most of it."""

from __future__ import annotations

SILENCE = bytes(320)


def frames_of(audio: bytes, size: int = 320, pad: int = 0) -> list[bytes]:
    """`audio` cut into frames of `size` bytes, the last one padded with `pad` bytes."""
    padded = audio + bytes([pad]) * (-len(audio) % size)
    return [padded[i : i + size] for i in range(0, len(padded), size)]


def assert_echoed(sent: list[bytes], received: list[bytes], silence: bytes = SILENCE) -> None:
    """Bit-exact echo: what came back is the sent speech, in order, nothing invented, and ≥ 90% of it (under
    load the pacer may trim a frame of backlog)."""
    back = [f for f in received if f != silence]
    it = iter(sent)
    assert all(f in it for f in back), "in order, nothing invented"
    assert len(back) >= 0.9 * sum(1 for f in sent if f != silence)
