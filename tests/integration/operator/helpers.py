"""Shared helpers of the operator's integration tests: AVRDeployment objects, their children, kubectl, and the
operator as a subprocess with its own service account (so the audit log tells its writes from the tests').
"""

from __future__ import annotations

import copy
import ctypes
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from procs import free_port

from avr_devcluster import eventually
from avr_devcluster.audit import WriteRequest
from avr_devcluster.binaries import locate
from avr_devcluster.testing import ClusterUnderTest
from avr_operator.constants import (
    API_VERSION,
    FIELD_MANAGER,
    GROUP,
    KIND,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    PLURAL,
    VERSION,
)

Obj = dict[str, Any]

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
MANAGED = f"{LABEL_MANAGED_BY}={FIELD_MANAGER}"
OPERATOR_ACCOUNT = "avr-operator"

# Small, quick to roll out, and no drain delays: what most lifecycle tests start from.
MINIMAL: Obj = {
    "apiVersion": API_VERSION,
    "kind": KIND,
    "metadata": {"name": "demo"},
    "spec": {
        "core": {"image": "avr-runtime:test", "drain": {"timeoutSeconds": 5, "preStopSeconds": 0}},
        "providers": {"sts": {"image": "agentvoiceresponse/avr-sts-openai", "drainSeconds": 0}},
    },
}


def minimal(name: str = "demo", **spec: Any) -> Obj:
    """A deep copy of MINIMAL named `name`, with top-level spec keys replaced by `spec`."""
    body = copy.deepcopy(MINIMAL)
    body["metadata"]["name"] = name
    body["spec"].update(copy.deepcopy(spec))
    return body


def example(path: Path) -> Obj:
    body: Obj = yaml.safe_load(path.read_text())
    return body


# --- the custom resource --------------------------------------------------------------------------------


def custom(api: client.ApiClient) -> Any:
    return client.CustomObjectsApi(api)  # untyped use: plain dict bodies


def create(api: client.ApiClient, namespace: str, body: Obj, **options: Any) -> Obj:
    created: Obj = custom(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body, **options)
    return created


def get(api: client.ApiClient, namespace: str, name: str) -> Obj:
    obj: Obj = custom(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return obj


def patch(api: client.ApiClient, namespace: str, name: str, body: Obj) -> Obj:
    """A JSON merge patch of the AVRDeployment."""
    patched: Obj = custom(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, body, _content_type="application/merge-patch+json"
    )
    return patched


def condition(obj: Obj, ctype: str) -> Obj:
    found: Obj = next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == ctype), {})
    return found


def is_ready(obj: Obj) -> bool:
    """Ready=True for the current generation."""
    status = obj.get("status") or {}
    current = status.get("observedGeneration") == obj["metadata"]["generation"]
    return current and condition(obj, "Ready").get("status") == "True"


def wait_ready(api: client.ApiClient, namespace: str, name: str, timeout: float = 90) -> Obj:
    """The AVRDeployment once Ready for its current generation; on timeout, the error shows its last status."""
    last: Obj = {}

    def ready() -> Obj | None:
        last.update(get(api, namespace, name))
        return last if is_ready(last) else None

    try:
        found = eventually(ready, timeout=timeout, what=f"{namespace}/{name} to be Ready")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; its status: {last.get('status')}") from None
    assert found is not None
    return dict(found)


def wait_missing_api(api: client.ApiClient, namespace: str, name: str, log: str = "", timeout: float = 60) -> Obj:
    """The AVRDeployment once Degraded with reason MissingAPI (an optional API it needs is not served)."""
    last: Obj = {}

    def degraded() -> Obj | None:
        obj = last["obj"] = get(api, namespace, name)
        found = condition(obj, "Degraded")
        return obj if found.get("reason") == "MissingAPI" and found.get("status") == "True" else None

    try:
        found = eventually(degraded, timeout=timeout, what="Degraded MissingAPI")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}: {last.get('obj', {}).get('status')}\n{log}") from None
    assert found is not None
    return dict(found)


# --- children -------------------------------------------------------------------------------------------

CHILD_KINDS = (
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ConfigMap",
    "Service",
    "Deployment",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "NetworkPolicy",
)


def _lister(api: client.ApiClient, kind: str) -> Any:
    core: Any = client.CoreV1Api(api)
    listers: dict[str, Any] = {
        "ConfigMap": core.list_namespaced_config_map,
        "Service": core.list_namespaced_service,
        "Deployment": client.AppsV1Api(api).list_namespaced_deployment,
        "PodDisruptionBudget": client.PolicyV1Api(api).list_namespaced_pod_disruption_budget,
        "HorizontalPodAutoscaler": client.AutoscalingV2Api(api).list_namespaced_horizontal_pod_autoscaler,
        "ServiceAccount": core.list_namespaced_service_account,
        "Role": client.RbacAuthorizationV1Api(api).list_namespaced_role,
        "RoleBinding": client.RbacAuthorizationV1Api(api).list_namespaced_role_binding,
        "NetworkPolicy": client.NetworkingV1Api(api).list_namespaced_network_policy,
    }
    return listers[kind]


def as_dict(api: client.ApiClient, obj: Any) -> Obj:
    serialize: Any = api.sanitize_for_serialization  # untyped upstream
    data: Obj = serialize(obj)
    return data


def children(api: client.ApiClient, namespace: str, instance: str | None = None) -> list[Obj]:
    """Every object the operator labels as its own (optionally of one AVRDeployment), with `kind` set."""
    selector = MANAGED + (f",{LABEL_INSTANCE}={instance}" if instance else "")
    found: list[Obj] = []
    for kind in CHILD_KINDS:
        for item in _lister(api, kind)(namespace, label_selector=selector).items:
            obj = as_dict(api, item)
            obj["kind"] = kind
            found.append(obj)
    return found


def by_kind(objects: list[Obj]) -> dict[tuple[str, str], Obj]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def component(obj: Obj) -> str:
    """The component (core, sts, asr, llm, tts) a child belongs to."""
    return str(obj["metadata"]["labels"][LABEL_COMPONENT])


def replica_sets(api: client.ApiClient, namespace: str, deployment: str) -> list[Obj]:
    """The ReplicaSets a Deployment controls (by ownerReference), live ones only."""
    items = client.AppsV1Api(api).list_namespaced_replica_set(namespace).items
    found = [as_dict(api, rs) for rs in items]

    def controlled(rs: Obj) -> bool:
        refs = rs["metadata"].get("ownerReferences", [])
        return any(r["kind"] == "Deployment" and r["name"] == deployment for r in refs)

    return [rs for rs in found if not rs["metadata"].get("deletionTimestamp") and controlled(rs)]


def pod_names(api: client.ApiClient, namespace: str, selector: str) -> list[str]:
    """Names of the pods matching `selector` that are not terminating."""
    pods = [
        as_dict(api, p) for p in client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items
    ]
    return [str(p["metadata"]["name"]) for p in pods if not p["metadata"].get("deletionTimestamp")]


# --- kubectl --------------------------------------------------------------------------------------------


def kubectl(cluster: ClusterUnderTest, *args: str) -> str:
    """Output of the cluster's pinned kubectl against the cluster; fails the test on a non-zero exit."""
    bin_dir = cluster.local.bin_dir if cluster.local is not None else locate()
    result = subprocess.run(
        [str(bin_dir / "kubectl"), "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result.stdout


# --- the operator as a subprocess -----------------------------------------------------------------------

# What docs/operator.md says the operator needs, for one namespace (plus the CRD, cluster-wide).
NAMESPACED_RULES = [
    (GROUP, ["avrdeployments"], ["get", "list", "watch"]),
    (GROUP, ["avrdeployments/status"], ["get", "patch"]),
    (GROUP, ["avrdeployments/finalizers"], ["update"]),
    ("", ["configmaps", "services", "serviceaccounts"], ["get", "list", "watch", "create", "patch", "delete"]),
    ("rbac.authorization.k8s.io", ["roles", "rolebindings"], ["get", "list", "watch", "create", "patch", "delete"]),
    ("", ["pods"], ["get", "patch"]),  # granted to the core workers' Role: RBAC needs the grantor to hold it
    ("apps", ["deployments"], ["get", "list", "watch", "create", "patch", "delete"]),
    ("autoscaling", ["horizontalpodautoscalers"], ["get", "list", "watch", "create", "patch", "delete"]),
    ("keda.sh", ["scaledobjects"], ["get", "list", "watch", "create", "patch", "delete"]),
    ("policy", ["poddisruptionbudgets"], ["get", "list", "watch", "create", "patch", "delete"]),
    ("networking.k8s.io", ["networkpolicies"], ["get", "list", "watch", "create", "patch", "delete"]),
    ("monitoring.coreos.com", ["podmonitors"], ["get", "list", "watch", "create", "patch", "delete"]),
    ("", ["secrets"], ["get"]),
    ("", ["events"], ["create"]),
    ("events.k8s.io", ["events"], ["create"]),
]


# Cluster-wide: kopf's discovery, and its namespace listing (it lists namespaces whenever it watches only some,
# even by exact name; without the permission it retries for about a minute, then falls back to the names).
CLUSTER_RULES = [
    ("apiextensions.k8s.io", ["customresourcedefinitions"], ["get", "list", "watch"]),
    ("", ["namespaces"], ["list", "watch"]),
]


def _rules(rules: list[tuple[str, list[str], list[str]]]) -> list[client.V1PolicyRule]:
    return [client.V1PolicyRule(api_groups=[g], resources=r, verbs=v) for g, r, v in rules]


def operator_kubeconfig(api: client.ApiClient, cluster: ClusterUnderTest, namespace: str, path: Path) -> str:
    """A ServiceAccount with the documented permissions and a kubeconfig for it; returns its user name."""
    core: Any = client.CoreV1Api(api)
    rbac: Any = client.RbacAuthorizationV1Api(api)
    meta = client.V1ObjectMeta(name=OPERATOR_ACCOUNT)
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata=meta))
    rbac.create_namespaced_role(namespace, client.V1Role(metadata=meta, rules=_rules(NAMESPACED_RULES)))
    subject = client.RbacV1Subject(kind="ServiceAccount", name=OPERATOR_ACCOUNT, namespace=namespace)
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=meta,
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=OPERATOR_ACCOUNT),
            subjects=[subject],
        ),
    )
    crd_reader = f"{OPERATOR_ACCOUNT}-{namespace}"
    crd_rules = _rules(CLUSTER_RULES)
    rbac.create_cluster_role(client.V1ClusterRole(metadata=client.V1ObjectMeta(name=crd_reader), rules=crd_rules))
    rbac.create_cluster_role_binding(
        client.V1ClusterRoleBinding(
            metadata=client.V1ObjectMeta(name=crd_reader),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=crd_reader),
            subjects=[subject],
        )
    )
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=7200))
    token = core.create_namespaced_service_account_token(OPERATOR_ACCOUNT, namespace, request).status.token
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "it", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": OPERATOR_ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": "it", "context": {"cluster": "it", "user": OPERATOR_ACCOUNT, "namespace": namespace}}],
        "current-context": "it",
    }
    path.write_text(yaml.safe_dump(kubeconfig))
    return f"system:serviceaccount:{namespace}:{OPERATOR_ACCOUNT}"


def remove_cluster_rbac(api: client.ApiClient, namespace: str) -> None:
    rbac: Any = client.RbacAuthorizationV1Api(api)
    rbac.delete_cluster_role_binding(f"{OPERATOR_ACCOUNT}-{namespace}")
    rbac.delete_cluster_role(f"{OPERATOR_ACCOUNT}-{namespace}")


def _killed_with_parent() -> None:
    """Runs in the child before exec: the kernel SIGKILLs the operator if the test process dies outright."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _operator_command() -> list[str]:
    script = Path(sys.executable).parent / "avr-operator"
    return [str(script)] if script.exists() else [sys.executable, "-m", "avr_operator.cli"]


@dataclass
class OperatorProcess:
    """`avr-operator run -n NAMESPACE` with its own identity; SIGKILL-able and restartable."""

    namespace: str
    kubeconfig: Path
    username: str
    log_path: Path
    resync: float = 2.0
    metrics_port: int = field(default_factory=free_port)
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.popen is None or self.popen.poll() is not None, "already running"
        self.metrics_port = free_port()
        argv = [
            *_operator_command(),
            "run",
            "--namespace",
            self.namespace,
            "--resync",
            str(self.resync),
            "--liveness",
            "",
            "--metrics-port",
            str(self.metrics_port),
        ]
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        with self.log_path.open("ab") as log:
            log.write(f"--- {' '.join(argv)}\n".encode())
            self.popen = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd="/",
                preexec_fn=_killed_with_parent,  # noqa: PLW1509 - only calls prctl
            )
        eventually(self._serving, timeout=30, what="the operator's metrics endpoint")

    def _serving(self) -> bool:
        assert self.popen is not None
        if self.popen.poll() is not None:
            raise AssertionError(f"the operator exited with {self.popen.returncode}:\n{self.log()}")
        try:
            self.metrics()
        except OSError:
            return False
        return True

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            text: str = response.read().decode()
            return text

    def reconciles(self) -> float:
        """Reconciliations this process has run (ok and degraded)."""
        pattern = re.compile(r"^avr_operator_reconciles_total\{[^}]*\} ([0-9.e+]+)$", re.MULTILINE)
        return sum(float(v) for v in pattern.findall(self.metrics()))

    def wait_reconciles(self, count: int, timeout: float = 30) -> None:
        """Wait until this process has run `count` more reconciliations than now."""
        start = self.reconciles()
        eventually(lambda: self.reconciles() >= start + count, timeout=timeout, what=f"{count} reconciles")

    def kill(self) -> None:
        assert self.popen is not None
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


@dataclass
class OperatorEnv:
    """A namespace watched by an operator subprocess, and the audit log (None on an existing cluster)."""

    api: client.ApiClient
    cluster: ClusterUnderTest
    namespace: str
    operator: OperatorProcess

    def writes(self, since: int) -> list[WriteRequest]:
        """Every write request of the operator's identity since `since` (status patches and events too)."""
        local = self.cluster.require_local()
        return local.audit.writes(since, username=self.operator.username)

    def mark(self) -> int:
        return self.cluster.require_local().audit.mark()


def operator_env(
    api: client.ApiClient, cluster: ClusterUnderTest, namespace: str, workdir: Path, resync: float = 2.0
) -> Iterator[OperatorEnv]:
    """Body of a fixture: an operator subprocess for `namespace`, stopped (and its RBAC removed) afterwards."""
    kubeconfig = workdir / "operator.kubeconfig"
    username = operator_kubeconfig(api, cluster, namespace, kubeconfig)
    process = OperatorProcess(namespace, kubeconfig, username, workdir / "operator.log", resync=resync)
    try:
        process.start()
        yield OperatorEnv(api, cluster, namespace, process)
    finally:
        process.stop()
        remove_cluster_rbac(api, namespace)
