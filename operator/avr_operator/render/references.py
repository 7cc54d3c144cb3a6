"""Secrets and ConfigMaps a spec depends on: checked before anything is written, so a typo in a Secret name
reports Degraded instead of leaving pods stuck in CreateContainerConfigError."""

from __future__ import annotations

from dataclasses import dataclass

from avr_operator.api.spec import AVRDeploymentSpec
from avr_operator.api.types import EnvFromSource, EnvVar


@dataclass(frozen=True)
class Reference:
    kind: str  # "Secret" or "ConfigMap"
    name: str
    key: str | None  # None: the whole object
    where: str  # spec path, for the message


def _env_refs(env: tuple[EnvVar, ...], env_from: tuple[EnvFromSource, ...], where: str) -> list[Reference]:
    refs: list[Reference] = []
    for i, src in enumerate(env_from):
        if src.secret_ref is not None and not src.secret_ref.optional:
            refs.append(Reference("Secret", src.secret_ref.name, None, f"{where}.envFrom[{i}]"))
        if src.config_map_ref is not None and not src.config_map_ref.optional:
            refs.append(Reference("ConfigMap", src.config_map_ref.name, None, f"{where}.envFrom[{i}]"))
    for var in env:
        source = var.value_from
        if source is None:
            continue
        if source.secret_key_ref is not None and not source.secret_key_ref.optional:
            ref = source.secret_key_ref
            refs.append(Reference("Secret", ref.name, ref.key, f"{where}.env[{var.name}]"))
        if source.config_map_key_ref is not None and not source.config_map_key_ref.optional:
            cref = source.config_map_key_ref
            refs.append(Reference("ConfigMap", cref.name, cref.key, f"{where}.env[{var.name}]"))
    return refs


def references(spec: AVRDeploymentSpec) -> list[Reference]:
    refs = _env_refs(spec.core.env, spec.core.env_from, "core")
    webhook = spec.core.webhook
    if webhook is not None and webhook.secret_ref is not None and not webhook.secret_ref.optional:
        refs.append(Reference("Secret", webhook.secret_ref.name, webhook.secret_ref.key, "core.webhook.secretRef"))
    token = spec.core.api_token_secret_ref
    if token is not None:
        refs.append(Reference("Secret", token.name, token.key, "core.apiTokenSecretRef"))
    for role, provider in spec.providers.items():
        refs += _env_refs(provider.env, provider.env_from, f"providers.{role}")
    for i, pull in enumerate(spec.image_pull_secrets):
        refs.append(Reference("Secret", pull.name, None, f"imagePullSecrets[{i}]"))
    return refs
