"""Realistic free-text chest-CT reports for the phantoms, written from labels, finding details and study facts.

The findings section walks the anatomy in the usual reading order (:data:`common.data.findings.ORGANS`):
technique, trachea and bronchi, mediastinal vessels / heart / aorta / coronaries, pericardium, esophagus, lymph
nodes, lung parenchyma, pleura, upper abdomen, chest wall, bones. Every statement has several phrasings and the
verbosity of a report is drawn at random, so the word and token lengths spread like those of real reports
(``scripts/report_lengths.py`` measures them). The impression lists the positive findings, then incidental ones,
or says that the examination is normal.

Sentence types and the labels they imply (the mapping rule; every sentence is tagged with
``{finding_key: polarity}``, see :func:`compose_report` and :func:`labels_from_sentences`):

* ``present`` → 1: an affirmative statement ("A 6 mm solid nodule is seen in the left lower lobe.").
* ``hedged`` → 1 (the U-Ones rule): an uncertain statement ("Possible ...", "Likely ...", "Findings suggestive
  of ...", "... may be compatible with ...", "... cannot be excluded.", "Linear density in the ... (atelectasis?)").
* ``negated`` → 0: an explicit negation of one or several findings ("No X.", "X was not observed.", "There is no
  evidence of X, Y or Z.", "Pericardial effusion or thickening was not observed.").
* ``normal`` → 0: a normal statement of the finding's organ that implies its absence ("Heart size is normal."
  covers cardiomegaly, "The lungs are otherwise clear." covers the absent lung findings).

A finding with label 1 is stated at its organ's place (hedged with probability :data:`HEDGE_PROB`, devices never)
and listed in the impression (minor findings are sometimes left out there, never all positives). A finding with
label 0 is negated explicitly (probability :data:`NEGATION_PROB` on average) or covered by a normal statement of
its organ; when no normal statement fits (one of the findings it covers is present) it is negated. Positive and
hedged sentences contain neither a negation ("no", "not", "without") nor a normal-type word ("normal",
"unremarkable", "clear", "preserved", ...), negated sentences always contain a negation, and no sentence mentions
a finding that it is not tagged with. Sentences about technique, anatomical variants, incidental findings and
unrelated normal anatomy carry no label. The impression is a normal statement ("Thoracic CT examination within
normal limits.", ...) exactly when no finding is present.

Inputs (all detail fields optional, missing ones give less specific phrasing):

* ``labels``: ``{finding_key: 0 | 1}`` for the 18 keys of :data:`common.data.findings.FINDINGS`.
* ``details[key]`` for present findings, fields listed in each finding's ``detail_fields``.
* ``study``: ``contrast`` (bool), ``slice_thickness_mm`` (float), ``kernel`` ("soft tissue" | "lung"), ``arms``
  ("up" | "down"), ``sex`` ("female" | "male"), ``variants`` (among :data:`VARIANTS`), ``incidental`` (among
  :data:`INCIDENTALS`) and, optionally, ``incidental_details`` (``{"liver cyst": {"size": mm, "lobe": "right"}}``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.data.findings import DEVICES, FINDING_KEYS, FINDINGS, LOBES, ORGANS, STATIONS, finding_by_key

__all__ = [
    "DEVICES",
    "HEDGE_PROB",
    "INCIDENTALS",
    "LOBES",
    "NEGATION_PROB",
    "POLARITY_LABELS",
    "STATIONS",
    "VARIANTS",
    "ReportSentence",
    "compose_report",
    "labels_from_sentences",
    "random_case",
    "write_report",
]

HEDGE_PROB = 0.15
"""Probability that a present finding (other than medical material) is stated with a hedge."""
NEGATION_PROB = 0.6
"""Mean probability that an absent finding is negated explicitly rather than covered by a normal statement (it
grows with the verbosity drawn for each report: terse reports rely more on normal statements)."""
_VERBOSITY_BETA = (0.45, 1.0)  # verbosity ~ Beta(a, b) per report
_MEAN_VERBOSITY = _VERBOSITY_BETA[0] / sum(_VERBOSITY_BETA)
POLARITY_LABELS: dict[str, int] = {"present": 1, "hedged": 1, "negated": 0, "normal": 0}
"""Label implied by each sentence polarity (hedged = positive: the U-Ones rule)."""

VARIANTS: tuple[str, ...] = ("pectus excavatum", "thoracic scoliosis", "azygos fissure")
INCIDENTALS: tuple[str, ...] = ("liver cyst", "vertebral osteophytes")
_CORONARY_VESSELS: tuple[str, ...] = ("left anterior descending", "circumflex", "right coronary")
_LUNG_KEYS: tuple[str, ...] = tuple(f.key for f in FINDINGS if f.organ == "lungs")
_NOT_HEDGED = frozenset({"medical_material"})
_MINOR = frozenset(
    {"atelectasis", "peribronchial_thickening", "pulmonary_fibrotic_sequela", "mosaic_attenuation_pattern"}
)


@dataclass(frozen=True)
class ReportSentence:
    """One sentence of a written report with the labels it states.

    Attributes:
        text: the sentence as it appears in the report.
        section: ``"findings"`` or ``"impression"``.
        organ: one of :data:`common.data.findings.ORGANS` (findings) or ``"impression"``.
        findings: ``{finding_key: polarity}`` with polarity among :data:`POLARITY_LABELS`.
    """

    text: str
    section: str
    organ: str
    findings: Mapping[str, str] = field(default_factory=dict)


def labels_from_sentences(sentences: Sequence[ReportSentence], section: str | None = "findings") -> dict[str, int]:
    """Labels implied by tagged sentences: 1 if any ``present``/``hedged`` sentence, else 0 if negated/normal.

    Args:
        sentences: the sentences of :func:`compose_report`.
        section: only use this section (``None``: both).

    Returns:
        ``{finding_key: 0 | 1}`` for the findings mentioned (explicitly or implicitly).
    """
    out: dict[str, int] = {}
    for sentence in sentences:
        if section is not None and sentence.section != section:
            continue
        for key, polarity in sentence.findings.items():
            out[key] = max(out.get(key, 0), POLARITY_LABELS[polarity])
    return out


# ----------------------------------------------------------------------------------------------------------------
# Small text helpers
# ----------------------------------------------------------------------------------------------------------------


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _tidy(text: str) -> str:
    """Single spaces, no space before punctuation, capital first letter, a terminal full stop."""
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([,.;)?])", r"\1", text)
    text = re.sub(r"\(\s+", "(", text)
    text = _cap(text)
    return text if text[-1] in ".?!" else text + "."


def _join(items: Sequence[str], conj: str = "and") -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + f" {conj} " + items[-1]


def _mm(value: Any) -> str:
    """``5`` → ``"5"``, ``1.25`` → ``"1.25"``, ``2.0`` → ``"2"``."""
    number = float(value)
    return str(int(number)) if number.is_integer() else f"{number:g}"


_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def _count(n: Any) -> str:
    """Small counts as words ("three"), larger ones as digits."""
    n = int(n)
    return _NUMBER_WORDS[n] if 0 <= n < len(_NUMBER_WORDS) else str(n)


def _both(side: Any) -> bool:
    return side not in ("left", "right")


def _lobe(rng: np.random.Generator, lobe: Any) -> str:
    """A lobe, phrased one of three ways ("the right upper lobe", "the upper lobe of the right lung", ...)."""
    if not lobe:
        return "the lung parenchyma"
    words = str(lobe).split()
    if len(words) != 3 or words[2] != "lobe":
        return f"the {lobe}"
    side, level = words[0], words[1]
    return _pick(rng, (f"the {lobe}", f"the {level} lobe of the {side} lung", f"the {side} lung {level} lobe"))


def _lobes(rng: np.random.Generator, lobes: Any, side: Any) -> str:
    """Several lobes grouped by side ("the right upper and lower lobes and the left lower lobe")."""
    if isinstance(lobes, str):
        lobes = [lobes]
    lobes = [str(lobe) for lobe in lobes or () if lobe]
    if not lobes:
        return "both lungs" if _both(side) else f"the {side} lung"
    if len(lobes) == 1:
        return _lobe(rng, lobes[0])
    groups: dict[str, list[str]] = {}
    for lobe in lobes:
        words = lobe.split()
        if len(words) == 3:
            groups.setdefault(words[0], []).append(words[1])
        else:
            groups.setdefault(lobe, [])
    parts = []
    for group_side, levels in groups.items():
        if not levels:
            parts.append(f"the {group_side}")
        elif len(levels) == 1:
            parts.append(f"the {group_side} {levels[0]} lobe")
        else:
            parts.append(
                _pick(
                    rng,
                    (f"the {group_side} {_join(levels)} lobes", f"the {_join(levels)} lobes of the {group_side} lung"),
                )
            )
    return _join(parts)


def _region(rng: np.random.Generator, side: Any, zone: Any) -> str:
    """A prepositional phrase for a side and zone of the lungs ("at both lung bases", "in the right lung")."""
    both = _both(side)
    if zone in ("upper", "lower"):
        options = (
            (
                f"in the {zone} zones of both lungs",
                f"in both {zone} zones",
                f"with {zone}-zone predominance in both lungs",
            )
            if both
            else (f"in the {zone} zone of the {side} lung", f"in the {side} {zone} zone")
        )
    elif zone == "basal":
        options = (
            ("at both lung bases", "in the basal segments of both lower lobes", "at the bases of both lungs")
            if both
            else (f"at the {side} lung base", f"in the basal segments of the {side} lower lobe")
        )
    elif zone == "apical":
        options = (
            ("at both lung apices", "in the apical segments of both upper lobes", "at the apices of both lungs")
            if both
            else (f"at the {side} lung apex", f"in the apex of the {side} lung")
        )
    else:
        options = (
            ("throughout both lungs", "diffusely in both lungs", "in both lungs")
            if both
            else (f"throughout the {side} lung", f"diffusely in the {side} lung", f"in the {side} lung")
        )
    return _pick(rng, options)


def _degree(
    rng: np.random.Generator, severity: Any, mild: Sequence[str], moderate: Sequence[str], severe: Sequence[str]
) -> str:
    """A severity adjective ("" when the severity is unknown)."""
    table = {"mild": mild, "moderate": moderate, "severe": severe}
    return _pick(rng, table[severity]) if severity in table else ""


# ----------------------------------------------------------------------------------------------------------------
# Phrasings of present findings
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class _Phrases:
    """How one present finding is written: definite sentences, optional extra detail, hedges, impression phrases."""

    stated: list[str]
    np: list[str]
    vague: list[str] = field(default_factory=list)
    short: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    always: list[str] = field(default_factory=list)  # detail sentences that always follow a definite statement


_HEDGE_SENTENCES: tuple[str, ...] = (
    "{Vague} ({short}?).",
    "{Vague}, suggestive of {short}.",
    "{Vague}, likely representing {short}.",
    "{Vague}; {short} cannot be excluded.",
    "{Vague}, which may be compatible with {short}.",
    "Possible {np}.",
    "Findings suggestive of {np}.",
    "{Np} cannot be ruled out.",
    "Likely {np}.",
    "Questionable {np}.",
)
_HEDGE_IMPRESSIONS: tuple[str, ...] = (
    "Possible {np}.",
    "Suspected {np}.",
    "Findings may be compatible with {np}.",
    "{Np} cannot be excluded.",
    "{Vague} ({short}?).",
    "Probable {np}.",
)


def _fill_hedge(template: str, rng: np.random.Generator, phrases: _Phrases) -> str:
    vague = _pick(rng, phrases.vague) if phrases.vague else ""
    short = _pick(rng, phrases.short) if phrases.short else ""
    np_ = _pick(rng, phrases.np)
    if "{Vague}" in template and not (vague and short):
        template = "Possible {np}."
    return template.format(Vague=_cap(vague), short=short, np=np_, Np=_cap(np_))


def _arterial(rng: np.random.Generator, d: Mapping[str, Any]) -> _Phrases:
    sev = _degree(
        rng,
        d.get("severity"),
        ("a few", "scattered", "mild"),
        ("several", "moderate"),
        ("extensive", "numerous", "diffuse"),
    )
    adj = _degree(rng, d.get("severity"), ("mild", "minimal"), ("moderate",), ("extensive", "marked", "diffuse"))
    plaques = d.get("plaques")
    count = ""
    if isinstance(plaques, (int, np.integer)) and plaques > 0:
        count = (
            "a single calcified plaque"
            if plaques == 1
            else _pick(rng, (f"{_count(plaques)} calcified plaques", "multiple calcified plaques"))
        )
    stated = [
        f"{sev} calcified atherosclerotic plaques are seen in the wall of the thoracic aorta.",
        f"There are {sev} atheromatous calcifications in the aortic wall.",
        f"The thoracic aorta shows {sev} mural calcifications.",
        "Calcific atherosclerotic changes involve the aortic arch and the descending thoracic aorta.",
        f"{adj} calcification of the arterial walls is noted along the thoracic aorta"
        " and the origins of the arch vessels.",
    ]
    if count:
        stated.append(f"{_cap(count)} {'is' if plaques == 1 else 'are'} seen in the wall of the thoracic aorta.")
    return _Phrases(
        stated=stated,
        np=[
            f"{adj} atherosclerotic calcification of the thoracic aorta",
            "calcified plaques in the aortic wall",
            "aortic wall calcification",
        ],
        vague=["Tiny hyperdense foci along the aortic wall", "Faint punctate densities in the aortic arch wall"],
        short=["early atherosclerotic calcification", "calcified plaque"],
        extra=[
            "The calcified plaques are most prominent in the aortic arch.",
            "Atherosclerotic calcification also extends to the proximal arch vessels.",
            "Calcific atheromatous changes are also seen in the descending aorta.",
        ],
    )


def _cardiomegaly(rng: np.random.Generator, d: Mapping[str, Any]) -> _Phrases:
    adv = _degree(rng, d.get("severity"), ("mildly", "slightly"), ("moderately",), ("markedly", "severely"))
    adj = _degree(rng, d.get("severity"), ("mild",), ("moderate",), ("marked", "severe"))
    return _Phrases(
        stated=[
            f"The heart is {adv} enlarged.",
            f"Cardiac size is increased ({adj} cardiomegaly).",
            f"{adj} cardiomegaly is present.",
            f"The cardiothoracic ratio is increased, consistent with {adj} cardiomegaly.",
            f"{adj} enlargement of the cardiac chambers is noted.",
        ],
        np=[f"{adj} cardiomegaly", f"{adj} cardiac enlargement"],
        vague=["The cardiac silhouette appears prominent", "Heart size appears borderline increased"],
        short=["cardiomegaly", "cardiac enlargement"],
        extra=[
            "The enlargement mainly involves the left ventricle.",
            "Both atria appear enlarged as well.",
            "The cardiothoracic ratio exceeds 0.5.",
        ],
    )


def _pericardial(rng: np.random.Generator, d: Mapping[str, Any]) -> _Phrases:
    sev = _degree(rng, d.get("severity"), ("minimal", "small", "trace"), ("moderate",), ("large", "substantial"))
    thick = d.get("thickness_mm")
    measure = ""
    if thick:
        measure = _pick(
            rng,
            (
                f", measuring {_mm(thick)} mm at its thickest point",
                f" with a maximum thickness of {_mm(thick)} mm",
                f" (up to {_mm(thick)} mm)",
            ),
        )
    return _Phrases(
        stated=[
            f"There is a {sev} pericardial effusion{measure}.",
            f"{sev} pericardial effusion is seen{measure}.",
            f"Fluid is present in the pericardial space{measure}.",
            f"The pericardial recesses contain a {sev or 'small'} amount of fluid{measure}.",
        ],
        np=[f"{sev} pericardial effusion", "pericardial fluid"],
        vague=["Slight thickening of the pericardial line", "Fluid density along the pericardium"],
        short=["pericardial effusion", "pericardial fluid"],
        extra=[
            "The fluid has simple attenuation.",
            "The effusion is distributed circumferentially around the heart.",
            "Correlation with echocardiography is recommended for the pericardial effusion.",
        ],
    )


def _vessels(rng: np.random.Generator, vessels: Any) -> str:
    """ "the right coronary artery", "the left anterior descending and circumflex coronary arteries", ..."""
    names = [str(v) for v in (vessels or ()) if v]
    if not names:
        return "the coronary arteries"
    if len(names) >= 3 and rng.random() < 0.5:
        return "all three main coronary arteries"
    names = [name.removesuffix(" coronary") for name in names]
    return f"the {_join(names)} coronary {'arteries' if len(names) > 1 else 'artery'}"


def _coronary(rng: np.random.Generator, d: Mapping[str, Any]) -> _Phrases:
    sev = _degree(
        rng,
        d.get("severity"),
        ("a few", "scattered", "mild"),
        ("several", "moderate"),
        ("extensive", "dense", "numerous"),
    )
    adj = _degree(rng, d.get("severity"), ("mild", "minimal"), ("moderate",), ("extensive", "severe", "dense"))
    where = _vessels(rng, d.get("vessels"))
    return _Phrases(
        stated=[
            f"{sev} calcifications are seen in the walls of {where}.",
            f"Coronary artery calcification is present, involving {where}.",
            f"Calcified plaques are noted along {where}.",
            f"There is {adj} coronary artery wall calcification in {where}.",
        ],
        np=[f"{adj} coronary artery calcification", f"calcified plaques in {where}"],
        vague=[f"Punctate hyperdensities along the course of {where}", "Faint dense foci along the coronary arteries"],
        short=["coronary calcification", "coronary atherosclerosis"],
        extra=[
            "Coronary calcification is most pronounced in the proximal segments.",
            "These coronary calcifications indicate coronary atherosclerosis; cardiology evaluation may be considered.",
        ],
    )


def _hiatal(rng: np.random.Generator, d: Mapping[str, Any]) -> _Phrases:
    size = d.get("size")
    severity = d.get("severity")
    if severity in ("mild", "moderate", "severe"):
        adj = {"mild": "small", "moderate": "moderate", "severe": "large"}[severity]
    elif severity in ("small", "large"):
        adj = severity
    elif size:
        adj = "small" if float(size) < 30 else "moderate" if float(size) < 50 else "large"
    else:
        adj = ""
    measure = f", measuring approximately {_mm(size)} mm" if size else ""
    return _Phrases(
        stated=[
            f"A {adj} sliding hiatal hernia is seen{measure}.",
            f"There is a {adj} hiatal hernia{measure}.",
            "Part of the gastric fundus extends through the esophageal hiatus into the thorax,"
            f" consistent with a {adj} hiatal hernia.",
            f"The distal esophagus is widened by a {adj} hiatus hernia{measure}.",
        ],
        np=[f"{adj} hiatal hernia", f"{adj} sliding hiatus hernia"],
        vague=[
            "Slight widening of the esophageal hiatus",
            "Mild prominence of the gastroesophageal junction above the diaphragm",
        ],
        short=["a hiatal hernia", "hiatal hernia"],
        extra=[
            "The herniated gastric portion contains air and fluid.",
            "The gastroesophageal junction lies above the diaphragm, within the hernia.",
        ],
    )


def _stations(stations: Any) -> tuple[str, bool]:
    names = [s for s in (stations or ()) if s]
    if not names:
        return "mediastinal", True
    return _join(names), len(names) > 1


def _lymph(rng: np.random.Generator, d: Mapping[str, Any]) -> _Phrases:
    where, several = _stations(d.get("stations"))
    size = d.get("size")
    largest = ""
    if size:
        largest = _pick(
            rng,
            (
                f", the largest measuring {_mm(size)} mm in short axis",
                f" (largest short axis {_mm(size)} mm)",
                f", the largest with a short-axis diameter of {_mm(size)} mm",
            ),
        )
    station = "stations" if several else "station"
    return _Phrases(
        stated=[
            f"Enlarged lymph nodes are seen in the {where} {station}{largest}.",
            f"There are lymph nodes of pathological size in the {where} {'regions' if several else 'region'}{largest}.",
            f"Mediastinal lymphadenopathy is present at the {where} {'levels' if several else 'level'}{largest}.",
            f"Several enlarged {where} lymph nodes are noted{largest}.",
        ],
        np=[
            f"mediastinal lymphadenopathy ({where})",
            f"enlarged {where} lymph nodes",
            f"pathologically enlarged lymph nodes in the {where} {station}",
        ],
        vague=[f"Lymph nodes of borderline size in the {where} {station}", f"Slightly enlarged {where} lymph nodes"],
        short=["early lymphadenopathy", "reactive lymphadenopathy"],
        extra=[
            "The enlarged nodes have lost their fatty hila.",
            "The enlarged nodes show soft-tissue attenuation.",
            "Correlation with the clinical history is recommended for the enlarged lymph nodes.",
        ],
    )


def _emphysema(rng: np.random.Generator, d: Mapping[str, Any]) -> _Phrases:
    kind = d.get("kind") or ""
    sev = _degree(rng, d.get("severity"), ("mild", "minimal"), ("moderate",), ("severe", "advanced", "marked"))
    zone = d.get("zone")
    where = _region(rng, "bilateral", zone if zone == "upper" else "diffuse")
    bullae = d.get("bullae")
    bulla_text = ""
    if isinstance(bullae, (int, np.integer)) and bullae > 0:
        bulla_text = (
            "a subpleural bulla"
            if bullae == 1
            else _pick(rng, (f"{_count(bullae)} subpleural bullae", "several subpleural bullae"))
        )
    return _Phrases(
        stated=[
            f"{sev} {kind} emphysematous changes are seen {where}.",
            f"There is {sev} {kind} emphysema {where}.",
            f"Both lungs show {sev} {kind} emphysema{' predominantly in the upper lobes' if zone == 'upper' else ''}.",
            f"Areas of low attenuation consistent with {kind} emphysema are present {where}.",
        ],
        np=[f"{sev} {kind} emphysema", f"{kind} emphysematous changes {where}"],
        vague=[f"Slightly increased lucency {where}", "Subtle areas of low attenuation in the upper lobes"],
        short=["emphysema", "emphysematous change"],
        always=(
            [
                _pick(
                    rng,
                    (
                        f"{_cap(bulla_text)} {'is' if bullae == 1 else 'are'} also present.",
                        f"The emphysema is accompanied by {bulla_text}.",
                    ),
                )
            ]
            if bulla_text
            else []
        ),
        extra=["The emphysematous areas are most marked in the upper lobes."] * (zone == "upper")
        + ["The emphysematous changes are compatible with chronic obstructive pulmonary disease."],
    )


def _atelectasis(rng: np.random.Generator, d: Mapping[str, Any], effusion: bool) -> _Phrases:
    lobe = _lobe(rng, d.get("lobe"))
    kind = d.get("kind")
    adjacent = " adjacent to the pleural effusion" if effusion and kind == "passive" else ""
    if kind == "lobar":
        stated = [
            f"There is complete atelectasis of {lobe} with volume loss.",
            f"{_cap(lobe)} is collapsed (lobar atelectasis).",
            f"Lobar atelectasis involving {lobe} is present.",
        ]
        label = "lobar atelectasis"
    elif kind == "passive":
        stated = [
            f"Passive atelectasis is seen in {lobe}{adjacent}.",
            f"There is compressive atelectasis of {lobe}{adjacent}.",
            f"{_cap(lobe)} shows passive atelectatic change{adjacent}.",
        ]
        label = "passive atelectasis"
    else:
        stated = [
            f"Subsegmental atelectasis is seen in {lobe}.",
            f"There are linear atelectatic bands in {lobe}.",
            f"Plate-like atelectasis is noted in {lobe}.",
            f"{_cap(lobe)} shows subsegmental atelectasis.",
        ]
        label = "subsegmental atelectasis"
    return _Phrases(
        stated=stated,
        np=[f"{label} in {lobe}", f"atelectasis of {lobe}" if kind == "lobar" else f"atelectatic change in {lobe}"],
        vague=[f"Linear density in {lobe}", f"Band-like density in {lobe}"],
        short=["atelectasis", "subsegmental atelectasis"],
        extra=[
            "The atelectatic segment shows mild volume loss.",
            "These atelectatic changes may be related to hypoventilation.",
        ],
    )


def _nodule(rng: np.random.Generator, d: Mapping[str, Any]) -> _Phrases:
    lobe = _lobe(rng, d.get("lobe"))
    size = d.get("size")
    kind = {"solid": "solid", "subsolid": _pick(rng, ("subsolid", "part-solid"))}.get(d.get("kind"), "")
    count = d.get("count") or 1
    mm = f"{_mm(size)} mm " if size else ""
    if count > 1:
        several = "Multiple" if count > 2 else "Two"
        largest = f", the largest measuring {_mm(size)} mm in {lobe}" if size else f", the largest in {lobe}"
        stated = [
            f"{_count(count)} {kind} nodules are seen in the lungs{largest}.",
            f"{several} {kind} pulmonary nodules{f' ({int(count)})' if count > 2 else ''} are present{largest}.",
            f"There are {_count(count)} {kind} nodules in the lung parenchyma{largest}.",
        ]
        np_ = [
            f"{'multiple' if count > 2 else 'two'} {kind} pulmonary nodules{largest}",
            f"{_count(count)} lung nodules, the largest {mm}in {lobe}",
        ]
    else:
        diameter = f" with a diameter of {_mm(size)} mm" if size else ""
        stated = [
            f"A {mm}{kind} nodule is seen in {lobe}.",
            f"There is a {kind} pulmonary nodule {f'measuring {_mm(size)} mm ' if size else ''}in {lobe}.",
            f"In {lobe}, a {kind} nodule {f'{_mm(size)} mm in diameter ' if size else ''}is noted.",
            f"A {kind} parenchymal nodule{diameter} is observed in {lobe}.",
        ]
        np_ = [f"{mm}{kind} nodule in {lobe}", f"{kind} pulmonary nodule in {lobe}"]
    small = bool(size) and float(size) < 6
    the = "the largest nodule" if count > 1 else "the nodule"
    return _Phrases(
        stated=stated,
        np=np_,
        vague=[f"A {mm}focal density in {lobe}", f"A tiny dense focus in {lobe}"],
        short=["small nodule", "intrapulmonary lymph node or nodule"],
        extra=[
            f"Follow-up CT of {the} is advised according to current guidelines.",
            f"Comparison with previous examinations, if available, is recommended for {the}.",
        ]
        + (
            [f"{_cap(the)} has a well-defined contour."]
            if not small
            else [f"Given its small size, {the} is most likely benign."]
        ),
    )


def _opacity(rng: np.random.Generator, d: Mapping[str, Any]) -> _Phrases:
    where = _lobes(rng, d.get("lobes"), d.get("side"))
    verb = "show" if " and " in where or where == "both lungs" else "shows"
    return _Phrases(
        stated=[
            f"Ground-glass opacities are seen in {where}.",
            f"There are patchy areas of ground-glass density in {where}.",
            f"Hazy ground-glass opacification involves {where}.",
            f"{_cap(where)} {verb} peripheral ground-glass opacities.",
        ],
        np=[f"ground-glass opacities in {where}", f"ground-glass density areas in {where}"],
        vague=[f"Faint hazy density in {where}", f"Slightly increased density in {where}"],
        short=["ground-glass opacity", "early ground-glass opacification"],
        extra=[
            "The ground-glass areas are predominantly peripheral and subpleural.",
            "An infectious or inflammatory process may account for the ground-glass areas.",
            "Correlation with clinical and laboratory findings is recommended for the ground-glass areas.",
        ],
    )


def _fibrotic(rng: np.random.Generator, d: Mapping[str, Any]) -> _Phrases:
    where = _region(rng, d.get("side"), d.get("zone"))
    return _Phrases(
        stated=[
            f"Fibrotic sequela changes with linear bands are seen {where}.",
            f"There are pleuroparenchymal fibrotic sequelae {where}.",
            f"Linear fibrotic scarring is noted {where}.",
            f"Sequela-type fibrotic densities with mild volume loss are present {where}.",
        ],
        np=[f"fibrotic sequelae {where}", f"pleuroparenchymal fibrotic scarring {where}"],
        vague=[f"Linear densities {where}", f"Band-like parenchymal densities {where}"],
        short=["fibrotic sequelae", "post-inflammatory scarring"],
        extra=[
            "These changes are consistent with sequelae of previous inflammation.",
            "The fibrotic bands cause slight retraction of the adjacent pleura.",
        ],
    )


def _pleural(rng: np.random.Generator, d: Mapping[str, Any]) -> _Phrases:
    side = d.get("side")
    sev = _degree(rng, d.get("severity"), ("small", "minimal"), ("moderate",), ("large", "massive"))
    if _both(side):
        stated = [
            f"There are {sev} bilateral pleural effusions.",
            f"{sev} pleural effusions are seen on both sides.",
            f"{sev} pleural fluid is present in both hemithoraces.",
        ]
        np_ = [f"{sev} bilateral pleural effusions", f"{sev} pleural effusion on both sides"]
        vague = ["A fluid layer along both pleural surfaces"]
    else:
        stated = [
            f"There is a {sev} {side}-sided pleural effusion.",
            f"{sev} pleural fluid is seen in the {side} hemithorax.",
            f"A {sev} pleural effusion is present on the {side}.",
        ]
        np_ = [f"{sev} {side} pleural effusion", f"{sev} pleural effusion on the {side}"]
        vague = [f"A fluid layer along the {side} pleura"]
    return _Phrases(
        stated=stated,
        np=np_,
        vague=vague,
        short=["pleural effusion", "pleural fluid"],
        extra=[
            "The pleural fluid layers dependently and is free-flowing.",
            "The effusion has simple fluid attenuation.",
            "The pleural effusion extends into the posterior costophrenic recess.",
        ],
    )


def _mosaic(rng: np.random.Generator, d: Mapping[str, Any]) -> _Phrases:
    where = _region(rng, d.get("side"), d.get("zone"))
    return _Phrases(
        stated=[
            f"A mosaic attenuation pattern is seen {where}.",
            f"There is mosaic attenuation {where}, which may reflect small airway or small vessel disease.",
            f"Heterogeneous lung attenuation with a mosaic pattern is noted {where}.",
            f"Patchy mosaic attenuation is present {where} (small airway disease?).",
        ],
        np=[f"mosaic attenuation pattern {where}", f"mosaic attenuation {where}"],
        vague=[f"Patchy heterogeneous attenuation {where}", f"Subtle areas of differing attenuation {where}"],
        short=["mosaic attenuation", "a mosaic pattern"],
        extra=[
            "Expiratory images would help to assess air trapping.",
            "The mosaic pattern may reflect small airway disease or a perfusion abnormality.",
        ],
    )


def _peribronchial(rng: np.random.Generator, d: Mapping[str, Any]) -> _Phrases:
    side, zone = d.get("side"), d.get("zone")
    where = _region(rng, side, zone)
    sev = _pick(rng, ("mild", "minimal", "", "marked"))
    return _Phrases(
        stated=[
            f"Peribronchial thickening is seen {where}.",
            f"Bronchial walls are thickened {where}.",
            f"There is {sev} peribronchial wall thickening {where}.",
            f"{sev} bronchial wall thickening with peribronchial cuffing is present {where}.",
        ],
        np=[f"peribronchial thickening {where}", f"{sev} bronchial wall thickening {where}"],
        vague=[f"Slightly prominent bronchial walls {where}"],
        short=["peribronchial thickening", "bronchial wall thickening"],
        extra=[
            "These changes may be related to small airway inflammation.",
            "The bronchial wall thickening is most prominent in the lower lobe bronchi.",
        ],
    )


def _consolidation(rng: np.random.Generator, d: Mapping[str, Any]) -> _Phrases:
    lobe = _lobe(rng, d.get("lobe"))
    volume = d.get("volume_ml")
    bronchogram = bool(d.get("air_bronchogram"))
    vol = f", approximately {round(float(volume))} mL in volume," if volume else ""
    with_ab = _pick(rng, (" with air bronchograms", " containing air bronchograms")) if bronchogram else ""
    return _Phrases(
        stated=[
            f"There is consolidation in {lobe}{with_ab}.",
            f"An area of airspace consolidation{vol} is seen in {lobe}{with_ab}.",
            f"{_cap(lobe)} shows a consolidated area{with_ab}.",
            f"Dense consolidation is present in {lobe}{'; air bronchograms are visible within it' * bronchogram}.",
        ],
        np=[f"consolidation in {lobe}{with_ab}", f"airspace consolidation in {lobe}"],
        vague=[f"An area of increased density in {lobe}", f"A dense area in {lobe}"],
        short=["consolidation", "pneumonic consolidation"],
        extra=[
            "The appearance may represent pneumonia; correlation with clinical and laboratory findings is recommended.",
            "The consolidated area has ill-defined margins.",
        ]
        + ([f"The consolidated area measures approximately {round(float(volume))} mL."] if volume else []),
    )


def _bronchiectasis(rng: np.random.Generator, d: Mapping[str, Any]) -> _Phrases:
    lobe = _lobe(rng, d.get("lobe"))
    kind = d.get("kind") or ""
    return _Phrases(
        stated=[
            f"{kind} bronchiectasis is seen in {lobe}.",
            f"There are {kind} bronchiectatic changes in {lobe}.",
            f"Bronchi in {lobe} are dilated, with {kind} bronchiectasis.",
            f"{_cap(lobe)} shows {kind} bronchiectasis, the bronchi being wider than the adjacent arteries.",
        ],
        np=[f"{kind} bronchiectasis in {lobe}", f"bronchiectatic changes in {lobe}"],
        vague=[f"Mildly dilated bronchi in {lobe}", f"Slightly widened bronchial lumens in {lobe}"],
        short=["bronchiectasis", "early bronchiectasis"],
        extra=[
            "Mucus plugging is seen in some of the dilated bronchi.",
            "The dilated bronchi show a signet-ring appearance.",
        ],
    )


def _septal(rng: np.random.Generator, d: Mapping[str, Any]) -> _Phrases:
    where = _region(rng, d.get("side"), d.get("zone"))
    return _Phrases(
        stated=[
            f"Interlobular septal thickening is seen {where}.",
            f"There is thickening of the interlobular septa {where}.",
            f"Thickened interlobular septa are noted {where}.",
            f"Interlobular septa are thickened {where}.",
        ],
        np=[f"interlobular septal thickening {where}", f"thickened interlobular septa {where}"],
        vague=[f"Subtle reticular lines {where}", f"Fine reticulation {where}"],
        short=["interlobular septal thickening", "septal thickening"],
        extra=[
            "Interstitial edema or lymphangitic spread may be considered in the differential diagnosis.",
            "The thickened septa outline the secondary pulmonary lobules.",
        ],
    )


_PHRASES: dict[str, Callable[[np.random.Generator, Mapping[str, Any]], _Phrases]] = {
    "arterial_wall_calcification": _arterial,
    "cardiomegaly": _cardiomegaly,
    "pericardial_effusion": _pericardial,
    "coronary_artery_wall_calcification": _coronary,
    "hiatal_hernia": _hiatal,
    "lymphadenopathy": _lymph,
    "emphysema": _emphysema,
    "lung_nodule": _nodule,
    "lung_opacity": _opacity,
    "pulmonary_fibrotic_sequela": _fibrotic,
    "pleural_effusion": _pleural,
    "mosaic_attenuation_pattern": _mosaic,
    "peribronchial_thickening": _peribronchial,
    "consolidation": _consolidation,
    "bronchiectasis": _bronchiectasis,
    "interlobular_septal_thickening": _septal,
}

# Medical devices: (organ, rank in the organ, sentences, impression noun phrase); {side} = generator side.
_DEVICE_TEXT: dict[str, tuple[str, float, tuple[str, ...], str]] = {
    "endotracheal tube": (
        "airways",
        0.5,
        (
            "An endotracheal tube is in place, its tip above the carina.",
            "The trachea is intubated; the endotracheal tube tip lies in the mid trachea.",
            "An endotracheal tube is seen in the tracheal lumen.",
        ),
        "endotracheal tube",
    ),
    "central venous catheter": (
        "mediastinum",
        1.5,
        (
            "A central venous catheter is seen with its tip in the superior vena cava.",
            "A central venous line is in place, its tip at the cavoatrial junction.",
            "A central venous catheter extends via the jugular vein into the superior vena cava.",
        ),
        "central venous catheter",
    ),
    "port catheter": (
        "mediastinum",
        1.6,
        (
            "A port catheter is seen in the {side} chest wall, its catheter tip in the superior vena cava.",
            "A subcutaneous port system is present on the {side}, with the catheter ending in the superior vena cava.",
            "A {side}-sided port catheter is in place.",
        ),
        "port catheter",
    ),
    "pacemaker": (
        "mediastinum",
        2.5,
        (
            "A cardiac pacemaker is seen with its generator in the {side} chest wall"
            " and leads ending in the right heart.",
            "A {side}-sided pacemaker is present; its leads terminate in the right atrium and ventricle.",
            "Pacemaker generator in the {side} infraclavicular region with leads in the right heart chambers.",
        ),
        "cardiac pacemaker",
    ),
    "sternotomy wires": (
        "chest_wall",
        0.5,
        (
            "Median sternotomy wires are present.",
            "Sternal cerclage wires from a previous sternotomy are seen.",
            "Postoperative changes of median sternotomy with sternal wires are noted.",
        ),
        "sternotomy wires",
    ),
}


# ----------------------------------------------------------------------------------------------------------------
# Normal statements, negations and neutral sentences
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Stmt:
    """A statement with alternative phrasings.

    ``tags``: finding polarities it states (``normal``/``negated``); ``excludes``: present findings, variants or
    incidentals that forbid it; ``rank``: position within its organ; ``prob``: base inclusion probability of a
    neutral statement (scaled by the report's verbosity); ``after_positive``: an "otherwise normal" statement, used
    only after a present finding of the same organ.
    """

    texts: tuple[str, ...]
    tags: Mapping[str, str] = field(default_factory=dict)
    excludes: frozenset[str] = frozenset()
    rank: float = 5.0
    prob: float = 1.0
    after_positive: bool = False  # "otherwise ..." statements: only when the organ has a present finding


def _n(*keys: str) -> dict[str, str]:
    return {k: "normal" for k in keys}


def _x(*keys: str) -> dict[str, str]:
    return {k: "negated" for k in keys}


_AIR = ("emphysema", "atelectasis", "mosaic_attenuation_pattern")
_FOCAL = ("lung_nodule", "lung_opacity", "consolidation")

# Normal statements that cover absent findings, by organ.
_NORMALS: dict[str, tuple[_Stmt, ...]] = {
    "mediastinum": (
        _Stmt(
            (
                "The mediastinal structures are otherwise normal.",
                "Otherwise, the heart and mediastinal vessels appear normal.",
            ),
            _n("cardiomegaly", "arterial_wall_calcification", "coronary_artery_wall_calcification"),
            rank=4.0,
            after_positive=True,
        ),
        _Stmt(
            (
                "Mediastinal vascular structures, heart contour and heart size are normal.",
                "The heart and the great vessels are normal in size and contour.",
            ),
            _n("cardiomegaly"),
            frozenset({"cardiomegaly", "arterial_wall_calcification"}),
            2.0,
        ),
        _Stmt(
            (
                "Heart size is normal.",
                "The heart is normal in size.",
                "Cardiac dimensions are within normal limits.",
                "The cardiothoracic ratio is normal.",
                "Heart contour and size are normal.",
            ),
            _n("cardiomegaly"),
            frozenset({"cardiomegaly"}),
            2.0,
        ),
        _Stmt(
            (
                "The thoracic aorta has a normal caliber and a smooth wall.",
                "The aortic wall appears smooth and regular.",
                "The thoracic aorta appears normal.",
            ),
            _n("arterial_wall_calcification"),
            frozenset({"arterial_wall_calcification"}),
            3.0,
        ),
        _Stmt(
            ("The coronary arteries appear normal.", "The coronary artery walls appear normal."),
            _n("coronary_artery_wall_calcification"),
            frozenset({"coronary_artery_wall_calcification"}),
            3.6,
        ),
        _Stmt(
            (
                "No atherosclerotic calcification is seen in the aorta or the coronary arteries.",
                "The aorta and the coronary arteries show no calcified plaques.",
            ),
            _x("arterial_wall_calcification", "coronary_artery_wall_calcification"),
            frozenset({"arterial_wall_calcification", "coronary_artery_wall_calcification"}),
            3.4,
        ),
    ),
    "pericardium": (
        _Stmt(
            ("The pericardium appears normal.", "The pericardium is of normal thickness."),
            _n("pericardial_effusion"),
            frozenset({"pericardial_effusion"}),
        ),
        _Stmt(
            (
                "Pericardial effusion or thickening was not observed.",
                "No pericardial thickening or effusion is seen.",
                "The pericardial space contains no fluid.",
            ),
            _x("pericardial_effusion"),
            frozenset({"pericardial_effusion"}),
        ),
    ),
    "esophagus": (
        _Stmt(
            (
                "The esophagogastric junction appears normal.",
                "The gastroesophageal junction lies in its normal position.",
            ),
            _n("hiatal_hernia"),
            frozenset({"hiatal_hernia"}),
            6.0,
        ),
        _Stmt(
            ("The thoracic esophagus appears normal.", "The esophagus is normal in its thoracic course."),
            _n("hiatal_hernia"),
            frozenset({"hiatal_hernia"}),
            4.0,
        ),
    ),
    "lymph_nodes": (
        _Stmt(
            (
                "Mediastinal and hilar lymph nodes are within normal size limits.",
                "Lymph nodes in the mediastinum and both hila are of normal size.",
                "Small mediastinal lymph nodes of normal size are present.",
            ),
            _n("lymphadenopathy"),
            frozenset({"lymphadenopathy"}),
            2.0,
        ),
        _Stmt(
            (
                "No lymph nodes of pathological size are seen in the prevascular, paratracheal, subcarinal"
                " or hilar stations.",
                "No enlarged lymph nodes were detected in the prevascular, paratracheal, subcarinal, hilar"
                " or axillary regions.",
                "There is no mediastinal, hilar or axillary lymphadenopathy.",
                "Prevascular, paratracheal, subcarinal and hilar lymph nodes are not enlarged.",
            ),
            _x("lymphadenopathy"),
            frozenset({"lymphadenopathy"}),
            2.0,
        ),
    ),
    "lungs": (
        _Stmt(
            (
                "Both lungs are clear.",
                "The lungs are clear and normally aerated.",
                "Lung parenchyma appears normal bilaterally.",
            ),
            _n(*_LUNG_KEYS),
            frozenset(_LUNG_KEYS),
            0.0,
        ),
        _Stmt(
            (
                "Apart from this, the lung parenchyma is normal.",
                "The remaining lung parenchyma appears normal.",
                "Otherwise, both lungs are normal.",
                "The lungs are otherwise clear.",
            ),
            _n(*_LUNG_KEYS),
            rank=30.0,
            after_positive=True,
        ),
        _Stmt(
            (
                "Both lungs are normally aerated, and the parenchyma contains no nodular or infiltrative lesion.",
                "Aeration of both lungs is normal with no nodule or infiltrate in the parenchyma.",
            ),
            {**_n(*_AIR), **_x(*_FOCAL)},
            frozenset(_AIR + _FOCAL),
        ),
        _Stmt(
            (
                "Both lungs are normally aerated.",
                "Lung aeration is normal on both sides.",
                "Pulmonary aeration is symmetric and normal.",
            ),
            _n(*_AIR),
            frozenset(_AIR + ("consolidation",)),
        ),
        _Stmt(
            (
                "No nodule, mass or active infiltration is seen in either lung.",
                "There is no mass, nodule or infiltrate in the lung parenchyma.",
                "No nodular or infiltrative lesion was detected in the lung parenchyma.",
            ),
            _x(*_FOCAL),
            frozenset(_FOCAL),
        ),
        _Stmt(
            ("Lung parenchymal attenuation is homogeneous.", "The lung parenchyma shows normal, uniform attenuation."),
            _n("mosaic_attenuation_pattern", "lung_opacity", "emphysema"),
            frozenset({"mosaic_attenuation_pattern", "lung_opacity", "emphysema", "consolidation"}),
        ),
        _Stmt(
            (
                "The bronchial tree has a normal caliber and wall thickness.",
                "Bronchial caliber and wall thickness are normal in both lungs.",
            ),
            _n("bronchiectasis", "peribronchial_thickening"),
            frozenset({"bronchiectasis", "peribronchial_thickening"}),
        ),
        _Stmt(
            ("Bronchial walls appear normal.",), _n("peribronchial_thickening"), frozenset({"peribronchial_thickening"})
        ),
        _Stmt(("The bronchi are of normal caliber.",), _n("bronchiectasis"), frozenset({"bronchiectasis"})),
        _Stmt(
            ("The pulmonary interstitium appears normal.", "The interstitial markings of both lungs are normal."),
            _n("interlobular_septal_thickening", "pulmonary_fibrotic_sequela"),
            frozenset({"interlobular_septal_thickening", "pulmonary_fibrotic_sequela"}),
        ),
        _Stmt(
            ("The interlobular septa appear normal.",),
            _n("interlobular_septal_thickening"),
            frozenset({"interlobular_septal_thickening"}),
        ),
        _Stmt(("Lung volumes are preserved.",), _n("atelectasis"), frozenset({"atelectasis"})),
    ),
    "pleura": (
        _Stmt(
            (
                "The pleural spaces are clear.",
                "Both pleural spaces appear normal.",
                "Both pleural surfaces are unremarkable.",
            ),
            _n("pleural_effusion"),
            frozenset({"pleural_effusion"}),
        ),
        _Stmt(
            (
                "Pleural effusion or thickening was not detected in either hemithorax.",
                "No pleural thickening or effusion is seen on either side.",
            ),
            _x("pleural_effusion"),
            frozenset({"pleural_effusion"}),
        ),
    ),
    "chest_wall": (
        _Stmt(
            ("The chest wall soft tissues are normal.", "Soft tissues of the chest wall appear normal."),
            _n("medical_material"),
            frozenset({"medical_material", "pectus excavatum"}),
            2.0,
        ),
        _Stmt(
            (
                "No lines, tubes or implanted devices are seen.",
                "No catheters or implanted devices are present in the thorax.",
            ),
            _x("medical_material"),
            frozenset({"medical_material"}),
            2.0,
        ),
    ),
}

# Neutral sentences (no label), by organ; included with probability ``prob`` scaled by the verbosity.
_NEUTRAL: dict[str, tuple[_Stmt, ...]] = {
    "airways": (
        _Stmt(
            (
                "The trachea and both main bronchi are patent.",
                "Trachea and main bronchi are open and in the midline.",
                "The tracheal and main bronchial lumens are patent.",
                "The trachea and both main bronchi appear normal.",
            ),
            rank=1.0,
            prob=0.9,
        ),
        _Stmt(
            (
                "No obstructive lesion is seen in the tracheal or bronchial lumens.",
                "No endoluminal obstruction of the central airways is seen.",
            ),
            rank=2.0,
            prob=0.45,
        ),
    ),
    "technique": (
        _Stmt(
            ("No prior examination was available for comparison.", "There is no previous study for comparison."),
            rank=3.0,
            prob=0.2,
        ),
        _Stmt(
            (
                "The study was evaluated in mediastinal and lung windows.",
                "Images were reviewed in soft-tissue and lung window settings.",
            ),
            rank=2.5,
            prob=0.25,
        ),
    ),
    "mediastinum": (
        _Stmt(
            ("The visualized thyroid gland is normal.", "The thyroid lobes included in the scan appear normal."),
            rank=0.5,
            prob=0.25,
        ),
        _Stmt(
            ("The pulmonary trunk is of normal width.", "The main pulmonary artery diameter is within normal limits."),
            rank=1.2,
            prob=0.3,
        ),
        _Stmt(
            (
                "The superior vena cava and the brachiocephalic veins are of normal caliber.",
                "The systemic veins of the upper mediastinum have a normal caliber.",
            ),
            rank=1.1,
            prob=0.25,
        ),
        _Stmt(("The pulmonary veins drain normally into the left atrium.",), rank=2.2, prob=0.15),
        _Stmt(
            ("Residual thymic tissue is involuted.", "The anterior mediastinal fat shows involuted thymic tissue."),
            rank=1.3,
            prob=0.12,
        ),
        _Stmt(
            (
                "The mediastinal great vessels are of normal caliber.",
                "Calibers of the main mediastinal vascular structures are normal.",
                "The main pulmonary artery has a normal diameter.",
            ),
            rank=1.0,
            prob=0.5,
        ),
        _Stmt(
            (
                "The thoracic aorta is of normal diameter.",
                "Thoracic aortic diameter is within normal limits.",
                "The ascending and descending thoracic aorta have normal diameters.",
            ),
            rank=2.8,
            prob=0.55,
        ),
    ),
    "esophagus": (
        _Stmt(
            (
                "The thoracic esophagus is normal in caliber, with no significant wall thickening.",
                "Esophageal caliber is normal and no mural thickening is seen.",
                "Thoracic esophageal caliber is within normal limits.",
            ),
            excludes=frozenset({"hiatal_hernia"}),
            rank=4.0,
            prob=0.75,
        ),
    ),
    "lymph_nodes": (
        _Stmt(
            (
                "Axillary lymph nodes are within normal limits.",
                "Both axillae show lymph nodes of normal size and appearance.",
            ),
            rank=3.0,
            prob=0.35,
        ),
        _Stmt(
            ("The supraclavicular regions are normal.", "Supraclavicular fossae appear normal on both sides."),
            rank=3.5,
            prob=0.2,
        ),
    ),
    "lungs": (
        _Stmt(
            ("The fissures are in their normal position.", "The interlobar fissures are in normal position."),
            rank=21.0,
            prob=0.15,
        ),
        _Stmt(
            ("The diaphragmatic contours are regular.", "Both hemidiaphragms have a normal contour and position."),
            rank=22.0,
            prob=0.2,
        ),
    ),
    "abdomen": (
        _Stmt(
            (
                "Upper abdominal organs included in the scan are unremarkable.",
                "The visualized upper abdominal organs appear normal.",
                "Upper abdominal sections show no abnormality.",
            ),
            excludes=frozenset({"liver cyst"}),
            rank=1.0,
            prob=0.8,
        ),
        _Stmt(
            (
                "No focal lesion is seen in the visualized liver.",
                "The liver shows no space-occupying lesion within the scan range.",
            ),
            excludes=frozenset({"liver cyst"}),
            rank=2.0,
            prob=0.45,
        ),
        _Stmt(
            (
                "Both adrenal glands are normal.",
                "The adrenal glands appear normal on both sides.",
                "Bilateral adrenal glands are normal in shape and size.",
            ),
            rank=3.0,
            prob=0.55,
        ),
        _Stmt(
            (
                "No free fluid is seen in the upper abdomen.",
                "There is no free fluid or collection in the upper abdominal sections.",
            ),
            rank=5.0,
            prob=0.2,
        ),
        _Stmt(
            (
                "The spleen, pancreas and visualized kidneys appear normal.",
                "Gallbladder, spleen and both kidneys are normal within the scanned area.",
            ),
            rank=4.0,
            prob=0.3,
        ),
    ),
    "bones": (
        _Stmt(
            (
                "Bone structures within the scan range are unremarkable.",
                "The osseous structures appear normal.",
                "Bony structures of the thorax are normal.",
            ),
            excludes=frozenset({"vertebral osteophytes", "thoracic scoliosis"}),
            rank=1.0,
            prob=0.7,
        ),
        _Stmt(
            (
                "No lytic or destructive bone lesion is seen.",
                "No lytic or sclerotic lesion is present in the visualized bones.",
            ),
            rank=2.0,
            prob=0.5,
        ),
        _Stmt(
            ("Vertebral body heights are preserved.", "Thoracic vertebral body heights are maintained."),
            rank=3.0,
            prob=0.55,
        ),
        _Stmt(
            (
                "The shoulder girdles included in the scan are normal.",
                "Both shoulder joints appear normal within the scan range.",
            ),
            rank=5.0,
            prob=0.15,
        ),
        _Stmt(
            ("No rib fracture is seen within the scan range.", "The visualized ribs and sternum are intact."),
            rank=4.0,
            prob=0.25,
        ),
    ),
}

_VARIANT_TEXT: dict[str, tuple[str, float, tuple[str, ...], tuple[str, ...]]] = {
    "azygos fissure": (
        "lungs",
        15.0,
        (
            "An azygos fissure, a normal anatomical variant, is seen in the right upper lobe.",
            "An azygos lobe is noted as a normal variant.",
            "Incidental azygos fissure in the right upper lobe.",
        ),
        ("Azygos fissure (anatomical variant).", "Azygos lobe, an anatomical variant."),
    ),
    "pectus excavatum": (
        "chest_wall",
        1.0,
        (
            "Pectus excavatum deformity of the anterior chest wall is noted.",
            "The sternum is depressed, consistent with pectus excavatum.",
            "There is a pectus excavatum deformity.",
        ),
        ("Pectus excavatum.", "Pectus excavatum deformity."),
    ),
    "thoracic scoliosis": (
        "bones",
        4.0,
        (
            "There is a scoliosis of the thoracic spine.",
            "Mild scoliosis of the thoracic spine is noted.",
            "The thoracic spine shows a scoliotic curvature.",
        ),
        ("Thoracic scoliosis.", "Scoliosis of the thoracic spine."),
    ),
}

# Explicit negations: (term, plural) pairs per finding and an optional location suffix per organ.
_NEG_TERMS: dict[str, tuple[tuple[str, bool], ...]] = {
    "medical_material": (
        ("medical devices", True),
        ("catheters, tubes or implanted devices", True),
        ("foreign medical material", False),
    ),
    "arterial_wall_calcification": (
        ("arterial wall calcification", False),
        ("atherosclerotic calcification in the aortic wall", False),
        ("calcified plaque in the thoracic aorta", False),
    ),
    "cardiomegaly": (("cardiomegaly", False), ("cardiac enlargement", False)),
    "pericardial_effusion": (
        ("pericardial effusion", False),
        ("pericardial effusion or thickening", False),
        ("fluid in the pericardial space", False),
    ),
    "coronary_artery_wall_calcification": (
        ("coronary artery calcification", False),
        ("calcified plaque in the coronary arteries", False),
        ("coronary artery wall calcification", False),
    ),
    "hiatal_hernia": (("hiatal hernia", False), ("hiatus hernia", False)),
    "lymphadenopathy": (
        ("mediastinal or hilar lymphadenopathy", False),
        ("enlarged mediastinal lymph nodes", True),
        ("lymph nodes of pathological size", True),
    ),
    "emphysema": (("emphysema", False), ("emphysematous change", False)),
    "atelectasis": (("atelectasis", False), ("atelectatic change", False)),
    "lung_nodule": (("pulmonary nodules", True), ("nodular lesion", False), ("lung nodule", False)),
    "lung_opacity": (("ground-glass opacity", False), ("parenchymal opacities", True), ("lung opacity", False)),
    "pulmonary_fibrotic_sequela": (
        ("fibrotic sequelae", True),
        ("pulmonary fibrosis", False),
        ("parenchymal scarring", False),
    ),
    "pleural_effusion": (
        ("pleural effusion", False),
        ("pleural effusion or thickening", False),
        ("fluid in either pleural space", False),
    ),
    "mosaic_attenuation_pattern": (("mosaic attenuation", False), ("mosaic attenuation pattern", False)),
    "peribronchial_thickening": (("peribronchial thickening", False), ("bronchial wall thickening", False)),
    "consolidation": (("consolidation", False), ("airspace consolidation", False), ("pneumonic consolidation", False)),
    "bronchiectasis": (("bronchiectasis", False), ("bronchial dilatation", False)),
    "interlobular_septal_thickening": (("interlobular septal thickening", False), ("septal thickening", False)),
}
_NEG_WHERE: dict[str, tuple[str, ...]] = {
    "lungs": ("", "", " in either lung", " in the lung parenchyma"),
    "pleura": ("", " on either side"),
}
_NEG_SINGLE: tuple[str, ...] = (
    "No {t}{w}.",
    "No {t} {is} seen{w}.",
    "{T} {was} not observed{w}.",
    "{T} {was} not detected{w}.",
    "There is no evidence of {t}{w}.",
    "There {is} no {t}{w}.",
    "No {t} {was} identified{w}.",
    "No evidence of {t} is seen{w}.",
)
_NEG_GROUP: tuple[str, ...] = (
    "No {or_list} {is} seen{w}.",
    "There is no evidence of {or_list}{w}.",
    "{And_list} were not observed{w}.",
    "No {or_list} {was} detected{w}.",
)

# Rank of each finding inside its organ (the order of statements).
_RANK: dict[str, float] = {
    "medical_material": 2.0,
    "cardiomegaly": 2.0,
    "arterial_wall_calcification": 3.2,
    "coronary_artery_wall_calcification": 3.6,
    "pericardial_effusion": 1.0,
    "hiatal_hernia": 5.0,
    "lymphadenopathy": 1.0,
    "pleural_effusion": 1.0,
}

_CONTRAST_TECHNIQUE = {
    True: (
        "The examination was performed after intravenous contrast administration.",
        "Contrast-enhanced CT of the thorax was obtained.",
        "Images were acquired following intravenous contrast injection.",
    ),
    False: (
        "The examination was performed without intravenous contrast.",
        "Non-contrast CT of the thorax was obtained.",
        "Unenhanced images of the thorax were acquired.",
    ),
}
_NONCONTRAST_CAVEAT = (
    "The mediastinum could not be assessed optimally because the examination was performed"
    " without intravenous contrast.",
    "As no intravenous contrast was given, evaluation of the mediastinal structures is limited.",
    "Mediastinal evaluation is suboptimal in this unenhanced study.",
)
_NONCONTRAST_CAVEAT_SHORT = (  # after a technique sentence that already says there was no contrast
    "Evaluation of the mediastinal structures is therefore limited.",
    "The mediastinum could therefore not be assessed optimally.",
)
_CAVEAT_PREFIX = ("Within these limits, ", "As far as can be assessed, ", "Within the limits of the unenhanced study, ")
_LUNG_INTRO = (
    "On lung window images, ",
    "In the lung parenchyma window, ",
    "On the lung window assessment, ",
    "In the evaluation of both lungs, ",
)
_NORMAL_IMPRESSION = (
    "Thoracic CT examination within normal limits.",
    "No significant abnormality on this chest CT.",
    "Normal CT of the thorax.",
    "Findings within normal limits.",
    "Unremarkable chest CT examination.",
    "No acute or significant thoracic pathology.",
    "Chest CT within normal limits.",
)
_INCIDENTAL_IMPRESSION = {
    "liver cyst": (
        "Hypodense liver lesion, most likely a simple cyst.",
        "Hepatic cyst.",
        "Simple-appearing cyst in the liver.",
    ),
    "vertebral osteophytes": (
        "Degenerative changes of the thoracic spine.",
        "Degenerative osteophytes of the thoracic vertebrae.",
        "Thoracic spondylosis.",
    ),
}


# ----------------------------------------------------------------------------------------------------------------
# The composer
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class _Item:
    rank: float
    text: str
    tags: dict[str, str]
    caveat: bool = False
    more: list[str] = field(default_factory=list)  # detail sentences that follow ``text`` (same tags)


class _Composer:
    """Writes one report; every random draw comes from ``rng``, in a fixed order."""

    def __init__(
        self, labels: Mapping[str, Any], details: Mapping[str, Any], study: Mapping[str, Any], rng: np.random.Generator
    ):
        unknown = sorted(set(labels) - set(FINDING_KEYS))
        if unknown:
            raise ValueError(f"unknown finding keys {unknown}; known: {list(FINDING_KEYS)}")
        self.rng = rng
        self.labels = {k: int(bool(labels.get(k, 0))) for k in FINDING_KEYS}
        self.present = [k for k in FINDING_KEYS if self.labels[k]]
        self.details = {k: dict((details or {}).get(k) or {}) for k in self.present}
        self.study = dict(study or {})
        self.variants = [v for v in (self.study.get("variants") or ()) if v]
        self.incidental = [v for v in (self.study.get("incidental") or ()) if v]
        self.context = frozenset(self.present) | frozenset(self.variants) | frozenset(self.incidental)
        self.verbosity = float(rng.beta(*_VERBOSITY_BETA))
        # terse reports negate less and rely on normal statements; NEGATION_PROB on average over reports
        negation_prob = float(np.clip(NEGATION_PROB + 0.7 * (self.verbosity - _MEAN_VERBOSITY), 0.0, 1.0))
        draws = rng.random((len(FINDING_KEYS), 2))
        self.hedged = [
            k for k, (h, _) in zip(FINDING_KEYS, draws) if self.labels[k] and k not in _NOT_HEDGED and h < HEDGE_PROB
        ]
        self.explicit = [k for k, (_, e) in zip(FINDING_KEYS, draws) if not self.labels[k] and e < negation_prob]
        self.contrast_stated = False
        self.phrases: dict[str, _Phrases] = {}
        for key in self.present:
            if key in _PHRASES:
                self.phrases[key] = _PHRASES[key](rng, self.details[key])
            elif key == "atelectasis":
                effusion = self.labels["pleural_effusion"] == 1 and "pleural_effusion" not in self.hedged
                self.phrases[key] = _atelectasis(rng, self.details[key], effusion)

    # -- helpers -------------------------------------------------------------------------------------------------
    def chance(self, base: float) -> bool:
        """A draw whose probability grows with the verbosity (``base`` at average verbosity)."""
        return bool(self.rng.random() < min(1.0, base * (0.15 + 1.7 * self.verbosity)))

    def pick(self, options: Sequence[Any], length: Callable[[Any], int] = len) -> Any:
        """A phrasing; terse reports (low verbosity) prefer the shorter half of the options."""
        if len(options) > 1 and self.rng.random() > self.verbosity:
            options = sorted(options, key=length)[: (len(options) + 1) // 2]
        return _pick(self.rng, options)

    def polarity(self, key: str) -> str:
        return "hedged" if key in self.hedged else "present"

    def finding_sentences(self, key: str, rank: float) -> list[_Item]:
        """The statement of a present finding (hedged or definite, with optional detail sentences)."""
        phrases = self.phrases[key]
        tags = {key: self.polarity(key)}
        if key == "atelectasis" and "adjacent to the pleural effusion" in " ".join(phrases.stated):
            tags["pleural_effusion"] = "present"
        if key in self.hedged:
            return [_Item(rank, _fill_hedge(_pick(self.rng, _HEDGE_SENTENCES), self.rng, phrases), tags)]
        text = self.pick(phrases.stated)
        if key == "atelectasis" and "adjacent to the pleural effusion" not in text:
            tags.pop("pleural_effusion", None)
        more = phrases.always + [extra for extra in phrases.extra if self.chance(0.5)]
        return [_Item(rank, text, tags, more=more)]

    def negation(self, keys: list[str], organ: str) -> str:
        """One explicit negation of one or several absent findings."""
        where = self.pick(_NEG_WHERE.get(organ, ("",)))
        terms = [self.pick(_NEG_TERMS[k], lambda term: len(term[0])) for k in keys]
        if len(keys) == 1:
            key = keys[0]
            if self.rng.random() < 0.25:
                return _pick(self.rng, finding_by_key(key).negative)
            term, plural = terms[0]
            template = self.pick(_NEG_SINGLE)
            return template.format(
                t=term, T=_cap(term), w=where, **{"is": "are" if plural else "is", "was": "were" if plural else "was"}
            )
        names = [t for t, _ in terms]
        template = self.pick(_NEG_GROUP)
        plural = terms[-1][1]
        return template.format(
            or_list=_join(names, "or"),
            And_list=_cap(_join(names, "and")),
            w=where,
            **{"is": "are" if plural else "is", "was": "were" if plural else "was"},
        )

    def absent_statements(self, organ: str, keys: list[str]) -> list[_Item]:
        """Cover the absent findings of an organ: normal statements, composite and explicit negations."""
        absent = [k for k in keys if not self.labels[k]]
        if not absent:
            return []
        generic = [k for k in absent if k in self.explicit and self.rng.random() < 0.5]
        todo_explicit = [k for k in absent if k in self.explicit and k not in generic]
        todo_implicit = [k for k in absent if k not in self.explicit]
        has_positive = any(self.labels[k] for k in keys)
        candidates = [
            s
            for s in _NORMALS.get(organ, ())
            if not (s.excludes & self.context) and (has_positive or not s.after_positive)
        ]
        items: list[_Item] = []
        while candidates and (todo_explicit or todo_implicit):
            gains = [
                sum(
                    1
                    for k, p in s.tags.items()
                    if (k in todo_implicit and p == "normal") or (k in todo_explicit and p == "negated")
                )
                for s in candidates
            ]
            best = max(gains)
            if best == 0:
                break
            choice = _pick(self.rng, [i for i, g in enumerate(gains) if g == best])
            stmt = candidates.pop(choice)
            tags = {k: p for k, p in stmt.tags.items() if not self.labels[k]}
            if organ == "lungs":
                rank = stmt.rank if stmt.rank < 1.0 or stmt.after_positive else 20.0
            else:
                rank = stmt.rank if stmt.after_positive else min(_RANK.get(k, 5.0) for k in tags)
            items.append(_Item(rank, self.pick(stmt.texts), tags))
            todo_explicit = [k for k in todo_explicit if stmt.tags.get(k) != "negated"]
            generic = [k for k in generic if stmt.tags.get(k) != "negated"]
            todo_implicit = [k for k in todo_implicit if k not in stmt.tags]
        leftover = [k for k in absent if k in generic or k in todo_explicit or k in todo_implicit]
        while leftover:
            size = 1
            if len(leftover) > 1 and self.rng.random() < 0.9 - 0.8 * self.verbosity:
                size = (
                    min(6, len(leftover))
                    if self.rng.random() > self.verbosity
                    else int(self.rng.integers(2, min(6, len(leftover)) + 1))
                )
            group, leftover = leftover[:size], leftover[size:]
            rank = 20.0 if organ == "lungs" else min(_RANK.get(k, 5.0) for k in group) + 0.05
            items.append(_Item(rank, self.negation(group, organ), {k: "negated" for k in group}))
        return items

    def neutral(self, organ: str) -> list[_Item]:
        return [
            _Item(s.rank, self.pick(s.texts), {})
            for s in _NEUTRAL.get(organ, ())
            if self.chance(s.prob) and not (s.excludes & self.context)
        ]

    def devices(self, organ: str) -> list[_Item]:
        if not self.labels["medical_material"]:
            return []
        detail = self.details.get("medical_material", {})
        devices = [d for d in (detail.get("devices") or ()) if d]
        side = detail.get("side") or "left"
        items = []
        if not devices and organ == "chest_wall":
            text = _pick(
                self.rng,
                ("Medical devices are noted in the thorax.", "Postoperative medical material is seen in the thorax."),
            )
            items.append(_Item(0.5, text, {"medical_material": "present"}))
        for device in devices:
            where, rank, texts, _ = _DEVICE_TEXT.get(device, ("chest_wall", 0.5, (f"A {device} is seen.",), device))
            if where == organ:
                items.append(_Item(rank, _pick(self.rng, texts).format(side=side), {"medical_material": "present"}))
        return items

    # -- organs --------------------------------------------------------------------------------------------------
    def technique(self) -> list[_Item]:
        items = []
        contrast = self.study.get("contrast")
        if contrast is not None and self.chance(0.45):
            items.append(_Item(0.0, _pick(self.rng, _CONTRAST_TECHNIQUE[bool(contrast)]), {}))
            self.contrast_stated = True
        thickness, kernel = self.study.get("slice_thickness_mm"), self.study.get("kernel")
        if (thickness or kernel) and self.chance(0.35):
            k = {"soft tissue": "soft-tissue", "lung": "lung"}.get(str(kernel), str(kernel)) if kernel else ""
            t = _mm(thickness) if thickness else ""
            if t and k:
                text = _pick(
                    self.rng,
                    (
                        f"Axial images were reconstructed at {t} mm slice thickness with a {k} kernel.",
                        f"Images were reviewed as {t} mm sections reconstructed with a {k} kernel.",
                        f"Sections of {t} mm thickness reconstructed with a {k} algorithm were evaluated.",
                    ),
                )
            elif t:
                text = f"Axial images were reconstructed at {t} mm slice thickness."
            else:
                text = f"Images were reconstructed with a {k} kernel."
            items.append(_Item(1.0, text, {}))
        arms = self.study.get("arms")
        if arms == "down" and self.chance(0.4):
            items.append(
                _Item(
                    2.0,
                    _pick(
                        self.rng,
                        (
                            "The arms were positioned alongside the body, causing streak artifacts.",
                            "Streak artifacts from the arms held at the sides slightly degrade image quality.",
                            "Image quality is mildly reduced by beam-hardening artifacts from the lowered arms.",
                        ),
                    ),
                    {},
                )
            )
        elif arms == "up" and self.chance(0.1):
            items.append(_Item(2.0, "The scan was obtained with the arms raised above the head.", {}))
        return items

    def organ_items(self, organ: str) -> list[_Item]:
        """The unordered statements of one organ."""
        keys = [f.key for f in FINDINGS if f.organ == organ]
        items: list[_Item] = []
        if organ == "technique":
            return self.technique() + self.neutral(organ)
        items += self.neutral(organ)
        items += self.devices(organ)
        if organ == "mediastinum":
            keys = ["cardiomegaly", "arterial_wall_calcification", "coronary_artery_wall_calcification"]
            if self.study.get("contrast") is False and self.chance(0.5):
                caveats = _NONCONTRAST_CAVEAT_SHORT if self.contrast_stated else _NONCONTRAST_CAVEAT
                items.append(_Item(-1.0, _pick(self.rng, caveats), {}, caveat=True))
        if organ == "chest_wall":
            keys = ["medical_material"]
            if self.study.get("sex") == "female" and self.chance(0.15):
                items.append(
                    _Item(
                        3.0,
                        _pick(
                            self.rng,
                            (
                                "Breast tissue appears symmetric.",
                                "Both breasts appear unremarkable within the scan range.",
                            ),
                        ),
                        {},
                    )
                )
        if organ == "lungs":
            ranks = {k: float(i + 1) for i, k in enumerate(keys)}
            if self.rng.random() < 0.5:
                order = self.rng.permutation(len(keys))
                ranks = {k: float(order[i] + 1) for i, k in enumerate(keys)}
        else:
            ranks = {k: _RANK.get(k, 5.0) for k in keys}
        combined = (
            organ == "mediastinum"
            and self.labels["arterial_wall_calcification"]
            and self.labels["coronary_artery_wall_calcification"]
            and not {"arterial_wall_calcification", "coronary_artery_wall_calcification"} & set(self.hedged)
            and self.rng.random() < 0.4
        )
        for key in keys:
            if not self.labels[key] or key == "medical_material":
                continue
            if combined and key == "coronary_artery_wall_calcification":
                continue
            if combined and key == "arterial_wall_calcification":
                where = _vessels(self.rng, self.details["coronary_artery_wall_calcification"].get("vessels"))
                text = _pick(
                    self.rng,
                    (
                        f"Calcified atherosclerotic plaques are seen in the thoracic aorta and in {where}.",
                        f"There are atherosclerotic calcifications in the walls of the aorta and of {where}.",
                        "Calcific atheromatous plaques are present in the aorta and the coronary arteries.",
                    ),
                )
                tags = {"arterial_wall_calcification": "present", "coronary_artery_wall_calcification": "present"}
                items.append(_Item(ranks[key], text, tags))
                continue
            items += self.finding_sentences(key, ranks[key])
        items += self.absent_statements(organ, keys)
        if organ == "lungs" and self.rng.random() < 0.3:  # normal statements before the positive ones
            for item in items:
                if 20.0 <= item.rank < 30.0:
                    item.rank = -1.0
        for variant in self.variants:
            where, rank, texts, _ = _VARIANT_TEXT.get(variant, ("bones", 9.0, (f"{_cap(variant)} is noted.",), ()))
            if where == organ:
                items.append(_Item(rank, _pick(self.rng, texts), {}))
        if organ == "abdomen" and "liver cyst" in self.incidental:
            items.append(_Item(2.0, self.liver_cyst(), {}))
        if organ == "bones" and "vertebral osteophytes" in self.incidental:
            items.append(
                _Item(
                    1.5,
                    _pick(
                        self.rng,
                        (
                            "Degenerative osteophytes are seen at the thoracic vertebral endplates.",
                            "Marginal osteophytes indicate degenerative change of the thoracic spine.",
                            "There are degenerative spurs at the vertebral body corners.",
                        ),
                    ),
                    {},
                )
            )
        return items

    def liver_cyst(self) -> str:
        info = (self.study.get("incidental_details") or {}).get("liver cyst") or {}
        size, lobe = info.get("size"), info.get("lobe")
        mm = f"{_mm(size)} mm " if size else ""
        where = f"the {lobe} lobe of the liver" if lobe else "the liver"
        return _pick(
            self.rng,
            (
                f"A well-circumscribed {mm}hypodense lesion is seen in {where}, most likely a simple cyst.",
                f"There is a {mm}hypodense lesion with fluid attenuation in {where} (cyst?).",
                f"A small {mm}cyst is noted in {where}.",
            ),
        )

    # -- sections ------------------------------------------------------------------------------------------------
    def findings(self) -> list[ReportSentence]:
        out: list[ReportSentence] = []
        for organ in ORGANS:
            items = self.organ_items(organ)
            jitter = self.rng.uniform(0.0, 0.6, size=len(items))
            items = [items[i] for i in np.argsort([it.rank + j for it, j in zip(items, jitter)], kind="stable")]
            prefix = ""
            lung_intro = organ == "lungs" and self.chance(0.5)
            for item in items:
                if item.caveat:
                    out.append(ReportSentence(_tidy(item.text), "findings", organ, {}))
                    prefix = _pick(self.rng, _CAVEAT_PREFIX) if self.rng.random() < 0.6 else ""
                    continue
                if lung_intro:
                    prefix, lung_intro = _pick(self.rng, _LUNG_INTRO), False
                text = item.text.strip()
                if prefix:
                    text, prefix = prefix + text[:1].lower() + text[1:], ""
                out.append(ReportSentence(_tidy(text), "findings", organ, dict(item.tags)))
                out += [ReportSentence(_tidy(more), "findings", organ, dict(item.tags)) for more in item.more]
        return out

    def impression(self) -> list[ReportSentence]:
        listed = list(self.present)
        if len(listed) > 1:
            drop = 0.35 * (1.0 - self.verbosity)  # terse impressions leave out minor findings more often
            keep = [k for k in listed if k not in _MINOR or self.rng.random() > drop]
            listed = keep or listed[:1]
        phrases: list[tuple[str, dict[str, str]]] = []
        combined = (
            "arterial_wall_calcification" in listed
            and "coronary_artery_wall_calcification" in listed
            and not {"arterial_wall_calcification", "coronary_artery_wall_calcification"} & set(self.hedged)
            and self.rng.random() < 0.6
        )
        for key in listed:
            if combined and key == "coronary_artery_wall_calcification":
                continue
            if combined and key == "arterial_wall_calcification":
                text = _pick(
                    self.rng,
                    (
                        "Atherosclerotic calcifications in the thoracic aorta and the coronary arteries.",
                        "Calcified plaques in the aortic and coronary artery walls.",
                        "Aortic and coronary atherosclerosis.",
                    ),
                )
                phrases.append((text, {key: "present", "coronary_artery_wall_calcification": "present"}))
                continue
            if key == "medical_material":
                devices = [d for d in (self.details[key].get("devices") or ()) if d]
                names = [(_DEVICE_TEXT[d][3] if d in _DEVICE_TEXT else d) for d in devices]
                if devices == ["sternotomy wires"]:
                    text = _pick(self.rng, ("Status post median sternotomy.", "Sternotomy wires."))
                elif names:
                    text = _pick(self.rng, (f"{_cap(_join(names))} in place.", f"{_cap(_join(names))} in situ."))
                else:
                    text = "Postoperative medical material in the thorax."
                phrases.append((text, {key: "present"}))
                continue
            p = self.phrases[key]
            if key in self.hedged:
                text = _fill_hedge(_pick(self.rng, _HEDGE_IMPRESSIONS), self.rng, p)
            else:
                text = _cap(self.pick(p.np)) + "."
            phrases.append((text, {key: self.polarity(key)}))
        if len(phrases) > 2 and self.rng.random() < 0.25:
            order = self.rng.permutation(len(phrases))
            phrases = [phrases[i] for i in order]
        out = [ReportSentence(_tidy(t), "impression", "impression", tags) for t, tags in phrases]
        if not out:
            out.append(
                ReportSentence(_pick(self.rng, _NORMAL_IMPRESSION), "impression", "impression", _n(*FINDING_KEYS))
            )
        if self.present and self.chance(0.12):
            out.append(
                ReportSentence(
                    self.pick(
                        (
                            "Correlation with clinical and laboratory findings is recommended.",
                            "Clinical correlation is recommended.",
                            "Comparison with previous examinations is recommended, if available.",
                        )
                    ),
                    "impression",
                    "impression",
                    {},
                )
            )
        for name in self.incidental:
            if name in _INCIDENTAL_IMPRESSION:
                out.append(
                    ReportSentence(_pick(self.rng, _INCIDENTAL_IMPRESSION[name]), "impression", "impression", {})
                )
        for name in self.variants:
            if name in _VARIANT_TEXT and self.rng.random() < (0.1 if name == "azygos fissure" else 0.35):
                out.append(ReportSentence(_pick(self.rng, _VARIANT_TEXT[name][3]), "impression", "impression", {}))
        return out


def compose_report(
    labels: Mapping[str, int],
    details: Mapping[str, Mapping[str, Any]] | None,
    study: Mapping[str, Any] | None,
    rng: np.random.Generator,
) -> tuple[str, list[ReportSentence]]:
    """Write a report and return it with its tagged sentences (see the module docstring for the label rule).

    Args:
        labels: ``{finding_key: 0 | 1}`` (missing keys count as 0).
        details: per present finding, its details (missing fields give less specific phrasing).
        study: technique, anatomy and incidental facts (all optional).
        rng: the only source of randomness.

    Returns:
        ``("FINDINGS: ...\\nIMPRESSION: ...", sentences)``.

    Raises:
        ValueError: for an unknown finding key.
    """
    composer = _Composer(labels, details or {}, study or {}, rng)
    sentences = composer.findings() + composer.impression()
    findings = " ".join(s.text for s in sentences if s.section == "findings")
    impression = " ".join(s.text for s in sentences if s.section == "impression")
    return f"FINDINGS: {findings}\nIMPRESSION: {impression}", sentences


def write_report(
    labels: Mapping[str, int],
    details: Mapping[str, Mapping[str, Any]] | None,
    study: Mapping[str, Any] | None,
    rng: np.random.Generator,
) -> str:
    """Write a realistic chest-CT report ``"FINDINGS: ...\\nIMPRESSION: ..."`` (see :func:`compose_report`)."""
    return compose_report(labels, details, study, rng)[0]


# ----------------------------------------------------------------------------------------------------------------
# Random inputs (tests, length calibration, demos)
# ----------------------------------------------------------------------------------------------------------------


def _random_details(key: str, rng: np.random.Generator) -> dict[str, Any]:
    def subset(options: Sequence[str], low: int, high: int) -> list[str]:
        picked = rng.choice(len(options), int(rng.integers(low, high + 1)), replace=False)
        return [options[i] for i in sorted(picked)]

    severity = str(_pick(rng, ("mild", "moderate", "severe")))
    side = str(_pick(rng, ("left", "right", "bilateral")))
    lobe = str(_pick(rng, LOBES))
    if key == "medical_material":
        return {"devices": subset(DEVICES, 1, 2), "side": str(_pick(rng, ("left", "right")))}
    if key == "arterial_wall_calcification":
        return {"plaques": int(rng.integers(1, 12)), "severity": severity}
    if key in ("cardiomegaly",):
        return {"severity": severity}
    if key == "pericardial_effusion":
        return {"thickness_mm": int(rng.integers(3, 25)), "severity": severity}
    if key == "coronary_artery_wall_calcification":
        return {"vessels": subset(_CORONARY_VESSELS, 1, 3), "severity": severity}
    if key == "hiatal_hernia":
        size = int(rng.integers(15, 70))
        return {"size": size, "severity": "small" if size < 40 else "large"}
    if key == "lymphadenopathy":
        return {"stations": subset(STATIONS, 1, 3), "size": int(rng.integers(11, 30))}
    if key == "emphysema":
        return {
            "kind": str(_pick(rng, ("centrilobular", "paraseptal", "panlobular"))),
            "zone": str(_pick(rng, ("upper", "diffuse"))),
            "bullae": int(rng.integers(0, 4)),
            "severity": severity,
        }
    if key == "atelectasis":
        return {"lobe": lobe, "kind": str(_pick(rng, ("subsegmental", "subsegmental", "passive", "lobar")))}
    if key == "lung_nodule":
        return {
            "lobe": lobe,
            "size": int(rng.integers(3, 25)),
            "count": int(_pick(rng, (1, 1, 1, 2, 3))),
            "kind": str(_pick(rng, ("solid", "solid", "subsolid"))),
        }
    if key == "lung_opacity":
        lobes = subset(LOBES, 1, 3)
        sides = sorted({lobe.split()[0] for lobe in lobes})
        return {"lobes": lobes, "side": sides[0] if len(sides) == 1 else "bilateral", "kind": "ground-glass"}
    if key == "pulmonary_fibrotic_sequela":
        return {"side": side, "zone": str(_pick(rng, ("apical", "basal")))}
    if key == "pleural_effusion":
        return {"side": side, "severity": severity}
    if key == "mosaic_attenuation_pattern":
        return {"side": side, "zone": str(_pick(rng, ("diffuse", "lower")))}
    if key == "peribronchial_thickening":
        return {"side": side, "zone": str(_pick(rng, ("lower", "diffuse")))}
    if key == "consolidation":
        return {
            "lobe": lobe,
            "volume_ml": round(float(rng.uniform(5, 400)), 1),
            "air_bronchogram": bool(rng.random() < 0.5),
        }
    if key == "bronchiectasis":
        return {"lobe": lobe, "kind": str(_pick(rng, ("cylindrical", "varicose")))}
    if key == "interlobular_septal_thickening":
        return {"side": side, "zone": str(_pick(rng, ("basal", "diffuse")))}
    return {}


def random_case(
    rng: np.random.Generator, prevalence: Mapping[str, float] | None = None
) -> tuple[dict[str, int], dict[str, dict[str, Any]], dict[str, Any]]:
    """Random ``(labels, details, study)`` inputs of :func:`write_report`.

    Labels are independent Bernoulli draws with each finding's ``prevalence`` (real-report marginals by default);
    details and study facts are drawn uniformly among plausible values.
    """
    prevalence = {f.key: f.prevalence for f in FINDINGS} | dict(prevalence or {})
    labels = {k: int(rng.random() < prevalence[k]) for k in FINDING_KEYS}
    details = {k: _random_details(k, rng) for k in FINDING_KEYS if labels[k]}
    study: dict[str, Any] = {
        "contrast": bool(rng.random() < 0.4),
        "slice_thickness_mm": float(_pick(rng, (1.0, 1.25, 1.5, 2.0, 3.0, 5.0))),
        "kernel": str(_pick(rng, ("soft tissue", "lung"))),
        "arms": str(_pick(rng, ("up", "up", "down"))),
        "sex": str(_pick(rng, ("female", "male"))),
        "variants": [v for v in VARIANTS if rng.random() < 0.08],
        "incidental": [v for v in INCIDENTALS if rng.random() < 0.15],
    }
    return labels, details, study
