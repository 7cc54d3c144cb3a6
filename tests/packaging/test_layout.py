"""The source layout: the repository root holds no importable package, so a Python started there (``python -m
pytest``, ``python -c``) imports the standard library's ``operator`` and the editable install's packages, with no
``-P`` or ``PYTHONSAFEPATH`` needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HALVES = {"avr_runtime": "runtime", "avr_operator": "operator", "avr_devcluster": "cluster"}


def _run_at_root(*argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """This interpreter, started at the root without what would keep the working directory off sys.path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSAFEPATH", "PYTHONPATH")}
    return subprocess.run(
        [sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_a_python_started_at_the_root_imports_the_stdlib_operator_and_our_packages() -> None:
    code = (
        "import json, operator, avr_runtime, avr_operator, avr_devcluster; operator.itemgetter; print(json.dumps("
        "[operator.__file__, avr_runtime.__file__, avr_operator.__file__, avr_devcluster.__file__]))"
    )
    result = _run_at_root("-c", code, timeout=60)
    assert result.returncode == 0, result.stderr
    stdlib_operator, *ours = (Path(p).resolve() for p in json.loads(result.stdout))
    assert stdlib_operator == Path(sysconfig.get_paths()["stdlib"]).resolve() / "operator.py"
    for package, path in zip(HALVES, ours, strict=True):
        assert path == ROOT / HALVES[package] / package / "__init__.py"


def test_no_top_level_folder_is_a_package() -> None:
    """A folder at the root with an ``__init__.py`` would be importable under its own name from there."""
    packages = sorted(p.parent.name for p in ROOT.glob("*/__init__.py"))
    assert packages == []


def test_python_m_pytest_runs_from_the_root() -> None:
    result = _run_at_root("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit/test_g711.py", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout
