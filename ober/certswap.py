"""A changed certificate file is picked up by the running HAProxy without a reload and without dropping anything.

Design, and why:

* **How the new certificate gets in: HAProxy's runtime API** (``set ssl cert`` + ``commit ssl cert``), not a
  reload. A reload (even a hitless ``-Ws`` one) starts new workers and leaves the old ones serving their open
  connections until they end or ``hard-stop-after`` cuts them; S3 clients keep connections for hours, so every
  certificate renewal would pile up old workers. The runtime API swaps the certificate inside the running worker:
  open connections are not touched at all (their TLS session is already set up), and every new handshake gets the
  new certificate. HAProxy has had these commands since 2.2; ober targets 2.6+. A certificate added to (or removed
  from) a ``crt`` directory is handled the same way: ``new ssl cert`` + ``add ssl crt-list DIR FILE``.
* **Refusing a bad file first.** Before anything is sent, each changed file is judged by the same checks as
  ``ober test`` (:mod:`ober.certs`): no certificate in it, a private key missing or not matching, expired or not
  yet valid → refused, the old certificate keeps serving, and the reason goes to the journal. A chain that does not
  verify against *this* node's trust store is only a warning: a private CA that the S3 clients trust is normal and
  this node need not trust it. HAProxy itself also refuses what it cannot load (``Can't commit``): then the
  transaction is aborted and the old certificate stays.
* **When: a systemd path unit** (``ober-certs.path``, ``PathChanged=`` on the PEM file or directory) starts
  ``ober-certs.service``, which runs ``ober certs reload``. ``PathChanged`` fires when a writer *closes* the file
  (or renames one over it), so a half-written file is not read; systemd serialises the runs and logs each one to
  the journal. The path unit is wanted by and part of ``ober-http``, so it watches exactly while HAProxy runs.
  The alternative of polling in the health loop would put certificate handling into the process that decides BGP
  announcements, whose failures must stay few (ExaBGP gives up after five helper deaths).

The file on disk stays the source of truth: what is swapped in is what a later start or reload would read.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ober.certs import check_pem, pem_files
from ober.checks.base import Check
from ober.config import NodeConfig
from ober.errors import OberError
from ober.haproxy_runtime import query
from ober.render import paths

RUNTIME_TIMEOUT = 10.0

Query = Callable[[str], str]


@dataclass(frozen=True)
class Outcome:
    """What happened to one certificate file (``action``: swapped, added, removed, kept, unchanged, refused)."""

    path: str
    action: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        """The ``--json`` form."""
        return {"path": self.path, "action": self.action, "detail": self.detail}


def fingerprint(pem_text: str) -> str | None:
    """The SHA-1 fingerprint of the first certificate in ``pem_text``, as HAProxy shows it (upper hex)."""
    start = pem_text.find("-----BEGIN CERTIFICATE-----")
    end = pem_text.find("-----END CERTIFICATE-----", start)
    if start < 0 or end < 0:
        return None
    try:
        der = ssl.PEM_cert_to_DER_cert(pem_text[start : end + len("-----END CERTIFICATE-----")] + "\n")
    except ValueError:
        return None
    return hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()


def loaded_files(ask: Query) -> list[str]:
    """The certificate files HAProxy holds (``show ssl cert``), without pending transactions."""
    files: list[str] = []
    section = ""
    for line in ask("show ssl cert").splitlines():
        if line.startswith("#"):
            section = line
            continue
        if line.strip() and "transaction" not in section:
            files.append(line.strip())
    return files


def served_fingerprint(ask: Query, path: str) -> str | None:
    """The SHA-1 fingerprint HAProxy serves for ``path`` (``show ssl cert PATH``)."""
    for line in ask(f"show ssl cert {path}").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "SHA1 FingerPrint":
            return value.strip().upper()
    return None


def judge(path: Path, now: datetime | None = None) -> tuple[list[str], list[str]]:
    """Why ``path`` must not be served (empty: it may), and warnings worth logging.

    Uses :mod:`ober.certs`' certificate checks, so ``ober test`` and this agree on what a bad certificate is.
    """
    try:
        checks: list[Check] = check_pem(path, now or datetime.now(UTC), None)
    except OSError as exc:
        return [f"cannot read it: {exc.strerror}"], []
    # A chain this node cannot verify is not refused: clients may trust a private CA that this node does not.
    chain = [c for c in checks if c.name.endswith(" chain")]
    refusals = [c.detail for c in checks if c.status == "fail" and c not in chain]
    warnings = [c.detail for c in checks if c.status == "warn" or (c.status == "fail" and c in chain)]
    return refusals, warnings


def _payload(text: str) -> str:
    # The runtime API ends a payload at the first empty line: a PEM with blank lines between blocks must lose them.
    return "".join(line + "\n" for line in text.splitlines() if line.strip())


def _companion_key(path: Path, text: str) -> Path | None:
    """HAProxy reads the key from ``<file>.key`` when the PEM holds none."""
    companion = path.with_name(path.name + ".key")
    return companion if "PRIVATE KEY-----" not in text and companion.is_file() else None


def _transaction(ask: Query, path: Path, *, new: bool) -> None:
    """Load ``path`` (and its ``.key``) into a transaction and commit it; abort and raise when HAProxy refuses."""
    name = str(path)
    text = path.read_text(encoding="utf-8", errors="replace")
    steps = [f"set ssl cert {name} <<\n{_payload(text)}"]
    companion = _companion_key(path, text)
    if companion is not None:
        steps.append(f"set ssl cert {companion} <<\n{_payload(companion.read_text(encoding='utf-8'))}")
    if new:
        answer = ask(f"new ssl cert {name}")
        if "New empty certificate store" not in answer:
            raise OberError(f"HAProxy refused a new certificate {name}: {_first(answer)}")
    for step in steps:
        answer = ask(step)
        if "Transaction created" not in answer and "Transaction updated" not in answer:
            ask(f"abort ssl cert {name}")
            raise OberError(f"HAProxy cannot load it: {_first(answer)}")
    answer = ask(f"commit ssl cert {name}")
    if "Success!" not in answer:
        ask(f"abort ssl cert {name}")
        raise OberError(f"HAProxy refused to commit it: {_first(answer)}")


def _first(answer: str) -> str:
    return next((line.strip() for line in answer.splitlines() if line.strip()), "no answer")


def swap_certificates(config: NodeConfig, *, now: datetime | None = None, ask: Query | None = None) -> list[Outcome]:
    """Bring the running HAProxy's certificates in line with the PEM file(s) on disk, without a reload.

    Args:
        config: the node's config (``certificates.pem``: a file or a directory of PEMs).
        now: the time to judge expiry against (default: now).
        ask: sends one runtime API command and returns the answer (default: HAProxy's admin socket).

    Returns:
        One outcome per certificate file looked at (refused ones included: their old certificate keeps serving).

    Raises:
        OberError: HAProxy's runtime socket does not answer (HAProxy reads the files when it starts).
    """
    socket_path = paths(config)["admin_socket"]
    runtime: Query = ask or (lambda command: query(socket_path, command, RUNTIME_TIMEOUT))
    crt = Path(config.certificates.crt_path(config.install_path))
    loaded = loaded_files(runtime)
    on_disk = pem_files(crt) if crt.exists() else []
    outcomes: list[Outcome] = []
    for path in on_disk:
        outcomes.append(_one(runtime, path, str(path) in loaded, now))
    if crt.is_dir():
        prefix = f"{crt}/"
        for name in loaded:
            if name.startswith(prefix) and Path(name) not in on_disk and "/" not in name[len(prefix) :]:
                outcomes.append(_remove(runtime, crt, name))
    return outcomes


def _stamp(crt: Path) -> list[tuple[str, int, int, int]]:
    """What the certificate files look like on disk, to notice a write.

    Names, inodes (a file renamed over one is a new inode, even within one tick of the clock), times and sizes.
    """
    try:
        found = sorted(crt.iterdir()) if crt.is_dir() else [crt, crt.with_name(crt.name + ".key")]
        stats = [(str(path), path.stat()) for path in found if path.exists()]
    except OSError:
        return []
    return [(name, stat.st_ino, stat.st_ctime_ns, stat.st_size) for name, stat in stats]


def swap_settled(
    config: NodeConfig, *, now: datetime | None = None, ask: Query | None = None, rounds: int = 3
) -> list[Outcome]:
    """:func:`swap_certificates` again while the files changed during the last round (at most ``rounds`` times).

    systemd starts ``ober-certs.service`` once for changes that land while it runs, and a tool that writes the
    certificate and then its key is two changes: without looking again the second would wait for the next renewal.
    """
    crt = Path(config.certificates.crt_path(config.install_path))
    outcomes: list[Outcome] = []
    for _ in range(rounds):
        before = _stamp(crt)
        outcomes = swap_certificates(config, now=now, ask=ask)
        if _stamp(crt) == before:
            break
    return outcomes


def _one(ask: Query, path: Path, loaded: bool, now: datetime | None) -> Outcome:
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return Outcome(name, "refused", f"cannot read it ({exc.strerror}); the old certificate keeps serving")
    if loaded and fingerprint(text) is not None and fingerprint(text) == served_fingerprint(ask, name):
        return Outcome(name, "unchanged", "HAProxy already serves this certificate")
    refusals, warnings = judge(path, now)
    if refusals:
        keeps = "the old certificate keeps serving" if loaded else "HAProxy does not load it"
        return Outcome(name, "refused", f"{'; '.join(refusals)}; {keeps}")
    note = f" (warning: {'; '.join(warnings)})" if warnings else ""
    try:
        _transaction(ask, path, new=not loaded)
        if not loaded:
            answer = ask(f"add ssl crt-list {path.parent} {name}")
            if "Success!" not in answer:
                raise OberError(f"HAProxy did not add it to {path.parent}: {_first(answer)}")
    except OberError as exc:
        keeps = "the old certificate keeps serving" if loaded else "not added"
        return Outcome(name, "refused", f"{exc.message}; {keeps}")
    if not loaded:
        return Outcome(name, "added", f"new certificate in {path.parent} served from now on{note}")
    return Outcome(name, "swapped", f"new handshakes get the new certificate; open connections untouched{note}")


def _remove(ask: Query, crt: Path, name: str) -> Outcome:
    answer = ask(f"del ssl crt-list {crt} {name}")
    if "deleted in crtlist" not in answer:
        # HAProxy keeps the frontend's default certificate (the first one loaded) until the next reload.
        return Outcome(name, "kept", f"gone from {crt} but HAProxy keeps serving it: {_first(answer)}")
    ask(f"del ssl cert {name}")
    return Outcome(name, "removed", f"no longer in {crt}: no longer served")
