"""The load benchmark's compiled PCM generator (bench/pcm_calls.c) against a real worker and echo provider.

The benchmark's figures are only as good as this program's accounting: every frame sent must be matched to its
echo, a refused call must count as failed, and nothing may be reported lost when nothing was.
"""

from __future__ import annotations

import shutil
import subprocess
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


def run(exe: Path, port: int, calls: int, out: Path, *, seconds: float = 1.0) -> tuple[list[int], np.ndarray]:
    """Run the generator to the end: its ``done`` figures and the RTTs (ns)."""
    warmup = 0.2
    frames = round((warmup + seconds) * 1e9 / PERIOD_NS)
    args = ["127.0.0.1", port, calls, frames, int(warmup * 1e9), int(seconds * 1e9), 1, out]
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
