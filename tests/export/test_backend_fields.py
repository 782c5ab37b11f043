"""BackendFields: what a backend hands the exporter, typed, so a misspelt or missing field fails
where it is written instead of surfacing as a Manifest error later."""

import pytest

from appliance.model_package import Pooling
from export.backend_fields import BackendFields


def test_only_the_fields_set_reach_the_manifest():
    fields = BackendFields(model_file="model.onnx", context_length=512, vocab_size=30522, quantization={},
                           pooling=Pooling(mode="mean", output="last_hidden_state", normalize=False),
                           embedding_dim=384)
    given = fields.manifest_fields()
    assert set(given) == {"model_file", "context_length", "vocab_size", "quantization", "pooling", "embedding_dim"}
    assert given["embedding_dim"] == 384  # an encoder's keep the Manifest's decoder defaults (logits "all", ...)


def test_a_field_the_manifest_does_not_have_is_refused_where_it_is_written():
    with pytest.raises(TypeError, match="kv_layuot"):
        BackendFields(model_file="model.onnx", context_length=512, vocab_size=10, quantization={}, kv_layuot=None)
