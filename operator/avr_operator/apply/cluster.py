"""The few API operations the reconciler needs, as a protocol: the real client and fakes implement it."""

from __future__ import annotations

from typing import Any, Protocol

Obj = dict[str, Any]


class ApiError(Exception):
    """The API server refused a request."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class NotFoundError(ApiError):
    def __init__(self, message: str = "not found") -> None:
        super().__init__(404, message)


class Cluster(Protocol):
    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        """The object, or None when it does not exist."""

    async def list(self, api_version: str, kind: str, namespace: str, label_selector: str) -> list[Obj]: ...

    async def served(self, api_version: str, kind: str) -> bool:
        """Whether the API server serves this kind (e.g. KEDA's ScaledObject, only once KEDA is installed)."""

    async def apply(self, manifest: Obj, *, field_manager: str, dry_run: bool = False) -> Obj:
        """Server-side apply with force (the operator is the authority on the fields it sets)."""

    async def merge_patch(self, manifest: Obj, *, field_manager: str, dry_run: bool = False) -> Obj:
        """JSON merge patch of the object `manifest` names, with `manifest` (lists are replaced whole)."""

    async def delete(self, api_version: str, kind: str, namespace: str, name: str, uid: str) -> None:
        """Delete, only if the object still has this uid."""

    async def patch_status(self, api_version: str, kind: str, namespace: str, name: str, status: Obj) -> Obj:
        """Merge-patch the status subresource."""
