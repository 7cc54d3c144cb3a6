"""STS calls on the compiled data plane (server/_relay.c), through a real worker and a real provider process.

Once a call is steady (slin AudioSocket, ws:// provider connected) its sockets move to the
C engine; these tests check that it happened (``avr_calls_relayed_total``) and that the call behaves exactly as it
does in Python: echoed speech framed and paced, DTMF, protocol errors, hang-ups, provider goodbye and drain.
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import time
from typing import Any

import orjson
from echo_check import assert_echoed, frames_of
from procs import Proc, ProviderFactory, WorkerFactory, http_json, paced_whole, sts_url

from avr_runtime.client.audiosocket import CallResult, place_call
from avr_runtime.protocol import audiosocket as wire
from avr_runtime.server import relay

SILENCE = bytes(320)
PROBE = bytes([1, 2]) * 160  # one frame the echo brings back


async def steady_call(worker: Proc, audio: bytes, *, bad: dict[int, bytes] | None = None, **kw: Any) -> CallResult:
    """A call as the load benchmark places them: one probe frame, its echo back, a pause, then ``audio`` paced in
    real time, so the handover has happened before the stream. What the result holds is counted from the start of
    the stream. ``bad`` maps a frame index to raw bytes sent just before that frame.
    """
    return await place_call("127.0.0.1", worker.ports["audiosocket"], audio, probe=PROBE, raw=bad, **kw)


async def metric(proc: Proc, name: str, labels: dict[str, str] | None = None) -> float:
    """A scrape off the event loop, so the calls in flight keep their pace."""
    return await asyncio.to_thread(proc.metric, name, labels)


def assert_framed_and_paced(result: CallResult) -> None:
    assert result.hangup and result.errors == []
    assert result.audio_frames and all(len(f) == 320 for f in result.audio_frames)
    assert paced_whole(result)
    gaps = result.gaps_ms()
    assert 19.0 <= statistics.median(gaps) <= 21.0
    assert sum(1 for g in gaps if g < 10.0) <= len(gaps) * 0.02, "no bursts"


def assert_speech_echoed(sent: bytes, received: list[bytes]) -> None:
    """Bit-exact echo of the 8 kHz speech sent, in 320-byte frames."""
    assert_echoed(frames_of(sent), received)


def log_records(proc: Proc, message: str) -> list[dict[str, Any]]:
    """The worker's JSON log records whose message starts with ``message``."""
    records = []
    for line in proc.log.splitlines():
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict) and str(record.get("message", "")).startswith(message):
            records.append(record)
    return records


async def test_a_steady_call_moves_to_the_data_plane_and_echoes_framed_and_paced(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts))
    task = asyncio.create_task(steady_call(w, speech, tail_s=0.6))
    await asyncio.sleep(1.0)
    assert await metric(w, "avr_calls_relayed_total") == 1, "handed over within the first second"
    result = await task
    assert_framed_and_paced(result)
    assert_speech_echoed(speech, result.audio_frames)
    # every caller frame (and the probe) reached the provider, in Python before the handover and in C after it
    _, stats, _ = http_json(sts.url("/stats"))
    assert stats["sts_audio"] == result.frames_sent + 1
    (ended,) = log_records(w, "call ended")
    assert ended["uuid"] == result.uuid and ended["reason"] == "hangup"
    assert ended["frames_in"] == result.frames_sent + 1
    # the engine's counters reach /metrics
    spoken = sum(1 for f in frames_of(speech) if f != SILENCE)
    assert w.metric("avr_frames_out_total", {"kind": "audio"}) >= 0.9 * spoken
    assert w.metric("avr_frame_latency_seconds_count") >= 0.9 * spoken
    assert w.metric("avr_frame_latency_seconds_bucket", {"le": "0.03"}) >= 0.9 * spoken, "played within 30 ms"
    assert w.metric("avr_calls_ended_total", {"reason": "hangup"}) == 1
    assert w.metric("avr_active_calls") == 0
    assert w.handovers() == {"moved": 1.0}, "decided once, and counted as moved"


def test_the_data_plane_is_built() -> None:
    assert relay.AVAILABLE, "the compiled module is missing: was the package installed without a C compiler?"


async def test_a_call_streaming_from_its_first_instant_is_handed_over_mid_reply(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    """The echo keeps a reply playing without a gap from the first frame: the handover carries the queued audio,
    the partial frame and the pacer's state across, so the caller hears neither a gap nor a burst."""
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts))
    task = asyncio.create_task(place_call("127.0.0.1", w.ports["audiosocket"], speech, tail_s=0.6))
    await asyncio.sleep(1.0)
    assert await metric(w, "avr_calls_relayed_total") == 1
    result = await task
    assert_framed_and_paced(result)
    assert_speech_echoed(speech, result.audio_frames)
    assert w.metric("avr_frames_dropped_total", {"reason": "overflow"}) == 0
    assert w.metric("avr_frames_dropped_total", {"reason": "latency"}) == 0
    (ended,) = log_records(w, "call ended")
    assert ended["reason"] == "hangup" and ended["frames_in"] == result.frames_sent


async def test_fast_path_off_keeps_calls_in_python(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts), fast_path="false")
    result = await steady_call(w, speech, tail_s=0.6)
    assert_framed_and_paced(result)
    assert_speech_echoed(speech, result.audio_frames)
    assert w.metric("avr_calls_relayed_total") == 0
    assert w.metric("avr_calls_ended_total", {"reason": "hangup"}) == 1
    assert w.handovers() == {"fast_path_off": 1.0}, "the reason it stayed in Python is counted"


async def test_dtmf_after_the_handover_reaches_the_provider_and_hangup_ends_cleanly(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts))
    task = asyncio.create_task(steady_call(w, speech, dtmf={60: "5", 75: "*"}, tail_s=0.3))
    await asyncio.sleep(0.9)  # the first digit goes 1.2 s into the stream
    assert await metric(w, "avr_calls_relayed_total") == 1
    _, stats, _ = await asyncio.to_thread(http_json, sts.url("/stats"))
    assert stats.get("sts_dtmf", 0) == 0
    result = await task
    assert result.hangup and result.errors == []
    _, stats, _ = http_json(sts.url("/stats"))
    assert stats["sts_dtmf"] == 2
    assert w.metric("avr_interruptions_total", {"source": "provider"}) == 1, "'*' came back as an interruption"
    assert w.metric("avr_calls_ended_total", {"reason": "hangup"}) == 1
    assert w.metric("avr_active_calls") == 0
    assert len(log_records(w, "call ended")) == 1


BAD_FRAMES = {
    "unknown_type": b"\x42\x00\x01\x00",
    "bad_length": b"\x10\x00\x03abc",  # slin of odd length: the relay hands it to Python, which refuses it
    "rate_changed": b"\x12\x02\x80" + SILENCE * 2,  # 16 kHz audio in an 8 kHz call
}


async def test_malformed_input_after_the_handover_ends_only_that_call(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts), audiosocket_error_frames="true")  # the error frame goes through the relay
    good = asyncio.create_task(steady_call(w, speech * 2))
    bad = [asyncio.create_task(steady_call(w, bytes(320 * 150), bad={50: frame})) for frame in BAD_FRAMES.values()]
    await asyncio.sleep(0.7)  # the bad frames go 1 s into the stream
    assert await metric(w, "avr_calls_relayed_total") == 1 + len(bad), "every call was handed over first"
    outcomes = await asyncio.gather(*bad)
    for result, reason in zip(outcomes, BAD_FRAMES, strict=True):
        assert result.closed and result.hangup, f"{reason}: the malformed call is ended, not left hanging"
        assert result.errors == [wire.ErrorCode.PROTOCOL]
        assert result.frames_sent < 150
        assert all(len(f) == 320 for f in result.audio_frames)
        assert w.metric("avr_protocol_errors_total", {"leg": "audiosocket", "reason": reason}) == 1
        logged = [r for r in log_records(w, "call ended") if r["uuid"] == result.uuid]
        assert [r["reason"] for r in logged] == [f"protocol_error:{reason}"]
        (warned,) = [r for r in log_records(w, "malformed AudioSocket input") if r["uuid"] == result.uuid]
        assert warned["reason"] == reason and reason in warned["message"]
    result = await good
    assert_framed_and_paced(result)
    assert_speech_echoed(speech * 2, result.audio_frames)
    assert w.metric("avr_calls_ended_total", {"reason": "protocol_error"}) == len(BAD_FRAMES)
    assert w.metric("avr_calls_ended_total", {"reason": "hangup"}) == 1
    assert w.metric("avr_active_calls") == 0
    assert w.popen.poll() is None


async def test_provider_goodbye_after_the_handover_ends_the_call_cleanly(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts))
    result = await steady_call(w, speech * 3, dtmf={60: "#"}, hangup=False)
    assert result.hangup and result.errors == []
    assert result.frames_sent < len(speech * 3) // 320, "the call ended before the caller finished"
    assert w.metric("avr_calls_relayed_total") == 1
    assert w.metric("avr_calls_ended_total", {"reason": "provider_closed"}) == 1


async def test_sigterm_lets_relayed_calls_finish_then_exits_zero(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts), drain_timeout=30)
    port = w.ports["audiosocket"]
    audio = speech * 2
    calls = [asyncio.create_task(steady_call(w, audio)) for _ in range(2)]
    await asyncio.sleep(1.0)
    assert await metric(w, "avr_calls_relayed_total") == 2
    w.popen.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    status, body, _ = await asyncio.to_thread(http_json, w.url("/ready"))
    assert status == 503 and body["status"] == "draining"
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        refused = False
    except ConnectionRefusedError:
        refused = True
    assert refused, "the listener is closed while relayed calls go on"
    results = await asyncio.gather(*calls)
    for r in results:
        assert_framed_and_paced(r)
        assert_speech_echoed(audio, r.audio_frames)
    assert await asyncio.to_thread(w.popen.wait, 10) == 0
    assert "drained: 2 call(s) finished, 0 ended at the deadline" in w.log


async def test_drain_deadline_hangs_up_relayed_calls(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts), drain_timeout=1)
    task = asyncio.create_task(steady_call(w, speech * 5, hangup=False))
    await asyncio.sleep(0.8)
    assert await metric(w, "avr_calls_relayed_total") == 1
    w.popen.send_signal(signal.SIGTERM)
    started = time.monotonic()
    result = await task
    assert result.hangup and result.errors == []
    assert time.monotonic() - started < 5.0
    assert await asyncio.to_thread(w.popen.wait, 10) == 0
    assert "1 ended at the deadline" in w.log
    (ended,) = log_records(w, "call ended")
    assert ended["reason"] == "drain_timeout"
