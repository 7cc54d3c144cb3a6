"""The product as a user deploys it: `helm install` of the chart with the built operator image, one
AVRDeployment with the built worker image and its reference echo provider, real pods behind real Services.

The tests share one installation and run in file order: install, calls, rollout, scale-down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from echo_check import assert_echoed, frames_of
from node_tier import NodeCluster, http_text, wait_until

from avr_runtime.client.audiosocket import CallResult, place_call
from avr_runtime.client.speech import sample_speech

pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[2]
ROOT_CHART = str(ROOT / "charts" / "avr-operator")
SYSTEM = "avr-system"
APP = "avr-calls"
NAME = "agent"
CORE = f"{NAME}-core"
STS = f"{NAME}-sts"
ROLLED = [{"name": "ROLLOUT", "value": "2"}]  # a spec change that rolls the core's pods
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


def avr_deployment(runtime_image: str, replicas: int, **core: Any) -> dict[str, Any]:
    small = {"requests": {"cpu": "50m", "memory": "96Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}
    return {
        "apiVersion": "avr.agentvoiceresponse.com/v1alpha1",
        "kind": "AVRDeployment",
        "metadata": {"name": NAME, "namespace": APP},
        "spec": {
            "core": {
                "image": runtime_image,
                "replicas": replicas,
                "resources": small,
                "maxConcurrentCalls": 40,
                "drain": {"timeoutSeconds": 90, "preStopSeconds": 2},
                **core,
            },
            "providers": {
                "sts": {
                    "image": runtime_image,
                    "args": ["provider", "sts", "--host", "0.0.0.0"],
                    "port": 6030,
                    "resources": small,
                    "drainSeconds": 0,
                }
            },
        },
    }


def _name(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["name"])


@dataclass
class Stack:
    cluster: NodeCluster

    def apply(self, body: dict[str, Any]) -> None:
        self.cluster.kubectl("apply", "-f", "-", stdin=json.dumps(body))

    def core_pods(self) -> list[dict[str, Any]]:
        pods = self.cluster.get(
            "pods", "-n", APP, "-l", f"app.kubernetes.io/instance={NAME},app.kubernetes.io/component=core"
        )
        return [p for p in pods["items"] if p["metadata"].get("deletionTimestamp") is None]

    def ready_core_pods(self) -> list[dict[str, Any]]:
        def ready(pod: dict[str, Any]) -> bool:
            conditions = pod.get("status", {}).get("conditions") or []
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        return [p for p in self.core_pods() if ready(p)]

    def resource_ready(self) -> bool:
        body = self.cluster.get("avrdeployment", "-n", APP, NAME)
        conditions = body.get("status", {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def wait_ready(self, replicas: int, timeout: float = 300) -> list[dict[str, Any]]:
        def settled() -> list[dict[str, Any]] | None:
            pods = self.ready_core_pods()
            if len(pods) == replicas and len(self.core_pods()) == replicas and self.resource_ready():
                return pods
            return None

        result: list[dict[str, Any]] = wait_until(f"{replicas} ready core pods", settled, timeout, interval=2)
        return result

    def metric(self, pod: dict[str, Any], name: str) -> float:
        text = http_text(f"http://{pod['status']['podIP']}:3000/metrics")
        total = 0.0
        for line in text.splitlines():
            if re.match(rf"{name}(\{{|\s)", line):
                total += float(line.rsplit(" ", 1)[1])
        return total


@pytest.fixture(scope="module")
def stack(nodes: NodeCluster) -> Iterator[Stack]:
    if not nodes.direct:
        pytest.skip("these tests reach pods and Services from the test process; kind's are inside Docker")
    for namespace in (SYSTEM, APP):
        nodes.kubectl("create", "namespace", namespace)
        nodes.kubectl("label", "namespace", namespace, *(f"{k}={v}" for k, v in RESTRICTED.items()))
    repository, tag = nodes.images.split(nodes.images.operator)
    nodes.helm(
        "install", "avr", ROOT_CHART, "--namespace", SYSTEM, "--wait", "--timeout", "5m",
        "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
        "--set", "image.pullPolicy=Never",
    )  # fmt: skip
    stack = Stack(nodes)
    stack.apply(avr_deployment(nodes.images.runtime, replicas=3))
    stack.wait_ready(3)
    yield stack
    nodes.kubectl("delete", "namespace", APP, "--wait=true", "--timeout=120s", check=False)
    nodes.helm("uninstall", "avr", "--namespace", SYSTEM, "--wait", check=False)


def test_installed_operator_and_workers_are_ready_under_the_restricted_standard(stack: Stack) -> None:
    cluster = stack.cluster
    (operator,) = cluster.get("pods", "-n", SYSTEM, "-l", "app.kubernetes.io/component=operator")["items"]
    assert operator["status"]["phase"] == "Running"
    assert operator["spec"]["serviceAccountName"] != "default", "the operator runs under its own ServiceAccount"
    pods = cluster.get("pods", "-n", APP)["items"]
    assert {p["metadata"]["labels"]["app.kubernetes.io/component"] for p in pods} == {"core", "sts"}
    for pod in [operator, *pods]:
        for container in pod["spec"]["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, pod["metadata"]["name"]
        # really started by the kubelet, from the locally built images
        for status in pod["status"]["containerStatuses"]:
            assert status["ready"] and status["started"], status
    for namespace in (SYSTEM, APP):
        labels = cluster.get("namespace", namespace)["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    # The standard is enforced: a root pod is refused in the same namespace.
    refused = cluster.kubectl(
        "run", "root", "-n", APP, f"--image={cluster.images.runtime}", "--image-pull-policy=Never",
        "--restart=Never", "--overrides", json.dumps({"spec": {"securityContext": {"runAsUser": 0}}}),
        check=False, errors=True,
    )  # fmt: skip
    assert "violates PodSecurity" in refused, refused
    # each image holds its own side only
    probe = "import importlib.util as u, sys; print(sorted(m for m in sys.argv[1:] if u.find_spec(m)))"
    modules = ["avr_runtime", "avr_operator", "avr_devcluster", "kopf", "kubernetes", "numpy", "opuslib"]
    core = next(p for p in pods if p["metadata"]["labels"]["app.kubernetes.io/component"] == "core")
    found = cluster.kubectl("exec", "-n", APP, _name(core), "--", "python", "-c", probe, *modules)
    assert json.loads(found.replace("'", '"')) == ["avr_runtime", "numpy", "opuslib"]
    found = cluster.kubectl("exec", "-n", SYSTEM, _name(operator), "--", "python", "-c", probe, *modules)
    assert json.loads(found.replace("'", '"')) == ["avr_operator", "kopf", "kubernetes"]
    out = cluster.helm("test", "avr", "--namespace", SYSTEM, "--timeout", "3m")
    assert re.search(r"Phase:\s+Succeeded", out), out


async def _calls(host: str, port: int, audio: bytes, count: int, parallel: int) -> list[CallResult]:
    gate = asyncio.Semaphore(parallel)

    async def one() -> CallResult:
        async with gate:
            return await place_call(host, port, audio, tail_s=0.6)

    return await asyncio.gather(*(one() for _ in range(count)))


def test_calls_through_the_core_service_are_echoed_and_spread_over_the_pods(stack: Stack) -> None:
    cluster = stack.cluster
    pods = stack.ready_core_pods()
    before = {_name(p): stack.metric(p, "avr_calls_started_total") for p in pods}
    speech = sample_speech()
    host, port = cluster.service_address(APP, CORE, "audiosocket")
    results = asyncio.run(_calls(host, port, speech, count=150, parallel=30))
    for result in results:
        assert result.hangup and not result.errors, result.uuid
        assert_echoed(frames_of(speech), result.audio_frames)
    served = {
        p["metadata"]["name"]: stack.metric(p, "avr_calls_started_total") - before[p["metadata"]["name"]] for p in pods
    }
    print(f"calls per pod: {served}")
    assert sum(served.values()) == 150
    assert all(n >= 0.2 * 150 for n in served.values()), served

    # /call metadata through the HTTP Service reaches its call, whichever pod the AudioSocket lands on
    http_host, http_port = cluster.service_address(APP, CORE, "http")
    sts_host, sts_port = cluster.service_address(APP, STS, "sts")
    calls = 12
    for i in range(calls):
        call_id = str(uuid.uuid4())
        request = urllib.request.Request(
            f"http://{http_host}:{http_port}/call",
            data=json.dumps({"uuid": call_id, "payload": {"node": str(i)}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        result = asyncio.run(place_call(host, port, speech[: 320 * 10], call_uuid=call_id))
        assert result.hangup and not result.errors
    stats = json.loads(http_text(f"http://{sts_host}:{sts_port}/stats"))
    assert [stats.get(f"sts_query:node={i}") for i in range(calls)] == [1] * calls, stats


async def _live_calls(host: str, port: int, audio: bytes, count: int, during: Any) -> list[CallResult]:
    """`count` calls of `audio` started together; `during()` runs in a thread once they are all up."""
    tasks = [asyncio.create_task(place_call(host, port, audio, tail_s=0.6)) for _ in range(count)]
    await asyncio.sleep(3)
    await asyncio.to_thread(during)
    return list(await asyncio.gather(*tasks))


def _whole(results: list[CallResult], audio: bytes) -> None:
    """No call cut short: each sent all its audio before its own hangup, and heard its whole echo."""
    frames = -(-len(audio) // 320) + 30  # the last frame padded, then the 0.6 s tail of silence
    for result in results:
        assert result.frames_sent == frames and result.hangup and not result.errors, result
        assert_echoed(frames_of(audio), result.audio_frames)


def test_a_rollout_keeps_live_calls(stack: Stack) -> None:
    cluster = stack.cluster
    long_speech = sample_speech() * 8  # ~20 s
    old = {p["metadata"]["name"] for p in stack.ready_core_pods()}
    host, port = cluster.service_address(APP, CORE, "audiosocket")

    def roll() -> None:
        stack.apply(avr_deployment(cluster.images.runtime, replicas=3, env=ROLLED))

    results = asyncio.run(_live_calls(host, port, long_speech, count=9, during=roll))
    _whole(results, long_speech)
    new = {p["metadata"]["name"] for p in stack.wait_ready(3)}
    assert not new & old, "every pod was replaced"


def test_scale_down_keeps_the_busiest_pod_and_its_calls(stack: Stack) -> None:
    cluster = stack.cluster
    pods = stack.ready_core_pods()
    assert len(pods) == 3
    long_speech = sample_speech() * 6
    busiest, other = pods[0], pods[1]

    async def calls_then_scale() -> list[CallResult]:
        tasks = [
            asyncio.create_task(place_call(p["status"]["podIP"], 5001, long_speech, tail_s=0.6))
            for p in (busiest, busiest, busiest, other)
        ]

        # the worker keeps its pod's deletion cost at its live calls (coalesced): let the annotation land
        def costs_set() -> bool:
            annotated = cluster.get("pod", "-n", APP, busiest["metadata"]["name"])["metadata"].get("annotations", {})
            return bool(annotated.get("controller.kubernetes.io/pod-deletion-cost") == "3")

        await asyncio.to_thread(wait_until, "the busiest pod's deletion cost", costs_set, 20, 0.5)
        await asyncio.to_thread(
            stack.apply, avr_deployment(cluster.images.runtime, replicas=1, env=[{"name": "ROLLOUT", "value": "2"}])
        )
        return list(await asyncio.gather(*tasks))

    results = asyncio.run(calls_then_scale())
    _whole(results, long_speech)
    (kept,) = stack.wait_ready(1)
    assert kept["metadata"]["name"] == busiest["metadata"]["name"]


FAST_SCALING = {
    "scaleUp": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Pods", "value": 4, "periodSeconds": 5}]},
    "scaleDown": {"stabilizationWindowSeconds": 5, "policies": [{"type": "Pods", "value": 2, "periodSeconds": 5}]},
}


def test_the_hpa_follows_calls_on_real_pods_through_prometheus(stack: Stack) -> None:
    """Prometheus scrapes the core pods, prometheus-adapter (the chart's rules) serves avr_queue_length, and the
    HPA the operator made scales the core up as calls ramp and back down when they end."""
    cluster = stack.cluster
    if cluster.local is None:
        pytest.skip("Prometheus and prometheus-adapter run beside the local control plane only")
    from avr_devcluster.prometheus import PrometheusMetrics, Target  # noqa: PLC0415 - the local cluster's extra

    # One pod could hold every call (20), so none is refused while a new pod starts; the HPA aims at 5 per pod.
    autoscaling = {
        "enabled": True,
        "minReplicas": 1,
        "maxReplicas": 3,
        "targetQueueLength": 5,
        "behavior": FAST_SCALING,
    }
    # `autoscaling` sits beside `core` in the spec
    body = avr_deployment(cluster.images.runtime, replicas=1, env=ROLLED, maxConcurrentCalls=20)
    body["spec"]["autoscaling"] = autoscaling
    rules = ROOT / "charts" / "avr-operator" / "files" / "prometheus-adapter-rules.yaml"
    with PrometheusMetrics(cluster.local, rules) as metrics:
        stop = threading.Event()

        def follow_pods() -> None:
            """Scrape every core pod with an address, as a PodMonitor would."""
            while not stop.is_set():
                with contextlib.suppress(AssertionError, ValueError, subprocess.SubprocessError):
                    pods = [p for p in stack.core_pods() if p.get("status", {}).get("podIP")]
                    metrics.set_targets([Target(f"{p['status']['podIP']}:3000", APP, _name(p)) for p in pods])
                stop.wait(1)

        follower = threading.Thread(target=follow_pods, daemon=True)
        follower.start()
        try:
            stack.apply(body)
            stack.wait_ready(1)
            replicas_seen: list[int] = []
            host, port = cluster.service_address(APP, CORE, "audiosocket")
            long_speech = sample_speech() * 24  # ~60 s: the calls outlast the HPA's reaction

            def replicas() -> int:
                deployment = cluster.get("deployment", "-n", APP, CORE)
                return int(deployment["spec"].get("replicas") or 0)

            async def ramp() -> list[CallResult]:
                tasks = []
                for _ in range(20):  # one a second: 20 calls want ceil(20 / 5) = 4 pods, capped at 3
                    call = place_call(host, port, long_speech, tail_s=0.6, time_limit=120)
                    tasks.append(asyncio.create_task(call))
                    replicas_seen.append(await asyncio.to_thread(replicas))
                    await asyncio.sleep(1)
                await asyncio.to_thread(
                    wait_until, f"3 core replicas (seen each second: {replicas_seen})", lambda: replicas() == 3, 35, 1
                )
                return list(await asyncio.gather(*tasks))

            results = asyncio.run(ramp())
            print(f"replicas while calls ramped: {replicas_seen}")
            _whole(results, long_speech)
            down = wait_until("back to 1 replica", lambda: replicas() == 1, 120, 1)
            assert down
        finally:
            stop.set()
            follower.join(timeout=5)
