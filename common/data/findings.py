"""The finding vocabulary shared by the embedded phantoms, the report text, the prompts and the evaluation.

The 18 abnormalities of CT-RATE, in CT-RATE's column order, with the display names of its label columns, so a
model trained on the phantoms is prompted and scored exactly like one trained on CT-RATE.

``prevalence`` is the fraction of positive labels of each finding in the 689 labelled chest-CT reports of
``shared/data/reports/chest_ct_reports_labeled.csv`` (all splits together), rounded to 3 decimals. It lets a
sampler draw label vectors with realistic marginals (the co-occurrences are not modelled here).

``organ`` is the place in the radiological reading order (see :data:`ORGANS`) where a report states or negates
the finding (:mod:`common.data.report_writer`). ``positive`` / ``negative`` are short, plain sentence pools
(tests, fallbacks, simple text baselines); the report writer builds its richer sentences from the same details.
Placeholders allowed in ``positive``: ``{side}`` ("left", "right", "bilateral"), ``{lobe}`` ("right upper lobe",
...) and ``{size}`` (mm, an integer), filled from the finding's details (see ``detail_fields``); ``negative``
sentences have no placeholders.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

__all__ = [
    "DEVICES",
    "FINDINGS",
    "FINDING_KEYS",
    "FINDING_NAMES",
    "LOBES",
    "ORGANS",
    "STATIONS",
    "Finding",
    "finding_by_key",
]  # fmt: skip

ORGANS: tuple[str, ...] = (
    "technique",
    "airways",
    "mediastinum",
    "pericardium",
    "esophagus",
    "lymph_nodes",
    "lungs",
    "pleura",
    "abdomen",
    "chest_wall",
    "bones",
)
"""Reading order of a chest-CT report: airways, mediastinal vessels/heart/aorta, pericardium, esophagus, lymph
nodes, lung parenchyma, pleura, upper abdomen, chest-wall soft tissues, bones."""


@dataclass(frozen=True)
class Finding:
    """A radiological finding with its report phrasings and zero-shot prompts.

    Attributes:
        key: snake_case identifier used in datalist ``labels`` dicts.
        name: display name (CT-RATE label column spelling).
        positive: report sentences stating the finding is present (``{side}``/``{lobe}``/``{size}`` placeholders).
        negative: report sentences negating the finding (no placeholders).
        prompts_positive: zero-shot prompts for presence.
        prompts_negative: zero-shot prompts for absence (paired with ``prompts_positive`` by index).
        prevalence: fraction of positive labels in the 689 labelled real chest-CT reports.
        organ: section of the report (one of :data:`ORGANS`) where the finding is stated or negated.
        detail_fields: the optional ``details[key]`` fields a phantom may give (see the report writer).
    """

    key: str
    name: str
    positive: tuple[str, ...]
    negative: tuple[str, ...]
    prompts_positive: tuple[str, ...] = field(default=())
    prompts_negative: tuple[str, ...] = field(default=())
    prevalence: float = 0.0
    organ: str = "lungs"
    detail_fields: tuple[str, ...] = field(default=())

    @property
    def placeholders(self) -> frozenset[str]:
        """Names of the ``{...}`` placeholders used by the ``positive`` sentences."""
        fmt = string.Formatter()
        return frozenset(name for text in self.positive for _, name, _, _ in fmt.parse(text) if name)


FINDINGS: tuple[Finding, ...] = (
    Finding(
        key="medical_material",
        name="Medical material",
        positive=(
            "A cardiac pacemaker is seen in the chest wall.",
            "A central venous catheter is in place.",
            "Median sternotomy wires are present.",
            "Medical devices are seen in the thorax.",
        ),
        negative=(
            "No medical devices are seen.",
            "No catheter, tube or implanted device is present.",
            "There is no foreign medical material in the thorax.",
        ),
        prompts_positive=(
            "Medical devices are seen in the chest.",
            "A catheter or implanted device is present.",
            "A pacemaker or support line is visible.",
        ),
        prompts_negative=(
            "No medical devices are seen in the chest.",
            "No catheter or implanted device is present.",
            "No pacemaker or support line is visible.",
        ),
        prevalence=0.134,
        organ="chest_wall",
        detail_fields=("devices", "side"),
    ),
    Finding(
        key="arterial_wall_calcification",
        name="Arterial wall calcification",
        positive=(
            "There is calcification of the aortic wall.",
            "Calcified atherosclerotic plaques are seen in the thoracic aorta.",
            "Arterial wall calcifications are present.",
        ),
        negative=(
            "No arterial wall calcification.",
            "The aortic wall shows no calcification.",
            "There are no atherosclerotic calcifications in the aorta.",
        ),
        prompts_positive=(
            "The aortic wall is calcified.",
            "Calcified plaques are seen in the thoracic aorta.",
            "There are atherosclerotic calcifications of the arteries.",
        ),
        prompts_negative=(
            "The aortic wall is not calcified.",
            "No calcified plaques are seen in the thoracic aorta.",
            "There are no atherosclerotic calcifications of the arteries.",
        ),
        prevalence=0.276,
        organ="mediastinum",
        detail_fields=("plaques", "severity"),
    ),
    Finding(
        key="cardiomegaly",
        name="Cardiomegaly",
        positive=(
            "The heart is enlarged.",
            "Cardiomegaly is noted.",
            "Heart size is increased.",
        ),
        negative=(
            "No cardiomegaly.",
            "The heart is not enlarged.",
            "There is no cardiac enlargement.",
        ),
        prompts_positive=("The heart is enlarged.", "Heart size is increased.", "Cardiomegaly is seen."),
        prompts_negative=("The heart is not enlarged.", "Heart size is normal.", "No cardiomegaly is seen."),
        prevalence=0.123,
        organ="mediastinum",
        detail_fields=("severity",),
    ),
    Finding(
        key="pericardial_effusion",
        name="Pericardial effusion",
        positive=(
            "There is a pericardial effusion.",
            "Fluid is seen in the pericardial space.",
            "A small pericardial effusion is present.",
        ),
        negative=(
            "No pericardial effusion.",
            "Pericardial effusion or thickening was not observed.",
            "There is no fluid in the pericardial space.",
        ),
        prompts_positive=(
            "Fluid is seen in the pericardial space.",
            "A pericardial effusion is seen.",
            "The pericardial sac contains fluid.",
        ),
        prompts_negative=(
            "No fluid is seen in the pericardial space.",
            "No pericardial effusion is seen.",
            "The pericardial sac contains no fluid.",
        ),
        prevalence=0.073,
        organ="pericardium",
        detail_fields=("thickness_mm", "severity"),
    ),
    Finding(
        key="coronary_artery_wall_calcification",
        name="Coronary artery wall calcification",
        positive=(
            "There are calcifications in the coronary arteries.",
            "Coronary artery wall calcification is present.",
            "Calcified plaques are seen along the coronary arteries.",
        ),
        negative=(
            "No coronary artery calcification.",
            "The coronary arteries show no calcification.",
            "There is no calcified plaque in the coronary arteries.",
        ),
        prompts_positive=(
            "The coronary arteries are calcified.",
            "Calcified plaques are seen in the coronary arteries.",
            "There is coronary artery calcification.",
        ),
        prompts_negative=(
            "The coronary arteries are not calcified.",
            "No calcified plaques are seen in the coronary arteries.",
            "There is no coronary artery calcification.",
        ),
        prevalence=0.228,
        organ="mediastinum",
        detail_fields=("vessels", "severity"),
    ),
    Finding(
        key="hiatal_hernia",
        name="Hiatal hernia",
        positive=(
            "There is a hiatal hernia.",
            "A sliding hiatal hernia is seen.",
            "Part of the stomach has herniated through the esophageal hiatus.",
        ),
        negative=(
            "No hiatal hernia.",
            "There is no hiatal hernia.",
            "No herniation through the esophageal hiatus is seen.",
        ),
        prompts_positive=(
            "A hiatal hernia is seen.",
            "The stomach herniates through the esophageal hiatus.",
            "There is a sliding hiatal hernia.",
        ),
        prompts_negative=(
            "No hiatal hernia is seen.",
            "The stomach does not herniate through the esophageal hiatus.",
            "There is no sliding hiatal hernia.",
        ),
        prevalence=0.158,
        organ="esophagus",
        detail_fields=("size", "severity"),
    ),
    Finding(
        key="lymphadenopathy",
        name="Lymphadenopathy",
        positive=(
            "Enlarged mediastinal lymph nodes are present.",
            "There is mediastinal lymphadenopathy.",
            "Lymph nodes of pathological size are seen in the mediastinum.",
        ),
        negative=(
            "No lymphadenopathy.",
            "No enlarged lymph nodes are seen in the mediastinum or hila.",
            "There are no lymph nodes of pathological size.",
        ),
        prompts_positive=(
            "Enlarged lymph nodes are seen in the mediastinum.",
            "There is mediastinal lymphadenopathy.",
            "Lymph nodes of pathological size are present.",
        ),
        prompts_negative=(
            "No enlarged lymph nodes are seen in the mediastinum.",
            "There is no mediastinal lymphadenopathy.",
            "No lymph nodes of pathological size are present.",
        ),
        prevalence=0.292,
        organ="lymph_nodes",
        detail_fields=("stations", "size"),
    ),
    Finding(
        key="emphysema",
        name="Emphysema",
        positive=(
            "There are emphysematous changes in both lungs.",
            "Emphysema is present.",
            "Centrilobular emphysema is seen in the upper zones.",
        ),
        negative=(
            "No emphysema.",
            "There is no evidence of emphysema.",
            "No emphysematous changes are seen.",
        ),
        prompts_positive=(
            "Emphysematous changes are seen in the lungs.",
            "The lungs show emphysema.",
            "There are areas of emphysema.",
        ),
        prompts_negative=(
            "No emphysematous changes are seen in the lungs.",
            "The lungs show no emphysema.",
            "There are no areas of emphysema.",
        ),
        prevalence=0.219,
        organ="lungs",
        detail_fields=("kind", "zone", "bullae", "severity"),
    ),
    Finding(
        key="atelectasis",
        name="Atelectasis",
        positive=(
            "There is atelectasis in the {lobe}.",
            "Subsegmental atelectasis is seen in the {lobe}.",
            "Atelectatic changes are noted in the {lobe}.",
        ),
        negative=(
            "No atelectasis.",
            "There is no atelectasis.",
            "No atelectatic change is seen.",
        ),
        prompts_positive=(
            "Atelectasis is seen in the lung.",
            "There are atelectatic changes.",
            "Part of the lung is collapsed.",
        ),
        prompts_negative=(
            "No atelectasis is seen in the lung.",
            "There are no atelectatic changes.",
            "No part of the lung is collapsed.",
        ),
        prevalence=0.25,
        organ="lungs",
        detail_fields=("lobe", "kind"),
    ),
    Finding(
        key="lung_nodule",
        name="Lung nodule",
        positive=(
            "A {size} mm solid nodule is seen in the {lobe}.",
            "There is a {size} mm pulmonary nodule in the {lobe}.",
            "A nodule measuring {size} mm is noted in the {lobe}.",
        ),
        negative=(
            "No pulmonary nodules are identified.",
            "There are no lung nodules.",
            "No nodule or mass is seen in either lung.",
        ),
        prompts_positive=(
            "A pulmonary nodule is seen.",
            "There is a nodule in the lung.",
            "A solid lung nodule is present.",
        ),
        prompts_negative=(
            "No pulmonary nodule is seen.",
            "There is no nodule in the lung.",
            "No solid lung nodule is present.",
        ),
        prevalence=0.415,
        organ="lungs",
        detail_fields=("lobe", "size", "count", "kind"),
    ),
    Finding(
        key="lung_opacity",
        name="Lung opacity",
        positive=(
            "There is a ground-glass opacity in the {side} lung.",
            "Ground-glass opacities are seen in the lungs.",
            "Hazy increased density is seen in the {side} lung.",
        ),
        negative=(
            "No lung opacity.",
            "There are no ground-glass opacities.",
            "No opacity is seen in the lung parenchyma.",
        ),
        prompts_positive=(
            "Ground-glass opacities are seen in the lungs.",
            "There is an opacity in the lung.",
            "The lung shows hazy increased density.",
        ),
        prompts_negative=(
            "No ground-glass opacities are seen in the lungs.",
            "There is no opacity in the lung.",
            "The lung shows no hazy increased density.",
        ),
        prevalence=0.316,
        organ="lungs",
        detail_fields=("lobes", "side", "kind"),
    ),
    Finding(
        key="pulmonary_fibrotic_sequela",
        name="Pulmonary fibrotic sequela",
        positive=(
            "Fibrotic sequelae are seen in the {side} lung.",
            "There are linear fibrotic scars in the lungs.",
            "Parenchymal sequelae with fibrotic bands are noted.",
        ),
        negative=(
            "No fibrotic sequelae.",
            "There are no fibrotic scars in the lungs.",
            "No pulmonary fibrosis is seen.",
        ),
        prompts_positive=(
            "Fibrotic sequelae are seen in the lungs.",
            "There are fibrotic scars in the lung.",
            "The lung shows fibrotic bands.",
        ),
        prompts_negative=(
            "No fibrotic sequelae are seen in the lungs.",
            "There are no fibrotic scars in the lung.",
            "The lung shows no fibrotic bands.",
        ),
        prevalence=0.282,
        organ="lungs",
        detail_fields=("side", "zone"),
    ),
    Finding(
        key="pleural_effusion",
        name="Pleural effusion",
        positive=(
            "There is a {side} pleural effusion.",
            "Pleural fluid is seen on the {side}.",
            "A {side} pleural effusion is present.",
        ),
        negative=(
            "No pleural effusion.",
            "There is no pleural effusion.",
            "Pleural effusion or thickening was not detected.",
        ),
        prompts_positive=(
            "Fluid is seen in the pleural space.",
            "A pleural effusion is seen.",
            "The pleural space contains fluid.",
        ),
        prompts_negative=(
            "No fluid is seen in the pleural space.",
            "No pleural effusion is seen.",
            "The pleural space contains no fluid.",
        ),
        prevalence=0.144,
        organ="pleura",
        detail_fields=("side", "severity"),
    ),
    Finding(
        key="mosaic_attenuation_pattern",
        name="Mosaic attenuation pattern",
        positive=(
            "A mosaic attenuation pattern is seen in the {side} lung.",
            "There is mosaic attenuation of the lung parenchyma.",
            "Patchy areas of differing attenuation form a mosaic pattern.",
        ),
        negative=(
            "No mosaic attenuation pattern.",
            "There is no mosaic attenuation.",
            "No mosaic pattern is seen in the lungs.",
        ),
        prompts_positive=(
            "A mosaic attenuation pattern is seen.",
            "The lungs show mosaic attenuation.",
            "There is a mosaic pattern in the lungs.",
        ),
        prompts_negative=(
            "No mosaic attenuation pattern is seen.",
            "The lungs show no mosaic attenuation.",
            "There is no mosaic pattern in the lungs.",
        ),
        prevalence=0.089,
        organ="lungs",
        detail_fields=("side", "zone"),
    ),
    Finding(
        key="peribronchial_thickening",
        name="Peribronchial thickening",
        positive=(
            "There is peribronchial thickening in the {side} lung.",
            "Bronchial walls are thickened.",
            "Peribronchial thickening is noted in the lower lobes.",
        ),
        negative=(
            "No peribronchial thickening.",
            "There is no bronchial wall thickening.",
            "No peribronchial thickening is seen.",
        ),
        prompts_positive=(
            "The bronchial walls are thickened.",
            "Peribronchial thickening is seen.",
            "There is bronchial wall thickening.",
        ),
        prompts_negative=(
            "The bronchial walls are not thickened.",
            "No peribronchial thickening is seen.",
            "There is no bronchial wall thickening.",
        ),
        prevalence=0.096,
        organ="lungs",
        detail_fields=("side", "zone"),
    ),
    Finding(
        key="consolidation",
        name="Consolidation",
        positive=(
            "There is consolidation in the {lobe}.",
            "Airspace consolidation is seen in the {lobe}.",
            "A consolidated area is present in the {lobe}.",
        ),
        negative=(
            "No consolidation.",
            "There is no focal consolidation.",
            "No airspace consolidation is seen.",
        ),
        prompts_positive=(
            "Airspace consolidation is seen.",
            "There is consolidation in the lung.",
            "Part of the lung is consolidated.",
        ),
        prompts_negative=(
            "No airspace consolidation is seen.",
            "There is no consolidation in the lung.",
            "No part of the lung is consolidated.",
        ),
        prevalence=0.165,
        organ="lungs",
        detail_fields=("lobe", "volume_ml", "air_bronchogram"),
    ),
    Finding(
        key="bronchiectasis",
        name="Bronchiectasis",
        positive=(
            "There is bronchiectasis in the {lobe}.",
            "Cylindrical bronchiectasis is seen in the {lobe}.",
            "Dilated bronchi consistent with bronchiectasis are noted in the {lobe}.",
        ),
        negative=(
            "No bronchiectasis.",
            "There is no bronchiectasis.",
            "No bronchial dilatation is seen.",
        ),
        prompts_positive=(
            "Bronchiectasis is seen in the lung.",
            "The bronchi are dilated.",
            "There are bronchiectatic changes.",
        ),
        prompts_negative=(
            "No bronchiectasis is seen in the lung.",
            "The bronchi are not dilated.",
            "There are no bronchiectatic changes.",
        ),
        prevalence=0.093,
        organ="lungs",
        detail_fields=("lobe", "kind"),
    ),
    Finding(
        key="interlobular_septal_thickening",
        name="Interlobular septal thickening",
        positive=(
            "There is interlobular septal thickening in the {side} lung.",
            "Interlobular septa are thickened at the lung bases.",
            "Smooth thickening of the interlobular septa is seen.",
        ),
        negative=(
            "No interlobular septal thickening.",
            "The interlobular septa are not thickened.",
            "There is no septal thickening.",
        ),
        prompts_positive=(
            "The interlobular septa are thickened.",
            "Interlobular septal thickening is seen.",
            "There is septal thickening in the lungs.",
        ),
        prompts_negative=(
            "The interlobular septa are not thickened.",
            "No interlobular septal thickening is seen.",
            "There is no septal thickening in the lungs.",
        ),
        prevalence=0.081,
        organ="lungs",
        detail_fields=("side", "zone"),
    ),
)

FINDING_NAMES: tuple[str, ...] = tuple(f.name for f in FINDINGS)
FINDING_KEYS: tuple[str, ...] = tuple(f.key for f in FINDINGS)

# Vocabulary of the findings' details (phantoms, CT and radiograph reports)
LOBES: tuple[str, ...] = (
    "right upper lobe",
    "right middle lobe",
    "right lower lobe",
    "left upper lobe",
    "left lower lobe",
)
STATIONS: tuple[str, ...] = (
    "right paratracheal", "left paratracheal", "subcarinal", "right hilar", "left hilar", "prevascular",
    "aortopulmonary window",
)  # fmt: skip
"""Mediastinal and hilar lymph-node stations."""
DEVICES: tuple[str, ...] = (
    "pacemaker", "central venous catheter", "sternotomy wires", "port catheter", "endotracheal tube",
)  # fmt: skip
"""Medical material (CT-RATE label 1) the phantoms place and the reports name."""
_BY_KEY = {f.key: f for f in FINDINGS}


def finding_by_key(key: str) -> Finding:
    """The :class:`Finding` of a snake_case key.

    Raises:
        KeyError: for an unknown key (the message lists the known ones).
    """
    try:
        return _BY_KEY[key]
    except KeyError:
        raise KeyError(f"unknown finding {key!r}; known: {list(_BY_KEY)}") from None
