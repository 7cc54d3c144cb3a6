"""The ASR → LLM → TTS chain against the reference providers, plus the TTS cache and its pre-warm batch."""

from __future__ import annotations

from procs import ProviderFactory, WorkerFactory, chain_env, free_port, http_json, paced_whole

from avr_runtime.client.audiosocket import place_call


async def test_caller_speech_gets_a_spoken_reply(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    p = provider("all")
    w = worker(**chain_env(p))
    result = await place_call("127.0.0.1", w.ports["audiosocket"], speech, tail_s=3.0)
    _, stats, _ = http_json(p.url("/stats"))
    assert stats["asr_streams"] == 1
    assert stats["asr_utterances"] >= 1
    assert stats["llm_requests"] >= 1
    assert stats["tts_requests"] >= 2, "the reply is spoken sentence by sentence"
    # as avr-core sends it: the call's uuid on every provider request
    assert stats["asr_x_uuid"] == stats["asr_streams"]
    assert stats["llm_x_uuid"] == stats["llm_requests"]
    assert stats["tts_x_uuid"] == stats["tts_requests"]
    assert result.non_silent_frames > 25, "at least half a second of agent speech came back"
    assert all(len(f) == 320 for f in result.audio_frames)
    assert w.metric("avr_turn_latency_seconds_count") >= 1
    assert w.metric("avr_calls_ended_total", {"reason": "hangup"}) == 1


async def test_llm_down_degrades_the_turn_not_the_call(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    p = provider("asr,tts")  # no LLM route: 404 from the provider
    env = chain_env(p) | {"LLM_URL": f"http://127.0.0.1:{free_port()}/prompt-stream"}
    w = worker(**env, connection_timeout=300, max_retries=1)
    result = await place_call("127.0.0.1", w.ports["audiosocket"], speech, tail_s=2.0)
    assert result.hangup and result.errors == []
    assert paced_whole(result), "the call carried on, paced"
    assert result.non_silent_frames == 0
    assert w.metric("avr_provider_errors_total", {"provider": "llm", "reason": "ClientConnectorError"}) >= 1
    assert "turn dropped" in w.log


async def test_asr_down_ends_the_call_with_an_error(worker: WorkerFactory, speech: bytes) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    w = worker(
        asr_url=f"{dead}/speech-to-text-stream",
        llm_url=f"{dead}/prompt-stream",
        tts_url=f"{dead}/text-to-speech-stream",
        connection_timeout=200,
        max_retries=1,
        audiosocket_error_frames="true",
    )
    result = await place_call("127.0.0.1", w.ports["audiosocket"], speech, hangup=False, time_limit=10)
    assert result.hangup and result.errors == [4]


def test_prewarm_reports_each_phrase_and_fills_the_cache(provider: ProviderFactory, worker: WorkerFactory) -> None:
    p = provider("all")
    w = worker(**chain_env(p))
    phrases = ["Welcome to our service.", "This one will fail.", 42, "Please hold."]
    status, body, _ = http_json(w.url("/cache/prewarm"), {"phrases": phrases})
    assert status == 200
    assert (body["total"], body["succeeded"], body["failed"]) == (4, 2, 2)
    by_text = {str(r["text"]): r for r in body["results"]}
    assert by_text["Welcome to our service."]["ok"] and by_text["Welcome to our service."]["bytes"] > 0
    assert not by_text["This one will fail."]["ok"] and "500" in by_text["This one will fail."]["error"]
    assert not by_text["42"]["ok"]
    _, before, _ = http_json(p.url("/stats"))
    # the second time, the cache answers: no new TTS request, reported as cached
    status, again, _ = http_json(w.url("/cache/prewarm"), {"phrases": ["welcome to our   SERVICE."]})
    assert status == 200 and again["results"][0]["cached"] is True
    _, after, _ = http_json(p.url("/stats"))
    assert after["tts_requests"] == before["tts_requests"]
    assert w.metric("avr_cache_entries") == 2


def test_prewarm_needs_a_tts_provider(worker: WorkerFactory) -> None:
    w = worker()
    status, _, _ = http_json(w.url("/cache/prewarm"), {"phrases": ["hi"]})
    assert status == 409


async def test_cached_phrases_skip_tts_during_calls(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    p = provider("all")
    w = worker(**chain_env(p))
    for _ in range(2):
        await place_call("127.0.0.1", w.ports["audiosocket"], speech, tail_s=2.5)
    # the reference LLM's closing sentences are the same on every first turn: the second call hits the cache
    assert w.metric("avr_cache_hits_total") >= 2
    _, stats, _ = http_json(p.url("/stats"))
    assert stats["tts_requests"] == w.metric("avr_cache_misses_total")


async def test_caller_barging_in_cuts_the_reply(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    """The chain has no provider-side VAD: the worker's own analysis windows detect the caller talking over the
    agent, drop the queued reply and cancel the turn."""
    p = provider("all")
    w = worker(**chain_env(p))
    pause = bytes(2 * 8000 * 2)  # 2 s: the utterance ends, the reply starts playing
    result = await place_call("127.0.0.1", w.ports["audiosocket"], speech + pause + speech, tail_s=1.0)
    assert w.metric("avr_interruptions_total", {"source": "vad"}) >= 1
    assert w.metric("avr_frames_dropped_total", {"reason": "bargein"}) > 0
    assert result.hangup
