"""Logging: JSON or text lines with RFC 3339 times, to stdout (what Kubernetes collects) or a size-rotated file,
with provider secrets redacted."""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
from datetime import UTC, datetime
from typing import Final

from pythonjsonlogger.json import JsonFormatter

from avr_runtime.config import LogFormat, Settings
from avr_runtime.services.tracing import TraceIdFilter

_SECRET_NAME: Final = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL)", re.IGNORECASE)
_URL_CREDENTIALS: Final = re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+@")
_MIN_SECRET: Final = 6
_BACKUPS: Final = 5


def secret_values(settings: Settings, environ: dict[str, str] | None = None) -> list[str]:
    """Values that must never appear in a log line: WEBHOOK_SECRET and any env var named like a key."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= _MIN_SECRET}
    if settings.webhook_secret is not None:
        values.add(settings.webhook_secret.get_secret_value())
    return sorted((v for v in values if v), key=len, reverse=True)


class Redact(logging.Filter):
    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._secrets = secrets

    def redact(self, text: str) -> str:
        for value in self._secrets:
            text = text.replace(value, "***")
        return _URL_CREDENTIALS.sub("***@", text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        for key, value in list(record.__dict__.items()):
            if isinstance(value, str) and key not in ("msg", "message") and not key.startswith("_"):
                cleaned = self.redact(value)
                if cleaned != value:
                    setattr(record, key, cleaned)
        return True


_STANDARD: Final = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def rfc3339(record: logging.LogRecord) -> str:
    """UTC with milliseconds, e.g. 2026-01-01T12:00:00.000Z: what log collectors parse without a pattern."""
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonLines(JsonFormatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return rfc3339(record)


class TextFormatter(logging.Formatter):
    """Plain lines with the structured fields (uuid, reason, …) appended as key=value."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return rfc3339(record)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD and v is not None]
        return f"{line} {' '.join(extras)}" if extras else line


def setup(settings: Settings) -> None:
    handler: logging.Handler
    if settings.log_file:
        handler = logging.handlers.RotatingFileHandler(
            settings.log_file, maxBytes=settings.log_rotation_bytes, backupCount=_BACKUPS
        )
    else:
        handler = logging.StreamHandler(sys.stdout)
    if settings.log_format is LogFormat.JSON:
        handler.setFormatter(
            JsonLines(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"levelname": "level", "asctime": "time", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(Redact(secret_values(settings)))
    handler.addFilter(TraceIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.value.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
