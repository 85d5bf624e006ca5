"""Certificates for the local control plane: one CA, the API server's serving certificate, client
certificates for the local users (the API server reads the user from CN and the groups from O), and the
service-account signing key. Generated once and kept, so restarts keep the same identities."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=3650)
KUBERNETES_SERVICE_IP = "10.0.0.1"  # the first address of the service range (cluster.SERVICE_CIDR)


@dataclass(frozen=True)
class Identity:
    """A local user: the kubeconfig context name, the user name and its groups."""

    context: str
    user: str
    groups: tuple[str, ...]


OPERATOR_USER = "system:serviceaccount:airun-system:airun-operator"

IDENTITIES: tuple[Identity, ...] = (
    Identity("admin", "admin", ("system:masters",)),
    Identity("alice", "alice", ("approvers",)),
    Identity("bob", "bob", ("developers",)),
    Identity(
        "agent",
        "system:serviceaccount:agents:planner",
        ("system:serviceaccounts", "system:serviceaccounts:agents"),
    ),
    # The operator runs under its own least-privilege identity, as it would in a real cluster.
    Identity(
        "operator",
        OPERATOR_USER,
        ("system:serviceaccounts", "system:serviceaccounts:airun-system"),
    ),
)

# The control plane's own components, each with its own client certificate and kubeconfig (not contexts of
# the users' kubeconfig): the API server's bootstrap RBAC already binds these users to their roles.
CONTROLLER_MANAGER = Identity("kube-controller-manager", "system:kube-controller-manager", ())
SCHEDULER = Identity("kube-scheduler", "system:kube-scheduler", ())
COMPONENTS: tuple[Identity, ...] = (CONTROLLER_MANAGER, SCHEDULER)


def node_identity(node: str) -> Identity:
    """The kubelet of NODE: the Node authorizer lets it read what its own Pods need, nothing else."""
    return Identity("kubelet", f"system:node:{node}", ("system:nodes",))


KUBE_PROXY = Identity("kube-proxy", "system:kube-proxy", ())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


class PKI:
    """The files under DIR: ca.{crt,key}, apiserver.{crt,key}, sa.{key,pub}, users/CONTEXT.{crt,key}.

    SERVER_ADDRESSES are more addresses the API server's certificate names (loopback always, and the
    `kubernetes` Service's cluster IP): the node's address when Pods reach it (make e2e)."""

    def __init__(
        self,
        directory: Path,
        *,
        server_addresses: tuple[str, ...] = (),
        components: tuple[Identity, ...] = COMPONENTS,
    ) -> None:
        self.dir = directory
        self.server_addresses = server_addresses
        self.components = components
        self.ca_cert = directory / "ca.crt"
        self.ca_key = directory / "ca.key"
        self.server_cert = directory / "apiserver.crt"
        self.server_key = directory / "apiserver.key"
        self.webhook_cert = directory / "webhook.crt"
        self.webhook_key = directory / "webhook.key"
        self.sa_key = directory / "sa.key"
        self.sa_pub = directory / "sa.pub"

    def user_cert(self, context: str) -> Path:
        return self.dir / "users" / f"{context}.crt"

    def user_key(self, context: str) -> Path:
        return self.dir / "users" / f"{context}.key"

    def ensure(self) -> None:
        """Creates whatever is missing; existing files are kept (the same identities across restarts)."""
        (self.dir / "users").mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        if not (self.ca_cert.exists() and self.ca_key.exists()):
            self._make_ca()
        ca_key = serialization.load_pem_private_key(self.ca_key.read_bytes(), None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        ca_cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        if not self.server_cert.exists():
            self._make_server(ca_key, ca_cert, "kube-apiserver", self.server_cert, self.server_key)
        if not self.webhook_cert.exists():
            # The operator's admission webhooks, called by the API server on 127.0.0.1.
            self._make_server(ca_key, ca_cert, "airun-webhooks", self.webhook_cert, self.webhook_key)
        for identity in (*IDENTITIES, *self.components):
            if not self.user_cert(identity.context).exists():
                self._make_client(ca_key, ca_cert, identity)
        if not self.sa_key.exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            _write_key(self.sa_key, key)
            self.sa_pub.write_bytes(
                key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )

    def ensure_identity(self, identity: Identity) -> None:
        """The client certificate of one more identity (a node's kubelet, kube-proxy), made once."""
        self.ensure()
        if not self.user_cert(identity.context).exists():
            ca_key = serialization.load_pem_private_key(self.ca_key.read_bytes(), None)
            assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
            self._make_client(ca_key, x509.load_pem_x509_certificate(self.ca_cert.read_bytes()), identity)

    def _make_ca(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "airun-local-ca")])
        cert = (
            _builder(name, name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        _write_key(self.ca_key, key)
        _write_cert(self.ca_cert, cert)

    def _make_server(
        self,
        ca_key: ec.EllipticCurvePrivateKey,
        ca_cert: x509.Certificate,
        common_name: str,
        cert: Path,
        key_file: Path,
    ) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        sans = [
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes"),
            x509.DNSName("kubernetes.default.svc"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
            x509.IPAddress(ipaddress.ip_address(KUBERNETES_SERVICE_IP)),
            *(x509.IPAddress(ipaddress.ip_address(a)) for a in self.server_addresses),
        ]
        signed = (
            _builder(name, ca_cert.subject, key.public_key())
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write_key(key_file, key)
        _write_cert(cert, signed)

    def _make_client(self, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, identity: Identity) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, identity.user)]
        attributes += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in identity.groups]
        cert = (
            _builder(x509.Name(attributes), ca_cert.subject, key.public_key())
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write_key(self.user_key(identity.context), key)
        _write_cert(self.user_cert(identity.context), cert)
