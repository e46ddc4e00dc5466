"""Set prediction from learned queries: a transformer decoder whose queries cross-attend to image tokens.

PRIOR's sentence-prototype generator (Cheng et al., ICCV 2023, https://arxiv.org/abs/2307.14975, §3.4;
release ``prior/decoders/sentence.py``) predicts a report as an unordered set of ``num_queries`` sentence
embeddings at once (non-autoregressive): learned queries pass through 8 BERT layers with cross-attention to the
local image tokens; predictions are matched to the report's sentences by the Hungarian algorithm
(:mod:`common.networks.set_matching`).

The release builds a ``transformers.BertModel`` from Bio_ClinicalBERT's configuration (8 layers, ``is_decoder``,
cross-attention, random initialisation) and feeds the queries as ``inputs_embeds``. Here the same computation is
built from PyTorch's ``nn.TransformerDecoder`` (post-norm layers: self-attention, cross-attention, GELU feed-forward,
each followed by add & LayerNorm, as a BERT decoder layer) after BERT's embedding step for ``inputs_embeds``
(learned position embedding, LayerNorm, dropout). The word-piece table the release allocates and never uses is left
out.

**Causal mask.** The release's comment says "no causal mask", but ``transformers`` applies one to every
``is_decoder`` BertModel, so its queries attend only to earlier queries. ``causal=False`` (default) is the
bidirectional decoder the paper describes; ``causal=True`` reproduces what the release computes.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["QueryDecoder"]


class QueryDecoder(nn.Module):
    """``num_queries`` learned queries -> ``(B, num_queries, dim)`` predictions conditioned on ``(B, N, dim)`` tokens.

    Args:
        dim: width of queries, image tokens and predictions (PRIOR: 768).
        num_queries: set size (PRIOR 2D: 16).
        num_layers: decoder layers (PRIOR: 8).
        num_heads: attention heads (Bio_ClinicalBERT: 12).
        mlp_dim: feed-forward width (Bio_ClinicalBERT: 3072).
        dropout: dropout of embeddings, attention and feed-forward (BERT: 0.1).
        layer_norm_eps: LayerNorm epsilon (BERT: 1e-12).
        causal: queries attend only to earlier queries (what the release computes); default bidirectional.
    """

    def __init__(
        self,
        dim: int = 768,
        num_queries: int = 16,
        num_layers: int = 8,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        dropout: float = 0.1,
        layer_norm_eps: float = 1e-12,
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.num_queries = int(num_queries)
        self.causal = bool(causal)
        self.queries = nn.Parameter(torch.randn(1, num_queries, dim))  # the release's prototype_queries
        self.position_embedding = nn.Parameter(torch.empty(num_queries, dim).normal_(std=0.02))  # BERT's init
        self.norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerDecoderLayer(
            dim, num_heads, mlp_dim, dropout, activation="gelu", layer_norm_eps=layer_norm_eps, batch_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, num_layers)

    def forward(self, memory: torch.Tensor, memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Predictions ``(B, num_queries, dim)`` from tokens ``memory`` ``(B, N, dim)``; ``memory_mask`` ``(B, N)``
        is True at real tokens."""
        b = memory.shape[0]
        queries = self.dropout(self.norm(self.queries.expand(b, -1, -1) + self.position_embedding))
        causal_mask = (
            nn.Transformer.generate_square_subsequent_mask(self.num_queries, device=memory.device, dtype=queries.dtype)
            if self.causal
            else None
        )
        padding = None if memory_mask is None else ~memory_mask.bool()
        return self.decoder(
            queries, memory, tgt_mask=causal_mask, tgt_is_causal=self.causal, memory_key_padding_mask=padding
        )
