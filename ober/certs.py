"""Certificates with the openssl CLI: self-signed ones, and inspecting the PEMs HAProxy serves.

The self-signed ones are placeholders for config checks, and the lab's. The inspection (expiry, the private key
matching, the chain) is what ``ober doctor``, ``ober test`` and ``ober certs reload`` share.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

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
    if certificates.acme is not None or certificates.pem is None:
        domains = ", ".join(certificates.acme.domains) if certificates.acme else ""
        return [Check("certificates", "skip", f"obtained by ACME ({domains}): not checked here")]
    pem = Path(certificates.pem)
    if not pem.exists():
        return [
            Check(
                "certificates",
                "fail",
                f"{pem}: no such file or directory",
                "install the PEM there (certificate, intermediates, private key; mode 600)",
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
