import pytest
from stdnum import iban, luhn


def found(redactor, text, entity_type):
    return [text[e.start:e.end] for e in redactor.detect(text) if e.type == entity_type]


def with_check_digit(body: str) -> str:
    return body + luhn.calc_check_digit(body)


VISA = with_check_digit("411111111111111")
UNIONPAY_19 = with_check_digit("622202123456789012")
AMEX = with_check_digit("37828224631000")


@pytest.mark.parametrize("text, card", [
    (f"card {VISA}", VISA),
    (f"卡号{UNIONPAY_19}，", UNIONPAY_19),  # digits written straight against Chinese text
    (f"card {VISA[:4]} {VISA[4:8]} {VISA[8:12]} {VISA[12:]} 12/27", f"{VISA[:4]} {VISA[4:8]} {VISA[8:12]} {VISA[12:]}"),
    (f"Amex {AMEX[:4]}-{AMEX[4:10]}-{AMEX[10:]}", f"{AMEX[:4]}-{AMEX[4:10]}-{AMEX[10:]}"),
    ("卡号" + VISA.translate({ord(d): chr(ord(d) + 0xFEE0) for d in "0123456789"}), VISA.translate({ord(d): chr(ord(d) + 0xFEE0) for d in "0123456789"})),
])
def test_cards(redactor, text, card):
    assert found(redactor, text, "CREDIT_CARD") == [card]


def test_cards_failing_luhn_or_issuer_ranges_are_not_cards(redactor):
    bad_luhn = VISA[:-1] + str((int(VISA[-1]) + 1) % 10)
    no_issuer = with_check_digit("123456789012345")
    for text in (f"card {bad_luhn}", f"id {no_issuer}", f"parcel YT{VISA}", f"{VISA[:12]}-{VISA[12:]}-803",
                 "tracking 9400111899223344556677", "身份证号610113199100157841"):
        assert found(redactor, text, "CREDIT_CARD") == [], text


def iban_of(country: str, bban: str) -> str:
    return country + iban.calc_check_digits(country + "00" + bban) + bban


DE = iban_of("DE", "370400440532013000")
GB = iban_of("GB", "NWBK60161331926819")


@pytest.mark.parametrize("text, code", [
    (f"IBAN {DE}.", DE),
    (f"IBAN: {' '.join(DE[i:i + 4] for i in range(0, len(DE), 4))} BIC: COBADEFFXXX",
     " ".join(DE[i:i + 4] for i in range(0, len(DE), 4))),
    (f"请汇款到{GB}。", GB),
])
def test_ibans(redactor, text, code):
    assert found(redactor, text, "IBAN_CODE") == [code]


def test_ibans_with_wrong_check_digits_are_not_ibans(redactor):
    wrong = DE[:2] + f"{(int(DE[2:4]) + 1) % 100:02d}" + DE[4:]
    assert found(redactor, f"IBAN {wrong}", "IBAN_CODE") == []


@pytest.mark.parametrize("text", [
    f"SKU-{VISA}-RED", f"part SKU-{VISA}", f"{VISA}-RED in stock", f"ABC-{VISA[:4]}-{VISA[4:8]}-{VISA[8:12]}-{VISA[12:]}",
])
def test_digits_inside_hyphen_joined_product_codes_are_not_cards(redactor, text):
    assert found(redactor, text, "CREDIT_CARD") == []


@pytest.mark.parametrize("text, card", [
    (f"card-less? no: {VISA}-", VISA), (f"卡号-{VISA}", VISA), (f"{VISA[:4]}-{VISA[4:8]}-{VISA[8:12]}-{VISA[12:]}",
                                                                 f"{VISA[:4]}-{VISA[4:8]}-{VISA[8:12]}-{VISA[12:]}"),
])
def test_cards_next_to_a_lone_hyphen_are_still_cards(redactor, text, card):
    assert found(redactor, text, "CREDIT_CARD") == [card]
