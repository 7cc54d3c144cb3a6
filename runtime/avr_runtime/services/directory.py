"""Where a call's ``POST /call`` metadata waits for its AudioSocket connection: on this pod, or on a peer.

Through a Kubernetes Service the dialplan's ``POST /call`` (HTTP port) and its AudioSocket connection (port 5001)
are two connections, balanced independently: ``sessionAffinity: ClientIP`` is kept per port by kube-proxy, so the
metadata may sit on another pod than the call. A call that arrives without metadata asks the other pods (the
addresses behind a headless Service, ``PEER_SERVICE``) to hand theirs over, within a short timeout; the pod that
holds it gives it up, so one record serves one call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass
from typing import Any

import aiohttp
from cachetools import TTLCache

from avr_runtime.services import metrics

log = logging.getLogger(__name__)

#: Records waiting at once; beyond it the oldest go (each is a few hundred bytes).
MAX_RECORDS = 100_000


@dataclass(frozen=True)
class CallInfo:
    """What ``POST /call`` registered for a call."""

    payload: dict[str, Any]
    sts_url: str | None = None  # the call_initiated webhook's override of STS_URL, if it answered one

    def to_json(self) -> dict[str, Any]:
        return {"payload": self.payload, "sts_url": self.sts_url}

    @classmethod
    def from_json(cls, body: object) -> CallInfo | None:
        if not isinstance(body, dict) or not isinstance(body.get("payload"), dict):
            return None
        url = body.get("sts_url")
        return cls(body["payload"], url if isinstance(url, str) else None)


def claim_path(call_uuid: str) -> str:
    return f"/call/{call_uuid}/claim"


class CallDirectory:
    def __init__(
        self,
        ttl: float,
        peer_service: str | None = None,
        peer_port: int = 3000,
        peer_timeout: float = 0.3,
        api_token: str | None = None,
    ) -> None:
        self._records: TTLCache[str, CallInfo] = TTLCache(maxsize=MAX_RECORDS, ttl=ttl)
        self._peer_service = peer_service
        self._peer_port = peer_port
        self._timeout = peer_timeout
        self._session: aiohttp.ClientSession | None = None
        self._headers = {"Authorization": f"Bearer {api_token}"} if api_token else {}  # the peers share it

    def put(self, call_uuid: str, info: CallInfo) -> None:
        self._records[call_uuid] = info

    def take_local(self, call_uuid: str) -> CallInfo | None:
        """This pod's record for the call, given up (a second connection with the same uuid gets nothing)."""
        return self._records.pop(call_uuid, None)

    def __len__(self) -> int:
        return len(self._records)

    @property
    def has_peers(self) -> bool:
        return self._peer_service is not None

    async def take(self, call_uuid: str) -> CallInfo | None:
        """The call's record from this pod, or else from the first peer that holds it; None within the timeout
        when nobody does (a dialplan that never POSTs /call costs one DNS lookup and a round trip per peer)."""
        info = self.take_local(call_uuid)
        if info is not None or self._peer_service is None:
            return info
        try:
            async with asyncio.timeout(self._timeout):
                info = await self._ask_peers(self._peer_service, call_uuid)
        except TimeoutError:
            metrics.PEER_LOOKUPS.labels("timeout").inc()
            log.warning("call %s: no peer answered within %.0f ms", call_uuid, self._timeout * 1000)
            return None
        metrics.PEER_LOOKUPS.labels("found" if info is not None else "none").inc()
        return info

    async def _addresses(self, service: str) -> list[str]:
        """Every address of the name (a headless Service has one per ready pod), or of each name in a comma-separated
        list (peers outside Kubernetes, e.g. several cores in one compose file)."""
        loop = asyncio.get_running_loop()
        names = [n.strip() for n in service.split(",") if n.strip()]
        found = await asyncio.gather(
            *(loop.getaddrinfo(n, self._peer_port, type=socket.SOCK_STREAM) for n in names), return_exceptions=True
        )
        addresses = {str(a[4][0]) for result in found if not isinstance(result, BaseException) for a in result}
        if not addresses:
            errors = [r for r in found if isinstance(r, BaseException)]
            raise OSError(f"{service}: {errors[0] if errors else 'no address'}")
        return sorted(addresses)

    async def _ask_peers(self, service: str, call_uuid: str) -> CallInfo | None:
        try:
            addresses = await self._addresses(service)
        except OSError as exc:
            metrics.PEER_LOOKUPS.labels("error").inc()
            log.warning("call %s: peers not found: %s", call_uuid, exc)
            return None
        if self._session is None:
            self._session = aiohttp.ClientSession()
        asks = [asyncio.ensure_future(self._ask(address, call_uuid)) for address in addresses]
        try:
            for done in asyncio.as_completed(asks):
                info = await done
                if info is not None:
                    return info
            return None
        finally:
            for ask in asks:
                ask.cancel()

    async def _ask(self, address: str, call_uuid: str) -> CallInfo | None:
        assert self._session is not None
        host = f"[{address}]" if ":" in address else address
        try:
            url = f"http://{host}:{self._peer_port}{claim_path(call_uuid)}"
            async with self._session.post(url, headers=self._headers) as resp:
                if resp.status != 200:
                    return None
                return CallInfo.from_json(await resp.json())
        except (aiohttp.ClientError, OSError, ValueError):
            return None

    async def close(self) -> None:
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()
            self._session = None
