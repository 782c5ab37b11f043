"""The output stage alone: hand-picked tokens in, TokenEvents out, no runner and no engine thread.

FakeTokenizer decodes token i as the letter chr(ord('a') + i % 26), so texts are easy to predict.
"""

from appliance.engine.output import OutputStage
from appliance.engine.request import GenerationRequest, RequestStatus
from appliance.engine.sampling import Choice, SamplingParams
from tests.appliance.engine.fakes import FakeTokenizer

EOS = 25  # "z"
A, B, C, D = 0, 1, 2, 3


def stage(context_length=100):
    return OutputStage(FakeTokenizer(), frozenset({EOS}), context_length)


def run(output, request, tokens):
    """Feeds tokens as the engine does (appended, then accepted) until one ends the request."""
    events = []
    for token in tokens:
        request.output_ids.append(token)
        events.append(output.accept(request, Choice(token)))
        if events[-1].finish_reason is not None:
            break
    return events


def started(output, **params):
    request = GenerationRequest("r", [A], SamplingParams(**params))
    request.prefilled = 1  # as the scheduler leaves it once the prompt is in the KV row
    output.open(request)
    return request


def test_a_stop_string_split_over_tokens_is_never_emitted_and_ends_the_request():
    output = stage()
    request = started(output, max_tokens=10, stop=("cd",))
    events = run(output, request, [A, B, C, D, A])
    assert [e.text for e in events] == ["a", "b", "", ""]  # "c" is held until "d" decides it
    assert events[-1].finish_reason == "stop" and events[-1].completion_tokens == 4


def test_a_stop_prefix_that_never_completes_is_released_at_max_tokens():
    output = stage()
    request = started(output, max_tokens=3, stop=("cd",))
    events = run(output, request, [A, B, C])
    assert "".join(e.text for e in events) == "abc"
    assert events[-1].finish_reason == "length" and events[-1].token_ids == (C,)


def test_the_end_token_is_not_text_but_the_held_text_is():
    output = stage()
    request = started(output, max_tokens=10, stop=("cd",))
    events = run(output, request, [C, EOS])
    assert [e.text for e in events] == ["", "c"]
    assert events[-1].finish_reason == "stop" and events[-1].prompt_tokens == 1


def test_end_tokens_are_blocked_until_min_tokens():
    output = stage()
    request = started(output, max_tokens=10, min_tokens=2, stop_token_ids=(D,))
    assert output.blocked(request) == (D, EOS)
    request.output_ids += [A, B]
    assert output.blocked(request) == ()


def test_the_context_end_finishes_with_length():
    output = stage(context_length=3)  # prompt 1 + 2 outputs: the next would not fit
    request = started(output, max_tokens=10, ignore_eos=True)
    events = run(output, request, [A, EOS, B])
    assert [e.text for e in events] == ["a", "z"] and events[-1].finish_reason == "length"


def test_a_cancelled_request_gets_what_was_held_back():
    output = stage()
    request = started(output, max_tokens=10, stop=("cd",))
    run(output, request, [A, C])
    last = output.interrupted(request, RequestStatus.FINISHED_CANCELLED)
    assert last.text == "c" and last.finish_reason == "cancelled" and last.completion_tokens == 2
