"""Fixtures of the integration tier: a real Kubernetes API server with controllers, scheduler and fake nodes.

See avr_devcluster.testing for which cluster that is (local control plane, or USE_EXISTING_CLUSTER=1).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from avr_devcluster.testing import ClusterUnderTest, cluster_session

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def cluster() -> Iterator[ClusterUnderTest]:
    yield from cluster_session()


@pytest.fixture(scope="session")
def api_client(cluster: ClusterUnderTest) -> client.ApiClient:
    """A kubernetes ApiClient with the cluster admin's credentials."""
    load: Callable[..., client.ApiClient] = config.new_client_from_config  # untyped upstream
    return load(config_file=str(cluster.kubeconfig))


@pytest.fixture
def namespace(api_client: client.ApiClient) -> Iterator[str]:
    """A fresh namespace, deleted (without waiting) after the test."""
    name = f"it-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)
