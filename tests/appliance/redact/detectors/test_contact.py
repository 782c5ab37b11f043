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


# Issue 12: a local part holds any non-ASCII letter and the RFC 5322 atext punctuation (RFC 6531);
# domains may be internationalised. The span is the whole address or nothing, never a part.
@pytest.mark.parametrize("text, email", [
    ("write to Renée.Dupont@exemple.fr today", "Renée.Dupont@exemple.fr"),
    ("müller@example.de", "müller@example.de"),
    ("mail o'brien@example.com.", "o'brien@example.com"),
    ("mail o’brien@example.com.", "o’brien@example.com"),  # the typographic apostrophe
    ("请联系josé@ejemplo.es谢谢", "josé@ejemplo.es"),
    ("user@münchen.de", "user@münchen.de"),
    ("почта иван.петров@пример.рф, спасибо", "иван.петров@пример.рф"),
    ("Rene\u0301e@exemple.fr", "Rene\u0301e@exemple.fr"),  # decomposed é: a combining accent
    ("quoted 'bob@example.com' here", "bob@example.com"),
    ("**bob@example.com**", "bob@example.com"),
    ("user+tag!x#y@example.com", "user+tag!x#y@example.com"),
    ("https://example.com/unsubscribe?email=bob@example.com&id=3", "bob@example.com"),
    ("email=bob@example.com", "bob@example.com"),
    ("a@xn--mnchen-3ya.de", "a@xn--mnchen-3ya.de"),  # the same domain in punycode
    ("メールはjohn@example.jpまで", "john@example.jp"),
    ("이메일 john@example.kr입니다", "john@example.kr"),
])
def test_unicode_and_apostrophe_emails(redactor, text, email):
    assert found(redactor, text, "EMAIL_ADDRESS") == [email]


def test_no_part_of_an_address_is_left_visible(redactor):
    for address in ("Renée.Dupont@exemple.fr", "müller@example.de", "o'brien@example.com", "josé@ejemplo.es"):
        assert redactor.redact(f"contact {address} now").text == "contact [EMAIL_ADDRESS] now", address


# Issue 12: an extension belongs to the number it extends.
@pytest.mark.parametrize("text, phone", [
    ("call +1 415 555 0100 ext. 1234 today", "+1 415 555 0100 ext. 1234"),
    ("+1 415 555 0100 x1234", "+1 415 555 0100 x1234"),
    ("+1 415 555 0100x1234.", "+1 415 555 0100x1234"),
    ("(415) 555-2671, ext 89", "(415) 555-2671, ext 89"),
    ("Tel 021 6241 3848 (ext. 12) Room 1203.", "021 6241 3848 (ext. 12)"),
    ("电话13800138000转1234", "13800138000转1234"),
    ("办公室 010-62345678 转 12", "010-62345678 转 12"),
    ("办公室电话0571-26669584，分机12。", "0571-26669584，分机12"),
])
def test_phone_extensions_are_part_of_the_number(redactor, text, phone):
    assert found(redactor, text, "PHONE_NUMBER") == [phone]


# Issue 12: a number right after an invoice / order / reference label is that document's number.
@pytest.mark.parametrize("text", [
    "invoice 13800138000", "Invoice No. 13800138000", "INVOICE #13800138000", "order: 13800138000",
    "Order number 13800138000", "ref 13800138000", "reference: 13800138000", "tracking no 13800138000",
    "发票号13800138000", "发票号码：13800138000", "订单号 13800138000", "订单编号：13800138000", "快递单号13800138000",
    "SKU-13800138000-RED", "INV-13800138000",
])
def test_numbers_after_document_labels_are_not_phones(redactor, text):
    assert found(redactor, text, "PHONE_NUMBER") == []


@pytest.mark.parametrize("text, phone", [
    ("invoice questions: call 13800138000", "13800138000"),
    ("border 13800138000", "13800138000"),  # a word ending in a label word is not the label
    ("reference: +86 138 0013 8000", "+86 138 0013 8000"),  # references are never written with a +
    ("订单问题请打13800138000", "13800138000"),
    ("invoice 12345, phone 13800138000", "13800138000"),
])
def test_real_phones_near_labels_are_still_phones(redactor, text, phone):
    assert found(redactor, text, "PHONE_NUMBER") == [phone]
