"""English PERSON and LOCATION (street addresses): name lexicon and CRF name parser, address patterns.

No English NER model is to be had offline from a registry with a provenance we can check (spaCy's
pipelines are published on GitHub; PyPI has only third parties' re-uploads), so names come from
`probablepeople` (DataMade, MIT): a CRF parser of personal and company names that ships the US
census given-name and surname tables its features use. Candidates are runs of capitalised words:

* a given name (in the given-name list, or census share as a first name >= 0.4) and one or two
  more capitalised words, the last a census surname ("Sarah Miller", not "Customer Service");
  where the given name is only a census first name, or a word the census lacks altogether
  ("Priya Clark": given names of many origins are missing from it), the parser must read it
  as a person;
* one or two capitalised words after a title (Mr., Dr. ...);
* a Chinese surname in pinyin and a given name ("Zhang Weiqiang");
* a lone given name where the text addresses or quotes someone ("Hi Sarah", "Thanks, Tom",
  "Sarah called") or signs with it (a line holding only the name).

Brands that read as names (brands.py) are dropped. Street addresses are a pattern: house number,
street name and type, optional unit, then city with state or ZIP (US) or a UK postcode.
"""

from __future__ import annotations

import re

from appliance.redact.brands import is_brand
from appliance.redact.ner import NerUnavailable
from appliance.redact.spans import Entity

# A capitalised word: "Miller", "McDonald", "O'Connor", "Smith-Jones".
_WORD = r"(?:[A-Z](?:[a-z]+|['’][A-Z][a-z]+)(?:[A-Z][a-z]+)?(?:-[A-Z][a-z]+)?)"
_RUN = re.compile(rf"(?<![A-Za-z0-9'’])(?P<run>{_WORD}(?:[ ](?:[A-Z]\.[ ])?{_WORD}){{0,2}})(?![A-Za-z0-9])")
_TITLE = re.compile(r"(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Sir|Madam)\.?[ ]\Z")
_PINYIN_SURNAMES = frozenset(
    "wang li zhang liu chen yang huang zhao wu zhou xu sun ma zhu hu guo he gao lin luo zheng liang xie song tang "
    "han feng deng cao peng zeng xiao tian dong yuan pan cai jiang yu du ye cheng su wei lu ding ren shen yao "
    "jin fan fang shi qian qin qiu yan xue lei hou long duan hao kong shao mao wan gu lai wen kang niu".split())
# Before a lone given name: greetings, thanks, and words that introduce a person.
_CUE_BEFORE = re.compile(
    r"(?:\b(?:[Hh]i|[Hh]ello|[Hh]ey|[Dd]ear|[Tt]hanks|[Tt]hank you|[Cc]heers|cc|[Cc]ustomer|[Cc]lient|[Aa]gent|"
    r"[Cc]olleague|[Mm]anager|[Ss]upervisor|[Tt]echnician|[Cc]ourier|[Ww]ife|[Hh]usband|[Ss]on|[Dd]aughter|"
    r"[Ff]riend|[Bb]oss|[Nn]eighbou?r|[Tt]ell|[Aa]sk|[Ff]or|[Ff]rom|[Ww]ith)),?[ ]\Z")
_DETERMINERS = frozenset("the a an my your our his her their its this that these those".split())
_MID_SENTENCE = re.compile(r"\b(?P<word>[a-z]+),?[ ]\Z")
_CUE_AFTER = re.compile(r"[ ](?:called|calls|said|says|wrote|writes|asked|asks|phoned|emailed|mentioned|reported|"
                        r"complained|ordered|paid|returned|needs|wants|is waiting|was charged|will pick)\b")
# Capitalised words after a given name that make the run something else than a person.
_NOT_SURNAMES = frozenset(
    "street st avenue ave road rd boulevard blvd lane drive way court place hotel airport station mall center centre "
    "park bank store shop service services support team day days pro max plus mini air edition model series card "
    "account order invoice pay wallet cloud music video maps home one go watch phone tv box live app switch "
    "business premium ultra lite express prime studio "
    "monday tuesday wednesday thursday friday saturday sunday january february march april "
    "may june july august september october november december christmas easter".split())
# Capitalised words that start sentences far more often than they are given names ("My Tesla").
_NOT_GIVEN = frozenset(
    "my your our his her their its the this that these those a an please can could would should will shall may "
    "might must do does did is are was were have has had be get got let thanks thank hi hello hey dear yes no not "
    "ok okay so but and or if when where what why how who which i we you they he she it also just".split())
_GIVEN_SHARE = 0.4  # census share as a first name from which a word counts as a given name
_LONE_SHARE = 0.8  # stricter for a lone name: "Will", "May", "Grant" are words too

_STREET_TYPES = ("Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Way|Court|Ct|Place|Pl|Terrace|"
                 "Parkway|Pkwy|Highway|Hwy|Circle|Cir|Square|Sq|Trail|Crescent|Close|Row|Alley|Plaza|Loop")
_STATES = ("AL|AK|AZ|AR|CA|CO|CT|DE|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|NJ|NM|NY|NC|ND|"
           "OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|DC")
_CITY = r"[A-Z][a-z]+(?:[ ][A-Z][a-z]+){0,2}"
_ZIP = r"[0-9]{5}(?:-[0-9]{4})?"
_UK_POSTCODE = r"[A-Z]{1,2}[0-9][A-Z0-9]?[ ]?[0-9][A-Z]{2}"
ADDRESS = re.compile(
    r"(?<![A-Za-z0-9.\-#])[0-9]{1,6}[A-Za-z]?[ ]+"
    r"(?:(?:N|S|E|W|North|South|East|West)\.?[ ]+)?"
    r"(?:[A-Z][a-z'’]+|[0-9]{1,3}(?:st|nd|rd|th))(?:[ ][A-Z][a-z'’]+){0,3}[ ]"
    rf"(?:{_STREET_TYPES})(?![A-Za-z])\.?"
    r"(?:[ ](?:NE|NW|SE|SW|N|S|E|W)(?![A-Za-z]))?"
    r"(?:,?[ ](?:Apt|Apartment|Suite|Ste|Unit|Floor|Fl|Room|Rm)\.?[ ]?#?[ ]?[A-Za-z0-9\-]{1,6}"
    r"|,?[ ]#[ ]?[A-Za-z0-9\-]{1,6})?"
    rf"(?:,?[ ]{_CITY},?[ ](?:{_STATES})(?:[ ]{_ZIP})?(?![A-Za-z0-9])|,?[ ]{_CITY},?[ ]{_ZIP}(?![0-9])"
    rf"|,?[ ](?:{_STATES})[ ]{_ZIP}(?![0-9])|,?[ ](?:{_CITY}[ ])?{_UK_POSTCODE}(?![A-Za-z0-9]))?"
)


def _census_key(word: str) -> str:
    return word.upper().replace("'", "").replace("’", "")


class EnglishNer:
    entity_types = ("PERSON", "LOCATION")
    max_chars = 256
    person_score = 0.7
    location_score = 0.8

    def __init__(self):
        try:
            import probablepeople
            from probablepeople.gender import gender_names
            from probablepeople.ratios import ratios
        except ImportError as exc:
            raise NerUnavailable("probablepeople is not installed (the appliance's ner extra)") from exc
        self._parser = probablepeople
        self._census = ratios  # NAME -> share of census bearers who have it as a first name (0: a surname)
        self._given_names = gender_names  # name -> share of women among its bearers: a given-name list

    def detect(self, text: str) -> list[Entity]:
        if text.isascii() and not any(c.isupper() for c in text):
            return []
        addresses = [Entity("LOCATION", m.start(), m.end(), self.location_score) for m in ADDRESS.finditer(text)]
        return addresses + self._people(text)

    def _given(self, word: str, share: float = _GIVEN_SHARE) -> bool:
        if word.lower() in _NOT_GIVEN:
            return False
        return word.lower() in self._given_names or self._census.get(_census_key(word), 0) >= share

    def _unknown(self, word: str) -> bool:
        """Neither a census name nor a word that starts sentences: a candidate given name from
        outside the census, which lists most capitalised English words as rare surnames."""
        return word.lower() not in _NOT_GIVEN and _census_key(word) not in self._census and not _CUE_BEFORE.search(word + " ")

    def _surname(self, word: str) -> bool:
        return _census_key(word) in self._census

    def _people(self, text: str) -> list[Entity]:
        found = []
        for match in _RUN.finditer(text):
            span = self._person_in(text, match.start(), match.group("run").split(" "))
            if span is not None:
                found.append(Entity("PERSON", span[0], span[1], self.person_score))
        return found

    def _person_in(self, text: str, start: int, words: list[str]) -> tuple[int, int] | None:
        """The person's name among a run's words (starting at `start`), or None. A first word that
        does not start a name ("Thanks Tom", "Customer Sarah Miller") is left out and the rest tried."""
        while words and words[-1].lower() in _NOT_SURNAMES:
            words = words[:-1]
        while words:
            end = start + len(" ".join(words))
            if self._is_person(text, start, end, words):
                return start, end
            start += len(words[0]) + 1
            words = words[1:]
        return None

    def _is_person(self, text: str, start: int, end: int, words: list[str]) -> bool:
        if is_brand(" ".join(words)) or is_brand(words[0]):
            return False
        before = text[max(0, start - 24):start]
        if _TITLE.search(before):
            return True
        first = words[0]
        if len(words) >= 2:
            if first.lower() in _PINYIN_SURNAMES and not self._given(first):
                return True
            if len(words) == 2 and self._unknown(first) and self._surname(words[-1]):
                # A given name the census never saw (Priya, Kwame) before a surname. Weak evidence:
                # the census lists most capitalised words as rare surnames, so the run must also
                # sit where a person is spoken of, and the parser must read it as one.
                return self._spoken_of(text, start, end) and self._reads_as_person(" ".join(words))
            if not (self._given(first) and self._surname(words[-1])):
                return False
            # A census first name off the given-name list is weak evidence: the parser must agree.
            return first.lower() in self._given_names or self._reads_as_person(" ".join(words))
        if not self._given(first, _LONE_SHARE):
            return False
        alone = not text[:start].strip(" -–—") and not text[end:].strip(" .!,\n")  # a signature line
        return bool(_CUE_BEFORE.search(before) or _CUE_AFTER.match(text, end) or alone)

    @staticmethod
    def _spoken_of(text: str, start: int, end: int) -> bool:
        """Mid-sentence after a lower-case word ("forward it to Priya Clark"), or next to a word
        that introduces or follows a person ("Customer ...", "... says")."""
        before = text[max(0, start - 24):start]
        mid = _MID_SENTENCE.search(before)
        if mid is not None and mid.group("word") in _DETERMINERS:
            return False  # "the Refund Policy says": a thing
        return bool(mid or _CUE_BEFORE.search(before) or _CUE_AFTER.match(text, end))

    def _reads_as_person(self, name: str) -> bool:
        try:
            _parts, kind = self._parser.tag(name)
        except self._parser.RepeatedLabelError:
            return False
        return kind == "Person"
