"""Rebooting a node over SSH, and knowing for sure when it is back from a new boot.

A node's boot is identified by the kernel's ``boot_id`` together with the start time of its PID 1 (``/proc/1/stat``
field 22, clock ticks after the kernel booted). On a machine, ``boot_id`` is new at every boot while PID 1 starts
at about the same tick each time; in a container (systemd-nspawn) ``boot_id`` is the host's and never changes,
while PID 1 starts later at each boot. Either one changing means the node went through a reboot, so an sshd that
answers before it has gone down is never taken for the node being back.

``systemctl reboot`` only queues the reboot and returns, but the SSH session may still die with sshd first: both
count as the reboot asked for. Afterwards the old SSH connection is dead; `wait_back` reconnects explicitly
(`ober.remote.connection.Connection.reconnect`) until the node answers from a new boot, within a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from ober.errors import OberError
from ober.runner import Runner

REBOOT_TIMEOUT = 600.0
COMMAND_TIMEOUT = 30.0
# Short: the command only reads two files; a connection dying under it is noticed by its keep-alives anyway.
PROBE_TIMEOUT = 10.0
POLL = 1.0
# Exit statuses of `systemctl reboot` that still mean "asked": the session ended without a status (255), or the
# node's `timeout` ended it while the system went down (124).
_CUT_SHORT = (124, 255)
_IDENTITY = ["cat", "/proc/sys/kernel/random/boot_id", "/proc/1/stat"]


@runtime_checkable
class Reconnects(Protocol):
    """A runner whose dead connection can be opened again (`ober.remote.connection.Connection`)."""

    def reconnect(self) -> None:
        """Open the connection again; OberError while the node does not answer."""
        ...


def parse_identity(text: str) -> str:
    """``boot_id/start`` from the output of ``cat boot_id /proc/1/stat``.

    Raises:
        OberError: the output is not that.
    """
    lines = text.splitlines()
    try:
        boot_id = lines[0].strip()
        # The command name in parentheses may hold spaces: the fields that follow are counted after its ')'.
        start = lines[1].rsplit(")", 1)[1].split()[19]
    except IndexError:
        raise OberError(f"cannot read the node's boot identity from {text[:80]!r}") from None
    if not boot_id or not start.isdigit():
        raise OberError(f"cannot read the node's boot identity from {text[:80]!r}")
    return f"{boot_id}/{start}"


def boot_identity(conn: Runner, timeout: float = PROBE_TIMEOUT) -> str:
    """The identity of the node's current boot (see the module docstring).

    Raises:
        OberError: the connection failed, or the files could not be read.
    """
    result = conn.run(_IDENTITY, timeout)
    if not result.ok:
        raise OberError(f"cannot read the node's boot identity: {result.last_line()}")
    return parse_identity(result.stdout)


def request_reboot(conn: Runner, timeout: float = COMMAND_TIMEOUT) -> None:
    """Ask the node's systemd to reboot; the session dying meanwhile counts as asked.

    Raises:
        OberError: systemctl refused (no permission, systemd not running, …): the node is not rebooting.
    """
    try:
        result = conn.run(["systemctl", "reboot"], timeout)
    except OberError:
        return  # the connection went down with the node's sshd: the reboot is on its way
    if not result.ok and result.returncode not in _CUT_SHORT:
        raise OberError(f"systemctl reboot failed: {result.last_line()}")


def wait_back(
    conn: Runner,
    before: str,
    timeout: float = REBOOT_TIMEOUT,
    *,
    poll: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Wait until the node answers SSH from another boot than ``before``; the seconds it took.

    Each failed read reconnects (when ``conn`` `Reconnects`): the connection of the old boot is dead. The node is
    asked every ``poll`` seconds (default `POLL`); right after a reconnect, at once.

    Raises:
        OberError: not back within ``timeout``; says what was seen last.
    """
    pause = POLL if poll is None else poll
    started = clock()
    last = "it never answered"
    while True:
        reconnected = False
        try:
            if boot_identity(conn) != before:
                return clock() - started
            last = "it still answered from the boot before the reboot"
        except OberError as exc:
            last = exc.message
            if isinstance(conn, Reconnects):
                try:
                    conn.reconnect()
                    reconnected = True
                except OberError as failed:
                    last = failed.message
        if clock() - started >= timeout:
            raise OberError(
                f"not back from its reboot within {timeout:g}s; last: {last}",
                "look at the node's console; once it is back, run the roll again (it resumes there)",
            )
        if not reconnected:
            sleep(pause)  # a new connection is asked at once
