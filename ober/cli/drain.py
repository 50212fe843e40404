"""``ober drain`` / ``ober undrain``: take this node out of (or back into) the ECMP set."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ober.cli.options import config_option
from ober.cli.output import Output, json_option
from ober.config import load_config
from ober.drain import clear_drain, read_drain, set_drain, wait_idle, wake_health
from ober.drain import quiesce as quiesce_now
from ober.errors import OberError
from ober.lifecycle import withdrawn


@click.command()
@config_option
@click.option("--reason", default="", help="Why, shown by status.")
@click.option("--wait", is_flag=True, help="Return when the VIPs are withdrawn and connections reached 0.")
@click.option("--timeout", type=float, default=None, help="Seconds to wait [default: health.drain_timeout].")
@click.option(
    "--quiesce",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    metavar="SECONDS",
    help="First wait up to SECONDS for a moment with no request in flight, and withdraw right then.",
)
@json_option
@click.pass_obj
def drain(out: Output, config_path: Path, reason: str, wait: bool, timeout: float | None, quiesce: float) -> None:
    """Withdraw this node's VIPs (the maintenance file tells ober health), optionally waiting until idle.

    A withdraw moves this node's open connections to other nodes: a request in flight on one is cut. --quiesce
    picks a moment when none is.
    """
    config = load_config(config_path)
    quiet = quiesce_now(config, quiesce) if quiesce and read_drain(config) is None else None
    info = set_drain(config, reason)
    # Withdraw now, not at ober health's next interval: the quiet moment lasts milliseconds.
    wake_health(config)
    if quiet is not None:
        state = "none" if quiet.in_flight == 0 else f"{quiet.in_flight} (none came)"
        out.print(f"quiesced {quiet.waited:.2f}s: requests in flight at the withdraw: {state}")
    out.print(f"drained by {info.by}: ober health withdraws the VIPs")
    left = None
    if wait:
        limit = config.health.drain_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        # First the routers must stop sending: the health process withdraws within an interval (plus the
        # make-before-break delay, if configured).
        while not withdrawn(config) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = wait_idle(config, max(0.0, deadline - time.monotonic()))
    problem = f"{left} connections still open after {limit:g}s" if left else None
    if out.as_json:
        doc: dict[str, object] = {"drained": True, "by": info.by, "since": info.since, "sessions_left": left}
        if quiet is not None:
            doc["quiesce"] = {"in_flight": quiet.in_flight, "waited": round(quiet.waited, 3)}
        if problem:
            doc.update(error=problem, fix="wait longer (--timeout) or stop anyway")
        out.json(doc)
        if problem:
            click.get_current_context().exit(1)
        return
    if problem:
        raise OberError(problem, "wait longer (--timeout) or stop anyway")
    if wait:
        out.print("[green]✓[/] withdrawn and idle")


@click.command()
@config_option
@json_option
@click.pass_obj
def undrain(out: Output, config_path: Path) -> None:
    """Put this node back in service: ober health announces again after `rise` good checks."""
    config = load_config(config_path)
    was = read_drain(config)
    clear_drain(config)
    if out.as_json:
        out.json({"drained": False, "was_drained": was is not None})
        return
    out.print("back in service" if was else "was not drained: nothing to do")
