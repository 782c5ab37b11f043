"""SECRET: provider API keys, AWS secret access keys, bearer tokens, passwords given as `password: ...`,
PEM private keys."""

from __future__ import annotations

import math
import re
from collections import Counter

from appliance.redact.detector import Anchor, PatternDetector, literal_anchors

# Key formats that announce themselves with a fixed prefix.
SECRET_TOKEN = re.compile(
    r"(?<![A-Za-z0-9_\-])(?:"
    r"sk-[A-Za-z0-9_\-]{20,200}"                      # OpenAI and Anthropic (sk-proj-..., sk-ant-...)
    r"|[sr]k_(?:live|test)_[0-9A-Za-z]{16,200}"        # Stripe
    r"|A(?:KI|SI)A[0-9A-Z]{16}"                        # AWS access key id
    r"|gh[pousr]_[A-Za-z0-9]{36,251}"                  # GitHub
    r"|github_pat_[A-Za-z0-9_]{22,255}"
    r"|glpat-[A-Za-z0-9_\-]{20,50}"                    # GitLab
    r"|xox[abeoprs]-[A-Za-z0-9\-]{10,250}"             # Slack
    r"|AIza[0-9A-Za-z_\-]{35}"                         # Google API key
    r"|eyJ[A-Za-z0-9_\-]{8,1500}\.eyJ[A-Za-z0-9_\-]{8,1500}\.[A-Za-z0-9_\-]{8,1500}"  # JWT
    r")(?![A-Za-z0-9_\-])"
)
_TOKEN_ANCHORS = literal_anchors({"sk-": 0, "glpat-": 0, "xox": 0, "AIza": 0, "eyJ": 0}) + (
    Anchor(re.compile(r"gh(?:[pousr]|ithub_pat)_"), hint="gh"),
    Anchor(re.compile(r"k_(?:live|test)_"), lead=1, hint="k_"),
    Anchor(re.compile(r"A[KS]IA"), hint="IA"),
)


def secret_token_detector() -> PatternDetector:
    return PatternDetector("secret_token", "SECRET", SECRET_TOKEN, score=0.95, anchors=_TOKEN_ANCHORS)


# An AWS secret access key is 40 base64 characters with no prefix of its own: alone it cannot be
# told from any other 40-character string, so it counts only after a label that names it
# (`aws_secret_access_key = ...`, `AWS_SECRET_ACCESS_KEY=...`, `"SecretAccessKey": "..."`, "my
# secret access key is ...", the console's CSV header), within a few words of it. (The one-character
# lookahead first keeps a stream's test of each recent position as cheap as a class check.)
_AWS = r"(?:aws|AWS|Aws)"
_SECRET = r"(?:secret|Secret|SECRET)"
_ACCESS = r"(?:access|Access|ACCESS)"
_KEY = r"(?:key|Key|KEY)"
AWS_SECRET_KEY = re.compile(
    rf"(?<![A-Za-z0-9])(?=[aAsS秘私])(?:{_AWS}[_\- ]?{_SECRET}[_\- ]?(?:{_ACCESS}[_\- ]?)?{_KEY}|{_SECRET}[_\- ]?{_ACCESS}[_\- ]?{_KEY}"
    r"|秘密访问密钥|私有访问密钥)"
    r"[\s\S]{0,64}?(?<![A-Za-z0-9/+])(?P<key>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"
)
_AWS_ANCHORS = literal_anchors({"ecret": 5, "ECRET": 5, "访问密钥": 2})
# Bits per character: a random base64 key of 40 characters has about 4.8 (4.3 at the lowest in
# 2,000 drawn here); a hex digest has at most 4, placeholders and words far less.
_MIN_ENTROPY = 4.1


def _entropy(text: str) -> float:
    return -sum(n / len(text) * math.log2(n / len(text)) for n in Counter(text).values())


def aws_secret_key_detector() -> PatternDetector:
    def validate(match: re.Match):
        key = match.group("key")
        if any(c.islower() for c in key) and any(c.isupper() for c in key) and _entropy(key) >= _MIN_ENTROPY:
            return match.span("key")
        return None

    return PatternDetector("aws_secret_key", "SECRET", AWS_SECRET_KEY, score=0.9, anchors=_AWS_ANCHORS,
                           validate=validate)


# `Authorization: Bearer <token>`; the token is the secret, the word stays.
BEARER = re.compile(
    r"(?<![A-Za-z])[Bb]earer[ ]{1,4}(?P<token>[A-Za-z0-9\-._~+/]{16,4096}={0,3})(?![A-Za-z0-9\-._~+/=])"
)


def bearer_detector() -> PatternDetector:
    def validate(match: re.Match):
        start, end = match.span("token")
        text = match.string
        while end > start and text[end - 1] == ".":  # the full stop ending the sentence
            end -= 1
        token = text[start:end]
        # "bearer of good news" is prose: a token is long and carries at least one digit.
        if end - start >= 16 and any(ch.isdigit() for ch in token):
            return start, end
        return None

    return PatternDetector("bearer", "SECRET", BEARER, score=0.95,
                           anchors=(Anchor(re.compile("earer"), lead=1, hint="earer"),), validate=validate)


# `password: hunter2`, `passwd=...`, `密码是...`: the value is printable ASCII without spaces or quotes.
PASSWORD = re.compile(
    r"(?<![A-Za-z0-9_])(?:[Pp]assw(?:or)?d|PASSW(?:OR)?D|[Pp]wd|PWD|密码|口令)[\"']?[ ]{0,3}(?:[:=]|是|为)[ ]{0,3}[\"']?"
    r"(?P<value>[!#-&(-~]{6,64})"
)
_PASSWORD_ANCHORS = literal_anchors({"assw": 1, "ASSW": 1, "wd": 1, "WD": 1, "密码": 0, "口令": 0})
_TRAILING_PUNCTUATION = ".,;:)]}>"  # sentence punctuation; "!" and "?" often end real passwords


def password_detector() -> PatternDetector:
    def validate(match: re.Match):
        start, end = match.span("value")
        text = match.string
        while end > start and text[end - 1] in _TRAILING_PUNCTUATION:
            end -= 1
        value = text[start:end]
        # "password: required" is a form label; real passwords mix in digits or symbols.
        if end - start >= 6 and not value.isalpha():
            return start, end
        return None

    return PatternDetector("password", "SECRET", PASSWORD, score=0.9,
                           anchors=_PASSWORD_ANCHORS, validate=validate)


# A PEM private key: the BEGIN line, up to 8192 characters of body, the END line. A key cut off
# before its END line is still redacted, to the 8192-character cap.
PEM_PRIVATE_KEY = re.compile(
    r"-----BEGIN (?:[A-Z0-9]{1,12} ){0,3}PRIVATE KEY(?: BLOCK)?-----"
    r"(?:(?!-----END )[\s\S]){0,8192}"
    r"(?:-----END (?:[A-Z0-9]{1,12} ){0,3}PRIVATE KEY(?: BLOCK)?-----)?"
)


def pem_detector() -> PatternDetector:
    return PatternDetector("pem_private_key", "SECRET", PEM_PRIVATE_KEY, score=1.0,
                           anchors=literal_anchors({"-----BEGIN ": 0}))
