"""RAD-DINO pre-training objective: the DINOv2 meta-architecture (EMA teacher, DINO + iBOT + KoLeo).

Pérez-García et al., "Exploring scalable medical image encoders beyond text supervision" (RAD-DINO),
https://doi.org/10.1038/s42256-024-00965-w; Oquab et al., "DINOv2", https://arxiv.org/abs/2304.07193. RAD-DINO
trained with the DINOv2 code; its training code and config overrides are not public, so the composition below follows
DINOv2's ``train/ssl_meta_arch.py`` (reference commit b8931f7), re-implemented on :mod:`common.losses`.

Batch keys (from :func:`common.transforms.ssl.dino_multicrop`): ``global_crops`` ``(B, G, C, *g)``, ``local_crops``
``(B, L, C, *l)`` and ``masks`` ``(B, G, N)`` bool. Crops are flattened crop-major (all samples of crop 0, then crop 1,
...) as DINOv2's collate does.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from common.engines.schedules import cosine_schedule
from common.losses.dino_clstoken_loss import DINOClsTokenLoss
from common.losses.ibot_patch_loss import IBOTPatchLoss
from common.losses.koleo_loss import KoLeoLoss
from common.networks.dino import DINOHead

__all__ = ["RadDinoPretraining"]


def _crop_major(crops: torch.Tensor) -> torch.Tensor:
    """``(B, V, ...)`` -> ``(V * B, ...)`` with all samples of view 0 first."""
    return crops.transpose(0, 1).reshape(-1, *crops.shape[2:])


class RadDinoPretraining(nn.Module):
    """Student/teacher self-distillation with DINO (CLS), iBOT (masked patches) and KoLeo terms.

    The teacher is a copy of the student (backbone and heads) updated only by EMA in :meth:`after_optimizer_step`
    (momentum cosine ``momentum_teacher -> final_momentum_teacher``); it has no gradients, stays in eval mode (as
    DINOv2's ``SSLMetaArch.train``) and is what inference exports. The teacher temperature warms up linearly
    ``warmup_teacher_temp -> teacher_temp`` over ``warmup_teacher_temp_iters`` steps (:meth:`before_iteration`).

    Terms, with ``n = G (G - 1) + G L`` DINO pairs (DINOv2's normalisation):

    * ``dino_local_crops``: every local crop against every teacher global crop, summed, ``/ n``;
    * ``dino_global_crops``: every student global crop against every *other* teacher global crop, ``/ n``
      (DINOv2's crossed pair times ``loss_scales = 2`` for ``G = 2``);
    * ``ibot``: masked student patches against the teacher's unmasked ones (``IBOTPatchLoss.forward_masked``;
      DINOv2's ``loss_scales * 1/G`` is 1);
    * ``koleo``: KoLeo on the student backbone's CLS tokens, summed over global crops.

    Args:
        student_backbone: an adapter ``(images, masks|None) -> (cls (B, D), patches (B, N, D))`` with ``embed_dim``
            (:class:`~common.networks.dino.DinoV2Backbone`, :class:`~common.networks.dino.EvaDinoBackbone`).
        teacher_backbone: the same architecture (weights are overwritten by the student's); ``None`` deep-copies
            the student. Pass a separate instance with ``drop_path_rate=0`` if preferred (eval mode already
            disables drop path).
        head: :class:`~common.networks.dino.DINOHead` arguments besides ``in_dim`` (DINOv2/RAD-DINO: 65536
            prototypes, hidden 2048, bottleneck 256, 3 layers).
        ibot_separate_head: a separate iBOT head (DINOv2 default ``False``: the DINO head is shared, consistent with
            RAD-DINO releasing only ``dino_head.safetensors``).
        ibot_head: iBOT head arguments when separate (default: ``head``'s).
        dino_loss_weight, ibot_loss_weight, koleo_loss_weight: term weights (0 removes a term).
        student_temp: student temperature.
        teacher_temp: teacher temperature after warm-up.
        warmup_teacher_temp: first teacher temperature.
        warmup_teacher_temp_iters: warm-up length in optimizer steps (DINOv2: 30 epochs x 1250 iterations).
        momentum_teacher: first EMA momentum.
        final_momentum_teacher: last EMA momentum.
        centering: ``"centering"`` (EMA centre) or ``"sinkhorn_knopp"`` teacher targets.
        center_momentum: EMA momentum of the centres.

    Raises:
        ValueError: on an unknown ``centering`` or negative weights.
    """

    def __init__(
        self,
        student_backbone: nn.Module,
        teacher_backbone: nn.Module | None = None,
        head: Mapping[str, Any] | None = None,
        ibot_separate_head: bool = False,
        ibot_head: Mapping[str, Any] | None = None,
        dino_loss_weight: float = 1.0,
        ibot_loss_weight: float = 1.0,
        koleo_loss_weight: float = 0.1,
        student_temp: float = 0.1,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_iters: int = 30 * 1250,
        momentum_teacher: float = 0.992,
        final_momentum_teacher: float = 1.0,
        centering: Literal["centering", "sinkhorn_knopp"] = "centering",
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        if centering not in ("centering", "sinkhorn_knopp"):
            raise ValueError(f"centering must be 'centering' or 'sinkhorn_knopp', got {centering!r}")
        if min(dino_loss_weight, ibot_loss_weight, koleo_loss_weight) < 0:
            raise ValueError("loss weights must be >= 0")
        if dino_loss_weight == 0 and ibot_loss_weight == 0:
            raise ValueError("at least one of dino_loss_weight and ibot_loss_weight must be > 0")
        embed_dim = int(student_backbone.embed_dim)
        head_args = dict(head or {})
        student: dict[str, nn.Module] = {"backbone": student_backbone, "dino_head": DINOHead(embed_dim, **head_args)}
        self.ibot_separate_head = bool(ibot_separate_head) and ibot_loss_weight > 0
        if self.ibot_separate_head:
            student["ibot_head"] = DINOHead(embed_dim, **dict(ibot_head or head_args))
        self.student = nn.ModuleDict(student)
        self.teacher = nn.ModuleDict(
            {
                name: teacher_backbone if name == "backbone" and teacher_backbone is not None else copy.deepcopy(module)
                for name, module in student.items()
            }
        )
        for name, module in self.teacher.items():
            module.load_state_dict(self.student[name].state_dict())
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self._head_batch_norm = any(
            isinstance(m, nn.modules.batchnorm._BatchNorm)
            for name in student
            if name != "backbone"
            for m in student[name].modules()
        )

        self.weights = {"dino": dino_loss_weight, "ibot": ibot_loss_weight, "koleo": koleo_loss_weight}
        self.centering = centering
        out_dim = int(self.student["dino_head"].last_layer.out_features)
        patch_out_dim = int(
            self.student["ibot_head" if self.ibot_separate_head else "dino_head"].last_layer.out_features
        )
        self.dino_loss = DINOClsTokenLoss(out_dim, student_temp, center_momentum)
        self.ibot_loss = IBOTPatchLoss(patch_out_dim, student_temp, center_momentum) if ibot_loss_weight > 0 else None
        self.koleo_loss = KoLeoLoss() if koleo_loss_weight > 0 else None
        self.teacher_temp_args = (warmup_teacher_temp, teacher_temp, int(warmup_teacher_temp_iters))
        self.momentum_args = (momentum_teacher, final_momentum_teacher)
        self._schedules: tuple[int, np.ndarray, np.ndarray] | None = None
        self.teacher_temp = warmup_teacher_temp
        self.momentum = momentum_teacher

    # ----------------------------------------------------------------------------------------------- schedules
    def _schedule(self, max_steps: int | None) -> tuple[np.ndarray, np.ndarray]:
        total = int(max_steps) if max_steps else max(self.teacher_temp_args[2], 1)
        if self._schedules is None or self._schedules[0] != total:
            start, final, warmup = self.teacher_temp_args
            temps = cosine_schedule(final, final, max(total, warmup), warmup, start_warmup_value=start)
            momenta = cosine_schedule(self.momentum_args[0], self.momentum_args[1], total)
            self._schedules = (total, temps, momenta)
        return self._schedules[1], self._schedules[2]

    def before_iteration(self, step: int, max_steps: int | None = None) -> None:
        """Set the teacher temperature of optimizer step ``step`` (0-based)."""
        temps, _ = self._schedule(max_steps)
        self.teacher_temp = float(temps[min(step, len(temps) - 1)])

    @torch.no_grad()
    def after_optimizer_step(self, step: int, max_steps: int | None = None) -> None:
        """EMA update ``teacher <- m teacher + (1 - m) student`` with the momentum of step ``step``."""
        _, momenta = self._schedule(max_steps)
        self.momentum = float(momenta[min(step, len(momenta) - 1)])
        teacher, student = [], []
        for name, module in self.student.items():
            for (tn, tp), (sn, sp) in zip(self.teacher[name].named_parameters(), module.named_parameters()):
                if tn != sn:
                    raise RuntimeError(f"teacher/student parameter mismatch: {tn} vs {sn}")
                teacher.append(tp)
                student.append(sp.detach().to(tp.dtype))
        torch._foreach_mul_(teacher, self.momentum)
        torch._foreach_add_(teacher, student, alpha=1.0 - self.momentum)

    def train(self, mode: bool = True) -> RadDinoPretraining:
        """Training mode for the student; the teacher stays in eval mode, except heads with BatchNorm (``use_bn``),
        which normalise the teacher's batch with its own statistics as DINO's teacher does (it is never put in eval
        mode there); eval running statistics would leave the teacher's BatchNorm at its initial identity."""
        super().train(mode)
        self.teacher.eval()
        if mode and self._head_batch_norm:
            for name, module in self.teacher.items():
                if name != "backbone":
                    module.train()
        return self

    def clip_grad_groups(self) -> Iterator[tuple[str, list[nn.Parameter]]]:
        """Backbone and heads are clipped separately, as in DINOv2."""
        for name, module in self.student.items():
            yield name, [p for p in module.parameters() if p.requires_grad]

    def log_values(self) -> dict[str, float]:
        return {"teacher_temp": self.teacher_temp, "teacher_momentum": self.momentum}

    # ----------------------------------------------------------------------------------------------- forward
    @torch.no_grad()
    def _teacher_targets(
        self, global_crops: torch.Tensor, masks: torch.Tensor, num_global: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        cls, patches = self.teacher["backbone"](global_crops, None)
        logits = self.teacher["dino_head"](cls)
        if self.centering == "centering":
            cls_targets = self.dino_loss.softmax_center_teacher(logits, self.teacher_temp)
            self.dino_loss.update_center(logits)
        else:
            cls_targets = self.dino_loss.sinkhorn_knopp_teacher(logits, self.teacher_temp)
        patch_targets = None
        # BatchNorm in training mode needs two rows: a batch with a single masked token then has no iBOT term
        min_masked = 2 if self._head_batch_norm else 1
        if self.ibot_loss is not None and int(masks.sum()) >= min_masked:
            head = self.teacher["ibot_head" if self.ibot_separate_head else "dino_head"]
            patch_logits = head(patches[masks])
            if self.centering == "centering":
                patch_targets = self.ibot_loss.softmax_center_teacher(patch_logits, self.teacher_temp)
                self.ibot_loss.update_center(patch_logits)
            else:
                patch_targets = self.ibot_loss.sinkhorn_knopp_teacher(patch_logits, self.teacher_temp)
        return cls_targets.reshape(num_global, -1, cls_targets.shape[-1]), patch_targets

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Weighted terms ``{"loss", "dino_local_crops", "dino_global_crops", "koleo", "ibot"}`` of one batch."""
        global_crops = _crop_major(batch["global_crops"])  # (G*B, C, *g)
        num_global = batch["global_crops"].shape[1]
        masks = _crop_major(batch["masks"]).bool()  # (G*B, N)
        local = batch.get("local_crops")
        num_local = 0 if local is None else local.shape[1]

        teacher_cls, teacher_patches = self._teacher_targets(global_crops, masks, num_global)

        student_cls, student_patches = self.student["backbone"](global_crops, masks if self.ibot_loss else None)
        terms: dict[str, torch.Tensor] = {}
        n_pairs = num_global * (num_global - 1) + num_global * num_local
        if self.weights["dino"] > 0 and n_pairs > 0:
            head = self.student["dino_head"]
            if num_local:
                local_cls, _ = self.student["backbone"](_crop_major(local), None)
                local_out = head(local_cls).chunk(num_local)
                loss = self.dino_loss(list(local_out), list(teacher_cls))
                terms["dino_local_crops"] = self.weights["dino"] * loss / n_pairs
            if num_global > 1:
                global_out = head(student_cls).chunk(num_global)
                loss = student_cls.new_zeros(())
                for s, out in enumerate(global_out):
                    others = [teacher_cls[t] for t in range(num_global) if t != s]
                    loss = loss + self.dino_loss([out], others)
                terms["dino_global_crops"] = self.weights["dino"] * loss / n_pairs
        if self.koleo_loss is not None:
            koleo = sum(self.koleo_loss(chunk) for chunk in student_cls.chunk(num_global))
            terms["koleo"] = self.weights["koleo"] * koleo
        if self.ibot_loss is not None:
            if teacher_patches is None:  # no masked crop in this batch
                terms["ibot"] = student_patches.sum() * 0.0
            else:
                head = self.student["ibot_head" if self.ibot_separate_head else "dino_head"]
                student_masked = head(student_patches[masks])
                terms["ibot"] = self.weights["ibot"] * self.ibot_loss.forward_masked(
                    student_masked, teacher_patches, masks
                )
        terms["loss"] = torch.stack(list(terms.values())).sum()
        return terms
