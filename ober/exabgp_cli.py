"""Asking the running ExaBGP (through its CLI pipes) what it really does: sessions and announced routes."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass

from ober.errors import OberError
from ober.facts import find_program

PIPENAME = "ober"
CLI_TIMEOUT = 10.0


@dataclass(frozen=True)
class BgpFacts:
    """Per neighbor: the session state, and the prefixes ExaBGP has sent it."""

    sessions: dict[str, str]
    announced: dict[str, list[str]]


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


def parse_neighbors(text: str) -> dict[str, str]:
    """``show neighbor json`` → {peer address: FSM state, lowercase}."""
    try:
        data = json.loads(text)
        return {str(item["peer"]["address"]): str(item.get("fsm", item.get("state", "?"))).lower() for item in data}
    except (ValueError, KeyError, TypeError) as exc:
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
    sessions = parse_neighbors(_cli(["show", "neighbor", "json"], root))
    try:
        announced = parse_adj_rib_out(_cli(["show", "adj-rib", "out", "json"], root))
    except OberError:
        announced = {}  # an empty RIB answers nothing at all
    return BgpFacts(sessions, {peer: announced.get(peer, []) for peer in sessions})
