from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.redact import PseudonymVault
from tests.appliance.redact.strategies import EMOJI, FILLER, split_at


def make_vault() -> PseudonymVault:
    vault = PseudonymVault()
    vault.placeholder("EMAIL_ADDRESS", "lucy@example.com")
    vault.placeholder("PHONE_NUMBER", "+86 138 0013 8000")
    vault.placeholder("CN_RESIDENT_ID", "110105194912310021")
    return vault


def test_placeholders_count_per_type_and_repeat_for_the_same_value():
    vault = PseudonymVault()
    assert vault.placeholder("EMAIL_ADDRESS", "a@x.com") == "[EMAIL_ADDRESS_1]"
    assert vault.placeholder("PHONE_NUMBER", "138 0013 8000") == "[PHONE_NUMBER_1]"
    assert vault.placeholder("EMAIL_ADDRESS", "b@x.com") == "[EMAIL_ADDRESS_2]"
    assert vault.placeholder("PHONE_NUMBER", "13800138000") == "[PHONE_NUMBER_1]"  # same number, other spacing
    assert len(vault) == 3


def test_restore_leaves_unknown_placeholders_and_shows_no_values():
    vault = make_vault()
    assert vault.restore("[EMAIL_ADDRESS_1] / [EMAIL_ADDRESS_9] / [email_address_1]") == \
        "lucy@example.com / [EMAIL_ADDRESS_9] / [email_address_1]"
    assert "lucy" not in repr(vault)


PIECES = st.sampled_from(["[EMAIL_ADDRESS_1]", "[PHONE_NUMBER_1]", "[CN_RESIDENT_ID_1]", "[EMAIL_ADDRESS_12]", "[",
                          "]", "[EMAIL_", "_1]", "[PHONE_NUMBER_1", "[[PHONE_NUMBER_1]]", *FILLER, *EMOJI])


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(PIECES, max_size=12), cuts=st.lists(st.integers(0, 200), max_size=20))
def test_streaming_restore_equals_restoring_the_whole_text(pieces, cuts):
    vault = make_vault()
    text = "".join(pieces)
    restorer = vault.restorer()
    out = "".join(restorer.feed(chunk) for chunk in split_at(text, cuts)) + restorer.close()
    assert out == vault.restore(text)


def test_streaming_restore_holds_back_only_a_possible_placeholder():
    restorer = make_vault().restorer()
    assert restorer.feed("Write to [EMAIL") == "Write to "
    assert restorer.feed("_ADDRESS_1] or call [PH") == "Write to lucy@example.com or call "[9:]
    assert restorer.feed("ONE_NUMBER_1].") == "+86 138 0013 8000."
    assert restorer.feed("a [b]") == "a [b]"
