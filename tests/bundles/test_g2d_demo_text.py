"""The G2D demo's text feature carries the report, not dropout noise.

all-MiniLM-L6-v2 (the offline demo text tower) is trained through mean pooling only: its ``[CLS]`` state is the same
for every report (across-report variance ~5e-7 against ~2e-4 of dropout noise in training mode), so a ``[CLS]``
text feature behind a BatchNorm projector turns dropout noise into the "report" embedding and the contrastive loss
stays at chance (docs/README.md, "Demo"). The demo overlays pool the token mean instead (``text_pooling: mean``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[2]
REPORTS = [
    "FINDINGS: Small left pleural effusion. IMPRESSION: Left effusion.",
    "FINDINGS: The lungs are clear. No effusion or pneumothorax. IMPRESSION: No acute disease.",
    "FINDINGS: Enlarged cardiac silhouette. IMPRESSION: Cardiomegaly.",
    "FINDINGS: Right upper lobe consolidation. IMPRESSION: Pneumonia is possible.",
    "FINDINGS: Hyperinflated lungs with flattened diaphragms. IMPRESSION: Emphysema.",
    "FINDINGS: Large right pneumothorax. IMPRESSION: Right pneumothorax.",
    "FINDINGS: Bibasilar atelectasis. The heart size is normal. IMPRESSION: Atelectasis.",
    "FINDINGS: A 2 cm nodule in the left lower lobe. IMPRESSION: Pulmonary nodule, follow-up advised.",
    "FINDINGS: Retrocardiac air-fluid level. IMPRESSION: Hiatal hernia.",
    "FINDINGS: Reticular opacities at both bases. IMPRESSION: Fibrotic changes.",
    "FINDINGS: Bilateral effusions and an enlarged heart. IMPRESSION: Heart failure.",
    "FINDINGS: No focal consolidation, effusion or pneumothorax. IMPRESSION: Normal chest.",
]


def _signal_to_dropout_noise(bundle: str, pooling: str) -> float:
    """Across-report variance of the pooled text feature (eval mode) over its dropout noise (training mode)."""
    configs = REPO / "bundles" / bundle / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.yaml"), str(configs / "demo.yaml")])
    parser["text_pooling"] = pooling
    tower = parser.get_parsed_content("model").text_encoder
    tokenizer = parser.get_parsed_content("tokenizer")
    batch = tokenizer(REPORTS, padding=True, truncation=True, max_length=160, return_tensors="pt")

    def pooled(train: bool) -> torch.Tensor:
        tower.train(train)
        with torch.no_grad():
            tokens = tower.token_embeddings(batch["input_ids"], batch["attention_mask"])
            return tower.pooler(tokens, batch["attention_mask"])

    torch.manual_seed(0)
    signal = pooled(False).var(dim=0).mean()
    noise = (pooled(True) - pooled(True)).pow(2).mean() / 2
    return float(signal / noise)


@pytest.mark.parametrize("bundle", ["g2d_cxr", "g2d_ct"])
def test_demo_text_feature_varies_with_the_report(bundle: str, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _signal_to_dropout_noise(bundle, "mean") > 2.0
    assert _signal_to_dropout_noise(bundle, "cls") < 0.1  # why the demo does not use MiniLM's [CLS]


CT_REPORT = (
    "FINDINGS: The trachea and both main bronchi are patent. The heart is not enlarged. Subsegmental atelectasis is "
    "seen in the right lung lower lobe.\nIMPRESSION: Atelectatic change in the right lung lower lobe."
)


def _read(configs: list[str], report: str) -> str:
    parser = ConfigParser()
    parser.read_config([str(REPO / "bundles" / "g2d_ct" / "configs" / name) for name in configs])
    parser["text_encoder_name"] = "default"  # the offline MiniLM tokenizer (Bio_ClinicalBERT is not cached)
    d = {"report": report, "labels": {}}
    for transform in parser.get_parsed_content("text_preprocessing"):
        d = transform(d)
    return d["report"]


def test_ct_demo_reads_the_impression_and_the_paper_config_both_sections(monkeypatch) -> None:
    """The CT demo's mean-pooled MiniLM reads the impression only (the findings' organ-by-organ "normal" sentences
    set its embedding otherwise: docs/README.md, "Demo"); train.yaml keeps the release's findings + impression."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _read(["train.yaml", "demo.yaml"], CT_REPORT) == "Atelectatic change in the right lung lower lobe."
    paper = _read(["train.yaml"], CT_REPORT)
    assert paper.startswith("The trachea and both main bronchi are patent.")
    assert paper.endswith("Atelectatic change in the right lung lower lobe.")
