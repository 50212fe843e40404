"""What every node check returns (:class:`Check`), and what they share: side-by-side probes, masking secrets."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import Literal, TypeVar

Status = Literal["ok", "warn", "fail", "skip"]

PROBE_TIMEOUT = 3.0
MAX_PARALLEL = 16

T = TypeVar("T")


@dataclass(frozen=True)
class Check:
    """One finding: what was checked, how it stands, one line of detail, and one line saying how to fix it."""

    name: str
    status: Status
    detail: str
    fix: str | None = None

    def __post_init__(self) -> None:
        # Tool output arrives with newlines; a report row is one line.
        object.__setattr__(self, "detail", " ".join(self.detail.split()))
        if self.fix is not None:
            object.__setattr__(self, "fix", " ".join(self.fix.split()) or None)

    def as_dict(self) -> dict[str, str | None]:
        """The ``--json`` form."""
        return asdict(self)


def parallel(probe: Callable[[T], Check], items: Sequence[T]) -> list[Check]:
    """Run network probes side by side (each has its own timeout), results in the order of ``items``."""
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(items))) as pool:
        return list(pool.map(probe, items))


def scrub_text(text: str | None, secrets: Mapping[str, str]) -> str:
    """``text`` with every secret value masked (tools may quote a config line holding one)."""
    text = text or ""
    for value in secrets.values():
        if value:
            text = text.replace(value, "***")
    return text


def scrub(checks: list[Check], secrets: Mapping[str, str]) -> list[Check]:
    """The checks with every secret value masked, wherever it appears."""
    return [
        replace(
            check,
            name=scrub_text(check.name, secrets),
            detail=scrub_text(check.detail, secrets),
            fix=scrub_text(check.fix, secrets) if check.fix else None,
        )
        for check in checks
    ]
