"""G.711 μ-law and A-law against the ITU-T G.711 segment tables, derived here independently of the module."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from avr_runtime.audio import g711

ALL_CODES = bytes(range(256))


def ref_ulaw(code: int) -> int:
    """μ-law: the transmitted byte is P SSS QQQQ with P=1 positive and SSS QQQQ inverted.

    Segment s covers [lower_s, lower_s + 16 * step_s) in 14-bit units with step 2^(s+1); the decoder outputs
    the interval middle (segment 0 starts with the single interval around 0). 16-bit PCM = 14-bit value x 4.
    """
    c = code ^ 0x7F
    positive = bool(c & 0x80)
    seg, q = (c >> 4) & 7, c & 15
    lowers = [-1, 31, 95, 223, 479, 991, 2015, 4063]  # segment boundaries of G.711 table 2a (8159 scale)
    step = 2 ** (seg + 1)
    value = 0 if (seg, q) == (0, 0) else lowers[seg] + step * q + step // 2
    return 4 * (value if positive else -value)


def ref_alaw(code: int) -> int:
    """A-law: even bits inverted (xor 0x55), then P SSS QQQQ (P=1 positive).

    13-bit magnitudes: segments 0 and 1 have step 2 from 0 and 32; segment s >= 2 covers [2^(s+4), 2^(s+5))
    in 16 steps of 2^s; the decoder outputs the interval middle. 16-bit PCM = 13-bit value x 8.
    """
    c = code ^ 0x55
    positive = bool(c & 0x80)
    seg, q = (c >> 4) & 7, c & 15
    if seg == 0:
        value = 2 * q + 1
    else:
        lower, step = 2 ** (seg + 4), 2 ** max(seg, 1)
        value = lower + step * q + step // 2
    return 8 * (value if positive else -value)


def decoded(data: bytes) -> list[int]:
    return [int(v) for v in np.frombuffer(data, dtype="<i2")]


def test_ulaw_known_values() -> None:
    table = decoded(g711.ulaw_to_pcm(ALL_CODES))
    assert table[0xFF] == 0
    assert table[0x7F] == 0
    assert table[0x00] == -32124
    assert table[0x80] == 32124
    assert table[0xFE] == 8  # smallest non-zero step: 2 in 14-bit units
    assert table[0x7E] == -8


def test_alaw_known_values() -> None:
    table = decoded(g711.alaw_to_pcm(ALL_CODES))
    assert table[0xD5] == 8
    assert table[0x55] == -8
    assert table[0x80] == 5504
    assert table[0x00] == -5504
    assert table[0xAA] == 32256  # largest magnitude
    assert table[0x2A] == -32256


def test_ulaw_table_matches_the_standard() -> None:
    assert decoded(g711.ulaw_to_pcm(ALL_CODES)) == [ref_ulaw(c) for c in range(256)]


def test_alaw_table_matches_the_standard() -> None:
    assert decoded(g711.alaw_to_pcm(ALL_CODES)) == [ref_alaw(c) for c in range(256)]


def test_tables_are_monotonic_within_each_sign() -> None:
    # sanity of the reference itself: magnitudes grow with the code inside each polarity
    ulaw_pos = [ref_ulaw(c) for c in range(0xFF, 0x7F, -1)]
    alaw_pos = sorted(ref_alaw(c) for c in range(256) if ref_alaw(c) > 0)
    assert ulaw_pos == sorted(ulaw_pos)
    assert len(set(alaw_pos)) == 128


def test_alaw_encode_decode_is_identity_on_all_codes() -> None:
    assert g711.pcm_to_alaw(g711.alaw_to_pcm(ALL_CODES)) == ALL_CODES


def test_ulaw_encode_decode_is_identity_on_all_codes() -> None:
    # μ-law has two codes for zero (0xFF = +0, 0x7F = -0); every other code maps back to itself and zero
    # encodes as +0, the standard's idle code.
    back = g711.pcm_to_ulaw(g711.ulaw_to_pcm(ALL_CODES))
    assert [b for i, b in enumerate(back) if i != 0x7F] == [i for i in range(256) if i != 0x7F]
    assert back[0x7F] == 0xFF


def test_silence_encodes_to_the_idle_codes() -> None:
    assert g711.pcm_to_ulaw(bytes(320)) == bytes([g711.ULAW_SILENCE]) * 160 == b"\xff" * 160
    assert g711.pcm_to_alaw(b"\x08\x00" * 160) == bytes([g711.ALAW_SILENCE]) * 160 == b"\xd5" * 160


def test_extremes_do_not_wrap() -> None:
    pcm = np.array([32767, -32768, 32200, -32200], dtype="<i2").tobytes()
    assert decoded(g711.ulaw_to_pcm(g711.pcm_to_ulaw(pcm))) == [32124, -32124, 32124, -32124]
    assert decoded(g711.alaw_to_pcm(g711.pcm_to_alaw(pcm))) == [32256, -32256, 32256, -32256]


def test_encoder_picks_the_nearest_level() -> None:
    levels = sorted(set(ref_ulaw(c) for c in range(256)))
    rng = np.random.default_rng(1)
    x = rng.integers(-32768, 32768, 5000).astype("<i2")
    y = np.array(decoded(g711.ulaw_to_pcm(g711.pcm_to_ulaw(x.tobytes()))))
    lv = np.array(levels)
    best = np.abs(x.astype(np.int64)[:, None] - lv[None, :]).min(axis=1)
    assert np.array_equal(np.abs(y - x.astype(np.int64)), best)


def sine(freq: float, amplitude: float, n: int, rate: int = 8000) -> npt.NDArray[np.int16]:
    t = np.arange(n) / rate
    return np.rint(amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2")


def snr_db(ref: npt.NDArray[np.int16], out: npt.NDArray[np.int16]) -> float:
    r = ref.astype(np.float64)
    e = out.astype(np.float64) - r
    return float(10 * np.log10(np.dot(r, r) / np.dot(e, e)))


@pytest.mark.parametrize("amplitude", [1000.0, 8000.0, 20000.0])
@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_sine_snr(law: str, amplitude: float) -> None:
    x = sine(1000.0, amplitude, 8000)
    enc, dec = (g711.pcm_to_ulaw, g711.ulaw_to_pcm) if law == "ulaw" else (g711.pcm_to_alaw, g711.alaw_to_pcm)
    coded = enc(x.tobytes())
    assert len(coded) == len(x)
    y = np.frombuffer(dec(coded), dtype="<i2")
    assert snr_db(x, y) >= 30.0


def speech_like(seconds: float, level: float, seed: int) -> npt.NDArray[np.int16]:
    """Voiced bursts (harmonics of a wandering pitch) between pauses, over a noise floor."""
    rng = np.random.default_rng(seed)
    n = int(8000 * seconds)
    t = np.arange(n) / 8000
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 8000
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None) * (np.sin(2 * np.pi * 0.4 * t) > -0.3)
    x = level * voiced * envelope + rng.normal(0, 30, n)
    return np.clip(np.rint(x), -32768, 32767).astype("<i2")


@pytest.mark.parametrize("level", [100.0, 300.0, 1000.0, 3000.0, 10000.0, 20000.0])
@pytest.mark.parametrize("seed", [1, 2])
def test_guess_law_on_speech(level: float, seed: int) -> None:
    pcm = speech_like(1.0, level, seed).tobytes()
    ulaw, alaw = g711.pcm_to_ulaw(pcm), g711.pcm_to_alaw(pcm)
    for start in range(0, 8000, 160):  # each 20 ms frame on its own, as the server sees it
        assert g711.guess_law(ulaw[start : start + 160]) == "ulaw"
        assert g711.guess_law(alaw[start : start + 160]) == "alaw"


def test_guess_law_on_silence() -> None:
    assert g711.guess_law(b"\xff" * 160) == "ulaw"
    assert g711.guess_law(b"\x7f" * 160) == "ulaw"
    assert g711.guess_law(b"\xd5" * 160) == "alaw"
    assert g711.guess_law(b"\x55" * 160) == "alaw"
    quiet = np.random.default_rng(3).normal(0, 20, 160).astype("<i2").tobytes()
    assert g711.guess_law(g711.pcm_to_ulaw(quiet)) == "ulaw"
    assert g711.guess_law(g711.pcm_to_alaw(quiet)) == "alaw"
