"""The worker's STS session against the reference echo provider over loopback: audio both ways, and how it ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

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
