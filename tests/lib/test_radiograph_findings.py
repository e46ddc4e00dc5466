"""``common.data.radiograph_findings``: the radiograph label vocabulary, the CT → radiograph mapping and the chest
X-ray report writer (label consistency, determinism, sections, length against IU X-ray)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from common.data.findings import Finding
from common.data.radiograph_findings import (
    ACUTE_KEYS,
    CHEXPERT_FROM_CT,
    CT_KEYS,
    CT_ONLY,
    CXR_FINDINGS,
    CXR_KEYS,
    NORMAL_IMPRESSION_PATTERN,
    PARENT,
    PATHOLOGY_KEYS,
    compose_radiograph_report,
    mentioned_labels,
    radiograph_labels,
    sample_ct_case,
    visible_on_radiograph,
    write_radiograph_report,
)
from common.transforms.text import extract_sections

ROOT = Path(__file__).resolve().parents[2]
_IU_NAME = Path("data") / "reports" / "iu_xray_reports.csv"
IU_CSV = next((p for p in (ROOT.parent / "shared" / _IU_NAME, ROOT / "shared" / _IU_NAME) if p.is_file()), None)

NEGATION_START = re.compile(r"^(?:no|there (?:is|are) no|negative|without|not)\b", re.IGNORECASE)
HEDGES = re.compile(
    r"likely|possibl|cannot be excluded|not excluded|suggest|may represent|borderline|concerning|"
    r"could|suspicious|appears|consider",
    re.IGNORECASE,
)


def _none() -> dict[str, int]:
    return {k: 0 for k in CT_KEYS}


def _cxr(positives: dict[str, dict], **extra: int) -> dict[str, int]:
    labels = _none()
    labels.update({k: 1 for k in positives}, **extra)
    return radiograph_labels(labels, positives)


def _cases(n: int, seed: int = 0):
    """``n`` random cases: CT-RATE prevalences for two thirds, 0.5 per finding (busy films) for the rest."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        labels, details = sample_ct_case(rng, None if i % 3 else 0.5)
        yield labels, details, radiograph_labels(labels, details)


# ---------------------------------------------------------------------------------------------------------------
# Vocabulary and mapping
# ---------------------------------------------------------------------------------------------------------------


def test_vocabulary_shape():
    assert len(set(CXR_KEYS)) == len(CXR_KEYS)
    for finding in CXR_FINDINGS:
        assert isinstance(finding, Finding)
        assert finding.key == re.sub(r"[^0-9a-z]+", "_", finding.name.lower()).strip("_")  # snake_case of the name
        assert len(finding.prompts_positive) == len(finding.prompts_negative) == 3
        assert len(set(zip(finding.prompts_positive, finding.prompts_negative))) == 3
        assert finding.positive and finding.negative
    assert {"no_finding", "support_devices", "lung_lesion", "lung_opacity", "pleural_other"} <= set(CXR_KEYS)
    assert set(CHEXPERT_FROM_CT) == set(CXR_KEYS)


def test_every_ct_key_is_mapped_or_ct_only():
    mapped = {ct for sources in CHEXPERT_FROM_CT.values() for ct in sources}
    assert mapped.isdisjoint(CT_ONLY)
    assert mapped | set(CT_ONLY) == set(CT_KEYS)
    assert len(CT_KEYS) == 18
    for key in CT_ONLY:
        assert not visible_on_radiograph(key, {})


def test_nothing_is_no_finding():
    out = radiograph_labels(_none(), {})
    assert list(out) == list(CXR_KEYS)
    assert out["no_finding"] == 1 and sum(out.values()) == 1


def test_ct_only_findings_leave_the_film_normal():
    out = _cxr({k: {} for k in CT_ONLY})
    assert out["no_finding"] == 1 and sum(out.values()) == 1


@pytest.mark.parametrize(("size", "expected"), [(4, 0), (9, 0), (10, 1), (18, 1), (None, 1)])
def test_lung_lesion_needs_a_visible_nodule(size, expected):
    detail = {"lobe": "right upper lobe"} | ({} if size is None else {"size": size})
    out = _cxr({"lung_nodule": detail})
    assert out["lung_lesion"] == expected
    assert out["lung_opacity"] == 0  # a nodule is a lesion, not an airspace opacity
    assert out["no_finding"] == 1 - expected


def test_consolidation_is_also_lung_opacity():
    out = _cxr({"consolidation": {"lobe": "left lower lobe", "volume_ml": 80}})
    assert out["consolidation"] == out["lung_opacity"] == 1
    assert out["no_finding"] == 0 and out["atelectasis"] == 0


def test_ct_lung_opacity_alone():
    out = _cxr({"lung_opacity": {"lobes": ["right lower lobe"], "side": "right"}})
    assert out["lung_opacity"] == 1 and out["consolidation"] == 0


@pytest.mark.parametrize(("kind", "expected"), [("subsegmental", 0), ("passive", 1), ("lobar", 1), (None, 1)])
def test_atelectasis_kinds(kind, expected):
    detail = {"lobe": "left lower lobe"} | ({} if kind is None else {"kind": kind})
    out = _cxr({"atelectasis": detail})
    assert out["atelectasis"] == out["lung_opacity"] == expected


@pytest.mark.parametrize(
    ("detail", "expected"),
    [
        ({"stations": ["right paratracheal"], "size": 20}, 1),
        ({"stations": ["subcarinal", "right hilar"], "size": 16}, 1),
        ({"stations": ["right paratracheal"], "size": 12}, 0),  # too small for a film
        ({"stations": ["right hilar", "left hilar"], "size": 25}, 0),  # hilar only
        ({}, 1),
    ],
)
def test_lymphadenopathy_widens_the_mediastinum(detail, expected):
    out = _cxr({"lymphadenopathy": detail})
    assert out["enlarged_cardiomediastinum"] == expected
    assert out["cardiomegaly"] == 0


@pytest.mark.parametrize(
    ("detail", "expected"),
    [
        ({"severity": "mild", "thickness_mm": 6}, 0),
        ({"severity": "moderate"}, 1),
        ({"severity": "severe"}, 1),
        ({"thickness_mm": 14}, 1),
        ({"thickness_mm": 5}, 0),
    ],
)
def test_pericardial_effusion_enlarges_the_silhouette(detail, expected):
    out = _cxr({"pericardial_effusion": detail})
    assert out["enlarged_cardiomediastinum"] == expected and out["cardiomegaly"] == 0


def test_one_to_one_and_gated_mappings():
    assert _cxr({"cardiomegaly": {"severity": "mild"}})["cardiomegaly"] == 1
    assert _cxr({"pleural_effusion": {"side": "left"}})["pleural_effusion"] == 1
    assert _cxr({"pulmonary_fibrotic_sequela": {"zone": "apical"}})["pleural_other"] == 1
    assert _cxr({"hiatal_hernia": {"size": 45}})["hernia"] == 1
    assert _cxr({"hiatal_hernia": {"size": 18}})["hernia"] == 0
    assert _cxr({"emphysema": {"severity": "mild", "bullae": 0}})["emphysema"] == 0
    assert _cxr({"emphysema": {"severity": "mild", "bullae": 2}})["emphysema"] == 1
    assert _cxr({"emphysema": {"severity": "moderate"}})["emphysema"] == 1
    assert _cxr({"arterial_wall_calcification": {"severity": "mild"}})["calcification_of_the_aorta"] == 0
    assert _cxr({"arterial_wall_calcification": {}})["calcification_of_the_aorta"] == 1


def test_support_devices_do_not_make_a_film_abnormal():
    out = _cxr({"medical_material": {"devices": ["pacemaker"], "side": "left"}})
    assert out["support_devices"] == 1 and out["no_finding"] == 1  # CheXpert: devices are not a pathology


def test_unknown_ct_key_raises():
    with pytest.raises(KeyError):
        radiograph_labels({"pneumothorax": 1}, {})


# ---------------------------------------------------------------------------------------------------------------
# Report writer
# ---------------------------------------------------------------------------------------------------------------


def test_report_label_consistency_300_cases():
    rng = np.random.default_rng(123)
    seen_positive: set[str] = set()
    for labels, details, cxr in _cases(300):
        report = compose_radiograph_report(cxr, details, rng)
        positive: set[str] = set()
        negative: set[str] = set()
        for sentence in report.sentences:
            positive |= sentence.positive
            negative |= sentence.negative
            mentioned = mentioned_labels(sentence.text)
            # a sentence that speaks about a finding carries its tag (so the labels are recoverable from text) ...
            assert mentioned <= sentence.positive | sentence.negative, (sentence, mentioned)
            # ... and a positive statement names it, is not phrased as a negation, hedges only a present finding
            implied = mentioned | {PARENT[k] for k in mentioned if k in PARENT}
            assert (sentence.positive - {"no_finding"}) <= implied, (sentence, mentioned)
            assert not sentence.positive & sentence.negative
            if sentence.positive - {"no_finding"}:
                assert not NEGATION_START.match(sentence.text), sentence
            if sentence.hedged:
                assert sentence.positive and HEDGES.search(sentence.text), sentence
        for key in CXR_KEYS:
            if cxr[key]:
                assert key in positive, (key, report.text)
                assert key not in negative, (key, report.text)
            else:
                assert key not in positive, (key, report.text)
        if any(cxr[k] for k in ACUTE_KEYS):
            assert not re.search(NORMAL_IMPRESSION_PATTERN, report.impression_text, re.IGNORECASE), report.text
        if cxr["no_finding"]:
            assert any("no_finding" in s.positive for s in report.impression)
            assert re.search(NORMAL_IMPRESSION_PATTERN, report.impression_text, re.IGNORECASE)
        seen_positive |= positive
    assert seen_positive == set(CXR_KEYS)  # every label was written at least once


def test_device_lines():
    details = {"medical_material": {"devices": ["pacemaker", "sternotomy wires"], "side": "left"}}
    cxr = radiograph_labels(_none() | {"medical_material": 1}, details)
    texts = [write_radiograph_report(cxr, details, np.random.default_rng(s)) for s in range(20)]
    assert all("pacemaker" in t.lower() or "pacer" in t.lower() for t in texts)
    assert all("sternotomy" in t.lower() for t in texts)
    assert any(t.lower().count("left") for t in texts)


def test_determinism():
    cases = list(_cases(40, seed=7))
    first = [write_radiograph_report(c, d, np.random.default_rng(i)) for i, (_, d, c) in enumerate(cases)]
    again = [write_radiograph_report(c, d, np.random.default_rng(i)) for i, (_, d, c) in enumerate(cases)]
    assert first == again
    normal = radiograph_labels(_none(), {})
    variants = {write_radiograph_report(normal, {}, np.random.default_rng(s)) for s in range(30)}
    assert len(variants) > 20  # varied phrasing


def test_sections_are_found():
    rng = np.random.default_rng(5)
    for _, details, cxr in _cases(60, seed=3):
        report = compose_radiograph_report(cxr, details, rng)
        assert report.text.startswith("FINDINGS: ") and "\nIMPRESSION: " in report.text
        sections = extract_sections(report.text)
        assert sections["findings"] and sections["impression"] and not sections["other"]
        assert sections["findings"] == report.findings_text
        assert sections["impression"] == report.impression_text


def test_bad_labels_raise():
    rng = np.random.default_rng(0)
    with pytest.raises(KeyError):
        write_radiograph_report({"lung_nodule": 1}, {}, rng)  # a CT key
    with pytest.raises(ValueError):
        write_radiograph_report({"no_finding": 1, "cardiomegaly": 1}, {}, rng)
    text = write_radiograph_report({"cardiomegaly": 1}, {}, rng)  # missing keys are 0, no_finding derived
    assert "IMPRESSION" in text


def test_pathology_keys():
    assert set(PATHOLOGY_KEYS) == set(CXR_KEYS) - {"no_finding", "support_devices"}
    assert ACUTE_KEYS <= set(PATHOLOGY_KEYS)


@pytest.mark.skipif(IU_CSV is None, reason="IU X-ray reports (shared/data) not available")
def test_length_close_to_iu_xray():
    spec = importlib.util.spec_from_file_location(
        "radiograph_report_lengths", ROOT / "scripts" / "radiograph_report_lengths.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    try:
        tokenizer = script.load_tokenizer("default")
    except OSError as error:  # pragma: no cover - tokenizer not cached
        pytest.skip(f"tokenizer unavailable: {error}")
    iu = script.summary(script.iu_lengths(IU_CSV, tokenizer))
    ours = script.summary(script.phantom_lengths(400, 0, None, tokenizer))
    assert abs(ours["median"] - iu["median"]) <= 12, (ours, iu)
    assert abs(ours["p10"] - iu["p10"]) <= 12, (ours, iu)
    assert abs(ours["p90"] - iu["p90"]) <= 20, (ours, iu)
