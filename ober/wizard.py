"""The ``ober config`` wizard: questions grouped BGP → VIP → Backends → Certs → Health → Stats → Logs.

The flow is a plain function of an :class:`Asker` (what shows a question and returns the answer), so tests drive
it with scripted answers and the CLI with inquirer prompts. Defaults come from the node's current ``ober.yaml`` and,
where it has nothing, from what :func:`detect` finds (the address of the default route's interface, its gateway,
the hostname). A configured section can be kept as it is with one answer.

Every answer is checked by the config model itself: the answer is put into a copy of the config (sections not
answered yet are stood in for by placeholders), and :func:`ober.config.parse_node_config` judges the whole; its
one-line error is shown and the question asked again. An error that was there before the answer (in another
section) is not blamed on it.
"""

from __future__ import annotations

import copy
import json
import socket
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from ober.apply import diff
from ober.certs import check_certificates
from ober.checks.base import Check, scrub
from ober.checks.bgp import check_bgp_tcp
from ober.checks.rgw import check_rgw
from ober.config import DEFAULT_INSTALL_PATH, HTTP_MODES, NodeConfig, parse_node_config
from ober.configure import Outcome, configure
from ober.errors import ConfigError, OberError
from ober.render import install_paths
from ober.secrets import load_secrets

Validator = Callable[[str], str | None]
IP_TIMEOUT = 5.0
SECTIONS = ("bgp", "vips", "backends", "certificates", "health", "stats", "logs")
TITLES = {
    "bgp": "BGP",
    "vips": "VIPs",
    "backends": "Backends",
    "certificates": "Certificates",
    "health": "Health",
    "stats": "Stats",
    "logs": "Logs",
}
# Stand-ins for what is not answered yet, so one answer can be judged by the whole model. Addresses from a
# range no real node uses for these (the top of the shared address space).
_STAND_IN = {
    "name": "node",
    "router_id": "100.127.255.254",
    "neighbor": "100.127.255.253",
    "vip": "100.127.255.252",
    "backend": "placeholder",
    "servers": "127.0.0.1:7480",
    "pem": f"{install_paths(DEFAULT_INSTALL_PATH)['certs_dir']}/s3.pem",
    "email": "ober@example.invalid",
    "secret": "placeholder",
    "domain": "s3.example.invalid",
}


class Asker(Protocol):
    """Shows questions and returns answers; the CLI's is inquirer on a terminal, tests script theirs."""

    def text(self, message: str, default: str, validate: Validator) -> str:
        """A line of text; ``validate`` returns an error to show (then ask again) or None."""

    def confirm(self, message: str, default: bool) -> bool:
        """Yes or no."""

    def choose(self, message: str, choices: Sequence[str], default: str) -> str:
        """One of ``choices``."""

    def show(self, text: str) -> None:
        """Information for the user (check results, the diff)."""


# --- detection --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Detected:
    """What this machine suggests: its name, the default route's interface, address and gateway."""

    hostname: str | None = None
    interface: str | None = None
    address: str | None = None
    gateway: str | None = None


def parse_default_route(text: str) -> tuple[str | None, str | None]:
    """``ip -j -4 route show default`` → (interface, gateway) of the first default route."""
    try:
        routes = json.loads(text or "[]")
    except ValueError:
        return None, None
    for route in routes if isinstance(routes, list) else []:
        if isinstance(route, dict) and route.get("dev"):
            return str(route["dev"]), str(route["gateway"]) if route.get("gateway") else None
    return None, None


def parse_interface_address(text: str) -> str | None:
    """``ip -j -4 addr show dev IF`` → its first global IPv4 address."""
    try:
        links = json.loads(text or "[]")
    except ValueError:
        return None
    for link in links if isinstance(links, list) else []:
        for info in link.get("addr_info", []) if isinstance(link, dict) else []:
            if info.get("family") == "inet" and info.get("scope") == "global" and info.get("local"):
                return str(info["local"])
    return None


def _ip(args: list[str]) -> str:
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""


def detect(ip: Callable[[list[str]], str] = _ip) -> Detected:
    """What this machine suggests for a new config (every part may be None: then nothing is suggested)."""
    interface, gateway = parse_default_route(ip(["-j", "-4", "route", "show", "default"]))
    address = parse_interface_address(ip(["-j", "-4", "addr", "show", "dev", interface])) if interface else None
    hostname = socket.gethostname().split(".")[0] or None
    return Detected(hostname=hostname, interface=interface, address=address, gateway=gateway)


# --- judging answers --------------------------------------------------------------------------------------------


def _complete(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with stand-ins for every required part not answered yet."""
    full = copy.deepcopy(dict(data))
    full.setdefault("name", _STAND_IN["name"])
    if full.get("bgp") is None:
        full["bgp"] = {}
    bgp = full["bgp"]
    if isinstance(bgp, dict):
        bgp.setdefault("router_id", _STAND_IN["router_id"])
        bgp.setdefault("neighbors", _STAND_IN["neighbor"])
    backends = full.setdefault("backends", {})
    vips = full.setdefault("vips", [{"address": _STAND_IN["vip"], "backend": _STAND_IN["backend"]}])
    if isinstance(vips, list) and isinstance(backends, dict):
        for vip in vips:
            if isinstance(vip, dict):
                vip.setdefault("address", _STAND_IN["vip"])
                vip.setdefault("backend", next(iter(backends), _STAND_IN["backend"]))
                # A VIP may name a group the Backends section has not defined yet.
                name = vip["backend"]
                if isinstance(name, str) and name not in backends:
                    backends[name] = {"servers": _STAND_IN["servers"]}
        for group in backends.values():
            if isinstance(group, dict):
                group.setdefault("servers", _STAND_IN["servers"])
    certificates = full.setdefault("certificates", {})
    if isinstance(certificates, dict) and "pem" not in certificates and "acme" not in certificates:
        certificates["pem"] = _STAND_IN["pem"]
    stats = full.get("stats")
    auth = stats.get("auth") if isinstance(stats, dict) else None
    if isinstance(auth, dict):
        auth.setdefault("password_secret", _STAND_IN["secret"])
    acme = certificates.get("acme") if isinstance(certificates, dict) else None
    if isinstance(acme, dict):
        acme.setdefault("email", _STAND_IN["email"])
        acme.setdefault("domains", _STAND_IN["domain"])
    return full


def problem(data: Mapping[str, Any]) -> str | None:
    """The model's one-line error for ``data`` (stand-ins filling what is not answered yet), or None."""
    try:
        parse_node_config(_complete(data))
    except ConfigError as exc:
        return f"{exc.message} ({exc.fix})" if exc.fix else exc.message
    return None


def _get(data: Mapping[str, Any], path: Sequence[str | int]) -> Any:
    node: Any = data
    for step in path:
        if isinstance(step, int):
            node = node[step] if isinstance(node, list) and step < len(node) else None
        else:
            node = node.get(step) if isinstance(node, dict) else None
        if node is None:
            return None
    return node


def _put(data: dict[str, Any], path: Sequence[str | int], value: Any) -> None:
    """Set (or, for None, remove) the value at ``path``, creating mappings on the way."""
    node: Any = data
    for step in path[:-1]:
        node = node[step] if isinstance(step, int) else node.setdefault(step, {})
    last = path[-1]
    if value is None:
        if isinstance(node, dict):
            node.pop(last, None)
        return
    node[last] = value


def _shown(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return str(value)


def _read(answer: str, number: bool) -> Any:
    """An answer as the config holds it: numbers and durations read like YAML (as ``--set`` does), else text."""
    text = answer.strip()
    if not text:
        return None
    if not number:
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # the model then says what it expected


# --- the questions ----------------------------------------------------------------------------------------------


class Wizard:
    """One run of the questions over a copy of the current config."""

    def __init__(self, asker: Asker, current: Mapping[str, Any], detected: Detected) -> None:
        self.ask = asker
        self.current = copy.deepcopy(dict(current))
        self.data: dict[str, Any] = copy.deepcopy(dict(current))
        self.found = detected

    def field(
        self,
        path: Sequence[str | int],
        message: str,
        default: Any = None,
        *,
        number: bool = False,
        required: bool = False,
    ) -> Any:
        """Ask for the value at ``path`` (default: what is there, else ``default``); re-asked until the model agrees.

        An empty answer removes the key (the model's default applies), unless the key is ``required``.
        """
        before = problem(self.data)

        def validate(answer: str) -> str | None:
            if required and not answer.strip():
                return f"{'.'.join(str(step) for step in path)}: required"
            candidate = copy.deepcopy(self.data)
            _put(candidate, path, _read(answer, number))
            found = problem(candidate)
            return found if found and found != before else None

        present = _get(self.data, path)
        answer = self.ask.text(message, _shown(present if present is not None else default), validate)
        value = _read(answer, number)
        _put(self.data, path, value)
        return value

    def run(self) -> dict[str, Any]:
        """Ask every section (a configured one may be kept), then until the whole config is valid."""
        while True:
            for section in SECTIONS:
                if self._keep(section):
                    continue
                getattr(self, f"_{section}")()
            found = problem(self.data) or self._missing()
            if found is None:
                return self.data
            self.ask.show(f"the config is not complete yet: {found}")
            if not self.ask.confirm("Go through the sections again?", True):
                raise ConfigError(found, "run 'ober config' again, or use --from/--set")
            self.current = copy.deepcopy(self.data)

    def _missing(self) -> str | None:
        # What only stand-ins filled is not answered: say so rather than write a placeholder.
        for key in ("name", "bgp", "vips", "backends", "certificates"):
            if not self.data.get(key):
                return f"{key}: not answered"
        return None

    def _keep(self, section: str) -> bool:
        configured = self.current.get(section)
        if section == "bgp" and not self.current.get("name"):
            configured = None  # the node's name is asked with BGP
        required = section in ("bgp", "vips", "backends", "certificates")
        if not configured and required:
            self.ask.show(f"— {TITLES[section]} —")
            return False
        shown = yaml.safe_dump(configured, default_flow_style=True, width=10000).strip() if configured else "defaults"
        choice = self.ask.choose(f"{TITLES[section]}: {shown}", ["keep", "edit"], "keep")
        if choice == "edit":
            self.ask.show(f"— {TITLES[section]} —")
        return choice == "keep"

    def _bgp(self) -> None:
        self.field(["name"], "Node name", self.found.hostname, required=True)
        router_id = self.field(["bgp", "router_id"], "Router ID (own address)", self.found.address, required=True)
        self.field(["bgp", "local_address"], "BGP source address", router_id)
        self.field(["bgp", "neighbors"], "BGP neighbors (routers)", self.found.gateway, required=True)
        self.field(["bgp", "local_as"], "Local AS", 65001, number=True)
        self.field(["bgp", "peer_as"], "Routers' AS", 65000, number=True)
        self.field(["bgp", "hold_time"], "Hold time (seconds, at least 3)", 3, number=True)
        self.field(["bgp", "md5_secret"], "TCP MD5: name of the secret in the secrets file (empty: none)")

    def _vips(self) -> None:
        vips = self.data.get("vips")
        if not isinstance(vips, list) or not vips:
            vips = self.data["vips"] = [{}]
        index = 0
        while True:
            groups = list(self.data.get("backends") or {})
            used = [vip.get("backend") for vip in vips[:index] if isinstance(vip, dict)]
            self.field(["vips", index, "address"], f"VIP {index + 1}: address", required=True)
            self.field(["vips", index, "name"], f"VIP {index + 1}: name (empty: from the address)")
            fallback = next((name for name in [*used, *groups] if name), "ceph-a")
            self.field(["vips", index, "backend"], f"VIP {index + 1}: backend group (a name)", fallback, required=True)
            index += 1
            if index < len(vips):
                continue
            if not self.ask.confirm("Add another VIP?", False):
                return
            vips.append({})

    def _backends(self) -> None:
        groups = self.data.setdefault("backends", {})
        wanted = [vip.get("backend") for vip in self.data.get("vips", []) if isinstance(vip, dict)]
        for name in dict.fromkeys([*wanted, *groups]):
            if not isinstance(name, str):
                continue
            groups.setdefault(name, {})
            self.field(["backends", name, "servers"], f"{name}: RGW servers (host[:port], hostlist)", required=True)
            self.field(["backends", name, "port"], f"{name}: RGW port (where a server gives none)", 7480, number=True)
            self.field(["backends", name, "check", "path"], f"{name}: health check path", "/")
            tls = bool(_get(self.data, ["backends", name, "tls", "enabled"]))
            _put(self.data, ["backends", name, "tls", "enabled"], self.ask.confirm(f"{name}: TLS to the RGWs?", tls))

    def _certificates(self) -> None:
        certs = self.data.setdefault("certificates", {})
        current = "acme" if certs.get("acme") else "pem"
        kind = self.ask.choose("TLS certificate: a PEM (file or SNI directory), or ACME", ["pem", "acme"], current)
        if kind == "pem":
            certs.pop("acme", None)
            install = self.data.get("install_path") or DEFAULT_INSTALL_PATH
            pem = f"{install_paths(install)['certs_dir']}/s3.pem"
            self.field(["certificates", "pem"], "PEM file or directory", pem, required=True)
        else:
            certs.pop("pem", None)
            self.field(["certificates", "acme", "email"], "ACME account e-mail", required=True)
            self.field(["certificates", "acme", "domains"], "ACME domains (list or hostlist)", required=True)
        mode = str(certs.get("http") or "redirect")
        certs["http"] = self.ask.choose("Plain HTTP on port 80", list(HTTP_MODES), mode)

    def _health(self) -> None:
        self.field(["health", "interval"], "Health check interval (e.g. 1s, 500ms)", "1s", number=True)
        self.field(["health", "rise"], "Good checks in a row to announce", 2, number=True)
        self.field(["health", "fall"], "Bad checks in a row to withdraw", 3, number=True)

    def _stats(self) -> None:
        # Empty: the model's default, this node's own address once a login guards the page, else loopback.
        self.field(["stats", "bind"], "Stats/metrics listen address (empty: own address with a login, else 127.0.0.1)")
        self.field(["stats", "port"], "Stats/metrics port", 8404, number=True)
        auth = bool(_get(self.data, ["stats", "auth"]))
        if self.ask.confirm("Password-protect the stats page?", auth):
            self.field(["stats", "auth", "user"], "Stats user", "admin")
            self.field(["stats", "auth", "password_secret"], "Secret name of the password", required=True)
            # The password would otherwise cross plain HTTP: yes for a new login, else as it is.
            tls = bool(_get(self.data, ["stats", "tls"])) if auth else True
            if self.ask.confirm("Serve the stats page over TLS (else the password crosses plain HTTP)?", tls):
                _put(self.data, ["stats", "tls"], True)
            else:
                _put(self.data, ["stats", "tls"], None)
        else:
            _put(self.data, ["stats", "auth"], None)

    def _logs(self) -> None:
        self.field(["logs", "retention"], "Journal retention (e.g. 14d)", "14d", number=True)
        self.field(["logs", "max_use_mb"], "Journal size limit (MB)", 1024, number=True)


# --- after the questions ----------------------------------------------------------------------------------------

_MARK = {"ok": "✓", "warn": "!", "fail": "✗", "skip": "-"}


def probe(config: NodeConfig, secrets: Mapping[str, str], timeout: float) -> list[Check]:
    """The checks ``ober test`` runs that the answers can fix: BGP TCP 179, RGW, certificates."""
    return [
        *check_bgp_tcp(config, timeout, secrets=secrets),
        *check_rgw(config, timeout),
        *check_certificates(config),
    ]


def check_lines(checks: Sequence[Check]) -> str:
    """Checks as lines for the user: mark, name, detail, and the fix of anything not ok."""
    lines = []
    for check in checks:
        fix = f" (fix: {check.fix})" if check.fix and check.status in ("warn", "fail") else ""
        lines.append(f"{_MARK[check.status]} {check.name}: {check.detail}{fix}")
    return "\n".join(lines)


def conclude(
    asker: Asker,
    data: dict[str, Any],
    *,
    root: Path,
    secrets_path: Path | None,
    check: bool = True,
    dry_run: bool = False,
    timeout: float = 3.0,
    probes: Callable[[NodeConfig, Mapping[str, str], float], list[Check]] = probe,
) -> Outcome:
    """Run the checks, show the diff (as ``--dry-run`` does), and apply it if the user agrees.

    Returns:
        What configuring did; ``dry_run`` is true when nothing was written (asked not to, or declined).

    Raises:
        OberError: rendering, checking or applying failed (applying is rolled back).
    """
    config = parse_node_config(data, "answers")
    try:
        secrets = load_secrets(secrets_path, required=False)
    except OberError as exc:
        asker.show(f"! secrets: {exc.message}")
        secrets = {}
    findings = scrub(probes(config, secrets, timeout), secrets)  # a tool may quote a line holding a secret
    asker.show(check_lines(findings))
    planned = configure(data, root=root, secrets_path=secrets_path, check=check, dry_run=True)
    if not planned.changes:
        asker.show("nothing to change: the node already has this configuration")
        return planned
    asker.show(diff(planned.changes))
    failed = sum(finding.status == "fail" for finding in findings)
    if dry_run:
        return planned
    question = f"Apply these {len(planned.changes)} changes?"
    if failed:
        question = f"{failed} checks failed (see above). Apply these {len(planned.changes)} changes anyway?"
    if not asker.confirm(question, failed == 0):
        return planned
    return configure(data, root=root, secrets_path=secrets_path, check=check)
