"""Speech audio for sample calls: real synthesised speech when espeak-ng and sox exist, else a speech-like signal."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None and shutil.which("sox") is not None


def espeak(text: str, rate: int = 8000) -> bytes:
    """PCM16 mono at ``rate`` spoken by espeak-ng, converted by sox."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        raw = Path(tmp) / "speech.raw"
        subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, capture_output=True)
        subprocess.run(
            ["sox", str(wav), "-r", str(rate), "-c", "1", "-b", "16", "-e", "signed-integer", "-L", str(raw)],
            check=True,
            capture_output=True,
        )
        return raw.read_bytes()


def speech_like(seconds: float, rate: int = 8000, seed: int = 1) -> bytes:
    """Voiced syllables (harmonics of a gliding pitch, 4 per second) separated by pauses."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    pitch = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    syllables = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 2
    pauses = (np.sin(2 * np.pi * 0.5 * t) > -0.6).astype(float)
    signal = 0.25 * voiced * syllables * pauses + 0.002 * rng.standard_normal(n)
    return bytes((np.clip(signal, -1, 1) * 32767).astype("<i2").tobytes())


def sample_speech(text: str = "Hello, I would like to check the status of my order.", rate: int = 8000) -> bytes:
    return espeak(text, rate) if espeak_available() else speech_like(3.0, rate)
