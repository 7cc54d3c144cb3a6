"""Kubeconfig files for the admin and for each control-plane component."""

from __future__ import annotations

from pathlib import Path

import yaml

from .certs import CertFiles


def write(path: Path, *, server: str, ca: Path, identity: CertFiles, name: str = "avr-devcluster") -> Path:
    """A kubeconfig with one cluster, one user (client certificate) and one current context."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [
            {
                "name": name,
                "user": {"client-certificate": str(identity.cert), "client-key": str(identity.key)},
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path
