"""Certificates and keys for one dev-cluster run, generated fresh each time and never reused.

Two authorities, as in a kubeadm cluster: the cluster CA signs the API server's serving certificate and the
client certificates of the admin and the control-plane components; the front-proxy CA signs only the
certificate the aggregator presents to extension API servers (the metrics adapter), which trust it for the
X-Remote-User headers. ECDSA P-256 keys keep generation instant.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=2)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str, organizations: Sequence[str] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


@dataclass(frozen=True)
class CertFiles:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


class Authority:
    """A self-signed CA that issues leaf certificates."""

    def __init__(self, common_name: str) -> None:
        self._key = _new_key()
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        common_name: str,
        *,
        organizations: Sequence[str] = (),
        hosts: Sequence[str] = (),
        server: bool = False,
    ) -> tuple[bytes, bytes]:
        """A leaf certificate and key (PEM): for clients, and also for serving `hosts` if `server`."""
        key = _new_key()
        now = datetime.datetime.now(datetime.UTC)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, organizations))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if hosts:
            names: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


@dataclass(frozen=True)
class Pki:
    """Every certificate and key file one cluster run needs, at fixed names in one directory."""

    ca: Path
    front_proxy_ca: Path
    apiserver: CertFiles
    front_proxy_client: CertFiles
    admin: CertFiles
    controller_manager: CertFiles
    scheduler: CertFiles
    service_account_key: Path  # private: signs tokens in the controller-manager and API server
    service_account_pub: Path  # public: verifies them

    @classmethod
    def at(cls, directory: Path) -> Pki:
        def pair(name: str) -> CertFiles:
            return CertFiles(directory / f"{name}.crt", directory / f"{name}.key")

        return cls(
            ca=directory / "ca.crt",
            front_proxy_ca=directory / "front-proxy-ca.crt",
            apiserver=pair("apiserver"),
            front_proxy_client=pair("front-proxy-client"),
            admin=pair("admin"),
            controller_manager=pair("controller-manager"),
            scheduler=pair("scheduler"),
            service_account_key=directory / "sa.key",
            service_account_pub=directory / "sa.pub",
        )


# The names a client may use for the API server: loopback, and what in-cluster clients would use.
APISERVER_HOSTS = (
    "127.0.0.1",
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


def generate(directory: Path, *, service_ip: str, extra_hosts: Sequence[str] = ()) -> Pki:
    """Write a fresh PKI into `directory` (private keys mode 0600)."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki.at(directory)

    def write(path: Path, data: bytes, private: bool = False) -> None:
        path.write_bytes(data)
        if private:
            path.chmod(0o600)

    def pair(files: CertFiles, cert_and_key: tuple[bytes, bytes]) -> None:
        write(files.cert, cert_and_key[0])
        write(files.key, cert_and_key[1], private=True)

    ca = Authority("avr-devcluster-ca")
    front_proxy = Authority("avr-devcluster-front-proxy-ca")
    write(pki.ca, ca.cert_pem)
    write(pki.front_proxy_ca, front_proxy.cert_pem)
    pair(pki.apiserver, ca.issue("kube-apiserver", hosts=(*APISERVER_HOSTS, service_ip, *extra_hosts), server=True))
    pair(pki.front_proxy_client, front_proxy.issue("front-proxy-client"))
    pair(pki.admin, ca.issue("avr-devcluster-admin", organizations=("system:masters",)))
    pair(pki.controller_manager, ca.issue("system:kube-controller-manager"))
    pair(pki.scheduler, ca.issue("system:kube-scheduler"))
    sa_key = _new_key()
    write(pki.service_account_key, _key_pem(sa_key), private=True)
    public = sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write(pki.service_account_pub, public)
    return pki
