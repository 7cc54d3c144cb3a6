"""DevCluster: starts the local control plane, waits until it is usable, and tears it down without leftovers.

Start order follows the dependencies: etcd, the API server, then the controller-manager, scheduler, kwok and
the metrics adapter in parallel. "Ready" means what tests rely on: /readyz is ok, the fake nodes are Ready,
the default ServiceAccount exists (pods can be created), and the custom metrics API is Available.

Teardown (context-manager exit, atexit, or SIGTERM/SIGHUP turned into SystemExit) unregisters the metrics
APIService, stops every process group and removes the run directory.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import ssl
import sys
import threading
import types
import urllib.request
from pathlib import Path
from typing import Any, Self

from . import audit, binaries, certs, components, kubeconfig, metrics_adapter, node, rundir
from .api import ApiClient
from .processes import ComponentExitedError, Supervisor, excerpt, free_port, wait_for

STATE_FILE = "state.json"  # what another process needs to attach: ports and binaries
KEEP_ENV = "AVR_CLUSTER_KEEP"  # set to 1 to keep the run directory (logs, audit log) for debugging
NODE_LABELS = {"type": "kwok"}


class StartupError(RuntimeError):
    """The cluster did not come up; the message carries the end of every component's log."""


class DevCluster:
    """The control plane, with `nodes` kwok nodes, or (real_node=True) one real node and no kwok node."""

    def __init__(
        self,
        bin_dir: Path | str | None = None,
        *,
        nodes: int = 3,
        timeout: float = 120.0,
        real_node: bool = False,
        images: Path | None = None,
    ) -> None:
        self.bin_dir = binaries.locate(bin_dir)
        self.node_count = 0 if real_node else nodes
        self.timeout = timeout
        self.real_node = real_node
        self.images = images
        self.node: node.RealNode | None = None
        self._network: node.NodeNetwork | None = None
        self.run_dir: Path | None = None
        self._layout: components.Layout | None = None
        self._supervisor: Supervisor | None = None
        self._stopping = threading.Lock()

    @classmethod
    def attach(cls, run_dir: Path) -> DevCluster:
        """A handle on a cluster that another process runs (`avr-devcluster up`): usable, never stopped here."""
        state = json.loads((run_dir / STATE_FILE).read_text())
        cluster = cls(state["bin_dir"], nodes=state["nodes"])
        pki = certs.Pki.at(run_dir / "pki")
        ports = components.Ports(**state["ports"])
        cluster._layout = components.Layout(cluster.bin_dir, run_dir, pki, ports, state.get("host", "127.0.0.1"))
        return cluster

    # -- what tests use ---

    @property
    def layout(self) -> components.Layout:
        if self._layout is None:
            raise RuntimeError("the cluster is not started")
        return self._layout

    @property
    def kubeconfig(self) -> Path:
        """The admin's kubeconfig (client certificate in group system:masters)."""
        return self.layout.kubeconfig("admin")

    @property
    def server(self) -> str:
        return self.layout.server

    @property
    def audit(self) -> audit.AuditLog:
        return audit.AuditLog(self.layout.audit_log)

    @property
    def metrics(self) -> metrics_adapter.MetricsAdapter:
        return metrics_adapter.MetricsAdapter(f"http://127.0.0.1:{self.layout.ports.adapter_write}")

    def set_pod_metric(self, namespace: str, pod: str, name: str, value: float | str) -> None:
        self.metrics.set_pod_metric(namespace, pod, name, value)

    def api(self) -> ApiClient:
        return ApiClient(self.server, ca=str(self.layout.pki.ca), identity=self.layout.pki.admin)

    def env(self) -> dict[str, str]:
        """Environment for tools and tests that should use this cluster."""
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "USE_EXISTING_CLUSTER": "1",
            binaries.BIN_ENV: str(self.bin_dir),
        }

    # -- lifecycle ---

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self._supervisor is not None:
            raise RuntimeError("the cluster is already started")
        self.run_dir = rundir.create()
        atexit.register(self.stop)
        _stop_on_termination_signals()
        try:
            self._start(self.run_dir)
        except Exception as error:
            report = self._logs_report()
            self.stop()
            raise StartupError(f"{error}\n{report}") from error
        except BaseException:  # Ctrl-C or SystemExit while starting
            self.stop()
            raise

    def _start(self, run_dir: Path) -> None:
        picked: set[int] = set()
        while len(picked) < len(dataclasses.fields(components.Ports)):
            picked.add(free_port())
        ports = components.Ports(*picked)
        host = "127.0.0.1"
        if self.real_node:
            self._network = node.NodeNetwork.create()
            host = self._network.gateway
        extra_hosts = (host,) if self.real_node else ()
        pki = certs.generate(run_dir / "pki", service_ip=components.SERVICE_IP, extra_hosts=extra_hosts)
        layout = self._layout = components.Layout(self.bin_dir, run_dir, pki, ports, host)
        state = {
            "bin_dir": str(self.bin_dir),
            "nodes": self.node_count,
            "ports": dataclasses.asdict(ports),
            "host": host,
        }
        (run_dir / STATE_FILE).write_text(json.dumps(state))
        layout.logs.mkdir()
        layout.audit_policy.write_text(audit.POLICY)
        for user, identity in (
            ("admin", pki.admin),
            ("controller-manager", pki.controller_manager),
            ("scheduler", pki.scheduler),
        ):
            kubeconfig.write(layout.kubeconfig(user), server=layout.server, ca=pki.ca, identity=identity)
        supervisor = self._supervisor = Supervisor(layout.logs)

        supervisor.start("etcd", components.etcd(layout))
        wait_for("etcd", lambda: _etcd_healthy(ports.etcd_client, supervisor), self.timeout)
        supervisor.start("kube-apiserver", components.kube_apiserver(layout))
        api = self.api()
        wait_for("kube-apiserver /readyz", lambda: _readyz(api, supervisor), self.timeout)

        supervisor.start("kube-controller-manager", components.kube_controller_manager(layout))
        supervisor.start("kube-scheduler", components.kube_scheduler(layout))
        supervisor.start("kwok", components.kwok(layout))
        supervisor.start("metrics-adapter", components.metrics_adapter(layout))

        for index in range(self.node_count):
            path = f"/api/v1/nodes/kwok-node-{index}"
            api.apply(path, _node(f"kwok-node-{index}"))
            # Admission taints new nodes not-ready; the node-lifecycle controller that would lift the taint
            # does not run (see components.kube_controller_manager), so lift it here.
            api.merge_patch(path, {"spec": {"taints": None}})
        wait_for("fake nodes Ready", lambda: _nodes_ready(api, self.node_count, supervisor), self.timeout)
        wait_for(
            "the default ServiceAccount",
            lambda: _exists(api, "/api/v1/namespaces/default/serviceaccounts/default", supervisor),
            self.timeout,
        )
        wait_for("metrics adapter", lambda: _adapter_ready(ports.adapter, supervisor), self.timeout)
        self._register_metrics_api(api)
        wait_for("custom metrics APIService Available", lambda: _apiservices_available(api, supervisor), 60)
        if self._network is not None:
            self.node = node.RealNode(layout, self._network, supervisor, images=self.images)
            self.node.start(self.timeout)

    def _register_metrics_api(self, api: ApiClient) -> None:
        service = metrics_adapter.service_object(self.layout.ports.adapter)
        namespace, name = metrics_adapter.SERVICE_NAMESPACE, metrics_adapter.SERVICE_NAME
        api.apply(f"/api/v1/namespaces/{namespace}/services/{name}", service)
        for apiservice in metrics_adapter.apiservice_objects(self.layout.ports.adapter):
            api.apply(f"/apis/apiregistration.k8s.io/v1/apiservices/{apiservice['metadata']['name']}", apiservice)

    def _unregister_metrics_api(self) -> None:
        api = self.api()
        api.timeout = 3
        for apiservice in metrics_adapter.apiservice_objects(self.layout.ports.adapter):
            api.delete(f"/apis/apiregistration.k8s.io/v1/apiservices/{apiservice['metadata']['name']}")

    def stop(self) -> None:
        """Idempotent; safe from atexit and signal handlers."""
        with self._stopping:
            supervisor, self._supervisor = self._supervisor, None
            real, self.node = self.node, None
            if real is not None:
                if supervisor is not None:
                    supervisor.stop("kube-controller-manager")  # or it would replace the pods being removed
                with contextlib.suppress(Exception):
                    real.stop()
            if supervisor is not None:
                if any(p.name == "kube-apiserver" and p.running() for p in supervisor.processes):
                    with contextlib.suppress(Exception):
                        self._unregister_metrics_api()
                supervisor.stop_all()
            network, self._network = self._network, None
            if network is not None:
                network.remove()
            if self.run_dir is not None:
                if os.environ.get(KEEP_ENV) == "1":
                    (self.run_dir / rundir.KEPT_MARKER).touch()
                    print(f"avr-devcluster: kept {self.run_dir} ({KEEP_ENV}=1)", file=sys.stderr)
                else:
                    shutil.rmtree(self.run_dir, ignore_errors=True)
                self.run_dir = None
            atexit.unregister(self.stop)

    def _logs_report(self) -> str:
        if self._layout is None or not self._layout.logs.is_dir():
            return ""
        parts = [f"--- {log.name} ---\n{excerpt(log)}" for log in sorted(self._layout.logs.glob("*.log"))]
        return "\n".join(parts)


# -- readiness checks: true when ready, raise ComponentExitedError when a component died ---


def _etcd_healthy(port: int, supervisor: Supervisor) -> bool:
    supervisor.check_alive()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
        return b'"health":"true"' in response.read()


def _readyz(api: ApiClient, supervisor: Supervisor) -> bool:
    supervisor.check_alive()
    status, body = api.request("GET", "/readyz")
    return status == 200 and body.strip() == "ok"


def _exists(api: ApiClient, path: str, supervisor: Supervisor) -> bool:
    supervisor.check_alive()
    status, _ = api.request("GET", path)
    return status == 200


def _nodes_ready(api: ApiClient, count: int, supervisor: Supervisor) -> bool:
    supervisor.check_alive()
    nodes = api.get("/api/v1/nodes?labelSelector=type%3Dkwok").get("items", [])
    ready = [n for n in nodes if _condition(n, "Ready")]
    return len(ready) >= count


def _adapter_ready(port: int, supervisor: Supervisor) -> bool:
    supervisor.check_alive()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # its serving certificate is self-signed; we only ask if it is up
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/readyz", timeout=2, context=context) as response:
        return int(response.status) == 200


def _apiservices_available(api: ApiClient, supervisor: Supervisor) -> bool:
    supervisor.check_alive()
    for group, version, _ in metrics_adapter.API_VERSIONS:
        apiservice = api.get(f"/apis/apiregistration.k8s.io/v1/apiservices/{version}.{group}")
        if not _condition(apiservice, "Available"):
            return False
    return True


def _condition(obj: dict[str, Any], kind: str) -> bool:
    conditions = obj.get("status", {}).get("conditions") or []
    return any(c.get("type") == kind and c.get("status") == "True" for c in conditions)


def _node(name: str) -> dict[str, Any]:
    """A fake node for kwok: no taints, so ordinary pods schedule onto it."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {**NODE_LABELS, "kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
        },
    }


# -- signals ---


def _raise_exit(signum: int, _frame: types.FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _stop_on_termination_signals() -> None:
    """Make SIGTERM/SIGHUP unwind the stack like Ctrl-C does, so context managers and atexit clean up.

    Only handlers still at their default are replaced, and only from the main thread (Python's rule).
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _raise_exit)


__all__ = ["ComponentExitedError", "DevCluster", "StartupError"]
