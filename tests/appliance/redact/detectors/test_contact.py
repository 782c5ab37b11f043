import pytest

from appliance.redact.detectors.contact import is_phone_number


def found(redactor, text, entity_type):
    return [text[e.start:e.end] for e in redactor.detect(text) if e.type == entity_type]


@pytest.mark.parametrize("text, email", [
    ("mail john.smith@example.com today", "john.smith@example.com"),
    ("我的邮箱是zhang.wei88@163.com，谢谢", "zhang.wei88@163.com"),
    ("<a.b+orders@mail.example.org>.", "a.b+orders@mail.example.org"),
    ("邮箱：ｌｉ．ｎａ＠ｑｑ．ｃｏｍ", "ｌｉ．ｎａ＠ｑｑ．ｃｏｍ"),
])
def test_emails(redactor, text, email):
    assert found(redactor, text, "EMAIL_ADDRESS") == [email]


@pytest.mark.parametrize("text", ["user@localhost", "follow @openai_dev", "a@b", "foo@bar.c1", "email me @ noon"])
def test_not_emails(redactor, text):
    assert found(redactor, text, "EMAIL_ADDRESS") == []


@pytest.mark.parametrize("text, phone", [
    ("手机13800138000", "13800138000"),
    ("call 138 0013 8000.", "138 0013 8000"),
    ("电话：138-0013-8000，", "138-0013-8000"),
    ("+86 138 0013 8000", "+86 138 0013 8000"),
    ("(+86) 13800138000", "(+86) 13800138000"),
    ("0086 13800138000", "0086 13800138000"),
    ("办公室 010-62345678 转 12", "010-62345678"),
    ("(0755) 8888 6666", "(0755) 8888 6666"),
    ("+86-755-23456789", "+86-755-23456789"),
    ("电话：１３８００１３８０００。", "１３８００１３８０００"),
    ("Call (415) 555-2671 now", "(415) 555-2671"),
    ("415.555.2671", "415.555.2671"),
    ("+1 415 555 2671", "+1 415 555 2671"),
    ("London +44 20 7946 0958", "+44 20 7946 0958"),
    ("Tokyo +81 3-1234-5678", "+81 3-1234-5678"),
])
def test_phone_numbers(redactor, text, phone):
    assert found(redactor, text, "PHONE_NUMBER") == [phone]


@pytest.mark.parametrize("text", [
    "1380013800", "138001380001", "+86 138 0013 800", "2024-03-15 12:30:45", "at 1710512345", "ts=1710512345123",
    "IP 192.168.01.189", "pi is 3.14159265358979", "订单号：20240315123456", "SF1380013800012", "ISBN 978-3-16-148410-0",
    "学号 2024123456", "$1,299.99", "Wire to DE77 0576 5388 9033 3535 84 please",
])
def test_not_phone_numbers(redactor, text):
    assert found(redactor, text, "PHONE_NUMBER") == []


def test_regions_limit_national_numbers():
    assert is_phone_number("(415) 555-2671", ("US",))
    assert not is_phone_number("(415) 555-2671", ("CN",))  # a US layout is not a Chinese number
    assert is_phone_number("+1 415 555 2671", ())  # international numbers need no region
