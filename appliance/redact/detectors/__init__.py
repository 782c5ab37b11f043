"""The built-in pattern detectors, one factory per detector."""

from __future__ import annotations

from appliance.redact.detector import PatternDetector
from appliance.redact.detectors.contact import email_detector, is_phone_number, phone_detector
from appliance.redact.detectors.financial import card_detector, iban_detector, is_card_number, is_iban
from appliance.redact.detectors.identity import (cn_resident_id_detector, is_cn_resident_id, person_detector,
                                                 ssn_detector)
from appliance.redact.detectors.network import ipv4_detector, ipv6_detector, is_ipv6
from appliance.redact.detectors.secrets import (aws_secret_key_detector, bearer_detector, password_detector,
                                                pem_detector, secret_token_detector)

PATTERN_TYPES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "US_SSN",
                 "CN_RESIDENT_ID", "PERSON", "SECRET")


def default_detectors(entity_types=None, phone_regions: tuple[str, ...] = ("CN", "US", "GB")
                      ) -> tuple[PatternDetector, ...]:
    """All built-in detectors, or those whose type is in `entity_types`."""
    detectors = (
        email_detector(), phone_detector(phone_regions), card_detector(), iban_detector(),
        ipv4_detector(), ipv6_detector(), ssn_detector(), cn_resident_id_detector(), person_detector(),
        secret_token_detector(), aws_secret_key_detector(), bearer_detector(), password_detector(), pem_detector(),
    )
    if entity_types is None:
        return detectors
    unknown = set(entity_types) - set(PATTERN_TYPES)
    if unknown:
        raise ValueError(f"unknown entity types: {sorted(unknown)}")
    return tuple(d for d in detectors if d.entity_type in entity_types)


def clear_validation_caches() -> None:
    """Forget memoised validity checks (benchmarks measure the cold path real traffic sees)."""
    for validator in (is_phone_number, is_card_number, is_iban, is_cn_resident_id, is_ipv6):
        validator.cache_clear()
