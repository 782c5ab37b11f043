from hypothesis import given
from hypothesis import strategies as st

from appliance.redact.spans import Entity, resolve_overlaps


def test_higher_score_wins_then_longer_then_earlier():
    a = Entity("PHONE_NUMBER", 0, 11, 0.75)
    b = Entity("CREDIT_CARD", 0, 16, 0.95)
    c = Entity("EMAIL_ADDRESS", 20, 30, 0.95)
    d = Entity("IP_ADDRESS", 25, 40, 0.95)  # same score as c, longer
    e = Entity("US_SSN", 50, 61, 0.85)
    f = Entity("US_SSN", 55, 66, 0.85)  # same score and length, later
    assert resolve_overlaps([a, b, c, d, e, f]) == [b, d, e]


entities = st.builds(lambda t, s, n, sc: Entity(t, s, s + n, sc), st.sampled_from(["A", "B", "C"]),
                     st.integers(0, 60), st.integers(1, 15), st.sampled_from([0.5, 0.75, 0.9, 1.0]))


@given(st.lists(entities, max_size=25), st.randoms())
def test_result_is_sorted_disjoint_and_independent_of_input_order(found, rnd):
    kept = resolve_overlaps(found)
    assert all(x.end <= y.start for x, y in zip(kept, kept[1:]))
    shuffled = list(found)
    rnd.shuffle(shuffled)
    assert resolve_overlaps(shuffled) == kept
    assert all(any(k.start < e.end and e.start < k.end for k in kept) for e in found)  # nothing dropped for free
