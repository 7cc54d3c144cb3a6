"""Whether a call moves from the Python path to the compiled data plane, and if not, why.

One pure function over the call's facts, so every leg asks the same question and every call that stays in Python
has a reason that can be counted (``avr_data_plane_handovers_total``). The facts are plain values: this module
knows nothing of legs, sessions or the engine, which is what lets it sit below the server layer and be tested alone.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, Literal


class Stay(enum.StrEnum):
    """Why a call stays on the Python path: the first that applies, in this order (the worker's settings, then
    the provider, then the caller's audio, then the state of the call)."""

    FAST_PATH_OFF = "fast_path_off"  # FAST_PATH=false
    NOT_BUILT = "not_built"  # the package was installed without the compiled module
    NOT_STS = "not_sts"  # the call has no STS provider session (the HTTP chain, or none at all)
    TLS = "tls"  # a wss:// provider: the engine speaks plain TCP only
    G711 = "g711"  # an AudioSocket caller in G.711: the engine carries slin only
    WIDEBAND = "wideband"  # an AudioSocket caller above 8 kHz: its resamplers live in Python
    CODEC = "codec"  # a stream client in a codec other than Opus
    STEREO = "stereo"  # a stereo stream client
    PROVIDER_ENDED = "provider_ended"  # the provider session was over before the sockets could change hands
    ENDED = "ended"  # the call ended before both connections reached a point where they could change hands
    ERROR = "error"  # the handover itself failed (no descriptor left to duplicate): the call went on in Python


class Move(enum.Enum):
    """The single outcome that is not a reason to stay."""

    MOVE = "move"


MOVE: Final = Move.MOVE
Outcome = Move | Stay


@dataclass(frozen=True, slots=True)
class LegFormat:
    """The caller's audio as the decision needs it; ``codec`` is ``slin``/``ulaw``/``alaw`` on AudioSocket,
    the stream's codec (``opus``, ``pcm16``, ``ulaw``, ``alaw``) on ``/stream``."""

    kind: Literal["audiosocket", "stream"]
    codec: str
    rate: int
    channels: int = 1


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything that decides a handover. ``leg`` is None while the caller's audio format is not yet known."""

    fast_path: bool
    built: bool
    provider: Literal["sts", "chain", "none"]
    provider_url: str | None
    leg: LegFormat | None
    provider_ended: bool = False
    call_ended: bool = False


def decide(facts: Facts) -> Outcome:
    """``MOVE`` when the call can run on the data plane, else the first reason it cannot (see ``Stay``)."""
    if not facts.fast_path:
        return Stay.FAST_PATH_OFF
    if not facts.built:
        return Stay.NOT_BUILT
    if facts.provider != "sts":
        return Stay.NOT_STS
    if not (facts.provider_url or "").startswith("ws://"):
        return Stay.TLS
    leg = facts.leg
    if leg is not None and (reason := _leg_reason(leg)) is not None:
        return reason
    if facts.provider_ended:
        return Stay.PROVIDER_ENDED
    if facts.call_ended or leg is None:
        return Stay.ENDED
    return MOVE


def _leg_reason(leg: LegFormat) -> Stay | None:
    """What the engine cannot carry: slin at 8 kHz on AudioSocket, mono Opus on a stream (``_relay.c``)."""
    if leg.kind == "audiosocket":
        if leg.codec in ("ulaw", "alaw"):
            return Stay.G711
        return Stay.WIDEBAND if leg.rate != 8000 else None
    if leg.codec != "opus":
        return Stay.CODEC
    return Stay.STEREO if leg.channels != 1 else None
