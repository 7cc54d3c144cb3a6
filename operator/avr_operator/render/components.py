"""The spec seen as a list of components (core, then providers), each with everything its manifests need.

This is where the core's environment is derived from the spec and where the core is wired to the provider
Services, as AVR's compose files do by hand.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from avr_operator.api.resource import AVRDeployment
from avr_operator.api.spec import CoreSpec, ProviderSpec
from avr_operator.render.names import CORE, PEERS, child_name, worker_account

# Seconds added to the drain time so the kubelet never kills a pod that is still finishing cleanly.
GRACE_MARGIN_SECONDS = 15

# Share of maxConcurrentCalls the core's autoscaler aims at per pod when the spec sets no target: room for a
# burst while new pods start, before /ready fails at capacity.
DEFAULT_TARGET_UTILIZATION = 0.7
QUEUE_METRIC = "avr_queue_length"

# Path on each provider's Service the core calls (AVR's HTTP streaming providers; STS is a WebSocket root).
PROVIDER_URLS = {
    "sts": ("STS_URL", "ws", ""),
    "asr": ("ASR_URL", "http", "/speech-to-text-stream"),
    "llm": ("LLM_URL", "http", "/prompt-stream"),
    "tts": ("TTS_URL", "http", "/text-to-speech-stream"),
}


@dataclass(frozen=True)
class Autoscaling:
    """What the HPA of one component needs."""

    min_replicas: int
    max_replicas: int
    metrics: list[dict[str, Any]]
    behavior: dict[str, Any] | None = None
    # With engine keda: a ScaledObject instead of the HPA (KEDA then creates and owns the HPA).
    keda: KedaTrigger | None = None


@dataclass(frozen=True)
class KedaTrigger:
    """KEDA's Prometheus scaler: the query's value divided by `threshold` gives the replicas."""

    server_address: str
    query: str
    threshold: str
    cpu_utilization: int | None


@dataclass(frozen=True)
class Component:
    """One Deployment + Service (+ ConfigMap, HPA, PDB) of the stack."""

    role: str
    name: str
    image: str
    image_pull_policy: str | None
    ports: list[tuple[str, int]]
    replicas: int
    resources: dict[str, Any]
    config: dict[str, str]
    env: list[dict[str, Any]]
    env_from: list[dict[str, Any]]
    pre_stop_seconds: int
    grace_seconds: int
    run_as_user: int
    http_probes: bool
    autoscaling: Autoscaling | None
    pod_annotations: dict[str, str] = field(default_factory=dict)
    # Directory of the log file (LOG_FILE), mounted as an emptyDir on the read-only root filesystem.
    log_dir: str | None = None
    # ServiceAccount whose token the pod mounts (None: the default account, no token).
    service_account: str | None = None
    # Arguments replacing the image's command (empty: the image's own).
    args: tuple[str, ...] = ()

    @property
    def config_hash(self) -> str:
        """Changes whenever the ConfigMap does, so pods roll to pick up the new values."""
        text = json.dumps(self.config, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def provider_url(owner: AVRDeployment, role: str, port: int) -> tuple[str, str]:
    var, scheme, path = PROVIDER_URLS[role]
    return var, f"{scheme}://{child_name(owner, role)}:{port}{path}"


def core_config(owner: AVRDeployment) -> dict[str, str]:
    """The worker's environment (names and units as AVR's performance guide), as ConfigMap data."""
    core = owner.spec.core
    env: dict[str, Any] = {
        "PORT": core.ports.audio_socket,
        "HTTP_PORT": core.ports.http,
        "CONNECTION_POOL_SIZE": core.connection.pool_size,
        "CONNECTION_TIMEOUT": core.connection.timeout_ms,
        "MAX_RETRIES": core.connection.max_retries,
        "AUDIO_CODEC": core.audio.codec,
        "AUDIO_BITRATE": core.audio.bitrate,
        "AUDIO_CHANNELS": core.audio.channels,
        "AUDIO_SAMPLE_RATE": core.audio.sample_rate,
        "BUFFER_SIZE": core.audio.buffer_size,
        "BUFFER_OVERLAP": core.audio.overlap,
        "CACHE_MAX_SIZE": core.cache.max_size,
        "CACHE_TTL": core.cache.ttl_seconds,
        "RATE_LIMIT": core.rate_limit.requests,
        "SOURCE_RATE_LIMIT": core.rate_limit.source_requests,
        "RATE_WINDOW": core.rate_limit.window_seconds,
        "MAX_CONCURRENT_CALLS": core.max_concurrent_calls,
        "LOG_LEVEL": core.logging.level,
        "LOG_FORMAT": core.logging.format,
        "DRAIN_MODE": core.drain.mode,
        "PEER_SERVICE": peer_service_host(owner),
    }
    # Only knobs that act: rotation means nothing without a file, the deadline nothing when waiting until empty.
    if core.logging.file is not None:
        env["LOG_FILE"] = core.logging.file
        if core.logging.rotation is not None:
            env["LOG_ROTATION"] = core.logging.rotation
    if core.drain.mode == "deadline":
        env["DRAIN_TIMEOUT"] = core.drain.timeout
    if core.scale_in.deletion_cost:
        env["POD_DELETION_COST"] = "true"
    for role, provider in owner.spec.providers.items():
        var, url = provider_url(owner, role, provider.port)
        env[var] = url
    if core.webhook is not None:
        env["WEBHOOK_URL"] = core.webhook.url
        env["WEBHOOK_TIMEOUT"] = core.webhook.timeout_ms
        env["WEBHOOK_RETRY"] = core.webhook.retries
    if core.tracing is not None:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = core.tracing.endpoint
        env["OTEL_TRACES_SAMPLER"] = TRACES_SAMPLER
        env["OTEL_TRACES_SAMPLER_ARG"] = core.tracing.sampling_ratio
        env["OTEL_SERVICE_NAME"] = core.tracing.service_name or child_name(owner, CORE)
    return {k: str(v) for k, v in env.items()}


def peer_service_host(owner: AVRDeployment) -> str:
    """DNS name of the headless Service listing the ready core pods, which ask each other for call metadata."""
    return f"{child_name(owner, PEERS)}.{owner.namespace}.svc"


def queue_target(owner: AVRDeployment) -> str:
    """Per-pod target of avr_queue_length, as a quantity: explicit, or maxConcurrentCalls x targetUtilization.

    Milli-units keep a fractional target exact (7 calls x 0.7 = 4900m) without float noise in the manifest.
    """
    a = owner.spec.autoscaling
    if a.target_queue_length is not None:
        return str(a.target_queue_length)
    share = DEFAULT_TARGET_UTILIZATION if a.target_utilization is None else a.target_utilization
    milli = max(1, round(owner.spec.core.max_concurrent_calls * share * 1000))
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


_SUFFIXES = {"m": "0.001", "k": "1e3", "M": "1e6", "G": "1e9", "T": "1e12", "P": "1e15", "E": "1e18",
             "Ki": "1024", "Mi": "1048576", "Gi": "1073741824", "Ti": "1099511627776"}  # fmt: skip


def quantity_decimal(quantity: str) -> str:
    """A Kubernetes quantity as a plain decimal (KEDA's threshold is a float, not a quantity): 4900m -> 4.9."""
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if quantity.endswith(suffix) and quantity[: -len(suffix)]:
            value = Decimal(quantity[: -len(suffix)]) * Decimal(_SUFFIXES[suffix])
            break
    else:
        value = Decimal(quantity)
    text = format(value.normalize(), "f")
    return text


def default_keda_query(owner: AVRDeployment) -> str:
    """The core's calls in the system, summed over its pods (`<deployment>-<replicaset hash>-<id>`)."""
    pods = f"{child_name(owner, CORE)}-[a-z0-9]+-[a-z0-9]+"
    return f'sum({QUEUE_METRIC}{{namespace="{owner.namespace}",pod=~"{pods}"}})'


def _grace_seconds(core: CoreSpec) -> int:
    """The user's limit when draining until empty; else preStop + deadline + margin."""
    drain = core.drain
    if drain.mode == "until_empty":
        assert drain.termination_grace_period_seconds is not None  # the spec's rules require it
        return drain.termination_grace_period_seconds
    return drain.pre_stop_seconds + drain.timeout + GRACE_MARGIN_SECONDS


# The pod's identity from the downward API: the worker patches its own pod (deletion cost) and knows itself
# among its peers.
DOWNWARD_ENV = (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace"))
# Traces of calls whose caller sent no trace context are sampled at core.tracing.samplingRatio; a caller's
# decision (a sampled traceparent) is followed.
TRACES_SAMPLER = "parentbased_traceidratio"


def _core_env(owner: AVRDeployment) -> list[dict[str, Any]]:
    core = owner.spec.core
    env = [e.dump() for e in core.env]
    given = {e["name"] for e in env}
    generated: list[dict[str, Any]] = [
        {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}} for name, path in DOWNWARD_ENV
    ]
    secret = core.webhook.secret_ref if core.webhook is not None else None
    if secret is not None:
        generated.append({"name": "WEBHOOK_SECRET", "valueFrom": {"secretKeyRef": secret.dump()}})
    if core.api_token_secret_ref is not None:
        # Straight from the Secret, never through the ConfigMap.
        generated.append({"name": "API_TOKEN", "valueFrom": {"secretKeyRef": core.api_token_secret_ref.dump()}})
    if core.tracing is not None:
        # $(VAR) expands variables defined earlier in the list: the downward API's POD_NAME and POD_NAMESPACE.
        attributes = (
            "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE),"
            f"k8s.deployment.name={child_name(owner, CORE)}"
        )
        generated.append({"name": "OTEL_RESOURCE_ATTRIBUTES", "value": attributes})
    # Explicit env entries win (they are the user's override); generated ones come first.
    return [g for g in generated if g["name"] not in given] + env


def _core(owner: AVRDeployment) -> Component:
    spec = owner.spec
    core = spec.core
    autoscaling = None
    if spec.autoscaling.enabled:
        a = spec.autoscaling
        metrics: list[dict[str, Any]] = [
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": QUEUE_METRIC},
                    "target": {"type": "AverageValue", "averageValue": queue_target(owner)},
                },
            }
        ]
        if a.target_cpu_utilization is not None:
            metrics.append(_cpu_metric(a.target_cpu_utilization))
        keda = None
        if a.engine == "keda" and a.keda is not None:
            keda = KedaTrigger(
                a.keda.server_address,
                a.keda.query or default_keda_query(owner),
                quantity_decimal(queue_target(owner)),
                a.target_cpu_utilization,
            )
        autoscaling = Autoscaling(a.min_replicas, a.max_replicas, metrics, a.behavior.dump(), keda)
    return Component(
        role=CORE,
        name=child_name(owner, CORE),
        image=core.image,
        image_pull_policy=core.image_pull_policy,
        ports=[("audiosocket", core.ports.audio_socket), ("http", core.ports.http)],
        replicas=core.replicas,
        resources=core.resources.dump(),
        config=core_config(owner),
        env=_core_env(owner),
        env_from=[e.dump() for e in core.env_from],
        pre_stop_seconds=core.drain.pre_stop_seconds,
        grace_seconds=_grace_seconds(core),
        run_as_user=core.run_as_user,
        http_probes=True,
        autoscaling=autoscaling,
        pod_annotations={
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(core.ports.http),
            "prometheus.io/path": "/metrics",
        },
        log_dir=posixpath.dirname(core.logging.file) if core.logging.file is not None else None,
        service_account=worker_account(owner) if core.scale_in.deletion_cost else None,
    )


def _cpu_metric(percent: int) -> dict[str, Any]:
    return {
        "type": "Resource",
        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": percent}},
    }


def _provider(owner: AVRDeployment, role: str, provider: ProviderSpec) -> Component:
    scaling = provider.autoscaling
    autoscaling = (
        Autoscaling(scaling.min_replicas, scaling.max_replicas, [_cpu_metric(scaling.target_cpu_utilization)])
        if scaling.enabled
        else None
    )
    return Component(
        role=role,
        name=child_name(owner, role),
        image=provider.image,
        image_pull_policy=provider.image_pull_policy,
        ports=[(role, provider.port)],
        replicas=provider.replicas,
        resources=provider.resources.dump(),
        config={"PORT": str(provider.port)},
        env=[e.dump() for e in provider.env],
        env_from=[e.dump() for e in provider.env_from],
        pre_stop_seconds=provider.drain_seconds,
        grace_seconds=provider.drain_seconds + GRACE_MARGIN_SECONDS,
        run_as_user=provider.run_as_user,
        http_probes=False,
        autoscaling=autoscaling,
        args=provider.args,
    )


def components(owner: AVRDeployment) -> list[Component]:
    """Core first, then the providers in wiring order."""
    return [_core(owner)] + [_provider(owner, role, p) for role, p in owner.spec.providers.items()]
