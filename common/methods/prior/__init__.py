"""PRIOR (Cheng et al., ICCV 2023): prototype representation learning, composed from ``common`` parts.

``objective.PRIORPretraining`` is the training objective of the three stages; the bundles ``prior_cxr`` and ``prior_ct``
configure it.
"""
