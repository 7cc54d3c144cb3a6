"""A minimal JSON client for the API server, enough for the supervisor's own set-up and readiness checks.

The supervisor talks to the API server before any Kubernetes client library would be useful (readiness,
creating nodes, registering the metrics APIService), and a few typed HTTPS calls keep it free of one.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any

from .certs import CertFiles

JSON = dict[str, Any]


class ApiError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        self.status = status
        super().__init__(f"{method} {path} -> {status}: {body[:500]}")


class ApiClient:
    def __init__(self, server: str, *, ca: str, identity: CertFiles | None, timeout: float = 10.0) -> None:
        self.server = server.rstrip("/")
        self.timeout = timeout
        self._context = ssl.create_default_context(cafile=ca)
        if identity is not None:
            self._context.load_cert_chain(str(identity.cert), str(identity.key))

    def request(
        self, method: str, path: str, body: JSON | None = None, *, content_type: str = "application/json"
    ) -> tuple[int, str]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.server + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self._context) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as error:
            return int(error.code), error.read().decode(errors="replace")

    def call(self, method: str, path: str, body: JSON | None = None, *, content_type: str = "application/json") -> JSON:
        """Like `request`, but raise ApiError unless the status is 2xx; returns the decoded JSON body."""
        status, text = self.request(method, path, body, content_type=content_type)
        if not 200 <= status < 300:
            raise ApiError(method, path, status, text)
        decoded: JSON = json.loads(text) if text else {}
        return decoded

    def get(self, path: str) -> JSON:
        return self.call("GET", path)

    def apply(self, path: str, body: JSON, *, field_manager: str = "avr-devcluster") -> JSON:
        """Server-side apply `body` at `path` (the object's own URL)."""
        return self.call(
            "PATCH",
            f"{path}?fieldManager={field_manager}&force=true",
            body,
            content_type="application/apply-patch+yaml",
        )

    def merge_patch(self, path: str, body: JSON) -> JSON:
        return self.call("PATCH", path, body, content_type="application/merge-patch+json")

    def delete(self, path: str) -> None:
        status, text = self.request("DELETE", path)
        if status not in (200, 202, 404):
            raise ApiError("DELETE", path, status, text)
