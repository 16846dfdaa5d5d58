"""Produce new secret values."""

from __future__ import annotations

import secrets

from secretsvc.catalog import SecretPolicy

# token_urlsafe(n) gives about 1.33 characters a byte; 48 bytes is 64 characters.
_DEFAULT_BYTES = 48


def generate_value(policy: SecretPolicy) -> str:
    """Return a new random value for ``policy`` from the system's CSPRNG.

    The value is URL-safe base64 text, never shorter than the policy's minimum.
    """
    nbytes = max(_DEFAULT_BYTES, policy.min_length)
    return secrets.token_urlsafe(nbytes)
