"""COLIPRI (Wald et al., 2025): contrastive + report generation + masked autoencoding on mixed image-only/paired CT.

``objective.py`` composes the losses on a :class:`common.networks.two_tower.TwoTowerModel`; everything else the bundles
use (export, evaluation, inference) lives in the generic layers.
"""
