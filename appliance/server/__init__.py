"""The gRPC daemon: services, proto conversion, error mapping, health, config and main loop."""
