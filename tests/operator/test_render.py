"""Rendering: spec in, manifests out, for each example and for the rules the reconciler relies on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from avr_operator.api.resource import AVRDeployment
from avr_operator.constants import ANNOTATION_CONFIG_HASH
from avr_operator.render.bundle import render

Make = Callable[..., dict[str, Any]]
EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def manifests(body: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m["kind"], m["metadata"]["name"]): m for m in render(AVRDeployment.from_body(body))}


def container(objs: dict[tuple[str, str], dict[str, Any]], name: str) -> dict[str, Any]:
    c: dict[str, Any] = objs["Deployment", name]["spec"]["template"]["spec"]["containers"][0]
    return c


def test_there_are_examples_for_each_provider_mix() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {"sts-openai", "sts-deepgram", "asr-llm-tts-local"} <= names


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_each_example_renders_a_complete_stack(example: Path) -> None:
    body = yaml.safe_load(example.read_text())
    res = AVRDeployment.from_body(body)
    objs = manifests(body)
    roles = ["core"] + [role for role, _ in res.spec.providers.items()]
    for role in roles:
        for kind in ("ConfigMap", "Service", "Deployment"):
            assert (kind, f"{res.name}-{role}") in objs
    assert ("PodDisruptionBudget", f"{res.name}-core") in objs or not res.spec.availability.enabled
    for m in objs.values():
        assert m["metadata"]["namespace"] == "default"
        assert m["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "avr-operator"
        assert "ownerReferences" not in m  # no uid outside a cluster
    config = objs["ConfigMap", f"{res.name}-core"]["data"]
    assert all(isinstance(v, str) for v in config.values())


def test_sts_is_wired_to_its_service(make_body: Make) -> None:
    config = manifests(make_body())["ConfigMap", "demo-core"]["data"]
    assert config["STS_URL"] == "ws://demo-sts:6030"
    assert not {"ASR_URL", "LLM_URL", "TTS_URL"} & set(config)


def test_the_trio_is_wired_to_its_services(make_body: Make) -> None:
    body = make_body(providers={"asr": {"image": "a"}, "llm": {"image": "l", "port": 7000}, "tts": {"image": "t"}})
    objs = manifests(body)
    config = objs["ConfigMap", "demo-core"]["data"]
    assert config["ASR_URL"] == "http://demo-asr:6010/speech-to-text-stream"
    assert config["LLM_URL"] == "http://demo-llm:7000/prompt-stream"
    assert config["TTS_URL"] == "http://demo-tts:6012/text-to-speech-stream"
    assert "STS_URL" not in config
    assert objs["ConfigMap", "demo-llm"]["data"] == {"PORT": "7000"}
    assert objs["Service", "demo-llm"]["spec"]["ports"][0]["port"] == 7000


def test_core_config_carries_every_knob(make_body: Make) -> None:
    body = make_body(core={"image": "x", "connection": {"timeoutMs": 2500}, "drain": {"timeoutSeconds": 90}})
    config = manifests(body)["ConfigMap", "demo-core"]["data"]
    expected = {
        "PORT": "5001",
        "HTTP_PORT": "3000",
        "CONNECTION_POOL_SIZE": "10",
        "CONNECTION_TIMEOUT": "2500",
        "MAX_RETRIES": "3",
        "AUDIO_CODEC": "opus",
        "AUDIO_BITRATE": "16000",
        "AUDIO_CHANNELS": "1",
        "AUDIO_SAMPLE_RATE": "16000",
        "BUFFER_SIZE": "1024",
        "BUFFER_OVERLAP": "0.5",
        "CACHE_MAX_SIZE": "1000",
        "CACHE_TTL": "3600",
        "RATE_LIMIT": "100",
        "SOURCE_RATE_LIMIT": "3000",
        "RATE_WINDOW": "60",
        "MAX_CONCURRENT_CALLS": "500",
        "LOG_LEVEL": "info",
        "LOG_FORMAT": "json",
        "DRAIN_MODE": "deadline",
        "DRAIN_TIMEOUT": "90",
        "PEER_SERVICE": "demo-core-peers.calls.svc",
        "POD_DELETION_COST": "true",
        "STS_URL": "ws://demo-sts:6030",
    }
    assert config == expected


def test_hpa_owns_replicas_when_autoscaling(make_body: Make) -> None:
    objs = manifests(make_body(autoscaling={"enabled": True, "targetCpuUtilization": 60}))
    assert "replicas" not in objs["Deployment", "demo-core"]["spec"]
    hpa = objs["HorizontalPodAutoscaler", "demo-core"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "demo-core"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 10)
    pods, cpu = hpa["metrics"]
    assert pods["pods"]["metric"]["name"] == "avr_queue_length"
    # 0.7 of maxConcurrentCalls (500) per pod by default.
    assert pods["pods"]["target"] == {"type": "AverageValue", "averageValue": "350"}
    assert cpu["resource"]["target"] == {"type": "Utilization", "averageUtilization": 60}
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    # The provider is not autoscaled: it keeps its replicas.
    assert objs["Deployment", "demo-sts"]["spec"]["replicas"] == 1
    assert ("HorizontalPodAutoscaler", "demo-sts") not in objs


def test_without_autoscaling_the_deployment_sets_replicas(make_body: Make) -> None:
    objs = manifests(make_body())
    assert objs["Deployment", "demo-core"]["spec"]["replicas"] == 3
    assert not any(kind == "HorizontalPodAutoscaler" for kind, _ in objs)


def test_provider_autoscaling_is_cpu_based(make_body: Make) -> None:
    body = make_body(providers={"sts": {"image": "s", "autoscaling": {"enabled": True, "maxReplicas": 4}}})
    objs = manifests(body)
    assert "replicas" not in objs["Deployment", "demo-sts"]["spec"]
    hpa = objs["HorizontalPodAutoscaler", "demo-sts"]["spec"]
    assert hpa["metrics"] == [
        {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
        }
    ]
    assert "behavior" not in hpa


def test_pods_meet_the_restricted_pod_security_standard(make_body: Make) -> None:
    objs = manifests(make_body())
    for name in ("demo-core", "demo-sts"):
        pod = objs["Deployment", name]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        sc = pod["containers"][0]["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert {"name": "tmp", "mountPath": "/tmp"} in pod["containers"][0]["volumeMounts"]
        assert pod["volumes"][0]["name"] == "tmp" and "emptyDir" in pod["volumes"][0]
        keys = [t["topologyKey"] for t in pod["topologySpreadConstraints"]]
        assert "kubernetes.io/hostname" in keys


def test_core_probes_and_graceful_shutdown(make_body: Make) -> None:
    body = make_body(core={"image": "x", "drain": {"timeoutSeconds": 120, "preStopSeconds": 7}})
    objs = manifests(body)
    pod = objs["Deployment", "demo-core"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": 3000}
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 3000}
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    assert (c["livenessProbe"]["periodSeconds"], c["livenessProbe"]["timeoutSeconds"]) == (30, 10)
    assert c["lifecycle"] == {"preStop": {"sleep": {"seconds": 7}}}
    assert pod["terminationGracePeriodSeconds"] == 7 + 120 + 15


def test_no_pre_stop_hook_when_disabled(make_body: Make) -> None:
    body = make_body(
        core={"image": "x", "drain": {"preStopSeconds": 0}},
        providers={"sts": {"image": "s", "drainSeconds": 0}},
    )
    objs = manifests(body)
    assert "lifecycle" not in container(objs, "demo-core")
    assert "lifecycle" not in container(objs, "demo-sts")


def test_provider_probes_are_tcp_and_pre_stop_keeps_calls(make_body: Make) -> None:
    objs = manifests(make_body())
    c = container(objs, "demo-sts")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["tcpSocket"] == {"port": 6030}
    assert c["lifecycle"]["preStop"]["sleep"]["seconds"] == 300
    assert objs["Deployment", "demo-sts"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 315


def test_config_changes_roll_the_pods(make_body: Make) -> None:
    def config_hash(body: dict[str, Any]) -> str:
        meta = manifests(body)["Deployment", "demo-core"]["spec"]["template"]["metadata"]
        value: str = meta["annotations"][ANNOTATION_CONFIG_HASH]
        return value

    base = config_hash(make_body())
    assert base == config_hash(make_body())
    assert base != config_hash(make_body(core={"image": "avr-runtime:test", "logging": {"level": "debug"}}))


def test_env_sources_and_precedence(make_body: Make) -> None:
    body = make_body(
        core={
            "image": "x",
            "envFrom": [{"secretRef": {"name": "keys"}}],
            "env": [{"name": "LOG_LEVEL", "value": "debug"}],
            "webhook": {"url": "https://h.example/x", "secretRef": {"name": "wh", "key": "s"}},
        }
    )
    c = container(manifests(body), "demo-core")
    # User sources first, then the generated ConfigMap: spec fields override bulk Secret keys.
    assert c["envFrom"] == [{"secretRef": {"name": "keys"}}, {"configMapRef": {"name": "demo-core"}}]
    # Explicit env (highest precedence) keeps the user's override; the webhook secret comes from a ref.
    assert {"name": "LOG_LEVEL", "value": "debug"} in c["env"]
    assert {"name": "WEBHOOK_SECRET", "valueFrom": {"secretKeyRef": {"name": "wh", "key": "s"}}} in c["env"]


def test_owner_references_enable_garbage_collection(make_body: Make) -> None:
    for m in render(AVRDeployment.from_body(make_body())):
        (ref,) = m["metadata"]["ownerReferences"]
        assert ref == {
            "apiVersion": "avr.agentvoiceresponse.com/v1alpha1",
            "kind": "AVRDeployment",
            "name": "demo",
            "uid": "1234-abcd",
            "controller": True,
            "blockOwnerDeletion": True,
        }


def test_rollout_and_availability(make_body: Make) -> None:
    objs = manifests(make_body(rollout={"maxSurge": "50%", "maxUnavailable": 1}, availability={"enabled": True}))
    strategy = objs["Deployment", "demo-core"]["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "50%", "maxUnavailable": 1}}
    pdb = objs["PodDisruptionBudget", "demo-core"]["spec"]
    assert pdb["maxUnavailable"] == 1 and "minAvailable" not in pdb
    assert ("PodDisruptionBudget", "demo-sts") in objs
    objs = manifests(make_body(availability={"enabled": True, "minAvailable": "50%"}))
    assert objs["PodDisruptionBudget", "demo-core"]["spec"]["minAvailable"] == "50%"


def test_core_service_follows_the_spec(make_body: Make) -> None:
    service = {"type": "NodePort", "sessionAffinity": "ClientIP", "sessionAffinityTimeoutSeconds": 600}
    body = make_body(service=service)
    objs = manifests(body)
    svc = objs["Service", "demo-core"]["spec"]
    assert svc["type"] == "NodePort" and svc["sessionAffinity"] == "ClientIP"
    assert svc["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 600}}
    assert [p["port"] for p in svc["ports"]] == [5001, 3000]
    assert objs["Service", "demo-sts"]["spec"]["type"] == "ClusterIP"


def test_render_is_deterministic(make_body: Make) -> None:
    body = make_body(autoscaling={"enabled": True})
    assert render(AVRDeployment.from_body(body)) == render(AVRDeployment.from_body(body))


def test_zero_min_ready_seconds_is_left_out(make_body: Make) -> None:
    """The API server drops a zero minReadySeconds; sending it would make every no-op reconcile dry-run."""
    assert manifests(make_body())["Deployment", "demo-core"]["spec"]["minReadySeconds"] == 10
    deployment = manifests(make_body(rollout={"minReadySeconds": 0}))["Deployment", "demo-core"]
    assert "minReadySeconds" not in deployment["spec"]


def _queue_target(make_body: Make, max_calls: int, **autoscaling: Any) -> str:
    core = {"image": "x", "maxConcurrentCalls": max_calls}
    hpa = manifests(make_body(core=core, autoscaling={"enabled": True, **autoscaling}))[
        "HorizontalPodAutoscaler", "demo-core"
    ]
    value: str = hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"]
    return value


def test_queue_target_follows_capacity_and_utilization(make_body: Make) -> None:
    assert _queue_target(make_body, 500) == "350"
    assert _queue_target(make_body, 500, targetUtilization=1) == "500"
    assert _queue_target(make_body, 7) == "4900m"  # exact, in milli-units
    assert _queue_target(make_body, 1, targetUtilization=0.0001) == "1m"  # never a zero target
    # An explicit queue length overrides the derived one.
    assert _queue_target(make_body, 500, targetQueueLength="2500m") == "2500m"
    assert _queue_target(make_body, 500, targetQueueLength=12) == "12"


def test_source_rate_limit_is_rendered(make_body: Make) -> None:
    core = {"image": "x", "rateLimit": {"requests": 10, "sourceRequests": 900}}
    config = manifests(make_body(core=core))["ConfigMap", "demo-core"]["data"]
    assert (config["RATE_LIMIT"], config["SOURCE_RATE_LIMIT"]) == ("10", "900")


def test_logs_go_to_the_container_output_without_a_rotation_knob(make_body: Make) -> None:
    objs = manifests(make_body())
    config = objs["ConfigMap", "demo-core"]["data"]
    assert "LOG_FILE" not in config and "LOG_ROTATION" not in config
    pod = objs["Deployment", "demo-core"]["spec"]["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == ["tmp"]


def test_a_log_file_gets_a_volume_and_only_then_rotation(make_body: Make) -> None:
    core = {"image": "x", "logging": {"file": "/var/log/avr/worker.log", "rotation": "10MB"}}
    objs = manifests(make_body(core=core))
    config = objs["ConfigMap", "demo-core"]["data"]
    assert (config["LOG_FILE"], config["LOG_ROTATION"]) == ("/var/log/avr/worker.log", "10MB")
    pod = objs["Deployment", "demo-core"]["spec"]["template"]["spec"]
    assert {"name": "logs", "emptyDir": {}} in pod["volumes"]
    assert {"name": "logs", "mountPath": "/var/log/avr"} in pod["containers"][0]["volumeMounts"]
    # A file without a rotation size leaves the worker's own default in force.
    config = manifests(make_body(core={"image": "x", "logging": {"file": "/logs/w.log"}}))["ConfigMap", "demo-core"][
        "data"
    ]
    assert config["LOG_FILE"] == "/logs/w.log" and "LOG_ROTATION" not in config
    # A file in /tmp uses the existing /tmp volume (two mounts at one path would make the pod invalid).
    objs = manifests(make_body(core={"image": "x", "logging": {"file": "/tmp/w.log"}}))
    pod = objs["Deployment", "demo-core"]["spec"]["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == ["tmp"]


def test_drain_until_empty_has_no_deadline_and_the_users_grace_period(make_body: Make) -> None:
    core = {"image": "x", "drain": {"mode": "until_empty", "terminationGracePeriodSeconds": 14400}}
    objs = manifests(make_body(core=core))
    config = objs["ConfigMap", "demo-core"]["data"]
    assert config["DRAIN_MODE"] == "until_empty" and "DRAIN_TIMEOUT" not in config
    assert objs["Deployment", "demo-core"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 14400


def test_drain_deadline_defaults(make_body: Make) -> None:
    objs = manifests(make_body())
    config = objs["ConfigMap", "demo-core"]["data"]
    assert (config["DRAIN_MODE"], config["DRAIN_TIMEOUT"]) == ("deadline", "300")
    assert objs["Deployment", "demo-core"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 5 + 300 + 15


def test_headless_peer_service_selects_the_core_pods(make_body: Make) -> None:
    objs = manifests(make_body(core={"image": "x", "ports": {"http": 8080}}))
    peers = objs["Service", "demo-core-peers"]["spec"]
    assert peers["clusterIP"] == "None"
    assert peers["selector"] == objs["Deployment", "demo-core"]["spec"]["selector"]["matchLabels"]
    assert peers["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    assert "publishNotReadyAddresses" not in peers  # ready pods only
    assert objs["ConfigMap", "demo-core"]["data"]["PEER_SERVICE"] == "demo-core-peers.calls.svc"
    assert objs["Service", "demo-core"]["spec"]["sessionAffinity"] == "None"


def test_deletion_cost_gives_the_core_its_own_account_and_role(make_body: Make) -> None:
    objs = manifests(make_body())
    account = objs["ServiceAccount", "demo-avr-worker"]
    assert account["metadata"]["namespace"] == "calls"
    role = objs["Role", "demo-core"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}]
    binding = objs["RoleBinding", "demo-core"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "demo-core"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "demo-avr-worker", "namespace": "calls"}]
    pod = objs["Deployment", "demo-core"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "demo-avr-worker" and pod["automountServiceAccountToken"] is True
    assert objs["ConfigMap", "demo-core"]["data"]["POD_DELETION_COST"] == "true"
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    # Providers keep running without a token.
    sts = objs["Deployment", "demo-sts"]["spec"]["template"]["spec"]
    assert sts["automountServiceAccountToken"] is False and "serviceAccountName" not in sts


def test_deletion_cost_can_be_turned_off(make_body: Make) -> None:
    objs = manifests(make_body(core={"image": "x", "scaleIn": {"deletionCost": False}}))
    assert not {kind for kind, _ in objs} & {"ServiceAccount", "Role", "RoleBinding"}
    pod = objs["Deployment", "demo-core"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod
    assert "POD_DELETION_COST" not in objs["ConfigMap", "demo-core"]["data"]
    env = {e["name"] for e in pod["containers"][0]["env"]}
    assert {"POD_NAME", "POD_NAMESPACE"} <= env


def test_worker_policy_matches_the_account_names() -> None:
    from avr_operator.render.names import WORKER_ACCOUNT_SUFFIX  # noqa: PLC0415
    from avr_operator.render.policy import DELETION_COST, worker_pod_policy  # noqa: PLC0415

    policy, binding = worker_pod_policy()
    assert WORKER_ACCOUNT_SUFFIX in policy["spec"]["matchConditions"][0]["expression"]
    assert any(DELETION_COST in v["expression"] for v in policy["spec"]["validations"])
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}


KEDA = {"serverAddress": "http://prometheus.monitoring:9090"}


def test_keda_engine_renders_a_scaled_object_instead_of_the_hpa(make_body: Make) -> None:
    core = {"image": "x", "maxConcurrentCalls": 7}
    autoscaling = {"enabled": True, "engine": "keda", "keda": KEDA, "targetCpuUtilization": 60}
    objs = manifests(make_body(core=core, autoscaling=autoscaling))
    assert ("HorizontalPodAutoscaler", "demo-core") not in objs
    assert "replicas" not in objs["Deployment", "demo-core"]["spec"]
    so = objs["ScaledObject", "demo-core"]
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    spec = so["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "demo-core"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (3, 10)
    prometheus, cpu = spec["triggers"]
    assert prometheus["type"] == "prometheus" and prometheus["metricType"] == "AverageValue"
    # The same per-pod target as the HPA's (7 x 0.7), as a plain number.
    assert prometheus["metadata"] == {
        "serverAddress": "http://prometheus.monitoring:9090",
        "query": 'sum(avr_queue_length{namespace="calls",pod=~"demo-core-[a-z0-9]+-[a-z0-9]+"})',
        "threshold": "4.9",
    }
    assert cpu == {"type": "cpu", "metricType": "Utilization", "metadata": {"value": "60"}}
    assert (
        spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    )


def test_keda_query_and_explicit_target(make_body: Make) -> None:
    keda = {**KEDA, "query": "sum(my_queue)"}
    autoscaling = {"enabled": True, "engine": "keda", "keda": keda, "targetQueueLength": "2500m"}
    trigger = manifests(make_body(autoscaling=autoscaling))["ScaledObject", "demo-core"]["spec"]["triggers"][0]
    assert trigger["metadata"]["query"] == "sum(my_queue)" and trigger["metadata"]["threshold"] == "2.5"


def test_no_scaled_object_unless_asked(make_body: Make) -> None:
    for autoscaling in ({"enabled": True}, {"enabled": False, "engine": "keda", "keda": KEDA}):
        assert not any(kind == "ScaledObject" for kind, _ in manifests(make_body(autoscaling=autoscaling)))


# --- tracing, API token, network policies, PodMonitor ------------------------------------------------------

TRACING = {"endpoint": "http://otel-collector.monitoring:4318"}
PBX = {"ipBlock": {"cidr": "10.20.0.0/24"}}
MONITORING_NS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
CORE_PODS = {
    "podSelector": {
        "matchLabels": {
            "app.kubernetes.io/name": "avr",
            "app.kubernetes.io/instance": "demo",
            "app.kubernetes.io/component": "core",
        }
    }
}


def test_nothing_of_tracing_token_policies_or_monitors_unless_asked(make_body: Make) -> None:
    objs = manifests(make_body())
    config = objs["ConfigMap", "demo-core"]["data"]
    assert not [k for k in config if k.startswith("OTEL_") or k == "API_TOKEN"]
    names = {e["name"] for e in container(objs, "demo-core")["env"]}
    assert names == {"POD_NAME", "POD_NAMESPACE"}
    assert not {kind for kind, _ in objs} & {"NetworkPolicy", "PodMonitor"}


def test_tracing_renders_the_standard_otel_variables(make_body: Make) -> None:
    objs = manifests(make_body(core={"image": "x", "tracing": TRACING}))
    config = objs["ConfigMap", "demo-core"]["data"]
    assert config["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.monitoring:4318"
    assert config["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    assert config["OTEL_TRACES_SAMPLER_ARG"] == "0.1"
    assert config["OTEL_SERVICE_NAME"] == "demo-core"
    env = container(objs, "demo-core")["env"]
    names = [e["name"] for e in env]
    # Dependent variables expand only from variables defined before them.
    assert names.index("POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES")
    assert names.index("POD_NAMESPACE") < names.index("OTEL_RESOURCE_ATTRIBUTES")
    attributes = next(e for e in env if e["name"] == "OTEL_RESOURCE_ATTRIBUTES")["value"]
    assert attributes.split(",") == [
        "k8s.pod.name=$(POD_NAME)",
        "k8s.namespace.name=$(POD_NAMESPACE)",
        "k8s.deployment.name=demo-core",
    ]
    # Providers are not the worker: they get nothing of it.
    assert not [k for k in objs["ConfigMap", "demo-sts"]["data"] if k.startswith("OTEL_")]


def test_tracing_ratio_and_service_name(make_body: Make) -> None:
    tracing = {**TRACING, "samplingRatio": 1, "serviceName": "avr-core-eu"}
    config = manifests(make_body(core={"image": "x", "tracing": tracing}))["ConfigMap", "demo-core"]["data"]
    assert (config["OTEL_TRACES_SAMPLER_ARG"], config["OTEL_SERVICE_NAME"]) == ("1.0", "avr-core-eu")


def test_api_token_comes_from_its_secret_never_the_config_map(make_body: Make) -> None:
    objs = manifests(make_body(core={"image": "x", "apiTokenSecretRef": {"name": "avr-api", "key": "token"}}))
    env = container(objs, "demo-core")["env"]
    token = next(e for e in env if e["name"] == "API_TOKEN")
    assert token == {"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "avr-api", "key": "token"}}}
    assert "API_TOKEN" not in objs["ConfigMap", "demo-core"]["data"]
    assert "env" not in container(objs, "demo-sts")


def test_an_explicit_env_entry_overrides_the_token(make_body: Make) -> None:
    core = {
        "image": "x",
        "apiTokenSecretRef": {"name": "avr-api", "key": "token"},
        "env": [{"name": "API_TOKEN", "value": "t"}],
    }
    env = container(manifests(make_body(core=core)), "demo-core")["env"]
    assert [e for e in env if e["name"] == "API_TOKEN"] == [{"name": "API_TOKEN", "value": "t"}]


def test_network_policies_limit_the_core_to_its_peers_and_providers_to_the_core(make_body: Make) -> None:
    policy = {"enabled": True, "audioSocketFrom": [PBX], "httpFrom": [PBX, MONITORING_NS]}
    objs = manifests(make_body(networkPolicy=policy))
    core = objs["NetworkPolicy", "demo-core"]
    assert core["apiVersion"] == "networking.k8s.io/v1"
    assert core["metadata"]["ownerReferences"][0]["uid"] == "1234-abcd"
    spec = core["spec"]
    assert spec["podSelector"] == {"matchLabels": CORE_PODS["podSelector"]["matchLabels"]}
    assert spec["policyTypes"] == ["Ingress"]
    audio, http = spec["ingress"]
    assert audio == {"from": [PBX], "ports": [{"protocol": "TCP", "port": 5001}]}
    # The core pods reach each other's HTTP port (the peers' claims); empty lists the API server drops are left out.
    assert http == {"from": [PBX, MONITORING_NS, CORE_PODS], "ports": [{"protocol": "TCP", "port": 3000}]}
    sts = objs["NetworkPolicy", "demo-sts"]["spec"]
    assert sts["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "sts"
    assert sts["ingress"] == [{"from": [CORE_PODS], "ports": [{"protocol": "TCP", "port": 6030}]}]


def test_network_policies_follow_the_ports_and_the_trio(make_body: Make) -> None:
    peer = {"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.9.0/24"]}}
    selector = {"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["asterisk"]}]}}
    body = make_body(
        core={"image": "x", "ports": {"audioSocket": 9092, "http": 8080}},
        providers={"asr": {"image": "a"}, "llm": {"image": "l", "port": 7000}, "tts": {"image": "t"}},
        networkPolicy={"enabled": True, "audioSocketFrom": [peer, selector]},
    )
    objs = manifests(body)
    audio, http = objs["NetworkPolicy", "demo-core"]["spec"]["ingress"]
    assert audio == {"from": [peer, selector], "ports": [{"protocol": "TCP", "port": 9092}]}
    assert http == {"from": [CORE_PODS], "ports": [{"protocol": "TCP", "port": 8080}]}
    for role, port in (("asr", 6010), ("llm", 7000), ("tts", 6012)):
        ingress = objs["NetworkPolicy", f"demo-{role}"]["spec"]["ingress"]
        assert ingress == [{"from": [CORE_PODS], "ports": [{"protocol": "TCP", "port": port}]}]
    assert ("NetworkPolicy", "demo-sts") not in objs


def test_an_empty_namespace_selector_stays_meaning_every_namespace(make_body: Make) -> None:
    policy = {"enabled": True, "audioSocketFrom": [PBX], "httpFrom": [{"namespaceSelector": {}}]}
    http = manifests(make_body(networkPolicy=policy))["NetworkPolicy", "demo-core"]["spec"]["ingress"][1]
    assert http["from"][0] == {"namespaceSelector": {}}


def test_pod_monitor_scrapes_the_core_pods(make_body: Make) -> None:
    monitoring = {
        "podMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom", "app.kubernetes.io/name": "x"}}
    }
    objs = manifests(make_body(monitoring=monitoring))
    monitor = objs["PodMonitor", "demo-core"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    labels = monitor["metadata"]["labels"]
    assert labels["release"] == "prom"
    assert labels["app.kubernetes.io/name"] == "avr"  # the operator's labels win
    assert labels["app.kubernetes.io/managed-by"] == "avr-operator"
    assert monitor["spec"] == {
        "selector": {"matchLabels": CORE_PODS["podSelector"]["matchLabels"]},
        "podMetricsEndpoints": [{"port": "http", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}],
    }
    assert [k for k in objs if k[0] == "PodMonitor"] == [("PodMonitor", "demo-core")]
    # The port it names is the core container's.
    ports = {p["name"] for p in container(objs, "demo-core")["ports"]}
    assert "http" in ports
