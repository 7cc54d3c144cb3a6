"""Counting write requests through the API server's audit log.

The API server logs every mutating request (one JSON line each, written before it answers) and nothing else,
so a test can take a mark, act, and list exactly the writes that happened since - e.g. to prove that a
controller's no-op resync writes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")

POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    verbs: ["create", "update", "patch", "delete", "deletecollection"]
  - level: None
"""


@dataclass(frozen=True)
class WriteRequest:
    """One audited write: who changed what, and the response status code."""

    verb: str
    username: str
    user_agent: str
    resource: str
    subresource: str
    namespace: str
    name: str
    code: int
    dry_run: bool

    @classmethod
    def from_event(cls, event: dict[str, object]) -> WriteRequest:
        def text(mapping: object, key: str) -> str:
            value = mapping.get(key, "") if isinstance(mapping, dict) else ""
            return value if isinstance(value, str) else ""

        obj = event.get("objectRef", {})
        status = event.get("responseStatus", {})
        code = status.get("code", 0) if isinstance(status, dict) else 0
        return cls(
            verb=text(event, "verb"),
            username=text(event.get("user", {}), "username"),
            user_agent=text(event, "userAgent"),
            resource=text(obj, "resource"),
            subresource=text(obj, "subresource"),
            namespace=text(obj, "namespace"),
            name=text(obj, "name"),
            code=code if isinstance(code, int) else 0,
            dry_run="dryRun=" in text(event, "requestURI"),
        )


class AuditLog:
    """Reads the write requests the API server has logged."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        """A position to count from: pass it as `since` to `writes`."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def writes(
        self,
        since: int = 0,
        *,
        username: str | None = None,
        user_agent: str | None = None,
        namespace: str | None = None,
        resource: str | None = None,
        name: str | None = None,
        include_dry_run: bool = False,
    ) -> list[WriteRequest]:
        """Write requests logged after `since`, optionally only those matching every given filter.

        `user_agent` matches as a prefix (clients append version and platform to their name).
        """
        with self.path.open("rb") as log:
            log.seek(since)
            lines = log.read().splitlines()
        result = []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line still being written
            request = WriteRequest.from_event(event)
            if request.verb not in WRITE_VERBS or (request.dry_run and not include_dry_run):
                continue
            if username is not None and request.username != username:
                continue
            if user_agent is not None and not request.user_agent.startswith(user_agent):
                continue
            if namespace is not None and request.namespace != namespace:
                continue
            if resource is not None and request.resource != resource:
                continue
            if name is not None and request.name != name:
                continue
            result.append(request)
        return result
