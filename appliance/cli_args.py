"""argparse pieces of the `appliance` command: a parser whose errors are one line, and value types
that refuse a bad value at parse time naming the flag and what it takes.

Numeric ranges follow the wire contract (proto/appliance/v1/inference.proto): a uint32 field
takes 0 to 2**32 - 1, a uint64 field 0 to 2**64 - 1, so a value the request cannot carry never
reaches protobuf (whose "Value out of range" names no flag).
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import ssl
import unicodedata
from pathlib import Path

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"


def one_line(message) -> str:
    """A message as one terminal line: control characters (a newline in a file name or in an
    unrecognised argument) escaped, spaces as they are."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message).strip())


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit code 2 (argparse prints the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {one_line(message)} (see {self.prog} --help)\n")


def _typed(name: str, check):
    """An argparse type called `name` in argparse's own messages."""
    check.__name__ = name
    return check


def whole_number(low: int, high: int, zero: str = ""):
    """An integer in [low, high]; `zero` says what 0 means, for the error message."""
    meaning = f" (0: {zero})" if zero else ""

    def parse(value: str) -> int:
        try:
            number = int(value.strip(), 10) if len(value) <= 40 else None
        except ValueError:
            number = None
        if number is None or not low <= number <= high:
            raise argparse.ArgumentTypeError(f"expected a whole number from {low} to {high}{meaning}")
        return number

    return _typed("whole number", parse)


def number_between(low: float, high: float, zero: str = ""):
    """A finite float in [low, high]."""
    meaning = f" (0: {zero})" if zero else ""

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or not low <= number <= high:
            raise argparse.ArgumentTypeError(f"expected a number from {low:g} to {high:g}{meaning}")
        return number

    return _typed("number", parse)


def _is_unicode(value: str) -> bool:
    """False for text that is not valid UTF-8: Python turns such argv bytes into lone surrogates,
    which protobuf, gRPC and the output cannot encode."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def text(value: str) -> str:
    if not _is_unicode(value):
        raise argparse.ArgumentTypeError("not valid UTF-8 text")
    return value


def name(value: str) -> str:
    """A name (a key's, a model's): printable, not empty, no spaces around it."""
    if not value or value != value.strip() or not value.isprintable():
        raise argparse.ArgumentTypeError("expected a name: printable, not empty, no spaces around it")
    return value


def path(value: str) -> Path:
    # Control characters in a path are a paste error far more often than a name, and a message
    # naming such a file would break its line.
    if not value or any(unicodedata.category(c) == "Cc" for c in value):
        raise argparse.ArgumentTypeError("expected a file path (without control characters)")
    return Path(value)


def _address_list(scheme: str, addresses: str) -> bool:
    """gRPC's ipv4:A:P,A:P and ipv6:[A]:P,[A]:P targets (gRPC itself would log its refusal of a
    malformed one over several lines)."""
    for entry in addresses.split(","):
        host, sep, port = entry.rpartition(":")
        if scheme == "ipv6":
            if not (host.startswith("[") and host.endswith("]")):
                return False
            host = host[1:-1]
        if not sep or not port.isdigit() or not 0 < int(port) <= 65535:
            return False
        try:
            kind = ipaddress.ip_address(host)
        except ValueError:
            return False
        if kind.version != (4 if scheme == "ipv4" else 6):
            return False
    return True


def target(value: str) -> str:
    scheme, _, rest = value.partition(":")
    well_formed = bool(value) and _is_unicode(value) and value.isprintable() and not any(c.isspace() for c in value)
    if well_formed and scheme in ("ipv4", "ipv6"):
        well_formed = _address_list(scheme, rest)
    if not well_formed:
        raise argparse.ArgumentTypeError("expected HOST:PORT (or a gRPC target such as ipv4:A:P,A:P)")
    return value


def api_key(value: str) -> str:
    # A gRPC metadata value: printable ASCII. The default comes from the environment.
    if not (value.isascii() and value.isprintable()) or " " in value:
        raise argparse.ArgumentTypeError("expected an API key (apk_...), printable ASCII without spaces "
                                         "(from --api-key or $APPLIANCE_API_KEY)")
    return value


def pem_file(value: str) -> bytes:
    """The bytes of a PEM file holding at least one certificate (read now, so the flag is named)."""
    try:
        data = Path(value).read_bytes()
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read {value}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        # The ssl module parses it as gRPC will (which would otherwise log its refusal over lines).
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=data.decode("ascii"))
        usable = PEM_CERTIFICATE in data
    except (UnicodeDecodeError, ssl.SSLError, ValueError):
        usable = False
    if not usable:
        raise argparse.ArgumentTypeError(f"{value} holds no valid PEM certificate ({PEM_CERTIFICATE.decode()})")
    return data


def policies(known: tuple[str, ...]):
    """A comma-separated subset of `known`, at least one."""

    def parse(value: str) -> tuple[str, ...]:
        chosen = tuple(dict.fromkeys(p.strip() for p in value.split(",")))
        if not value.strip() or not set(chosen) <= set(known):
            raise argparse.ArgumentTypeError(f"expected one or more of {','.join(known)}, comma-separated")
        return chosen

    return _typed("policies", parse)


def day(value: str) -> str:
    from appliance.server.usage import check_day

    try:
        return check_day(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class Labels(argparse.Action):
    """--label NAME=DESCRIPTION, repeated, into {name: description}; a name given twice is refused
    (a dict would keep only the last)."""

    def __call__(self, parser, namespace, value, option_string=None):
        label, _, description = value.partition("=")
        if not label.strip() or not _is_unicode(value):
            raise argparse.ArgumentError(self, "expected NAME=DESCRIPTION with a name (valid UTF-8)")
        labels = dict(getattr(namespace, self.dest) or {})
        if label in labels:
            raise argparse.ArgumentError(self, f"label {label!r} is given twice")
        labels[label] = description
        setattr(namespace, self.dest, labels)
