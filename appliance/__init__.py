"""ONNX-optimized LLM inference appliance: gRPC daemon, engine, model packages and client."""

__version__ = "0.1.0"
