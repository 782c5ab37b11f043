"""The server's redaction stage: policies from config and request, audit records to the log."""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path
from typing import Optional

from appliance.errors import ConfigError, NotAllowed
from appliance.redact import Redactor
from appliance.redact.ner import NER_LANGUAGES, load_ner
from appliance.redact.policies import InputPolicy, OutputPolicy
from appliance.redact.request import RequestRedaction, counts_of
from appliance.server.config import RedactionConfig
from appliance.server.keys import KeyRights

audit_log = logging.getLogger("appliance.audit")
log = logging.getLogger("appliance.redaction")

MIN_KEY_BYTES = 16


def load_audit_key(path: Optional[Path]) -> bytes:
    if path is None:
        return secrets.token_bytes(32)
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"config redaction.audit_key_file: {exc.strerror}") from None
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"config redaction.audit_key_file: the secret must hold at least {MIN_KEY_BYTES} bytes")
    return key


def load_configured_ner(languages: Optional[tuple[str, ...]]):
    """The NER backends that `[redaction] ner` asks for (unset: every installed one). A listed
    language whose model is missing is left out with a warning naming what to install."""
    ner, missing = load_ner(NER_LANGUAGES if languages is None else languages)
    for language, reason in missing.items():
        if languages is not None:
            log.warning("redaction.ner: %s is configured but left out: %s", language, reason)
    active = [] if ner is None else [lang for lang in (languages or NER_LANGUAGES) if lang not in missing]
    log.info("redaction: names and addresses by NER for %s", ", ".join(active) or "no language")
    return ner


class RedactionStage:
    def __init__(self, config: RedactionConfig):
        self.config = config
        self.redactor = Redactor(ner=load_configured_ner(config.ner))
        self.audit_key = load_audit_key(config.audit_key_file)

    def for_request(self, input_policy: Optional[str], output_policy: Optional[str],
                    rights: Optional[KeyRights] = None) -> RequestRedaction:
        """Policies chosen by the request (None: the server's default), checked against what both
        the server and the caller's key allow."""
        chosen_input = input_policy or self.config.input
        chosen_output = output_policy or self.config.output
        if chosen_input not in self.config.allowed_input:
            raise NotAllowed(f"redaction.input: {chosen_input!r} is not allowed on this server")
        if chosen_output not in self.config.allowed_output:
            raise NotAllowed(f"redaction.output: {chosen_output!r} is not allowed on this server")
        if rights is not None and chosen_input not in rights.input_policies:
            raise NotAllowed(f"redaction.input: this key may not use {chosen_input!r}")
        if rights is not None and chosen_output not in rights.output_policies:
            raise NotAllowed(f"redaction.output: this key may not use {chosen_output!r}")
        return RequestRedaction(self.redactor, self.audit_key, InputPolicy(chosen_input), OutputPolicy(chosen_output))

    def audit(self, request_id: str, redaction: RequestRedaction) -> dict[tuple[str, str], int]:
        """One JSON line per direction that carried PII (types, counts, keyed hashes, never values);
        returns the counts by (direction, type) for the response and the metrics."""
        records = redaction.audit_records(request_id)
        for record in records:
            audit_log.info(json.dumps({"event": "pii", **record.to_dict()}, sort_keys=True))
        return counts_of(records)
