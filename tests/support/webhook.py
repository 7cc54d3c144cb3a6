"""A webhook receiver on loopback for tests: an aiohttp app with one POST route, answered by the test's handler."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from procs import free_port

Handler = Callable[[web.Request], Awaitable[web.Response]]


@contextlib.asynccontextmanager
async def receiver(handler: Handler, path: str = "/hook") -> AsyncIterator[int]:
    """Serves ``handler`` at ``path``; yields the port."""
    app = web.Application()
    app.router.add_post(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port
    finally:
        await runner.cleanup()
