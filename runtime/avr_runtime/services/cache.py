"""TTS audio cache: the same text in the same voice from the same provider is the same audio."""

from __future__ import annotations

from cachetools import TTLCache

from avr_runtime.services import metrics

CacheKey = tuple[str, str, str]  # provider URL, voice, text


def normalise(text: str) -> str:
    """Whitespace and case differences do not change what TTS says."""
    return " ".join(text.split()).lower()


class TtsCache:
    """LRU with a time-to-live (cachetools' TTLCache evicts least-recently-used first when full)."""

    def __init__(self, max_size: int = 1000, ttl: float = 3600) -> None:
        self.enabled = max_size > 0
        self._cache: TTLCache[CacheKey, bytes] = TTLCache(maxsize=max(1, max_size), ttl=ttl)

    @staticmethod
    def key(provider: str, voice: str, text: str) -> CacheKey:
        return (provider, voice, normalise(text))

    def get(self, key: CacheKey) -> bytes | None:
        if not self.enabled:
            return None
        audio = self._cache.get(key)
        (metrics.CACHE_HITS if audio is not None else metrics.CACHE_MISSES).inc()
        return audio

    def put(self, key: CacheKey, audio: bytes) -> None:
        if self.enabled and audio:
            self._cache[key] = audio
            metrics.CACHE_ENTRIES.set(len(self._cache))

    def __contains__(self, key: CacheKey) -> bool:
        return key in self._cache

    def __len__(self) -> int:
        return len(self._cache)
