"""The CRD as the API server serves it: `kubectl explain` shows the models' descriptions, and invalid
AVRDeployments are refused at admission (server-side create) with a message naming the offending field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from avr_devcluster.testing import ClusterUnderTest
from avr_operator.api.spec import AudioSpec, AVRDeploymentSpec, CoreSpec, LoggingSpec
from tests.integration.operator.helpers import Obj, create, kubectl, minimal

pytestmark = pytest.mark.integration


def _flat(text: str) -> str:
    """kubectl wraps descriptions: compare with all whitespace runs collapsed."""
    return " ".join(text.split())


def _description(model: Any, field: str) -> str:
    text = model.model_fields[field].description
    assert isinstance(text, str)
    return _flat(text)


def test_kubectl_explain_shows_the_field_descriptions(cluster: ClusterUnderTest, crd: None) -> None:
    core = _flat(kubectl(cluster, "explain", "avrdeployment.spec.core"))
    assert _description(AVRDeploymentSpec, "core") in core
    for field in ("image", "replicas", "maxConcurrentCalls", "runAsUser"):
        assert field in core
    for name in ("image", "replicas", "max_concurrent_calls", "audio", "drain", "webhook"):
        assert _description(CoreSpec, name) in core, name
    assert "image <string> -required-" in core

    audio = _flat(kubectl(cluster, "explain", "avrdeployment.spec.core.audio"))
    for name in ("sample_rate", "buffer_size", "overlap", "codec", "bitrate", "channels"):
        assert _description(AudioSpec, name) in audio, name

    codec = _flat(kubectl(cluster, "explain", "avrd.spec.core.audio.codec"))
    assert "ENUM: opus pcm16 ulaw alaw" in codec
    assert _description(AudioSpec, "codec") in codec
    rotation = _flat(kubectl(cluster, "explain", "avrd.spec.core.logging.rotation"))
    assert _description(LoggingSpec, "rotation") in rotation


# --- admission ------------------------------------------------------------------------------------------

Change = Callable[[Obj], None]
_DELETE = object()


def at(path: str, value: Any) -> Change:
    """Set (or with _DELETE remove) the dotted `path` of the body, creating missing objects."""

    def change(body: Obj) -> None:
        *parents, leaf = path.split(".")
        target = body
        for key in parents:
            target = target.setdefault(key, {})
        if value is _DELETE:
            del target[leaf]
        else:
            target[leaf] = value

    return change


def both(*changes: Change) -> Change:
    def change(body: Obj) -> None:
        for c in changes:
            c(body)

    return change


@dataclass(frozen=True)
class Invalid:
    id: str
    change: Change
    field: str  # the path the API server's message must name
    strict: bool = False  # fieldValidation=Strict (unknown fields)


ASR = {"image": "agentvoiceresponse/avr-asr-vosk"}
LLM = {"image": "agentvoiceresponse/avr-llm-openai"}
TTS = {"image": "agentvoiceresponse/avr-tts-kokoro"}

INVALID = [
    # types
    Invalid("replicas-string", at("spec.core.replicas", "three"), "spec.core.replicas"),
    Invalid("overlap-string", at("spec.core.audio.overlap", "half"), "spec.core.audio.overlap"),
    Invalid("enabled-string", at("spec.autoscaling.enabled", "yes"), "spec.autoscaling.enabled"),
    Invalid("audio-not-object", at("spec.core.audio", "opus"), "spec.core.audio"),
    Invalid("env-not-list", at("spec.core.env", {"A": "b"}), "spec.core.env"),
    # required fields
    Invalid("missing-core-image", at("spec.core.image", _DELETE), "spec.core.image"),
    Invalid("missing-providers", at("spec.providers", _DELETE), "spec.providers"),
    Invalid("webhook-without-url", at("spec.core.webhook", {"retries": 1}), "spec.core.webhook.url"),
    # bounds
    Invalid("negative-replicas", at("spec.core.replicas", -1), "spec.core.replicas"),
    Invalid("too-many-replicas", at("spec.core.replicas", 1001), "spec.core.replicas"),
    Invalid("overlap-1.0", at("spec.core.audio.overlap", 1.0), "spec.core.audio.overlap"),
    Invalid("negative-overlap", at("spec.core.audio.overlap", -0.1), "spec.core.audio.overlap"),
    Invalid("buffer-size-32", at("spec.core.audio.bufferSize", 32), "spec.core.audio.bufferSize"),
    Invalid("bitrate-too-low", at("spec.core.audio.bitrate", 100), "spec.core.audio.bitrate"),
    Invalid("three-channels", at("spec.core.audio.channels", 3), "spec.core.audio.channels"),
    Invalid("port-0", at("spec.core.ports.http", 0), "spec.core.ports.http"),
    Invalid("port-70000", at("spec.core.ports.audioSocket", 70000), "spec.core.ports.audioSocket"),
    Invalid("provider-port-0", at("spec.providers.sts.port", 0), "spec.providers.sts.port"),
    Invalid("run-as-root", at("spec.core.runAsUser", 0), "spec.core.runAsUser"),
    Invalid("pre-stop-121", at("spec.core.drain.preStopSeconds", 121), "spec.core.drain.preStopSeconds"),
    Invalid(
        "cpu-target-101", at("spec.autoscaling.targetCpuUtilization", 101), "spec.autoscaling.targetCpuUtilization"
    ),
    Invalid("empty-image", at("spec.core.image", ""), "spec.core.image"),
    Invalid("image-with-space", at("spec.core.image", "avr runtime"), "spec.core.image"),
    Invalid(
        "too-many-pull-secrets",
        at("spec.imagePullSecrets", [{"name": f"s{i}"} for i in range(11)]),
        "spec.imagePullSecrets",
    ),
    # enums
    Invalid("sample-rate-44100", at("spec.core.audio.sampleRate", 44100), "spec.core.audio.sampleRate"),
    Invalid("unknown-codec", at("spec.core.audio.codec", "mp3"), "spec.core.audio.codec"),
    Invalid("unknown-log-level", at("spec.core.logging.level", "verbose"), "spec.core.logging.level"),
    Invalid("unknown-log-format", at("spec.core.logging.format", "xml"), "spec.core.logging.format"),
    Invalid("unknown-pull-policy", at("spec.core.imagePullPolicy", "Sometimes"), "spec.core.imagePullPolicy"),
    Invalid("service-type-external-name", at("spec.service.type", "ExternalName"), "spec.service.type"),
    Invalid(
        "unknown-scaling-policy-type",
        at("spec.autoscaling.behavior.scaleUp.policies", [{"type": "Nodes", "value": 1, "periodSeconds": 10}]),
        "spec.autoscaling.behavior.scaleUp.policies[0].type",
    ),
    # patterns
    Invalid(
        "bad-rotation",
        at("spec.core.logging", {"file": "/var/log/avr/w.log", "rotation": "big"}),
        "spec.core.logging.rotation",
    ),
    Invalid("bad-quantity", at("spec.core.resources.requests.cpu", "lots"), "spec.core.resources.requests.cpu"),
    Invalid("bad-queue-target", at("spec.autoscaling.targetQueueLength", "x5"), "spec.autoscaling.targetQueueLength"),
    Invalid("bad-max-surge", at("spec.rollout.maxSurge", "two"), "spec.rollout.maxSurge"),
    Invalid("webhook-ftp-url", at("spec.core.webhook", {"url": "ftp://example.com"}), "spec.core.webhook.url"),
    Invalid("bad-env-name", at("spec.core.env", [{"name": "1=X", "value": "v"}]), "spec.core.env[0].name"),
    Invalid("name-too-long", at("metadata.name", "a" * 53), "metadata.name"),
    Invalid("name-starts-with-digit", at("metadata.name", "1demo"), "metadata.name"),
    # cross-field rules
    Invalid(
        "max-below-min-replicas",
        both(at("spec.autoscaling.minReplicas", 5), at("spec.autoscaling.maxReplicas", 2)),
        "spec.autoscaling",
    ),
    Invalid(
        "provider-max-below-min",
        at("spec.providers.sts.autoscaling", {"enabled": True, "minReplicas": 4, "maxReplicas": 2}),
        "spec.providers.sts.autoscaling",
    ),
    Invalid("sts-with-asr", at("spec.providers.asr", ASR), "spec.providers"),
    Invalid("asr-without-tts", at("spec.providers", {"asr": ASR, "llm": LLM}), "spec.providers"),
    Invalid("no-provider", at("spec.providers", {}), "spec.providers"),
    Invalid("same-ports", at("spec.core.ports", {"audioSocket": 4000, "http": 4000}), "spec.core.ports"),
    Invalid(
        "hop-below-one-sample",
        at("spec.core.audio", {"bufferSize": 64, "overlap": 0.99}),
        "spec.core.audio",
    ),
    Invalid("rollout-all-zero", at("spec.rollout", {"maxSurge": 0, "maxUnavailable": "0%"}), "spec.rollout"),
    Invalid("pdb-both", at("spec.availability", {"minAvailable": 1, "maxUnavailable": 1}), "spec.availability"),
    Invalid("traffic-policy-cluster-ip", at("spec.service.externalTrafficPolicy", "Local"), "spec.service"),
    Invalid("affinity-timeout-without-client-ip", at("spec.service.sessionAffinityTimeoutSeconds", 60), "spec.service"),
    Invalid(
        "env-value-and-value-from",
        at("spec.core.env", [{"name": "K", "value": "v", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]),
        "spec.core.env[0]",
    ),
    Invalid(
        "env-from-two-sources",
        at("spec.providers.sts.envFrom", [{"secretRef": {"name": "a"}, "configMapRef": {"name": "b"}}]),
        "spec.providers.sts.envFrom[0]",
    ),
    Invalid(
        "queue-length-and-utilization",
        both(at("spec.autoscaling.targetQueueLength", 5), at("spec.autoscaling.targetUtilization", 0.5)),
        "spec.autoscaling.targetQueueLength",
    ),
    Invalid("utilization-zero", at("spec.autoscaling.targetUtilization", 0), "spec.autoscaling.targetUtilization"),
    Invalid(
        "utilization-above-one", at("spec.autoscaling.targetUtilization", 1.2), "spec.autoscaling.targetUtilization"
    ),
    Invalid("keda-without-its-block", at("spec.autoscaling.engine", "keda"), "spec.autoscaling.keda"),
    Invalid(
        "keda-block-with-hpa", at("spec.autoscaling.keda", {"serverAddress": "http://p:9090"}), "spec.autoscaling.keda"
    ),
    Invalid("rotation-without-file", at("spec.core.logging.rotation", "10MB"), "spec.core.logging.rotation"),
    Invalid("log-file-in-root", at("spec.core.logging.file", "/worker.log"), "spec.core.logging.file"),
    Invalid(
        "until-empty-without-grace",
        at("spec.core.drain", {"mode": "until_empty"}),
        "spec.core.drain.terminationGracePeriodSeconds",
    ),
    Invalid(
        "until-empty-with-timeout",
        at("spec.core.drain", {"mode": "until_empty", "terminationGracePeriodSeconds": 3600, "timeoutSeconds": 60}),
        "spec.core.drain.timeoutSeconds",
    ),
    Invalid(
        "deadline-with-grace",
        at("spec.core.drain", {"timeoutSeconds": 60, "terminationGracePeriodSeconds": 3600}),
        "spec.core.drain.terminationGracePeriodSeconds",
    ),
    Invalid(
        "grace-not-above-pre-stop",
        at("spec.core.drain", {"mode": "until_empty", "terminationGracePeriodSeconds": 5, "preStopSeconds": 5}),
        "spec.core.drain.terminationGracePeriodSeconds",
    ),
    Invalid(
        "grace-above-a-day",
        at("spec.core.drain", {"mode": "until_empty", "terminationGracePeriodSeconds": 86401}),
        "spec.core.drain.terminationGracePeriodSeconds",
    ),
    Invalid("unknown-drain-mode", at("spec.core.drain.mode", "forever"), "spec.core.drain.mode"),
    Invalid("source-rate-zero", at("spec.core.rateLimit.sourceRequests", 0), "spec.core.rateLimit.sourceRequests"),
    Invalid("tracing-without-scheme", at("spec.core.tracing", {"endpoint": "otel:4318"}), "spec.core.tracing.endpoint"),
    Invalid(
        "tracing-grpc-scheme", at("spec.core.tracing", {"endpoint": "grpc://otel:4317"}), "spec.core.tracing.endpoint"
    ),
    Invalid(
        "sampling-above-one",
        at("spec.core.tracing", {"endpoint": "http://otel:4318", "samplingRatio": 1.5}),
        "spec.core.tracing.samplingRatio",
    ),
    Invalid(
        "sampling-negative",
        at("spec.core.tracing", {"endpoint": "http://otel:4318", "samplingRatio": -0.5}),
        "spec.core.tracing.samplingRatio",
    ),
    Invalid("token-without-key", at("spec.core.apiTokenSecretRef", {"name": "t"}), "spec.core.apiTokenSecretRef.key"),
    Invalid("policy-without-peers", at("spec.networkPolicy.enabled", True), "spec.networkPolicy.audioSocketFrom"),
    Invalid(
        "peer-ip-and-pods",
        at("spec.networkPolicy.httpFrom", [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]),
        "spec.networkPolicy.httpFrom[0]",
    ),
    Invalid(
        "peer-bad-cidr",
        at("spec.networkPolicy.audioSocketFrom", [{"ipBlock": {"cidr": "10.0.0.1"}}]),
        "spec.networkPolicy.audioSocketFrom[0].ipBlock.cidr",
    ),
    Invalid(
        "selector-in-without-values",
        at("spec.networkPolicy.httpFrom", [{"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}]),
        "spec.networkPolicy.httpFrom[0].podSelector.matchExpressions[0].values",
    ),
    Invalid(
        "selector-exists-with-values",
        at(
            "spec.networkPolicy.httpFrom",
            [{"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}}],
        ),
        "spec.networkPolicy.httpFrom[0].namespaceSelector.matchExpressions[0].values",
    ),
    Invalid(
        "scrape-timeout-above-interval",
        at("spec.monitoring.podMonitor", {"interval": "10s", "scrapeTimeout": "1m"}),
        "spec.monitoring.podMonitor.scrapeTimeout",
    ),
    Invalid(
        "bad-scrape-interval", at("spec.monitoring.podMonitor.interval", "often"), "spec.monitoring.podMonitor.interval"
    ),
    # unknown fields, refused with fieldValidation=Strict (by default they are pruned)
    Invalid("unknown-field", at("spec.core.colour", "blue"), "spec.core.colour", strict=True),
    Invalid("unknown-nested-field", at("spec.core.audio.volume", 11), "spec.core.audio.volume", strict=True),
]


def test_enough_invalid_cases() -> None:
    assert len(INVALID) >= 30
    assert len({case.id for case in INVALID}) == len(INVALID)


@pytest.mark.parametrize("case", INVALID, ids=lambda case: case.id)
def test_invalid_resource_is_refused_naming_the_field(
    api_client: client.ApiClient, crd: None, namespace: str, case: Invalid
) -> None:
    body = minimal("refused")
    case.change(body)
    options = {"field_validation": "Strict"} if case.strict else {}
    with pytest.raises(ApiException) as refused:
        create(api_client, namespace, body, **options)
    assert refused.value.status == (400 if case.strict else 422), refused.value.body
    message = json.loads(str(refused.value.body))["message"]
    # The whole path, not a prefix of a longer one (spec.core.audio must not match spec.core.audio.codec).
    assert re.search(re.escape(case.field) + r"(?![\w.\[])", message), message


def test_the_unchanged_base_is_accepted(api_client: client.ApiClient, crd: None, namespace: str) -> None:
    """The cases above fail for their change alone: the body they start from is valid."""
    created = create(api_client, namespace, minimal("accepted"), field_validation="Strict")
    assert created["spec"]["core"]["replicas"] == 3
