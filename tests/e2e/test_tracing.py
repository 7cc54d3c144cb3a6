"""OpenTelemetry traces of calls, received by a real OTLP/HTTP receiver: sampling by ratio, the spans of a call,
traceparent on the STS handshake, trace ids in the call's log lines; and nothing exported when it is off."""

from __future__ import annotations

import asyncio
import math

import orjson
from otlp import otlp_receiver
from procs import ProviderFactory, WorkerFactory, chain_env, http_json, sts_url

from avr_runtime.client.audiosocket import place_call

CALLS = 200
RATIO = 0.1


def binomial_bounds(n: int, p: float, tail: float = 1e-4) -> tuple[int, int]:
    """The smallest and largest count whose one-sided tail probability is at least ``tail``."""
    pmf = [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]
    low = next(k for k in range(n + 1) if sum(pmf[: k + 1]) >= tail)
    high = next(k for k in range(n, -1, -1) if sum(pmf[k:]) >= tail)
    return low, high


async def test_calls_are_traced_at_the_sampling_ratio_with_their_spans(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    sts = provider("sts")
    async with otlp_receiver() as receiver:
        w = worker(
            sts_url=sts_url(sts),
            otel_exporter_otlp_endpoint=f"http://127.0.0.1:{receiver.port}",
            otel_traces_sampler="parentbased_traceidratio",
            otel_traces_sampler_arg=str(RATIO),
            otel_bsp_schedule_delay="100",
        )
        gate = asyncio.Semaphore(20)

        async def one() -> bool:
            async with gate:
                result = await place_call("127.0.0.1", w.ports["audiosocket"], speech[: 320 * 5], tail_s=0.2)
                return result.hangup

        assert all(await asyncio.gather(*(one() for _ in range(CALLS))))
        for _ in range(50):  # the batch processor exports every 100 ms
            await asyncio.sleep(0.1)
            if (
                w.metric("avr_active_calls") == 0
                and receiver.spans
                and len(receiver.named("call")) == len({s.trace_id for s in receiver.named("sts.connect")})
            ):
                break
        await asyncio.sleep(0.5)
        calls = receiver.named("call")
    low, high = binomial_bounds(CALLS, RATIO)
    assert low <= len(calls) <= high, f"{len(calls)} of {CALLS} calls sampled, expected {low}..{high}"
    connects = {s.trace_id: s for s in receiver.named("sts.connect")}
    firsts = {s.trace_id: s for s in receiver.named("first_audio")}
    _, stats, _ = await asyncio.to_thread(http_json, sts.url("/stats"))
    for call in calls:
        assert call.parent_span_id == "", "a call is the root of its trace"
        assert call.attributes["avr.call.end_reason"] == "hangup"
        assert connects[call.trace_id].parent_span_id == call.span_id
        first = firsts[call.trace_id]
        assert call.start_ns - 50_000_000 <= first.start_ns <= first.end_ns <= call.end_ns + 50_000_000
        assert stats.get(f"sts_traceparent:{call.trace_id}") == 1, "the provider's handshake carried the trace"
    # the sampled calls' log lines carry their trace id
    records = [orjson.loads(line) for line in w.log.splitlines() if line.startswith("{")]
    ended = {r["uuid"]: r.get("trace_id") for r in records if r.get("message") == "call ended"}
    traced = {c.attributes["avr.call.uuid"]: c.trace_id for c in calls}
    assert all(ended[u] == t for u, t in traced.items())
    assert sum(1 for t in ended.values() if t) == len(traced)


async def test_no_endpoint_no_traces(provider: ProviderFactory, worker: WorkerFactory, speech: bytes) -> None:
    sts = provider("sts")
    async with otlp_receiver() as receiver:
        w = worker(sts_url=sts_url(sts), otel_traces_sampler="always_on")
        result = await place_call("127.0.0.1", w.ports["audiosocket"], speech[: 320 * 5], tail_s=0.2)
        assert result.hangup
        await asyncio.sleep(0.5)
    assert receiver.requests == 0
    assert "tracing on" not in w.log


async def test_chain_turns_are_spans_of_the_call_and_every_provider_request_carries_the_trace(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    p = provider("all")
    async with otlp_receiver() as receiver:
        w = worker(
            **chain_env(p),
            otel_exporter_otlp_endpoint=f"http://127.0.0.1:{receiver.port}",
            otel_traces_sampler="always_on",
            otel_bsp_schedule_delay="100",
        )
        result = await place_call("127.0.0.1", w.ports["audiosocket"], speech, tail_s=3.0)
        assert result.hangup
        for _ in range(30):
            await asyncio.sleep(0.1)
            if receiver.named("call"):
                break
    (call,) = receiver.named("call")
    turns = receiver.named("turn")
    assert turns and all(t.trace_id == call.trace_id and t.parent_span_id == call.span_id for t in turns)
    _, stats, _ = await asyncio.to_thread(http_json, p.url("/stats"))
    assert stats["asr_traceparent"] == stats["asr_streams"] == 1
    assert stats["llm_traceparent"] == stats["llm_requests"] >= 1
    assert stats["tts_traceparent"] == stats["tts_requests"] >= 1
