"""CPU per echoed message of the reference STS provider: its Protocol server against its aiohttp route.

Run from the repository root: ``.venv/bin/python -P bench/provider_echo.py [--sessions 200] [--seconds 5]``.

The load benchmark runs the echo provider on the load generator's core, so its cost per message decides how many
calls the benchmark can drive. This starts ``avr-runtime provider sts`` (the Protocol server) and
``avr-runtime provider sts,tts`` (the same echo on aiohttp, which serves several kinds on one port) in turn, opens
``--sessions`` WebSockets to each, sends one audio message per session every 20 ms and reports the provider's CPU
(from ``/proc``) per echoed message, and the ratio. A measurement: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from collections.abc import Sequence

from avr_runtime.cli import free_port, wait_http
from avr_runtime.loop import new_event_loop
from avr_runtime.protocol import sts
from avr_runtime.services.providers import wsclient

HOST = "127.0.0.1"


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(port: int, sessions: int, seconds: float, pid: int) -> tuple[float, int]:
    received = 0

    def on_message(_opcode: int, _payload: bytes) -> None:
        nonlocal received
        received += 1

    conns = [await wsclient.connect(f"ws://{HOST}:{port}/", on_message) for _ in range(sessions)]
    message = sts.encode_audio_bytes(bytes(320))
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0.5)
    start_cpu, start_received = cpu_seconds(pid), received
    end = loop.time() + seconds
    tick = loop.time()
    while tick < end:
        for conn in conns:
            conn.send(message)
        tick += 0.02
        await asyncio.sleep(max(0.0, tick - loop.time()))
    await asyncio.sleep(0.2)
    used, echoed = cpu_seconds(pid) - start_cpu, received - start_received
    for conn in conns:
        conn.abort("done")
    return used, echoed


def measure(kinds: str, sessions: int, seconds: float) -> float:
    port = free_port()
    cmd = [sys.executable, "-P", "-m", "avr_runtime", "provider", kinds, "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://{HOST}:{port}/health", timeout=20)
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            used, echoed = runner.run(drive(port, sessions, seconds, proc.pid))
    finally:
        proc.terminate()
        proc.wait(10)
    per_message = used / max(echoed, 1) * 1e6
    print(f"{kinds:8} {sessions} sessions: {echoed} echoed, {used:.2f} s CPU, {per_message:.1f} µs per message")
    return per_message


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    protocol = measure("sts", args.sessions, args.seconds)
    aiohttp_route = measure("sts,tts", args.sessions, args.seconds)
    print(f"aiohttp ÷ Protocol CPU per message: {aiohttp_route / protocol:.2f}")


if __name__ == "__main__":
    main()
