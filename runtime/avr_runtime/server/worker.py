"""The worker process: both listeners, signal handling and graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal

from aiohttp import web

from avr_runtime.config import DrainMode, Settings
from avr_runtime.loop import new_event_loop
from avr_runtime.server.audiosocket import AudioSocketConnection
from avr_runtime.server.context import WorkerContext
from avr_runtime.server.http import build_app
from avr_runtime.services import metrics

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ctx: WorkerContext | None = None
        self._server: asyncio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        s = self.settings
        self.ctx = ctx = WorkerContext.create(s)
        self._runner = web.AppRunner(build_app(ctx), access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, s.host, s.http_port, backlog=1024).start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: AudioSocketConnection(ctx), s.host, s.port, backlog=1024, reuse_address=True
        )
        # Everything built so far lives as long as the process: out of the collector's sight, a full collection
        # no longer walks it: with tens of thousands of start-up objects that walk is a stall every call would hear.
        gc.freeze()
        if s.mode == "none":
            log.warning("no provider configured (STS_URL or ASR_URL+LLM_URL+TTS_URL): calls will hear silence")
        log.info(
            "worker ready",
            extra={"audiosocket_port": s.port, "http_port": s.http_port, "mode": s.mode},
        )

    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("SIGTERM: draining")
            self._stop.set()

    async def drain(self) -> int:
        """Refuse new calls at once, let live ones finish for up to DRAIN_TIMEOUT, then end the rest."""
        ctx = self.ctx
        assert ctx is not None
        ctx.draining = True
        metrics.DRAINING.set(1)
        ctx.update_readiness()
        if self._server is not None:
            self._server.close()  # stop listening: new AudioSocket connections are refused by the kernel
        live = len(ctx.calls)
        if self.settings.drain_mode is DrainMode.UNTIL_EMPTY:
            log.info("draining %d live call(s) until the last one ends", live)
            await ctx.idle.wait()
        else:
            log.info("draining %d live call(s), up to %.0fs", live, self.settings.drain_timeout)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ctx.idle.wait(), self.settings.drain_timeout)
        cut = len(ctx.calls)
        for call in list(ctx.calls.values()):
            call.end("drain_timeout")
        with contextlib.suppress(TimeoutError):  # give the ended calls a moment to send their hangup
            await asyncio.wait_for(ctx.idle.wait(), 1.0)
        log.info("drained: %d call(s) finished, %d ended at the deadline", live - cut, cut)
        return cut

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self.ctx is not None:
            await self.ctx.close()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self.start()
        await self._stop.wait()
        await self.drain()
        await self.close()
        log.info("worker stopped")


def use_realtime(priority: int) -> bool:
    """Put the calling thread (the event loop's, and the threads it starts later) on SCHED_FIFO at ``priority``.

    Why: a pacer slot is only on time if the event loop runs when its timer fires; on SCHED_FIFO the ordinary work
    sharing the core no longer queues ahead of it. Whether that pays off depends on the node (with the default
    settings it did not beat the normal scheduler in the load benchmark: bench/README.md), so it is opt-in. It
    needs CAP_SYS_NICE; without it the worker says so and goes on.
    """
    if priority == 0:
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except PermissionError:
        log.warning("REALTIME_PRIORITY=%d needs CAP_SYS_NICE: running on the normal scheduler", priority)
        return False
    log.info("event loop on SCHED_FIFO, priority %d", priority)
    return True


def serve(settings: Settings) -> None:
    use_realtime(settings.realtime_priority)
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(Worker(settings).run())
