"""`avr-devcluster demo`: the whole project on one machine, from nothing to a sample call and back to nothing.

1. build or reuse the control-plane binaries;
2. start the local control plane (or attach to a running `avr-devcluster up` with USE_EXISTING_CLUSTER=1);
3. install the AVRDeployment CRD and run the operator (`avr-operator run`) against it;
4. apply an example AVRDeployment, with placeholder values for the Secrets it names;
5. wait until it is Ready and show what the operator created (`kubectl get avrd,deploy,hpa,pdb,svc`);
6. place a sample call: kwok's pods run no containers, so the call goes to a local worker started with the
   settings the operator wrote into the core's ConfigMap, and to a local reference provider;
7. tear everything down (also on Ctrl-C, SIGTERM or a failure).

The other packages are used through their command lines only (`python -m avr_operator.cli`,
`python -m avr_runtime`): this package stays below them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from . import binaries
from .api import ApiClient
from .cluster import STATE_FILE, DevCluster
from .processes import ComponentExitedError, Process, Supervisor, excerpt, free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
DEFAULT_EXAMPLE = REPO / "examples" / "sts-openai.yaml"
NAMESPACE = "avr-demo"
EXISTING_ENV = "USE_EXISTING_CLUSTER"
STEPS = 7
PLACEHOLDER = "demo-placeholder"
# Worker settings that would reach beyond this machine (the example's webhook endpoint).
#: What only works inside the cluster: the webhook, the pod's own deletion cost (its name comes from the downward API),
#: the peers' Service.
REMOTE_SETTINGS = ("WEBHOOK_URL", "WEBHOOK_SECRET", "POD_DELETION_COST", "PEER_SERVICE")
SHOWN_METRICS = ("avr_calls_started_total", "avr_calls_ended_total", "avr_frames_out_total")


class DemoError(RuntimeError):
    """A step failed; the message says which and why."""


# -- pure helpers (unit-tested) ---


def secret_references(obj: Any) -> dict[str, set[str]]:
    """Secret name -> keys named anywhere in an AVRDeployment (`secretRef`, `secretKeyRef`); no key: envFrom."""
    found: dict[str, set[str]] = {}

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("secretRef", "secretKeyRef") and isinstance(item, dict) and "name" in item:
                    keys = found.setdefault(str(item["name"]), set())
                    if "key" in item:
                        keys.add(str(item["key"]))
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(obj)
    return found


def placeholder_secrets(resource: Mapping[str, Any], namespace: str) -> list[dict[str, Any]]:
    """Secrets with placeholder values for every Secret the resource names, so its preconditions hold."""
    secrets = []
    for name, keys in sorted(secret_references(resource.get("spec") or {}).items()):
        data = {key: PLACEHOLDER for key in sorted(keys)} or {"DEMO_PLACEHOLDER": PLACEHOLDER}
        secrets.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "demo"}},
                "stringData": data,
            }
        )
    return secrets


def worker_env(
    settings: Mapping[str, str], *, sts_url: str, port: int, http_port: int, base: Mapping[str, str]
) -> dict[str, str]:
    """The local worker's environment: the core's ConfigMap, pointed at local ports and the local provider.

    Settings that would reach other machines or the cluster (REMOTE_SETTINGS) are dropped; logs are plain text on
    stdout, warnings only.
    """
    env = {k: v for k, v in base.items() if k.upper() not in settings and k.upper() not in REMOTE_SETTINGS}
    env |= {k: v for k, v in settings.items() if k.upper() not in REMOTE_SETTINGS}
    env |= {
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "HTTP_PORT": str(http_port),
        "STS_URL": sts_url,
        "LOG_FORMAT": "text",
        "LOG_LEVEL": "warning",
    }
    env.pop("LOG_FILE", None)
    env.pop("LOG_ROTATION", None)  # it rotates LOG_FILE only
    return env


def condition(obj: Mapping[str, Any], kind: str) -> dict[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


def stack_settled(deployments: Sequence[Mapping[str, Any]], autoscalers: Sequence[Mapping[str, Any]]) -> bool:
    """Every Deployment has all its replicas available and up to date; every autoscaler reached its minimum."""
    if not deployments:
        return False
    for dep in deployments:
        spec, status = dep.get("spec") or {}, dep.get("status") or {}
        want = int(spec.get("replicas", 1))
        counts = (status.get(k, 0) for k in ("replicas", "readyReplicas", "availableReplicas", "updatedReplicas"))
        if any(int(count) != want for count in counts):
            return False
        if int(status.get("observedGeneration", 0)) < int((dep.get("metadata") or {}).get("generation", 0)):
            return False
    for hpa in autoscalers:
        spec, status = hpa.get("spec") or {}, hpa.get("status") or {}
        current = int(status.get("currentReplicas", 0))
        if current < int(spec.get("minReplicas", 1)) or current != int(status.get("desiredReplicas", -1)):
            return False
    return True


def call_lines(summary: Mapping[str, Any]) -> list[str]:
    """The call summary `avr-runtime call` prints, in a few readable lines."""
    return [
        f"call {summary.get('uuid')}: sent {summary.get('sent_frames')} frames "
        f"({summary.get('sent_seconds')} s of synthesised speech)",
        f"received {summary.get('received_frames')} frames, {summary.get('received_non_silent_frames')} with audio; "
        f"gap between frames p50 {summary.get('frame_gap_ms_p50')} ms "
        f"(min {summary.get('frame_gap_ms_min')}, max {summary.get('frame_gap_ms_max')})",
        f"hangup received: {summary.get('hangup_received')}, error codes: {summary.get('error_codes') or 'none'}",
    ]


# -- commands of the upper layers, run as processes ---


def operator_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "avr_operator.cli", *args]


def runtime_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "avr_runtime", *args]


# -- the cluster the demo (or the benchmark) uses ---


@dataclass
class Target:
    """A usable cluster: the local control plane we started, or a running `avr-devcluster up`."""

    cluster: DevCluster
    owned: bool
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def kubeconfig(self) -> Path:
        return self.cluster.kubeconfig

    def api(self) -> ApiClient:
        return self.cluster.api()

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        argv = [self.cluster.layout.binary("kubectl"), *args]
        result = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=self.env, check=False)
        if check and result.returncode != 0:
            raise DemoError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout


@contextlib.contextmanager
def open_target(bin_dir: Path | None = None, *, nodes: int = 3) -> Iterator[Target]:
    """Start the local control plane, or attach to the cluster of KUBECONFIG if USE_EXISTING_CLUSTER=1.

    Only clusters of `avr-devcluster up` (or of a test session) can be attached: the demo needs their
    kubectl and admin certificates.
    """
    with tempfile.TemporaryDirectory(prefix="avr-demo-") as scratch:
        log_dir = Path(scratch)
        if os.environ.get(EXISTING_ENV) == "1":
            kubeconfig = Path(os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]).expanduser()
            if not (kubeconfig.parent / STATE_FILE).exists():
                raise DemoError(f"{EXISTING_ENV}=1 needs KUBECONFIG of a running `avr-devcluster up` ({kubeconfig})")
            cluster = DevCluster.attach(kubeconfig.parent)
            yield Target(cluster, False, log_dir, dict(os.environ, KUBECONFIG=str(kubeconfig)))
            return
        with DevCluster(bin_dir, nodes=nodes) as cluster:
            yield Target(cluster, True, log_dir, dict(os.environ, KUBECONFIG=str(cluster.kubeconfig)))


def install_crd(target: Target) -> str:
    """Apply the CRD `avr-operator crd` prints and wait until it is established; returns its name."""
    crd = subprocess.run(operator_command("crd"), capture_output=True, text=True, check=False)
    if crd.returncode != 0:
        raise DemoError(f"avr-operator crd failed: {crd.stderr.strip()}")
    name = str(yaml.safe_load(crd.stdout)["metadata"]["name"])
    target.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=crd.stdout)
    target.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    return name


def start_operator(
    supervisor: Supervisor,
    target: Target,
    *,
    namespaces: Sequence[str],
    resync: float = 300.0,
    kubeconfig: Path | None = None,
    timeout: float = 60.0,
) -> tuple[Process, int]:
    """`avr-operator run` against the target; returns the process and its metrics port once it is live."""
    health, metrics = free_port(), free_port()
    args = ["run", "--liveness", f"http://127.0.0.1:{health}/healthz", "--metrics-port", str(metrics)]
    args += ["--resync", str(resync)]
    for namespace in namespaces:
        args += ["--namespace", namespace]
    env = dict(target.env, KUBECONFIG=str(kubeconfig or target.kubeconfig), PYTHONUNBUFFERED="1")
    process = supervisor.start("avr-operator", operator_command(*args), env)
    liveness = f"http://127.0.0.1:{health}/healthz"
    wait_for("the operator's liveness endpoint", lambda: _http_ok(liveness, process), timeout)
    return process, metrics


def _http_ok(url: str, process: Process | None = None) -> bool:
    if process is not None and not process.running():
        raise ComponentExitedError(process)
    with urllib.request.urlopen(url, timeout=2) as response:
        return int(response.status) == 200


def scrape(port: int, prefixes: Sequence[str]) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    return [line for line in lines if line.startswith(tuple(prefixes))]


# -- the demo ---


class Progress:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.started = time.monotonic()
        self.step_started = self.started

    def step(self, number: int, text: str) -> None:
        self.step_started = time.monotonic()
        self.say(f"[{number}/{STEPS}] {text}")

    def say(self, text: str) -> None:
        print(f"demo: {text}", file=self.out, flush=True)

    def note(self, text: str) -> None:
        self.say(f"      {text}")

    def show(self, text: str) -> None:
        for line in text.rstrip("\n").splitlines():
            print(f"    {line}", file=self.out, flush=True)

    def done(self, text: str = "done") -> None:
        self.note(f"{text} ({time.monotonic() - self.step_started:.1f} s)")


@dataclass
class DemoOptions:
    example: Path = DEFAULT_EXAMPLE
    text: str = "Hello, I would like to check the status of my order."
    ready_timeout: float = 120.0
    bin_dir: Path | None = None


def run(options: DemoOptions, out: TextIO = sys.stdout) -> int:
    progress = Progress(out)
    resource = yaml.safe_load(options.example.read_text())

    progress.step(1, "control-plane binaries (cluster/build.sh: built once from the Go module proxy, then reused)")
    bin_dir = options.bin_dir or binaries.build()
    progress.done(str(bin_dir))

    existing = os.environ.get(EXISTING_ENV) == "1"
    progress.step(2, "the running cluster of KUBECONFIG" if existing else "local control plane on 127.0.0.1")
    with open_target(bin_dir) as target:
        nodes = target.kubectl("get", "nodes", "-o", "name").split()
        progress.done(f"{target.cluster.server}, nodes: {', '.join(n.split('/')[-1] for n in nodes)}")
        namespace = NAMESPACE if target.owned else f"{NAMESPACE}-{uuid.uuid4().hex[:6]}"
        try:
            with _supervised(target) as supervisor:
                code = _Demo(progress, options, target, supervisor, resource, namespace).run()
                progress.step(7, "teardown: operator, then the control plane (all processes, all files)")
        finally:
            if not target.owned:
                target.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    progress.done()
    return code


@contextlib.contextmanager
def _supervised(target: Target) -> Iterator[Supervisor]:
    supervisor = Supervisor(target.log_dir)
    try:
        yield supervisor
    except (DemoError, ComponentExitedError, TimeoutError):
        for process in supervisor.processes:
            print(f"--- {process.name} log ---\n{excerpt(process.log_path)}", file=sys.stderr)
        raise
    finally:
        supervisor.stop_all()


@dataclass
class _Demo:
    progress: Progress
    options: DemoOptions
    target: Target
    supervisor: Supervisor
    resource: dict[str, Any]
    namespace: str

    @property
    def name(self) -> str:
        return str(self.resource["metadata"]["name"])

    @property
    def core_selector(self) -> str:
        return f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component=core"

    def run(self) -> int:
        progress, target, namespace, name = self.progress, self.target, self.namespace, self.name
        progress.step(3, "CRD (`avr-operator crd`) and the operator (`avr-operator run`)")
        crd = install_crd(target)
        target.kubectl("create", "namespace", namespace)
        operator, metrics_port = start_operator(self.supervisor, target, namespaces=[namespace])
        progress.done(f"{crd} established; operator pid {operator.popen.pid} watching namespace {namespace}")

        progress.step(4, f"apply {_shown(self.options.example)} (AVRDeployment {name})")
        secrets = placeholder_secrets(self.resource, namespace)
        for secret in secrets:
            target.kubectl("apply", "-f", "-", stdin=json.dumps(secret))
        if secrets:
            names = ", ".join(s["metadata"]["name"] for s in secrets)
            progress.note(f"Secrets it names, with placeholder values: {names}")
        target.kubectl("apply", "-n", namespace, "-f", str(self.options.example))
        progress.done()

        progress.step(5, "waiting until the AVRDeployment is Ready (kwok's fake pods turn Ready without containers)")
        api = target.api()
        path = f"/apis/{self.resource['apiVersion']}/namespaces/{namespace}/avrdeployments/{name}"

        def ready() -> bool:
            _alive(operator)
            return condition(api.get(path), "Ready").get("status") == "True"

        wait_for(f"AVRDeployment {name} to be Ready", ready, self.options.ready_timeout, interval=0.5)
        progress.done(f"Ready: {condition(api.get(path), 'Ready').get('message', '')}")
        progress.note("waiting for the autoscalers' minimum replicas and minReadySeconds (pods Available)")
        self._set_queue_metric()

        def settled() -> bool:
            _alive(operator)
            if not ready():
                return False
            query = f"namespaces/{namespace}/{{}}?labelSelector=app.kubernetes.io/instance={name}"
            deployments = api.get("/apis/apps/v1/" + query.format("deployments"))
            hpas = api.get("/apis/autoscaling/v2/" + query.format("horizontalpodautoscalers"))
            self._set_queue_metric()  # for pods the autoscaler added
            return stack_settled(deployments["items"], hpas["items"])

        wait_for(f"AVRDeployment {name} to settle", settled, self.options.ready_timeout, interval=0.5)
        progress.done("every replica Available, autoscalers at their minimum")
        progress.say(f"$ kubectl -n {namespace} get avrd,deploy,hpa,pdb,svc")
        progress.show(target.kubectl("-n", namespace, "get", "avrd,deploy,hpa,pdb,svc"))
        progress.note("HPA targets: avr_queue_length set to 1 per core pod through the local metrics adapter;")
        progress.note("cpu stays <unknown> (no resource metrics API here); the LoadBalancer has no controller")
        nodes = target.kubectl("-n", namespace, "get", "pods", "-o", "jsonpath={.items[*].spec.nodeName}").split()
        progress.note(f"{len(nodes)} pods Running on the fake nodes {', '.join(sorted(set(nodes)))}, no containers")
        progress.note("operator: " + "; ".join(_operator_counts(metrics_port)))

        progress.step(6, "sample call through a LOCAL worker and reference provider")
        progress.note("the fake pods run no containers, so the call goes to local processes: `avr-runtime serve`")
        progress.note("with the settings the operator wrote into the core's ConfigMap, and `avr-runtime provider sts`")
        return self._call()

    def _call(self) -> int:
        progress, supervisor = self.progress, self.supervisor
        path = f"/api/v1/namespaces/{self.namespace}/configmaps?labelSelector={self.core_selector}"
        configmaps = self.target.api().get(path)["items"]
        if not configmaps:
            raise DemoError(f"no ConfigMap of the core ({self.core_selector})")
        settings: dict[str, str] = configmaps[0].get("data") or {}
        provider_port, port, http_port = free_port(), free_port(), free_port()
        provider = supervisor.start("provider", runtime_command("provider", "sts", "--port", str(provider_port)))
        sts_url = f"ws://127.0.0.1:{provider_port}"
        env = worker_env(settings, sts_url=sts_url, port=port, http_port=http_port, base=os.environ)
        worker = supervisor.start("worker", runtime_command("serve"), env)
        wait_for("the reference provider", lambda: _http_ok(f"http://127.0.0.1:{provider_port}/health", provider), 30)
        wait_for("the worker's /ready", lambda: _http_ok(f"http://127.0.0.1:{http_port}/ready", worker), 30)
        example = ", ".join(f"{k}={settings[k]}" for k in ("AUDIO_CODEC", "MAX_CONCURRENT_CALLS") if k in settings)
        progress.note(f"provider :{provider_port}, worker AudioSocket :{port} HTTP :{http_port}")
        progress.note(f"worker settings from {configmaps[0]['metadata']['name']}: {len(settings)}, e.g. {example}")
        call = subprocess.run(
            runtime_command("call", "--port", str(port), "--text", self.options.text),
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if call.returncode != 0 or not call.stdout.strip():
            raise DemoError(f"the sample call failed (status {call.returncode}): {call.stderr.strip()[-2000:]}")
        summary = json.loads(call.stdout)
        for line in call_lines(summary):
            progress.note(f"{line}")
        for line in scrape(http_port, SHOWN_METRICS):
            progress.note(f"worker metric {line}")
        worker.stop(grace=30)
        supervisor.processes.remove(worker)
        progress.note(f"worker exited with status {worker.popen.returncode} after SIGTERM (graceful drain)")
        progress.done()
        return 0 if summary.get("received_non_silent_frames") else 1

    def _set_queue_metric(self) -> None:
        """Give the core's pods an `avr_queue_length` through the metrics adapter, so the HPA shows a value."""
        path = f"/api/v1/namespaces/{self.namespace}/pods?labelSelector={self.core_selector}"
        with contextlib.suppress(OSError):
            for pod in self.target.api().get(path)["items"]:
                self.target.cluster.set_pod_metric(self.namespace, pod["metadata"]["name"], "avr_queue_length", 1)


def _alive(process: Process) -> None:
    if not process.running():
        raise ComponentExitedError(process)


def _operator_counts(port: int) -> list[str]:
    counts: dict[str, float] = {}
    for line in scrape(port, ("avr_operator_writes_total", "avr_operator_reconciles_total")):
        metric, value = line.rsplit(" ", 1)
        family = metric.split("{", 1)[0]
        counts[family] = counts.get(family, 0.0) + float(value)
    return [
        f"{counts.get('avr_operator_reconciles_total', 0):.0f} reconciles",
        f"{counts.get('avr_operator_writes_total', 0):.0f} writes (server-side apply and status)",
    ]


def _shown(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(REPO))
    return str(path)


def main(options: DemoOptions, *, out: TextIO = sys.stdout) -> int:
    """Run the demo; 0 on success. Ctrl-C, SIGTERM and SIGHUP stop it and tear everything down."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.monotonic()
    try:
        code = run(options, out)
    except KeyboardInterrupt:
        print("demo: interrupted; everything was stopped and removed", file=out, flush=True)
        return 130
    except (RuntimeError, TimeoutError) as error:  # DemoError, StartupError, ComponentExitedError, ...
        print(f"demo: FAILED: {error}", file=sys.stderr, flush=True)
        return 1
    elapsed = time.monotonic() - started
    verdict = "finished" if code == 0 else "FAILED (the call returned no audio)"
    print(f"demo: {verdict} in {elapsed:.0f} s; the cluster and every process were stopped", file=out, flush=True)
    return code
