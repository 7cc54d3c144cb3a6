"""The echo STS provider's behaviour, whichever server carries its WebSocket, and the counters every provider keeps."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Final

from avr_runtime.protocol import sts

_AUDIO_PREFIX: Final = b'{"type":"audio"'


class Stats:
    """Request counters, served on GET /stats so tests can see what reached the provider."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self.sources: list[Callable[[], dict[str, int]]] = []  # counts kept elsewhere (the compiled echo engine)

    @property
    def counts(self) -> Counter[str]:
        for source in self.sources:
            self._counts.update({key: n for key, n in source().items() if n})
        return self._counts

    def __getitem__(self, key: str) -> int:
        return self.counts[key]

    def __setitem__(self, key: str, value: int) -> None:
        self._counts[key] = value


class EchoSession:
    """One STS session: caller audio comes back as is; DTMF ``*`` sends an interruption, ``#`` says goodbye and
    closes, other digits are reported as a user transcript."""

    __slots__ = ("call_uuid", "query", "stats")

    def __init__(self, stats: Stats, query: str = "") -> None:
        self.stats = stats
        self.query = query
        self.call_uuid = "?"
        stats["sts_sessions"] += 1

    def on_text(self, text: bytes) -> tuple[list[bytes], bool]:
        """Replies to one text message, and whether to close the session after them."""
        if text.startswith(_AUDIO_PREFIX):  # hot path: the echo is the same message
            self.stats["sts_audio"] += 1
            return [text], False
        try:
            message = sts.decode_client(text)
        except sts.MessageError as exc:
            return [sts.encode_event(sts.ProviderError(f"bad message: {exc}")).encode()], False
        if isinstance(message, sts.Init):
            self.call_uuid = message.uuid
            self.stats["sts_init"] += 1
            if self.query:
                self.stats[f"sts_query:{self.query}"] += 1
        elif isinstance(message, sts.Dtmf):
            self.stats["sts_dtmf"] += 1
            if message.digit == "*":
                return [sts.encode_event(sts.Interruption()).encode()], False
            if message.digit == "#":
                return [sts.encode_event(sts.Transcript("agent", "Goodbye.")).encode()], True
            return [sts.encode_event(sts.Transcript("user", f"pressed {message.digit}")).encode()], False
        return [], False
