"""``python -m ober``."""

from ober.cli import entry

entry()
