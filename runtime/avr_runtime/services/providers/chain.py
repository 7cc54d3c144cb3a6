"""AVR's ASR → LLM → TTS HTTP streaming chain for one call.

The caller's audio streams to ASR in one chunked POST for the whole call; each transcribed line starts a turn:
the LLM's streamed text is cut into sentences, each sentence is spoken by TTS (through the cache) into the call.
A new utterance or a barge-in cancels the turn in progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from yarl import URL

from avr_runtime.protocol import chain
from avr_runtime.services import metrics, tracing
from avr_runtime.services.cache import TtsCache
from avr_runtime.services.pool import HttpPool, ProviderUnavailable, with_retries
from avr_runtime.services.providers.base import Listener, ProviderSession

log = logging.getLogger(__name__)

ASR_QUEUE_FRAMES = 250  # 5 s of caller audio waiting for a slow ASR, then the oldest is dropped
MAX_HISTORY = 40


class TtsClient:
    """Speaks one sentence; cache hits are served without a request, misses are cached once complete."""

    def __init__(self, pool: HttpPool, url: str, voice: str, cache: TtsCache) -> None:
        self.pool = pool
        self.url = url
        self.voice = voice
        self.cache = cache

    async def stream(self, text: str, call_uuid: str | None = None) -> AsyncIterator[bytes]:
        """The phrase's audio, from the cache or the provider; ``call_uuid`` is None for a pre-warm."""
        key = self.cache.key(self.url, self.voice, text)
        cached = self.cache.get(key)
        if cached is not None:
            yield cached
            return
        async with self.pool.post_json(self.url, {"text": text}, call_uuid) as resp:
            parts = []
            carry = b""
            async for chunk in resp.content.iter_any():
                parts.append(chunk)
                data = carry + chunk
                even = len(data) - len(data) % 2
                carry = data[even:]
                if even:
                    yield data[:even]
        self.cache.put(key, b"".join(parts))

    async def fetch(self, text: str) -> int:
        """Pre-warm: speak ``text`` into the cache; returns the number of audio bytes."""
        return sum([len(part) async for part in self.stream(text)])


class ChainSession(ProviderSession):
    def __init__(
        self,
        *,
        asr: HttpPool,
        llm: HttpPool,
        tts: TtsClient,
        asr_url: str,
        llm_url: str,
        call_uuid: str,
        listener: Listener,
    ) -> None:
        super().__init__()
        self._asr = asr
        self._llm = llm
        self._tts = tts
        self._asr_url = asr_url
        self._llm_url = llm_url
        self._uuid = call_uuid
        self._listener = listener
        self._audio: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._history: list[dict[str, str]] = []
        self._asr_task: asyncio.Task[None] | None = None
        self._turn: asyncio.Task[None] | None = None

    async def start(self) -> None:
        async def connect() -> aiohttp.ClientResponse:
            return await self._asr.session.post(
                self._asr_url,
                data=self._body(),
                headers={"Content-Type": chain.ASR_CONTENT_TYPE, "X-UUID": self._uuid, **tracing.headers()},
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._asr.policy.timeout, sock_read=None),
            )

        # The request only completes when the call ends, so check the provider accepts connections first
        # (with retries) and stream the body in the background.
        await self._probe()
        self._asr_task = asyncio.create_task(self._run_asr(connect), name=f"asr-{self._uuid}")

    async def _probe(self) -> None:
        """Fail fast if ASR does not accept connections: the call would otherwise never hear a thing."""
        url = URL(self._asr_url)

        async def open_socket() -> None:
            _, writer = await asyncio.open_connection(url.host, url.port)
            writer.close()

        await with_retries("asr", self._asr.policy, open_socket)

    async def _body(self) -> AsyncIterator[bytes]:
        while (chunk := await self._audio.get()) is not None:
            yield chunk

    async def _run_asr(self, connect: Any) -> None:
        try:
            resp = await connect()
            async with resp:
                if resp.status >= 400:
                    metrics.PROVIDER_ERRORS.labels("asr", f"http_{resp.status}").inc()
                    self._end(f"asr_http_{resp.status}")
                    return
                lines = chain.LineSplitter()
                async for raw in resp.content.iter_any():
                    for text in lines.feed(raw.decode("utf-8", errors="replace")):
                        self._on_utterance(text)
                for text in lines.flush():
                    self._on_utterance(text)
        except (aiohttp.ClientError, OSError, chain.StreamFormatError) as exc:
            metrics.PROVIDER_ERRORS.labels("asr", type(exc).__name__).inc()
            log.warning("call %s: ASR stream failed: %r", self._uuid, exc)
            self._end("asr_failed")
            return
        self._end("asr_closed")

    def send_audio(self, pcm: bytes) -> None:
        q = self._audio
        if q.qsize() >= ASR_QUEUE_FRAMES:
            q.get_nowait()
            metrics.DROPPED_BACKPRESSURE.inc()
        q.put_nowait(pcm)

    def send_dtmf(self, digit: str) -> None:
        """The HTTP chain has no DTMF message; the call reports digits through webhooks."""

    def interrupt(self) -> None:
        if self._turn is not None and not self._turn.done():
            self._turn.cancel()

    def _on_utterance(self, text: str) -> None:
        self._listener.on_transcript("user", text)
        self.interrupt()
        self._turn = asyncio.create_task(self._reply(text, time.perf_counter()), name=f"turn-{self._uuid}")

    async def _reply(self, text: str, heard_at: float) -> None:
        with tracing.TRACER.start_as_current_span("turn", attributes={"avr.call.uuid": self._uuid}):
            await self._turn_of(text, heard_at)

    async def _turn_of(self, text: str, heard_at: float) -> None:
        first_audio = True
        said: list[str] = []
        try:
            async for sentence in self._sentences(text):
                said.append(sentence)
                async for pcm in self._tts.stream(sentence, self._uuid):
                    if first_audio:
                        first_audio = False
                        self._listener.on_turn_latency(time.perf_counter() - heard_at)
                    self._listener.on_audio(pcm)
        except ProviderUnavailable as exc:
            # degrade: this turn is lost, the call goes on and the next utterance tries again
            log.warning("call %s: turn dropped: %s", self._uuid, exc)
        except (aiohttp.ClientError, OSError, TimeoutError, chain.StreamFormatError) as exc:
            metrics.PROVIDER_ERRORS.labels("chain", type(exc).__name__).inc()
            log.warning("call %s: turn failed: %r", self._uuid, exc)
        finally:
            self._history.append({"role": "user", "content": text})
            if said:
                self._history.append({"role": "assistant", "content": " ".join(said)})
                self._listener.on_transcript("agent", " ".join(said))
            del self._history[:-MAX_HISTORY]

    async def _sentences(self, text: str) -> AsyncIterator[str]:
        payload = {"uuid": self._uuid, "message": text, "messages": self._history}
        async with self._llm.post_json(self._llm_url, payload, self._uuid) as resp:
            chunks = chain.JsonChunkStream()
            splitter = chain.SentenceSplitter()
            async for raw in resp.content.iter_any():
                for item in chunks.feed(raw.decode("utf-8", errors="replace")):
                    if item.type == "text":
                        for sentence in splitter.feed(item.content):
                            yield sentence
            chunks.close()
            for sentence in splitter.flush():
                yield sentence

    async def close(self) -> None:
        self.interrupt()
        self._audio.put_nowait(None)
        for task in (self._turn, self._asr_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._end("closed")
