"""Fixtures of the operator's integration tests: the CRD (installed once), and namespaces watched by the
operator running as a subprocess (`avr-operator run`) with its own service account.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from avr_devcluster import eventually
from avr_devcluster.testing import ClusterUnderTest
from avr_operator.api.crd import crd_manifest
from avr_operator.constants import CRD_NAME
from tests.integration.operator.helpers import OperatorEnv, operator_env


def install_crd(api_client: client.ApiClient) -> None:
    """Create (or replace) the CRD generated from the models and wait until it is served."""
    ext: Any = client.ApiextensionsV1Api(api_client)  # untyped use: plain dict bodies
    body = crd_manifest()
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        current = ext.read_custom_resource_definition(CRD_NAME)
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        ext.replace_custom_resource_definition(CRD_NAME, body)

    def established() -> bool:
        conditions = ext.read_custom_resource_definition(CRD_NAME).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    eventually(established, timeout=30, what="the CRD to be established")


@pytest.fixture(scope="session")
def crd(api_client: client.ApiClient) -> None:
    install_crd(api_client)


def _namespace(api_client: client.ApiClient) -> Iterator[str]:
    name = f"it-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="module")
def module_namespace(api_client: client.ApiClient) -> Iterator[str]:
    """A fresh namespace shared by the tests of one module."""
    yield from _namespace(api_client)


@pytest.fixture(scope="module")
def operated(
    cluster: ClusterUnderTest,
    api_client: client.ApiClient,
    crd: None,
    module_namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorEnv]:
    """The module's namespace, watched by one operator subprocess (resync every 2 s)."""
    workdir = tmp_path_factory.mktemp("operator")
    yield from operator_env(api_client, cluster, module_namespace, workdir)


@pytest.fixture
def own_operator(
    cluster: ClusterUnderTest,
    api_client: client.ApiClient,
    crd: None,
    namespace: str,
    tmp_path: Path,
) -> Iterator[OperatorEnv]:
    """A fresh namespace with an operator subprocess of its own (for tests that kill it)."""
    yield from operator_env(api_client, cluster, namespace, tmp_path)
