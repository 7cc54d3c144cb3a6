"""Soak: one worker carries many thousands of short relayed calls, as a pod does over weeks; is its memory flat?

Places ``--calls`` calls of ``--call-seconds`` each (real-time 20 ms slin frames, then a hangup), ``--concurrency``
at a time, through a worker to the reference echo STS provider, and samples the worker's RSS and its count of Call
objects still in memory (``avr_call_objects``) every ``--sample-every`` calls. Prints the samples, then the RSS
growth per 1,000 calls after the warm-up (a least-squares slope over the samples past ``--warmup-calls``), and
the Call objects left after the last hangup. A measurement, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

import runtime_load as rl

from avr_runtime.protocol import audiosocket as wire

FRAME = bytes(range(1, 161)) * 2  # 20 ms of slin with no zero byte: echoed audio is told from silence


@dataclass
class Sample:
    calls: int
    rss: int
    call_objects: float
    active: float
    relayed: float
    elapsed: float


def metric(http_port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://{rl.HOST}:{http_port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


async def one_call(port: int, frames: int) -> bool:
    """A call as Asterisk places it; True when the echo came back and the worker hung up."""
    reader, writer = await asyncio.open_connection(rl.HOST, port)
    writer.write(wire.uuid_frame(uuid.uuid4()))
    audio = wire.audio_frame(FRAME)
    parser = wire.FrameParser()
    echoed = 0

    async def receive() -> bool:
        nonlocal echoed
        while data := await reader.read(65536):
            for frame in parser.feed(data):
                if frame.kind is wire.Kind.AUDIO and frame.payload == FRAME:
                    echoed += 1
                elif frame.kind is wire.Kind.HANGUP:
                    return True
        return False

    receiving = asyncio.create_task(receive())
    start = time.monotonic()
    for i in range(frames):
        writer.write(audio)
        await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - time.monotonic()))
    await asyncio.sleep(0.1)  # the last echoes
    writer.write(wire.HANGUP_FRAME)
    try:
        hung_up = await asyncio.wait_for(receiving, 5)
    except TimeoutError:
        hung_up = False
    writer.close()
    return hung_up and echoed > frames // 2


async def soak(args: argparse.Namespace, server: rl.Server) -> tuple[list[Sample], int]:
    assert server.http_port is not None
    frames = round(args.call_seconds / 0.02)
    done = failed = 0
    samples: list[Sample] = []
    started = time.monotonic()
    next_sample = 0
    queue = iter(range(args.calls))

    def sample() -> None:
        assert server.http_port is not None
        samples.append(
            Sample(
                done,
                rl.rss_bytes(server.proc.pid),
                metric(server.http_port, "avr_call_objects"),
                metric(server.http_port, "avr_active_calls"),
                metric(server.http_port, "avr_calls_relayed_total"),
                time.monotonic() - started,
            )
        )
        s = samples[-1]
        rl.progress(
            f"{s.calls:>6} calls  rss {s.rss / 2**20:7.1f} MiB  call objects {s.call_objects:5.0f}  "
            f"active {s.active:4.0f}  relayed {s.relayed:6.0f}  {s.elapsed:6.0f} s"
        )

    async def lane() -> None:
        nonlocal done, failed, next_sample
        for _ in queue:
            if not await one_call(server.port, frames):
                failed += 1
            done += 1
            if done >= next_sample:
                next_sample += args.sample_every
                await asyncio.to_thread(sample)

    sample()
    next_sample = args.sample_every
    await asyncio.gather(*(lane() for _ in range(args.concurrency)))
    await asyncio.sleep(1.0)  # the last hangups settle
    sample()
    return samples, failed


def slope_per_1000(samples: list[Sample], warmup: int) -> float:
    """Least-squares RSS growth, bytes per 1,000 calls, over the samples after the warm-up."""
    points = [(s.calls, s.rss) for s in samples if s.calls >= warmup]
    if len(points) < 2:
        return float("nan")
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return 1000 * sum((x - mx) * (y - my) for x, y in points) / var if var else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--call-seconds", type=float, default=2.0)
    parser.add_argument("--sample-every", type=int, default=1000)
    parser.add_argument("--warmup-calls", type=int, default=2000)
    parser.add_argument("--fast-path", choices=["on", "off"], default="on")
    args = parser.parse_args()
    server_core, load_core = rl.choose_cores()
    provider, sts_port = rl.start_provider(load_core)
    server = rl.start_worker(server_core, sts_port, max_calls=args.concurrency * 2, fast_path=args.fast_path == "on")
    try:
        # not rl.run_async: its collector stays off, and this load runs for many minutes
        with rl.pinned(load_core), asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            samples, failed = runner.run(soak(args, server))
    finally:
        server.proc.stop()
        provider.stop()
    growth = slope_per_1000(samples, args.warmup_calls)
    last = samples[-1]
    print(
        f"soak: {last.calls} calls of {args.call_seconds:g} s, {args.concurrency} at a time, fast path {args.fast_path}"
    )
    print("| calls | worker RSS | Call objects in memory | calls relayed |")
    print("|---:|---:|---:|---:|")
    for s in samples:
        print(f"| {s.calls:,} | {s.rss / 2**20:.1f} MiB | {s.call_objects:.0f} | {s.relayed:,.0f} |")
    print(
        f"RSS growth after {args.warmup_calls:,} calls: {growth / 1024:.2f} KiB per 1,000 calls "
        f"({growth / 1000:.1f} bytes per call); Call objects after the last hangup: {last.call_objects:.0f}; "
        f"failed calls: {failed}; pid {os.getpid()}"
    )


if __name__ == "__main__":
    main()
