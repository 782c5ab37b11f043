"""The model-backed name and address detectors: LAC for Chinese, the census tables and CRF parser
for English, segment boundaries, pseudonyms for the new types, and the streaming invariant."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.redact import Redactor
from appliance.redact.ner import load_ner, segment_end
from appliance.redact.ner_zh import viterbi
from tests.appliance.redact.conftest import DATA, most_held_back
from tests.appliance.redact.strategies import split_at

ner, missing = load_ner(("zh", "en"))
pytestmark = pytest.mark.skipif(ner is None or bool(missing), reason=f"NER backends not installed: {missing}")


@pytest.fixture(scope="module")
def with_ner() -> Redactor:
    return Redactor(ner=ner)


@pytest.mark.parametrize("text, redacted", [
    # The four messages, written without trigger phrases.
    ("客户张伟来电反映，快递一直没有送到。", "客户[PERSON]来电反映，快递一直没有送到。"),
    ("请寄到北京市朝阳区建国路88号", "请寄到[LOCATION]"),
    ("Sarah Miller called about her refund", "[PERSON] called about her refund"),
    ("ship it to 42 Oak Avenue, Austin, TX 78701", "ship it to [LOCATION]"),
    # Titles stay, the name goes.
    ("麻烦转告王经理，陈静女士明天下午过来取件。", "麻烦转告[PERSON]经理，[PERSON]女士明天下午过来取件。"),
    ("Dr. Emily Chen asked Mr. Brown to call back.", "Dr. [PERSON] asked Mr. [PERSON] to call back."),
    ("Thanks, Tom! Please ask Zhang Weiqiang.", "Thanks, [PERSON]! Please ask [PERSON]."),
    ("住在成都市武侯区人民南路四段27号3栋2单元501室", "住在[LOCATION]"),
    ("Deliver to 221B Baker Street, London NW1 6XE please", "Deliver to [LOCATION] please"),
    # Brands named after people, and a city alone, stay.
    ("我在李宁旗舰店买了鞋，王老吉也没收到。", "我在李宁旗舰店买了鞋，王老吉也没收到。"),
    ("My Tesla Model 3 and Air Jordan shoes arrived.", "My Tesla Model 3 and Air Jordan shoes arrived."),
    ("我在上海工作，周末马上要出门。", "我在上海工作，周末马上要出门。"),
    ("Customer Service never answered; I'm flying to Paris.", "Customer Service never answered; I'm flying to Paris."),
    # Surnames beyond the most common ones, and a surname alone before a title.
    ("这是蔺晓峰的订单，麻烦查一下。", "这是[PERSON]的订单，麻烦查一下。"),
    ("阙女士说包裹破损了。", "[PERSON]女士说包裹破损了。"),
    ("毛经理让我联系你们改地址。", "[PERSON]经理让我联系你们改地址。"),
    ("曾经理说今天能发货。", "[PERSON]经理说今天能发货。"),
    # 曾经 ("once") before a verb is no name, nor is a surname character inside a word.
    ("我曾经在你们店买过耳机。", "我曾经在你们店买过耳机。"),
    ("他曾经理过仓库，知道流程。", "他曾经理过仓库，知道流程。"),
    ("关于总部的投诉，于是我又打了电话。", "关于总部的投诉，于是我又打了电话。"),
    # A name the model splits wrongly after a word that introduces a person.
    ("客户于军来电反映，快递三天了还没到。", "客户[PERSON]来电反映，快递三天了还没到。"),
    ("同事程超帮我下的单。", "同事[PERSON]帮我下的单。"),
    ("客户方面反馈说很满意。", "客户方面反馈说很满意。"),
    # An address the model tags as an organisation.
    ("请把发票寄到上海市徐汇区学院路636号，谢谢。", "请把发票寄到[LOCATION]，谢谢。"),
    # A given name absent from the census tables, before a surname.
    ("Forwarding this to Anjali Sharma, who handles billing.", "Forwarding this to [PERSON], who handles billing."),
    ("Kwame Mensah says the box was empty.", "[PERSON] says the box was empty."),
    ("Google Pay failed twice at checkout.", "Google Pay failed twice at checkout."),
    ("Order No. 13912345678 was refunded; the Refund Policy says so.",
     "Order No. 13912345678 was refunded; the Refund Policy says so."),
])
def test_names_and_addresses_without_trigger_phrases(with_ner, text, redacted):
    assert with_ner.redact(text).text == redacted


def test_pattern_types_keep_winning_where_they_overlap(with_ner):
    text = "Sarah Miller, 13800138000, sarah.miller@example.com"
    assert with_ner.redact(text).text == "[PERSON], [PHONE_NUMBER], [EMAIL_ADDRESS]"


def test_names_and_addresses_are_pseudonymised_and_restored(with_ner):
    text = "张伟说寄到北京市朝阳区建国路88号，张伟的电话13800138000。"
    result = with_ner.redact(text, operator="pseudonymize")
    assert result.text == "[PERSON_1]说寄到[LOCATION_1]，[PERSON_1]的电话[PHONE_NUMBER_1]。"
    assert result.vault.restore(result.text) == text


@pytest.mark.parametrize("scale", [0.5, 3.0, 8.0])  # few, some, most positions decided by their emission alone
def test_viterbi_finds_the_best_path(scale):
    rng = np.random.default_rng(int(scale * 10))
    for _ in range(20):
        emissions = (rng.normal(size=(6, 3)) * scale).astype(np.float32)
        transitions = rng.normal(size=(3, 3)).astype(np.float32)

        def score(path):
            return emissions[range(6), path].sum() + sum(transitions[a, b] for a, b in zip(path, path[1:]))

        best = max(itertools.product(range(3), repeat=6), key=score)
        assert score(viterbi(emissions, transitions)) == pytest.approx(score(best), abs=1e-5)


@pytest.mark.parametrize("text, end, final, expected", [
    ("Mr. Brown called. Then", 22, False, 17),  # a title's dot is no sentence end
    ("Call J. Smith", 13, False, None),
    ("It works.", 9, False, None),  # what follows the dot decides
    ("It works.", 9, True, 9),
    ("It works. Thanks", 16, False, 9),
    ("mail a.b@example.com now", 24, False, None),
    ("你好，张伟", 5, False, 3),
])
def test_segments_end_at_sentence_and_clause_ends_only(text, end, final, expected):
    assert segment_end(text, 0, end, final=final, max_chars=256) == expected


def test_a_long_run_without_a_boundary_is_cut_after_a_space():
    text = "word " * 100
    assert segment_end(text, 0, len(text), final=False, max_chars=64) == 60


def _names_set_texts() -> list[str]:
    with (DATA / "names_set.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f][::4]


_PIECES = st.sampled_from(_names_set_texts() + [" ", "\n", "。", "Mr. ", "Hi ", "客户", "88号", "Oak Avenue", ", Austin"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces=st.lists(_PIECES, min_size=1, max_size=4), data=st.data())
def test_any_chunking_of_mixed_language_names_matches_the_whole_text(with_ner, pieces, data):
    text = "".join(pieces)
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=12))
    stream = with_ner.stream()
    streamed = "".join(stream.feed(chunk) for chunk in split_at(text, cuts)) + stream.close()
    assert streamed == with_ner.redact(text).text


def test_a_name_split_across_chunks_never_leaks(with_ner):
    text = "客户张伟来电反映。Sarah Miller called, ship to 42 Oak Avenue, Austin, TX 78701. Thanks"
    for size in (1, 2, 3, 5):
        stream = with_ner.stream()
        out = "".join(stream.feed(text[i:i + size]) for i in range(0, len(text), size)) + stream.close()
        assert out == "客户[PERSON]来电反映。[PERSON] called, ship to [LOCATION]. Thanks"
        assert stream.held_back == 0


def test_the_hold_back_is_one_segment_at_most(with_ner):
    text = "The parcel for Sarah Miller is late again and nobody answers the phone at all " * 8
    assert most_held_back(with_ner.stream(), text, 4) <= with_ner.max_holdback


def test_entity_types_choose_among_ner_types_too():
    from appliance.redact import RedactorSettings

    only_addresses = Redactor(RedactorSettings(entity_types=("LOCATION",)), ner=ner)
    text = "Sarah Miller, 13800138000, ship to 42 Oak Avenue, Austin, TX 78701"
    assert only_addresses.redact(text).text == "Sarah Miller, 13800138000, ship to [LOCATION]"


def test_the_chinese_model_sees_only_the_chinese_runs_of_a_segment(with_ner, monkeypatch):
    # Its cost grows with every character it is given: English words around the Chinese are not.
    lac = next(b for b in ner.backends if type(b).__name__ == "LacNer")
    seen = []
    words = lac.words
    monkeypatch.setattr(lac, "words", lambda text: seen.append(text) or words(text))
    text = "Please ship to 上海市浦东新区世纪大道100号A座1201室 and call 王芳 tomorrow"
    assert with_ner.redact(text).text == "Please ship to [LOCATION] and call [PERSON] tomorrow"
    assert seen == ["上海市浦东新区世纪大道100号A座1201室", "王芳"]
