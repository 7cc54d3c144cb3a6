"""Where the control-plane binaries are, and how to get them (cluster/build.sh)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

BUILD_SCRIPT = Path(__file__).resolve().parents[1] / "build.sh"
BIN_ENV = "AVR_CLUSTER_BIN"

BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
    "metrics-adapter",
    "helm",
)
# Built by build.sh like the others, but only the tests that run Prometheus need it: a bin dir from before it was
# added still serves every other test.
PROMETHEUS_ADAPTER = "prometheus-adapter"


class MissingBinariesError(RuntimeError):
    """The binaries are not built (or not all of them); the message says how to get them."""


def build(*, check_only: bool = False) -> Path:
    """Run build.sh (a no-op when the cache is warm) and return the bin dir it prints last.

    With `check_only`, never compile: raise MissingBinariesError if the cache is cold.
    """
    argv = [str(BUILD_SCRIPT), *(["--check"] if check_only else [])]
    result = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        if check_only:
            raise MissingBinariesError(f"control-plane binaries are not built; run {BUILD_SCRIPT} (or scripts/test)")
        raise RuntimeError(f"{BUILD_SCRIPT} failed with status {result.returncode}")
    lines = result.stdout.strip().splitlines()
    return Path(lines[-1])


def locate(bin_dir: Path | str | None = None) -> Path:
    """The directory holding all binaries: `bin_dir`, else $AVR_CLUSTER_BIN, else a complete build cache."""
    if bin_dir is None:
        bin_dir = os.environ.get(BIN_ENV) or build(check_only=True)
    path = Path(bin_dir)
    missing = [name for name in BINARIES if not os.access(path / name, os.X_OK)]
    if missing:
        raise MissingBinariesError(f"{path} lacks {', '.join(missing)}; run {BUILD_SCRIPT}")
    return path


def pinned_version(name: str = "KUBE_VERSION") -> str:
    """A version pinned in build.sh, e.g. "v1.35.8" for KUBE_VERSION."""
    for line in BUILD_SCRIPT.read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1].split("#", 1)[0].strip()
    raise LookupError(f"{name} is not set in {BUILD_SCRIPT}")
