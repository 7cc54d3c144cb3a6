"""Pytest support: which cluster the integration tier runs against, and what it may skip.

Imported by test fixtures only (it needs pytest). The policy: USE_EXISTING_CLUSTER=1 uses the cluster of
KUBECONFIG; otherwise a local control plane is started, and missing binaries skip the tier locally but fail
it in CI (CI=true), where a silently skipped tier would hide a broken toolchain.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .binaries import MissingBinariesError
from .cluster import STATE_FILE, DevCluster

EXISTING_ENV = "USE_EXISTING_CLUSTER"


@dataclass(frozen=True)
class ClusterUnderTest:
    """The cluster tests talk to: its kubeconfig, and the local control plane if we started one."""

    kubeconfig: Path
    local: DevCluster | None

    def require_local(self) -> DevCluster:
        """The local control plane; skips the test on an existing cluster, which lacks its extras."""
        if self.local is None:
            pytest.skip(f"needs the local control plane (audit log, metrics adapter); {EXISTING_ENV}=1 is set")
        return self.local


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def cluster_session() -> Iterator[ClusterUnderTest]:
    """Body of a session-scoped fixture: yields the cluster, and tears down what it started."""
    if os.environ.get(EXISTING_ENV) == "1":
        kubeconfig = Path(os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)[0]).expanduser()
        # A cluster of `avr-devcluster up` keeps its extras usable from here.
        served = kubeconfig.parent / STATE_FILE
        yield ClusterUnderTest(kubeconfig, DevCluster.attach(kubeconfig.parent) if served.exists() else None)
        return
    try:
        local = DevCluster()
    except MissingBinariesError as error:
        if in_ci():
            pytest.fail(f"the integration tier must run in CI, but: {error}", pytrace=False)
        pytest.skip(f"local control plane unavailable: {error}")
    with local:
        yield ClusterUnderTest(local.kubeconfig, local)
