"""A round-robin TCP front for several workers, as a Service without session affinity balances them: each new
connection goes to the next backend, counted per port, so a call's POST /call and its AudioSocket connection
land on different pods."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Sequence


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(ConnectionError, RuntimeError):
        writer.write_eof()


class RoundRobinFront:
    def __init__(self, backends: Sequence[tuple[str, int]], start: int = 0) -> None:
        self.backends = list(backends)
        self._next = itertools.count(start)
        self.chosen: list[int] = []  # the backend index of each connection, in order
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = next(self._next) % len(self.backends)
        self.chosen.append(index)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.backends[index])
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        for w in (writer, up_writer):
            w.close()


@contextlib.asynccontextmanager
async def round_robin(backends: Sequence[tuple[str, int]], start: int = 0) -> AsyncIterator[RoundRobinFront]:
    front = RoundRobinFront(backends, start)
    server = await asyncio.start_server(front._handle, "127.0.0.1", 0)
    front.port = server.sockets[0].getsockname()[1]
    try:
        yield front
    finally:
        server.close()
