"""Datalist builders for published datasets as they are laid out on disk (``python -m common.data.build``).

One module per source (:mod:`.ct_rate`, :mod:`.mimic_cxr`, :mod:`.chexpert_plus`, :mod:`.iu_xray`, :mod:`.folder`),
all on the shared machinery of :mod:`.records` (CSV rows with line numbers, label policies, patient-level splits,
named problems with counted skips, the datalist writer and its summary). Import from the modules; this package
exports nothing.
"""
