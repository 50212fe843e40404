"""Certificates: self-signed ones (config checks, the lab, the ACME placeholder) and what a PEM's certificate says."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ober.config import NodeConfig
from ober.errors import OberError

OPENSSL_TIMEOUT = 30.0


def self_signed_pem(common_name: str, alt_names: Sequence[str] = (), days: int = 2) -> tuple[str, str]:
    """An EC P-256 self-signed certificate and its key, as PEM text.

    Args:
        common_name: the subject's CN.
        alt_names: subjectAltName entries such as ``DNS:s3.example.test`` or ``IP:198.51.100.10``.
        days: validity.
    """
    with tempfile.TemporaryDirectory() as work:
        key, crt = Path(work, "key.pem"), Path(work, "crt.pem")
        argv = [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            f"/CN={common_name}",
            "-days",
            str(days),
            "-keyout",
            str(key),
            "-out",
            str(crt),
        ]
        if alt_names:
            argv += ["-addext", "subjectAltName=" + ",".join(alt_names)]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=OPENSSL_TIMEOUT, check=False)
        except FileNotFoundError:
            raise OberError("openssl is not installed", "apt-get install openssl") from None
        except subprocess.TimeoutExpired:
            raise OberError(f"openssl did not finish in {OPENSSL_TIMEOUT:g}s") from None
        if done.returncode != 0:
            raise OberError(
                f"openssl could not make a certificate: {(done.stderr.strip() or 'no output').splitlines()[-1]}"
            )
        return crt.read_text(), key.read_text()


def write_pem(path: Path, common_name: str, alt_names: Sequence[str] = ()) -> Path:
    """Write certificate + key in one PEM (what HAProxy's ``crt`` reads), mode 600; returns ``path``."""
    certificate, key = self_signed_pem(common_name, alt_names)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(certificate + key)
    path.chmod(0o600)
    return path


PLACEHOLDER_ORG = "ober placeholder"
"""The subject organisation of the certificate ober puts where an ACME certificate will be, until the first one."""
PLACEHOLDER_DAYS = 90


@dataclass(frozen=True)
class CertFacts:
    """What a PEM's first certificate says: for status, expiry decisions and checking what a node serves."""

    subject: str
    issuer: str
    serial: str
    """Upper-case hex, as openssl and HAProxy show it."""
    not_before: datetime
    not_after: datetime
    names: tuple[str, ...]
    """The DNS names (subjectAltName) it is valid for."""
    placeholder: bool

    def days_left(self, now: datetime | None = None) -> float:
        """Days until it expires (negative once it has)."""
        return (self.not_after - (now or datetime.now(UTC))).total_seconds() / 86400

    def as_dict(self, now: datetime | None = None) -> dict[str, object]:
        """The ``--json`` form (no key material)."""
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "serial": self.serial,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "days_left": round(self.days_left(now), 1),
            "names": list(self.names),
            "placeholder": self.placeholder,
        }


def _name(name: x509.Name) -> str:
    common = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(common[0].value) if common else name.rfc4514_string()


def cert_facts(pem_text: str | bytes) -> CertFacts:
    """The facts of the first PEM certificate in ``pem_text`` (a chain, cert + key, tool output), or of one DER.

    Raises:
        OberError: there is no readable certificate in it.
    """
    data = pem_text.encode() if isinstance(pem_text, str) else pem_text
    try:
        start = data.find(b"-----BEGIN CERTIFICATE-----")
        if start >= 0:
            certificate = x509.load_pem_x509_certificate(data[start:])
        else:
            certificate = x509.load_der_x509_certificate(data)
    except ValueError:
        raise OberError("no readable certificate in it", "a PEM with the certificate first, then its chain") from None
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(str(name) for name in sans.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    organisation = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return CertFacts(
        subject=_name(certificate.subject),
        issuer=_name(certificate.issuer),
        serial=f"{certificate.serial_number:X}",
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        names=names,
        placeholder=bool(organisation) and organisation[0].value == PLACEHOLDER_ORG,
    )


def placeholder_pem(domains: Sequence[str], days: int = PLACEHOLDER_DAYS) -> str:
    """A self-signed certificate + key for ``domains``, marked as ober's placeholder (what HAProxy starts with).

    HAProxy refuses a ``crt`` directory without a certificate, so an ACME node serves this until the fleet's first
    ``ober fleet certs renew``; ``ober doctor`` and ``ober fleet certs status`` say it is a placeholder.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, PLACEHOLDER_ORG),
            x509.NameAttribute(NameOID.COMMON_NAME, domains[0] if domains else "ober"),
        ]
    )
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
    )
    if domains:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in domains]), False)
    certificate = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode() + key_pem.decode()


def installed(config: NodeConfig) -> list[tuple[str, CertFacts | None, str | None]]:
    """Each certificate file HAProxy's ``crt`` reads on this node: (path, its facts, or why they cannot be read)."""
    crt = Path(config.certificates.crt_path(config.install_path))
    try:
        files = sorted(p for p in crt.iterdir() if p.suffix == ".pem") if crt.is_dir() else [crt]
    except OSError as exc:
        return [(str(crt), None, exc.strerror or str(exc))]
    found: list[tuple[str, CertFacts | None, str | None]] = []
    for path in files:
        try:
            found.append((str(path), cert_facts(path.read_bytes()), None))
        except OSError as exc:
            found.append((str(path), None, exc.strerror or str(exc)))
        except OberError as exc:
            found.append((str(path), None, exc.message))
    return found


def certificate_documents(found: list[tuple[str, CertFacts | None, str | None]]) -> list[dict[str, object]]:
    """:func:`installed` as JSON (``ober status``, ``ober certs show``): each file, its facts or its problem."""
    return [
        {"path": path, **(facts.as_dict() if facts else {}), **({"error": problem} if problem else {})}
        for path, facts, problem in found
    ]
