"""The redaction policies a request may choose, defined once for the config, the API keys, the
wire conversion and the redaction stage (appliance.redact.request says what each one does)."""

from __future__ import annotations

import enum


class InputPolicy(enum.Enum):
    OFF = "off"
    REDACT = "redact"
    PSEUDONYMIZE = "pseudonymize"


class OutputPolicy(enum.Enum):
    OFF = "off"
    REDACT = "redact"
    RESTORE = "restore"


INPUT_POLICIES = tuple(policy.value for policy in InputPolicy)
OUTPUT_POLICIES = tuple(policy.value for policy in OutputPolicy)
