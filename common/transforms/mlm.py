"""Whole-word masking of tokenised reports for masked-language modelling (MPMA, M3AE).

The selection and replacement are ``transformers``' :class:`~transformers.DataCollatorForWholeWordMask` (the
collator M3AE uses): WordPiece continuation pieces (``##``) are masked together with their word, about
``mlm_probability`` of a report's tokens are chosen, and chosen tokens become ``[MASK]`` (80 %), a random token
(10 %) or stay (10 %). Special tokens and padding are never chosen. The transform runs it on one record, with a
generator drawn from MONAI's random state, so that masks differ every step and follow the bundle's seed.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from transformers import DataCollatorForWholeWordMask

from common.losses.masked_token_loss import IGNORE_INDEX

__all__ = ["RandWholeWordMaskd"]


class RandWholeWordMaskd(RandomizableTransform, MapTransform):
    """Whole-word masking of ``input_ids`` into ``mlm_input_ids`` and ``mlm_labels`` (``-100`` where not masked).

    Args:
        keys: the key of the ``(L,)`` token ids (``input_ids``).
        tokenizer: the WordPiece (BERT-family) tokenizer that produced them.
        mlm_probability: fraction of tokens to mask (M3AE: 0.15).
        attention_mask_key: ``(L,)`` mask of the real tokens (padding is never masked).
        masked_key: output key of the masked ids.
        labels_key: output key of the labels.
        allow_missing_keys: skip an absent key.
    """

    def __init__(
        self,
        keys: KeysCollection = "input_ids",
        tokenizer: Any = None,
        mlm_probability: float = 0.15,
        attention_mask_key: str = "attention_mask",
        masked_key: str = "mlm_input_ids",
        labels_key: str = "mlm_labels",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        if tokenizer is None or getattr(tokenizer, "mask_token", None) is None:
            raise ValueError("RandWholeWordMaskd needs a tokenizer with a mask token")
        if not 0.0 < mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
        # seed=0 makes the collator draw from self._collator.generator, which __call__ sets from self.R
        with warnings.catch_warnings():  # 4.5x deprecates it for offset-mapping input, which Tokenized does not keep
            warnings.filterwarnings("ignore", message="DataCollatorForWholeWordMask is deprecated")
            self._collator = DataCollatorForWholeWordMask(
                tokenizer, mlm_probability=mlm_probability, return_tensors="pt", seed=0
            )
        self.attention_mask_key = attention_mask_key
        self.masked_key = masked_key
        self.labels_key = labels_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            ids = torch.as_tensor(d[key], dtype=torch.long)
            if ids.ndim != 1:
                raise ValueError(f"{key!r} must be (L,) token ids, got shape {tuple(ids.shape)}")
            real = torch.as_tensor(d[self.attention_mask_key]).to(torch.bool)
            length = int(real.sum())
            self._collator.generator = torch.Generator().manual_seed(int(self.R.randint(0, 2**31 - 1)))
            masked = self._collator([ids[:length].tolist()])
            pad = ids.shape[0] - length
            d[self.masked_key] = torch.cat([masked["input_ids"][0], ids[length:]]).to(torch.long)
            d[self.labels_key] = F.pad(masked["labels"][0], (0, pad), value=IGNORE_INDEX).to(torch.long)
        return d
