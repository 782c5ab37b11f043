"""Hypothesis strategies: texts made of PII values, Chinese text, emoji and filler, and ways to cut them."""

from __future__ import annotations

from hypothesis import strategies as st

from tests.appliance.redact.conftest import load_eval_cases

# Real positives from the evaluation set (valid checksums), plus fragments that look like the
# start of PII and stop short, which is where a stream has to hold back and then let go.
_VALUES = sorted({c["text"][s["start"]:s["end"]] for c in load_eval_cases() for s in c["spans"]})[::3]
FRAGMENTS = [
    "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD9\n", "-----END RSA PRIVATE KEY-----", "-----",
    "sk-", "sk-proj-abc", "AKIA", "ghp_", "eyJhbGciOi.", "Bearer ", "password: ", "密码：", "my name is ", "My name is ",
    "我叫", "姓名：", "+86 ", "+86 138 0013", "0086", "１３８", "１３８００１３８０００", "6222 0212", "DE89 3704", "fe80::",
    "::", "192.168.", "@", "john.doe@", "@example.com", "110101199003", "[EMAIL_ADDRESS_1]", "[PHONE_NUMBER_", "[",
]
# Issue 12's cases whole, and the pieces they are made of (so that texts also hold halves of them).
ISSUE_12 = [
    "Renée.Dupont@exemple.fr", "müller@example.de", "o'brien@example.com", "请联系josé@ejemplo.es谢谢", "user@münchen.de",
    "?email=bob@example.com&x=1", "31011519850612123X", "SKU-4111111111111111-RED", "invoice 13800138000", "发票号13800138000",
    "订单号：13912345678", "+1 415 555 0100 ext. 1234", "+1 415 555 0100 x1234", "13800138000转1234", "(ext. 12)",
    "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "AWS_SECRET_ACCESS_KEY=",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
]
ISSUE_12_FRAGMENTS = ["é", "ü", "'", "josé", "Renée.", "@münchen", ".de", "ext. ", " x", "转", "分机", "，", "invoice ", "Order No. ",
                      "发票号", "订单号", "SKU-", "-RED", "secret access key ", "aws_secret_access_key"]
FILLER = ["Hello, ", "the order ", "please ", "thanks. ", "你好，", "我的订单", "还没到。", "谢谢！", " ", "\n", ", ", "。",
          "2024-03-15 ", "v1.2.3 ", "$1,299.99 ", "12:30 ", "order 20240315001 "]
EMOJI = ["😀", "👨‍👩‍👧", "🇨🇳", "👍🏽", "é", "ﬁ", "\u200d", "🎉"]
ALPHABET = "0123456789 -.+()@:_=\nabcXxAEsk名叫张我１－＠"

pieces = st.one_of(
    st.sampled_from(_VALUES), st.sampled_from(FRAGMENTS), st.sampled_from(FILLER), st.sampled_from(EMOJI),
    st.sampled_from(ISSUE_12), st.sampled_from(ISSUE_12_FRAGMENTS),
    st.text(alphabet=ALPHABET, max_size=6),
)
texts = st.lists(pieces, max_size=10).map("".join)


def split_at(text, cuts: list[int]) -> list:
    """`text` (str or bytes) cut at the given offsets, in order; empty pieces kept."""
    points = sorted(min(max(c, 0), len(text)) for c in cuts)
    bounds = [0, *points, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


@st.composite
def chunked(draw, text_strategy=texts, *, as_bytes: bool = False):
    """(text, chunks): chunks concatenate to the text (bytes chunks to its UTF-8 encoding)."""
    text = draw(text_strategy)
    whole = text.encode() if as_bytes else text
    cuts = draw(st.lists(st.integers(0, len(whole)), max_size=max(1, len(whole) // 2)))
    return text, split_at(whole, cuts)
