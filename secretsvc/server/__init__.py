"""The gRPC transport: servicer, error mapping and the server's lifecycle."""
