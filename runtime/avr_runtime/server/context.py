"""Everything calls share inside one worker process, built once at start-up."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from avr_runtime.audio.clock import SlotClock
from avr_runtime.config import Settings
from avr_runtime.protocol import websocket
from avr_runtime.server import relay
from avr_runtime.server.relay import Relays
from avr_runtime.services import metrics
from avr_runtime.services.cache import TtsCache
from avr_runtime.services.directory import CallDirectory, CallInfo
from avr_runtime.services.limiter import CallSlots, RateLimiter
from avr_runtime.services.podcost import PodDeletionCost
from avr_runtime.services.pool import HttpPool, RetryPolicy
from avr_runtime.services.providers.base import Listener, ProviderSession
from avr_runtime.services.providers.chain import ChainSession, TtsClient
from avr_runtime.services.providers.sts import StsSession, with_query
from avr_runtime.services.webhooks import WebhookSender

if TYPE_CHECKING:
    from avr_runtime.server.call import Call

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    settings: Settings
    policy: RetryPolicy
    cache: TtsCache
    http_limiter: RateLimiter  # per source address
    call_limiter: RateLimiter  # new calls per source address: a ceiling for a whole PBX
    caller_limiter: RateLimiter  # new calls per caller
    slots: CallSlots
    directory: CallDirectory  # /call metadata, here or on a peer
    clock: SlotClock  # shared by every call's pacer
    webhooks: WebhookSender | None = None
    relays: Relays | None = None  # the C data plane, when built and enabled (FAST_PATH)
    pod_cost: PodDeletionCost | None = None
    asr: HttpPool | None = None
    llm: HttpPool | None = None
    tts: TtsClient | None = None
    calls: dict[str, Call] = field(default_factory=dict)
    draining: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set whenever no call is live

    def add_call(self, call: Call) -> None:
        self.calls[call.uuid] = call
        self.idle.clear()

    def remove_call(self, call: Call) -> None:
        if self.calls.get(call.uuid) is call:
            del self.calls[call.uuid]
        if not self.calls:
            self.idle.set()

    @classmethod
    def create(cls, settings: Settings) -> WorkerContext:
        """Build pools and clients; must run inside the event loop (aiohttp sessions bind to it)."""
        policy = RetryPolicy(retries=settings.max_retries, timeout=settings.connection_timeout / 1000)
        size = settings.connection_pool_size
        ctx = cls(
            settings=settings,
            policy=policy,
            cache=TtsCache(settings.cache_max_size, settings.cache_ttl),
            http_limiter=RateLimiter(settings.source_rate_limit, settings.rate_window),
            call_limiter=RateLimiter(settings.source_rate_limit, settings.rate_window),
            caller_limiter=RateLimiter(settings.rate_limit, settings.rate_window),
            slots=CallSlots(settings.max_concurrent_calls),
            directory=CallDirectory(
                settings.call_metadata_ttl,
                settings.peer_service,
                settings.http_port,
                settings.peer_timeout_ms / 1000,
                settings.api_token.get_secret_value() if settings.api_token else None,
            ),
            clock=SlotClock(asyncio.get_running_loop()),
        )
        if settings.asr_url and settings.llm_url and settings.tts_url:
            ctx.asr = HttpPool("asr", size, policy, limited=False)
            ctx.llm = HttpPool("llm", size, policy)
            ctx.tts = TtsClient(HttpPool("tts", size, policy), settings.tts_url, settings.tts_voice, ctx.cache)
        if settings.fast_path and relay.AVAILABLE:  # calls may move at all; which do is handover.decide's, per call
            ctx.relays = Relays(
                asyncio.get_running_loop(), websocket.DEFAULT_MAX_MESSAGE, settings.fast_path_poll_ms / 1000
            )
        if settings.pod_deletion_cost:
            assert settings.pod_namespace and settings.pod_name  # checked with the settings
            ctx.pod_cost = PodDeletionCost.in_cluster(
                settings.pod_namespace,
                settings.pod_name,
                settings.service_account_dir,
                settings.pod_deletion_cost_interval,
            )
            ctx.pod_cost.start()
        if settings.webhook_url:
            secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
            ctx.webhooks = WebhookSender(settings.webhook_url, secret, settings.webhook_timeout, settings.webhook_retry)
            ctx.webhooks.start()
        ctx.idle.set()
        metrics.CALL_CAPACITY.set(settings.max_concurrent_calls)
        ctx.update_readiness()
        return ctx

    def sts_url_for(self, info: CallInfo | None) -> str | None:
        """The STS URL a call connects to: a webhook's override, else STS_URL, with the /call payload appended."""
        base = info.sts_url if info is not None and info.sts_url else self.settings.sts_url
        return with_query(base, info.payload) if base and info is not None else base

    def new_session(self, call_uuid: str, listener: Listener, info: CallInfo | None) -> ProviderSession | None:
        s = self.settings
        if s.sts_url:
            url = self.sts_url_for(info)
            assert url is not None
            return StsSession(self.policy, url, call_uuid, listener, info.payload if info is not None else {})
        if self.asr and self.llm and self.tts and s.asr_url and s.llm_url:
            return ChainSession(
                asr=self.asr,
                llm=self.llm,
                tts=self.tts,
                asr_url=s.asr_url,
                llm_url=s.llm_url,
                call_uuid=call_uuid,
                listener=listener,
            )
        return None

    def emit(self, call_uuid: str, kind: str, payload: dict[str, Any] | None = None) -> None:
        if self.webhooks is not None:
            self.webhooks.emit(call_uuid, kind, payload)

    @property
    def ready(self) -> bool:
        return not self.draining and not self.slots.full

    def update_readiness(self) -> None:
        """Called whenever a call takes or frees a slot: the gauges the Service and the autoscaler act on."""
        slots = self.slots
        metrics.READY.set(1 if self.ready else 0)
        metrics.ACTIVE_CALLS.set(slots.active)
        # Calls beyond the cap are refused, never queued: every call in the system holds a slot.
        metrics.QUEUE_LENGTH.set(slots.active)
        metrics.CALL_UTILIZATION.set(min(1.0, slots.active / slots.capacity))
        if self.pod_cost is not None:
            self.pod_cost.update(slots.active)

    def sync_metrics(self) -> None:
        if self.relays is not None:
            self.relays.sync_metrics()

    async def close(self) -> None:
        if self.relays is not None:
            self.relays.close()
            self.relays = None
        await self.directory.close()
        if self.pod_cost is not None:
            await self.pod_cost.close()
        if self.webhooks is not None:
            await self.webhooks.close()
        for pool in (self.asr, self.llm, self.tts.pool if self.tts else None):
            if pool is not None:
                await pool.close()
