"""The root key, the keyring of data keys it wraps, and AES-256-GCM sealing.

A sealed value is ``FORMAT | term (4 bytes) | nonce (12) | ciphertext+tag``.
Its associated data names the secret and version, so a sealed value copied
onto another secret's row, or another version's, does not open.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MIN_ROOT_KEY_LENGTH = 32
KEY_BYTES = 32
NONCE_BYTES = 12
SALT_BYTES = 16

_FORMAT = 1
_HEADER = struct.Struct(">BI")
_WRAP_INFO = b"secretsvc keyring wrapping key v1"
_VERIFIER_PLAINTEXT = b"secretsvc root key check"
_VERIFIER_AAD = b"secretsvc|root-key-check"


class SealError(Exception):
    """A sealed value does not open under the keys at hand."""


class UnknownKeyTerm(SealError):
    """A sealed value names a keyring term this process does not hold."""

    def __init__(self, term: int) -> None:
        super().__init__(f"keyring has no term {term}")
        self.term = term


def new_data_key() -> bytes:
    """Return a fresh random 256-bit data key."""
    return AESGCM.generate_key(bit_length=256)


def new_salt() -> bytes:
    """Return a fresh random salt for deriving the wrapping key."""
    return os.urandom(SALT_BYTES)


def _aead_seal(key: AESGCM, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + key.encrypt(nonce, plaintext, aad)


def _aead_open(key: AESGCM, sealed: bytes, aad: bytes) -> bytes:
    nonce, ciphertext = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:]
    try:
        return key.decrypt(nonce, ciphertext, aad)
    except (InvalidTag, ValueError) as error:
        raise SealError("sealed value does not open") from error


def _version_aad(name: str, version: int) -> bytes:
    return f"secretsvc|secret|{name}|{version}".encode()


def _term_aad(term: int) -> bytes:
    return f"secretsvc|keyring|{term}".encode()


class RootKey:
    """The operator's root key, turned by HKDF into the keyring's wrapping key.

    It never leaves memory; its repr shows nothing of it.
    """

    def __init__(self, secret: str | bytes, salt: bytes) -> None:
        material = secret.encode() if isinstance(secret, str) else secret
        if len(material) < MIN_ROOT_KEY_LENGTH:
            raise ValueError("root key is shorter than 32 characters")
        hkdf = HKDF(
            algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=_WRAP_INFO
        )
        self._wrapping = AESGCM(hkdf.derive(material))

    def __repr__(self) -> str:
        return "RootKey(<hidden>)"

    def make_verifier(self) -> bytes:
        """Return a value that only this root key opens, to store beside the data."""
        return _aead_seal(self._wrapping, _VERIFIER_PLAINTEXT, _VERIFIER_AAD)

    def matches(self, verifier: bytes) -> bool:
        """Tell whether ``verifier`` was made by this root key."""
        try:
            return _aead_open(self._wrapping, verifier, _VERIFIER_AAD) == (
                _VERIFIER_PLAINTEXT
            )
        except SealError:
            return False

    def wrap(self, term: int, data_key: bytes) -> bytes:
        """Seal a data key for keyring term ``term``."""
        return _aead_seal(self._wrapping, data_key, _term_aad(term))

    def unwrap(self, term: int, wrapped: bytes) -> bytes:
        """Open the data key of keyring term ``term``."""
        return _aead_open(self._wrapping, wrapped, _term_aad(term))


@dataclass(frozen=True, slots=True)
class KeyTerm:
    """One data key of the keyring, wrapped by the root key, as stored."""

    term: int
    wrapped_key: bytes


class Keyring:
    """The data keys in memory: seal with the newest term, open with any."""

    def __init__(self) -> None:
        self._keys: dict[int, AESGCM] = {}

    def __repr__(self) -> str:
        return f"Keyring(terms={sorted(self._keys)})"

    @property
    def active_term(self) -> int | None:
        """The term new values are sealed with, or None while the ring is empty."""
        return max(self._keys, default=None)

    def has_term(self, term: int) -> bool:
        """Tell whether this keyring holds ``term``."""
        return term in self._keys

    def with_term(self, term: int, data_key: bytes) -> Keyring:
        """Return a copy of this keyring that also holds ``term``."""
        ring = Keyring()
        ring._keys = {**self._keys, term: AESGCM(data_key)}
        return ring

    def seal(self, name: str, version: int, plaintext: bytes) -> bytes:
        """Seal a secret version's value with the active data key."""
        term = self.active_term
        if term is None:
            raise SealError("keyring is empty")
        header = _HEADER.pack(_FORMAT, term)
        aad = header + _version_aad(name, version)

        return header + _aead_seal(self._keys[term], plaintext, aad)

    def open(self, name: str, version: int, sealed: bytes) -> bytes:
        """Open a secret version's sealed value.

        Raises:
            UnknownKeyTerm: the value names a term this keyring does not hold.
            SealError: the value is damaged or belongs to another row.
        """
        if len(sealed) < _HEADER.size + NONCE_BYTES:
            raise SealError("sealed value is truncated")
        header = sealed[: _HEADER.size]
        form, term = _HEADER.unpack(header)
        if form != _FORMAT:
            raise SealError(f"sealed value has unknown format {form}")
        key = self._keys.get(term)
        if key is None:
            raise UnknownKeyTerm(term)
        aad = header + _version_aad(name, version)

        return _aead_open(key, sealed[_HEADER.size :], aad)

    @staticmethod
    def term_of(sealed: bytes) -> int:
        """Return the keyring term a sealed value names."""
        _, term = _HEADER.unpack(sealed[: _HEADER.size])
        return int(term)
