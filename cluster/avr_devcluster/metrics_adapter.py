"""The custom-metrics test adapter: tests set metric values, the HPA controller reads them.

The adapter (built from the custom-metrics-apiserver test provider) serves custom.metrics.k8s.io behind the
API server's aggregator, and takes values over a plain-HTTP write API on loopback. (Its external metrics are
a fixed sample set, so external.metrics.k8s.io is not registered.) The aggregator reaches it through a
Service of type ExternalName pointing at localhost, so no kube-proxy is needed. Its APIServices exist only
while it runs: a registered but unreachable aggregated API breaks discovery and namespace deletion.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

SERVICE_NAMESPACE = "kube-system"
SERVICE_NAME = "avr-devcluster-metrics-adapter"

# (group, version, version priority): the HPA controller prefers custom.metrics.k8s.io/v1beta2.
API_VERSIONS = (
    ("custom.metrics.k8s.io", "v1beta2", 200),
    ("custom.metrics.k8s.io", "v1beta1", 100),
)


def quantity(value: float | str) -> str:
    """A Kubernetes quantity for `value`: integers as they are, fractions in milli-units."""
    if isinstance(value, str):
        return value
    if float(value).is_integer():
        return str(int(value))
    return f"{round(value * 1000)}m"


def service_object(port: int, name: str = SERVICE_NAME) -> dict[str, Any]:
    """The Service the aggregator reaches an adapter on loopback through (another `name` for another adapter)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": SERVICE_NAMESPACE},
        "spec": {
            "type": "ExternalName",
            "externalName": "localhost",
            "ports": [{"name": "https", "port": port}],
        },
    }


def apiservice_objects(port: int, service: str = SERVICE_NAME) -> list[dict[str, Any]]:
    """The custom metrics APIServices, served by the adapter behind the Service `service` on `port`."""
    return [
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": f"{version}.{group}"},
            "spec": {
                "group": group,
                "version": version,
                "service": {"namespace": SERVICE_NAMESPACE, "name": service, "port": port},
                "insecureSkipTLSVerify": True,  # the adapter serves a self-signed certificate
                "groupPriorityMinimum": 100,
                "versionPriority": priority,
            },
        }
        for group, version, priority in API_VERSIONS
    ]


class MetricsAdapter:
    """Client of the adapter's write API (`POST /write-metrics/...`, body: a JSON quantity string)."""

    def __init__(self, write_url: str) -> None:
        self.write_url = write_url.rstrip("/")

    def _post(self, path: str, value: float | str, labels: dict[str, str] | None) -> None:
        url = f"{self.write_url}/write-metrics/{path}"
        if labels:
            selector = ",".join(f"{key}={val}" for key, val in sorted(labels.items()))
            url += "?" + urllib.parse.urlencode({"labels": selector})
        request = urllib.request.Request(
            url,
            data=json.dumps(quantity(value)).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                response.read()
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"metrics adapter refused {url}: {error.code} {error.read()!r}") from error

    def set_object_metric(
        self,
        *,
        namespace: str,
        resource: str,
        name: str,
        metric: str,
        value: float | str,
        labels: dict[str, str] | None = None,
    ) -> None:
        """Set `metric` of one namespaced object, e.g. resource "pods" or "deployments.apps"."""
        quote = urllib.parse.quote
        self._post(f"namespaces/{quote(namespace)}/{resource}/{quote(name)}/{quote(metric)}", value, labels)

    def set_pod_metric(self, namespace: str, pod: str, metric: str, value: float | str) -> None:
        """Set a Pods metric (as an HPA `type: Pods` metric reads it) for one pod."""
        self.set_object_metric(namespace=namespace, resource="pods", name=pod, metric=metric, value=value)
