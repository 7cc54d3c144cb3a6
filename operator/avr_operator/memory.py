"""Keeping the process's resident memory close to what it actually uses (glibc only; a no-op elsewhere).

Bursts of work (hundreds of resources created at once) allocate many short-lived objects on the API threads.
glibc gives each thread its own malloc arena and keeps freed pages, so the resident size stays at the peak
long after the burst. Fewer arenas and an occasional trim hand that memory back.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)

_M_ARENA_MAX = -8  # mallopt parameter (malloc.h)
TRIM_SECONDS = 30.0


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """Looked up once: find_library may run ldconfig, which is not free every 30 s."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def limit_arenas(arenas: int = 2) -> None:
    """Call before threads start: every thread then shares one of `arenas` malloc arenas."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_ARENA_MAX, arenas)


def trim() -> None:
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


async def trim_periodically(every: float = TRIM_SECONDS) -> None:
    while True:
        await asyncio.sleep(every)
        trim()
