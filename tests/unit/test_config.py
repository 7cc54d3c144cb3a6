"""Settings from the environment: AVR's names and documented defaults, overrides and validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from avr_runtime.audio.buffer import Overflow
from avr_runtime.config import Codec, LogFormat, LogLevel, Settings, parse_size


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.delenv(name, raising=False)


def test_defaults_are_avr_defaults() -> None:
    s = Settings()
    assert s.port == 5001
    assert s.http_port == 3000
    assert s.connection_pool_size == 10
    assert s.connection_timeout == 5000
    assert s.max_retries == 3
    assert s.audio_codec is Codec.OPUS
    assert s.audio_bitrate == 16000
    assert s.audio_channels == 1
    assert s.rate_limit == 100
    assert s.rate_window == 60
    assert s.cache_max_size == 1000
    assert s.cache_ttl == 3600
    assert s.log_level is LogLevel.INFO
    assert s.log_format is LogFormat.JSON
    assert s.log_rotation == "100MB"
    assert s.log_rotation_bytes == 100 * 10**6
    assert (s.audio_sample_rate, s.buffer_size, s.buffer_overlap) == (16000, 1024, 0.5)
    assert s.webhook_timeout == 3000
    assert s.webhook_retry == 0
    assert s.mode == "none"
    assert (s.playout_margin_ms, s.playout_grace_ms, s.playout_max_slew_ms) == (4.0, 8.0, 5.0)
    assert (s.fast_path, s.fast_path_poll_ms, s.realtime_priority) == (True, 1.0, 0)


def test_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "PORT": "6001",
        "HTTP_PORT": "8080",
        "CONNECTION_POOL_SIZE": "20",
        "CONNECTION_TIMEOUT": "2500",
        "MAX_RETRIES": "0",
        "AUDIO_CODEC": "ULAW",
        "AUDIO_BITRATE": "24000",
        "AUDIO_CHANNELS": "2",
        "AUDIO_SAMPLE_RATE": "8000",
        "RATE_LIMIT": "5",
        "RATE_WINDOW": "10",
        "CACHE_MAX_SIZE": "0",
        "CACHE_TTL": "60",
        "LOG_LEVEL": "DEBUG",
        "LOG_FORMAT": "text",
        "LOG_ROTATION": "10MiB",
        "LOG_FILE": "/tmp/worker.log",
        "BUFFER_SIZE": "512",
        "BUFFER_OVERLAP": "0.75",
        "PLAYOUT_OVERFLOW": "DROP_NEWEST",
        "WEBHOOK_URL": "http://hooks/x",
        "WEBHOOK_SECRET": "s3cret-value",
        "WEBHOOK_TIMEOUT": "1000",
        "WEBHOOK_RETRY": "2",
        "PLAYOUT_MAX_SLEW_MS": "2",
        "PLAYOUT_GRACE_MS": "4",
        "FAST_PATH_POLL_MS": "0",
        "REALTIME_PRIORITY": "20",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = Settings()
    assert (s.port, s.http_port) == (6001, 8080)
    assert (s.connection_pool_size, s.connection_timeout, s.max_retries) == (20, 2500, 0)
    assert s.audio_codec is Codec.ULAW
    assert (s.audio_bitrate, s.audio_channels, s.audio_sample_rate) == (24000, 2, 8000)
    assert (s.rate_limit, s.rate_window, s.cache_max_size, s.cache_ttl) == (5, 10, 0, 60)
    assert s.log_level is LogLevel.DEBUG
    assert s.log_format is LogFormat.TEXT
    assert s.log_rotation_bytes == 10 * 2**20
    assert (s.buffer_size, s.buffer_overlap) == (512, 0.75)
    assert s.playout_overflow is Overflow.DROP_NEWEST
    assert s.webhook_url == "http://hooks/x"
    assert s.webhook_secret is not None
    assert s.webhook_secret.get_secret_value() == "s3cret-value"
    assert "s3cret-value" not in repr(s)
    assert (s.webhook_timeout, s.webhook_retry) == (1000, 2)
    assert (s.playout_max_slew_ms, s.fast_path_poll_ms, s.playout_grace_ms) == (2.0, 0.0, 4.0)
    assert s.realtime_priority == 20


def test_lowercase_env_names_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("port", "7001")
    assert Settings().port == 7001


def test_sts_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STS_URL", "ws://sts:6030")
    assert Settings().mode == "sts"


def test_chain_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASR_URL", "http://asr:6010/speech-to-text-stream")
    monkeypatch.setenv("LLM_URL", "http://llm:6002/prompt-stream")
    monkeypatch.setenv("TTS_URL", "http://tts:6011/text-to-speech-stream")
    assert Settings().mode == "chain"


def test_sts_with_asr_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STS_URL", "ws://sts:6030")
    monkeypatch.setenv("ASR_URL", "http://asr:6010")
    with pytest.raises(ValidationError, match="STS_URL"):
        Settings()


@pytest.mark.parametrize(
    "present", [("ASR_URL",), ("LLM_URL",), ("TTS_URL",), ("ASR_URL", "LLM_URL"), ("LLM_URL", "TTS_URL")]
)
def test_partial_chain_is_rejected(monkeypatch: pytest.MonkeyPatch, present: tuple[str, ...]) -> None:
    for name in present:
        monkeypatch.setenv(name, "http://x:1")
    with pytest.raises(ValidationError, match="ASR_URL, LLM_URL and TTS_URL"):
        Settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LOG_ROTATION", "lots"),
        ("LOG_ROTATION", "100XB"),
        ("LOG_ROTATION", "-5MB"),
        ("AUDIO_SAMPLE_RATE", "44100"),
        ("AUDIO_SAMPLE_RATE", "12000"),
        ("PORT", "0"),
        ("PORT", "70000"),
        ("HTTP_PORT", "abc"),
        ("AUDIO_CODEC", "mp3"),
        ("LOG_LEVEL", "verbose"),
        ("AUDIO_CHANNELS", "3"),
        ("BUFFER_OVERLAP", "1.0"),
        ("CONNECTION_POOL_SIZE", "0"),
        ("MAX_RETRIES", "-1"),
        ("CACHE_MAX_SIZE", "-1"),
        ("RATE_LIMIT", "0"),
        ("PLAYOUT_MAX_SLEW_MS", "-1"),
        ("PLAYOUT_GRACE_MS", "-1"),
        ("PLAYOUT_GRACE_MS", "16"),
        ("PLAYOUT_MAX_SLEW_MS", "15"),
        ("FAST_PATH_POLL_MS", "-0.5"),
        ("FAST_PATH_POLL_MS", "50"),
        ("REALTIME_PRIORITY", "-1"),
        ("REALTIME_PRIORITY", "100"),
    ],
)
def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(ValidationError):
        s.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("100MB", 100_000_000),
        ("100mb", 100_000_000),
        ("1 GB", 10**9),
        ("512KiB", 512 * 1024),
        ("1MiB", 2**20),
        ("2GiB", 2 * 2**30),
        ("10K", 10_000),
        ("1.5M", 1_500_000),
        ("4096", 4096),
        ("4096B", 4096),
        (" 7 kb ", 7000),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MB", "ten MB", "100TB", "1.2.3MB", "100 M B", "-1MB", "iB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_log_rotation_without_a_log_file_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rotation applies to LOG_FILE only: set alone it would do nothing, so it is refused, naming both."""
    monkeypatch.setenv("LOG_ROTATION", "10MB")
    with pytest.raises(ValidationError, match="LOG_ROTATION rotates LOG_FILE"):
        Settings()
    monkeypatch.setenv("LOG_FILE", "/tmp/worker.log")
    assert Settings().log_rotation_bytes == 10**7


def test_drain_until_empty_refuses_a_drain_timeout_it_would_ignore(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRAIN_MODE", "until_empty")
    assert Settings().drain_mode == "until_empty"
    monkeypatch.setenv("DRAIN_TIMEOUT", "60")
    with pytest.raises(ValidationError, match="DRAIN_TIMEOUT does nothing with DRAIN_MODE=until_empty"):
        Settings()


def test_pod_deletion_cost_needs_the_pod_s_name_and_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_DELETION_COST", "true")
    with pytest.raises(ValidationError, match="POD_NAME and POD_NAMESPACE"):
        Settings()
    monkeypatch.setenv("POD_NAME", "core-0")
    monkeypatch.setenv("POD_NAMESPACE", "avr")
    assert Settings().pod_deletion_cost
