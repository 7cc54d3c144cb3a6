"""The load benchmark's compiled PCM generator (bench/pcm_calls.c) against a real worker and echo provider.

The benchmark's figures are only as good as this program's accounting: every frame sent must be matched to its
echo, a refused call must count as failed, and nothing may be reported lost when nothing was.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from procs import ProviderFactory, WorkerFactory, sts_url

BENCH = Path(__file__).resolve().parents[2] / "bench"
PERIOD_NS = 20_000_000


@pytest.fixture(scope="module")
def generator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc is not None, "the test command installs gcc (scripts/bootstrap)"
    exe = tmp_path_factory.mktemp("bench") / "pcm_calls"
    subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(exe), str(BENCH / "pcm_calls.c")], check=True)
    return exe


def run(
    exe: Path, port: int, calls: int, out: Path, *, seconds: float = 1.0, frames_out: Path | None = None
) -> tuple[list[int], np.ndarray]:
    """Run the generator to the end: its ``done`` figures and the RTTs (ns)."""
    warmup = 0.2
    frames = round((warmup + seconds) * 1e9 / PERIOD_NS)
    args = ["127.0.0.1", port, calls, frames, int(warmup * 1e9), int(seconds * 1e9), 1, out]
    if frames_out is not None:
        args.append(frames_out)
    proc = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=60, check=True)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("window ")
    start, end = map(int, lines[0].split()[1:])
    assert end - start == int(seconds * 1e9)
    assert lines[1].startswith("done ")
    figures = [int(v) for v in lines[1].split()[1:]]
    n_rtt = figures[6]
    return figures, np.fromfile(out, dtype="<i8")[:n_rtt]


def test_every_frame_of_every_call_is_matched_to_its_echo(
    generator: Path, provider: ProviderFactory, worker: WorkerFactory, tmp_path: Path
) -> None:
    sts = provider("sts")
    w = worker(STS_URL=sts_url(sts))
    figures, rtts = run(generator, w.ports["audiosocket"], 20, tmp_path / "out")
    failed, lost, measured, silence, gaps, late, n_rtt, n_lag = figures
    assert failed == 0
    assert lost == 0
    # 1 s measured, less the last 200 ms whose echoes may still be in flight at the hang-up
    assert 20 * 38 <= measured <= 20 * 42
    assert 20 * 48 <= n_rtt <= 20 * 51, "one RTT per frame sent in the window"
    assert 20 * 48 <= n_lag <= 20 * 51
    assert gaps >= 20 * 45
    assert late <= gaps // 10
    assert silence <= 20 * 5
    assert np.all(rtts > 0)
    # the worker holds each frame for its playout margin (4 ms) on top of two loopback hops and the echo
    assert 1e6 < float(np.median(rtts)) < 30e6
    assert w.metric("avr_calls_relayed_total") >= 20


def test_refused_calls_count_as_failed_and_their_frames_as_nothing(
    generator: Path, provider: ProviderFactory, worker: WorkerFactory, tmp_path: Path
) -> None:
    sts = provider("sts")
    w = worker(STS_URL=sts_url(sts), MAX_CONCURRENT_CALLS=5)
    failed, lost, measured, *_ = run(generator, w.ports["audiosocket"], 8, tmp_path / "out", seconds=0.5)[0]
    assert failed == 3, "three calls past MAX_CONCURRENT_CALLS get an error frame and a close"
    assert lost == 0, "a refused call has no frames to lose"
    assert 5 * 13 <= measured <= 5 * 17


def test_the_frame_log_has_every_measured_frame_once(
    generator: Path, provider: ProviderFactory, worker: WorkerFactory, tmp_path: Path
) -> None:
    """runtime_load.py --frame-log: what bench/episodes.py reads is the same RTTs the summary is made of."""
    sts = provider("sts")
    w = worker(STS_URL=sts_url(sts))
    figures, rtts = run(generator, w.ports["audiosocket"], 10, tmp_path / "out", frames_out=tmp_path / "frames")
    log = np.fromfile(tmp_path / "frames", dtype="<i8").reshape(-1, 3)
    assert len(log) == figures[6] == len(rtts) > 0
    assert np.array_equal(log[:, 1], rtts), "the same RTTs, in the same order"
    assert np.all((log[:, 0] >= 0) & (log[:, 0] <= 1_000_000_000)), "sent in the window"
    per_call = np.bincount(log[:, 2], minlength=10)
    assert len(per_call) == 10 and per_call.min() >= 48, "every call, about 50 frames each"


def test_episodes_finds_a_stall_that_hit_every_call_at_once(tmp_path: Path) -> None:
    """500 calls at 6 ms RTT, all of them at 25 ms for frames sent in one 60 ms stretch."""
    calls, frames = 500, 500
    call = np.repeat(np.arange(calls), frames)
    sent = np.tile(np.arange(frames) * 20.0, calls) + call * (20.0 / calls)
    rtt = np.where((sent >= 3000) & (sent < 3060), 25.0, 6.0)
    log = np.stack([(sent * 1e6).astype(np.int64), (rtt * 1e6).astype(np.int64), call], axis=1)
    log.astype("<i8").tofile(tmp_path / "w.frames")
    out = subprocess.run(
        [sys.executable, str(BENCH / "episodes.py"), str(tmp_path / "w.frames")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    over = int(np.sum(rtt > 10.5))
    assert over == 1500
    assert f"over 10.5 ms: {over} frames (0.60 %), in 1 episodes" in out
    assert "outside them: p99 6.00 ms" in out
    assert "3000 to 3060" in out
