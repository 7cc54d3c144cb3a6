"""The spec models: defaults from AVR's performance guide, and every cross-field rule refusing bad specs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from avr_operator.api.resource import AVRDeployment, InvalidResourceError
from avr_operator.api.spec import AVRDeploymentSpec

Make = Callable[..., dict[str, Any]]

CORE = {"image": "avr-runtime:test"}
STS = {"image": "agentvoiceresponse/avr-sts-openai"}
TRIO = {"asr": {"image": "a"}, "llm": {"image": "l"}, "tts": {"image": "t"}}


def spec(**over: Any) -> AVRDeploymentSpec:
    body: dict[str, Any] = {"core": dict(CORE), "providers": {"sts": dict(STS)}}
    body.update(over)
    return AVRDeploymentSpec.model_validate(body)


def test_core_defaults_follow_the_performance_guide() -> None:
    core = spec().core
    assert core.replicas == 3
    assert core.resources.dump() == {
        "requests": {"cpu": "1", "memory": "1Gi"},
        "limits": {"cpu": "2", "memory": "2Gi"},
    }
    assert (core.audio.sample_rate, core.audio.buffer_size, core.audio.overlap) == (16000, 1024, 0.5)
    assert (core.audio.codec, core.audio.bitrate, core.audio.channels) == ("opus", 16000, 1)
    assert (core.connection.pool_size, core.connection.timeout_ms, core.connection.max_retries) == (
        10,
        5000,
        3,
    )
    assert (core.cache.max_size, core.cache.ttl_seconds) == (1000, 3600)
    assert (core.rate_limit.requests, core.rate_limit.window_seconds) == (100, 60)
    assert (core.logging.level, core.logging.format) == ("info", "json")
    assert core.logging.file is None and core.logging.rotation is None  # the container's output, no rotation
    assert (core.rate_limit.source_requests, core.drain.mode) == (3000, "deadline")
    assert (core.ports.audio_socket, core.ports.http) == (5001, 3000)
    assert core.drain.timeout_seconds is None and core.drain.timeout == 300


def test_other_defaults() -> None:
    s = spec(providers=TRIO)
    assert s.providers.asr is not None and s.providers.asr.port == 6010
    assert s.providers.llm is not None and s.providers.llm.port == 6002
    assert s.providers.tts is not None and s.providers.tts.port == 6012
    assert spec().providers.sts is not None and spec().providers.sts.port == 6030  # type: ignore[union-attr]
    assert (s.rollout.max_surge, s.rollout.max_unavailable, s.rollout.min_ready_seconds) == (2, 0, 10)
    assert not s.autoscaling.enabled and not s.availability.enabled
    assert s.service.type == "ClusterIP" and s.service.session_affinity == "None"
    assert s.autoscaling.behavior.scale_down.stabilization_window_seconds == 300


def test_a_user_resources_block_replaces_the_default_as_the_api_server_would() -> None:
    core = spec(core={**CORE, "resources": {"limits": {"cpu": 4}}}).core
    assert core.resources.dump() == {"requests": {}, "limits": {"cpu": 4}}


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"providers": {"sts": STS, **TRIO}}, "either providers.sts"),
        ({"providers": {"asr": {"image": "a"}, "llm": {"image": "l"}}}, "either providers.sts"),
        ({"providers": {}}, "either providers.sts"),
        ({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, "minReplicas must not exceed"),
        ({"rollout": {"maxSurge": 0, "maxUnavailable": "0%"}}, "must not both be zero"),
        ({"availability": {"minAvailable": 1, "maxUnavailable": 1}}, "not both"),
        ({"service": {"sessionAffinityTimeoutSeconds": 60}}, "needs sessionAffinity ClientIP"),
        ({"service": {"externalTrafficPolicy": "Local"}}, "needs type NodePort or LoadBalancer"),
        ({"core": {**CORE, "ports": {"audioSocket": 3000}}}, "ports must differ"),
        ({"core": {**CORE, "audio": {"bufferSize": 64, "overlap": 0.999}}}, "at least one sample"),
        ({"core": {**CORE, "audio": {"codec": "mp3"}}}, "Input should be"),
        ({"core": {**CORE, "audio": {"sampleRate": 44100}}}, "Input should be"),
        ({"core": {**CORE, "audio": {"overlap": 1.0}}}, "less than 1"),
        ({"core": {**CORE, "resources": {"requests": {"cpu": "lots"}}}}, "not a Kubernetes quantity"),
        ({"core": {**CORE, "logging": {"file": "/l/a.log", "rotation": "huge"}}}, "should match pattern"),
        ({"core": {**CORE, "logging": {"rotation": "10MB"}}}, "rotation: rotation needs file"),
        ({"core": {**CORE, "logging": {"file": "/worker.log"}}}, "should match pattern"),
        ({"core": {**CORE, "logging": {"file": "relative/worker.log"}}}, "should match pattern"),
        ({"core": {**CORE, "drain": {"mode": "until_empty"}}}, "terminationGracePeriodSeconds: mode until_empty needs"),
        (
            {
                "core": {
                    **CORE,
                    "drain": {"mode": "until_empty", "terminationGracePeriodSeconds": 600, "timeoutSeconds": 60},
                }
            },
            "timeoutSeconds: timeoutSeconds is only used with mode deadline",
        ),
        (
            {"core": {**CORE, "drain": {"terminationGracePeriodSeconds": 600}}},
            "terminationGracePeriodSeconds: terminationGracePeriodSeconds is only set with mode until_empty",
        ),
        (
            {
                "core": {
                    **CORE,
                    "drain": {"mode": "until_empty", "terminationGracePeriodSeconds": 5, "preStopSeconds": 5},
                }
            },
            "must exceed preStopSeconds",
        ),
        (
            {"core": {**CORE, "drain": {"mode": "until_empty", "terminationGracePeriodSeconds": 86401}}},
            "less than or equal",
        ),
        (
            {"autoscaling": {"targetQueueLength": 5, "targetUtilization": 0.5}},
            "targetQueueLength: set targetQueueLength or",
        ),
        ({"autoscaling": {"targetUtilization": 0}}, "greater than 0"),
        ({"autoscaling": {"engine": "keda"}}, "keda: keda is required with engine keda"),
        ({"autoscaling": {"keda": {"serverAddress": "http://p:9090"}}}, "keda: keda is required with engine keda"),
        ({"autoscaling": {"engine": "keda", "keda": {"serverAddress": "p:9090"}}}, "should match pattern"),
        ({"autoscaling": {"targetUtilization": 1.5}}, "less than or equal to 1"),
        ({"core": {**CORE, "rateLimit": {"sourceRequests": 0}}}, "greater than or equal to 1"),
        ({"core": {**CORE, "connection": {"poolSize": 0}}}, "greater than or equal to 1"),
        (
            {
                "core": {
                    **CORE,
                    "env": [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}],
                }
            },
            "value or valueFrom",
        ),
        (
            {"core": {**CORE, "envFrom": [{"secretRef": {"name": "a"}, "configMapRef": {"name": "b"}}]}},
            "exactly one of secretRef",
        ),
        ({"core": {**CORE, "env": [{"name": "A", "valueFrom": {}}]}}, "exactly one of secretKeyRef"),
        ({"core": {**CORE, "webhook": {"url": "ftp://x"}}}, "should match pattern"),
        ({"core": {**CORE, "replica": 2}}, "Extra inputs are not permitted"),
        ({"core": {**CORE, "tracing": {"endpoint": "otel:4318"}}}, "should match pattern"),
        ({"core": {**CORE, "tracing": {"endpoint": "grpc://otel:4317"}}}, "should match pattern"),
        ({"core": {**CORE, "tracing": {"endpoint": "http://o:4318", "samplingRatio": 1.5}}}, "less than or equal to 1"),
        ({"core": {**CORE, "tracing": {"endpoint": "http://o:4318", "samplingRatio": -0.1}}}, "greater than or equal"),
        ({"core": {**CORE, "tracing": {"samplingRatio": 0.5}}}, "endpoint"),
        ({"core": {**CORE, "apiTokenSecretRef": {"name": "t"}}}, "key"),
        ({"core": {**CORE, "apiTokenSecretRef": {"name": "t", "key": "k", "optional": True}}}, "Extra inputs"),
        ({"networkPolicy": {"enabled": True}}, "audioSocketFrom: audioSocketFrom needs at least one peer"),
        (
            {"networkPolicy": {"audioSocketFrom": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}},
            "set ipBlock, or podSelector and/or namespaceSelector",
        ),
        ({"networkPolicy": {"httpFrom": [{}]}}, "set ipBlock, or podSelector and/or namespaceSelector"),
        ({"networkPolicy": {"httpFrom": [{"ipBlock": {"cidr": "10.0.0.1"}}]}}, "should match pattern"),
        (
            {"networkPolicy": {"httpFrom": [{"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}]}},
            "values: values are required with In and NotIn",
        ),
        (
            {
                "networkPolicy": {
                    "httpFrom": [
                        {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}}
                    ]
                }
            },
            "values: values are required with In and NotIn",
        ),
        ({"monitoring": {"podMonitor": {"interval": "30 seconds"}}}, "should match pattern"),
        (
            {"monitoring": {"podMonitor": {"interval": "10s", "scrapeTimeout": "1m"}}},
            "scrapeTimeout: scrapeTimeout must not",
        ),
        ({"rollout": {"maxSurge": "lots"}}, "percentage"),
    ],
)
def test_invalid_specs_are_refused_with_a_useful_message(over: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        spec(**over)


def test_int_or_percent_accepts_both_forms() -> None:
    s = spec(rollout={"maxSurge": "25%", "maxUnavailable": 1})
    assert (s.rollout.max_surge, s.rollout.max_unavailable) == ("25%", 1)


def test_resource_identity_is_parsed(make_body: Make) -> None:
    res = AVRDeployment.from_body(make_body())
    assert (res.name, res.namespace, res.uid, res.generation) == ("demo", "calls", "1234-abcd", 1)


@pytest.mark.parametrize("name", ["1abc", "UPPER", "x" * 53, ""])
def test_names_that_would_make_invalid_children_are_refused(make_body: Make, name: str) -> None:
    body = make_body()
    body["metadata"]["name"] = name
    with pytest.raises(InvalidResourceError):
        AVRDeployment.from_body(body)


def test_other_kinds_are_refused(make_body: Make) -> None:
    body = make_body()
    body["kind"] = "Deployment"
    with pytest.raises(InvalidResourceError, match="kind AVRDeployment"):
        AVRDeployment.from_body(body)
