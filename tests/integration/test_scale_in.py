"""Scale-in that keeps calls: real workers keep their pods' deletion cost at their live calls, and the real
ReplicaSet controller, told to scale down, removes the idle pods and keeps the busiest.

Each worker process stands for one of the Deployment's (kwok) pods: it runs on loopback with that pod's name,
a token bound to that pod, and the control plane's API server as its in-cluster API.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from kubernetes import client
from procs import Proc, free_port, spawn, sts_url, wait_healthy

from avr_devcluster import eventually
from avr_runtime.client.audiosocket import place_call
from avr_runtime.client.speech import sample_speech

COST = "controller.kubernetes.io/pod-deletion-cost"
APP = "core"


@pytest.fixture
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


@pytest.fixture
def started() -> Iterator[list[Proc]]:
    procs: list[Proc] = []
    yield procs
    for proc in procs:
        if proc.popen.poll() is None:
            proc.popen.kill()
            proc.popen.wait()


def deployment(replicas: int) -> client.V1Deployment:
    labels = {"app": APP}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=APP, labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    service_account_name="core",
                    containers=[client.V1Container(name="core", image="example.invalid/avr-runtime:1")],
                ),
            ),
        ),
    )


def grant_own_pod_patch(api: client.ApiClient, namespace: str) -> None:
    """What the operator gives the core's ServiceAccount: read and patch pods."""
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="core"))
    )
    rule = client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get", "patch"])
    rbac.create_namespaced_role(namespace, client.V1Role(metadata=client.V1ObjectMeta(name="core"), rules=[rule]))
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="core"),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="core"),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="core", namespace=namespace)],
        ),
    )


def name(pod: client.V1Pod) -> str:
    assert pod.metadata is not None and pod.metadata.name
    return pod.metadata.name


def cost(api: client.ApiClient, namespace: str, pod: str) -> str | None:
    meta = client.CoreV1Api(api).read_namespaced_pod(pod, namespace).metadata
    return (meta.annotations or {}).get(COST) if meta is not None else None


def live_pods(api: client.ApiClient, namespace: str) -> list[client.V1Pod]:
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"app={APP}").items or []
    return sorted((p for p in pods if p.metadata and p.metadata.deletion_timestamp is None), key=name)


def pods_when(api: client.ApiClient, namespace: str, count: int) -> list[client.V1Pod] | None:
    pods = live_pods(api, namespace)
    return pods if len(pods) == count else None


async def wait_pods(api: client.ApiClient, namespace: str, count: int, what: str) -> list[client.V1Pod]:
    pods = await asyncio.to_thread(lambda: eventually(lambda: pods_when(api, namespace, count), timeout=60, what=what))
    assert pods is not None
    return pods


def account_dir(api: client.ApiClient, namespace: str, pod: client.V1Pod, root: Path) -> Path:
    """The files the kubelet would mount: a token bound to this pod, and the cluster's CA."""
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(
            audiences=[],
            bound_object_ref=client.V1BoundObjectReference(
                kind="Pod", api_version="v1", name=name(pod), uid=pod.metadata.uid if pod.metadata else None
            ),
        )
    )
    status = client.CoreV1Api(api).create_namespaced_service_account_token("core", namespace, request).status
    assert status and status.token
    path = root / name(pod)
    path.mkdir()
    (path / "token").write_text(status.token)
    shutil.copy(api.configuration.ssl_ca_cert, path / "ca.crt")
    return path


async def test_a_scale_down_keeps_the_pod_with_the_most_calls(
    api_client: client.ApiClient, namespace: str, workdir: Path, started: list[Proc]
) -> None:
    apps = client.AppsV1Api(api_client)
    grant_own_pod_patch(api_client, namespace)
    apps.create_namespaced_deployment(namespace, deployment(3))
    pods = await wait_pods(api_client, namespace, 3, "3 pods")
    server = urlsplit(api_client.configuration.host)
    provider_port = free_port()
    provider = spawn(["provider", "sts", "--port", str(provider_port)], dict(os.environ), workdir, "provider")
    provider.ports["http"] = provider_port
    started.append(provider)
    wait_healthy(provider, provider.url("/health"))
    workers: list[Proc] = []
    for pod in pods:
        as_port, http_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.endswith("_URL")}
        env |= {
            "HOST": "127.0.0.1",
            "PORT": str(as_port),
            "HTTP_PORT": str(http_port),
            "STS_URL": sts_url(provider),
            "POD_NAME": name(pod),
            "POD_NAMESPACE": namespace,
            "POD_DELETION_COST": "true",
            "POD_DELETION_COST_INTERVAL": "0.2",
            "SERVICE_ACCOUNT_DIR": str(account_dir(api_client, namespace, pod, workdir)),
            "KUBERNETES_SERVICE_HOST": str(server.hostname),
            "KUBERNETES_SERVICE_PORT": str(server.port),
        }
        worker = spawn(["serve"], env, workdir, f"worker-{name(pod)}")
        worker.ports |= {"http": http_port, "audiosocket": as_port}
        started.append(worker)
        workers.append(worker)
        wait_healthy(worker, worker.url("/health"))

    speech = sample_speech("Hello, I would like to check the status of my order.") * 4
    load = [0, 3, 1]  # calls per pod: the second is the busiest
    calls = [
        asyncio.create_task(place_call("127.0.0.1", w.ports["audiosocket"], speech, time_limit=120))
        for w, n in zip(workers, load, strict=True)
        for _ in range(n)
    ]
    names = [name(p) for p in pods]

    def costs() -> list[str | None]:
        return [cost(api_client, namespace, n) for n in names]

    want = [str(n) for n in load]
    await asyncio.to_thread(eventually, lambda: costs() == want, timeout=20, what=f"deletion costs {want}")
    apps.patch_namespaced_deployment_scale(namespace=namespace, name=APP, body={"spec": {"replicas": 1}})
    left = await wait_pods(api_client, namespace, 1, "scale-down to 1")
    assert name(left[0]) == names[1], f"kept {name(left[0])}, the busiest was {names[1]}"
    results = await asyncio.gather(*calls)
    assert all(r.hangup for r in results)
    # once the calls are over the cost follows them down
    survivor = names[1]
    await asyncio.to_thread(
        eventually, lambda: cost(api_client, namespace, survivor) == "0", timeout=20, what="cost back to 0"
    )
    assert all(w.metric("avr_pod_deletion_cost_updates_total", {"outcome": "failed"}) == 0 for w in workers[1:2])
