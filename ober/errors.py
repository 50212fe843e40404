"""The one exception type ober's core raises for anything a user can fix.

The CLI maps it to a one-line message and exit status 1; a traceback is shown only with ``-v``.
"""

from __future__ import annotations


class OberError(Exception):
    """A problem the user can fix, with a suggestion how.

    Args:
        message: what is wrong, naming the exact file, field or host.
        fix: how to fix it, when there is something useful to say.
    """

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} (fix: {self.fix})" if self.fix else self.message


class ConfigError(OberError):
    """Invalid configuration or inventory data."""


class SecretsError(OberError):
    """The secrets file is missing, unsafe or lacks a referenced secret."""


class RenderError(OberError):
    """A template could not be rendered, or what it rendered failed validation."""
