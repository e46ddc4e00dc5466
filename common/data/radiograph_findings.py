"""Radiograph label vocabulary and chest X-ray report writer for the DRR (PA film) of each chest-CT phantom.

The 2D bundles (``colipri_cxr``, ``raddino_cxr``) see a digitally reconstructed radiograph of each phantom, not the
CT. Their labels are therefore the findings a reader could call **on a frontal radiograph**, named in the CheXpert
vocabulary (Irvin et al. 2019) where a class exists, else in ChestX-ray14 (Wang et al. 2017) or the MIMIC-CXR
long-tail set (CXR-LT); keys are the snake_case of those names. :func:`radiograph_labels` derives them from the
18 CT-RATE labels and the phantom's ``details``; :func:`write_radiograph_report` writes a short IU X-ray /
MIMIC-CXR style report (``FINDINGS: ...`` / ``IMPRESSION: ...``) consistent with them.

Mapping (:data:`CHEXPERT_FROM_CT`, visibility rules :func:`visible_on_radiograph`)
-------------------------------------------------------------------------------------

A CT finding reaches the radiograph only when it would be visible on a PA film; a label is 1 only then. When the
detail that decides visibility is absent from ``details``, the CT label is carried over unchanged.

=============================== ============================== =====================================================
radiograph label (vocabulary)   from CT label (condition)      reason
=============================== ============================== =====================================================
``no_finding``                  none of the pathology labels   CheXpert "No Finding": no pathology. As in CheXpert,
(No Finding, CheXpert)          below is 1                     Support Devices do not count: a pacemaker with clear
                                                               lungs is still "No Finding".
``enlarged_cardiomediastinum``  lymphadenopathy (``size`` >=   Bulky nodes at a mediastinal station widen the
(CheXpert)                      15 mm at a mediastinal         mediastinal contour; nodes under ~15 mm, and hilar
                                station) or                    nodes alone (no mediastinal station; a hilar contour
                                pericardial_effusion           is not a CheXpert "cardiomediastinum" mention), are
                                (``severity`` moderate/severe, not seen on a film. A moderate or large pericardial
                                else ``thickness_mm`` >= 10)   effusion enlarges the cardiopericardial silhouette
                                                               without chamber enlargement: the film shows a larger
                                                               silhouette (CheXpert's labeler counts "pericardial
                                                               silhouette" here), not cardiomegaly proper, so the CT
                                                               Cardiomegaly label keeps its own meaning. Small
                                                               effusions do not change the silhouette.
``cardiomegaly`` (CheXpert)     cardiomegaly                   Cardiac enlargement is a core radiograph call.
``lung_opacity`` (CheXpert)     lung_opacity, consolidation,   CheXpert's parent class of airspace/parenchymal
                                atelectasis (if visible, see   opacities (:data:`PARENT`). A discrete nodule is
                                ``atelectasis``)               left out: it is reported as "nodule"/"mass" (Lung
                                                               Lesion), and keeping it out keeps Lung Lesion an
                                                               independent target. Likewise Cardiomegaly does not
                                                               set Enlarged Cardiomediastinum.
``lung_lesion`` (CheXpert)      lung_nodule (``size`` >= 10    A nodule under ~1 cm is rarely visible on a
                                mm)                            radiograph; CT-RATE nodules are often a few mm.
``consolidation`` (CheXpert)    consolidation                  Lobar airspace consolidation is dense and large.
``atelectasis`` (CheXpert)      atelectasis (``kind`` lobar or Lobar collapse and passive (compressive) atelectasis
                                passive, or unknown)           change a lobe's density/volume; subsegmental (plate)
                                                               atelectasis is a few mm thick and CT-only.
``pleural_effusion``            pleural_effusion               Free effusions layer at the bases and blunt the
(CheXpert)                                                     costophrenic angles on a PA film.
``pleural_other`` (CheXpert)    pulmonary_fibrotic_sequela     Apical pleuroparenchymal thickening/scarring and
                                                               basal fibrosis; CheXpert's labeler files "pleural
                                                               thickening", "fibrosis" and "pleural(-parenchymal)
                                                               scar" under Pleural Other.
``support_devices`` (CheXpert)  medical_material               Every device the phantom places (pacemaker, central
                                                               venous / port catheter, sternotomy wires,
                                                               endotracheal tube) is radio-opaque.
``emphysema`` (ChestX-ray14)    emphysema (unless ``severity`` Moderate/severe emphysema and bullae show as
                                mild without ``bullae``)       hyperinflation and lucency; mild centrilobular
                                                               emphysema is a CT diagnosis.
``hernia`` (ChestX-ray14)       hiatal_hernia (``size`` >= 30  A hiatal hernia shows as a retrocardiac soft-tissue
                                mm)                            density with gas or an air-fluid level once it is a
                                                               few cm; small sliding hernias are CT-only.
``calcification_of_the_aorta``  arterial_wall_calcification    Calcified plaque of the aortic knob/arch is a common
(CXR-LT "Calcification of the   (unless ``severity`` mild)     radiograph remark; faint mild plaque is not seen.
Aorta")
=============================== ============================== =====================================================

CT-only (:data:`CT_ONLY`, no radiograph label): ``coronary_artery_wall_calcification`` (small, moving, projected over
the dense cardiac shadow; no CheXpert/ChestX-ray14 class), ``mosaic_attenuation_pattern`` (lobular density
differences of ~100 HU cancel out along the ray), ``peribronchial_thickening`` (millimetric walls; at most
"peribronchial cuffing", no class), ``bronchiectasis`` (dilated airways need cross-sections; only gross cystic
disease shows on film; no class), ``interlobular_septal_thickening`` (the septa are sub-millimetric; Kerley lines
need interstitial oedema, which the phantoms do not have). Also CT-only by the visibility rules: nodules < 10 mm,
nodes < 15 mm or hilar only, small pericardial effusions, subsegmental atelectasis, mild emphysema without bullae,
hiatal hernias < 30 mm, mild arterial calcification. CheXpert classes with no CT source in the phantoms (Edema,
Pneumonia, Pneumothorax, Fracture) are not in the vocabulary: they would always be 0. The reports may still negate
pneumothorax and oedema, which is true of every phantom.

Report writer
-------------

:func:`compose_radiograph_report` builds the report as tagged sentences (:class:`TaggedSentence`: which labels each
sentence states present or absent), :func:`write_radiograph_report` returns its text. Order as in IU X-ray:
(devices) → heart size/mediastinum (and aortic calcification) → lungs → pleura → bones, with the hernia line in
between; sometimes lungs first or devices last. Device lines follow ``details["medical_material"]`` (devices,
side). Absent findings are negated explicitly for a random subset ("No focal consolidation, pleural effusion, or
pneumothorax."); a per-report verbosity (terse / ordinary / wordy reader, fewer optional sentences on busy films)
spreads the lengths as in IU X-ray.

* **U-Ones**: hedged statements ("cannot be excluded", "likely", "suggesting", "possibly", "borderline", "may
  represent") are written **only for present findings** and are tagged positive: under CheXpert's U-Ones policy an
  uncertain mention is a positive label, so a hedge never names an absent finding (a hedge about a cause outside the
  vocabulary, "pericardial effusion cannot be excluded", sits on a present Enlarged Cardiomediastinum).
* **Mentions are tagged**: any sentence that matches a label's :data:`MENTION_PATTERNS` (a minimal mention labeler)
  is tagged with that label, present or absent, so the labels can be read back from the text; e.g. nodule sentences
  never say "opacity", and the silhouette enlarged by a pericardial effusion is a "cardiopericardial" or
  "cardiomediastinal" silhouette, never the "heart"/"cardiac silhouette" (CheXpert's Cardiomegaly wording).
* **Impression**: the most salient positives (acute first, one to three items, sometimes numbered), or a normal
  statement ("No acute cardiopulmonary abnormality." and variants, :data:`NORMAL_IMPRESSION_PATTERN`) when no
  acute finding (:data:`ACUTE_KEYS`) is present, which is tagged No Finding when there is no pathology at all.

Phrasing is original; only the section headers and general radiology idiom follow IU X-ray / MIMIC-CXR. The
MiniLM token-length distribution (findings + impression) is measured against the IU X-ray reports by
``scripts/radiograph_report_lengths.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.data.findings import DEVICES, FINDING_KEYS, LOBES, STATIONS, Finding
from common.data.label_model import PREVALENCE

__all__ = [
    "ACUTE_KEYS",
    "CHEXPERT_FROM_CT",
    "CT_KEYS",
    "CT_ONLY",
    "CT_RATE_PREVALENCE",
    "CXR_FINDINGS",
    "CXR_KEYS",
    "CXR_NAMES",
    "HERNIA_MIN_SIZE_MM",
    "LESION_MIN_SIZE_MM",
    "MEDIASTINALSTATIONS",
    "MENTION_PATTERNS",
    "NODE_MIN_SIZE_MM",
    "NORMAL_IMPRESSION_PATTERN",
    "PARENT",
    "PATHOLOGY_KEYS",
    "PERICARDIAL_MIN_THICKNESS_MM",
    "RadiographReport",
    "TaggedSentence",
    "compose_radiograph_report",
    "cxr_finding_by_key",
    "mentioned_labels",
    "radiograph_labels",
    "sample_ct_case",
    "visible_on_radiograph",
    "write_radiograph_report",
]

# ----------------------------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------------------------

CT_KEYS: tuple[str, ...] = FINDING_KEYS
"""The 18 CT-RATE abnormality keys, in CT-RATE order."""

LESION_MIN_SIZE_MM = 10.0
NODE_MIN_SIZE_MM = 15.0
PERICARDIAL_MIN_THICKNESS_MM = 10.0
HERNIA_MIN_SIZE_MM = 30.0
MEDIASTINALSTATIONS: frozenset[str] = frozenset(
    {"right paratracheal", "left paratracheal", "subcarinal", "prevascular", "aortopulmonary window"}
)


def _finding(key: str, name: str, positive, negative, prompts_positive, prompts_negative) -> Finding:
    return Finding(
        key=key,
        name=name,
        positive=tuple(positive),
        negative=tuple(negative),
        prompts_positive=tuple(prompts_positive),
        prompts_negative=tuple(prompts_negative),
    )


CXR_FINDINGS: tuple[Finding, ...] = (
    _finding(
        "no_finding",
        "No Finding",
        ("No acute cardiopulmonary abnormality.", "Normal chest radiograph.", "No active disease in the chest."),
        ("Abnormal chest radiograph.", "There is an abnormality in the chest."),
        ("Normal chest radiograph.", "No acute cardiopulmonary abnormality.", "The chest film is unremarkable."),
        ("Abnormal chest radiograph.", "There is a cardiopulmonary abnormality.", "The chest film shows a finding."),
    ),
    _finding(
        "enlarged_cardiomediastinum",
        "Enlarged Cardiomediastinum",
        ("The mediastinum is widened.", "The cardiomediastinal silhouette is enlarged.", "Mediastinal widening."),
        (
            "Normal mediastinal contours.",
            "The mediastinum is not widened.",
            "The cardiomediastinal silhouette is normal.",
        ),
        (
            "The cardiomediastinal silhouette is enlarged.",
            "The mediastinum is widened.",
            "There is mediastinal widening.",
        ),
        (
            "The cardiomediastinal silhouette is normal.",
            "The mediastinum is not widened.",
            "There is no mediastinal widening.",
        ),
    ),
    _finding(
        "cardiomegaly",
        "Cardiomegaly",
        ("The heart is enlarged.", "Cardiomegaly.", "Enlarged cardiac silhouette."),
        ("Heart size is normal.", "No cardiomegaly.", "The heart is not enlarged."),
        ("Cardiomegaly is present.", "The heart is enlarged.", "The cardiac silhouette is enlarged."),
        ("Cardiomegaly is not present.", "The heart is normal in size.", "The cardiac silhouette is not enlarged."),
    ),
    _finding(
        "lung_opacity",
        "Lung Opacity",
        ("Patchy opacity in the {lobe}.", "Airspace opacity at the {side} lung base.", "Hazy {side} lung opacity."),
        ("No focal airspace opacity.", "The lungs are clear.", "No suspicious pulmonary opacity."),
        ("There is a lung opacity.", "An airspace opacity is seen in the lung.", "The lungs show an opacity."),
        ("There is no lung opacity.", "No airspace opacity is seen in the lung.", "The lungs are clear."),
    ),
    _finding(
        "lung_lesion",
        "Lung Lesion",
        ("A {size} mm nodule in the {lobe}.", "There is a pulmonary nodule in the {lobe}.", "Rounded lung mass."),
        ("No suspicious pulmonary nodule.", "No nodule or mass is seen.", "No focal lung lesion."),
        ("There is a lung nodule.", "A pulmonary nodule is seen.", "There is a lung mass."),
        ("There is no lung nodule.", "No pulmonary nodule is seen.", "There is no lung mass."),
    ),
    _finding(
        "consolidation",
        "Consolidation",
        ("Consolidation in the {lobe}.", "Focal airspace consolidation in the {lobe}.", "Lobar consolidation."),
        ("No focal consolidation.", "There is no consolidation.", "No airspace consolidation."),
        ("There is consolidation.", "Focal airspace consolidation is seen.", "A lobe is consolidated."),
        ("There is no consolidation.", "No focal airspace consolidation is seen.", "No lobe is consolidated."),
    ),
    _finding(
        "atelectasis",
        "Atelectasis",
        ("Atelectasis in the {lobe}.", "Collapse of the {lobe}.", "Compressive atelectasis at the {side} base."),
        ("No atelectasis.", "No lobar collapse.", "Lung volumes are preserved."),
        ("There is atelectasis.", "Part of the lung is collapsed.", "Atelectasis is seen."),
        ("There is no atelectasis.", "No part of the lung is collapsed.", "No atelectasis is seen."),
    ),
    _finding(
        "pleural_effusion",
        "Pleural Effusion",
        ("There is a {side} pleural effusion.", "Blunting of the {side} costophrenic angle.", "Pleural effusion."),
        ("No pleural effusion.", "The costophrenic angles are sharp.", "No effusion."),
        ("There is a pleural effusion.", "A pleural effusion is seen.", "The costophrenic angle is blunted."),
        ("There is no pleural effusion.", "No pleural effusion is seen.", "The costophrenic angles are sharp."),
    ),
    _finding(
        "pleural_other",
        "Pleural Other",
        ("Apical pleural thickening.", "Pleuroparenchymal scarring at the {side} apex.", "Basilar fibrosis."),
        ("No pleural thickening.", "No pleural scarring.", "The pleura is smooth."),
        ("There is pleural thickening.", "Pleuroparenchymal scarring is seen.", "There is fibrosis."),
        ("There is no pleural thickening.", "No pleuroparenchymal scarring is seen.", "There is no fibrosis."),
    ),
    _finding(
        "support_devices",
        "Support Devices",
        ("Left-sided pacemaker.", "Median sternotomy wires.", "Central venous catheter in the SVC."),
        ("No support devices.", "No lines or tubes.", "No pacemaker or catheter."),
        (
            "Support devices are present.",
            "A pacemaker, line or tube is seen.",
            "Medical devices project over the chest.",
        ),
        ("No support devices are present.", "No pacemaker, line or tube is seen.", "No medical devices are seen."),
    ),
    _finding(
        "emphysema",
        "Emphysema",
        ("The lungs are hyperinflated.", "Emphysematous changes.", "Bullous emphysema."),
        ("No emphysema.", "Normal lung volumes.", "The lungs are not hyperinflated."),
        ("There is emphysema.", "The lungs are hyperinflated.", "Emphysematous changes are seen."),
        ("There is no emphysema.", "The lungs are not hyperinflated.", "No emphysematous changes are seen."),
    ),
    _finding(
        "hernia",
        "Hernia",
        ("Hiatal hernia.", "Retrocardiac air-fluid level from a hiatal hernia.", "A {size} mm hiatal hernia."),
        ("No hiatal hernia.", "No retrocardiac mass.", "No hernia."),
        ("There is a hiatal hernia.", "A retrocardiac hernia is seen.", "A hernia is present."),
        ("There is no hiatal hernia.", "No retrocardiac hernia is seen.", "No hernia is present."),
    ),
    _finding(
        "calcification_of_the_aorta",
        "Calcification of the Aorta",
        ("Calcified aortic knob.", "Atherosclerotic calcification of the aortic arch.", "Aortic calcification."),
        ("No aortic calcification.", "The aortic arch is not calcified.", "No atherosclerotic calcification."),
        ("The aorta is calcified.", "There is aortic calcification.", "The aortic knob is calcified."),
        ("The aorta is not calcified.", "There is no aortic calcification.", "The aortic knob is not calcified."),
    ),
)

CXR_KEYS: tuple[str, ...] = tuple(f.key for f in CXR_FINDINGS)
CXR_NAMES: tuple[str, ...] = tuple(f.name for f in CXR_FINDINGS)
PATHOLOGY_KEYS: tuple[str, ...] = tuple(k for k in CXR_KEYS if k not in ("no_finding", "support_devices"))
"""The labels that make a film abnormal (No Finding = none of them; Support Devices do not count, as in CheXpert)."""
ACUTE_KEYS: frozenset[str] = frozenset(
    {"enlarged_cardiomediastinum", "lung_opacity", "lung_lesion", "consolidation", "atelectasis", "pleural_effusion"}
)
"""Findings that rule out a "no acute cardiopulmonary abnormality" impression (a new nodule counts)."""

CHEXPERT_FROM_CT: dict[str, tuple[str, ...]] = {
    "no_finding": (),  # derived: no PATHOLOGY_KEYS label positive
    "enlarged_cardiomediastinum": ("lymphadenopathy", "pericardial_effusion"),
    "cardiomegaly": ("cardiomegaly",),
    "lung_opacity": ("lung_opacity", "consolidation", "atelectasis"),
    "lung_lesion": ("lung_nodule",),
    "consolidation": ("consolidation",),
    "atelectasis": ("atelectasis",),
    "pleural_effusion": ("pleural_effusion",),
    "pleural_other": ("pulmonary_fibrotic_sequela",),
    "support_devices": ("medical_material",),
    "emphysema": ("emphysema",),
    "hernia": ("hiatal_hernia",),
    "calcification_of_the_aorta": ("arterial_wall_calcification",),
}
"""Radiograph label → the CT labels that set it (any of them, when visible: :func:`visible_on_radiograph`)."""

CT_ONLY: tuple[str, ...] = (
    "coronary_artery_wall_calcification",
    "mosaic_attenuation_pattern",
    "peribronchial_thickening",
    "bronchiectasis",
    "interlobular_septal_thickening",
)
"""CT labels with no radiograph label (see the module docstring for why)."""

CT_RATE_PREVALENCE: dict[str, float] = dict(PREVALENCE)
"""Label prevalence in the 689 manually labelled CT-RATE-style reports of ``shared/data`` (:func:`sample_ct_case`)."""

MENTION_PATTERNS: dict[str, str] = {
    "enlarged_cardiomediastinum": r"mediastin|pericardial silhouette",
    "cardiomegaly": r"cardiomegaly|\bheart\b|\bcardiac (?:silhouette|size|contour|shadow|enlargement)",
    "lung_opacity": r"opacit|airspace disease|infiltrat",
    "lung_lesion": r"nodul|\bmass(?:es)?\b",
    "consolidation": r"consolidat",
    "atelectasis": r"atelecta|collapse",
    "pleural_effusion": r"(?<!pericardial )effusion|costophrenic",
    "pleural_other": r"pleural thickening|pleuroparenchymal|pleural-parenchymal|fibrosis|pleural scar",
    "support_devices": r"pacemaker|pacer\b|catheter|central line|\bport\b|sternotomy|endotracheal|\bdevices?\b",
    "emphysema": r"emphysem|hyperinfla|hyperexpan|bulla|bullous|copd",
    "hernia": r"hernia",
    "calcification_of_the_aorta": r"aort\w*\b.*calcif|calcif\w*\b.*aort",
}
"""A minimal mention labeler: a report sentence matching a key's pattern (case-insensitive) speaks about that label.

The writer tags every such sentence with the label (present or absent), so the labels can be recovered from the
text; the tests check it. No Finding is recognised by :data:`NORMAL_IMPRESSION_PATTERN` instead."""

PARENT: dict[str, str] = {"consolidation": "lung_opacity", "atelectasis": "lung_opacity"}
"""CheXpert hierarchy as used here: a sentence stating the child also states its parent class."""

NORMAL_IMPRESSION_PATTERN = (
    r"no acute|no active|normal chest|negative for acute|no (?:radiographic )?evidence of (?:acute|active)"
)


def cxr_finding_by_key(key: str) -> Finding:
    for finding in CXR_FINDINGS:
        if finding.key == key:
            return finding
    raise KeyError(f"unknown radiograph finding {key!r}; known: {list(CXR_KEYS)}")


# ----------------------------------------------------------------------------------------------------------------
# Mapping
# ----------------------------------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _severity(detail: Mapping[str, Any]) -> str | None:
    value = detail.get("severity")
    return str(value).lower() if value is not None else None


def _lymph_nodes_visible(detail: Mapping[str, Any]) -> bool:
    stations = detail.get("stations")
    if stations is not None and not any(str(s).lower() in MEDIASTINALSTATIONS for s in stations):
        return False  # hilar nodes only
    size = _number(detail.get("size"))
    return size is None or size >= NODE_MIN_SIZE_MM


def _pericardial_visible(detail: Mapping[str, Any]) -> bool:
    severity = _severity(detail)
    if severity is not None:
        return severity in ("moderate", "severe", "large")
    thickness = _number(detail.get("thickness_mm"))
    return thickness is None or thickness >= PERICARDIAL_MIN_THICKNESS_MM


def _nodule_visible(detail: Mapping[str, Any]) -> bool:
    size = _number(detail.get("size"))
    return size is None or size >= LESION_MIN_SIZE_MM


def _atelectasis_visible(detail: Mapping[str, Any]) -> bool:
    return str(detail.get("kind", "")).lower() != "subsegmental"


def _emphysema_visible(detail: Mapping[str, Any]) -> bool:
    return not (_severity(detail) == "mild" and not detail.get("bullae"))


def _hernia_visible(detail: Mapping[str, Any]) -> bool:
    size = _number(detail.get("size"))
    return size is None or size >= HERNIA_MIN_SIZE_MM


def _calcification_visible(detail: Mapping[str, Any]) -> bool:
    return _severity(detail) != "mild"


_VISIBILITY: dict[str, Callable[[Mapping[str, Any]], bool]] = {
    "lymphadenopathy": _lymph_nodes_visible,
    "pericardial_effusion": _pericardial_visible,
    "lung_nodule": _nodule_visible,
    "atelectasis": _atelectasis_visible,
    "emphysema": _emphysema_visible,
    "hiatal_hernia": _hernia_visible,
    "arterial_wall_calcification": _calcification_visible,
}


def visible_on_radiograph(ct_key: str, detail: Mapping[str, Any] | None) -> bool:
    """Whether a present CT finding would be seen on a PA film, from its ``details`` entry.

    CT-only keys are never visible; keys without a rule always are; a rule whose deciding detail is missing
    answers True (the CT label carries over).
    """
    if ct_key in CT_ONLY:
        return False
    if ct_key not in CT_KEYS:
        raise KeyError(f"unknown CT finding {ct_key!r}")
    rule = _VISIBILITY.get(ct_key)
    return True if rule is None else bool(rule(detail or {}))


def radiograph_labels(
    labels: Mapping[str, int], details: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, int]:
    """Radiograph labels (every key of :data:`CXR_FINDINGS`, 0/1) of a phantom from its CT labels and details.

    Args:
        labels: CT-RATE keys → 0/1 (missing keys count as 0; unknown keys raise).
        details: per present CT finding, the phantom's details (all optional).

    Returns:
        ``{cxr_key: 0|1}`` in :data:`CXR_KEYS` order.
    """
    unknown = set(labels) - set(CT_KEYS)
    if unknown:
        raise KeyError(f"unknown CT label keys {sorted(unknown)}; expected a subset of {list(CT_KEYS)}")
    details = details or {}
    seen = {key: int(bool(labels.get(key, 0))) and visible_on_radiograph(key, details.get(key)) for key in CT_KEYS}
    out = {key: int(any(seen[ct] for ct in CHEXPERT_FROM_CT[key])) for key in CXR_KEYS}
    out["no_finding"] = int(not any(out[k] for k in PATHOLOGY_KEYS))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Report writer
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaggedSentence:
    """One report sentence (or numbered impression item) and the radiograph labels it speaks about.

    Attributes:
        text: the sentence, ending with a full stop.
        positive: labels it states present (hedged statements included: U-Ones).
        negative: labels it states absent.
        hedged: the statement is uncertain ("likely", "cannot be excluded", ...).
    """

    text: str
    positive: frozenset[str] = field(default_factory=frozenset)
    negative: frozenset[str] = field(default_factory=frozenset)
    hedged: bool = False


@dataclass(frozen=True)
class RadiographReport:
    """A composed report: tagged findings and impression sentences."""

    findings: tuple[TaggedSentence, ...]
    impression: tuple[TaggedSentence, ...]
    numbered: bool = False

    @property
    def sentences(self) -> tuple[TaggedSentence, ...]:
        return self.findings + self.impression

    @property
    def findings_text(self) -> str:
        return " ".join(s.text for s in self.findings)

    @property
    def impression_text(self) -> str:
        if self.numbered and len(self.impression) > 1:
            return " ".join(f"{i}. {s.text}" for i, s in enumerate(self.impression, 1))
        return " ".join(s.text for s in self.impression)

    @property
    def text(self) -> str:
        return f"FINDINGS: {self.findings_text}\nIMPRESSION: {self.impression_text}"


def _s(text: str, positive=(), negative=(), hedged: bool = False) -> TaggedSentence:
    text = text.strip()
    text = text[0].upper() + text[1:]
    if not text.endswith("."):
        text += "."
    return TaggedSentence(text, frozenset(positive), frozenset(negative), hedged)


class _Writer:
    """One report: the random choices of :func:`compose_radiograph_report`."""

    def __init__(self, labels: Mapping[str, int], details: Mapping[str, Mapping[str, Any]], rng: np.random.Generator):
        self.on = {k: bool(labels.get(k, 0)) for k in CXR_KEYS}
        self.details = details
        self.rng = rng
        self.atelectasis_where: str | None = None  # where the findings put the atelectasis (for the impression)
        # terse, ordinary or wordy reader: scales the optional sentences; busier films get fewer of them
        busy = sum(self.on[k] for k in PATHOLOGY_KEYS) + self.on["support_devices"]
        self.verbosity = float(rng.choice((0.25, 0.9, 1.8), p=(0.35, 0.45, 0.2))) * (0.8**busy)

    def optional(self, p: float) -> bool:
        """An optional sentence, more likely for a wordy reader."""
        return self.chance(min(1.0, p * self.verbosity))

    # -- helpers -----------------------------------------------------------------------------------------------
    def pick(self, options: Sequence[Any]) -> Any:
        return options[int(self.rng.integers(len(options)))]

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def detail(self, ct_key: str) -> Mapping[str, Any]:
        value = self.details.get(ct_key)
        return value if isinstance(value, Mapping) else {}

    def size_text(self, mm: float) -> str:
        if mm >= 10 and self.chance(0.5):
            return f"{mm / 10:.1f} cm"
        return f"{int(round(mm))} mm"

    def region(self, lobe: str | None, side: str | None = None) -> str:
        """A radiograph location for a CT lobe: the lobe itself or the lung zone it projects to."""
        zones = {
            "right upper lobe": ("right upper lobe", "right upper lung zone", "right upper lung"),
            "right middle lobe": ("right middle lobe", "right midlung", "right lower lung zone"),
            "right lower lobe": ("right lower lobe", "right lung base", "right base"),
            "left upper lobe": ("left upper lobe", "left upper lung zone", "left midlung"),
            "left lower lobe": ("left lower lobe", "left lung base", "left base"),
        }
        if lobe and str(lobe).lower() in zones:
            return self.pick(zones[str(lobe).lower()])
        side = _side(side)
        if side == "bilateral":
            return self.pick(("both lungs", "both lung bases", "bilateral lower lungs"))
        if side in ("left", "right"):
            return self.pick((f"{side} lung", f"{side} lung base", f"{side} lower lung zone"))
        return self.pick(("right lung base", "left lung base", "right midlung"))

    # -- heart and mediastinum -------------------------------------------------------------------------------
    def cardiomegaly(self) -> TaggedSentence:
        severity = _severity(self.detail("cardiomegaly"))
        k = {"cardiomegaly"}
        if severity == "mild" and self.chance(0.25):
            return _s(self.pick(("borderline cardiomegaly", "the heart is borderline enlarged")), k, hedged=True)
        adverb = {"mild": "mildly", "moderate": "moderately", "severe": "markedly"}.get(severity or "", "")
        adjective = {"mild": "mild", "moderate": "moderate", "severe": "marked"}.get(severity or "", "")
        options = [
            f"the heart is {adverb} enlarged".replace("  ", " "),
            f"{adjective} cardiomegaly".strip(),
            f"the cardiac silhouette is {adverb} enlarged".replace("  ", " "),
            f"{adjective} enlargement of the cardiac silhouette".strip(),
        ]
        return _s(self.pick(options), k)

    def cardiomediastinal_causes(self) -> list[str]:
        """Which visible CT findings enlarge the cardiomediastinal silhouette: "nodes", "pericardial"."""
        causes = []
        if "lymphadenopathy" in self.details and _lymph_nodes_visible(self.detail("lymphadenopathy")):
            causes.append("nodes")
        if "pericardial_effusion" in self.details and _pericardial_visible(self.detail("pericardial_effusion")):
            causes.append("pericardial")
        return causes

    def cardiomediastinum(self) -> list[TaggedSentence]:
        k = {"enlarged_cardiomediastinum"}
        nodes = self.detail("lymphadenopathy")
        causes = self.cardiomediastinal_causes()
        out = []
        if "pericardial" in causes:
            out.append(
                self.pick(
                    (
                        _s(
                            "the cardiopericardial silhouette is enlarged with a globular contour; a pericardial "
                            "effusion could account for this",
                            k,
                        ),
                        _s("enlarged, flask-shaped cardiomediastinal silhouette, suggesting pericardial effusion", k),
                        _s("the cardiomediastinal silhouette is enlarged; pericardial effusion cannot be excluded", k),
                        _s("globular enlargement of the cardiomediastinal silhouette", k),
                    )
                )
            )
        if "nodes" in causes:
            stations = [str(s).lower() for s in nodes.get("stations", ()) if str(s).lower() in MEDIASTINALSTATIONS]
            contour = {
                "right paratracheal": "widening of the right paratracheal stripe",
                "left paratracheal": "left paratracheal fullness",
                "subcarinal": "splaying of the carina",
                "prevascular": "anterior mediastinal fullness",
                "aortopulmonary window": "convexity at the aortopulmonary window",
            }
            where = contour[self.pick(stations)] if stations else None
            if where and self.chance(0.7):
                out.append(
                    self.pick(
                        (
                            _s(f"the mediastinum is widened, with {where}, concerning for lymphadenopathy", k),
                            _s(f"mediastinal widening with {where}; lymphadenopathy is likely", k, hedged=True),
                            _s(f"{where} widens the mediastinal contour, possibly lymphadenopathy", k, hedged=True),
                        )
                    )
                )
            else:
                out.append(
                    self.pick(
                        (
                            _s("the superior mediastinum is widened, suggesting lymphadenopathy", k, hedged=True),
                            _s(
                                "lobulated widening of the mediastinal contour; adenopathy cannot be excluded",
                                k,
                                hedged=True,
                            ),
                            _s("the mediastinum is widened", k),
                        )
                    )
                )
        if not causes:
            out.append(
                self.pick(
                    (
                        _s("the cardiomediastinal silhouette is enlarged", k),
                        _s("widened mediastinal contours", k),
                        _s("the mediastinum appears widened", k, hedged=True),
                    )
                )
            )
        return out

    def aorta(self) -> TaggedSentence:
        k = {"calcification_of_the_aorta"}
        return _s(
            self.pick(
                (
                    "atherosclerotic calcification of the aortic arch",
                    "calcified aortic knob",
                    "aortic atherosclerotic calcifications are present",
                    "mural calcification of the aortic arch",
                    "the aortic knob is calcified",
                    "calcified atherosclerotic plaque in the aortic arch",
                )
            ),
            k,
        )

    def heart_block(self) -> list[TaggedSentence]:
        cm, ecm = self.on["cardiomegaly"], self.on["enlarged_cardiomediastinum"]
        both = {"cardiomegaly", "enlarged_cardiomediastinum"}
        out: list[TaggedSentence] = []
        if not cm and not ecm:
            option = int(self.rng.integers(7))
            if option == 0:
                out.append(_s("heart size and mediastinal contours are unremarkable", negative=both))
            elif option == 1:
                out.append(_s("the cardiomediastinal silhouette is unremarkable", negative=both))
            elif option == 2:
                out.append(_s("normal heart size and mediastinal contour", negative=both))
            elif option == 3:
                out += [
                    _s("the heart is normal in size", negative={"cardiomegaly"}),
                    _s(
                        self.pick(("the mediastinum is unremarkable", "the mediastinum is within normal limits")),
                        negative={"enlarged_cardiomediastinum"},
                    ),
                ]
            elif option == 4:
                out.append(_s("heart size, mediastinal contour, and pulmonary vascularity are normal", negative=both))
            elif option == 5:
                out.append(_s("the cardiac and mediastinal contours are normal", negative=both))
            else:
                out.append(_s("the cardiomediastinal silhouette and pulmonary vessels appear normal", negative=both))
        else:
            if cm:
                out.append(self.cardiomegaly())
            if ecm:
                out += self.cardiomediastinum()
            elif self.optional(0.4):
                out.append(
                    _s(
                        self.pick(("mediastinal contours are normal", "the mediastinum is not widened")),
                        negative={"enlarged_cardiomediastinum"},
                    )
                )
            if not cm and "pericardial_effusion" not in self.details and self.optional(0.4):
                out.insert(
                    0, _s(self.pick(("heart size is normal", "the heart is not enlarged")), negative={"cardiomegaly"})
                )
        if self.on["calcification_of_the_aorta"]:
            out.append(self.aorta())
        if self.optional(0.15) and not cm and not any("vascul" in s.text for s in out):
            out.append(_s(self.pick(("pulmonary vascularity is normal", "no pulmonary vascular congestion"))))
        return out

    # -- devices ---------------------------------------------------------------------------------------------
    def devices(self) -> list[TaggedSentence]:
        k = {"support_devices"}
        detail = self.detail("medical_material")
        devices = [str(d).lower() for d in detail.get("devices", ())]
        side_given = _side(detail.get("side"))
        out = []
        for device in devices:
            if device == "pacemaker":
                side = side_given if side_given in ("left", "right") else "left"
                text = self.pick(
                    (
                        f"{side}-sided pacemaker with leads in the right atrium and right ventricle",
                        f"{side} chest wall dual-chamber pacemaker, leads ending in the right atrium and ventricle",
                        f"a {side} subclavian pacer is in place with intact leads",
                        f"{side}-sided pacemaker generator with leads in expected position",
                    )
                )
            elif device == "central venous catheter":
                side = side_given if side_given in ("left", "right") else "right"
                text = self.pick(
                    (
                        f"{side} internal jugular central venous catheter with the tip in the superior vena cava",
                        f"{side}-sided central line terminating in the lower SVC",
                        f"the tip of a {side} subclavian central venous catheter projects over the cavoatrial junction",
                    )
                )
            elif device == "sternotomy wires":
                text = self.pick(
                    (
                        "median sternotomy wires are intact",
                        "postsurgical changes of median sternotomy",
                        "sternotomy wires are noted",
                        "intact median sternotomy wires",
                    )
                )
            elif device == "port catheter":
                side = side_given if side_given in ("left", "right") else "right"
                text = self.pick(
                    (
                        f"{side} chest port with the catheter tip in the SVC",
                        f"a {side}-sided port catheter terminates at the cavoatrial junction",
                        f"{side} chest wall port, catheter tip in the distal superior vena cava",
                    )
                )
            elif device == "endotracheal tube":
                cm = int(self.rng.integers(3, 7))
                text = self.pick(
                    (
                        f"endotracheal tube tip {cm} cm above the carina",
                        f"the endotracheal tube is in satisfactory position, {cm} cm above the carina",
                    )
                )
            else:
                text = f"{device} projects over the chest"
            out.append(_s(text, k))
        if not out:
            out.append(
                _s(
                    self.pick(("support devices project over the chest", "postsurgical support devices are in place")),
                    k,
                )
            )
        return out

    # -- lungs -----------------------------------------------------------------------------------------------
    def emphysema(self) -> TaggedSentence:
        k = {"emphysema"}
        detail = self.detail("emphysema")
        zone = str(detail.get("zone", "")).lower()
        where = {"upper": "upper lobe", "apical": "upper lobe", "lower": "lower lobe", "basal": "lower lobe"}.get(
            zone, ""
        )
        bullae = bool(detail.get("bullae"))
        options = [
            "the lungs are hyperinflated with flattened hemidiaphragms, consistent with emphysema",
            "hyperexpanded lungs, compatible with emphysema",
            "emphysematous changes" + (f", {where} predominant" if where else ""),
            "the lungs are hyperinflated, suggesting COPD",
        ]
        if bullae:
            options += [
                f"bullous emphysema{' in the ' + where + 's' if where else ''}",
                "hyperinflated lungs with bullae, consistent with emphysema",
            ]
        text = self.pick(options)
        return _s(text, k, hedged="suggesting" in text)

    def opacity(self) -> TaggedSentence:
        k = {"lung_opacity"}
        detail = self.detail("lung_opacity")
        lobes = detail.get("lobes") or ([detail["lobe"]] if detail.get("lobe") else [])
        side = detail.get("side")
        if len(lobes) >= 2 and _side_of(lobes) == "bilateral" and self.chance(0.5):
            where = "both lungs"
        elif len(lobes) >= 2 and self.chance(0.5):
            where = f"the {self.region(lobes[0])} and {self.region(lobes[1])}"
        else:
            where = f"the {self.region(lobes[0] if lobes else None, side)}"
        options = [
            (f"patchy airspace opacity in {where}", False),
            (f"hazy opacity in {where}", False),
            (f"ill-defined opacities in {where}", False),
            (f"increased opacity in {where}, possibly infectious or inflammatory", True),
            (f"subtle opacity in {where} may represent an early infiltrate", True),
        ]
        text, hedged = self.pick(options)
        return _s(text, k, hedged=hedged)

    def consolidation(self) -> TaggedSentence:
        k = {"consolidation", "lung_opacity"}
        lobe = self.detail("consolidation").get("lobe")
        lobe_text = str(lobe) if lobe else self.region(None)
        where = self.region(lobe) if lobe else lobe_text
        return _s(
            self.pick(
                (
                    f"focal consolidation in the {lobe_text}",
                    f"dense airspace consolidation involving the {lobe_text}",
                    f"airspace opacity in the {where}, compatible with consolidation",
                    f"{lobe_text} consolidation",
                    f"there is consolidation of the {lobe_text}",
                )
            ),
            k,
        )

    def atelectasis(self) -> TaggedSentence:
        k = {"atelectasis", "lung_opacity"}
        detail = self.detail("atelectasis")
        kind = str(detail.get("kind", "")).lower()
        lobe = detail.get("lobe")
        self.atelectasis_where = str(lobe) if lobe else None
        if kind == "lobar" and lobe:
            options = [
                (f"collapse of the {lobe}", False),
                (f"{lobe} atelectasis with volume loss", False),
                (f"volume loss and increased opacity in the {lobe}, consistent with lobar atelectasis", False),
            ]
        elif kind == "passive":  # relaxation atelectasis next to an effusion: basal on a film
            side = _side_of([lobe]) if lobe else None
            where = self.pick((f"{side} lung base", f"{side} base")) if side in ("left", "right") else "lung bases"
            self.atelectasis_where = f"{side} basilar" if side in ("left", "right") else "bibasilar"
            options = [(f"atelectasis at the {where}", False), (f"{where} atelectasis", False)]
            if self.on["pleural_effusion"]:
                k = k | {"pleural_effusion"}
                options = [(f"compressive atelectasis at the {where} adjacent to the effusion", False)]
        else:
            where = self.region(lobe)
            self.atelectasis_where = where if lobe else None
            options = [
                (f"patchy atelectasis at the {where}", False),
                (f"{where} atelectasis", False),
                (f"streaky {where} opacity, likely atelectasis", True),
            ]
        text, hedged = self.pick(options)
        return _s(text, k, hedged=hedged)

    def lesion(self) -> TaggedSentence:
        k = {"lung_lesion"}
        detail = self.detail("lung_nodule")
        size = _number(detail.get("size"))
        lobe = detail.get("lobe")
        count = int(_number(detail.get("count")) or 1)
        where = self.region(lobe) if lobe else self.region(None)
        size_text = self.size_text(size) if size else ""
        if count > 1 and size:
            text = self.pick(
                (
                    f"several pulmonary nodules, the largest measuring {size_text} in the {where}",
                    f"multiple nodules, up to {size_text} in the {where}",
                )
            )
        elif size:
            text = self.pick(
                (
                    f"a {size_text} nodule projects over the {where}",
                    f"there is a {size_text} rounded nodular density in the {where}",
                    f"{size_text} pulmonary nodule in the {where}",
                    f"a well-circumscribed {size_text} nodule is seen in the {where}",
                )
            )
        else:
            text = self.pick((f"a pulmonary nodule projects over the {where}", f"rounded nodule in the {where}"))
        return _s(text, k)

    def lung_block(self) -> list[TaggedSentence]:
        out: list[TaggedSentence] = []
        if self.on["emphysema"]:
            out.append(self.emphysema())
        if self.on["consolidation"]:
            out.append(self.consolidation())
        if self.on["atelectasis"]:
            out.append(self.atelectasis())
        # lung_opacity from the CT opacity itself (not merely as the parent of consolidation/atelectasis)
        if self.on["lung_opacity"] and (
            "lung_opacity" in self.details or not (self.on["consolidation"] or self.on["atelectasis"])
        ):
            out.append(self.opacity())
        if self.on["lung_lesion"]:
            out.append(self.lesion())
        parenchymal = ("lung_opacity", "consolidation", "atelectasis", "lung_lesion")
        if not any(self.on[k] for k in parenchymal):
            clear = set(parenchymal)
            option = int(self.rng.integers(6))
            text = (
                "the lungs are clear",
                "lungs are clear bilaterally",
                "both lungs are well aerated and clear" if not self.on["emphysema"] else "the lungs are clear",
                "both lungs are clear",
                "no focal airspace disease",
                "clear lungs",
            )[option]
            out.insert(
                0 if self.chance(0.5) else len(out),
                _s(text, negative=clear if option != 4 else {"lung_opacity", "consolidation"}),
            )
        elif self.optional(0.35):
            out.append(_s(self.pick(("the lungs are otherwise clear", "the remaining lungs are clear"))))
        return out

    # -- pleura ------------------------------------------------------------------------------------------------
    def effusion(self) -> TaggedSentence:
        k = {"pleural_effusion"}
        detail = self.detail("pleural_effusion")
        side = _side(detail.get("side"))
        size = {"mild": "small", "small": "small", "moderate": "moderate", "severe": "large", "large": "large"}.get(
            _severity(detail) or "", ""
        )
        if side == "bilateral":
            options = [
                (f"{size} bilateral pleural effusions".strip(), False),
                (f"there are {size} bilateral pleural effusions".replace("  ", " "), False),
                ("blunting of both costophrenic angles, consistent with small effusions", False),
            ]
        else:
            side = side or self.pick(("left", "right"))
            options = [
                (f"{size} {side} pleural effusion".strip(), False),
                (f"there is a {size} {side} pleural effusion".replace("  ", " "), False),
                (f"{side} pleural effusion", False),
            ]
            if size in ("small", ""):
                options += [
                    (f"blunting of the {side} costophrenic angle, possibly a small effusion", True),
                    (f"a small {side} pleural effusion cannot be excluded", True),
                ]
        text, hedged = self.pick(options)
        return _s(text, k, hedged=hedged)

    def pleural_other(self) -> TaggedSentence:
        k = {"pleural_other"}
        detail = self.detail("pulmonary_fibrotic_sequela")
        side = _side(detail.get("side"))
        zone = str(detail.get("zone", "apical")).lower()
        if zone == "basal":
            where = {"bilateral": "both lung bases", "left": "the left lung base", "right": "the right lung base"}.get(
                side or "", "the lung bases"
            )
            text = self.pick(
                (
                    f"fibrosis at {where}",
                    f"linear fibrosis with pleural thickening at {where}",
                    f"chronic pleural-parenchymal scarring at {where}",
                )
            )
        else:
            if side == "bilateral" or side is None:
                text = self.pick(
                    (
                        "biapical pleural thickening",
                        "bilateral apical pleuroparenchymal scarring",
                        "biapical pleural-parenchymal scarring",
                    )
                )
            else:
                text = self.pick(
                    (
                        f"{side} apical pleural thickening",
                        f"{side} apical pleuroparenchymal scarring",
                        f"pleural thickening at the {side} apex",
                    )
                )
        return _s(text, k)

    def pleural_block(self, negated: set[str]) -> list[TaggedSentence]:
        out: list[TaggedSentence] = []
        if self.on["pleural_effusion"]:
            out.append(self.effusion())
        if self.on["pleural_other"]:
            out.append(self.pleural_other())
        # one combined negation of some absent findings, IU style
        items: list[tuple[str, set[str]]] = []
        if not self.on["consolidation"] and "consolidation" not in negated and self.optional(0.5):
            items.append((self.pick(("focal consolidation", "focal airspace consolidation")), {"consolidation"}))
        if not self.on["lung_lesion"] and self.optional(0.1):
            items.append(("suspicious pulmonary nodule", {"lung_lesion"}))
        if not self.on["pleural_effusion"] and self.optional(0.8):
            items.append(
                (self.pick(("pleural effusion", "pleural effusion", "large pleural effusion")), {"pleural_effusion"})
            )
        if self.optional(0.7):
            items.append(("pneumothorax", set()))
        if not self.on["cardiomegaly"] and self.optional(0.1):
            items.append(("pulmonary edema", set()))
        if items:
            order = [items[i] for i in self.rng.permutation(len(items))]
            phrases = [p for p, _ in order]
            if len(phrases) == 1:
                listed = phrases[0]
            elif len(phrases) == 2:
                listed = f"{phrases[0]} or {phrases[1]}"
            else:
                listed = ", ".join(phrases[:-1]) + f", or {phrases[-1]}"
            lead = self.pick(("no", "there is no", "no evidence of", "no visible"))
            negative = set().union(*(t for _, t in order))
            out.append(_s(f"{lead} {listed}", negative=negative))
        elif not self.on["pleural_effusion"] and self.optional(0.4):
            out.append(_s("the costophrenic angles are sharp", negative={"pleural_effusion"}))
        return out

    # -- other -----------------------------------------------------------------------------------------------
    def hernia(self) -> TaggedSentence:
        k = {"hernia"}
        size = _number(self.detail("hiatal_hernia").get("size"))
        adjective = "" if size is None else ("large" if size >= 50 else "moderate" if size >= 40 else "small")
        text, hedged = self.pick(
            (
                ("retrocardiac soft tissue density with an air-fluid level, consistent with a hiatal hernia", False),
                (f"{adjective} hiatal hernia".strip(), False),
                ("retrocardiac air-fluid level, likely a hiatal hernia", True),
                (f"a {adjective} hiatal hernia is noted".replace("  ", " "), False),
            )
        )
        return _s(text, k, hedged=hedged)

    def bones(self) -> TaggedSentence | None:
        if not self.optional(0.5):
            return None
        return _s(
            self.pick(
                (
                    "no acute bony abnormality",
                    "the osseous structures are intact",
                    "visualized osseous structures are unremarkable",
                    "no acute osseous findings",
                    "the bony thorax is unremarkable",
                    "soft tissues and bones are unremarkable",
                )
            )
        )

    # -- impression --------------------------------------------------------------------------------------------
    def impression_items(self) -> list[TaggedSentence]:
        """The impression: the most salient positives (acute first, at most three), or a normal statement."""
        candidates: list[tuple[TaggedSentence, float]] = []  # (sentence, chance to be listed), salience order
        if self.on["consolidation"]:
            lobe = self.detail("consolidation").get("lobe")
            text = self.pick(
                (
                    f"{lobe} consolidation" if lobe else "focal consolidation",
                    f"airspace consolidation in the {lobe or 'lung'}",
                )
            )
            candidates.append((_s(text, {"consolidation", "lung_opacity"}), 1.0))
        if self.on["enlarged_cardiomediastinum"]:
            causes = self.cardiomediastinal_causes()
            if "nodes" in causes:
                options = (
                    "mediastinal widening, possibly lymphadenopathy; chest CT is recommended",
                    "widened mediastinum, suspicious for adenopathy",
                )
            elif "pericardial" in causes:
                options = (
                    "enlarged cardiopericardial silhouette; consider pericardial effusion",
                    "enlarged cardiomediastinal silhouette, pericardial effusion not excluded",
                )
            else:
                options = ("enlarged cardiomediastinal silhouette", "widened mediastinum")
            candidates.append((_s(self.pick(options), {"enlarged_cardiomediastinum"}), 0.9))
        if self.on["lung_lesion"]:
            size = _number(self.detail("lung_nodule").get("size"))
            lead = f"{self.size_text(size)} pulmonary nodule" if size else "pulmonary nodule"
            text = self.pick((f"{lead}; chest CT recommended", f"{lead}, further evaluation with CT suggested", lead))
            candidates.append((_s(text, {"lung_lesion"}), 0.9))
        if self.on["pleural_effusion"]:
            side = _side(self.detail("pleural_effusion").get("side"))
            text = "bilateral pleural effusions" if side == "bilateral" else f"{side or ''} pleural effusion".strip()
            candidates.append((_s(text, {"pleural_effusion"}), 0.9))
        if self.on["atelectasis"]:
            where = self.atelectasis_where
            text = f"{where} atelectasis" if where and self.chance(0.5) else "atelectasis"
            candidates.append((_s(text, {"atelectasis", "lung_opacity"}), 0.6))
        if self.on["lung_opacity"] and not (self.on["consolidation"] or self.on["atelectasis"]):
            text = self.pick(("patchy airspace opacity", "lung opacity, follow-up radiograph suggested"))
            candidates.append((_s(text, {"lung_opacity"}), 0.8))
        if self.on["cardiomegaly"]:
            text = self.pick(("cardiomegaly", "enlarged heart", "cardiomegaly without edema"))
            candidates.append((_s(text, {"cardiomegaly"}), 0.6))
        if self.on["emphysema"]:
            text = self.pick(("emphysema", "hyperinflation consistent with COPD", "emphysematous changes"))
            candidates.append((_s(text, {"emphysema"}), 0.4))
        if self.on["hernia"]:
            candidates.append((_s("hiatal hernia", {"hernia"}), 0.35))
        if self.on["support_devices"]:
            text = self.pick(("support devices in expected position", "lines and devices as described"))
            candidates.append((_s(text, {"support_devices"}), 0.1))
        acute = any(self.on[k] for k in ACUTE_KEYS)
        cap = int(self.rng.choice((1, 2, 3), p=(0.35, 0.4, 0.25)))
        items: list[TaggedSentence] = []
        for sentence, p in candidates:
            first_acute = acute and not items and sentence.positive & ACUTE_KEYS
            if len(items) < cap and (first_acute or self.chance(p)):
                items.append(sentence)
        if acute and not any(s.positive & ACUTE_KEYS for s in items):
            items.insert(0, next(s for s, _ in candidates if s.positive & ACUTE_KEYS))
        if not acute:
            normal = self.pick(
                (
                    "no acute cardiopulmonary abnormality",
                    "no acute cardiopulmonary abnormality",
                    "no acute cardiopulmonary process",
                    "no active disease",
                    "no acute disease",
                    "no acute cardiopulmonary findings",
                    "no acute cardiopulmonary disease",
                    "negative for acute cardiopulmonary abnormality",
                    "no evidence of active disease",
                    "no radiographic evidence of acute cardiopulmonary disease",
                )
            )
            items.insert(0, _s(normal, {"no_finding"} if self.on["no_finding"] else set()))
        return items


def _side(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).lower()
    if text in ("both", "bilateral", "bilaterally"):
        return "bilateral"
    return text if text in ("left", "right") else None


def _side_of(lobes: Sequence[str]) -> str | None:
    sides = {str(lobe).split()[0].lower() for lobe in lobes if str(lobe).split()}
    return "bilateral" if sides >= {"left", "right"} else next(iter(sides), None)


def compose_radiograph_report(
    cxr_labels: Mapping[str, int], details: Mapping[str, Mapping[str, Any]] | None, rng: np.random.Generator
) -> RadiographReport:
    """Write a chest X-ray report as tagged sentences (see :func:`write_radiograph_report`).

    Raises:
        KeyError: for a label key outside :data:`CXR_KEYS` (e.g. CT keys passed by mistake).
        ValueError: when ``no_finding`` contradicts the pathology labels.
    """
    unknown = set(cxr_labels) - set(CXR_KEYS)
    if unknown:
        raise KeyError(f"unknown radiograph label keys {sorted(unknown)}; expected a subset of {list(CXR_KEYS)}")
    labels = {k: int(bool(cxr_labels.get(k, 0))) for k in CXR_KEYS}
    normal = int(not any(labels[k] for k in PATHOLOGY_KEYS))
    if "no_finding" in cxr_labels and labels["no_finding"] != normal:
        raise ValueError(f"no_finding={labels['no_finding']} contradicts the pathology labels {labels}")
    labels["no_finding"] = normal
    w = _Writer(labels, details or {}, rng)

    heart = w.heart_block()
    lungs = w.lung_block()
    negated = set().union(*(s.negative for s in lungs)) if lungs else set()
    pleura = w.pleural_block(negated)
    devices = w.devices() if labels["support_devices"] else []
    hernia = [w.hernia()] if labels["hernia"] else []
    bones = w.bones()

    blocks = [heart, lungs] if w.chance(0.7) else [lungs, heart]
    blocks.append(pleura)
    if devices:
        blocks.insert(0 if w.chance(0.55) else len(blocks), devices)
    if hernia:
        blocks.insert(1 + int(w.rng.integers(len(blocks))), hernia)
    findings = [s for block in blocks for s in block]
    if bones is not None:
        findings.append(bones)

    impression = w.impression_items()
    numbered = len(impression) > 1 and w.chance(0.35)
    return RadiographReport(tuple(findings), tuple(impression), numbered)


def write_radiograph_report(
    cxr_labels: Mapping[str, int], details: Mapping[str, Mapping[str, Any]] | None, rng: np.random.Generator
) -> str:
    """A short chest X-ray report in the IU X-ray / MIMIC-CXR style, consistent with the radiograph labels.

    Args:
        cxr_labels: radiograph labels (:func:`radiograph_labels`; missing keys count as 0, ``no_finding`` is
            derived when absent).
        details: the phantom's CT ``details`` (per present CT finding; all optional): sides, lobes, sizes and
            devices fill the sentences.
        rng: the case's text generator; the same state gives the same report.

    Returns:
        ``"FINDINGS: ...\\nIMPRESSION: ..."``.
    """
    return compose_radiograph_report(cxr_labels, details, rng).text


# ----------------------------------------------------------------------------------------------------------------
# Random CT cases (tests, length measurements)
# ----------------------------------------------------------------------------------------------------------------

_SEVERITIES = ("mild", "moderate", "severe")


def sample_ct_case(
    rng: np.random.Generator, prevalence: Mapping[str, float] | float | None = None
) -> tuple[dict[str, int], dict[str, dict[str, Any]]]:
    """Random CT labels (independent Bernoulli) and phantom-like ``details`` for them.

    Args:
        rng: generator.
        prevalence: per-key probability (default :data:`CT_RATE_PREVALENCE`) or one probability for all keys.

    Returns:
        ``(labels, details)`` with the schema of the phantom's details.
    """
    if prevalence is None:
        prevalence = CT_RATE_PREVALENCE
    p = {k: float(prevalence) for k in CT_KEYS} if isinstance(prevalence, (int, float)) else prevalence
    labels = {k: int(rng.random() < p.get(k, 0.0)) for k in CT_KEYS}
    details: dict[str, dict[str, Any]] = {}

    def pick(options):
        return options[int(rng.integers(len(options)))]

    for key in (k for k in CT_KEYS if labels[k]):
        if key == "medical_material":
            n = int(rng.integers(1, 3))
            details[key] = {
                "devices": [str(d) for d in rng.choice(DEVICES, n, replace=False)],
                "side": pick(("left", "right")),
            }
        elif key in ("cardiomegaly", "arterial_wall_calcification"):
            details[key] = {"severity": pick(_SEVERITIES)}
        elif key == "pericardial_effusion":
            thickness = float(rng.uniform(4, 25))
            severity = "mild" if thickness < 10 else "moderate" if thickness < 20 else "severe"
            details[key] = {"thickness_mm": round(thickness, 1), "severity": severity}
        elif key == "lymphadenopathy":
            n = int(rng.integers(1, 4))
            details[key] = {
                "stations": [str(s) for s in rng.choice(STATIONS, n, replace=False)],
                "size": int(rng.integers(10, 26)),
            }
        elif key == "emphysema":
            details[key] = {
                "kind": pick(("centrilobular", "paraseptal", "panlobular")),
                "zone": pick(("upper", "lower", "diffuse")),
                "bullae": int(rng.integers(0, 4)),
                "severity": pick(_SEVERITIES),
            }
        elif key == "atelectasis":
            details[key] = {"lobe": pick(LOBES), "kind": pick(("subsegmental", "passive", "lobar"))}
        elif key == "lung_nodule":
            details[key] = {"lobe": pick(LOBES), "size": int(rng.integers(4, 31)), "count": int(rng.integers(1, 4))}
        elif key == "lung_opacity":
            lobes = [str(lobe) for lobe in rng.choice(LOBES, int(rng.integers(1, 3)), replace=False)]
            details[key] = {"lobes": lobes, "side": _side_of(lobes)}
        elif key == "pulmonary_fibrotic_sequela":
            details[key] = {"side": pick(("left", "right", "bilateral")), "zone": pick(("apical", "basal"))}
        elif key == "pleural_effusion":
            details[key] = {"side": pick(("left", "right", "bilateral")), "severity": pick(_SEVERITIES)}
        elif key == "consolidation":
            details[key] = {"lobe": pick(LOBES), "volume_ml": round(float(rng.uniform(25, 300)), 1)}
        elif key == "hiatal_hernia":
            details[key] = {"size": int(rng.integers(15, 70))}
        else:
            details[key] = {}
    return labels, details


def mentioned_labels(text: str) -> set[str]:
    """Labels whose :data:`MENTION_PATTERNS` match ``text`` (present or absent: the tags say which)."""
    return {k for k, pattern in MENTION_PATTERNS.items() if re.search(pattern, text, flags=re.IGNORECASE)}
