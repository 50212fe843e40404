"""Asking the running ExaBGP (through its CLI pipes) what it really does: sessions and announced routes."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from typing import Any

from ober.errors import OberError
from ober.facts import find_program

PIPENAME = "ober"
CLI_TIMEOUT = 10.0


@dataclass(frozen=True)
class BgpFacts:
    """Per neighbor: the session state, the prefixes ExaBGP has sent it, and whether graceful restart holds."""

    sessions: dict[str, str]
    announced: dict[str, list[str]]
    graceful_restart: dict[str, bool | None] = field(default_factory=dict)
    """Negotiated: both ends advertised the capability in their OPEN. None: no OPEN from the router (yet)."""


def _cli(command: list[str], root: str | None) -> str:
    program = find_program("exabgp")
    if program is None:
        raise OberError("ExaBGP is not installed", "run ober bootstrap")
    env = dict(os.environ)
    if root:
        env["EXABGP_ROOT"] = root
    try:
        done = subprocess.run(
            [program, "cli", "--pipename", PIPENAME, *command],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise OberError(f"ExaBGP did not answer '{' '.join(command)}' in {CLI_TIMEOUT:g}s") from None
    if done.returncode != 0 or not done.stdout.strip():
        last = (done.stderr.strip().splitlines() or ["no answer"])[-1]
        raise OberError(f"ExaBGP CLI: {last}", "is ober-bgp running?")
    return done.stdout


def _neighbors(text: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text)
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise TypeError
        return data
    except (ValueError, TypeError) as exc:
        raise OberError(f"ExaBGP's neighbor list was not understood: {exc.__class__.__name__}") from None


def parse_neighbors(text: str) -> dict[str, str]:
    """``show neighbor json`` → {peer address: FSM state, lowercase}."""
    try:
        return {
            str(item["peer"]["address"]): str(item.get("fsm", item.get("state", "?"))).lower()
            for item in _neighbors(text)
        }
    except (KeyError, TypeError) as exc:
        raise OberError(f"ExaBGP's neighbor list was not understood: {exc.__class__.__name__}") from None


def parse_graceful_restart(text: str) -> dict[str, bool | None]:
    """``show neighbor json`` → {peer address: graceful restart negotiated}.

    ExaBGP lists each capability as ``local`` (what this node's config advertises) and ``peer`` (what the router's
    OPEN advertised; null before an OPEN). Only both together hold the routes while ExaBGP restarts: the node's
    setting alone says nothing about the router. (Its top-level ``capabilities`` list is not used: ExaBGP 5.0.15
    fills it from the peer's side only.)
    """
    found: dict[str, bool | None] = {}
    try:
        for item in _neighbors(text):
            local = item["local"]["capabilities"].get("graceful-restart")
            peer = item["peer"]["capabilities"].get("graceful-restart")
            found[str(item["peer"]["address"])] = None if peer is None else bool(local) and bool(peer)
    except (KeyError, TypeError, AttributeError) as exc:
        raise OberError(f"ExaBGP's neighbor list was not understood: {exc.__class__.__name__}") from None
    return found


def parse_uptimes(text: str) -> dict[str, float]:
    """``show neighbor json`` → {peer address: seconds since its session was established (0 when it never was)}.

    ExaBGP's ``duration`` counts from the last time the session was established, also after it went down: read it
    together with the state.
    """
    try:
        return {str(item["peer"]["address"]): float(item.get("duration") or 0) for item in _neighbors(text)}
    except (KeyError, TypeError, ValueError) as exc:
        raise OberError(f"ExaBGP's neighbor list was not understood: {exc.__class__.__name__}") from None


def parse_adj_rib_out(text: str) -> dict[str, list[str]]:
    """``show adj-rib out json`` (one JSON document per line) → {peer: [prefix, …]}."""
    announced: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            for peer, body in json.loads(line).items():
                announced.setdefault(str(peer), []).extend(str(r["prefix"]) for r in body.get("routes", []))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise OberError(f"ExaBGP's adj-rib-out was not understood: {exc.__class__.__name__}") from None
    return {peer: sorted(set(prefixes)) for peer, prefixes in announced.items()}


def bgp_facts(root: str | None = None) -> BgpFacts:
    """Sessions and announced routes from the running ExaBGP."""
    neighbors = _cli(["show", "neighbor", "json"], root)
    sessions = parse_neighbors(neighbors)
    graceful = parse_graceful_restart(neighbors)
    try:
        announced = parse_adj_rib_out(_cli(["show", "adj-rib", "out", "json"], root))
    except OberError:
        announced = {}  # an empty RIB answers nothing at all
    return BgpFacts(sessions, {peer: announced.get(peer, []) for peer in sessions}, graceful)
