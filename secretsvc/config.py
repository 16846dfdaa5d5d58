"""Settings from flags and the environment, and the root key they point to."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from secretsvc.crypto import MIN_ROOT_KEY_LENGTH
from secretsvc.errors import StartupError

logger = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:50051"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///var/secretsvc.db"


class Settings(BaseSettings):
    """The server's settings; each one also reads ``SECRETSVC_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="SECRETSVC_", extra="ignore", populate_by_name=True
    )

    listen: str = DEFAULT_LISTEN
    database_url: str = DEFAULT_DATABASE_URL
    # Seconds between two runs of the rotation loop.
    rotation_interval: float = Field(default=3600.0, gt=0)
    # Seconds that calls in flight may take to finish at shutdown.
    shutdown_grace: float = Field(default=5.0, ge=0)
    log_level: str = "INFO"
    # A TOML file of secrets to add to, or override in, the built-in catalog.
    catalog: Path | None = None
    # "token": every call must carry a bearer token. Mutual TLS (a client CA)
    # requires credentials too. "none" is for a loopback-only server.
    auth: Literal["none", "token"] = "none"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Client certificates must be signed by this CA; their common name is
    # the caller, granted what the TLS policy file says.
    tls_client_ca: Path | None = None
    tls_policy: Path | None = None
    # Versions re-sealed per transaction after the data key rotates.
    reseal_batch: int = Field(default=100, ge=1, le=10_000)
    # How long a rotation that touches a database may run before another
    # process (or this one, restarted) may take it over.
    rotation_lease: float = Field(default=60.0, gt=0, le=3600)
    # A test hook: pause every rotation that touches a target after this step
    # (created, applied, verified or promoted), so a test can kill the
    # process there.
    test_pause_after: Literal["created", "applied", "verified", "promoted"] | None = (
        None
    )
    # host:port of the Prometheus metrics endpoint; none by default.
    metrics_listen: str | None = None

    @field_validator("listen", "metrics_listen")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            check_address(value)
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"give one of {', '.join(LOG_LEVELS)}")
        return level

    @property
    def auth_required(self) -> bool:
        """Whether every call must carry a credential."""
        return self.auth == "token" or self.tls_client_ca is not None

    # Used only when no root key is set: created on first use, mode 0600.
    dev_key_file: Path | None = None

    root_key: SecretStr | None = Field(
        default=None,
        validation_alias="PASSWORD_MASTER_KEY",
        repr=False,
    )
    root_key_file: Path | None = Field(
        default=None,
        validation_alias="PASSWORD_MASTER_KEY_FILE",
    )


def check_address(address: str) -> None:
    """Check that ``address`` is ``host:port`` (``[v6]:port`` for IPv6).

    Raises:
        ValueError: saying what the address should look like.
    """
    host, _, port = address.rpartition(":")
    bare = host.removeprefix("[").removesuffix("]")
    if not bare or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise ValueError(
            "give host:port, such as 127.0.0.1:50051 or [::1]:50051 (port 0 "
            "picks a free one)"
        )
    if ":" in bare and host == bare:
        raise ValueError("put an IPv6 address in brackets, such as [::1]:50051")


def load_root_key(settings: Settings) -> str:
    """Return the root key from the environment, a key file or the dev key file.

    Raises:
        StartupError: the key is missing, unreadable or too short, in one line.
    """
    if settings.root_key is not None and settings.root_key_file is not None:
        raise StartupError(
            "set PASSWORD_MASTER_KEY or PASSWORD_MASTER_KEY_FILE, not both"
        )

    if settings.root_key is not None:
        key, origin = settings.root_key.get_secret_value(), "PASSWORD_MASTER_KEY"
    elif settings.root_key_file is not None:
        key = _read_key_file(settings.root_key_file, "PASSWORD_MASTER_KEY_FILE")
        origin = (
            f"the file named by PASSWORD_MASTER_KEY_FILE ({settings.root_key_file})"
        )
    elif settings.dev_key_file is not None:
        return _dev_key(settings.dev_key_file)
    else:
        raise StartupError(
            "no root key: set PASSWORD_MASTER_KEY (at least 32 characters) "
            "or PASSWORD_MASTER_KEY_FILE"
        )

    if len(key) < MIN_ROOT_KEY_LENGTH:
        raise StartupError(
            f"root key from {origin} is {len(key)} characters; "
            f"it needs at least {MIN_ROOT_KEY_LENGTH}"
        )
    return key


def _read_key_file(path: Path, variable: str) -> str:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not text"
        raise StartupError(
            f"{variable} names {path}, which cannot be read: {reason}"
        ) from None


def _dev_key(path: Path) -> str:
    """Return the development root key, creating its file on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_urlsafe(48) + "\n")
    logger.warning(
        "no root key set: using the development key file %s; "
        "set PASSWORD_MASTER_KEY or PASSWORD_MASTER_KEY_FILE in production",
        path,
    )
    key = _read_key_file(path, "the development key file")
    if len(key) < MIN_ROOT_KEY_LENGTH:
        raise StartupError(f"development key file {path} holds a key that is too short")
    return key
