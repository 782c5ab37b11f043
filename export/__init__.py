"""The offline exporter (`appliance-export`): Hugging Face models to verified ONNX packages."""
