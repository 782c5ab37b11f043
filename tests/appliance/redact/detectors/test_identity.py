import pytest
from stdnum.cn import ric

from appliance.redact.detectors.identity import is_ssn


def found(redactor, text, entity_type):
    return [text[e.start:e.end] for e in redactor.detect(text) if e.type == entity_type]


def resident_id(body17: str) -> str:
    return body17 + ric.calc_check_digit(body17 + "0")


ID = resident_id("11010519491231002")
ID_X = next(i for i in (resident_id(f"44030519900307{n:03d}") for n in range(1000)) if i.endswith("X"))


@pytest.mark.parametrize("text, value", [
    (f"身份证号{ID}，请核实", ID),
    (f"ID: {ID_X}", ID_X),
    (f"证件号 {ID_X[:-1]}x", f"{ID_X[:-1]}x"),
    (f"身份证：{ID[:6]} {ID[6:14]} {ID[14:]}", f"{ID[:6]} {ID[6:14]} {ID[14:]}"),
    ("身份证：" + ID.translate({ord(d): chr(ord(d) + 0xFEE0) for d in "0123456789"}),
     ID.translate({ord(d): chr(ord(d) + 0xFEE0) for d in "0123456789"})),
])
def test_resident_ids(redactor, text, value):
    assert found(redactor, text, "CN_RESIDENT_ID") == [value]


def test_resident_ids_need_check_digit_date_and_region(redactor):
    wrong_check = ID[:-1] + ("0" if ID[-1] != "0" else "1")
    bad_date = resident_id("11010519491331002")  # month 13, check digit computed for it
    bad_region = resident_id("99010519491231002")
    for value in (wrong_check, bad_date, bad_region):
        assert found(redactor, f"身份证号{value}", "CN_RESIDENT_ID") == [], value


@pytest.mark.parametrize("digits, valid", [
    ("123456789", True), ("000123456", False), ("666123456", False), ("900123456", False),
    ("123006789", False), ("123450000", False),
])
def test_ssn_rules(digits, valid):
    assert is_ssn(digits) is valid


def test_ssns_need_consistent_separators(redactor):
    assert found(redactor, "SSN 123-45-6789.", "US_SSN") == ["123-45-6789"]
    assert found(redactor, "SSN 123 45 6789", "US_SSN") == ["123 45 6789"]
    assert found(redactor, "SSN 123-45 6789 / 123456789 / 2024-12-31", "US_SSN") == []


@pytest.mark.parametrize("text, name", [
    ("Hi, my name is Emily Chen.", "Emily Chen"),
    ("My name is John", "John"),
    ("I'm called Grace Taylor-Young!", "Grace Taylor-Young"),
    ("Full name: Maria Garcia\n", "Maria Garcia"),
    ("我叫张伟，想咨询退款。", "张伟"),
    ("我叫王小明，手机13800138000", "王小明"),  # 小 inside a name, not the title 小姐
    ("姓名：欧阳娜娜", "欧阳娜娜"),
    ("收件人：王芳 电话：13800138000", "王芳"),
    ("我的名字是李明今年三十岁", "李明"),
    ("姓名：John Smith", "John Smith"),
])
def test_names_where_the_text_introduces_one(redactor, text, name):
    assert found(redactor, text, "PERSON") == [name]


@pytest.mark.parametrize("text", [
    "my name is not important", "我叫了外卖", "他叫我明天再来", "file name: report.pdf", "What is your name?",
    "John Smith called", "张伟来了",
])
def test_no_name_without_an_introduction(redactor, text):
    assert found(redactor, text, "PERSON") == []


def test_a_region_code_newer_than_the_birth_year_is_accepted(redactor):
    # Pudong (310115) was created in 1992; people born there in 1985 carry today's code. stdnum's
    # strict check (region valid in the birth year) rejects it, so only the check digit, the birth
    # date and "the code exists at some time" are required.
    assert not ric.is_valid("31011519850612123X")
    assert found(redactor, "身份证号31011519850612123X，请核实", "CN_RESIDENT_ID") == ["31011519850612123X"]
    retired = resident_id("11010319900101001")  # 崇文区, merged away in 2010: old IDs keep it
    assert found(redactor, f"身份证号{retired}", "CN_RESIDENT_ID") == [retired]
    no_county = resident_id("31999919850612123")  # province 31 exists, county 9999 never did
    assert found(redactor, f"身份证号{no_county}", "CN_RESIDENT_ID") == []
