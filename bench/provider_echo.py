"""CPU per echoed message of the reference STS provider: compiled echo engine, Protocol server, aiohttp route.

Run from the repository root: ``.venv/bin/python bench/provider_echo.py [--sessions 500] [--seconds 5]``.

The load benchmark runs the echo provider on the load generator's core, so its cost per message decides how many
calls the benchmark can drive. This starts ``avr-runtime provider`` three ways in turn: ``sts`` (the compiled echo
engine, the default), ``sts --echo python`` (the Protocol server alone) and ``sts,tts`` (the same echo on aiohttp,
which serves several kinds on one port). It opens ``--sessions`` WebSockets to each, sends one audio message per
session every 20 ms, spread over the period as the worker's pacer spreads calls, and reports the provider's CPU
(from ``/proc``) per echoed message, the echo's round trip, and the CPU's ratio to the Protocol server's. A
measurement: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from avr_runtime.cli import free_port, wait_http
from avr_runtime.loop import new_event_loop
from avr_runtime.protocol import sts
from avr_runtime.services.providers import wsclient

HOST = "127.0.0.1"
PERIOD = 0.02
TICK = 0.001  # sessions whose slot falls in the same millisecond are sent together

MODES: dict[str, list[str]] = {
    "C engine": ["sts"],
    "Protocol (Python)": ["sts", "--echo", "python"],
    "aiohttp route": ["sts,tts"],
}
BASELINE = "Protocol (Python)"
TWO_CORES = (os.cpu_count() or 1) > 1  # then the driver runs on core 0 and each provider on core 1


@dataclass
class Result:
    echoed: int
    cpu_s: float
    rtt_ms: list[float]

    @property
    def us_per_message(self) -> float:
        return self.cpu_s / max(self.echoed, 1) * 1e6

    def rtt(self, q: float) -> float:
        return float(np.percentile(self.rtt_ms, q)) if self.rtt_ms else float("nan")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(port: int, sessions: int, seconds: float, pid: int) -> Result:
    loop = asyncio.get_running_loop()
    sent: list[deque[float]] = [deque() for _ in range(sessions)]
    rtt: list[float] = []  # one per echo received in the window
    measuring = False

    def receiver(i: int) -> Callable[[int, bytes], None]:
        def on_message(_opcode: int, _payload: bytes) -> None:
            at = sent[i].popleft() if sent[i] else None
            if measuring and at is not None:
                rtt.append((time.monotonic() - at) * 1000)

        return on_message

    conns = [await wsclient.connect(f"ws://{HOST}:{port}/", receiver(i)) for i in range(sessions)]
    message = sts.encode_audio_bytes(bytes(320))
    # session i sends at offset i * PERIOD / sessions in every period, as calls spread over the worker's pacer
    slots: list[list[int]] = [[] for _ in range(round(PERIOD / TICK))]
    for i in range(sessions):
        slots[int(i * len(slots) / sessions)].append(i)
    await asyncio.sleep(0.5)
    start_cpu = cpu_seconds(pid)
    measuring = True
    end = loop.time() + seconds
    tick = loop.time()
    k = 0
    while tick < end:
        now = time.monotonic()
        for i in slots[k % len(slots)]:
            sent[i].append(now)
            conns[i].send(message)
        k += 1
        tick += TICK
        await asyncio.sleep(max(0.0, tick - loop.time()))
    await asyncio.sleep(0.2)
    used = cpu_seconds(pid) - start_cpu
    measuring = False
    for conn in conns:
        conn.abort("done")
    return Result(len(rtt), used, rtt)


def measure(name: str, args: list[str], sessions: int, seconds: float) -> Result:
    port = free_port()
    cmd = [sys.executable, "-m", "avr_runtime", "provider", *args, "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if TWO_CORES:
        os.sched_setaffinity(proc.pid, {1})
    try:
        wait_http(f"http://{HOST}:{port}/health", timeout=20)
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            result = runner.run(drive(port, sessions, seconds, proc.pid))
    finally:
        proc.terminate()
        proc.wait(10)
    print(
        f"{name:22} {result.echoed} echoed, {result.cpu_s:.2f} s CPU, {result.us_per_message:.1f} µs per message, "
        f"RTT p50 {result.rtt(50):.2f} ms p99 {result.rtt(99):.2f} ms",
        file=sys.stderr,
    )
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    if TWO_CORES:
        os.sched_setaffinity(0, {0})  # the driver on core 0, each provider on core 1
    results = {name: measure(name, cmd, args.sessions, args.seconds) for name, cmd in MODES.items()}
    base = results[BASELINE]
    print(f"{args.sessions} sessions, one audio message each every 20 ms, {args.seconds:g} s measured\n")
    print("| provider | echoed | µs CPU per message | ÷ Protocol | RTT p50 / p99 ms |")
    print("|---|---:|---:|---:|---:|")
    for name, r in results.items():
        ratio = r.us_per_message / base.us_per_message
        print(f"| {name} | {r.echoed} | {r.us_per_message:.1f} | {ratio:.2f} | {r.rtt(50):.2f} / {r.rtt(99):.2f} |")


if __name__ == "__main__":
    main()
