"""Calls through a real worker process and a real reference provider process, over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
import time
import uuid
from dataclasses import dataclass, field

import pytest
from echo_check import assert_echoed, frames_of
from procs import Proc, ProviderFactory, WorkerFactory, free_port, http_json, paced_whole, sts_url
from vectors import VECTORS, split_frames

from avr_runtime.audio import g711
from avr_runtime.client.audiosocket import CallResult, place_call
from avr_runtime.protocol import audiosocket as wire


async def call(worker: Proc, audio: bytes, **kw: object) -> CallResult:
    return await place_call("127.0.0.1", worker.ports["audiosocket"], audio, **kw)  # type: ignore[arg-type]


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


@pytest.mark.parametrize("error_frames", [False, True])
async def test_provider_down_ends_the_call_within_timeout_times_retries(
    worker: WorkerFactory, error_frames: bool
) -> None:
    """By default a plain hangup (Asterisk's AudioSocket() returns 0 and the dialplan goes on); the error frame
    (0x04) comes first only with AUDIOSOCKET_ERROR_FRAMES. The reason is logged and counted either way."""
    w = worker(
        sts_url=f"ws://127.0.0.1:{free_port()}",
        connection_timeout=300,
        max_retries=2,
        audiosocket_error_frames=str(error_frames).lower(),
    )
    loop = asyncio.get_running_loop()
    start = loop.time()
    result = await call(w, bytes(320 * 500), hangup=False, time_limit=20)
    elapsed = loop.time() - start
    assert result.hangup
    assert result.errors == ([wire.ErrorCode.PROVIDER_UNAVAILABLE] if error_frames else [])
    assert '"reason": "provider_unavailable"' in w.log
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
        assert kinds[-1] is wire.Kind.HANGUP and wire.Kind.ERROR not in kinds, "a plain hangup by default"
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


@dataclass
class Replayed:
    audio: list[bytes] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    kinds: list[wire.Kind] = field(default_factory=list)
    ended_at: float = 0.0


async def replay(worker: Proc, stream: bytes, *, pause_s: float = 0.2) -> tuple[Replayed, float]:
    """Send what a real Asterisk sent, as it sent it: audio frames 20 ms apart, nothing at all for ``pause_s``
    after the last one (the caller is silent), DTMF 200 ms apart; then wait for the worker's end (the echo
    provider says goodbye on '#'), and close, as Asterisk does (it never sends a hangup). Returns what came back
    and when the pause began."""
    got = Replayed()
    reader, writer = await asyncio.open_connection("127.0.0.1", worker.ports["audiosocket"])

    async def receive() -> None:
        parser = wire.FrameParser()
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                for f in parser.feed(data):
                    got.kinds.append(f.kind)
                    if f.kind is wire.Kind.AUDIO:
                        got.audio.append(f.payload)
                        got.arrivals.append(time.monotonic())
        got.ended_at = time.monotonic()

    receiver = asyncio.create_task(receive())
    loop = asyncio.get_running_loop()
    start, sent, paused = loop.time(), 0, 0.0
    for raw in split_frames(stream):
        if raw[0] == wire.Kind.DTMF:
            if not paused:
                paused = time.monotonic()
                await asyncio.sleep(pause_s)
            else:
                await asyncio.sleep(0.2)
        writer.write(raw)
        if raw[0] == wire.Kind.AUDIO:
            sent += 1
            await asyncio.sleep(max(0.0, start + sent * 0.02 - loop.time()))
    async with asyncio.timeout(5):
        await receiver
    writer.close()
    return got, paused


def caller_pcm(name: str) -> list[bytes]:
    """The caller's audio in a vector, each frame as the PCM16 the provider gets."""
    decode = {"ulaw": g711.ulaw_to_pcm, "alaw": g711.alaw_to_pcm}.get(name.rsplit("-", 1)[-1], bytes)
    stream = (VECTORS / f"{name}.bin").read_bytes()
    return [decode(raw[3:]) for raw in split_frames(stream) if raw[0] == wire.Kind.AUDIO]


@pytest.mark.parametrize("name", ["dial-ulaw", "dial-alaw", "app-slin"])
async def test_what_asterisk_sends_is_echoed_in_slin_whatever_the_caller_s_codec(
    provider: ProviderFactory, worker: WorkerFactory, name: str
) -> None:
    """Asterisk reads every 0x10 frame as slin, on a c(ulaw) or c(alaw) channel too (res_audiosocket.c): G.711 is
    detected to read the caller, and the replies are slin. The recorded streams end with a short frame (6 bytes of
    G.711, 12 of slin): its echo is played, padded. The stream is relayed in the compiled data plane when it is
    slin, and stays in Python when it is G.711."""
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts))
    got, _ = await replay(w, (VECTORS / f"{name}.bin").read_bytes())
    assert got.audio and all(len(f) == 320 for f in got.audio), "320 bytes of slin, never G.711"
    frames = caller_pcm(name)
    *speech, tail = frames
    assert len(tail) == 12, "the vector's last frame: 6 samples"
    assert_echoed([*speech, tail + bytes(308)], got.audio, bytes(320))
    assert tail + bytes(308) in got.audio, "the short last frame was played, padded"
    assert got.kinds[-1] is wire.Kind.HANGUP and wire.Kind.ERROR not in got.kinds
    _, stats, _ = http_json(sts.url("/stats"))
    assert stats["sts_dtmf"] == 3
    assert w.metric("avr_calls_ended_total", {"reason": "provider_closed"}) == 1, "'#': the provider's goodbye"
    if name == "app-slin":
        assert w.metric("avr_calls_relayed_total") == 1
    else:
        assert f"G.711 {name[-4:]} detected" in w.log


async def test_the_worker_keeps_talking_while_asterisk_s_caller_is_silent(
    provider: ProviderFactory, worker: WorkerFactory
) -> None:
    """Asterisk sends nothing while its caller is silent, and its AudioSocket() application ends a call after 2 s
    with nothing from either side: the worker's frames go on every 20 ms through a 3 s pause of the caller."""
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts))
    got, paused = await replay(w, (VECTORS / "app-slin.bin").read_bytes(), pause_s=3.0)
    during = [t for t in got.arrivals if paused <= t <= paused + 3.0]
    assert len(during) >= 3.0 / 0.02 * 0.95
    assert max(b - a for a, b in itertools.pairwise(during)) < 0.1, "a gap Asterisk would notice"
    assert got.ended_at > paused + 3.0, "the call outlived the caller's silence"
    assert w.metric("avr_calls_ended_total", {"reason": "provider_closed"}) == 1


async def test_a_caller_silent_from_the_start_hears_silence_at_once(
    provider: ProviderFactory, worker: WorkerFactory
) -> None:
    """A caller that says nothing at first: Asterisk sends its UUID and then nothing (a Local channel, a phone with
    silence suppression), and AudioSocket() gives up after 2 s of no activity. The worker's silence frames start
    with the call, before any caller audio, and come every 20 ms."""
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts))
    reader, writer = await asyncio.open_connection("127.0.0.1", w.ports["audiosocket"])
    writer.write(wire.uuid_frame(uuid.uuid4()))
    loop = asyncio.get_running_loop()
    start, arrivals, parser = loop.time(), [], wire.FrameParser()
    async with asyncio.timeout(10):
        while loop.time() - start < 3.0:
            data = await reader.read(65536)
            assert data, "the worker hung up on a silent caller"
            arrivals += [loop.time()] * sum(1 for f in parser.feed(data) if f.kind is wire.Kind.AUDIO)
    writer.close()
    assert arrivals[0] - start < 0.1, "the first frame came late"
    assert len(arrivals) >= 3.0 / 0.02 * 0.9
    assert max(b - a for a, b in itertools.pairwise(arrivals)) < 0.1


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
