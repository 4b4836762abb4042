"""New client keys: random, shown once; the alias file keeps only their digest."""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "rsk-"


def new_key() -> str:
    """A key with 256 bits of randomness, recognisable by its prefix in secret scanners."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest(key: str | bytes) -> str:
    """The hex SHA-256 the alias file's ``hash: sha256:...`` holds."""
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).hexdigest()
