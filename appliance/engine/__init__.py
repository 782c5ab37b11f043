"""Generation and embedding engines over ONNX Runtime.

Where a token is sampled: sampling.py. Where a request is scheduled and stepped: engine.py.
Where the model runs: runners.py (shared_kv_runner.py for builder graphs,
concat_kv_runner.py for Optimum graphs) and embedder.py (embeddings).
"""
