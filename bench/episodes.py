"""Where a run's latency tail comes from: reads the per-frame log that ``runtime_load.py --frame-log`` writes and
tells apart a tail spread over the whole window (the worker adds latency to every call now and then) from one made
of a few episodes that hit every call at once (something took a core away for a few milliseconds).

    .venv/bin/python bench/runtime_load.py --calls 500 --opus-calls "" --frame-log /tmp/frames
    .venv/bin/python bench/episodes.py /tmp/frames/worker-500.frames

An episode is a run of 20 ms bins of send time, at most 60 ms apart, holding frames over the threshold. For each
one it prints how long the frames leaving the load generator paused at most (its own stall) and how long the
echoes reaching it paused at most (the server's, or the provider's)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import numpy.typing as npt

BIN_MS = 20.0
JOIN_BINS = 3


def load(path: Path) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Send times (ms since the window's start) and RTTs (ms), one per echoed frame."""
    records = np.fromfile(path, dtype="<i8").reshape(-1, 3)
    return records[:, 0] / 1e6, records[:, 1] / 1e6


def max_pause(times: npt.NDArray[np.float64], start: float, end: float) -> float:
    inside = np.sort(times[(times >= start) & (times <= end)])
    return float(np.diff(inside).max()) if len(inside) > 1 else 0.0


def episodes(sent: npt.NDArray[np.float64], over: npt.NDArray[np.bool_]) -> list[tuple[float, float, int]]:
    """(start ms, end ms, frames over the threshold) for each episode, the largest first."""
    counts = np.bincount((sent[over] // BIN_MS).astype(np.int64))
    found: list[list[int]] = []
    for i in np.flatnonzero(counts):
        if found and i - found[-1][1] <= JOIN_BINS:
            found[-1][1] = int(i)
            found[-1][2] += int(counts[i])
        else:
            found.append([int(i), int(i), int(counts[i])])
    return sorted(((a * BIN_MS, (b + 1) * BIN_MS, n) for a, b, n in found), key=lambda e: -e[2])


def report(path: Path, threshold: float, top: int) -> str:
    sent, rtt = load(path)
    if len(sent) == 0:
        return f"{path}: no frames"
    over = rtt > threshold
    found = episodes(sent, over)
    in_episode = np.zeros(len(sent), dtype=bool)
    for start, end, _ in found:
        in_episode |= (sent >= start - BIN_MS) & (sent < end + BIN_MS)
    quiet = rtt[~in_episode]
    lines = [
        f"{path}: {len(rtt)} frames, RTT p50 {np.percentile(rtt, 50):.2f} / p99 {np.percentile(rtt, 99):.2f} ms",
        f"  over {threshold} ms: {int(over.sum())} frames ({100 * over.mean():.2f} %), in {len(found)} episodes",
        f"  outside them: p99 {np.percentile(quiet, 99):.2f} ms over {len(quiet)} frames"
        if len(quiet)
        else "  outside them: no frames",
    ]
    arrived = sent + rtt
    for start, end, n in found[:top]:
        sends = max_pause(sent, start - 2 * BIN_MS, end)
        echoes = max_pause(arrived, start - 2 * BIN_MS, end + 2 * BIN_MS)
        lines.append(
            f"  {start:8.0f} to {end:<8.0f} ms  {n:6d} frames over; longest pause: sends {sends:5.1f} ms, echoes "
            f"{echoes:5.1f} ms"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("frames", type=Path, nargs="+", help="files written by runtime_load.py --frame-log")
    parser.add_argument("--threshold", type=float, default=10.5, help="RTT in ms that counts as the tail")
    parser.add_argument("--top", type=int, default=10, help="episodes to list, the largest first")
    args = parser.parse_args()
    for path in args.frames:
        print(report(path, args.threshold, args.top))


if __name__ == "__main__":
    main()
