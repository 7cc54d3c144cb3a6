"""Several workers as a fleet sees them: /call answered as avr-core answers it, metadata that lands on another pod
than its call, admission keyed by caller rather than by the PBX's one address."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from front import round_robin
from procs import Proc, ProviderFactory, WorkerFactory, free_port, http_json, sts_url
from webhook import receiver

from avr_runtime.client.audiosocket import place_call
from avr_runtime.protocol import audiosocket as wire

PEERS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")


def fleet(worker: WorkerFactory, n: int, **env: str | int | float) -> list[Proc]:
    """``n`` workers on their own loopback addresses with the same ports, each other's peers (as the pods behind
    a headless Service are)."""
    as_port, http_port = free_port(), free_port()
    hosts = PEERS[:n]
    return [worker(host=h, port=as_port, http_port=http_port, peer_service=",".join(hosts), **env) for h in hosts]


async def post_call(url: str, call_uuid: str, payload: dict[str, object]) -> dict[str, object]:
    status, body, _ = await asyncio.to_thread(http_json, url, {"uuid": call_uuid, "payload": payload})
    assert status == 200, body
    assert isinstance(body, dict)
    return body


async def test_call_answers_avr_core_s_body(provider: ProviderFactory, worker: WorkerFactory) -> None:
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts))
    body = await post_call(w.url("/call"), "c-1", {"from": "2000", "to": "5001"})
    assert body["sts_url"] == f"{sts_url(sts)}?from=2000&to=5001"
    assert body["override"] is False
    assert body["uuid"] == "c-1"


@pytest.fixture
async def router() -> AsyncIterator[tuple[int, list[dict[str, object]], list[str]]]:
    """A call_initiated webhook that routes every call to the STS URL in ``target[0]``."""
    events: list[dict[str, object]] = []
    target: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        events.append(await request.json())
        if events[-1]["type"] == "call_initiated":
            return web.json_response({"sts_url": target[0]})
        return web.json_response({})

    async with receiver(hook) as port:
        yield port, events, target


async def test_the_call_initiated_webhook_can_route_the_call_to_another_provider(
    provider: ProviderFactory,
    worker: WorkerFactory,
    router: tuple[int, list[dict[str, object]], list[str]],
    speech: bytes,
) -> None:
    port, events, target = router
    default, routed = provider("sts"), provider("sts")
    target.append(sts_url(routed))
    w = worker(sts_url=sts_url(default), webhook_url=f"http://127.0.0.1:{port}/hook")
    call_id = str(uuid.uuid4())
    body = await post_call(w.url("/call"), call_id, {"from": "2000"})
    assert body == {"status": "ok", "uuid": call_id, "sts_url": f"{sts_url(routed)}?from=2000", "override": True}
    assert events[0]["type"] == "call_initiated" and events[0]["payload"] == {"from": "2000"}
    result = await place_call("127.0.0.1", w.ports["audiosocket"], speech[: 320 * 25], call_uuid=call_id)
    assert result.hangup
    _, routed_stats, _ = await asyncio.to_thread(http_json, routed.url("/stats"))
    _, default_stats, _ = await asyncio.to_thread(http_json, default.url("/stats"))
    assert routed_stats.get("sts_query:from=2000") == 1
    assert default_stats.get("sts_sessions", 0) == 0


async def test_metadata_reaches_its_call_on_another_pod_with_affinity_off(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    sts = provider("sts")
    pods = fleet(worker, 3, sts_url=sts_url(sts))
    http_backends = [(p.host, p.ports["http"]) for p in pods]
    as_backends = [(p.host, p.ports["audiosocket"]) for p in pods]
    calls = 6
    # the two ports are balanced independently: each call's /call and AudioSocket land on different pods
    async with round_robin(http_backends) as http_front, round_robin(as_backends, start=1) as as_front:
        for i in range(calls):
            call_id = str(uuid.uuid4())
            await post_call(f"http://127.0.0.1:{http_front.port}/call", call_id, {"call": str(i)})
            result = await place_call("127.0.0.1", as_front.port, speech[: 320 * 10], call_uuid=call_id)
            assert result.hangup and not result.errors
    assert all(h != a for h, a in zip(http_front.chosen, as_front.chosen, strict=True))
    _, stats, _ = await asyncio.to_thread(http_json, sts.url("/stats"))
    assert [stats.get(f"sts_query:call={i}") for i in range(calls)] == [1] * calls, "every call got its metadata"
    found = sum(p.metric("avr_peer_lookups_total", {"result": "found"}) for p in pods)
    assert found == calls


async def test_metadata_is_handed_over_once_and_a_call_without_any_starts_anyway(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    sts = provider("sts")
    a, b = fleet(worker, 2, sts_url=sts_url(sts))
    call_id = str(uuid.uuid4())
    await post_call(a.url("/call"), call_id, {"lang": "en"})
    first = await place_call(b.host, b.ports["audiosocket"], speech[: 320 * 10], call_uuid=call_id)
    again = await place_call(b.host, b.ports["audiosocket"], speech[: 320 * 10], call_uuid=call_id)
    bare = await place_call(b.host, b.ports["audiosocket"], speech[: 320 * 10])
    assert first.hangup and again.hangup and bare.hangup
    _, stats, _ = await asyncio.to_thread(http_json, sts.url("/stats"))
    assert stats.get("sts_query:lang=en") == 1, "the record went to the first call only"
    assert stats["sts_sessions"] == 3
    assert b.metric("avr_peer_lookups_total", {"result": "found"}) == 1
    assert b.metric("avr_peer_lookups_total", {"result": "none"}) == 2


async def refused(host: str, port: int, call_id: str) -> int | None:
    """The error code of a call the worker refuses once it knows who calls; None if it is answered."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(wire.uuid_frame(uuid.UUID(call_id)))
    parser = wire.FrameParser()
    try:
        async with asyncio.timeout(2.0):
            while data := await reader.read(4096):
                for frame in parser.feed(data):
                    if frame.kind is wire.Kind.AUDIO:
                        return None
                    if frame.kind is wire.Kind.ERROR:
                        return frame.payload[0]
    finally:
        writer.close()
    return -1


async def test_the_rate_limit_applies_per_caller_and_a_pbx_s_address_is_only_bounded_by_its_ceiling(
    provider: ProviderFactory, worker: WorkerFactory
) -> None:
    sts = provider("sts")
    w = worker(
        sts_url=sts_url(sts), rate_limit=2, rate_window=60, source_rate_limit=50, audiosocket_error_frames="true"
    )
    port = w.ports["audiosocket"]

    async def call_from(caller: str | None) -> int | None:
        call_id = str(uuid.uuid4())
        if caller is not None:
            await post_call(w.url("/call"), call_id, {"from": caller})
        return await refused("127.0.0.1", port, call_id)

    codes = [await call_from("+15550100") for _ in range(3)]
    assert codes == [None, None, wire.ErrorCode.RATE_LIMITED]
    assert await call_from("+15550199") is None, "another caller of the same PBX is not throttled"
    assert [await call_from(None) for _ in range(5)] == [None] * 5, "no caller id: only the PBX's ceiling applies"
    assert w.metric("avr_rate_limited_total", {"scope": "caller"}) == 1
    assert w.metric("avr_calls_refused_total", {"reason": "rate_limited"}) == 1


async def test_api_token_guards_the_posts_and_the_peers_use_it(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    sts = provider("sts")
    a, b = fleet(worker, 2, sts_url=sts_url(sts), api_token="t0ken-shared-by-the-fleet")
    call_id = str(uuid.uuid4())
    body = {"uuid": call_id, "payload": {"lang": "fr"}}
    async with aiohttp.ClientSession() as session:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            async with session.post(a.url("/call"), json=body, headers=headers) as resp:
                assert resp.status == 401
        async with session.post(a.url("/call/x/claim")) as resp:
            assert resp.status == 401, "a claim is a POST too"
        async with session.get(a.url("/ready")) as resp:
            assert resp.status == 200, "probes stay open"
        async with session.post(
            a.url("/call"), json=body, headers={"Authorization": "Bearer t0ken-shared-by-the-fleet"}
        ) as resp:
            assert resp.status == 200
    result = await place_call(b.host, b.ports["audiosocket"], speech[: 320 * 10], call_uuid=call_id)
    assert result.hangup
    _, stats, _ = await asyncio.to_thread(http_json, sts.url("/stats"))
    assert stats.get("sts_query:lang=fr") == 1, "the peer's claim carried the token"
    assert a.metric("avr_http_unauthorized_total") == 3
    assert "t0ken-shared-by-the-fleet" not in a.log + b.log
