"""US_SSN, CN_RESIDENT_ID, and PERSON where the text introduces a name."""

from __future__ import annotations

import re
from functools import lru_cache

from stdnum import numdb
from stdnum.cn import ric
from stdnum.exceptions import ValidationError

from appliance.redact.detector import Anchor, PatternDetector, literal_anchors
from appliance.redact.detectors.numbers import NUMBER_RUN

# 3-2-4 digits with matching separators (bare nine-digit runs are too often something else).
US_SSN = re.compile(
    r"[0-9](?<![0-9A-Za-z\-][0-9])[0-9]{2}(?:-[0-9]{2}-|[ ][0-9]{2}[ ])[0-9]{4}(?![0-9A-Za-z]|-[0-9])"
)


def is_ssn(digits: str) -> bool:
    """SSA rules: area not 000, 666 or 900-999; group not 00; serial not 0000."""
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def ssn_detector() -> PatternDetector:
    def validate(match: re.Match):
        digits = "".join(ch for ch in match.group() if ch.isdigit())
        return match.span() if is_ssn(digits) else None

    return PatternDetector("us_ssn", "US_SSN", US_SSN, score=0.85, anchors=(NUMBER_RUN,), validate=validate)


# GB 11643: 6-digit region, 8-digit birth date, 3-digit sequence, check character (0-9 or X).
# Digits may touch Chinese text (`身份证号110101...`) but not other digits or ASCII letters.
CN_RESIDENT_ID = re.compile(
    r"[1-9](?<![0-9A-Za-z][1-9])[0-9]{5}[ \-]?(?:18|19|20)[0-9]{6}[ \-]?[0-9]{3}[0-9Xx](?![0-9A-Za-z])"
)


@lru_cache(maxsize=4096)
def is_cn_resident_id(compact: str) -> bool:
    """Check character, a real birth date, and a region code that stdnum knows at any time.

    `ric.is_valid` also wants the region to have existed in the birth year, but IDs are issued
    (and reissued) under the codes current at issue: someone born in 1985 in what became Pudong
    (310115, created 1992) carries 310115. So the region is checked against stdnum's data
    without its dates.
    """
    if len(compact) != 18 or not compact[:17].isdigit() or compact[17] != ric.calc_check_digit(compact):
        return False
    try:
        ric.get_birth_date(compact)
    except ValidationError:
        return False
    return _region_ever_assigned(compact[:6])


@lru_cache(maxsize=4096)
def _region_ever_assigned(code: str) -> bool:
    # numdb answers one (prefix, properties) pair per level: province, then county.
    return any("county" in props for _part, props in numdb.get("cn/loc").info(code))


def cn_resident_id_detector() -> PatternDetector:
    def validate(match: re.Match):
        compact = "".join(ch for ch in match.group() if ch.isalnum()).upper()
        return match.span() if is_cn_resident_id(compact) else None

    return PatternDetector("cn_resident_id", "CN_RESIDENT_ID", CN_RESIDENT_ID, score=1.0,
                           anchors=(NUMBER_RUN,), validate=validate)


# --- PERSON: only where the text says a name follows -----------------------------------------

_EN_TRIGGERS = ("my name is", "my name's", "his name is", "her name is", "I am called", "I'm called",
                "full name:", "name:")
_ZH_TRIGGERS = ("我的名字是", "我的名字叫", "名字是", "名字叫", "姓名是", "姓名为", "姓名", "我叫", "他叫", "她叫",
                "联系人", "收件人", "收货人", "持卡人", "户名")
# The most common surnames (single and compound). Characters that are also everyday words
# (和, 时, 明, 文, 安 ...) are left out: after 他叫 they are far more often a verb's object.
ZH_SURNAMES = ("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任"
             "沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔"
             "汤温康施牛樊葛邢齐易乔伍庞颜倪庄聂章鲁岳翟殷詹申欧耿兰焦俞左柳甘祝包宁尚符舒阮柯纪梅童凌毕季裴霍"
             "涂苗谷盛曲翁冉骆蓝游辛靳柴蒙鲍喻祁蒲房滕屈饶牟艾尤穆农卓古吉缪简芦麦褚娄窦戚岑景党宫费卜冷晏席卫"
             "米柏宗瞿桂佟臧闵苟邬卞姬仇栾隋刁沙荣巫寇桑郎甄丛仲虞敖巩佘苑迟邝")
ZH_COMPOUND_SURNAMES = ("欧阳", "司马", "上官", "诸葛", "东方", "皇甫", "尉迟", "公孙", "慕容", "长孙", "宇文",
                      "司徒", "夏侯", "轩辕", "令狐", "端木", "独孤", "南宫", "西门")
# What ends a name: words that typically follow one (titles, "phone", "order" ...), and single
# characters that are particles or verbs. Words are matched whole, so 小 in 王小明 is part of the
# name while 小姐 after 王 is a title.
_NAME_STOP_WORDS = ("先生", "女士", "小姐", "老师", "经理", "电话", "号码", "手机", "邮箱", "身份证", "订单",
                    "地址", "微信", "账户", "咨询", "退款", "今年", "来自")
ZH_NAME_STOPS = "的是了在和与及或岁住从也都就要会想请我你他她们吗呢吧啊呀哦嗯说叫有没不很这那个去到给把被让对卡问谢"

_EN_NAME = r"[A-Z][a-z]{1,20}(?:[ \-][A-Z][a-z]{1,20}){0,2}(?![A-Za-z])"
_ZH_NAME = (rf"(?:{'|'.join(ZH_COMPOUND_SURNAMES)}|[{ZH_SURNAMES}])"
            rf"(?:(?!{'|'.join(_NAME_STOP_WORDS)})(?![{ZH_NAME_STOPS}])[\u4e00-\u9fff]){{1,2}}")


def _variants(trigger: str) -> list[str]:
    return sorted({trigger, trigger[0].upper() + trigger[1:]}, key=len, reverse=True)


def _alternation(triggers) -> str:
    return "|".join(re.escape(t) for t in sorted(triggers, key=len, reverse=True))


PERSON = re.compile(
    rf"(?<![A-Za-z])(?:{_alternation(v for t in _EN_TRIGGERS for v in _variants(t))})[ ]{{0,3}}(?P<en>{_EN_NAME})"
    rf"|(?:{_alternation(_ZH_TRIGGERS)})[: ]{{0,2}}(?:(?P<zh>{_ZH_NAME})|(?P<zh_en>{_EN_NAME}))"
)
# Fast literals, one of which every trigger contains; lead = how far into a trigger it can sit.
_PERSON_ANCHOR_LITERALS = ("ame", "alled", "叫", "名", "联系人", "收件人", "收货人", "持卡人")


def _person_anchors() -> tuple[Anchor, ...]:
    leads: dict[str, int] = {}
    for trigger in [v for t in _EN_TRIGGERS for v in _variants(t)] + list(_ZH_TRIGGERS):
        literal = next(lit for lit in _PERSON_ANCHOR_LITERALS if lit in trigger)
        leads[literal] = max(leads.get(literal, 0), trigger.index(literal))
    return literal_anchors(leads)


def person_detector() -> PatternDetector:
    def validate(match: re.Match):
        for group in ("en", "zh", "zh_en"):
            if match.group(group) is not None:
                return match.span(group)
        return None

    return PatternDetector("person_trigger", "PERSON", PERSON, score=0.85,
                           anchors=_person_anchors(), validate=validate)
