"""Rate limit, concurrency cap, readiness and graceful drain, against a real worker process."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

from procs import ProviderFactory, WorkerFactory, http_json, paced_whole, sts_url

from avr_runtime.client.audiosocket import place_call
from avr_runtime.protocol import audiosocket as wire


async def refused_code(port: int) -> int | None:
    """Open an AudioSocket connection the way Asterisk does; None if the worker answers it, else the error code it
    refuses it with (AUDIOSOCKET_ERROR_FRAMES), 0 for a plain hangup, -1 for anything else."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(wire.uuid_frame(uuid.uuid4()))
    try:
        async with asyncio.timeout(1.0):
            data = await reader.read(64)
    except TimeoutError:
        data = b"<open>"
    writer.close()
    if data == b"<open>":
        return None
    if data[:1] == bytes([wire.Kind.AUDIO]):
        return None  # accepted: the pacer is already sending
    frames = wire.FrameParser().feed(data) if data else []
    if frames and frames[0].kind is wire.Kind.HANGUP:
        return 0
    return frames[0].payload[0] if frames and frames[0].kind is wire.Kind.ERROR else -1


def test_http_rate_limit_refuses_the_101st_request_from_one_address(worker: WorkerFactory) -> None:
    w = worker(source_rate_limit=100, rate_window=60)
    statuses = [http_json(w.url("/call"), {"uuid": f"u{i}", "payload": {}})[0] for i in range(100)]
    assert statuses == [200] * 100
    status, body, headers = http_json(w.url("/call"), {"uuid": "u100", "payload": {}})
    assert status == 429
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert "rate limited" in body["error"]
    # probes are never throttled
    assert http_json(w.url("/health"))[0] == 200
    assert http_json(w.url("/ready"))[0] == 200
    assert w.metric("avr_rate_limited_total", {"scope": "http"}) == 1


async def test_new_calls_are_bounded_per_source_by_the_ceiling(worker: WorkerFactory) -> None:
    w = worker(source_rate_limit=3, rate_window=60, audiosocket_error_frames="true")
    port = w.ports["audiosocket"]
    codes = [await refused_code(port) for _ in range(4)]
    assert codes[:3] == [None, None, None]
    assert codes[3] == wire.ErrorCode.RATE_LIMITED
    assert w.metric("avr_rate_limited_total", {"scope": "call"}) == 1


async def test_max_concurrent_calls_refuses_and_flips_readiness(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts), max_concurrent_calls=2)
    port = w.ports["audiosocket"]
    calls = [asyncio.create_task(place_call("127.0.0.1", port, speech)) for _ in range(2)]
    await asyncio.sleep(0.5)
    status, body, _ = http_json(w.url("/ready"))
    assert status == 503 and body["status"] == "at_capacity"
    assert await refused_code(port) == 0, "refused with a plain hangup: Asterisk's dialplan goes on"
    await asyncio.gather(*calls)
    await asyncio.sleep(0.2)
    assert http_json(w.url("/ready"))[0] == 200
    assert w.metric("avr_calls_refused_total", {"reason": "at_capacity"}) == 1


async def test_sigterm_drains_live_calls_then_exits_zero(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts), drain_timeout=30)
    port = w.ports["audiosocket"]
    audio = speech * 2  # several seconds
    calls = [asyncio.create_task(place_call("127.0.0.1", port, audio)) for _ in range(2)]
    await asyncio.sleep(1.0)
    w.popen.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    status, body, _ = http_json(w.url("/ready"))
    assert status == 503 and body["status"] == "draining"
    assert http_json(w.url("/health"))[0] == 200, "still alive while draining"
    try:
        code = await refused_code(port)
    except ConnectionRefusedError:
        code = -2
    assert code == -2, "the listener is closed: new calls go to other replicas"
    results = await asyncio.gather(*calls)
    for r in results:
        assert r.hangup and r.errors == []
        assert paced_whole(r), "the live calls finished whole"
    assert await asyncio.to_thread(w.popen.wait, 10) == 0
    assert "drained: 2 call(s) finished, 0 ended at the deadline" in w.log


async def test_drain_timeout_ends_calls_that_outlive_it(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts), drain_timeout=1)
    call = asyncio.create_task(place_call("127.0.0.1", w.ports["audiosocket"], speech * 5, hangup=False))
    await asyncio.sleep(0.5)
    w.popen.send_signal(signal.SIGTERM)
    started = time.monotonic()
    result = await call
    assert result.hangup
    assert time.monotonic() - started < 5.0
    assert await asyncio.to_thread(w.popen.wait, 10) == 0
    assert "1 ended at the deadline" in w.log


async def test_the_autoscaling_signal_counts_the_calls_in_the_system_and_ended_calls_are_freed(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts), max_concurrent_calls=4)
    port = w.ports["audiosocket"]
    assert w.metric("avr_call_capacity") == 4
    assert w.metric("avr_queue_length") == 0
    calls = [asyncio.create_task(place_call("127.0.0.1", port, speech)) for _ in range(3)]
    await asyncio.sleep(0.5)
    assert w.metric("avr_queue_length") == 3, "three calls in progress, whether or not any of them waits"
    assert w.metric("avr_call_utilization") == 0.75
    assert w.metric("avr_provider_waiting") == 0, "the provider answers at once: nothing waits for it"
    assert w.metric("avr_call_objects") == 3
    results = await asyncio.gather(*calls)
    assert all(r.hangup for r in results)
    await asyncio.sleep(0.3)
    assert w.metric("avr_queue_length") == 0
    assert w.metric("avr_call_utilization") == 0
    assert w.metric("avr_call_objects") == 0, "ended calls are freed, not left for the collector"
    assert w.metric("avr_call_duration_seconds_count") == 3
    assert 1.0 < w.metric("avr_call_duration_seconds_sum") / 3 < 10.0
    assert w.metric("avr_first_audio_seconds_count") == 3, "the echo's first audio, relayed or not"
    assert 0.0 < w.metric("avr_first_audio_seconds_sum") / 3 < 1.0


async def test_drain_until_empty_waits_for_the_last_call_without_a_deadline(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts), drain_mode="until_empty")
    call = asyncio.create_task(place_call("127.0.0.1", w.ports["audiosocket"], speech * 2))
    await asyncio.sleep(0.5)
    w.popen.send_signal(signal.SIGTERM)
    result = await call
    assert result.hangup and result.errors == [] and paced_whole(result)
    assert await asyncio.to_thread(w.popen.wait, 10) == 0
    assert "draining 1 live call(s) until the last one ends" in w.log
    assert "drained: 1 call(s) finished, 0 ended at the deadline" in w.log
