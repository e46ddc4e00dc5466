"""Reports as sentences: sentence-numbered tokenisation and the minimum-sentence record filter.

Sentence-level methods (PRIOR, Cheng et al., ICCV 2023, https://arxiv.org/abs/2307.14975) embed a report token by
token and then average the tokens of each sentence (:mod:`common.networks.sentence_pool`). They need, beside the
usual ``input_ids`` / ``attention_mask``, the number of the sentence every token belongs to (``sentence_index``:
``1, 2, ...`` for sentence tokens, ``-1`` for ``[CLS]``, ``[SEP]`` and padding), which
:class:`TokenizeSentencesd` writes. Sentences come from :func:`common.transforms.text.split_sentences` on the text the
earlier transforms left (cleaned, sections selected, optionally shuffled by
:class:`~common.transforms.text.RandSentenceShuffled`).

**Tokenisation.** Each sentence is tokenised on its own (no special tokens) and the pieces are concatenated between
``[CLS]`` and ``[SEP]``, then cut to ``max_length`` (the final ``[SEP]`` kept), so every token's sentence number is
exact. The release tokenises the concatenated text and numbers tokens by separately measured sentence lengths, which
drifts by a token wherever the concatenation (without spaces) merges word pieces across a sentence boundary, and it
cuts the sequence without a final ``[SEP]``.

**Filter.** PRIOR's release trains only on reports with at least 4 sentences (``MimicCxrDatasetBuilder
(min_sentences=4)``); :func:`records_with_min_sentences` applies the same rule to a datalist, counting sentences after
the bundle's own text preprocessing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from common.data.contract import DataContractError
from common.transforms.text import _record_source, load_tokenizer, split_sentences

__all__ = ["TokenizeSentencesd", "records_with_min_sentences", "sentence_token_ids"]

logger = logging.getLogger(__name__)


def sentence_token_ids(sentences: Sequence[str], tokenizer: Any, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids ``[CLS] s_1 ... s_n [SEP]`` (at most ``max_length``) and each token's sentence number (-1: none)."""
    if max_length < 2:
        raise ValueError(f"max_length must leave room for [CLS] and [SEP], got {max_length}")
    pieces = tokenizer(list(sentences), add_special_tokens=False)["input_ids"] if sentences else []
    ids, numbers = [tokenizer.cls_token_id], [-1]
    for number, piece in enumerate(pieces, start=1):
        room = max_length - 1 - len(ids)
        if room <= 0:
            break
        ids.extend(piece[:room])
        numbers.extend([number] * min(len(piece), room))
    return ids + [tokenizer.sep_token_id], numbers + [-1]


class TokenizeSentencesd(MapTransform):
    """Split a report into sentences and tokenise it with per-token sentence numbers.

    Writes ``input_ids``, ``attention_mask`` and ``sentence_index`` (int64, ``(max_length,)``). An empty text (an
    image-only record after :class:`~common.transforms.text.EnsureReportd`) gives ``[CLS] [SEP]`` and no sentence.

    Args:
        keys: the one key holding the report.
        tokenizer: a ``transformers`` tokenizer with ``[CLS]``/``[SEP]`` ids, or a name for
            :func:`~common.transforms.text.load_tokenizer`.
        max_length: sequence length (PRIOR: 256).
        input_ids_key, attention_mask_key, sentence_index_key: output keys.
        trust_remote_code: passed to :func:`~common.transforms.text.load_tokenizer` for a name.
    """

    def __init__(
        self,
        keys: KeysCollection = "report",
        tokenizer: Any = "default",
        max_length: int = 256,
        input_ids_key: str = "input_ids",
        attention_mask_key: str = "attention_mask",
        sentence_index_key: str = "sentence_index",
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError(f"TokenizeSentencesd takes one key, got {self.keys}")
        if isinstance(tokenizer, str):
            tokenizer = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code)
        if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs [CLS], [SEP] and [PAD] tokens (a BERT-family tokenizer)")
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.input_ids_key = input_ids_key
        self.attention_mask_key = attention_mask_key
        self.sentence_index_key = sentence_index_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            text = d[key]
            if not isinstance(text, str):
                raise DataContractError(
                    _record_source(d, "image"), f"{key!r} must be a string to tokenise, got {type(text).__name__}"
                )
            ids, numbers = sentence_token_ids(split_sentences(text), self.tokenizer, self.max_length)
            pad = self.max_length - len(ids)
            d[self.input_ids_key] = torch.tensor(ids + [self.tokenizer.pad_token_id] * pad, dtype=torch.int64)
            d[self.attention_mask_key] = torch.tensor([1] * len(ids) + [0] * pad, dtype=torch.int64)
            d[self.sentence_index_key] = torch.tensor(numbers + [-1] * pad, dtype=torch.int64)
        return d


def records_with_min_sentences(
    records: Sequence[Mapping[str, Any]],
    min_sentences: int,
    text_preprocessing: Callable[[dict], Mapping[str, Any]] | None = None,
    key: str = "report",
    keep_image_only: bool = False,
) -> list[dict]:
    """The records whose report has at least ``min_sentences`` sentences after ``text_preprocessing``.

    Args:
        records: datalist records.
        min_sentences: PRIOR's release: 4; 0 or 1 keeps every paired record.
        text_preprocessing: the bundle's deterministic text transforms (cleaning, section selection), applied to a
            copy of each record before counting; ``None`` counts on the raw report.
        key: report key.
        keep_image_only: keep records without a report (PRIOR is paired-only: dropped by default).

    Raises:
        DataContractError: if no record is left (naming the rule), so training never starts on nothing.
    """
    kept, short, image_only = [], 0, 0
    for record in records:
        if not record.get(key):
            image_only += 1
            if keep_image_only:
                kept.append(dict(record))
            continue
        text = (text_preprocessing(dict(record)) if text_preprocessing is not None else record)[key]
        if len(split_sentences(text)) >= min_sentences:
            kept.append(dict(record))
        else:
            short += 1
    logger.info(
        "kept %d of %d records (%d reports with fewer than %d sentences dropped, %d image-only %s)",
        len(kept),
        len(records),
        short,
        min_sentences,
        image_only,
        "kept" if keep_image_only else "dropped",
    )
    if not kept:
        raise DataContractError(
            None, f"no record has a report with at least {min_sentences} sentences (min_sentences knob)"
        )
    return kept
