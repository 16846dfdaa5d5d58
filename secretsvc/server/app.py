"""Start, run and stop a secretsvc server."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
from collections.abc import Mapping

import grpc
import prometheus_client
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from secretsvc_client._proto import secrets_pb2 as pb
from secretsvc_client._proto import secrets_pb2_grpc as pb_grpc

from secretsvc.access import Authenticator, load_tls_identities
from secretsvc.catalog import load_catalog
from secretsvc.config import Settings
from secretsvc.errors import StartupError, StoreUnavailable
from secretsvc.rotation.scheduler import RotationScheduler
from secretsvc.server.servicer import SecretServicer
from secretsvc.service import Clock, SecretManager, utc_now
from secretsvc.store import Store, redact_url

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SecretService"].full_name


class SecretsServer:
    """One secretsvc server: the store, the manager, the loop and the gRPC server."""

    def __init__(
        self,
        settings: Settings,
        root_key: str,
        *,
        clock: Clock = utc_now,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """Prepare a server; nothing is opened before :meth:`start`."""
        self.settings = settings
        catalog = load_catalog(settings.catalog)
        self.store = Store.open(settings.database_url)
        self.manager = SecretManager(
            self.store,
            root_key,
            catalog=catalog,
            environ=os.environ if environ is None else environ,
            clock=clock,
            reseal_batch=settings.reseal_batch,
            rotation_lease=settings.rotation_lease,
            pause_after=settings.test_pause_after,
        )
        self.scheduler = RotationScheduler(
            self.manager, period=settings.rotation_interval, clock=clock
        )
        identities = (
            load_tls_identities(settings.tls_policy) if settings.tls_policy else None
        )
        self.authenticator = Authenticator(
            self.store,
            self.manager.audit,
            required=settings.auth_required,
            tls_identities=identities,
        )
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        """Open the store, start listening and start the loop; return the port.

        Raises:
            StartupError: the root key does not fit the store, or the like.
        """
        check_exposure(self.settings)
        credentials = server_credentials(self.settings)
        try:
            await self.manager.start()
            await self.authenticator.start()
        except StoreUnavailable:
            await self.manager.close()
            await self.store.close()
            raise StartupError(
                f"the store {redact_url(self.settings.database_url)} cannot be reached"
            ) from None
        except BaseException:
            await self.manager.close()
            await self.store.close()
            raise

        # Without SO_REUSEPORT a second server on a taken port fails to start
        # instead of silently sharing the port.
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        servicer = SecretServicer(self.manager, self.authenticator)
        pb_grpc.add_SecretServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        try:
            if credentials is None:
                self.port = server.add_insecure_port(self.settings.listen)
            else:
                self.port = server.add_secure_port(self.settings.listen, credentials)
            if self.settings.metrics_listen:
                _metrics_server(self.settings.metrics_listen)
        except (RuntimeError, StartupError) as error:
            await self.authenticator.stop()
            await self.manager.close()
            await self.store.close()
            if isinstance(error, StartupError):
                raise
            raise StartupError(
                f"cannot listen on {self.settings.listen}: "
                "the address is taken or not this machine's"
            ) from None
        await server.start()
        self._server = server

        self.scheduler.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        host = self.settings.listen.rsplit(":", 1)[0]
        logger.info(
            "secretsvc listening on %s:%d%s, store %s",
            host,
            self.port,
            " with TLS" if credentials else "",
            redact_url(self.settings.database_url),
        )
        in_clear = self.settings.auth == "token" and credentials is None
        if in_clear and not is_loopback(self.settings.listen):
            logger.warning(
                "bearer tokens travel in clear text on %s: configure TLS "
                "(SECRETSVC_TLS_CERT, SECRETSVC_TLS_KEY)",
                self.settings.listen,
            )
        if not self.settings.auth_required:
            logger.warning(
                "no authentication configured: only this machine can reach the "
                "server, and every local caller has every right"
            )

        return self.port

    async def stop(self) -> None:
        """Refuse new calls, end streams, finish calls in flight, close the store."""
        logger.info("secretsvc shutting down")
        await self.health.enter_graceful_shutdown()
        # Ending the watch streams first lets the grace period go to unary calls.
        self.manager.hub.close()
        await self.scheduler.stop()
        if self._server is not None:
            await self._server.stop(self.settings.shutdown_grace)
        await self.authenticator.stop()
        try:
            await self.manager.close()
        finally:
            await self.store.close()
        logger.info("secretsvc stopped")


def _metrics_server(address: str) -> None:
    """Serve Prometheus metrics on ``address`` (host:port) in a thread.

    Raises:
        StartupError: the address is taken or not this machine's.
    """
    host, _, port = address.rpartition(":")
    try:
        prometheus_client.start_http_server(int(port), addr=host.strip("[]"))
    except OSError as error:
        raise StartupError(
            f"cannot serve metrics on {address}: {error.strerror or error}"
        ) from None
    logger.info("metrics on http://%s/metrics", address)


def is_loopback(listen: str) -> bool:
    """Tell whether a listen address is reachable from this machine only."""
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Refuse to serve beyond loopback without authentication.

    Raises:
        StartupError: saying how to configure authentication.
    """
    if settings.auth_required or is_loopback(settings.listen):
        return
    raise StartupError(
        f"refusing to listen on {settings.listen} without authentication: set "
        "SECRETSVC_AUTH=token and create tokens with 'secretsvc token create', "
        "or configure mutual TLS (SECRETSVC_TLS_CERT, SECRETSVC_TLS_KEY, "
        "SECRETSVC_TLS_CLIENT_CA); or listen on 127.0.0.1"
    )


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """Return TLS credentials when a certificate is configured.

    Raises:
        StartupError: half the TLS settings, or files that cannot be read.
    """
    if settings.tls_cert is None and settings.tls_key is None:
        if settings.tls_client_ca is not None:
            raise StartupError(
                "SECRETSVC_TLS_CLIENT_CA needs SECRETSVC_TLS_CERT and SECRETSVC_TLS_KEY"
            )
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise StartupError("set both SECRETSVC_TLS_CERT and SECRETSVC_TLS_KEY")
    try:
        cert = settings.tls_cert.read_bytes()
        key = settings.tls_key.read_bytes()
        client_ca = (
            settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
        )
    except OSError as error:
        raise StartupError(
            f"TLS file {error.filename} cannot be read: {error.strerror}"
        ) from None
    return grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


async def serve(settings: Settings, root_key: str) -> None:
    """Run a server until SIGTERM or SIGINT, then stop it gracefully."""
    server = SecretsServer(settings, root_key)
    await server.start()

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    await server.stop()
