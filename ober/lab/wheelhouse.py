"""Moved to :mod:`ober.remote.wheelhouse` (the fleet builds wheelhouses for real nodes too); kept for old imports."""

from ober.remote.wheelhouse import build_wheelhouse, platforms, source_digest

__all__ = ["build_wheelhouse", "platforms", "source_digest"]
