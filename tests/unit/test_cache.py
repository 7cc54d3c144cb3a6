"""TTS cache: LRU at max size, time-to-live, key normalisation, metrics."""

from __future__ import annotations

import time

from prometheus_client import REGISTRY

from avr_runtime.services.cache import TtsCache, normalise


def metric(name: str) -> float:
    value = REGISTRY.get_sample_value(name)
    return 0.0 if value is None else value


def test_normalise() -> None:
    assert normalise("  Hello,   World!\n") == "hello, world!"
    assert normalise("A\tB") == normalise("a b")
    assert normalise("hello") != normalise("hello!")


def test_key_normalises_text_only() -> None:
    k = TtsCache.key("http://tts", "alloy", "  Good   Morning ")
    assert k == ("http://tts", "alloy", "good morning")
    assert TtsCache.key("http://tts", "alloy", "good morning") == k
    assert TtsCache.key("http://tts", "echo", "good morning") != k
    assert TtsCache.key("http://other", "alloy", "good morning") != k


def test_put_and_get() -> None:
    c = TtsCache(10, 60)
    k = c.key("p", "v", "Hello")
    assert c.get(k) is None
    c.put(k, b"audio")
    assert c.get(c.key("p", "v", "  hello ")) == b"audio"
    assert k in c
    assert len(c) == 1


def test_empty_audio_is_not_cached() -> None:
    c = TtsCache(10, 60)
    c.put(c.key("p", "v", "x"), b"")
    assert len(c) == 0


def test_lru_eviction_at_max_size() -> None:
    c = TtsCache(3, 60)
    keys = [c.key("p", "v", f"phrase {i}") for i in range(4)]
    for k in keys[:3]:
        c.put(k, b"a")
    assert c.get(keys[0]) == b"a"  # touch 0: 1 is now least recently used
    c.put(keys[3], b"a")
    assert len(c) == 3
    assert keys[1] not in c
    assert keys[0] in c and keys[2] in c and keys[3] in c


def test_ttl_expiry() -> None:
    c = TtsCache(10, ttl=0.05)
    k = c.key("p", "v", "soon gone")
    c.put(k, b"a")
    assert c.get(k) == b"a"
    time.sleep(0.12)
    assert c.get(k) is None
    assert k not in c


def test_disabled_at_size_zero() -> None:
    c = TtsCache(0, 60)
    assert not c.enabled
    k = c.key("p", "v", "x")
    c.put(k, b"a")
    assert c.get(k) is None
    assert len(c) == 0


def test_metrics_count_hits_misses_and_entries() -> None:
    hits, misses = metric("avr_cache_hits_total"), metric("avr_cache_misses_total")
    c = TtsCache(10, 60)
    k = c.key("p", "v", "metrics")
    c.get(k)
    c.put(k, b"a")
    c.put(c.key("p", "v", "other"), b"b")
    c.get(k)
    c.get(k)
    assert metric("avr_cache_hits_total") == hits + 2
    assert metric("avr_cache_misses_total") == misses + 1
    assert metric("avr_cache_entries") == 2


def test_disabled_cache_counts_nothing() -> None:
    hits, misses = metric("avr_cache_hits_total"), metric("avr_cache_misses_total")
    c = TtsCache(0, 60)
    c.get(c.key("p", "v", "x"))
    assert metric("avr_cache_hits_total") == hits
    assert metric("avr_cache_misses_total") == misses
