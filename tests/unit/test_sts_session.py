"""The worker's STS session against the reference echo provider over loopback: audio both ways, and how it ends."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY

from avr_runtime.protocol import websocket as ws
from avr_runtime.reference.echo import Stats
from avr_runtime.reference.sts_server import StsServerProtocol
from avr_runtime.services.pool import ProviderUnavailable, RetryPolicy
from avr_runtime.services.providers.sts import StsSession


class Listener:
    def __init__(self) -> None:
        self.audio: list[bytes] = []
        self.transcripts: list[tuple[str, str]] = []

    def on_audio(self, pcm: bytes) -> None:
        self.audio.append(pcm)

    def on_interruption(self, source: str) -> None:
        pass

    def on_transcript(self, role: str, text: str) -> None:
        self.transcripts.append((role, text))

    def on_turn_latency(self, seconds: float) -> None:
        pass


@pytest.fixture
async def provider_url() -> AsyncIterator[str]:
    stats = Stats()
    server = await asyncio.get_running_loop().create_server(lambda: StsServerProtocol(stats), "127.0.0.1", 0)
    yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()
    await server.wait_closed()


async def test_audio_sent_while_connecting_is_delivered_in_order(provider_url: str) -> None:
    listener = Listener()
    session = StsSession(RetryPolicy(retries=0, timeout=2), provider_url, "u-1", listener, {})
    frames = [bytes([i]) * 320 for i in range(5)]
    for frame in frames:  # before start(): queued, not lost
        session.send_audio(frame)
    await session.start()
    session.send_audio(bytes([9]) * 320)
    for _ in range(100):
        if len(listener.audio) == 6:
            break
        await asyncio.sleep(0.01)
    assert listener.audio == [*frames, bytes([9]) * 320]
    await session.close()
    assert session.ended.result() == "closed"


async def test_a_provider_goodbye_is_not_a_send_failure_even_with_audio_in_flight(provider_url: str) -> None:
    listener = Listener()
    session = StsSession(RetryPolicy(retries=0, timeout=2), provider_url, "u-2", listener, {})
    await session.start()
    session.send_dtmf("#")  # the echo provider says goodbye and closes
    for _ in range(2000):  # keep talking while the close arrives
        if session.ended.done():
            break
        session.send_audio(bytes(320))
        await asyncio.sleep(0)
    assert await asyncio.wait_for(session.ended, 5) == "provider_closed"
    assert ("agent", "Goodbye.") in listener.transcripts
    await session.close()


async def test_no_provider_fails_within_the_retry_budget() -> None:
    session = StsSession(RetryPolicy(retries=1, timeout=0.5, base_delay=0.01), "ws://127.0.0.1:9/", "u", Listener(), {})
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(ProviderUnavailable, match="2 attempts"):
        await session.start()
    assert loop.time() - start < 2 * 0.5 + 0.5


class EndingProvider(asyncio.Protocol):
    """A provider that answers the handshake, waits for the call's first message, then ends the connection its way:
    ``close:<code>`` (a close frame, ``none`` for one without a code), ``drop`` (closed without a close frame, as
    when its process is killed) or ``reset`` (a TCP reset)."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.buf = b""
        self.open = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buf += data
        if not self.open:
            parsed = ws.parse_request(self.buf)
            if parsed is None:
                return
            request, size = parsed
            self.transport.write(ws.handshake_response(request))
            self.open, self.buf = True, self.buf[size:]
        if not self.buf:
            return  # the end comes after the call's init message
        if self.how.startswith("close:"):
            code = self.how.partition(":")[2]
            self.transport.write(ws.encode_frame(ws.CLOSE, b"" if code == "none" else ws.close_payload(int(code))))
            self.transport.close()
        elif self.how == "drop":
            self.transport.close()
        elif self.how == "reset":
            sock = self.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
        self.how = "done"


def errors(reason: str) -> float:
    return REGISTRY.get_sample_value("avr_provider_errors_total", {"provider": "sts", "reason": reason}) or 0.0


@pytest.mark.parametrize(
    ("how", "ended", "counted"),
    [
        ("close:1000", "provider_closed", None),
        ("close:none", "provider_closed", None),  # a close frame without a code is a goodbye too (1005)
        ("close:1001", "provider_failed:close_1001", "abnormal_close"),
        ("close:1011", "provider_failed:close_1011", "abnormal_close"),
        ("drop", "provider_failed:dropped", "dropped"),
        ("reset", "provider_failed:dropped", "dropped"),
    ],
)
async def test_a_provider_that_fails_mid_call_is_told_apart_from_a_goodbye(
    how: str, ended: str, counted: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    server = await asyncio.get_running_loop().create_server(lambda: EndingProvider(how), "127.0.0.1", 0)
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    before = {label: errors(label) for label in ("dropped", "abnormal_close", "closed")}
    session = StsSession(RetryPolicy(retries=0, timeout=2), url, "u-end", Listener(), {})
    try:
        with caplog.at_level(logging.INFO, logger="avr_runtime.services.providers.sts"):
            await session.start()
            assert await asyncio.wait_for(session.ended, 5) == ended
    finally:
        await session.close()
        server.close()
        await server.wait_closed()
    after = {label: errors(label) - before[label] for label in before}
    assert after == {label: 1.0 if label == counted else 0.0 for label in before}, "a goodbye is no provider error"
    (record,) = [r for r in caplog.records if "u-end" in r.getMessage()]
    if counted is None:
        assert record.levelno == logging.INFO and "closed the call" in record.getMessage()
    else:
        assert record.levelno == logging.WARNING and "failed mid-call" in record.getMessage()
        assert record.__dict__["reason"] == ended
