"""G2D (Liu et al., NeurIPS 2024): global image-report alignment + pixel alignment to parameter-free pseudo-masks.

``objective.py`` composes the losses on a :class:`common.networks.two_tower.TwoTowerModel` whose image tower is the
encoder of a U-Net (:mod:`common.networks.unet`), plus that U-Net's decoder. The pseudo-masks come from the image
tower's own attention pooling (:mod:`common.networks.attention_masks`); export, evaluation and inference are generic.
"""
