"""The operator (as a subprocess) over a resource's life: every example deployed and Ready, a spec change rolled
out within the rollout bounds, hand edits and deletions of children undone, and garbage collection at the end.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from avr_devcluster import eventually
from avr_operator.api.resource import AVRDeployment
from avr_operator.constants import API_VERSION, KIND, LABEL_INSTANCE
from avr_operator.render.components import PROVIDER_URLS
from tests.integration.operator.helpers import (
    EXAMPLES,
    Obj,
    OperatorEnv,
    as_dict,
    by_kind,
    children,
    create,
    example,
    get,
    kubectl,
    minimal,
    patch,
    replica_sets,
    wait_ready,
)

pytestmark = pytest.mark.integration

# Secrets the examples reference (the operator refuses to deploy while one is missing).
EXAMPLE_SECRETS = {"openai": {"OPENAI_API_KEY": "sk-test"}, "deepgram": {"DEEPGRAM_API_KEY": "dg"}}
WEBHOOK_SECRET = ("avr-webhook", {"secret": "s3cret"})


@pytest.fixture(scope="module")
def stack(operated: OperatorEnv) -> OperatorEnv:
    core: Any = client.CoreV1Api(operated.api)
    for name, data in [*EXAMPLE_SECRETS.items(), WEBHOOK_SECRET]:
        meta = client.V1ObjectMeta(name=name)
        core.create_namespaced_secret(operated.namespace, client.V1Secret(metadata=meta, string_data=data))
    return operated


def _container(deployment: Obj) -> Obj:
    containers: list[Obj] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _quantities(resources: Obj) -> dict[str, dict[str, str]]:
    return {part: {k: str(v) for k, v in (resources.get(part) or {}).items()} for part in ("requests", "limits")}


def _check_owner(obj: Obj, owner: Obj) -> None:
    refs = obj["metadata"].get("ownerReferences") or []
    assert len(refs) == 1, f"{obj['kind']} {obj['metadata']['name']}: {refs}"
    ref = refs[0]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == (API_VERSION, KIND, owner["metadata"]["name"])
    assert ref["uid"] == owner["metadata"]["uid"] and ref["controller"] is True


def _check_deployment(dep: Obj, role: str, spec: Any, rollout: Any, autoscaled: bool) -> None:
    """spec: the component's parsed spec (CoreSpec or ProviderSpec)."""
    container = _container(dep)
    assert container["image"] == spec.image
    assert _quantities(container["resources"]) == _quantities(spec.resources.dump())
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]
    assert dep["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == spec.run_as_user
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert probe in container, probe
    if role == "core":
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health"
        assert container["livenessProbe"]["httpGet"]["port"] == spec.ports.http
    else:
        assert container["readinessProbe"]["tcpSocket"]["port"] == spec.port
    env_from = container["envFrom"]
    assert env_from[-1] == {"configMapRef": {"name": dep["metadata"]["name"]}}
    assert env_from[:-1] == [e.dump() for e in spec.env_from]
    assert [(e["name"], e.get("value")) for e in container.get("env") or [] if "value" in e] == [
        (e.name, e.value) for e in spec.env if e.value is not None
    ]
    strategy = dep["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"] == {"maxSurge": rollout.max_surge, "maxUnavailable": rollout.max_unavailable}
    assert dep["spec"]["minReadySeconds"] == rollout.min_ready_seconds
    if not autoscaled:
        assert dep["spec"]["replicas"] == spec.replicas


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_is_deployed_and_becomes_ready(stack: OperatorEnv, path: Path) -> None:
    api, ns = stack.api, stack.namespace
    body = example(path)
    name = body["metadata"]["name"]
    create(api, ns, body)
    owner = wait_ready(api, ns, name, timeout=120)
    res = AVRDeployment.from_body(owner)
    spec = res.spec
    providers = dict(spec.providers.items())
    roles = ["core", *providers]

    objects = by_kind(children(api, ns, name))
    expected = {(kind, f"{name}-{role}") for role in roles for kind in ("ConfigMap", "Service", "Deployment")}
    expected.add(("Service", f"{name}-core-peers"))
    if spec.core.scale_in.deletion_cost:
        expected |= {
            ("ServiceAccount", f"{name}-avr-worker"),
            ("Role", f"{name}-core"),
            ("RoleBinding", f"{name}-core"),
        }
    if spec.availability.enabled:
        expected |= {("PodDisruptionBudget", f"{name}-{role}") for role in roles}
    autoscaled = {"core": spec.autoscaling.enabled} | {r: p.autoscaling.enabled for r, p in providers.items()}
    expected |= {("HorizontalPodAutoscaler", f"{name}-{role}") for role in roles if autoscaled[role]}
    assert set(objects) == expected
    for obj in objects.values():
        _check_owner(obj, owner)
        assert obj["metadata"]["labels"][LABEL_INSTANCE] == name

    # Deployments: image, resources, probes, security, env sources, strategy, replicas.
    _check_deployment(objects["Deployment", f"{name}-core"], "core", spec.core, spec.rollout, autoscaled["core"])
    for role, provider in providers.items():
        dep = objects["Deployment", f"{name}-{role}"]
        _check_deployment(dep, role, provider, spec.rollout, autoscaled[role])
        assert objects["ConfigMap", f"{name}-{role}"]["data"] == {"PORT": str(provider.port)}

    # The core's ConfigMap wires each provider to its Service's port.
    core_config = objects["ConfigMap", f"{name}-core"]["data"]
    assert core_config["AUDIO_CODEC"] == spec.core.audio.codec
    assert core_config["AUDIO_SAMPLE_RATE"] == str(spec.core.audio.sample_rate)
    assert core_config["LOG_LEVEL"] == spec.core.logging.level
    for role, provider in providers.items():
        url = urllib.parse.urlsplit(core_config[PROVIDER_URLS[role][0]])
        service = objects["Service", f"{name}-{role}"]
        assert url.hostname == service["metadata"]["name"]
        assert url.port == service["spec"]["ports"][0]["port"] == provider.port
        pods = objects["Deployment", f"{name}-{role}"]["spec"]["selector"]["matchLabels"]
        assert service["spec"]["selector"] == pods
    core_service = objects["Service", f"{name}-core"]["spec"]
    assert core_service["type"] == spec.service.type
    assert core_service["sessionAffinity"] == spec.service.session_affinity
    assert {p["name"]: p["port"] for p in core_service["ports"]} == {
        "audiosocket": spec.core.ports.audio_socket,
        "http": spec.core.ports.http,
    }
    if spec.core.webhook is not None and spec.core.webhook.secret_ref is not None:
        env = {e["name"]: e for e in _container(objects["Deployment", f"{name}-core"]).get("env") or []}
        ref = env["WEBHOOK_SECRET"]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == (spec.core.webhook.secret_ref.name, spec.core.webhook.secret_ref.key)

    # Autoscalers and disruption budgets where the example asks for them.
    if autoscaled["core"]:
        hpa = objects["HorizontalPodAutoscaler", f"{name}-core"]["spec"]
        assert (hpa["minReplicas"], hpa["maxReplicas"]) == (
            spec.autoscaling.min_replicas,
            spec.autoscaling.max_replicas,
        )
        assert hpa["scaleTargetRef"]["name"] == f"{name}-core"
        assert hpa["metrics"][0]["pods"]["metric"]["name"] == "avr_queue_length"
    for role, provider in providers.items():
        if autoscaled[role]:
            hpa = objects["HorizontalPodAutoscaler", f"{name}-{role}"]["spec"]
            scaling = provider.autoscaling
            assert (hpa["minReplicas"], hpa["maxReplicas"]) == (scaling.min_replicas, scaling.max_replicas)
    if spec.availability.enabled:
        for role in roles:
            pdb = objects["PodDisruptionBudget", f"{name}-{role}"]["spec"]
            assert pdb["maxUnavailable"] == spec.availability.max_unavailable

    # Ready, and the printer columns say so.
    core_replicas = spec.autoscaling.min_replicas if autoscaled["core"] else spec.core.replicas
    assert owner["status"]["replicas"] == f"{core_replicas}/{core_replicas}"
    table = kubectl(stack.cluster, "get", "avrd", name, "-n", ns).splitlines()
    assert table[0].split() == ["NAME", "READY", "REPLICAS", "AGE"]
    assert table[1].split()[:3] == [name, "True", f"{core_replicas}/{core_replicas}"]
    table = kubectl(stack.cluster, "get", "avrd", name, "-n", ns, "-o", "wide").splitlines()
    assert table[0].split() == ["NAME", "READY", "REPLICAS", "REASON", "AGE"]
    assert table[1].split()[:4] == [name, "True", f"{core_replicas}/{core_replicas}", "AllComponentsReady"]


# --- rollout --------------------------------------------------------------------------------------------


@dataclass
class RolloutWatch:
    """Samples a Deployment's ReplicaSets as fast as the API allows, in a thread, until stopped."""

    api: client.ApiClient
    namespace: str
    deployment: str
    samples: list[list[Obj]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RolloutWatch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(replica_sets(self.api, self.namespace, self.deployment))
            time.sleep(0.02)


def test_spec_change_rolls_out_within_the_surge_bounds(operated: OperatorEnv) -> None:
    api, ns = operated.api, operated.namespace
    desired, surge, unavailable = 4, 1, 1
    rollout = {"maxSurge": surge, "maxUnavailable": unavailable, "minReadySeconds": 1}
    core = {"image": "avr-runtime:v1", "replicas": desired, "drain": {"timeoutSeconds": 0, "preStopSeconds": 0}}
    create(api, ns, minimal("roll", core=core, rollout=rollout))
    wait_ready(api, ns, "roll")
    apps: Any = client.AppsV1Api(api)

    def all_available() -> Obj | None:
        dep = as_dict(api, apps.read_namespaced_deployment("roll-core", ns))
        return dep if dep["status"].get("availableReplicas") == desired else None

    dep = eventually(all_available, timeout=30, what="every pod available (minReadySeconds)")
    assert dep is not None
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": surge, "maxUnavailable": unavailable}
    assert dep["spec"]["minReadySeconds"] == 1
    (first,) = replica_sets(api, ns, "roll-core")

    with RolloutWatch(api, ns, "roll-core") as watch:
        patch(api, ns, "roll", {"spec": {"core": {"image": "avr-runtime:v2"}}})

        def rolled() -> bool:
            sets = replica_sets(api, ns, "roll-core")
            new = [rs for rs in sets if rs["metadata"]["uid"] != first["metadata"]["uid"]]
            old = [rs for rs in sets if rs["metadata"]["uid"] == first["metadata"]["uid"]]
            return (
                len(new) == 1
                and new[0]["status"].get("availableReplicas") == desired
                and all(rs["spec"]["replicas"] == 0 and not rs["status"].get("replicas") for rs in old)
            )

        eventually(rolled, timeout=90, what="the rollout to finish")
        wait_ready(api, ns, "roll")

    sets = replica_sets(api, ns, "roll-core")
    assert len(sets) == 2
    (new,) = [rs for rs in sets if rs["metadata"]["uid"] != first["metadata"]["uid"]]
    assert new["spec"]["template"]["spec"]["containers"][0]["image"] == "avr-runtime:v2"
    both_running = 0
    for sample in watch.samples:
        total = sum(rs["spec"]["replicas"] for rs in sample)
        pods = sum(rs["status"].get("replicas", 0) for rs in sample)
        available = sum(rs["status"].get("availableReplicas", 0) for rs in sample)
        assert total <= desired + surge, sample
        assert pods <= desired + surge, sample
        assert available >= desired - unavailable, sample
        both_running += sum(1 for rs in sample if rs["status"].get("replicas", 0) > 0) == 2
    assert both_running, "no sample caught the old and new ReplicaSets side by side"


# --- drift and garbage collection ------------------------------------------------------------------------


def test_hand_changes_are_undone_and_deletion_collects_everything(operated: OperatorEnv) -> None:
    api, ns = operated.api, operated.namespace
    apps: Any = client.AppsV1Api(api)
    core: Any = client.CoreV1Api(api)
    one = {"replicas": 1}
    create(api, ns, minimal("drift", core={**minimal()["spec"]["core"], **one}, availability={"enabled": True}))
    wait_ready(api, ns, "drift")
    before = by_kind(children(api, ns, "drift"))
    # ConfigMap, Service, Deployment, PDB for core and sts; the core's peer Service, ServiceAccount, Role, RoleBinding
    assert len(before) == 12

    def restored(kind: str, name: str, check: Any) -> None:
        def ok() -> bool:
            now = by_kind(children(api, ns, "drift")).get((kind, name))
            return now is not None and bool(check(now))

        eventually(ok, timeout=30, what=f"{kind} {name} to be restored")

    # Deleted by hand: recreated.
    core.delete_namespaced_config_map("drift-core", ns)
    restored("ConfigMap", "drift-core", lambda cm: cm["data"] == before["ConfigMap", "drift-core"]["data"])
    apps.delete_namespaced_deployment("drift-sts", ns)
    restored(
        "Deployment",
        "drift-sts",
        lambda d: d["metadata"]["uid"] != before["Deployment", "drift-sts"]["metadata"]["uid"],
    )
    client.PolicyV1Api(api).delete_namespaced_pod_disruption_budget("drift-core", ns)
    restored("PodDisruptionBudget", "drift-core", lambda p: p["spec"]["maxUnavailable"] == 1)

    # Edited by hand: put back.
    apps.patch_namespaced_deployment(
        "drift-core",
        ns,
        {"spec": {"template": {"spec": {"containers": [{"name": "core", "image": "evil:1"}]}}}},
        field_manager="hand",
    )
    assert _container(as_dict(api, apps.read_namespaced_deployment("drift-core", ns)))["image"] == "evil:1"
    restored("Deployment", "drift-core", lambda d: _container(d)["image"] == "avr-runtime:test")
    http = [p["name"] for p in before["Service", "drift-core"]["spec"]["ports"]].index("http")
    core.patch_namespaced_service(
        "drift-core",
        ns,
        [{"op": "replace", "path": f"/spec/ports/{http}/port", "value": 3999}],
        field_manager="hand",
        _content_type="application/json-patch+json",
    )
    restored("Service", "drift-core", lambda s: {p["name"]: p["port"] for p in s["spec"]["ports"]}["http"] == 3000)
    core.patch_namespaced_config_map("drift-core", ns, {"data": {"LOG_LEVEL": "error"}}, field_manager="hand")
    restored("ConfigMap", "drift-core", lambda cm: cm["data"]["LOG_LEVEL"] == "info")
    wait_ready(api, ns, "drift")
    after = by_kind(children(api, ns, "drift"))
    assert set(after) == set(before)
    owner = get(api, ns, "drift")
    for obj in after.values():
        _check_owner(obj, owner)

    # Deleting the resource: the garbage collector removes every child, and their pods.
    custom_api: Any = client.CustomObjectsApi(api)
    custom_api.delete_namespaced_custom_object("avr.agentvoiceresponse.com", "v1alpha1", ns, "avrdeployments", "drift")
    selector = f"{LABEL_INSTANCE}=drift"

    def collected() -> bool:
        pods = core.list_namespaced_pod(ns, label_selector=selector).items
        sets = apps.list_namespaced_replica_set(ns, label_selector=selector).items
        return not children(api, ns, "drift") and not sets and not pods

    eventually(collected, timeout=60, what="garbage collection of every child")
