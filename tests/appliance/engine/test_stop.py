from hypothesis import given, strategies as st

from appliance.engine.stop import StopStrings


def test_a_stop_split_over_deltas_is_held_then_dropped():
    stops = StopStrings(("</answer>",))
    assert stops.push("The box </ans") == ("The box ", None)
    assert stops.push("wer> and more") == ("", "</answer>")


def test_a_partial_match_that_fails_is_released():
    stops = StopStrings(("STOP",))
    assert stops.push("ST") == ("", None)
    assert stops.push("ART") == ("START", None)
    assert stops.flush() == ""


@given(text=st.text(alphabet="abcST OP", max_size=40), cuts=st.lists(st.integers(0, 40), max_size=8))
def test_any_split_streams_exactly_the_text_before_the_first_stop(text, cuts):
    stop = "STOP"
    pieces, last = [], 0
    for cut in sorted(set(c for c in cuts if c <= len(text))):
        pieces.append(text[last:cut])
        last = cut
    pieces.append(text[last:])
    stops, out, hit = StopStrings((stop,)), [], None
    for piece in pieces:
        emitted, hit = stops.push(piece)
        out.append(emitted)
        if hit:
            break
    if not hit:
        out.append(stops.flush())
    expected = text[: text.find(stop)] if stop in text else text
    assert "".join(out) == expected
