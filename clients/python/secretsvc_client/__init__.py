"""secretsvc_client: read, rotate and watch the secrets that secretsvc owns.

async with SecretsClient("127.0.0.1:50051") as secrets:
    jwt_key = (await secrets.get("JWT_SECRET")).value
"""

from secretsvc_client.blocking import BlockingSecretsClient
from secretsvc_client.client import SecretsClient, TLSConfig
from secretsvc_client.errors import (
    ConflictError,
    DataLossError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    SecretsError,
    ServerError,
    UnauthenticatedError,
    UnavailableError,
)
from secretsvc_client.models import (
    AuditEvent,
    AuditPage,
    InitializeResult,
    RotationEvent,
    Secret,
    SecretInfo,
    SkippedSecret,
    VersionInfo,
)

__all__ = [
    "AuditEvent",
    "AuditPage",
    "BlockingSecretsClient",
    "ConflictError",
    "DataLossError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InitializeResult",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "RotationEvent",
    "Secret",
    "SecretInfo",
    "SecretsClient",
    "SecretsError",
    "ServerError",
    "SkippedSecret",
    "TLSConfig",
    "UnauthenticatedError",
    "UnavailableError",
    "VersionInfo",
]
