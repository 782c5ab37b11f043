"""The one mapping from the daemon's exception hierarchy to the OpenAI API's HTTP statuses."""

import pytest

from appliance.errors import (ConfigError, Draining, InvalidRequest, ModelNotFound, ModelNotReady, NotAllowed,
                              PackageError, QueueFull, WrongTask)
from appliance.server.auth import Unauthenticated
from appliance.server.errors import RequestTooLarge, http_error_for


@pytest.mark.parametrize("exc,status,param", [
    (InvalidRequest("top_p", "must be between 0 and 1"), 400, "top_p"),
    (WrongTask("model 'minilm' is a feature-extraction model"), 400, None),
    (Unauthenticated("invalid or revoked API key"), 401, None),
    (NotAllowed("model: this key may not use 'qwen'"), 403, None),
    (ModelNotFound("qwen"), 404, "model"),
    (RequestTooLarge("body: larger than the limit"), 413, None),
    (QueueFull("this key's rate is spent"), 429, None),
    (ModelNotReady("model 'qwen' is loading"), 503, None),
    (Draining("the server is draining"), 503, None),
])
def test_each_error_class_has_its_status_and_its_message(exc, status, param):
    error = http_error_for(exc)
    assert (error.status, error.param, error.message) == (status, param, str(exc))


@pytest.mark.parametrize("exc", [ValueError("alice@example.com"), PackageError("qwen", "model.onnx changed"),
                                 ConfigError("config server.models: gone")])
def test_anything_else_is_500_with_no_detail(exc):
    error = http_error_for(exc)
    assert (error.status, error.type, error.message) == (500, "server_error", "internal error")
