"""Fake but valid PII values for the evaluation set, made with the libraries that check them.

Card check digits come from stdnum.luhn, IBAN check digits from stdnum.iban, resident-ID check
characters from stdnum.cn.ric (with a region valid in the birth year), and phone numbers are
kept only if phonenumbers accepts them. All draws come from `rng`, which make_eval_set seeds.
"""

from __future__ import annotations

import datetime
import ipaddress
import random
import string

import phonenumbers
from stdnum import iban, luhn
from stdnum.cn import ric

rng = random.Random(0)  # reseeded by make_eval_set.main
FULLWIDTH = {ord(c): chr(ord(c) + 0xFEE0) for c in string.digits + string.ascii_letters + "@.-+"}

# --- value makers ------------------------------------------------------------------------------

FIRST = ["John", "Emily", "Michael", "Sarah", "David", "Laura", "James", "Olivia", "Daniel", "Sophia",
         "Robert", "Grace", "Thomas", "Hannah", "Kevin", "Maria", "Peter", "Anna", "Lucas", "Chloe"]
LAST = ["Smith", "Johnson", "Brown", "Garcia", "Miller", "Davis", "Wilson", "Moore", "Taylor", "Clark",
        "Chen", "Wang", "Lee", "Nguyen", "Patel", "Kim", "Lopez", "Martin", "Walker", "Young"]
ZH_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭"
ZH_GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛超秀霞平刚桂英华玉兰萍红建国志浩宇欣怡子涵梓轩"
DOMAINS = ["example.com", "mail.example.org", "qq.com", "163.com", "company.com.cn", "outlook.com",
           "corp.example.net", "sina.cn", "gmail.com", "uni-example.edu"]


def digits(n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def alnum(n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def email() -> str:
    first, last = rng.choice(FIRST).lower(), rng.choice(LAST).lower()
    local = rng.choice([f"{first}.{last}", f"{first}{rng.randint(1, 99)}", f"{first[0]}{last}",
                        f"{first}_{last}", f"{last}.{first}+orders", f"{first}-{last}{rng.randint(1, 9)}"])
    return f"{local}@{rng.choice(DOMAINS)}"


def _valid_phone(number: str, region: str | None) -> bool:
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(number, region))
    except phonenumbers.NumberParseException:
        return False


def cn_mobile() -> str:
    while True:
        prefix = rng.choice(["130", "131", "132", "135", "136", "137", "138", "139", "150", "151", "152",
                             "157", "158", "159", "166", "176", "177", "180", "181", "185", "186", "187",
                             "188", "189", "191", "198", "199"])
        number = prefix + digits(8)
        if _valid_phone(number, "CN"):
            break
    a, b, c = number[:3], number[3:7], number[7:]
    return rng.choice([number, f"{a} {b} {c}", f"{a}-{b}-{c}", f"+86 {a} {b} {c}", f"+86-{a}-{b}-{c}",
                       f"+86{number}", f"(+86) {number}", f"0086 {number}", f"+86 {number}"])


def cn_landline() -> str:
    while True:
        area = rng.choice(["010", "021", "020", "022", "025", "027", "028", "029", "0755", "0571", "0512", "0532"])
        local = str(rng.randint(2, 8)) + digits(7)
        if _valid_phone(area + local, "CN"):
            break
    return rng.choice([f"{area}-{local}", f"({area}) {local[:4]} {local[4:]}", f"{area} {local[:4]} {local[4:]}",
                       f"+86 {area[1:]} {local[:4]} {local[4:]}", f"+86-{area[1:]}-{local}", f"{area}{local}"])


def us_phone() -> str:
    while True:
        area = rng.choice(["212", "415", "646", "312", "617", "206", "303", "512", "702", "919"])
        number = area + str(rng.randint(2, 9)) + digits(2) + digits(4)
        if _valid_phone(number, "US"):
            break
    a, b, c = number[:3], number[3:6], number[6:]
    return rng.choice([f"({a}) {b}-{c}", f"{a}-{b}-{c}", f"{a}.{b}.{c}", f"+1 {a} {b} {c}", f"+1-{a}-{b}-{c}",
                       f"1-{a}-{b}-{c}"])


def intl_phone() -> str:
    while True:
        number = rng.choice([f"+44 20 7946 {digits(4)}", f"+44 161 496 {digits(4)}", f"+49 30 {digits(8)}",
                             f"+33 1 {digits(2)} {digits(2)} {digits(2)} {digits(2)}", f"+81 3-{digits(4)}-{digits(4)}",
                             f"+65 6{digits(3)} {digits(4)}", f"+852 2{digits(3)} {digits(4)}"])
        if _valid_phone(number, None):
            return number


def phone() -> str:
    return rng.choice([cn_mobile, cn_mobile, cn_landline, us_phone, intl_phone])()


CARD_BRANDS = [("4", 16), ("4", 13), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15), ("6011", 16),
               ("3530", 16), ("62", 16), ("62", 19), ("36", 14)]


def card(valid: bool = True) -> str:
    prefix, length = rng.choice(CARD_BRANDS)
    body = prefix + digits(length - len(prefix) - 1)
    check = luhn.calc_check_digit(body)
    if not valid:
        check = str((int(check) + rng.randint(1, 9)) % 10)
    number = body + check
    if length == 15:
        groups = [number[:4], number[4:10], number[10:]]
    else:
        groups = [number[i:i + 4] for i in range(0, length, 4)]
    return rng.choice([number, " ".join(groups), "-".join(groups)])


IBAN_FORMATS = {"DE": lambda: digits(18), "GB": lambda: rng.choice(["NWBK", "BARC", "HBUK", "MIDL"]) + digits(14),
                "NL": lambda: rng.choice(["ABNA", "INGB", "RABO"]) + digits(10), "CH": lambda: digits(17),
                "AT": lambda: digits(16), "BE": lambda: digits(12)}


def iban_code(valid: bool = True, grouped: bool | None = None) -> str:
    while True:
        country = rng.choice(sorted(IBAN_FORMATS))
        bban = IBAN_FORMATS[country]()
        check = iban.calc_check_digits(country + "00" + bban)
        number = country + check + bban
        if iban.is_valid(number):
            break
    if not valid:
        number = country + f"{(int(check) + rng.randint(1, 50)) % 97 + 2:02d}"[-2:] + bban
        assert not iban.is_valid(number)
    grouped = rng.random() < 0.6 if grouped is None else grouped
    return " ".join(number[i:i + 4] for i in range(0, len(number), 4)) if grouped else number


def ipv4() -> str:
    return rng.choice([f"192.168.{rng.randint(0, 255)}.{rng.randint(1, 254)}", f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
                       f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
                       f"172.{rng.randint(16, 31)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"])


def ipv6() -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return str(ipaddress.IPv6Address(rng.getrandbits(128)))
    if kind == 1:
        return f"2001:db8:{rng.randint(1, 0xffff):x}::{rng.randint(1, 0xffff):x}"
    if kind == 2:
        return f"fe80::{rng.randint(1, 0xffff):x}:{rng.randint(1, 0xffff):x}:{rng.randint(1, 0xffff):x}:{rng.randint(1, 0xffff):x}"
    return f"::ffff:{ipv4()}"


def ssn(valid: bool = True) -> str:
    if valid:
        area = rng.choice([a for a in range(1, 900) if a != 666])
        group, serial = rng.randint(1, 99), rng.randint(1, 9999)
    else:
        area, group, serial = rng.choice([(0, rng.randint(1, 99), rng.randint(1, 9999)),
                                          (666, rng.randint(1, 99), rng.randint(1, 9999)),
                                          (rng.randint(900, 999), rng.randint(1, 99), rng.randint(1, 9999)),
                                          (rng.randint(1, 665), 0, rng.randint(1, 9999)),
                                          (rng.randint(1, 665), rng.randint(1, 99), 0)])
    sep = rng.choice(["-", "-", " "])
    return f"{area:03d}{sep}{group:02d}{sep}{serial:04d}"


CN_REGIONS = ["110101", "110105", "110108", "310101", "310104", "310115", "440106", "440305", "330106",
              "320102", "510107", "420106", "610113", "370102", "500103", "120101"]


def cn_id(valid: bool = True, broken: str = "check") -> str:
    while True:
        born = datetime.date(1950, 1, 1) + datetime.timedelta(days=rng.randint(0, 20000))
        body = rng.choice(CN_REGIONS) + born.strftime("%Y%m%d") + digits(3)
        number = body + ric.calc_check_digit(body + "0")
        if ric.is_valid(number):
            break
    if valid:
        return number.lower() if number.endswith("X") and rng.random() < 0.3 else number
    if broken == "check":
        wrong = rng.choice([c for c in "0123456789X" if c != number[-1]])
        return body + wrong
    # A calendar date that does not exist, with a check character that fits it.
    bad = body[:10] + rng.choice(["1332", "0230", "0431", "0015"]) + body[14:]
    return bad + ric.calc_check_digit(bad + "0")


def en_name() -> str:
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}" if rng.random() < 0.7 else rng.choice(FIRST)


def zh_name() -> str:
    return rng.choice(ZH_SURNAMES) + "".join(rng.choice(ZH_GIVEN) for _ in range(rng.choice([1, 2])))


def secret() -> str:
    b64url = string.ascii_letters + string.digits + "-_"
    kind = rng.randrange(9)
    if kind == 0:
        return "sk-" + alnum(48)
    if kind == 1:
        return "sk-proj-" + alnum(40, b64url) + rng.choice(string.digits) + alnum(8)
    if kind == 2:
        return "AKIA" + alnum(16, string.ascii_uppercase + string.digits)
    if kind == 3:
        return "ghp_" + alnum(36)
    if kind == 4:
        return "github_pat_" + alnum(22) + "_" + alnum(59)
    if kind == 5:
        return f"xoxb-{digits(12)}-{digits(13)}-{alnum(24)}"
    if kind == 6:
        return "AIza" + alnum(35, b64url)
    if kind == 7:
        return "sk_live_" + alnum(24)
    return "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ" + alnum(30, b64url) + "." + alnum(43, b64url)


def pem_block() -> str:
    label = rng.choice(["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY"])
    lines = [alnum(64, string.ascii_letters + string.digits + "+/") for _ in range(rng.randint(3, 8))]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + "\n" + alnum(20, string.ascii_letters + string.digits + "+/") + "==\n" + f"-----END {label}-----"


def bearer_token() -> str:
    return alnum(rng.randint(24, 60), string.ascii_letters + string.digits + "-._~") + rng.choice(string.digits) + alnum(4)


def password() -> str:
    return rng.choice(["Hunter", "Sunshine", "Dragon", "Tiger", "qwerty", "Passw0rd"]) + digits(rng.randint(2, 4)) + rng.choice(["!", "#", "", "$"])
