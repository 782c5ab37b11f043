"""EMAIL_ADDRESS and PHONE_NUMBER."""

from __future__ import annotations

import re
from functools import lru_cache

import phonenumbers

from appliance.redact.detector import Anchor, PatternDetector
from appliance.redact.detectors.numbers import EXTENSION_WORD, NUMBER_RUN, group_ranges

# Characters of scripts written without spaces between words (Han, kana, Hangul and their
# punctuation). They bound an address: in `请联系josé@ejemplo.es谢谢` the local part starts after 系
# and the domain ends before 谢. Chinese text runs straight into an address, so a local part that
# could take in Han characters would swallow the sentence before it. The cost: an address written
# in those scripts (`张三@example.cn`, `user@例子.中国`) is not found. Taking in the CJK run before
# an "@" would find it, but would also make every stream hold back each run of Chinese text (up
# to 21 characters, RFC 6531's 64 octets) in case an "@" follows.
CJK = ("\u1100-\u11ff\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3100-\u312f\u3130-\u318f\u31a0-\u31ff"
       "\u3400-\u4dbf\u4e00-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f")
_ALNUM = rf"[^\W_{CJK}]"  # a letter or digit of any other script (\w less "_" and CJK)
# Punctuation and symbols that are not RFC 5322 atext (Latin-1 and general punctuation such as
# « » “ ” … —, arrows, symbols, emoji), except the typographic apostrophe of "o’brien".
_SYMBOLS = ("\u00a0-\u00bf\u00d7\u00f7\u2000-\u2018\u201a-\u206f\u2190-\u2bff\ufe00-\ufe6f\uffe0-\uffef"
            "\U0001f000-\U0001faff")
# RFC 6531 local parts: letters and digits of any script, the RFC 5322 atext punctuation
# ("o'brien", "user+tag"), dots, combining marks (a decomposed "é" is "e" + U+0301). Written as
# what is not allowed, so that it is one character class (a stream tests it at every position).
# Of atext, "/ ? & = |" are left out: they join an address to the URL, key=value pair or table
# cell around it (`?email=bob@x.com`) far more often than they occur in a mailbox, and an address
# spanning them would swallow the whole URL.
_LOCAL = rf"[^\s\x00-\x1f\x7f\"(),:;<>@\[\\\]/?&=|{CJK}{_SYMBOLS}]"
_LABEL = rf"{_ALNUM}(?:(?:{_ALNUM}|[\-\u0300-\u036f]){{0,61}}{_ALNUM})?"  # IDN labels: münchen, пример
EMAIL = re.compile(
    # The local part starts at the start of a word and runs to the "@"; punctuation before that
    # word ("'bob@...", "**bob@...") is not part of it.
    rf"[^\W{CJK}](?<![^\W{CJK}][^\W{CJK}]){_LOCAL}{{0,63}}"
    rf"@(?:{_LABEL}\.){{1,8}}"                                   # domain labels
    rf"(?:xn--[a-z0-9\-]{{1,59}}|[^\W\d_{CJK}]{{2,24}})"           # top-level domain (or its punycode)
    rf"(?![^\W_{CJK}]|-)"
)


def email_detector() -> PatternDetector:
    # The '@' sits at most 64 characters after the start (RFC 5321 local-part limit).
    return PatternDetector("email", "EMAIL_ADDRESS", EMAIL, score=0.95,
                           anchors=(Anchor(re.compile("@"), lead=64, hint="@"),))


# Labels of document numbers: a number right after `invoice`, `Order No.`, `订单号：` is that
# document's number, even where it has a phone number's shape (`invoice 13800138000`).
_EN_DOCUMENTS = ("invoice", "inv", "order", "reference", "ref", "receipt", "transaction", "txn", "tracking",
                 "waybill", "shipment", "po", "sku", "serial", "ticket", "booking", "confirmation", "contract",
                 "policy")
_EN_NUMBER_WORDS = ("", " no", " no.", "no.", " number", " num", " nr", " nr.", " id", " #", "#")
_ZH_DOCUMENTS = tuple(stem + suffix for stem in ("发票", "订单", "运单", "工单", "退款单", "快递单", "合同", "交易", "流水",
                                                 "批次", "序列", "单", "编") for suffix in ("号码", "编号", "号")
                      ) + ("发票", "订单", "运单", "工单")
_SEPARATORS = ("", " ", ":", ": ", " :", " : ", "-", "#")


def _trie(words) -> str:
    """An alternation of `words` with shared prefixes factored out (`inv(?:oice)?`): the regex engine
    tries alternatives one by one, so this makes one test per distinct letter, not one per word."""
    tree: dict = {}
    for word in words:
        node = tree
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def emit(node: dict) -> str:
        branches = [re.escape(char) + emit(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})"
        return f"(?:{body})?" if "" in node else body

    return emit(tree)


def _not_after(labels, word_start: bool) -> str:
    """Lookbehinds, to follow a number's first digit, refusing it when one of `labels` precedes it.

    Python's lookbehinds have a fixed width, so there is one per label length. A stream tests its
    pattern's open tail at every recent position; lookbehinds that follow a digit cost nothing
    where there is none, which a label matched as part of the pattern would not.
    """
    by_length: dict[int, list[str]] = {}
    for label in labels:
        by_length.setdefault(len(label), []).append(label)
    start = "(?<![A-Za-z])" if word_start else ""  # "border 138..." is no order number
    return "".join(rf"(?<!{start}(?i:{_trie(group)})[0-9])" for _length, group in sorted(by_length.items()))


NOT_AFTER_DOCUMENT_LABEL = (
    _not_after({w + n + s for w in _EN_DOCUMENTS for n in _EN_NUMBER_WORDS for s in _SEPARATORS}, word_start=True)
    + _not_after({w + s for w in _ZH_DOCUMENTS for s in _SEPARATORS}, word_start=False)
)
EXTENSION = (rf"(?:[ ]{{0,2}}|[ ]?[,，][ ]?)(?:{EXTENSION_WORD})[ .:]{{0,2}}[0-9]{{1,6}}"
             rf"|[ ]{{0,2}}\((?:{EXTENSION_WORD})[ .:]{{0,2}}[0-9]{{1,6}}\)")
# An optional "+", "(+" or "(", then 7 to 17 digits, each optionally after one separator:
# a space, dot or dash, a closing bracket, or an opening bracket, then an optional extension.
# Not glued to letters, digits, or a decimal point on either side (`3.14159265358`,
# `SF1380013800`), nor one part of a hyphen-joined code (`SKU-13800138000-RED`), nor right after
# a document label (a reference number is never written with "+" or brackets, so those still
# count as phones: "reference: +86 138 0013 8000").
PHONE = re.compile(
    r"(?<![0-9A-Za-z+(])(?<![0-9][.,])(?<![A-Za-z]-)"
    rf"(?:(?:\(?\+ ?|\()[0-9]|[0-9]{NOT_AFTER_DOCUMENT_LABEL})"
    r"(?:(?:[ .\-]|\)[ .\-]?|[ .\-]?\()?[0-9]){6,16}"
    rf"(?P<extension>{EXTENSION})?"
    r"(?![0-9A-Za-z]|[.,][0-9]|-[0-9A-Za-z])"
)

# Cheap shape checks per region before asking phonenumbers (which costs ~35 us a call): most
# digit runs in chat text (dates, prices, order numbers) fail here.
_NATIONAL_SHAPES = {
    "CN": re.compile(r"1[3-9][0-9]{9}|0[1-9][0-9]{8,10}"),  # mobiles; landlines with area code
    "US": re.compile(r"1?[2-9][0-9]{2}[2-9][0-9]{6}"),
    "GB": re.compile(r"0[1-9][0-9]{8,9}"),
}
# North American numbers are written 3-3-4. Run together, ten digits are as often an ID or a
# timestamp as a phone number, and "2024-03-15 12" is a date and an hour. Chinese numbers are
# checked below: at most three groups of three or more digits.
_NATIONAL_GROUPINGS = {"US": {(3, 3, 4), (1, 3, 3, 4)}}
_DATE_START = re.compile(r"\(?(?:19|20)[0-9]{2}[-./ ](?:0?[1-9]|1[0-2])[-./ ](?:0?[1-9]|[12][0-9]|3[01])(?![0-9])")
_GROUP = re.compile(r"[0-9]+")


@lru_cache(maxsize=8192)
def is_phone_number(text: str, regions: tuple[str, ...]) -> bool:
    """Valid per phonenumbers: international (+ or 00) in any region, national in `regions`."""
    digits = "".join(ch for ch in text if ch.isdigit())
    if not 7 <= len(digits) <= 17 or _DATE_START.match(text):
        return False
    if text.lstrip("(").startswith("+"):
        return _valid(text, None)
    if digits.startswith("00"):
        return _valid("+" + digits[2:], None)
    grouping = tuple(len(group) for group in _GROUP.findall(text))
    for region in regions:
        shape = _NATIONAL_SHAPES.get(region)
        if shape is not None and not shape.fullmatch(digits):
            continue
        if region in _NATIONAL_GROUPINGS and grouping not in _NATIONAL_GROUPINGS[region]:
            continue
        if region == "CN" and (len(grouping) > 3 or min(grouping) < 3):
            continue  # 3-4-4, 4-8, 3-8 or run together; never "192.168.01.189"
        if _valid(text, region):
            return True
    return False


def _valid(text: str, region: str | None) -> bool:
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(text, region))
    except phonenumbers.NumberParseException:
        return False


def phone_detector(regions: tuple[str, ...] = ("CN", "US", "GB")) -> PatternDetector:
    def validate(match: re.Match):
        base = match.start()
        number_end = match.start("extension") if match.start("extension") >= 0 else match.end()
        text = match.string[base:number_end]
        # Whole digit groups from the candidate's start: a trailing count may be dropped, but a
        # number never starts inside a run of groups (an IBAN's, an account's).
        for start, end, _digits in group_ranges(text, 7, 17, from_start=True):
            if start > 0 and text[start - 1] == "(":
                start -= 1  # keep the bracket of "(010) 1234 5678"
            if start == 0 and text[0] == "(" and text.count("(") > text.count(")"):
                start += 1  # a stray opening bracket is punctuation, not part of the number
            if is_phone_number(text[start:end], regions):
                # The extension belongs to the number it directly follows.
                return base + start, (match.end() if end == len(text) else base + end)
        return None

    return PatternDetector("phone", "PHONE_NUMBER", PHONE, score=0.75,
                           anchors=(NUMBER_RUN,), validate=validate)
