"""Fixtures of the kind tier: a real cluster in Docker via pytest-kind, where Docker and kind exist.

Elsewhere (our CI and most dev machines have no Docker) the tier skips with the reason. The kind and kubectl
binaries are taken from PATH, never downloaded.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.kind)


def _missing() -> str | None:
    """Why kind cannot run here, or None if it can."""
    for tool in ("docker", "kind", "kubectl"):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH"
    probe = subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=30)
    if probe.returncode != 0:
        return "the Docker daemon is not reachable (`docker info` failed)"
    return None


@pytest.fixture(scope="session")
def kind_cluster() -> Iterator[Any]:
    """Replaces pytest-kind's fixture of that name: skips where it cannot run, never downloads tools."""
    reason = _missing()
    if reason:
        pytest.skip(f"kind tier needs Docker and kind: {reason}")
    from pytest_kind import KindCluster  # noqa: PLC0415 - only where the tier can run

    kind, kubectl = shutil.which("kind"), shutil.which("kubectl")
    assert kind and kubectl
    cluster = KindCluster("avr-k8s-test", kind_path=Path(kind), kubectl_path=Path(kubectl))
    cluster.create()
    try:
        yield cluster
    finally:
        cluster.delete()
