"""A fixed relay workload for counting instructions (valgrind --tool=callgrind), not for timing: one relayed call
on socketpairs, caller frames in and provider audio messages in, every pass of the engine run by hand, the pacer's
first slot far ahead so no slot depends on the clock. The count inside Engine.run is the same on every run, so a
change to the data plane can be compared before and after on a shared machine.

    valgrind --tool=callgrind --toggle-collect=Engine_run .venv/bin/python bench/relay_instructions.py 2000
"""

from __future__ import annotations

import base64
import socket
import sys
import time
from typing import Any, cast

from avr_runtime.server._relay import Engine


class _Quiet:
    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        pass


def main(rounds: int) -> None:
    engine = Engine([0.005, 0.01, 0.02, 0.05, 0.1], 65536, 0.0)
    as_mine, as_peer = socket.socketpair()
    ws_mine, ws_peer = socket.socketpair()
    for peer in (as_peer, ws_peer):
        peer.setblocking(False)
    relay = engine.add(
        {"fd": as_mine.detach(), "protocol": _Quiet()},
        {"fd": ws_mine.detach(), "protocol": cast(Any, _Quiet())},  # stands for a WebSocketConnection
        {"capacity": 50},
        {"period": 0.02, "margin": 0.004, "max_slew": 0.002, "next_slot": time.monotonic() + 1e6, "earliest": 0.0},
    )
    pcm = bytes((i * 7 + 1) % 256 or 1 for i in range(320))
    caller = bytes([0x10, 1, 64]) + pcm  # an AudioSocket slin frame
    message = b'{"type":"audio","audio":"' + base64.b64encode(pcm) + b'"}'
    provider = bytes([0x81, 126, len(message) >> 8, len(message) & 255]) + message
    for i in range(rounds):
        as_peer.send(caller * 4)
        ws_peer.send(provider * 4)
        engine.run()
        try:
            while ws_peer.recv(1 << 16):
                pass
        except BlockingIOError:
            pass
        if i % 16 == 15:
            relay.clear()
    engine.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
