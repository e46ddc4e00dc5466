"""BERT's initialisation for modules trained from scratch on top of pretrained towers (M3AE's fusion and heads).

BERT (``BertPreTrainedModel._init_weights``, ``initializer_range`` 0.02) and M3AE (``m3ae_utils.init_weights``,
applied to its fusion projections, modality-type embedding, co-attention layers, poolers and pre-training heads) draw
every linear and embedding weight from N(0, 0.02), zero the biases and set LayerNorm to weight 1, bias 0.
``nn.MultiheadAttention`` keeps its query/key/value projection as one ``in_proj_weight`` (not an ``nn.Linear``); BERT's
attention has three ``nn.Linear`` layers there, so it is drawn the same way.
"""

from __future__ import annotations

from torch import nn

__all__ = ["BERT_INIT_STD", "bert_init_weights"]

#: BERT's ``initializer_range``
BERT_INIT_STD = 0.02


def bert_init_weights(module: nn.Module, std: float = BERT_INIT_STD) -> None:
    """Initialise ``module`` (one module, not its children: use ``root.apply(bert_init_weights)``) as BERT does."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.MultiheadAttention):
        for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
            if getattr(module, name) is not None:
                nn.init.normal_(getattr(module, name), std=std)
        if module.in_proj_bias is not None:
            nn.init.zeros_(module.in_proj_bias)
    elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
        nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
