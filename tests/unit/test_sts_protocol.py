"""AVR speech-to-speech messages: JSON text frames, audio as base64 PCM16."""

from __future__ import annotations

import base64
import json

import pytest

from avr_runtime.protocol import sts
from avr_runtime.protocol.sts import (
    Audio,
    Dtmf,
    Init,
    Interruption,
    MessageError,
    Other,
    ProviderError,
    Transcript,
)

PCM = bytes(range(256)) + bytes(64)
B64 = base64.b64encode(PCM).decode()


def test_encode_audio_is_the_avr_json() -> None:
    text = sts.encode_audio(PCM)
    assert json.loads(text) == {"type": "audio", "audio": B64}


@pytest.mark.parametrize("pcm", [b"", b"\x01", b"\x00\x01\x02", PCM, bytes(range(256)) * 8])
def test_audio_fast_path_and_json_path_agree(pcm: bytes) -> None:
    fast = sts.encode_audio(pcm)
    generic = json.dumps({"type": "audio", "audio": base64.b64encode(pcm).decode()}, indent=1)
    reordered = json.dumps({"audio": base64.b64encode(pcm).decode(), "type": "audio"})
    assert sts.decode(fast) == sts.decode(generic) == sts.decode(reordered) == Audio(pcm)
    assert sts.decode(fast.encode()) == Audio(pcm)  # bytes go through the generic path
    assert sts.decode_client(fast) == sts.decode_client(generic) == Audio(pcm)


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"audio","audio":"!!notbase64!!"}',
        '{"type":"audio","audio":"AAA"}',  # bad padding
        '{"type": "audio", "audio": "@@@@"}',
        '{"type":"audio","audio":"AA AA"}',
    ],
)
def test_bad_base64_is_a_message_error(text: str) -> None:
    with pytest.raises(MessageError, match="base64"):
        sts.decode(text)
    with pytest.raises(MessageError, match="base64"):
        sts.decode_client(text)


@pytest.mark.parametrize("text", ["", "not json", "{", '{"type":', b"\xff\xfe"])
def test_non_json_is_a_message_error(text: str | bytes) -> None:
    with pytest.raises(MessageError):
        sts.decode(text)
    with pytest.raises(MessageError):
        sts.decode_client(text)


@pytest.mark.parametrize("text", ["{}", '{"audio":"AAAA"}', '{"type":3}', "[1,2]", '"audio"', "null", "42"])
def test_missing_or_bad_type_is_a_message_error(text: str) -> None:
    with pytest.raises(MessageError):
        sts.decode(text)
    with pytest.raises(MessageError):
        sts.decode_client(text)


@pytest.mark.parametrize("text", ['{"type":"audio"}', '{"type":"audio","audio":5}', '{"type":"audio","audio":null}'])
def test_audio_without_a_string_is_a_message_error(text: str) -> None:
    with pytest.raises(MessageError):
        sts.decode(text)
    with pytest.raises(MessageError):
        sts.decode_client(text)


def test_interruption() -> None:
    assert sts.decode('{"type":"interruption"}') == Interruption()
    assert sts.decode(b'{"type": "interruption", "extra": 1}') == Interruption()


def test_transcript() -> None:
    assert sts.decode('{"type":"transcript","role":"user","text":"hello"}') == Transcript("user", "hello")
    assert sts.decode('{"type":"transcript","role":"agent","text":"h\\u00e9"}') == Transcript("agent", "hé")


def test_error() -> None:
    assert sts.decode('{"type":"error","message":"quota exceeded"}') == ProviderError("quota exceeded")


def test_unknown_type_is_kept_for_logging() -> None:
    event = sts.decode('{"type":"session.created","id":7}')
    assert isinstance(event, Other)
    assert event.type == "session.created"
    assert event.data["id"] == 7


@pytest.mark.parametrize(
    "event",
    [
        Audio(PCM),
        Audio(b""),
        Interruption(),
        Transcript("user", "what's the time?"),
        Transcript("agent", 'quotes " and \\ and ünïcode'),
        ProviderError("boom"),
    ],
)
def test_provider_events_round_trip(event: sts.Event) -> None:
    text = sts.encode_event(event)
    assert isinstance(json.loads(text), dict)
    assert sts.decode(text) == event


def test_other_event_round_trips() -> None:
    text = sts.encode_event(Other("custom", {"n": 1}))
    assert json.loads(text) == {"type": "custom", "n": 1}
    decoded = sts.decode(text)
    assert isinstance(decoded, Other)
    assert decoded.type == "custom"


def test_init_without_provider_config() -> None:
    text = sts.encode_init("abc-123")
    assert json.loads(text) == {"type": "init", "uuid": "abc-123"}
    assert sts.decode_client(text) == Init("abc-123", {})


def test_init_with_provider_config() -> None:
    cfg = {"voice": "alloy", "temperature": 0.7, "nested": {"a": [1, 2]}}
    text = sts.encode_init("abc-123", cfg)
    assert json.loads(text) == {"type": "init", "uuid": "abc-123", "provider_config": cfg}
    assert sts.decode_client(text) == Init("abc-123", cfg)


def test_init_with_non_object_provider_config() -> None:
    assert sts.decode_client('{"type":"init","uuid":"u","provider_config":"x"}') == Init("u", {})


def test_dtmf_digit() -> None:
    text = sts.encode_dtmf("#")
    assert json.loads(text) == {"type": "dtmf_digit", "digit": "#"}
    assert sts.decode_client(text) == Dtmf("#")


def test_client_unknown_type() -> None:
    msg = sts.decode_client('{"type":"hangup"}')
    assert isinstance(msg, Other)
    assert msg.type == "hangup"
