"""ETL: OMOP CDM → CEHR-GPT patient sequences (:func:`cehrgpt.data.prepare.prepare`)."""

#: The share of persons ``prepare`` holds out as the test split: the evaluation data of the utility and
#: fidelity analyses and the privacy analyses' non-members. The command line, :func:`prepare`, the local
#: run and every pipeline default to it (kept here, free of Spark, so the pipeline definitions can import it).
DEFAULT_TEST_FRACTION = 0.2
