"""Passwords from a file or an environment variable, never from the configuration itself."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["SecretUnavailable", "read_secret"]


class SecretUnavailable(Exception):
    """The file cannot be read or the environment variable is not set."""


def read_secret(
    file: Path | None, env: str | None, *, file_label: str, env_label: str
) -> str | None:
    """The secret from `file` (surrounding whitespace removed) or the variable `env`; None
    when neither is given. The labels name the setting in messages; the secret is never in
    one."""
    if file is not None:
        try:
            return file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise SecretUnavailable(f"cannot read the {file_label}: {exc}") from exc
    if env is not None:
        try:
            return os.environ[env]
        except KeyError:
            raise SecretUnavailable(
                f"the environment variable {env} ({env_label}) is not set"
            ) from None
    return None
