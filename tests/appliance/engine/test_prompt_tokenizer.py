"""PromptTokenizer gives the ids the tokenizer gives the whole prompt, whatever it reuses: on the
packages' tokenizers and chat templates, and on tokenizers where a cut before a special token
would change ids (a token that strips the space before it, a Metaspace pre-tokenizer that marks
only the text's first word, a post-processor that appends an id), which it must not cut at."""

import numpy as np
import pytest
from tokenizers import AddedToken, pre_tokenizers, processors

from appliance.engine.chat import ChatMessage
from appliance.engine.prompt_tokenizer import PromptTokenizer
from export.tiny_models import make_tokenizer
from tests.appliance.engine.package_chat import tokenizer_and_template

SYSTEM = "You answer questions about parcels for Acme Logistics. " * 12  # ~650 characters
CJK = "退货政策：三十天内可以退货，请保留收据。"


@pytest.fixture
def byte_level():
    """A fresh one per test: the tests change it."""
    return make_tokenizer().backend_tokenizer


def conversation_prompts(template):
    history = [ChatMessage("system", SYSTEM), ChatMessage("user", "Where is my order 4417?")]
    prompts = [template.render(history)]
    for reply, question in [("It left the depot today.", " Can it go to my office?"), (CJK, "谢谢!\n")]:
        history += [ChatMessage("assistant", reply), ChatMessage("user", question)]
        prompts.append(template.render(history))
    return prompts


@pytest.mark.parametrize("model", ["llama", "qwen2"])
def test_each_turn_gets_the_ids_of_the_whole_and_reuses_the_history_before_it(model, models_dir):
    tokenizer, template = tokenizer_and_template(models_dir / model)
    prompts = conversation_prompts(template)
    cached = PromptTokenizer(tokenizer)
    assert cached.cuts
    for k, prompt in enumerate(prompts):
        reused = cached.reused_chars
        assert cached.encode(prompt) == tokenizer.encode(prompt).ids
        if k:  # the previous turn's prompt, up to its last turn marker, came from memory
            assert cached.reused_chars - reused >= len(SYSTEM)
    # Another question behind the same system prompt reuses it too.
    other = template.render([ChatMessage("system", SYSTEM), ChatMessage("user", "And order 5120?")])
    reused = cached.reused_chars
    assert cached.encode(other) == tokenizer.encode(other).ids and cached.reused_chars - reused >= len(SYSTEM)


def chatml(tokenizer, **marker):
    """`tokenizer` with ChatML-like turn markers added as special tokens (`marker`: AddedToken options)."""
    tokenizer.add_special_tokens([AddedToken("<|im_start|>", special=True, **marker),
                                  AddedToken("<|im_end|>", special=True, **marker)])
    return lambda turns: "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns)


def turns_of_a_chat():
    return [[("system", SYSTEM), ("user", question)] for question in ("Hello", " 4417?", CJK, "\n\nbye ")]


def test_chatml_markers_on_a_byte_level_tokenizer_are_cut_at_and_change_no_id(byte_level):
    render = chatml(byte_level)
    cached = PromptTokenizer(byte_level)
    for turns in turns_of_a_chat():
        assert cached.encode(render(turns)) == byte_level.encode(render(turns)).ids
    assert cached.reused_chars >= 3 * len(SYSTEM)


def test_a_marker_that_strips_the_space_before_it_is_never_cut_at(byte_level):
    render = chatml(byte_level, lstrip=True)
    cached = PromptTokenizer(byte_level)
    for turns in turns_of_a_chat():
        prompt = render([(role, text + "  ") for role, text in turns])  # spaces the marker takes
        assert cached.encode(prompt) == byte_level.encode(prompt).ids
    assert cached.reused_chars == 0


def test_a_post_processor_that_appends_an_id_turns_the_cuts_off(byte_level):
    render = chatml(byte_level)
    eos = byte_level.token_to_id("</s>")
    byte_level.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
    cached = PromptTokenizer(byte_level)
    assert not cached.cuts
    for turns in turns_of_a_chat():
        ids = cached.encode(render(turns))
        assert ids == byte_level.encode(render(turns)).ids and ids[-1] == eos


def test_a_metaspace_pre_tokenizer_gets_the_ids_of_the_whole(byte_level):
    byte_level.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    render = chatml(byte_level)
    cached = PromptTokenizer(byte_level)
    for turns in turns_of_a_chat():
        assert cached.encode(render(turns)) == byte_level.encode(render(turns)).ids


def test_it_holds_at_most_max_bytes_and_drops_the_least_recently_used(byte_level):
    render = chatml(byte_level)
    systems = [f"{SYSTEM} Desk {k}." for k in range(3)]
    alone = PromptTokenizer(byte_level)
    alone.encode(render([("system", systems[0]), ("user", "hi")]))
    cached = PromptTokenizer(byte_level, max_bytes=int(alone.held_bytes * 1.5))  # room for one prompt's
    for system in systems:
        cached.encode(render([("system", system), ("user", "hi")]))
    assert 0 < cached.held_bytes <= cached.max_bytes
    reused = cached.reused_chars
    prompt = render([("system", systems[2]), ("user", "again")])  # the last is held
    assert cached.encode(prompt) == byte_level.encode(prompt).ids and cached.reused_chars > reused
    reused = cached.reused_chars
    prompt = render([("system", systems[0]), ("user", "again")])  # the first was dropped
    assert cached.encode(prompt) == byte_level.encode(prompt).ids and cached.reused_chars == reused


def test_random_texts_around_markers_get_the_ids_of_the_whole(byte_level):
    render = chatml(byte_level)
    cached = PromptTokenizer(byte_level, min_cut_chars=1)
    rng = np.random.default_rng(0)
    alphabet = list("abc XYZ\n\t,.!?0129") + list(CJK) + ["  ", "\n\n", "<|im_end", "|>", "<|im_start|>"]
    history = []
    for _ in range(30):
        history.append(("user" if len(history) % 2 else "assistant",
                        "".join(rng.choice(alphabet, int(rng.integers(0, 40))))))
        assert cached.encode(render(history)) == byte_level.encode(render(history)).ids
    assert cached.reused_chars > 0
