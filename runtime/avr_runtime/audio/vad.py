"""Energy-based voice activity over analysis windows: enough to detect barge-in and cut utterances."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def window_dbfs(window: npt.NDArray[np.int16]) -> float:
    x = window.astype(np.float64)
    power = float(np.dot(x, x)) / max(1, x.size)
    return 10.0 * float(np.log10(power / (32768.0**2) + 1e-12))


class EnergyVad:
    """Speech when the level stays above ``threshold_dbfs`` for ``start_windows`` windows; silence after
    ``hangover_windows`` quiet windows (so short pauses inside words do not end an utterance)."""

    __slots__ = ("_loud", "_quiet", "hangover_windows", "speaking", "start_windows", "threshold_dbfs")

    def __init__(self, threshold_dbfs: float = -35.0, start_windows: int = 2, hangover_windows: int = 8) -> None:
        self.threshold_dbfs = threshold_dbfs
        self.start_windows = start_windows
        self.hangover_windows = hangover_windows
        self.speaking = False
        self._loud = 0
        self._quiet = 0

    def update(self, window: npt.NDArray[np.int16]) -> str | None:
        """Returns "start" or "end" when the state changes, else None."""
        loud = window_dbfs(window) > self.threshold_dbfs
        if loud:
            self._loud += 1
            self._quiet = 0
        else:
            self._quiet += 1
            self._loud = 0
        if not self.speaking and self._loud >= self.start_windows:
            self.speaking = True
            return "start"
        if self.speaking and self._quiet >= self.hangover_windows:
            self.speaking = False
            return "end"
        return None
