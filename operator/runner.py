"""Starts the operator (kopf) with the command line's settings."""

from __future__ import annotations


def run(
    *, namespaces: list[str], liveness: str | None, metrics_port: int, resync_seconds: float, verbose: bool
) -> None:
    raise SystemExit("avr-operator run: not available yet")
