"""Command lines of the dev cluster's components: what each runs with, and why.

Everything listens on 127.0.0.1 only, on ports picked free for each run, so several clusters (e.g. parallel
test sessions) can run on one machine. A cluster with a real node (node.py) puts the API server on the node
network's gateway address instead, where pods can reach it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .certs import Pki

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"  # the first address of SERVICE_CIDR: the `kubernetes` Service
HPA_DOWNSCALE_STABILIZATION = "10s"  # upstream's 5m default would make scale-down tests crawl
STAGES = Path(__file__).resolve().parents[1] / "kwok" / "stages.yaml"


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    adapter: int
    adapter_write: int


@dataclass(frozen=True)
class Layout:
    """Where one run keeps its files, and the ports it uses."""

    bin_dir: Path
    run_dir: Path
    pki: Pki
    ports: Ports
    host: str = "127.0.0.1"  # where the API server listens and what it advertises

    @property
    def server(self) -> str:
        return f"https://{self.host}:{self.ports.apiserver}"

    @property
    def loopback(self) -> bool:
        return self.host == "127.0.0.1"

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    @property
    def audit_log(self) -> Path:
        return self.run_dir / "audit.log"

    @property
    def audit_policy(self) -> Path:
        return self.run_dir / "audit-policy.yaml"

    def kubeconfig(self, user: str) -> Path:
        return self.run_dir / f"{user}.kubeconfig"

    def binary(self, name: str) -> str:
        return str(self.bin_dir / name)


def etcd(layout: Layout) -> list[str]:
    client = f"http://127.0.0.1:{layout.ports.etcd_client}"
    peer = f"http://127.0.0.1:{layout.ports.etcd_peer}"
    return [
        layout.binary("etcd"),
        "--name=devcluster",
        f"--data-dir={layout.run_dir / 'etcd'}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=devcluster={peer}",
        "--unsafe-no-fsync",  # throw-away data on tmpfs: durability buys nothing, fsync costs a lot
        "--log-level=warn",
    ]


def kube_apiserver(layout: Layout) -> list[str]:
    pki = layout.pki
    if layout.loopback:
        # The `kubernetes` Service cannot have a loopback endpoint, and nothing in-cluster needs one.
        in_cluster = ["--endpoint-reconciler-type=none"]
    else:
        # Pods on a real node reach the API server through the `kubernetes` Service; it reaches their
        # kubelet (logs, exec) as the admin, whom the kubelet's AlwaysAllow lets through.
        in_cluster = [
            f"--kubelet-client-certificate={pki.admin.cert}",
            f"--kubelet-client-key={pki.admin.key}",
            "--kubelet-preferred-address-types=InternalIP",  # the node's name resolves nowhere
        ]
    return [
        layout.binary("kube-apiserver"),
        f"--etcd-servers=http://127.0.0.1:{layout.ports.etcd_client}",
        f"--bind-address={layout.host}",
        f"--advertise-address={layout.host}",
        f"--secure-port={layout.ports.apiserver}",
        f"--tls-cert-file={pki.apiserver.cert}",
        f"--tls-private-key-file={pki.apiserver.key}",
        f"--client-ca-file={pki.ca}",
        "--authorization-mode=Node,RBAC",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki.service_account_pub}",
        f"--service-account-signing-key-file={pki.service_account_key}",
        *in_cluster,
        "--allow-privileged=true",
        # Aggregation: the API server proxies custom.metrics.k8s.io to the adapter as front-proxy-client.
        f"--requestheader-client-ca-file={pki.front_proxy_ca}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki.front_proxy_client.cert}",
        f"--proxy-client-key-file={pki.front_proxy_client.key}",
        # Every write, one JSON line each, logged before the response is sent: see audit.py.
        f"--audit-policy-file={layout.audit_policy}",
        f"--audit-log-path={layout.audit_log}",
        "--audit-log-format=json",
        "--audit-log-mode=blocking",
        "--audit-log-maxsize=0",
        "--profiling=false",
    ]


def kube_controller_manager(layout: Layout) -> list[str]:
    return [
        layout.binary("kube-controller-manager"),
        f"--kubeconfig={layout.kubeconfig('controller-manager')}",
        "--leader-elect=false",
        "--secure-port=0",  # no health/metrics endpoint: readiness is judged by what it does
        f"--root-ca-file={layout.pki.ca}",
        f"--service-account-private-key-file={layout.pki.service_account_key}",
        # Each controller acts with its own RBAC role, as in production.
        "--use-service-account-credentials=true",
        *_controllers(layout),
        "--horizontal-pod-autoscaler-sync-period=1s",
        f"--horizontal-pod-autoscaler-downscale-stabilization={HPA_DOWNSCALE_STABILIZATION}",
    ]


def _controllers(layout: Layout) -> list[str]:
    if not layout.loopback:
        return []  # a real node's kubelet sends heartbeats: the node-lifecycle controller lifts its taints
    # Fake nodes send no heartbeats, so the node-lifecycle controller would taint them NotReady.
    return ["--controllers=*,-node-lifecycle-controller,-taint-eviction-controller"]


def kube_scheduler(layout: Layout) -> list[str]:
    return [
        layout.binary("kube-scheduler"),
        f"--kubeconfig={layout.kubeconfig('scheduler')}",
        "--leader-elect=false",
        "--secure-port=0",
    ]


def kwok(layout: Layout) -> list[str]:
    return [
        layout.binary("kwok"),
        f"--kubeconfig={layout.kubeconfig('admin')}",
        f"--config={STAGES}",
        "--manage-nodes-with-label-selector=type=kwok",
        "--node-lease-duration-seconds=0",  # no Lease renewals: they would be background writes
    ]


def metrics_adapter(layout: Layout) -> list[str]:
    admin = layout.kubeconfig("admin")
    return [
        layout.binary("metrics-adapter"),
        "--bind-address=127.0.0.1",
        f"--secure-port={layout.ports.adapter}",
        f"--cert-dir={layout.run_dir / 'metrics-adapter'}",
        f"--lister-kubeconfig={admin}",
        f"--authentication-kubeconfig={admin}",
        f"--authorization-kubeconfig={admin}",
        f"--write-address=127.0.0.1:{layout.ports.adapter_write}",
    ]
