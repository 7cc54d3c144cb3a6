"""`avr-devcluster demo`: its pure helpers, and one full run against the session's cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import yaml

from avr_devcluster import demo
from avr_devcluster.testing import ClusterUnderTest


def test_secret_references_cover_env_from_key_refs_and_the_webhook() -> None:
    spec: dict[str, Any] = {
        "core": {
            "webhook": {"url": "https://x", "secretRef": {"name": "hook", "key": "secret"}},
            "env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "a"}}}],
            "envFrom": [{"secretRef": {"name": "bulk"}}, {"configMapRef": {"name": "not-a-secret"}}],
        },
        "providers": {"sts": {"env": [{"name": "B", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "b"}}}]}},
    }
    assert demo.secret_references(spec) == {"hook": {"secret"}, "keys": {"a", "b"}, "bulk": set()}


def test_placeholder_secrets_of_the_default_example() -> None:
    resource = yaml.safe_load(demo.DEFAULT_EXAMPLE.read_text())
    secrets = {s["metadata"]["name"]: s for s in demo.placeholder_secrets(resource, "ns")}
    assert set(secrets) == {"openai", "avr-webhook"}
    assert secrets["avr-webhook"]["stringData"] == {"secret": demo.PLACEHOLDER}
    assert secrets["openai"]["metadata"]["namespace"] == "ns" and secrets["openai"]["stringData"]


def test_worker_env_points_at_local_ports_and_drops_the_webhook() -> None:
    settings = {"PORT": "5001", "STS_URL": "ws://x-sts:6030", "WEBHOOK_URL": "https://crm", "AUDIO_CODEC": "opus"}
    base = {"PATH": "/bin", "WEBHOOK_SECRET": "s", "LOG_FILE": "/var/log/x", "AUDIO_CODEC": "pcm16"}
    env = demo.worker_env(settings, sts_url="ws://127.0.0.1:9", port=1, http_port=2, base=base)
    assert env["STS_URL"] == "ws://127.0.0.1:9" and env["PORT"] == "1" and env["HTTP_PORT"] == "2"
    assert env["HOST"] == "127.0.0.1" and env["AUDIO_CODEC"] == "opus" and env["PATH"] == "/bin"
    assert not {"WEBHOOK_URL", "WEBHOOK_SECRET", "LOG_FILE"} & set(env)


def _deployment(want: int, **status: int) -> dict[str, Any]:
    full = {"replicas": want, "readyReplicas": want, "availableReplicas": want, "updatedReplicas": want}
    full |= {"observedGeneration": 1, **status}
    return {"metadata": {"generation": 1}, "spec": {"replicas": want}, "status": full}


def test_stack_settled() -> None:
    hpa = {"spec": {"minReplicas": 3}, "status": {"currentReplicas": 3, "desiredReplicas": 3}}
    assert demo.stack_settled([_deployment(3)], [hpa])
    assert not demo.stack_settled([], [])
    assert not demo.stack_settled([_deployment(3, availableReplicas=2)], [hpa])
    assert not demo.stack_settled([_deployment(1)], [{"spec": {"minReplicas": 3}, "status": {"currentReplicas": 1}}])


def test_call_lines() -> None:
    summary = {"uuid": "u", "sent_frames": 10, "received_frames": 11, "hangup_received": True, "error_codes": []}
    lines = demo.call_lines(summary)
    assert lines[0].startswith("call u: sent 10 frames") and "error codes: none" in lines[-1]


def test_full_demo_against_the_session_cluster(cluster: ClusterUnderTest) -> None:
    local = cluster.require_local()
    env = dict(os.environ, USE_EXISTING_CLUSTER="1", KUBECONFIG=str(cluster.kubeconfig))
    argv = [sys.executable, "-m", "avr_devcluster.cli", "demo", "--bin-dir", str(local.bin_dir)]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "[7/7] teardown" in out and "demo: finished" in out
    assert "sts-openai   True    3/3" in out
    assert "worker exited with status 0 after SIGTERM" in out
