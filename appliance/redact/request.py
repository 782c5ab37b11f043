"""One request's trip through the redaction stage: prompt in, token text out.

Input policy: `off`, `redact` (PII becomes [TYPE] before the model sees it) or `pseudonymize`
(PII becomes [TYPE_n] placeholders held in this request's vault). Output policy: `off`, `redact`
(what the model writes is redacted as it streams) or `restore` (also redacted, then the vault's
placeholders become the caller's originals again). The vault lives in this object only, for this
request only. Counts and keyed hashes are kept for the audit record; raw values never leave.
"""

from __future__ import annotations

from collections import Counter
from typing import Optional

from appliance.redact.audit import AuditCollector, AuditRecord
from appliance.redact.policies import InputPolicy, OutputPolicy
from appliance.redact.redactor import Redactor
from appliance.redact.stream import RedactionStream
from appliance.redact.vault import PseudonymVault, RestoreStream


class RequestRedaction:
    def __init__(self, redactor: Redactor, audit_key: bytes, input_policy: InputPolicy, output_policy: OutputPolicy):
        self.input_policy = input_policy
        self.output_policy = output_policy
        self._redactor = redactor
        self._input_audit = AuditCollector(audit_key)
        self._output_audit = AuditCollector(audit_key)
        self._vault = PseudonymVault() if input_policy is InputPolicy.PSEUDONYMIZE else None
        self._output: Optional[RedactionStream] = None
        self._restore: Optional[RestoreStream] = None
        if output_policy is not OutputPolicy.OFF:
            self._output = redactor.stream(operator="replace", audit=self._output_audit)
            if output_policy is OutputPolicy.RESTORE and self._vault is not None:
                self._restore = self._vault.restorer()

    @property
    def hides_tokens(self) -> bool:
        """Token ids (and their logprobs) would let a client decode the raw text back."""
        return self.output_policy is not OutputPolicy.OFF

    def prompt(self, text: str) -> str:
        if self.input_policy is InputPolicy.OFF:
            return text
        operator = "pseudonymize" if self.input_policy is InputPolicy.PSEUDONYMIZE else "replace"
        return self._redactor.redact(text, operator=operator, vault=self._vault, audit=self._input_audit).text

    def output(self, delta: str) -> str:
        """Text safe to send for one streamed delta (may hold back a tail that could be PII)."""
        if self._output is None:
            return delta
        safe = self._output.feed(delta)
        return self._restore.feed(safe) if self._restore is not None else safe

    def finish(self) -> str:
        """Whatever was held back, redacted, at the end of the stream."""
        if self._output is None:
            return ""
        safe = self._output.close()
        if self._restore is None:
            return safe
        return self._restore.feed(safe) + self._restore.close()

    def audit_records(self, request_id: str) -> list[AuditRecord]:
        """One record per direction that redacted anything."""
        records = [collector.record(request_id, direction)
                   for direction, collector in (("input", self._input_audit), ("output", self._output_audit))]
        return [record for record in records if record.total]


def counts_of(records: list[AuditRecord]) -> dict[tuple[str, str], int]:
    found: Counter = Counter()
    for record in records:
        for entity_type, count in record.counts.items():
            found[(record.direction, entity_type)] += count
    return dict(found)
