"""Self-signed certificates, made with the openssl CLI: placeholders for config checks, and the lab's."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

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
