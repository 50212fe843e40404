"""``ober fleet certs renew|status``: ACME certificates for an ECMP fleet, solved and pushed from the workstation.

Why the workstation runs ACME, not each node: behind ECMP the ACME server's HTTP-01 request for a token lands on
whichever node the router picks, so a node answering only its own tokens fails most validations, and N nodes each
holding their own certificate would hit the CA's rate limits N times. So ``renew`` orders ONE certificate for
``certificates.acme.domains``, puts each token on EVERY node of the inventory that serves ACME (HAProxy's runtime
map: no reload) before asking the server to validate, removes them from every node afterwards however it ended,
then pushes the certificate to the nodes one at a time with the hitless swap (``ober certs install``: checked,
runtime API, verified by serial through each VIP on the node; a node that fails keeps its old certificate and the
push stops there). Nodes stay in the ECMP set the whole time.

Renewal happens only when due (:func:`renewal_due`) unless forced; a node that missed the last push (unreachable
then) gets the certificate the workstation already has, without a new order.

**State** (secrets: mode 700 directory, 600 files, never printed): the account key, the account URL per ACME
directory, and the newest certificate with its key. Where: ``--state-dir``, else ``$OBER_ACME_STATE``, else
``$XDG_STATE_HOME/ober/acme/SITE`` (``~/.local/state/ober/acme/SITE``): on the workstation, beside the user's other
state and not in the inventory (which is often in git). No root is needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets as tokens
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from ober.acme import AcmeError, Client, Issued, Transport, load_key, new_key, urllib_transport
from ober.acme import key_pem as key_to_pem
from ober.acme_node import write_private
from ober.certs import CertFacts, cert_facts
from ober.config import Acme
from ober.errors import ConfigError, OberError
from ober.inventory import Inventory, InventoryNode
from ober.remote.fleetops import Remote, Session, Step
from ober.remote.nodeclient import NodeCert, NodeClient

Progress = Callable[[str], None]
STATE_ENV = "OBER_ACME_STATE"
RENEW_DAYS = 30.0
"""Renew when fewer days than this are left, or a third of the certificate's lifetime, whichever comes first."""
PUSH_TIMEOUT = 60.0


def _quiet(_line: str) -> None:
    return None


# --- when ---------------------------------------------------------------------------------------------------------


def renewal_due(facts: CertFacts, now: datetime | None = None, days: float = RENEW_DAYS) -> str | None:
    """Why ``facts``' certificate should be renewed now, or None while it is not due.

    Due with fewer than ``days`` days left or less than a third of its lifetime left, whichever comes first: 30 days
    of a 90-day certificate, 2 of a 6-day one. A placeholder is always due.
    """
    if facts.placeholder:
        return "a placeholder, not an ACME certificate"
    moment = now or datetime.now(UTC)
    left = facts.not_after - moment
    lifetime = facts.not_after - facts.not_before
    threshold = min(timedelta(days=days), lifetime / 3)
    if left <= timedelta(0):
        return f"expired {-left.total_seconds() / 86400:.1f} days ago"
    if left <= threshold:
        return f"{left.total_seconds() / 86400:.1f} days left (renewed from {threshold.total_seconds() / 86400:.1f})"
    return None


# --- the workstation's state ------------------------------------------------------------------------------------


def default_state_dir(site: str, env: dict[str, str] | None = None) -> Path:
    """``$OBER_ACME_STATE``, else ``$XDG_STATE_HOME/ober/acme/SITE`` (``~/.local/state/ober/acme/SITE``)."""
    environ = os.environ if env is None else env
    if environ.get(STATE_ENV):
        return Path(environ[STATE_ENV])
    base = Path(environ["XDG_STATE_HOME"]) if environ.get("XDG_STATE_HOME") else Path.home() / ".local" / "state"
    return base / "ober" / "acme" / site


class State:
    """The workstation's ACME state for one site (secrets: never printed, mode 600 files in a 700 directory)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    @property
    def certificate_path(self) -> Path:
        """The newest certificate: chain and key, as the nodes get it."""
        return self.dir / "certificate.pem"

    def _ensure_dir(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.dir.chmod(0o700)
        except OSError as exc:
            raise OberError(
                f"cannot use the ACME state directory {self.dir}: {exc.strerror}",
                f"give a writable one: --state-dir or ${STATE_ENV}",
            ) from None

    def _write(self, name: str, text: str) -> None:
        self._ensure_dir()
        write_private(self.dir / name, text)

    def _read(self, name: str) -> str | None:
        path = self.dir / name
        try:
            mode = path.stat().st_mode
            if mode & 0o077:
                raise OberError(
                    f"{path} is readable by others (mode {mode & 0o777:o}): it holds a private key",
                    f"chmod 600 {path}, and consider the key exposed",
                )
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise OberError(f"cannot read {path}: {exc.strerror}", "check the ACME state directory") from None

    def account_key(self) -> ec.EllipticCurvePrivateKey:
        """The account key, made (and saved) the first time."""
        text = self._read("account.key")
        if text is not None:
            try:
                return load_key(text)
            except OberError as exc:
                raise OberError(f"{self.dir / 'account.key'}: {exc.message}", exc.fix) from None
        key = new_key()
        self._write("account.key", key_to_pem(key))
        return key

    def account_url(self, directory: str) -> str | None:
        """The account URL at ``directory``, if this key registered there before."""
        text = self._read("accounts.json")
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            return None
        url = data.get(directory) if isinstance(data, dict) else None
        return url if isinstance(url, str) else None

    def save_account_url(self, directory: str, url: str) -> None:
        """Remember the account URL at ``directory``."""
        text = self._read("accounts.json")
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            data = {}
        data = data if isinstance(data, dict) else {}
        data[directory] = url
        self._write("accounts.json", json.dumps(data, indent=1, sort_keys=True) + "\n")

    def certificate(self) -> tuple[str, CertFacts] | None:
        """The newest certificate (PEM with its key) and its facts, if there is one."""
        text = self._read("certificate.pem")
        if not text:
            return None
        try:
            return text, cert_facts(text)
        except OberError:
            return None

    def save_certificate(self, issued: Issued) -> CertFacts:
        """Keep ``issued`` as the newest certificate; its facts."""
        facts = cert_facts(issued.chain)
        self._write("certificate.pem", issued.pem)
        return facts


# --- which nodes --------------------------------------------------------------------------------------------------


def acme_of(inventory: Inventory, nodes: Sequence[InventoryNode]) -> Acme:
    """The one ``certificates.acme`` of ``nodes`` (every inventory node with it must share it).

    Raises:
        ConfigError: a node has no ACME, or two nodes disagree on it.
    """
    plain = [node.name for node in nodes if node.config.certificates.acme is None]
    if plain:
        raise ConfigError(
            f"{', '.join(plain[:5])}: certificates are not from ACME (certificates.pem)",
            "set certificates.acme in the inventory, or leave those nodes out of TARGETS",
        )
    settings = {node.config.certificates.acme for node in inventory.nodes if node.config.certificates.acme}
    if len(settings) > 1:
        raise ConfigError(
            "the inventory's nodes have different certificates.acme settings",
            "use one certificates.acme for the whole site (one certificate for every node of the ECMP set)",
        )
    acme = nodes[0].config.certificates.acme if nodes else None
    if acme is None:
        raise ConfigError("no node selected", "name nodes of the inventory as TARGETS")
    return acme


def solvers_of(inventory: Inventory) -> list[InventoryNode]:
    """Every node that may receive the ACME server's request: each inventory node serving ACME."""
    return [node for node in inventory.nodes if node.config.certificates.acme is not None]


# --- solving on every node ----------------------------------------------------------------------------------------


@dataclass
class FleetSolver:
    """Puts each HTTP-01 token on every node (ECMP may send the validation to any) and removes it from all.

    ``leftovers``: nodes where removing failed (HAProxy forgets them at its next reload anyway).
    """

    session: Session
    nodes: Sequence[InventoryNode]
    progress: Progress = _quiet
    leftovers: dict[str, str] = field(default_factory=dict)

    def present(self, challenges: Sequence[tuple[str, str]]) -> None:
        """Every token on every node, before the server is asked to validate any.

        Raises:
            OberError: a node could not take a token (the caller cleans up everywhere).
        """
        for node in self.nodes:
            client = NodeClient(self.session.remote(node), node)
            for token, key_authz in challenges:
                client.acme_challenge("add", token, key_authz)
        self.progress(f"challenge tokens on every node ({len(self.nodes)}): asking the ACME server to validate")

    def cleanup(self, tokens_: Sequence[str]) -> None:
        """Remove the tokens from every node; a failure is noted, never raised (the next reload forgets them)."""
        for node in self.nodes:
            try:
                NodeClient(self.session.remote(node), node).acme_challenge("remove", *tokens_)
            except OberError as exc:
                self.leftovers[node.name] = exc.message


# --- renew --------------------------------------------------------------------------------------------------------


@dataclass
class Renewal:
    """What ``renew`` decided and did."""

    reason: str | None
    """Why a new certificate was (or, on a dry run, would be) ordered; None: not due."""
    issued: CertFacts | None = None
    current: CertFacts | None = None
    """The certificate the nodes should serve (the new one, or the workstation's not yet due)."""
    steps: list[Step] = field(default_factory=list)
    leftovers: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        """Every node's step worked."""
        return all(step.ok for step in self.steps)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` form (facts only, never key material)."""
        return {
            "ok": self.ok,
            "dry_run": self.dry_run,
            "reason": self.reason,
            "issued": self.issued.as_dict() if self.issued else None,
            "certificate": self.current.as_dict() if self.current else None,
            "nodes": [step.to_dict() for step in self.steps],
            "challenge_leftovers": self.leftovers,
        }


def why_issue(acme: Acme, held: tuple[str, CertFacts] | None, force: bool, now: datetime | None = None) -> str | None:
    """Why a new certificate must be ordered (None: the workstation's one is good to push)."""
    if force:
        return "forced (--force)"
    if held is None:
        return "no certificate yet"
    facts = held[1]
    missing = [domain for domain in acme.domains if domain not in facts.names]
    if missing:
        return f"certificates.acme.domains changed: {', '.join(missing)} not in the certificate"
    return renewal_due(facts, now)


def renew(
    session: Session,
    inventory: Inventory,
    nodes: Sequence[InventoryNode],
    state: State,
    *,
    force: bool = False,
    dry_run: bool = False,
    ca_bundle: str | None = None,
    transport: Transport | None = None,
    progress: Progress = _quiet,
    now: datetime | None = None,
) -> Renewal:
    """Order a certificate when due (or forced) with every node solving, then push it node by node.

    Raises:
        ConfigError: the nodes' ACME settings do not allow it.
        OberError: the order failed (its tokens are gone from every node, nothing was pushed), or a node that may
            receive the validation is unreachable.
    """
    acme = acme_of(inventory, nodes)
    held = state.certificate()
    reason = why_issue(acme, held, force, now)
    result = Renewal(reason, current=held[1] if held else None, dry_run=dry_run)
    if dry_run:
        for node in nodes:
            result.steps.append(_would(session, node, None if reason else result.current))
        return result
    if reason:
        solvers = solvers_of(inventory)
        unreachable = [node.name for node in solvers if node.name not in session.connections]
        if unreachable:
            raise OberError(
                f"{', '.join(unreachable)} unreachable: the ACME server's validation may land on it (ECMP), so no "
                "certificate is ordered",
                "fix SSH to it (ober fleet status); a node out of service for good: take it out of the inventory",
            )
        progress(f"ordering a certificate for {', '.join(acme.domains)} ({reason})")
        solver = FleetSolver(session, solvers, progress)
        try:
            issued = _order(acme, state, solver, ca_bundle or acme.ca_bundle, transport, progress)
        finally:
            result.leftovers = dict(solver.leftovers)
        result.issued = result.current = state.save_certificate(issued)
        progress(f"issued: serial {result.issued.serial} by {result.issued.issuer}, until {result.issued.not_after:%F}")
    held = state.certificate()
    if held is None:  # unreachable: saved just above, or present before
        raise OberError("no certificate to push", "ober fleet certs renew --force")
    pem, facts = held
    for node in nodes:
        session.lock.ensure()
        progress(f"{node.name}: installing serial {facts.serial}")
        step = _push(session, node, pem, facts)
        result.steps.append(step)
        progress(f"{node.name}: {step.detail}")
        if not step.ok:
            break
    return result


def _order(
    acme: Acme,
    state: State,
    solver: FleetSolver,
    ca_bundle: str | None,
    transport: Transport | None,
    progress: Progress,
) -> Issued:
    client = Client(acme.directory, state.account_key(), transport or urllib_transport(ca_bundle), log=progress)
    client.kid = state.account_url(acme.directory)
    if client.kid is None:
        client.kid = client.register(acme.email)
        state.save_account_url(acme.directory, client.kid)
    try:
        return client.issue(acme.domains, solver)
    except AcmeError as exc:
        if exc.problem in ("accountDoesNotExist", "unauthorized") and client.kid:
            # The server forgot the account (a test server restarted, an account deactivated): register again once.
            client.kid = client.register(acme.email)
            state.save_account_url(acme.directory, client.kid)
            return client.issue(acme.domains, solver)
        raise


def _serial_of(certs: Sequence[NodeCert]) -> str | None:
    return certs[0].serial if len(certs) == 1 else None


def _would(session: Session, node: InventoryNode, current: CertFacts | None) -> Step:
    """A dry run's step: whether the node would get a certificate."""
    started = time.monotonic()
    try:
        serial = _serial_of(NodeClient(session.remote(node), node).certificates())
    except OberError as exc:
        return Step(node.name, False, exc.message, time.monotonic() - started, exc.fix)
    if current is not None and serial == current.serial:
        return Step(node.name, True, f"serves serial {serial} already", time.monotonic() - started)
    what = f"serial {current.serial}" if current else "the new certificate"
    return Step(node.name, True, f"would install {what} (serves {serial or '?'})", time.monotonic() - started)


def _push(session: Session, node: InventoryNode, pem: str, facts: CertFacts) -> Step:
    """Install the certificate on one node, hitlessly, verified by serial through each VIP on the node."""
    started = time.monotonic()
    try:
        conn: Remote = session.remote(node)
        client = NodeClient(conn, node)
        if _serial_of(client.certificates()) == facts.serial:
            return Step(node.name, True, f"serves serial {facts.serial} already", time.monotonic() - started)
        staged = f"{node.config.install_path}/etc/.acme-install-{tokens.token_hex(4)}.pem"
        try:
            conn.put(pem.encode(), staged, 0o600, timeout=PUSH_TIMEOUT)
            answer = client.certs_install(staged)
        finally:
            with contextlib.suppress(OberError):
                conn.run(["rm", "-f", "--", staged], timeout=PUSH_TIMEOUT)
    except OberError as exc:
        return Step(node.name, False, f"{exc.message} (it keeps its certificate)", time.monotonic() - started, exc.fix)
    wrong = {vip: serial for vip, serial in answer.served.items() if serial != facts.serial}
    facts_out = {"serial": answer.serial, "action": answer.action, "served": answer.served}
    if answer.action != "staged" and (wrong or answer.serial != facts.serial):
        return Step(
            node.name,
            False,
            f"installed, but a new handshake through {', '.join(wrong) or 'a VIP'} gets another certificate: {wrong}",
            time.monotonic() - started,
            f"see: ober certs show on {node.name}; its journal (ober logs)",
            facts_out,
        )
    return Step(
        node.name,
        True,
        f"{answer.action} serial {facts.serial}: {answer.detail}",
        time.monotonic() - started,
        None,
        facts_out,
    )
