"""The AVRDeployment spec. Defaults follow AVR's performance guide; bounds follow what the worker accepts."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from avr_operator.api.base import ApiModel, Rule
from avr_operator.api.types import (
    EnvFromSource,
    EnvVar,
    ImagePullSecret,
    IntOrPercent,
    LabelSelector,
    Quantity,
    Resources,
    SecretKeyRef,
    SecretKeySelector,
    env_field,
    env_from_field,
    resources_field,
)

Image = Annotated[str, Field(min_length=1, max_length=512, pattern=r"^[^\s]+$")]
Port = Annotated[int, Field(ge=1, le=65535)]
Cidr = Annotated[
    str,
    Field(
        min_length=3,
        max_length=64,
        pattern=r"^([0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}|[0-9a-fA-F:]*:[0-9a-fA-F:.]*/[0-9]{1,3})$",
    ),
]
PullPolicy = Literal["Always", "IfNotPresent", "Never"]


def sub(model: type[ApiModel], description: str) -> Any:
    """A nested block that is always present, defaulting to its fields' defaults.

    The CRD gets the expanded default rather than `{}`: the API server checks defaults against the block's CEL
    rules before its inner defaults would apply.
    """
    return Field(
        default_factory=model, description=description, json_schema_extra={"default": model.model_validate({}).dump()}
    )


def _zero(value: int | str) -> bool:
    return str(value) in ("0", "0%")


# --- core --------------------------------------------------------------------------------------------------


class AudioSpec(ApiModel):
    """Audio of the client stream leg and the analysis windows (AUDIO_*, BUFFER_*)."""

    sample_rate: Literal[8000, 16000] = Field(
        16000, description="Sample rate in Hz of the stream leg and analysis windows (AUDIO_SAMPLE_RATE)."
    )
    buffer_size: int = Field(
        1024, ge=64, le=65536, description="Analysis window in samples, 1024 = 64 ms at 16 kHz (BUFFER_SIZE)."
    )
    overlap: float = Field(0.5, ge=0.0, lt=1.0, description="Overlap of successive windows, 0 to <1 (BUFFER_OVERLAP).")
    codec: Literal["opus", "pcm16", "ulaw", "alaw"] = Field(
        "opus", description="Codec of the client stream leg (AUDIO_CODEC)."
    )
    bitrate: int = Field(16000, ge=6000, le=510000, description="Opus bitrate in bits/s (AUDIO_BITRATE).")
    channels: int = Field(1, ge=1, le=2, description="Channels of the stream leg (AUDIO_CHANNELS).")

    rules = (
        Rule(
            "double(self.bufferSize) * (1.0 - self.overlap) >= 1.0",
            "bufferSize * (1 - overlap) must be at least one sample",
            lambda s: s.buffer_size * (1.0 - s.overlap) >= 1.0,
        ),
    )


class ConnectionSpec(ApiModel):
    """Connections from the core to its providers."""

    pool_size: int = Field(10, ge=1, le=1000, description="Connections kept per provider (CONNECTION_POOL_SIZE).")
    timeout_ms: int = Field(
        5000, ge=1, le=600000, description="Connect/request timeout in milliseconds (CONNECTION_TIMEOUT)."
    )
    max_retries: int = Field(3, ge=0, le=20, description="Retries of a failed provider request (MAX_RETRIES).")


class CacheSpec(ApiModel):
    """LRU cache of synthesised speech (same text, same audio)."""

    max_size: int = Field(1000, ge=0, le=10_000_000, description="Entries kept; 0 disables the cache (CACHE_MAX_SIZE).")
    ttl_seconds: int = Field(3600, ge=1, le=604800, description="Seconds an entry lives (CACHE_TTL).")


class RateLimitSpec(ApiModel):
    """Requests allowed per window: per caller, and per source address (a PBX carries many callers)."""

    requests: int = Field(100, ge=1, le=1_000_000, description="Requests per window and caller (RATE_LIMIT).")
    source_requests: int = Field(
        3000,
        ge=1,
        le=10_000_000,
        description=(
            "New calls and requests per window from one source address, e.g. one PBX carrying many callers "
            "(SOURCE_RATE_LIMIT)."
        ),
    )
    window_seconds: int = Field(60, ge=1, le=86400, description="Length of the window in seconds (RATE_WINDOW).")


class LoggingSpec(ApiModel):
    """Worker logs: on the container's output unless `file` is set (rotation only means something for a file)."""

    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level (LOG_LEVEL).")
    format: Literal["json", "text"] = Field("json", description="Log line format (LOG_FORMAT).")
    file: str | None = Field(
        None,
        max_length=256,
        pattern=r"^(/[A-Za-z0-9_-][A-Za-z0-9._-]*){2,}$",  # a file in a directory of its own
        description=(
            "Absolute path of a log file instead of the container's output, e.g. /var/log/avr/worker.log "
            "(LOG_FILE); an emptyDir is mounted at its directory, which must not be the root. "
            "Unset: logs go to the container's output."
        ),
    )
    rotation: str | None = Field(
        None,
        max_length=16,
        pattern=r"^[0-9]+(\.[0-9]+)?([KMGkmg][iI]?[bB]?|[bB])?$",
        description=(
            "Size at which the log file rotates, e.g. 100MB or 512KiB (LOG_ROTATION; the worker's default is "
            "100MB). Needs file."
        ),
    )

    rules = (
        Rule(
            "!has(self.rotation) || has(self.file)",
            "rotation needs file: logs on the container's output do not rotate",
            lambda s: s.rotation is None or s.file is not None,
            field="rotation",
        ),
    )


#: Drain time of mode deadline when timeoutSeconds is unset.
DEFAULT_DRAIN_TIMEOUT = 300


class DrainSpec(ApiModel):
    """How a terminating core pod lets live calls finish.

    Two modes, each with one limit: `deadline` cuts the calls still live after timeoutSeconds (and the grace
    period follows from it), `until_empty` never cuts a call and the pod's terminationGracePeriodSeconds is the
    only limit. A field of the other mode would do nothing, so it is refused rather than ignored.
    """

    mode: Literal["deadline", "until_empty"] = Field(
        "deadline",
        description=(
            "deadline: live calls get timeoutSeconds after SIGTERM, then the rest are cut; until_empty: the pod "
            "waits until no call is live, terminationGracePeriodSeconds being the only limit (DRAIN_MODE)."
        ),
    )
    timeout_seconds: int | None = Field(
        None,
        ge=0,
        le=86400,
        description=(
            "Mode deadline only: seconds live calls may continue after SIGTERM, 300 when unset (DRAIN_TIMEOUT). "
            "The pod's terminationGracePeriodSeconds is then preStopSeconds + timeoutSeconds + a 15 s margin."
        ),
    )
    termination_grace_period_seconds: int | None = Field(
        None,
        ge=1,
        le=86400,
        description=(
            "Mode until_empty only (and required there): the pod's terminationGracePeriodSeconds, the longest "
            "a terminating pod may wait for its calls to end, preStopSeconds included."
        ),
    )
    pre_stop_seconds: int = Field(
        5,
        ge=0,
        le=120,
        description=(
            "Sleep before SIGTERM so the pod leaves the Service endpoints first (sleep lifecycle action, "
            "Kubernetes >= 1.30); 0 disables the hook."
        ),
    )

    rules = (
        Rule(
            "!has(self.timeoutSeconds) || self.mode == 'deadline'",
            "timeoutSeconds is only used with mode deadline; with until_empty no call is cut and "
            "terminationGracePeriodSeconds is the only limit",
            lambda s: s.timeout_seconds is None or s.mode == "deadline",
            field="timeoutSeconds",
        ),
        Rule(
            "!has(self.terminationGracePeriodSeconds) || self.mode == 'until_empty'",
            "terminationGracePeriodSeconds is only set with mode until_empty; with deadline it is "
            "preStopSeconds + timeoutSeconds + 15",
            lambda s: s.termination_grace_period_seconds is None or s.mode == "until_empty",
            field="terminationGracePeriodSeconds",
        ),
        Rule(
            "self.mode != 'until_empty' || has(self.terminationGracePeriodSeconds)",
            "mode until_empty needs terminationGracePeriodSeconds (the only limit on the drain)",
            lambda s: s.mode != "until_empty" or s.termination_grace_period_seconds is not None,
            field="terminationGracePeriodSeconds",
        ),
        Rule(
            "!has(self.terminationGracePeriodSeconds) || self.terminationGracePeriodSeconds > self.preStopSeconds",
            "terminationGracePeriodSeconds must exceed preStopSeconds (the preStop sleep counts against it)",
            lambda s: (
                s.termination_grace_period_seconds is None or s.termination_grace_period_seconds > s.pre_stop_seconds
            ),
            field="terminationGracePeriodSeconds",
        ),
    )

    @property
    def timeout(self) -> int:
        """DRAIN_TIMEOUT of mode deadline."""
        return DEFAULT_DRAIN_TIMEOUT if self.timeout_seconds is None else self.timeout_seconds


class ScaleInSpec(ApiModel):
    """How scale-in picks the pods to remove."""

    deletion_cost: bool = Field(
        True,
        description=(
            "Each worker sets its own pod's controller.kubernetes.io/pod-deletion-cost to its live call count "
            "(POD_DELETION_COST), so scaling in removes the pods with the fewest calls first. Gives the core "
            "pods a ServiceAccount <name>-avr-worker with a Role to get and patch pods, narrowed to their own "
            "pod's annotation by the chart's admission policy."
        ),
    )


class WebhookSpec(ApiModel):
    """Call events POSTed to an HTTP endpoint."""

    url: str = Field(
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="Endpoint receiving call events (WEBHOOK_URL).",
    )
    secret_ref: SecretKeySelector | None = Field(
        None, description="Secret key sent as header X-AVR-WEBHOOK-SECRET (WEBHOOK_SECRET)."
    )
    timeout_ms: int = Field(3000, ge=1, le=60000, description="Request timeout in milliseconds (WEBHOOK_TIMEOUT).")
    retries: int = Field(0, ge=0, le=10, description="Retries of a failed delivery (WEBHOOK_RETRY).")


class TracingSpec(ApiModel):
    """OpenTelemetry traces of the calls, exported over OTLP/HTTP (the worker's standard OTEL_* variables)."""

    endpoint: str = Field(
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description=(
            "OTLP/HTTP endpoint spans are sent to, e.g. http://otel-collector.monitoring:4318 "
            "(OTEL_EXPORTER_OTLP_ENDPOINT)."
        ),
    )
    sampling_ratio: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description=(
            "Share of calls traced, 0 to 1, unless the caller's trace context decides "
            "(OTEL_TRACES_SAMPLER=parentbased_traceidratio, OTEL_TRACES_SAMPLER_ARG)."
        ),
    )
    service_name: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        pattern=r"^[^\s,=]+$",
        description="Service name of the spans, <name>-core when unset (OTEL_SERVICE_NAME).",
    )


class PortsSpec(ApiModel):
    """Listening ports of the core."""

    audio_socket: Port = Field(5001, description="Asterisk AudioSocket TCP port (PORT).")
    http: Port = Field(3000, description="HTTP port: /health, /ready, /metrics, /call (HTTP_PORT).")

    rules = (
        Rule(
            "self.audioSocket != self.http",
            "audioSocket and http ports must differ",
            lambda s: s.audio_socket != s.http,
        ),
    )


class CoreSpec(ApiModel):
    """The AVR core: the worker Asterisk connects to, which drives the providers."""

    image: Image = Field(description="Worker image speaking AVR's core protocols (GET /health, /ready, /metrics).")
    image_pull_policy: PullPolicy | None = Field(None, description="When to pull the image.")
    replicas: int = Field(
        3,
        ge=0,
        le=1000,
        description="Pods when autoscaling is disabled (ignored while the HPA owns replicas).",
    )
    resources: Resources = resources_field(
        {"cpu": "1", "memory": "1Gi"},
        {"cpu": "2", "memory": "2Gi"},
        "CPU and memory of each core pod (default: requests 1 CPU / 1Gi, limits 2 CPU / 2Gi).",
    )
    audio: AudioSpec = sub(AudioSpec, "Audio format and analysis windows.")
    connection: ConnectionSpec = sub(ConnectionSpec, "Connections to the providers.")
    cache: CacheSpec = sub(CacheSpec, "TTS audio cache.")
    rate_limit: RateLimitSpec = sub(RateLimitSpec, "Per-client request rate limit.")
    max_concurrent_calls: int = Field(
        500,
        ge=1,
        le=100000,
        description="Calls one pod accepts; /ready fails at capacity (MAX_CONCURRENT_CALLS).",
    )
    logging: LoggingSpec = sub(LoggingSpec, "Logging.")
    drain: DrainSpec = sub(DrainSpec, "Call draining on shutdown.")
    scale_in: ScaleInSpec = sub(ScaleInSpec, "Which pods go first when the core scales in.")
    webhook: WebhookSpec | None = Field(None, description="Call event webhook; unset disables it.")
    tracing: TracingSpec | None = Field(None, description="OpenTelemetry tracing of the calls; unset disables it.")
    api_token_secret_ref: SecretKeyRef | None = Field(
        None,
        description=(
            "Secret key holding the token every POST of the worker's HTTP API (/call, /cache/prewarm, the peers' "
            "claims) must carry as Authorization: Bearer <token> (API_TOKEN); unset: no authentication."
        ),
    )
    ports: PortsSpec = sub(PortsSpec, "Listening ports.")
    env: tuple[EnvVar, ...] = env_field("core")
    env_from: tuple[EnvFromSource, ...] = env_from_field("core")
    run_as_user: int = Field(1000, ge=1, le=2147483647, description="Non-root user id the containers run as.")


# --- providers ---------------------------------------------------------------------------------------------


#: Both autoscaling specs (core and providers) share this bound; one rule, one message.
MIN_NOT_ABOVE_MAX = Rule(
    "self.minReplicas <= self.maxReplicas",
    "minReplicas must not exceed maxReplicas",
    lambda s: s.min_replicas <= s.max_replicas,
)


class ProviderAutoscalingSpec(ApiModel):
    """CPU-based autoscaling of a provider (providers export no queue metric)."""

    enabled: bool = Field(False, description="Create a HorizontalPodAutoscaler for this provider.")
    min_replicas: int = Field(1, ge=1, le=1000, description="Fewest pods.")
    max_replicas: int = Field(5, ge=1, le=1000, description="Most pods.")
    target_cpu_utilization: int = Field(70, ge=1, le=100, description="Target average CPU use, % of requests.")

    rules = (MIN_NOT_ABOVE_MAX,)


class ProviderSpec(ApiModel):
    """One AVR provider container (AVR's own images, e.g. agentvoiceresponse/avr-sts-openai)."""

    image: Image = Field(description="Provider image, e.g. agentvoiceresponse/avr-sts-openai.")
    image_pull_policy: PullPolicy | None = Field(None, description="When to pull the image.")
    args: tuple[Annotated[str, StringConstraints(max_length=1024)], ...] = Field(
        default_factory=tuple,
        max_length=32,
        description=(
            "Arguments to the image's entrypoint, replacing its default command (e.g. the worker image's "
            "reference provider: [provider, sts, --host, 0.0.0.0]); empty keeps the image's own."
        ),
    )
    port: Port = Field(description="Port the provider listens on (passed to it as PORT).")
    replicas: int = Field(1, ge=0, le=1000, description="Pods when autoscaling is disabled.")
    resources: Resources = resources_field(
        {"cpu": "250m", "memory": "256Mi"},
        {"cpu": "1", "memory": "1Gi"},
        "CPU and memory of each provider pod (default: requests 250m / 256Mi, limits 1 CPU / 1Gi).",
    )
    env: tuple[EnvVar, ...] = env_field("provider")
    env_from: tuple[EnvFromSource, ...] = env_from_field("provider")
    autoscaling: ProviderAutoscalingSpec = sub(ProviderAutoscalingSpec, "CPU autoscaling.")
    drain_seconds: int = Field(
        300,
        ge=0,
        le=86400,
        description=(
            "Seconds a terminating provider pod keeps serving the connections it has, out of the Service "
            "endpoints (a preStop sleep: AVR's provider images exit at once on SIGTERM); 0 disables it."
        ),
    )
    run_as_user: int = Field(1000, ge=1, le=2147483647, description="Non-root user id the container runs as.")


class StsProviderSpec(ProviderSpec):
    """The speech-to-speech provider (AVR ports 6030-6041)."""

    port: Port = Field(6030, description="Port the provider listens on (passed to it as PORT).")


class AsrProviderSpec(ProviderSpec):
    """The speech-to-text provider (AVR port 6010)."""

    port: Port = Field(6010, description="Port the provider listens on (passed to it as PORT).")


class LlmProviderSpec(ProviderSpec):
    """The language model provider (AVR port 6002)."""

    port: Port = Field(6002, description="Port the provider listens on (passed to it as PORT).")


class TtsProviderSpec(ProviderSpec):
    """The text-to-speech provider (AVR ports 6011/6012)."""

    port: Port = Field(6012, description="Port the provider listens on (passed to it as PORT).")


class ProvidersSpec(ApiModel):
    """Either one speech-to-speech provider, or the ASR, LLM and TTS trio."""

    sts: StsProviderSpec | None = Field(
        None, description="Speech-to-speech provider, wired as STS_URL=ws://<service>:<port>."
    )
    asr: AsrProviderSpec | None = Field(
        None,
        description="Speech recognition, wired as ASR_URL=http://<service>:<port>/speech-to-text-stream.",
    )
    llm: LlmProviderSpec | None = Field(
        None, description="Language model, wired as LLM_URL=http://<service>:<port>/prompt-stream."
    )
    tts: TtsProviderSpec | None = Field(
        None, description="Speech synthesis, wired as TTS_URL=http://<service>:<port>/text-to-speech-stream."
    )

    rules = (
        Rule(
            "has(self.sts) ? !(has(self.asr) || has(self.llm) || has(self.tts))"
            " : (has(self.asr) && has(self.llm) && has(self.tts))",
            "set either providers.sts, or all of providers.asr, providers.llm and providers.tts",
            lambda s: (not (s.asr or s.llm or s.tts)) if s.sts else bool(s.asr and s.llm and s.tts),
        ),
    )

    def items(self) -> list[tuple[str, ProviderSpec]]:
        """The configured providers by role, in wiring order."""
        found = [("sts", self.sts), ("asr", self.asr), ("llm", self.llm), ("tts", self.tts)]
        return [(role, p) for role, p in found if p is not None]


# --- scaling, rollout, availability, service ---------------------------------------------------------


class ScalingPolicy(ApiModel):
    """At most `value` pods (or percent) changed per `periodSeconds`."""

    type: Literal["Pods", "Percent"] = Field(description="Whether value counts pods or a percentage.")
    value: int = Field(ge=1, le=10000, description="Pods or percent per period.")
    period_seconds: int = Field(ge=1, le=1800, description="Length of the period.")


class ScalingRules(ApiModel):
    """How fast the HPA may scale in one direction; unset fields take the HPA's own defaults."""

    stabilization_window_seconds: int | None = Field(
        None, ge=0, le=3600, description="Past recommendations considered, to avoid flapping."
    )
    select_policy: Literal["Max", "Min", "Disabled"] | None = Field(
        None, description="Which policy wins when several apply; Disabled forbids this direction."
    )
    policies: tuple[ScalingPolicy, ...] | None = Field(
        None, min_length=1, max_length=10, description="Limits on the rate of change."
    )


_SCALE_UP = {
    "stabilizationWindowSeconds": 0,
    "selectPolicy": "Max",
    "policies": [
        {"type": "Percent", "value": 100, "periodSeconds": 30},
        {"type": "Pods", "value": 4, "periodSeconds": 30},
    ],
}
_SCALE_DOWN = {
    "stabilizationWindowSeconds": 300,
    "selectPolicy": "Min",
    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
}


def _rules_field(default: dict[str, Any], description: str) -> Any:
    return Field(
        default_factory=lambda: ScalingRules.model_validate(default),
        description=description,
        json_schema_extra={"default": default},
    )


class BehaviorSpec(ApiModel):
    """Scaling speed: up fast when calls queue, down slowly because every removed pod drains its calls."""

    scale_up: ScalingRules = _rules_field(_SCALE_UP, "Scale-up rules (default: double or +4 pods per 30 s).")
    scale_down: ScalingRules = _rules_field(
        _SCALE_DOWN, "Scale-down rules (default: -1 pod per minute after 5 minutes of lower load)."
    )


class KedaSpec(ApiModel):
    """Where KEDA's Prometheus scaler reads the core's queue (engine keda)."""

    server_address: str = Field(
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="Prometheus server KEDA queries, e.g. http://prometheus.monitoring:9090.",
    )
    query: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description=(
            "PromQL giving the core's total avr_queue_length; default "
            'sum(avr_queue_length{namespace="<namespace>",pod=~"<name>-core-<hash>-<id>"}). KEDA divides it by '
            "the per-pod target."
        ),
    )


class AutoscalingSpec(ApiModel):
    """Horizontal autoscaling of the core on its call queue (`avr_queue_length`) and optionally CPU."""

    enabled: bool = Field(False, description="Create a HorizontalPodAutoscaler; it then owns the core's replicas.")
    min_replicas: int = Field(3, ge=1, le=1000, description="Fewest core pods.")
    max_replicas: int = Field(10, ge=1, le=1000, description="Most core pods.")
    target_utilization: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description=(
            "Target share of core.maxConcurrentCalls in use per pod, 0.7 when unset: the autoscaler aims at an "
            "average avr_queue_length (calls in progress plus calls waiting) of maxConcurrentCalls x this."
        ),
    )
    target_queue_length: Quantity | None = Field(
        None,
        description=(
            "Explicit target average of the Pods metric avr_queue_length per pod, instead of targetUtilization "
            "(needs a custom metrics adapter)."
        ),
    )
    target_cpu_utilization: int | None = Field(
        None, ge=1, le=100, description="Optional target average CPU use, % of requests."
    )
    behavior: BehaviorSpec = sub(BehaviorSpec, "Scale-up and scale-down speed.")
    engine: Literal["hpa", "keda"] = Field(
        "hpa",
        description=(
            "hpa: an autoscaling/v2 HorizontalPodAutoscaler on the Pods metric (needs a custom metrics adapter); "
            "keda: a KEDA ScaledObject (keda.sh/v1alpha1) querying Prometheus, same target (needs KEDA)."
        ),
    )
    keda: KedaSpec | None = Field(None, description="KEDA's Prometheus scaler; required with engine keda.")

    rules = (
        MIN_NOT_ABOVE_MAX,
        Rule(
            "self.engine == 'keda' ? has(self.keda) : !has(self.keda)",
            "keda is required with engine keda, and only used with it",
            lambda s: (s.keda is not None) == (s.engine == "keda"),
            field="keda",
        ),
        Rule(
            "!(has(self.targetQueueLength) && has(self.targetUtilization))",
            "set targetQueueLength or targetUtilization, not both",
            lambda s: s.target_queue_length is None or s.target_utilization is None,
            field="targetQueueLength",
        ),
    )


class RolloutSpec(ApiModel):
    """Rolling updates: the guide's "parallelism 2, 10 s delay" without ever lowering capacity."""

    max_surge: IntOrPercent = Field(2, description="Extra pods started at once during an update.")
    max_unavailable: IntOrPercent = Field(0, description="Pods that may be unavailable during an update.")
    min_ready_seconds: int = Field(
        10, ge=0, le=3600, description="Seconds a new pod must be ready before the next step."
    )

    rules = (
        Rule(
            "!(string(self.maxSurge) in ['0', '0%'] && string(self.maxUnavailable) in ['0', '0%'])",
            "maxSurge and maxUnavailable must not both be zero",
            lambda s: not (_zero(s.max_surge) and _zero(s.max_unavailable)),
        ),
    )


class AvailabilitySpec(ApiModel):
    """PodDisruptionBudgets (one per component) limiting voluntary evictions such as node drains."""

    enabled: bool = Field(False, description="Create a PodDisruptionBudget for each component.")
    min_available: IntOrPercent | None = Field(None, description="Pods that must stay available.")
    max_unavailable: IntOrPercent | None = Field(
        None, description="Pods that may be evicted at once (default 1 when neither field is set)."
    )

    rules = (
        Rule(
            "!(has(self.minAvailable) && has(self.maxUnavailable))",
            "set minAvailable or maxUnavailable, not both",
            lambda s: not (s.min_available is not None and s.max_unavailable is not None),
        ),
    )


class ServiceSpec(ApiModel):
    """The core's Service (AudioSocket and HTTP ports)."""

    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field("ClusterIP", description="Service type.")
    session_affinity: Literal["None", "ClientIP"] = Field(
        "None", description="ClientIP keeps a client on one pod (sticky sessions for /call then AudioSocket)."
    )
    session_affinity_timeout_seconds: int | None = Field(
        None, ge=1, le=86400, description="How long ClientIP stickiness lasts (Kubernetes default 10800)."
    )
    external_traffic_policy: Literal["Cluster", "Local"] | None = Field(
        None, description="Local keeps the client's source IP (NodePort and LoadBalancer only)."
    )
    annotations: dict[str, Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=dict,
        max_length=50,
        description="Annotations of the Service (e.g. load balancer settings).",
    )

    rules = (
        Rule(
            "!has(self.sessionAffinityTimeoutSeconds) || self.sessionAffinity == 'ClientIP'",
            "sessionAffinityTimeoutSeconds needs sessionAffinity ClientIP",
            lambda s: s.session_affinity_timeout_seconds is None or s.session_affinity == "ClientIP",
        ),
        Rule(
            "!has(self.externalTrafficPolicy) || self.type != 'ClusterIP'",
            "externalTrafficPolicy needs type NodePort or LoadBalancer",
            lambda s: s.external_traffic_policy is None or s.type != "ClusterIP",
        ),
    )


# --- network policy, monitoring ------------------------------------------------------------------------


class IpBlock(ApiModel):
    """A range of addresses (CIDR), optionally with holes."""

    cidr: Cidr = Field(description="Addresses allowed, e.g. 10.20.0.0/24 or 2001:db8::/64.")
    except_: tuple[Cidr, ...] = Field(
        default_factory=tuple, alias="except", max_length=20, description="Ranges inside cidr that are not allowed."
    )


class NetworkPeer(ApiModel):
    """Who may connect: an ipBlock, or pods chosen by podSelector and/or namespaceSelector (a NetworkPolicyPeer).

    podSelector alone means pods of this namespace; namespaceSelector alone every pod of those namespaces; both,
    the matching pods of the matching namespaces.
    """

    ip_block: IpBlock | None = Field(None, description="Addresses, e.g. the PBX's, outside or inside the cluster.")
    pod_selector: LabelSelector | None = Field(
        None, description="Pods (of this namespace, unless namespaceSelector is set too)."
    )
    namespace_selector: LabelSelector | None = Field(
        None,
        description="Namespaces, e.g. {matchLabels: {kubernetes.io/metadata.name: monitoring}}; {} means every one.",
    )

    rules = (
        Rule(
            "has(self.ipBlock) ? !(has(self.podSelector) || has(self.namespaceSelector))"
            " : (has(self.podSelector) || has(self.namespaceSelector))",
            "set ipBlock, or podSelector and/or namespaceSelector",
            lambda s: (
                not (s.pod_selector or s.namespace_selector)
                if s.ip_block
                else (s.pod_selector is not None or s.namespace_selector is not None)
            ),
        ),
    )


def _peers_field(description: str) -> Any:
    # The default is written into the CRD too: the CEL rule below reads the list even when it is left out.
    return Field(default_factory=tuple, max_length=50, description=description, json_schema_extra={"default": []})


class NetworkPolicySpec(ApiModel):
    """NetworkPolicies limiting who reaches the pods (ingress only; enforced only by a CNI that supports them)."""

    enabled: bool = Field(
        False,
        description=(
            "Create NetworkPolicies: the core's ports only from the peers below (HTTP also from the core pods), "
            "each provider's port only from the core pods."
        ),
    )
    audio_socket_from: tuple[NetworkPeer, ...] = _peers_field(
        "Who may open AudioSocket connections to the core (the PBX); required when enabled."
    )
    http_from: tuple[NetworkPeer, ...] = _peers_field(
        "Who may reach the core's HTTP port besides the core pods: the PBX for POST /call, Prometheus for /metrics. "
        "Empty: only the core pods (and the kubelet's probes)."
    )

    rules = (
        Rule(
            "!self.enabled || size(self.audioSocketFrom) > 0",
            "audioSocketFrom needs at least one peer when enabled (else no call reaches the core)",
            lambda s: not s.enabled or len(s.audio_socket_from) > 0,
            field="audioSocketFrom",
        ),
    )


Duration = Annotated[str, Field(max_length=32, pattern=r"^([0-9]+(ms|s|m|h))+$")]
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(duration: str) -> float:
    """A Prometheus-style duration (1m30s, 500ms) in seconds, as CEL's duration() reads it."""
    return sum(int(n) * _UNITS[unit] for n, unit in re.findall(r"([0-9]+)(ms|s|m|h)", duration))


class PodMonitorSpec(ApiModel):
    """A prometheus-operator PodMonitor scraping the core pods' /metrics."""

    enabled: bool = Field(
        False,
        description="Create a PodMonitor (monitoring.coreos.com/v1) for the core pods; needs prometheus-operator.",
    )
    interval: Duration = Field("30s", description="How often Prometheus scrapes each core pod.")
    scrape_timeout: Duration = Field("10s", description="Timeout of one scrape; at most interval.")
    labels: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict,
        max_length=20,
        description="Extra labels of the PodMonitor, e.g. the one your Prometheus selects PodMonitors by.",
    )

    rules = (
        Rule(
            "duration(self.scrapeTimeout) <= duration(self.interval)",
            "scrapeTimeout must not exceed interval",
            lambda s: _seconds(s.scrape_timeout) <= _seconds(s.interval),
            field="scrapeTimeout",
        ),
    )


class MonitoringSpec(ApiModel):
    """How Prometheus finds the core's metrics (the pods also carry prometheus.io/* annotations)."""

    pod_monitor: PodMonitorSpec = sub(PodMonitorSpec, "A prometheus-operator PodMonitor of the core pods.")


class AVRDeploymentSpec(ApiModel):
    """Desired state of an AVR stack: a core, its providers, and how they scale, roll out and are reached."""

    core: CoreSpec = Field(description="The core (worker) Asterisk connects to.")
    providers: ProvidersSpec = Field(description="AI providers: sts, or asr + llm + tts.")
    autoscaling: AutoscalingSpec = sub(AutoscalingSpec, "Autoscaling of the core.")
    rollout: RolloutSpec = sub(RolloutSpec, "Rolling update strategy of every component.")
    availability: AvailabilitySpec = sub(AvailabilitySpec, "PodDisruptionBudgets.")
    service: ServiceSpec = sub(ServiceSpec, "The core's Service.")
    network_policy: NetworkPolicySpec = sub(NetworkPolicySpec, "NetworkPolicies of the core and the providers.")
    monitoring: MonitoringSpec = sub(MonitoringSpec, "Prometheus scraping of the core.")
    image_pull_secrets: tuple[ImagePullSecret, ...] = Field(
        default_factory=tuple, max_length=10, description="Secrets used to pull every component's image."
    )
