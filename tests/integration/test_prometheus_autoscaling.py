"""The autoscaling signal end to end: real workers' /metrics -> Prometheus -> prometheus-adapter (with the chart's
rules file) -> the HPA controller -> the Deployment's replicas.

Every other HPA test writes values into the test adapter by hand; this one lets calls drive them. Each kwok pod
of the Deployment stands for one worker process on loopback (`avr-runtime serve` with the echo provider
`avr-runtime provider sts`): Prometheus scrapes that worker under the pod's namespace and name, so the adapter
serves `avr_queue_length` of exactly the pods the HPA selects. The Deployment and the HPA are the operator's own
rendering of an AVRDeployment (applied directly: the operator's reconciling is tested elsewhere). Calls ramp
one at a time, each to the least busy ready pod's worker, as a Service would spread them; the HPA must add pods
before any worker reaches its cap (MAX_CONCURRENT_CALLS) and refuses a call, and remove them once the calls
end.

`avr_queue_length` counts the calls in the system on a pod (in progress plus waiting): the calls placed are
what the HPA sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from procs import Proc, free_port, spawn, wait_healthy

from avr_devcluster.binaries import MissingBinariesError
from avr_devcluster.prometheus import PrometheusMetrics, Target
from avr_devcluster.testing import ClusterUnderTest, in_ci
from avr_operator.api.resource import AVRDeployment
from avr_operator.render.bundle import render
from avr_operator.render.names import CORE, child_name
from avr_runtime.protocol import audiosocket as wire

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts" / "avr-operator" / "files" / "prometheus-adapter-rules.yaml"
QUEUE_METRIC = "avr_queue_length"
CAP = 10  # MAX_CONCURRENT_CALLS of each worker
TARGET = 4  # the HPA's averageValue of avr_queue_length per pod
MAX_REPLICAS = 3
CALLS = 12  # ceil(12 / TARGET) = MAX_REPLICAS
CALL_SPACING = 1.5  # seconds between two new calls: a gradual ramp
SCALE_DOWN_WINDOW = 5
FRAME = bytes(320)  # 20 ms of slin silence


# --- fixtures ---


@pytest.fixture
def prometheus(cluster: ClusterUnderTest) -> Iterator[PrometheusMetrics]:
    """Prometheus and prometheus-adapter serving the custom metrics API for the length of one test."""
    local = cluster.require_local()
    try:
        stack = PrometheusMetrics(local, RULES)
    except MissingBinariesError as error:
        if in_ci():
            pytest.fail(f"the Prometheus autoscaling test must run in CI, but: {error}", pytrace=False)
        pytest.skip(str(error))
    with stack:
        yield stack


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[Proc]]:
    """Processes started by the test, killed at the end whatever happened."""
    procs: list[Proc] = []
    yield procs
    for proc in procs:
        if proc.popen.poll() is None:
            proc.popen.kill()
        with contextlib.suppress(Exception):
            proc.popen.wait(timeout=10)


def _provider(procs: list[Proc], tmp: Path) -> Proc:
    port = free_port()
    proc = spawn(["provider", "sts", "--port", str(port)], dict(os.environ), tmp, f"provider-{port}")
    proc.ports["http"] = port
    procs.append(proc)
    wait_healthy(proc, proc.url("/health"))
    return proc


def _worker(procs: list[Proc], tmp: Path, sts_url: str, **extra: str) -> Proc:
    as_port, http_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.endswith("_URL") and k not in ("PORT", "HTTP_PORT")}
    env |= {
        "HOST": "127.0.0.1",
        "PORT": str(as_port),
        "HTTP_PORT": str(http_port),
        "STS_URL": sts_url,
        "MAX_CONCURRENT_CALLS": str(CAP),
        "RATE_LIMIT": "10000",
        "LOG_LEVEL": "warning",
        "LOG_FORMAT": "text",
        "DRAIN_TIMEOUT": "1",
        **extra,
    }
    proc = spawn(["serve"], env, tmp, f"worker-{as_port}")
    proc.ports |= {"http": http_port, "audiosocket": as_port}
    procs.append(proc)
    wait_healthy(proc, proc.url("/health"))
    return proc


# --- calls ---


@dataclass
class HeldCall:
    """A call that streams silence like Asterisk until told to hang up."""

    worker: Proc
    hangup: asyncio.Event = field(default_factory=asyncio.Event)
    errors: list[int] = field(default_factory=list)
    closed_by_worker: bool = False
    task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.worker.ports["audiosocket"])
        parser = wire.FrameParser()

        async def receive() -> None:
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    for frame in parser.feed(data):
                        if frame.kind is wire.Kind.ERROR:
                            self.errors.append(frame.payload[0] if frame.payload else -1)
            self.closed_by_worker = not self.hangup.is_set()

        receiver = asyncio.create_task(receive())
        try:
            writer.write(wire.uuid_frame(uuid.uuid4()))
            start = time.monotonic()
            sent = 0
            while not self.hangup.is_set() and not receiver.done() and time.monotonic() - start < 180:
                writer.write(wire.audio_frame(FRAME))
                sent += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.hangup.wait(), max(0.0, start + sent * 0.02 - time.monotonic()))
            if not receiver.done():
                writer.write(wire.HANGUP_FRAME)
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(receiver), 5)
        finally:
            receiver.cancel()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @property
    def refused(self) -> bool:
        return bool(self.errors) or self.closed_by_worker


# --- Kubernetes side ---


def _stack(namespace: str) -> list[dict[str, Any]]:
    """The core's ConfigMap, Deployment and HPA exactly as the operator renders them for examples/sts-openai.yaml
    with autoscaling on avr_queue_length (type Pods, averageValue) and fast scaling rules: up at once, down
    after a short stabilisation window. (Only the core: its pods are the ones the HPA measures.)"""
    body = yaml.safe_load((ROOT / "examples" / "sts-openai.yaml").read_text())
    body["metadata"]["namespace"] = namespace
    spec = body["spec"]
    spec["autoscaling"] = {
        "enabled": True,
        "minReplicas": 1,
        "maxReplicas": MAX_REPLICAS,
        "targetQueueLength": TARGET,
        "behavior": {
            "scaleUp": {
                "stabilizationWindowSeconds": 0,
                "policies": [{"type": "Pods", "value": MAX_REPLICAS, "periodSeconds": 1}],
            },
            "scaleDown": {
                "stabilizationWindowSeconds": SCALE_DOWN_WINDOW,
                "policies": [{"type": "Percent", "value": 100, "periodSeconds": 1}],
            },
        },
    }
    spec["core"]["drain"] = {"timeoutSeconds": 0, "preStopSeconds": 0}
    # the pods' own ServiceAccount for their deletion cost is not applied here: the workers run outside the pods
    spec["core"]["scaleIn"] = {"deletionCost": False}
    spec["rollout"] = {"minReadySeconds": 0}
    owner = AVRDeployment.from_body(body)
    core = child_name(owner, CORE)
    wanted = {("ConfigMap", core), ("Deployment", core), ("HorizontalPodAutoscaler", core)}
    manifests = [m for m in render(owner) if (m["kind"], m["metadata"]["name"]) in wanted]
    assert len(manifests) == len(wanted), [m["kind"] for m in render(owner)]
    (hpa,) = [m for m in manifests if m["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": QUEUE_METRIC},
                "target": {"type": "AverageValue", "averageValue": str(TARGET)},
            },
        }
    ]
    return manifests


def _apply(api: client.ApiClient, manifests: list[dict[str, Any]]) -> tuple[str, str]:
    """Create the manifests; returns the core Deployment's name and its pods' label selector."""
    core: Any = client.CoreV1Api(api)
    apps: Any = client.AppsV1Api(api)
    hpas: Any = client.AutoscalingV2Api(api)
    deployment = ("", "")
    for m in manifests:
        namespace = m["metadata"]["namespace"]
        if m["kind"] == "ConfigMap":
            core.create_namespaced_config_map(namespace, m)
        elif m["kind"] == "Deployment":
            apps.create_namespaced_deployment(namespace, m)
            labels = m["spec"]["selector"]["matchLabels"]
            deployment = (m["metadata"]["name"], ",".join(f"{k}={v}" for k, v in sorted(labels.items())))
        else:
            hpas.create_namespaced_horizontal_pod_autoscaler(namespace, m)
    return deployment


def _ready_pods(core: Any, namespace: str, selector: str) -> list[str]:
    pods = core.list_namespaced_pod(namespace, label_selector=selector).items
    ready = []
    for pod in pods:
        conditions = (pod.status and pod.status.conditions) or []
        if pod.metadata.deletion_timestamp is None and any(
            c.type == "Ready" and c.status == "True" for c in conditions
        ):
            ready.append(pod.metadata.name)
    return sorted(ready)


@dataclass
class Sample:
    t: float
    calls: int
    per_pod: dict[str, int]
    replicas: int
    metric: str


class Rig:
    """Binds ready pods to free workers (and Prometheus targets), routes calls, and records the timeline."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        target: tuple[str, str],
        workers: list[Proc],
        stack: PrometheusMetrics,
    ) -> None:
        self.name, self.selector = target
        self.core: Any = client.CoreV1Api(api)
        self.apps: Any = client.AppsV1Api(api)
        self.hpas: Any = client.AutoscalingV2Api(api)
        self.namespace = namespace
        self.free = list(workers)
        self.bound: dict[str, Proc] = {}
        self.stack = stack
        self.calls: list[HeldCall] = []
        self.timeline: list[Sample] = []
        self.start = time.monotonic()
        self.max_replicas_seen = 1

    def sync(self) -> None:
        """Follow the Deployment's ready pods: a new one gets a free worker, a gone one frees its worker."""
        ready = _ready_pods(self.core, self.namespace, self.selector)
        for pod in [p for p in self.bound if p not in ready]:
            self.free.append(self.bound.pop(pod))
        for pod in ready:
            if pod not in self.bound:
                assert self.free, f"more ready pods than workers: {ready}"
                self.bound[pod] = self.free.pop(0)
        self.stack.set_targets(
            [Target(f"127.0.0.1:{w.ports['http']}", self.namespace, pod) for pod, w in self.bound.items()]
        )

    def live(self, worker: Proc) -> int:
        return sum(1 for c in self.calls if c.worker is worker and c.task is not None and not c.task.done())

    def per_pod(self) -> dict[str, int]:
        return {pod: self.live(worker) for pod, worker in sorted(self.bound.items())}

    def place(self) -> HeldCall:
        """A new call to the least busy bound pod's worker."""
        pod = min(self.bound, key=lambda p: (self.live(self.bound[p]), p))
        call = HeldCall(self.bound[pod])
        call.task = asyncio.create_task(call.run())
        self.calls.append(call)
        return call

    def sample(self) -> Sample:
        replicas = int(self.apps.read_namespaced_deployment(self.name, self.namespace).spec.replicas)
        self.max_replicas_seen = max(self.max_replicas_seen, replicas)
        status = self.hpas.read_namespaced_horizontal_pod_autoscaler(self.name, self.namespace).status
        metric = "-"
        for current in (status and status.current_metrics) or []:
            if current.pods is not None:
                metric = str(current.pods.current.average_value)
        per_pod = self.per_pod()
        sample = Sample(round(time.monotonic() - self.start, 1), sum(per_pod.values()), per_pod, replicas, metric)
        self.timeline.append(sample)
        return sample

    def report(self) -> str:
        lines = ["   t  calls  replicas  hpa-avg  calls per ready pod"]
        for s in self.timeline:
            per_pod = " ".join(str(n) for n in s.per_pod.values())
            lines.append(f"{s.t:5.1f}  {s.calls:5d}  {s.replicas:8d}  {s.metric:>7}  {per_pod}")
        return "\n".join(lines)


def _utilization_served(rig: Rig, stack: PrometheusMetrics) -> bool:
    """The chart's second rule: the custom metrics API serves each pod's avr_call_utilization, the share of its
    slots in use. (True at once for a worker without that gauge, which came with the current avr_queue_length.)"""
    if not any(line.startswith("avr_call_utilization ") for line in _metrics_text(next(iter(rig.bound.values())))):
        return True
    path = f"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{rig.namespace}/pods/*/avr_call_utilization"
    items = stack.cluster.api().get(path).get("items", [])
    served = {item["describedObject"]["name"]: _quantity(item["value"]) for item in items}
    wanted = {pod: rig.live(worker) / CAP for pod, worker in rig.bound.items()}
    return served.keys() == wanted.keys() and all(abs(served[p] - wanted[p]) < 0.01 for p in wanted)


def _metrics_text(worker: Proc) -> list[str]:
    with urllib.request.urlopen(worker.url("/metrics"), timeout=5) as response:
        return str(response.read().decode()).splitlines()


def _quantity(value: str) -> float:
    """A Kubernetes quantity as the adapter writes it: plain, or in milli-units."""
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


async def _until(check: Any, limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {limit:.0f}s waiting for {what}")
        await asyncio.sleep(0.2)


# --- the test ---


def test_hpa_scales_on_scraped_queue_length(
    prometheus: PrometheusMetrics,
    api_client: client.ApiClient,
    namespace: str,
    started: list[Proc],
    tmp_path: Path,
) -> None:
    provider = _provider(started, tmp_path)
    echo_url = f"ws://127.0.0.1:{provider.ports['http']}"
    workers = [_worker(started, tmp_path, echo_url) for _ in range(MAX_REPLICAS)]
    target = _apply(api_client, _stack(namespace))
    rig = Rig(api_client, namespace, target, workers, prometheus)
    try:
        asyncio.run(_scenario(rig, prometheus, namespace))
    except BaseException:
        print(rig.report())
        print(prometheus.logs())
        raise
    print(rig.report())


async def _scenario(rig: Rig, stack: PrometheusMetrics, namespace: str) -> None:
    def one_pod_served() -> bool:
        rig.sync()
        return len(rig.bound) == 1 and bool(stack.query(f'{QUEUE_METRIC}{{namespace="{namespace}"}}'))

    await _until(one_pod_served, 60, "the first pod's worker to be scraped")
    await _until(lambda: rig.sample().metric != "-", 60, "the HPA to read avr_queue_length through the adapter")

    # Ramp: one call every CALL_SPACING seconds, to the least busy ready pod.
    first_scale_up: Sample | None = None
    next_call = time.monotonic()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        await asyncio.to_thread(rig.sync)
        sample = await asyncio.to_thread(rig.sample)
        if first_scale_up is None and sample.replicas > 1:
            first_scale_up = sample
        refused = [c for c in rig.calls if c.refused]
        assert not refused, f"{len(refused)} calls refused at the cap (errors {refused[0].errors})"
        if len(rig.calls) < CALLS and time.monotonic() >= next_call:
            rig.place()
            next_call += CALL_SPACING
        if len(rig.calls) == CALLS and sample.replicas == MAX_REPLICAS and len(rig.bound) == MAX_REPLICAS:
            break
        await asyncio.sleep(0.25)
    else:
        raise AssertionError(f"no scale-up to {MAX_REPLICAS} replicas while {CALLS} calls ramped")
    assert first_scale_up is not None
    # The HPA added a pod while the first worker still had free slots: it reacted before any call was refused.
    assert max(first_scale_up.per_pod.values()) < CAP, first_scale_up

    # Hold the load a moment: it stays scaled, and nothing is refused.
    hold_until = time.monotonic() + 3
    while time.monotonic() < hold_until:
        await asyncio.to_thread(rig.sync)
        assert (await asyncio.to_thread(rig.sample)).replicas == MAX_REPLICAS
        await asyncio.sleep(0.5)
    for worker in rig.bound.values():
        assert worker.metric("avr_calls_refused_total", {"reason": "at_capacity"}) == 0
    await _until(lambda: _utilization_served(rig, stack), 20, "avr_call_utilization through the custom metrics API")

    # The calls end: back to one replica, after the scale-down stabilisation window.
    for call in rig.calls:
        call.hangup.set()
    await asyncio.wait_for(asyncio.gather(*(c.task for c in rig.calls if c.task is not None)), 30)
    ended = time.monotonic()
    assert not [c for c in rig.calls if c.refused]

    def scaled_down() -> bool:
        rig.sync()
        return rig.sample().replicas == 1

    await _until(scaled_down, 90, "the HPA to scale down to 1 replica")
    assert time.monotonic() - ended >= SCALE_DOWN_WINDOW - 1
    assert rig.max_replicas_seen == MAX_REPLICAS
