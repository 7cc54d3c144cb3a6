"""NetworkPolicies of a stack (networkPolicy.enabled): who may reach the core's ports and the providers'.

Ingress only. The core accepts AudioSocket from `audioSocketFrom`, and HTTP from `httpFrom` and from the core
pods themselves (the peers' metadata claims); each provider accepts its port from the core pods only. Probes
come from the node's kubelet, which most CNIs never filter (see docs/operator.md).
"""

from __future__ import annotations

from typing import Any

from avr_operator.api.resource import AVRDeployment
from avr_operator.api.spec import NetworkPeer
from avr_operator.render.components import Component
from avr_operator.render.names import CORE, metadata, selector_labels

Manifest = dict[str, Any]
API_VERSION = "networking.k8s.io/v1"


def _compact(value: Any) -> Any:
    """Without empty lists and maps inside, which the API server drops (so the live object matches as written)."""
    if isinstance(value, dict):
        return {k: _compact(v) for k, v in value.items() if v not in ([], {})}
    if isinstance(value, list):
        return [_compact(v) for v in value]
    return value


def _peer(peer: NetworkPeer) -> dict[str, Any]:
    """The NetworkPolicyPeer; a selector left empty (`{}`: everything) stays, its empty parts go."""
    return {k: _compact(v) for k, v in peer.dump().items()}


def _port(port: int) -> dict[str, Any]:
    return {"protocol": "TCP", "port": port}


def _policy(owner: AVRDeployment, c: Component, ingress: list[dict[str, Any]]) -> Manifest:
    return {
        "apiVersion": API_VERSION,
        "kind": "NetworkPolicy",
        "metadata": metadata(owner, c.role),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(owner, c.role)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def network_policy(owner: AVRDeployment, c: Component) -> Manifest | None:
    """The component's NetworkPolicy, or None unless networkPolicy.enabled."""
    spec = owner.spec.network_policy
    if not spec.enabled:
        return None
    core_pods = {"podSelector": {"matchLabels": selector_labels(owner, CORE)}}
    if c.role != CORE:
        return _policy(owner, c, [{"from": [core_pods], "ports": [_port(port) for _, port in c.ports]}])
    ports = dict(c.ports)
    ingress = [
        {"from": [_peer(p) for p in spec.audio_socket_from], "ports": [_port(ports["audiosocket"])]},
        {"from": [*(_peer(p) for p in spec.http_from), core_pods], "ports": [_port(ports["http"])]},
    ]
    return _policy(owner, c, ingress)
