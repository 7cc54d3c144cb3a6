"""Operator load benchmark: many AVRDeployments at once against the local control plane.

    .venv/bin/python bench/operator_load.py [--resources 200] [--rss-at 200,1000] [--resync 20]

Starts a local control plane (or uses the running `avr-devcluster up` of KUBECONFIG with USE_EXISTING_CLUSTER=1),
runs `avr-operator run` as a process under its own ServiceAccount (so the audit log tells its writes apart), creates
`--resources` AVRDeployments at once and reports, per resource:

- time from creation until every child the spec asks for exists (watch events; p50 / p99 / max),
- time from creation until the resource reports Ready (p50 / p99 / max),
- API writes made by the operator (audit log: applies, status patches, events; dry runs counted apart),
- writes during a no-op window of one resync period (the target is 0),
- the operator's RSS (VmRSS, and the peak VmHWM from /proc/<pid>/status) and CPU time at each `--rss-at` count.

Resources past the first `--resources` (up to the largest `--rss-at`) use a lighter spec (no pod, no
autoscaler) so the fake cluster stays small; the table says which spec each row used.
Nothing is asserted: this is a measurement.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from avr_devcluster import demo
from avr_devcluster.api import ApiClient
from avr_devcluster.processes import Process, Supervisor
from avr_operator.api.resource import AVRDeployment
from avr_operator.constants import API_VERSION, GROUP, PLURAL, VERSION
from avr_operator.render.bundle import render

NAMESPACE = "avr-bench"
OPERATOR_SA = "avr-operator"
OPERATOR_USER = f"system:serviceaccount:{NAMESPACE}:{OPERATOR_SA}"
PODS_PER_NODE = 100  # kwok nodes hold 110 pods; leave room for the system's own
IMAGE = "avr-k8s/avr-runtime:0.1.0"
SMALL = {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "100m", "memory": "64Mi"}}
CHILD_WATCHES = (
    ("", "v1", "configmaps", "ConfigMap"),
    ("", "v1", "services", "Service"),
    ("apps", "v1", "deployments", "Deployment"),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
    ("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler"),
)


def full_spec() -> dict[str, Any]:
    """STS stack with an autoscaled core and PodDisruptionBudgets: 9 children, 2 fake pods."""
    return {
        "core": {"image": IMAGE, "resources": SMALL, "drain": {"preStopSeconds": 0}},
        "providers": {
            "sts": {"image": "agentvoiceresponse/avr-sts-openai", "replicas": 1, "resources": SMALL, "drainSeconds": 0}
        },
        "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 3},
        "availability": {"enabled": True},
        "rollout": {"minReadySeconds": 0},
    }


def light_spec() -> dict[str, Any]:
    """STS stack scaled to zero, no autoscaler, PodDisruptionBudgets: 8 children, no pod.

    The operator's work per resource is the same as with pods; the control plane's controllers (rate-limited
    clients) would otherwise take most of the run creating and reporting hundreds of pods.
    """
    return {
        "core": {
            "image": "avr-k8s/avr-runtime:0.1.0",
            "replicas": 0,
            "resources": SMALL,
            "drain": {"preStopSeconds": 0},
        },
        "providers": {
            "sts": {"image": "agentvoiceresponse/avr-sts-openai", "replicas": 0, "resources": SMALL, "drainSeconds": 0}
        },
        "availability": {"enabled": True},
        "rollout": {"minReadySeconds": 0},
    }


def body(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "AVRDeployment", "metadata": {"name": name}, "spec": spec}


def expected_children(name: str, spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m["kind"], m["metadata"]["name"]) for m in render(AVRDeployment.from_body(body(name, spec), NAMESPACE))}


def pods_of(spec: dict[str, Any]) -> int:
    core = (
        spec["autoscaling"]["minReplicas"] if spec.get("autoscaling", {}).get("enabled") else spec["core"]["replicas"]
    )
    return int(core) + int(spec["providers"]["sts"].get("replicas", 1))


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def new_client(kubeconfig: Path) -> Any:
    load: Callable[..., Any] = config.new_client_from_config  # untyped upstream
    return load(config_file=str(kubeconfig))


# -- observation ---


@dataclass
class Observer:
    """Watches the children and the AVRDeployments; records when each child first appeared and each went Ready."""

    kubeconfig: Path
    seen: dict[tuple[str, str], float] = field(default_factory=dict)
    ready: dict[str, float] = field(default_factory=dict)
    pods_ready: dict[str, float] = field(default_factory=dict)  # Deployment name -> all its pods first ready
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for group, version, plural, kind in CHILD_WATCHES:
            path = f"/api/{version}" if not group else f"/apis/{group}/{version}"
            self._spawn(f"{path}/namespaces/{NAMESPACE}/{plural}", kind)
        self._spawn(f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}", "AVRDeployment")

    def _spawn(self, path: str, kind: str) -> None:
        thread = threading.Thread(target=self._watch, args=(path, kind), daemon=True, name=f"watch-{kind}")
        thread.start()
        self.threads.append(thread)

    def _record(self, kind: str, obj: dict[str, Any]) -> None:
        now = time.monotonic()
        name = obj["metadata"]["name"]
        with self.lock:
            if kind == "Deployment" and name not in self.pods_ready and _rolled_out(obj):
                self.pods_ready[name] = now
            if kind != "AVRDeployment":
                self.seen.setdefault((kind, name), now)
            elif name not in self.ready and demo.condition(obj, "Ready").get("status") == "True":
                self.ready[name] = now

    def _watch(self, path: str, kind: str) -> None:
        api = new_client(self.kubeconfig)
        version = ""
        while not self.stop.is_set():
            try:
                if not version:
                    listed = json.loads(_raw(api, "GET", path).data)
                    for item in listed.get("items") or []:
                        self._record(kind, item)
                    version = listed["metadata"]["resourceVersion"]
                query = [("watch", "1"), ("resourceVersion", version), ("timeoutSeconds", "30")]
                query.append(("allowWatchBookmarks", "true"))
                response = _raw(api, "GET", path, query, stream=True)
                for line in response:
                    event = json.loads(line)
                    if event["type"] == "ERROR":
                        version = ""
                        break
                    obj = event["object"]
                    version = obj["metadata"].get("resourceVersion", version)
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._record(kind, obj)
                    if self.stop.is_set():
                        break
            except Exception as error:
                if self.stop.is_set():
                    return
                print(f"watch {kind}: {error!r}; retrying", file=sys.stderr, flush=True)
                time.sleep(0.5)

    def close(self) -> None:
        self.stop.set()


def _rolled_out(deployment: dict[str, Any]) -> bool:
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    current = status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
    wanted = spec.get("replicas", 1)
    return bool(current and status.get("readyReplicas", 0) >= wanted and status.get("updatedReplicas", 0) >= wanted)


def _raw(api: Any, method: str, path: str, query: list[tuple[str, str]] | None = None, *, stream: bool = False) -> Any:
    request = api.param_serialize(
        method,
        path,
        query_params=query or [],
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    response = api.call_api(*request, _request_timeout=None if stream else 30)
    if stream:
        return _lines(response)
    response.read()
    return response


def _lines(response: Any) -> Iterator[bytes]:
    buffer = b""
    for chunk in response.response.stream(amt=65536, decode_content=True):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield line


# -- the operator ---


@dataclass
class Usage:
    rss_mb: float
    peak_mb: float
    cpu_s: float


def usage(pid: int) -> Usage:
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = float(value.split()[0]) / 1024
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return Usage(fields["VmRSS"], fields["VmHWM"], (int(stat[11]) + int(stat[12])) / ticks)


def operator_identity(target: demo.Target, api: ApiClient) -> Path:
    """A ServiceAccount bound to cluster-admin and a kubeconfig with its token: the audit log names it."""
    api.apply(
        f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{OPERATOR_SA}",
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": OPERATOR_SA, "namespace": NAMESPACE}},
    )
    binding = f"{NAMESPACE}-{OPERATOR_SA}"
    api.apply(
        f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{binding}",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": binding},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": NAMESPACE}],
        },
    )
    token = api.call(
        "POST",
        f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{OPERATOR_SA}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 86400}},
    )["status"]["token"]
    ca = base64.b64encode(target.cluster.layout.pki.ca.read_bytes()).decode()
    kubeconfig, server = target.log_dir / "operator.kubeconfig", target.cluster.server
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server, "certificate-authority-data": ca}}],
                "users": [{"name": OPERATOR_SA, "user": {"token": token}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": OPERATOR_SA}}],
                "current-context": "c",
            }
        )
    )
    return kubeconfig


def ensure_nodes(api: ApiClient, pods: int) -> int:
    """Enough fake kwok nodes for `pods` pods; returns how many kwok nodes there are."""
    present = len(api.get("/api/v1/nodes?labelSelector=type%3Dkwok").get("items", []))
    wanted = math.ceil(pods / PODS_PER_NODE) + 1
    for index in range(present, wanted):
        name = f"kwok-bench-{index}"
        labels = {"type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}
        api.apply(f"/api/v1/nodes/{name}", node)
        api.merge_patch(f"/api/v1/nodes/{name}", {"spec": {"taints": None}})
    return max(present, wanted)


# -- one batch of resources ---


@dataclass
class Batch:
    label: str
    names: list[str]
    spec: dict[str, Any]
    created: dict[str, float] = field(default_factory=dict)
    audit_mark: int = 0


def create_batch(kubeconfig: Path, batch: Batch, workers: int = 16) -> float:
    """Create every resource of the batch as fast as the API server takes them; returns the seconds it took."""
    local = threading.local()

    def one(name: str) -> None:
        if not hasattr(local, "api"):
            local.api = client.CustomObjectsApi(new_client(kubeconfig))
        batch.created[name] = time.monotonic()
        local.api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body(name, batch.spec))

    started = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, batch.names))
    return time.monotonic() - started


def wait_until(check: Callable[[], bool], timeout: float, what: str, alive: Process) -> float:
    started = time.monotonic()
    while not check():
        if not alive.running():
            raise RuntimeError(f"the operator exited while waiting for {what}")
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.25)
    return time.monotonic() - started


def operator_writes(target: demo.Target, since: int) -> tuple[dict[str, int], int]:
    """Writes by the operator since the mark, by verb and resource; and dry-run requests apart."""
    counts: dict[str, int] = {}
    for write in target.cluster.audit.writes(since, username=OPERATOR_USER):
        label = f"{write.verb} {write.resource}{'/' + write.subresource if write.subresource else ''}"
        counts[label] = counts.get(label, 0) + 1
    dry = [w for w in target.cluster.audit.writes(since, username=OPERATOR_USER, include_dry_run=True) if w.dry_run]
    return counts, len(dry)


def scrape_operator(port: int) -> dict[str, float]:
    totals: dict[str, float] = {}
    for line in demo.scrape(port, ("avr_operator_",)):
        metric, value = line.rsplit(" ", 1)
        family = metric.split("{", 1)[0]
        totals[family] = totals.get(family, 0.0) + float(value)
    return totals


# -- main ---


@dataclass
class Report:
    rows: list[tuple[str, str]] = field(default_factory=list)

    def add(self, what: str, value: str) -> None:
        self.rows.append((what, value))
        print(f"  {what:<58} {value}", flush=True)

    def table(self) -> str:
        lines = ["| Measure | Value |", "|---|---|"]
        lines += [f"| {what} | {value} |" for what, value in self.rows]
        return "\n".join(lines)


def _ms(values: Sequence[float]) -> str:
    return f"p50 {percentile(values, 0.5):.1f} s, p99 {percentile(values, 0.99):.1f} s, max {max(values):.1f} s"


def run(args: argparse.Namespace) -> Report:
    report = Report()
    checkpoints = sorted({int(n) for n in args.rss_at.split(",") if n} | {args.resources})
    total = max(checkpoints)
    full, light = full_spec(), light_spec()
    pods = pods_of(full) * args.resources + pods_of(light) * (total - args.resources)
    with demo.open_target() as target, contextlib.ExitStack() as stack:
        supervisor = Supervisor(target.log_dir)
        stack.callback(supervisor.stop_all)
        api = target.api()
        if not target.owned:
            stack.callback(lambda: target.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False))
        nodes = ensure_nodes(api, pods)
        demo.install_crd(target)
        target.kubectl("create", "namespace", NAMESPACE)
        kubeconfig = operator_identity(target, api)
        operator, metrics_port = demo.start_operator(
            supervisor, target, namespaces=[NAMESPACE], resync=args.resync, kubeconfig=kubeconfig
        )
        print(
            f"operator pid {operator.popen.pid}, resync {args.resync:.0f} s; {nodes} fake nodes for {pods} pods; "
            f"idle RSS {usage(operator.popen.pid).rss_mb:.0f} MB",
            flush=True,
        )
        observer = Observer(target.kubeconfig)
        observer.start()
        stack.callback(observer.close)
        time.sleep(1.0)  # the watches have listed

        created = 0
        for checkpoint in checkpoints:
            spec, label = (full, "full") if created < args.resources else (light, "light")
            batch = Batch(label, [f"bench-{i:04d}" for i in range(created + 1, checkpoint + 1)], spec)
            batch.audit_mark = target.cluster.audit.mark()
            expected = {name: expected_children(name, spec) for name in batch.names}
            before = usage(operator.popen.pid)
            print(f"creating {len(batch.names)} AVRDeployments ({label} spec) ...", flush=True)
            took = create_batch(target.kubeconfig, batch)
            print(f"  created in {took:.1f} s", flush=True)

            def children_done(b: Batch = batch, e: dict[str, set[tuple[str, str]]] = expected) -> bool:
                with observer.lock:
                    return all(all(c in observer.seen for c in e[n]) for n in b.names)

            def all_ready(b: Batch = batch) -> bool:
                with observer.lock:
                    return all(n in observer.ready for n in b.names)

            wait_until(children_done, args.timeout, "every child", operator)
            wait_until(all_ready, args.timeout, "every resource Ready", operator)
            # Quiet: no operator write for 5 s (pods settling trigger a last status update or two).
            quiet_mark, quiet_deadline = target.cluster.audit.mark(), time.monotonic() + 60
            while time.monotonic() < quiet_deadline:
                time.sleep(5)
                if not operator_writes(target, quiet_mark)[0]:
                    break
                quiet_mark = target.cluster.audit.mark()
            after = usage(operator.popen.pid)
            created = checkpoint
            n = len(batch.names)
            tag = f"{n} {label}" if n == checkpoint else f"+{n} {label} (total {checkpoint})"
            children_s = [max(observer.seen[c] for c in expected[name]) - batch.created[name] for name in batch.names]
            ready_s = [observer.ready[name] - batch.created[name] for name in batch.names]
            deployments = {n: [c for k, c in expected[n] if k == "Deployment"] for n in batch.names}
            lag_s = [
                observer.ready[n] - max(observer.pods_ready.get(d, observer.ready[n]) for d in deployments[n])
                for n in batch.names
            ]
            writes, dry = operator_writes(target, batch.audit_mark)
            print(f"{tag}:", flush=True)
            report.add(f"{tag}: creation of all (client, 16 threads)", f"{took:.1f} s")
            report.add(f"{tag}: creation -> all {len(next(iter(expected.values())))} children exist", _ms(children_s))
            report.add(f"{tag}: creation -> Ready", _ms(ready_s))
            report.add(f"{tag}: last Deployment rolled out -> Ready (the operator's part)", _ms(lag_s))
            report.add(
                f"{tag}: operator writes per resource",
                f"{sum(writes.values()) / n:.2f} ("
                + ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(writes.items()))
                + ")",
            )
            report.add(f"{tag}: operator dry-run applies per resource", f"{dry / n:.2f}")
            report.add(f"{tag}: operator CPU time per resource", f"{(after.cpu_s - before.cpu_s) / n * 1000:.0f} ms")
            report.add(f"{tag}: operator RSS now / peak", f"{after.rss_mb:.0f} MB / {after.peak_mb:.0f} MB")
            report.add(
                f"{tag}: machine load average (1 / 5 min) at this point", "{:.2f} / {:.2f}".format(*os.getloadavg())
            )

            if label == "full" and not args.skip_resync:
                metrics = scrape_operator(metrics_port)
                mark = target.cluster.audit.mark()
                window = args.resync + 5
                print(f"no-op window: {window:.0f} s (one resync period) ...", flush=True)
                cpu0 = usage(operator.popen.pid).cpu_s
                time.sleep(window)
                quiet, quiet_dry = operator_writes(target, mark)
                later = scrape_operator(metrics_port)
                runs = later.get("avr_operator_reconciles_total", 0) - metrics.get("avr_operator_reconciles_total", 0)
                report.add(
                    f"{tag}: writes in a no-op resync window ({window:.0f} s)",
                    f"{sum(quiet.values())} ({runs:.0f} reconciles, {quiet_dry} dry runs, "
                    f"CPU {usage(operator.popen.pid).cpu_s - cpu0:.1f} s)",
                )
                rec = later.get("avr_operator_reconcile_duration_seconds_sum", 0)
                count = later.get("avr_operator_reconcile_duration_seconds_count", 0)
                if count:
                    report.add(f"{tag}: mean reconcile duration (all so far)", f"{rec / count * 1000:.0f} ms")
    return report


def wait_quiet(limit: float, patience: float = 600.0) -> None:
    """Other work on the machine skews every figure: start once the load average is low (or give up waiting)."""
    deadline = time.monotonic() + patience
    while (load := os.getloadavg()[0]) >= limit and time.monotonic() < deadline:
        print(f"load average {load:.2f} >= {limit}: waiting", flush=True)
        time.sleep(15)
    print(f"load average {os.getloadavg()[0]:.2f} at start", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resources", type=int, default=200, help="AVRDeployments of the full spec (default 200)")
    parser.add_argument(
        "--rss-at", default="200,1000", help="resource counts at which to report; past --resources: light spec"
    )
    parser.add_argument("--resync", type=float, default=20.0, help="the operator's --resync in seconds (default 20)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for each phase")
    parser.add_argument("--skip-resync", action="store_true", help="skip the no-op resync window")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="LOAD",
        help="first wait (up to 10 min) until the 1-minute load average is below LOAD (default: do not wait)",
    )
    args = parser.parse_args(argv)
    if args.wait_quiet:
        wait_quiet(args.wait_quiet)
    # Ctrl-C must tear the cluster down even when started from a context that ignores SIGINT (e.g. `cmd &`).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.monotonic()
    report = run(args)
    print(f"\nfinished in {time.monotonic() - started:.0f} s\n")
    print(report.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
