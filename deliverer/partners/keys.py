"""API keys: generated once, stored as a hash, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

KEY_PREFIX = "dlv_"
# dlv_ + 48 hex characters (192 random bits).
KEY_PATTERN = re.compile(r"^dlv_[0-9a-f]{48}$")
DISPLAY_PREFIX_LEN = 12


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_hex(24)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def looks_like_key(key: str) -> bool:
    return bool(KEY_PATTERN.match(key))


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
