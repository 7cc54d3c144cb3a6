"""Fixtures of the node tier: the built images running as real pods on real nodes.

One suite, two ways to get the cluster (docs/cluster.md):
- kind, through pytest-kind, where Docker runs privileged containers (a laptop, most CI runners);
- otherwise the local control plane with a real node beside it (avr_devcluster.node: containerd, kubelet,
  kube-proxy, CoreDNS on this machine, as root), where privileged containers are refused.

The images come from scripts/images (AVR_IMAGES names its output directory; scripts/test sets it). Nothing is
downloaded. In CI (CI=true) a tier that cannot run fails instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from node_tier import Images, NodeCluster, cannot

from avr_devcluster import node
from avr_devcluster.binaries import MissingBinariesError
from avr_devcluster.cluster import DevCluster

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.kind)


def _kind_usable() -> bool:
    if shutil.which("kind") is None or shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=30)
    return probe.returncode == 0


def _kind(images: Images) -> Iterator[NodeCluster]:
    from pytest_kind import KindCluster  # noqa: PLC0415 - only where kind can run

    kind, kubectl, helm = shutil.which("kind"), shutil.which("kubectl"), shutil.which("helm")
    if not (kind and kubectl and helm):
        cannot("kind needs kubectl and helm on PATH too")
    assert kind and kubectl and helm
    cluster = KindCluster("avr-k8s-nodes", kind_path=Path(kind), kubectl_path=Path(kubectl))
    cluster.create()
    try:
        for archive in sorted(images.archives.glob("*.tar")):
            subprocess.run([kind, "load", "image-archive", str(archive), "--name", cluster.name], check=True)
        yield NodeCluster("kind", Path(cluster.kubeconfig_path), kubectl, helm, images, direct=False)
    finally:
        cluster.delete()


def _real_node(images: Images) -> Iterator[NodeCluster]:
    reason = node.unavailable()
    if reason:
        cannot(reason)
    try:
        cluster = DevCluster(real_node=True, images=images.archives, timeout=180)
    except MissingBinariesError as error:
        cannot(str(error))
    with cluster:
        bin_dir = cluster.bin_dir
        yield NodeCluster(
            "real node",
            cluster.kubeconfig,
            str(bin_dir / "kubectl"),
            str(bin_dir / "helm"),
            images,
            direct=True,
            log_dirs=[cluster.layout.logs],
            local=cluster,
        )


@pytest.fixture(scope="session")
def nodes() -> Iterator[NodeCluster]:
    images = Images.from_env()
    if _kind_usable() and os.environ.get("AVR_NODE_TIER", "") != "real-node":
        yield from _kind(images)
    else:
        yield from _real_node(images)
