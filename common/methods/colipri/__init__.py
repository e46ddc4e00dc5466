"""COLIPRI (Wald et al., 2025): contrastive + report generation + masked autoencoding on mixed image-only/paired CT.

``objective.py`` composes the losses on a :class:`common.networks.two_tower.TwoTowerModel`; ``export.py`` writes the
trained model and its zero-shot inference network. Everything else the bundles use lives in the generic layers.
"""
