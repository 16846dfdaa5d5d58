"""Sealing: AES-256-GCM under keyring terms wrapped by the root key."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secretsvc import crypto
from tests.helpers import OTHER_ROOT_KEY, ROOT_KEY

SALT = b"0123456789abcdef"


def ring() -> crypto.Keyring:
    return crypto.Keyring().with_term(1, crypto.new_data_key())


@given(value=st.binary(max_size=4096), version=st.integers(1, 2**31 - 1))
def test_sealed_value_opens_for_its_own_row(value: bytes, version: int) -> None:
    """Any value sealed for a name and version opens for that name and version."""
    keys = ring()

    sealed = keys.seal("JWT_SECRET", version, value)

    assert keys.open("JWT_SECRET", version, sealed) == value


def test_every_seal_uses_a_fresh_nonce() -> None:
    """Sealing the same value twice gives different ciphertexts."""
    keys = ring()

    assert keys.seal("A", 1, b"same") != keys.seal("A", 1, b"same")


@pytest.mark.parametrize(
    ("name", "version"),
    [("CSRF_SECRET", 1), ("JWT_SECRET", 2)],
    ids=["other-name", "other-version"],
)
def test_sealed_value_does_not_open_on_another_row(name: str, version: int) -> None:
    """Associated data binds a ciphertext to its secret name and version."""
    keys = ring()
    sealed = keys.seal("JWT_SECRET", 1, b"value")

    with pytest.raises(crypto.SealError):
        keys.open(name, version, sealed)


def test_sealed_value_names_its_term() -> None:
    """A value sealed after a new term is added uses it; older terms still open."""
    first = ring()
    old = first.seal("A", 1, b"old")
    second = first.with_term(2, crypto.new_data_key())

    new = second.seal("A", 2, b"new")

    assert crypto.Keyring.term_of(old) == 1
    assert crypto.Keyring.term_of(new) == 2
    assert second.open("A", 1, old) == b"old"
    with pytest.raises(crypto.UnknownKeyTerm):
        first.open("A", 2, new)


def test_wrong_root_key_fails_the_verifier_and_the_unwrap() -> None:
    """Another root key neither matches the verifier nor opens a wrapped key."""
    root = crypto.RootKey(ROOT_KEY, SALT)
    other = crypto.RootKey(OTHER_ROOT_KEY, SALT)
    data_key = crypto.new_data_key()
    wrapped = root.wrap(1, data_key)

    assert root.matches(root.make_verifier())
    assert not other.matches(root.make_verifier())
    assert root.unwrap(1, wrapped) == data_key
    with pytest.raises(crypto.SealError):
        other.unwrap(1, wrapped)
    with pytest.raises(crypto.SealError):
        root.unwrap(2, wrapped)


def test_root_key_shorter_than_32_is_refused() -> None:
    """The root key needs at least 32 characters."""
    with pytest.raises(ValueError, match="32"):
        crypto.RootKey("x" * 31, SALT)
    assert "x" * 40 not in repr(crypto.RootKey("x" * 40, SALT))
