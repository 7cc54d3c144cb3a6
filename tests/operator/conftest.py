"""Shared fixtures: the examples directory and a minimal valid AVRDeployment body."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

MINIMAL: dict[str, Any] = {
    "apiVersion": "avr.agentvoiceresponse.com/v1alpha1",
    "kind": "AVRDeployment",
    "metadata": {"name": "demo", "namespace": "calls", "uid": "1234-abcd", "generation": 1},
    "spec": {
        "core": {"image": "avr-runtime:test"},
        "providers": {"sts": {"image": "agentvoiceresponse/avr-sts-openai"}},
    },
}


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture
def make_body() -> Callable[..., dict[str, Any]]:
    """A deep copy of MINIMAL with `spec` updated by the given top-level keys."""

    def make(**spec: Any) -> dict[str, Any]:
        body = copy.deepcopy(MINIMAL)
        body["spec"].update(spec)
        return body

    return make
