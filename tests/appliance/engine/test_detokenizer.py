import pytest
from tokenizers import Tokenizer

from appliance.engine.detokenizer import REPLACEMENT, IncrementalDetokenizer

TEXTS = [
    "Hello world, how are you?",
    "你好，世界！我想申请退款。",
    "Emoji 📦🚚🙂 and 中文 mixed with Ünïcödé",
    "  leading spaces and\nnew lines\n",
]


@pytest.fixture(scope="module")
def tokenizer(sources):
    return Tokenizer.from_file(str(sources["llama"] / "tokenizer.json"))


@pytest.mark.parametrize("text", TEXTS)
def test_streamed_text_equals_the_whole_decode_and_never_splits_a_character(tokenizer, text):
    prompt = tokenizer.encode("Prompt: ").ids
    ids = tokenizer.encode(text).ids
    assert len(ids) > 1
    detok = IncrementalDetokenizer(tokenizer, prompt)
    pieces = [detok.push(i) for i in ids]
    pieces.append(detok.flush())
    assert "".join(pieces) == tokenizer.decode(ids)
    assert not any(REPLACEMENT in piece for piece in pieces)


def test_multibyte_characters_are_held_until_complete(tokenizer):
    # Byte-level BPE with a small vocabulary splits 📦 (4 UTF-8 bytes) over several tokens.
    ids = tokenizer.encode("📦").ids
    assert len(ids) > 1
    detok = IncrementalDetokenizer(tokenizer, [])
    pieces = [detok.push(i) for i in ids]
    assert pieces[:-1] == [""] * (len(ids) - 1)
    assert pieces[-1] == "📦"
