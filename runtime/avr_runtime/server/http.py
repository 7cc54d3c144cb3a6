"""The worker's HTTP API (aiohttp): probes, metrics, AVR's /call, cache pre-warm, and the stream endpoint."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from avr_runtime.server import stream
from avr_runtime.server.context import WorkerContext
from avr_runtime.services import metrics
from avr_runtime.services.directory import CallInfo
from avr_runtime.services.pool import ProviderUnavailable

log = logging.getLogger(__name__)

CTX: Final = web.AppKey("ctx", WorkerContext)
#: Probes and scrapes are never rate limited: a throttled probe would restart a healthy pod.
UNLIMITED: Final = frozenset({"/health", "/ready", "/metrics"})
MAX_PREWARM: Final = 1000
PREWARM_PARALLEL: Final = 4

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With API_TOKEN set, what changes state (POST) needs ``Authorization: Bearer <API_TOKEN>``."""
    token = request.app[CTX].settings.api_token
    if token is not None and request.method == "POST":
        sent = request.headers.get("Authorization", "")
        expected = f"Bearer {token.get_secret_value()}"
        if not hmac.compare_digest(sent.encode(), expected.encode()):
            metrics.UNAUTHORIZED.inc()
            return web.json_response(
                {"error": "unauthorized"}, status=401, headers={"WWW-Authenticate": 'Bearer realm="avr"'}
            )
    return await handler(request)


@web.middleware
async def rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path not in UNLIMITED:
        ctx = request.app[CTX]
        retry = ctx.http_limiter.hit(request.remote or "?")
        if retry is not None:
            metrics.RATE_LIMITED.labels("http").inc()
            return web.json_response(
                {"error": "rate limited", "retry_after": round(retry, 1)},
                status=429,
                headers={"Retry-After": ctx.http_limiter.retry_after_header(retry)},
            )
    return await handler(request)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    body = {"active_calls": ctx.slots.active, "capacity": ctx.slots.capacity}
    if ctx.draining:
        return web.json_response({"status": "draining", **body}, status=503)
    if ctx.slots.full:
        return web.json_response({"status": "at_capacity", **body}, status=503)
    return web.json_response({"status": "ready", **body})


async def prometheus(request: web.Request) -> web.Response:
    request.app[CTX].sync_metrics()
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="body is not JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return body


async def register_call(request: web.Request) -> web.Response:
    """AVR's POST /call: metadata for a call whose AudioSocket connection arrives next."""
    ctx = request.app[CTX]
    body = await _json(request)
    call_uuid, payload = body.get("uuid"), body.get("payload", {})
    if not isinstance(call_uuid, str) or not call_uuid:
        raise web.HTTPBadRequest(text="'uuid' must be a non-empty string")
    if not isinstance(payload, dict):
        raise web.HTTPBadRequest(text="'payload' must be an object")
    override: str | None = None
    if ctx.webhooks is not None:
        # avr-core waits for the call_initiated webhook: its answer may route the call to another STS URL
        answer = await ctx.webhooks.deliver_now(call_uuid, "call_initiated", payload)
        url = answer.get("sts_url") if answer is not None else None
        if isinstance(url, str) and url.startswith(("ws://", "wss://")):
            override = url
            log.info("call %s: the webhook routes it to %s", call_uuid, url, extra={"uuid": call_uuid})
    info = CallInfo(payload, override)
    ctx.directory.put(call_uuid, info)
    # avr-core's answer (sts_url, override), and ours before it (status, uuid)
    return web.json_response(
        {"status": "ok", "uuid": call_uuid, "sts_url": ctx.sts_url_for(info), "override": override is not None}
    )


async def claim_call(request: web.Request) -> web.Response:
    """A peer pod's call arrived without its metadata, which landed here: hand it over (once)."""
    info = request.app[CTX].directory.take_local(request.match_info["uuid"])
    if info is None:
        raise web.HTTPNotFound(text="no metadata for this call here")
    return web.json_response(info.to_json())


async def prewarm(request: web.Request) -> web.Response:
    """Speak a batch of phrases into the TTS cache; one failed phrase never fails the batch."""
    ctx = request.app[CTX]
    if ctx.tts is None:
        raise web.HTTPConflict(text="no TTS provider configured (pre-warm needs ASR_URL, LLM_URL and TTS_URL)")
    body = await _json(request)
    phrases = body.get("phrases")
    if not isinstance(phrases, list) or not phrases:
        raise web.HTTPBadRequest(text="'phrases' must be a non-empty list of strings")
    if len(phrases) > MAX_PREWARM:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_PREWARM, actual_size=len(phrases))
    tts = ctx.tts
    gate = asyncio.Semaphore(PREWARM_PARALLEL)

    async def one(text: object) -> dict[str, Any]:
        if not isinstance(text, str) or not text.strip():
            return {"text": text, "ok": False, "error": "not a non-empty string"}
        key = tts.cache.key(tts.url, tts.voice, text)
        if key in tts.cache:
            return {"text": text, "ok": True, "cached": True}
        async with gate:
            try:
                size = await tts.fetch(text)
            except (ProviderUnavailable, OSError, TimeoutError) as exc:
                return {"text": text, "ok": False, "error": str(exc)}
        return {"text": text, "ok": True, "cached": False, "bytes": size}

    results = await asyncio.gather(*(one(p) for p in phrases))
    ok = sum(1 for r in results if r["ok"])
    return web.json_response({"total": len(results), "succeeded": ok, "failed": len(results) - ok, "results": results})


def build_app(ctx: WorkerContext) -> web.Application:
    app = web.Application(middlewares=[rate_limit, authenticate], client_max_size=1024 * 1024)
    app[CTX] = ctx

    async def stream_handler(request: web.Request) -> web.StreamResponse:
        return await stream.handle(request, ctx)

    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", prometheus)
    app.router.add_post("/call", register_call)
    app.router.add_post("/call/{uuid}/claim", claim_call)
    app.router.add_post("/cache/prewarm", prewarm)
    app.router.add_get("/stream", stream_handler)
    return app
