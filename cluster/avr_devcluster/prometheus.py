"""Prometheus and prometheus-adapter next to a dev cluster: the custom metrics API fed by real scrapes.

The cluster's own metrics adapter serves values that tests write by hand. Users run Prometheus scraping the
worker pods and prometheus-adapter turning the series into custom metrics; `PrometheusMetrics` runs that chain
on loopback for the tests that need it (opt-in, it costs two processes and a few seconds):

- Prometheus (Debian's package, on PATH) scrapes targets from a file (`file_sd_configs`) that the test
  rewrites as fake pods come and go: each target is a real process's `/metrics`, labelled with the
  `namespace` and `pod` of the kwok pod it stands for, as Kubernetes service discovery would label it.
- prometheus-adapter (built by cluster/build.sh) serves custom.metrics.k8s.io from Prometheus with a rules
  file, the chart's own in the tests.
- While it runs, the custom metrics APIServices point at prometheus-adapter instead of the test adapter;
  on exit they are pointed back and waited for, so the tests after it (and namespace deletion, which needs
  every aggregated API to answer discovery) find the cluster as it was.

`PrometheusServer` is the first part alone, without a cluster: Prometheus scraping processes under pod labels and
evaluating rule files, for tests of the chart's dashboard queries and alerting rules.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from . import metrics_adapter
from .api import ApiClient
from .binaries import BUILD_SCRIPT, PROMETHEUS_ADAPTER, MissingBinariesError
from .cluster import DevCluster
from .processes import Supervisor, excerpt, free_port, wait_for

PROMETHEUS_ENV = "AVR_PROMETHEUS"  # path of the prometheus binary; default: `prometheus` on PATH
SERVICE_NAME = "avr-devcluster-prometheus-adapter"
SCRAPE_INTERVAL = "1s"  # the workers' gauges change by the second; upstream's default is 1m
RELIST_INTERVAL = "2s"  # how soon the adapter serves a series it has not seen before (chart default 1m)


@dataclass(frozen=True)
class Target:
    """A process whose /metrics Prometheus scrapes under the name of a pod."""

    address: str  # host:port
    namespace: str
    pod: str


def prometheus_binary() -> str:
    """The Prometheus server binary; MissingBinariesError says how to install it."""
    path = os.environ.get(PROMETHEUS_ENV) or shutil.which("prometheus")
    if not path or not os.access(path, os.X_OK):
        raise MissingBinariesError("prometheus is not installed; run scripts/bootstrap (Debian package prometheus)")
    return path


def adapter_binary(bin_dir: Path) -> Path:
    path = bin_dir / PROMETHEUS_ADAPTER
    if not os.access(path, os.X_OK):
        raise MissingBinariesError(f"{bin_dir} lacks {PROMETHEUS_ADAPTER}; run {BUILD_SCRIPT}")
    return path


class PrometheusServer:
    """Prometheus alone (no adapter, no cluster): scrapes `Target`s every second, optionally evaluating rule files
    every second too, as a context manager. For tests of queries and rules against real workers' /metrics."""

    def __init__(self, rule_files: Sequence[Path] = (), *, timeout: float = 60.0) -> None:
        self.rule_files = list(rule_files)
        self.timeout = timeout
        self.binary = prometheus_binary()
        self.port = free_port()
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._supervisor: Supervisor | None = None

    @property
    def work_dir(self) -> Path:
        if self._dir is None:
            raise RuntimeError("not started")
        return Path(self._dir.name)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_targets(self, targets: Sequence[Target]) -> None:
        """Replace the scraped targets; Prometheus notices the file within a second (inotify, or a re-read)."""
        _write_targets(self.work_dir / "targets.json", targets)

    def api(self, path: str, **params: str) -> Any:
        """The `data` of a GET on Prometheus' HTTP API, e.g. api("query", query="up")."""
        url = f"{self.url}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result (a vector's samples, or [] when nothing matched)."""
        data = self.api("query", query=promql)
        result: list[dict[str, Any]] = data["result"] if data["resultType"] in ("vector", "matrix") else [data]
        return result

    def logs(self) -> str:
        if self._dir is None:
            return ""
        return "\n".join(f"--- {log.name} ---\n{excerpt(log)}" for log in sorted(self.work_dir.glob("*.log")))

    def __enter__(self) -> Self:
        self._dir = tempfile.TemporaryDirectory(
            prefix="avr-prometheus-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None
        )
        self._supervisor = Supervisor(self.work_dir)
        try:
            self.set_targets([])
            config = self.work_dir / "prometheus.yml"
            config.write_text(
                json.dumps(
                    {
                        "global": {
                            "scrape_interval": SCRAPE_INTERVAL,
                            "scrape_timeout": SCRAPE_INTERVAL,
                            "evaluation_interval": SCRAPE_INTERVAL,
                        },
                        "rule_files": [str(path) for path in self.rule_files],
                        "scrape_configs": [
                            {
                                "job_name": "avr-workers",
                                "file_sd_configs": [
                                    {"files": [str(self.work_dir / "targets.json")], "refresh_interval": "1s"}
                                ],
                            }
                        ],
                    }
                )
            )
            self._supervisor.start(
                "prometheus",
                [
                    self.binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.work_dir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
            )
            supervisor = self._supervisor
            wait_for("Prometheus /-/ready", lambda: _http_ok(f"{self.url}/-/ready", supervisor), self.timeout)
        except BaseException as error:
            report = self.logs()
            self.__exit__()
            if isinstance(error, Exception):
                raise RuntimeError(f"Prometheus did not start: {error}\n{report}") from error
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._supervisor is not None:
            self._supervisor.stop_all()
            self._supervisor = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


def _write_targets(path: Path, targets: Sequence[Target]) -> None:
    groups = [
        {"targets": [t.address], "labels": {"namespace": t.namespace, "pod": t.pod}}
        for t in sorted(targets, key=lambda t: t.pod)
    ]
    staged = path.with_suffix(".tmp")
    staged.write_text(json.dumps(groups))
    staged.replace(path)  # atomic: Prometheus never reads half a file


class PrometheusMetrics:
    """Prometheus (a `PrometheusServer`) + prometheus-adapter serving the custom metrics API of `cluster`, as a
    context manager."""

    def __init__(self, cluster: DevCluster, rules: Path, *, timeout: float = 60.0) -> None:
        self.cluster = cluster
        self.rules = rules
        self.timeout = timeout
        self.prometheus = PrometheusServer(timeout=timeout)
        self.adapter_bin = adapter_binary(cluster.bin_dir)
        self.adapter_port = free_port()
        self._supervisor: Supervisor | None = None
        self._swapped = False

    # -- what tests use ---

    def set_targets(self, targets: Sequence[Target]) -> None:
        """Replace the scraped targets; Prometheus notices the file within a second (inotify, or a re-read)."""
        self.prometheus.set_targets(targets)

    def query(self, promql: str) -> list[dict[str, Any]]:
        return self.prometheus.query(promql)

    def logs(self) -> str:
        """The end of both processes' logs (they share the work folder), for a failure message."""
        return self.prometheus.logs()

    # -- lifecycle ---

    def __enter__(self) -> Self:
        self.prometheus.__enter__()
        self._supervisor = Supervisor(self.prometheus.work_dir)
        try:
            self._start(self._supervisor)
        except BaseException as error:
            report = self.logs()
            self.__exit__()
            if isinstance(error, Exception):
                raise RuntimeError(f"prometheus-adapter did not start: {error}\n{report}") from error
            raise
        return self

    def _start(self, supervisor: Supervisor) -> None:
        admin = self.cluster.kubeconfig
        supervisor.start(
            "prometheus-adapter",
            [
                str(self.adapter_bin),
                f"--prometheus-url={self.prometheus.url}/",
                f"--config={self.rules}",
                f"--metrics-relist-interval={RELIST_INTERVAL}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.adapter_port}",
                f"--cert-dir={self.prometheus.work_dir / 'adapter-certs'}",
                f"--lister-kubeconfig={admin}",
                f"--authentication-kubeconfig={admin}",
                f"--authorization-kubeconfig={admin}",
                "--v=1",
            ],
        )
        wait_for(
            "prometheus-adapter /readyz",
            lambda: _http_ok(f"https://127.0.0.1:{self.adapter_port}/readyz", supervisor),
            self.timeout,
        )
        api = self.cluster.api()
        namespace = metrics_adapter.SERVICE_NAMESPACE
        api.apply(
            f"/api/v1/namespaces/{namespace}/services/{SERVICE_NAME}",
            metrics_adapter.service_object(self.adapter_port, SERVICE_NAME),
        )
        self._swapped = True
        _point_apiservices(api, self.adapter_port, SERVICE_NAME)
        wait_for(
            "custom metrics APIServices on prometheus-adapter", lambda: _available(api, SERVICE_NAME), self.timeout
        )

    def __exit__(self, *exc: object) -> None:
        """Point the APIServices back at the test adapter (waiting until it answers), then stop both processes."""
        try:
            if self._swapped:
                self._swapped = False
                api = self.cluster.api()
                api.timeout = 5
                _point_apiservices(api, self.cluster.layout.ports.adapter, metrics_adapter.SERVICE_NAME)
                wait_for(
                    "custom metrics APIServices back on the test adapter",
                    lambda: _available(api, metrics_adapter.SERVICE_NAME),
                    30,
                )
                api.delete(f"/api/v1/namespaces/{metrics_adapter.SERVICE_NAMESPACE}/services/{SERVICE_NAME}")
        finally:
            if self._supervisor is not None:
                self._supervisor.stop_all()
                self._supervisor = None
            self.prometheus.__exit__()


def _point_apiservices(api: ApiClient, port: int, service: str) -> None:
    for apiservice in metrics_adapter.apiservice_objects(port, service):
        api.apply(f"/apis/apiregistration.k8s.io/v1/apiservices/{apiservice['metadata']['name']}", apiservice)


def _available(api: ApiClient, service: str) -> bool:
    """Every custom metrics APIService points at `service` and is Available (the aggregator reached it)."""
    for group, version, _ in metrics_adapter.API_VERSIONS:
        apiservice = api.get(f"/apis/apiregistration.k8s.io/v1/apiservices/{version}.{group}")
        if apiservice["spec"]["service"]["name"] != service:
            return False
        conditions = apiservice.get("status", {}).get("conditions") or []
        if not any(c.get("type") == "Available" and c.get("status") == "True" for c in conditions):
            return False
    return True


def _http_ok(url: str, supervisor: Supervisor) -> bool:
    supervisor.check_alive()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the adapter's serving certificate is self-signed; we only ask if it is up
    with urllib.request.urlopen(url, timeout=2, context=context) as response:
        return int(response.status) == 200
