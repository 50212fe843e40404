"""A node's part of ACME (``ober certs challenge|install|show``): the fleet on the workstation runs the ACME flow.

* **Challenges** (HTTP-01): HAProxy answers ``/.well-known/acme-challenge/TOKEN`` on port 80 from a map file that is
  rendered empty (``paths()["acme_map"]``). A token is added to and removed from the running HAProxy's copy through
  its admin socket (``add map``/``del map``): no reload, nothing written, and it works although HAProxy's workers
  run chrooted (the master read the file at start). A reload starts again from the empty file, which is what a
  finished or abandoned challenge wants.
* **The certificate** is one file, ``paths()["acme_pem"]`` in the ACME directory HAProxy's ``crt`` reads: a
  placeholder (self-signed, marked, see :func:`ober.certs.placeholder_pem`) until the first issue, so HAProxy can
  start; then what the fleet installs. An install is judged first (key, expiry, the config's domains), put in place
  atomically, handed to the running HAProxy by the runtime API (:mod:`ober.certswap`: open connections untouched),
  and verified by a TLS handshake with each VIP on this node. Whatever fails, the old file goes back and HAProxy keeps
  serving the old certificate.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ober.atomic import write_atomic
from ober.certs import CertFacts, cert_facts, placeholder_pem
from ober.certswap import RUNTIME_TIMEOUT, Outcome, fingerprint, judge, served_fingerprint, swap_settled
from ober.config import NodeConfig
from ober.errors import ConfigError, OberError
from ober.haproxy_runtime import HAProxyGone, query
from ober.render import paths

Query = Callable[[str], str]

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,256}\Z")
"""RFC 8555 8.3: a token is base64url, at least 128 bits of entropy (22 characters); 16 allows other servers."""
_KEY_AUTHZ = re.compile(r"^([A-Za-z0-9_-]{16,256})\.[A-Za-z0-9_-]{43}\Z")
"""The token, a dot, and the account key's base64url SHA-256 thumbprint (43 characters)."""
HANDSHAKE_TIMEOUT = 5.0
SWAP_TRIES = 3


def _acme(config: NodeConfig) -> None:
    if config.certificates.acme is None:
        raise ConfigError(
            "this node's certificates are not from ACME (certificates.pem is set)",
            "set certificates.acme in the inventory and push it first",
        )


def _runtime(config: NodeConfig, ask: Query | None) -> Query:
    socket_path = paths(config)["admin_socket"]
    return ask or (lambda command: query(socket_path, command, RUNTIME_TIMEOUT))


# --- challenges -------------------------------------------------------------------------------------------------


def check_token(token: str) -> str:
    """``token`` when it is an ACME token (base64url); else a one-line error (it goes into HAProxy's runtime API).

    Raises:
        ConfigError: it is not.
    """
    if not _TOKEN.match(token):
        raise ConfigError(f"{token[:64]!r} is not an ACME token", "a token is 16 to 256 base64url characters")
    return token


def _loaded_map(config: NodeConfig, ask: Query) -> str:
    """The map's name as HAProxy knows it (its path), after checking HAProxy loaded it."""
    name = paths(config)["acme_map"]
    listing = ask("show map")
    if name not in listing:
        raise OberError(
            f"HAProxy has no ACME challenge map {name} loaded",
            "apply the config with certificates.acme first (ober fleet push), which reloads HAProxy",
        )
    return name


def challenges(config: NodeConfig, ask: Query | None = None) -> dict[str, str]:
    """The tokens HAProxy answers now, with their key authorizations."""
    _acme(config)
    runtime = _runtime(config, ask)
    name = _loaded_map(config, runtime)
    found: dict[str, str] = {}
    for line in runtime(f"show map {name}").splitlines():
        # "0x55d0c8a1b2c0 TOKEN KEYAUTH"
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith("0x"):
            found[parts[1]] = parts[2]
    return found


def add_challenge(config: NodeConfig, token: str, key_authorization: str, ask: Query | None = None) -> bool:
    """Make HAProxy answer ``token`` with ``key_authorization``; False when it already did.

    Raises:
        ConfigError: not an ACME node, or the token or key authorization is malformed.
        OberError: HAProxy refused, or has no challenge map (an older config).
    """
    _acme(config)
    check_token(token)
    found = _KEY_AUTHZ.match(key_authorization)
    if not found or found.group(1) != token:
        raise ConfigError(
            "the key authorization is not TOKEN.THUMBPRINT for this token", "pass what the ACME flow computed"
        )
    runtime = _runtime(config, ask)
    name = _loaded_map(config, runtime)
    current = challenges(config, runtime)
    if current.get(token) == key_authorization:
        return False
    verb = "set" if token in current else "add"
    answer = runtime(f"{verb} map {name} {token} {key_authorization}").strip()
    if answer:
        raise OberError(f"HAProxy refused the ACME token: {answer.splitlines()[0][:200]}")
    if challenges(config, runtime).get(token) != key_authorization:
        raise OberError("HAProxy took the ACME token but does not show it", "see: ober status; ober logs")
    return True


def remove_challenges(config: NodeConfig, tokens: list[str], ask: Query | None = None) -> list[str]:
    """Stop answering ``tokens`` (all of them when empty); the tokens that were there.

    Raises:
        ConfigError: not an ACME node, or a malformed token.
        OberError: HAProxy refused.
    """
    _acme(config)
    for token in tokens:
        check_token(token)
    runtime = _runtime(config, ask)
    name = _loaded_map(config, runtime)
    present = challenges(config, runtime)
    gone = [token for token in (tokens or list(present)) if token in present]
    for token in gone:
        answer = runtime(f"del map {name} {token}").strip()
        if answer and "not found" not in answer.lower():
            raise OberError(f"HAProxy did not remove the ACME token: {answer.splitlines()[0][:200]}")
    return gone


# --- the certificate --------------------------------------------------------------------------------------------


def ensure_placeholder(config: NodeConfig, root: Path = Path("/")) -> bool:
    """Put the placeholder in the ACME directory when it holds no certificate yet (HAProxy would not start); True then.

    Only on an ACME node; written mode 600 (it holds a private key), atomically.
    """
    acme = config.certificates.acme
    if acme is None:
        return False
    directory = root / config.certificates.crt_path(config.install_path).lstrip("/")
    if directory.is_dir() and any(path.is_file() for path in directory.glob("*.pem")):
        return False
    write_private(root / paths(config)["acme_pem"].lstrip("/"), placeholder_pem(acme.domains))
    return True


def write_private(target: Path, text: str) -> None:
    """Write ``text`` to ``target`` mode 600 through a temp file and a rename: never half-written, never readable.

    A missing directory is made 700 (it holds private keys).
    """
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(target, text, 0o600)


def served_serial(address: str, server_name: str, port: int = 443, timeout: float = HANDSHAKE_TIMEOUT) -> str:
    """The serial of the certificate a new TLS handshake with ``address:port`` gets (SNI ``server_name``).

    Raises:
        OberError: no handshake.
    """
    context = ssl.create_default_context()
    # Only which certificate is served matters here, not whether this machine trusts it.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((address, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise OberError(f"no TLS handshake with {address}:{port}: {exc}") from None
    if not der:
        raise OberError(f"{address}:{port} sent no certificate")
    return cert_facts(der).serial


@dataclass
class Installed:
    """What ``ober certs install`` did."""

    action: str
    """``installed``, ``unchanged`` (it was served already) or ``staged`` (HAProxy not running: read at start)."""
    facts: CertFacts
    served: dict[str, str] = field(default_factory=dict)
    """VIP → the serial a new handshake with it on this node gets."""
    detail: str = ""
    unchecked: dict[str, str] = field(default_factory=dict)
    """VIP → why no handshake was possible from this node (its own allow-list refuses it); HAProxy's runtime API
    said it serves the new certificate."""

    def as_dict(self) -> dict[str, object]:
        """The ``--json`` form (no key material)."""
        return {
            "action": self.action,
            "certificate": self.facts.as_dict(),
            "served": self.served,
            "unchecked": self.unchecked,
            "detail": self.detail,
        }


def install(
    config: NodeConfig,
    source: Path,
    *,
    ask: Query | None = None,
    handshake: Callable[[str, str], str] = served_serial,
    sleep: Callable[[float], None] = time.sleep,
) -> Installed:
    """Install the certificate + chain + key PEM at ``source`` as this node's ACME certificate, hitlessly.

    Refused (nothing changes) when it is unreadable, expired, its key does not match or it does not name every
    ``certificates.acme.domains``. Else it replaces ``acme_pem`` atomically and goes into the running HAProxy through
    the runtime API; each VIP must then serve it to a new handshake on this node. If HAProxy does not take it, the
    previous file is put back and handed to HAProxy again: the node keeps serving what it served.

    Raises:
        ConfigError: not an ACME node; OberError: refused or not taken (the node is as before).
    """
    _acme(config)
    assert config.certificates.acme is not None
    domains = config.certificates.acme.domains
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise OberError(f"cannot read {source}: {getattr(exc, 'strerror', None) or exc}") from None
    refusals, _warnings = judge(source)
    if refusals:
        raise OberError(f"certificate refused: {'; '.join(refusals)}", "the node keeps its certificate")
    facts = cert_facts(text)
    missing = [domain for domain in domains if domain not in facts.names]
    if missing:
        raise OberError(
            f"certificate refused: it does not name {', '.join(missing)} (certificates.acme.domains)",
            "issue one for every domain: ober fleet certs renew --force",
        )
    target = Path(paths(config)["acme_pem"])
    runtime = _runtime(config, ask)
    previous = target.read_text(encoding="utf-8") if target.is_file() else None
    if previous == text and _serves(runtime, target, text):
        served, unchecked = _handshakes(config, domains[0], handshake)
        return Installed("unchanged", facts, served, "already served", unchecked)
    write_private(target, text)
    try:
        outcome = _take(config, runtime, target, text, sleep)
    except HAProxyGone:
        return Installed("staged", facts, {}, "HAProxy is not running: it serves this certificate when it starts")
    if outcome is None:
        served, unchecked = _handshakes(config, domains[0], handshake)
        wrong = {vip: serial for vip, serial in served.items() if serial != facts.serial}
        if not wrong:
            done = "new handshakes get it; open connections untouched"
            return Installed("installed", facts, served, done, unchecked)
        outcome = f"a new handshake still gets another certificate: {wrong}"
    _put_back(config, runtime, target, previous, sleep)
    raise OberError(f"HAProxy did not take the new certificate ({outcome}); the old one keeps serving")


def _serves(ask: Query, target: Path, text: str) -> bool:
    try:
        return fingerprint(text) == served_fingerprint(ask, str(target))
    except HAProxyGone:
        return False


def _take(config: NodeConfig, ask: Query, target: Path, text: str, sleep: Callable[[float], None]) -> str | None:
    """Swap ``target`` into HAProxy until it serves ``text`` (None), or why not.

    ``ober-certs.path`` sees the new file too and swaps it at the same moment: one of the two transactions may then
    find none to commit. What counts is what HAProxy serves afterwards, so look and try again.
    """
    why = "not swapped"
    for attempt in range(SWAP_TRIES):
        outcomes: list[Outcome] = swap_settled(config, ask=ask)
        if _serves(ask, target, text):
            return None
        mine = [o for o in outcomes if o.path == str(target)]
        why = mine[0].detail if mine else "HAProxy does not load it"
        sleep(0.2 * (attempt + 1))
    return why


def _put_back(
    config: NodeConfig, ask: Query, target: Path, previous: str | None, sleep: Callable[[float], None]
) -> None:
    if previous is None:
        target.unlink(missing_ok=True)
        return
    write_private(target, previous)
    with contextlib.suppress(OberError):
        _take(config, ask, target, previous, sleep)


def _handshakes(
    config: NodeConfig, server_name: str, handshake: Callable[[str, str], str]
) -> tuple[dict[str, str], dict[str, str]]:
    """Each VIP's serial to a new handshake on this node; and the VIPs this node's allow-list kept it from asking.

    With ``whitelists.frontend_http`` set, HAProxy drops a connection from the node itself (its source is the VIP,
    in no allow-list): then only the runtime API's word (checked before) is left for that VIP.
    """
    served: dict[str, str] = {}
    unchecked: dict[str, str] = {}
    for vip in config.vips:
        try:
            served[vip.address] = handshake(vip.address, server_name)
        except OberError as exc:
            if config.whitelists.frontend_http and ("reset" in exc.message or "EOF" in exc.message):
                unchecked[vip.address] = "this node is not in whitelists.frontend_http"
            else:
                served[vip.address] = f"error: {exc.message}"
    return served, unchecked
