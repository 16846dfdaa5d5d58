"""The contract: committed stubs, error tables, health and reflection."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from secretsvc_client.errors import STATUS_ERRORS

from secretsvc import errors
from secretsvc.server.status import STATUS_CODES
from tests.helpers import RunningServer

CLIENT_DIR = Path(__file__).resolve().parent.parent / "clients" / "python"


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    """Regenerating the stubs from the .proto changes nothing that is committed."""
    spec = importlib.util.spec_from_file_location(
        "generate", CLIENT_DIR / "generate.py"
    )
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)

    generate.generate(tmp_path)

    committed = CLIENT_DIR / "secretsvc_client" / "_proto"
    for stub in generate.STUBS:
        assert (tmp_path / stub).read_text() == (committed / stub).read_text(), (
            f"{stub} is stale: run `make proto`"
        )


def _domain_errors() -> list[type[errors.SecretsError]]:
    return [
        kind
        for _, kind in inspect.getmembers(errors, inspect.isclass)
        if issubclass(kind, errors.SecretsError)
    ]


@pytest.mark.parametrize("kind", _domain_errors(), ids=lambda kind: kind.__name__)
def test_every_domain_error_has_a_status(kind: type[errors.SecretsError]) -> None:
    """Each domain error type has its own entry in the status table."""
    assert kind in STATUS_CODES


@pytest.mark.parametrize(
    "code",
    [code for code in grpc.StatusCode if code is not grpc.StatusCode.OK],
    ids=lambda code: code.name,
)
def test_every_status_has_a_client_error(code: grpc.StatusCode) -> None:
    """The client translates every failure status into one of its errors."""
    assert code in STATUS_ERRORS


async def test_health_reports_serving(running: RunningServer) -> None:
    """The standard health service answers SERVING for the server and the API."""
    async with grpc.aio.insecure_channel(running.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "secretsvc.v1.SecretService"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_service(running: RunningServer) -> None:
    """Server reflection names the secrets service, as grpcurl needs."""
    async with grpc.aio.insecure_channel(running.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = [reply async for reply in stub.ServerReflectionInfo(iter([request]))]

    names = {s.name for s in replies[0].list_services_response.service}
    assert {"secretsvc.v1.SecretService", "grpc.health.v1.Health"} <= names
