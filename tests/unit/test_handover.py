"""handover.decide: one answer per call, MOVE or the first reason that keeps it in Python, for every reason."""

from __future__ import annotations

import dataclasses

import pytest
from prometheus_client import REGISTRY

from avr_runtime.services import metrics
from avr_runtime.services.handover import MOVE, Facts, LegFormat, Stay, decide

SLIN8 = LegFormat("audiosocket", "slin", 8000)
OPUS_MONO = LegFormat("stream", "opus", 48000)
MOVABLE = Facts(fast_path=True, built=True, provider="sts", provider_url="ws://sts:9000/ws?uuid=1", leg=SLIN8)


@pytest.mark.parametrize("leg", [SLIN8, OPUS_MONO, LegFormat("stream", "opus", 16000)])
def test_a_steady_sts_call_on_a_leg_the_engine_carries_moves(leg: LegFormat) -> None:
    assert decide(dataclasses.replace(MOVABLE, leg=leg)) is MOVE


CASES: dict[Stay, Facts] = {
    Stay.FAST_PATH_OFF: dataclasses.replace(MOVABLE, fast_path=False),
    Stay.NOT_BUILT: dataclasses.replace(MOVABLE, built=False),
    Stay.NOT_STS: dataclasses.replace(MOVABLE, provider="chain", provider_url=None),
    Stay.TLS: dataclasses.replace(MOVABLE, provider_url="wss://sts:9443/ws"),
    Stay.G711: dataclasses.replace(MOVABLE, leg=LegFormat("audiosocket", "alaw", 8000)),
    Stay.WIDEBAND: dataclasses.replace(MOVABLE, leg=LegFormat("audiosocket", "slin", 16000)),
    Stay.CODEC: dataclasses.replace(MOVABLE, leg=LegFormat("stream", "pcm16", 8000)),
    Stay.STEREO: dataclasses.replace(MOVABLE, leg=LegFormat("stream", "opus", 48000, 2)),
    Stay.PROVIDER_ENDED: dataclasses.replace(MOVABLE, provider_ended=True),
    Stay.ENDED: dataclasses.replace(MOVABLE, call_ended=True),
}


def test_every_reason_but_a_failed_handover_is_decided_from_the_facts() -> None:
    # ERROR is the one outcome of the attempt itself (Call.hand_over), not of the facts
    assert set(CASES) == set(Stay) - {Stay.ERROR}


@pytest.mark.parametrize("reason", list(CASES))
def test_each_reason(reason: Stay) -> None:
    assert decide(CASES[reason]) is reason


def test_g711_on_a_stream_is_a_codec_the_engine_lacks_and_ulaw_on_audiosocket_is_g711() -> None:
    assert decide(dataclasses.replace(MOVABLE, leg=LegFormat("stream", "ulaw", 8000))) is Stay.CODEC
    assert decide(dataclasses.replace(MOVABLE, leg=LegFormat("audiosocket", "ulaw", 8000))) is Stay.G711


def test_a_call_that_ends_before_its_audio_format_is_known_ended_first() -> None:
    assert decide(dataclasses.replace(MOVABLE, leg=None, call_ended=True)) is Stay.ENDED


def test_the_first_reason_that_applies_wins_settings_before_the_call() -> None:
    everything = Facts(
        fast_path=False,
        built=False,
        provider="chain",
        provider_url="wss://x",
        leg=LegFormat("audiosocket", "ulaw", 8000),
        provider_ended=True,
        call_ended=True,
    )
    assert decide(everything) is Stay.FAST_PATH_OFF
    assert decide(dataclasses.replace(everything, fast_path=True)) is Stay.NOT_BUILT
    assert decide(dataclasses.replace(everything, fast_path=True, built=True)) is Stay.NOT_STS
    sts = dataclasses.replace(everything, fast_path=True, built=True, provider="sts")
    assert decide(sts) is Stay.TLS
    assert decide(dataclasses.replace(sts, provider_url="ws://x")) is Stay.G711
    assert decide(dataclasses.replace(sts, provider_url="ws://x", leg=SLIN8)) is Stay.PROVIDER_ENDED


def sample(result: str, reason: str) -> float | None:
    return REGISTRY.get_sample_value("avr_data_plane_handovers_total", {"result": result, "reason": reason})


def test_every_outcome_is_a_series_from_the_start_and_counting_adds_to_its_own() -> None:
    for reason in Stay:
        assert sample("python", reason.value) is not None
    assert sample("moved", "none") is not None
    before_moved, before_tls = sample("moved", "none") or 0.0, sample("python", "tls") or 0.0
    metrics.count_handover(MOVE)
    metrics.count_handover(Stay.TLS)
    assert sample("moved", "none") == before_moved + 1
    assert sample("python", "tls") == before_tls + 1
