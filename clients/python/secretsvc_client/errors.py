"""The client's errors: one hierarchy, translated from gRPC status codes."""

from __future__ import annotations

import grpc


class SecretsError(Exception):
    """Raise for any failed call to secretsvc; the root of the client's errors."""

    def __init__(self, message: str, *, code: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class InvalidArgumentError(SecretsError):
    """The request was malformed: a bad secret name or version."""


class NotFoundError(SecretsError):
    """The secret or version does not exist."""


class PermissionDeniedError(SecretsError):
    """The caller may not do this, or the secret is never served."""


class UnauthenticatedError(SecretsError):
    """The call carried no valid credentials."""


class FailedPreconditionError(SecretsError):
    """The secret is not in a state that allows the call."""


class ConflictError(SecretsError):
    """The call lost a race with another writer."""


class DataLossError(SecretsError):
    """The stored secret could not be opened: it is corrupted."""


class UnavailableError(SecretsError):
    """The server, or the store behind it, cannot be reached."""


class DeadlineExceededError(SecretsError):
    """The call took longer than its timeout."""


class ServerError(SecretsError):
    """The server failed, or does not implement the call."""


STATUS_ERRORS: dict[grpc.StatusCode, type[SecretsError]] = {
    grpc.StatusCode.CANCELLED: SecretsError,
    grpc.StatusCode.UNKNOWN: ServerError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: ConflictError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: UnavailableError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ABORTED: ConflictError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.UNIMPLEMENTED: ServerError,
    grpc.StatusCode.INTERNAL: ServerError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DATA_LOSS: DataLossError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
}


def from_rpc_error(error: grpc.aio.AioRpcError) -> SecretsError:
    """Translate a failed gRPC call into the client's own error."""
    status = error.code()
    error_type = STATUS_ERRORS.get(status, SecretsError)
    message = error.details() or status.name.lower()

    return error_type(message, code=status.name)
