"""Load benchmark for the worker: N concurrent real-time calls, CPU, memory, latency and delivery per N.

Run from the repository root: ``.venv/bin/python bench/runtime_load.py [--calls 50,100] [--seconds 10]``.

Three legs, each against fresh server processes, with the server pinned to one core and the load generator
plus the echo STS provider pinned to the other, so "per core" figures mean what they say:

- PCM: AudioSocket calls through the worker to the reference echo STS provider and back. Every frame
  carries a sequence number and its send time in its first 12 bytes, so each echo is matched to its frame.
- floor: the same calls against ``floor_server.py`` (a bare uvloop AudioSocket echo): what sockets, the event
  loop and this client cost on their own. Worker minus floor is what the worker adds.
- Opus: WebSocket stream calls (``GET /stream?codec=opus``); the codec chain destroys in-band numbers, so
  latency is timed with a loud 20 ms marker sent once a second in an otherwise quiet signal.

This is a measurement, not a test: it prints figures and asserts nothing about them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import os
import platform
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from array import array
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final, TypeVar, cast

import aiohttp
import numpy as np
import numpy.typing as npt
import uvloop

from avr_runtime.audio.opus import OpusDecoder, OpusEncoder, OpusFrameError

T = TypeVar("T")

HERE: Final = Path(__file__).resolve().parent
HOST: Final = "127.0.0.1"
PERIOD_NS: Final = 20_000_000
FRAME_BYTES: Final = 320  # 20 ms of PCM16 at 8 kHz
LATE_ABOVE_NS: Final = 25_000_000
LATE_BELOW_NS: Final = 15_000_000
LOSS_GRACE_NS: Final = 200_000_000  # frames sent this close to the hang-up may still be in flight
SETTLE_S: Final = 0.3  # after every call is connected and its provider session answers
TAIL_S: Final = 0.3  # after the last frame, before the hang-up
PROBE_TIMEOUT_S: Final = 15.0
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
PAGE_BYTES: Final = os.sysconf("SC_PAGE_SIZE")

# --- PCM framing: header, stamp (sequence number, send time) and a quiet filler ---

AUDIO_HEADER: Final = bytes((0x10, FRAME_BYTES >> 8, FRAME_BYTES & 0xFF))
HANGUP_FRAME: Final = b"\x00\x00\x00"
STAMP: Final = struct.Struct("<IQ")
PROBE_SEQ: Final = 0xFFFFFFFF  # one frame before the paced stream: its echo proves the provider path is up
_QUIET: Final = np.random.default_rng(7).integers(-64, 64, (FRAME_BYTES - STAMP.size) // 2)
FILLER: Final = _QUIET.astype("<i2").tobytes()

# --- Opus stream: 16 kHz mono, a one-second cycle of one loud frame and 49 quiet ones ---

OPUS_RATE: Final = 16000
OPUS_SAMPLES: Final = 320
CYCLE_FRAMES: Final = 50
LOUD_MEAN_SQUARE: Final = 2000.0**2  # the marker is ~11000 RMS, the quiet signal ~40
MARKER_MATCH_NS: Final = 1_000_000_000
MARKER_HOLDOFF_NS: Final = 300_000_000


# --- processes and /proc ---


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads) from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def run_queue_wait(pid: int) -> float:
    """Seconds the process's threads were runnable but waiting for a CPU (/proc/<pid>/task/*/schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def steal_seconds(pid: int) -> float | None:
    """CPU time the hypervisor gave to something else on the one vCPU ``pid`` is pinned to (``steal`` in
    /proc/stat): the machine, not the code under test. None when the process is not pinned to one core."""
    cores = os.sched_getaffinity(pid)
    if len(cores) != 1:
        return None
    prefix = f"cpu{next(iter(cores))} "
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(prefix):
            return int(line.split()[8]) / CLK_TCK
    return None


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_BYTES


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def pinned(core: int | None) -> Iterator[None]:
    """Run the block on ``core``: a child started inside inherits the affinity at fork, before it runs."""
    if core is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: IO[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def check(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        self.log.flush()
        self.log.seek(0)
        return "\n".join(self.log.read().decode(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self.log.close()


def spawn(name: str, cmd: list[str], core: int | None, env: dict[str, str] | None = None) -> Proc:
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by Proc.stop
    with pinned(core):
        popen = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Proc(name, popen, log)


def wait_until(proc: Proc, ready: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        proc.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proc.name} not ready after {timeout:.0f}s:\n{proc.log_tail()}")
        time.sleep(0.05)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def tcp_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def start_provider(core: int | None, echo: str = "c") -> tuple[Proc, int]:
    port = free_port()
    cmd = [sys.executable, "-m", "avr_runtime", "provider", "sts", "--port", str(port), "--echo", echo]
    proc = spawn("provider", cmd, core)
    wait_until(proc, lambda: http_ok(f"http://{HOST}:{port}/health"))
    return proc, port


@dataclass(frozen=True)
class Server:
    """A server process under measurement and the ports a load generator uses."""

    proc: Proc
    port: int  # AudioSocket
    http_port: int | None = None  # worker only: /ready, /stream


def start_worker(core: int | None, sts_port: int, max_calls: int, fast_path: bool) -> Server:
    port, http_port = free_port(), free_port()
    env = dict(
        os.environ,
        HOST=HOST,
        PORT=str(port),
        HTTP_PORT=str(http_port),
        STS_URL=f"ws://{HOST}:{sts_port}",
        LOG_LEVEL="warning",
        LOG_FORMAT="text",
        MAX_CONCURRENT_CALLS=str(max_calls),
        RATE_LIMIT="1000000",
        SOURCE_RATE_LIMIT="1000000",
        FAST_PATH="true" if fast_path else "false",
    )
    proc = spawn("worker", [sys.executable, "-m", "avr_runtime", "serve"], core, env)
    wait_until(proc, lambda: http_ok(f"http://{HOST}:{http_port}/ready"))
    return Server(proc, port, http_port)


def start_floor(core: int | None) -> Server:
    port = free_port()
    proc = spawn("floor", [sys.executable, str(HERE / "floor_server.py"), "--port", str(port)], core)
    wait_until(proc, lambda: tcp_open(port))
    return Server(proc, port)


# --- measurement window and resource usage ---


@dataclass
class Window:
    """Monotonic ns: warm-up ends at ``start``; frames sent after ``loss_end`` are not counted as lost.

    Shared by every call of a run and set once they are all connected (until then it lies in the far future).
    """

    start: int = 2**62
    end: int = 2**62
    loss_end: int = 2**62

    def open_after(self, t0: int, warmup: float, seconds: float) -> None:
        self.start = t0 + int(warmup * 1e9)
        self.end = self.start + int(seconds * 1e9)
        self.loss_end = self.end - LOSS_GRACE_NS


@dataclass(frozen=True)
class Usage:
    """CPU seconds over the measured window and peak RSS during it."""

    seconds: float
    server_cpu: float
    server_rss_peak: int
    load_cpu: float  # this process (the load generator) plus the provider, on the other core
    server_wait: float  # runnable but not running: other work on the server's core
    server_steal: float | None  # the hypervisor's, on the server's core (None when not pinned)
    load_steal: float | None  # and on the load core


async def sleep_until_ns(t: int) -> None:
    delay = (t - time.monotonic_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)


async def measure_usage(server_pid: int, load_pids: Sequence[int], window: Window) -> Usage:
    """Read /proc at the window's edges; RSS every half second in between."""
    await sleep_until_ns(window.start)
    t0, s0, l0 = time.monotonic(), cpu_seconds(server_pid), sum(cpu_seconds(p) for p in load_pids)
    w0 = run_queue_wait(server_pid)
    st0 = steal_seconds(server_pid), steal_seconds(os.getpid())
    peak = rss_bytes(server_pid)
    while (left := (window.end - time.monotonic_ns()) / 1e9) > 0:
        await asyncio.sleep(min(0.5, left))
        peak = max(peak, rss_bytes(server_pid))
    s1, l1 = cpu_seconds(server_pid), sum(cpu_seconds(p) for p in load_pids)
    st1 = steal_seconds(server_pid), steal_seconds(os.getpid())
    steal = [b - a if a is not None and b is not None else None for a, b in zip(st0, st1, strict=True)]
    return Usage(time.monotonic() - t0, s1 - s0, peak, l1 - l0, run_queue_wait(server_pid) - w0, *steal)


def run_async(main: Awaitable[T]) -> T:
    """One uvloop per measurement; the collector is off meanwhile so its pauses do not show up as latency."""
    gc.collect()
    gc.disable()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)  # type: ignore[arg-type]
    finally:
        gc.enable()


def ms(values_ns: npt.NDArray[np.int64], q: float) -> float:
    return float(np.percentile(values_ns, q)) / 1e6 if len(values_ns) else math.nan


def next_due(due: int, now: int) -> int:
    """The next 20 ms slot on a monotonic grid. A sender stalled for more than a period restarts the grid
    from now instead of catching up in a burst, as a telephony timer does: a burst would sit in the worker's
    playout buffer and be charged to the worker as latency for the rest of the call."""
    return (now if now - due > PERIOD_NS else due) + PERIOD_NS


def gap_counts(arrivals: array[int]) -> tuple[int, int]:
    """(gaps, late gaps): inter-arrival times outside 15..25 ms."""
    if len(arrivals) < 2:
        return 0, 0
    gaps = np.diff(np.frombuffer(arrivals, dtype=np.int64))
    return len(gaps), int(np.count_nonzero((gaps > LATE_ABOVE_NS) | (gaps < LATE_BELOW_NS)))


# --- PCM over AudioSocket ---


class Ticker:
    """Senders due in the same millisecond share one loop timer: at 500 calls a timer per frame per call was a
    measurable share of the load generator's core, and that core's jitter shows up as the worker's latency."""

    def __init__(self) -> None:
        self._buckets: dict[int, list[Callable[[], None]]] = {}

    def call_at_ns(self, due_ns: int, callback: Callable[[], None]) -> None:
        key = -(-due_ns // 1_000_000)  # the end of the due millisecond: never early
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = [callback]
            asyncio.get_running_loop().call_at(key / 1000, self._fire, key)
        else:
            bucket.append(callback)

    def _fire(self, key: int) -> None:
        for callback in self._buckets.pop(key, ()):
            callback()


class PcmCall(asyncio.Protocol):
    """One AudioSocket call: a paced sender on loop timers, a receiver matching echoes by sequence number."""

    def __init__(self, frames: int, window: Window, server_speaks_first: bool, ticker: Ticker) -> None:
        self.frames = frames
        self.ticker = ticker
        self.window = window
        self.server_speaks_first = server_speaks_first  # the worker's pacer starts when its call is set up
        self.probe_sent = False
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.seq = 0
        self.due = 0
        self.first_measured = 0
        self.last_measured = -1
        self.received = bytearray(frames + 1)
        self.rtt: array[int] = array("q")
        self.arrivals: array[int] = array("q")
        self.lag: array[int] = array("q")
        self.errors: list[int] = []
        self.silence = 0
        self.hung_up_by_us = False
        self.probe: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # --- connection ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)  # uvloop's transport is not a subclass
        t.write(bytes((0x01, 0, 16)) + uuid.uuid4().bytes)
        if not self.server_speaks_first:
            self._send_probe()

    def _send_probe(self) -> None:
        """One frame whose echo proves the provider path is up. Only one: frames queued while the provider session
        connects come back as a burst, and a burst stays in the worker's playout buffer as added latency."""
        if not self.probe_sent and self.transport is not None and not self.transport.is_closing():
            self.probe_sent = True
            self.transport.write(AUDIO_HEADER + STAMP.pack(PROBE_SEQ, time.monotonic_ns()) + FILLER)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    @property
    def failed(self) -> bool:
        """Ended by the server, refused, or never proved its provider path."""
        return bool(self.errors) or not self.probe.done() or (self.closed.done() and not self.hung_up_by_us)

    def hang_up(self) -> None:
        self.hung_up_by_us = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(HANGUP_FRAME)
            self.transport.close()

    # --- sending ---

    def start(self, start_ns: int) -> None:
        self.due = start_ns
        self.ticker.call_at_ns(start_ns, self._tick)

    def _tick(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        now = time.monotonic_ns()
        self.seq += 1
        transport.write(AUDIO_HEADER + STAMP.pack(self.seq, now) + FILLER)
        if now >= self.window.start:
            if not self.first_measured:
                self.first_measured = self.seq
            if now <= self.window.loss_end:
                self.last_measured = self.seq
            if now <= self.window.end:
                self.lag.append(now - self.due)
        if self.seq < self.frames:
            self.due = next_due(self.due, now)
            self.ticker.call_at_ns(self.due, self._tick)

    # --- receiving ---

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        buf = self.buf + data if self.buf else data
        end = len(buf)
        pos = 0
        while end - pos >= 3:
            stop = pos + 3 + ((buf[pos + 1] << 8) | buf[pos + 2])
            if stop > end:
                break
            kind = buf[pos]
            if kind == 0x10 and stop - pos - 3 >= STAMP.size:
                self._audio(buf, pos + 3, now)
            elif kind == 0xFF:
                self.errors.append(buf[pos + 3] if stop > pos + 3 else -1)
            pos = stop
        self.buf = buf[pos:] if pos < end else b""

    def _audio(self, buf: bytes, at: int, now: int) -> None:
        window = self.window
        if window.start <= now <= window.end:
            self.arrivals.append(now)
        seq, sent = STAMP.unpack_from(buf, at)
        if seq == 0:  # the worker's own silence: nothing of ours was waiting for this slot
            if window.start <= now <= window.end:
                self.silence += 1
            if not self.probe_sent:
                self._send_probe()
            return
        if seq == PROBE_SEQ:
            if not self.probe.done():
                self.probe.set_result(None)
            return
        if seq <= self.frames:
            self.received[seq] = 1
        if window.start <= sent <= window.end:
            self.rtt.append(now - sent)

    def lost(self) -> int:
        if self.last_measured < self.first_measured or not self.first_measured:
            return 0
        return self.received.count(0, self.first_measured, self.last_measured + 1)

    def measured(self) -> int:
        return max(0, self.last_measured - self.first_measured + 1) if self.first_measured else 0


@dataclass
class Costs:
    """What every leg reports: calls, server CPU and memory, and the arrival rhythm at the client."""

    calls: int
    failed: int
    usage: Usage
    idle_rss: int
    gaps: int
    late: int

    def us_per_frame(self) -> float:
        return self.usage.server_cpu / (self.calls * self.usage.seconds * 50) * 1e6

    def core_pct_per_call(self) -> float:
        return self.usage.server_cpu / (self.calls * self.usage.seconds) * 100

    def server_core_pct(self) -> float:
        return self.usage.server_cpu / self.usage.seconds * 100

    def wait_pct(self) -> float:
        return self.usage.server_wait / self.usage.seconds * 100

    def load_core_pct(self) -> float:
        return self.usage.load_cpu / self.usage.seconds * 100

    def steal(self) -> str:
        """The hypervisor's share of the server's and of the load core during the window, in %."""
        u = self.usage
        pct = [f"{100 * v / u.seconds:.1f}" if v is not None else "-" for v in (u.server_steal, u.load_steal)]
        return " / ".join(pct)

    def rss_per_call_kib(self) -> float:
        return (self.usage.server_rss_peak - self.idle_rss) / self.calls / 1024

    def late_pct(self) -> float:
        return 100 * self.late / self.gaps if self.gaps else math.nan


@dataclass
class PcmResult(Costs):
    rtt_ns: npt.NDArray[np.int64]
    lost: int
    measured: int
    silence: int
    lag_p99_ms: float
    lag_max_ms: float  # one stall of the load side longer than the margin plus the grace makes silence slots
    pacer_late: int | None = None  # worker only: its pacer's slots that fired > 5 ms late, in the window
    relayed: int | None = None  # worker only: calls moved to the compiled data plane
    dropped: int | None = None  # worker only: frames it dropped on purpose in the window (all reasons)
    drop_reasons: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerCounters:
    """What the worker's /metrics says about itself: pacer slots fired > 5 ms late, calls relayed in C, and frames
    it dropped on purpose by reason (``avr_frames_dropped_total``)."""

    late: int
    relayed: int
    dropped: dict[str, int]


def worker_counters(http_port: int | None) -> WorkerCounters | None:
    """None for the floor."""
    if http_port is None:
        return None
    late = relayed = 0
    dropped: dict[str, int] = {}
    with urllib.request.urlopen(f"http://{HOST}:{http_port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            name, _, value = line.rpartition(" ")
            if name == "avr_frames_late_total":
                late = int(float(value))
            elif name == "avr_calls_relayed_total":
                relayed = int(float(value))
            elif name.startswith('avr_frames_dropped_total{reason="'):
                dropped[name.split('"')[1]] = int(float(value))
    return WorkerCounters(late, relayed, dropped)


def apply_counters(result: PcmResult, before: WorkerCounters | None, after: WorkerCounters | None) -> None:
    """The window's share of the worker's counters (the relayed count is a total)."""
    if before is not None and after is not None:
        result.pacer_late = after.late - before.late
        result.relayed = after.relayed
        result.dropped = sum(after.dropped.values()) - sum(before.dropped.values())
        result.drop_reasons = {k: v - before.dropped.get(k, 0) for k, v in after.dropped.items()}


async def connect_pcm(server: Server, n: int, frames: int, window: Window) -> list[PcmCall]:
    """Open ``n`` calls, a few dozen connects at a time (the listen backlog is finite)."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(32)
    ticker = Ticker()
    calls = [PcmCall(frames, window, server.http_port is not None, ticker) for _ in range(n)]

    async def connect(call: PcmCall) -> None:
        async with gate:
            with contextlib.suppress(OSError):
                await loop.create_connection(lambda: call, HOST, server.port)

    await asyncio.gather(*(connect(c) for c in calls))
    return calls


async def wait_probes(calls: Sequence[PcmCall]) -> None:
    pending = [c.probe for c in calls if c.transport is not None]
    if pending:
        await asyncio.wait(pending, timeout=PROBE_TIMEOUT_S)


async def pcm_load(server: Server, load_pids: Sequence[int], n: int, warmup: float, seconds: float) -> PcmResult:
    """Connect, prove every provider path, stream in staggered phase, hang up; then summarise."""
    idle = rss_bytes(server.proc.pid)
    frames = round((warmup + seconds) * 1e9 / PERIOD_NS)
    window = Window()
    calls = await connect_pcm(server, n, frames, window)
    await wait_probes(calls)
    await asyncio.sleep(SETTLE_S)
    t0 = time.monotonic_ns() + 50_000_000
    window.open_after(t0, warmup, seconds)
    for i, call in enumerate(calls):
        call.start(t0 + i * PERIOD_NS // n)  # spread over one period: the calls do not tick in phase
    await sleep_until_ns(window.start)
    before = await asyncio.to_thread(worker_counters, server.http_port)
    usage = await measure_usage(server.proc.pid, load_pids, window)
    after = await asyncio.to_thread(worker_counters, server.http_port)
    await sleep_until_ns(t0 + frames * PERIOD_NS + PERIOD_NS + int(TAIL_S * 1e9))
    for call in calls:
        call.hang_up()
    closing = [c.closed for c in calls if c.transport is not None]
    if closing:
        await asyncio.wait(closing, timeout=3)
    result = summarise_pcm(calls, usage, idle)
    apply_counters(result, before, after)
    return result


def summarise_pcm(calls: Sequence[PcmCall], usage: Usage, idle_rss: int) -> PcmResult:
    rtts = [np.frombuffer(c.rtt, dtype=np.int64) for c in calls]
    lags = [np.frombuffer(c.lag, dtype=np.int64) for c in calls]
    gaps = late = 0
    for c in calls:
        g, lt = gap_counts(c.arrivals)
        gaps, late = gaps + g, late + lt
    lag = np.concatenate(lags) if lags else np.zeros(0, np.int64)
    return PcmResult(
        calls=len(calls),
        failed=sum(c.failed for c in calls),
        usage=usage,
        idle_rss=idle_rss,
        rtt_ns=np.concatenate(rtts) if rtts else np.zeros(0, np.int64),
        gaps=gaps,
        late=late,
        lost=sum(c.lost() for c in calls),
        measured=sum(c.measured() for c in calls),
        silence=sum(c.silence for c in calls),
        lag_p99_ms=ms(lag, 99),
        lag_max_ms=ms(lag, 100),
    )


# --- PCM load from pcm_calls.c: PcmCall's behaviour at a fraction of the load core ---


def build_generator(workdir: Path) -> Path | None:
    """Compile pcm_calls.c into ``workdir``; None (and the Python generator) without a C compiler."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        progress("warning: no C compiler; the Python load generator is used")
        return None
    exe = workdir / "pcm_calls"
    subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(exe), str(HERE / "pcm_calls.c")], check=True)
    return exe


async def pcm_load_native(
    server: Server,
    load_pids: Sequence[int],
    n: int,
    warmup: float,
    seconds: float,
    *,
    exe: Path,
    frames_out: Path | None = None,
) -> PcmResult:
    """pcm_load with the calls placed by pcm_calls (a child process, so it inherits this process's core)."""
    idle = rss_bytes(server.proc.pid)
    frames = round((warmup + seconds) * 1e9 / PERIOD_NS)
    with tempfile.TemporaryDirectory() as tmp:
        samples = Path(tmp) / "samples"
        args = [HOST, server.port, n, frames, int(warmup * 1e9), int(seconds * 1e9), int(server.http_port is not None)]
        proc = await asyncio.create_subprocess_exec(
            str(exe),
            *map(str, args),
            str(samples),
            *([str(frames_out)] if frames_out is not None else []),
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), PROBE_TIMEOUT_S + 30)
            _, start, end = line.decode().split()
            window = Window(int(start), int(end), int(end) - LOSS_GRACE_NS)
            await sleep_until_ns(window.start)
            before = await asyncio.to_thread(worker_counters, server.http_port)
            usage = await measure_usage(server.proc.pid, [*load_pids, proc.pid], window)
            after = await asyncio.to_thread(worker_counters, server.http_port)
            line = await asyncio.wait_for(proc.stdout.readline(), warmup + seconds + 30)
            if await proc.wait() != 0 or not line.startswith(b"done "):
                raise RuntimeError(f"pcm_calls failed: {line!r}")
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        failed, lost, measured, silence, gaps, late, n_rtt, n_lag = map(int, line.split()[1:])
        values = np.fromfile(samples, dtype="<i8").astype(np.int64)
    result = PcmResult(
        calls=n,
        failed=failed,
        usage=usage,
        idle_rss=idle,
        rtt_ns=values[:n_rtt],
        gaps=gaps,
        late=late,
        lost=lost,
        measured=measured,
        silence=silence,
        lag_p99_ms=ms(values[n_rtt : n_rtt + n_lag], 99),
        lag_max_ms=ms(values[n_rtt : n_rtt + n_lag], 100),
    )
    apply_counters(result, before, after)
    return result


# --- Opus over the WebSocket stream leg ---


def opus_cycle() -> list[bytes]:
    """One second of packets, encoded once at complexity 0 and replayed by every call: a loud 1 kHz marker
    frame, then 49 frames of quiet noise. The client stays cheap; the worker still decodes every packet."""
    rng = np.random.default_rng(11)
    t = np.arange(OPUS_SAMPLES) / OPUS_RATE
    loud = (16000 * np.sin(2 * np.pi * 1000 * t)).astype("<i2").tobytes()
    quiet = [rng.integers(-48, 48, OPUS_SAMPLES).astype("<i2").tobytes() for _ in range(CYCLE_FRAMES - 1)]
    pcm = [loud, *quiet]
    enc = OpusEncoder(OPUS_RATE, 1, 16000, complexity=0)
    for frame in pcm:  # a first pass, so the cycle starts from a settled encoder state
        enc.encode(frame)
    return [enc.encode(frame) for frame in pcm]


class OpusCall:
    """One stream call: a paced sender task, a receiver that decodes and times the loud markers' return."""

    def __init__(self, frames: int, window: Window, packets: Sequence[bytes]) -> None:
        self.frames = frames
        self.window = window
        self.packets = packets
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.receiver: asyncio.Task[None] | None = None
        self.decoder = OpusDecoder(OPUS_RATE, 1)
        self.arrivals: array[int] = array("q")
        self.marker_rtt: array[int] = array("q")
        self.bursts: deque[int] = deque()
        self.markers_sent = 0
        self.holdoff = 0
        self.error: str | None = None
        self.hung_up_by_us = False
        self.server_hangup = False
        self.probe: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def failed(self) -> bool:
        return self.error is not None or not self.probe.done() or self.server_hangup

    async def connect(self, session: aiohttp.ClientSession, url: str) -> None:
        """Open the stream and send one marker: its echo proves the provider path is up."""
        try:
            self.ws = await session.ws_connect(url, compress=0, autoping=True, max_msg_size=1 << 20)
            self.receiver = asyncio.create_task(self._receive())
            await self.ws.send_bytes(self.packets[0])
        except (aiohttp.ClientError, OSError) as exc:
            self.error = repr(exc)

    async def _receive(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type is aiohttp.WSMsgType.BINARY:
                self._frame(msg.data, time.monotonic_ns())
            elif msg.type is aiohttp.WSMsgType.TEXT and '"hangup"' in msg.data and not self.hung_up_by_us:
                self.server_hangup = True

    def _frame(self, packet: bytes, now: int) -> None:
        if self.window.start <= now <= self.window.end:
            self.arrivals.append(now)
        try:
            pcm = self.decoder.decode(packet)
        except OpusFrameError as exc:
            self.error = str(exc)
            return
        x = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
        if now >= self.holdoff and float(np.dot(x, x)) > LOUD_MEAN_SQUARE * len(x):
            self.holdoff = now + MARKER_HOLDOFF_NS
            self._marker(now)

    def _marker(self, now: int) -> None:
        if not self.probe.done():
            self.probe.set_result(None)
            return
        bursts = self.bursts
        while bursts and now - bursts[0] > MARKER_MATCH_NS:
            bursts.popleft()
        if bursts:
            sent = bursts.popleft()
            if self.window.start <= sent <= self.window.loss_end:
                self.marker_rtt.append(now - sent)

    async def stream(self, start_ns: int) -> None:
        ws = self.ws
        if ws is None:
            return
        window = self.window
        due = start_ns
        with contextlib.suppress(ConnectionError, RuntimeError):
            for k in range(self.frames):
                await sleep_until_ns(due)
                if ws.closed:
                    return
                now = time.monotonic_ns()
                if k % CYCLE_FRAMES == 0:
                    self.bursts.append(now)
                    self.markers_sent += window.start <= now <= window.loss_end
                await ws.send_bytes(self.packets[k % CYCLE_FRAMES])
                due = next_due(due, now)

    async def hang_up(self) -> None:
        ws = self.ws
        if ws is None:
            return
        self.hung_up_by_us = True
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str('{"type":"hangup"}')
        if self.receiver is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, aiohttp.ClientError):
                await asyncio.wait_for(self.receiver, timeout=3)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.close()

    def delivery(self) -> tuple[int, int]:
        """(received, expected) over the window: expected from the span between the first and last arrival."""
        if len(self.arrivals) < 2:
            return len(self.arrivals), len(self.arrivals)
        span = self.arrivals[-1] - self.arrivals[0]
        return len(self.arrivals), round(span / PERIOD_NS) + 1


@dataclass
class OpusResult(Costs):
    marker_ns: npt.NDArray[np.int64]
    markers_sent: int
    received: int
    expected: int
    pacer_late: int | None = None  # the worker's pacer slots that fired > 5 ms late, in the window
    relayed: int | None = None  # calls moved to the compiled data plane

    @property
    def missing(self) -> int:
        return max(0, self.expected - self.received)


async def opus_load(server: Server, load_pids: Sequence[int], n: int, warmup: float, seconds: float) -> OpusResult:
    idle = rss_bytes(server.proc.pid)
    frames = round((warmup + seconds) * 1e9 / PERIOD_NS)
    window = Window()
    packets = opus_cycle()
    url = f"ws://{HOST}:{server.http_port}/stream?codec=opus"
    gate = asyncio.Semaphore(32)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        calls = [OpusCall(frames, window, packets) for _ in range(n)]

        async def connect(call: OpusCall) -> None:
            async with gate:
                await call.connect(session, url)

        await asyncio.gather(*(connect(c) for c in calls))
        probes = [c.probe for c in calls if c.ws is not None]
        if probes:
            await asyncio.wait(probes, timeout=PROBE_TIMEOUT_S)
        await asyncio.sleep(SETTLE_S)
        t0 = time.monotonic_ns() + 50_000_000
        window.open_after(t0, warmup, seconds)
        senders = [asyncio.create_task(c.stream(t0 + i * PERIOD_NS // n)) for i, c in enumerate(calls)]
        await sleep_until_ns(window.start)
        before = await asyncio.to_thread(worker_counters, server.http_port)
        usage = await measure_usage(server.proc.pid, load_pids, window)
        after = await asyncio.to_thread(worker_counters, server.http_port)
        _, late_senders = await asyncio.wait(senders, timeout=5)
        for task in late_senders:
            task.cancel()
        await asyncio.sleep(TAIL_S)
        await asyncio.gather(*(c.hang_up() for c in calls))
    result = summarise_opus(calls, usage, idle)
    if before is not None and after is not None:
        result.pacer_late, result.relayed = after.late - before.late, after.relayed
    return result


def summarise_opus(calls: Sequence[OpusCall], usage: Usage, idle_rss: int) -> OpusResult:
    gaps = late = received = expected = 0
    for c in calls:
        g, lt = gap_counts(c.arrivals)
        r, e = c.delivery()
        gaps, late, received, expected = gaps + g, late + lt, received + r, expected + e
    markers = [np.frombuffer(c.marker_rtt, dtype=np.int64) for c in calls]
    return OpusResult(
        calls=len(calls),
        failed=sum(c.failed for c in calls),
        usage=usage,
        idle_rss=idle_rss,
        marker_ns=np.concatenate(markers) if markers else np.zeros(0, np.int64),
        markers_sent=sum(c.markers_sent for c in calls),
        gaps=gaps,
        late=late,
        received=received,
        expected=expected,
    )


# --- orchestration ---


@dataclass
class Bench:
    """What every measurement shares: core placement, the provider, run lengths."""

    server_core: int | None
    load_core: int | None
    provider: Proc
    sts_port: int
    max_calls: int
    warmup: float
    seconds: float
    fast_path: bool = True
    generator: Path | None = None  # the compiled pcm_calls; None: PcmCall in this process
    frame_log: Path | None = None  # pcm_calls writes every measured frame's send time and RTT here
    _priming: bool = field(default=False, init=False)  # the call before each measurement: no frame log
    pcm: list[tuple[int, PcmResult, PcmResult]] = field(default_factory=list)
    opus: list[tuple[int, OpusResult]] = field(default_factory=list)

    @property
    def load_pids(self) -> list[int]:
        return [os.getpid(), self.provider.pid]

    def _measure(self, server: Server, load: Callable[[Server, int, float, float], Awaitable[T]], n: int) -> T:
        """One priming call first, so idle RSS includes what the first call of a leg loads once (libraries,
        caches): RSS per call is then the marginal cost of a call."""
        try:
            self._priming = True
            run_async(load(server, 1, 0.0, 0.5))
            self._priming = False
            time.sleep(0.5)
            result = run_async(load(server, n, self.warmup, self.seconds))
            server.proc.check()
            return result
        finally:
            server.proc.stop()

    def _pcm(self, server: Server, n: int, warmup: float, seconds: float) -> Awaitable[PcmResult]:
        if self.generator is not None:
            frames_out = None
            if self.frame_log is not None and not self._priming:
                frames_out = self.frame_log / f"{'worker' if server.http_port is not None else 'floor'}-{n}.frames"
            return pcm_load_native(
                server, self.load_pids, n, warmup, seconds, exe=self.generator, frames_out=frames_out
            )
        return pcm_load(server, self.load_pids, n, warmup, seconds)

    def _opus(self, server: Server, n: int, warmup: float, seconds: float) -> Awaitable[OpusResult]:
        return opus_load(server, self.load_pids, n, warmup, seconds)

    def _worker(self) -> Server:
        return start_worker(self.server_core, self.sts_port, self.max_calls, self.fast_path)

    def pcm_worker(self, n: int) -> PcmResult:
        return self._measure(self._worker(), self._pcm, n)

    def pcm_floor(self, n: int) -> PcmResult:
        return self._measure(start_floor(self.server_core), self._pcm, n)

    def opus_worker(self, n: int) -> OpusResult:
        return self._measure(self._worker(), self._opus, n)


def choose_cores() -> tuple[int | None, int | None]:
    """Server on the first allowed core, load on the second; without two cores nothing is pinned."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        print(
            "warning: fewer than 2 cores available; nothing pinned, per-core figures are rough",
            file=sys.stderr,
        )
        return None, None
    return allowed[0], allowed[1]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def header(args: argparse.Namespace, cores: tuple[int | None, int | None], generator: Path | None) -> str:
    load1, load5, _ = os.getloadavg()
    lines = [
        f"# worker load benchmark, {time.strftime('%Y-%m-%d %H:%M')}",
        f"CPU: {cpu_model()}, {os.cpu_count()} cores; server on core {cores[0]}, "
        f"load generator + provider on core {cores[1]}; Python {platform.python_version()}",
        f"load average before the run: {load1:.2f} (1 min), {load5:.2f} (5 min)",
        f"each call: {args.warmup:g} s warm-up + {args.seconds:g} s measured, 20 ms frames",
        f"worker FAST_PATH={'true' if args.fast_path == 'on' else 'false'}; PCM load generator: "
        + ("pcm_calls.c" if generator is not None else "Python (PcmCall)")
        + f"; provider echo: {'compiled engine' if args.provider_echo == 'c' else 'Python'}",
        f"worker REALTIME_PRIORITY={args.realtime}"
        + (" (SCHED_FIFO; everything else on the normal scheduler)" if args.realtime else " (the normal scheduler)"),
    ]
    if load1 > 0.5:
        lines.append("warning: the machine is busy; figures will be noisy")
    return "\n".join(lines)


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_all(args: argparse.Namespace, workdir: Path) -> Bench:
    cores = choose_cores()
    if cores[1] is not None:
        os.sched_setaffinity(0, {cores[1]})
    if args.realtime:
        os.environ["REALTIME_PRIORITY"] = str(args.realtime)  # the worker's environment: start_worker copies it
    generator = build_generator(workdir) if args.generator == "c" else None
    print(header(args, cores, generator), flush=True)
    provider, sts_port = start_provider(cores[1], args.provider_echo)
    max_calls = max([*args.calls, *args.opus_calls, 1]) + 16
    bench = Bench(cores[0], cores[1], provider, sts_port, max_calls, args.warmup, args.seconds, args.fast_path == "on")
    bench.generator = generator
    if args.frame_log is not None:
        args.frame_log.mkdir(parents=True, exist_ok=True)
        bench.frame_log = args.frame_log
    try:
        for n in args.calls:
            worker, floor = bench.pcm_worker(n), bench.pcm_floor(n)
            bench.pcm.append((n, worker, floor))
            progress(f"PCM  N={n}: {pcm_line(worker)} | floor {pcm_line(floor)}")
        for n in args.opus_calls:
            result = bench.opus_worker(n)
            bench.opus.append((n, result))
            progress(f"Opus N={n}: {result.us_per_frame():.0f} µs/frame, late {result.late_pct():.2f}%")
    finally:
        provider.stop()
    return bench


# --- report ---


def pcm_line(r: PcmResult) -> str:
    return (
        f"{r.us_per_frame():.0f} µs/frame, core {r.server_core_pct():.0f}%, "
        f"RTT p99 {ms(r.rtt_ns, 99):.2f} ms, lost {r.lost}, failed {r.failed}"
    )


def triple(values: npt.NDArray[np.int64], minus: npt.NDArray[np.int64] | None = None) -> str:
    """p50 / p99 / max in ms, optionally minus the same percentiles of another sample."""
    qs = (50.0, 99.0, 100.0)
    got = [ms(values, q) - (ms(minus, q) if minus is not None else 0.0) for q in qs]
    return " / ".join(f"{v:.2f}" for v in got)


def drops(r: PcmResult) -> str:
    """Frames the worker dropped in the window, with the reasons that have any (the lost column counts them)."""
    if r.dropped is None:
        return "-"
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(r.drop_reasons.items()) if v)
    return f"{r.dropped} ({reasons})" if reasons else str(r.dropped)


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def pcm_cpu_table(rows: Sequence[tuple[int, PcmResult, PcmResult]]) -> str:
    head = (
        "N",
        "failed calls (w / f)",
        "worker core %",
        "worker µs/frame",
        "worker % core/call",
        "floor core %",
        "floor µs/frame",
        "floor % core/call",
        "CPU/call worker÷floor",
        "worker RSS/call KiB",
        "load core % (w / f)",
        "server waited % (w / f)",
    )
    body = [
        (
            str(n),
            f"{w.failed} / {f.failed}",
            f"{w.server_core_pct():.0f}",
            f"{w.us_per_frame():.0f}",
            f"{w.core_pct_per_call():.3f}",
            f"{f.server_core_pct():.0f}",
            f"{f.us_per_frame():.0f}",
            f"{f.core_pct_per_call():.3f}",
            f"{w.us_per_frame() / f.us_per_frame():.1f}" if f.us_per_frame() else "n/a",
            f"{w.rss_per_call_kib():.0f}",
            f"{w.load_core_pct():.0f} / {f.load_core_pct():.0f}",
            f"{w.wait_pct():.1f} / {f.wait_pct():.1f}",
        )
        for n, w, f in rows
    ]
    return table(head, body)


def pcm_latency_table(rows: Sequence[tuple[int, PcmResult, PcmResult]]) -> str:
    head = (
        "N",
        "worker RTT p50 / p99 / max ms",
        "floor RTT p50 / p99 / max ms",
        "added p50 / p99 / max ms",
        "late % (w / f)",
        "lost (w / f) of measured",
        "silence slots (w)",
        "pacer late slots (w)",
        "client send lag p99 ms (w / f)",
        "client send lag max ms (w / f)",
        "calls relayed in C (w)",
        "worker drops (reason)",
        "vCPU steal % server / load core (w)",
    )
    body = [
        (
            str(n),
            triple(w.rtt_ns),
            triple(f.rtt_ns),
            triple(w.rtt_ns, f.rtt_ns),
            f"{w.late_pct():.2f} / {f.late_pct():.2f}",
            f"{w.lost} / {f.lost} of {w.measured}",
            str(w.silence),
            "-" if w.pacer_late is None else str(w.pacer_late),
            f"{w.lag_p99_ms:.2f} / {f.lag_p99_ms:.2f}",
            f"{w.lag_max_ms:.2f} / {f.lag_max_ms:.2f}",
            "-" if w.relayed is None else str(w.relayed),
            drops(w),
            w.steal(),
        )
        for n, w, f in rows
    ]
    return table(head, body)


def opus_table(rows: Sequence[tuple[int, OpusResult]]) -> str:
    head = (
        "N",
        "failed calls",
        "worker core %",
        "worker µs/frame",
        "worker % core/call",
        "worker RSS/call KiB",
        "frames received / expected",
        "missing",
        "late %",
        "marker RTT p50 / p99 / max ms",
        "markers timed / sent",
        "pacer late slots",
        "calls relayed in C",
        "load core %",
        "server waited %",
        "vCPU steal % server / load core",
    )
    body = [
        (
            str(n),
            str(r.failed),
            f"{r.server_core_pct():.0f}",
            f"{r.us_per_frame():.0f}",
            f"{r.core_pct_per_call():.3f}",
            f"{r.rss_per_call_kib():.0f}",
            f"{r.received} / {r.expected}",
            str(r.missing),
            f"{r.late_pct():.2f}",
            triple(r.marker_ns),
            f"{len(r.marker_ns)} / {r.markers_sent}",
            "-" if r.pacer_late is None else str(r.pacer_late),
            "-" if r.relayed is None else str(r.relayed),
            f"{r.load_core_pct():.0f}",
            f"{r.wait_pct():.1f}",
            r.steal(),
        )
        for n, r in rows
    ]
    return table(head, body)


def pcm_ok(w: PcmResult, f: PcmResult) -> bool:
    added_p99 = ms(w.rtt_ns, 99) - ms(f.rtt_ns, 99)
    return w.failed == 0 and w.lost == 0 and added_p99 <= 10.0


def opus_ok(r: OpusResult) -> bool:
    return r.failed == 0 and r.missing == 0 and r.late_pct() <= 1.0


def best(ns: Sequence[int]) -> str:
    return str(max(ns)) if ns else "none of those tried"


def report(bench: Bench) -> str:
    parts: list[str] = []
    if bench.pcm:
        parts += ["## PCM over AudioSocket: CPU and memory", pcm_cpu_table(bench.pcm)]
        parts += ["## PCM over AudioSocket: latency and delivery", pcm_latency_table(bench.pcm)]
    if bench.opus:
        parts += ["## Opus over the WebSocket stream leg", opus_table(bench.opus)]
    pcm_best = best([n for n, w, f in bench.pcm if pcm_ok(w, f)])
    opus_best = best([n for n, r in bench.opus if opus_ok(r)])
    parts.append(f"PCM: max N with p99 added latency ≤ 10 ms and 0 lost = {pcm_best}")
    parts.append(f"Opus: max N with 0 lost and late ≤ 1% = {opus_best}")
    return "\n\n".join(parts)


def counts(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("call counts must be positive")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=counts, default=[50, 100, 200, 300, 400, 500, 600, 800], help="PCM call counts")
    parser.add_argument("--opus-calls", type=counts, default=[25, 50, 100, 125, 150], help="Opus stream call counts")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per call")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds per call before measuring")
    parser.add_argument(
        "--fast-path",
        choices=("on", "off"),
        default="on",
        help="the worker's compiled data plane (FAST_PATH); off measures the Python path",
    )
    parser.add_argument(
        "--generator",
        choices=("c", "python"),
        default="c",
        help="the PCM load generator: pcm_calls.c (built with the C compiler) or PcmCall in this process",
    )
    parser.add_argument(
        "--provider-echo",
        choices=("c", "python"),
        default="c",
        help="the echo provider's audio path: its compiled engine or its Python Protocol (provider --echo)",
    )
    parser.add_argument(
        "--realtime",
        type=int,
        default=0,
        metavar="PRIORITY",
        help="the worker's REALTIME_PRIORITY (SCHED_FIFO for its event loop; floor and load side unchanged)",
    )
    parser.add_argument(
        "--frame-log",
        type=Path,
        metavar="DIR",
        help="write every measured PCM frame's send time and RTT to DIR/{worker,floor}-N.frames (bench/episodes.py)",
    )
    parser.add_argument(
        "--wait-quiet", type=float, default=0.0, help="wait up to this many seconds for a 1-min load average ≤ 0.5"
    )
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 120 or not 0 <= args.warmup <= 10 or not 0 <= args.wait_quiet <= 7200:
        parser.error("--seconds must be in (0, 120], --warmup in [0, 10], --wait-quiet in [0, 7200]")
    if not 0 <= args.realtime <= 99:
        parser.error("--realtime must be in [0, 99]")
    if args.frame_log is not None and args.generator != "c":
        parser.error("--frame-log needs --generator c")
    return args


def wait_quiet(limit_s: float, threshold: float = 0.5) -> None:
    """Other work on the machine shows up as the worker's latency: wait, bounded, for the load to settle."""
    deadline = time.monotonic() + limit_s
    while (load1 := os.getloadavg()[0]) > threshold and time.monotonic() < deadline:
        progress(f"load average {load1:.2f} > {threshold}; waiting")
        time.sleep(min(30.0, max(0.0, deadline - time.monotonic())))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    wait_quiet(args.wait_quiet)
    with tempfile.TemporaryDirectory() as workdir:
        bench = run_all(args, Path(workdir))
    print(report(bench), flush=True)


if __name__ == "__main__":
    main()
