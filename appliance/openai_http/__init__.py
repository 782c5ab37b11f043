"""The OpenAI-compatible HTTP API: a second door to the daemon's engines, beside gRPC ([http] listen)."""
