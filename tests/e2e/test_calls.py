"""Calls through a real worker process and a real reference provider process, over real sockets."""

from __future__ import annotations

import asyncio
import statistics
import uuid

import pytest
from procs import Proc, ProviderFactory, WorkerFactory, free_port, http_json, paced_whole, sts_url

from avr_runtime.audio import g711
from avr_runtime.client.audiosocket import CallResult, place_call
from avr_runtime.protocol import audiosocket as wire


async def call(worker: Proc, audio: bytes, **kw: object) -> CallResult:
    return await place_call("127.0.0.1", worker.ports["audiosocket"], audio, **kw)  # type: ignore[arg-type]


def frames_of(audio: bytes, size: int, pad: int = 0) -> list[bytes]:
    padded = audio + bytes([pad]) * (-len(audio) % size)
    return [padded[i : i + size] for i in range(0, len(padded), size)]


def assert_echoed(sent: list[bytes], received: list[bytes], silence: bytes) -> None:
    """The echo is bit-exact: what came back is the sent speech, in order, nothing invented, and ≥ 90% of it
    (under load the pacer may trim a frame of backlog)."""
    back = [f for f in received if f != silence]
    it = iter(sent)
    assert all(f in it for f in back), "in order, nothing invented"
    assert len(back) >= 0.9 * sum(1 for f in sent if f != silence)


async def test_sts_echo_call_is_framed_paced_and_complete(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts))
    result = await call(w, speech, tail_s=0.6)
    assert result.hangup, "the worker answers a hangup with a hangup"
    assert all(len(f) == 320 for f in result.audio_frames)
    # one outbound frame per inbound frame (give or take the first and the last)
    assert paced_whole(result)
    gaps = result.gaps_ms()
    assert 19.0 <= statistics.median(gaps) <= 21.0
    assert sum(1 for g in gaps if g < 10.0) <= len(gaps) * 0.02, "no bursts"
    assert_echoed(frames_of(speech, 320), result.audio_frames, bytes(320))
    assert w.metric("avr_calls_ended_total", {"reason": "hangup"}) == 1
    assert w.metric("avr_frame_latency_seconds_count") >= len(speech) // 320 - 2
    assert w.metric("avr_active_calls") == 0


async def test_silence_when_the_provider_has_nothing_to_say(worker: WorkerFactory) -> None:
    w = worker()  # no provider: every outbound frame is silence, still one every 20 ms
    result = await call(w, bytes(320 * 50), tail_s=0.0)
    assert len(result.audio_frames) >= 45
    assert result.non_silent_frames == 0
    assert statistics.median(result.gaps_ms()) == pytest.approx(20.0, abs=1.0)


async def test_dtmf_reaches_the_provider_and_star_interrupts(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts))
    await call(w, speech, dtmf={10: "5", 20: "*"})
    _, stats, _ = http_json(sts.url("/stats"))
    assert stats["sts_dtmf"] == 2
    assert w.metric("avr_interruptions_total", {"source": "provider"}) == 1


async def test_provider_goodbye_ends_the_call_cleanly(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts))
    result = await call(w, speech * 3, dtmf={25: "#"}, hangup=False)
    assert result.hangup and result.errors == []
    assert result.frames_sent < len(speech * 3) // 320, "the call ended before the caller finished"
    assert w.metric("avr_calls_ended_total", {"reason": "provider_closed"}) == 1


async def test_provider_down_ends_the_call_within_timeout_times_retries(worker: WorkerFactory) -> None:
    w = worker(sts_url=f"ws://127.0.0.1:{free_port()}", connection_timeout=300, max_retries=2)
    loop = asyncio.get_running_loop()
    start = loop.time()
    result = await call(w, bytes(320 * 500), hangup=False, time_limit=20)
    elapsed = loop.time() - start
    assert result.hangup
    assert result.errors == [wire.ErrorCode.PROVIDER_UNAVAILABLE]
    # bound: 3 attempts x 0.3 s + backoff (< 0.15 s) + process noise; a hung call would run 10 s
    assert elapsed < 4.0
    assert w.metric("avr_calls_ended_total", {"reason": "provider_unavailable"}) == 1
    assert w.metric("avr_provider_retries_total", {"provider": "sts"}) == 2


async def test_malformed_frame_ends_only_its_call(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts))
    port = w.ports["audiosocket"]

    async def bad_call(frame: bytes) -> tuple[bytes, bool]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(wire.uuid_frame(uuid.uuid4()) + wire.audio_frame(bytes(320)) + frame)
        data = b""
        try:
            async with asyncio.timeout(5):
                while chunk := await reader.read(65536):
                    data += chunk
            closed = True
        except TimeoutError:
            closed = False
        writer.close()
        return data, closed

    good = [asyncio.create_task(call(w, speech)) for _ in range(2)]
    await asyncio.sleep(0.5)
    outcomes = await asyncio.gather(
        bad_call(b"\x42\x00\x01\x00"),  # unknown type
        bad_call(b"\x10\xff\xff"),  # absurd length, refused from the header alone
        bad_call(b"\x12\x02\x80" + bytes(640)),  # 16 kHz slin after 8 kHz audio: the rate changed
    )
    for data, closed in outcomes:
        assert closed, "the malformed call is ended, not left hanging"
        frames = wire.FrameParser().feed(data)
        kinds = [f.kind for f in frames]
        assert wire.Kind.ERROR in kinds and kinds[-1] is wire.Kind.HANGUP
    results = await asyncio.gather(*good)
    for r in results:
        assert r.hangup and r.errors == []
        assert paced_whole(r)
    for reason in ("unknown_type", "bad_length", "rate_changed"):
        assert w.metric("avr_protocol_errors_total", {"leg": "audiosocket", "reason": reason}) == 1
    assert '"reason": "unknown_type"' in w.log
    assert w.metric("avr_calls_ended_total", {"reason": "hangup"}) == 2
    assert w.popen.poll() is None


async def test_truncated_frame_at_close_is_logged(worker: WorkerFactory) -> None:
    w = worker()
    _reader, writer = await asyncio.open_connection("127.0.0.1", w.ports["audiosocket"])
    writer.write(wire.uuid_frame(uuid.uuid4()) + b"\x10\x01\x40" + bytes(100))
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    await asyncio.sleep(0.3)
    assert w.metric("avr_protocol_errors_total", {"leg": "audiosocket", "reason": "truncated"}) == 1
    assert w.metric("avr_active_calls") == 0


async def test_ulaw_payloads_are_detected_and_answered_in_ulaw(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts))
    ulaw = g711.pcm_to_ulaw(speech)
    result = await call(w, ulaw, frame_bytes=160, silence_byte=g711.ULAW_SILENCE, tail_s=0.3)
    assert result.audio_frames and all(len(f) == 160 for f in result.audio_frames)
    # compared as PCM: μ-law has two codes for zero, so re-encoding is exact in value, not in bytes
    sent = [g711.ulaw_to_pcm(f) for f in frames_of(ulaw, 160, g711.ULAW_SILENCE)]
    assert_echoed(sent, [g711.ulaw_to_pcm(f) for f in result.audio_frames], bytes(320))


async def test_call_metadata_reaches_the_sts_provider(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts))
    call_id = str(uuid.uuid4())
    status, body, _ = http_json(w.url("/call"), {"uuid": call_id, "payload": {"lang": "en", "campaign": "7"}})
    assert status == 200 and body["uuid"] == call_id
    await call(w, speech[: 320 * 20], call_uuid=call_id)
    _, stats, _ = http_json(sts.url("/stats"))
    assert stats.get("sts_query:lang=en&campaign=7") == 1
