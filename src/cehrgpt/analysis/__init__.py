"""Privacy analyses, the fidelity report and the release gate over patient sequences.

Every analysis reads patient-sequence parquet folders, featurises them with
:mod:`cehrgpt.analysis.features` and writes its tables plus a flat
``metrics.json`` (name → number) that :mod:`cehrgpt.analysis.gate` reads.
"""
