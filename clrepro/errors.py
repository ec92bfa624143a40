"""User-facing errors: one line naming the file, the key and the allowed values."""

from __future__ import annotations

from typing import Iterable


class UserError(Exception):
    """An error the user caused and can fix; the CLI prints it as one line and exits 2."""

    exit_code = 2


class ConfigError(UserError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""

    def __init__(self, key: str, problem: str, allowed: str | Iterable | None = None, source: str | None = None):
        self.key, self.problem, self.source = key, problem, source
        if allowed is not None and not isinstance(allowed, str):
            allowed = ", ".join(str(a) for a in allowed)
        self.allowed = allowed
        super().__init__(self._render())

    def _render(self) -> str:
        where = f"{self.source}: " if self.source else ""
        allowed = f" (allowed: {self.allowed})" if self.allowed else ""
        return f"{where}{self.key}: {self.problem}{allowed}"

    def located(self, source: str | None, strip: str = "") -> "ConfigError":
        """The same error with the key's synthetic `strip` prefix removed, attributed to `source` if unset."""
        key = self.key[len(strip):] if strip and self.key.startswith(strip) else self.key
        return ConfigError(key, self.problem, self.allowed, self.source or source)


class DataUnavailableError(UserError):
    """A benchmark's data or optional dependency is missing on this machine."""
