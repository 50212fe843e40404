"""Doing one thing on many nodes at once, with a bound: the fleet controller's fan-out.

Fabric's ThreadingGroup starts one thread per host with no limit (sshd drops unauthenticated connections beyond
about ten at once) and raises only at the end; `for_each` runs at most ``parallel`` items at a time, gives every
item its own outcome in input order, and one item's failure never stops or hides the others.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from ober.errors import OberError

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """What one item's work returned, or the one-line error it failed with."""

    name: str
    value: R | None
    error: str | None

    @property
    def ok(self) -> bool:
        """The work finished without an error."""
        return self.error is None


def for_each(
    items: Sequence[T],
    work: Callable[[T], R],
    *,
    parallel: int,
    name: Callable[[T], str],
    on_done: Callable[[Outcome[R]], None] | None = None,
) -> list[Outcome[R]]:
    """Run ``work`` on every item, at most ``parallel`` at a time.

    Args:
        items: what to work on (nodes, targets, …).
        work: the work for one item; its return value becomes the outcome's ``value``.
        parallel: the most items in progress at once (at least 1).
        name: the name an item is reported under.
        on_done: called in the caller's thread as each item finishes (in completion order), e.g. for progress.

    Returns:
        One outcome per item, in the order of ``items``. An `OberError` or any other exception raised by one
        item's work becomes that item's failed outcome (a one-line message); the other items carry on.
    """
    if parallel < 1:
        raise OberError(f"parallel must be at least 1, got {parallel}", "pass --parallel 1 or more")
    outcomes: list[Outcome[R] | None] = [None] * len(items)
    if not items:
        return []
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(parallel, len(items))) as pool:
        futures = {pool.submit(_one, item, work, name(item)): index for index, item in enumerate(items)}
        try:
            for future in concurrent.futures.as_completed(futures):
                outcome = future.result()
                outcomes[futures[future]] = outcome
                if on_done is not None:
                    on_done(outcome)
        except BaseException:
            # Ctrl-C: start nothing new; the items already running finish within their own timeouts.
            for future in futures:
                future.cancel()
            raise
    return [outcome for outcome in outcomes if outcome is not None]


def _one(item: T, work: Callable[[T], R], label: str) -> Outcome[R]:
    try:
        return Outcome(label, work(item), None)
    except OberError as exc:
        return Outcome(label, None, _one_line(str(exc)))
    except Exception as exc:  # one item's bug must not kill the other items' work
        return Outcome(label, None, _one_line(f"{type(exc).__name__}: {exc}"))


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "failed"
