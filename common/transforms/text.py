"""Radiology report text: cleaning, sections, sentences, text augmentation, tokenisation and zero-shot prompts.

Functions work on plain strings; the ``…d`` classes are MONAI dictionary transforms that apply them to record
keys. A typical paired-data chain is::

    EnsureReportd("report") → CleanReportd("report")
    → FitReportToTokenBudgetd("report", tokenizer, max_length=512) → SelectReportSectionsd("report")
    → RandSentenceShuffled("report", prob) → Tokenized("report", tokenizer, max_length=512)

:class:`FitReportToTokenBudgetd` works on the headed report: when findings + impression exceed ``max_length``
tokens it drops findings sentences from the end so that :class:`Tokenized`'s truncation never cuts the impression.

Report conventions handled:

* **Headed reports** (MIMIC-CXR, IU X-ray exports, most hospital systems): ``FINDINGS:``, ``Impression:``,
  ``IMPRESSIONS:``, ``Conclusion:``, ``INDICATION:`` … headers, also as a bare upper-case line.
* **CT-RATE concatenations** (``Findings_EN`` + ``Impressions_EN`` in one string, no headers): the impression
  starts at the first quote or bullet that follows a sentence end; its items are separated by further quotes
  or bullets.
* **De-identification tokens**: ``XXXX`` (IU X-ray), ``___`` (MIMIC-CXR), ``[**…**]`` (MIMIC-II/III).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import unicodedata
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, RandomizableTransform

from common.data.contract import DataContractError, record_source
from common.data.findings import FINDINGS, Finding

__all__ = [
    "DEFAULT_PROMPT_TEMPLATES",
    "SECTION_NAMES",
    "CleanReportd",
    "EnsureReportd",
    "FitReportToTokenBudgetd",
    "OppositeSentenced",
    "PromptSet",
    "RandSentenceShuffled",
    "RandSentenceSubsampled",
    "SelectReportSectionsd",
    "Tokenized",
    "build_prompts",
    "clean_report",
    "extract_sections",
    "join_sentences",
    "load_tokenizer",
    "prompt_pairs",
    "report_has_words",
    "split_sentences",
]

logger = logging.getLogger(__name__)

SECTION_NAMES: tuple[str, ...] = ("findings", "impression", "other")

# ----------------------------------------------------------------------------------------------------------------
# Cleaning
# ----------------------------------------------------------------------------------------------------------------

_CHAR_MAP = str.maketrans(
    {
        "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
        "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"', "\u00ab": '"', "\u00bb": '"',
        "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-", "\u2212": "-",
        "\u00b7": "\u2022", "\u2219": "\u2022", "\u25aa": "\u2022", "\u25cf": "\u2022", "\u25e6": "\u2022",
        "\u2023": "\u2022", "\u2043": "\u2022",
        "\u200b": None, "\u200c": None, "\u200d": None, "\ufeff": None, "\u00ad": None,
    }
)  # fmt: skip
_DEID = re.compile(r"-?(?:\[\*\*.*?\*\*\]|_{2,}|\b(?:X{3,}|x{4,})\b)-?")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
_HORIZONTAL_SPACE = re.compile(r"[^\S\n]+")
_SPACE_BEFORE_PUNCT = re.compile(r"(?<=[\w)\]%]) +(?=[.,;:!?](?!\d))")
_PUNCT_RUN = re.compile(r"[.,;:!?](?:[ ]*[.,;:!?])+")
_PUNCT_PRIORITY = "?!.;:,"
_MISSING_SPACE = re.compile(r"(?<=[a-z]{2})\.(?=[A-Z][a-z])")
_EMPTY_BRACKETS = re.compile(r"\(\s*[,;]?\s*\)|\[\s*\]")
_LEADING_PUNCT = re.compile(r"(?m)^[ ]*[.,;:!?]+[ ]*")


def _normalise_unicode(text: str) -> str:
    """NFKC, typographic quotes/dashes/bullets to ASCII-like forms, line breaks to ``\\n``."""
    text = unicodedata.normalize("NFKC", text).translate(_CHAR_MAP)
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _collapse_punctuation(match: re.Match[str]) -> str:
    run = match.group(0)
    return next(mark for mark in _PUNCT_PRIORITY if mark in run)


def clean_report(text: str, lower: bool = False, strip_deid: bool = True) -> str:
    """Normalise a report's characters and spacing without changing its wording.

    Applies Unicode NFKC and maps typographic quotes, dashes and bullets to ``"`` ``'`` ``-`` ``•``; removes
    de-identification tokens (``XXXX``, ``___``, ``[**…**]``, with a hyphen attached to them); collapses runs of
    punctuation (``..`` → ``.``, ``. ,`` → ``.``, ``??`` → ``?``), spaces before punctuation and empty brackets;
    collapses horizontal whitespace, keeps single line breaks and at most one blank line (headers and paragraphs
    stay visible to :func:`extract_sections`). Decimals (``5.2 mm``) and dates (``19.01.2020``) are untouched.

    Args:
        text: raw report.
        lower: lower-case the result (the source case is kept by default).
        strip_deid: remove de-identification tokens.

    Returns:
        The cleaned report; ``""`` for whitespace-only input.
    """
    text = _normalise_unicode(text)
    if strip_deid:
        text = _DEID.sub(" ", text)
    text = _HORIZONTAL_SPACE.sub(" ", _CONTROL.sub("", text))
    text = _HORIZONTAL_SPACE.sub(" ", _EMPTY_BRACKETS.sub(" ", text))
    text = _SPACE_BEFORE_PUNCT.sub("", text)
    text = _PUNCT_RUN.sub(_collapse_punctuation, text)
    text = _MISSING_SPACE.sub(". ", text)
    text = _LEADING_PUNCT.sub("", text)
    text = re.sub(r" *\n *", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return text.lower() if lower else text


# ----------------------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------------------

_HEADER_WORDS: dict[str, tuple[str, ...]] = {
    "findings": ("findings", "finding", "description"),
    "impression": (
        "impressions", "impression", "conclusions", "conclusion", "opinion", "interpretation", "summary",
        "diagnosis",
    ),
    "other": (
        "clinical indication", "clinical history", "clinical information", "clinical data", "clinical details",
        "reason for examination", "reason for exam", "reason for study", "type of examination", "final report",
        "indications", "indication", "history", "comparisons", "comparison", "technique", "examination", "exam",
        "procedure", "recommendations", "recommendation", "notification", "addendum", "wet read",
    ),
}  # fmt: skip
_HEADER_SECTION = {word: section for section, words in _HEADER_WORDS.items() for word in words}
_HEADER_ALTERNATION = "|".join(
    re.escape(word).replace(r"\ ", r"\s+") for word in sorted(_HEADER_SECTION, key=len, reverse=True)
)
# A header starts the text, a line, or a sentence, and ends with a colon; or it is a bare upper-case line.
_HEADER = re.compile(
    rf"(?:^|(?<=\n)|(?<=[.;!?] ))[ \t]*(?P<word>{_HEADER_ALTERNATION})[ \t]*:"
    rf"|^[ \t]*(?P<line>(?-i:[A-Z][A-Z ]+))[ \t]*$",
    re.IGNORECASE | re.MULTILINE,
)
# CT-RATE: the impression begins at a quote/bullet right after the end of a findings sentence.
_IMPRESSION_MARKER = re.compile(r'(?<=[.;,!?])\s*["\u2022]')
_ITEM_SPLIT = re.compile(r'\s*["\u2022]\s*')
_RUN_ON = re.compile(r"[a-z)] (?=[A-Z][a-z])")
_OSSEOUS = re.compile(
    r"\b(?:bones?|bony|osseous|skelet\w*|vertebra\w*|spine|spinal|scoliosis|kyphosis|osteo\w+|"
    r"degenerative|lytic|sclerotic|ribs?)\b",
    re.IGNORECASE,
)


# A known section header (with its colon or other punctuation, or alone on its line) and what a report must hold
# besides headers.
_BARE_HEADERS = re.compile(rf"\b(?:{_HEADER_ALTERNATION})\b[ \t]*(?:[:.;,-]+|$)", re.IGNORECASE | re.MULTILINE)
_WORD_CHARACTER = re.compile(r"[^\W_]")


def _header_section(match: re.Match[str]) -> str | None:
    word = match.group("word") or match.group("line")
    return _HEADER_SECTION.get(re.sub(r"\s+", " ", word.strip().lower()))


def _ensure_terminal(sentence: str) -> str:
    sentence = sentence.strip()
    return sentence if not sentence or sentence[-1] in ".?!" else sentence + "."


def _items_to_sentences(text: str) -> str:
    """CT-RATE impression items separated by quotes/bullets → ``"Item one. Item two."``."""
    items = (item.strip(" ,;:\n") for item in _ITEM_SPLIT.split(text))
    return " ".join(_ensure_terminal(item) for item in items if any(ch.isalnum() for ch in item))


def _guess_impression(text: str) -> tuple[str, str] | None:
    """Chest-CT narrative without a marker: ``(findings, impression)`` by two cues, or ``None``.

    1. A final unpunctuated list of noun phrases run together ("Atherosclerosis Emphysema Cyst in the liver")
       is an impression whose line breaks were lost.
    2. CT-RATE-style findings walk the anatomy in a fixed order that ends with the osseous structures; the
       sentences after the last such sentence, in the second half of the report, are taken as the impression.
    """
    sentences = split_sentences(text)
    if len(sentences) < 6:
        return None
    last = sentences[-1]
    if last[-1] not in ".?!" and len(_RUN_ON.findall(last)) >= 2:
        return join_sentences(sentences[:-1]), last
    osseous = [i for i, sentence in enumerate(sentences) if _OSSEOUS.search(sentence)]
    if not osseous or not len(sentences) // 2 <= osseous[-1] < len(sentences) - 1:
        return None
    cut = osseous[-1] + 1
    return join_sentences(sentences[:cut]), join_sentences(sentences[cut:])


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _section_text(text: str) -> str:
    """Whitespace-normalised section content without stray edge quotes/bullets (CT-RATE leftovers)."""
    text = _flat(text)
    if text.count('"') % 2 or text.startswith("\u2022"):
        text = text.strip(' "\u2022')
    return text


def _first_sentence_end(text: str) -> int:
    """Index just after the first sentence of ``text`` (``len(text)`` for a single sentence)."""
    for match in _BOUNDARY.finditer(text):
        if _is_boundary(text, 0, match):
            return match.end()
    return len(text)


def _split_other(content: str) -> tuple[str, str]:
    """An ``INDICATION:``-like section's own text and the unheaded text after it.

    The section ends at the first blank line, else at the next header when that starts a new line; text that
    runs on in the same line (a one-line report) ends it with its first sentence.
    """
    content = content.lstrip(" \t").lstrip("\n")
    blank = re.search(r"\n[ \t]*\n", content)
    if blank is not None:
        return content[: blank.start()], content[blank.end() :]
    if "\n" in content:
        return content, ""
    end = _first_sentence_end(content.strip())
    content = content.strip()
    return content[:end], content[end:]


def _split_unheaded(text: str, guess_impression: bool) -> tuple[str, str]:
    """``(findings, impression)`` of text without headers (CT-RATE marker, then the heuristics)."""
    flat = _flat(text)
    marker = _IMPRESSION_MARKER.search(flat)
    if marker is not None and any(ch.isalnum() for ch in flat[: marker.start()]):
        return flat[: marker.start()].strip(), _items_to_sentences(flat[marker.start() :])
    if guess_impression:
        split = _guess_impression(flat)
        if split is not None:
            return split
    return flat, ""


def extract_sections(text: str, guess_impression: bool = True) -> dict[str, str]:
    """Split a report into ``findings``, ``impression`` and ``other`` text.

    Rules:

    1. **Headers** (case-insensitive, ending with ``:``, at the start of the text, a line or a sentence; or a
       bare upper-case line such as ``FINDINGS``): ``FINDINGS``/``Findings``/``DESCRIPTION`` → findings;
       ``IMPRESSION(S)``/``CONCLUSION(S)``/``OPINION``/``SUMMARY`` → impression, each up to the next header;
       ``INDICATION``, ``HISTORY``, ``COMPARISON``, ``TECHNIQUE``, ``EXAMINATION``, ``RECOMMENDATION(S)`` … →
       other, up to a blank line (or, in a one-line report, to the end of their first sentence). A repeated
       header appends to its section. Unheaded text is findings when there is no findings header (and is
       then split by rules 2-3 when there is no impression header either), else other.
    2. **CT-RATE concatenation**: the impression starts at the first ``"``/``“``/``•``/``·`` that follows a
       sentence end; its items are rewritten as sentences ending with a full stop.
    3. **Chest-CT heuristics** (``guess_impression``; no marker, at least 6 sentences): a final unpunctuated
       run of noun phrases ("Atherosclerosis Emphysema Renal cyst"), else the sentences after the last
       bone/spine sentence if it lies in the second half, form the impression.
    4. Otherwise the text is findings.

    Args:
        text: raw or cleaned report.
        guess_impression: enable rule 3, a heuristic for unmarked CT-RATE reports.

    Returns:
        ``{"findings": str, "impression": str, "other": str}``, whitespace-normalised (``""`` when absent).
    """
    text = _normalise_unicode(text)
    headers = [m for m in _HEADER.finditer(text) if _header_section(m) is not None]
    if not headers:
        findings, impression = _split_unheaded(text, guess_impression)
        return {"findings": findings, "impression": impression, "other": ""}
    sections: dict[str, list[str]] = {name: [] for name in SECTION_NAMES}
    unheaded = [text[: headers[0].start()]]
    for header, following in zip(headers, headers[1:] + [None]):
        content = text[header.end() : following.start() if following is not None else len(text)]
        section = _header_section(header)
        if section == "other":
            content, rest = _split_other(content)
            unheaded.append(rest)
        sections[section].append(content)
    out = {name: _section_text(" ".join(parts)) for name, parts in sections.items()}
    rest = _flat(" ".join(unheaded))
    if rest and out["findings"]:
        out["other"] = _flat(f"{out['other']} {rest}")
    elif rest and out["impression"]:
        out["findings"] = _section_text(rest)
    elif rest:
        out["findings"], out["impression"] = _split_unheaded(rest, guess_impression)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Sentences
# ----------------------------------------------------------------------------------------------------------------

# Abbreviations whose full stop never ends a sentence, and those that do not end one before a number ("No. 4").
_ABBREVIATIONS = frozenset(
    {"dr", "drs", "mr", "mrs", "ms", "prof", "st", "sr", "jr", "e.g", "eg", "i.e", "ie", "vs", "cf", "approx",
     "appr", "ca", "incl", "esp", "resp", "viz", "a.k.a"}
)  # fmt: skip
_NUMBER_ABBREVIATIONS = frozenset({"no", "nos", "nr", "fig", "figs", "vol", "ref", "pp", "p"})
_BLOCKS = re.compile(r'\n[ \t]*\n|[ \t]*\u2022[ \t]*|(?:(?<=\s)|^)"(?=\s|$)|\n(?=[ \t]*(?:\(?\d{1,2}[.)]|[-*])[ \t])')
_BOUNDARY = re.compile(r"[.?!]+[\"')\]]*(?=\s+\S)|(?<=[a-z]{2})\.(?=[A-Z][a-z])")
_ENUMERATOR = re.compile(r"^(?:\(?\d{1,2}[.)]|\(?[a-z]\)|[-*])\s+")
_ONLY_ENUMERATOR = re.compile(r"^\(?\d{1,2}[.)]$")
_LAST_WORD = re.compile(r"([A-Za-z][A-Za-z./]*)$")


def _is_boundary(text: str, start: int, match: re.Match[str]) -> bool:
    """Whether the punctuation run ``match`` in ``text`` ends the sentence that began at ``start``."""
    rest = text[match.end() :].lstrip()
    nxt = rest[0]
    if not (nxt.isupper() or nxt.isdigit() or nxt in "\"'([\u2022"):
        return False
    sentence = text[start : match.end()].strip()
    if _ONLY_ENUMERATOR.match(sentence):
        return False
    if match.group(0)[0] != ".":
        return True
    last = _LAST_WORD.search(text[start : match.start()])
    if last is None:
        return True
    word = last.group(1).lower()
    if word in _ABBREVIATIONS:
        return False
    return not (word in _NUMBER_ABBREVIATIONS and nxt.isdigit())


def _tidy_sentence(sentence: str) -> str:
    sentence = re.sub(r"\s+", " ", sentence).strip()
    sentence = _ENUMERATOR.sub("", sentence)
    if sentence.count('"') % 2 or (sentence.startswith('"') and sentence.endswith('"')):
        sentence = sentence.strip('"').strip()
    return sentence


def split_sentences(text: str) -> list[str]:
    """Split report text into sentences.

    Boundaries are ``.``/``?``/``!`` (plus closing quotes or brackets) followed by whitespace and an upper-case
    letter, a digit, a quote, a bracket or a bullet; blank lines; bullets; a stand-alone ``"`` (CT-RATE item
    separator); and line breaks before list enumerators. A full stop does not end a sentence inside a number
    (``5.2 mm``, ``19.01.2020``), after a title or Latin abbreviation (``Dr.``, ``e.g.``, ``i.e.``, ``vs.``,
    ``approx.``), after ``No.``/``Fig.`` before a number, or after a bare list enumerator (``2.``). List
    enumerators (``1.``, ``2)``, ``-``) and unbalanced edge quotes are removed from the sentences; sentences
    without any letter or digit are dropped.

    Args:
        text: report text (any section, cleaned or raw).

    Returns:
        The sentences, in order, whitespace-normalised.
    """
    sentences: list[str] = []
    for block in _BLOCKS.split(_normalise_unicode(text)):
        block = block.strip()
        start = 0
        for match in _BOUNDARY.finditer(block):
            if _is_boundary(block, start, match):
                sentences.append(block[start : match.end()])
                start = match.end()
        sentences.append(block[start:])
    tidied = (_tidy_sentence(sentence) for sentence in sentences)
    return [sentence for sentence in tidied if any(ch.isalnum() for ch in sentence)]


def join_sentences(sentences: Iterable[str]) -> str:
    """Join sentences with single spaces, ending each with a full stop if it has no terminal punctuation."""
    return " ".join(_ensure_terminal(sentence) for sentence in sentences if sentence.strip())


# ----------------------------------------------------------------------------------------------------------------
# Dictionary transforms
# ----------------------------------------------------------------------------------------------------------------


_record_source = record_source  # the name the text transforms (and transforms/sentences.py) use


def _require_text(data: Mapping[Hashable, Any], key: Hashable, image_key: str | None) -> str:
    value = data[key]
    if not isinstance(value, str):
        problem = f"{key!r} must be a string, got {type(value).__name__}"
        raise DataContractError(_record_source(data, image_key), problem)
    return value


def report_has_words(cleaned: str) -> bool:
    """True when a cleaned report holds a letter or digit outside its section headers (``"..."``, ``"FINDINGS:"``
    or ``"Impression: -"`` hold none: they are not reports)."""
    return _WORD_CHARACTER.search(_BARE_HEADERS.sub(" ", cleaned)) is not None


class CleanReportd(MapTransform):
    """Dictionary wrapper of :func:`clean_report`; a report with no words once cleaned (:func:`report_has_words`)
    is never kept as an empty "pair".

    Args:
        keys: keys holding report strings.
        lower: lower-case the text.
        strip_deid: remove de-identification tokens.
        image_key: key used to name the record in errors.
        allow_missing_keys: skip absent keys instead of raising.
        empty: what a report without words becomes: ``"raise"`` (a :class:`DataContractError` naming the record,
            which ``on_bad_sample="skip"`` skips) or ``"image_only"`` (``""`` and ``has_report_key`` False).
        has_report_key: the flag :class:`EnsureReportd` set, cleared for ``empty="image_only"``.

    Raises:
        ValueError: for an unknown ``empty``.
    """

    def __init__(
        self,
        keys: KeysCollection = "report",
        lower: bool = False,
        strip_deid: bool = True,
        image_key: str | None = "image",
        allow_missing_keys: bool = False,
        empty: str = "raise",
        has_report_key: str = "has_report",
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if empty not in ("raise", "image_only"):
            raise ValueError(f"empty must be 'raise' or 'image_only', got {empty!r}")
        self.lower = lower
        self.strip_deid = strip_deid
        self.image_key = image_key
        self.empty = empty
        self.has_report_key = has_report_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            raw = _require_text(d, key, self.image_key)
            d[key] = clean_report(raw, lower=self.lower, strip_deid=self.strip_deid)
            if not raw or report_has_words(d[key]):  # "" is EnsureReportd's image-only marker
                continue
            if self.empty == "raise":
                shown = raw if len(raw) <= 60 else raw[:57] + "..."
                raise DataContractError(
                    _record_source(d, self.image_key),
                    f"{key!r} has no words once cleaned ({shown!r}); omit it for an image-only record",
                )
            d[key] = ""
            d[self.has_report_key] = False
        return d


class SelectReportSectionsd(MapTransform):
    """Replace a report by the chosen sections (see :func:`extract_sections`), joined in the order given.

    Args:
        keys: keys holding report strings.
        sections: section names among ``findings``, ``impression``, ``other``.
        separator: string put between sections.
        fallback_to_full: when all chosen sections are empty, keep the whole report instead of ``""``.
        guess_impression: passed to :func:`extract_sections`.
        image_key: key used to name the record in errors.
        allow_missing_keys: skip absent keys instead of raising.

    Raises:
        ValueError: for an unknown or empty ``sections``.
    """

    def __init__(
        self,
        keys: KeysCollection = "report",
        sections: Sequence[str] = ("findings", "impression"),
        separator: str = " ",
        fallback_to_full: bool = True,
        guess_impression: bool = True,
        image_key: str | None = "image",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        sections = (sections,) if isinstance(sections, str) else tuple(sections)
        unknown = [s for s in sections if s not in SECTION_NAMES]
        if not sections or unknown:
            raise ValueError(f"sections must be a non-empty subset of {SECTION_NAMES}, got {sections}")
        self.sections = sections
        self.separator = separator
        self.fallback_to_full = fallback_to_full
        self.guess_impression = guess_impression
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            text = _require_text(d, key, self.image_key)
            parts = extract_sections(text, guess_impression=self.guess_impression)
            selected = self.separator.join(parts[s] for s in self.sections if parts[s])
            if not selected and self.fallback_to_full:
                selected = re.sub(r"\s+", " ", text).strip()
            d[key] = selected
        return d


class _RandSentenced(RandomizableTransform, MapTransform):
    """Shared machinery: split each key's text into sentences, rearrange them, join them again."""

    def __init__(self, keys: KeysCollection, prob: float, image_key: str | None, allow_missing_keys: bool) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.image_key = image_key

    def _rearrange(self, sentences: list[str]) -> list[str]:
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            sentences = split_sentences(_require_text(d, key, self.image_key))
            if len(sentences) > 1:
                d[key] = join_sentences(self._rearrange(sentences))
        return d


class RandSentenceShuffled(_RandSentenced):
    """With probability ``prob``, shuffle the sentences of each report (:func:`split_sentences`).

    Sentences are re-joined with :func:`join_sentences`; texts with fewer than two sentences are unchanged.

    Args:
        keys: keys holding report strings.
        prob: probability of shuffling a record.
        image_key: key used to name the record in errors.
        allow_missing_keys: skip absent keys instead of raising.
    """

    def __init__(
        self,
        keys: KeysCollection = "report",
        prob: float = 0.5,
        image_key: str | None = "image",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, image_key, allow_missing_keys)

    def _rearrange(self, sentences: list[str]) -> list[str]:
        return [sentences[i] for i in self.R.permutation(len(sentences))]


class RandSentenceSubsampled(_RandSentenced):
    """With probability ``prob``, keep a random subset of each report's sentences, in their original order.

    The subset size is uniform in ``[ceil(min_fraction * n), n]`` for ``n`` sentences (at least one); with
    ``max_sentences`` it is uniform in ``[min(ceil(min_fraction * n), max_sentences), min(n, max_sentences)]``,
    which turns long reports into short sentence-level views.

    Args:
        keys: keys holding report strings.
        prob: probability of subsampling a record.
        min_fraction: smallest fraction of sentences kept, in ``(0, 1]``.
        max_sentences: most sentences kept (``None``: no cap).
        image_key: key used to name the record in errors.
        allow_missing_keys: skip absent keys instead of raising.

    Raises:
        ValueError: if ``min_fraction`` is outside ``(0, 1]``.
    """

    def __init__(
        self,
        keys: KeysCollection = "report",
        prob: float = 0.5,
        min_fraction: float = 0.5,
        max_sentences: int | None = None,
        image_key: str | None = "image",
        allow_missing_keys: bool = False,
    ) -> None:
        if not 0.0 < min_fraction <= 1.0:
            raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction}")
        if max_sentences is not None and max_sentences < 1:
            raise ValueError(f"max_sentences must be at least 1 or None, got {max_sentences}")
        super().__init__(keys, prob, image_key, allow_missing_keys)
        self.min_fraction = min_fraction
        self.max_sentences = max_sentences

    def _rearrange(self, sentences: list[str]) -> list[str]:
        n = len(sentences)
        high = n if self.max_sentences is None else min(n, self.max_sentences)
        low = min(max(1, math.ceil(self.min_fraction * n)), high)
        keep = np.sort(self.R.choice(n, size=self.R.randint(low, high + 1), replace=False))
        return [sentences[i] for i in keep]


class EnsureReportd(MapTransform):
    """Check the report of paired records and mark image-only ones, so both kinds collate into one batch.

    A record without the report key gets ``""`` and ``has_report=False``; a record with a non-empty string gets
    ``has_report=True``. A report that is empty, whitespace or not a string (including ``None``) is bad input.

    Args:
        keys: report key(s); ``has_report`` is True only when every key holds a report.
        has_report_key: key receiving the flag.
        image_key: key used to name the record in errors (a path or a MetaTensor's ``filename_or_obj``).

    Raises:
        DataContractError: naming the record, for an empty or non-string report.
    """

    def __init__(
        self, keys: KeysCollection = "report", has_report_key: str = "has_report", image_key: str | None = "image"
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.has_report_key = has_report_key
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        has_report = True
        for key in self.keys:
            if key not in d:
                d[key] = ""
                has_report = False
                continue
            value = d[key]
            if value is None:
                raise DataContractError(
                    _record_source(d, self.image_key), f"{key!r} is null; omit the key for an image-only record"
                )
            if not isinstance(value, str) or not value.strip():
                problem = "is empty or whitespace" if isinstance(value, str) else f"is a {type(value).__name__}"
                raise DataContractError(
                    _record_source(d, self.image_key),
                    f"{key!r} {problem}; a paired record needs a non-empty report (omit the key if image-only)",
                )
        d[self.has_report_key] = has_report
        return d


# ----------------------------------------------------------------------------------------------------------------
# Tokenisation
# ----------------------------------------------------------------------------------------------------------------


def _tokenizer_config(source: str, local_files_only: bool) -> dict[str, Any]:
    from common.networks.hub import hub_file

    path = hub_file(source, "tokenizer_config.json", local_files_only, required=False, what="tokenizer")
    if path is None:
        return {}
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@functools.lru_cache(maxsize=8)
def _cached_tokenizer(source: str, trust_remote_code: bool, local_files_only: bool) -> Any:
    from transformers import AutoTokenizer, BertTokenizerFast

    try:
        config = _tokenizer_config(source, local_files_only)
        remote = "auto_map" in config and "AutoTokenizer" in config.get("auto_map", {})
        if remote and not trust_remote_code and "bert" in str(config.get("tokenizer_class", "")).lower():
            # CXR-BERT's CXRBertTokenizer is a BertTokenizer subclass adding nothing: load its vocabulary directly.
            logger.info("%s: BertTokenizerFast instead of the remote class %s", source, config["tokenizer_class"])
            return BertTokenizerFast.from_pretrained(source, local_files_only=local_files_only)
        return AutoTokenizer.from_pretrained(
            source, trust_remote_code=trust_remote_code, local_files_only=local_files_only
        )
    except OSError as err:
        raise OSError(_not_found_message("tokenizer", source, local_files_only)) from err


def _not_found_message(what: str, source: str, local_files_only: bool) -> str:
    where = "the local Hugging Face cache (offline)" if local_files_only else "the Hugging Face cache or the Hub"
    return (
        f"{what} {source!r} was not found in {where}. Pass a local folder, or download it once on a machine with "
        f"internet (`huggingface-cli download {source}`) and copy the Hugging Face cache."
    )


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, local_files_only: bool | None = None) -> Any:
    """Load a Hugging Face tokenizer once per (name, options) and return the shared instance.

    ``"default"``/``"minilm"`` and the other aliases of :func:`common.networks.text_encoder.resolve_text_encoder`
    are accepted. A tokenizer whose config asks for remote code that only subclasses ``BertTokenizer``
    (CXR-BERT's ``CXRBertTokenizer``) is loaded as :class:`transformers.BertTokenizerFast` from its vocabulary,
    so ``trust_remote_code`` is never needed for it.

    Args:
        name_or_path: alias, Hub id or local folder.
        trust_remote_code: allow the repository's own tokenizer code (opt-in).
        local_files_only: never reach the network; ``None`` means "if HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set".

    Returns:
        A ``transformers`` tokenizer (shared: do not mutate it).

    Raises:
        OSError: naming the id when it is neither a local folder nor cached (offline).
    """
    from common.networks.text_encoder import hub_offline, resolve_text_encoder

    source = resolve_text_encoder(name_or_path)
    local = hub_offline() if local_files_only is None else bool(local_files_only)
    return _cached_tokenizer(source, bool(trust_remote_code), local or os.path.isdir(source))


class Tokenized(MapTransform):
    """Tokenise a text key into fixed-length ``input_ids`` and ``attention_mask`` int64 tensors.

    A string gives ``(L,)`` tensors; a list of strings (e.g. the sentences of :class:`OppositeSentenced`) gives
    ``(N, L)``. The tokenizer is created once, in ``__init__`` (by name through the cache of
    :func:`load_tokenizer`, or passed in), never per sample.

    Args:
        keys: the one key holding the text.
        tokenizer: a ``transformers`` tokenizer, or a name/path for :func:`load_tokenizer`.
        max_length: sequence length ``L`` (COLIPRI: 512).
        padding: ``"max_length"`` (batchable) or any ``transformers`` padding option.
        truncation: truncate to ``max_length``.
        input_ids_key: output key of the token ids.
        attention_mask_key: output key of the attention mask.
        trust_remote_code: passed to :func:`load_tokenizer` for a name.
        allow_missing_keys: skip an absent key instead of raising.

    Raises:
        ValueError: for several keys or a non-positive ``max_length``.
    """

    def __init__(
        self,
        keys: KeysCollection = "report",
        tokenizer: Any = "default",
        max_length: int = 512,
        padding: str | bool = "max_length",
        truncation: bool = True,
        input_ids_key: str = "input_ids",
        attention_mask_key: str = "attention_mask",
        trust_remote_code: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"Tokenized takes one key (its outputs have fixed names), got {self.keys}")
        if not isinstance(max_length, int) or max_length <= 0:
            raise ValueError(f"max_length must be a positive int, got {max_length!r}")
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = load_tokenizer(str(tokenizer), trust_remote_code=trust_remote_code)
        if not callable(tokenizer):
            raise ValueError(f"tokenizer must be a transformers tokenizer or a name, got {type(tokenizer).__name__}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.padding = padding
        self.truncation = truncation
        self.input_ids_key = input_ids_key
        self.attention_mask_key = attention_mask_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            text = d[key]
            single = isinstance(text, str)
            if not single and not (isinstance(text, Sequence) and all(isinstance(t, str) for t in text)):
                raise DataContractError(
                    _record_source(d, "image"), f"{key!r} must be a string or a list of strings to tokenise"
                )
            encoded = self.tokenizer(
                text if single else list(text),
                max_length=self.max_length,
                padding=self.padding,
                truncation=self.truncation,
                return_attention_mask=True,
                return_token_type_ids=False,
                return_tensors="pt",
            )
            input_ids = encoded["input_ids"].to(torch.int64)
            attention_mask = encoded["attention_mask"].to(torch.int64)
            d[self.input_ids_key] = input_ids[0] if single else input_ids
            d[self.attention_mask_key] = attention_mask[0] if single else attention_mask
        return d


class FitReportToTokenBudgetd(MapTransform):
    """Shorten a report by whole findings sentences so that its impression survives tokenisation.

    Apply to the raw report (any format :func:`extract_sections` understands: headed, or a CT-RATE headerless
    concatenation with a marked or guessed impression), after :class:`CleanReportd` and **before**
    :class:`SelectReportSectionsd`. The text measured is what :class:`SelectReportSectionsd` with the same
    ``sections``/``separator`` makes of the report. When its token count (without special tokens) exceeds the
    budget, ``max_length - special tokens - margin``:

    1. sentences (:func:`split_sentences`) are dropped from the end of the sections not in ``keep`` (the
       findings; the later section first when there are several) until the text fits;
    2. if the ``keep`` sections (the impression) alone exceed the budget, every other section is dropped and the
       kept sections lose sentences from their end (the first sentence always stays; :class:`Tokenized` truncates
       it when even that is too long).

    The shortened report is rewritten as ``FINDINGS: …\\nIMPRESSION: …`` (an ``other`` section, when among
    ``sections``, as unheaded text before the headers, or after ``INDICATION:`` when no findings are left), which
    :func:`extract_sections` parses back into exactly the kept sections (checked; should a rewrite not parse back,
    the original is kept, with a warning); sections not among ``sections`` are left out of it. A report that fits,
    an empty report (image-only records after :class:`EnsureReportd`) and one without any chosen section are
    returned unchanged.

    Counting: a report fits when both its selected text and the same text re-joined by
    :func:`join_sentences` (what :class:`RandSentenceShuffled`/:class:`RandSentenceSubsampled` produce; the join
    may add full stops) tokenise to at most the budget. ``margin`` (default 4) leaves room for tokenizers whose
    counts are not additive over sentences (BPE merges across spaces) and for small later edits.

    Args:
        keys: keys holding report strings.
        tokenizer: a ``transformers`` tokenizer, or a name/path for :func:`load_tokenizer` (the one of
            :class:`Tokenized`).
        max_length: the ``max_length`` of the later :class:`Tokenized`.
        keep: sections kept whole as long as they alone fit (default the impression).
        sections: the sections the later :class:`SelectReportSectionsd` selects.
        separator: its separator.
        margin: tokens held back from the budget (see above).
        guess_impression: passed to :func:`extract_sections` (as for :class:`SelectReportSectionsd`).
        trust_remote_code: passed to :func:`load_tokenizer` for a name.
        image_key: key used to name the record in errors.
        allow_missing_keys: skip absent keys instead of raising.

    Raises:
        ValueError: for unknown sections, ``keep`` outside ``sections`` or a budget below one token.
    """

    def __init__(
        self,
        keys: KeysCollection = "report",
        tokenizer: Any = "default",
        max_length: int = 512,
        keep: Sequence[str] = ("impression",),
        sections: Sequence[str] = ("findings", "impression"),
        separator: str = " ",
        margin: int = 4,
        guess_impression: bool = True,
        trust_remote_code: bool = False,
        image_key: str | None = "image",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        sections = (sections,) if isinstance(sections, str) else tuple(sections)
        keep = (keep,) if isinstance(keep, str) else tuple(keep)
        if not sections or any(s not in SECTION_NAMES for s in sections):
            raise ValueError(f"sections must be a non-empty subset of {SECTION_NAMES}, got {sections}")
        if any(s not in sections for s in keep):
            raise ValueError(f"keep {keep} must be among sections {sections}")
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = load_tokenizer(str(tokenizer), trust_remote_code=trust_remote_code)
        if not callable(tokenizer):
            raise ValueError(f"tokenizer must be a transformers tokenizer or a name, got {type(tokenizer).__name__}")
        special = tokenizer.num_special_tokens_to_add(pair=False)
        self.budget = int(max_length) - int(special) - int(margin)
        if self.budget < 1:
            raise ValueError(f"max_length {max_length} leaves no tokens after {special} special and margin {margin}")
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.keep = keep
        self.sections = sections
        self.separator = separator
        self.margin = int(margin)
        self.guess_impression = guess_impression
        self.image_key = image_key

    def _lengths(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        encoded = self.tokenizer(texts, add_special_tokens=False, truncation=False, return_attention_mask=False,
                                 return_token_type_ids=False, verbose=False)  # fmt: skip
        return [len(ids) for ids in encoded["input_ids"]]

    def _selected(self, parts: Mapping[str, str]) -> str:
        return self.separator.join(parts[s] for s in self.sections if parts.get(s))

    def _fits(self, selected: str) -> bool:
        rejoined = join_sentences(split_sentences(selected))
        return max(self._lengths([selected, rejoined] if rejoined != selected else [selected])) <= self.budget

    def _render(self, parts: Mapping[str, str]) -> str:
        lines = []
        if parts.get("findings"):
            lines.append(f"FINDINGS: {parts['findings']}")
        if parts.get("impression"):
            lines.append(f"IMPRESSION: {parts['impression']}")
        text = "\n".join(lines)
        if parts.get("other"):
            # Unheaded text before a FINDINGS header is "other"; without findings it needs a header of its own.
            prefix = "" if parts.get("findings") else "INDICATION: "
            text = f"{prefix}{parts['other']}\n\n{text}"
        return text

    def fit(self, text: str) -> str:
        """``text`` unchanged when it fits the budget, else the shortened, re-headed report."""
        parts = extract_sections(text, guess_impression=self.guess_impression)
        selected = self._selected(parts)
        if not selected or self._fits(selected):
            return text
        trimmable = [s for s in self.sections if s not in self.keep and parts[s]]
        kept = [s for s in self.sections if s in self.keep and parts[s]]
        sentences = {s: split_sentences(parts[s]) for s in trimmable + kept}
        # Removal order: the trimmable sections' sentences from the end (later section first), then the kept ones';
        # the very first sentence of what is left always stays.
        units = [(s, i) for s in trimmable[::-1] + kept[::-1] for i in reversed(range(len(sentences[s])))][:-1]
        counts = dict(zip(units, self._lengths([_ensure_terminal(sentences[s][i]) for s, i in units])))
        # Estimated total from per-sentence counts; each candidate is then checked by tokenising it whole.
        excess = sum(counts.values()) - self.budget
        removed = 0
        while removed < len(units) and excess > 0:
            excess -= counts[units[removed]]
            removed += 1
        while True:
            gone = set(units[:removed])
            out = {name: "" for name in SECTION_NAMES}
            for s in sentences:
                left = [sentence for i, sentence in enumerate(sentences[s]) if (s, i) not in gone]
                out[s] = parts[s] if len(left) == len(sentences[s]) else join_sentences(left)
            if removed >= len(units) or self._fits(self._selected(out)):
                break
            removed += 1
        rendered = self._render(out)
        if extract_sections(rendered, guess_impression=self.guess_impression) != {
            name: out[name] for name in SECTION_NAMES
        }:
            logger.warning("FitReportToTokenBudgetd: the shortened report does not parse back; kept the original")
            return text
        logger.debug("FitReportToTokenBudgetd: dropped %d sentences to fit %d tokens", removed, self.budget)
        return rendered

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.fit(_require_text(d, key, self.image_key))
        return d


# ----------------------------------------------------------------------------------------------------------------
# Prompts
# ----------------------------------------------------------------------------------------------------------------

DEFAULT_PROMPT_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("{name} is present.", "{name} is not present."),  # CT-CLIP
    ("There is {name_lower}.", "There is no {name_lower}."),
    ("The volume shows: {name}.", "The volume shows: Not {name}."),  # HLIP
)
"""(positive, negative) templates; ``{name}`` is the display name, ``{name_lower}`` its lower-case form."""


@dataclass(frozen=True)
class PromptSet:
    """Zero-shot prompts: ``P`` (positive, negative) twin pairs for each of ``K`` findings.

    ``positive[k][p]`` and ``negative[k][p]`` are opposite statements about finding ``k``. Encode
    :meth:`flatten`'s lists and ``view(K, P, D)`` them to get the ``(K, P, D)`` tensors of
    :func:`common.evaluation.zero_shot.zero_shot_scores`.

    Attributes:
        keys: finding keys (``snake_case`` names for findings given only by name).
        names: display names.
        positive: ``(K, P)`` presence prompts.
        negative: ``(K, P)`` absence prompts, paired with ``positive`` by index.
    """

    keys: tuple[str, ...]
    names: tuple[str, ...]
    positive: tuple[tuple[str, ...], ...]
    negative: tuple[tuple[str, ...], ...]

    @property
    def num_findings(self) -> int:
        return len(self.names)

    @property
    def num_prompts(self) -> int:
        return len(self.positive[0]) if self.positive else 0

    @property
    def shape(self) -> tuple[int, int]:
        """``(K, P)``."""
        return self.num_findings, self.num_prompts

    def flatten(self) -> tuple[list[str], list[str]]:
        """Row-major ``(K * P)`` lists of positive and negative prompts."""
        return [p for row in self.positive for p in row], [n for row in self.negative for n in row]


def _as_finding(item: Finding | str) -> Finding:
    if isinstance(item, Finding):
        return item
    for finding in FINDINGS:
        if item in (finding.key, finding.name) or item.lower() == finding.name.lower():
            return finding
    key = re.sub(r"[^0-9a-z]+", "_", item.lower()).strip("_")
    return Finding(key=key, name=item, positive=(), negative=())


def build_prompts(
    findings: Sequence[Finding | str] = FINDINGS,
    templates: Sequence[tuple[str, str]] | None = None,
    num_prompts: int | None = None,
) -> PromptSet:
    """Build (positive, negative) prompt pairs per finding for zero-shot classification.

    Each finding's pairs are the templates filled with its name, then its own ``prompts_positive`` /
    ``prompts_negative`` from :mod:`common.data.findings`; repeated pairs are dropped. All findings then keep the
    same number ``P`` of pairs (the smallest count, or ``num_prompts``), templates first, so the prompt tensors
    are rectangular and every finding is scored with the same templates.

    Args:
        findings: :class:`Finding` objects, or strings: a known finding's key or name (its prompts are used) or
            any other name (templates only).
        templates: (positive, negative) format strings with ``{name}``/``{name_lower}``;
            ``None`` → :data:`DEFAULT_PROMPT_TEMPLATES`, ``()`` → only the findings' own prompts.
        num_prompts: keep at most this many pairs per finding.

    Returns:
        A :class:`PromptSet` of shape ``(K, P)``.

    Raises:
        ValueError: for no findings, a finding left without prompts, or ``num_prompts < 1``.
    """
    templates = DEFAULT_PROMPT_TEMPLATES if templates is None else tuple(templates)
    resolved = [_as_finding(item) for item in findings]
    if not resolved:
        raise ValueError("build_prompts needs at least one finding")
    if num_prompts is not None and num_prompts < 1:
        raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
    pairs_per_finding = []
    for finding in resolved:
        names = {"name": finding.name, "name_lower": finding.name.lower()}
        pairs = [(pos.format(**names), neg.format(**names)) for pos, neg in templates]
        pairs += list(zip(finding.prompts_positive, finding.prompts_negative))
        unique = list(dict.fromkeys(pairs))
        if not unique:
            raise ValueError(f"finding {finding.name!r} has no prompts and no templates were given")
        pairs_per_finding.append(unique)
    width = min(len(pairs) for pairs in pairs_per_finding)
    if num_prompts is not None:
        width = min(width, num_prompts)
    dropped = sum(len(pairs) - width for pairs in pairs_per_finding)
    if dropped:
        logger.debug("build_prompts: kept %d pairs per finding, dropped %d", width, dropped)
    return PromptSet(
        keys=tuple(f.key for f in resolved),
        names=tuple(f.name for f in resolved),
        positive=tuple(tuple(p for p, _ in pairs[:width]) for pairs in pairs_per_finding),
        negative=tuple(tuple(n for _, n in pairs[:width]) for pairs in pairs_per_finding),
    )


# ----------------------------------------------------------------------------------------------------------------
# Opposite sentences
# ----------------------------------------------------------------------------------------------------------------


def prompt_pairs(findings: Sequence[Finding | str] = FINDINGS, num_prompts: int | None = None) -> dict[str, tuple]:
    """``{finding_key: (positive prompts, negative prompts)}`` from :func:`build_prompts` (zero-shot classifiers)."""
    prompts = build_prompts(findings, num_prompts=num_prompts)
    return {key: (list(pos), list(neg)) for key, pos, neg in zip(prompts.keys, prompts.positive, prompts.negative)}


def _label_values(labels: Any, keys: Sequence[str], names: Sequence[str], source: str) -> list[float]:
    """Labels as a list aligned with the findings; NaN where unknown."""
    if isinstance(labels, Mapping):
        values = [labels.get(key, labels.get(name)) for key, name in zip(keys, names)]
    else:
        array = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        if array.ndim != 1 or array.shape[0] != len(keys):
            raise DataContractError(source, f"labels vector has shape {array.shape}, expected ({len(keys)},)")
        values = list(array.tolist())
    out = []
    for key, value in zip(keys, values):
        value = math.nan if value is None else float(value)
        if not (math.isnan(value) or value in (0.0, 1.0)):
            raise DataContractError(source, f"label {key!r} must be 0, 1 or unknown, got {value}")
        out.append(value)
    return out


class OppositeSentenced(Randomizable, MapTransform):
    """Per finding, a sentence that holds for the record and its negated twin, for the opposite-sentence loss.

    For finding ``k`` with label 1 the true sentence is a positive prompt and the false one its paired negative;
    with label 0 the roles swap. The pair is drawn uniformly from the finding's :func:`build_prompts` pairs
    (finding phrasings from :mod:`common.data.findings` plus the templates). Unknown labels (absent, ``None``,
    NaN) and records without labels give a placeholder pair with ``valid=False``, so every record yields ``K``
    entries and batches collate.

    Outputs: ``true_key`` and ``false_key`` (lists of ``K`` strings, tokenise each with :class:`Tokenized`, e.g.
    into ``osl_true_input_ids``) and ``valid_key`` (``(K,)`` bool tensor).

    Args:
        keys: the labels key: ``{finding_key: 0 | 1}`` or a ``(K,)`` vector in the order of ``findings``.
        findings: findings (as for :func:`build_prompts`).
        templates: passed to :func:`build_prompts`.
        true_key: output key of the sentences that hold.
        false_key: output key of their opposites.
        valid_key: output key of the validity mask.
        image_key: key used to name the record in errors.
        allow_missing_keys: accept records without labels (all pairs invalid).

    Raises:
        DataContractError: for a label other than 0/1/unknown or a vector of the wrong length.
    """

    def __init__(
        self,
        keys: KeysCollection = "labels",
        findings: Sequence[Finding | str] = FINDINGS,
        templates: Sequence[tuple[str, str]] | None = None,
        true_key: str = "osl_true",
        false_key: str = "osl_false",
        valid_key: str = "osl_valid",
        image_key: str | None = "image",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"OppositeSentenced takes one labels key, got {self.keys}")
        self.prompts = build_prompts(findings, templates)
        self.true_key, self.false_key, self.valid_key = true_key, false_key, valid_key
        self.image_key = image_key
        self._choice = np.zeros(self.prompts.num_findings, dtype=np.int64)

    def randomize(self, data: Any = None) -> None:
        self._choice = self.R.randint(0, self.prompts.num_prompts, size=self.prompts.num_findings)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        key = self.keys[0]
        if key not in d and not self.allow_missing_keys:
            raise DataContractError(_record_source(d, self.image_key), f"record has no {key!r}")
        self.randomize()
        labels = d.get(key)
        source = _record_source(d, self.image_key)
        values = (
            [math.nan] * self.prompts.num_findings
            if labels is None
            else _label_values(labels, self.prompts.keys, self.prompts.names, source)
        )
        true, false, valid = [], [], []
        for k, value in enumerate(values):
            pos, neg = self.prompts.positive[k][self._choice[k]], self.prompts.negative[k][self._choice[k]]
            present = value == 1.0
            true.append(pos if present or math.isnan(value) else neg)
            false.append(neg if present or math.isnan(value) else pos)
            valid.append(not math.isnan(value))
        d[self.true_key], d[self.false_key] = true, false
        d[self.valid_key] = torch.tensor(valid, dtype=torch.bool)
        return d
