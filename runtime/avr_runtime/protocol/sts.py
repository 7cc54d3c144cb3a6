"""AVR speech-to-speech provider messages (JSON text frames over a WebSocket)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Final

import orjson

_AUDIO_PREFIX: Final = '{"type":"audio","audio":"'
_AUDIO_SUFFIX: Final = '"}'


@dataclass(frozen=True, slots=True)
class Audio:
    pcm: bytes


@dataclass(frozen=True, slots=True)
class Interruption:
    pass


@dataclass(frozen=True, slots=True)
class Transcript:
    role: str
    text: str


@dataclass(frozen=True, slots=True)
class ProviderError:
    message: str


@dataclass(frozen=True, slots=True)
class Other:
    """A message type we do not act on; kept so callers can log it."""

    type: str
    data: dict[str, Any]


Event = Audio | Interruption | Transcript | ProviderError | Other

# Provider → core audio arrives 50 times a second per call; building and reading these strings directly
# skips a JSON round trip: the message's shape is fixed, so no parser or serializer is needed for it.


def encode_audio(pcm: bytes) -> str:
    return _AUDIO_PREFIX + base64.b64encode(pcm).decode("ascii") + _AUDIO_SUFFIX


_AUDIO_PREFIX_B: Final = _AUDIO_PREFIX.encode()
_AUDIO_SUFFIX_B: Final = _AUDIO_SUFFIX.encode()


def encode_audio_bytes(pcm: bytes) -> bytes:
    """``encode_audio`` as the UTF-8 payload of a text frame, without a str round trip."""
    return _AUDIO_PREFIX_B + base64.b64encode(pcm) + _AUDIO_SUFFIX_B


def encode_init(call_uuid: str, provider_config: dict[str, Any] | None = None) -> str:
    msg: dict[str, Any] = {"type": "init", "uuid": call_uuid}
    if provider_config:
        msg["provider_config"] = provider_config
    return orjson.dumps(msg).decode()


def encode_dtmf(digit: str) -> str:
    return orjson.dumps({"type": "dtmf_digit", "digit": digit}).decode()


def encode_event(event: Event) -> str:
    """Provider side (the reference provider) of the same protocol."""
    if isinstance(event, Audio):
        return encode_audio(event.pcm)
    if isinstance(event, Interruption):
        return '{"type":"interruption"}'
    if isinstance(event, Transcript):
        return orjson.dumps({"type": "transcript", "role": event.role, "text": event.text}).decode()
    if isinstance(event, ProviderError):
        return orjson.dumps({"type": "error", "message": event.message}).decode()
    return orjson.dumps({"type": event.type, **event.data}).decode()


class MessageError(ValueError):
    pass


def _b64(data: str | bytes) -> bytes:
    # strict_mode: the same checks as b64decode(validate=True), done in C instead of its Python-level regex check
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise MessageError(f"audio is not valid base64: {exc}") from None


def audio_of(payload: bytes) -> bytes | None:
    """The PCM of a provider audio message in its usual form, else None (then use ``decode``). Hot path."""
    if payload.startswith(_AUDIO_PREFIX_B) and payload.endswith(_AUDIO_SUFFIX_B):
        return _b64(payload[len(_AUDIO_PREFIX_B) : -len(_AUDIO_SUFFIX_B)])
    return None


def _parse(text: str | bytes) -> Audio | dict[str, Any]:
    """Both directions: the audio fast path, else a JSON object with a string ``type`` (audio decoded here)."""
    if isinstance(text, str):
        if text.startswith(_AUDIO_PREFIX) and text.endswith(_AUDIO_SUFFIX):
            return Audio(_b64(text[len(_AUDIO_PREFIX) : -len(_AUDIO_SUFFIX)]))
    elif text.startswith(_AUDIO_PREFIX_B) and text.endswith(_AUDIO_SUFFIX_B):
        return Audio(_b64(text[len(_AUDIO_PREFIX_B) : -len(_AUDIO_SUFFIX_B)]))
    try:
        msg = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise MessageError(f"not JSON: {exc}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise MessageError("message is not an object with a string 'type'")
    if msg["type"] == "audio":
        audio = msg.get("audio")
        if not isinstance(audio, str):
            raise MessageError("audio message without a base64 'audio' string")
        return Audio(_b64(audio))
    return msg


def decode(text: str | bytes) -> Event:
    """Decode one provider → core message."""
    msg = _parse(text)
    if isinstance(msg, Audio):
        return msg
    kind = msg["type"]
    if kind == "interruption":
        return Interruption()
    if kind == "transcript":
        return Transcript(str(msg.get("role", "agent")), str(msg.get("text", "")))
    if kind == "error":
        return ProviderError(str(msg.get("message", "")))
    return Other(kind, msg)


# --- core → provider, read by the reference provider ---


@dataclass(frozen=True, slots=True)
class Init:
    uuid: str
    provider_config: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str


ClientMessage = Init | Audio | Dtmf | Other


def decode_client(text: str | bytes) -> ClientMessage:
    """Decode one core → provider message (what the reference provider reads)."""
    msg = _parse(text)
    if isinstance(msg, Audio):
        return msg
    kind = msg["type"]
    if kind == "init":
        cfg = msg.get("provider_config")
        return Init(str(msg.get("uuid", "")), cfg if isinstance(cfg, dict) else {})
    if kind == "dtmf_digit":
        return Dtmf(str(msg.get("digit", "")))
    return Other(kind, msg)
