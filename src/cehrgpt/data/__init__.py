"""ETL: OMOP CDM → CEHR-GPT patient sequences (:func:`cehrgpt.data.prepare.prepare`)."""
