"""secretsvc: a gRPC service that generates, stores, rotates and serves secrets."""

__version__ = "0.1.0"
