"""Worker settings, read from environment variables with AVR's names and defaults."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from avr_runtime.audio.buffer import Overflow


class Codec(StrEnum):
    OPUS = "opus"
    PCM16 = "pcm16"
    ULAW = "ulaw"
    ALAW = "alaw"


class AudioSocketFormat(StrEnum):
    """What 0x10 frames carry (0x11-0x18 say their own rate)."""

    AUTO = "auto"  # detect from the first audio frame: 160 bytes G.711 (as AVR's core does), 640 bytes slin16
    SLIN = "slin"  # 8 kHz, whatever the frame size
    SLIN16 = "slin16"  # 16 kHz: Asterisk before the 0x12 type, on a slin16 channel
    ULAW = "ulaw"
    ALAW = "alaw"


class Slin16Reply(StrEnum):
    """How a call whose 0x10 frames carry 16 kHz is answered (Asterisk before 0x12 reads every 0x10 frame it
    receives as 8 kHz, so ``slin`` is what it plays right)."""

    SLIN = "slin"  # 320-byte 0x10 frames of 8 kHz
    SLIN16 = "slin16"  # 640-byte 0x10 frames of 16 kHz, for peers that read 0x10 at the rate they send it


class DrainMode(StrEnum):
    DEADLINE = "deadline"  # DRAIN_TIMEOUT seconds, then the calls left are ended
    UNTIL_EMPTY = "until_empty"  # no cut of our own: the pod's terminationGracePeriodSeconds is the only limit


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class LogFormat(StrEnum):
    JSON = "json"
    TEXT = "text"


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]?i?B?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "KIB": 2**10, "M": 10**6, "MB": 10**6, "MIB": 2**20}
_UNITS |= {"G": 10**9, "GB": 10**9, "GIB": 2**30}


def parse_size(text: str) -> int:
    """'100MB' → bytes. Decimal units (MB) and binary ones (MiB) are both accepted."""
    m = _SIZE.match(text)
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 100MB, 512KiB, 1G)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


Port = Annotated[int, Field(ge=1, le=65535)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    # listeners
    host: str = Field("0.0.0.0", description="Address both listeners bind to.")
    port: Port = Field(5001, description="AudioSocket TCP port.")
    http_port: Port = Field(3000, description="HTTP port: health, readiness, metrics, /call, stream.")
    audiosocket_format: AudioSocketFormat = AudioSocketFormat.AUTO
    audiosocket_slin16_reply: Slin16Reply = Field(
        Slin16Reply.SLIN, description="Replies to 0x10 calls taken as 16 kHz: 8 kHz (slin) or 16 kHz (slin16) frames."
    )
    audiosocket_error_frames: bool = Field(
        False,
        description="Send an error frame (0xff, the reason's code) before the hangup of a call ended by a failure: "
        "Asterisk's AudioSocket() then fails and the dialplan after it does not run.",
    )

    # providers
    sts_url: str | None = Field(None, description="Speech-to-speech provider WebSocket URL.")
    asr_url: str | None = None
    llm_url: str | None = None
    tts_url: str | None = None
    tts_voice: str = Field("default", description="Voice name: part of the TTS cache key.")
    connection_pool_size: int = Field(10, ge=1, le=1000)
    connection_timeout: int = Field(5000, ge=1, le=600_000, description="Milliseconds.")
    max_retries: int = Field(3, ge=0, le=20)

    # client stream leg
    audio_codec: Codec = Codec.OPUS
    audio_bitrate: int = Field(16000, ge=6000, le=510_000)
    audio_channels: int = Field(1, ge=1, le=2)
    audio_sample_rate: int = Field(16000, description="Rate of the stream leg and of the analysis windows.")
    opus_complexity: int = Field(5, ge=0, le=10)
    stream_queue_frames: int = Field(50, ge=1, le=10_000, description="Outbound frames queued per stream client.")
    buffer_size: int = Field(1024, ge=64, le=65536, description="Analysis window, samples.")
    buffer_overlap: float = Field(0.5, ge=0.0, lt=1.0)
    playout_max_ms: int = Field(30_000, ge=100, le=600_000)
    playout_overflow: Overflow = Overflow.DROP_OLDEST
    playout_margin_ms: float = Field(4.0, ge=0.0, le=20.0)
    playout_grace_ms: float = Field(
        8.0, ge=0.0, le=15.0, description="How long a slot waits for late provider audio before it plays silence."
    )
    playout_max_slew_ms: float = Field(
        5.0, ge=0.0, le=10.0, description="How much earlier than a period the pacer may send, to lock on or catch up."
    )
    fast_path: bool = Field(
        True, description="Relay steady-state STS calls (slin AudioSocket, ws:// provider) in the compiled data plane."
    )
    fast_path_poll_ms: float = Field(
        1.0, ge=0.0, le=20.0, description="The data plane reads its sockets on this timer (0: on every socket event)."
    )
    realtime_priority: int = Field(
        0, ge=0, le=99, description="SCHED_FIFO priority of the worker's event loop (0: the normal scheduler)."
    )

    # cache, limits
    cache_max_size: int = Field(1000, ge=0)
    cache_ttl: int = Field(3600, ge=1, description="Seconds.")
    rate_limit: int = Field(100, ge=1, description="New calls per RATE_WINDOW per caller (the /call 'from').")
    rate_window: int = Field(60, ge=1, description="Seconds.")
    source_rate_limit: int = Field(
        3000, ge=1, description="New calls, and HTTP API requests, per RATE_WINDOW per source address (a PBX)."
    )
    max_concurrent_calls: int = Field(500, ge=1)
    call_metadata_ttl: int = Field(300, ge=1, description="Seconds a POST /call payload waits for its call.")
    peer_service: str | None = Field(
        None, description="DNS name of the other worker pods (a headless Service), asked for metadata a call lacks."
    )
    peer_timeout_ms: int = Field(300, ge=1, le=10_000, description="How long a call waits for its peers' answer.")

    # access
    api_token: SecretStr | None = Field(
        None, description="Bearer token the HTTP API's POST endpoints require (/call, /cache/prewarm, claims)."
    )

    # logging
    log_level: LogLevel = LogLevel.INFO
    log_format: LogFormat = LogFormat.JSON
    log_rotation: str = Field("100MB", description="Rotate LOG_FILE at this size.")
    log_file: str | None = None

    # lifecycle
    drain_timeout: float = Field(300.0, ge=0.0, description="Seconds live calls may continue after SIGTERM.")
    drain_mode: DrainMode = Field(
        DrainMode.DEADLINE, description="deadline: cut calls after DRAIN_TIMEOUT; until_empty: wait for the last one."
    )

    # the pod (downward API), for its deletion cost
    pod_name: str | None = None
    pod_namespace: str | None = None
    pod_deletion_cost: bool = Field(
        False, description="Keep the pod's controller.kubernetes.io/pod-deletion-cost at its live calls."
    )
    pod_deletion_cost_interval: float = Field(5.0, ge=0.1, le=300.0, description="Seconds between updates, at most.")
    service_account_dir: str = Field(
        "/var/run/secrets/kubernetes.io/serviceaccount", description="The pod's ServiceAccount token and CA."
    )

    # webhooks
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    webhook_timeout: int = Field(3000, ge=1, description="Milliseconds.")
    webhook_retry: int = Field(0, ge=0, le=10)

    @field_validator("audio_sample_rate")
    @classmethod
    def _rate(cls, v: int) -> int:
        if v not in (8000, 16000):
            raise ValueError("AUDIO_SAMPLE_RATE must be 8000 or 16000")
        return v

    @field_validator("log_rotation")
    @classmethod
    def _rotation(cls, v: str) -> str:
        parse_size(v)
        return v

    @field_validator(
        "log_level",
        "log_format",
        "audio_codec",
        "audiosocket_format",
        "audiosocket_slin16_reply",
        "playout_overflow",
        "drain_mode",
        mode="before",
    )
    @classmethod
    def _lower(cls, v: object) -> object:
        return v.lower() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _providers(self) -> Self:
        chain = [self.asr_url, self.llm_url, self.tts_url]
        if self.sts_url and any(chain):
            raise ValueError("set either STS_URL or ASR_URL+LLM_URL+TTS_URL, not both")
        if any(chain) and not all(chain):
            raise ValueError("the HTTP chain needs all of ASR_URL, LLM_URL and TTS_URL")
        return self

    @model_validator(mode="after")
    def _drain(self) -> Self:
        if self.drain_mode is DrainMode.UNTIL_EMPTY and "drain_timeout" in self.model_fields_set:
            raise ValueError("DRAIN_TIMEOUT does nothing with DRAIN_MODE=until_empty: set one or the other")
        return self

    @model_validator(mode="after")
    def _pod(self) -> Self:
        if self.pod_deletion_cost and not (self.pod_name and self.pod_namespace):
            raise ValueError("POD_DELETION_COST needs POD_NAME and POD_NAMESPACE (the downward API)")
        return self

    @model_validator(mode="after")
    def _rotation_needs_a_file(self) -> Self:
        if "log_rotation" in self.model_fields_set and not self.log_file:
            raise ValueError("LOG_ROTATION rotates LOG_FILE: set LOG_FILE too (without it logs go to stdout)")
        return self

    @property
    def mode(self) -> str:
        if self.sts_url:
            return "sts"
        if self.asr_url:
            return "chain"
        return "none"

    @property
    def log_rotation_bytes(self) -> int:
        return parse_size(self.log_rotation)
