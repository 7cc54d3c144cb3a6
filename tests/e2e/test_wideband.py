"""Wideband callers (slin16 and above) through a real worker and the reference providers, over real sockets.

The caller is a real-speech Asterisk at 16 kHz: 0x12 frames of 640 bytes (Asterisk 20.17, 21.12, 22.7, 23.1 and
later with a slin16 channel), or 640-byte 0x10 frames (older Asterisk). The echo provider works at 8 kHz, so what
comes back has been through both resamplers: it must be the speech that was sent, band-limited to 8 kHz's band.
"""

from __future__ import annotations

import asyncio
import statistics

import numpy as np
import numpy.typing as npt
import pytest
from procs import Proc, ProviderFactory, WorkerFactory, chain_env, paced_whole, sts_url

from avr_runtime.audio.resample import Resampler
from avr_runtime.client.audiosocket import CallResult, place_call
from avr_runtime.client.speech import sample_speech
from avr_runtime.protocol import audiosocket as wire

SLIN16 = 0x12


def samples(data: bytes) -> npt.NDArray[np.float64]:
    return np.frombuffer(data, dtype="<i2").astype(np.float64)


def pcm(x: npt.NDArray[np.float64]) -> bytes:
    return np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()


@pytest.fixture(scope="module")
def speech16() -> bytes:
    """Real speech at 16 kHz, band-limited to 3.3 kHz: all of it fits through the provider's 8 kHz."""
    x = samples(sample_speech("Hello, I would like to check the status of my order.", rate=16000))
    spectrum = np.fft.rfft(x)
    spectrum[np.fft.rfftfreq(len(x), 1 / 16000) > 3300] = 0
    return pcm(np.fft.irfft(spectrum, len(x)))


async def call(worker: Proc, audio: bytes, **kw: object) -> CallResult:
    return await place_call("127.0.0.1", worker.ports["audiosocket"], audio, **kw)  # type: ignore[arg-type]


def best_match(sent: npt.NDArray[np.float64], back: npt.NDArray[np.float64]) -> tuple[float, float]:
    """How well ``back`` echoes ``sent``, piece by piece: each 1600 samples of speech are looked for in ``back`` at the
    lag that matches it best (network, playout and filter delay; a loaded machine may cost the echo a frame, which
    shifts what follows); returns the median normalised correlation and the median SNR of the speech pieces."""
    piece = len(sent) // max(1, len(sent) // 1600) if len(sent) >= 1600 else len(sent)
    n = 1 << int(np.ceil(np.log2(len(back) + piece)))
    spectrum = np.fft.rfft(back, n)
    loud = float(np.mean(sent**2))
    rhos: list[float] = []
    snrs: list[float] = []
    for start in range(0, len(sent) - piece + 1, piece):
        ref = sent[start : start + piece]
        if float(np.mean(ref**2)) < 0.1 * loud:  # a pause: nothing to recognise it by
            continue
        corr = np.fft.irfft(spectrum * np.conj(np.fft.rfft(ref, n)), n)[: max(1, len(back) - piece + 1)]
        lag = int(np.argmax(corr))
        seg = back[lag : lag + piece]
        if len(seg) < piece:
            rhos.append(0.0)
            snrs.append(0.0)
            continue
        rhos.append(float(np.dot(seg, ref) / np.sqrt(max(float(np.dot(seg, seg) * np.dot(ref, ref)), 1e-9))))
        err = seg - ref
        snrs.append(float(10 * np.log10(np.dot(ref, ref) / max(float(np.dot(err, err)), 1e-9))))
    assert len(rhos) >= 5, "enough speech to compare"
    return float(np.median(rhos)), float(np.median(snrs))


def replies(result: CallResult, rate: int, size: int) -> list[bytes]:
    """The frames the worker sent once it had the caller's first audio frame: all of the caller's type (by its
    rate) and 20 ms size. Before it, the worker answers as AudioSocket does by default: 8 kHz slin silence."""
    frames, rates = result.audio_frames, result.audio_rates
    first = next(i for i, (f, r) in enumerate(zip(frames, rates, strict=True)) if r == rate and len(f) == size)
    assert first <= 3, "the caller's format is known from its first audio frame"
    assert all(r == 8000 and f == bytes(320) for f, r in zip(frames[:first], rates[:first], strict=True))
    assert all(len(f) == size for f in frames[first:]) and set(rates[first:]) == {rate}
    return frames[first:]


def assert_paced(result: CallResult) -> None:
    assert paced_whole(result), "one frame back per frame sent"
    gaps = result.gaps_ms()
    assert 19.0 <= statistics.median(gaps) <= 21.0
    assert sum(1 for g in gaps if g < 10.0) <= len(gaps) * 0.02, "no bursts"


async def test_a_slin16_caller_is_answered_in_slin16_frames_every_20_ms(
    provider: ProviderFactory, worker: WorkerFactory, speech16: bytes
) -> None:
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts))
    result = await call(w, speech16, frame_bytes=640, audio_type=SLIN16, tail_s=0.6)
    assert result.hangup and result.errors == []
    back = replies(result, 16000, 640)  # 0x12 frames of 20 ms at 16 kHz
    assert_paced(result)
    rho, snr = best_match(samples(speech16), samples(b"".join(back)))
    assert rho >= 0.99 and snr >= 20.0, (rho, snr)
    assert w.metric("avr_audiosocket_wideband_calls_total", {"format": "slin16"}) == 1
    assert w.metric("avr_calls_relayed_total") == 0, "a wideband call stays in Python"
    assert w.metric("avr_calls_ended_total", {"reason": "hangup"}) == 1


async def test_a_wideband_call_is_never_relayed_while_8k_calls_are(
    provider: ProviderFactory, worker: WorkerFactory, speech16: bytes, speech: bytes
) -> None:
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts), fast_path="true")
    narrow = asyncio.create_task(call(w, speech * 2))
    wide = await call(w, speech16 * 2, frame_bytes=640, audio_type=SLIN16)
    await narrow
    assert w.metric("avr_calls_relayed_total") == 1, "the 8 kHz call moved to the data plane, the 16 kHz one did not"
    assert w.handovers() == {"moved": 1.0, "wideband": 1.0}, "and why the 16 kHz one stayed is counted"
    back = replies(wide, 16000, 640)
    assert_paced(wide)
    rho, _ = best_match(samples(speech16 * 2), samples(b"".join(back)))
    assert rho >= 0.99


async def test_a_640_byte_0x10_caller_is_taken_as_16k_and_answered_as_old_asterisk_reads(
    provider: ProviderFactory, worker: WorkerFactory, speech16: bytes
) -> None:
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts))
    result = await call(w, speech16, frame_bytes=640, tail_s=0.6)
    assert result.hangup and result.errors == []
    # Asterisk before 0x12 reads every 0x10 frame as 8 kHz slin: 320-byte frames of 8 kHz are what it plays right
    assert result.audio_frames and all(len(f) == 320 for f in result.audio_frames)
    assert set(result.audio_rates) == {8000}
    assert_paced(result)
    sent8 = samples(Resampler(16000, 8000).process(speech16))
    rho, snr = best_match(sent8, samples(b"".join(result.audio_frames)))
    assert rho >= 0.99 and snr >= 20.0, (rho, snr)
    assert w.metric("avr_audiosocket_wideband_calls_total", {"format": "slin16_0x10"}) == 1
    assert "taken as 16 kHz slin" in w.log


async def test_a_640_byte_0x10_caller_can_be_answered_in_640_byte_0x10_frames(
    provider: ProviderFactory, worker: WorkerFactory, speech16: bytes
) -> None:
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts), audiosocket_slin16_reply="slin16")
    result = await call(w, speech16, frame_bytes=640, tail_s=0.6)
    back = replies(result, 8000, 640)  # 0x10 frames, 640 bytes
    assert_paced(result)
    rho, snr = best_match(samples(speech16), samples(b"".join(back)))
    assert rho >= 0.99 and snr >= 20.0, (rho, snr)


async def test_audiosocket_format_slin_keeps_640_byte_0x10_frames_at_8k(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts), audiosocket_format="slin")
    result = await call(w, speech, frame_bytes=640, tail_s=0.4)  # 40 ms of 8 kHz per frame
    back = [f for f in result.audio_frames if any(f)]
    assert back and all(len(f) == 320 for f in result.audio_frames)
    assert b"".join(back) in speech + bytes(640), "echoed bit for bit: never resampled"
    assert w.metric("avr_audiosocket_wideband_calls_total", {"format": "slin16_0x10"}) == 0


async def test_a_rate_change_mid_call_ends_only_that_call(
    provider: ProviderFactory, worker: WorkerFactory, speech16: bytes
) -> None:
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts))
    good = [asyncio.create_task(call(w, speech16, frame_bytes=640, audio_type=SLIN16)) for _ in range(2)]
    changed = asyncio.create_task(
        call(w, bytes(640 * 100), frame_bytes=640, audio_type=SLIN16, raw={25: wire.audio_frame(bytes(320))})
    )
    refused = asyncio.create_task(call(w, bytes(1920 * 20), frame_bytes=1920, audio_type=0x17))  # 96 kHz
    bad = await changed
    assert bad.hangup and bad.frames_sent < 100, "ended at once, not left running"
    high = await refused
    assert high.hangup and high.frames_sent < 20
    for result in await asyncio.gather(*good):
        assert result.hangup and result.errors == []
        replies(result, 16000, 640)
        assert_paced(result)
    assert w.metric("avr_protocol_errors_total", {"leg": "audiosocket", "reason": "rate_changed"}) == 1
    assert w.metric("avr_protocol_errors_total", {"leg": "audiosocket", "reason": "unsupported_rate"}) == 1
    assert '"reason": "rate_changed"' in w.log and "96000 Hz" in w.log
    assert w.metric("avr_calls_ended_total", {"reason": "hangup"}) == 2
    assert w.metric("avr_active_calls") == 0


async def test_a_slin16_caller_gets_a_spoken_reply_from_the_chain(
    provider: ProviderFactory, worker: WorkerFactory, speech16: bytes
) -> None:
    p = provider("all")
    w = worker(**chain_env(p))
    result = await call(w, speech16, frame_bytes=640, audio_type=SLIN16, tail_s=3.0)
    assert result.hangup and result.errors == []
    assert result.non_silent_frames > 25, "at least half a second of agent speech came back"
    replies(result, 16000, 640)
    assert w.metric("avr_turn_latency_seconds_count") >= 1
    assert w.metric("avr_audiosocket_wideband_calls_total", {"format": "slin16"}) == 1
