"""Packaging tier: the Dockerfile (parsed, no Docker needed) and the wheel as the images install it."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: builds and installs the wheel in a fresh venv (-m 'not slow' skips it)")
