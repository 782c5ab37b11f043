"""One exception hierarchy for the whole appliance.

Each class names the gRPC status it maps to; appliance/server/errors.py is the one place that
turns them into statuses. Messages must never contain prompt text or detected PII: they name the
field or file at fault and the reason.
"""

from __future__ import annotations

import re

# Package names (folder names) as errors may quote them: anything else a caller sends as a model
# name (an email, a card number pasted into the wrong field) is described, never echoed.
_PACKAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DIGIT_RUN = re.compile(r"\d{5}")


def quoted_name(name: str) -> str:
    if _PACKAGE_NAME.fullmatch(name) and not _DIGIT_RUN.search(name):
        return repr(name)
    return f"(a name of {len(name)} characters, not shown)"


class ApplianceError(Exception):
    """Base class; anything else that escapes a handler becomes INTERNAL with no detail."""

    status_name = "INTERNAL"


class InvalidRequest(ApplianceError):
    """A request field is missing or out of range; the message names the field."""

    status_name = "INVALID_ARGUMENT"

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class ModelNotFound(ApplianceError):
    status_name = "NOT_FOUND"

    def __init__(self, name: str):
        super().__init__(f"model {quoted_name(name)} is not served here")
        self.name = name


class ModelNotReady(ApplianceError):
    """The model exists but is loading or failed to load."""

    status_name = "UNAVAILABLE"


class WrongTask(ApplianceError):
    """The request's RPC does not fit the model's task (e.g. Embed on a decoder)."""

    status_name = "FAILED_PRECONDITION"


class NotAllowed(ApplianceError):
    """The caller asked for something this server (or its key) may not do."""

    status_name = "PERMISSION_DENIED"


class QueueFull(ApplianceError):
    status_name = "RESOURCE_EXHAUSTED"


class Draining(ApplianceError):
    status_name = "UNAVAILABLE"


class PackageError(ApplianceError):
    """A model package is unusable: unknown schema, missing or changed file, bad signature."""

    def __init__(self, package: str, reason: str):
        super().__init__(f"package {package}: {reason}")
        self.package = package
        self.reason = reason


class ConfigError(ApplianceError):
    """The daemon's configuration is invalid; the message names the field."""
