"""`Cluster` over the official kubernetes client's REST transport (generic paths, JSON in and out).

The typed client has no generic server-side apply; building paths for the handful of kinds the operator
touches is simpler than the dynamic client's discovery. Calls are blocking, so they run in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client, config

from avr_operator.apply.cluster import ApiError, NotFoundError, Obj
from avr_operator.constants import KIND, PLURAL

THREADS = 24  # concurrent requests to the API server

PLURALS = {
    "ServiceAccount": "serviceaccounts",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "ConfigMap": "configmaps",
    "Secret": "secrets",
    "Service": "services",
    "Deployment": "deployments",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "ScaledObject": "scaledobjects",
    "NetworkPolicy": "networkpolicies",
    "PodMonitor": "podmonitors",
    KIND: PLURAL,
}


def resource_path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{PLURALS[kind]}"
    return f"{path}/{name}" if name else path


class KubeCluster:
    """Talks to the API server of the current kubeconfig context, or of the pod's service account."""

    def __init__(self, api: Any, timeout: float = 30.0, threads: int = THREADS) -> None:
        self._api = api
        self._timeout = timeout
        # Sized for I/O, not CPU: the threads mostly wait for the API server.
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="avr-api")

    @classmethod
    def from_environment(cls) -> KubeCluster:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            # KUBECONFIG is read now, not when the kubernetes package was imported.
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))  # type: ignore[no-untyped-call]
        configuration = client.Configuration.get_default_copy()
        configuration.connection_pool_maxsize = THREADS  # one connection per thread, kept alive
        return cls(client.ApiClient(configuration))

    def _call(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Obj:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        request = self._api.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self._api.call_api(*request, _request_timeout=self._timeout)
        response.read()
        try:
            data = json.loads(response.data or b"{}")
        except ValueError:  # a plain-text error, e.g. "404 page not found" for an API group nobody serves
            data = {"message": (response.data or b"").decode(errors="replace").strip()}
        if response.status == 404:
            raise NotFoundError(str(data.get("message", "not found")))
        if not 200 <= response.status < 300:
            raise ApiError(response.status, str(data.get("message", response.reason)))
        result: Obj = data
        return result

    async def _request(self, *args: Any, **kwargs: Any) -> Obj:
        call = functools.partial(self._call, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        try:
            return await self._request("GET", resource_path(api_version, kind, namespace, name))
        except NotFoundError:
            return None

    async def served(self, api_version: str, kind: str) -> bool:
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        try:
            found = await self._request("GET", base)
        except NotFoundError:
            return False
        return any(r.get("kind") == kind for r in found.get("resources") or [])

    async def list(self, api_version: str, kind: str, namespace: str, label_selector: str) -> list[Obj]:
        data = await self._request(
            "GET", resource_path(api_version, kind, namespace), [("labelSelector", label_selector)]
        )
        items: list[Obj] = data.get("items") or []
        for item in items:  # list items carry no apiVersion/kind
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items

    async def apply(self, manifest: Obj, *, field_manager: str, dry_run: bool = False) -> Obj:
        meta = manifest["metadata"]
        query = [("fieldManager", field_manager), ("force", "true")]
        if dry_run:
            query.append(("dryRun", "All"))
        path = resource_path(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        return await self._request("PATCH", path, query, manifest, "application/apply-patch+yaml")

    async def merge_patch(self, manifest: Obj, *, field_manager: str, dry_run: bool = False) -> Obj:
        meta = manifest["metadata"]
        query = [("fieldManager", field_manager)]
        if dry_run:
            query.append(("dryRun", "All"))
        path = resource_path(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        return await self._request("PATCH", path, query, manifest, "application/merge-patch+json")

    async def delete(self, api_version: str, kind: str, namespace: str, name: str, uid: str) -> None:
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"uid": uid}}
        with contextlib.suppress(NotFoundError):
            await self._request(
                "DELETE",
                resource_path(api_version, kind, namespace, name),
                [("propagationPolicy", "Background")],
                body,
            )

    async def patch_status(self, api_version: str, kind: str, namespace: str, name: str, status: Obj) -> Obj:
        path = resource_path(api_version, kind, namespace, name) + "/status"
        return await self._request("PATCH", path, None, {"status": status}, "application/merge-patch+json")
