"""Generation and embedding engines over ONNX Runtime.

Where a token is sampled: sampling.py. Where a request is scheduled and stepped: engine.py.
Where the model runs: decoder_runner.py (generation) and embedder.py (embeddings).
"""
