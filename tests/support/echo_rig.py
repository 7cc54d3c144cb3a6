"""The reference provider's Protocol server with its compiled echo engine, as ``avr-runtime provider sts`` runs
it, on a free loopback port (tests/unit/test_echo_engine.py, test_reference_sts.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from avr_runtime.reference.echo import Stats
from avr_runtime.reference.sts_server import EchoPlane, StsServerProtocol


@dataclass
class Rig:
    port: int
    stats: Stats
    plane: EchoPlane
    sessions: list[StsServerProtocol]


@contextlib.asynccontextmanager
async def server(delay: float = 0.0) -> AsyncIterator[Rig]:
    loop = asyncio.get_running_loop()
    stats = Stats()
    plane = EchoPlane(loop, stats)
    sessions: list[StsServerProtocol] = []

    def session() -> StsServerProtocol:
        sessions.append(StsServerProtocol(stats, delay, plane))
        return sessions[-1]

    srv = await loop.create_server(session, "127.0.0.1", 0)
    try:
        yield Rig(srv.sockets[0].getsockname()[1], stats, plane, sessions)
    finally:
        srv.close()
        plane.close()
        await srv.wait_closed()
