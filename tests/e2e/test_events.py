"""Webhooks and call logs, as a receiver and an operator would see them."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from procs import ProviderFactory, WorkerFactory, free_port, http_json, sts_url

from avr_runtime.client.audiosocket import place_call

SECRET = "whsec-s3cr3t-value"
API_KEY = "sk-test-0123456789abcdef"


class Receiver:
    def __init__(self) -> None:
        self.events: list[dict[str, object]] = []
        self.secrets: list[str | None] = []
        self.port = free_port()
        self.fail_first = 0

    async def handle(self, request: web.Request) -> web.Response:
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.Response(status=503)
        self.secrets.append(request.headers.get("X-AVR-WEBHOOK-SECRET"))
        self.events.append(await request.json())
        return web.json_response({"ok": True})

    def types(self) -> list[object]:
        return [e["type"] for e in self.events]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", rec.port).start()
    yield rec
    await runner.cleanup()


async def test_webhooks_follow_the_call(
    provider: ProviderFactory, worker: WorkerFactory, receiver: Receiver, speech: bytes
) -> None:
    sts = provider("sts")
    w = worker(
        sts_url=sts_url(sts),
        webhook_url=f"http://127.0.0.1:{receiver.port}/hook",
        webhook_secret=SECRET,
        webhook_retry=2,
        openai_api_key=API_KEY,
    )
    receiver.fail_first = 1  # the first delivery fails once and is retried
    call_id = "0b5c1d8e-3f7a-4a8e-9b1c-2d3e4f5a6b7c"
    await asyncio.to_thread(http_json, w.url("/call"), {"uuid": call_id, "payload": {"from": "+15550100"}})
    await place_call("127.0.0.1", w.ports["audiosocket"], speech[: 320 * 40], call_uuid=call_id, dtmf={5: "7"})
    for _ in range(50):
        if "call_ended" in receiver.types():
            break
        await asyncio.sleep(0.1)
    assert receiver.types()[0] == "call_initiated"
    assert {"call_started", "dtmf_digit", "transcription", "call_ended"} <= set(receiver.types())
    assert all(e["uuid"] == call_id for e in receiver.events)
    assert all(s == SECRET for s in receiver.secrets)
    ended = next(e for e in receiver.events if e["type"] == "call_ended")
    assert ended["payload"]["reason"] == "hangup"  # type: ignore[index]
    assert str(ended["timestamp"]).endswith("Z")
    dtmf = next(e for e in receiver.events if e["type"] == "dtmf_digit")
    assert dtmf["payload"] == {"digit": "7"}
    assert w.metric("avr_webhook_deliveries_total", {"outcome": "ok"}) == len(receiver.events)
    # logs: one line at start and one at end of the call, with its uuid; no secret ever logged
    lines = [json.loads(line) for line in w.log.splitlines() if line.startswith("{")]
    mine = [entry for entry in lines if entry.get("uuid") == call_id]
    assert [entry["message"] for entry in mine if entry["message"].startswith("call ")] == [
        "call started",
        "call ended",
    ]
    assert SECRET not in w.log and API_KEY not in w.log


async def test_text_logs_to_a_rotating_file(provider: ProviderFactory, worker: WorkerFactory, tmp_path: Path) -> None:
    log_file = tmp_path / "worker.log"
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts), log_format="text", log_file=str(log_file), log_rotation="1KB", log_level="debug")
    for _ in range(8):
        await place_call("127.0.0.1", w.ports["audiosocket"], bytes(320 * 5), tail_s=0.0)
    text = log_file.read_text()
    rotated = sorted(log_file.parent.glob("worker.log.*"))
    assert rotated, "the file rotated at 1 KB"
    assert all(p.stat().st_size <= 1500 for p in [log_file, *rotated])
    assert "call ended" in text + "".join(p.read_text() for p in rotated)
    assert not text.lstrip().startswith("{")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
async def test_a_provider_that_dies_mid_call_ends_it_as_a_failure_with_a_plain_hangup(
    provider: ProviderFactory, worker: WorkerFactory, receiver: Receiver, speech: bytes, sig: signal.Signals
) -> None:
    """The provider's process is stopped in the middle of a call: its connection ends without a close frame. The
    call ends as a failure (not as the provider's goodbye) in the log, the metrics and the webhook, and Asterisk
    gets a plain hangup (no error frame: AUDIOSOCKET_ERROR_FRAMES is off), so its dialplan goes on."""
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts), webhook_url=f"http://127.0.0.1:{receiver.port}/hook")
    loop = asyncio.get_running_loop()
    loop.call_later(1.0, sts.popen.send_signal, sig)
    result = await place_call("127.0.0.1", w.ports["audiosocket"], speech * 3, hangup=False, time_limit=20)
    assert result.hangup and result.errors == []
    assert result.frames_sent < len(speech * 3) // 320, "the call ended when the provider died"
    for _ in range(50):
        if "call_ended" in receiver.types():
            break
        await asyncio.sleep(0.1)
    ended = next(e for e in receiver.events if e["type"] == "call_ended")
    assert ended["payload"]["reason"] == "provider_failed:dropped"  # type: ignore[index]
    assert w.metric("avr_calls_ended_total", {"reason": "provider_failed"}) == 1
    assert w.metric("avr_calls_ended_total", {"reason": "provider_closed"}) == 0
    assert w.metric("avr_provider_errors_total", {"provider": "sts", "reason": "dropped"}) == 1
    lines = [json.loads(line) for line in w.log.splitlines() if line.startswith("{")]
    (warned,) = [e for e in lines if "failed mid-call" in e["message"]]
    assert warned["level"] == "WARNING" and warned["uuid"] == result.uuid
    (last,) = [e for e in lines if e["message"] == "call ended"]
    assert last["reason"] == "provider_failed:dropped"
