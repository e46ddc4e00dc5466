"""RAD-DINO (Pérez-García et al., 2025): the DINOv2 recipe (EMA teacher; DINO + iBOT + KoLeo) on radiology images.

``objective.py`` composes the losses on a student/teacher pair of DINO backbones; ``export.py`` writes the EMA
teacher's CLS encoder. Evaluation is the generic :func:`common.evaluation.encoder.evaluate_encoder`.
"""
