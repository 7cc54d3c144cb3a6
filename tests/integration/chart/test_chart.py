"""The Helm chart against a real API server: lint, server-side dry-run, install/upgrade/uninstall, the schema,
and its RBAC proven by running the operator with the chart's ServiceAccount token.

The operator image cannot run on the fake (kwok) nodes: its pods turn Running without containers, so these
tests assert on the objects; the RBAC test runs the operator locally with the exact arguments of the installed
Deployment and the identity of the installed ServiceAccount.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from avr_devcluster import eventually
from avr_devcluster.binaries import locate
from avr_devcluster.testing import ClusterUnderTest
from avr_operator.api.crd import crd_manifest
from avr_operator.constants import CRD_NAME, GROUP, PLURAL, VERSION

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "avr-operator"
OPERATOR = Path(sys.executable).parent / "avr-operator"
RELEASE = "avr"
FULLNAME = "avr-avr-operator"
KEEP = "helm.sh/resource-policy"

STACK: dict[str, Any] = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "AVRDeployment",
    "metadata": {"name": "demo"},
    "spec": {
        "core": {"image": "avr-runtime:test", "drain": {"timeoutSeconds": 5, "preStopSeconds": 0}},
        "providers": {"sts": {"image": "agentvoiceresponse/avr-sts-openai", "drainSeconds": 0}},
    },
}


@dataclass(frozen=True)
class Tools:
    helm_bin: Path
    kubectl_bin: Path
    kubeconfig: Path
    home: Path

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "KUBECONFIG": str(self.kubeconfig),
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }

    def helm(self, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.helm_bin), *args], env=self.env(), input=stdin, capture_output=True, text=True, timeout=180,
            check=False,
        )  # fmt: skip
        if check:
            assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        return result

    def kubectl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.kubectl_bin), *args], env=self.env(), input=stdin, capture_output=True, text=True, timeout=120,
            check=False,
        )  # fmt: skip


@pytest.fixture(scope="module")
def tools(cluster: ClusterUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Tools:
    bin_dir = cluster.local.bin_dir if cluster.local is not None else locate()
    return Tools(bin_dir / "helm", bin_dir / "kubectl", cluster.kubeconfig, tmp_path_factory.mktemp("helm-home"))


def _values(**sets: Any) -> list[str]:
    """--set-json arguments, one per value path."""
    return [arg for path, value in sets.items() for arg in ("--set-json", f"{path}={json.dumps(value)}")]


def _objects(rendered: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(rendered) if d]


def _adopt_crd(api_client: client.ApiClient, namespace: str) -> None:
    """Let this release adopt a CRD created outside Helm (other tests, or an earlier release that kept it)."""
    ext: Any = client.ApiextensionsV1Api(api_client)
    patch = {
        "metadata": {
            "labels": {"app.kubernetes.io/managed-by": "Helm"},
            "annotations": {"meta.helm.sh/release-name": RELEASE, "meta.helm.sh/release-namespace": namespace},
        }
    }
    try:
        ext.patch_custom_resource_definition(CRD_NAME, patch)
    except ApiException as exc:
        if exc.status != 404:
            raise


def _established(api_client: client.ApiClient) -> bool:
    ext: Any = client.ApiextensionsV1Api(api_client)
    conditions = ext.read_custom_resource_definition(CRD_NAME).status.conditions or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


# --- static checks ---


@pytest.mark.parametrize(
    "sets",
    [
        {},
        {"rbac.scope": "namespaced", "watchNamespaces": ["a", "b"]},
        {"watchNamespaces": ["team-*"], "operator.logLevel": "debug", "metrics.serviceMonitor.enabled": True},
        {"crds.install": False, "metrics.enabled": False, "serviceAccount.create": False, "rbac.create": False},
        {"prometheusAdapter.rules.enabled": True, "prometheusAdapter.rules.namespace": "monitoring"},
    ],
    ids=["defaults", "namespaced", "cluster-globs-monitor", "minimal", "prometheus-adapter-rules"],
)
def test_lint_is_clean(tools: Tools, sets: dict[str, Any]) -> None:
    result = tools.helm("lint", "--strict", str(CHART), *_values(**sets))
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


def test_rendered_crd_is_the_generated_one(tools: Tools) -> None:
    rendered = tools.helm("template", RELEASE, str(CHART), "--show-only", "templates/crd.yaml").stdout
    (crd,) = _objects(rendered)
    assert crd["metadata"].pop("annotations") == {KEEP: "keep"}
    labels = crd["metadata"].pop("labels")
    assert labels["app.kubernetes.io/managed-by"] == "Helm"
    assert crd == crd_manifest(), "the chart's CRD drifted from `avr-operator crd`: copy crds/ to the chart's files/"


def test_prometheus_adapter_rules_are_the_shipped_file(tools: Tools) -> None:
    """Off by default; on, a ConfigMap whose config.yaml is the rules file verbatim (the one the Prometheus
    autoscaling test runs prometheus-adapter with), in the adapter's namespace."""
    rendered = _objects(tools.helm("template", RELEASE, str(CHART)).stdout)
    assert not [o for o in rendered if o["metadata"]["name"].endswith("-prometheus-adapter-rules")]
    sets = _values(**{"prometheusAdapter.rules.enabled": True, "prometheusAdapter.rules.namespace": "monitoring"})
    shown = tools.helm(
        "template", RELEASE, str(CHART), "--show-only", "templates/prometheus-adapter-rules.yaml", *sets
    ).stdout
    (config_map,) = _objects(shown)
    assert config_map["kind"] == "ConfigMap"
    assert config_map["metadata"]["name"] == f"{FULLNAME}-prometheus-adapter-rules"
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["data"] == {"config.yaml": (CHART / "files" / "prometheus-adapter-rules.yaml").read_text()}


def test_deployment_is_hardened_and_rolls_on_value_changes(tools: Tools) -> None:
    def deployment(*args: str) -> dict[str, Any]:
        rendered = tools.helm("template", RELEASE, str(CHART), "--show-only", "templates/deployment.yaml", *args)
        (dep,) = _objects(rendered.stdout)
        return dep

    dep = deployment()
    spec = dep["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/agentvoiceresponse/avr-k8s-operator:0.1.0"
    assert container["command"] == ["avr-operator"]
    assert container["args"][:2] == ["run", "--all-namespaces"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"healthz": 8080, "metrics": 9090}
    assert container["resources"]["limits"]["memory"] and container["resources"]["requests"]["cpu"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]} and security["runAsNonRoot"] is True
    checksum = spec["template"]["metadata"]["annotations"]["checksum/values"]
    changed = deployment(*_values(**{"metrics.service.annotations": {"a": "b"}}))
    assert changed["spec"]["template"]["metadata"]["annotations"]["checksum/values"] != checksum
    namespaced = deployment(*_values(**{"rbac.scope": "namespaced", "operator.logLevel": "debug"}), "-n", "ops")
    args = namespaced["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=ops" in args and "--verbose" in args and "--all-namespaces" not in args


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"replicaCount": -1}, "at '/replicaCount': minimum: got -1, want 0"),
        ({"replicaCount": 2}, "at '/replicaCount': maximum: got 2, want 1"),
        ({"operator.logLevel": "verbose"}, "at '/operator/logLevel': value must be one of 'info', 'debug'"),
        ({"image.pullPolicy": "Sometimes"}, "at '/image/pullPolicy': value must be one of 'Always', 'IfNotPresent'"),
        ({"rbac.scope": "global"}, "at '/rbac/scope': value must be one of 'cluster', 'namespaced'"),
        ({"rbac.scope": "namespaced", "watchNamespaces": ["team-*"]}, "at '/watchNamespaces/0'"),
        ({"unknownKey": 1}, "additional properties 'unknownKey' not allowed"),
    ],
    ids=["negative-replicas", "two-replicas", "log-level", "pull-policy", "rbac-scope", "glob-namespaced", "typo"],
)
def test_invalid_values_fail_install(tools: Tools, namespace: str, sets: dict[str, Any], message: str) -> None:
    result = tools.helm("install", RELEASE, str(CHART), "-n", namespace, *_values(**sets), check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr
    assert tools.helm("list", "-n", namespace, "-q").stdout.strip() == "", "nothing may be installed"


# --- against the API server ---


@pytest.mark.parametrize(
    "sets",
    [
        {},
        {"rbac.scope": "namespaced"},
        {"watchNamespaces": ["team-*"], "operator.logLevel": "debug"},
        {"prometheusAdapter.rules.enabled": True},
    ],
    ids=["cluster", "namespaced", "cluster-globs", "prometheus-adapter-rules"],
)
def test_template_passes_server_side_dry_run(tools: Tools, namespace: str, sets: dict[str, Any]) -> None:
    rendered = tools.helm("template", RELEASE, str(CHART), "-n", namespace, *_values(**sets)).stdout
    kinds = {o["kind"] for o in _objects(rendered)}
    assert {"CustomResourceDefinition", "Deployment", "ServiceAccount", "Service", "ClusterRole"} <= kinds
    result = tools.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", stdin=rendered)
    assert result.returncode == 0, result.stderr
    assert "deployment.apps/avr-avr-operator created (server dry run)" in result.stdout, result.stdout


def _replica_sets(apps: Any, namespace: str) -> dict[str, int]:
    """Pod-template hash -> desired replicas of the operator's ReplicaSets."""
    sets = apps.list_namespaced_replica_set(namespace, label_selector="app.kubernetes.io/name=avr-operator").items
    return {rs.metadata.labels["pod-template-hash"]: rs.spec.replicas for rs in sets}


def test_install_upgrade_uninstall(tools: Tools, api_client: client.ApiClient, namespace: str) -> None:
    apps: Any = client.AppsV1Api(api_client)
    core: Any = client.CoreV1Api(api_client)
    rbac: Any = client.RbacAuthorizationV1Api(api_client)
    ext: Any = client.ApiextensionsV1Api(api_client)
    cluster_role = f"{namespace}-{FULLNAME}"
    _adopt_crd(api_client, namespace)

    install = tools.helm("install", RELEASE, str(CHART), "-n", namespace)
    assert "STATUS: deployed" in install.stdout and "avr-k8s-runtime:0.1.0" in install.stdout  # NOTES
    eventually(lambda: _established(api_client), timeout=30, what="the CRD")
    crd = ext.read_custom_resource_definition(CRD_NAME)
    assert crd.metadata.annotations[KEEP] == "keep"
    assert core.read_namespaced_service_account(FULLNAME, namespace)
    assert core.read_namespaced_service(f"{FULLNAME}-metrics", namespace).spec.ports[0].port == 9090
    assert rbac.read_cluster_role_binding(cluster_role).subjects[0].name == FULLNAME
    first = eventually(lambda: _replica_sets(apps, namespace), timeout=30, what="the first ReplicaSet")
    assert list(first.values()) == [1]
    eventually(
        lambda: [p for p in core.list_namespaced_pod(namespace).items if p.status.phase == "Running"],
        timeout=60, what="the operator pod (Running on a fake node)",
    )  # fmt: skip

    # A value that changes no pod field still rolls the operator (the checksum annotation).
    tools.helm("upgrade", RELEASE, str(CHART), "-n", namespace, "--reuse-values",
               *_values(**{"metrics.service.annotations": {"example.com/scrape": "yes"}}))  # fmt: skip

    def rolled() -> dict[str, int]:
        sets = _replica_sets(apps, namespace)
        new = {h: n for h, n in sets.items() if h not in first}
        return new if new and all(sets[h] == 0 for h in first) else {}

    assert list(eventually(rolled, timeout=60, what="a new ReplicaSet replacing the old").values()) == [1]
    service = core.read_namespaced_service(f"{FULLNAME}-metrics", namespace)
    assert service.metadata.annotations["example.com/scrape"] == "yes"

    # A changed setting reaches the container's arguments.
    tools.helm("upgrade", RELEASE, str(CHART), "-n", namespace, "--reuse-values", "--set", "operator.logLevel=debug")
    args = apps.read_namespaced_deployment(FULLNAME, namespace).spec.template.spec.containers[0].args
    assert "--verbose" in args
    assert "REVISION: 3" in tools.helm("status", RELEASE, "-n", namespace).stdout

    tools.helm("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "60s")
    assert tools.helm("list", "-n", namespace, "-q").stdout.strip() == ""
    assert ext.read_custom_resource_definition(CRD_NAME).metadata.deletion_timestamp is None, "the CRD is kept"
    with pytest.raises(ApiException) as gone:
        rbac.read_cluster_role(cluster_role)
    assert gone.value.status == 404
    assert not apps.list_namespaced_deployment(namespace).items


# --- RBAC: the operator with the chart's ServiceAccount ---


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _service_account_kubeconfig(admin_kubeconfig: Path, token: str, path: Path) -> Path:
    """The admin kubeconfig's cluster (server and CA) with the ServiceAccount's token as the only user."""
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    cluster = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
    config_ = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "avr-operator", "user": {"token": token}}],
        "contexts": [{"name": "avr-operator", "context": {"cluster": cluster["name"], "user": "avr-operator"}}],
        "current-context": "avr-operator",
    }
    path.write_text(yaml.safe_dump(config_))
    path.chmod(0o600)
    return path


def _can(api: Any, verb: str, resource: str, namespace: str | None = None, group: str = "") -> bool:
    attributes = {"verb": verb, "resource": resource, "group": group, "namespace": namespace}
    review = {"spec": {"resourceAttributes": {k: v for k, v in attributes.items() if v is not None}}}
    authorization: Any = client.AuthorizationV1Api(api)
    return bool(authorization.create_self_subject_access_review(review).status.allowed)


@dataclass(frozen=True)
class Installed:
    release_namespace: str
    watched: str
    scope: str


@pytest.fixture(params=["cluster", "namespaced"])
def installed(
    request: pytest.FixtureRequest, tools: Tools, api_client: client.ApiClient, namespace: str
) -> Iterator[Installed]:
    """The chart in its own namespace, watching the test namespace (by scope: everything, or only that one)."""
    scope: str = request.param
    core: Any = client.CoreV1Api(api_client)
    release_namespace = f"ops-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": release_namespace}})
    _adopt_crd(api_client, release_namespace)
    sets: dict[str, Any] = {"rbac.scope": scope}
    if scope == "namespaced":
        sets["watchNamespaces"] = [namespace]
    tools.helm("install", RELEASE, str(CHART), "-n", release_namespace, *_values(**sets))
    eventually(lambda: _established(api_client), timeout=30, what="the CRD")
    try:
        yield Installed(release_namespace, namespace, scope)
    finally:
        tools.helm("uninstall", RELEASE, "-n", release_namespace, check=False)
        core.delete_namespace(release_namespace)


def test_operator_runs_with_the_charts_service_account(
    cluster: ClusterUnderTest, api_client: client.ApiClient, installed: Installed, tmp_path: Path
) -> None:
    core: Any = client.CoreV1Api(api_client)
    apps: Any = client.AppsV1Api(api_client)
    custom: Any = client.CustomObjectsApi(api_client)
    token = core.create_namespaced_service_account_token(
        FULLNAME, installed.release_namespace, {"spec": {"audiences": [], "expirationSeconds": 3600}}
    ).status.token
    kubeconfig = _service_account_kubeconfig(cluster.kubeconfig, token, tmp_path / "kubeconfig")
    load: Callable[..., client.ApiClient] = config.new_client_from_config  # untyped upstream
    sa_api = load(config_file=str(kubeconfig))

    # Denied: what the operator never does.
    namespace = installed.watched
    assert _can(sa_api, "patch", "deployments", namespace, "apps"), "the review must see what the role grants"
    assert _can(sa_api, "get", "secrets", namespace)
    assert not _can(sa_api, "list", "secrets", namespace)
    assert not _can(sa_api, "create", "pods", namespace)
    assert not _can(sa_api, "delete", "nodes")
    assert not _can(sa_api, "create", "clusterroles", group="rbac.authorization.k8s.io")
    assert not _can(sa_api, "update", "avrdeployments", namespace, GROUP)
    if installed.scope == "namespaced":
        assert not _can(sa_api, "patch", "deployments", "default", "apps")
        assert not _can(sa_api, "list", "avrdeployments", None, GROUP)
    with pytest.raises(ApiException) as forbidden:
        client.CoreV1Api(sa_api).list_namespaced_secret(namespace)
    assert forbidden.value.status == 403

    # Allowed: the operator, started with the installed Deployment's own arguments, reconciles a stack.
    deployment = apps.read_namespaced_deployment(FULLNAME, installed.release_namespace)
    (container,) = deployment.spec.template.spec.containers
    assert container.command == ["avr-operator"] and container.args[0] == "run"
    liveness, metrics = _free_port(), _free_port()
    args = [a for a in container.args if not a.startswith(("--liveness=", "--metrics-port="))]
    args += [f"--liveness=http://127.0.0.1:{liveness}/healthz", f"--metrics-port={metrics}"]
    log_path = tmp_path / "operator.log"
    env = {k: v for k, v in os.environ.items() if k not in ("KUBERNETES_SERVICE_HOST", "KUBECONFIG")}
    env |= {"KUBECONFIG": str(kubeconfig)}
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(OPERATOR), *args], cwd=tmp_path, env=env, stdout=log, stderr=log)
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, copy.deepcopy(STACK))

        def children() -> bool:
            assert proc.poll() is None, f"the operator exited:\n{log_path.read_text()[-4000:]}"
            names = {d.metadata.name for d in apps.list_namespaced_deployment(namespace).items}
            return names == {"demo-core", "demo-sts"}

        eventually(children, timeout=90, what="the children")

        def ready() -> bool:
            obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "demo")
            conditions = obj.get("status", {}).get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        eventually(ready, timeout=120, what="Ready=True")
        events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=demo").items
        assert any(e.reason == "Applied" for e in events), "the operator posts Events"
        with urllib.request.urlopen(f"http://127.0.0.1:{liveness}/healthz", timeout=5) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as response:
            assert b'avr_operator_reconciles_total{result="ok"}' in response.read()
        time.sleep(2)  # let kopf's observers report anything they were denied
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    output = log_path.read_text()
    for denied in ("Forbidden", "Not enough permissions", "403"):
        assert denied not in output, f"the operator was denied something:\n{output[-4000:]}"


def test_liveness_probe_matches_the_operator(tools: Tools) -> None:
    """The probe's port and path are the ones `avr-operator run --liveness` serves (checked without a cluster)."""
    rendered = tools.helm("template", RELEASE, str(CHART), "--show-only", "templates/deployment.yaml",
                          "--set", "operator.livenessPort=8181")  # fmt: skip
    (dep,) = _objects(rendered.stdout)
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert "--liveness=http://0.0.0.0:8181/healthz" in container["args"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["healthz"] == 8181 and container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    port = _free_port()
    proc = subprocess.Popen(
        [str(OPERATOR), "run", "--namespace=none", f"--liveness=http://127.0.0.1:{port}/healthz", "--metrics-port=0"],
        env={**os.environ, "KUBECONFIG": str(tools.kubeconfig)},
        cwd=tools.home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def healthy() -> bool:
            assert proc.poll() is None, "the operator exited"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                    return bool(response.status == 200)
            except (urllib.error.URLError, ConnectionError):
                return False

        assert eventually(healthy, timeout=60, what="the liveness endpoint")
    finally:
        proc.terminate()
        proc.wait(30)
