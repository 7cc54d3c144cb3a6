"""A real Kubernetes control plane on loopback for integration tests, built from source (see build.sh).

etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok (fake nodes whose pods turn Running) and
a custom-metrics adapter, supervised as child processes.
"""

from .binaries import MissingBinariesError
from .cluster import DevCluster, StartupError
from .polling import eventually

__all__ = ["DevCluster", "MissingBinariesError", "StartupError", "eventually"]
