"""The floor for the load benchmark: the cheapest AudioSocket echo Python can do (uvloop + a Protocol).

Each 0x10 frame is written straight back and nothing else happens, so what the load generator measures here
is the cost of the sockets, the event loop and the client itself. The worker's figures minus these are
what the worker adds. Run: ``python bench/floor_server.py --port 5099``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import uvloop

_AUDIO = 0x10
_HANGUP = 0x00
_HEADER = 3


class EchoConnection(asyncio.Protocol):
    """Parses AudioSocket framing incrementally and echoes audio frames byte for byte."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transport is not a subclass

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        end = len(buf)
        pos = 0
        transport = self.transport
        assert transport is not None
        while end - pos >= _HEADER:
            stop = pos + _HEADER + ((buf[pos + 1] << 8) | buf[pos + 2])
            if stop > end:
                break
            kind = buf[pos]
            if kind == _AUDIO:
                transport.write(buf[pos:stop])
            elif kind == _HANGUP:
                transport.close()
                self.buf = b""
                return
            pos = stop
        self.buf = buf[pos:] if pos < end else b""


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(EchoConnection, host, port, backlog=1024, reuse_address=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
