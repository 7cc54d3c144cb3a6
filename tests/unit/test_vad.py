"""Energy VAD: start after ``start_windows`` loud windows, end after ``hangover_windows`` quiet ones."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from avr_runtime.audio.vad import EnergyVad, window_dbfs

N = 1024


def level(dbfs: float, seed: int = 0) -> npt.NDArray[np.int16]:
    """A sine window at the given RMS level relative to full scale."""
    amplitude = 32768.0 * 10 ** (dbfs / 20) * np.sqrt(2)
    window: npt.NDArray[np.int16] = np.rint(amplitude * np.sin(2 * np.pi * 0.01 * np.arange(N) + seed)).astype(np.int16)
    return window


LOUD = level(-20.0)
QUIET = level(-60.0)
SILENT = np.zeros(N, dtype=np.int16)


def run(vad: EnergyVad, windows: list[npt.NDArray[np.int16]]) -> list[tuple[int, str]]:
    events = []
    for i, w in enumerate(windows):
        ev = vad.update(w)
        if ev is not None:
            events.append((i, ev))
    return events


def test_window_dbfs() -> None:
    assert window_dbfs(LOUD) == pytest.approx(-20.0, abs=0.1)
    assert window_dbfs(QUIET) == pytest.approx(-60.0, abs=0.5)
    assert window_dbfs(SILENT) < -100
    full = np.full(N, -32768, dtype=np.int16)
    assert window_dbfs(full) == pytest.approx(0.0, abs=0.01)


def test_start_needs_start_windows_loud_windows() -> None:
    vad = EnergyVad(threshold_dbfs=-35, start_windows=3, hangover_windows=4)
    assert run(vad, [QUIET, LOUD, LOUD, QUIET, LOUD, LOUD]) == []
    assert not vad.speaking
    assert vad.update(LOUD) == "start"
    assert vad.speaking


def test_end_after_hangover() -> None:
    vad = EnergyVad(threshold_dbfs=-35, start_windows=2, hangover_windows=4)
    windows = [QUIET] * 3 + [LOUD] * 5 + [QUIET] * 3 + [LOUD] + [QUIET] * 6
    assert run(vad, windows) == [(4, "start"), (15, "end")]
    assert not vad.speaking


def test_short_pauses_do_not_end_an_utterance() -> None:
    vad = EnergyVad(threshold_dbfs=-35, start_windows=2, hangover_windows=8)
    windows = [LOUD] * 2 + ([SILENT] * 7 + [LOUD]) * 5
    assert run(vad, windows) == [(1, "start")]
    assert vad.speaking


def test_several_utterances() -> None:
    vad = EnergyVad(threshold_dbfs=-35, start_windows=1, hangover_windows=2)
    windows = [LOUD, SILENT, SILENT, SILENT, LOUD, LOUD, SILENT, SILENT]
    assert run(vad, windows) == [(0, "start"), (2, "end"), (4, "start"), (7, "end")]


def test_threshold_is_respected() -> None:
    vad = EnergyVad(threshold_dbfs=-30, start_windows=1, hangover_windows=1)
    assert vad.update(level(-33.0)) is None
    assert vad.update(level(-27.0)) == "start"
