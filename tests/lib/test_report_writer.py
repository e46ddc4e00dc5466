"""Tests of common/data/findings.py (the CT-RATE vocabulary) and common/data/report_writer.py (synthetic CT reports)."""

from __future__ import annotations

import csv
import re
import string
from pathlib import Path

import numpy as np
import pytest

from common.data.findings import FINDING_KEYS, FINDING_NAMES, FINDINGS, ORGANS, Finding, finding_by_key
from common.data.report_writer import (
    HEDGE_PROB,
    NEGATION_PROB,
    POLARITY_LABELS,
    ReportSentence,
    compose_report,
    labels_from_sentences,
    random_case,
    write_report,
)
from common.transforms.text import extract_sections

REPORTS_CSV = Path(__file__).resolve().parents[3] / "shared" / "data" / "reports" / "chest_ct_reports_labeled.csv"
CT_RATE_KEYS = (
    "medical_material",
    "arterial_wall_calcification",
    "cardiomegaly",
    "pericardial_effusion",
    "coronary_artery_wall_calcification",
    "hiatal_hernia",
    "lymphadenopathy",
    "emphysema",
    "atelectasis",
    "lung_nodule",
    "lung_opacity",
    "pulmonary_fibrotic_sequela",
    "pleural_effusion",
    "mosaic_attenuation_pattern",
    "peribronchial_thickening",
    "consolidation",
    "bronchiectasis",
    "interlobular_septal_thickening",
)
NUM_CASES = 300

# A deliberately simple reader: a finding is mentioned when its keywords match; the mention is negative when the
# sentence has a negation or a normal-type word (hedge phrases such as "cannot be excluded" are removed first).
_ALL = re.IGNORECASE
KEYWORDS: dict[str, tuple[re.Pattern[str], ...]] = {
    "medical_material": (
        re.compile(
            r"pacemaker|catheter|sternotomy|endotracheal|\bdevices?\b|\btubes?\b|medical material|\bport\b"
            r"|central (venous )?line",
            _ALL,
        ),
    ),
    "arterial_wall_calcification": (
        re.compile(r"aort|arterial", _ALL),
        re.compile(r"calcif|plaque|atheroscl|atherom", _ALL),
    ),
    "cardiomegaly": (
        re.compile(
            r"cardiomegal|\b(heart|cardiac)\b[^.]*\benlarg|\benlarg\w*[^.]*\b(heart|cardiac)\b"
            r"|(heart|cardiac) size is increased"
            r"|cardiothoracic ratio (is increased|exceeds)",
            _ALL,
        ),
    ),
    "pericardial_effusion": (re.compile(r"pericard", _ALL), re.compile(r"effusion|fluid", _ALL)),
    "coronary_artery_wall_calcification": (
        re.compile(r"coronar", _ALL),
        re.compile(r"calcif|plaque|atheroscl|atherom", _ALL),
    ),
    "hiatal_hernia": (re.compile(r"hiat|hernia", _ALL),),
    "lymphadenopathy": (
        re.compile(
            r"lymphadenopath|(enlarged|pathological|borderline)[^.]*lymph|lymph[^.]*(enlarged|pathological|borderline)",
            _ALL,
        ),
    ),
    "emphysema": (re.compile(r"emphysem|bulla|bullous", _ALL),),
    "atelectasis": (re.compile(r"atelecta|collaps", _ALL),),
    "lung_nodule": (re.compile(r"nodul", _ALL),),
    "lung_opacity": (re.compile(r"ground.glass|opaci|hazy|infiltrat", _ALL),),
    "pulmonary_fibrotic_sequela": (re.compile(r"fibro|sequel|scar", _ALL),),
    "pleural_effusion": (re.compile(r"pleura\b|pleural", _ALL), re.compile(r"effusion|fluid", _ALL)),
    "mosaic_attenuation_pattern": (re.compile(r"mosaic", _ALL),),
    "peribronchial_thickening": (
        re.compile(r"peribronch|bronch\w* walls?[^.]*thick|thicken\w*[^.]*bronch\w* wall", _ALL),
    ),
    "consolidation": (re.compile(r"consolid|pneumon|infiltrat|airspace", _ALL),),
    "bronchiectasis": (re.compile(r"bronchiect|bronch\w*[^.]*dilat|dilat\w*[^.]*bronch", _ALL),),
    "interlobular_septal_thickening": (re.compile(r"\bsepta", _ALL),),
}
HEDGE_PHRASES = re.compile(r"cannot be (excluded|ruled out)", _ALL)
HEDGE = re.compile(
    r"cannot be (excluded|ruled out)|possib|likely|suggestive|suspect|may be compatible|\?|question|probabl", _ALL
)
NEGATION = re.compile(r"\b(no|not|without|neither|nor|none|absent)\b|n't|cannot", _ALL)
NORMAL = re.compile(
    r"\b(normal|normally|unremarkable|preserved|patent|clear|maintained|homogeneous|smooth|regular)\b", _ALL
)


def reader(sentence: str) -> dict[str, int]:
    """``{finding_key: label}`` for the findings a keyword reader sees in ``sentence``."""
    unhedged = HEDGE_PHRASES.sub("", sentence)
    negative = bool(NEGATION.search(unhedged) or NORMAL.search(unhedged))
    return {
        key: 0 if negative else 1
        for key, patterns in KEYWORDS.items()
        if all(pattern.search(sentence) for pattern in patterns)
    }


def _cases(n: int = NUM_CASES, seed: int = 0) -> list[tuple[dict, dict, dict, str, list[ReportSentence]]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        labels, details, study = random_case(rng)
        text, sentences = compose_report(labels, details, study, rng)
        out.append((labels, details, study, text, sentences))
    return out


@pytest.fixture(scope="module")
def cases() -> list[tuple[dict, dict, dict, str, list[ReportSentence]]]:
    return _cases()


# ------------------------------------------------------------------------------------------------ vocabulary


def test_findings_are_the_ct_rate_labels_in_order() -> None:
    assert FINDING_KEYS == CT_RATE_KEYS
    assert len(FINDING_NAMES) == 18 and FINDING_NAMES[0] == "Medical material"
    for finding in FINDINGS:
        assert re.sub(r"[^a-z]+", "_", finding.name.lower()) == finding.key
        assert finding.organ in ORGANS
        assert 0.0 < finding.prevalence < 1.0
        assert len(finding.prompts_positive) == len(finding.prompts_negative) == 3
        assert len(set(finding.prompts_positive) | set(finding.prompts_negative)) == 6
        assert finding.positive and finding.negative
        assert finding.placeholders <= {"side", "lobe", "size"}
        assert finding.placeholders <= set(finding.detail_fields)
        fill = {"side": "right", "lobe": "right lower lobe", "size": 7}
        for sentence in finding.positive:
            assert "{" not in sentence.format(**fill) and "}" not in sentence.format(**fill)
        for sentence in finding.negative:
            assert not [name for _, name, _, _ in string.Formatter().parse(sentence) if name]
            assert NEGATION.search(sentence), sentence
        for sentence in finding.positive:
            assert not NEGATION.search(sentence), sentence
        assert finding_by_key(finding.key) is finding
    with pytest.raises(KeyError, match="unknown finding"):
        finding_by_key("pneumothorax")
    assert isinstance(FINDINGS[0], Finding)


def test_names_and_prevalences_match_the_labelled_reports() -> None:
    if not REPORTS_CSV.is_file():
        pytest.skip("real reference data (shared/data) not available")
    with REPORTS_CSV.open(newline="") as f:
        rows = list(csv.DictReader(f))
    columns = [c for c in rows[0] if c not in ("AccessionNo", "report_text", "split")]
    assert tuple(columns) == FINDING_NAMES
    for finding in FINDINGS:
        prevalence = sum(int(row[finding.name]) for row in rows) / len(rows)
        assert finding.prevalence == round(prevalence, 3)


# ------------------------------------------------------------------------------------------------ report writer


def test_deterministic_given_rng() -> None:
    labels, details, study = random_case(np.random.default_rng(7))
    first = write_report(labels, details, study, np.random.default_rng(3))
    assert write_report(labels, details, study, np.random.default_rng(3)) == first
    assert compose_report(labels, details, study, np.random.default_rng(3))[0] == first
    assert write_report(labels, details, study, np.random.default_rng(4)) != first
    assert [c[3] for c in _cases(20, seed=5)] == [c[3] for c in _cases(20, seed=5)]


def test_sections_are_extracted(cases) -> None:
    for _, _, _, text, sentences in cases[:100]:
        assert text.startswith("FINDINGS: ") and text.count("\nIMPRESSION: ") == 1
        sections = extract_sections(text)
        assert sections["findings"] == " ".join(s.text for s in sentences if s.section == "findings")
        assert sections["impression"] == " ".join(s.text for s in sentences if s.section == "impression")
        assert sections["other"] == ""


def test_text_is_clean_and_filled(cases) -> None:
    bare = {k: 1 for k in FINDING_KEYS}
    texts = [c[3] for c in cases] + [write_report(bare, {}, {}, np.random.default_rng(i)) for i in range(30)]
    texts += [
        write_report(bare, {k: {"side": None, "lobe": None} for k in FINDING_KEYS}, None, np.random.default_rng(1))
    ]
    for text in texts:
        assert "{" not in text and "}" not in text and "None" not in text, text
        assert not re.search(r"  | [,.;]|\.\.|,,|\( | \)|\b(a|an|the) (a|an|the)\b", text), text
        for sentence in re.split(r"(?<=[.?!]) ", text.split("\n")[0].removeprefix("FINDINGS: ")):
            assert sentence[0].isupper() or sentence[0].isdigit(), sentence


def test_labels_map_back_from_the_tagged_sentences(cases) -> None:
    for labels, _, _, _, sentences in cases:
        assert labels_from_sentences(sentences) == labels  # every finding is stated, negated or covered
        for sentence in sentences:
            for key, polarity in sentence.findings.items():
                assert POLARITY_LABELS[polarity] == labels[key], (key, sentence)
        impression = labels_from_sentences(sentences, section="impression")
        assert all(labels[key] == value for key, value in impression.items())


def test_simple_reader_agrees_with_the_labels(cases) -> None:
    for labels, _, _, _, sentences in cases:
        seen_positive: set[str] = set()
        for sentence in sentences:
            read = reader(sentence.text)
            for key, value in read.items():
                assert key in sentence.findings, (key, sentence.text)  # no untagged mention
                assert value == POLARITY_LABELS[sentence.findings[key]], (key, sentence.text)
                if value and sentence.section == "findings":
                    seen_positive.add(key)
            unhedged = HEDGE_PHRASES.sub("", sentence.text)
            polarities = set(sentence.findings.values())
            if polarities & {"present", "hedged"}:
                assert not NEGATION.search(unhedged) and not NORMAL.search(unhedged), sentence.text
            if "negated" in polarities:
                assert NEGATION.search(sentence.text), sentence.text
            if polarities == {"normal"}:
                assert NORMAL.search(sentence.text) or NEGATION.search(sentence.text), sentence.text
        present = {k for k, v in labels.items() if v}
        assert seen_positive == present, (present - seen_positive, seen_positive - present)


def test_hedges_are_positive(cases) -> None:
    hedged, hedgeable = 0, 0
    for labels, _, _, _, sentences in cases:
        hedgeable += sum(v for k, v in labels.items() if k != "medical_material")
        keys = {k for s in sentences if s.section == "findings" for k, p in s.findings.items() if p == "hedged"}
        hedged += len(keys)
        for sentence in sentences:
            if "hedged" in sentence.findings.values():
                assert HEDGE.search(sentence.text), sentence.text
                assert all(labels[k] == 1 for k in sentence.findings)
    assert 0.5 * HEDGE_PROB < hedged / hedgeable < 1.6 * HEDGE_PROB


def test_absent_findings_are_negated_or_covered(cases) -> None:
    negated, absent = 0, 0
    for labels, _, _, _, sentences in cases:
        absent += sum(1 - v for v in labels.values())
        negated += len(
            {k for s in sentences if s.section == "findings" for k, p in s.findings.items() if p == "negated"}
        )
    assert NEGATION_PROB - 0.15 < negated / absent < NEGATION_PROB + 0.15


def test_findings_follow_the_reading_order(cases) -> None:
    device_organs = {"endotracheal tube": "airways", "sternotomy wires": "chest_wall"}
    for labels, details, _, _, sentences in cases:
        order = [ORGANS.index(s.organ) for s in sentences if s.section == "findings"]
        assert order == sorted(order)
        assert all(s.organ == "impression" for s in sentences if s.section == "impression")
        for key, value in labels.items():
            organs = {s.organ for s in sentences if s.section == "findings" and key in s.findings}
            if key == "medical_material" and value:
                devices = details[key].get("devices") or []
                assert organs == {device_organs.get(d, "mediastinum") for d in devices}
            else:
                assert finding_by_key(key).organ in organs or (key == "pericardial_effusion" and not value)


def test_impression_is_normal_iff_no_positive() -> None:
    rng = np.random.default_rng(0)
    zeros = {k: 0 for k in FINDING_KEYS}
    normal_words = re.compile(r"normal|unremarkable|no (acute|significant)", re.IGNORECASE)
    for i in range(40):
        _, _, study = random_case(rng)
        text, sentences = compose_report(zeros, {}, study, rng)
        first = next(s for s in sentences if s.section == "impression")
        assert normal_words.search(first.text) and set(first.findings.values()) == {"normal"}
        labels = dict(zeros, **{FINDING_KEYS[i % 18]: 1})
        _, sentences = compose_report(labels, {}, study, rng)
        impression = [s for s in sentences if s.section == "impression"]
        assert not any(normal_words.search(s.text) for s in impression if not s.findings), impression
        assert impression[0].findings.get(FINDING_KEYS[i % 18]) in ("present", "hedged")


def test_study_facts_variants_and_incidentals() -> None:
    rng = np.random.default_rng(1)
    mentions = {
        "pectus excavatum": ("chest_wall", r"pectus"),
        "thoracic scoliosis": ("bones", r"scolio"),
        "azygos fissure": ("lungs", r"azygos"),
        "liver cyst": ("abdomen", r"cyst"),
        "vertebral osteophytes": ("bones", r"osteophyt|degenerative"),
    }
    for i in range(60):
        labels, details, study = random_case(rng)
        study = dict(
            study,
            variants=["pectus excavatum", "thoracic scoliosis", "azygos fissure"],
            incidental=["liver cyst", "vertebral osteophytes"],
            contrast=bool(i % 2),
        )
        text, sentences = compose_report(labels, details, study, rng)
        for organ, pattern in mentions.values():
            assert any(re.search(pattern, s.text, re.IGNORECASE) for s in sentences if s.organ == organ), pattern
        impression = extract_sections(text)["impression"]
        assert re.search(r"cyst", impression, re.IGNORECASE) and re.search(
            r"degenerative|spondylosis", impression, re.IGNORECASE
        )
        if study["contrast"]:
            assert not re.search(r"without intravenous contrast|unenhanced|non-contrast", text, re.IGNORECASE)
        else:
            assert not re.search(r"after intravenous|contrast-enhanced|following intravenous", text, re.IGNORECASE)
    with pytest.raises(ValueError, match="unknown finding"):
        write_report({"pneumothorax": 1}, {}, {}, rng)


def test_length_distribution_is_close_to_the_real_reports() -> None:
    if not REPORTS_CSV.is_file():
        pytest.skip("real reference data (shared/data) not available")
    with REPORTS_CSV.open(newline="") as f:
        real = [row["report_text"] for row in csv.DictReader(f)]
    ours = []
    for _, _, _, text, _ in _cases(400, seed=11):
        sections = extract_sections(text)
        ours.append(f"{sections['findings']} {sections['impression']}")
    try:
        from common.transforms.text import load_tokenizer

        tokenizer = load_tokenizer("default")
        count = lambda texts: np.array([len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]])
    except Exception:  # no cached tokenizer: compare word counts
        count = lambda texts: np.array([len(t.split()) for t in texts])
    real_len, our_len = count(real), count(ours)
    for q, low, high in ((50, 0.8, 1.25), (10, 0.7, 1.4), (90, 0.7, 1.4)):
        ratio = np.percentile(our_len, q) / np.percentile(real_len, q)
        assert low < ratio < high, (q, ratio)
