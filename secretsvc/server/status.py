"""The one table that turns domain errors into gRPC status codes."""

from __future__ import annotations

import grpc

from secretsvc import errors

STATUS_CODES: dict[type[errors.SecretsError], grpc.StatusCode] = {
    errors.SecretsError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.SecretNotFound: grpc.StatusCode.NOT_FOUND,
    errors.VersionNotFound: grpc.StatusCode.NOT_FOUND,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.AccessDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.ReadForbidden: grpc.StatusCode.PERMISSION_DENIED,
    errors.NotRotatable: grpc.StatusCode.FAILED_PRECONDITION,
    errors.SecretCorrupted: grpc.StatusCode.DATA_LOSS,
    errors.StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.VersionConflict: grpc.StatusCode.ABORTED,
    errors.VersionExpired: grpc.StatusCode.FAILED_PRECONDITION,
    errors.VersionNotKept: grpc.StatusCode.FAILED_PRECONDITION,
    errors.RootKeyChanged: grpc.StatusCode.FAILED_PRECONDITION,
    errors.RotationInProgress: grpc.StatusCode.ABORTED,
    errors.NotInitialized: grpc.StatusCode.FAILED_PRECONDITION,
    errors.RollbackRefused: grpc.StatusCode.FAILED_PRECONDITION,
    errors.TargetRefused: grpc.StatusCode.FAILED_PRECONDITION,
}

INTERNAL_MESSAGE = "internal error; the server log has the details"


def status_for(error: errors.SecretsError) -> grpc.StatusCode:
    """Return the status code of a domain error, by its nearest mapped type."""
    for kind in type(error).__mro__:
        if issubclass(kind, errors.SecretsError) and kind in STATUS_CODES:
            return STATUS_CODES[kind]
    return grpc.StatusCode.INTERNAL
