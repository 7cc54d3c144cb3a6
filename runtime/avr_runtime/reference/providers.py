"""The reference provider HTTP/WebSocket server (aiohttp), one process serving any of sts, asr, llm, tts."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Final

import numpy as np
import orjson
from aiohttp import WSMsgType, web

from avr_runtime.audio import pcm
from avr_runtime.audio.buffer import AnalysisWindows
from avr_runtime.audio.vad import EnergyVad
from avr_runtime.reference.echo import EchoSession, Stats
from avr_runtime.reference.sts_server import ECHO_AVAILABLE, EchoPlane, StsServerProtocol

log = logging.getLogger(__name__)

KINDS: Final = ("sts", "asr", "llm", "tts")


STATS: Final = web.AppKey("stats", Stats)
OPTS: Final = web.AppKey("opts", dict[str, float])


# --- STS: echo ---


async def sts_echo(request: web.Request) -> web.StreamResponse:
    """The echo STS on aiohttp, for a provider process serving several kinds on one port (``sts_server`` serves
    STS alone)."""
    delay = request.app[OPTS].get("delay_ms", 0.0) / 1000
    ws = web.WebSocketResponse(compress=False, max_msg_size=4 * 1024 * 1024)
    await ws.prepare(request)
    session = EchoSession(request.app[STATS], request.query_string)
    async for msg in ws:
        if msg.type is not WSMsgType.TEXT:
            continue
        replies, close = session.on_text(msg.data.encode())
        if delay and replies:
            await asyncio.sleep(delay)
        for reply in replies:
            await ws.send_str(reply.decode())
        if close:
            await ws.close()
            break
    log.debug("sts session %s closed", session.call_uuid)
    return ws


# --- ASR: energy-segmented utterances ---


async def asr_stream(request: web.Request) -> web.StreamResponse:
    """Reads chunked PCM16 8 kHz; after each utterance writes one line describing it."""
    stats = request.app[STATS]
    stats["asr_streams"] += 1
    if request.headers.get("X-UUID"):
        stats["asr_x_uuid"] += 1
    if request.headers.get("traceparent"):
        stats["asr_traceparent"] += 1
    resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await resp.prepare(request)
    windows = AnalysisWindows(160, 0.0)  # 20 ms at 8 kHz
    vad = EnergyVad(threshold_dbfs=-40.0, start_windows=3, hangover_windows=15)
    utterances = 0
    speech_windows = 0
    carry = b""
    async for chunk in request.content.iter_any():
        data = carry + chunk
        even = len(data) - len(data) % 2
        data, carry = data[:even], data[even:]
        for window in windows.feed(data):
            state = vad.update(window)
            if vad.speaking:
                speech_windows += 1
            if state == "end":
                utterances += 1
                stats["asr_utterances"] += 1
                seconds = speech_windows * 0.02
                speech_windows = 0
                await resp.write(f"utterance {utterances} lasted {seconds:.2f} seconds\n".encode())
    await resp.write_eof()
    return resp


# --- LLM: a template answer, streamed in chunks, with a think block to strip ---


async def llm_stream(request: web.Request) -> web.StreamResponse:
    stats, opts = request.app[STATS], request.app[OPTS]
    stats["llm_requests"] += 1
    if request.headers.get("X-UUID"):
        stats["llm_x_uuid"] += 1
    if request.headers.get("traceparent"):
        stats["llm_traceparent"] += 1
    body = await request.json()
    message = str(body.get("message", ""))
    turn = len(body.get("messages", [])) // 2 + 1
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    delay = opts.get("delay_ms", 0.0) / 1000
    reply = f"You said: {message.rstrip('.!?')}. This is turn {turn}! How can I help?"
    pieces = ["<think>", "planning the reply", "</think>", *[w + " " for w in reply.split()]]
    for piece in pieces:
        if delay:
            await asyncio.sleep(delay)
        await resp.write(orjson.dumps({"type": "text", "content": piece}) + b"\n")
    await resp.write_eof()
    return resp


# --- TTS: tones per character ---


def synthesise(text: str, rate: int = 8000, char_ms: int = 40) -> bytes:
    """A deterministic tone sequence, one pitch per character: recognisable in tests, cheap to make."""
    n = rate * char_ms // 1000
    t = np.arange(n) / rate
    env = np.minimum(1.0, np.minimum(np.arange(n), n - np.arange(n)) / (n / 8))
    parts = []
    for ch in text:
        if ch.isspace():
            parts.append(np.zeros(n))
        else:
            freq = 300.0 + (ord(ch) % 40) * 20.0
            parts.append(0.3 * np.sin(2 * np.pi * freq * t) * env)
    signal = np.concatenate(parts) if parts else np.zeros(0)
    return (signal * 32767).astype("<i2").tobytes()


async def tts_stream(request: web.Request) -> web.StreamResponse:
    """Streams PCM16 8 kHz faster than real time, as cloud TTS does. Text containing "fail" gets HTTP 500."""
    stats, opts = request.app[STATS], request.app[OPTS]
    stats["tts_requests"] += 1
    if request.headers.get("X-UUID"):
        stats["tts_x_uuid"] += 1
    if request.headers.get("traceparent"):
        stats["tts_traceparent"] += 1
    body = await request.json()
    text = str(body.get("text", ""))
    if "fail" in text.lower():
        stats["tts_failures"] += 1
        raise web.HTTPInternalServerError(text="synthesis failed")
    delay = opts.get("delay_ms", 0.0) / 1000
    if delay:
        await asyncio.sleep(delay)
    audio = synthesise(text)
    resp = web.StreamResponse(headers={"Content-Type": "audio/l16; rate=8000"})
    await resp.prepare(request)
    step = pcm.frame_bytes(8000, frame_ms=100)
    for pos in range(0, len(audio), step):
        await resp.write(audio[pos : pos + step])
    await resp.write_eof()
    return resp


async def stats_handler(request: web.Request) -> web.Response:
    return web.json_response(dict(request.app[STATS].counts))


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_app(kinds: tuple[str, ...], delay_ms: float = 0.0) -> web.Application:
    app = web.Application()
    app[STATS] = Stats()
    app[OPTS] = {"delay_ms": delay_ms}
    app.router.add_get("/health", health)
    app.router.add_get("/stats", stats_handler)
    if "sts" in kinds:
        app.router.add_get("/", sts_echo)
        app.router.add_get("/speech-to-speech", sts_echo)
    if "asr" in kinds:
        app.router.add_post("/speech-to-text-stream", asr_stream)
    if "llm" in kinds:
        app.router.add_post("/prompt-stream", llm_stream)
    if "tts" in kinds:
        app.router.add_post("/text-to-speech-stream", tts_stream)
    return app


def serve(kinds: tuple[str, ...], host: str, port: int, delay_ms: float = 0.0, *, echo: str = "c") -> None:
    """Serve until killed. STS alone runs on the Protocol server; ``echo="c"`` moves its sessions to the compiled
    echo engine (when built) after their handshake."""
    from avr_runtime.loop import new_event_loop  # noqa: PLC0415

    async def main() -> None:
        if kinds == ("sts",):  # STS alone: the Protocol server, lean enough for the load benchmark
            loop = asyncio.get_running_loop()
            stats = Stats()
            plane = EchoPlane(loop, stats) if echo == "c" and ECHO_AVAILABLE else None
            await loop.create_server(
                lambda: StsServerProtocol(stats, delay_ms / 1000, plane), host, port, backlog=1024, reuse_address=True
            )
        else:
            runner = web.AppRunner(build_app(kinds, delay_ms), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, host, port, backlog=1024).start()
        log.info("reference provider %s listening on %s:%d", ",".join(kinds), host, port)
        gc.freeze()  # as the worker: the start-up heap stays out of every later collection (a pause under load)
        await asyncio.Event().wait()

    with asyncio.Runner(loop_factory=new_event_loop) as r:
        r.run(main())
