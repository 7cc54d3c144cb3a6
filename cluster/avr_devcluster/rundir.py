"""The per-run directory (certificates, etcd data, logs, kubeconfig), on tmpfs when there is one.

Its name carries the owner's pid, so leftovers of a killed run can be recognised and swept by the next one,
and `avr-devcluster env` can find a cluster that `avr-devcluster up` is serving.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

PREFIX = "avr-devcluster-"
KEPT_MARKER = "kept"  # a run directory kept on purpose (for debugging) is never swept
SERVING_MARKER = "serving"  # a cluster started by `avr-devcluster up` for others to use


def root() -> Path:
    """/dev/shm if it is a writable tmpfs (etcd is faster there), else the temp directory."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm
    return Path(tempfile.gettempdir())


def _owner(path: Path) -> int | None:
    pid = path.name.removeprefix(PREFIX).split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def create() -> Path:
    """A new, private run directory; first removes those whose owner process is gone."""
    base = root()
    for path in base.glob(PREFIX + "*"):
        pid = _owner(path)
        if pid is None or _alive(pid) or (path / KEPT_MARKER).exists():
            continue
        if path.stat().st_uid == os.getuid():
            shutil.rmtree(path, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=base))


def serving() -> list[Path]:
    """Run directories of clusters that `avr-devcluster up` is serving, newest first."""
    paths = [
        p
        for p in root().glob(PREFIX + "*")
        if (p / SERVING_MARKER).exists() and (pid := _owner(p)) is not None and _alive(pid)
    ]
    return sorted(paths, key=lambda p: p.stat().st_mtime, reverse=True)
