"""Child processes of the dev cluster: each in its own process group, logging to its own file.

A component may fork helpers, so stopping signals the whole group: SIGTERM first for a clean shutdown,
SIGKILL for whatever is left after a grace period.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: have the kernel SIGKILL it when its parent dies, even by SIGKILL.

    Without this, a test run killed hard would leave etcd and the API server running.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def excerpt(path: Path, head: int = 5, tail: int = 25) -> str:
    """The first and last lines of a log file: a usage error shows at the top, a crash at the bottom."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"({path.name} was not written)"
    if len(lines) <= head + tail:
        return "\n".join(lines)
    return "\n".join([*lines[:head], f"[... {len(lines) - head - tail} lines ...]", *lines[-tail:]])


@dataclass
class Process:
    """One running component."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, then SIGKILL it if the leader has not exited within `grace` seconds."""
        pgid = self.popen.pid  # start_new_session=True made the child its group leader
        if self.running():
            _signal_group(pgid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace)
        # Helpers of an exited leader may survive it: kill the group unconditionally.
        _signal_group(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=grace)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@dataclass
class Supervisor:
    """Starts components and stops all of them, newest first."""

    log_dir: Path
    processes: list[Process] = field(default_factory=list)

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> Process:
        log_path = self.log_dir / f"{name}.log"
        # The death signal follows the thread that forks, so only tie children to the main thread.
        tie = sys.platform == "linux" and threading.current_thread() is threading.main_thread()
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                start_new_session=True,
                preexec_fn=_die_with_parent if tie else None,  # noqa: PLW1509 - only calls prctl
            )
        process = Process(name, popen, log_path)
        self.processes.append(process)
        return process

    def stop(self, name: str) -> None:
        for process in [p for p in self.processes if p.name == name]:
            process.stop()
            self.processes.remove(process)

    def stop_all(self) -> None:
        while self.processes:
            self.processes.pop().stop()

    def check_alive(self) -> None:
        """Raise if a component has exited, with the end of its log."""
        for process in self.processes:
            if not process.running():
                raise ComponentExitedError(process)


class ComponentExitedError(RuntimeError):
    def __init__(self, process: Process) -> None:
        self.process = process
        super().__init__(
            f"{process.name} exited with status {process.popen.returncode}; {process.log_path.name}:\n"
            + excerpt(process.log_path)
        )


def wait_for(what: str, check: Callable[[], object], timeout: float, interval: float = 0.2) -> None:
    """Poll `check()` until it returns true; raise TimeoutError naming `what` otherwise.

    `check` may raise to signal a fatal condition (e.g. a component died); other exceptions are retried.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except ComponentExitedError:
            raise
        except Exception as error:
            last_error = error
        time.sleep(interval)
    detail = f" (last error: {last_error})" if last_error else ""
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
