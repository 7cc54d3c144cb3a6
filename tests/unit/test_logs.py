"""Logging: secrets and URL credentials redacted, JSON lines, size-based rotation."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from avr_runtime import logs
from avr_runtime.config import Settings

SECRET = "whsec-0123456789"
API_KEY = "sk-live-abcdef123456"
TOKEN = "tok-zyxwvu987654"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """``setup`` replaces the root handlers: put the previous ones back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    for h in root.handlers:
        if h not in handlers:
            h.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("test", logging.INFO, __file__, 1, msg, args, None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_secret_values_from_settings_and_env() -> None:
    settings = Settings(webhook_secret=SECRET)
    env = {
        "OPENAI_API_KEY": API_KEY,
        "DEEPGRAM_TOKEN": TOKEN,
        "DB_PASSWORD": "hunter2-long",
        "PATH": "/usr/bin:/bin",
        "SHORT_KEY": "abc",  # too short to redact safely
        "HOME": "/root",
    }
    values = logs.secret_values(settings, env)
    assert set(values) == {SECRET, API_KEY, TOKEN, "hunter2-long"}
    assert values == sorted(values, key=len, reverse=True)


def test_secrets_are_redacted_from_messages_and_args() -> None:
    f = logs.Redact(logs.secret_values(Settings(webhook_secret=SECRET), {"LLM_API_KEY": API_KEY}))
    rec = record("posting with %s and key=%s", SECRET, API_KEY)
    assert f.filter(rec)
    text = rec.getMessage()
    assert SECRET not in text and API_KEY not in text
    assert "***" in text
    assert text.startswith("posting with ")


def test_secrets_are_redacted_from_extra_fields() -> None:
    f = logs.Redact([TOKEN])
    rec = record("calling provider", url=f"wss://api.example/ws?token={TOKEN}", uuid="abc")
    f.filter(rec)
    assert TOKEN not in rec.__dict__["url"]
    assert rec.__dict__["uuid"] == "abc"


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ("ws://user:pa55word@sts:6030/x", "ws://***@sts:6030/x"),
        ("connecting to https://bob:s3cr3t@api.example.com/v1 now", "connecting to https://***@api.example.com/v1 now"),
        ("http://host:8080/path", "http://host:8080/path"),
        ("plain text", "plain text"),
    ],
)
def test_url_credentials_are_redacted(text: str, clean: str) -> None:
    f = logs.Redact([])
    rec = record("%s", text, target=text)
    f.filter(rec)
    assert rec.getMessage() == clean
    assert rec.__dict__["target"] == clean


def test_json_format(tmp_path: Path, root_logger: logging.Logger) -> None:
    path = tmp_path / "worker.log"
    logs.setup(Settings(log_file=str(path), log_format="json", log_level="info", webhook_secret=SECRET))
    log = logging.getLogger("avr.test")
    log.info("call started for %s", "abc", extra={"uuid": "abc", "secret_in_field": f"x{SECRET}"})
    log.debug("not shown at info")
    log.warning("webhook to https://u:p4ss@hooks.example/x failed")
    for h in root_logger.handlers:
        h.flush()
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "INFO"
    assert first["logger"] == "avr.test"
    assert first["message"] == "call started for abc"
    assert first["uuid"] == "abc"
    assert SECRET not in lines[0]
    assert second["level"] == "WARNING"
    assert "p4ss" not in second["message"]


def test_text_format_appends_fields(tmp_path: Path, root_logger: logging.Logger) -> None:
    path = tmp_path / "worker.log"
    logs.setup(Settings(log_file=str(path), log_format="text"))
    logging.getLogger("avr.text").info("ended", extra={"uuid": "u-1", "reason": "hangup"})
    for h in root_logger.handlers:
        h.flush()
    line = path.read_text().strip()
    assert "ended" in line and "uuid=u-1" in line and "reason=hangup" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_rotation_from_log_rotation(tmp_path: Path, root_logger: logging.Logger) -> None:
    path = tmp_path / "worker.log"
    logs.setup(Settings(log_file=str(path), log_rotation="2KB"))
    (handler,) = root_logger.handlers
    assert isinstance(handler, logging.handlers.RotatingFileHandler)
    assert handler.maxBytes == 2000
    log = logging.getLogger("avr.rotate")
    for i in range(100):
        log.info("line %d %s", i, "x" * 50)
    handler.flush()
    rotated = tmp_path / "worker.log.1"
    assert rotated.exists()
    assert path.stat().st_size <= 2000
    assert rotated.stat().st_size <= 2000
    assert len(list(tmp_path.glob("worker.log.*"))) <= 5  # bounded number of backups


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_lines_go_to_stdout_with_rfc3339_times(
    fmt: str, root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.setup(Settings(log_format=fmt))
    logging.getLogger("avr_runtime.test").info("hello")
    out, err = capsys.readouterr()
    assert err == ""
    line = out.strip().splitlines()[-1]
    stamp = json.loads(line)["time"] if fmt == "json" else line.split(" ")[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp), stamp
