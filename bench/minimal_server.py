"""A minimal grpc.aio server that answers GetSecret from a dict, as a baseline.

It serves secretsvc.v1.SecretService/GetSecret only, with the committed
messages, registered as the generated stubs register it, and replies with a
response built once at start-up: no store, no crypto, no audit, no log line
per call. Every other method is UNIMPLEMENTED. ``bench/get_secret.py`` loads
it beside secretsvc to show what the service costs on top of grpc.aio itself.

    python bench/minimal_server.py --port 50052
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import string
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from secretsvc_client._proto import secrets_pb2 as pb

logger = logging.getLogger("minimal_server")

Context = grpc.aio.ServicerContext[Any, Any]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SecretService"].full_name

# The shape of a generated JWT_SECRET: 64 letters and digits, version 1,
# current, due again in 90 days, so the reply is as large as the real one.
VALUE_LENGTH = 64
JWT_ROTATION = timedelta(days=90)
SHUTDOWN_GRACE = 1.0


def build_secrets() -> dict[str, pb.GetSecretResponse]:
    """Return the replies to serve, keyed by secret name."""
    alphabet = string.ascii_letters + string.digits
    value = "".join(alphabet[i % len(alphabet)] for i in range(VALUE_LENGTH))
    created_at = datetime.now(UTC)
    reply = pb.GetSecretResponse(
        name="JWT_SECRET",
        value=value,
        version=1,
        stage=pb.STAGE_CURRENT,
        created_at=created_at,
        next_rotation_due=created_at + JWT_ROTATION,
    )

    return {reply.name: reply}


class MinimalSecretService:
    """Answer GetSecret from a dict."""

    def __init__(self, secrets: dict[str, pb.GetSecretResponse]) -> None:
        self._secrets = secrets

    async def GetSecret(
        self, request: pb.GetSecretRequest, context: Context
    ) -> pb.GetSecretResponse:
        """Return the stored reply for the name asked for."""
        reply = self._secrets.get(request.name)
        if reply is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"secret '{request.name}' does not exist"
            )

        return reply


async def serve(port: int) -> None:
    """Serve on 127.0.0.1:``port`` until SIGTERM or SIGINT."""
    servicer = MinimalSecretService(build_secrets())
    # Only GetSecret is registered, so grpc answers UNIMPLEMENTED for the rest.
    get_secret = grpc.unary_unary_rpc_method_handler(
        servicer.GetSecret,
        request_deserializer=pb.GetSecretRequest.FromString,
        response_serializer=pb.GetSecretResponse.SerializeToString,
    )
    handlers = {"GetSecret": get_secret}
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),)
    )
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    logger.info("minimal server listening on 127.0.0.1:%d", bound)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()

    logger.info("minimal server shutting down")
    await server.stop(SHUTDOWN_GRACE)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Serve GetSecret from a dict, as a baseline for secretsvc."
    )
    parser.add_argument(
        "--port", type=int, default=0, help="port on 127.0.0.1 (0: any free one)"
    )
    args = parser.parse_args()

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
