"""The caller's side of a call, as the call and the handover to the data plane see it.

Both legs (server/audiosocket.py, server/stream.py) implement this one interface, so the call (server/call.py) and
the data plane (server/relay.py) never ask which kind of leg they hold.
"""

from __future__ import annotations

import abc
import asyncio
from typing import Any

from avr_runtime.services.handover import LegFormat


class Leg(abc.ABC):
    """A caller's connection. ``transport`` is the one it writes to: the event loop's until the handover, then a
    ``RelayTransport`` whose writes go through the engine."""

    transport: asyncio.Transport | None

    # --- what the call needs ---

    @abc.abstractmethod
    def send_frame(self, frame: bytes) -> None:
        """One 20 ms frame of PCM16 8 kHz for the caller."""

    @abc.abstractmethod
    def hang_up(self, reason: str, error_code: int | None) -> None:
        """End the connection; ``error_code`` set when the call ends because of a failure."""

    @abc.abstractmethod
    def released(self) -> None:
        """The call is over and has let go of this leg: forget it too, so neither keeps the other alive."""

    # --- what the handover needs ---

    @abc.abstractmethod
    def handover_format(self) -> LegFormat | None:
        """The caller's audio as ``handover.decide`` reads it; None while it is not known yet."""

    @abc.abstractmethod
    def detachable(self) -> bool:
        """At a frame boundary, nothing held back, not closing: the socket can change hands now."""

    @abc.abstractmethod
    def relayed(self, transport: asyncio.Transport) -> None:
        """From now on ``transport`` writes, and the engine calls ``data_received`` with what it does not handle."""

    @abc.abstractmethod
    def relay_options(self) -> dict[str, Any]:
        """Engine.add's arguments for this kind of leg (none for a slin AudioSocket)."""
