"""Running one command with a timeout, here or on a node.

Node actions use the :class:`Runner` interface: :class:`LocalRunner` on the node itself, an SSH connection from the
workstation (``ober.remote``), so the same facts and plans work in both places.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Result:
    """What a command did."""

    returncode: int
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        """It exited 0."""
        return self.returncode == 0

    def last_line(self) -> str:
        """The last line it printed (stderr first), for one-line errors."""
        lines = (self.stderr.strip() or self.stdout.strip() or f"exit status {self.returncode}").splitlines()
        return lines[-1].strip()


class Runner(Protocol):
    """Runs one command (an argv, never a shell line) with a timeout: locally now, over SSH later."""

    def run(self, argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None) -> Result:
        """Run ``argv`` to completion; a missing program is exit 127, a timeout exit 124."""
        ...


class LocalRunner:
    """Runs commands on this machine."""

    def run(self, argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None) -> Result:
        """Run ``argv`` here (no shell, no stdin), capturing its output."""
        try:
            done = subprocess.run(
                list(argv),
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **env} if env else None,
            )
        except FileNotFoundError:
            return Result(127, "", f"{argv[0]}: not found")
        except subprocess.TimeoutExpired:
            return Result(124, "", f"{shlex.join(argv)} did not finish in {timeout:g}s")
        return Result(done.returncode, done.stdout, done.stderr)
