"""Produce new secret values."""

from __future__ import annotations

import secrets
import string

from secretsvc.catalog import Alphabet, SecretPolicy

# 64 characters carry at least 256 bits in each alphabet but hex (which gets
# 64 hex digits, 256 bits, too).
DEFAULT_LENGTH = 64
_ALPHANUMERIC = string.ascii_letters + string.digits


def generate_value(policy: SecretPolicy) -> str:
    """Return a new random value for ``policy`` from the system's CSPRNG.

    The value is in the policy's alphabet and never shorter than its minimum.
    """
    length = max(DEFAULT_LENGTH, policy.min_length)
    if policy.alphabet is Alphabet.HEX:
        return secrets.token_hex((length + 1) // 2)[:length]
    if policy.alphabet is Alphabet.ALPHANUMERIC:
        return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(length))
    return secrets.token_urlsafe(length)[:length]
