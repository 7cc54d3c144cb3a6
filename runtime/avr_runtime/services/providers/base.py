"""What a call needs from a provider session, whatever protocol carries it."""

from __future__ import annotations

import abc
import asyncio
from typing import Any, Final, Protocol


class Listener(Protocol):
    """The call's side: provider sessions report through these (all called on the event loop)."""

    def on_audio(self, pcm: bytes) -> None: ...
    def on_interruption(self, source: str) -> None: ...
    def on_transcript(self, role: str, text: str) -> None: ...
    def on_turn_latency(self, seconds: float) -> None: ...


class Unheard:
    """The listener of a session whose call is over: what still arrives goes nowhere."""

    def on_audio(self, pcm: bytes) -> None:
        pass

    def on_interruption(self, source: str) -> None:
        pass

    def on_transcript(self, role: str, text: str) -> None:
        pass

    def on_turn_latency(self, seconds: float) -> None:
        pass


UNHEARD: Final = Unheard()


class ProviderSession(abc.ABC):
    """One call's conversation with its provider(s). Audio in and out is PCM16 8 kHz mono."""

    _listener: Listener

    def __init__(self) -> None:
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def release(self) -> None:
        """The call is over: let go of it. A cancelled connection attempt's traceback may keep this session
        for the cyclic collector; it must not keep the call (and its buffers) with it."""
        self._listener = UNHEARD

    def set_call_info(self, url: str | None, metadata: dict[str, Any]) -> None:
        """The call's /call metadata, when it arrived after the session was made (from a peer); before start()."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect (with the pool's timeout and retries); raises ProviderUnavailable."""

    @abc.abstractmethod
    def send_audio(self, pcm: bytes) -> None:
        """Caller audio; must not block (it runs 50 times a second per call)."""

    @abc.abstractmethod
    def send_dtmf(self, digit: str) -> None: ...

    def interrupt(self) -> None:
        """The caller barged in: stop producing the current reply."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    def _end(self, reason: str) -> None:
        """The provider side ended the session (closed, or failed beyond retries)."""
        if not self.ended.done():
            self.ended.set_result(reason)
