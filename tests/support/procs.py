"""Helpers for tests that run the worker and reference providers as real processes on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from avr_runtime.client.audiosocket import CallResult
from avr_runtime.services.handover import Stay


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(url: str, data: Any = None, timeout: float = 5.0) -> tuple[int, Any, dict[str, str]]:
    body = None if data is None else orjson.dumps(data)
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, _parse(raw), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, _parse(err.read()), dict(err.headers)


def _parse(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode(errors="replace")


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    log_path: Path
    ports: dict[str, int] = field(default_factory=dict)
    host: str = "127.0.0.1"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def url(self, path: str, port: str = "http") -> str:
        return f"http://{self.host}:{self.ports[port]}{path}"

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Value of one sample from /metrics (0 when absent)."""
        with urllib.request.urlopen(self.url("/metrics"), timeout=5) as resp:
            text = resp.read().decode()
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if key == want:
                return float(value)
        return 0.0

    def handovers(self) -> dict[str, float]:
        """The data plane handover decisions counted so far: ``moved``, or each reason calls stayed in Python
        (outcomes still at zero left out)."""
        outcomes = [("moved", "none"), *(("python", reason.value) for reason in Stay)]
        counted = {
            reason: self.metric("avr_data_plane_handovers_total", {"result": result, "reason": reason})
            for result, reason in outcomes
        }
        return {("moved" if reason == "none" else reason): n for reason, n in counted.items() if n}

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        return self.popen.wait(timeout=timeout)


def wait_healthy(proc: Proc, url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"process exited with {proc.popen.returncode}:\n{proc.log}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"not healthy after {timeout}s:\n{proc.log}")


def spawn(args: list[str], env: dict[str, str], tmp: Path, name: str, prefix: Sequence[str] = ()) -> Proc:
    """``prefix``: a command that runs ours (e.g. ``setpriv`` to start it with fewer privileges)."""
    log_path = tmp / f"{name}.log"
    out = log_path.open("wb")
    if "AVR_SANITIZER_PRELOAD" in os.environ:  # scripts/sanitize: the Python children run the sanitized build too
        env = {**env, "LD_PRELOAD": os.environ["AVR_SANITIZER_PRELOAD"]}
    popen = subprocess.Popen(
        [*prefix, sys.executable, "-m", "avr_runtime", *args], env=env, stdout=out, stderr=subprocess.STDOUT
    )
    return Proc(popen, log_path)


def sts_url(proc: Proc) -> str:
    return f"ws://127.0.0.1:{proc.ports['http']}"


def chain_env(proc: Proc) -> dict[str, str]:
    base = f"http://127.0.0.1:{proc.ports['http']}"
    return {
        "ASR_URL": f"{base}/speech-to-text-stream",
        "LLM_URL": f"{base}/prompt-stream",
        "TTS_URL": f"{base}/text-to-speech-stream",
    }


ProviderFactory = Callable[..., Proc]
WorkerFactory = Callable[..., Proc]


def paced_whole(result: CallResult) -> bool:
    """One outbound frame per inbound frame, give or take: a loaded machine may lose a few pacer slots (the pacer
    never catches up in a burst), so up to 10% fewer, never more than a few extra."""
    received, sent = len(result.audio_frames), result.frames_sent
    return 0.9 * sent <= received <= sent + 3
