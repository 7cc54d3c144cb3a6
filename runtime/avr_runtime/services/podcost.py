"""This pod's ``controller.kubernetes.io/pod-deletion-cost``, kept at its number of live calls.

When an HPA or a user scales the core's Deployment down, the ReplicaSet controller deletes the pods with the
lowest deletion cost first: without it, it may pick the pod carrying the most calls, whose drain then takes
longest or cuts them. The worker patches its own pod only (its name from the downward API); the operator grants
just that. Updates are coalesced (at most one per ``interval``, only when the count changed) so a busy fleet does
not load the API server: the value only has to rank the pods, not be exact to the second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from pathlib import Path
from typing import Final

import aiohttp
import orjson

from avr_runtime.services import metrics

log = logging.getLogger(__name__)

ANNOTATION: Final = "controller.kubernetes.io/pod-deletion-cost"
#: Where the kubelet mounts a pod's ServiceAccount token and the cluster's CA.
SERVICE_ACCOUNT_DIR: Final = "/var/run/secrets/kubernetes.io/serviceaccount"


class PodDeletionCost:
    def __init__(
        self,
        api_url: str,
        namespace: str,
        pod: str,
        account_dir: str = SERVICE_ACCOUNT_DIR,
        interval: float = 5.0,
    ) -> None:
        self._url = f"{api_url.rstrip('/')}/api/v1/namespaces/{namespace}/pods/{pod}"
        self._dir = Path(account_dir)
        self._interval = interval
        self._wanted = 0
        self._sent: int | None = None
        self._changed = asyncio.Event()
        self._changed.set()  # the first value goes out at start-up: a restarted pod must not keep a stale cost
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    @classmethod
    def in_cluster(cls, namespace: str, pod: str, account_dir: str, interval: float) -> PodDeletionCost:
        """The API server as every pod sees it (the environment the kubelet sets)."""
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise RuntimeError("POD_DELETION_COST needs the in-cluster API server (KUBERNETES_SERVICE_HOST)")
        host = f"[{host}]" if ":" in host else host
        return cls(f"https://{host}:{port}", namespace, pod, account_dir, interval)

    def start(self) -> None:
        ca = self._dir / "ca.crt"
        context = ssl.create_default_context(cafile=str(ca)) if ca.exists() else ssl.create_default_context()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context), timeout=aiohttp.ClientTimeout(total=5)
        )
        self._task = asyncio.create_task(self._run(), name="pod-deletion-cost")

    def update(self, calls: int) -> None:
        """The pod's live calls now (called whenever a call starts or ends: cheap)."""
        if calls != self._wanted:
            self._wanted = calls
            self._changed.set()

    async def _run(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            if self._wanted != self._sent:
                await self._patch(self._wanted)
            await asyncio.sleep(self._interval)

    async def _patch(self, cost: int) -> None:
        assert self._session is not None
        body = orjson.dumps({"metadata": {"annotations": {ANNOTATION: str(cost)}}})
        headers = {"Content-Type": "application/merge-patch+json"}
        try:
            # read each time: the kubelet rotates the projected token
            headers["Authorization"] = "Bearer " + (self._dir / "token").read_text().strip()
            async with self._session.patch(self._url, data=body, headers=headers) as resp:
                detail = f"HTTP {resp.status}: {(await resp.text())[:200]}" if resp.status >= 300 else ""
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            detail = repr(exc)
        if not detail:
            self._sent = cost
            metrics.POD_COST_UPDATES.labels("ok").inc()
            if self._failing:
                log.info("pod deletion cost updated again")
            self._failing = False
            return
        metrics.POD_COST_UPDATES.labels("failed").inc()
        self._changed.set()  # retried after the interval
        if not self._failing:  # once per outage, not once per attempt
            log.warning("could not set the pod's deletion cost: %s", detail)
        self._failing = True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()
