"""Exceptions shared by the whole package.

`UserError` (and its subclasses) mean "the input is wrong": the CLI prints the message
without a traceback and exits with status 2. Messages name the file or key and what is
wrong with it.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (a file, a key, an option); the message says what to fix."""


class ConfigError(UserError):
    """A recipe or override is invalid: unknown key, wrong type, or a value out of range."""


class MissingDependencyError(UserError):
    """An optional dependency is needed for the requested feature."""

    def __init__(self, package: str, extra: str, feature: str, alternative: str = ""):
        super().__init__(
            f"{feature} needs the optional package '{package}'. "
            f"Install it with: pip install 'voxforge[{extra}]'  (or: pip install {package})"
            + (f", or {alternative}" if alternative else "")
        )
        self.package = package
        self.extra = extra
