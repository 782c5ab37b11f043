from hypothesis import given
from hypothesis import strategies as st

from appliance.redact.normalize import normalize


def test_full_width_forms_become_ascii_in_place():
    assert normalize("电话：１３８００１３８０００　ａ＠ｂ．ｃｏｍ") == "电话:13800138000 a@b.com"


def test_characters_whose_nfkc_is_longer_stay_as_they_are():
    assert normalize("ﬁle ㍱ ½") == "ﬁle ㍱ ½"


@given(st.text(), st.integers(0, 50))
def test_length_is_kept_and_chunks_normalise_independently(text, cut):
    assert len(normalize(text)) == len(text)
    assert normalize(text[:cut]) + normalize(text[cut:]) == normalize(text)
