"""Certificates: self-signed ones, what a PEM's certificate says, and inspecting the PEMs HAProxy serves.

Self-signed ones are for config checks, the lab and the ACME placeholder. The inspection (expiry, the private key
matching, the chain) is what ``ober doctor``, ``ober test`` and ``ober certs reload`` share.
"""

from __future__ import annotations

import re
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

from ober.atomic import write_atomic
from ober.checks.base import Check
from ober.config import NodeConfig
from ober.errors import OberError

OPENSSL_TIMEOUT = 30.0
"""Seconds for openssl to make a certificate."""
INSPECT_TIMEOUT = 15.0
"""Seconds for one openssl run that inspects a certificate."""
EXPIRY_WARN_DAYS = 14
SYSTEM_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
# Files HAProxy reads as companions of a certificate in a crt directory, not as certificates of their own.
_COMPANIONS = (".key", ".issuer", ".ocsp", ".sctl")
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----[\s\S]*?-----END \1-----")
_VERIFY_ERROR = re.compile(r"error (\d+) at (\d+) depth lookup: ?(.*)")


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
        done = _openssl(argv, timeout=OPENSSL_TIMEOUT)
        if done.returncode != 0:
            raise OberError(
                f"openssl could not make a certificate: {(done.stderr.strip() or 'no output').splitlines()[-1]}"
            )
        return crt.read_text(), key.read_text()


def write_pem(path: Path, common_name: str, alt_names: Sequence[str] = ()) -> Path:
    """Write certificate + key in one PEM (what HAProxy's ``crt`` reads), mode 600; returns ``path``."""
    certificate, key = self_signed_pem(common_name, alt_names)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, certificate + key, 0o600)
    return path


# --- inspecting the PEMs HAProxy serves -----------------------------------------------------------------------


def _openssl(args: list[str], stdin: str = "", timeout: float = INSPECT_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``openssl ARGS``; its absence or a hang is an OberError (what it says about a certificate is not)."""
    try:
        return subprocess.run(
            ["openssl", *args], input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise OberError("openssl is not installed here", "install openssl") from None
    except subprocess.TimeoutExpired:
        raise OberError(f"openssl {args[0]} did not finish in {timeout:g}s") from None


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "no output")


def system_ca_bundle() -> str | None:
    """The distribution's CA bundle (Debian/Ubuntu, then RHEL), or None to use OpenSSL's default store."""
    return next((path for path in SYSTEM_CA_BUNDLES if Path(path).is_file()), None)


def pem_files(pem: Path) -> list[Path]:
    """The PEM itself, or the certificates HAProxy loads from a crt directory."""
    if not pem.is_dir():
        return [pem]
    return sorted(
        path
        for path in pem.iterdir()
        if path.is_file() and not path.name.startswith(".") and not path.name.endswith(_COMPANIONS)
    )


def _expiry(label: str, leaf: str, now: datetime) -> Check:
    done = _openssl(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-startdate", "-enddate"], leaf)
    if done.returncode != 0:
        return Check(label, "fail", f"not a readable certificate: {_first_line(done.stderr)}", "replace the PEM")
    fields = dict(line.partition("=")[::2] for line in done.stdout.splitlines())
    try:
        start, end = (
            datetime.strptime(fields[key].strip(), "%b %d %H:%M:%S %Y %Z").replace(tzinfo=UTC)
            for key in ("notBefore", "notAfter")
        )
    except (KeyError, ValueError):
        return Check(label, "fail", f"openssl's validity dates were not understood: {done.stdout!r}"[:200])
    subject = fields.get("subject", "").strip() or "no subject"
    renew = "renew the certificate, replace the PEM, then systemctl reload ober-http"
    if end <= now:
        return Check(label, "fail", f"{subject}: expired on {end:%Y-%m-%d}", renew)
    if start > now:
        return Check(label, "fail", f"{subject}: not valid before {start:%Y-%m-%d %H:%M} UTC", "check this clock")
    days = (end - now).days
    if days < EXPIRY_WARN_DAYS:
        return Check(label, "warn", f"{subject}: expires in {days} days ({end:%Y-%m-%d})", renew)
    return Check(label, "ok", f"{subject}: valid until {end:%Y-%m-%d} ({days} days)")


def _key_match(label: str, path: Path, leaf: str, keys: list[str]) -> Check:
    if not keys:
        # HAProxy reads the key from "<file>.key" when the PEM has none.
        companion = path.with_name(path.name + ".key")
        text = companion.read_text(encoding="utf-8", errors="replace") if companion.is_file() else ""
        keys = [m.group(0) for m in _PEM_BLOCK.finditer(text) if m.group(1).endswith("PRIVATE KEY")]
    if not keys:
        return Check(label, "fail", "no private key in it (nor in a .key beside it)", "append the key to the PEM")
    # -passin keeps openssl from prompting on an encrypted key (HAProxy could not read that one either).
    key_pub = _openssl(["pkey", "-pubout", "-passin", "pass:"], keys[0])
    if key_pub.returncode != 0:
        return Check(
            label, "fail", "the private key is unreadable (encrypted?)", "HAProxy needs it unencrypted: openssl pkey"
        )
    cert_pub = _openssl(["x509", "-noout", "-pubkey"], leaf)
    if cert_pub.returncode != 0 or cert_pub.stdout.strip() != key_pub.stdout.strip():
        return Check(
            label, "fail", "the private key does not match the certificate", "put the certificate's own key in the PEM"
        )
    return Check(label, "ok", "private key present and matching the certificate")


def _chain(label: str, leaf: str, extras: list[str], ca_file: str | None) -> Check:
    args = ["verify", "-no_check_time", "-purpose", "sslserver"]  # expiry is a check of its own
    trusted = ca_file or system_ca_bundle()
    if trusted:
        args += ["-CAfile", trusted]
    with tempfile.TemporaryDirectory(prefix="ober-chain-") as work:
        if extras:
            untrusted = Path(work, "untrusted.pem")
            untrusted.write_text("\n".join(extras) + "\n")
            args += ["-untrusted", str(untrusted)]
        done = _openssl(args, leaf)
    if done.returncode == 0:
        return Check(label, "ok", f"chain verifies ({len(extras)} more certificates in the PEM)")
    found = _VERIFY_ERROR.search(done.stdout + done.stderr)
    code, reason = (int(found.group(1)), found.group(3).strip()) if found else (-1, _first_line(done.stderr))
    if code == 18:  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
        return Check(label, "warn", "self-signed: S3 clients trust it only if given it", "use a CA clients trust")
    if code == 19:  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN: a private root, included in the PEM
        return Check(label, "warn", f"{reason}: a private CA", "clients must trust that root; or use a public CA")
    if code in (2, 20):  # the issuer is neither in the PEM nor trusted here
        return Check(
            label,
            "fail",
            f"chain incomplete: {reason}",
            "append the intermediate certificates to the PEM after the leaf",
        )
    return Check(label, "fail", f"chain does not verify: {reason}", "use a certificate valid for TLS servers")


def check_pem(path: Path, now: datetime, ca_file: str | None) -> list[Check]:
    """One PEM file's certificate: its expiry, its private key (in it or a ``.key`` beside it), its chain."""
    label = f"cert {path.name}"
    text = path.read_text(encoding="utf-8", errors="replace")
    blocks = [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(text)]
    certs = [block for kind, block in blocks if kind == "CERTIFICATE"]
    keys = [block for kind, block in blocks if kind.endswith("PRIVATE KEY")]
    if not certs:
        return [Check(label, "fail", f"{path}: no certificate in it", "put the certificate, chain and key in it")]
    return [
        _expiry(f"{label} expiry", certs[0], now),
        _key_match(f"{label} key", path, certs[0], keys),
        _chain(f"{label} chain", certs[0], certs[1:], ca_file),
    ]


def check_certificates(config: NodeConfig, now: datetime | None = None, *, ca_file: str | None = None) -> list[Check]:
    """The TLS certificate(s) HAProxy serves: expiry, the key matching, the chain verifying.

    Args:
        config: the node's config (``certificates.pem``: a file, or a directory of them).
        now: the time to judge expiry against (default: now).
        ca_file: trusted CAs for the chain (default: the system's bundle).
    """
    certificates = config.certificates
    pem = Path(certificates.crt_path(config.install_path))
    if certificates.acme is not None:
        placeholder = acme_placeholder_check(pem)
        if placeholder is not None:
            return [placeholder]
    if not pem.exists():
        return [
            Check(
                "certificates",
                "fail",
                f"{pem}: no such file or directory",
                "ober config puts a placeholder there; then ober fleet certs renew on the workstation"
                if certificates.acme
                else "install the PEM there (certificate, intermediates, private key; mode 600)",
            )
        ]
    unreadable = "run as root, or fix certificates.pem"
    try:
        files = pem_files(pem)
    except OSError as exc:
        return [Check("certificates", "fail", f"{pem}: {exc.strerror}", unreadable)]
    if not files:
        return [Check("certificates", "fail", f"{pem}: no certificates in the directory", "put the PEMs there")]
    moment = now or datetime.now(UTC)
    checks: list[Check] = []
    for path in files:
        try:
            checks += check_pem(path, moment, ca_file)
        except OSError as exc:
            checks.append(Check(f"cert {path.name}", "fail", f"{path}: {exc.strerror}", unreadable))
        except OberError as exc:  # openssl missing or hung: the same for every file
            return [*checks, Check("certificates", "fail", exc.message, exc.fix)]
    return checks


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


def acme_placeholder_check(directory: Path) -> Check | None:
    """A warning when an ACME node still serves ober's placeholder (no certificate issued yet); None otherwise."""
    try:
        found = [cert_facts(path.read_bytes()) for path in pem_files(directory)] if directory.is_dir() else []
    except (OSError, OberError):
        return None  # the checks of the files say what is wrong with them
    if any(facts.placeholder for facts in found):
        return Check(
            "certificates",
            "warn",
            f"{directory}: ober's self-signed placeholder, no ACME certificate yet",
            "on the workstation: ober fleet certs renew",
        )
    return None
