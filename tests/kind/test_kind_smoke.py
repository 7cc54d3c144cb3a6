"""Smoke test of the kind tier: the cluster answers and schedules a real pod."""

from __future__ import annotations

from typing import Any


def test_kind_cluster_runs_a_pod(kind_cluster: Any) -> None:
    kind_cluster.kubectl("run", "smoke", "--image=registry.k8s.io/pause:3.10", "--restart=Never")
    kind_cluster.kubectl("wait", "--for=condition=Ready", "pod/smoke", "--timeout=180s")
    phase = kind_cluster.kubectl("get", "pod", "smoke", "-o", "jsonpath={.status.phase}")
    assert phase == "Running"
