"""Pod template of a component: probes, graceful shutdown, restricted Pod Security, spreading."""

from __future__ import annotations

from typing import Any

from avr_operator.api.resource import AVRDeployment
from avr_operator.constants import ANNOTATION_CONFIG_HASH
from avr_operator.render.components import Component
from avr_operator.render.names import labels, selector_labels

# The guide's health check: every 30 s, 10 s timeout, 3 retries.
LIVENESS = {"periodSeconds": 30, "timeoutSeconds": 10, "failureThreshold": 3}
# Readiness reacts fast: the worker reports 503 while draining or at capacity.
READINESS = {"periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 1, "successThreshold": 1}
# Up to 2 minutes to start before liveness applies.
STARTUP = {"periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 60}


def _probes(c: Component) -> dict[str, Any]:
    if c.http_probes:
        http_port = dict(c.ports)["http"]

        def get(path: str) -> dict[str, Any]:
            return {"httpGet": {"path": path, "port": http_port}}

        return {
            "startupProbe": {**get("/health"), **STARTUP},
            "livenessProbe": {**get("/health"), **LIVENESS},
            "readinessProbe": {**get("/ready"), **READINESS},
        }
    # AVR's provider images have no health endpoint: an open port is the best signal available.
    tcp = {"tcpSocket": {"port": c.ports[0][1]}}
    return {
        "startupProbe": {**tcp, **STARTUP},
        "livenessProbe": {**tcp, **LIVENESS},
        "readinessProbe": {**tcp, "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 1},
    }


def _container(c: Component) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": c.role,
        "image": c.image,
        "ports": [{"name": name, "containerPort": port, "protocol": "TCP"} for name, port in c.ports],
        # The operator's ConfigMap comes last among the sources: spec fields beat keys of user Secrets.
        "envFrom": [*c.env_from, {"configMapRef": {"name": c.name}}],
        "resources": c.resources,
        **_probes(c),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if c.log_dir is not None and c.log_dir != "/tmp":
        container["volumeMounts"].append({"name": "logs", "mountPath": c.log_dir})
    if c.env:
        container["env"] = c.env
    if c.image_pull_policy:
        container["imagePullPolicy"] = c.image_pull_policy
    if c.args:
        container["args"] = list(c.args)
    if c.pre_stop_seconds > 0:
        # The sleep action (Kubernetes >= 1.30) needs no shell in the image.
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": c.pre_stop_seconds}}}
    return container


def _spread(selector: dict[str, str]) -> list[dict[str, Any]]:
    """Spread over nodes, then zones; ScheduleAnyway so a one-node cluster still runs everything."""
    return [
        {
            "maxSkew": 1,
            "topologyKey": key,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector},
        }
        for key in ("kubernetes.io/hostname", "topology.kubernetes.io/zone")
    ]


def pod_template(owner: AVRDeployment, c: Component) -> dict[str, Any]:
    selector = selector_labels(owner, c.role)
    spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": c.grace_seconds,
        # Only a pod with an account of its own gets a token (bound to the pod, which the admission policy checks).
        "automountServiceAccountToken": c.service_account is not None,
        # Service links would add *_PORT variables that could clash with the worker's own PORT settings.
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": c.run_as_user,
            "runAsGroup": c.run_as_user,
            "fsGroup": c.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "topologySpreadConstraints": _spread(selector),
        "containers": [_container(c)],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}],
    }
    if c.log_dir is not None and c.log_dir != "/tmp":
        # The root filesystem is read-only: the log file's directory needs a writable volume of its own.
        spec["volumes"].append({"name": "logs", "emptyDir": {}})
    if c.service_account is not None:
        spec["serviceAccountName"] = c.service_account
    if owner.spec.image_pull_secrets:
        spec["imagePullSecrets"] = [s.dump() for s in owner.spec.image_pull_secrets]
    return {
        "metadata": {
            "labels": labels(owner, c.role),
            "annotations": {**c.pod_annotations, ANNOTATION_CONFIG_HASH: c.config_hash},
        },
        "spec": spec,
    }
