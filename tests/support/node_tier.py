"""What the node tier's tests use, whichever way its cluster was made (tests/kind/conftest.py makes it)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

from avr_devcluster.testing import in_ci

IMAGES_ENV = "AVR_IMAGES"


def cannot(reason: str) -> NoReturn:
    """Skip locally, fail in CI (CI=true), where a tier that cannot run would hide a broken set-up."""
    if in_ci():
        pytest.fail(f"the node tier must run in CI, but {reason}", pytrace=False)
    pytest.skip(f"node tier: {reason}")


@dataclass(frozen=True)
class Images:
    runtime: str
    operator: str
    archives: Path

    @classmethod
    def from_env(cls) -> Images:
        value = os.environ.get(IMAGES_ENV)
        if not value:
            cannot(f"{IMAGES_ENV} is not set (run scripts/images and export its last line)")
        directory = Path(str(value))
        names = dict(line.split("=", 1) for line in (directory / "images.env").read_text().split())
        return cls(names["RUNTIME_IMAGE"], names["OPERATOR_IMAGE"], directory)

    def split(self, image: str) -> tuple[str, str]:
        repository, tag = image.rsplit(":", 1)
        return repository, tag


@dataclass
class NodeCluster:
    """What the tests use, whichever way the cluster was made."""

    how: str  # "kind" or "real node"
    kubeconfig: Path
    kubectl_bin: str
    helm_bin: str
    images: Images
    # pod and Service addresses are reachable from the test process (real node), or only inside (kind)
    direct: bool
    log_dirs: list[Path] = field(default_factory=list)
    local: Any = None  # the DevCluster, when the cluster is the local control plane with a real node

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(
        self, *args: str, timeout: float = 300, check: bool = True, stdin: str | None = None, errors: bool = False
    ) -> str:
        return self._run(self.kubectl_bin, *args, timeout=timeout, check=check, stdin=stdin, errors=errors)

    def helm(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        return self._run(self.helm_bin, *args, timeout=timeout, check=check)

    def _run(self, *argv: str, timeout: float, check: bool, stdin: str | None = None, errors: bool = False) -> str:
        """The command's output (with its error output too when `errors`); asserts success when `check`."""
        result = subprocess.run(
            argv, env=self.env(), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check:
            command = " ".join(argv[1:4])
            assert result.returncode == 0, f"{command}… failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        return result.stdout + (result.stderr if errors else "")

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    def service_address(self, namespace: str, name: str, port_name: str) -> tuple[str, int]:
        """Where a client outside the pods reaches the Service: its cluster IP (kube-proxy's rules apply)."""
        service = self.get("service", "-n", namespace, name)
        (port,) = [p for p in service["spec"]["ports"] if p["name"] == port_name]
        return service["spec"]["clusterIP"], int(port["port"])


def http_text(url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode())


def wait_until(what: str, check: Any, timeout: float, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, AssertionError, subprocess.SubprocessError, ValueError, KeyError) as error:
            last = error
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
