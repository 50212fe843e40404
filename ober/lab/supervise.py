"""``supervise.py [--cgroup DIR]... -- COMMAND...``: run a lab node's systemd-nspawn, again after each reboot.

``systemctl reboot`` inside a container makes systemd-nspawn exit with status 133 and leaves restarting it to its
caller (systemd-nspawn@.service does it with ``RestartForceExitStatus=133``). The lab has no systemd on the host
to do that, so this small supervisor does: it runs COMMAND and, when it exits with 133, runs it again; any other
exit ends the supervisor with that status. Each run is first moved into the given cgroups (every nspawn of a node
in that node's own cgroups, see `ober.lab.nspawn.node_cgroups`); the supervisor itself stays where it started.

SIGTERM, SIGINT or SIGHUP: no more restarts; the signal is passed on to the running command (systemd-nspawn shuts
its container down cleanly on SIGTERM) and the supervisor exits with its status. Standard library only, and run
as a script rather than a module, so it never imports ober (a node outlives the ober that started it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

REBOOT = 133
# Like systemd's RestartSec default: never a tight loop, even if the command fails that way at once.
PAUSE = 0.1
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
USAGE = "usage: supervise.py [--cgroup DIR]... -- COMMAND [ARG]..."


class Supervisor:
    """Runs the command until it ends with another status than ``REBOOT`` or a signal says stop."""

    def __init__(self, argv: list[str], cgroups: list[str]) -> None:
        self.argv = argv
        self.cgroups = cgroups
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False

    def on_signal(self, number: int, _frame: FrameType | None) -> None:
        """Stop restarting; pass the signal on to the running command."""
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(number)

    def enter_cgroups(self) -> None:
        """In the child, before it execs the command: move it into the cgroups."""
        for group in self.cgroups:
            (Path(group) / "cgroup.procs").write_text(str(os.getpid()))

    def run(self) -> int:
        """Run the command until it ends other than by a reboot; its exit status (128 + N for signal N)."""
        for number in FORWARDED:
            signal.signal(number, self.on_signal)
        starts = 0
        while True:
            starts += 1
            if self.stopping:
                return REBOOT
            # exec resets the handlers to the defaults, so nspawn handles its signals itself.
            self.child = subprocess.Popen(self.argv, preexec_fn=self.enter_cgroups)
            status = self.child.wait()
            if status != REBOOT or self.stopping:
                return status if status >= 0 else 128 - status
            print(f"supervise: {self.argv[0]} exited {REBOOT} (reboot): starting it again (start {starts + 1})")
            sys.stdout.flush()
            time.sleep(PAUSE)


def main(args: list[str]) -> int:
    """Parse ``[--cgroup DIR]... -- COMMAND...`` and supervise COMMAND; 2 for bad usage."""
    cgroups: list[str] = []
    while args and args[0] == "--cgroup" and len(args) > 1:
        cgroups.append(args[1])
        args = args[2:]
    if len(args) < 2 or args[0] != "--":
        print(USAGE, file=sys.stderr)
        return 2
    return Supervisor(args[1:], cgroups).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
