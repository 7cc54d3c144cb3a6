"""The wheel as the images install it: built from a copy of the sources, installed into a fresh venv, and both
entry points started the way the Dockerfile's targets start them (working directory outside the sources,
PYTHONSAFEPATH=1, the venv first on PATH).

Slow (it installs every dependency, from pip's cache when warm): deselect with -m "not slow".
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "runtime", "operator", "cluster")
PACKAGES = {"avr_runtime", "avr_operator", "avr_devcluster"}
ENTRY_POINTS = {"avr-runtime", "avr-operator", "avr-devcluster"}


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    workdir: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        """The image's environment: no inherited venv or PYTHONPATH, the venv first on PATH."""
        keep = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "LC_ALL", "TMPDIR", "TZ")}
        return {
            **keep,
            "PATH": f"{self.bin}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
            "VIRTUAL_ENV": str(self.venv),
            "PYTHONSAFEPATH": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            **extra,
        }

    def run(self, *argv: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, cwd=self.workdir, env=self.env(**env), capture_output=True, text=True, timeout=timeout, check=False
        )


def _pip(*args: str, cwd: Path, timeout: float = 420) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"pip {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    src, dist, venv, workdir = base / "src", base / "dist", base / "venv", base / "work"
    src.mkdir()
    workdir.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.egg-info", "build")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    _pip("wheel", "--no-deps", "--wheel-dir", str(dist), str(src), cwd=base)
    (wheel,) = dist.glob("avr_k8s-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "install", "--no-compile",
         f"{wheel}[runtime,operator]"],
        cwd=base, capture_output=True, text=True, timeout=480, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"installing the wheel failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return Installed(wheel, venv, workdir)


def test_wheel_contents(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as archive:
        names = archive.namelist()
        (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    top_level = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith((".dist-info", ".data"))}
    assert top_level == PACKAGES, "only the three packages, never a top-level operator/ or runtime/"
    for package in PACKAGES:
        assert f"{package}/py.typed" in names
    assert "avr_operator/cli.py" in names and "avr_runtime/cli.py" in names
    # the compiled data plane is built from source with the wheel, and its types ship with it
    assert any(n.startswith("avr_runtime/server/_relay.") and n.endswith(".so") for n in names), names
    assert "avr_runtime/server/_relay.pyi" in names
    for script in ENTRY_POINTS:
        assert f"{script} = " in scripts


def test_compiled_relay_imports(installed: Installed) -> None:
    code = "from avr_runtime.server import relay; print(relay.AVAILABLE)"
    result = installed.run(str(installed.bin / "python"), "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def test_operator_module_is_the_standard_library(installed: Installed) -> None:
    code = (
        "import json, operator, sysconfig, avr_operator, avr_runtime; operator.add; print(json.dumps("
        "[operator.__file__, sysconfig.get_paths()['stdlib'], avr_operator.__file__, avr_runtime.__file__]))"
    )
    result = installed.run(str(installed.bin / "python"), "-c", code)
    assert result.returncode == 0, result.stderr
    stdlib_operator, stdlib, avr_operator, avr_runtime = (Path(p).resolve() for p in json.loads(result.stdout))
    assert stdlib_operator == stdlib / "operator.py"
    for package in (avr_operator, avr_runtime):
        assert installed.venv in package.parents, f"{package} is not the installed copy"


def test_operator_entry_point(installed: Installed) -> None:
    crd = installed.run(str(installed.bin / "avr-operator"), "crd")
    assert crd.returncode == 0, crd.stderr
    checked_in = (ROOT / "crds" / "avrdeployments.avr.agentvoiceresponse.com.yaml").read_text()
    assert yaml.safe_load(crd.stdout) == yaml.safe_load(checked_in)
    helps = installed.run(str(installed.bin / "avr-operator"), "--help")
    assert helps.returncode == 0 and "run" in helps.stdout and "crd" in helps.stdout, helps.stderr
    run_help = installed.run(str(installed.bin / "avr-operator"), "run", "--help")
    assert run_help.returncode == 0 and "--liveness" in run_help.stdout and "--metrics-port" in run_help.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@dataclass(frozen=True)
class Worker:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path


@pytest.fixture
def worker(installed: Installed, tmp_path: Path) -> Iterator[Worker]:
    http_port, audio_port = _free_port(), _free_port()
    log = tmp_path / "worker.log"
    env = installed.env(
        HOST="127.0.0.1", HTTP_PORT=str(http_port), PORT=str(audio_port), STS_URL="ws://127.0.0.1:9/sts"
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(installed.bin / "avr-runtime"), "serve"], cwd=installed.workdir, env=env, stdout=out, stderr=out
        )
    try:
        yield Worker(proc, http_port, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_runtime_serves_health_and_ready(installed: Installed, worker: Worker) -> None:
    proc, port, log = worker.proc, worker.port, worker.log
    deadline = time.monotonic() + 60
    health: tuple[int, object] | None = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the worker exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            health = _get(f"http://127.0.0.1:{port}/health")
            break
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    assert health == (200, {"status": "ok"}), log.read_text()[-3000:]
    status, ready = _get(f"http://127.0.0.1:{port}/ready")
    assert status == 200 and isinstance(ready, dict) and ready.get("status") == "ready", ready
    # The image's HEALTHCHECK one-liner, run with the installed interpreter.
    probe = (
        "import os, sys, urllib.request; port = os.environ.get('HTTP_PORT', '3000'); "
        "sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=4).status == 200 else 1)"
    )
    check = installed.run(str(installed.bin / "python"), "-c", probe, timeout=30, HTTP_PORT=str(port))
    assert check.returncode == 0, check.stderr
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, log.read_text()[-3000:]


def _wheel_of(packages: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "wheel", "--no-deps",
         "--wheel-dir", str(tmp_path), str(ROOT)],
        env={**os.environ, "AVR_PACKAGES": packages}, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_a_wheel_of_one_side_holds_that_side_and_its_command_only(tmp_path: Path) -> None:
    """What each image installs (the Dockerfile's build-runtime and build-operator stages)."""
    result = _wheel_of("avr_operator", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = tmp_path.glob("avr_k8s-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = archive.read(entry_points).decode()
        (metadata,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        extras = [line for line in archive.read(metadata).decode().splitlines() if line.startswith("Provides-Extra")]
    assert {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")} == {"avr_operator"}
    assert "avr-operator = " in scripts and "avr-runtime" not in scripts and "avr-devcluster" not in scripts
    assert {e.split(": ", 1)[1] for e in extras} >= {"runtime", "operator"}


def test_an_unknown_side_is_refused_by_name(tmp_path: Path) -> None:
    result = _wheel_of("avr_operator,avr_nothing", tmp_path)
    assert result.returncode != 0
    assert "avr_nothing" in result.stdout + result.stderr
