"""Tests of common/transforms/text.py: cleaning, sections, sentences, text transforms, tokenisation, prompts."""

from __future__ import annotations

import csv
import itertools
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import list_data_collate
from monai.transforms import Compose

from common.data.contract import DataContractError
from common.data.findings import FINDINGS, finding_by_key
from common.transforms.text import (
    DEFAULT_PROMPT_TEMPLATES,
    CleanReportd,
    EnsureReportd,
    FitReportToTokenBudgetd,
    OppositeSentenced,
    RandSentenceShuffled,
    RandSentenceSubsampled,
    SelectReportSectionsd,
    Tokenized,
    build_prompts,
    clean_report,
    extract_sections,
    join_sentences,
    load_tokenizer,
    split_sentences,
)

REPORT = (
    "INDICATION: ___-year-old with cough.\n"
    "COMPARISON: None.\n\n"
    "FINDINGS: There is a 5.2 mm nodule in the right upper lobe, e.g. near the fissure. "
    "Dr. Smith was notified.  No pleural effusion!! The heart is normal in size.\n\n"
    "IMPRESSION: 1. Small nodule. 2. No effusion."
)


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        pytest.skip(f"{path} not available")
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def ct_reports(real_data_dir: Path) -> list[str]:
    return [row["report_text"] for row in _read_csv(real_data_dir / "reports" / "chest_ct_reports_labeled.csv")]


@pytest.fixture
def iu_reports(real_data_dir: Path) -> list[dict[str, str]]:
    return _read_csv(real_data_dir / "reports" / "iu_xray_reports.csv")


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return load_tokenizer("minilm")


# ------------------------------------------------------------------------------------------------ clean_report


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("There are no XXXX of a pleural effusion.", "There are no of a pleural effusion."),
        ("XXXX-year-old XXXX with chest pain.", "year-old with chest pain."),
        ("Patient is ___-year-old; seen by ___ .", "Patient is year-old; seen by."),
        ("Seen by [**Doctor Last Name 123**] today.", "Seen by today."),
        ("No  effusion\t\tseen ..  Heart normal,, lungs clear.", "No effusion seen. Heart normal, lungs clear."),
        ("Nodule ( XXXX ) in the lung ; stable . , ", "Nodule in the lung; stable."),
        ("\u201cEmphysema\u201d \u2013 mild\u00a0changes\u2026", '"Emphysema" - mild changes.'),
        ("Cyst?? Size 5.2 mm, dated 19.01.2020.", "Cyst? Size 5.2 mm, dated 19.01.2020."),
        ("Clear lungs.Normal heart.", "Clear lungs. Normal heart."),
    ],
)
def test_clean_report_examples(raw: str, expected: str) -> None:
    assert clean_report(raw) == expected


def test_clean_report_keeps_case_and_lower_option() -> None:
    text = "FINDINGS: Normal Heart."
    assert clean_report(text) == text
    assert clean_report(text, lower=True) == text.lower()
    assert clean_report("XXXX seen.", strip_deid=False) == "XXXX seen."


def test_clean_report_keeps_line_structure() -> None:
    cleaned = clean_report("FINDINGS:   \r\nLine one.\n\n\n\nIMPRESSION: ok.")
    assert cleaned == "FINDINGS:\nLine one.\n\nIMPRESSION: ok."
    assert clean_report("   \n\t ") == ""


def test_clean_report_idempotent_on_real_reports(iu_reports: list[dict[str, str]]) -> None:
    for row in iu_reports[:400]:
        text = f"{row['findings']} {row['impression']}"
        once = clean_report(text)
        assert clean_report(once) == once
        assert "XXXX" not in once
        # de-identification removal and punctuation tidying never touch the words themselves
        words = [w for w in re.findall(r"[A-Za-z]+", text) if not re.fullmatch(r"X{3,}", w)]
        assert re.findall(r"[A-Za-z]+", once) == words


# ------------------------------------------------------------------------------------------------ sections


@pytest.mark.parametrize(
    ("findings_header", "impression_header"),
    list(
        itertools.product(
            ["FINDINGS:", "Findings:", "findings :", "FINDINGS\n"],
            ["IMPRESSION:", "Impressions:", "CONCLUSION:", "IMPRESSION\n"],
        )
    ),
)
def test_extract_sections_headers(findings_header: str, impression_header: str) -> None:
    text = "EXAM: CT chest.\nHistory: cough.\n"
    text += f"{findings_header} Lungs are clear. No effusion.\n{impression_header} Normal study."
    sections = extract_sections(text)
    assert sections["findings"] == "Lungs are clear. No effusion."
    assert sections["impression"] == "Normal study."
    assert "CT chest." in sections["other"] and "cough." in sections["other"]


def test_extract_sections_inline_headers_and_prose() -> None:
    text = "Findings: The findings within normal limits. Other findings: none. Impression: Normal."
    sections = extract_sections(text)
    # "Other findings:" is not at a sentence start with a known header word, "findings within" has no colon
    assert sections["findings"] == "The findings within normal limits. Other findings: none."
    assert sections["impression"] == "Normal."


def test_extract_sections_ct_rate_markers() -> None:
    quoted = 'Trachea is open. Heart size is normal. " Emphysema in both lungs " Nodule 4 mm in the right lung'
    sections = extract_sections(quoted)
    assert sections == {
        "findings": "Trachea is open. Heart size is normal.",
        "impression": "Emphysema in both lungs. Nodule 4 mm in the right lung.",
        "other": "",
    }
    bullets = "Trachea is open. Bones are normal. \u2022 Atelectasis. \u2022 Hiatal hernia (small)."
    assert extract_sections(bullets)["impression"] == "Atelectasis. Hiatal hernia (small)."
    curly = "Heart is normal. \u201cEmphysematous changes in both lungs.\u201d Sequela fibrotic changes"
    assert extract_sections(curly)["impression"] == "Emphysematous changes in both lungs. Sequela fibrotic changes."


def test_extract_sections_without_structure() -> None:
    text = "Heart size is normal. No effusion."
    assert extract_sections(text) == {"findings": text, "impression": "", "other": ""}
    assert extract_sections("") == {"findings": "", "impression": "", "other": ""}


def test_extract_sections_guess_impression_after_bones() -> None:
    findings = [
        "Trachea is open.", "Heart size is normal.", "No pleural effusion.", "Lungs are clear.",
        "Liver is normal.", "Bone structures are natural.",
    ]  # fmt: skip
    text = " ".join(findings + ["Thoracic CT within normal limits."])
    assert extract_sections(text)["impression"] == "Thoracic CT within normal limits."
    assert extract_sections(text, guess_impression=False)["impression"] == ""
    run_on = " ".join(findings[:5] + ["Hemangioma in the L1 vertebra.", "Atherosclerosis Emphysema Cyst in the liver"])
    assert extract_sections(run_on)["impression"] == "Atherosclerosis Emphysema Cyst in the liver"


def test_extract_sections_real_ct_reports(ct_reports: list[str]) -> None:
    sections = [extract_sections(text) for text in ct_reports]
    both = sum(bool(s["findings"]) and bool(s["impression"]) for s in sections)
    assert both / len(ct_reports) > 0.95
    for text, s in zip(ct_reports, sections):
        # nothing is lost or invented: the words of other + findings + impression are those of the report
        words = Counter(re.findall(r"[A-Za-z]+", text))
        found = Counter(re.findall(r"[A-Za-z]+", f"{s['other']} {s['findings']} {s['impression']}"))
        assert found <= words and sum((words - found).values()) <= 2  # header words ("Comparison")
        if ":" not in text:  # no header
            assert re.findall(r"[A-Za-z]+", f"{s['findings']} {s['impression']}") == re.findall(r"[A-Za-z]+", text)


def test_extract_sections_real_iu_reports(iu_reports: list[dict[str, str]]) -> None:
    mismatches = 0
    for row in iu_reports:
        text = f"INDICATION: {row['indication']}\nCOMPARISON: {row['comparison']}\n"
        text += f"FINDINGS: {row['findings']}\nIMPRESSION: {row['impression']}"
        sections = extract_sections(text)
        expected = (" ".join(row["findings"].split()), " ".join(row["impression"].split()))
        mismatches += (sections["findings"], sections["impression"]) != expected
    assert mismatches / len(iu_reports) < 0.01


# ------------------------------------------------------------------------------------------------ sentences


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A 5.2 mm nodule. No effusion.", ["A 5.2 mm nodule.", "No effusion."]),
        ("Nodes, e.g. in the hilum. Dr. Smith was informed.", ["Nodes, e.g. in the hilum.", "Dr. Smith was informed."]),
        ("Seen on image No. 45 of series 2. Stable.", ["Seen on image No. 45 of series 2.", "Stable."]),
        ("Pneumothorax? No. Effusion? Yes.", ["Pneumothorax?", "No.", "Effusion?", "Yes."]),
        ("1. Small nodule. 2. No effusion. 3) Stable heart", ["Small nodule.", "No effusion.", "Stable heart"]),
        ("Compared with 19.01.2020. The cyst (?) is stable.", ["Compared with 19.01.2020.", "The cyst (?) is stable."]),
        ("Size approx. 3 cm vs. 2 cm before. Normal.", ["Size approx. 3 cm vs. 2 cm before.", "Normal."]),
        ('Bones normal. " Emphysema " Nodule."', ["Bones normal.", "Emphysema", "Nodule."]),
        ("Heart ok.\n\nLungs clear\n- Atelect\n- Effusion", ["Heart ok.", "Lungs clear", "Atelect", "Effusion"]),
        ("Lung apex.There are streaky opacities.", ["Lung apex.", "There are streaky opacities."]),
        ("\u2022 Emphysema. \u2022 Cyst in the liver", ["Emphysema.", "Cyst in the liver"]),
        ("  ", []),
    ],
)
def test_split_sentences_examples(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_split_sentences_real_reports(ct_reports: list[str], iu_reports: list[dict[str, str]]) -> None:
    texts = ct_reports + [f"{row['findings']} {row['impression']}" for row in iu_reports[:500]]
    for text in filter(str.strip, texts):
        sentences = split_sentences(text)
        assert sentences and all(s == s.strip() and s for s in sentences)
        # no decimal or "5.2 mm" is ever cut, and no letter is lost
        decimals = re.findall(r"\d+\.\d+", text)
        assert sum(len(re.findall(r"\d+\.\d+", s)) for s in sentences) == len(decimals)
        for match in re.finditer(r"\d+\.\d+ ?mm", text):
            assert any(match.group(0) in s for s in sentences)
        assert re.findall(r"[A-Za-z]", " ".join(sentences)) == re.findall(r"[A-Za-z]", text)


def test_join_sentences() -> None:
    assert join_sentences(["No effusion", "Heart normal.", " ", "Cyst?"]) == "No effusion. Heart normal. Cyst?"


# ------------------------------------------------------------------------------------------------ transforms


def test_clean_and_select_transforms() -> None:
    pipeline = Compose([SelectReportSectionsd("report"), CleanReportd("report")])
    out = pipeline({"image": "a.nii.gz", "report": REPORT})
    assert out["report"] == (
        "There is a 5.2 mm nodule in the right upper lobe, e.g. near the fissure. Dr. Smith was notified. "
        "No pleural effusion! The heart is normal in size. 1. Small nodule. 2. No effusion."
    )
    impression = SelectReportSectionsd(sections=("impression",))({"report": REPORT})["report"]
    assert impression == "1. Small nodule. 2. No effusion."
    other = SelectReportSectionsd(sections="other")({"report": REPORT})["report"]
    assert other == "___-year-old with cough. None."
    # no chosen section present: the whole text (or nothing)
    assert SelectReportSectionsd(sections="impression")({"report": "Lungs clear."})["report"] == "Lungs clear."
    strict = SelectReportSectionsd(sections="impression", fallback_to_full=False)
    assert strict({"report": "Lungs clear."})["report"] == ""
    assert CleanReportd(allow_missing_keys=True)({"image": "a.nii"}) == {"image": "a.nii"}
    with pytest.raises(KeyError):
        CleanReportd()({"image": "a.nii"})
    with pytest.raises(DataContractError, match="a.nii"):
        CleanReportd()({"image": "a.nii", "report": 3})
    with pytest.raises(ValueError):
        SelectReportSectionsd(sections=("history",))


def _record(text: str, image: str = "img.nii.gz") -> dict[str, str]:
    return {"image": image, "report": text}


@pytest.mark.parametrize("cls", [RandSentenceShuffled, RandSentenceSubsampled])
def test_random_sentence_transforms_are_deterministic(cls: type) -> None:
    text = " ".join(f"Sentence number {i} is here." for i in range(10))
    records = [_record(text) for _ in range(6)]
    first = cls("report", prob=0.7).set_random_state(seed=3)
    second = cls("report", prob=0.7).set_random_state(seed=3)
    other = cls("report", prob=0.7).set_random_state(seed=4)
    out_first = [first(r)["report"] for r in records]
    assert out_first == [second(r)["report"] for r in records]
    assert out_first != [other(r)["report"] for r in records]
    assert any(o == text for o in out_first) and any(o != text for o in out_first)  # prob is honoured
    assert cls("report", prob=0.0)(_record(text))["report"] == text
    assert records[0]["report"] == text  # input not modified


def test_rand_sentence_shuffle_is_a_permutation() -> None:
    sentences = [f"Finding {i} is stable." for i in range(8)]
    shuffle = RandSentenceShuffled("report", prob=1.0).set_random_state(seed=0)
    for _ in range(5):
        out = split_sentences(shuffle(_record(" ".join(sentences)))["report"])
        assert sorted(out) == sorted(sentences)
    assert shuffle(_record("Only one sentence."))["report"] == "Only one sentence."


@pytest.mark.parametrize("min_fraction", [0.25, 0.5, 1.0])
def test_rand_sentence_subsample_keeps_order_and_fraction(min_fraction: float) -> None:
    sentences = [f"Finding {i} is stable." for i in range(9)]
    subsample = RandSentenceSubsampled("report", prob=1.0, min_fraction=min_fraction).set_random_state(seed=1)
    sizes = set()
    for _ in range(20):
        out = split_sentences(subsample(_record(" ".join(sentences)))["report"])
        assert len(out) >= math.ceil(min_fraction * len(sentences))
        assert out == [s for s in sentences if s in out]  # original order
        sizes.add(len(out))
    assert (len(sizes) > 1) == (min_fraction < 1.0)
    with pytest.raises(ValueError):
        RandSentenceSubsampled(min_fraction=0.0)


def test_rand_sentence_subsample_caps_sentences() -> None:
    sentences = [f"Finding {i} is stable." for i in range(9)]
    subsample = RandSentenceSubsampled("report", prob=1.0, min_fraction=0.1, max_sentences=3).set_random_state(seed=2)
    sizes = {len(split_sentences(subsample(_record(" ".join(sentences)))["report"])) for _ in range(40)}
    assert sizes == {1, 2, 3}
    # the cap wins over min_fraction
    capped = RandSentenceSubsampled("report", prob=1.0, min_fraction=1.0, max_sentences=2).set_random_state(seed=0)
    assert len(split_sentences(capped(_record(" ".join(sentences)))["report"])) == 2
    with pytest.raises(ValueError):
        RandSentenceSubsampled(max_sentences=0)


def test_ensure_report_marks_image_only_and_paired() -> None:
    ensure = EnsureReportd("report")
    image_only = ensure({"image": "a.nii.gz"})
    paired = ensure({"image": "b.nii.gz", "report": "No effusion."})
    assert image_only["report"] == "" and image_only["has_report"] is False
    assert paired["report"] == "No effusion." and paired["has_report"] is True
    batch = list_data_collate([image_only, paired])
    assert batch["has_report"].dtype == torch.bool and batch["has_report"].tolist() == [False, True]


@pytest.mark.parametrize("bad", ["", "   \n\t", None, 5])
def test_ensure_report_rejects_bad_reports(bad: object) -> None:
    with pytest.raises(DataContractError, match=r"/data/case_7\.nii\.gz.*report"):
        EnsureReportd("report")({"image": "/data/case_7.nii.gz", "report": bad})


def test_ensure_report_names_record_without_path() -> None:
    from monai.data import MetaTensor

    image = MetaTensor(torch.zeros(1, 2, 2), meta={"filename_or_obj": "/data/loaded.nii.gz"})
    with pytest.raises(DataContractError, match="loaded.nii.gz"):
        EnsureReportd()({"image": image, "report": " "})
    with pytest.raises(DataContractError, match="case_id=17"):
        EnsureReportd()({"meta": {"case_id": 17}, "report": ""})


# ------------------------------------------------------------------------------------------------ tokenisation


def test_tokenized_with_minilm(minilm_tokenizer) -> None:
    tokenize = Tokenized("report", tokenizer="minilm", max_length=24)
    assert tokenize.tokenizer is minilm_tokenizer  # created once and shared, not per sample
    assert Tokenized("report", tokenizer="default", max_length=8).tokenizer is minilm_tokenizer
    out = tokenize({"report": "No pleural effusion. A 5.2 mm nodule."})
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == mask.shape == (24,) and ids.dtype == mask.dtype == torch.int64
    length = int(mask.sum())
    assert 2 < length < 24 and mask[:length].all() and not mask[length:].any()
    assert ids[0] == minilm_tokenizer.cls_token_id and ids[length - 1] == minilm_tokenizer.sep_token_id
    assert (ids[length:] == minilm_tokenizer.pad_token_id).all()
    assert minilm_tokenizer.decode(ids[1 : length - 1]) == "no pleural effusion. a 5. 2 mm nodule."
    empty = tokenize({"report": ""})
    assert int(empty["attention_mask"].sum()) == 2  # [CLS] [SEP] for image-only records
    many = Tokenized("osl_true", tokenizer=minilm_tokenizer, max_length=12, input_ids_key="osl_true_input_ids",
                     attention_mask_key="osl_true_attention_mask")({"osl_true": ["a", "b c", "d"]})  # fmt: skip
    assert many["osl_true_input_ids"].shape == many["osl_true_attention_mask"].shape == (3, 12)
    with pytest.raises(ValueError):
        Tokenized(("a", "b"), tokenizer=minilm_tokenizer)
    with pytest.raises(ValueError):
        Tokenized("report", tokenizer=minilm_tokenizer, max_length=0)


def test_tokenized_real_reports_truncate(ct_reports: list[str], minilm_tokenizer) -> None:
    tokenize = Tokenized("report", tokenizer=minilm_tokenizer, max_length=64)
    batch = list_data_collate([tokenize({"report": clean_report(t)}) for t in ct_reports[:8]])
    assert batch["input_ids"].shape == (8, 64)
    assert (batch["attention_mask"].sum(1) == 64).all()  # CT reports are longer than 64 tokens
    assert (batch["input_ids"][:, -1] == minilm_tokenizer.sep_token_id).all()


# ------------------------------------------------------------------------------------------------ prompts


def test_build_prompts_default_shapes() -> None:
    prompts = build_prompts()
    assert prompts.shape == (len(FINDINGS), prompts.num_prompts)
    assert prompts.num_prompts > len(DEFAULT_PROMPT_TEMPLATES)  # templates plus finding-specific pairs
    assert prompts.keys == tuple(f.key for f in FINDINGS)
    for k, finding in enumerate(FINDINGS):
        pos, neg = prompts.positive[k], prompts.negative[k]
        assert len(pos) == len(neg) == prompts.num_prompts
        assert len(set(zip(pos, neg))) == len(pos)  # no repeated pair
        assert all(p != n for p, n in zip(pos, neg))
        name = finding.name
        assert pos[:3] == (f"{name} is present.", f"There is {name.lower()}.", f"The volume shows: {name}.")
        assert neg[2] == f"The volume shows: Not {finding.name}."
        assert set(zip(pos, neg)) & set(zip(finding.prompts_positive, finding.prompts_negative))
    flat_pos, flat_neg = prompts.flatten()
    assert len(flat_pos) == len(flat_neg) == len(FINDINGS) * prompts.num_prompts
    k, p = 2, 1
    assert flat_pos[k * prompts.num_prompts + p] == prompts.positive[k][p]


def test_build_prompts_names_templates_and_limits() -> None:
    prompts = build_prompts(["Pneumothorax", "lung_nodule", "Cardiomegaly"])
    assert prompts.keys == ("pneumothorax", "lung_nodule", "cardiomegaly")
    assert prompts.num_prompts == len(DEFAULT_PROMPT_TEMPLATES)  # a name-only finding has the templates only
    own = build_prompts([finding_by_key("cardiomegaly")], templates=())
    assert own.positive[0] == finding_by_key("cardiomegaly").prompts_positive
    custom = build_prompts(["Emphysema"], templates=[("{name_lower} seen", "no {name_lower}")], num_prompts=1)
    assert custom.positive == (("emphysema seen",),) and custom.negative == (("no emphysema",),)
    with pytest.raises(ValueError):
        build_prompts(["Pneumothorax"], templates=())
    with pytest.raises(ValueError):
        build_prompts([])


# ------------------------------------------------------------------------------------------------ opposite sentences


def test_opposite_sentences_follow_labels() -> None:
    prompts = build_prompts()
    transform = OppositeSentenced("labels").set_random_state(seed=0)
    labels = {"lung_nodule": 1, "cardiomegaly": 0, "emphysema": float("nan")}
    for _ in range(5):
        out = transform({"image": "a.nii.gz", "labels": labels})
        assert len(out["osl_true"]) == len(out["osl_false"]) == len(FINDINGS)
        for k, key in enumerate(prompts.keys):
            true, false = out["osl_true"][k], out["osl_false"][k]
            pairs = list(zip(prompts.positive[k], prompts.negative[k]))
            if key == "cardiomegaly":
                assert (false, true) in pairs
            else:
                assert (true, false) in pairs
        assert out["osl_valid"].tolist() == [key in ("lung_nodule", "cardiomegaly") for key in prompts.keys]


def test_opposite_sentences_vector_labels_determinism_and_errors() -> None:
    vector = torch.tensor([1.0, 0.0, float("nan"), 1.0] + [0.0] * (len(FINDINGS) - 4))
    outs = [OppositeSentenced().set_random_state(seed=5)({"labels": vector}) for _ in range(2)]
    assert outs[0]["osl_true"] == outs[1]["osl_true"]
    assert outs[0]["osl_valid"].tolist() == [1, 1, 0] + [1] * (len(FINDINGS) - 3)
    draws = OppositeSentenced().set_random_state(seed=5)
    assert len({tuple(draws({"labels": vector})["osl_true"]) for _ in range(10)}) > 1  # phrasings vary
    missing = OppositeSentenced(allow_missing_keys=True)({"image": "x.nii"})
    assert not missing["osl_valid"].any() and len(missing["osl_true"]) == len(FINDINGS)
    with pytest.raises(DataContractError, match="x.nii"):
        OppositeSentenced()({"image": "x.nii"})
    with pytest.raises(DataContractError, match="lung_nodule"):
        OppositeSentenced()({"image": "x.nii", "labels": {"lung_nodule": 2}})
    with pytest.raises(DataContractError, match="shape"):
        OppositeSentenced()({"image": "x.nii", "labels": np.zeros(3)})


def test_opposite_sentences_tokenise_and_collate(minilm_tokenizer) -> None:
    pipeline = Compose(
        [
            OppositeSentenced(allow_missing_keys=True),
            Tokenized("osl_true", minilm_tokenizer, max_length=16, input_ids_key="osl_true_input_ids",
                      attention_mask_key="osl_true_attention_mask"),
            Tokenized("osl_false", minilm_tokenizer, max_length=16, input_ids_key="osl_false_input_ids",
                      attention_mask_key="osl_false_attention_mask"),
        ]
    )  # fmt: skip
    records = [pipeline({"labels": {"lung_nodule": 1}}), pipeline({"labels": {}})]
    batch = list_data_collate([{k: v for k, v in r.items() if k != "labels"} for r in records])
    assert batch["osl_true_input_ids"].shape == batch["osl_false_input_ids"].shape == (2, len(FINDINGS), 16)
    assert batch["osl_valid"].shape == (2, len(FINDINGS)) and batch["osl_valid"].sum() == 1


# ------------------------------------------------------------------------------------------------ token budget

_LONG_FINDINGS = [
    f"Finding number {i} in segment {i % 7} of the {'right' if i % 2 else 'left'} lung is unchanged at {i}.{i % 10} mm."
    for i in range(40)
]
_IMPRESSION = "Emphysema in both lungs. Small left pleural effusion. Stable 5 mm nodule in the right upper lobe."


def _token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]


def _tokenize_for_training(text: str, tokenizer, max_length: int, shuffle_seed: int | None = None) -> dict:
    chain = [SelectReportSectionsd("report")]
    if shuffle_seed is not None:
        chain.append(RandSentenceShuffled("report", prob=1.0).set_random_state(seed=shuffle_seed))
    chain.append(Tokenized("report", tokenizer=tokenizer, max_length=max_length))
    return Compose(chain)({"report": text})


def test_fit_budget_leaves_reports_within_budget_unchanged(minilm_tokenizer) -> None:
    fit = FitReportToTokenBudgetd("report", tokenizer=minilm_tokenizer, max_length=128)
    assert fit({"image": "a.nii", "report": REPORT})["report"] is REPORT  # untouched, not even re-spaced
    messy = "INDICATION: cough.\n\nFINDINGS:  Lungs   clear.\n\n\nIMPRESSION:\n1. Normal"
    assert fit({"report": messy})["report"] == messy
    ct_rate = 'Trachea is open. Heart size is normal. " Emphysema in both lungs " Nodule 4 mm in the right lung'
    assert fit({"report": ct_rate})["report"] == ct_rate
    assert fit({"report": ""})["report"] == ""  # image-only records after EnsureReportd
    assert FitReportToTokenBudgetd(tokenizer="minilm", max_length=16).tokenizer is minilm_tokenizer


def test_fit_budget_keeps_the_impression_and_fits(minilm_tokenizer) -> None:
    max_length = 96
    text = "EXAMINATION: CT chest.\n\nFINDINGS: " + " ".join(_LONG_FINDINGS) + "\n\nIMPRESSION: " + _IMPRESSION
    fit = FitReportToTokenBudgetd("report", tokenizer=minilm_tokenizer, max_length=max_length)
    assert fit.budget == max_length - 2 - 4  # [CLS] [SEP] and the default margin
    out = fit({"report": text})["report"]
    sections = extract_sections(out)
    assert sections["impression"] == _IMPRESSION
    kept = split_sentences(sections["findings"])
    assert 0 < len(kept) < len(_LONG_FINDINGS) and kept == _LONG_FINDINGS[: len(kept)]  # dropped from the end
    assert sections["other"] == ""  # not selected, so not carried into the rewritten report
    # the next sentence would not have fitted: as many findings as possible are kept
    longer = f"{join_sentences(_LONG_FINDINGS[: len(kept) + 1])} {_IMPRESSION}"
    assert len(_token_ids(minilm_tokenizer, longer)) > fit.budget
    # parsed back identically, and idempotent
    assert SelectReportSectionsd()({"report": out})["report"] == f"{sections['findings']} {_IMPRESSION}"
    assert fit({"report": out})["report"] == out
    # the impression's tokens reach the model: they end right before [SEP], with or without sentence shuffling
    impression_ids = _token_ids(minilm_tokenizer, _IMPRESSION)
    for seed in (None, 0, 1):
        encoded = _tokenize_for_training(out, minilm_tokenizer, max_length, shuffle_seed=seed)
        length = int(encoded["attention_mask"].sum())
        assert length <= max_length - fit.margin
        ids = encoded["input_ids"][:length].tolist()
        assert ids[-1] == minilm_tokenizer.sep_token_id
        if seed is None:
            assert ids[-1 - len(impression_ids) : -1] == impression_ids
        for sentence in split_sentences(_IMPRESSION):
            sentence_ids = _token_ids(minilm_tokenizer, sentence)
            assert any(ids[i : i + len(sentence_ids)] == sentence_ids for i in range(length))
    # without the transform, truncation cuts the impression off
    plain = _tokenize_for_training(text, minilm_tokenizer, max_length)["input_ids"].tolist()
    assert not any(plain[i : i + len(impression_ids)] == impression_ids for i in range(max_length))


def test_fit_budget_truncates_an_impression_that_alone_is_too_long(minilm_tokenizer) -> None:
    impression = [f"Impression item {i} describes a {i} mm lesion in segment {i % 8}." for i in range(30)]
    text = "FINDINGS: " + " ".join(_LONG_FINDINGS[:5]) + "\nIMPRESSION: " + " ".join(impression)
    fit = FitReportToTokenBudgetd("report", tokenizer=minilm_tokenizer, max_length=64)
    out = fit({"report": text})["report"]
    sections = extract_sections(out)
    assert sections["findings"] == "" and out.startswith("IMPRESSION: ")
    kept = split_sentences(sections["impression"])
    assert 0 < len(kept) < len(impression) and kept == impression[: len(kept)]
    assert len(_token_ids(minilm_tokenizer, sections["impression"])) <= fit.budget
    # a single sentence longer than the budget stays (Tokenized truncates it)
    huge = "IMPRESSION: " + " ".join(["very"] * 200) + " long sentence. Second sentence."
    assert (
        extract_sections(fit({"report": huge})["report"])["impression"] == " ".join(["very"] * 200) + " long sentence."
    )


def test_fit_budget_headerless_ct_rate_report(minilm_tokenizer) -> None:
    text = " ".join(_LONG_FINDINGS) + ' " Emphysema in both lungs " Nodule 4 mm in the right lung'
    original = extract_sections(text)
    assert original["impression"] == "Emphysema in both lungs. Nodule 4 mm in the right lung."
    fit = FitReportToTokenBudgetd("report", tokenizer=minilm_tokenizer, max_length=80)
    out = fit({"report": text})["report"]
    assert out.startswith("FINDINGS: ") and "\nIMPRESSION: " in out
    sections = extract_sections(out)
    assert sections["impression"] == original["impression"]
    assert split_sentences(sections["findings"]) == _LONG_FINDINGS[: len(split_sentences(sections["findings"]))]
    selected = SelectReportSectionsd()({"report": out})["report"]
    assert len(_token_ids(minilm_tokenizer, selected)) <= fit.budget
    # a guessed impression (after the bone sentence, no marker) is kept the same way
    guessed = " ".join(_LONG_FINDINGS + ["Bone structures are natural.", "Thoracic CT shows emphysema."])
    out = fit({"report": guessed})["report"]
    assert extract_sections(out)["impression"] == "Thoracic CT shows emphysema."


def test_fit_budget_other_section_keys_and_errors(minilm_tokenizer) -> None:
    text = "INDICATION: cough and fever.\n\nFINDINGS: " + " ".join(_LONG_FINDINGS) + "\nIMPRESSION: " + _IMPRESSION
    all_sections = ("other", "findings", "impression")
    fit = FitReportToTokenBudgetd(tokenizer=minilm_tokenizer, max_length=96, sections=all_sections)
    sections = extract_sections(fit({"report": text})["report"])
    assert sections["other"] == "cough and fever." and sections["impression"] == _IMPRESSION
    assert 0 < len(split_sentences(sections["findings"])) < len(_LONG_FINDINGS)
    # no findings left: "other" keeps a header of its own
    tight = FitReportToTokenBudgetd(tokenizer=minilm_tokenizer, max_length=40, sections=all_sections)
    sections = extract_sections(tight({"report": text})["report"])
    assert sections == {"findings": "", "impression": _IMPRESSION, "other": "cough and fever."}
    # missing keys, bad values, bad arguments
    lenient = FitReportToTokenBudgetd(tokenizer=minilm_tokenizer, max_length=64, allow_missing_keys=True)
    assert lenient({"image": "a.nii"}) == {"image": "a.nii"}
    with pytest.raises(KeyError):
        FitReportToTokenBudgetd(tokenizer=minilm_tokenizer, max_length=64)({"image": "a.nii"})
    with pytest.raises(DataContractError, match="a.nii"):
        lenient({"image": "a.nii", "report": 3})
    with pytest.raises(ValueError, match="keep"):
        FitReportToTokenBudgetd(tokenizer=minilm_tokenizer, keep=("other",))
    with pytest.raises(ValueError, match="sections"):
        FitReportToTokenBudgetd(tokenizer=minilm_tokenizer, sections=("history",))
    with pytest.raises(ValueError, match="max_length"):
        FitReportToTokenBudgetd(tokenizer=minilm_tokenizer, max_length=5)


def test_fit_budget_real_ct_reports(ct_reports: list[str], minilm_tokenizer) -> None:
    fit = FitReportToTokenBudgetd("report", tokenizer=minilm_tokenizer, max_length=128)
    select = SelectReportSectionsd("report")
    for text in ct_reports[:200]:
        text = clean_report(text)
        out = fit({"report": text})["report"]
        before, after = extract_sections(text), extract_sections(out)
        selected = select({"report": out})["report"]
        impression_fits = len(_token_ids(minilm_tokenizer, before["impression"])) <= fit.budget
        if impression_fits:
            assert after["impression"] == before["impression"]
            assert len(_token_ids(minilm_tokenizer, selected)) <= fit.budget
        if out != text:
            assert fit({"report": out})["report"] == out
