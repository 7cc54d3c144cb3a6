"""A real node for the dev cluster: containerd, the kubelet, kube-proxy and CoreDNS on this machine.

Where kind cannot run (its node containers must be privileged, which some sandboxes refuse), the same tests
run on a node made of the real parts: the kubelet runs pods as containers through containerd (with runc), the
bridge CNI plugin wires each pod to a bridge of our own, kube-proxy programs iptables so Service addresses
work (from pods and from this machine), and CoreDNS answers for cluster.local. All of it needs root.

The node network is ours alone: a bridge with the gateway address, on which the API server also listens so
pods reach it through the `kubernetes` Service. There is no route to anything else: pods talk only to the
cluster and to this machine. One real-node cluster runs at a time on a machine (the bridge has a fixed name).

Images are never pulled (there is no registry): archives made by scripts/images are imported into
containerd before the kubelet starts, and the kubelet's image garbage collection is turned off.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .api import ApiClient
from .components import SERVICE_CIDR, Layout
from .processes import Supervisor, free_port, wait_for

BRIDGE = "avr0"
SUBNET = "10.244.0.0/24"
GATEWAY = "10.244.0.1"
NODE_NAME = "avr-node-0"
CLUSTER_DOMAIN = "cluster.local"
SANDBOX_IMAGE = "docker.io/avr-k8s/pause:local"
# containerd's socket and state must sit on short paths (unix socket paths are limited to 107 bytes).
STATE_ROOT = Path("/run/avr-node")


class NodeUnavailableError(RuntimeError):
    """This machine cannot run a real node; the message says why (and the tests skip with it locally)."""


def unavailable() -> str | None:
    """Why a real node cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "a real node needs root (network, mounts, cgroups)"
    for tool in ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/bootstrap installs Debian's docker.io and iptables)"
    return None


def _run(*argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise NodeUnavailableError(f"`{' '.join(argv)}` failed ({result.returncode}): {result.stderr.strip()}")
    return result


@dataclass
class NodeNetwork:
    """The node's bridge and the routes to it, made before the API server starts (it listens on the gateway)."""

    gateway: str = GATEWAY
    _forwarding: str | None = None

    @classmethod
    def create(cls) -> NodeNetwork:
        reason = unavailable()
        if reason:
            raise NodeUnavailableError(reason)
        network = cls()
        network.remove()  # a killed run's leftovers
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        # Service addresses are answered by kube-proxy's iptables rules; the route only makes this machine's
        # own connections to them leave through the bridge instead of its default route.
        _run("ip", "route", "add", SERVICE_CIDR, "dev", BRIDGE)
        forward = Path("/proc/sys/net/ipv4/ip_forward")
        network._forwarding = forward.read_text().strip()
        forward.write_text("1")
        return network

    def remove(self) -> None:
        _run("ip", "route", "del", SERVICE_CIDR, "dev", BRIDGE, check=False)
        _run("ip", "link", "del", BRIDGE, check=False)
        if self._forwarding is not None:
            Path("/proc/sys/net/ipv4/ip_forward").write_text(self._forwarding)
            self._forwarding = None


class RealNode:
    """containerd, kube-proxy, CoreDNS and a kubelet registering NODE_NAME, supervised with the control plane."""

    def __init__(self, layout: Layout, network: NodeNetwork, supervisor: Supervisor, images: Path | None) -> None:
        self.layout = layout
        self.network = network
        self.supervisor = supervisor
        self.images = images
        self.dir = layout.run_dir / "node"
        self.state = STATE_ROOT
        self.socket = self.state / "containerd.sock"

    # -- what tests use ---

    def ctr(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """containerd's own client, in the kubelet's namespace."""
        return _run("ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args, timeout=timeout)

    def import_image(self, archive: Path) -> None:
        self.ctr("images", "import", str(archive))

    # -- lifecycle ---

    def start(self, timeout: float) -> None:
        self._clean_state()
        self.dir.mkdir(parents=True)
        self.state.mkdir(parents=True)
        for name in ("containerd", "cni", "kubelet", "ipam", "pod-logs"):
            (self.dir / name).mkdir()
        self._write_configs()
        self.supervisor.start("containerd", ["containerd", "--config", str(self.dir / "containerd.toml")])
        wait_for("containerd", self._containerd_up, timeout)
        if self.images is not None:
            for archive in sorted(self.images.glob("*.tar")):
                self.import_image(archive)
        self.supervisor.start("coredns", [self.layout.binary("coredns"), "-conf", str(self.dir / "Corefile")])
        self.supervisor.start(
            "kube-proxy", [self.layout.binary("kube-proxy"), f"--config={self.dir / 'kube-proxy.yaml'}"]
        )
        self.supervisor.start(
            "kubelet",
            [
                self.layout.binary("kubelet"),
                f"--config={self.dir / 'kubelet.yaml'}",
                f"--kubeconfig={self.layout.kubeconfig('admin')}",
                f"--root-dir={self.dir / 'kubelet'}",
                f"--cert-dir={self.dir / 'kubelet' / 'pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={GATEWAY}",
                "--v=1",
            ],
        )
        wait_for("the real node Ready", self._node_ready, timeout)

    def stop(self) -> None:
        """Pods first (their containers outlive the kubelet otherwise), then the node's processes and state."""
        with contextlib.suppress(Exception):
            self._remove_pods()
        for name in ("kubelet", "kube-proxy", "coredns"):
            self.supervisor.stop(name)
        with contextlib.suppress(Exception):
            self._remove_containers()
        self.supervisor.stop("containerd")
        self._kill_shims()
        _run(self.layout.binary("kube-proxy"), "--cleanup", check=False)
        self._clean_state()
        unmount_under(self.dir)

    # -- internals ---

    def _containerd_up(self) -> bool:
        self.supervisor.check_alive()
        if not self.socket.exists():
            return False
        return _run("ctr", "--address", str(self.socket), "version", check=False).returncode == 0

    def _node_ready(self) -> bool:
        self.supervisor.check_alive()
        status, text = self.api().request("GET", f"/api/v1/nodes/{NODE_NAME}")
        if status != 200:
            return False
        conditions = json.loads(text).get("status", {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def api(self) -> ApiClient:
        return ApiClient(self.layout.server, ca=str(self.layout.pki.ca), identity=self.layout.pki.admin)

    def _remove_pods(self) -> None:
        api = self.api()
        pods = api.get(f"/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE_NAME}").get("items", [])
        for pod in pods:
            meta = pod["metadata"]
            api.delete(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}?gracePeriodSeconds=0")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not self.ctr("tasks", "ls", "-q", timeout=30).stdout.strip():
                return
            time.sleep(0.5)

    def _remove_containers(self) -> None:
        tasks = self.ctr("tasks", "ls", "-q", timeout=30).stdout.split()
        for task in tasks:
            self.ctr("tasks", "kill", "--signal", "SIGKILL", task, timeout=30)
        for container in self.ctr("containers", "ls", "-q", timeout=30).stdout.split():
            with contextlib.suppress(NodeUnavailableError):
                self.ctr("tasks", "delete", "--force", container, timeout=30)
            with contextlib.suppress(NodeUnavailableError):
                self.ctr("containers", "delete", container, timeout=30)

    def _kill_shims(self) -> None:
        """containerd's shims leave its process group on purpose; those of our socket go with the node."""
        marker = str(self.socket)
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline and cmdline[0].endswith(b"containerd-shim-runc-v2") and marker.encode() in cmdline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(proc.name), signal.SIGKILL)

    def _clean_state(self) -> None:
        if self.state.exists():
            unmount_under(self.state)
            shutil.rmtree(self.state, ignore_errors=True)

    def _write_configs(self) -> None:
        d, layout = self.dir, self.layout
        (d / "containerd.toml").write_text(containerd_config(d, self.state, Path(layout.binary("cni"))))
        (d / "cni" / "10-avr.conflist").write_text(json.dumps(cni_config(d / "ipam"), indent=2))
        (d / "Corefile").write_text(corefile(layout.kubeconfig("admin")))
        (d / "resolv.conf").write_text(f"nameserver {GATEWAY}\n")
        kubelet = kubelet_config(self.socket, layout.pki.ca, d / "resolv.conf", d / "pod-logs")
        (d / "kubelet.yaml").write_text(yaml.safe_dump(kubelet, sort_keys=False))
        proxy = kube_proxy_config(layout.kubeconfig("admin"))
        (d / "kube-proxy.yaml").write_text(yaml.safe_dump(proxy, sort_keys=False))


def unmount_under(directory: Path) -> None:
    """Unmount what the kubelet and containerd mounted below `directory` (volumes, rootfs, netns), deepest first."""
    prefix = str(directory).rstrip("/") + "/"
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1] for line in mounts]
    # /proc/mounts escapes spaces and the like as octal; our paths have none
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        _run("umount", "--lazy", point, check=False)


# -- configurations: each says why it departs from the defaults (ports are picked free per run) ---


def containerd_config(node_dir: Path, state: Path, cni_bin: Path) -> str:
    return f"""version = 2
root = "{node_dir / "containerd"}"
state = "{state / "state"}"
# Plugins a node needs nothing of (and that would probe this machine's storage at start).
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{state / "containerd.sock"}"

[plugins."io.containerd.grpc.v1.cri"]
  # built locally by scripts/images: there is no registry to pull the usual one from
  sandbox_image = "{SANDBOX_IMAGE}"
  enable_unprivileged_ports = false
  # Lowering a process's OOM score needs CAP_SYS_RESOURCE, which some sandboxes withhold: keep containers'
  # scores at or above containerd's own instead of failing every sandbox.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # the kubelet's cgroup driver is cgroupfs (no systemd here)
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{node_dir / "cni"}"
"""


def cni_config(ipam_dir: Path) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "avr",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,  # nothing beyond this machine to reach
                "hairpinMode": True,  # a pod reaching itself through its Service
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": SUBNET, "gateway": GATEWAY}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(ipam_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def corefile(kubeconfig: Path) -> str:
    # Only cluster.local, and no forwarding: pods have no names to resolve beyond the cluster.
    return f""".:53 {{
    bind {GATEWAY}
    errors
    health 127.0.0.1:{free_port()}
    ready 127.0.0.1:{free_port()}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
}}
"""


def kubelet_config(socket: Path, ca: Path, resolv: Path, logs: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "containerRuntimeEndpoint": f"unix://{socket}",
        "address": GATEWAY,
        "port": free_port(),
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": free_port(),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "AlwaysAllow"},  # only the API server (as the admin) calls it
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,  # some machines still mount cgroup v1 only
        "failSwapOn": False,
        "clusterDNS": [GATEWAY],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": str(resolv),
        "podLogsDir": str(logs),  # not the machine's /var/log/pods
        # Images are imported, never pulled: collecting one would lose it for good.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        # A shared test machine's disk or memory may be fuller than a node's defaults allow.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "serializeImagePulls": False,
        "protectKernelDefaults": False,
        "nodeStatusReportFrequency": "10s",
        "shutdownGracePeriod": "0s",
    }


def kube_proxy_config(kubeconfig: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": NODE_NAME,
        "mode": "iptables",
        "clusterCIDR": SUBNET,
        # Every Service connection leaves with the gateway's address, so a reply from a pod on the same
        # bridge comes back through the host's connection tracking instead of straight to the client pod.
        "iptables": {"masqueradeAll": True},
        "conntrack": {"maxPerCore": 0},  # leave the machine's conntrack table size alone
        "metricsBindAddress": f"127.0.0.1:{free_port()}",
        "healthzBindAddress": f"127.0.0.1:{free_port()}",
        "nodePortAddresses": [f"{GATEWAY}/32"],
    }
