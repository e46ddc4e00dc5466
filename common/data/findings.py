"""The finding vocabulary shared by the embedded phantoms, the report text, the prompts and the evaluation.

Names follow the CT-RATE label set where one exists, so a model trained on the phantoms is
prompted the same way as one trained on CT-RATE.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Finding", "FINDINGS", "FINDING_NAMES", "finding_by_key"]


@dataclass(frozen=True)
class Finding:
    """A radiological finding with its report phrasings and zero-shot prompts.

    Attributes:
        key: snake_case identifier used in datalist ``labels`` dicts.
        name: display name (CT-RATE spelling).
        positive: report sentences stating the finding is present (``{side}``/``{size}``/``{lobe}`` placeholders allowed).
        negative: report sentences negating the finding.
        prompts_positive: zero-shot prompts for presence.
        prompts_negative: zero-shot prompts for absence (paired with ``prompts_positive`` by index).
    """

    key: str
    name: str
    positive: tuple[str, ...]
    negative: tuple[str, ...]
    prompts_positive: tuple[str, ...] = field(default=())
    prompts_negative: tuple[str, ...] = field(default=())


FINDINGS: tuple[Finding, ...] = (
    Finding(
        key="lung_nodule",
        name="Lung nodule",
        positive=(
            "A {size} mm solid nodule is seen in the {lobe}.",
            "There is a {size} mm pulmonary nodule in the {lobe}.",
            "Solid lung nodule measuring {size} mm in the {lobe}.",
            "Noted is a nodular opacity of {size} mm in the {lobe}.",
        ),
        negative=(
            "No pulmonary nodules are identified.",
            "There are no suspicious lung nodules.",
            "No nodule or mass is seen in either lung.",
            "Lungs are free of nodules.",
        ),
        prompts_positive=("Lung nodule is present.", "There is a pulmonary nodule.", "A solid nodule is seen in the lung."),
        prompts_negative=("Lung nodule is not present.", "There is no pulmonary nodule.", "No nodule is seen in the lung."),
    ),
    Finding(
        key="pleural_effusion",
        name="Pleural effusion",
        positive=(
            "There is a {side} pleural effusion.",
            "A {side} pleural effusion is present.",
            "Fluid is seen in the {side} pleural space.",
            "Moderate {side} pleural effusion with adjacent compression.",
        ),
        negative=(
            "No pleural effusion.",
            "There is no pleural effusion.",
            "The pleural spaces are clear.",
            "No fluid in the pleural spaces.",
        ),
        prompts_positive=("Pleural effusion is present.", "There is a pleural effusion.", "Fluid in the pleural space."),
        prompts_negative=("Pleural effusion is not present.", "There is no pleural effusion.", "The pleural spaces are clear."),
    ),
    Finding(
        key="cardiomegaly",
        name="Cardiomegaly",
        positive=(
            "The heart is enlarged.",
            "Cardiomegaly is noted.",
            "There is cardiomegaly.",
            "Enlarged cardiac silhouette.",
        ),
        negative=(
            "Heart size is normal.",
            "No cardiomegaly.",
            "The heart is not enlarged.",
            "Cardiac size within normal limits.",
        ),
        prompts_positive=("Cardiomegaly is present.", "The heart is enlarged.", "There is cardiomegaly."),
        prompts_negative=("Cardiomegaly is not present.", "Heart size is normal.", "There is no cardiomegaly."),
    ),
    Finding(
        key="emphysema",
        name="Emphysema",
        positive=(
            "There are emphysematous changes in both lungs.",
            "Emphysema is present.",
            "Centrilobular emphysema is seen.",
            "Diffuse low-attenuation areas consistent with emphysema.",
        ),
        negative=(
            "No emphysema.",
            "There is no evidence of emphysema.",
            "Lung parenchyma shows no emphysematous change.",
            "No emphysematous changes are seen.",
        ),
        prompts_positive=("Emphysema is present.", "There is emphysema.", "Emphysematous changes are seen."),
        prompts_negative=("Emphysema is not present.", "There is no emphysema.", "No emphysematous changes are seen."),
    ),
    Finding(
        key="consolidation",
        name="Consolidation",
        positive=(
            "There is consolidation in the {lobe}.",
            "Airspace consolidation is seen in the {lobe}.",
            "Consolidation involving the {lobe}.",
            "A dense consolidation is present in the {lobe}.",
        ),
        negative=(
            "No consolidation.",
            "There is no focal consolidation.",
            "No airspace consolidation is seen.",
            "The lungs show no consolidation.",
        ),
        prompts_positive=("Consolidation is present.", "There is lung consolidation.", "Airspace consolidation is seen."),
        prompts_negative=("Consolidation is not present.", "There is no lung consolidation.", "No airspace consolidation is seen."),
    ),
    Finding(
        key="arterial_wall_calcification",
        name="Arterial wall calcification",
        positive=(
            "There is calcification of the aortic wall.",
            "Atherosclerotic calcification of the aorta is noted.",
            "Arterial wall calcifications are present.",
            "Calcified plaques are seen in the thoracic aorta.",
        ),
        negative=(
            "No arterial wall calcification.",
            "The aorta shows no calcification.",
            "There is no vascular calcification.",
            "No atherosclerotic calcifications are seen.",
        ),
        prompts_positive=(
            "Arterial wall calcification is present.",
            "The aortic wall is calcified.",
            "There is vascular calcification.",
        ),
        prompts_negative=(
            "Arterial wall calcification is not present.",
            "The aortic wall is not calcified.",
            "There is no vascular calcification.",
        ),
    ),
)

FINDING_NAMES: tuple[str, ...] = tuple(f.name for f in FINDINGS)


def finding_by_key(key: str) -> Finding:
    for finding in FINDINGS:
        if finding.key == key:
            return finding
    raise KeyError(f"unknown finding {key!r}; known: {[f.key for f in FINDINGS]}")
