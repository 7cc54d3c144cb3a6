"""Start reference providers and workers as real processes on loopback ports."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from procs import Proc, ProviderFactory, WorkerFactory, free_port, spawn, wait_healthy

from avr_runtime.client.speech import sample_speech


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        if proc.popen.poll() is None:
            proc.popen.kill()
            proc.popen.wait()


@pytest.fixture
def tmpdir_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


@pytest.fixture
def provider(procs: list[Proc], tmpdir_path: Path) -> ProviderFactory:
    def start(kind: str = "sts", delay_ms: float = 0.0) -> Proc:
        port = free_port()
        proc = spawn(
            ["provider", kind, "--port", str(port), "--delay-ms", str(delay_ms)],
            dict(os.environ),
            tmpdir_path,
            f"provider-{port}",
        )
        proc.ports["http"] = port
        procs.append(proc)
        wait_healthy(proc, proc.url("/health"))
        return proc

    return start


@pytest.fixture
def worker(procs: list[Proc], tmpdir_path: Path) -> WorkerFactory:
    def start(*, prefix: Sequence[str] = (), **env_overrides: str | int | float) -> Proc:
        # a fleet on one machine: several workers on their own loopback addresses, the same ports
        host = str(env_overrides.pop("host", "127.0.0.1"))
        as_port = int(env_overrides.pop("port", free_port()))
        http_port = int(env_overrides.pop("http_port", free_port()))
        env = {k: v for k, v in os.environ.items() if not k.endswith("_URL") and k not in ("PORT", "HTTP_PORT")}
        env |= {"HOST": host, "PORT": str(as_port), "HTTP_PORT": str(http_port), "LOG_FORMAT": "json"}
        env |= {k.upper(): str(v) for k, v in env_overrides.items()}
        proc = spawn(["serve"], env, tmpdir_path, f"worker-{host}-{as_port}", prefix)
        proc.host = host
        proc.ports |= {"http": http_port, "audiosocket": as_port}
        procs.append(proc)
        wait_healthy(proc, proc.url("/health"))
        return proc

    return start


@pytest.fixture(scope="session")
def speech() -> bytes:
    """About two seconds of real speech (espeak-ng) at 8 kHz, or a speech-like signal without it."""
    return sample_speech("Hello, I would like to check the status of my order.")
